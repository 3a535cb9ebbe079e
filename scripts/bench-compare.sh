#!/usr/bin/env bash
# rtq next to BullMQ in one run on one private Redis (issue 11):
#   busy path   50 clients, 10 slots
#   idle path   50 clients, 50 slots
#   streaming   50 clients, 10 slots, 50 chunks of 100 chars per task
#                (BullMQ: 50 job.updateProgress calls, its nearest analog)
# Zero-work handler, 1000-char input and result, 50 in flight. Rounds are
# interleaved (rtq, BullMQ, rtq, ...) with FLUSHALL + FUNCTION FLUSH before
# every run; the table shows medians of the rounds and the rtq/BullMQ ratio.
# Redis is pinned to core 0, the load generators to core 1.
#
# Usage: scripts/bench-compare.sh [--rounds N] [--tasks N] [--stream-tasks N]
#        [--breakdown] [--no-bullmq] [--rtq3] [--stream-queue]
#   --breakdown   after the rounds, one more rtq run per path printing the
#                 per-command breakdown (calls/task, usec/task)
#   --rtq3        also the protocol v3 library (stream queues, stage 1) on
#                 each path, driven by bench_floor --rtq3 (its own client
#                 and worker loops on the real rtq3 functions)
#   --stream-queue also the real Client and Worker on a stream queue
#                 (protocol v3, one band: bench --stream-queue, peer
#                 rtq-stream) on each path
# Env: RTQ_BENCH_ROUNDS, RTQ_BENCH_TASKS, RTQ_BENCH_STREAM_TASKS.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${RTQ_BENCH_ROUNDS:-3}
tasks=${RTQ_BENCH_TASKS:-20000}
stream_tasks=${RTQ_BENCH_STREAM_TASKS:-4000}
breakdown=0
bullmq=1
rtq3=0
stream_queue=0
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --tasks) tasks=$2; shift 2 ;;
    --stream-tasks) stream_tasks=$2; shift 2 ;;
    --breakdown) breakdown=1; shift ;;
    --no-bullmq) bullmq=0; shift ;;
    --rtq3) rtq3=1; shift ;;
    --stream-queue) stream_queue=1; shift ;;
    -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-compare.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
done
. scripts/bench-lib.sh
bench_require_counts bench-compare.sh "$rounds" "$tasks" "$stream_tasks"

bench_pinning
echo "building the release benchmark ..." >&2
nice -n 10 cargo build --quiet --release --locked -p rtq-examples --example bench --example bench_floor
bench=target/release/examples/bench
if [ "$bullmq" = 1 ]; then
  command -v node >/dev/null || { echo "bench-compare.sh: node is needed for the BullMQ peer (or pass --no-bullmq)" >&2; exit 2; }
  if [ ! -d bench/bullmq/node_modules/bullmq ]; then
    echo "installing the BullMQ peer (npm ci, from the lock file) ..." >&2
    (cd bench/bullmq && npm ci --no-audit --no-fund --loglevel=error >&2)
  fi
fi
bench_start_redis
results=$(mktemp)

# path label, clients, slots, chunks, tasks
paths=("busy 50 10 0 $tasks" "idle 50 50 0 $tasks" "streaming 50 10 50 $stream_tasks")
for round in $(seq "$rounds"); do
  for p in "${paths[@]}"; do
    read -r label clients slots chunks n <<<"$p"
    bench_flush
    line=$($PIN_LOAD "$bench" --redis "$BENCH_URL" "$clients" "$slots" "$n" "$chunks")
    echo "round $round $label $line" | tee -a "$results" >&2
    if [ "$stream_queue" = 1 ]; then
      bench_flush
      line=$($PIN_LOAD "$bench" --redis "$BENCH_URL" "$clients" "$slots" "$n" "$chunks" --stream-queue)
      echo "round $round $label $line" | tee -a "$results" >&2
    fi
    if [ "$rtq3" = 1 ]; then
      bench_flush
      line=$($PIN_LOAD target/release/examples/bench_floor --redis "$BENCH_URL" "$clients" "$slots" "$n" --rtq3 --chunks "$chunks")
      echo "round $round $label $line" | tee -a "$results" >&2
    fi
    if [ "$bullmq" = 1 ]; then
      bench_flush
      bn=$n
      [ "$chunks" -gt 0 ] && bn=$(( n / 2 ))
      line=$($PIN_LOAD node bench/bullmq/bench.js --redis "$BENCH_URL" --clients "$clients" --slots "$slots" --tasks "$bn" --chunks "$chunks" 2>/dev/null)
      echo "round $round $label $line" | tee -a "$results" >&2
    fi
  done
done

echo
echo "### rtq and BullMQ on one Redis (median of $rounds interleaved rounds)"
echo
bench_header
echo
python3 - "$results" <<'EOF'
import re, sys, statistics
rows = {}
for line in open(sys.argv[1]):
    parts = line.split()
    label = parts[2]
    kv = dict(p.split("=", 1) for p in parts[3:] if "=" in p)
    peer = kv["peer"] if kv["peer"] in ("rtq", "rtq3", "rtq-stream") else kv["peer"].replace("bullmq-", "BullMQ ")
    rows.setdefault((label, peer), []).append(kv)
def med(kvs, key):
    return statistics.median(float(k[key].rstrip("ms")) for k in kvs)
print("| path (clients, slots, chunks) | peer | tasks/s | p50 ms | p99 ms | Redis cmds/task | Redis CPU/task | Redis CPU/chunk |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
order = ["busy", "idle", "streaming"]
for label in order:
    peers = [k for k in rows if k[0] == label]
    for key in sorted(peers, key=lambda k: (k[1] != "rtq", k[1] != "rtq-stream", k[1] != "rtq3")):
        kvs = rows[key]
        k0 = kvs[0]
        chunks = int(k0["chunks"])
        cpu = med(kvs, "redis_cpu_us/task")
        print(f"| {label} ({k0['clients']}, {k0['slots']}, {chunks}) | {key[1]} | {med(kvs, 'tasks/s'):,.0f} | {med(kvs, 'p50'):.2f} | {med(kvs, 'p99'):.2f} | {med(kvs, 'redis_cmds/task'):.1f} | {cpu:.1f} us | {(f'{cpu / chunks:.2f} us' if chunks else '-')} |")
    other = [k for k in peers if k[1] not in ("rtq", "rtq3", "rtq-stream")]
    for ours in ("rtq", "rtq-stream", "rtq3"):
        rtq = rows.get((label, ours))
        if rtq and other:
            o = rows[other[0]]
            print(f"| {label} | **{ours} / BullMQ** | **{med(rtq, 'tasks/s') / med(o, 'tasks/s'):.2f}x** | {med(rtq, 'p50') / med(o, 'p50'):.2f}x | {med(rtq, 'p99') / med(o, 'p99'):.2f}x | {med(rtq, 'redis_cmds/task') / med(o, 'redis_cmds/task'):.2f}x | {med(rtq, 'redis_cpu_us/task') / med(o, 'redis_cpu_us/task'):.2f}x | |")
EOF
echo
echo "Command: scripts/bench-compare.sh --rounds $rounds --tasks $tasks --stream-tasks $stream_tasks. BullMQ keeps finished jobs (its default); its streaming row is 50 job.updateProgress calls per job and runs half the tasks."

if [ "$breakdown" = 1 ]; then
  for p in "${paths[@]}"; do
    read -r label clients slots chunks n <<<"$p"
    bench_flush
    echo
    echo "#### Where Redis time goes: rtq $label path ($clients clients, $slots slots, $chunks chunks)"
    echo
    $PIN_LOAD "$bench" --redis "$BENCH_URL" "$clients" "$slots" "$n" "$chunks" --breakdown | sed '1{s/^/`/;s/$/`/}'
  done
fi
rm -f "$results"
