#!/usr/bin/env bash
# Two builds of examples/bench.rs (two protocol revisions: build one per
# commit with `git worktree add` and `cargo build --release -p rtq-examples
# --example bench`) in one run on one private Redis, rounds interleaved
# (A, B, A, B, ...), with FLUSHALL + FUNCTION FLUSH before every run, on the
# paths of scripts/bench-compare.sh (busy, idle, streaming). Prints the
# medians and the B/A ratios: on a shared or noisy machine, two native runs
# minutes apart differ by 20-40 %, so a revision is only compared with
# another inside one run. Redis is pinned to core 0, the load to core 1.
# With --floor, examples/bench_floor.rs (plain stream commands, no
# guarantees: the cheapest request path on Redis) runs in every round of
# the request/response paths too. With --library-a FILE / --library-b FILE,
# that side's runs load that library source first (FUNCTION LOAD, under a
# revision above the build's own, e.g. 99, so the bench keeps it): one
# binary, two libraries (give the same bench twice).
#
# Usage: scripts/bench-ab.sh [--rounds N] [--tasks N] [--stream-tasks N]
#        [--floor] [--library-a FILE] [--library-b FILE] A_BENCH B_BENCH
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=3
tasks=20000
stream_tasks=4000
floor=0
lib_a=
lib_b=
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --tasks) tasks=$2; shift 2 ;;
    --stream-tasks) stream_tasks=$2; shift 2 ;;
    --floor) floor=1; shift ;;
    --library-a) lib_a=$2; shift 2 ;;
    --library-b) lib_b=$2; shift 2 ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "bench-ab.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
    *) break ;;
  esac
done
[ $# -eq 2 ] || { echo "bench-ab.sh: give two bench binaries, A and B (try --help)" >&2; exit 2; }
a=$1 b=$2
for f in "$a" "$b"; do
  [ -x "$f" ] || { echo "bench-ab.sh: $f is not an executable bench build" >&2; exit 2; }
done
. scripts/bench-lib.sh
bench_require_counts bench-ab.sh "$rounds" "$tasks" "$stream_tasks"

bench_pinning
floor_bin=target/release/examples/bench_floor
if [ "$floor" = 1 ]; then
  echo "building the floor benchmark ..." >&2
  nice -n 10 cargo build --quiet --release --locked -p rtq-examples --example bench_floor
fi
bench_start_redis
results=$(mktemp)
trap 'rm -f "$results"; bench_stop_redis' EXIT

paths=("busy 50 10 0 $tasks" "idle 50 50 0 $tasks" "streaming 50 10 50 $stream_tasks")
for round in $(seq "$rounds"); do
  for p in "${paths[@]}"; do
    read -r label clients slots chunks n <<<"$p"
    for side in A B; do
      bin=$a lib=$lib_a
      [ "$side" = B ] && bin=$b lib=$lib_b
      bench_flush
      if [ -n "$lib" ]; then
        loaded=$(redis-cli -p "$BENCH_PORT" -x function load <"$lib" 2>&1)
        [ "$loaded" = rtq2 ] || { echo "bench-ab.sh: $lib did not load: $loaded" >&2; exit 1; }
      fi
      line=$($PIN_LOAD "$bin" --redis "$BENCH_URL" "$clients" "$slots" "$n" "$chunks")
      echo "round $round $label side=$side $line" | tee -a "$results" >&2
    done
    if [ "$floor" = 1 ] && [ "$chunks" = 0 ]; then
      bench_flush
      line=$($PIN_LOAD "$floor_bin" --redis "$BENCH_URL" "$clients" "$slots" "$n")
      echo "round $round $label side=floor $line" | tee -a "$results" >&2
    fi
  done
done

echo
echo "### A: $a${lib_a:+ with $lib_a}, B: $b${lib_b:+ with $lib_b} (median of $rounds interleaved rounds)"
echo
bench_header
echo
python3 - "$results" <<'EOF'
import sys, statistics
rows = {}
for line in open(sys.argv[1]):
    parts = line.split()
    kv = dict(p.split("=", 1) for p in parts[3:] if "=" in p)
    rows.setdefault((parts[2], kv["side"]), []).append(kv)
def med(kvs, key):
    return statistics.median(float(k[key].rstrip("ms")) for k in kvs)
def load(kvs):
    # The load process's CPU per task (clients and worker), printed by
    # builds since revision 11.
    if all("load_cpu_us/task" in k for k in kvs):
        return f"{med(kvs, 'load_cpu_us/task'):.1f} us"
    return "n/a"
def load_ratio(b, a):
    if load(a) == "n/a" or load(b) == "n/a":
        return "n/a"
    return f"{med(b, 'load_cpu_us/task') / med(a, 'load_cpu_us/task'):.2f}x"
keys = ["tasks/s", "p50", "p99", "redis_cmds/task", "redis_cpu_us/task"]
print("| path (clients, slots, chunks) | side | tasks/s | p50 ms | p99 ms | Redis cmds/task | Redis CPU/task | load CPU/task |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for label in ["busy", "idle", "streaming"]:
    for side in ["A", "B", "floor"]:
        kvs = rows.get((label, side))
        if not kvs:
            continue
        k0 = kvs[0]
        name = {"A": "A", "B": "B", "floor": "floor (no guarantees)"}[side]
        print(f"| {label} ({k0['clients']}, {k0['slots']}, {k0['chunks']}) | {name} | {med(kvs, 'tasks/s'):,.0f} | {med(kvs, 'p50'):.2f} | {med(kvs, 'p99'):.2f} | {med(kvs, 'redis_cmds/task'):.1f} | {med(kvs, 'redis_cpu_us/task'):.1f} us | {load(kvs)} |")
    a, b = rows.get((label, "A")), rows.get((label, "B"))
    if a and b:
        print(f"| {label} | **B / A** | **{med(b, 'tasks/s') / med(a, 'tasks/s'):.2f}x** | {med(b, 'p50') / med(a, 'p50'):.2f}x | {med(b, 'p99') / med(a, 'p99'):.2f}x | {med(b, 'redis_cmds/task') / med(a, 'redis_cmds/task'):.2f}x | {med(b, 'redis_cpu_us/task') / med(a, 'redis_cpu_us/task'):.2f}x | {load_ratio(b, a)} |")
    f = rows.get((label, "floor"))
    if b and f:
        print(f"| {label} | **B / floor** | {med(b, 'tasks/s') / med(f, 'tasks/s'):.2f}x | {med(b, 'p50') / med(f, 'p50'):.2f}x | {med(b, 'p99') / med(f, 'p99'):.2f}x | {med(b, 'redis_cmds/task') / med(f, 'redis_cmds/task'):.2f}x | {med(b, 'redis_cpu_us/task') / med(f, 'redis_cpu_us/task'):.2f}x | {load_ratio(b, f)} |")
EOF
echo
echo "Command: scripts/bench-ab.sh --rounds $rounds --tasks $tasks --stream-tasks $stream_tasks$([ "$floor" = 1 ] && echo ' --floor')${lib_a:+ --library-a $lib_a}${lib_b:+ --library-b $lib_b} A B"
