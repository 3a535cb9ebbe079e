//! The OpenAI-compatible routes against a real stack: gateway, Redis,
//! rtq-worker (`openai` handler) and a fake OpenAI-compatible server.

mod support;

use std::time::Duration;

use futures::StreamExt;
use rtq_core::admin::Admin;
use serde_json::{json, Value};
use support::{parse_sse, sse_events, start_worker, wait_model, Stack};

fn chat(model: &str, content: &str, stream: bool) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": content}], "stream": stream})
}

#[tokio::test]
async fn chat_and_completions_answer_with_the_upstreams_tokens_streamed_or_whole() {
    let s = Stack::start(&[], &[]).await;
    let r = s
        .post(
            "k-all",
            "/v1/chat/completions",
            chat("chat", "hello big world", false),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-rtq-task-id"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "chat");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], "hello big world ");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["completion_tokens"], 3);

    let mut body = chat("fake-model", "one two", true);
    body["stream_options"] = json!({"include_usage": true});
    let r = s.post("k-all", "/v1/chat/completions", body).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let events = sse_events(r).await;
    assert_eq!(events.last().unwrap().2, "[DONE]", "{events:?}");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(&e.2).unwrap())
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "one two ");
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 2);

    let r = s
        .post(
            "k-all",
            "/v1/completions",
            json!({"model": "chat", "prompt": "a b c", "stream": false}),
        )
        .await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], "a b c ");
    let r = s
        .post(
            "k-all",
            "/v1/completions",
            json!({"model": "chat", "prompt": "x y", "stream": true}),
        )
        .await;
    let events = sse_events(r).await;
    let text: String = events
        .iter()
        .filter(|e| e.2 != "[DONE]")
        .filter_map(|e| {
            serde_json::from_str::<Value>(&e.2).unwrap()["choices"][0]["text"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert_eq!(text, "x y ");
    assert_eq!(events.last().unwrap().2, "[DONE]");
}

#[tokio::test]
async fn models_list_queues_with_live_workers_and_their_model_labels() {
    let s = Stack::start(&[], &[]).await;
    let v: Value = s.get("k-all", "/v1/models").await.json().await.unwrap();
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"chat") && ids.contains(&"fake-model"), "{v}");
    let entry = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "chat")
        .unwrap();
    assert_eq!(entry["object"], "model");
    assert_eq!(entry["handlers"], json!(["openai"]));
    assert_eq!(entry["workers"], 1);
    // A leftover queue named like a served model label (no worker) does
    // not shadow the label: the name still reaches the served queue.
    let admin = Admin::new(&rtq_core::Client::connect(&s.redis.url()).await.unwrap());
    admin.register_queue("fake-model").await.unwrap();
    // Over several catalog reads (its TTL is 200 ms here).
    let end = std::time::Instant::now() + Duration::from_millis(1500);
    while std::time::Instant::now() < end {
        let r = s
            .post(
                "k-all",
                "/v1/chat/completions",
                chat("fake-model", "a", false),
            )
            .await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let v: Value = s.get("k-all", "/v1/models").await.json().await.unwrap();
    let model = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "fake-model")
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(model["queue"], "chat");
    // A key limited to other queues sees none of them.
    admin.register_queue("other").await.unwrap();
    let v: Value = s.get("k-chat", "/v1/models").await.json().await.unwrap();
    assert!(
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["queue"] == "chat"),
        "{v}"
    );
}

#[tokio::test]
async fn keys_are_checked_queue_grants_enforced_and_limits_answer_429() {
    let s = Stack::start(&[], &[]).await;
    let body = chat("chat", "hi", false);
    let r = s
        .http
        .post(format!("{}/v1/chat/completions", s.gw.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "authentication_error");
    assert!(v["error"]["message"].as_str().unwrap().contains("Bearer"));
    let r = s.post("wrong", "/v1/chat/completions", body.clone()).await;
    assert_eq!(r.status(), 401);
    assert_eq!(s.get("wrong", "/v1/models").await.status(), 401);

    // k-chat may not use queue "other": to it, the model does not exist
    // (the answer is the one of a name nobody serves).
    let _other = start_worker(&s.redis.url(), "other", &["--handler", "mock"]);
    wait_model(&s.http, &s.gw, "k-all", "other").await;
    let r = s
        .post("k-chat", "/v1/chat/completions", chat("other", "hi", false))
        .await;
    assert_eq!(r.status(), 404);
    let forbidden: Value = r.json().await.unwrap();
    let r = s
        .post("k-chat", "/v1/chat/completions", chat("ether", "hi", false))
        .await;
    assert_eq!(r.status(), 404);
    let missing: Value = r.json().await.unwrap();
    assert_eq!(
        serde_json::to_string(&forbidden).unwrap(),
        serde_json::to_string(&missing)
            .unwrap()
            .replace("ether", "other")
    );
    assert_eq!(forbidden["error"]["code"], "model_not_found");
    // A label carried by a queue the key may not use (and that sorts
    // first) resolves to the queue it may use.
    let _first = start_worker(
        &s.redis.url(),
        "aaa",
        &["--handler", "mock", "--label", "model=fake-model"],
    );
    wait_model(&s.http, &s.gw, "k-all", "aaa").await;
    let r = s
        .post(
            "k-chat",
            "/v1/chat/completions",
            chat("fake-model", "hi", false),
        )
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let v: Value = s.get("k-chat", "/v1/models").await.json().await.unwrap();
    let listed: Vec<(&str, &str)> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["id"].as_str().unwrap(), m["queue"].as_str().unwrap()))
        .collect();
    assert_eq!(listed, [("chat", "chat"), ("fake-model", "chat")], "{v}");

    // k-one allows one open request: a second one while a stream is open
    // gets 429 with Retry-After; after the stream ends it is let in again.
    let open = s
        .post("k-one", "/v1/chat/completions", chat("chat", "slow", true))
        .await;
    assert_eq!(open.status(), 200);
    let r = s.post("k-one", "/v1/chat/completions", body.clone()).await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "concurrency_limit_exceeded"
    );
    drop(open);
    let mut ok = false;
    for _ in 0..100 {
        let r = s.post("k-one", "/v1/chat/completions", body.clone()).await;
        if r.status() == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "the slot of the dropped stream was never freed");
}

#[tokio::test]
async fn a_caller_that_disconnects_cancels_its_task_and_the_upstream_request() {
    let s = Stack::start(&[], &[]).await;
    let r = s
        .post("k-all", "/v1/chat/completions", chat("chat", "slow", true))
        .await;
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-rtq-task-id"].to_str().unwrap().to_string();
    let mut body = r.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("w0"), "{first:?}");
    drop(body);
    assert!(
        s.upstream.wait_aborted(1, Duration::from_secs(10)).await,
        "the upstream kept generating after the caller left\n{}",
        s.gw.proc.log()
    );
    let v: Value = s
        .get("k-all", &format!("/v1/queues/chat/tasks/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["state"], "cancelled", "{v}");

    // The same for a non-streaming request whose caller gives up once the
    // upstream is generating.
    let request = s
        .http
        .post(format!("{}/v1/chat/completions", s.gw.url))
        .bearer_auth("k-all")
        .json(&chat("chat", "slow", false))
        .send();
    let caller = tokio::spawn(request);
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while s
        .upstream
        .stats
        .started
        .load(std::sync::atomic::Ordering::SeqCst)
        < 2
    {
        assert!(
            std::time::Instant::now() < end,
            "the second request never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    caller.abort();
    assert!(
        s.upstream.wait_aborted(2, Duration::from_secs(10)).await,
        "a non-streaming caller that left did not stop the upstream\n{}",
        s.gw.proc.log()
    );
}

#[tokio::test]
async fn refusals_have_openai_error_bodies_and_the_right_statuses() {
    // A small body limit: an oversized body that fits in the socket
    // buffers is sent whole before the 413 arrives (a larger one races the
    // gateway closing the connection).
    let s = Stack::start(
        &["--concurrency", "1"],
        &["--retry-after-secs", "3", "--max-body-bytes", "16384"],
    )
    .await;
    let client = rtq_core::Client::connect(&s.redis.url()).await.unwrap();
    let admin = Admin::new(&client);
    let code = |v: &Value| v["error"]["code"].as_str().unwrap_or("").to_string();

    let r = s
        .post("k-all", "/v1/chat/completions", chat("nope", "hi", false))
        .await;
    assert_eq!(r.status(), 404);
    assert_eq!(code(&r.json().await.unwrap()), "model_not_found");

    // An upstream refusal before any output: 502 with its message.
    let r = s
        .post(
            "k-all",
            "/v1/chat/completions",
            chat("chat", "refuse", true),
        )
        .await;
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"].as_str().unwrap().contains("refuses"),
        "{v}"
    );

    // Malformed and oversized bodies.
    let r = s
        .http
        .post(format!("{}/v1/chat/completions", s.gw.url))
        .bearer_auth("k-all")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["type"],
        "invalid_request_error"
    );
    let big = "x".repeat(20_000);
    let r = s
        .post("k-all", "/v1/chat/completions", chat("chat", &big, false))
        .await;
    assert_eq!(r.status(), 413);
    assert_eq!(code(&r.json().await.unwrap()), "payload_too_large");
    let r = s
        .post("k-all", "/v1/chat/completions", json!({"model": "chat"}))
        .await;
    assert_eq!(r.status(), 400);

    // A queue without a live worker, and a paused one: 503 with a reason.
    admin.register_queue("idle").await.unwrap();
    let r = s
        .post("k-all", "/v1/chat/completions", chat("idle", "hi", false))
        .await;
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(code(&v), "no_live_worker");
    assert!(v["error"]["message"].as_str().unwrap().contains("idle"));
    admin.pause("chat", true).await.unwrap();
    // The gateway caches "serving" for --catalog-ttl-ms (200 ms here).
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = s
        .post("k-all", "/v1/chat/completions", chat("chat", "hi", false))
        .await;
    assert_eq!(r.status(), 503);
    assert_eq!(code(&r.json().await.unwrap()), "queue_paused");
    admin.pause("chat", false).await.unwrap();

    // A full queue: the one slot busy, one task waiting, max depth 1.
    let busy = s
        .post("k-all", "/v1/chat/completions", chat("chat", "slow", true))
        .await;
    assert_eq!(busy.status(), 200);
    admin.set_max_depth("chat", 1).await.unwrap();
    let queued = s
        .post(
            "k-all",
            "/v1/queues/chat/tasks",
            json!({"input": {"prompt": "q"}}),
        )
        .await;
    assert_eq!(queued.status(), 202);
    let r = s
        .post("k-all", "/v1/chat/completions", chat("chat", "hi", false))
        .await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "3");
    assert_eq!(code(&r.json().await.unwrap()), "queue_full");
    // The task API advises the same --retry-after-secs.
    let r = s
        .post(
            "k-all",
            "/v1/queues/chat/tasks",
            json!({"input": {"prompt": "q"}}),
        )
        .await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "3");
    assert_eq!(code(&r.json().await.unwrap()), "queue_full");
    // n=1.0 is n=1 (as OpenAI takes it); n=2 is refused before a submit.
    let mut one = chat("chat", "hi", false);
    one["n"] = json!(1.0);
    let r = s.post("k-all", "/v1/chat/completions", one).await;
    assert_eq!(r.status(), 429, "n=1.0 must pass the checks");
    let mut two = chat("chat", "hi", false);
    two["n"] = json!(2);
    let r = s.post("k-all", "/v1/chat/completions", two).await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`n` must be 1"),
        "{v}"
    );
    admin.set_max_depth("chat", 0).await.unwrap();

    // A deadline while queued (the slot is still busy): 504 naming it.
    let r = s
        .post(
            "k-all",
            "/v1/queues/chat/tasks?wait=true",
            json!({"input": {"prompt": "late"}, "timeout_ms": 300}),
        )
        .await;
    assert_eq!(r.status(), 504);
    let v: Value = r.json().await.unwrap();
    assert_eq!(code(&v), "deadline_exceeded_queued", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("queued"));
    drop(busy);
    // ... and while running.
    let r = s
        .post(
            "k-all",
            "/v1/queues/chat/tasks?wait=true",
            json!({"input": {"prompt": "slow"}, "timeout_ms": 700}),
        )
        .await;
    assert_eq!(r.status(), 504);
    let v: Value = r.json().await.unwrap();
    assert_eq!(code(&v), "deadline_exceeded_running", "{v}");
}

#[tokio::test]
async fn shutdown_lets_open_streams_finish_within_the_grace_period() {
    let mut s = Stack::start(&[], &["--grace-secs", "30"]).await;
    let r = s
        .post("k-all", "/v1/chat/completions", chat("chat", "slow", true))
        .await;
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    s.gw.proc.terminate();
    let mut text = String::from_utf8_lossy(&first).to_string();
    while let Some(part) = body.next().await {
        text.push_str(&String::from_utf8_lossy(&part.unwrap()));
    }
    let events = parse_sse(&text);
    assert_eq!(events.last().unwrap().2, "[DONE]", "{}", s.gw.proc.log());
    assert!(text.contains("w199"));
    let status = s.gw.proc.wait_exit(Duration::from_secs(10));
    assert!(status.is_some_and(|st| st.success()), "{}", s.gw.proc.log());
}

#[tokio::test]
async fn shutdown_cancels_the_tasks_of_streams_still_open_after_the_grace_period() {
    let mut s = Stack::start(&[], &["--grace-secs", "1"]).await;
    let r = s
        .post("k-all", "/v1/chat/completions", chat("chat", "slow", true))
        .await;
    let id = r.headers()["x-rtq-task-id"].to_str().unwrap().to_string();
    s.gw.proc.terminate();
    let status = s.gw.proc.wait_exit(Duration::from_secs(15));
    assert!(status.is_some(), "{}", s.gw.proc.log());
    drop(r);
    let client = rtq_core::Client::connect(&s.redis.url()).await.unwrap();
    let info = client.queue("chat").unwrap().status(&id).await.unwrap();
    assert_eq!(
        info.state,
        rtq_core::TaskState::Cancelled,
        "{}",
        s.gw.proc.log()
    );
}
