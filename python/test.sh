#!/usr/bin/env bash
# Builds the rtq Python package into a virtualenv under target/ and runs its
# pytest suite (every test starts its own redis-server). Called by
# scripts/test.sh; arguments go to pytest.
#
# - target/pyenv: a venv with maturin, pytest, fastapi, uvicorn and mypy
#   from PyPI (created once);
# - the rtq and rtq-worker binaries the interop tests drive (cargo build);
# - `maturin develop`: the extension built in cargo's own target dir (a
#   debug build, reusing the workspace's compiled dependencies) and
#   installed editable into the venv;
# - `mypy.stubtest`: the .pyi stubs match the built module (a few seconds,
#   offline; stubtest-allowlist.txt names what only the stubs define).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="$PWD/target/pyenv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
# fastapi and uvicorn: the SSE example's test; mypy: stubtest.
if ! "$venv/bin/python" -c 'import pytest, fastapi, uvicorn, mypy.stubtest' 2>/dev/null || [ ! -x "$venv/bin/maturin" ]; then
  "$venv/bin/python" -m pip install -q --disable-pip-version-check \
    'maturin>=1.7,<2' 'pytest>=8' 'fastapi>=0.100' 'uvicorn>=0.20' 'mypy>=1.15'
fi
cargo build --locked -q -p rtq-worker -p rtq-console --bins
(cd python && VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH" maturin develop --locked -q)
cd python
MYPY_CACHE_DIR="$venv/mypy-cache" "$venv/bin/python" -m mypy.stubtest rtq --allowlist stubtest-allowlist.txt
# Every test runs here: none may skip for want of a package.
export RTQ_PYTEST_STRICT=1
exec "$venv/bin/python" -m pytest -p no:cacheprovider -q "$@"
