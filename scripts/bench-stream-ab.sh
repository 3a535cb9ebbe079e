#!/usr/bin/env bash
# Paced streaming (examples/bench_stream.rs) with and without revision 10's
# coalesced chunk writes, in one run on one private Redis, rounds
# interleaved. "alone" loads this library without `rtq2_write_many` under
# revision 99 (which no process replaces), so the worker falls back to
# writing each slot's chunks with its own `rtq2_chunk` call (revision 9's
# behaviour); "coalesced" loads the library as it is. Same binary, same
# load; FLUSHALL + FUNCTION FLUSH before every run. Redis is pinned to
# core 0, the load to core 1.
#
# Usage: scripts/bench-stream-ab.sh [--rounds N] [--streams N] [--secs N]
#        [--max-delay-ms LIST]   (defaults: 3 rounds, 200 streams, 6 s, 0)
# BENCH_STREAM_BIN=path runs that build of bench_stream instead of
# building target/release/examples/bench_stream.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=3
streams=200
secs=6
delays=0
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --streams) streams=$2; shift 2 ;;
    --secs) secs=$2; shift 2 ;;
    --max-delay-ms) delays=$2; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-stream-ab.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
done
. scripts/bench-lib.sh
bench_require_counts bench-stream-ab.sh "$rounds" "$streams" "$secs"
[[ "$delays" =~ ^[0-9]+(,[0-9]+)*$ ]] || { echo "bench-stream-ab.sh: --max-delay-ms takes numbers separated by commas, got '$delays'" >&2; exit 2; }

bin=${BENCH_STREAM_BIN:-}
if [ -z "$bin" ]; then
  cargo build --release -q -p rtq-examples --example bench_stream
  bin=target/release/examples/bench_stream
fi
[ -x "$bin" ] || { echo "bench-stream-ab.sh: $bin is not an executable bench_stream build" >&2; exit 2; }
bench_pinning
bench_start_redis

library="$BENCH_DIR/alone.lua"
bench_library_without_write_many "$library"

bench_header
echo "paced streaming: $streams streams, 50 chunks of 8 bytes 20 ms apart, $secs s per run, $rounds rounds"
for round in $(seq "$rounds"); do
  for side in alone coalesced; do
    bench_flush
    if [ "$side" = alone ]; then
      redis-cli -p "$BENCH_PORT" -x function load <"$library" >/dev/null
    fi
    echo
    echo "round $round, $side:"
    $PIN_LOAD "$bin" --redis "$BENCH_URL" --streams "$streams" --secs "$secs" --max-delay-ms "$delays" |
      grep '^|' | tail -n +3
  done
done
