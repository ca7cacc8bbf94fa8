#!/usr/bin/env bash
# Start moat in the foreground for ../shared/bench/run.sh (exec, so $! of the caller is its PID).
# Env from run.sh: PORT BACKEND CERT KEY RUNDIR. MOAT_BIN overrides the binary.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${MOAT_BIN:-$here/../../target/release/moat}
cat > "$RUNDIR/moat.toml" <<TOML
[listen]
address = "127.0.0.1:$PORT"
max_connections = 9500            # same as the HAProxy peer (fd limit 20000)

[upstream]
address = "$BACKEND"

[tls]
mode = "preferSSL"

[[tls.domains]]
name = "bench"
hostnames = ["localhost", "db.example.test"]
cert = "$CERT"
key = "$KEY"

[[firewall.rules]]
cidr = "127.0.0.0/8"
description = "bench on loopback"

[log]
level = "${MOAT_BENCH_LOG:-info}"
TOML
"$bin" check --config "$RUNDIR/moat.toml" >/dev/null
exec "$bin" run --config "$RUNDIR/moat.toml"
