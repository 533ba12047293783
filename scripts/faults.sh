#!/usr/bin/env bash
# The fault suite's results table, from a run of the checked-out code (CI runs
# the short loop inside scripts/test.sh):
#
#   scripts/faults.sh                       long loop (FAULT_ROUNDS=long)
#   FAULT_ROUNDS=short scripts/faults.sh    the CI loop
#
# Every fault of tests/faults.rs, the stage's crash test (tests/etl.rs) and
# the delivery tests that record a row (ids out of commit order, retention
# races, ClickHouse type changes, resend and rewind, old record timestamps)
# run on the real broker (the mock-only Kafka faults on the mock cluster,
# the cluster faults of tests/it/cluster.rs on three brokers they start, the
# ClickHouse cluster's of tests/it/ch_cluster.rs on a 2×2 cluster of their
# own, Postgres failover of tests/it/pg_failover.rs on a primary and standby
# of their own), each writing the numbers it measured. The table goes to docs/faults.md,
# stamped with the commit and date. Exits non-zero, after writing, if a test failed or a row
# lost or doubled anything.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
ensure_postgres
ensure_clickhouse
ensure_kafka
use_local_services
# The cluster faults start their own three brokers from these jars.
export TEST_KAFKA_JARS=$KAFKA_CACHE/libs
export FAULT_ROUNDS=${FAULT_ROUNDS:-long}
export FAULT_RESULTS=$ROOT/target/fault-results-$FAULT_ROUNDS.jsonl
rm -f "$FAULT_RESULTS"
# The ClickHouse cluster's faults (a replica killed, ZooKeeper lost) run on
# a cluster of their own (scripts/ch-cluster.sh).
trap 'scripts/ch-cluster.sh down' EXIT
while IFS='=' read -r name value; do export "TEST_$name=$value"; done < <(scripts/ch-cluster.sh up)
ensure_build_deps
cargo build --workspace --bins --quiet
status=0
# The tests' own lines are kept too: a failed test is named under the
# table (one that failed before writing its row would otherwise be left out
# silently).
TEST_LOG=$ROOT/target/faults-$FAULT_ROUNDS.log
cargo test -p outbox-tests --test it -- --test-threads=1 faults:: etl::kill_9 commit_order:: \
    retention:: schema_change:: resend:: broker:: cluster:: ch_cluster:: pg_failover:: 2>&1 | tee "$TEST_LOG" >&2 \
    || status=$?
commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!docs' ':!README.md' || echo "+uncommitted")
table=$(python3 - "$FAULT_RESULTS" "$commit" "$FAULT_ROUNDS" "$TEST_LOG" <<'PY'
import datetime, json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(f"Run of commit `{sys.argv[2]}`, {datetime.date.today()}, `FAULT_ROUNDS={sys.argv[3]}` "
      f"(`scripts/faults.sh`), on Apache Kafka unless the row says *mock*.\n")
print("| fault | injected | rows sent | rows lost | doubled in FINAL view | raw duplicates stored | recovery | notes |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r['fault']} | {r['injected']} | {r['rows_sent']} | {r['rows_lost']} | {r['doubled_in_view']} | "
          f"{r['raw_duplicates']} | {r['recovery_ms'] / 1000:.1f} s | {r['note']} |")
bad = [r["fault"] for r in rows if r["rows_lost"] or r["doubled_in_view"]]
failed = [l.split()[1] for l in open(sys.argv[4], errors="replace")
          if l.startswith("test ") and l.rstrip().endswith("FAILED")]
if failed:
    bad += [f"test `{t}` failed (its output: target/faults-{sys.argv[3]}.log)" for t in failed]
if bad:
    print(f"\n**Failed:** {', '.join(bad)}")
PY
)
printf '# Fault suite results\n\n%s\n' "$table" >docs/faults.md
printf '%s\n' "$table"
if printf '%s' "$table" | grep -q '^\*\*Failed'; then status=1; fi
exit "$status"
