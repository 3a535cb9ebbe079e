# Shared parts of scripts/bench-*.sh (sourced, not run): a private
# redis-server pinned to core 0, load generators pinned to core 1, and
# clean-up on exit. Never touches a Redis it did not start.

# Exits 2 naming the script unless every argument after the first (the
# script's name) is a positive whole number.
bench_require_counts() {
  local who=$1 n
  shift
  for n in "$@"; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "$who: counts must be positive whole numbers, got '$n'" >&2; exit 2; }
  done
}

# PIN_REDIS / PIN_LOAD: command prefixes (taskset) or empty when the machine
# has one core or no taskset.
bench_pinning() {
  if command -v taskset >/dev/null 2>&1 && [ "$(nproc)" -ge 2 ]; then
    PIN_REDIS="taskset -c 0"
    PIN_LOAD="taskset -c 1"
    PINNING="Redis pinned to core 0 (taskset -c 0), load generators (clients, workers, BullMQ) to core 1 (taskset -c 1)"
  else
    PIN_REDIS=""
    PIN_LOAD=""
    PINNING="no pinning (taskset missing or a single core): Redis and load share the cores"
  fi
}

# Starts a private redis-server on a free port; sets BENCH_PORT, BENCH_URL
# and BENCH_DIR and removes it all on exit.
bench_start_redis() {
  BENCH_DIR=$(mktemp -d)
  BENCH_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  $PIN_REDIS redis-server --port "$BENCH_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$BENCH_DIR" --daemonize yes --logfile "$BENCH_DIR/redis.log" \
    --pidfile "$BENCH_DIR/redis.pid" --maxclients 20000
  trap bench_stop_redis EXIT
  for _ in $(seq 50); do redis-cli -p "$BENCH_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
  redis-cli -p "$BENCH_PORT" ping >/dev/null
  BENCH_URL="redis://127.0.0.1:$BENCH_PORT/"
}

bench_stop_redis() {
  redis-cli -p "$BENCH_PORT" shutdown nosave >/dev/null 2>&1 || true
  rm -rf "$BENCH_DIR"
}

# Empties the private Redis between runs: data, functions and scripts.
bench_flush() {
  redis-cli -p "$BENCH_PORT" flushall >/dev/null
  redis-cli -p "$BENCH_PORT" function flush >/dev/null
  redis-cli -p "$BENCH_PORT" script flush >/dev/null
}

# One line describing where and when this ran.
bench_header() {
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load average $(cut -d' ' -f1-3 /proc/loadavg); $(redis-server --version | cut -d' ' -f3); rtq $(git rev-parse --short HEAD 2>/dev/null || echo '?'); $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "$PINNING"
}

# Writes to file $1 the library source as FUNCTION LOAD gets it
# (core/src/functions/mod.rs, LIBRARY_FILES), without rtq2_write_many and
# under revision 99, which no process replaces: loaded first, it makes a
# revision 10 worker write each slot's chunks alone (revision 9's way).
bench_library_without_write_many() {
  scripts/library-at.sh worktree "$1"
  sed -i "/function_name = 'rtq2_write_many'/d" "$1"
  if grep -q "rtq2_write_many'" "$1"; then
    echo "could not remove rtq2_write_many from the library" >&2
    exit 1
  fi
}
