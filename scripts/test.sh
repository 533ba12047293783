#!/usr/bin/env bash
# Runs every test against real services: installs and starts PostgreSQL,
# ClickHouse and Apache Kafka (one KRaft broker, started once for the whole
# suite; each test keeps its own topics, groups and transactional ids) where
# missing, and Chromium for the dashboard test; builds the binaries the crash
# tests run, then `cargo test --workspace`. Extra arguments go to `cargo test`.
# The few fault-injection tests that need librdkafka's mock cluster start it
# themselves (their names say so). Then the current-ClickHouse check
# (scripts/chdb-check.sh: a current engine from PyPI's chdb, in-process).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

ensure_postgres
ensure_clickhouse
ensure_kafka
# The tests find the broker's listeners, CA and throw-away users here (and
# run on these services, not on containers).
use_local_services
# The dashboard's end-to-end test drives headless Chromium.
apt_install chromium

# Leftovers of earlier runs: each test makes its own t_* databases.
psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -Atc \
    "SELECT datname FROM pg_database WHERE datname LIKE 't\_%'" 2>/dev/null |
    while read -r db; do psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -qc "DROP DATABASE IF EXISTS \"$db\"" >/dev/null 2>&1 || true; done
# …and t_* roles (the least-privilege test), free once their database is gone.
psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -Atc \
    "SELECT rolname FROM pg_roles WHERE rolname LIKE 't\_%'" 2>/dev/null |
    while read -r role; do psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -qc "DROP ROLE IF EXISTS \"$role\"" >/dev/null 2>&1 || true; done
curl -sf "http://127.0.0.1:$CH_HTTP_PORT/" --data-binary "SELECT name FROM system.databases WHERE name LIKE 't\\_%'" 2>/dev/null |
    while read -r db; do curl -sf "http://127.0.0.1:$CH_HTTP_PORT/" --data-binary "DROP DATABASE IF EXISTS \`$db\`" >/dev/null || true; done

log "building"
ensure_build_deps
cargo build --workspace --bins --quiet
log "testing"
# Everything but the fault suite, then the fault suite alone, one test at a
# time: it restarts the shared Postgres and loads the machine. One
# integration binary (tests/it) serves both. The three-broker cluster tests
# run in scripts/cluster-test.sh, the ClickHouse cluster tests (ch_cluster::,
# a cluster of their own) in scripts/ch-cluster-test.sh (.ci/run calls both);
# the systemd units need the testcontainers backend (tests/it/systemd.rs).
cargo test --workspace "$@" -- --skip faults:: --skip cluster:: --skip ch_cluster:: --skip pg_failover::
# The fault suite and the Postgres failover tests (a primary and a standby of
# their own, killed and promoted), one test at a time.
log "the fault suite"
cargo test -p outbox-tests --test it "$@" -- faults:: pg_failover:: --test-threads=1
log "checking what the sink sends a current ClickHouse (chdb)"
scripts/chdb-check.sh
