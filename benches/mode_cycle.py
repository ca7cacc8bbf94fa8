"""Live SSL-mode changes under load: what a change costs and whether any operation fails.

    .venv/bin/python benches/mode_cycle.py [--cycles 20] [--clients 8] [--moat target/release/moat]

Starts secantusdb and moat (preferSSL, admin socket) in a temp dir, runs CLIENTS pymongo
clients (half plaintext, half TLS) doing insert + find in a loop, and walks the mode
through allowSSL → preferSSL → requireSSL → preferSSL → disabled → allowSSL ... CYCLES
times with `moat ctl mode set --force`. Prints the ctl round trip, moat's own time to
apply the change, the operations done and the operations that failed (must be 0).
On demand only; not part of the test run.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from pymongo import MongoClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def wait_line(proc, pattern, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit("process exited while waiting for %r" % pattern)
        m = re.search(pattern, line)
        if m:
            return m
    raise SystemExit("timed out waiting for %r" % pattern)


def drain(proc):
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--moat", default=os.path.join(ROOT, "target/release/moat"))
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="moat-mode-cycle-")
    subprocess.run([a.moat, "certs", "init", "--dir", tmp], check=True, capture_output=True)
    venv_bin = os.path.dirname(sys.executable)
    mongo = subprocess.Popen(
        [os.path.join(venv_bin, "secantusd-py"), "--host", "127.0.0.1", "--port", "0",
         "--standalone", "--storage-path", os.path.join(tmp, "data")],
        cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    mport = wait_line(mongo, r"listening on 127\.0\.0\.1:(\d+)").group(1)
    drain(mongo)
    cfg = os.path.join(tmp, "moat.toml")
    with open(cfg, "w") as f:
        f.write(f"""[listen]
address = "127.0.0.1:0"
[upstream]
address = "127.0.0.1:{mport}"
[tls]
mode = "preferSSL"
[[tls.domains]]
name = "default"
hostnames = ["localhost"]
cert = "default.pem"
key = "default-key.pem"
[[firewall.rules]]
cidr = "127.0.0.0/8"
description = "loopback"
[admin]
socket = "admin.sock"
[log]
level = "warn"
""")
    moat = subprocess.Popen([a.moat, "run", "--config", cfg], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, MOAT_LOG="info"))
    port = wait_line(moat, r"waiting for connections on 127\.0\.0\.1:(\d+)").group(1)
    drain(moat)

    stop = threading.Event()
    stats = []

    def client(i):
        tls = i % 2 == 1
        uri = f"mongodb://localhost:{port}/?directConnection=true"
        if tls:
            uri += f"&tls=true&tlsCAFile={tmp}/ca.pem"
        c = MongoClient(uri, serverSelectionTimeoutMS=5000)
        coll = c.bench.cycle
        s = {"tls": tls, "ops": 0, "errors": 0, "first": None}
        stats.append(s)
        while not stop.is_set():
            try:
                coll.insert_one({"c": i})
                coll.find_one({"c": i})
                s["ops"] += 1
            except Exception as e:  # counted: the point of the exercise
                s["errors"] += 1
                s["first"] = s["first"] or repr(e)
        c.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(a.clients)]
    for t in threads:
        t.start()
    time.sleep(1)
    steps = ["allowSSL", "preferSSL", "requireSSL", "preferSSL", "disabled"]
    ctl_ms, applied_us = [], []
    for _ in range(a.cycles):
        for mode in steps:
            t0 = time.perf_counter()
            r = subprocess.run([a.moat, "ctl", "--socket", os.path.join(tmp, "admin.sock"),
                                "--json", "mode", "set", mode, "--force", "--no-persist"],
                               capture_output=True, text=True)
            ctl_ms.append((time.perf_counter() - t0) * 1000)
            reply = json.loads(r.stdout)
            assert reply["ok"], reply
            applied_us.append(reply["applied_in_us"])
            time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join()
    moat.terminate()
    mongo.terminate()
    ops = sum(s["ops"] for s in stats)
    errors = sum(s["errors"] for s in stats)
    print(f"mode changes: {len(ctl_ms)} over {a.cycles} cycles {' -> '.join(steps)}")
    print(f"moat ctl round trip (process start to reply): p50 {statistics.median(ctl_ms):.1f} ms, "
          f"max {max(ctl_ms):.1f} ms")
    print(f"moat's time to apply (atomic store): p50 {statistics.median(applied_us)} us, "
          f"max {max(applied_us)} us")
    print(f"operations: {ops} by {a.clients} clients ({a.clients // 2} plaintext, "
          f"{a.clients - a.clients // 2} TLS); failed: {errors}")
    for s in stats:
        if s["first"]:
            print("first error (%s): %s" % ("tls" if s["tls"] else "plaintext", s["first"]))
    sys.exit(1 if errors else 0)


main()
