#!/usr/bin/env bash
# Installs what rtq's demo and tests need beyond Rust, from the distribution's
# packages, if missing: redis-server, python3 (the exec-handler example child
# and its test; the Python package's tests, with python3-venv) and tmux (the
# console's end-to-end test).
set -euo pipefail
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
command -v tmux >/dev/null 2>&1 || missing+=(tmux)
# The Python package's tests build it in a venv (python/test.sh); Debian
# splits venv support into its own package.
if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  missing+=(python3-venv)
fi
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "installing ${missing[*]} (Debian/Ubuntu packages)..." >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
# A package may start a system service; rtq's scripts and tests start private
# servers of their own and never depend on it.
command -v redis-server >/dev/null && command -v python3 >/dev/null && command -v tmux >/dev/null
