"""Benchmarks of the Python package (numbers for BENCHMARKS.md).

    python bench.py client --redis URL --queue q --clients 50 --tasks 20000
        One asyncio process, `clients` concurrent request loops of `run`
        (1000-character input); prints tasks/s and latency percentiles.
    python bench.py worker --redis URL --queue q --slots 10
        A Python worker whose handler returns its input at once (prints
        "ready"); its CPU time per task is the Python worker's overhead.
    python bench.py latency --redis URL --queue q --requests 100
        Sequential requests (blocking, then asyncio): latency per request,
        for runs through examples/proxy.rs (RTT 18 ms).
    python bench.py cpu PID
        Prints the CPU seconds (user+system) a process has used so far.

The Redis URL is required; nothing here defaults to a Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

import rtq
import rtq.aio


def percentile(sorted_ms, q):
    return sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))]


async def client(url: str, queue: str, clients: int, tasks: int, chunks: int) -> None:
    q = (await rtq.aio.connect(url)).queue(queue)
    payload = {"max_tokens": chunks, "text": "x" * 1000}
    await q.run(payload, timeout=60)  # warm up: connection, reply stream
    latencies = []
    left = tasks

    async def loop() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            t0 = time.perf_counter()
            if chunks:
                async for _ in q.stream(payload, timeout=60):
                    pass
            else:
                await q.run(payload, timeout=60)
            latencies.append((time.perf_counter() - t0) * 1000)

    cpu0 = os.times()
    t0 = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(clients)))
    wall = time.perf_counter() - t0
    cpu1 = os.times()
    latencies.sort()
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    print(
        f"python client: clients={clients} chunks={chunks} tasks={len(latencies)} "
        f"tasks/s={len(latencies) / wall:,.0f} p50={percentile(latencies, 0.5):.2f}ms "
        f"p99={percentile(latencies, 0.99):.2f}ms client_cpu/task={cpu / len(latencies) * 1e6:.0f}us"
    )


def latency(url: str, queue: str, requests: int) -> None:
    """Sequential requests, blocking and asyncio flavours."""
    q = rtq.connect(url).queue(queue)
    payload = {"max_tokens": 0, "text": "x" * 1000}
    q.run(payload, timeout=60)  # warm up

    def report(name, ms):
        ms.sort()
        avg = sum(ms) / len(ms)
        print(
            f"python {name}: requests={len(ms)} avg={avg:.2f}ms p50={percentile(ms, 0.5):.2f}ms "
            f"p95={percentile(ms, 0.95):.2f}ms p99={percentile(ms, 0.99):.2f}ms"
        )

    ms = []
    for _ in range(requests):
        t0 = time.perf_counter()
        q.run(payload, timeout=60)
        ms.append((time.perf_counter() - t0) * 1000)
    report("blocking", ms)

    async def run_async():
        aq = (await rtq.aio.connect(url)).queue(queue)
        await aq.run(payload, timeout=60)
        out = []
        for _ in range(requests):
            t0 = time.perf_counter()
            await aq.run(payload, timeout=60)
            out.append((time.perf_counter() - t0) * 1000)
        return out

    report("asyncio", asyncio.run(run_async()))


async def echo(task: rtq.Task):
    return task.input


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("client")
    w = sub.add_parser("worker")
    for p in (c, w):
        p.add_argument("--redis", required=True)
        p.add_argument("--queue", default="bench")
    c.add_argument("--clients", type=int, default=50)
    c.add_argument("--tasks", type=int, default=20_000)
    c.add_argument("--chunks", type=int, default=0)
    w.add_argument("--slots", type=int, default=10)
    lat = sub.add_parser("latency")
    lat.add_argument("--redis", required=True)
    lat.add_argument("--queue", default="bench")
    lat.add_argument("--requests", type=int, default=100)
    u = sub.add_parser("cpu")
    u.add_argument("pid", type=int)
    a = ap.parse_args()
    if a.cmd == "client":
        asyncio.run(client(a.redis, a.queue, a.clients, a.tasks, a.chunks))
    elif a.cmd == "latency":
        latency(a.redis, a.queue, a.requests)
    elif a.cmd == "worker":
        rtq.run_worker(a.redis, a.queue, echo, slots=a.slots, on_start=lambda _w: print("ready", flush=True))
    else:
        print(f"{cpu_seconds(a.pid):.3f}")


if __name__ == "__main__":
    sys.exit(main())
