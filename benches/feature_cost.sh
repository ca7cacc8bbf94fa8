#!/usr/bin/env bash
# What a feature costs: the same load through two moats that differ only in it, run
# side by side (interleaved REPEAT times) against the shared loadgen backend.
#
#   benches/feature_cost.sh inspect   # [log] inspect on/off; MongoDB-speaking load
#                                     # (benches/wire_load.rs: real pymongo hello + pings)
#   benches/feature_cost.sh metrics   # [metrics] on (scraped every second) / off; the
#                                     # 64-connection latency workload of ../shared/bench
#
# Env: LG (loadgen binary), SECS [5], CONNS [16 inspect, 64 metrics], REPEAT [3],
#      SCRAPE [1] (metrics: 0 = configured but not scraped).
set -euo pipefail
feature=${1:?usage: benches/feature_cost.sh inspect|metrics}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
LG=${LG:-$root/target/loadgen/release/loadgen}
SECS=${SECS:-5} REPEAT=${REPEAT:-3}
[[ -x $LG ]] || { echo "missing $LG: run benches/compare.sh once, or set LG" >&2; exit 1; }
cargo build --release --quiet --manifest-path "$root/Cargo.toml"
tmp=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$tmp"' EXIT
. "$here/lib.sh"
bport=$(port)
"$LG" backend --listen "127.0.0.1:$bport" >/dev/null 2>&1 & pids+=($!)
wait_port "$bport"

case $feature in
    inspect)
        CONNS=${CONNS:-16}
        cargo bench --quiet --manifest-path "$root/Cargo.toml" --bench wire_load --no-run
        load=$(ls -t "$root"/target/release/deps/wire_load-* | grep -v '\.d$' | head -1)
        on='[log]\ninspect = true\n'; off='[log]\ninspect = false\n'
        run_load() { # port
            for mode in "" "--steady"; do
                "$load" --target "127.0.0.1:$1" --conns "$CONNS" --secs "$SECS" $mode | tail -1
            done
        } ;;
    metrics)
        CONNS=${CONNS:-64}
        mport=$(port)
        on="[metrics]\nlisten = \"127.0.0.1:$mport\"\n"; off=''
        run_load() { # port
            local scraper=
            if [[ $1 == "${ports[on]}" && ${SCRAPE:-1} == 1 ]]; then
                # One keep-alive connection, like Prometheus (a curl per second would cost
                # this shared box more than the scrape does).
                python3 -c 'import http.client, sys, time
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
while True:
    c.request("GET", "/metrics"); c.getresponse().read(); time.sleep(1)' "$mport" & scraper=$!
            fi
            "$LG" latency --plain --target "127.0.0.1:$1" --conns "$CONNS" --secs "$SECS" | tail -1
            [[ -z $scraper ]] || kill "$scraper"
        } ;;
    *) echo "unknown feature $feature" >&2; exit 2 ;;
esac

# CPU seconds (user + system) moat has used: steadier than req/s on a shared 2-core box.

declare -A ports mpids
for side in on off; do
    p=$(port); ports[$side]=$p
    body=${!side}
    printf '[listen]\naddress = "127.0.0.1:%s"\n[upstream]\naddress = "127.0.0.1:%s"\n[[firewall.rules]]\ncidr = "127.0.0.0/8"\ndescription = "bench"\n' \
        "$p" "$bport" > "$tmp/moat-$side.toml"
    printf "$body" >> "$tmp/moat-$side.toml"
    "$root/target/release/moat" run --config "$tmp/moat-$side.toml" > "$tmp/moat-$side.log" 2>&1 & pids+=($!)
    mpids[$side]=$!
    wait_port "$p"
done
for rep in $(seq "$REPEAT"); do
    # Alternate which side goes first, so drift over the run does not favour one.
    order="on off"; (( rep % 2 == 0 )) && order="off on"
    for side in $order; do
        before=$(cpu "${mpids[$side]}")
        out=$(run_load "${ports[$side]}")
        after=$(cpu "${mpids[$side]}")
        echo "$out" | sed "s/^/$feature=$side rep=$rep moat_cpu_s=$(echo "$after - $before" | bc) /"
    done
done
