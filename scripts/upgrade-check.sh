#!/usr/bin/env bash
# The upgrade with real binaries: a database migrated by an older build's
# `relay migrate` and `sink migrate` (e.g. one from before the demo moved out
# of the product, whose migrations created the demo's tables), then by this
# checkout's with the demo's MIGRATIONS_DIR, must end with the schema a fresh
# install by this checkout gets (`pg_dump --schema-only`, ClickHouse's
# SHOW CREATE TABLE), keep its rows, and have every demo table ready as a
# source. The test `a_database_migrated_with_the_demo_inside_upgrades_to_a_fresh_install`
# checks the same with the old SQL frozen in tests/fixtures; this runs the
# old binaries themselves.
#
#   scripts/upgrade-check.sh OLD_BIN_DIR      (holding the old `relay` and `sink`)
#
# Uses the local Postgres and ClickHouse (started by scripts/test.sh or
# stack.sh) and databases of its own, `upgrade_check_<pid>_{old,new}`,
# dropped at the end.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

old_bin=${1:?usage: $0 OLD_BIN_DIR}
for b in relay sink; do [ -x "$old_bin/$b" ] || die "$old_bin/$b is not an executable"; done
new_bin=$ROOT/target/debug
[ -x "$new_bin/relay" ] || cargo build --workspace --bins --quiet

run=upgrade_check_$$
pg="psql -h $PG_HOST -p $PG_PORT -U postgres -v ON_ERROR_STOP=1 -qAt"
ch() { curl -sf "http://127.0.0.1:$CH_HTTP_PORT/" --data-binary "$1"; }
cleanup() {
    for side in old new; do
        $pg -d postgres -c "DROP DATABASE IF EXISTS ${run}_$side" >/dev/null 2>&1 || true
        ch "DROP DATABASE IF EXISTS ${run}_$side" >/dev/null 2>&1 || true
    done
}
trap cleanup EXIT
# `migrate` of BIN on side SIDE, with extra settings.
migrate() {
    local bin=$1 side=$2
    shift 2
    env -i PATH="$PATH" RUST_LOG=warn "$@" DATABASE_URL="postgres://postgres@$PG_HOST:$PG_PORT/${run}_$side" \
        "$bin/relay" migrate
    env -i PATH="$PATH" RUST_LOG=warn "$@" CLICKHOUSE_URL="http://127.0.0.1:$CH_HTTP_PORT" \
        CLICKHOUSE_DATABASE="${run}_$side" "$bin/sink" migrate
}
schema() {
    local side=$1
    pg_dump -h "$PG_HOST" -p "$PG_PORT" -U postgres --schema-only "${run}_$side" |
        grep -v -e '^--' -e '^\\restrict' -e '^\\unrestrict'
    for table in $(ch "SELECT name FROM system.tables WHERE database = '${run}_$side' ORDER BY name"); do
        ch "SHOW CREATE TABLE ${run}_$side.$table" | sed "s/${run}_$side/DB/g"
    done
}

for side in old new; do $pg -d postgres -c "CREATE DATABASE ${run}_$side"; done
log "migrating ${run}_old with $old_bin"
migrate "$old_bin" old
$pg -d "${run}_old" -c "INSERT INTO user_logins (username, event_type, event_time)
    SELECT 'before-' || g, 'login', now() FROM generate_series(1, 3) g"
log "upgrading ${run}_old and installing ${run}_new with $new_bin"
migrate "$new_bin" old MIGRATIONS_DIR="$ROOT/demo/migrations"
migrate "$new_bin" new MIGRATIONS_DIR="$ROOT/demo/migrations"

tables=$(schema new | grep -c '^CREATE TABLE DB\.' || true)
[ "$tables" -ge 10 ] || die "a fresh install has $tables ClickHouse tables, not the demo's 9 and the record"
if ! diff <(schema old) <(schema new); then
    die "the upgraded schema (<) differs from a fresh install's (>)"
fi
rows=$($pg -d "${run}_old" -c "SELECT count(*) FROM user_logins WHERE sent_to_kafka IS NOT TRUE")
[ "$rows" = 3 ] || die "expected the 3 pending rows after the upgrade, found $rows"
unready=$($pg -d "${run}_old" -c "SELECT t FROM unnest(ARRAY['user_logins', 'my_table',
    'user_clicks', 'page_views', 'orders', 'sales', 'warehouse']) AS t
    WHERE cardinality(outbox_source_missing(t::regclass)) > 0")
[ -z "$unready" ] || die "not ready as sources after the upgrade: $unready"
echo "recorded in the upgraded database:"
$pg -d "${run}_old" -c "SELECT string_agg(name, ' ' ORDER BY applied_at, name) FROM outbox_schema_migrations"
log "upgrade check passed: same schema as a fresh install, rows kept, every demo table a ready source"
