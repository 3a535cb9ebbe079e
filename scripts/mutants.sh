#!/usr/bin/env bash
# Mutation testing of the Rust code of rtq-core and rtq-worker with
# cargo-mutants (installed from crates.io if missing). Settings live in
# .cargo/mutants.toml; reports go to target/mutants/mutants.out. See
# TESTING.md for run times.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  cat <<'EOF'
usage: scripts/mutants.sh [options] [-- cargo-mutants args...]

Runs `cargo mutants -p rtq-core -p rtq-worker` (each mutant is built and
tested with its own package's tests).

  --list            list the mutants (counts per package), run nothing
  --quick           test one eighth of the mutants, spread over every file
                    (round-robin shard 0/8); same as --shard 0/8
  --shard K/N       test shard K of N (K from 0), round-robin; run K = 0..N-1
                    on different days to cover everything
  --since REV       only mutants in code changed since git revision REV
  --package NAME    mutate only this package (repeatable; default rtq-core
                    and rtq-worker)
  --jobs J          mutants built and tested at the same time (default 1;
                    each job is a full build tree, so 2 is the most that
                    helps on a 2-core machine)
  -h, --help        this text

Anything after `--` goes to cargo-mutants as is (see `cargo mutants --help`),
e.g. `-- --file core/src/keys.rs` or `-- --re 'Router::'`.

Environment: RTQ_MODEL_STEPS (default here 300) sets the model test's
length for every mutant.

Exit status: cargo-mutants' own: 0 all caught, 2 some missed, 3 some timed
out, 4 the tests fail on the unmutated tree, 1 usage or other errors.
EOF
}

list_only=0
shard=""
since=""
jobs=1
packages=()
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --list) list_only=1 ;;
    --quick) shard="0/8" ;;
    --shard) shard=${2:?--shard needs K/N}; shift ;;
    --since) since=${2:?--since needs a git revision}; shift ;;
    --package | -p) packages+=("${2:?--package needs a name}"); shift ;;
    --jobs | -j) jobs=${2:?--jobs needs a number}; shift ;;
    --) shift; extra=("$@"); break ;;
    *) echo "mutants: unknown option '$1'" >&2; usage >&2; exit 1 ;;
  esac
  shift
done
if [ ${#packages[@]} -eq 0 ]; then packages=(rtq-core rtq-worker); fi

if ! cargo mutants --version >/dev/null 2>&1; then
  echo "mutants: installing cargo-mutants from crates.io (a few minutes)..."
  cargo install --locked cargo-mutants
fi

out=target/mutants
mkdir -p "$out"
# Which mutants: the shard and diff filters, then the packages.
filters=()
if [ -n "$shard" ]; then filters+=(--shard "$shard" --sharding round-robin); fi
if [ -n "$since" ]; then
  git diff "$since" -- core/src worker/src >"$out/since.diff"
  if [ ! -s "$out/since.diff" ]; then
    echo "mutants: no change in core/src or worker/src since $since"
    exit 0
  fi
  filters+=(--in-diff "$out/since.diff")
fi
args=("${filters[@]+"${filters[@]}"}")
for package in "${packages[@]}"; do args+=(-p "$package"); done

if [ "$list_only" -eq 1 ]; then
  cargo mutants "${args[@]}" --list "${extra[@]+"${extra[@]}"}" >"$out/list.txt"
  cat "$out/list.txt"
  echo
  for package in "${packages[@]}"; do
    count=$(cargo mutants "${filters[@]+"${filters[@]}"}" -p "$package" --list \
      "${extra[@]+"${extra[@]}"}" | grep -c . || true)
    echo "mutants: $package: $count mutants"
  done
  echo "mutants: $(grep -c . "$out/list.txt" || true) in all (list in $out/list.txt)"
  exit 0
fi

# Lines in a report file (0 when cargo-mutants did not write it).
count_lines() {
  if [ -f "$1" ]; then grep -c . "$1" || true; else echo 0; fi
}

scripts/ensure-deps.sh
# The model test (core/tests/model.rs) is most of a mutant's test time at
# its default 3000 steps (~40 of ~80 s here); 300 steps still run every
# operation and fault, and a mutant it alone would catch shows as missed
# (the score errs low, never high). Set RTQ_MODEL_STEPS to override.
export RTQ_MODEL_STEPS="${RTQ_MODEL_STEPS:-300}"
status=0
cargo mutants "${args[@]}" --jobs "$jobs" --output "$out" "${extra[@]+"${extra[@]}"}" || status=$?
report="$out/mutants.out"
echo
echo "mutants: report in $report/:"
echo "  outcomes.json  every mutant and its outcome"
echo "  missed.txt     mutants no test caught ($(count_lines "$report/missed.txt"))"
echo "  caught.txt     mutants the tests caught ($(count_lines "$report/caught.txt"))"
echo "  timeout.txt    mutants whose tests hung ($(count_lines "$report/timeout.txt"))"
echo "  unviable.txt   mutants that did not build ($(count_lines "$report/unviable.txt"))"
echo "  log/           cargo output of each mutant"
exit "$status"
