"""Run an rtq worker inside a Python process, with a Python handler.

A handler takes a :class:`rtq.Task` and is one of:

- ``async def handle(task)``: sends chunks with ``await task.asend(chunk)``
  (or ``task.send(chunk)``, which blocks the loop while Redis lags more
  than the task's 4 MiB output budget) and returns the result (any JSON
  value);
- an async generator ``async def handle(task): yield chunk ...``: each
  ``str``/``bytes`` item is a chunk; ``yield rtq.Result(value)`` sets the
  result (otherwise it is ``None``);
- a plain function or generator (same rules), run in a thread pool of
  ``slots`` threads so it may block (a CPU/GPU-bound ``generate`` loop).

Cancellation (a client cancel, the deadline, a reassignment, shutdown) is
visible to the handler: async handlers get ``CancelledError`` at their next
await, ``task.send`` raises :class:`rtq.Stopped`, and ``task.cancelled``
turns True (sync handlers should poll it between steps).

Raise :class:`rtq.Retryable` to requeue the task while it has attempts
left; raise :class:`rtq.NotStarted` to give a task you never started back
unstarted, without using an attempt (the worker then pauses its intake
briefly); any other exception fails it with the exception as the reason.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import os
import signal
import sys
import threading
from typing import Any, Awaitable, Callable, Dict, Optional, Set

from rtq import _native

__all__ = ["Result", "serve", "run_worker", "adapt"]

_log = logging.getLogger("rtq.worker")


class Result:
    """Wraps the result a generator handler yields (its last item)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _chunk_or_result(task: _native.Task, item: Any, box: list) -> None:
    if isinstance(item, Result):
        box[0] = item.value
    elif isinstance(item, (str, bytes)):
        task.send(item)
    else:
        raise TypeError(
            f"a handler generator yields str or bytes chunks, or rtq.Result(value); got {type(item).__name__}"
        )


def _check_handler(handler: Any) -> None:
    if not callable(handler):
        raise TypeError(f"handler must be callable, not {type(handler).__name__}")


class HandlerExit(Exception):
    """A handler raised ``SystemExit`` or ``KeyboardInterrupt``: that task
    fails with it as the reason, and the worker keeps serving (stop a
    worker with a signal or ``Worker.stop()``)."""


def adapt(
    handler: Callable[..., Any], executor: concurrent.futures.Executor
) -> Callable[[_native.Task], Awaitable[Any]]:
    """Turns any supported handler into ``async def (task) -> result``.

    Raises ``TypeError`` for a handler that is not callable (before any
    task is taken: the worker would otherwise fail every one)."""
    _check_handler(handler)
    fn = _adapt(handler, executor)

    async def guarded(task: _native.Task) -> Any:
        try:
            return await fn(task)
        except (SystemExit, KeyboardInterrupt) as e:
            # Escaping the handler's asyncio task they would stop the
            # event loop, and with it the whole worker.
            text = str(e)
            raise HandlerExit(type(e).__name__ + (f": {text}" if text else "")) from None

    return guarded


def _adapt(
    handler: Callable[..., Any], executor: concurrent.futures.Executor
) -> Callable[[_native.Task], Awaitable[Any]]:
    if inspect.isasyncgenfunction(handler):

        async def run_async_gen(task: _native.Task) -> Any:
            box = [None]
            agen = handler(task)
            try:
                async for item in agen:
                    if isinstance(item, (str, bytes)):
                        # Waits without blocking the loop while Redis lags.
                        await task.asend(item)
                    else:
                        _chunk_or_result(task, item, box)
            finally:
                await agen.aclose()
            return box[0]

        return run_async_gen
    if inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None)
    ):
        return handler
    if inspect.isgeneratorfunction(handler):

        def drain(task: _native.Task) -> Any:
            box = [None]
            gen = handler(task)
            try:
                for item in gen:
                    _chunk_or_result(task, item, box)
            finally:
                gen.close()
            return box[0]

        sync = drain
    else:
        sync = handler

    async def run_in_thread(task: _native.Task) -> Any:
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(executor, sync, task)
        if inspect.isawaitable(result):
            # A plain callable that returned a coroutine (a lambda or a
            # partial around an async function): await it here.
            result = await result
        return result

    return run_in_thread


async def serve(
    url: str,
    queue: str,
    handler: Callable[..., Any],
    *,
    slots: int = 1,
    labels: Optional[Dict[str, str]] = None,
    lease: Optional[float] = None,
    worker_id: Optional[str] = None,
    grace: Optional[float] = None,
    cancel_grace: Optional[float] = None,
    handle_signals: bool = True,
    on_start: Optional[Callable[[_native.Worker], None]] = None,
) -> None:
    """Serves ``queue`` with ``handler`` until SIGTERM/SIGINT (when
    ``handle_signals`` and running in the main thread) or until the
    worker's ``stop()`` is called; then drains gracefully: no new tasks,
    running ones get ``grace`` seconds (default 25) to finish, the rest are
    stopped (``cancel_grace`` seconds, default 1, to return) and handed
    back to the queue. A second signal stops at once (as
    ``worker.stop(force=True)``): every running task is handed back to the
    queue now, a started one counted as interrupted (it uses an attempt),
    not left to the lease. ``on_start(worker)`` is called once the worker
    is connected (to keep a handle for ``stop()`` or ``status()``).

    A handler that ignores its cancellation (catches ``CancelledError``,
    or a sync handler that never polls ``task.cancelled``) cannot be
    stopped, and would keep the process alive: once its task is handed
    back and it has had ``cancel_grace`` more seconds, a worker stopped by
    a signal ends the process, dying of that signal (a shell reports
    128 + its number). A worker stopped by ``stop()`` returns instead,
    logging a warning; such a handler keeps its asyncio task or thread.

    ``lease`` (seconds, default 5) is how long the worker may go silent
    before its tasks are given to others; ``labels`` describe it to
    operators.
    """
    _check_handler(handler)  # before connecting
    executor = _HandlerThreads(slots)
    fn = adapt(handler, executor)
    # The handlers' asyncio tasks running now.
    active: Set["asyncio.Task[Any]"] = set()

    async def tracked(task: _native.Task) -> Any:
        me = asyncio.current_task()
        if me is not None:
            active.add(me)
        try:
            return await fn(task)
        finally:
            active.discard(me)  # type: ignore[arg-type]

    worker = await _native.connect_worker(
        url,
        queue,
        slots=slots,
        labels=labels,
        lease=lease,
        worker_id=worker_id,
        grace=grace,
        cancel_grace=cancel_grace,
    )
    loop = asyncio.get_running_loop()
    run = asyncio.ensure_future(worker.run(tracked))
    signals = []
    hurry = asyncio.Event()

    def on_signal(sig: int) -> None:
        # The first signal drains gracefully; a second one is the core's
        # forced stop: every running task is handed back to the queue at
        # once (Redis is waited for, briefly) and `run` returns. Any
        # further one ends the wait for handlers that ignore their
        # cancellation.
        signals.append(sig)
        if len(signals) == 1:
            worker.stop()
        elif len(signals) == 2:
            worker.stop(force=True)
        else:
            hurry.set()

    installed = []
    if handle_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, on_signal, sig)
                installed.append(sig)
            except (RuntimeError, ValueError, NotImplementedError):
                pass  # not the main thread, or no signals here
    try:
        if on_start is not None:
            on_start(worker)
        await run
        # The worker has left and its tasks are back in the queue; the
        # core stopped every handler. Those that ignore it stay behind.
        wait = 1.0 if cancel_grace is None else cancel_grace
        stuck = await _stuck_handlers(active, executor, wait, hurry)
        if stuck and signals:
            _log.warning(
                "%d handler(s) ignored the cancellation of their task (handed back to the queue): "
                "ending the process",
                stuck,
            )
            _die_of(signals[-1])
        elif stuck:
            _log.warning(
                "%d handler(s) ignored the cancellation of their task (handed back to the queue) "
                "and still run",
                stuck,
            )
    finally:
        if not run.done():
            run.cancel()
        for sig in installed:
            loop.remove_signal_handler(sig)
        executor.shutdown(wait=False, cancel_futures=True)


class _HandlerThreads(concurrent.futures.ThreadPoolExecutor):
    """The threads sync handlers run in (``slots`` of them), counting the
    calls running now: a handler that ignores its cancellation keeps its
    thread after its asyncio task ended."""

    def __init__(self, slots: int) -> None:
        super().__init__(max_workers=max(1, slots), thread_name_prefix="rtq-handler")
        self._lock = threading.Lock()
        self._busy = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> "concurrent.futures.Future[Any]":
        def call() -> Any:
            with self._lock:
                self._busy += 1
            try:
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    self._busy -= 1

        return super().submit(call)

    @property
    def busy(self) -> int:
        """Calls running now."""
        with self._lock:
            return self._busy


async def _stuck_handlers(
    active: Set["asyncio.Task[Any]"], threads: _HandlerThreads, wait: float, hurry: asyncio.Event
) -> int:
    """Cancels the handlers' asyncio tasks still running (the core did
    already) and waits up to ``wait`` seconds, or until ``hurry`` is set,
    for them and for the sync handlers' threads to end. Returns how many
    have not."""
    for t in list(active):
        t.cancel()

    def left() -> int:
        return sum(1 for t in active if not t.done()) + threads.busy

    loop = asyncio.get_running_loop()
    end = loop.time() + wait
    while left() and loop.time() < end and not hurry.is_set():
        await asyncio.sleep(0.02)
    return left()


def _die_of(sig: int) -> None:
    """Ends the process as the signal's default action does (it cannot
    end otherwise: asyncio and the interpreter's exit wait for handlers
    that never return)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    signal.signal(sig, signal.SIG_DFL)
    os.kill(os.getpid(), sig)
    # Still here: the signal's default action is to ignore it (as for
    # PID 1 in a container).
    os._exit(128 + sig)


def run_worker(url: str, queue: str, handler: Callable[..., Any], **options: Any) -> None:
    """Blocking form of :func:`serve`: runs it in a new asyncio loop."""
    asyncio.run(serve(url, queue, handler, **options))
