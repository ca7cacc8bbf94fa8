"""A pymongo client for moat's integration tests.

    client.py URI OP [OP ...]

Ops: ping | insert_find | hello. Prints one line per op, "OK <detail>", or on the first
failure "ERR <ExceptionClass>: <message>" and exits 1. Runs with pymongo 4.x (venv) and
with Debian's pymongo 3.11 (/usr/bin/python3).
"""
import sys
import uuid

import pymongo
from pymongo import MongoClient


def main():
    uri, ops = sys.argv[1], sys.argv[2:]
    client = MongoClient(uri)
    try:
        for op in ops:
            if op == "ping":
                client.admin.command("ping")
                print("OK ping")
            elif op == "hello":
                reply = client.admin.command("ismaster")
                print("OK hello maxWireVersion=%s" % reply.get("maxWireVersion"))
            elif op == "insert_find":
                coll = client.moat_it.items
                token = uuid.uuid4().hex
                coll.insert_one({"token": token})
                doc = coll.find_one({"token": token})
                assert doc is not None and doc["token"] == token, doc
                print("OK insert_find %s" % token)
            else:
                raise SystemExit("unknown op %r" % op)
    except Exception as e:  # report what the driver shows a user
        print("ERR %s: %s" % (type(e).__name__, e))
        sys.exit(1)
    finally:
        client.close()
    print("pymongo %s" % pymongo.version)


if __name__ == "__main__":
    main()
