#!/usr/bin/env bash
# Redis instructions per task, counted by valgrind's callgrind: independent
# of how busy the machine is (unlike CPU time), so two protocol revisions
# can be compared on a shared machine. For each bench binary given, runs a
# private redis-server under callgrind twice (N1 and N2 tasks) and prints
# (I(N2) - I(N1)) / (N2 - N1): start-up, warm-up and shutdown cancel out.
#
# Usage: scripts/bench-instructions.sh "<clients> <slots>" <chunks> BENCH...
#   BENCH: a build of examples/bench.rs, e.g. target/release/examples/bench
#   (build one per revision to compare: `git worktree add`, then
#   `cargo build --release -p rtq-examples --example bench`), or of
#   examples/bench_floor.rs (chunks must be 0); a BENCH may carry options
#   after a space, e.g. "target/release/examples/bench_floor --store-results".
# Example: scripts/bench-instructions.sh "50 10" 0 /tmp/bench-old target/release/examples/bench
# REDIS_SERVER=path runs that redis-server build (default: the one on
# PATH; a build with symbols makes the callgrind files readable), and
# REDIS_ARGS adds server options (e.g. "--hash-max-listpack-value 2048").
# KEEP_CG=dir keeps the callgrind files there for callgrind_annotate.
# LIBRARY=file loads that library source (FUNCTION LOAD) before each run,
# e.g. a variant under a high revision number that the bench's own
# library never replaces: one binary, two libraries.
#
# Under valgrind Redis runs about 50x slower, so the load reaches
# saturation at far fewer tasks/s than natively: batching (coalesced
# submits, BLMPOP) kicks in more than on a quiet machine. Compare
# revisions under the same script, not with native figures.
set -euo pipefail
if [ $# -lt 3 ] || [ "$1" = "--help" ] || [ "$1" = "-h" ]; then
  sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 2; }
load="$1"; chunks="$2"; shift 2
N1=${N1:-1000}; N2=${N2:-3000}
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
work=$(mktemp -d)
trap 'redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
count() { # <bench> <tasks> -> instructions of redis-server for the whole run
  local bench=$1 n=$2 out="$work/cg.$2"
  # shellcheck disable=SC2086
  valgrind --tool=callgrind --callgrind-out-file="$out" \
    "${REDIS_SERVER:-redis-server}" --port "$port" --save "" --appendonly no --logfile "$work/redis.log" \
    ${REDIS_ARGS:-} >/dev/null 2>&1 &
  local pid=$!
  for _ in $(seq 150); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.2; done
  if [ -n "${LIBRARY:-}" ]; then
    loaded=$(redis-cli -p "$port" -x function load <"$LIBRARY" 2>&1)
    [ "$loaded" = rtq2 ] || { echo "LIBRARY $LIBRARY did not load: $loaded" >&2; exit 1; }
  fi
  # A BENCH may carry its own options after a space ("... --store-results");
  # bench_floor takes no chunk count.
  local cmd=($bench) tail=("$chunks")
  case "$(basename "${cmd[0]}")" in bench_floor*) tail=() ;; esac
  # shellcheck disable=SC2086
  "${cmd[@]}" --redis "redis://127.0.0.1:$port/" $load "$n" "${tail[@]}" > "$work/bench.$n" 2>&1
  redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  wait "$pid" || true
  grep -E '^(summary|totals):' "$out" | head -1 | awk '{print $2}'
  if [ -n "${KEEP_CG:-}" ]; then mkdir -p "$KEEP_CG"; cp "$out" "$KEEP_CG/$(basename "${cmd[0]}").$n.cg"; fi
}
echo "| bench | clients slots | chunks | Redis instructions per task | Redis cmds/task |"
echo "| --- | --- | --- | --- | --- |"
for bench in "$@"; do
  i1=$(count "$bench" "$N1")
  i2=$(count "$bench" "$N2")
  cmds=$(grep -o 'redis_cmds/task=[0-9.]*' "$work/bench.$N2" | cut -d= -f2)
  echo "| $bench | $load | $chunks | $(( (i2 - i1) / (N2 - N1) )) | $cmds |"
done
