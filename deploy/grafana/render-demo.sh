#!/usr/bin/env bash
# Renders docs/dashboard.png: starts secantusdb (with auth), moat (metrics on), a real
# Prometheus (Debian's, scraping every second), drives a few minutes of mixed traffic
# (TLS and plaintext clients, wrong passwords, firewall refusals, a requireSSL period),
# then plots the dashboard's own queries with render.py. On demand only (~4 min).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
SECS=${SECS:-180}
cargo build --release --quiet --manifest-path "$root/Cargo.toml"
moat=$root/target/release/moat
venv=$root/.venv-render
[ -x "$venv/bin/python" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install -q matplotlib pymongo==4.20.0; }
"$root/scripts/deps.sh" venv
tmp=$(mktemp -d); pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"' EXIT
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }

# secantusdb with the user alice/secret.
mp=$(port)
(cd "$tmp" && "$root/.venv/bin/secantusd-py" --host 127.0.0.1 --port "$mp" --standalone --storage-path "$tmp/data" > "$tmp/sd.log" 2>&1) & sd=$!
wait_port "$mp"; "$root/.venv/bin/python" "$root/tests/py/create_user.py" "$mp" >/dev/null; kill "$sd"; wait "$sd" || true
(cd "$tmp" && "$root/.venv/bin/secantusd-py" --host 127.0.0.1 --port "$mp" --standalone --storage-path "$tmp/data" --auth > "$tmp/sd.log" 2>&1) & pids+=($!)
wait_port "$mp"

"$moat" certs init --dir "$tmp/certs" >/dev/null
p=$(port); metrics=$(port); prom=$(port)
cat > "$tmp/moat.toml" <<TOML
[listen]
address = "127.0.0.1:$p"
[upstream]
address = "127.0.0.1:$mp"
[tls]
mode = "preferSSL"
[[tls.domains]]
name = "deployment"
hostnames = ["localhost"]
cert = "certs/default.pem"
key = "certs/default-key.pem"
[firewall]
[[firewall.rules]]
cidr = "127.0.0.1/32"
description = "this host"
[admin]
socket = "admin.sock"
[metrics]
listen = "127.0.0.1:$metrics"
readiness_interval = "1s"
[log]
level = "warn"
TOML
"$moat" run --config "$tmp/moat.toml" > "$tmp/moat.log" 2>&1 & pids+=($!)
wait_port "$p"
cat > "$tmp/prom.yml" <<YML
global: {scrape_interval: 1s, evaluation_interval: 1s}
scrape_configs:
  - job_name: moat
    static_configs: [{targets: ["127.0.0.1:$metrics"]}]
YML
prometheus --config.file="$tmp/prom.yml" --storage.tsdb.path="$tmp/prom" \
    --web.listen-address="127.0.0.1:$prom" > "$tmp/prom.log" 2>&1 & pids+=($!)
wait_port "$prom"

cat > "$tmp/traffic.py" <<'PY'
import os, random, socket, sys, threading, time
from pymongo import MongoClient
port, tmp, secs = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
ca = os.path.join(tmp, "certs", "ca.pem")
end = time.time() + secs
def uri(user, pw, tls):
    u = f"mongodb://{user}:{pw}@localhost:{port}/?directConnection=true&authSource=admin&serverSelectionTimeoutMS=2000"
    return u + (f"&tls=true&tlsCAFile={ca}" if tls else "")
def steady(tls):
    c = MongoClient(uri("alice", "secret", tls), appName="reports" if tls else "legacy-batch")
    while time.time() < end:
        try:
            c.demo.events.insert_one({"x": "y" * random.randint(100, 5000)})
            list(c.demo.events.find().limit(20))
        except Exception:
            time.sleep(0.2)
def churn():
    while time.time() < end:
        tls = random.random() < 0.7
        ok = random.random() < 0.85
        c = MongoClient(uri("alice" if ok else "mallory", "secret" if ok else "wrong", tls))
        try:
            c.admin.command("ping")
        except Exception:
            pass
        c.close()
        time.sleep(0.3)
def scanner():
    while time.time() < end:
        s = socket.socket()
        s.bind(("127.0.0.9", 0))
        try:
            s.connect(("127.0.0.1", port))
            s.recv(1)
        except OSError:
            pass
        s.close()
        time.sleep(0.2)
threads = [threading.Thread(target=f, args=a) for f, a in
           [(steady, (True,)), (steady, (True,)), (steady, (False,)), (churn, ()), (scanner, ())]]
for t in threads:
    t.start()
for t in threads:
    t.join()
PY
"$venv/bin/python" "$tmp/traffic.py" "$p" "$tmp" "$SECS" & traffic=$!
# A requireSSL period in the middle: plaintext reconnects are refused, then it is undone.
sleep $((SECS * 45 / 100)); "$moat" ctl --socket "$tmp/admin.sock" mode set requireSSL --force --no-persist
sleep $((SECS * 25 / 100)); "$moat" ctl --socket "$tmp/admin.sock" mode set preferSSL --no-persist
wait "$traffic"
sleep 2
mkdir -p "$root/docs"
"$venv/bin/python" "$here/render.py" --prometheus "http://127.0.0.1:$prom" --minutes "$(python3 -c "print($SECS/60)")" \
    --out "$root/docs/dashboard.png"
