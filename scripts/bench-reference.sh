#!/usr/bin/env bash
# rtq next to the reference design (our implementation of
# shared/seed/REFERENCE-DESIGN.md in examples/reference_design.rs) over a
# simulated network: every process reaches a private Redis through the
# delay proxy (examples/delay_proxy.rs) at RTT 18 ms. Rows as in the
# design's published table; runs interleaved (rtq, reference, rtq, ...);
# prints one markdown table. Redis pinned to core 0, the rest to core 1.
#
# Usage: scripts/bench-reference.sh [--runs N] [--requests N] [--rtt-ms N]
# (defaults 3, 100, 18; the reference design's streaming rows take one
# round trip per chunk, so the default run takes about 14 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=3 requests=100 rtt=18
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --requests) requests=$2; shift 2 ;;
    --rtt-ms) rtt=$2; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-reference.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
done
. scripts/bench-lib.sh
bench_pinning
echo "building the release benchmark ..." >&2
nice -n 10 cargo build --quiet --release --locked -p rtq-examples --example bench_table
bench_start_redis
echo "### rtq and the reference design at RTT $rtt ms"
echo
bench_header
echo
$PIN_LOAD target/release/examples/bench_table --redis "$BENCH_URL" --rtt-ms "$rtt" --runs "$runs" --requests "$requests" --reference
echo
echo "Command: scripts/bench-reference.sh --runs $runs --requests $requests --rtt-ms $rtt"
