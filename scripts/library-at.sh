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
show() { # <path>: the file at $rev
  if [ "$rev" = worktree ]; then cat "$1"; else git show "$rev:$1"; fi
}
# The files and their order: LIBRARY_FILES of core/src/functions/mod.rs.
files=$(show core/src/functions/mod.rs | grep -oE '^ *\("[a-z_]+\.lua"' | tr -d ' ("')
[ -n "$files" ] || { echo "library-at.sh: no LIBRARY_FILES in $rev's core/src/functions/mod.rs" >&2; exit 1; }
for f in $files; do
  show "core/lua/$f"
  echo
done | sed -e 's/^local REVISION = [0-9]*$/local REVISION = 99/' >"$out"
grep -q '^local REVISION = 99$' "$out" || { echo "library-at.sh: no REVISION line in $rev's lib.lua" >&2; exit 1; }
