#!/usr/bin/env bash
# Installs redis-server from the distribution's packages if it is missing.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then
  exit 0
fi
echo "redis-server not found; installing it (Debian/Ubuntu package redis-server)..." >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
# The package may start a system service; rtq's scripts and tests start
# private servers of their own and never depend on it.
command -v redis-server >/dev/null
