#!/usr/bin/env bash
# Runs every test (unit, integration on private redis-servers, examples,
# doctests), then the Python package's pytest suite (python/test.sh).
# Installs what the tests need if it is missing (scripts/ensure-deps.sh).
# Ends with one total line: "rtq: N passed, M failed". Arguments go to
# `cargo test --workspace` (e.g. `-- --test-threads 1`); `-h` prints this.
set -euo pipefail
case "${1:-}" in -h|--help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
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
# The Python package (python/): built with maturin into target/pyenv, then
# its pytest suite; its counts join the total.
pylog=$(mktemp)
trap 'rm -f "$log" "$pylog"' EXIT
python/test.sh 2>&1 | tee "$pylog" || status=$?
py_summary=$(grep -E '[0-9]+ (passed|failed|errors?)(,.*)? in [0-9.]+s' "$pylog" | tail -1 || true)
py_passed=$(echo "$py_summary" | awk '{for (i = 1; i < NF; i++) if ($(i + 1) ~ /^passed/) s += $i} END {print s + 0}')
py_failed=$(echo "$py_summary" | awk '{for (i = 1; i < NF; i++) if ($(i + 1) ~ /^(failed|error)/) s += $i} END {print s + 0}')
if [ -z "$py_summary" ]; then
  echo "rtq: the Python suite did not run (see above)" >&2
  py_failed=$((py_failed + 1))
  status=1
fi
passed=$((passed + py_passed))
failed=$((failed + py_failed))
echo "rtq: ${passed} passed, ${failed} failed"
exit "$status"
