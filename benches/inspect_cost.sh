#!/usr/bin/env bash
# The cost of handshake inspection: the same MongoDB-speaking load (benches/wire_load.rs:
# real pymongo hello + OP_MSG pings, echoed by the shared loadgen backend) through moat
# with `[log] inspect = true` and `= false`, interleaved REPEAT times.
#
#   benches/inspect_cost.sh        # env: LG (loadgen), SECS [5], CONNS [16], REPEAT [3]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
LG=${LG:-$root/target/loadgen/release/loadgen}
SECS=${SECS:-5} CONNS=${CONNS:-16} REPEAT=${REPEAT:-3}
[[ -x $LG ]] || { echo "missing $LG: run benches/compare.sh once, or set LG" >&2; exit 1; }
cargo build --release --quiet --manifest-path "$root/Cargo.toml"
cargo bench --quiet --manifest-path "$root/Cargo.toml" --bench wire_load --no-run
load=$(ls -t "$root"/target/release/deps/wire_load-* | grep -v '\.d$' | head -1)
tmp=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$tmp"' EXIT
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; return 1; }
bport=$(port)
"$LG" backend --listen "127.0.0.1:$bport" >/dev/null 2>&1 & pids+=($!)
wait_port "$bport"
declare -A ports
for inspect in true false; do
    p=$(port); ports[$inspect]=$p
    printf '[listen]\naddress = "127.0.0.1:%s"\n[upstream]\naddress = "127.0.0.1:%s"\n[[firewall.rules]]\ncidr = "127.0.0.0/8"\ndescription = "bench"\n[log]\ninspect = %s\n' \
        "$p" "$bport" "$inspect" > "$tmp/moat-$inspect.toml"
    "$root/target/release/moat" run --config "$tmp/moat-$inspect.toml" > "$tmp/moat-$inspect.log" 2>&1 & pids+=($!)
    wait_port "$p"
done
for rep in $(seq "$REPEAT"); do
    for inspect in true false; do
        for mode in "" "--steady"; do
            line=$("$load" --target "127.0.0.1:${ports[$inspect]}" --conns "$CONNS" --secs "$SECS" $mode | tail -1)
            echo "inspect=$inspect rep=$rep $line"
        done
    done
done
echo "log lines written with inspection: $(wc -l < "$tmp/moat-true.log"), without: $(wc -l < "$tmp/moat-false.log")"
