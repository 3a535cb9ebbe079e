#!/usr/bin/env bash
# The gateway quick start: a private Redis (installed if missing), one
# rtq-worker with the mock model on queue "mock", and rtq-gateway on
# 127.0.0.1:${RTQ_GATEWAY_PORT:-8080} without API keys. Prints a curl command
# to try, then serves until Ctrl-C, which stops everything it started.
#
# With --check it sends one chat completion itself, prints the answer and
# exits (what CI and the impatient run).
set -euo pipefail
case "${1:-}" in -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh
echo "building (release) ..." >&2
cargo build --quiet --release -p rtq-worker -p rtq-gateway

dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
listen="127.0.0.1:${RTQ_GATEWAY_PORT:-8080}"
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
export RTQ_REDIS_URL="redis://127.0.0.1:$port/" RTQ_LOG=warn
target/release/rtq-worker --queue mock --handler mock --probe-addr off --concurrency 8 \
  --mock-tokens 12 --mock-tokens-per-sec 40 --grace-secs 1 >>"$dir/worker.log" 2>&1 &
pids+=($!)
target/release/rtq-gateway --listen "$listen" --grace-secs 2 >"$dir/gateway.out" 2>>"$dir/gateway.log" &
pids+=($!)
for _ in $(seq 100); do
  curl -fsS "http://$listen/v1/models" 2>/dev/null | grep -q '"id":"mock"' && break
  sleep 0.1
done
request='{"model": "mock", "messages": [{"role": "user", "content": "Hello"}]}'
if [ "${1:-}" = "--check" ]; then
  curl -fsS "http://$listen/v1/chat/completions" -H 'content-type: application/json' -d "$request"
  echo
  exit 0
fi
cat <<MSG
rtq-gateway is serving the mock model on http://$listen (Ctrl-C stops it). Try:

  curl http://$listen/v1/chat/completions -H 'content-type: application/json' \\
    -d '$request'

or stream it (add "stream": true), or use any OpenAI SDK with base_url http://$listen/v1.
MSG
wait "${pids[1]}"
