#!/usr/bin/env bash
# The release build, and the proof that it has no crash points: builds the
# binaries as `scripts/stack.sh`, `scripts/bench.sh` and the Docker image do
# (`cargo build --release`: the workspace's default members, without the test
# crate that turns the `failpoints` feature on), then runs the ignored test
# `a_release_build_ignores_crash_points` (tests/operations.rs): with
# OUTBOX_FAILPOINTS armed, the test build's relay exits 101 at its first batch
# while the release relay delivers every row and says the variable is ignored.
# Needs the services scripts/test.sh starts (run after it, as .ci/run does).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

ensure_postgres
ensure_clickhouse
ensure_kafka
use_local_services

ensure_build_deps
log "building the release binaries"
started=$(date +%s)
cargo build --release --locked --bins --quiet
log "release build took $(($(date +%s) - started)) s"
# The test build's relay (the control: crash points armed) next to it.
cargo build --workspace --bins --quiet
cargo test --quiet -p outbox-tests --test it -- \
    --ignored --exact operations::a_release_build_ignores_crash_points
