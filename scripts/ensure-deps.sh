#!/usr/bin/env bash
# Installs what rtq's demo and tests need beyond Rust, from the distribution's
# packages, if missing: redis-server, redis-cli (redis-tools: the demos and
# the cluster tests), python3 (the exec-handler example child
# and its test; the Python package's tests, with python3-venv; the gateway's
# OpenAI SDK test, which installs `openai` from PyPI into a venv under
# target/), tmux (the console's end-to-end test) and curl (the gateway demo).
set -euo pipefail
case "${1:-}" in -h|--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# redis-cli creates the local Redis Cluster of the cluster tests.
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
command -v tmux >/dev/null 2>&1 || missing+=(tmux)
# curl: the gateway demo (scripts/gateway-demo.sh) and its README commands.
command -v curl >/dev/null 2>&1 || missing+=(curl)
# The Python package's tests and the gateway's OpenAI SDK test make venvs
# (Debian splits venv support into its own package).
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
command -v redis-server >/dev/null && command -v redis-cli >/dev/null && command -v python3 >/dev/null && command -v tmux >/dev/null && command -v curl >/dev/null
