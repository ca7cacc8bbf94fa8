#!/usr/bin/env bash
# Installs what moat's tests and demo need on a fresh Debian 12 machine, and only what is
# missing: a few Debian packages (as root), a Python venv (.venv) with the pinned
# secantusdb + pymongo from tests/py/requirements.txt, and sslyze in its own venv.
#
#   scripts/deps.sh          # everything the tests need
#   scripts/deps.sh venv     # only the venv (the demo)
#   scripts/deps.sh mongosh  # only mongosh, into .deps (scripts/mongosh does this on first use)
set -euo pipefail
cd "$(dirname "$0")/.."

# Test peers: openssl s_client, Debian's pymongo 3.11 (legacy OP_QUERY handshake),
# promtool (from prometheus) to check the metrics exposition and alert rules, the TLS
# scanner testssl.sh (tests/scanners.rs), and pebble and pebble-challtestsrv (an ACME test
# CA and its mock DNS) for certificates from ACME, and faketime, so that `openssl ocsp`
# writes an OCSP response that has already expired (tests/ocsp.rs).
APT_PACKAGES=(openssl python3-pymongo prometheus testssl.sh pebble faketime)

need_apt() {
    local missing=()
    for p in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing Debian packages: ${missing[*]} (run: sudo apt-get install -y ${missing[*]})" >&2
        return 1
    fi
    echo "installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

need_venv() {
    local req=tests/py/requirements.txt stamp=.venv/.requirements
    if [ -x .venv/bin/python ] && cmp -s "$req" "$stamp"; then return 0; fi
    echo "creating .venv from $req" >&2
    rm -rf .venv
    python3 -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check -r "$req"
    cp "$req" "$stamp"
}

# sslyze (tests/scanners.rs) in a venv of its own: its pinned cryptography and nassl must
# not meet secantusdb's dependencies.
SSLYZE_VERSION=6.3.1
need_sslyze() {
    local venv=.venv-sslyze
    if [ -x "$venv/bin/sslyze" ] && [ "$(cat "$venv/.version" 2>/dev/null)" = "$SSLYZE_VERSION" ]; then
        return 0
    fi
    echo "creating $venv with sslyze $SSLYZE_VERSION" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "sslyze==$SSLYZE_VERSION"
    echo "$SSLYZE_VERSION" > "$venv/.version"
}

# mongosh (npm, ~60 s the first time): a real driver with a legacy OP_QUERY handshake.
MONGOSH_VERSION=2.12.0
need_mongosh() {
    local bin=.deps/mongosh/node_modules/.bin/mongosh
    if [ -x "$bin" ] && grep -q "\"version\": \"$MONGOSH_VERSION\"" .deps/mongosh/node_modules/mongosh/package.json 2>/dev/null; then
        return 0
    fi
    command -v npm >/dev/null || { echo "npm is needed for mongosh (apt-get install -y npm)" >&2; return 1; }
    echo "installing mongosh $MONGOSH_VERSION into .deps/mongosh" >&2
    npm install --prefix .deps/mongosh --no-audit --no-fund --loglevel=error "mongosh@$MONGOSH_VERSION" >/dev/null
}

need_rust_tools() {
    cargo fmt --version >/dev/null 2>&1 && cargo clippy --version >/dev/null 2>&1 && return 0
    rustup component add rustfmt clippy
}

case "${1:-all}" in
    venv) need_venv ;;
    mongosh) need_mongosh ;;
    all) need_apt; need_venv; need_sslyze; need_mongosh; need_rust_tools ;;
    *) echo "usage: scripts/deps.sh [all|venv|mongosh]" >&2; exit 2 ;;
esac
