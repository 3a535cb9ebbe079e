#!/usr/bin/env bash
# Runs every test (unit, integration on private redis-servers, examples,
# doctests). Installs redis-server first if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-redis.sh
cargo test --workspace --locked "$@"
