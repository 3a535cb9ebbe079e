"""The official OpenAI Python SDK against rtq-gateway, with only base_url
changed. Run by gateway/tests/openai_sdk.rs, which starts the stack (Redis,
an rtq-worker with the openai handler, a fake OpenAI-compatible upstream,
the gateway) and passes its addresses in the environment:
RTQ_GATEWAY_URL, RTQ_FAKE_URL. Keys: k-all (every queue), k-one (one
request at a time)."""

import json
import os
import time
import urllib.request

import openai
import pytest
from openai import OpenAI

URL = os.environ["RTQ_GATEWAY_URL"]
FAKE = os.environ["RTQ_FAKE_URL"]


def client(key="k-all"):
    # No retries: a 429 must reach the test, not be retried away.
    return OpenAI(base_url=URL + "/v1", api_key=key, max_retries=0, timeout=30)


def user(text):
    return [{"role": "user", "content": text}]


def get_json(url, key=None):
    req = urllib.request.Request(url)
    if key:
        req.add_header("Authorization", "Bearer " + key)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.load(resp)


def test_a_chat_completion_comes_back_whole():
    r = client().chat.completions.create(model="chat", messages=user("hello sdk world"))
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == "hello sdk world "
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == 3


def test_a_chat_completion_streams_chunk_by_chunk():
    stream = client().chat.completions.create(
        model="fake-model",
        messages=user("one two three"),
        stream=True,
        stream_options={"include_usage": True},
    )
    parts, usage, finish = [], None, None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert "".join(parts) == "one two three "
    assert finish == "stop"
    assert usage.completion_tokens == 3


def test_completions_work_whole_and_streamed():
    r = client().completions.create(model="chat", prompt="a b c")
    assert r.choices[0].text == "a b c "
    text = "".join(
        c.choices[0].text
        for c in client().completions.create(model="chat", prompt="x y", stream=True)
        if c.choices
    )
    assert text == "x y "


def test_models_lists_the_queue_and_its_model_label():
    ids = [m.id for m in client().models.list()]
    assert "chat" in ids and "fake-model" in ids


def test_a_wrong_key_is_an_authentication_error():
    with pytest.raises(openai.AuthenticationError) as err:
        client("not-a-key").chat.completions.create(model="chat", messages=user("hi"))
    assert err.value.status_code == 401


def test_an_unknown_model_is_not_found():
    with pytest.raises(openai.NotFoundError) as err:
        client().chat.completions.create(model="no-such-model", messages=user("hi"))
    assert err.value.code == "model_not_found"


def test_an_upstream_refusal_is_an_api_error_with_its_message():
    with pytest.raises(openai.APIStatusError) as err:
        client().chat.completions.create(model="chat", messages=user("refuse"), stream=True)
    assert err.value.status_code == 502
    assert "refuses" in str(err.value)


def test_over_the_concurrency_limit_is_a_rate_limit_error_with_retry_after():
    held = client("k-one").chat.completions.create(model="chat", messages=user("slow"), stream=True)
    next(iter(held))
    try:
        with pytest.raises(openai.RateLimitError) as err:
            client("k-one").chat.completions.create(model="chat", messages=user("hi"))
        assert err.value.status_code == 429
        assert err.value.response.headers.get("retry-after")
    finally:
        held.close()


def test_closing_a_stream_cancels_the_task_and_stops_the_upstream():
    before = get_json(FAKE + "/stats")["aborted"]
    stream = client().chat.completions.create(model="chat", messages=user("slow"), stream=True)
    first = next(iter(stream))
    assert first.choices[0].delta.content == "w0 "
    task = stream.response.headers["x-rtq-task-id"]
    stream.close()
    deadline = time.time() + 10
    state, aborted = None, before
    while time.time() < deadline:
        state = get_json(f"{URL}/v1/queues/chat/tasks/{task}", "k-all")["state"]
        aborted = get_json(FAKE + "/stats")["aborted"]
        if state == "cancelled" and aborted > before:
            break
        time.sleep(0.05)
    assert state == "cancelled"
    assert aborted > before
