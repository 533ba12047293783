#!/usr/bin/env bash
# The delivery guarantee on a three-broker Kafka cluster (tests/it/cluster.rs):
# the tests start the cluster themselves (devstack::cluster: a KRaft
# controller and three brokers on loopback, replication factor 3,
# min.insync.replicas=2, topic auto-creation off) from the broker jars this
# script fetches with Maven (kafka-lib.sh; later runs reuse them offline),
# kill, restart and cut off brokers under load, and record a fault row each.
# .ci/run calls it after scripts/test.sh. Extra arguments go to `cargo test`.
#
#   scripts/cluster-test.sh                     the CI loop
#   FAULT_ROUNDS=long scripts/cluster-test.sh   each fault more than once
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
ensure_postgres
ensure_clickhouse
use_local_services
kafka_jars
export TEST_KAFKA_JARS=$KAFKA_CACHE/libs
ensure_build_deps
start=$SECONDS
cargo test -p outbox-tests --test it "$@" -- cluster:: --skip ch_cluster:: --test-threads=1
log "cluster tests: $((SECONDS - start)) s"
