"""Python workers in the test's own process (same asyncio loop as the
client): handler kinds, failures and retries, cancellation visible to the
handler, deadlines naming the phase, asyncio cancellation of a waiting
caller."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import rtq
import rtq.aio
from inproc import running_worker


def run(coro):
    return asyncio.run(coro)


async def wait_state(q, task_id, state, timeout=10.0):
    """Polls the task's stored state until it is `state`."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        try:
            now = (await q.status(task_id))["state"]
        except rtq.NotFound:
            now = "not submitted yet"
        if now == state:
            return
        assert loop.time() < end, f"task {task_id} is {now}, not {state}"
        await asyncio.sleep(0.02)


def test_every_handler_kind_streams_chunks_and_returns_a_result(redis_url):
    async def coroutine(task):
        task.send("a")
        task.send(b"b")
        return {"kind": "coroutine", "input": task.input}

    async def async_gen(task):
        yield "a"
        await asyncio.sleep(0)
        yield b"b"
        yield rtq.Result({"kind": "async_gen", "input": task.input})

    def sync_fn(task):
        assert threading.current_thread() is not threading.main_thread()
        task.send("a")
        task.send("b")
        time.sleep(0.01)  # may block: it runs in a thread
        return {"kind": "sync_fn", "input": task.input}

    def sync_gen(task):
        yield "a"
        yield "b"
        yield rtq.Result({"kind": "sync_gen", "input": task.input})

    async def main():
        client = await rtq.aio.connect(redis_url)
        for handler in (coroutine, async_gen, sync_fn, sync_gen):
            async with running_worker(redis_url, handler.__name__, handler):
                q = client.queue(handler.__name__)
                items = [i async for i in q.stream({"n": 1}, timeout=10)]
                assert [i.text for i in items[:-1]] == ["a", "b"], handler.__name__
                assert items[-1].result == {"kind": handler.__name__, "input": {"n": 1}}

    run(main())


def test_a_handler_exception_fails_the_task_and_retryable_requeues_it(redis_url):
    attempts = []

    async def handler(task):
        attempts.append(task.attempt)
        if task.input == "retry" and task.attempt < 2:
            raise rtq.Retryable("GPU hiccup")
        if task.input == "boom":
            raise KeyError("no such model")
        if task.input == "not-json":
            return {1, 2}
        return task.attempt

    async def main():
        q = (await rtq.aio.connect(redis_url)).queue("q")
        async with running_worker(redis_url, "q", handler, slots=2):
            with pytest.raises(rtq.Failed) as e:
                await q.run("boom", timeout=10)
            assert "KeyError" in e.value.reason and "no such model" in e.value.reason
            with pytest.raises(rtq.Failed, match="not JSON"):
                await q.run("not-json", timeout=10)
            assert await q.run("retry", timeout=20, max_attempts=3) == 2

    run(main())


def test_cancelling_a_running_task_reaches_the_handler(redis_url):
    seen = {}

    async def handler(task):
        try:
            for i in range(10_000):
                task.send(f"t{i}")
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            seen["cancelled"] = task.cancelled
            seen["reason"] = task.stop_reason
            with pytest.raises(rtq.Stopped):
                task.send("after the cancel")
            raise
        return "finished"

    async def main():
        q = (await rtq.aio.connect(redis_url)).queue("q")
        async with running_worker(redis_url, "q", handler):
            stream = q.stream(None, timeout=30)
            first = await stream.__anext__()
            assert isinstance(first, rtq.Chunk)
            assert await q.cancel(stream.id, "user left") == "running"
            with pytest.raises(rtq.Cancelled) as e:
                async for _ in stream:
                    pass
            assert e.value.reason == "user left"
            for _ in range(100):
                if seen:
                    break
                await asyncio.sleep(0.02)
        assert seen == {"cancelled": True, "reason": "cancelled"}

    run(main())


def test_a_sync_handler_sees_the_cancel_by_polling(redis_url):
    seen = {}

    def handler(task):
        deadline = time.monotonic() + 20
        while not task.cancelled and time.monotonic() < deadline:
            time.sleep(0.01)
        seen["reason"] = task.stop_reason
        return "stopped"

    async def main():
        q = (await rtq.aio.connect(redis_url)).queue("q")
        async with running_worker(redis_url, "q", handler):
            sub = await q.submit(None)
            await wait_state(q, sub["id"], "running")
            await q.cancel(sub["id"])
            with pytest.raises(rtq.Cancelled):
                await q.wait(sub["id"], timeout=10)
            for _ in range(200):
                if seen:
                    break
                await asyncio.sleep(0.02)
        assert seen == {"reason": "cancelled"}

    run(main())


def test_a_deadline_passing_while_running_names_the_worker(redis_url):
    async def handler(task):
        await asyncio.sleep(30)

    async def main():
        q = (await rtq.aio.connect(redis_url)).queue("q")
        async with running_worker(redis_url, "q", handler, worker_id="gpu-7"):
            with pytest.raises(rtq.TimedOut) as e:
                await q.run(None, timeout=0.5)
        assert e.value.phase == "running" and e.value.worker == "gpu-7"
        assert "while running on worker gpu-7" in str(e.value)

    run(main())


def test_cancelling_the_asyncio_task_can_cancel_the_rtq_task(redis_url):
    async def handler(task):
        await asyncio.sleep(30)

    async def main():
        q = (await rtq.aio.connect(redis_url)).queue("q")
        async with running_worker(redis_url, "q", handler, slots=2):
            # Without cancel_on_exit the task goes on.
            keep = asyncio.create_task(q.run(None, id="keep", timeout=30))
            gone = asyncio.create_task(q.run(None, id="gone", timeout=30, cancel_on_exit=True))
            await wait_state(q, "keep", "running")
            await wait_state(q, "gone", "running")
            keep.cancel()
            gone.cancel()
            for t in (keep, gone):
                with pytest.raises(asyncio.CancelledError):
                    await t
            await wait_state(q, "gone", "cancelled")
            assert (await q.status("keep"))["state"] == "running"
            # A stream whose reader is cancelled is dropped (and with
            # cancel_on_exit its task cancelled).
            s = q.stream(None, id="streamed", timeout=30, cancel_on_exit=True)
            reader = asyncio.create_task(s.__anext__())
            await asyncio.sleep(0.3)
            reader.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reader
            await wait_state(q, "streamed", "cancelled")
            with pytest.raises(RuntimeError, match="closed"):
                await s.__anext__()
            await q.cancel("keep")

    run(main())


def test_worker_settings_are_checked(redis_url):
    async def h(task):
        return None

    async def main():
        with pytest.raises(rtq.InvalidInput, match="slots"):
            async with running_worker(redis_url, "q", h, slots=0):
                pass
        with pytest.raises(rtq.InvalidInput, match="lease"):
            async with running_worker(redis_url, "q", h, lease=0.01):
                pass
        with pytest.raises(rtq.InvalidInput, match="worker id"):
            async with running_worker(redis_url, "q", h, worker_id="a b"):
                pass

    run(main())


def test_admin_reads_show_the_worker_and_tasks(redis_url):
    async def handler(task):
        return "ok"

    async def main():
        client = await rtq.aio.connect(redis_url)
        q = client.queue("q")
        admin = client.admin()
        async with running_worker(redis_url, "q", handler, labels={"gpu": "A100"}, worker_id="w1", slots=3):
            for i in range(3):
                assert await q.run(i, timeout=10) == "ok"
            workers = await admin.workers("q")
            assert [w["id"] for w in workers] == ["w1"]
            assert workers[0]["labels"].get("gpu") == "A100"
            assert workers[0]["fields"]["slots"] == "3"
            # Workers add their statistics with their heartbeats.
            for _ in range(500):
                stats = await admin.stats("q", buckets=6)
                if stats["totals"].get("done", 0) >= 3:
                    break
                await asyncio.sleep(0.01)
            assert stats["totals"].get("done", 0) >= 3
            assert stats["total_ms"]["count"] >= 3
            recent = await admin.tasks("q", "recent", limit=10)
            assert len(recent) == 3 and all(t["state"] == "done" for t in recent)
            assert "q" in await admin.queues()
            assert (await admin.overview("q"))["workers_alive"] == 1
        # The blocking flavour reads the same.
        assert rtq.connect(redis_url).admin().tasks("q", "recent", limit=1)[0]["state"] == "done"

    run(main())


def test_handlers_producing_past_their_output_budget_neither_deadlock_nor_lose_chunks(redis_url):
    # Each task streams 24 MiB, six times its 4 MiB budget of output not
    # yet in Redis, so every send past it waits for Redis. Before, a
    # waiting send held the GIL, which the runtime threads that free the
    # budget (and start the other slots' handlers) needed: the worker
    # froze for good.
    chunk = b"x" * (1 << 20)

    def sync_gen(task):
        for _ in range(24):
            yield chunk
        yield rtq.Result({"kind": "sync_gen"})

    async def tight_send(task):
        for _ in range(24):
            task.send(chunk)  # never awaits: blocks the loop, GIL released
        return {"kind": "tight_send"}

    async def awaited_send(task):
        for _ in range(24):
            await task.asend(chunk)
        return {"kind": "awaited_send"}

    async def main():
        client = await rtq.aio.connect(redis_url)
        for handler in (sync_gen, tight_send, awaited_send):
            q = client.queue("budget-" + handler.__name__)
            async with running_worker(redis_url, q.name, handler, slots=8):
                streams = [q.stream({}, timeout=60) for _ in range(8)]

                async def drain(stream):
                    size, last = 0, None
                    async for item in stream:
                        if isinstance(item, rtq.Chunk):
                            size += len(item.data)
                        last = item
                    return size, last

                results = await asyncio.wait_for(
                    asyncio.gather(*(drain(s) for s in streams)), timeout=90
                )
                for size, last in results:
                    assert size == 24 << 20, handler.__name__
                    assert isinstance(last, rtq.Done)
                    assert last.result == {"kind": handler.__name__}

    run(main())


def test_a_handler_that_is_not_callable_is_refused_before_taking_tasks(redis_url):
    # Before: serve() connected with it and then failed every queued task.
    c = rtq.connect(redis_url)
    q = c.queue("not-callable")
    tid = q.submit({"i": 1}, max_attempts=1)["id"]

    async def main():
        with pytest.raises(TypeError, match="handler must be callable"):
            await asyncio.wait_for(rtq.serve(redis_url, "not-callable", 5, handle_signals=False), 5)

    run(main())
    with pytest.raises(TypeError, match="handler must be callable"):
        rtq.run_worker(redis_url, "not-callable", "handler", handle_signals=False)
    assert q.status(tid)["state"] == "queued"
    assert c.admin().workers("not-callable") == []


def test_a_handler_raising_system_exit_or_keyboard_interrupt_fails_only_its_task(redis_url):
    # Before: the exception left the handler's asyncio task and stopped the
    # event loop, killing the worker.
    async def async_handler(task):
        if task.input == "exit":
            raise SystemExit(3)
        if task.input == "interrupt":
            raise KeyboardInterrupt
        return "ok"

    def _sync(task):
        if task.input == "exit":
            raise SystemExit(3)
        if task.input == "interrupt":
            raise KeyboardInterrupt
        return "ok"

    async def main():
        q = (await rtq.aio.connect(redis_url)).queue("exits")
        for handler in (async_handler, _sync):
            async with running_worker(redis_url, "exits", handler):
                with pytest.raises(rtq.Failed) as e:
                    await q.run("exit", timeout=10, max_attempts=1)
                assert "SystemExit: 3" in e.value.reason
                with pytest.raises(rtq.Failed) as e:
                    await q.run("interrupt", timeout=10, max_attempts=1)
                assert "KeyboardInterrupt" in e.value.reason
                assert await q.run("fine", timeout=10) == "ok"

    try:
        run(main())
    except (SystemExit, KeyboardInterrupt) as e:
        pytest.fail(f"{type(e).__name__} escaped the worker")


def test_a_chunk_holding_a_lone_surrogate_raises_invalid_input_in_the_handler(redis_url):
    async def handler(task):
        refused = []
        try:
            task.send("a\udc80")
        except rtq.InvalidInput:
            refused.append("send")
        try:
            await task.asend("a\udc80")
        except rtq.InvalidInput:
            refused.append("asend")
        return refused

    async def main():
        async with running_worker(redis_url, "q", handler):
            c = await rtq.aio.connect(redis_url)
            assert await c.queue("q").run(None, timeout=20) == ["send", "asend"]

    run(main())


@pytest.mark.parametrize("kind", ["coroutine", "async_gen", "sync_fn"])
def test_a_handler_raising_not_started_gives_its_task_back_without_using_an_attempt(redis_url, kind):
    # The first delivery is given back unstarted ("the model is loading");
    # after the intake pause the worker takes the task again and runs it.
    calls = []

    def first_time(task):
        calls.append(task.attempt)
        return len(calls) == 1

    async def coroutine(task):
        if first_time(task):
            raise rtq.NotStarted("model loading")
        return {"by": kind}

    async def async_gen(task):
        if first_time(task):
            raise rtq.NotStarted("model loading")
        yield "a"
        yield rtq.Result({"by": kind})

    def sync_fn(task):
        if first_time(task):
            raise rtq.NotStarted("model loading")
        return {"by": kind}

    handler = {"coroutine": coroutine, "async_gen": async_gen, "sync_fn": sync_fn}[kind]

    async def main():
        client = await rtq.aio.connect(redis_url)
        q = client.queue("q")
        async with running_worker(redis_url, "q", handler, worker_id="w1"):
            # One attempt only: had the hand-back used it, the task failed.
            sub = await q.submit({}, max_attempts=1)
            assert await q.wait(sub["id"], timeout=30) == {"by": kind}
            info = await q.status(sub["id"])
            assert info["state"] == "done" and info["failures"] == 0, info
            assert len(calls) == 2, calls
            # The hand-back is the worker's last error, with its time on
            # the Redis clock (sent with the next heartbeat).
            admin = client.admin()
            for _ in range(500):
                (w,) = await admin.workers("q")
                if w["last_error_ms"] is not None:
                    break
                await asyncio.sleep(0.02)
            assert "model loading" in w["fields"]["last_error"], w
            assert w["last_error_ms"] > 0 and w["last_error_age_ms"] >= 0, w
            assert rtq.connect(redis_url).admin().workers("q")[0]["last_error_ms"] == w["last_error_ms"]

    run(main())


def test_not_started_after_a_chunk_fails_the_attempt_as_retryable(redis_url):
    async def handler(task):
        if task.attempt == 1:
            await task.asend("seen")
            raise rtq.NotStarted("too late")
        return task.attempt

    async def main():
        q = (await rtq.aio.connect(redis_url)).queue("q")
        async with running_worker(redis_url, "q", handler):
            sub = await q.submit({}, max_attempts=2)
            assert await q.wait(sub["id"], timeout=30) == 2
            info = await q.status(sub["id"])
            assert info["failures"] == 1, info
            assert "after sending output" in info["attempt_errors"][1], info

    run(main())


def test_admin_workers_shows_no_error_time_for_a_worker_without_an_error(redis_url):
    async def handler(task):
        return "ok"

    async def main():
        client = await rtq.aio.connect(redis_url)
        async with running_worker(redis_url, "q", handler, worker_id="w1"):
            assert await client.queue("q").run(None, timeout=10) == "ok"
            (w,) = await client.admin().workers("q")
            assert w["last_error_ms"] is None and w["last_error_age_ms"] is None, w

    run(main())


def test_stop_with_force_hands_a_running_task_back_at_once(redis_url):
    started = asyncio.Event()

    async def endless(task):
        started.set()
        await asyncio.sleep(3600)

    async def finishes(task):
        return {"by": "second"}

    async def main():
        q = (await rtq.aio.connect(redis_url)).queue("q")
        # A lease of a minute and a drain of ten: only the forced hand-back
        # requeues the task within this test's patience.
        async with running_worker(redis_url, "q", endless, lease=60, grace=600, worker_id="first") as w:
            sub = await q.submit({}, max_attempts=3, timeout=300)
            await asyncio.wait_for(started.wait(), 30)
            w.stop()
            for _ in range(500):
                if w.status()["draining"]:
                    break
                await asyncio.sleep(0.02)
            assert w.status()["draining"]
            w.stop(force=True)
            await wait_state(q, sub["id"], "queued", timeout=20)
            info = await q.status(sub["id"])
            assert info["failures"] == 1, info
            assert "interrupted" in info["attempt_errors"][1], info
        async with running_worker(redis_url, "q", finishes, worker_id="second"):
            assert await q.wait(sub["id"], timeout=30) == {"by": "second"}

    run(main())
