#!/usr/bin/env bash
# Checks that the generated reference is what the code says: docs/testing.md
# (every integration test's doc comment) — CI runs this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 scripts/testing-doc.py --check
echo "docs: testing.md up to date"
