#!/usr/bin/env bash
# Runs the whole test suite N times in a row to shake out flaky tests. Builds
# once, keeps going after failures, keeps every run's log, and ends with every
# failure (run, test binary, test name) and one summary line:
#   soak: N runs, K failed runs, failing tests: <binary>::<test> (count), ...
# Exits non-zero if any run failed.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  cat <<'EOF'
usage: scripts/soak-tests.sh N [cargo test args...]

Runs `cargo test --workspace --locked --no-fail-fast [args...]` N times in a
row (after one `--no-run` build) and reports every failure at the end.

  N                   number of runs (>= 1)
  cargo test args     passed to every run, e.g. `-p rtq-core --test faults`
                      or `-- --test-threads 1` (with -p/--package, the
                      default --workspace is left out)

Environment:
  SOAK_RUN_TIMEOUT    seconds one run may take before it is killed and
                      counted as failed (default 900, 0 = no limit)

Each run's full log is kept in a temp dir whose path is printed.
Exit status: 0 if every run passed, 1 if any failed, 2 on usage errors.
EOF
}

if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  usage
  [ $# -ge 1 ] && exit 0
  exit 2
fi
runs=$1
shift
if ! [[ "$runs" =~ ^[1-9][0-9]*$ ]]; then
  echo "soak: N must be a positive integer, got '$runs'" >&2
  usage >&2
  exit 2
fi
run_timeout=${SOAK_RUN_TIMEOUT:-900}

# cargo args are those before a `--`; the rest go to the test binaries and
# must not reach the build.
cargo_args=()
for arg in "$@"; do
  [ "$arg" = "--" ] && break
  cargo_args+=("$arg")
done
scope=(--workspace)
for arg in "${cargo_args[@]+"${cargo_args[@]}"}"; do
  case "$arg" in -p | --package | -p* | --package=*) scope=() ;; esac
done

scripts/ensure-deps.sh
logdir=$(mktemp -d -t rtq-soak.XXXXXX)
echo "soak: $runs runs, logs in $logdir"

echo "soak: building once..."
if ! cargo test "${scope[@]+"${scope[@]}"}" --locked --no-run \
  "${cargo_args[@]+"${cargo_args[@]}"}" >"$logdir/build.log" 2>&1; then
  tail -n 40 "$logdir/build.log" >&2
  echo "soak: build failed, see $logdir/build.log" >&2
  exit 1
fi

# Prints "<binary>::<test>" for every failed test in a cargo test log. The
# binary is the test executable's name without its hash (`faults`,
# `rtq_core`), or `doctest:<crate>` for doc tests. A binary that died without
# naming a failed test (crash, signal, timeout) is reported as
# `<binary>::<crashed>`.
failed_tests() {
  awk '
    function flush_binary() {
      if (binary != "" && binary_failed && !named) print binary "::<crashed>"
    }
    /^ *Running / {
      flush_binary()
      exe = $NF; sub(/\)$/, "", exe); sub(/.*\//, "", exe); sub(/-[0-9a-f]+$/, "", exe)
      binary = exe; binary_failed = 0; named = 0; next
    }
    /^ *Doc-tests / {
      flush_binary()
      binary = "doctest:" $2; binary_failed = 0; named = 0; next
    }
    /^test .* \.\.\. FAILED$/ {
      name = $0; sub(/^test /, "", name); sub(/ \.\.\. FAILED$/, "", name)
      print binary "::" name; named = 1; next
    }
    /^test result: FAILED/ { binary_failed = 1; next }
    /process didn.t exit successfully/ { binary_failed = 1; next }
    END { flush_binary() }
  ' "$1" | sort -u
}

failed_runs=0
all_failures=()
for ((run = 1; run <= runs; run++)); do
  log="$logdir/run-$run.log"
  start=$SECONDS
  status=0
  if [ "$run_timeout" -gt 0 ]; then
    timeout --kill-after=30 "$run_timeout" cargo test "${scope[@]+"${scope[@]}"}" --locked \
      --no-fail-fast "$@" >"$log" 2>&1 || status=$?
  else
    cargo test "${scope[@]+"${scope[@]}"}" --locked --no-fail-fast "$@" >"$log" 2>&1 || status=$?
  fi
  took=$((SECONDS - start))
  if [ "$status" -eq 0 ]; then
    echo "soak: run $run/$runs ok (${took}s)"
    continue
  fi
  failed_runs=$((failed_runs + 1))
  mapfile -t failures < <(failed_tests "$log")
  if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
    failures+=("<run timed out after ${run_timeout}s>")
  elif [ ${#failures[@]} -eq 0 ]; then
    failures+=("<run failed (exit $status) without a failed test: see log>")
  fi
  echo "soak: run $run/$runs FAILED (${took}s, exit $status): ${failures[*]}"
  for failure in "${failures[@]}"; do
    all_failures+=("run $run: $failure")
  done
done

echo
if [ ${#all_failures[@]} -gt 0 ]; then
  echo "soak: failures (logs: $logdir/run-<run>.log):"
  printf '  %s\n' "${all_failures[@]}"
  summary=$(printf '%s\n' "${all_failures[@]}" | sed 's/^run [0-9]*: //' | sort | uniq -c |
    sort -rn | awk '{c = $1; $1 = ""; sub(/^ /, ""); printf "%s%s (%d)", sep, $0, c; sep = ", "}')
else
  summary="none"
fi
echo "soak: logs in $logdir"
echo "soak: $runs runs, $failed_runs failed runs, failing tests: $summary"
[ "$failed_runs" -eq 0 ]
