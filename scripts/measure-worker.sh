#!/usr/bin/env bash
# Measures rtq-worker: release binary size, start-up time to first
# heartbeat, idle RSS, and RSS with 64 tasks in flight (mock handler holding
# each task 10 s). Tasks are submitted with redis-cli running the protocol's
# own submit script, as any non-Rust client could.
set -euo pipefail
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
until [ -n "$(redis-cli -p "$port" zscore 'rtq:{m}:workers' w1)" ]; do sleep 0.001; done
t1=$(date +%s%N)
echo "start-up to first heartbeat: $(( (t1 - t0) / 1000000 )) ms"
sleep 1
echo "idle RSS: $(rss $wpid) kB"
cat core/lua/prelude.lua core/lua/submit.lua > "$dir/submit.lua"
for i in $(seq 64); do
  redis-cli -p "$port" --eval "$dir/submit.lua" 'rtq:{m}:' , "t$i" "{\"v\":1,\"id\":\"t$i\",\"input\":{\"prompt\":\"hi\"}}" 0 0 1 60000 '' 0 >/dev/null
done
until [ "$(redis-cli -p "$port" hget 'rtq:{m}:w:w1' busy)" = "64" ]; do sleep 0.1; done
echo "RSS with 64 tasks in flight: $(rss $wpid) kB"
