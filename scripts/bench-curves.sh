#!/usr/bin/env bash
# rtq's cost curves (examples/bench_curves.rs) on a private Redis pinned to
# core 0, the load on core 1: tasks in flight, payload size, number of
# queues, idle workers, open waits. Prints markdown tables and writes one
# SVG plot per curve to docs/bench/ (FLUSHALL between points: the Redis is
# this script's own).
#
# Usage: scripts/bench-curves.sh [--curve inflight,payload,queues,workers,waits] [--quick]
# (all curves take about 3-4 minutes; --quick is the tiny smoke size)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
case "${1:-}" in -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
bench_pinning
echo "building the release benchmark ..." >&2
nice -n 10 cargo build --quiet --release --locked -p rtq-examples --example bench_curves
bench_start_redis
echo "### rtq cost curves"
echo
bench_header
$PIN_LOAD target/release/examples/bench_curves --redis "$BENCH_URL" --flush --svg-dir docs/bench "$@"
echo
echo "Command: scripts/bench-curves.sh $*"
