#!/usr/bin/env bash
# Runs every test (unit, integration on private redis-servers, examples,
# doctests). Installs redis-server first if it is missing. Ends with one
# total line: "rtq: N passed, M failed".
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked "$@" 2>&1 | tee "$log" || status=$?
passed=$(grep -oE '^test result: .* ([0-9]+) passed' "$log" | grep -oE '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -oE '; [0-9]+ failed' "$log" | grep -oE '[0-9]+' | awk '{s+=$1} END {print s+0}')
echo "rtq: ${passed} passed, ${failed} failed"
exit "$status"
