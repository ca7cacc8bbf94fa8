#!/usr/bin/env bash
# Two moat binaries side by side under the same load: moat's own CPU per unit of work,
# interleaved REPEAT times so drift on a shared box does not favour one side.
#
#   benches/ab.sh OLD_BIN NEW_BIN [WORKLOAD...]
#   e.g. cp target/release/moat /tmp/moat-old; <change>; cargo build --release
#        benches/ab.sh /tmp/moat-old target/release/moat lat64 hs
#
# Workloads: lat64 lat512 (64 B echo over 64/512 TLS connections), hs (full handshakes),
# res (resumed handshakes), up down (bulk, 16 connections).  Default: all of them.
# Env: LG (loadgen binary), SECS [5], REPEAT [3], CERTS (dir with loadgen's certs).
# Both run the config of benches/peers/moat.sh (preferSSL, info logs, inspection on).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
a=$(realpath "${1:?usage: benches/ab.sh OLD_BIN NEW_BIN [WORKLOAD...]}")
b=$(realpath "${2:?usage: benches/ab.sh OLD_BIN NEW_BIN [WORKLOAD...]}")
shift 2
workloads=${*:-lat64 lat512 hs res up down}
LG=${LG:-$root/target/loadgen/release/loadgen}
SECS=${SECS:-5} REPEAT=${REPEAT:-3}
[[ -x $LG ]] || { echo "missing $LG: run benches/compare.sh once, or set LG" >&2; exit 1; }
tmp=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$tmp"' EXIT
ulimit -n "$(ulimit -Hn)"
. "$here/lib.sh"

certs=${CERTS:-$tmp/certs}
[[ -f $certs/ca.pem ]] || "$LG" certs --out "$certs" >/dev/null
bport=$(port)
"$LG" backend --listen "127.0.0.1:$bport" >/dev/null 2>&1 & pids+=($!)
wait_port "$bport"

declare -A ports mpids
for side in a b; do
    p=$(port); ports[$side]=$p
    mkdir -p "$tmp/$side"
    PORT=$p BACKEND=127.0.0.1:$bport CERT=$certs/server.pem KEY=$certs/server-key.pem \
        RUNDIR=$tmp/$side MOAT_BIN=${!side} "$here/peers/moat.sh" > "$tmp/$side.log" 2>&1 &
    pids+=($!); mpids[$side]=$!
    wait_port "$p"
done

load() { # workload port
    local tls=(--target "127.0.0.1:$2" --ca "$certs/ca.pem" --suite TLS13_AES_128_GCM_SHA256 --kx X25519)
    case $1 in
        lat64) "$LG" latency "${tls[@]}" --conns 64 --msg 64 --secs "$SECS" ;;
        lat512) "$LG" latency "${tls[@]}" --conns 512 --msg 64 --secs "$SECS" ;;
        hs) "$LG" handshakes "${tls[@]}" --secs "$SECS" ;;
        res) "$LG" handshakes "${tls[@]}" --resume --secs "$SECS" ;;
        up | down) "$LG" throughput "${tls[@]}" --conns 16 --dir "$1" --secs "$SECS" ;;
        *) echo "unknown workload $1" >&2; exit 2 ;;
    esac | tail -1
}

# Work done per line: requests, handshakes, or bytes (as GB).
units() { # workload line
    case $1 in
        lat*) sed -n 's/.* requests=\([0-9]*\).*/\1/p' <<<"$2" ;;
        hs | res) sed -n 's/.* conns=\([0-9]*\).*/\1/p' <<<"$2" ;;
        up | down) sed -n 's/.* bytes=\([0-9]*\).*/\1/p' <<<"$2" | awk '{print $1 / 1e9}' ;;
    esac
}

for w in $workloads; do
    for rep in $(seq "$REPEAT"); do
        order="a b"; (( rep % 2 == 0 )) && order="b a"
        for side in $order; do
            before=$(cpu "${mpids[$side]}")
            out=$(load "$w" "${ports[$side]}")
            after=$(cpu "${mpids[$side]}")
            n=$(units "$w" "$out")
            per=$(awk -v c="$(echo "$after - $before" | bc)" -v n="$n" -v w="$w" \
                'BEGIN { if (n == 0) print "nan"; else if (w ~ /^(up|down)$/) printf "%.3f s/GB", c / n; else printf "%.1f us", c / n * 1e6 }')
            echo "$w $side rep=$rep cpu_per_unit=$per | $out"
        done
    done
done | tee "$tmp/out.txt"
echo
echo "median CPU per unit (a = $a, b = $b):"
for w in $workloads; do
    for side in a b; do
        m=$(grep "^$w $side " "$tmp/out.txt" | sed 's/.*cpu_per_unit=\([0-9.na]*\).*/\1/' | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}')
        printf '%s %s %s\n' "$w" "$side" "$m"
    done
done | awk '{k=$1; v[$2]=$3} $2=="b" {printf "%-7s a=%-9s b=%-9s b/a=%.3f\n", k, v["a"], v["b"], (v["a"] > 0 ? v["b"] / v["a"] : 0)}'
