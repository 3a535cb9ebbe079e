"""Fixtures: a private redis-server per test on a free port (torn down
after), the rtq binaries built by cargo, and helpers that start worker
processes (Rust rtq-worker, or tests/worker_proc.py) and stop them."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator, List

import pytest

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A redis-server of this test's own (no persistence)."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="rtq-pytest-redis-")
        for _ in range(5):
            if self._start(_free_port()):
                return
        raise RuntimeError(f"redis-server did not start; log: {self.log.read_text() if self.log.exists() else ''}")

    def _start(self, port: int) -> bool:
        self.port = port
        self.log = Path(self.dir) / "redis.log"
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", self.dir,
                "--logfile", str(self.log),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.proc.poll() is None:
            if _ping(self.port):
                return True
            time.sleep(0.01)
        self.proc.kill()
        self.proc.wait()
        return False

    def kill(self) -> None:
        """kill -9 (no persistence: its data is gone)."""
        self.proc.kill()
        self.proc.wait()

    def restart_empty(self) -> None:
        """Starts a fresh, empty server on the same port."""
        if not self._start(self.port):
            raise RuntimeError("redis-server did not restart on its port")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (scripts/ensure-deps.sh installs it)")
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


def bin_path(name: str) -> str:
    """A binary built by cargo (RTQ_BIN_DIR, default target/debug)."""
    d = Path(os.environ.get("RTQ_BIN_DIR", REPO / "target" / "debug"))
    p = d / name
    if not p.exists():
        pytest.fail(f"{p} is missing: build it with `cargo build -p rtq-worker -p rtq-console`")
    return str(p)


class Procs:
    """Processes a test started; all killed at its end."""

    def __init__(self) -> None:
        self.procs: List[subprocess.Popen] = []

    def rust_worker(self, url: str, queue: str, *args: str) -> subprocess.Popen:
        cmd = [
            bin_path("rtq-worker"),
            "--redis", url,
            "--queue", queue,
            "--handler", "mock",
            "--probe-addr", "127.0.0.1:0",
            *args,
        ]
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        return p

    def python_worker(self, url: str, queue: str, *args: str) -> subprocess.Popen:
        """tests/worker_proc.py; returns once it printed "ready"."""
        cmd = [sys.executable, str(HERE / "worker_proc.py"), "--redis", url, "--queue", queue, *args]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        line = p.stdout.readline() if p.stdout else ""
        if line.strip() != "ready":
            p.kill()
            _, err = p.communicate(timeout=10)
            pytest.fail(f"python worker did not start: {line!r} {err}")
        # Its log lines, as they come (tests wait for one).
        p.log_lines = []  # type: ignore[attr-defined]

        def collect() -> None:
            for l in p.stderr:  # type: ignore[union-attr]
                p.log_lines.append(l)  # type: ignore[attr-defined]

        threading.Thread(target=collect, daemon=True).start()
        return p

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    yield p
    p.stop()


def wait_until(cond, timeout: float = 10.0, what: str = "condition") -> None:
    """Polls `cond` until true (for state observed in another process)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")
