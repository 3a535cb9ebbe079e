#!/usr/bin/env bash
# Measures rtq-worker: release binary size, start-up time to first
# heartbeat, idle RSS, and RSS with 64 tasks in flight (mock handler holding
# each task 10 s). Tasks are submitted with redis-cli calling the
# protocol's submit function (FCALL rtq2_submit), as any non-Rust client
# could. Uses a private redis-server on a free port.
set -euo pipefail
case "${1:-}" in -h|--help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh
cargo build --quiet --release -p rtq-worker
bin=target/release/rtq-worker
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" --daemonize yes --logfile "$dir/redis.log"
trap 'kill "${wpid:-0}" 2>/dev/null && wait "${wpid:-0}" 2>/dev/null; redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

echo "binary size: $(stat -c %s "$bin") bytes ($(du -h "$bin" | cut -f1))"
t0=$(date +%s%N)
"$bin" --redis "redis://127.0.0.1:$port/" --queue m --worker-id w1 --concurrency 64 \
  --mock-latency-ms 10000 --grace-secs 0 --probe-addr off --log warn &
wpid=$!
for _ in $(seq 30000); do
  [ -n "$(redis-cli -p "$port" zscore 'rtq:{m}:workers' w1)" ] && break
  kill -0 "$wpid" 2>/dev/null || { echo "measure-worker.sh: rtq-worker exited before its first heartbeat" >&2; exit 1; }
  sleep 0.001
done
t1=$(date +%s%N)
echo "start-up to first heartbeat: $(( (t1 - t0) / 1000000 )) ms"
sleep 1
echo "idle RSS: $(rss $wpid) kB"
# PROTOCOL.md section 12: id, spec, priority, timeout ms, max attempts,
# retention ms, reply stream, chunk events.
for i in $(seq 64); do
  reply=$(redis-cli -p "$port" FCALL rtq2_submit 1 'rtq:{m}:meta' "t$i" \
    "{\"v\":2,\"id\":\"t$i\",\"input\":{\"prompt\":\"hi\"}}" 0 0 1 60000 '' 0)
  case "$reply" in OK*) ;; *) echo "measure-worker.sh: submit t$i refused: $reply" >&2; exit 1 ;; esac
done
for _ in $(seq 300); do
  [ "$(redis-cli -p "$port" hget 'rtq:{m}:w:w1' busy)" = "64" ] && break
  sleep 0.1
done
[ "$(redis-cli -p "$port" hget 'rtq:{m}:w:w1' busy)" = "64" ] || { echo "measure-worker.sh: the worker never reported 64 busy slots" >&2; exit 1; }
echo "RSS with 64 tasks in flight: $(rss $wpid) kB"
