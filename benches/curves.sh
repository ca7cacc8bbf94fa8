#!/usr/bin/env bash
# How moat's costs grow with load: the curves in BENCHMARKS.md.
#
#   benches/curves.sh [conns] [idle] [domains] [rules]      # default: all four
#
#   conns    req/s, p99 and moat's CPU per request at 64, 512 and 5,000 TLS connections
#            (64 B echo; CONNS to change the points)
#   idle     RSS growth per held idle TLS connection, a fresh moat per point (IDLE to change
#            the points; each held connection costs moat two descriptors, so the largest
#            point this machine can hold is about half of `ulimit -Hn`)
#   domains  full handshakes/s and CPU per handshake with 1 and 1,000 [[tls.domains]]
#            (hash lookups: where the dialled domain sits does not matter), interleaved REPEAT times
#   rules    plaintext connections/s with 1 rule and with 1,000 / 100,000 (benches/firewall_e2e.sh)
#
# Env: LG (the shared loadgen; benches/compare.sh builds it), SECS [5], REPEAT [3].
# moat runs benches/peers/moat.sh's config (preferSSL, info logs, inspection on).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
LG=${LG:-$root/target/loadgen/release/loadgen}
SECS=${SECS:-5} REPEAT=${REPEAT:-3}
CONNS=${CONNS:-"64 512 5000"}
IDLE=${IDLE:-"1000 5000 9000"}
curves=${*:-conns idle domains rules}
bin=$root/target/release/moat
[[ -x $LG ]] || { echo "missing $LG: run benches/compare.sh once, or set LG" >&2; exit 1; }
[[ -x $bin ]] || { echo "missing $bin: cargo build --release" >&2; exit 1; }
tmp=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$tmp"' EXIT
ulimit -n "$(ulimit -Hn)"
. "$here/lib.sh"
field() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" <<<" $2"; }

certs=$tmp/certs
"$LG" certs --out "$certs" >/dev/null
bport=$(port)
"$LG" backend --listen "127.0.0.1:$bport" >/dev/null 2>&1 & pids+=($!)
wait_port "$bport"
tls=(--ca "$certs/ca.pem" --suite TLS13_AES_128_GCM_SHA256 --kx X25519)

# Starts moat with benches/peers/moat.sh's config, and a TOML file of more domains appended.
# Sets $mport and $mpid.
start_moat() { # name [extra.toml]
    local dir=$tmp/$1 mb=$bin
    mkdir -p "$dir"
    mport=$(port)
    if [[ -n ${2:-} ]]; then
        # moat.sh writes its config, checks it, then execs moat: a wrapper appends ours
        # before the check.
        cp "$2" "$dir/extra.toml"
        # Several domains need a default: the bench domain.
        printf '#!/bin/sh\nif [ "$1" = check ]; then sed -i %q %q; cat %q >> %q; fi\nexec %q "$@"\n' \
            's/^mode = .*/&\ndefault_domain = "bench"/' "$dir/moat.toml" \
            "$dir/extra.toml" "$dir/moat.toml" "$bin" > "$dir/moat-wrapper"
        chmod +x "$dir/moat-wrapper"
        mb=$dir/moat-wrapper
    fi
    PORT=$mport BACKEND=127.0.0.1:$bport CERT=$certs/server.pem KEY=$certs/server-key.pem \
        RUNDIR=$dir MOAT_BIN=$mb "$here/peers/moat.sh" > "$dir/log" 2>&1 &
    mpid=$!  # moat.sh and the wrapper exec: this is moat's own PID
    pids+=($mpid)
    wait_port "$mport" || { echo "moat $1 did not start:" >&2; tail "$dir/log" >&2; exit 1; }
}

stop_moat() { kill "$mpid" 2>/dev/null || true; wait "$mpid" 2>/dev/null || true; }

curve_conns() {
    echo "## req/s, p99 and moat CPU per request against connections (64 B echo, SECS=$SECS)"
    echo "| connections | req/s | p99 µs | moat CPU µs/request |"
    echo "|---|---|---|---|"
    start_moat conns
    for n in $CONNS; do
        local before after out
        before=$(cpu "$mpid")
        out=$("$LG" latency --target "127.0.0.1:$mport" "${tls[@]}" --conns "$n" --msg 64 --secs "$SECS" | tail -1)
        after=$(cpu "$mpid")
        awk -v n="$n" -v r="$(field requests "$out")" -v rps="$(field rps "$out")" \
            -v p99="$(field p99_us "$out")" -v c="$before" -v d="$after" \
            'BEGIN { printf "| %d | %.0f | %s | %.1f |\n", n, rps, p99, (r > 0 ? (d - c) / r * 1e6 : 0) }'
    done
    stop_moat
}

curve_idle() {
    echo "## RSS growth per idle TLS connection (a fresh moat per point)"
    echo "| held | KiB per connection | loadgen line |"
    echo "|---|---|---|"
    for n in $IDLE; do
        start_moat "idle$n"
        local out
        out=$("$LG" idle --target "127.0.0.1:$mport" "${tls[@]}" --conns "$n" --pid "$mpid" | tail -1)
        awk -v n="$n" -v k="$(field kib_per_conn "$out")" -v l="$out" \
            'BEGIN { printf "| %d | %s | `%s` |\n", n, k, l }'
        stop_moat
    done
}

curve_domains() {
    echo "## full handshakes against [[tls.domains]] (the client dials the first domain's name; REPEAT=$REPEAT)"
    echo "| domains | handshakes/s (median) | moat CPU µs/handshake (median) |"
    echo "|---|---|---|"
    # 999 other domains, each with an exact and a wildcard name, sharing one certificate
    # from the loadgen's CA that carries all their names (the lookup is what this measures).
    local i sans=""
    for i in $(seq -f %04g 1 999); do sans+="DNS:node1.d$i.example.net,DNS:*.a$i.example.net,"; done
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=many \
        -keyout "$tmp/many-key.pem" -out "$tmp/many.csr" 2>/dev/null
    printf 'subjectAltName=%s\n' "${sans%,}" > "$tmp/many.ext"
    openssl x509 -req -in "$tmp/many.csr" -CA "$certs/ca.pem" -CAkey "$certs/ca-key.pem" \
        -CAcreateserial -days 2 -extfile "$tmp/many.ext" -out "$tmp/many.pem" 2>/dev/null
    for i in $(seq -f %04g 1 999); do
        printf '\n[[tls.domains]]\nname = "d%s"\nhostnames = ["node1.d%s.example.net", "*.a%s.example.net"]\ncert = "%s"\nkey = "%s"\n' \
            "$i" "$i" "$i" "$tmp/many.pem" "$tmp/many-key.pem"
    done > "$tmp/domains.toml"
    start_moat dom1; local p1=$mport m1=$mpid
    start_moat dom1000 "$tmp/domains.toml"; local p1000=$mport m1000=$mpid
    local rep side p m before after out
    for rep in $(seq "$REPEAT"); do
        for side in 1 1000; do
            if [[ $side == 1 ]]; then p=$p1 m=$m1; else p=$p1000 m=$m1000; fi
            before=$(cpu "$m")
            out=$("$LG" handshakes --target "127.0.0.1:$p" "${tls[@]}" --sni db.example.test --secs "$SECS" | tail -1)
            after=$(cpu "$m")
            awk -v s="$side" -v n="$(field conns "$out")" -v r="$(field conns_per_s "$out")" -v c="$before" -v d="$after" \
                'BEGIN { printf "%s %.0f %.1f\n", s, r, (n > 0 ? (d - c) / n * 1e6 : 0) }'
        done
    done > "$tmp/domains.txt"
    median() { sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
    for side in 1 1000; do
        printf '| %s | %s | %s |\n' "$side" \
            "$(awk -v s="$side" '$1 == s {print $2}' "$tmp/domains.txt" | median)" \
            "$(awk -v s="$side" '$1 == s {print $3}' "$tmp/domains.txt" | median)"
    done
    kill "$m1" "$m1000" 2>/dev/null || true
}

curve_rules() {
    echo "## plaintext connections/s against firewall rules (benches/firewall_e2e.sh)"
    for n in 1000 100000; do
        LG=$LG SECS=$SECS RULES=$n "$here/firewall_e2e.sh" | tail -3
    done
}

for c in $curves; do
    "curve_$c"
    echo
done
