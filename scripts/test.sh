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
# The gateway's OpenAI SDK test (pytest, driven by gateway/tests/openai_sdk.rs)
# leaves its pytest counts here; they join the total below.
sdk_summary="${CARGO_TARGET_DIR:-target}/gateway-sdk-summary.txt"
rm -f "$sdk_summary"
cargo test --workspace --locked "$@" 2>&1 | tee "$log" || status=$?
passed=$(grep -oE '^test result: .* ([0-9]+) passed' "$log" | grep -oE '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -oE '; [0-9]+ failed' "$log" | grep -oE '[0-9]+' | awk '{s+=$1} END {print s+0}')
if [ -f "$sdk_summary" ]; then
  read -r sdk_passed sdk_failed < "$sdk_summary" || true
  passed=$((passed + ${sdk_passed:-0}))
  failed=$((failed + ${sdk_failed:-0}))
fi
echo "rtq: ${passed} passed, ${failed} failed"
exit "$status"
