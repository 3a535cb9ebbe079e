"""The client against a Rust worker (rtq-worker, mock handler): request/
response, streaming, submit-then-fetch, in both flavours; error classes."""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
import time

import pytest

import rtq
import rtq.aio

from conftest import wait_until


def test_a_rust_worker_serves_the_blocking_client(redis_url, procs):
    procs.rust_worker(redis_url, "llm", "--mock-tokens", "3")
    llm = rtq.connect(redis_url).queue("llm")
    out = llm.run({"prompt": "hi"}, timeout=10, priority=5, labels={"model": "m"})
    assert out == {"model": "mock", "usage": {"completion_tokens": 3}}


def test_a_rust_worker_serves_the_asyncio_client(redis_url, procs):
    procs.rust_worker(redis_url, "llm", "--mock-tokens", "2")

    async def main():
        llm = (await rtq.aio.connect(redis_url)).queue("llm")
        return await llm.run({"prompt": "hi"}, timeout=10)

    assert asyncio.run(main())["usage"]["completion_tokens"] == 2


def test_streaming_yields_chunks_in_order_then_done(redis_url, procs):
    procs.rust_worker(redis_url, "llm")
    llm = rtq.connect(redis_url).queue("llm")
    stream = llm.stream({"max_tokens": 5}, timeout=10)
    assert len(stream.id) > 0  # known before the submit
    items = list(stream)
    assert [c.text for c in items[:-1]] == [f"tok{i} " for i in range(5)]
    assert [c.index for c in items[:-1]] == list(range(5))
    assert isinstance(items[-1], rtq.Done)
    assert items[-1].id == stream.id
    assert items[-1].result["usage"]["completion_tokens"] == 5
    with pytest.raises(StopIteration):
        next(stream)

    async def main():
        llm = (await rtq.aio.connect(redis_url)).queue("llm")
        return [i async for i in llm.stream({"max_tokens": 3}, timeout=10)]

    items = asyncio.run(main())
    assert [type(i).__name__ for i in items] == ["Chunk", "Chunk", "Chunk", "Done"]
    assert items[0].data == b"tok0 "


def test_submit_then_fetch_status_wait_and_follow(redis_url, procs):
    llm = rtq.connect(redis_url).queue("llm")
    sub = llm.submit({"max_tokens": 2}, id="job-1", timeout=30)
    assert sub["id"] == "job-1" and sub["state"] == "queued"
    assert llm.status("job-1")["state"] == "queued"
    with pytest.raises(rtq.Duplicate):
        llm.submit({"max_tokens": 2}, id="job-1")
    with pytest.raises(rtq.WaitTimedOut) as e:
        llm.wait("job-1", timeout=0.2)
    assert e.value.state == "queued"
    procs.rust_worker(redis_url, "llm")
    assert llm.wait("job-1", timeout=10)["usage"]["completion_tokens"] == 2
    info = llm.status("job-1")
    assert info["state"] == "done" and info["chunks"] == 2
    assert info["input"] == {"max_tokens": 2}
    assert info["outcome"]["result"]["model"] == "mock"
    # Following an ended task replays its chunks and result.
    items = list(llm.follow("job-1"))
    assert [i.text for i in items[:-1]] == ["tok0 ", "tok1 "]
    assert list(llm.follow("job-1", from_=1))[0].text == "tok1 "
    # Resuming attempt 1 at chunk 1: the attempt is the task's last, so
    # its chunks go on from there; an attempt it never ran is refused.
    resumed = list(llm.follow("job-1", from_=1, attempt=1))
    assert [type(i).__name__ for i in resumed] == ["Chunk", "Done"]
    assert (resumed[0].attempt, resumed[0].index, resumed[0].text) == (1, 1, "tok1 ")
    with pytest.raises(rtq.InvalidInput):
        list(llm.follow("job-1", attempt=5))


def test_thousand_concurrent_waits_in_one_loop(redis_url, procs):
    procs.rust_worker(redis_url, "llm", "--concurrency", "64", "--mock-tokens", "1")

    async def main():
        llm = (await rtq.aio.connect(redis_url)).queue("llm")
        return await asyncio.gather(*(llm.run({"i": i}, timeout=60) for i in range(1000)))

    outs = asyncio.run(main())
    assert len(outs) == 1000 and all(o["model"] == "mock" for o in outs)


def test_failed_task_raises_failed_with_the_workers_reason(redis_url, procs):
    procs.rust_worker(redis_url, "llm")
    llm = rtq.connect(redis_url).queue("llm")
    with pytest.raises(rtq.Failed) as e:
        llm.run({"fail": "model refused"}, timeout=10)
    assert e.value.reason == "model refused"
    assert isinstance(e.value, rtq.TaskError) and e.value.id


def test_a_task_nobody_takes_times_out_while_queued(redis_url):
    llm = rtq.connect(redis_url).queue("nobody")
    with pytest.raises(rtq.TimedOut) as e:
        llm.run({"x": 1}, timeout=0.3)
    assert e.value.phase == "queued" and e.value.worker is None
    assert "while queued" in str(e.value)
    assert isinstance(e.value, TimeoutError)


def test_bad_input_gets_clear_errors(redis_url):
    c = rtq.connect(redis_url)
    with pytest.raises(rtq.InvalidInput, match="queue name"):
        c.queue("bad name{}")
    q = c.queue("q")
    with pytest.raises(rtq.InvalidInput, match=r"input.b: a set is not JSON"):
        q.submit({"a": 1, "b": {1, 2}})
    with pytest.raises(rtq.InvalidInput, match="not a str"):
        q.submit({1: "x"})
    with pytest.raises(rtq.InvalidInput, match="not a JSON number"):
        q.submit(float("nan"))
    with pytest.raises(rtq.InvalidInput, match="timeout must be a positive"):
        q.submit(1, timeout=-1)
    with pytest.raises(rtq.InvalidInput, match="priority"):
        q.submit(1, priority=5000)
    with pytest.raises(rtq.InvalidInput, match=r"priority must be in \[-1000, 1000\], got 1000000000"):
        q.submit(1, priority=10**9)
    with pytest.raises(rtq.InvalidInput, match="task id"):
        q.status("no spaces allowed ")
    with pytest.raises(rtq.InvalidInput, match="inline limit"):
        q.submit("x" * (2 << 20))
    deep = []
    for _ in range(1000):
        deep = [deep]
    with pytest.raises(rtq.InvalidInput, match="nested deeper"):
        q.submit(deep)
    with pytest.raises(rtq.NotFound):
        q.status("never-submitted")
    with pytest.raises(rtq.NotFound):
        q.wait("never-submitted", timeout=1)
    with pytest.raises(rtq.NotFound):
        q.cancel("never-submitted")
    with pytest.raises(rtq.InvalidInput, match="task list"):
        c.admin().tasks("q", "everything")


LONE = "a\udc80"  # a lone surrogate: a str no UTF-8 can hold
HUGE = 2**70


def hostile_calls(redis_url):
    """(what, call) pairs of arguments a hostile caller may pass, for
    every public function of the blocking flavour."""
    c = rtq.connect(redis_url)
    q = c.queue("q")
    a = c.admin()
    calls = []
    for name, value in [("negative", -1), ("huge", HUGE), ("-huge", -HUGE)]:
        calls += [
            (f"priority {name}", lambda v=value: q.submit(1, priority=v * 10**6)),
            (f"max_attempts {name}", lambda v=value: q.submit(1, max_attempts=v)),
            (f"run priority {name}", lambda v=value: q.run(1, priority=v * 10**6)),
            (f"stream max_attempts {name}", lambda v=value: q.stream(1, max_attempts=v)),
            (f"follow from_ {name}", lambda v=value: q.follow("x", from_=v)),
            (f"follow attempt {name}", lambda v=value: q.follow("x", attempt=v)),
            (f"stats buckets {name}", lambda v=value: a.stats("q", buckets=v)),
            (f"tasks offset {name}", lambda v=value: a.tasks("q", offset=v)),
            (f"tasks limit {name}", lambda v=value: a.tasks("q", limit=v)),
            (f"max_reply_readers {name}", lambda v=value: rtq.connect(redis_url, max_reply_readers=v)),
        ]
    # Ints beyond a float's range, as seconds.
    for kw in ["timeout", "retention"]:
        calls.append((f"submit {kw} 2**1100", lambda kw=kw: q.submit(1, **{kw: 2**1100})))
    calls += [
        ("wait timeout 2**1100", lambda: q.wait("x", timeout=2**1100)),
        ("connect response_timeout 2**1100", lambda: rtq.connect(redis_url, response_timeout=2**1100)),
        ("connect give_up_after 2**1100", lambda: rtq.connect(redis_url, give_up_after=2**1100)),
        ("connect reply_reader_idle 2**1100", lambda: rtq.connect(redis_url, reply_reader_idle=2**1100)),
        ("tasks offset 2**63", lambda: a.tasks("q", "failed", offset=2**63)),
    ]
    # Lone surrogates, wherever a str goes.
    calls += [
        ("queue name", lambda: c.queue(LONE)),
        ("input", lambda: q.submit(LONE)),
        ("input key", lambda: q.submit({LONE: 1})),
        ("input_ref", lambda: q.submit(input_ref=LONE)),
        ("id", lambda: q.submit(1, id=LONE)),
        ("label key", lambda: q.submit(1, labels={LONE: "x"})),
        ("label value", lambda: q.submit(1, labels={"x": LONE})),
        ("run id", lambda: q.run(1, id=LONE)),
        ("stream id", lambda: q.stream(1, id=LONE)),
        ("wait id", lambda: q.wait(LONE)),
        ("status id", lambda: q.status(LONE)),
        ("follow id", lambda: q.follow(LONE)),
        ("cancel id", lambda: q.cancel(LONE)),
        ("cancel reason", lambda: q.cancel("x", LONE)),
        ("overview queue", lambda: a.overview(LONE)),
        ("stats queue", lambda: a.stats(LONE)),
        ("workers queue", lambda: a.workers(LONE)),
        ("tasks queue", lambda: a.tasks(LONE)),
        ("tasks kind", lambda: a.tasks("q", LONE)),
        ("connect url", lambda: rtq.connect(LONE)),
        ("redact_url", lambda: rtq.redact_url(LONE)),
        ("init_logging", lambda: rtq.init_logging(LONE)),
    ]
    return calls


def test_hostile_arguments_raise_invalid_input_never_overflow_or_unicode_errors(redis_url):
    wrong = []
    for what, call in hostile_calls(redis_url):
        try:
            call()
        except rtq.InvalidInput as e:
            assert not e.retryable
            assert isinstance(e, ValueError)
            continue
        except BaseException as e:  # noqa: BLE001 - the point of the test
            wrong.append(f"{what}: {type(e).__name__}: {e}")
            continue
        wrong.append(f"{what}: no error")
    assert not wrong, "\n".join(wrong)


def test_hostile_arguments_to_the_asyncio_flavour_and_workers_raise_invalid_input(redis_url):
    async def main():
        c = await rtq.aio.connect(redis_url)
        q = c.queue("q")
        a = c.admin()
        calls = [
            ("submit priority", lambda: q.submit(1, priority=HUGE)),
            ("run max_attempts", lambda: q.run(1, max_attempts=-1)),
            ("wait id", lambda: q.wait(LONE)),
            ("status id", lambda: q.status(LONE)),
            ("cancel reason", lambda: q.cancel("x", LONE)),
            ("follow from_", lambda: q.follow("x", from_=-1)),
            ("stats buckets", lambda: a.stats("q", buckets=HUGE)),
            ("tasks limit", lambda: a.tasks("q", limit=-1)),
            ("overview queue", lambda: a.overview(LONE)),
            ("connect url", lambda: rtq.aio.connect(LONE)),
            ("connect max_reply_readers", lambda: rtq.aio.connect(redis_url, max_reply_readers=-1)),
            ("worker slots", lambda: rtq.serve(redis_url, "q", lambda t: None, slots=HUGE, handle_signals=False)),
            ("worker slots negative", lambda: rtq.serve(redis_url, "q", lambda t: None, slots=-1, handle_signals=False)),
            ("worker lease", lambda: rtq.serve(redis_url, "q", lambda t: None, lease=2**1100, handle_signals=False)),
            ("worker queue", lambda: rtq.serve(redis_url, LONE, lambda t: None, handle_signals=False)),
            ("worker id", lambda: rtq.serve(redis_url, "q", lambda t: None, worker_id=LONE, handle_signals=False)),
            ("worker label", lambda: rtq.serve(redis_url, "q", lambda t: None, labels={"x": LONE}, handle_signals=False)),
            ("worker url", lambda: rtq.serve("redis://host:port", "q", lambda t: None, handle_signals=False)),
        ]
        wrong = []
        for what, call in calls:
            try:
                await call()
            except rtq.InvalidInput:
                continue
            except BaseException as e:  # noqa: BLE001
                wrong.append(f"{what}: {type(e).__name__}: {e}")
                continue
            wrong.append(f"{what}: no error")
        assert not wrong, "\n".join(wrong)

    asyncio.run(main())


@pytest.mark.parametrize("url", ["not a url", "http://127.0.0.1:6379", "redis://127.0.0.1:port", "redis://:pw@[::1"])
def test_a_malformed_redis_url_is_invalid_input_not_a_retryable_connection_error(url):
    with pytest.raises(rtq.InvalidInput, match="Redis URL") as e:
        rtq.connect(url)
    assert not e.value.retryable and not isinstance(e.value, ConnectionError)
    assert ":pw@" not in str(e.value)

    async def main():
        with pytest.raises(rtq.InvalidInput, match="Redis URL"):
            await rtq.aio.connect(url)

    asyncio.run(main())


def test_awaiting_a_finished_call_again_raises_runtime_error_like_a_coroutine(redis_url):
    async def native():
        return 1

    async def main():
        # What Python says for its own coroutines.
        coro = native()
        await coro
        with pytest.raises(RuntimeError, match="cannot reuse already awaited coroutine"):
            await coro
        c = await rtq.aio.connect(redis_url)
        q = c.queue("q")
        ok = q.submit(1, id="again")
        assert (await ok)["id"] == "again"
        with pytest.raises(RuntimeError, match="cannot reuse already awaited coroutine"):
            await ok
        failed = q.status("never-submitted")
        with pytest.raises(rtq.NotFound):
            await failed
        with pytest.raises(RuntimeError, match="cannot reuse already awaited coroutine"):
            await failed
        connecting = rtq.aio.connect(redis_url)
        await connecting
        with pytest.raises(RuntimeError, match="cannot reuse already awaited coroutine"):
            await connecting

    asyncio.run(main())


def test_waits_on_more_queues_than_the_reader_limit_raise_too_many_queues(redis_url):
    with pytest.raises(rtq.InvalidInput, match="max_reply_readers"):
        rtq.connect(redis_url, max_reply_readers=0)

    async def main():
        c = await rtq.aio.connect(redis_url, max_reply_readers=1, reply_reader_idle=0.1)
        a, b = c.queue("limit-a"), c.queue("limit-b")
        first = (await a.submit(1))["id"]
        other = (await b.submit(1))["id"]
        # A wait on limit-a holds the only reader.
        holding = asyncio.ensure_future(a.wait(first, timeout=3))
        await asyncio.sleep(0.3)
        with pytest.raises(rtq.TooManyQueues) as e:
            await b.wait(other, timeout=1)
        assert e.value.queue == "limit-b" and e.value.max == 1
        assert e.value.retryable
        # Once that wait ends, the other queue's wait is served.
        with pytest.raises(rtq.WaitTimedOut):
            await holding
        with pytest.raises(rtq.WaitTimedOut):
            await b.wait(other, timeout=0.1)

    asyncio.run(main())


def test_unreachable_redis_is_a_connection_error_without_the_password():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(rtq.ConnectionError) as e:
        rtq.connect(f"redis://:hunter2@127.0.0.1:{port}", response_timeout=1)
    assert "hunter2" not in str(e.value)
    assert e.value.retryable
    assert isinstance(e.value, ConnectionError)

    async def main():
        await rtq.aio.connect(f"redis://:hunter2@127.0.0.1:{port}")

    with pytest.raises(rtq.ConnectionError):
        asyncio.run(main())
    with pytest.raises(rtq.InvalidInput):
        rtq.connect("redis://127.0.0.1", response_timeout=0)


def test_a_key_of_the_wrong_type_is_an_error_not_a_hang(redis_server, redis_url):
    import subprocess

    c = rtq.connect(redis_url)
    q = c.queue("q")
    sub = q.submit(1, id="t1")
    # Clobber the task's hash with a string.
    keys = subprocess.run(
        ["redis-cli", "-p", str(redis_server.port), "--scan", "--pattern", "*t1*"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    assert keys, "no key for the task"
    for k in keys:
        subprocess.run(["redis-cli", "-p", str(redis_server.port), "SET", k, "x"], check=True, capture_output=True)
    with pytest.raises(rtq.RtqError):
        q.status(sub["id"])


def test_redis_dying_mid_wait_ends_the_wait_with_a_connection_error(redis_server):
    import time

    llm = rtq.connect(redis_server.url, give_up_after=1.5, response_timeout=1).queue("llm")
    sub = llm.submit({"x": 1})
    redis_server.kill()
    t0 = time.monotonic()
    with pytest.raises(rtq.ConnectionError) as e:
        llm.wait(sub["id"], timeout=60)
    assert time.monotonic() - t0 < 30
    assert e.value.retryable


def test_redis_restarted_empty_mid_wait_reports_the_task_lost(redis_server):
    async def main():
        llm = (await rtq.aio.connect(redis_server.url, give_up_after=20)).queue("llm")
        waiting = asyncio.create_task(llm.run({"x": 1}, id="lost-1", timeout=60))
        for _ in range(250):
            try:
                await llm.status("lost-1")
                break
            except rtq.NotFound:
                await asyncio.sleep(0.02)
        redis_server.kill()
        redis_server.restart_empty()
        with pytest.raises(rtq.TaskLost) as e:
            await asyncio.wait_for(waiting, 60)
        assert e.value.id == "lost-1"
        # The client goes on working against the new server.
        with pytest.raises(rtq.NotFound):
            await llm.status("lost-1")

    asyncio.run(main())


@pytest.fixture
def sigint_raises():
    """SIGINT raises KeyboardInterrupt here even when the suite was started
    with SIGINT ignored (a background job of a non-interactive shell,
    as CI may start it: Python then installs no handler)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _interrupt_main_after(seconds: float) -> threading.Timer:
    """Ctrl-C: SIGINT delivered to this (the main) thread after `seconds`."""
    main = threading.main_thread().ident
    t = threading.Timer(seconds, lambda: signal.pthread_kill(main, signal.SIGINT))
    t.start()
    return t


def test_ctrl_c_during_a_blocking_call_cancels_the_task_and_frees_the_reader(redis_url, sigint_raises):
    # Before: the interrupted call's future was dropped outside the tokio
    # runtime, so the cancel (cancel_on_exit) and the reply reader's
    # release were silently skipped.
    c = rtq.connect(redis_url, max_reply_readers=1, reply_reader_idle=0.2)
    q = c.queue("ctrlc-run")
    t0 = time.monotonic()
    _interrupt_main_after(0.5)
    with pytest.raises(KeyboardInterrupt):
        # No worker: the task stays queued until the run is interrupted.
        q.run({"x": 1}, id="ctrlc-task", timeout=30, cancel_on_exit=True)
    assert time.monotonic() - t0 < 5
    wait_until(lambda: q.status("ctrlc-task")["state"] == "cancelled", 5, "the task cancelled")

    # An interrupted wait releases its queue's only reply reader.
    w = c.queue("ctrlc-wait")
    sub = w.submit({}, timeout=60)
    _interrupt_main_after(0.5)
    with pytest.raises(KeyboardInterrupt):
        w.wait(sub["id"], timeout=30)
    time.sleep(0.6)  # > reply_reader_idle
    other = c.queue("ctrlc-other")
    sub2 = other.submit({}, timeout=60)
    with pytest.raises(rtq.WaitTimedOut):  # not TooManyQueues
        other.wait(sub2["id"], timeout=0.5)


def _child_uses_rtq(url, inherited, out):
    import rtq as r

    got = []
    for attempt in (
        lambda: r.connect(url).queue("fork").submit({"child": 1}),
        lambda: inherited.queue("fork").submit({"child": 2}),
    ):
        try:
            attempt()
            got.append("worked")
        except r.RtqError as e:
            got.append(str(e))
    out.put(got)


def test_a_forked_child_gets_a_clear_error_and_the_parent_keeps_working(redis_url):
    # Before: the child hung on the inherited runtime (and could crash the
    # parent, with which it shares the runtime's epoll instance).
    import multiprocessing

    c = rtq.connect(redis_url)
    q = c.queue("fork")
    q.submit({"parent": 0})
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    p = ctx.Process(target=_child_uses_rtq, args=(redis_url, c, out), daemon=True)
    p.start()
    try:
        got = out.get(timeout=10)
    finally:
        p.join(5)
        if p.is_alive():
            p.kill()
    assert len(got) == 2
    for message in got:
        assert "a forked child cannot use it" in message, got
    for i in range(5):
        tid = q.submit({"parent": i + 1})["id"]
    assert q.status(tid)["state"] == "queued"


def test_a_process_that_forks_before_using_rtq_can_use_it_in_the_child(redis_url):
    script = f"""
import os, rtq
pid = os.fork()
if pid == 0:
    try:
        rtq.connect({redis_url!r}).queue("fork").submit({{"child": 1}})
        os._exit(0)
    except BaseException:
        os._exit(3)
_, status = os.waitpid(pid, 0)
rtq.connect({redis_url!r}).queue("fork").submit({{"parent": 1}})
raise SystemExit(os.waitstatus_to_exitcode(status))
"""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", script], timeout=30, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_a_stream_queue_is_served_end_to_end_in_both_flavours(redis_url, procs):
    q = rtq.connect(redis_url).queue("sq")
    with pytest.raises(rtq.InvalidInput):
        q.create_stream(bands=6)
    q.create_stream(bands=2)
    procs.rust_worker(redis_url, "sq", "--mock-tokens", "3")
    out = q.run({"prompt": "hi"}, timeout=10, priority=5)
    assert out["usage"]["completion_tokens"] == 3
    items = list(q.stream({"max_tokens": 4}, timeout=10))
    assert [c.text for c in items[:-1]] == [f"tok{i} " for i in range(4)]
    assert isinstance(items[-1], rtq.Done)

    async def main():
        aq = (await rtq.aio.connect(redis_url)).queue("sq")
        await aq.create_stream(bands=2)  # the same shape again: accepted
        return await aq.run({"prompt": "x"}, timeout=10)

    assert asyncio.run(main())["usage"]["completion_tokens"] == 3
