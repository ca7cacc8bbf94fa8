"""latency.py URI STOPFILE [MAX_OPS]: one MongoClient doing insert, then find, in a loop,
timing every operation (one round trip each). Prints "ready" after 50 warm-up operations,
then runs until STOPFILE exists, MAX_OPS operations are done, or 120 s have passed, and
prints "ops=N errors=M p50_ms=X p99_ms=Y max_ms=Z over_50ms=K" over the operations after
"ready", and the first error, if any. STOPFILE may hold a number: the operations to have
timed before stopping (a window long enough for a p99). Used to show that hostile input
does not slow the data path."""
import os
import sys
import time

from pymongo import MongoClient

WARMUP = 50


def min_ops(stop):
    try:
        with open(stop) as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def main():
    uri, stop = sys.argv[1], sys.argv[2]
    max_ops = int(sys.argv[3]) if len(sys.argv) > 3 else None
    client = MongoClient(uri)
    coll = client.moat_it.latency
    took = []
    errors = 0
    first = None
    n = 0
    deadline = time.time() + 120
    while time.time() < deadline:
        if n >= WARMUP and max_ops and len(took) >= max_ops:
            break
        if n >= WARMUP and os.path.exists(stop) and len(took) >= min_ops(stop):
            break
        started = time.perf_counter()
        try:
            if n % 2 == 0:
                coll.insert_one({"n": n})
            else:
                coll.find_one({"n": n - 1})
        except Exception as e:  # counted and reported, never hidden
            errors += 1
            first = first or "%s: %s" % (type(e).__name__, e)
            time.sleep(0.05)
            continue
        elapsed = (time.perf_counter() - started) * 1000.0
        n += 1
        if n == WARMUP:
            print("ready", flush=True)
        elif n > WARMUP:
            took.append(elapsed)
    client.close()
    took.sort()

    def pct(p):
        return took[min(len(took) - 1, int(len(took) * p))] if took else 0.0

    print(
        "ops=%d errors=%d p50_ms=%.2f p99_ms=%.2f max_ms=%.2f over_50ms=%d"
        % (
            len(took),
            errors,
            pct(0.50),
            pct(0.99),
            took[-1] if took else 0.0,
            sum(1 for t in took if t > 50.0),
        ),
        flush=True,
    )
    if first:
        print("first_error=%s" % first, flush=True)


main()
