#!/usr/bin/env bash
# The ClickHouse cluster tests (tests/it/ch_cluster.rs), which `.ci/run`
# runs after scripts/test.sh: starts a cluster of 2 shards × 2 replicas with
# ZooKeeper afresh (scripts/ch-cluster.sh; the shared single ClickHouse is
# not touched), the shared Postgres and Kafka where missing, builds the
# binaries the tests run, runs the module one test at a time (the tests
# kill and restart the cluster's servers), then stops the cluster. Extra
# arguments go to `cargo test`. Measured here (2 cores, binaries built
# already): 1 min 51 s, of which the cluster's start 4 s and the tests 80 s.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

ensure_postgres
ensure_kafka
use_local_services
started=$SECONDS
trap 'scripts/ch-cluster.sh down' EXIT
while IFS='=' read -r name value; do export "TEST_$name=$value"; done < <(scripts/ch-cluster.sh up)
log "cluster up in $((SECONDS - started)) s: $TEST_CH_CLUSTER_URLS"
ensure_build_deps
cargo build --workspace --bins --quiet
log "the ClickHouse cluster tests"
cargo test -p outbox-tests --test it "$@" -- ch_cluster:: --test-threads=1
log "cluster tests done in $((SECONDS - started)) s"
