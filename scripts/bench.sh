#!/usr/bin/env bash
# The benchmark (see BENCHMARKS.md): starts what is missing, builds, runs.
#
#   scripts/bench.sh            full run (1,000,000-row backlog, 30 s latency run), release build
#   scripts/bench.sh --smoke    a few seconds, to keep it working (CI runs this on the debug build)
#   scripts/bench.sh --only kafka-cluster   relay and sink on three brokers it starts (RF 3, acks=all)
#
# A full run (no arguments) writes its table into BENCHMARKS.md between the
# `bench` markers, stamped with the commit and date.
#
# It measures on the real Kafka broker the scripts run (Apache Kafka, the
# version docker-compose.yml pins); ClickHouse's Kafka-engine peer runs in a
# throw-away ClickHouse of its own (scripts/peer-clickhouse.sh); Debezium's
# PostgreSQL connector runs in Kafka Connect standalone on the same Postgres
# and broker (scripts/peer-debezium.sh, fetched with Maven on first use).
# BENCH_KAFKA=mock measures on librdkafka's mock cluster instead, for
# comparison.
#
# Results: a Markdown table on stdout, JSON in target/bench/results.json.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
ensure_postgres
ensure_clickhouse
if [ "${BENCH_KAFKA:-}" != mock ]; then
    ensure_kafka
    export BENCH_KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT BENCH_KAFKA_VERSION=$KAFKA_VERSION
    BENCH_KAFKA_PID=$(cat "$KAFKA_DIR/pid")
    export BENCH_KAFKA_PID
    # `--only kafka-cluster` (and a full run) start three brokers from these.
    export KAFKA_JARS=$KAFKA_CACHE/libs
fi
# The Kafka-engine peer's own ClickHouse, a new one per measurement, thrown
# away afterwards.
export BENCH_PEER_CLICKHOUSE_RESTART=$ROOT/scripts/peer-clickhouse.sh
# Debezium's: Kafka Connect, started and stopped by the bench for its run.
export BENCH_PEER_DEBEZIUM=$ROOT/scripts/peer-debezium.sh
# The ClickHouse cluster (2 shards × 2 replicas, ZooKeeper) of the
# sink-cluster measurement, started for it and stopped after it.
export BENCH_CH_CLUSTER=$ROOT/scripts/ch-cluster.sh
trap 'stop_peer_clickhouse; scripts/ch-cluster.sh down >/dev/null 2>&1 || true' EXIT
profile=${BENCH_PROFILE:-release}
ensure_build_deps
if [ "$profile" = release ]; then
    cargo build --release --bins --quiet
else
    # --workspace, as scripts/test.sh builds them: the debug binaries the
    # tests run keep their crash points (the failpoints feature).
    cargo build --workspace --bins --quiet
fi
mkdir -p target/bench
"target/$profile/bench" "$@" | tee target/bench/results.md
# A full run of the default measurements is what BENCHMARKS.md shows.
if [ $# -eq 0 ] && [ "$profile" = release ]; then
    commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!docs' ':!README.md' ':!BENCHMARKS.md' || echo "+uncommitted")
    { printf 'Run of commit `%s`, %s (`scripts/bench.sh`, release build):\n\n' "$commit" "$(date -u +%F)"
      cat target/bench/results.md; } | scripts/splice.py BENCHMARKS.md bench
    log "BENCHMARKS.md updated from this run"
fi
