#!/usr/bin/env bash
# The fault suite's long loop (CI runs the short one inside scripts/test.sh):
# every fault of tests/faults.rs injected more often and for longer, then the
# results as the Markdown table README.md carries.
#
#   scripts/faults.sh            long loop (FAULT_ROUNDS=long), table on stdout
#   FAULT_ROUNDS=short scripts/faults.sh   the CI loop
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
ensure_postgres
ensure_clickhouse
export FAULT_ROUNDS=${FAULT_ROUNDS:-long}
export FAULT_RESULTS=$ROOT/target/fault-results-$FAULT_ROUNDS.jsonl
rm -f "$FAULT_RESULTS"
ensure_build_deps
cargo build --workspace --bins --quiet
cargo test -p outbox-tests --test faults --test etl -- --test-threads=1 >&2
python3 - "$FAULT_RESULTS" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("| fault | injected | rows sent | rows lost | doubled in FINAL view | raw duplicates stored | recovery | notes |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r['fault']} | {r['injected']} | {r['rows_sent']} | {r['rows_lost']} | {r['doubled_in_view']} | "
          f"{r['raw_duplicates']} | {r['recovery_ms'] / 1000:.1f} s | {r['note']} |")
PY
