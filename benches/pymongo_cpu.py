"""The proxy's own CPU per pymongo operation: moat TLS against HAProxy TLS, same upstream.

    .venv/bin/python benches/pymongo_cpu.py                  # 4 clients, 15 s a run, 3 runs each
    .venv/bin/python benches/pymongo_cpu.py --clients 8 --secs 30 --repeat 5

Starts secantusdb, moat (preferSSL, as shipped: inspection, metrics off, info logs) and
HAProxy (TLS frontend, TCP backend, its default logging: none) in a temporary directory,
both forwarding to the same secantusdb with the same certificate. Each run: CLIENTS pymongo
processes, each one MongoClient over TLS (by hostname, verified) doing insert + find by _id
for SECS; runs alternate between the proxies. Ops/s cannot separate the proxies (the Python
server is the bottleneck, a few hundred ops/s); the proxy's CPU per operation can. Prints
each run and the medians. Needs haproxy (apt-get install haproxy) and the .venv that
scripts/deps.sh makes (pymongo, secantusdb).
"""
import argparse
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HZ = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what, secs=30):
    end = time.monotonic() + secs
    while time.monotonic() < end:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not listen on {port} within {secs} s")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ  # utime + stime


def client(uri, secs, ca, index, out):
    import pymongo

    c = pymongo.MongoClient(uri, tls=True, tlsCAFile=ca, retryWrites=False, retryReads=False)
    coll = c.bench[f"c{index}"]
    coll.find_one()  # connect and authenticate before the clock starts
    n, end = 0, time.monotonic() + secs
    while time.monotonic() < end:
        _id = coll.insert_one({"v": "x" * 64}).inserted_id
        coll.find_one({"_id": _id})
        n += 2
    c.close()
    out.put(n)


def run(name, pid, port, args, ca):
    out = mp.Queue()
    uri = f"mongodb://localhost:{port}/"
    procs = [mp.Process(target=client, args=(uri, args.secs, ca, i, out)) for i in range(args.clients)]
    before = cpu_seconds(pid)
    for p in procs:
        p.start()
    ops = sum(out.get() for _ in procs)
    for p in procs:
        p.join()
    used = cpu_seconds(pid) - before
    per_op = used / ops * 1e6 if ops else float("nan")
    print(f"{name:8} ops={ops} ops/s={ops / args.secs:.0f} proxy_cpu_s={used:.2f} cpu_us_per_op={per_op:.1f}", flush=True)
    return per_op


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moat", default=os.path.join(ROOT, "target/release/moat"))
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--secs", type=float, default=15)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if not shutil.which("haproxy"):
        sys.exit("haproxy not found: apt-get install haproxy")
    tmp = tempfile.mkdtemp(prefix="pymongo-cpu-")
    procs = []
    try:
        subprocess.run([args.moat, "certs", "init", "--dir", f"{tmp}/certs", "--domain", "db"],
                       check=True, stdout=subprocess.DEVNULL)
        ca, cert, key = (f"{tmp}/certs/{f}" for f in ("ca.pem", "db.pem", "db-key.pem"))
        with open(f"{tmp}/combined.pem", "w") as w:
            w.write(open(cert).read() + open(key).read())

        mport = free_port()
        venv = os.path.join(ROOT, ".venv/bin")
        mongo = subprocess.Popen([f"{venv}/secantusd-py", "--host", "127.0.0.1", "--port", str(mport), "--standalone",
                                  "--storage-path", f"{tmp}/data"], cwd=tmp,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(mongo)
        wait_port(mport, mongo, "secantusdb")

        moat_port, ha_port = free_port(), free_port()
        with open(f"{tmp}/moat.toml", "w") as f:
            f.write(f"""[listen]
address = "127.0.0.1:{moat_port}"
[upstream]
address = "127.0.0.1:{mport}"
[tls]
mode = "preferSSL"
[[tls.domains]]
name = "db"
hostnames = ["localhost"]
cert = "{cert}"
key = "{key}"
[[firewall.rules]]
cidr = "127.0.0.0/8"
description = "bench on loopback"
""")
        moat = subprocess.Popen([args.moat, "run", "--config", f"{tmp}/moat.toml"],
                                stdout=open(f"{tmp}/moat.log", "w"), stderr=subprocess.STDOUT)
        procs.append(moat)
        wait_port(moat_port, moat, "moat")

        with open(f"{tmp}/haproxy.cfg", "w") as f:
            f.write(f"""global
    maxconn 1000
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend tls
    bind 127.0.0.1:{ha_port} ssl crt {tmp}/combined.pem
    default_backend mongo
backend mongo
    server m 127.0.0.1:{mport}
""")
        ha = subprocess.Popen(["haproxy", "-db", "-f", f"{tmp}/haproxy.cfg"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(ha)
        wait_port(ha_port, ha, "haproxy")

        results = {"moat": [], "haproxy": []}
        for rep in range(args.repeat):
            order = [("moat", moat.pid, moat_port), ("haproxy", ha.pid, ha_port)]
            if rep % 2:
                order.reverse()
            for name, pid, port in order:
                results[name].append(run(name, pid, port, args, ca))
        m, h = (statistics.median(results[k]) for k in ("moat", "haproxy"))
        print(f"median CPU per operation: moat {m:.1f} us, haproxy {h:.1f} us, moat/haproxy {m / h:.2f}")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
