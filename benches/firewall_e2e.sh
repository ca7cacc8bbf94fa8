#!/usr/bin/env bash
# Connect-time cost of the firewall end to end: plaintext connections per second through
# moat with 1 rule vs 100,000 rules (the loopback rule plus random CIDRs), same backend.
#
#   benches/firewall_e2e.sh            # needs the shared loadgen (benches/compare.sh builds it)
#
# Env: LG (loadgen binary), SECS [5], CONC [16], RULES [100000].
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
LG=${LG:-$root/target/loadgen/release/loadgen}
SECS=${SECS:-5} CONC=${CONC:-16} RULES=${RULES:-100000}
[[ -x $LG ]] || { echo "missing $LG: run benches/compare.sh once, or set LG" >&2; exit 1; }
cargo build --release --quiet --manifest-path "$root/Cargo.toml"
tmp=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$tmp"' EXIT
. "$here/lib.sh"
bport=$(port)
"$LG" backend --listen "127.0.0.1:$bport" >/dev/null 2>&1 & pids+=($!)

run() { # n_rules
    local n=$1 p cfg=$tmp/moat-$1.toml
    p=$(port)
    printf '[listen]\naddress = "127.0.0.1:%s"\n[upstream]\naddress = "127.0.0.1:%s"\n[log]\nlevel = "warn"\n' "$p" "$bport" > "$cfg"
    python3 - "$n" >> "$cfg" <<'PY'
import random, sys
n = int(sys.argv[1]); r = random.Random(7)
print('[[firewall.rules]]\ncidr = "127.0.0.0/8"\ndescription = "bench"')
seen = set()
while len(seen) < n - 1:
    a = r.getrandbits(32) & ~0xff
    if (a >> 24) == 127 or a in seen:
        continue
    seen.add(a)
    print('[[firewall.rules]]\ncidr = "%d.%d.%d.0/24"\ndescription = "r%d"' % (a >> 24, (a >> 16) & 255, (a >> 8) & 255, len(seen)))
PY
    "$root/target/release/moat" run --config "$cfg" >"$tmp/moat-$n.log" 2>&1 & local mp=$!; pids+=($mp)
    for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.05; done
    local line
    line=$("$LG" handshakes --plain --target "127.0.0.1:$p" --conc "$CONC" --secs "$SECS" | tail -1)
    echo "rules=$n $line"
    kill "$mp"; wait "$mp" 2>/dev/null || true
}
run 1
run "$RULES"
