"""drain.py URI COLLECTION STOPFILE: a client with operations in flight across moat's drain.

Opens a cursor over COLLECTION (10 documents a batch) and reads its first document, prints
"ready", then keeps doing insert + find + update until STOPFILE exists (at most 120 s). Then it reads the rest of the cursor (each
batch a getMore on the open connection), does 20 more operations, closes and prints
"ops=N errors=M docs=D" and the first error, if any."""
import os
import sys
import time

from pymongo import MongoClient


def main():
    uri, name, stop = sys.argv[1], sys.argv[2], sys.argv[3]
    client = MongoClient(uri)
    db = client.moat_it
    coll = db.drain_ops
    ops = errors = docs = 0
    first = None

    def op(n):
        nonlocal ops, errors, first
        try:
            coll.insert_one({"n": n, "pid": os.getpid()})
            coll.find_one({"n": n, "pid": os.getpid()})
            coll.update_one({"n": n, "pid": os.getpid()}, {"$set": {"seen": True}})
            ops += 1
        except Exception as e:  # counted and reported, never hidden
            errors += 1
            first = first or "%s: %s" % (type(e).__name__, e)

    cursor = db[name].find({}, batch_size=10)
    try:
        next(cursor)
        docs = 1
    except Exception as e:
        errors += 1
        first = "%s: %s" % (type(e).__name__, e)
    print("ready", flush=True)
    deadline = time.time() + 120
    while not os.path.exists(stop) and time.time() < deadline:
        op(ops)
    try:
        for _ in cursor:
            docs += 1
    except Exception as e:
        errors += 1
        first = first or "%s: %s" % (type(e).__name__, e)
    for _ in range(20):
        op(ops)
    client.close()
    print("ops=%d errors=%d docs=%d" % (ops, errors, docs), flush=True)
    if first:
        print("first_error=%s" % first, flush=True)


main()
