#!/usr/bin/env bash
# Runs the Python benchmarks of BENCHMARKS.md ("Python") on a private
# redis-server: the Rust load benchmark (examples/bench) and the Python
# asyncio client against an rtq-worker in the same run, then the Python
# worker's CPU per task against rtq-worker's. Release builds; the rtq
# Python package must be installed in the venv given as $PY (default
# target/pyenv-release/bin/python, made with `maturin develop --release`).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-target/pyenv-release/bin/python}
TASKS=${TASKS:-20000}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
dir=$(mktemp -d)
redis-server --port "$port" --save "" --appendonly no --dir "$dir" --daemonize yes --pidfile "$dir/redis.pid" >/dev/null
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  kill "$(cat "$dir/redis.pid")" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
url="redis://127.0.0.1:$port"
until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.05; done

echo "== Rust client + Rust worker (examples/bench, one process): 50 clients, 10 slots"
target/release/examples/bench --redis "$url" 50 10 "$TASKS" 0 | tail -3

echo "== Python asyncio client, rtq-worker (mock, 10 slots, no chunks)"
target/release/rtq-worker --redis "$url" --queue pyc --concurrency 10 --mock-tokens 0 --probe-addr 127.0.0.1:0 --log warn &
rust_worker=$!; pids+=("$rust_worker")
sleep 1
for clients in 1 50; do
  "$PY" python/bench/bench.py client --redis "$url" --queue pyc --clients "$clients" --tasks "$TASKS"
done
"$PY" python/bench/bench.py client --redis "$url" --queue pyc --clients 50 --tasks "$TASKS" --chunks 50 2>/dev/null || true
rust_cpu0=$("$PY" python/bench/bench.py cpu "$rust_worker")
"$PY" python/bench/bench.py client --redis "$url" --queue pyc --clients 50 --tasks "$TASKS"
rust_cpu1=$("$PY" python/bench/bench.py cpu "$rust_worker")
kill "$rust_worker"

echo "== Python worker (echo handler, 10 slots), Python asyncio client"
coproc PYW { exec "$PY" python/bench/bench.py worker --redis "$url" --queue pyw --slots 10; }
read -r _ <&"${PYW[0]}"
py_worker=$PYW_PID; pids+=("$py_worker")
py_cpu0=$("$PY" python/bench/bench.py cpu "$py_worker")
"$PY" python/bench/bench.py client --redis "$url" --queue pyw --clients 50 --tasks "$TASKS"
py_cpu1=$("$PY" python/bench/bench.py cpu "$py_worker")
python3 -c "
t=$TASKS
r=($rust_cpu1-$rust_cpu0)/t*1e6; p=($py_cpu1-$py_cpu0)/t*1e6
print(f'worker CPU per task: rtq-worker (Rust mock) {r:.0f} us, Python worker {p:.0f} us, Python overhead {p-r:.0f} us')"
