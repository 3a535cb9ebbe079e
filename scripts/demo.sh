#!/usr/bin/env bash
# The rtq demo: a private Redis (installed if missing), two workers, and a
# few clients: request/response, streaming, submit-then-fetch. Everything it
# starts is stopped when it ends (or on Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh
cargo build --quiet --release -p rtq-examples --examples

dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo 6399)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT INT TERM

redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" --daemonize yes --logfile "$dir/redis.log"
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
export RTQ_REDIS_URL="redis://127.0.0.1:$port/" RTQ_QUEUE=demo RUST_LOG=warn
bin=target/release/examples
echo "== private Redis on port $port; starting two workers"
"$bin/worker" >"$dir/worker1.log" 2>&1 & pids+=($!)
"$bin/worker" >"$dir/worker2.log" 2>&1 & pids+=($!)
sleep 0.5
echo "== request/response";  "$bin/request_response"
echo "== streaming";         "$bin/streaming"
echo "== submit, then fetch"; "$bin/submit_then_fetch"
echo "== queue keys in Redis now:"
redis-cli -p "$port" --scan --pattern 'rtq:*' | sort | head -20
