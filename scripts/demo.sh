#!/usr/bin/env bash
# The rtq demo: a private Redis (installed if missing), four rtq-worker
# processes with the mock model (different speeds, one that fails sometimes,
# one with a slow first token), a load generator with streaming and
# non-streaming traffic plus bursts that exceed the workers' capacity (the
# first after 10 s, then every 45 s: pending work, the depth chart and the
# warning colours show within the first minute), and the console on top.
# Quitting the console (q) stops everything it started.
#
# Without a terminal (CI, pipes) it runs the load for a few seconds and
# prints `rtq stats` instead of opening the console.
set -euo pipefail
case "${1:-}" in -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh
# Cargo's own progress is shown: the first build takes a few minutes.
echo "building (release; the first build takes a few minutes) ..." >&2
cargo build --release -p rtq-worker -p rtq-console -p rtq-examples --bin rtq-worker --bin rtq --example loadgen

dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT INT TERM

redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" --daemonize yes --logfile "$dir/redis.log"
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
export RTQ_REDIS_URL="redis://127.0.0.1:$port/" RTQ_QUEUE=llm RTQ_LOG=warn RTQ_PROBE_ADDR=off RTQ_GRACE_SECS=2
bin=target/release
worker() { "$bin/rtq-worker" "$@" >>"$dir/workers.log" 2>&1 & pids+=($!); }
worker --worker-id a100-1 --label gpu=A100 --concurrency 8 --mock-tokens-per-sec 80
worker --worker-id a100-2 --label gpu=A100 --concurrency 8 --mock-tokens-per-sec 80
worker --worker-id l4-1 --label gpu=L4 --concurrency 4 --mock-tokens-per-sec 25 --mock-error-rate 0.15
worker --worker-id t4-1 --label gpu=T4 --concurrency 2 --mock-tokens-per-sec 15 --mock-latency-ms 400
"$bin/examples/loadgen" 6 12 --burst-size 600 --burst-first-secs 10 --burst-every-secs 45 \
  >>"$dir/loadgen.log" 2>&1 & pids+=($!)

if [ -t 0 ] && [ -t 1 ]; then
  "$bin/rtq"
else
  sleep 12
  "$bin/rtq" stats
  "$bin/rtq" workers llm
fi
