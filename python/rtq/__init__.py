"""rtq: a real-time task queue for AI inference on Redis.

Blocking flavour here (``rtq.connect``); asyncio flavour in ``rtq.aio``;
workers with Python handlers in ``rtq.worker``. Everything is built on the
Rust ``rtq-core`` library, so Python and Rust clients and workers speak the
same protocol and serve each other.

    import rtq
    client = rtq.connect("redis://127.0.0.1:6379")
    llm = client.queue("llm")
    print(llm.run({"prompt": "Hello"}, timeout=30))
    for item in llm.stream({"prompt": "Tell me a story"}):
        if isinstance(item, rtq.Chunk):
            print(item.text, end="")
"""

from __future__ import annotations

import atexit as _atexit
import os as _os

from rtq._errors import (
    AuthenticationFailed,
    Cancelled,
    ConnectionError,
    Duplicate,
    Failed,
    Forged,
    InvalidInput,
    NotFound,
    NotStarted,
    OutOfMemory,
    PermissionDenied,
    ProtocolError,
    QueueFull,
    TooManyQueues,
    Retryable,
    RtqError,
    Stopped,
    TaskError,
    TaskLost,
    TimedOut,
    TlsError,
    Uncertain,
    UnsuitableServer,
    WaitTimedOut,
    WorkerLost,
    WorkerReplaced,
)
from rtq._native import (
    Admin,
    Chunk,
    Client,
    Done,
    Queue,
    Restarted,
    Stream,
    Task,
    __version__,
    connect,
    init_logging,
    redact_url,
)
from rtq.worker import Result, run_worker, serve
from rtq._native import _after_fork_in_child, _shutdown

# Before the interpreter finalizes, keep rtq's runtime threads out of
# Python (a thread entering a finalizing interpreter aborts the process).
_atexit.register(_shutdown)

# A child forked after rtq started cannot use the inherited runtime (no
# threads, and an epoll instance shared with the parent): every rtq call
# there raises RtqError instead of hanging (or crashing the parent).
if hasattr(_os, "register_at_fork"):
    _os.register_at_fork(after_in_child=_after_fork_in_child)

__all__ = [
    "Admin",
    "AuthenticationFailed",
    "Cancelled",
    "Chunk",
    "Client",
    "ConnectionError",
    "Done",
    "Duplicate",
    "Failed",
    "Forged",
    "InvalidInput",
    "NotFound",
    "NotStarted",
    "OutOfMemory",
    "PermissionDenied",
    "ProtocolError",
    "Queue",
    "QueueFull",
    "TooManyQueues",
    "Restarted",
    "Result",
    "Retryable",
    "RtqError",
    "Stopped",
    "Stream",
    "Task",
    "TaskError",
    "TaskLost",
    "TimedOut",
    "TlsError",
    "Uncertain",
    "UnsuitableServer",
    "WaitTimedOut",
    "WorkerLost",
    "WorkerReplaced",
    "__version__",
    "connect",
    "init_logging",
    "redact_url",
    "run_worker",
    "serve",
]
