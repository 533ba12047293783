#!/usr/bin/env bash
# The local stack on this machine, without Docker: PostgreSQL and ClickHouse
# (Debian packages, installed if missing), Apache Kafka (one KRaft broker from
# Maven Central, see scripts/kafka-lib.sh), and the relay, sink and stage
# built from this checkout.
#
#   scripts/stack.sh up      install/start everything, migrate, run relay + sink + stage
#                            (all flows; GENERATE_RATE=N also runs the generator
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
ENV
    # shellcheck disable=SC1091
    source "$STACK_DIR/env"
    target/release/relay migrate
    target/release/sink migrate
    DAEMONS="relay sink"
    # The stage runs flows that have one (the built-in etl).
    case ",${FLOWS:-etl}," in *,etl,*) DAEMONS="$DAEMONS stage" ;; esac
    for daemon in relay sink stage; do
        stop_pidfile "$STACK_DIR/$daemon.pid"
        case " $DAEMONS " in *" $daemon "*) ;; *) continue ;; esac
        nohup "target/release/$daemon" run >>"$STACK_DIR/logs/$daemon.log" 2>&1 &
        echo $! >"$STACK_DIR/$daemon.pid"
    done
    stop_pidfile "$STACK_DIR/dashboard.pid"
    nohup target/release/sink dashboard >>"$STACK_DIR/logs/dashboard.log" 2>&1 &
    echo $! >"$STACK_DIR/dashboard.pid"
    DAEMONS="$DAEMONS dashboard"
    for flow in user_logins my_table router sales; do
        stop_pidfile "$STACK_DIR/generate-$flow.pid"
        if [ -n "${GENERATE_RATE:-}" ]; then
            nohup target/release/relay generate --flow "$flow" --rate "$GENERATE_RATE" \
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
  (source .stack/env; target/release/relay generate --flow sales --rate 500)   # the demos' emitters
  (source .stack/env; target/release/sink watch)                              # the events watcher
  http://127.0.0.1:9180/                        # the dashboard (sink dashboard): status per flow, seed 002 sales

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
