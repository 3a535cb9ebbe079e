"""The asyncio flavour of the rtq client.

    import rtq.aio
    client = await rtq.aio.connect("redis://127.0.0.1:6379")
    llm = client.queue("llm")
    result = await llm.run({"prompt": "Hello"}, timeout=30)
    async for item in llm.stream({"prompt": "Tell me a story"}):
        ...

Every wait releases the GIL and shares the client's one Redis connection
(and one blocking reader per queue): thousands of concurrent ``run`` calls
in one loop cost what they cost in Rust. Cancelling the asyncio task that
awaits ``run`` or reads a ``stream`` drops the Rust future; pass
``cancel_on_exit=True`` to cancel the rtq task as well.
"""

from __future__ import annotations

from rtq._native import AsyncAdmin, AsyncClient, AsyncQueue, Stream
from rtq._native import connect_async as connect

__all__ = ["AsyncAdmin", "AsyncClient", "AsyncQueue", "Stream", "connect"]
