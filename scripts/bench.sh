#!/usr/bin/env bash
# The benchmark (see BENCHMARKS.md): starts what is missing, builds, runs.
#
#   scripts/bench.sh            full run (1,000,000-row backlog, 30 s latency run), release build
#   scripts/bench.sh --smoke    a few seconds, to keep it working (CI runs this on the debug build)
#
# Results: a Markdown table on stdout, JSON in target/bench/results.json.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
ensure_postgres
ensure_clickhouse
profile=${BENCH_PROFILE:-release}
ensure_build_deps
if [ "$profile" = release ]; then
    cargo build --release --bins --quiet
else
    cargo build --bins --quiet
fi
"target/$profile/bench" "$@"
