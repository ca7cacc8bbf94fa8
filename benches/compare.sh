#!/usr/bin/env bash
# moat beside HAProxy, nginx and stunnel in one run of ../shared/bench/run.sh.
#
#   benches/compare.sh                     # all peers, run.sh defaults (~8 min)
#   PEERS="nginx moat" SECS=3 benches/compare.sh
#
# Needs: apt-get install -y haproxy stunnel4 nginx libnginx-mod-stream (for the peers).
# Builds moat (release) and the shared loadgen first. Other run.sh knobs pass through.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
bench=${BENCH_DIR:-$root/../shared/bench}
cargo build --release --manifest-path "$root/Cargo.toml"
export CARGO_TARGET_DIR=${LOADGEN_TARGET:-$root/target/loadgen}
cargo build --release --manifest-path "$bench/loadgen/Cargo.toml"
export LG=$CARGO_TARGET_DIR/release/loadgen
export PEERS=${PEERS:-"haproxy stunnel nginx moat"}
export PEER_CMD_moat="$here/peers/moat.sh"
exec "$bench/run.sh"
