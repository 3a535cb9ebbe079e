#!/usr/bin/env bash
# Mutation testing of the Lua protocol (core/lua): builds the mutate_lua
# example once, then runs it with the given arguments. Each mutant is one
# small change in a copy of core/lua, tested with RTQ_LUA_DIR=<copy> against
# rtq-core built with the lua-dir-override feature. See TESTING.md.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  cat <<'USAGE'
usage: scripts/mutate-lua.sh [options] [LUA_DIR]

Common runs:
  scripts/mutate-lua.sh --list                   list the mutants, run nothing
  scripts/mutate-lua.sh --quick 40 --jobs 2      40 sampled mutants (seed printed)
  scripts/mutate-lua.sh --file submit.lua        every mutant of one file
  scripts/mutate-lua.sh --jobs 2 --min-score 80  everything; exit 1 below 80%

Reports and per-mutant logs: target/mutate-lua/. Options of the tool:
USAGE
}

build() {
  cargo build --locked -q -p rtq-examples --example mutate_lua
}
tool="${CARGO_TARGET_DIR:-target}/debug/examples/mutate_lua"

for arg in "$@"; do
  if [ "$arg" = "-h" ] || [ "$arg" = "--help" ]; then
    usage
    build
    exec "$tool" --help
  fi
done

scripts/ensure-deps.sh
build
exec "$tool" "$@"
