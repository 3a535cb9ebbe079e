"""Type stubs for the native module (built from python/src by maturin).

`python/test.sh` checks them against the built module with
`python -m mypy.stubtest` (names only the stubs define, such as the
TypedDicts, are listed in stubtest-allowlist.txt)."""

from types import TracebackType
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, Iterator, List, Literal, Optional, Type, TypedDict, Union, final

__all__ = [
    "connect",
    "connect_async",
    "connect_worker",
    "init_logging",
    "redact_url",
    "_shutdown",
    "_after_fork_in_child",
    "Client",
    "AsyncClient",
    "Queue",
    "AsyncQueue",
    "Stream",
    "Chunk",
    "Restarted",
    "Done",
    "Worker",
    "Task",
    "Admin",
    "AsyncAdmin",
    "__version__",
]

__version__: str

JSON = Any
"""A JSON value: dict, list, str, int, float, bool or None."""

class Submitted(TypedDict):
    id: str
    state: str
    worker: Optional[str]
    deadline_ms: int
    submitted_ms: int

class TaskInfo(TypedDict):
    id: str
    state: str
    """queued, running, done, failed, cancelled or expired."""
    priority: int
    attempt: int
    failures: int
    max_attempts: int
    worker: str
    submitted_ms: int
    deadline_ms: int
    started_ms: int
    first_chunk_ms: int
    last_chunk_ms: int
    finished_ms: int
    chunks: int
    bytes: int
    retry_at_ms: Optional[int]
    attempt_errors: Dict[int, str]
    outcome: Optional[Dict[str, Any]]
    """{"result": ...} when done; {"state", "kind", "message", "worker"} when it ended without one."""
    input: JSON
    input_ref: Optional[str]
    labels: Dict[str, str]

class WorkerInfo(TypedDict):
    """A worker as `Admin.workers` describes it."""
    id: str
    lease_until_ms: Optional[int]
    """None once it left or was reaped."""
    last_error_ms: Optional[int]
    """When its last_error happened (ms, Redis clock); None without one."""
    last_error_age_ms: Optional[int]
    """How long ago that was (ms, Redis clock); None as for last_error_ms."""
    tasks: List[str]
    labels: Dict[str, str]
    fields: Dict[str, str]
    """Every field of its heartbeat (host, slots, busy, state, last_error, ...)."""

@final
class Chunk:
    """One piece of a task's output."""
    @property
    def index(self) -> int: ...
    @property
    def attempt(self) -> int: ...
    @property
    def data(self) -> bytes: ...
    @property
    def text(self) -> str: ...

@final
class Restarted:
    """The attempt streamed so far was abandoned; the chunks of
    `next_attempt` follow, from 0."""
    @property
    def attempt(self) -> int: ...
    @property
    def next_attempt(self) -> int: ...
    @property
    def reason(self) -> str: ...

@final
class Done:
    """The task finished: the last item of a stream."""
    @property
    def id(self) -> str: ...
    @property
    def result(self) -> JSON: ...
    @property
    def attempt(self) -> int: ...

Event = Union[Chunk, Restarted, Done]

@final
class Stream:
    """A task's output: Chunk and Restarted items, then one Done. A task
    that ends without a result raises its rtq.TaskError instead. Starts on
    the first read; close() (or leaving a with block) drops it."""
    @property
    def id(self) -> str: ...
    def __aiter__(self) -> AsyncIterator[Event]: ...
    async def __anext__(self) -> Event: ...
    def __iter__(self) -> Iterator[Event]: ...
    def __next__(self) -> Event: ...
    def close(self) -> None: ...
    async def aclose(self) -> None: ...
    def __enter__(self) -> "Stream": ...
    def __exit__(self, exc_type: Optional[Type[BaseException]], exc_value: Optional[BaseException], traceback: Optional[TracebackType]) -> None: ...
    async def __aenter__(self) -> "Stream": ...
    async def __aexit__(self, exc_type: Optional[Type[BaseException]], exc_value: Optional[BaseException], traceback: Optional[TracebackType]) -> None: ...

@final
class Queue:
    """A queue handle (blocking calls; the GIL is released while waiting)."""
    @property
    def name(self) -> str: ...
    def run(self, input: JSON = None, *, input_ref: Optional[str] = None, timeout: Optional[float] = None, priority: int = 0, labels: Optional[Dict[str, str]] = None, id: Optional[str] = None, max_attempts: Optional[int] = None, retention: Optional[float] = None, cancel_on_exit: bool = False) -> JSON: ...
    def stream(self, input: JSON = None, *, input_ref: Optional[str] = None, timeout: Optional[float] = None, priority: int = 0, labels: Optional[Dict[str, str]] = None, id: Optional[str] = None, max_attempts: Optional[int] = None, retention: Optional[float] = None, cancel_on_exit: bool = False) -> Stream: ...
    def submit(self, input: JSON = None, *, input_ref: Optional[str] = None, timeout: Optional[float] = None, priority: int = 0, labels: Optional[Dict[str, str]] = None, id: Optional[str] = None, max_attempts: Optional[int] = None, retention: Optional[float] = None) -> Submitted: ...
    def wait(self, id: str, *, timeout: Optional[float] = None) -> JSON: ...
    def status(self, id: str) -> TaskInfo: ...
    def follow(self, id: str, *, from_: int = 0, attempt: Optional[int] = None) -> Stream: ...
    def cancel(self, id: str, reason: str = "cancelled by client") -> str: ...
    def create_stream(self, bands: int = 1, max_depth: int = 0) -> None:
        """Makes this queue a stream queue (protocol v3, 1-5 priority bands)
        with a depth limit (0: none), or updates the limit of one."""

@final
class AsyncQueue:
    """A queue handle (asyncio calls)."""
    @property
    def name(self) -> str: ...
    def run(self, input: JSON = None, *, input_ref: Optional[str] = None, timeout: Optional[float] = None, priority: int = 0, labels: Optional[Dict[str, str]] = None, id: Optional[str] = None, max_attempts: Optional[int] = None, retention: Optional[float] = None, cancel_on_exit: bool = False) -> Awaitable[JSON]: ...
    def stream(self, input: JSON = None, *, input_ref: Optional[str] = None, timeout: Optional[float] = None, priority: int = 0, labels: Optional[Dict[str, str]] = None, id: Optional[str] = None, max_attempts: Optional[int] = None, retention: Optional[float] = None, cancel_on_exit: bool = False) -> Stream: ...
    def submit(self, input: JSON = None, *, input_ref: Optional[str] = None, timeout: Optional[float] = None, priority: int = 0, labels: Optional[Dict[str, str]] = None, id: Optional[str] = None, max_attempts: Optional[int] = None, retention: Optional[float] = None) -> Awaitable[Submitted]: ...
    def wait(self, id: str, *, timeout: Optional[float] = None) -> Awaitable[JSON]: ...
    def status(self, id: str) -> Awaitable[TaskInfo]: ...
    def follow(self, id: str, *, from_: int = 0, attempt: Optional[int] = None) -> Stream: ...
    def cancel(self, id: str, reason: str = "cancelled by client") -> Awaitable[str]: ...
    def create_stream(self, bands: int = 1, max_depth: int = 0) -> Awaitable[None]: ...

TaskKind = Literal["pending", "running", "recent", "failed"]

@final
class Admin:
    """Admin reads (blocking)."""
    def queues(self) -> List[str]: ...
    def overview(self, queue: str) -> Dict[str, Any]: ...
    def stats(self, queue: str, *, buckets: int = 30) -> Dict[str, Any]: ...
    def workers(self, queue: str) -> List[WorkerInfo]: ...
    def tasks(self, queue: str, kind: TaskKind = "pending", *, offset: int = 0, limit: int = 100) -> List[TaskInfo]: ...

@final
class AsyncAdmin:
    """Admin reads (asyncio)."""
    def queues(self) -> Awaitable[List[str]]: ...
    def overview(self, queue: str) -> Awaitable[Dict[str, Any]]: ...
    def stats(self, queue: str, *, buckets: int = 30) -> Awaitable[Dict[str, Any]]: ...
    def workers(self, queue: str) -> Awaitable[List[WorkerInfo]]: ...
    def tasks(self, queue: str, kind: TaskKind = "pending", *, offset: int = 0, limit: int = 100) -> Awaitable[List[TaskInfo]]: ...

@final
class Client:
    """A connection to Redis (blocking calls)."""
    @property
    def url(self) -> str: ...
    def queue(self, name: str) -> Queue: ...
    def admin(self) -> Admin: ...

@final
class AsyncClient:
    """A connection to Redis (asyncio calls)."""
    @property
    def url(self) -> str: ...
    def queue(self, name: str) -> AsyncQueue: ...
    def admin(self) -> AsyncAdmin: ...

def connect(url: str, *, response_timeout: Optional[float] = None, give_up_after: Optional[float] = None, max_reply_readers: Optional[int] = None, reply_reader_idle: Optional[float] = None) -> Client: ...
def connect_async(url: str, *, response_timeout: Optional[float] = None, give_up_after: Optional[float] = None, max_reply_readers: Optional[int] = None, reply_reader_idle: Optional[float] = None) -> Awaitable[AsyncClient]: ...

@final
class Task:
    """A task handed to a worker's handler."""
    @property
    def id(self) -> str: ...
    @property
    def attempt(self) -> int: ...
    @property
    def input(self) -> JSON: ...
    @property
    def input_ref(self) -> Optional[str]: ...
    @property
    def labels(self) -> Dict[str, str]: ...
    @property
    def time_left(self) -> Optional[float]: ...
    @property
    def cancelled(self) -> bool: ...
    @property
    def stop_reason(self) -> Optional[str]: ...
    def send(self, chunk: Union[str, bytes]) -> None:
        """Queues a chunk; waits (GIL released) only while the task's output not
        yet in Redis is over its 4 MiB budget. Raises rtq.Stopped once the task
        must stop. On the event loop prefer ``await task.asend(chunk)``."""
    def asend(self, chunk: Union[str, bytes]) -> Awaitable[None]:
        """Queues a chunk; waits, without blocking the event loop, while the
        task's output not yet in Redis is over its budget. Raises rtq.Stopped
        once the task must stop."""

@final
class Worker:
    @property
    def id(self) -> str: ...
    def run(self, handler: Callable[[Task], Awaitable[JSON]]) -> Awaitable[None]: ...
    def stop(self, *, force: bool = False) -> None:
        """Stops the worker: gracefully (the drain), or with force=True at
        once, handing every running task back to the queue now."""
    def status(self) -> Dict[str, Any]: ...

def connect_worker(url: str, queue: str, *, slots: int = 1, labels: Optional[Dict[str, str]] = None, lease: Optional[float] = None, worker_id: Optional[str] = None, grace: Optional[float] = None, cancel_grace: Optional[float] = None, handler_name: str = "python") -> Awaitable[Worker]: ...
def init_logging(level: str = "info") -> None: ...
def redact_url(url: str) -> str: ...
def _shutdown() -> None:
    """Registered with atexit: keeps runtime threads out of a finalizing interpreter."""
def _after_fork_in_child() -> None: ...
