#!/usr/bin/env bash
# The local stack on this machine, without Docker: PostgreSQL and ClickHouse
# (Debian packages, installed if missing), Apache Kafka (one KRaft broker from
# Maven Central, see scripts/kafka-lib.sh), and the relay, sink and stage
# built from this checkout, running the demo's five flows (demo/flows.toml
# and demo/migrations, given to the daemons as FLOWS_FILE and MIGRATIONS_DIR,
# followed by yours if you set those) with its dashboard.
#
#   scripts/stack.sh up      install/start everything, migrate, run relay + sink + stage
#                            (all flows; GENERATE_RATE=N also runs the demo's generator
#                            for every flow at N rows/s each)
#   scripts/stack.sh status  what runs, pending rows, rows in ClickHouse
#   scripts/stack.sh down    stop the daemons, Kafka and our ClickHouse
#   scripts/stack.sh wipe    down, then drop the stack's database, topics and data
#
# Settings for the daemons come from .stack/env (written by `up`); source it
# to use the same endpoints from your shell.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

DB=${STACK_DATABASE:-outbox}

# The demo's file or folder, then the entries of the list $2 (a user's own
# flows, README "Adding your own flow") other than the demo's.
with_demo() {
    local list=$1 item items
    IFS=, read -ra items <<<"${2:-}"
    for item in "${items[@]}"; do
        [ -n "$item" ] && [ "$item" != "$1" ] && list="$list,$item"
    done
    echo "$list"
}

up() {
    mkdir -p "$STACK_DIR/logs"
    ensure_postgres
    ensure_clickhouse
    log "building release binaries"
    ensure_build_deps
    cargo build --release --bins --quiet
    ensure_kafka
    psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -Atc "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1 ||
        psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -qc "CREATE DATABASE \"$DB\""
    cat >"$STACK_DIR/env" <<ENV
export DATABASE_URL=postgres://postgres@$PG_HOST:$PG_PORT/$DB
export KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT
export CLICKHOUSE_URL=http://127.0.0.1:$CH_HTTP_PORT
export CLICKHOUSE_DATABASE=$DB
export FLOWS_FILE="$(with_demo "$ROOT/demo/flows.toml" "${FLOWS_FILE:-}")"
export MIGRATIONS_DIR="$(with_demo "$ROOT/demo/migrations" "${MIGRATIONS_DIR:-}")"
ENV
    # shellcheck disable=SC1091
    source "$STACK_DIR/env"
    target/release/relay migrate
    target/release/sink migrate
    DAEMONS="relay sink"
    # The stage runs flows that have one (the demo's etl).
    case ",${FLOWS:-etl}," in *,etl,*) DAEMONS="$DAEMONS stage" ;; esac
    for daemon in relay sink stage; do
        stop_pidfile "$STACK_DIR/$daemon.pid"
        case " $DAEMONS " in *" $daemon "*) ;; *) continue ;; esac
        nohup "target/release/$daemon" run >>"$STACK_DIR/logs/$daemon.log" 2>&1 &
        echo $! >"$STACK_DIR/$daemon.pid"
    done
    stop_pidfile "$STACK_DIR/dashboard.pid"
    # The demo's dashboard: `sink dashboard`'s status per flow, and the sales charts.
    nohup target/release/outbox-demo dashboard >>"$STACK_DIR/logs/dashboard.log" 2>&1 &
    echo $! >"$STACK_DIR/dashboard.pid"
    DAEMONS="$DAEMONS dashboard"
    for flow in user_logins my_table router sales; do
        stop_pidfile "$STACK_DIR/generate-$flow.pid"
        if [ -n "${GENERATE_RATE:-}" ]; then
            nohup target/release/outbox-demo generate --flow "$flow" --rate "$GENERATE_RATE" \
                >>"$STACK_DIR/logs/generate-$flow.log" 2>&1 &
            echo $! >"$STACK_DIR/generate-$flow.pid"
        fi
    done
    sleep 1
    for daemon in $DAEMONS; do
        kill -0 "$(cat "$STACK_DIR/$daemon.pid")" 2>/dev/null || die "$daemon exited; see $STACK_DIR/logs/$daemon.log"
    done
    cat <<MSG

The pipeline runs (logs in $STACK_DIR/logs). Try it:

  psql -h $PG_HOST -U postgres $DB -c "INSERT INTO user_logins (username, event_type, event_time) VALUES ('alice', 'login', now())"
  curl -s http://127.0.0.1:$CH_HTTP_PORT/ --data-binary "SELECT * FROM $DB.user_logins FINAL ORDER BY id"
  (source .stack/env; target/release/outbox-demo generate --flow sales --rate 500)   # the demos' emitters
  (source .stack/env; target/release/outbox-demo watch)                              # the events watcher
  http://127.0.0.1:9180/                        # the dashboard (outbox-demo dashboard): status per flow, seed 002 sales

  scripts/stack.sh status | down | wipe
MSG
}

status() {
    if [ -f "$KAFKA_DIR/pid" ] && kill -0 "$(cat "$KAFKA_DIR/pid")" 2>/dev/null; then
        echo "kafka: running $KAFKA_VERSION (pid $(cat "$KAFKA_DIR/pid")) on 127.0.0.1:$KAFKA_PORT"
    else
        echo "kafka: stopped"
    fi
    for p in relay sink stage dashboard; do
        if [ -f "$STACK_DIR/$p.pid" ] && kill -0 "$(cat "$STACK_DIR/$p.pid")" 2>/dev/null; then
            echo "$p: running (pid $(cat "$STACK_DIR/$p.pid"))"
        else
            echo "$p: stopped"
        fi
    done
    clickhouse_up && echo "clickhouse: up on $CH_HTTP_PORT" || echo "clickhouse: down"
    for t in user_logins my_table user_clicks page_views orders sales warehouse; do
        psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -d "$DB" -Atc \
            "SELECT 'postgres $t: ' || count(*) || ' rows, ' || count(*) FILTER (WHERE sent_to_kafka IS NOT TRUE) || ' pending' FROM $t" 2>/dev/null || true
    done
    for t in user_logins my_table events clicks_table views_table orders_table sales stock_movements events_processed; do
        printf 'clickhouse %s: ' "$t"
        curl -sf "http://127.0.0.1:$CH_HTTP_PORT/" --data-binary "SELECT count() FROM $DB.$t FINAL" 2>/dev/null || echo "-"
    done
}

down() {
    for pidfile in "$STACK_DIR"/generate-*.pid; do [ -e "$pidfile" ] && stop_pidfile "$pidfile"; done
    stop_pidfile "$STACK_DIR/dashboard.pid"
    stop_pidfile "$STACK_DIR/stage.pid"
    stop_pidfile "$STACK_DIR/relay.pid"
    stop_pidfile "$STACK_DIR/sink.pid"
    stop_kafka
    stop_pidfile "$STACK_DIR/clickhouse/pid"
    log "stack stopped"
}

wipe() {
    down
    psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -qc "DROP DATABASE IF EXISTS \"$DB\"" 2>/dev/null || true
    rm -rf "$STACK_DIR"
    log "stack wiped (database $DB dropped, $STACK_DIR removed)"
}

case "${1:-}" in
    up) up ;;
    status) status ;;
    down) down ;;
    wipe) wipe ;;
    *) echo "usage: $0 up|status|down|wipe" >&2; exit 2 ;;
esac
