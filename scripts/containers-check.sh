#!/usr/bin/env bash
# The product in containers, as users run it (CI runs this: .ci/run):
#   1. the local images (scripts/images.sh: installs and starts the Docker
#      engine where missing; seconds when nothing changed);
#   2. the tests that make delivery claims on the testcontainers backend
#      (containers started by the test process from docker-compose.yml's
#      description): user_logins, broker, flows, etl; then the crash tests
#      of the fault suite (faults::relay, faults::sink), one at a time;
#   3. the compose stack, up, a row through it, down (scripts/compose-check.sh).
# Not run here: the systemd units under systemd in a container (systemd::,
# tests/it/systemd.rs): on this CI machine a unit's LoadCredential= is not
# readable by its own user in a container (docs/testing.md, "Backends").
# Extra arguments go to `cargo test`.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

started=$SECONDS
scripts/images.sh
ensure_build_deps
cargo build --workspace --bins --quiet
export TEST_BACKEND=testcontainers
fit_clickhouse_nofile
log "delivery tests on testcontainers"
step=$SECONDS
cargo test -p outbox-tests --test it "$@" -- user_logins:: broker:: flows:: etl::
log "took $((SECONDS - step)) s; the fault suite's crash tests on testcontainers"
step=$SECONDS
cargo test -p outbox-tests --test it "$@" -- faults::relay:: faults::sink:: --test-threads=1
log "took $((SECONDS - step)) s"
scripts/compose-check.sh
log "containers check took $((SECONDS - started)) s; Docker's disk use: $(docker_disk_use)"
