#!/usr/bin/env bash
# The chaos run (examples/chaos.rs): N rtq-worker processes under load are
# killed with -9, stopped past their lease, drained with SIGTERM and
# restarted under the same and new ids; then the protocol's guarantees are
# checked against Redis. Builds the worker and the example first. Prints a
# Markdown summary for BENCHMARKS.md; exit 1 names each failed check.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  cat <<'USAGE'
usage: scripts/chaos.sh [--long] [--release] [chaos options...]

  (default)   a short run: 20 s of chaos, seed from the clock (the suite runs 15 s)
  --long      10 minutes of chaos, with Redis on AOF killed and restarted 3 times
  --release   build and run release binaries (default: debug, as CI)

Every other argument goes to the chaos example (they override the above),
e.g. `scripts/chaos.sh --seed 42`, `scripts/chaos.sh --duration 120 --workers 6`,
`scripts/chaos.sh --stream-queue` (a stream queue, protocol v3, and its checks).
Options of the example:
USAGE
}

profile=debug
build_flags=()
preset=(--duration 20)
pass=()
for arg in "$@"; do
  case "$arg" in
    -h|--help) usage; help=1 ;;
    --long) preset=(--duration 600 --aof --redis-restarts 3) ;;
    --release) profile=release; build_flags=(--release) ;;
    *) pass+=("$arg") ;;
  esac
done

scripts/ensure-deps.sh
# Two builds: with --example, cargo builds no binary of the other package,
# and a fresh tree has no rtq-worker yet.
cargo build --locked -q "${build_flags[@]}" -p rtq-worker --bin rtq-worker
cargo build --locked -q "${build_flags[@]}" -p rtq-examples --example chaos
target="${CARGO_TARGET_DIR:-target}/$profile"
if [ -n "${help:-}" ]; then
  exec "$target/examples/chaos" --help
fi
export RTQ_WORKER_BIN="$target/rtq-worker"
exec "$target/examples/chaos" "${preset[@]}" "${pass[@]}"
