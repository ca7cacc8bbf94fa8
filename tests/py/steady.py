"""steady.py URI STOPFILE: one MongoClient doing insert + find in a loop until STOPFILE
exists (at most 120 s). Prints "ready" after its first op, then at the end
"ops=N errors=M" and the first error, if any. Used to show that open connections survive
live mode changes."""
import os
import sys
import time

from pymongo import MongoClient


def main():
    uri, stop = sys.argv[1], sys.argv[2]
    client = MongoClient(uri)
    coll = client.moat_it.steady
    ops = errors = 0
    first = None
    deadline = time.time() + 120
    while not os.path.exists(stop) and time.time() < deadline:
        try:
            coll.insert_one({"n": ops})
            coll.find_one({"n": ops})
            ops += 1
            if ops == 1:
                print("ready", flush=True)
        except Exception as e:  # counted and reported, never hidden
            errors += 1
            first = first or "%s: %s" % (type(e).__name__, e)
            time.sleep(0.05)
    client.close()
    print("ops=%d errors=%d" % (ops, errors), flush=True)
    if first:
        print("first_error=%s" % first, flush=True)


main()
