"""The examples: the HF-style Python worker (in-process and as a script),
and the FastAPI SSE endpoint cancelling the task when its caller leaves."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import rtq
import rtq.aio
from conftest import wait_until
from inproc import running_worker

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_hf_worker_example_streams_a_generation_and_stops_on_cancel(redis_url):
    hf = load("hf_worker")

    async def main():
        q = (await rtq.aio.connect(redis_url)).queue("llm")
        async with running_worker(redis_url, "llm", hf.handle, slots=2):
            items = [i async for i in q.stream({"prompt": "a b", "max_new_tokens": 5}, timeout=20)]
            text = "".join(i.text for i in items if isinstance(i, rtq.Chunk))
            assert text == "brown fox jumps over the "
            assert items[-1].result == {
                "finish_reason": "length",
                "usage": {"prompt_tokens": 2, "completion_tokens": 5},
            }
            with pytest.raises(rtq.Failed, match="prompt"):
                await q.run({"nothing": 1}, timeout=20)
            # A cancel stops the generate loop between two tokens.
            stream = q.stream({"prompt": "go", "max_new_tokens": 4096}, timeout=60)
            await stream.__anext__()
            await q.cancel(stream.id)
            with pytest.raises(rtq.Cancelled):
                async for _ in stream:
                    pass
            for _ in range(250):
                if not any(t.name.startswith("generate-") for t in threading.enumerate()):
                    break
                await asyncio.sleep(0.02)
            assert not any(t.name.startswith("generate-") for t in threading.enumerate())

    asyncio.run(main())


def test_the_hf_worker_script_needs_a_redis_url_and_answers_help():
    env = {k: v for k, v in os.environ.items() if k != "RTQ_REDIS_URL"}
    out = subprocess.run([sys.executable, str(EXAMPLES / "hf_worker.py"), "--help"], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0 and "--redis" in out.stdout
    out = subprocess.run([sys.executable, str(EXAMPLES / "hf_worker.py")], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 2 and "required" in out.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_fastapi_example_streams_sse_and_cancels_when_the_caller_leaves(redis_url, procs):
    if os.environ.get("RTQ_PYTEST_STRICT"):
        import fastapi, uvicorn  # noqa: F401  (python/test.sh installs them)
    else:
        pytest.importorskip("fastapi")
        pytest.importorskip("uvicorn")
    env = dict(os.environ, RTQ_REDIS_URL=redis_url, RTQ_QUEUE="llm", STUB_TOKEN_DELAY="0.05")
    worker = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "hf_worker.py"), "--queue", "llm"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    procs.procs.append(worker)
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "fastapi_sse:app", "--port", str(port), "--log-level", "warning"],
        cwd=str(EXAMPLES), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    procs.procs.append(server)
    admin = rtq.connect(redis_url).admin()
    wait_until(lambda: admin.overview("llm")["workers_alive"] == 1, timeout=30, what="the worker")

    def connect():
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=10)
        except OSError:
            return None

    wait_until(lambda: (s := connect()) is not None and (s.close() or True), timeout=30, what="uvicorn")

    def get(path: str) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode())
        return s

    # A whole short generation.
    s = get("/generate?prompt=a%20b&max_new_tokens=3")
    body = b""
    while b"event: done" not in body:
        data = s.recv(65536)
        assert data, body
        body += data
    s.close()
    text = body.decode()
    assert "event: chunk\ndata: brown \n" in text and "event: done" in text

    # A long one whose caller leaves after two chunks.
    s = get("/generate?prompt=go&max_new_tokens=4000&timeout=120")
    head = b""
    while head.count(b"event: chunk") < 2:
        data = s.recv(65536)
        assert data, head
        head += data
    task_id = head.split(b"event: task\ndata: ")[1].split(b"\n")[0].decode()
    s.close()
    q = rtq.connect(redis_url).queue("llm")
    wait_until(lambda: q.status(task_id)["state"] == "cancelled", timeout=30, what="the task to be cancelled")
    assert q.status(task_id)["chunks"] < 4000
