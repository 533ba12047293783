#!/usr/bin/env bash
# Debezium, the benchmark's change-data-capture peer: Kafka Connect
# standalone (org.apache.kafka:connect-runtime at the broker's version, the
# one docker-compose.yml pins) with Debezium's PostgreSQL connector
# (io.debezium:debezium-connector-postgres) installed as a plugin, as its own
# archive is. Both fetched once with Maven (devstack/debezium/pom.xml and
# devstack/debezium/connector/pom.xml) into a cache folder later runs reuse
# offline. The benchmark (bench/src/debezium.rs; scripts/bench.sh sets
# BENCH_PEER_DEBEZIUM to this script) writes the configuration and runs:
#
#   scripts/peer-debezium.sh fetch     fetches what is missing; prints
#                                      DEBEZIUM_VERSION=, KAFKA_VERSION= and
#                                      PLUGIN_PATH= (the worker's plugin.path)
#   scripts/peer-debezium.sh run DIR   becomes (exec) the Kafka Connect JVM
#                                      running DIR/worker.properties and
#                                      DIR/connector.properties
#
# The JVM starts as Kafka's connect-standalone.sh starts it: heap
# -Xms256M -Xmx2G (CONNECT_HEAP_OPTS), G1 with kafka-run-class.sh's options.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

DEBEZIUM_VERSION=3.6.1.Final
DEBEZIUM_CACHE=${DEBEZIUM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/outbox-relay/debezium-$DEBEZIUM_VERSION-connect-$KAFKA_VERSION}
CONNECT_HEAP_OPTS=${CONNECT_HEAP_OPTS:--Xms256M -Xmx2G}

# The worker's jars in libs/, the connector's in plugins/: runtime scope,
# without what the worker provides (Kafka's own jars, SLF4J).
debezium_jars() {
    [ -n "$KAFKA_VERSION" ] || die "no apache/kafka image version in docker-compose.yml"
    if [ -f "$DEBEZIUM_CACHE/.complete" ]; then return 0; fi
    command -v mvn >/dev/null || apt_install maven
    command -v java >/dev/null || apt_install openjdk-17-jre-headless
    log "fetching Kafka Connect $KAFKA_VERSION and Debezium $DEBEZIUM_VERSION with Maven into $DEBEZIUM_CACHE"
    rm -rf "$DEBEZIUM_CACHE"
    mkdir -p "$DEBEZIUM_CACHE"
    mvn -q -B -f "$ROOT/devstack/debezium/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
        dependency:copy-dependencies -DincludeScope=runtime \
        -DoutputDirectory="$DEBEZIUM_CACHE/libs" >&2 ||
        die "Maven could not fetch org.apache.kafka:connect-runtime:$KAFKA_VERSION"
    mvn -q -B -f "$ROOT/devstack/debezium/connector/pom.xml" -Ddebezium.version="$DEBEZIUM_VERSION" \
        dependency:copy-dependencies -DincludeScope=runtime -DexcludeGroupIds=org.apache.kafka,org.slf4j \
        -DoutputDirectory="$DEBEZIUM_CACHE/plugins/debezium-connector-postgres" >&2 ||
        die "Maven could not fetch io.debezium:debezium-connector-postgres:$DEBEZIUM_VERSION"
    touch "$DEBEZIUM_CACHE/.complete"
}

case "${1:-}" in
fetch)
    debezium_jars
    printf 'DEBEZIUM_VERSION=%s\nKAFKA_VERSION=%s\nPLUGIN_PATH=%s\n' \
        "$DEBEZIUM_VERSION" "$KAFKA_VERSION" "$DEBEZIUM_CACHE/plugins"
    ;;
run)
    dir=${2:?usage: peer-debezium.sh run DIR}
    [ -f "$dir/worker.properties" ] && [ -f "$dir/connector.properties" ] ||
        die "$dir needs worker.properties and connector.properties"
    debezium_jars
    # shellcheck disable=SC2086 # the heap options are words
    exec java $CONNECT_HEAP_OPTS -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
        -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent \
        -Djava.awt.headless=true -Dlog4j2.configurationFile="$ROOT/devstack/debezium/log4j2.xml" \
        -cp "$DEBEZIUM_CACHE/libs/*" org.apache.kafka.connect.cli.ConnectStandalone \
        "$dir/worker.properties" "$dir/connector.properties"
    ;;
*)
    die "usage: peer-debezium.sh fetch | run DIR"
    ;;
esac
