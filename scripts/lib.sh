# Shared helpers for the stack, test and bench scripts: install and start what
# the project needs on a machine of this kind (Debian, no database servers
# installed): PostgreSQL and ClickHouse from Debian's packages, Apache Kafka
# from Maven Central (kafka-lib.sh). Sourced, not run.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STACK_DIR=${STACK_DIR:-$ROOT/.stack}
CH_HTTP_PORT=${CH_HTTP_PORT:-8123}
CH_TCP_PORT=${CH_TCP_PORT:-9000}
PG_HOST=${PG_HOST:-127.0.0.1}
PG_PORT=${PG_PORT:-5432}

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else die "need root for: $*"; fi
}

APT_UPDATED=
apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing ${missing[*]} (Debian packages)"
    if [ -z "$APT_UPDATED" ]; then as_root apt-get update -qq; APT_UPDATED=1; fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# Starts Debian's PostgreSQL (installing it where missing) and lets the
# local `postgres` role connect over loopback without a password, as the
# scripts, tests and README's commands do. This is a development database
# on 127.0.0.1 only: a production server keeps its own pg_hba.conf.
ensure_postgres() {
    if ! command -v pg_ctlcluster >/dev/null || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
        apt_install postgresql
    fi
    command -v pg_isready >/dev/null || apt_install postgresql-client
    local version
    version=$(ls /etc/postgresql | sort -n | tail -1)
    local hba=/etc/postgresql/$version/main/pg_hba.conf
    if ! as_root grep -q '^# outbox-relay: loopback trust' "$hba"; then
        log "PostgreSQL $version: trusting loopback connections ($hba)"
        as_root sed -i '1i # outbox-relay: loopback trust for the local development stack\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
        if pg_isready -q -h "$PG_HOST" -p "$PG_PORT" 2>/dev/null; then
            as_root pg_ctlcluster --skip-systemctl-redirect "$version" main reload
        fi
    fi
    # The relay stamps each message with its row's commit time where
    # Postgres keeps it (README, "Freshness").
    local conf=/etc/postgresql/$version/main/conf.d/outbox-relay.conf
    if ! as_root grep -qs '^track_commit_timestamp = on' "$conf"; then
        log "PostgreSQL $version: track_commit_timestamp = on ($conf)"
        as_root mkdir -p "$(dirname "$conf")"
        echo 'track_commit_timestamp = on' | as_root tee "$conf" >/dev/null
        if pg_isready -q -h "$PG_HOST" -p "$PG_PORT" 2>/dev/null; then
            as_root pg_ctlcluster --skip-systemctl-redirect "$version" main restart
        fi
    fi
    if pg_isready -q -h "$PG_HOST" -p "$PG_PORT" 2>/dev/null; then return 0; fi
    log "starting PostgreSQL $version"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    for _ in $(seq 1 60); do
        pg_isready -q -h "$PG_HOST" -p "$PG_PORT" && return 0
        sleep 0.5
    done
    die "PostgreSQL is not answering on $PG_HOST:$PG_PORT"
}

# What building needs besides Rust: OpenSSL's headers (TLS to Postgres,
# ClickHouse and Kafka) found through pkg-config.
ensure_build_deps() {
    apt_install libssl-dev pkg-config
}

clickhouse_up() { curl -sf "http://127.0.0.1:${1:-$CH_HTTP_PORT}/ping" >/dev/null 2>&1; }

# Starts a user-writable ClickHouse under $STACK_DIR/clickhouse unless one
# already answers on $CH_HTTP_PORT (the Debian package's service does not
# start by itself here).
ensure_clickhouse() {
    clickhouse_instance "$STACK_DIR/clickhouse" "$CH_HTTP_PORT" "$CH_TCP_PORT" 9009
}

# The benchmark's throw-away ClickHouse for the Kafka-engine peer: dropping
# a Kafka table kills an 18.16 server (its bundled librdkafka asserts when a
# subscribed consumer is destroyed), so that peer never runs in the shared
# one. `stop_peer_clickhouse` kills it and wipes its data.
PEER_CH_HTTP_PORT=${PEER_CH_HTTP_PORT:-8124}
ensure_peer_clickhouse() {
    clickhouse_instance "$STACK_DIR/clickhouse-peer" "$PEER_CH_HTTP_PORT" $((PEER_CH_HTTP_PORT + 880)) 9010 trace >&2
    echo "http://127.0.0.1:$PEER_CH_HTTP_PORT"
}
stop_peer_clickhouse() {
    stop_pidfile "$STACK_DIR/clickhouse-peer/pid"
    rm -rf "$STACK_DIR/clickhouse-peer/data"
}

# clickhouse_instance DIR HTTP_PORT TCP_PORT INTERSERVER_PORT [LOG_LEVEL]: a
# server with its data in DIR. kafka.auto_offset_reset=smallest is meant to let the
# Kafka-engine peer read a preloaded topic in a new group.
clickhouse_instance() {
    local dir=$1 http=$2 tcp=$3 interserver=$4 level=${5:-warning}
    if clickhouse_up "$http"; then return 0; fi
    command -v curl >/dev/null || apt_install curl
    command -v clickhouse-server >/dev/null || apt_install clickhouse-server
    mkdir -p "$dir/data" "$dir/log"
    log "starting ClickHouse on 127.0.0.1:$http (data in $dir)"
    nohup clickhouse-server --config-file=/etc/clickhouse-server/config.xml -- \
        --path="$dir/data/" --http_port="$http" --tcp_port="$tcp" \
        --interserver_http_port="$interserver" \
        --listen_host=127.0.0.1 --kafka.auto_offset_reset=smallest --logger.level="$level" \
        --logger.log="$dir/log/server.log" \
        --logger.errorlog="$dir/log/error.log" >"$dir/log/stdout.log" 2>&1 &
    echo $! >"$dir/pid"
    for _ in $(seq 1 120); do
        clickhouse_up "$http" && return 0
        sleep 0.5
    done
    die "ClickHouse did not start; see $dir/log/error.log"
}

stop_pidfile() {
    local file=$1
    [ -f "$file" ] || return 0
    local pid
    pid=$(cat "$file")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$file"
}

# shellcheck source=scripts/kafka-lib.sh
source "$ROOT/scripts/kafka-lib.sh"

# Points the tests at the services above: the local broker's listeners, CA
# and throw-away users as TEST_* variables, and TEST_BACKEND=local said
# outright (left to `auto`, the tests would pick testcontainers as soon as a
# Docker engine runs on the machine).
use_local_services() {
    while IFS='=' read -r name value; do export "TEST_$name=$value"; done < <(kafka_env)
    export TEST_KAFKA_BROKERS=$TEST_KAFKA_PLAINTEXT_BROKERS
    export TEST_BACKEND=local
}
