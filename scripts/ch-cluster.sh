#!/usr/bin/env bash
# A ClickHouse cluster of 2 shards × 2 replicas on this machine, for the
# cluster tests (scripts/ch-cluster-test.sh) and the benchmark's cluster
# run: four ClickHouse servers (Debian's package, as the single server of
# lib.sh) as user instances on loopback, and one ZooKeeper node (from Maven
# Central, cached like the Kafka broker's jars) for their replication and
# `ON CLUSTER` DDL — ClickHouse 18.16 has no Keeper of its own.
#
#   scripts/ch-cluster.sh up          start afresh (data wiped), wait until every server
#                                     answers and reaches ZooKeeper; print the endpoints
#   scripts/ch-cluster.sh down        stop everything, wipe the data
#   scripts/ch-cluster.sh env         the endpoints, as shell variables
#   scripts/ch-cluster.sh kill N      kill -9 server N (1-4)
#   scripts/ch-cluster.sh start N     start server N again (its data kept), wait until it answers
#   scripts/ch-cluster.sh kill-zk     kill -9 ZooKeeper
#   scripts/ch-cluster.sh start-zk    start ZooKeeper again (its data kept), wait until it answers
#
# The cluster is `outbox_2x2` (`CH_CLUSTER_NAME`): servers 1 and 2 are the
# replicas of shard 1, 3 and 4 those of shard 2 (macros {shard} = 1|2,
# {replica} = node1…node4); `outbox_2x2_each` has every server as its own
# shard (the tests count what each server was sent through it). Ports, chosen clear of the shared services
# (ClickHouse 8123/9000/9009, its Kafka-engine peer 8124, Kafka 9092-9097,
# Postgres 5432): HTTP 18123-18126, native 19101-19104, interserver
# 19201-19204, ZooKeeper 12181.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

CH_CLUSTER_DIR=${CH_CLUSTER_DIR:-$STACK_DIR/ch-cluster}
CH_CLUSTER_NAME=${CH_CLUSTER_NAME:-outbox_2x2}
CH_CLUSTER_HTTP=${CH_CLUSTER_HTTP:-18123}
CH_CLUSTER_TCP=${CH_CLUSTER_TCP:-19101}
CH_CLUSTER_INTERSERVER=${CH_CLUSTER_INTERSERVER:-19201}
ZK_PORT=${ZK_PORT:-12181}
ZK_VERSION=3.9.5
ZK_CACHE=${ZK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/outbox-relay/zookeeper-$ZK_VERSION}
ZK_DIR=$CH_CLUSTER_DIR/zookeeper
NODES=(1 2 3 4)

http_port() { echo $((CH_CLUSTER_HTTP + $1 - 1)); }
tcp_port() { echo $((CH_CLUSTER_TCP + $1 - 1)); }
shard_of() { echo $((($1 + 1) / 2)); }

# The server's jars: fetched once with Maven (runtime scope), then offline;
# again when devstack/zookeeper/pom.xml changes (.complete holds its hash).
zk_jars() {
    local pom_sum
    pom_sum=$(sha256sum "$ROOT/devstack/zookeeper/pom.xml" | cut -d' ' -f1)
    if [ "$(cat "$ZK_CACHE/.complete" 2>/dev/null)" = "$pom_sum" ]; then return 0; fi
    command -v mvn >/dev/null || apt_install maven
    command -v java >/dev/null || apt_install openjdk-17-jre-headless
    log "fetching Apache ZooKeeper $ZK_VERSION with Maven into $ZK_CACHE"
    rm -rf "$ZK_CACHE"
    mkdir -p "$ZK_CACHE"
    mvn -q -B -f "$ROOT/devstack/zookeeper/pom.xml" -Dzookeeper.version="$ZK_VERSION" \
        dependency:copy-dependencies -DincludeScope=runtime \
        -DoutputDirectory="$ZK_CACHE/libs" >&2 ||
        die "Maven could not fetch org.apache.zookeeper:zookeeper:$ZK_VERSION"
    echo "$pom_sum" >"$ZK_CACHE/.complete"
}

zk_up() {
    python3 - "$ZK_PORT" <<'PY' 2>/dev/null
import socket, sys
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2) as s:
    s.sendall(b"ruok")
    sys.exit(0 if s.recv(4) == b"imok" else 1)
PY
}

start_zk() {
    zk_jars
    mkdir -p "$ZK_DIR/data" "$ZK_DIR/log"
    cat >"$ZK_DIR/zoo.cfg" <<CFG
tickTime=1000
initLimit=10
syncLimit=5
dataDir=$ZK_DIR/data
clientPort=$ZK_PORT
clientPortAddress=127.0.0.1
maxClientCnxns=0
minSessionTimeout=2000
maxSessionTimeout=30000
admin.enableServer=false
4lw.commands.whitelist=ruok
CFG
    nohup java -Xms64m -Xmx128m -XX:+UseSerialGC -Djava.awt.headless=true \
        -Dorg.slf4j.simpleLogger.defaultLogLevel=warn -Dorg.slf4j.simpleLogger.showDateTime=true \
        -cp "$ZK_CACHE/libs/*" org.apache.zookeeper.server.quorum.QuorumPeerMain "$ZK_DIR/zoo.cfg" \
        >"$ZK_DIR/log/stdout.log" 2>&1 &
    echo $! >"$ZK_DIR/pid"
    local deadline=$((SECONDS + 60))
    while [ $SECONDS -lt $deadline ]; do
        kill -0 "$(cat "$ZK_DIR/pid")" 2>/dev/null || die "ZooKeeper exited; see $ZK_DIR/log/stdout.log"
        zk_up && return 0
        sleep 0.3
    done
    die "ZooKeeper did not answer within 60 s; see $ZK_DIR/log"
}

node_config() {
    local n=$1 dir=$CH_CLUSTER_DIR/node$1
    mkdir -p "$dir/data" "$dir/log" "$dir/config.d"
    cat >"$dir/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
    <logger>
        <level>warning</level>
        <log>$dir/log/server.log</log>
        <errorlog>$dir/log/error.log</errorlog>
        <size>50M</size>
        <count>2</count>
    </logger>
    <http_port>$(http_port "$n")</http_port>
    <tcp_port>$(tcp_port "$n")</tcp_port>
    <interserver_http_port>$((CH_CLUSTER_INTERSERVER + n - 1))</interserver_http_port>
    <interserver_http_host>127.0.0.1</interserver_http_host>
    <listen_host>127.0.0.1</listen_host>
    <path>$dir/data/</path>
    <tmp_path>$dir/data/tmp/</tmp_path>
    <user_files_path>$dir/data/user_files/</user_files_path>
    <users_config>/etc/clickhouse-server/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <max_concurrent_queries>50</max_concurrent_queries>
    <keep_alive_timeout>3</keep_alive_timeout>
    <mark_cache_size>268435456</mark_cache_size>
    <uncompressed_cache_size>268435456</uncompressed_cache_size>
    <mlock_executable>false</mlock_executable>
</yandex>
XML
    local replicas='' shard
    for shard in 1 2; do
        replicas+="            <shard>
                <internal_replication>true</internal_replication>
                <replica><host>127.0.0.1</host><port>$(tcp_port $((2 * shard - 1)))</port></replica>
                <replica><host>127.0.0.1</host><port>$(tcp_port $((2 * shard)))</port></replica>
            </shard>
"
    done
    # Every server its own shard: the tests count what each server was sent.
    local each='' m
    for m in "${NODES[@]}"; do
        each+="            <shard><replica><host>127.0.0.1</host><port>$(tcp_port "$m")</port></replica></shard>
"
    done
    cat >"$dir/config.d/cluster.xml" <<XML
<?xml version="1.0"?>
<yandex>
    <zookeeper>
        <node><host>127.0.0.1</host><port>$ZK_PORT</port></node>
        <session_timeout_ms>6000</session_timeout_ms>
        <operation_timeout_ms>3000</operation_timeout_ms>
    </zookeeper>
    <macros>
        <shard>$(shard_of "$n")</shard>
        <replica>node$n</replica>
    </macros>
    <remote_servers>
        <$CH_CLUSTER_NAME>
$replicas        </$CH_CLUSTER_NAME>
        <${CH_CLUSTER_NAME}_each>
$each        </${CH_CLUSTER_NAME}_each>
    </remote_servers>
    <distributed_ddl>
        <path>/clickhouse/task_queue/ddl</path>
    </distributed_ddl>
</yandex>
XML
}

start_node() {
    local n=$1 dir=$CH_CLUSTER_DIR/node$1
    command -v clickhouse-server >/dev/null || apt_install clickhouse-server
    [ -f "$dir/config.xml" ] || node_config "$n"
    nohup clickhouse-server --config-file="$dir/config.xml" >"$dir/log/stdout.log" 2>&1 &
    echo $! >"$dir/pid"
}

# Waits until server N answers and (with ZooKeeper up) reaches it.
wait_node() {
    local n=$1 deadline=$((SECONDS + 90)) url
    url="http://127.0.0.1:$(http_port "$1")/"
    while [ $SECONDS -lt $deadline ]; do
        kill -0 "$(cat "$CH_CLUSTER_DIR/node$n/pid")" 2>/dev/null ||
            die "ClickHouse server $n exited; see $CH_CLUSTER_DIR/node$n/log/error.log"
        if curl -sf "$url" --data-binary "SELECT count() FROM system.zookeeper WHERE path = '/'" >/dev/null 2>&1 ||
            { ! zk_up && clickhouse_up "$(http_port "$n")"; }; then
            return 0
        fi
        sleep 0.3
    done
    die "ClickHouse server $n did not answer within 90 s; see $CH_CLUSTER_DIR/node$n/log"
}

kill9() {
    local file=$1
    [ -f "$file" ] || return 0
    kill -KILL "$(cat "$file")" 2>/dev/null || true
    local pid
    pid=$(cat "$file")
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
}

print_env() {
    local urls=() n
    for n in "${NODES[@]}"; do urls+=("http://127.0.0.1:$(http_port "$n")"); done
    echo "CH_CLUSTER_NAME=$CH_CLUSTER_NAME"
    echo "CH_CLUSTER_URLS=$(IFS=,; echo "${urls[*]}")"
}

down() {
    local n
    for n in "${NODES[@]}"; do stop_pidfile "$CH_CLUSTER_DIR/node$n/pid"; done
    stop_pidfile "$ZK_DIR/pid"
    rm -rf "$CH_CLUSTER_DIR"
}

up() {
    down
    log "starting ZooKeeper $ZK_VERSION on 127.0.0.1:$ZK_PORT and a ClickHouse cluster of 2 shards x 2 replicas (HTTP $CH_CLUSTER_HTTP-$((CH_CLUSTER_HTTP + 3))) in $CH_CLUSTER_DIR"
    start_zk
    local n
    for n in "${NODES[@]}"; do node_config "$n"; start_node "$n"; done
    for n in "${NODES[@]}"; do wait_node "$n"; done
    print_env
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    env) print_env ;;
    kill) kill9 "$CH_CLUSTER_DIR/node${2:?server 1-4}/pid" ;;
    start) start_node "${2:?server 1-4}"; wait_node "$2" ;;
    kill-zk) kill9 "$ZK_DIR/pid" ;;
    start-zk) start_zk ;;
    *) die "usage: $0 up|down|env|kill N|start N|kill-zk|start-zk" ;;
esac
