#!/usr/bin/env bash
# Writes the functions library of a git revision (its core/lua files in
# load order) under revision 99, for benchmarks that compare libraries in
# one binary: a bench build never replaces a library of a higher revision.
#
# Usage: scripts/library-at.sh REV OUT   (REV: a commit, or "worktree" for
#        the files as they are now)
# Example: scripts/library-at.sh f728748 /tmp/lib-r10.lua, then
#   scripts/bench-ab.sh --library-a /tmp/lib-r10.lua --library-b /tmp/lib-now.lua B B
#   or LIBRARY=/tmp/lib-r10.lua scripts/bench-instructions.sh ...
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -ne 2 ] || [ "$1" = "--help" ] || [ "$1" = "-h" ]; then
  sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
rev=$1 out=$2
for f in lib submit heartbeat complete chunk release cancel watch requeue queue_admin; do
  if [ "$rev" = worktree ]; then cat "core/lua/$f.lua"; else git show "$rev:core/lua/$f.lua"; fi
  echo
done | sed -e 's/^local REVISION = [0-9]*$/local REVISION = 99/' >"$out"
grep -q '^local REVISION = 99$' "$out" || { echo "library-at.sh: no REVISION line in $rev's lib.lua" >&2; exit 1; }
