#!/usr/bin/env bash
# Where the functions library spends Redis's time, line by line: builds a
# redis-server 7.0.15 whose Lua hook reads the CPU's time stamp counter
# before every Lua instruction of a function call (FCALL) and charges the
# cycles since the last one to that instruction's line (a line that runs
# redis.call is charged the command, its glue and its reply), loads the
# library as the working tree has it (scripts/library-at.sh), runs one
# bench load against it and prints the costliest lines of the library.
# The hook's own cost per instruction (the smallest cycles per hit of any
# busy line) is taken off every line. Only with LUA_PROF set in its
# environment does the built server profile; it is a development tool,
# never a server to run anything on.
#
# Usage: scripts/lua-profile.sh [--top N] [--tasks N] "<clients> <slots>" <chunks> BENCH
#   BENCH: a build of examples/bench.rs (target/release/examples/bench),
#   or of examples/bench_floor.rs with its options after a space
#   ("target/release/examples/bench_floor --rtq3"; chunks must be 0)
# Example: scripts/lua-profile.sh "50 10" 0 target/release/examples/bench
# LIBRARY=file profiles that library source instead of the working tree's
# rtq2 (e.g. LIBRARY=core/lua/v3/stream.lua with bench_floor --rtq3).
# REDIS_SRC=dir uses that Redis 7.0.15 source tree (patched in place, once);
# by default it is downloaded from deb.debian.org into
# ${XDG_CACHE_HOME:-~/.cache}/rtq/redis-prof. The counts are written by
# the server every 500 calls to /tmp/luaprof-<port>.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
top=40 tasks=5000
while [ $# -gt 0 ]; do
  case "$1" in
    --top) top=$2; shift 2 ;;
    --tasks) tasks=$2; shift 2 ;;
    -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "lua-profile.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
    *) break ;;
  esac
done
[ $# -eq 3 ] || { echo "lua-profile.sh: give \"<clients> <slots>\" <chunks> BENCH (try --help)" >&2; exit 2; }
load=$1 chunks=$2 bench=$3
read -r -a cmd <<<"$bench"
[ -x "${cmd[0]}" ] || { echo "lua-profile.sh: ${cmd[0]} is not an executable bench build" >&2; exit 2; }
tail_args=("$chunks")
case "$(basename "${cmd[0]}")" in bench_floor*) tail_args=() ;; esac
case "$top$tasks" in *[!0-9]*) echo "lua-profile.sh: --top and --tasks take whole numbers" >&2; exit 2 ;; esac

src=${REDIS_SRC:-${XDG_CACHE_HOME:-$HOME/.cache}/rtq/redis-prof/redis-7.0.15}
if [ ! -f "$src/src/script_lua.c" ]; then
  [ -z "${REDIS_SRC:-}" ] || { echo "lua-profile.sh: $src is not a Redis source tree" >&2; exit 2; }
  mkdir -p "$(dirname "$src")"
  echo "downloading Redis 7.0.15 source ..." >&2
  curl -sSfL http://deb.debian.org/debian/pool/main/r/redis/redis_7.0.15.orig.tar.gz |
    tar xz -C "$(dirname "$src")"
fi
if ! grep -q 'rtq lua-profile' "$src/src/script_lua.c"; then
  echo "patching $src/src/script_lua.c ..." >&2
  python3 - "$src/src/script_lua.c" <<'EOF'
import sys
p = sys.argv[1]
s = open(p).read()
prof = r'''
/* rtq lua-profile: cycles per line of the functions library. */
#include <x86intrin.h>
#define PROF_LINES 20000
static unsigned long long prof_cost[PROF_LINES], prof_hits[PROF_LINES];
static int prof_prev = -1;
static unsigned long long prof_last, prof_calls;
static void profHook(lua_State *L, lua_Debug *ar) {
    unsigned long long now = __rdtsc();
    if (prof_prev >= 0) prof_cost[prof_prev] += now - prof_last;
    prof_prev = -1;
    if (lua_getinfo(L, "Sl", ar) && ar->currentline > 0 && ar->currentline < PROF_LINES
        && strcmp(ar->source, "@user_function") == 0) {
        prof_prev = ar->currentline;
        prof_hits[prof_prev]++;
    }
    prof_last = __rdtsc();
}
static void profDump(void) {
    char path[64];
    snprintf(path, sizeof(path), "/tmp/luaprof-%d.txt", server.port);
    FILE *f = fopen(path, "w");
    if (!f) return;
    fprintf(f, "calls %llu\n", prof_calls);
    for (int i = 0; i < PROF_LINES; i++)
        if (prof_hits[i]) fprintf(f, "%d %llu %llu\n", i, prof_hits[i], prof_cost[i]);
    fclose(f);
}

void luaCallFunction('''
def swap(old, new):
    global s
    assert old in s, old
    s = s.replace(old, new, 1)
swap('\nvoid luaCallFunction(', prof)
swap('''    if (server.busy_reply_threshold > 0 && !debug_enabled) {
        lua_sethook(lua,luaMaskCountHook,LUA_MASKCOUNT,100000);''',
'''    int profiling = getenv("LUA_PROF") && !(run_ctx->flags & SCRIPT_EVAL_MODE);
    if (profiling) {
        lua_sethook(lua,profHook,LUA_MASKCOUNT,1);
        delhook = 1;
        prof_prev = -1;
    } else if (server.busy_reply_threshold > 0 && !debug_enabled) {
        lua_sethook(lua,luaMaskCountHook,LUA_MASKCOUNT,100000);''')
swap('''    if (delhook) lua_sethook(lua,NULL,0,0); /* Disable hook */

    /* remove run_ctx''',
'''    if (profiling) {
        if (prof_prev >= 0) prof_cost[prof_prev] += __rdtsc() - prof_last;
        prof_prev = -1;
        if (++prof_calls % 500 == 0) profDump();
    }
    if (delhook) lua_sethook(lua,NULL,0,0); /* Disable hook */

    /* remove run_ctx''')
open(p, 'w').write(s)
EOF
fi
if [ ! -x "$src/src/redis-server" ] || [ "$src/src/script_lua.c" -nt "$src/src/redis-server" ]; then
  echo "building the profiling redis-server (about 3 minutes) ..." >&2
  make -C "$src" -j2 OPTIMIZATION=-O2 USE_SYSTEMD=no BUILD_TLS=no >"$src/build.log" 2>&1 ||
    { echo "lua-profile.sh: the build failed, see $src/build.log" >&2; exit 1; }
fi

work=$(mktemp -d)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
trap 'redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
if [ -n "${LIBRARY:-}" ]; then
  cp "$LIBRARY" "$work/library.lua"
else
  scripts/library-at.sh worktree "$work/library.lua"
fi
name=$(head -1 "$work/library.lua" | sed -n 's/^#!lua name=//p')
rm -f "/tmp/luaprof-$port.txt"
LUA_PROF=1 "$src/src/redis-server" --port "$port" --save "" --appendonly no \
  --logfile "$work/redis.log" --daemonize yes >/dev/null
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
loaded=$(redis-cli -p "$port" -x function load <"$work/library.lua" 2>&1)
[ "$loaded" = "$name" ] || { echo "lua-profile.sh: the library did not load: $loaded" >&2; exit 1; }
# shellcheck disable=SC2086
"${cmd[@]}" --redis "redis://127.0.0.1:$port/" $load "$tasks" "${tail_args[@]}" | tail -1
[ -s "/tmp/luaprof-$port.txt" ] || { echo "lua-profile.sh: no profile written (fewer than 500 calls?)" >&2; exit 1; }
python3 - "$work/library.lua" "/tmp/luaprof-$port.txt" "$top" <<'EOF'
import sys
source = open(sys.argv[1]).read().split('\n')
rows, calls = [], 0
for line in open(sys.argv[2]):
    if line.startswith('calls'):
        calls = int(line.split()[1])
        continue
    number, hits, cycles = map(int, line.split())
    rows.append((number, hits, cycles))
busy = [c / h for _, h, c in rows if h > 1000] or [0]
hook = min(busy)
net = {n: c - h * hook for n, h, c in rows}
total = sum(net.values()) or 1
print(f"{calls} calls profiled; hook cost {hook:.0f} cycles per instruction taken off; "
      f"{total / max(calls, 1) / 1000:.1f} kcycles of Lua per call")
print("| line | instructions run | share of Lua time | source |")
print("| --- | --- | --- | --- |")
for number, hits, _ in sorted(rows, key=lambda r: -net[r[0]])[:int(sys.argv[3])]:
    text = source[number - 1].strip()[:90].replace('|', '\\|')
    print(f"| {number} | {hits} | {100 * net[number] / total:.1f} % | `{text}` |")
EOF
