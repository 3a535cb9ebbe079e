#!/usr/bin/env bash
# Fixed-rate (open-loop) latency (examples/bench_open_loop.rs) on a private
# Redis pinned to core 0, the load on core 1: the closed-loop maximum first,
# then p50/p99/p99.9 at 25/50/75/90 % of it, each latency measured from
# the scheduled send time.
#
# Usage: scripts/bench-open-loop.sh [bench_open_loop flags, e.g. --seconds 10 --slots 50,
#        --worker-process to run the worker in a process of its own]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
case "${1:-}" in -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
bench_pinning
echo "building the release benchmark ..." >&2
nice -n 10 cargo build --quiet --release --locked -p rtq-examples --example bench_open_loop
bench_start_redis
echo "### rtq latency at fixed rates (open loop)"
echo
bench_header
echo
$PIN_LOAD target/release/examples/bench_open_loop --redis "$BENCH_URL" "$@"
echo
echo "Command: scripts/bench-open-loop.sh $*"
