#!/usr/bin/env bash
# The current-ClickHouse check: what the sink sends a server (migrations as
# `sink migrate` sends them to a current version, every column type the
# encoder writes, a redelivered batch under FINAL) run on the current engine
# PyPI's `chdb` carries in-process (see scripts/chdb_check.py). CI's own
# server is Debian's 18.16; this is where a current one is checked.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

CHDB_VERSION=${CHDB_VERSION:-4.4.0}
VENV=${CHDB_VENV:-$ROOT/target/chdb-venv}
if ! "$VENV/bin/python" -c "import chdb, sys; sys.exit(chdb.__version__ != '$CHDB_VERSION')" 2>/dev/null; then
    log "installing chdb $CHDB_VERSION (a current ClickHouse engine) into $VENV"
    python3 -m venv "$VENV" 2>/dev/null || { apt_install python3-venv; python3 -m venv "$VENV"; }
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "chdb==$CHDB_VERSION"
fi
cargo build --quiet -p sink --example chdb_fixture
"$VENV/bin/python" scripts/chdb_check.py "$ROOT/target/debug/examples/chdb_fixture"
