import asyncio
import rtq, rtq.aio

def test_blocking_run_against_rust_worker(redis_url, procs):
    procs.rust_worker(redis_url, "q", "--mock-tokens", "3")
    c = rtq.connect(redis_url)
    q = c.queue("q")
    out = q.run({"prompt": "hi"}, timeout=10)
    assert out["model"] == "mock"
    items = list(q.stream({"max_tokens": 4}, timeout=10))
    assert [i.text for i in items[:-1]] == ["tok0 ", "tok1 ", "tok2 ", "tok3 "]
    assert isinstance(items[-1], rtq.Done)

def test_async_python_worker(redis_url):
    async def main():
        async def handle(task):
            task.send("a"); task.send("b")
            return {"echo": task.input}
        started = asyncio.get_running_loop().create_future()
        w = asyncio.create_task(rtq.serve(redis_url, "q", handle, handle_signals=False, on_start=started.set_result))
        worker = await started
        c = await rtq.aio.connect(redis_url)
        q = c.queue("q")
        assert await q.run({"x": 1}, timeout=10) == {"echo": {"x": 1}}
        chunks = [i async for i in q.stream([1, 2], timeout=10)]
        assert [type(i).__name__ for i in chunks] == ["Chunk", "Chunk", "Done"]
        worker.stop()
        await w
    asyncio.run(main())
