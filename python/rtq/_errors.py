"""Exception classes, one per way an rtq call can fail.

They mirror ``rtq_core::Error``: a wait that ends without a result always
raises one of the :class:`TaskError` subclasses, naming why (and, for
:class:`TimedOut`, where the task was). Every class carries the fields of
its Rust variant as attributes.
"""

from __future__ import annotations

import builtins
from typing import Any, Optional

__all__ = [
    "RtqError",
    "InvalidInput",
    "QueueFull",
    "TooManyQueues",
    "Duplicate",
    "NotFound",
    "TaskError",
    "TimedOut",
    "Cancelled",
    "Failed",
    "WorkerLost",
    "TaskLost",
    "Forged",
    "WaitTimedOut",
    "Uncertain",
    "OutOfMemory",
    "PermissionDenied",
    "ConnectionError",
    "AuthenticationFailed",
    "TlsError",
    "UnsuitableServer",
    "WorkerReplaced",
    "ProtocolError",
    "Stopped",
    "Retryable",
    "NotStarted",
]


class RtqError(Exception):
    """Base class of every error rtq raises.

    ``retryable`` is True for errors that may pass by retrying later
    (connection trouble, a full queue, an uncertain submit).
    """

    retryable: bool = False

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        for name, value in fields.items():
            setattr(self, name, value)

    def __str__(self) -> str:
        return self.message


class InvalidInput(RtqError, ValueError):
    """Input or options that cannot be accepted: a bad queue name or task id,
    input that is not JSON, a priority out of range, a payload over the
    inline limit (send a reference instead)."""


class QueueFull(RtqError):
    """The queue is at its maximum depth (``queue``, ``depth``, ``max_depth``)."""

    retryable = True


class TooManyQueues(RtqError):
    """This client already waits on its maximum of queues (``queue``,
    ``max``), each holding a Redis connection; nothing was submitted. Retry
    when some waits end."""

    retryable = True


class Duplicate(RtqError):
    """``submit`` with an ``id`` that exists already (``id``, ``state``)."""


class NotFound(RtqError, LookupError):
    """No such task (``queue``, ``id``): never submitted, or its retention passed."""


class TaskError(RtqError):
    """The task ended without a result (``id``)."""

    id: str


class TimedOut(TaskError, builtins.TimeoutError):
    """The task's deadline passed. ``phase`` is ``"queued"`` (no worker ever
    started it) or ``"running"`` (on ``worker``, which was told to stop)."""

    phase: str
    worker: Optional[str]


class Cancelled(TaskError):
    """The task was cancelled (``reason``)."""


class Failed(TaskError):
    """The handler failed the task (``worker``, ``reason``)."""


class WorkerLost(TaskError):
    """The task's worker died and no attempts were left (``worker``, ``reason``)."""


class TaskLost(TaskError):
    """The task vanished from Redis while it was waited on (``reason``)."""


class Forged(TaskError):
    """A worker refused the task: not validly signed (``reason``)."""


class WaitTimedOut(RtqError, builtins.TimeoutError):
    """The caller's own wait limit passed; the task goes on
    (``id``, ``waited_ms``, ``state``, ``worker``)."""


class Uncertain(RtqError):
    """A submit whose outcome is unknown; submitting again with the same
    ``id`` is safe (it creates the task at most once)."""

    retryable = True


class OutOfMemory(RtqError):
    """Redis is over its ``maxmemory`` and refused the write (nothing stored)."""

    retryable = True


class PermissionDenied(RtqError, builtins.PermissionError):
    """The Redis user lacks a permission the operation needs (ACL)."""


class ConnectionError(RtqError, builtins.ConnectionError):
    """Redis is unreachable, or the connection was lost and not regained
    (``url``, password redacted)."""

    retryable = True


class AuthenticationFailed(ConnectionError):
    """Redis refused the credentials; retrying will not help."""

    retryable = False


class TlsError(ConnectionError):
    """The TLS handshake or the TLS settings failed; retrying will not help."""

    retryable = False


class UnsuitableServer(RtqError):
    """The Redis server is unfit for rtq (too old, or an evicting policy)."""


class WorkerReplaced(RtqError):
    """Another process registered under this worker's id; this one stopped."""


class ProtocolError(RtqError):
    """Redis answered with an error, or holds data this version cannot read."""


class Stopped(RtqError):
    """Raised inside a worker handler by ``task.send`` once the task must
    stop (cancelled, deadline passed, reassigned, worker shutting down);
    ``reason`` says which. Let it propagate: the handler should return."""


class Retryable(Exception):
    """Raise from a worker handler to fail the attempt as retryable: the task
    is requeued while it has attempts left. Any other exception fails the
    task with its message as the reason."""


class NotStarted(Exception):
    """Raise from a worker handler that never started its task (its
    upstream is unreachable, say) to give the task back unstarted: it goes
    back to the front of the queue *without using an attempt*, for another
    worker (or this one later), and keeps its deadline. ``reason`` is
    logged and becomes the worker's ``last_error``.

    The worker then takes no new tasks for a pause: 0.5 s after the first
    hand-back, doubling with each further one in a row up to 30 s (a task
    that runs resets it), so a task every worker gives back does not
    bounce between them at network speed.

    Only for work that never started: once the handler has sent a chunk,
    raising it fails the attempt as retryable instead (the attempt is
    used), since its output was seen."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
