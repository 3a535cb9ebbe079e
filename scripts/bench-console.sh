#!/usr/bin/env bash
# What one console refresh costs Redis, per view, against the number of
# queues (1, 100, 1,000, 10,000): Redis commands, Redis CPU and bytes sent,
# before (dashboard(30) in every view, full task hashes) and after (queue
# summaries, statistics of the rows on screen with closed buckets cached,
# task summaries). Private Redis pinned to core 0 (FLUSHALL between points).
#
# Usage: scripts/bench-console.sh [--queues 1,100,1000,10000] [--refreshes 5]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
case "${1:-}" in -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
bench_pinning
echo "building the release benchmark ..." >&2
nice -n 10 cargo build --release --locked -p rtq-console --example console_reads
bench_start_redis
echo "### Console reads per refresh"
echo
bench_header
$PIN_LOAD target/release/examples/console_reads --redis "$BENCH_URL" "$@"
echo
echo "Command: scripts/bench-console.sh $*"
