"""A FastAPI endpoint that streams an rtq task to its caller as
server-sent events, and cancels the task when the caller leaves.

    pip install fastapi uvicorn
    RTQ_REDIS_URL=redis://127.0.0.1:6379 uvicorn examples.fastapi_sse:app --port 8000
    curl -N 'http://127.0.0.1:8000/generate?prompt=hello'

Events: ``event: chunk`` with the text, ``event: restarted`` when a worker
was lost and the task starts over, ``event: done`` with the JSON result, or
``event: error`` with the rtq error class and message.

The stream is opened with ``cancel_on_exit=True``: when the caller
disconnects, Starlette cancels the response generator, the rtq stream is
dropped, and the task is cancelled, so the GPU stops working for nobody.
"""

from __future__ import annotations

import json
import os
from contextlib import asynccontextmanager
from typing import AsyncIterator, Optional

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import StreamingResponse

import rtq
import rtq.aio

STATE: dict = {}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    url = os.environ.get("RTQ_REDIS_URL")
    if not url:
        raise RuntimeError("set RTQ_REDIS_URL to the Redis that holds the queue")
    client = await rtq.aio.connect(url)
    STATE["queue"] = client.queue(os.environ.get("RTQ_QUEUE", "llm"))
    yield
    STATE.clear()


app = FastAPI(lifespan=lifespan)


def sse(event: str, data: str) -> bytes:
    lines = "".join(f"data: {line}\n" for line in data.split("\n"))
    return f"event: {event}\n{lines}\n".encode()


@app.get("/generate")
async def generate(
    prompt: str = Query(..., min_length=1, max_length=10_000),
    max_new_tokens: int = Query(16, ge=1, le=4096),
    timeout: Optional[float] = Query(60.0, gt=0, le=3600),
) -> StreamingResponse:
    q: rtq.aio.AsyncQueue = STATE["queue"]
    stream = q.stream(
        {"prompt": prompt, "max_new_tokens": max_new_tokens},
        timeout=timeout,
        cancel_on_exit=True,
    )

    async def events() -> AsyncIterator[bytes]:
        # `async with` closes the stream however this generator ends: a
        # disconnected caller cancels it, which cancels the task.
        async with stream:
            yield sse("task", stream.id)
            try:
                async for item in stream:
                    if isinstance(item, rtq.Chunk):
                        yield sse("chunk", item.text)
                    elif isinstance(item, rtq.Restarted):
                        yield sse("restarted", item.reason)
                    else:
                        yield sse("done", json.dumps(item.result))
            except rtq.RtqError as e:
                yield sse("error", json.dumps({"error": type(e).__name__, "message": str(e)}))

    return StreamingResponse(events(), media_type="text/event-stream", headers={"X-Task-Id": stream.id})


@app.get("/tasks/{task_id}")
async def status(task_id: str) -> dict:
    try:
        return await STATE["queue"].status(task_id)
    except rtq.NotFound:
        raise HTTPException(404, f"no task {task_id}")
    except rtq.InvalidInput as e:
        raise HTTPException(400, str(e))
