#!/usr/bin/env bash
# Checks that the generated references are what the code says:
# docs/testing.md (every integration test's doc comment) and
# docs/settings.md (the settings' declarations, flows/src/settings/table.rs)
# — CI runs this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 scripts/testing-doc.py --check
echo "docs: testing.md up to date"
generated=$(mktemp)
trap 'rm -f "$generated"' EXIT
cargo run -q -p flows --example settings-doc >"$generated"
if ! diff -u docs/settings.md "$generated"; then
    echo "docs/settings.md differs from the settings' declarations (diff above); regenerate it:" >&2
    echo "  cargo run -q -p flows --example settings-doc > docs/settings.md" >&2
    exit 1
fi
echo "docs: settings.md up to date"
