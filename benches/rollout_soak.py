"""Zero-downtime roll-out under real load: the whole TLS roll-out, certificate rotations,
firewall edits and reloads while pymongo clients work through moat, counting every failed
operation and every connection the driver saw dropped.

    .venv/bin/python benches/rollout_soak.py                       # 64 clients, 150 s
    .venv/bin/python benches/rollout_soak.py --clients 8 --processes 2 --duration 20 \\
        --window 2 --moat target/debug/moat --json out.json          # what tests/rollout.rs runs

One command: builds moat (release) unless --moat is given, starts secantusdb and moat in a
temporary directory, runs CLIENTS pymongo clients (PROCESSES processes, threads in each;
retryReads and retryWrites off, so nothing is hidden) doing inserts, finds, updates,
aggregations and deletes, and meanwhile walks moat through

    disabled → allowSSL → preferSSL → requireSSL → preferSSL → disabled   (moat ctl mode set)
    two certificate rotations (new cert + key renamed over the old files, moat ctl reload)
    ten firewall changes (rules for 10.N.0.0/16 added and removed; the clients' rule stays)
    five reloads (moat ctl reload)

Clients move between plaintext and TLS the way an operator moves applications: at phase
boundaries, each closes its MongoClient and opens one with the other transport. In
disabled every client is plaintext; after allowSSL the even-numbered half moves to TLS;
before requireSSL the rest moves, and requireSSL is set (without --force) only once `moat
ctl connections --plaintext` lists nothing; after the second preferSSL the even half moves
back; before disabled the rest moves back, and disabled is set once no TLS connection is
open. So every client is always one the current mode admits: any operation that fails,
and any connection the driver sees dropped (a pool connection closed by an error, a failed
heartbeat, a pool cleared), is moat's fault and is counted.

Prints ops/s per WINDOW seconds, each step with its dip (the worst window overlapping the
step, as a share of the median window), and the totals; exits 1 unless failed operations
and dropped connections are both 0 and every step succeeded. --json writes the same.
"""
import argparse
import collections
import ctypes
import hashlib
import json
import multiprocessing as mp
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import bson
from pymongo import MongoClient, monitoring
from pymongo.monitoring import ConnectionClosedReason

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# How often each client's operation counts are bucketed (seconds).
BUCKET = 0.1

OPS = ("insert", "find", "update", "aggregate")


# ----------------------------------------------------------------------------- clients


def client_thread(cid, uris, want, have, stop, t0, out):
    """One application client: a MongoClient doing operations until `stop`, reopened with
    the other transport whenever `want[cid]` changes."""
    rec = {
        "cid": cid,
        "ops": collections.Counter(),
        "failed": 0,
        "errors": [],
        "buckets": collections.Counter(),
        "dropped": {"tls": 0, "plaintext": 0},
        "dropped_detail": [],
        "opened": {"tls": 0, "plaintext": 0},
        "switches": 0,
    }

    class Watch(monitoring.ConnectionPoolListener, monitoring.ServerHeartbeatListener):
        """Counts what the driver saw go wrong with its connections."""

        def __init__(self, transport):
            self.transport = transport
            self.closing = False

        def dropped(self, what):
            if not self.closing:
                rec["dropped"][self.transport] += 1
                if len(rec["dropped_detail"]) < 10:
                    rec["dropped_detail"].append(
                        "%.1fs %s %s" % (time.time() - t0, self.transport, what))

        def connection_closed(self, event):
            if event.reason == ConnectionClosedReason.ERROR:
                self.dropped("pool connection closed by an error")

        def pool_cleared(self, event):
            self.dropped("pool cleared")

        def heartbeat_failed(self, event):
            self.dropped("heartbeat failed: %r" % (event.reply,))

        def connection_created(self, event):
            if not self.closing:
                rec["opened"][self.transport] += 1

        def pool_created(self, event): pass
        def pool_ready(self, event): pass
        def pool_closed(self, event): pass
        def connection_ready(self, event): pass
        def connection_check_out_started(self, event): pass
        def connection_check_out_failed(self, event): pass
        def connection_checked_out(self, event): pass
        def connection_checked_in(self, event): pass
        def started(self, event): pass
        def succeeded(self, event): pass
        def failed(self, event): self.heartbeat_failed(event)

    client = watch = coll = None
    current = None
    n = 0
    while not stop.is_set():
        w = want[cid]
        if client is None or w != current:
            if client is not None:
                watch.closing = True
                client.close()
                rec["switches"] += 1
            watch = Watch("tls" if w else "plaintext")
            client = MongoClient(uris[w], event_listeners=[watch], appname="soak-%d" % cid)
            coll = client.soak.items
            current = w
            moved = False
        kind = OPS[n % len(OPS)]
        k = n % 50
        try:
            if kind == "insert":
                coll.insert_one({"c": cid, "k": k, "n": n})
            elif kind == "find":
                coll.find_one({"c": cid, "k": k})
            elif kind == "update":
                coll.update_one({"c": cid, "k": k}, {"$inc": {"u": 1}})
            else:
                list(coll.aggregate([
                    {"$match": {"c": cid}},
                    {"$group": {"_id": "$k", "n": {"$sum": 1}}},
                    {"$sort": {"n": -1}},
                    {"$limit": 3},
                ]))
                if n % 100 == 3:
                    # Keeps each client's documents bounded: a delete, counted as an op.
                    kind = "delete"
                    coll.delete_many({"c": cid, "n": {"$lt": n - 200}})
            rec["ops"][kind] += 1
            rec["buckets"][int((time.time() - t0) / BUCKET)] += 1
            if not moved:
                have[cid] = w
                moved = True
        except Exception as e:  # the figure this script exists for
            rec["failed"] += 1
            if len(rec["errors"]) < 10:
                rec["errors"].append("%.1fs %s over %s: %s: %s" % (
                    time.time() - t0, kind, "tls" if current else "plaintext",
                    type(e).__name__, str(e)[:300]))
            time.sleep(0.05)
        n += 1
    if client is not None:
        watch.closing = True
        client.close()
    out.append(rec)


def worker(cids, uris, want, have, stop, t0, results):
    """A process running one thread per client; sends their records when stopped."""
    out = []
    threads = [threading.Thread(target=client_thread, args=(c, uris, want, have, stop, t0, out))
               for c in cids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in out:
        r["ops"] = dict(r["ops"])
        r["buckets"] = dict(r["buckets"])
    results.put(out)


# ----------------------------------------------------------------------------- processes


def die_with_parent():
    """Children get SIGKILL if this script dies, so a killed run leaves no server behind."""
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Child:
    """A server process whose output is kept (and written to a log file)."""

    def __init__(self, argv, log_path, cwd=None, env=None):
        self.log = open(log_path, "w")
        self.lines = []
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True,
                                     preexec_fn=die_with_parent)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.log.write(line)
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait_for(self, pattern, timeout=60):
        deadline = time.time() + timeout
        with self.cond:
            while True:
                for line in self.lines:
                    m = re.search(pattern, line)
                    if m:
                        return m
                left = deadline - time.time()
                if left <= 0 or self.proc.poll() is not None:
                    raise SystemExit("no %r in %s's output:\n%s" % (
                        pattern, self.proc.args[0], "\n".join(self.lines[-30:])))
                self.cond.wait(min(left, 0.5))

    def count(self, pattern):
        with self.cond:
            return sum(1 for l in self.lines if re.search(pattern, l))

    def stop(self, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.flush()


def proc_figures(pid):
    """(RSS in KiB, open descriptors) of a process."""
    rss = 0
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return rss, len(os.listdir("/proc/%d/fd" % pid))


# ----------------------------------------------------------------------------- moat control


class Moat:
    def __init__(self, binary, tmp, mongo_port, log_level):
        self.binary, self.tmp = binary, tmp
        self.certs = os.path.join(tmp, "certs")
        self.run([binary, "certs", "init", "--dir", self.certs, "--hostnames", "localhost"])
        self.ca = os.path.join(self.certs, "ca.pem")
        self.cert = os.path.join(self.certs, "default.pem")
        self.key = os.path.join(self.certs, "default-key.pem")
        self.config = os.path.join(tmp, "moat.toml")
        self.socket = os.path.join(tmp, "admin.sock")
        with open(self.config, "w") as f:
            f.write(f"""# written by benches/rollout_soak.py
[listen]
address = "127.0.0.1:0"
handshake_timeout = "10s"
shutdown_timeout = "10s"

[upstream]
address = "127.0.0.1:{mongo_port}"
connect_timeout = "3s"

[tls]
mode = "disabled"

[[tls.domains]]
name = "default"
hostnames = ["localhost"]
cert = "{self.cert}"
key = "{self.key}"

[firewall]
default = "deny"

[[firewall.rules]]
cidr = "127.0.0.0/8"
description = "the soak's clients (never touched)"

[admin]
socket = "{self.socket}"

[metrics]
listen = "127.0.0.1:0"
readiness_interval = "1s"

[log]
level = "{log_level}"
""")
        self.child = Child([binary, "run", "--config", self.config],
                           os.path.join(tmp, "moat.log"))
        self.port = int(self.child.wait_for(r"waiting for connections on 127\.0\.0\.1:(\d+)")
                        .group(1))
        self.metrics = self.child.wait_for(r"metrics and health on http://([0-9.:]+)/").group(1)

    @staticmethod
    def run(argv):
        r = subprocess.run(argv, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError("%s: %s%s" % (" ".join(argv), r.stdout, r.stderr))
        return r.stdout

    def ctl(self, *args):
        """`moat ctl --json ARGS`: the reply; raises on ok: false."""
        r = subprocess.run([self.binary, "ctl", "--socket", self.socket, "--json", *args],
                           capture_output=True, text=True)
        try:
            reply = json.loads(r.stdout)
        except ValueError:
            raise RuntimeError("moat ctl %s: %s%s" % (" ".join(args), r.stdout, r.stderr))
        if not reply.get("ok"):
            raise CtlRefused(reply)
        return reply

    def client_connections(self):
        return [c for c in self.ctl("connections")["connections"] if c["kind"] == "client"]

    def samples(self):
        text = urllib.request.urlopen("http://%s/metrics" % self.metrics, timeout=10).read()
        out = {}
        for line in text.decode().splitlines():
            if line and not line.startswith("#"):
                k, _, v = line.rpartition(" ")
                out[k] = float(v)
        return out

    def ready(self):
        try:
            return urllib.request.urlopen("http://%s/readyz" % self.metrics, timeout=5).status == 200
        except urllib.error.HTTPError:
            return False

    def served_fingerprint(self):
        """The SHA-256 of the certificate a new TLS connection gets. The connection does a
        hello round trip before it closes, as a driver would: closing right after the
        handshake would leave moat's session tickets unread and reset the connection."""
        body = bson.encode({"hello": 1, "$db": "admin"})
        msg = struct.pack("<iiii", 16 + 5 + len(body), 1, 0, 2013) + b"\0" * 5 + body
        ctx = ssl.create_default_context(cafile=self.ca)
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            with ctx.wrap_socket(s, server_hostname="localhost") as t:
                t.sendall(msg)
                head = recv_exact(t, 16)
                recv_exact(t, struct.unpack("<i", head[:4])[0] - 16)
                return hashlib.sha256(t.getpeercert(binary_form=True)).hexdigest()[:16]


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise RuntimeError("closed after %d of %d bytes" % (len(buf), n))
        buf += chunk
    return buf


class CtlRefused(Exception):
    def __init__(self, reply):
        super().__init__(reply.get("error"))
        self.reply = reply


def wait(what, cond, timeout=60, every=0.05):
    deadline = time.time() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.time() > deadline:
            raise RuntimeError("timed out after %ds waiting for %s" % (timeout, what))
        time.sleep(every)


# ----------------------------------------------------------------------------- the run


def plan():
    """The roll-out: (kind, argument). 5 mode changes, 4 client moves, 2 rotations, 10
    firewall changes, 5 reloads."""
    return [
        ("firewall", "add"), ("mode", "allowSSL"), ("move", ("even", 1)), ("reload", None),
        ("firewall", "remove"), ("mode", "preferSSL"), ("rotate", 1), ("firewall", "add"),
        ("reload", None), ("move", ("odd", 1)), ("mode", "requireSSL"), ("firewall", "remove"),
        ("reload", None), ("rotate", 2), ("firewall", "add"), ("mode", "preferSSL"),
        ("move", ("even", 0)), ("firewall", "remove"), ("reload", None), ("firewall", "add"),
        ("move", ("odd", 0)), ("mode", "disabled"), ("firewall", "remove"), ("reload", None),
        ("firewall", "add"), ("firewall", "remove"),
    ]


class Roll:
    """Runs the steps against moat and the clients' wanted transports."""

    def __init__(self, moat, want, have, n):
        self.moat, self.want, self.have, self.n = moat, want, have, n
        self.rules = []
        self.next_net = 1
        self.refusals = 0

    def step(self, kind, arg):
        m = self.moat
        if kind == "mode":
            if arg == "requireSSL":
                wait("no plaintext client connection",
                     lambda: not m.ctl("connections", "--plaintext")["connections"])
            if arg == "disabled":
                wait("no TLS client connection",
                     lambda: not [c for c in m.client_connections() if c["transport"] == "tls"])
            while True:
                try:
                    r = m.ctl("mode", "set", arg)
                    return "%s → %s, applied in %d µs" % (r["previous"], r["mode"],
                                                          r["applied_in_us"])
                except CtlRefused as e:
                    # A plaintext connection that closed after the listing: try again.
                    if not e.reply.get("plaintext_connections") or self.refusals > 20:
                        raise
                    self.refusals += 1
                    time.sleep(0.1)
        if kind == "move":
            half, tls = arg
            ids = [i for i in range(self.n) if (i % 2 == 0) == (half == "even")]
            for i in ids:
                self.want[i] = tls
            wait("clients to move", lambda: all(self.have[i] == tls for i in ids))
            return "%d clients to %s" % (len(ids), "TLS" if tls else "plaintext")
        if kind == "rotate":
            before = m.served_fingerprint()
            stage = tempfile.mkdtemp(dir=m.tmp)
            for f in ("ca.pem", "ca-key.pem"):
                shutil.copy(os.path.join(m.certs, f), stage)
            Moat.run([m.binary, "certs", "issue", "--dir", stage, "--domain", "default",
                      "--hostnames", "localhost"])
            os.replace(os.path.join(stage, "default-key.pem"), m.key)
            os.replace(os.path.join(stage, "default.pem"), m.cert)
            m.ctl("reload")
            after = m.served_fingerprint()
            if after == before:
                raise RuntimeError("the new certificate is not served")
            return "certificate %s → %s" % (before, after)
        if kind == "firewall":
            if arg == "add":
                net = "10.%d.0.0/16" % self.next_net
                self.next_net += 1
                r = m.ctl("rules", "add", "--cidr", net, "--description", "soak " + net)
                self.rules.append(r["rule"]["id"])
                return "added %s" % net
            rid = self.rules.pop(0)
            m.ctl("rules", "remove", rid)
            return "removed %s" % rid
        if kind == "reload":
            r = m.ctl("reload")
            return "; ".join(r["applied"])
        raise ValueError(kind)


def windows(buckets, start, end, width):
    """ops/s per `width`-second window over [start, end) (seconds since t0)."""
    per = int(round(width / BUCKET))
    first = int(start / BUCKET)
    out = []
    k = first
    while (k + per) * BUCKET <= end + 1e-9:
        out.append(sum(buckets.get(b, 0) for b in range(k, k + per)) / width)
        k += per
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--processes", type=int, default=8)
    ap.add_argument("--duration", type=float, default=150, help="seconds of load")
    ap.add_argument("--window", type=float, default=5, help="seconds per ops/s window")
    ap.add_argument("--moat", help="moat binary (default: cargo build --release)")
    ap.add_argument("--log-level", default="info")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, config)")
    a = ap.parse_args()
    if a.clients % 2 or a.clients < 2:
        raise SystemExit("--clients must be even")

    binary = a.moat
    if not binary:
        subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "moat"],
                       cwd=ROOT, check=True)
        binary = os.path.join(ROOT, "target/release/moat")
    binary = os.path.abspath(binary)
    tmp = tempfile.mkdtemp(prefix="moat-soak-")
    venv_bin = os.path.dirname(sys.executable)
    mongo = moat = None
    procs = []
    stop = mp.get_context("spawn").Event()
    try:
        mongo = Child([os.path.join(venv_bin, "secantusd-py"), "--host", "127.0.0.1",
                       "--port", "0", "--standalone", "--storage-path",
                       os.path.join(tmp, "data")], os.path.join(tmp, "mongo.log"), cwd=tmp)
        mport = int(mongo.wait_for(r"listening on 127\.0\.0\.1:(\d+)").group(1))
        direct = MongoClient("127.0.0.1", mport, directConnection=True)
        direct.soak.items.create_index([("c", 1), ("k", 1)])
        direct.close()

        moat = Moat(binary, tmp, mport, a.log_level)
        wait("/readyz", moat.ready)
        pid = moat.child.proc.pid
        before = proc_figures(pid)
        samples0 = moat.samples()
        load_avg = [os.getloadavg()[0]]

        base = ("mongodb://localhost:%d/?directConnection=true&retryReads=false"
                "&retryWrites=false&serverSelectionTimeoutMS=10000" % moat.port)
        uris = [base, base + "&tls=true&tlsCAFile=" + moat.ca]
        ctx = mp.get_context("spawn")
        want = ctx.Array("b", a.clients, lock=False)  # 0 plaintext, 1 TLS
        have = ctx.Array("b", [-1] * a.clients, lock=False)
        results = ctx.Queue()
        t0 = time.time()
        for p in range(a.processes):
            cids = list(range(p, a.clients, a.processes))
            pr = ctx.Process(target=worker, args=(cids, uris, want, have, stop, t0, results))
            pr.start()
            procs.append(pr)
        wait("every client's first operation", lambda: all(h == 0 for h in have), timeout=120)
        load_start = time.time() - t0
        print("%d clients (%d processes) working through moat on port %d; load for %ds" % (
            a.clients, a.processes, moat.port, a.duration), flush=True)

        steps = plan()
        roll = Roll(moat, want, have, a.clients)
        # Steps spread over the run, after a warm-up and before a quiet tail.
        lead = max(a.window * 2, a.duration * 0.08)
        span = a.duration - 2 * lead
        done = []
        ok = True
        for i, (kind, arg) in enumerate(steps):
            at = load_start + lead + span * i / (len(steps) - 1)
            time.sleep(max(0, at - (time.time() - t0)))
            s = time.time() - t0
            try:
                detail, good = roll.step(kind, arg), True
            except Exception as e:  # a failed step fails the run, with the reason
                detail, good = "FAILED: %s" % e, False
                ok = False
            e = time.time() - t0
            name = kind if arg is None else "%s %s" % (kind, arg if not isinstance(arg, tuple)
                                                       else "%s→%s" % (arg[0], "TLS" if arg[1] else "plaintext"))
            done.append({"step": name, "start": round(s, 2), "took_ms": round((e - s) * 1000),
                         "ok": good, "detail": detail})
            print("  %6.1fs  %-28s %5d ms  %s" % (s - load_start, name, (e - s) * 1000, detail),
                  flush=True)
        time.sleep(max(0, load_start + a.duration - (time.time() - t0)))
        load_end = time.time() - t0
        stop.set()
        recs = []
        for _ in procs:
            recs.extend(results.get(timeout=120))
        for pr in procs:
            pr.join(60)
        wait("moat's client connections to close", lambda: not moat.client_connections())
        after = proc_figures(pid)
        samples1 = moat.samples()
        load_avg.append(os.getloadavg()[0])
    except BaseException:
        print("aborted; logs and config kept in " + tmp, file=sys.stderr)
        raise
    finally:
        stop.set()
        for pr in procs:
            if pr.is_alive():
                pr.terminate()
        if moat:
            moat.child.stop()
        if mongo:
            mongo.stop()

    buckets = collections.Counter()
    for r in recs:
        buckets.update({int(k): v for k, v in r["buckets"].items()})
    ops = collections.Counter()
    for r in recs:
        ops.update(r["ops"])
    failed = sum(r["failed"] for r in recs)
    dropped_tls = sum(r["dropped"]["tls"] for r in recs)
    dropped_plain = sum(r["dropped"]["plaintext"] for r in recs)
    opened = {t: sum(r["opened"][t] for r in recs) for t in ("tls", "plaintext")}
    errors = [e for r in recs for e in r["errors"]][:10]
    drops = [d for r in recs for d in r["dropped_detail"]][:10]
    wins = windows(buckets, load_start, load_end, a.window)
    median = statistics.median(wins) if wins else 0.0
    for s in done:
        lo = s["start"] - load_start
        hi = lo + s["took_ms"] / 1000
        first = int(lo // a.window)
        last = int(hi // a.window)
        touched = wins[first:last + 1] or [0.0]
        worst = min(touched)
        s["worst_window_ops_s"] = round(worst, 1)
        s["dip"] = round(worst / median, 3) if median else 0.0
    delta = {k: samples1.get(k, 0) - samples0.get(k, 0) for k in samples1
             if k.startswith("moat_connections_rejected_total")
             or k.startswith("moat_tls_handshakes_total")
             or k.startswith("moat_connections_accepted_total")
             or k.startswith("moat_config_reloads_total")}
    rejected = int(sum(v for k, v in delta.items()
                       if k.startswith("moat_connections_rejected_total")))
    conn_errors = moat.child.count(r"closed with error")
    counts = collections.Counter(s["step"].split()[0] for s in done)
    summary = {
        "clients": a.clients,
        "processes": a.processes,
        "duration_s": round(load_end - load_start, 1),
        "window_s": a.window,
        "ops": sum(ops.values()),
        "ops_by_kind": dict(ops),
        "failed_ops": failed,
        "dropped_tls_connections": dropped_tls,
        "dropped_plaintext_connections": dropped_plain,
        "connections_opened": opened,
        "moat_rejected": rejected,
        "moat_connection_errors_logged": conn_errors,
        "moat_deltas": delta,
        "median_ops_s": round(median, 1),
        "worst_window_ops_s": round(min(wins), 1) if wins else 0.0,
        "windows_ops_s": [round(w, 1) for w in wins],
        "steps": done,
        "step_counts": dict(counts),
        "requireSSL_refusals_retried": roll.refusals,
        "moat_rss_kib": {"before": before[0], "after": after[0]},
        "moat_fds": {"before": before[1], "after": after[1]},
        "errors": errors,
        "drops": drops,
        "moat": binary,
        "load_average_1m": {"before": load_avg[0], "after": load_avg[1]},
        "cpus": os.cpu_count(),
        "ok": ok and failed == 0 and dropped_tls == 0 and dropped_plain == 0 and rejected == 0,
    }

    print("\nops/s per %gs window:" % a.window)
    for i, w in enumerate(wins):
        print("  %6.0fs  %8.1f" % (i * a.window, w))
    print("\nsteps (dip = worst window overlapping the step / median %.1f ops/s):" % median)
    for s in done:
        print("  %6.1fs  %-28s %5d ms  worst %8.1f ops/s  dip %5.1f%%  %s" % (
            s["start"] - load_start, s["step"], s["took_ms"], s["worst_window_ops_s"],
            100 * s["dip"], "ok" if s["ok"] else s["detail"]))
    print("\nclients %d in %d processes, %.0fs of load" % (a.clients, a.processes,
                                                         summary["duration_s"]))
    print("operations %d (%s), failed %d" % (summary["ops"], ", ".join(
        "%s %d" % kv for kv in sorted(ops.items())), failed))
    print("dropped connections: TLS %d, plaintext %d (connections opened: TLS %d, "
          "plaintext %d)" % (dropped_tls, dropped_plain, opened["tls"], opened["plaintext"]))
    print("moat: refused %d, connection errors logged %d, RSS %d → %d KiB, descriptors "
          "%d → %d" % (rejected, conn_errors, before[0], after[0], before[1], after[1]))
    print("steps: %s" % ", ".join("%s %d" % kv for kv in sorted(counts.items())))
    print("machine: %d CPUs, 1-minute load average %.1f before, %.1f after" % (
        os.cpu_count(), load_avg[0], load_avg[1]))
    for e in errors:
        print("error: " + e)
    for d in drops:
        print("dropped: " + d)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(summary, f, indent=1)
    if a.keep:
        print("kept " + tmp)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    print("OK" if summary["ok"] else "FAILED")
    sys.exit(0 if summary["ok"] else 1)


if __name__ == "__main__":
    main()
