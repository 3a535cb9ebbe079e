"""Python workers as processes: serving the Rust CLI (`rtq submit`),
graceful SIGTERM, and kill -9 mid-stream (the task is recovered by another
worker)."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest

import rtq
from conftest import bin_path, wait_until


def test_a_python_worker_serves_the_rust_cli(redis_url, procs):
    procs.python_worker(redis_url, "py", "--mode", "echo")
    out = subprocess.run(
        [bin_path("rtq"), "--redis", redis_url, "submit", "py", '{"prompt": "hi", "n": [1, 2]}', "--timeout-secs", "20"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"prompt": "hi", "n": [1, 2]}

    procs.python_worker(redis_url, "pystream", "--mode", "stream")
    out = subprocess.run(
        [bin_path("rtq"), "--redis", redis_url, "submit", "pystream", '{"n": 3}', "--stream", "--timeout-secs", "20"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "tok0 tok1 tok2 " in out.stdout


def wait_for_handler(w, task_id: str) -> None:
    """Waits until the worker's handler runs the task. Redis's "running"
    comes earlier, at the hand-out: a SIGTERM between the two drains a
    worker with nothing running, which hands the task back and exits at
    once (what made these tests flaky)."""
    wait_until(
        lambda: any(f"handler started {task_id}" in line for line in w.log_lines),
        timeout=30,
        what="the handler to start",
    )


def test_sigterm_lets_a_running_task_finish_then_the_worker_exits(redis_url, procs):
    w = procs.python_worker(redis_url, "q", "--mode", "slow", "--grace", "20")
    q = rtq.connect(redis_url).queue("q")
    sub = q.submit({"secs": 1.0}, timeout=30)
    wait_for_handler(w, sub["id"])
    w.send_signal(signal.SIGTERM)
    assert q.wait(sub["id"], timeout=20) == "slept"
    assert w.wait(timeout=20) == 0
    assert w.stdout.read().strip() == "stopped"
    # It left: no live worker remains.
    assert rtq.connect(redis_url).admin().overview("q")["workers_alive"] == 0


def test_kill_9_of_a_python_worker_mid_stream_recovers_on_another(redis_url, procs):
    first = procs.python_worker(redis_url, "q", "--mode", "stream", "--lease", "1", "--worker-id", "first")
    q = rtq.connect(redis_url).queue("q")
    stream = q.stream({"n": 6, "every": 0.2}, timeout=60, max_attempts=3)
    items = [next(stream), next(stream)]
    assert all(isinstance(i, rtq.Chunk) and i.attempt == 1 for i in items)
    first.kill()  # SIGKILL: no goodbye, the lease must lapse
    first.wait()
    procs.python_worker(redis_url, "q", "--mode", "stream", "--lease", "1", "--worker-id", "second")
    rest = list(stream)
    restarts = [i for i in rest if isinstance(i, rtq.Restarted)]
    assert len(restarts) == 1 and restarts[0].attempt == 1
    after = rest[rest.index(restarts[0]) + 1:]
    assert [c.text for c in after[:-1]] == [f"tok{i} " for i in range(6)]
    done = after[-1]
    assert isinstance(done, rtq.Done) and done.attempt == 2
    assert done.result == {"tokens": 6, "worker_attempt": 2}
    info = q.status(stream.id)
    assert info["worker"] == "second" and info["state"] == "done"


def test_a_python_worker_that_cannot_reach_redis_says_so():
    import socket
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from conftest import HERE

    out = subprocess.run(
        [sys.executable, str(HERE / "worker_proc.py"), "--redis", f"redis://:pw@127.0.0.1:{port}", "--queue", "q"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode != 0
    assert "ConnectionError" in out.stderr and "pw@" not in out.stderr


def test_a_second_sigterm_stops_at_once_and_hands_the_task_back(redis_url, procs):
    w = procs.python_worker(redis_url, "q", "--mode", "slow", "--grace", "60", "--log", "info")
    q = rtq.connect(redis_url).queue("q")
    sub = q.submit({"secs": 60.0}, timeout=120)
    wait_for_handler(w, sub["id"])
    w.send_signal(signal.SIGTERM)
    # The first signal was handled: the worker logs that it drains.
    wait_until(lambda: any("draining" in line for line in w.log_lines), timeout=30, what="the worker to drain")
    w.send_signal(signal.SIGTERM)
    # Stopped at once: long before the 60 s grace, by its own hand.
    assert w.wait(timeout=20) == 0
    info = q.status(sub["id"])
    assert info["state"] == "queued", info


def test_a_second_sigterm_requeues_the_running_task_at_once_not_after_the_lease(redis_url, procs):
    # A lease of a minute and a drain of one: only the core's forced
    # hand-back requeues the task within this test's patience.
    w = procs.python_worker(
        redis_url, "q", "--mode", "slow", "--lease", "60", "--grace", "60", "--worker-id", "first", "--log", "info"
    )
    q = rtq.connect(redis_url).queue("q")
    sub = q.submit({"secs": 3600.0}, timeout=600, max_attempts=3)
    wait_for_handler(w, sub["id"])
    w.send_signal(signal.SIGTERM)
    wait_until(lambda: any("draining" in line for line in w.log_lines), timeout=30, what="the worker to drain")
    w.send_signal(signal.SIGTERM)
    assert w.wait(timeout=20) == 0
    # The core's forced stop ran (not a dropped run future), and Redis
    # took the task back before the process exited.
    assert any("forced stop" in line for line in w.log_lines), "".join(w.log_lines)
    info = q.status(sub["id"])
    assert info["state"] == "queued", info
    assert info["failures"] == 1, info
    assert "interrupted" in info["attempt_errors"][1], info
    assert rtq.connect(redis_url).admin().overview("q")["workers_alive"] == 0
    procs.python_worker(redis_url, "q", "--mode", "echo", "--worker-id", "second")
    assert q.wait(sub["id"], timeout=30) == {"secs": 3600.0}
    assert q.status(sub["id"])["worker"] == "second"


@pytest.mark.parametrize("mode", ["stubborn", "stubborn_sync"])
def test_a_second_signal_ends_a_worker_whose_handler_ignores_cancellation(redis_url, procs, mode):
    w = procs.python_worker(redis_url, "q", "--mode", mode, "--grace", "60", "--log", "info")
    client = rtq.connect(redis_url)
    q = client.queue("q")
    sub = q.submit({}, timeout=120)
    wait_for_handler(w, sub["id"])
    w.send_signal(signal.SIGTERM)
    wait_until(lambda: any("draining" in line for line in w.log_lines), timeout=30, what="the worker to drain")
    w.send_signal(signal.SIGTERM)
    # Before, the process waited for the handler forever (asyncio waits
    # for its task; the interpreter's exit joins its thread).
    assert w.wait(timeout=30) == -signal.SIGTERM
    assert q.status(sub["id"])["state"] == "queued"
    assert client.admin().overview("q")["workers_alive"] == 0
    wait_until(lambda: any("ignored the cancellation" in line for line in w.log_lines), timeout=5, what="the warning")


@pytest.mark.parametrize("mode", ["stubborn", "stubborn_sync"])
def test_after_the_grace_period_a_worker_whose_handler_ignores_cancellation_ends(redis_url, procs, mode):
    w = procs.python_worker(redis_url, "q", "--mode", mode, "--grace", "0.5")
    client = rtq.connect(redis_url)
    q = client.queue("q")
    sub = q.submit({}, timeout=120)
    wait_for_handler(w, sub["id"])
    w.send_signal(signal.SIGINT)
    # One signal: the drain's grace, the handler's cancel grace, then the
    # task is handed back and the process ends (it hung before).
    assert w.wait(timeout=30) == -signal.SIGINT
    assert q.status(sub["id"])["state"] == "queued"
    assert client.admin().overview("q")["workers_alive"] == 0
