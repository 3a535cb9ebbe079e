"""An in-process Python worker for tests (same asyncio loop as the client)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, AsyncIterator

import rtq


@contextlib.asynccontextmanager
async def running_worker(url: str, queue: str, handler: Any, **options: Any) -> AsyncIterator[Any]:
    """Serves `queue` with `handler` while the block runs; yields the Worker."""
    started: asyncio.Future = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        rtq.serve(url, queue, handler, handle_signals=False, on_start=started.set_result, **options)
    )
    done, _ = await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()  # raises the start-up error
    worker = started.result()
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)
