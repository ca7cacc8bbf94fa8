"""create_user.py PORT: creates alice/secret (root, SCRAM-SHA-1 and -256) on a server without --auth."""
import sys

from pymongo import MongoClient

client = MongoClient("127.0.0.1", int(sys.argv[1]), directConnection=True, serverSelectionTimeoutMS=10000)
client.admin.command("createUser", "alice", pwd="secret", roles=["root"],
                     mechanisms=["SCRAM-SHA-1", "SCRAM-SHA-256"])
client.close()
print("OK")
