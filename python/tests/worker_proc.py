"""A Python rtq worker process for the tests: prints "ready" once
connected, serves until SIGTERM (graceful) or kill -9.

Modes: echo (result = input), stream (input["n"] chunks "tokN ", one every
input["every"] seconds, result {"tokens": n}), slow (sleeps input["secs"]
then returns "slept"; it logs "handler started <id>" to stderr first),
stubborn and stubborn_sync (log the same line, then sleep forever,
ignoring cancellation: an async handler that swallows CancelledError, a
sync one that never polls task.cancelled).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import rtq


async def echo(task: rtq.Task):
    return task.input


async def stream(task: rtq.Task):
    n = task.input.get("n", 5)
    every = task.input.get("every", 0.0)
    for i in range(n):
        task.send(f"tok{i} ")
        await asyncio.sleep(every)
    return {"tokens": n, "worker_attempt": task.attempt}


async def slow(task: rtq.Task):
    # Tests wait for this line: Redis says "running" from the hand-out on,
    # a little before the handler starts (a signal in between finds
    # nothing running and hands the task back).
    print(f"handler started {task.id}", file=sys.stderr, flush=True)
    await asyncio.sleep(task.input.get("secs", 1.0))
    return "slept"


async def stubborn(task: rtq.Task):
    print(f"handler started {task.id}", file=sys.stderr, flush=True)
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass


def stubborn_sync(task: rtq.Task):
    print(f"handler started {task.id}", file=sys.stderr, flush=True)
    while True:
        time.sleep(3600)


MODES = {"echo": echo, "stream": stream, "slow": slow, "stubborn": stubborn, "stubborn_sync": stubborn_sync}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--redis", required=True)
    ap.add_argument("--queue", required=True)
    ap.add_argument("--mode", default="echo", choices=sorted(MODES))
    ap.add_argument("--slots", type=int, default=1)
    ap.add_argument("--lease", type=float, default=None)
    ap.add_argument("--grace", type=float, default=None)
    ap.add_argument("--worker-id", default=None)
    ap.add_argument("--log", default="warn")
    a = ap.parse_args()
    rtq.init_logging(a.log)

    def ready(_worker) -> None:
        print("ready", flush=True)

    rtq.run_worker(
        a.redis,
        a.queue,
        MODES[a.mode],
        slots=a.slots,
        lease=a.lease,
        grace=a.grace,
        worker_id=a.worker_id,
        on_start=ready,
    )
    print("stopped", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
