//! Gateway hardening against a real stack: keys checked before a body is
//! read, a model list that says how old it is and stops being served past
//! its staleness bound while Redis is down, and a per-key share of the
//! queues waited on at once.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::Stack;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends a request head announcing a `declared`-byte body and only the
/// first 1 KiB of it, then reads what the gateway answers (at most
/// `within`), keeping the connection open with the body unfinished.
async fn head_with_unfinished_body(
    url: &str,
    path: &str,
    key: &str,
    declared: usize,
    within: Duration,
) -> Result<String, String> {
    let addr = url.strip_prefix("http://").unwrap();
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&[b' '; 1024]).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let end = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(end, conn.read(&mut buf)).await {
            Err(_) => {
                return Err(format!(
                    "no whole answer within {within:?}; so far: {:?}",
                    String::from_utf8_lossy(&answer)
                ))
            }
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
        }
        let text = String::from_utf8_lossy(&answer);
        // The error bodies are small JSON objects: stop at the first one.
        if text.contains("\r\n\r\n{") && text.trim_end().ends_with('}') {
            break;
        }
    }
    // The body was never finished; the connection is still ours.
    drop(conn);
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

#[tokio::test]
async fn a_caller_without_a_valid_key_gets_401_before_sending_its_body() {
    // A body deadline far longer than the test: an answer within seconds
    // can only come from a gateway that did not wait for the body.
    let s = Stack::start(&[], &["--body-timeout-secs", "300"]).await;
    let within = Duration::from_secs(5);
    for path in [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/queues/chat/tasks?wait=true",
    ] {
        let started = Instant::now();
        let answer = head_with_unfinished_body(&s.gw.url, path, "not-a-key", 1 << 20, within)
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}\n{}", s.gw.proc.log()));
        assert!(answer.starts_with("HTTP/1.1 401"), "{path}: {answer}");
        assert!(answer.contains("invalid_api_key"), "{path}: {answer}");
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{path}: the unread body cannot be skipped: {answer}"
        );
        assert!(started.elapsed() < within, "{path}");
    }
    // A known key that may not use the queue: the grant does not depend
    // on the body, so it is refused before the body too.
    let answer = head_with_unfinished_body(
        &s.gw.url,
        "/v1/queues/other/tasks",
        "k-chat",
        1 << 20,
        within,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s.gw.proc.log()));
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("queue_not_allowed"), "{answer}");
    // And a valid key still gets its request served as before.
    let r = s
        .post(
            "k-chat",
            "/v1/queues/chat/tasks?wait=true",
            json!({"input": {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}}),
        )
        .await;
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert!(status != 401 && status != 403, "{status} {v}");
}

/// `GET /v1/models` as (status, age header in ms, body).
async fn models(s: &Stack) -> (u16, Option<u64>, Value) {
    let r = s.get("k-all", "/v1/models").await;
    let status = r.status().as_u16();
    let age = r
        .headers()
        .get("x-rtq-catalog-age-ms")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    (status, age, r.json().await.unwrap())
}

#[tokio::test]
async fn the_model_list_says_its_age_and_is_refused_past_its_staleness_bound() {
    let mut s = Stack::start(
        &[],
        &["--catalog-ttl-ms", "200", "--catalog-max-stale-ms", "1500"],
    )
    .await;
    let (status, age, v) = models(&s).await;
    assert_eq!(status, 200, "{v}");
    assert!(age.is_some_and(|a| a < 1500), "{age:?}");

    s.redis.kill();
    // Within the bound the last list is served, with its age.
    let killed = Instant::now();
    let (status, age, v) = models(&s).await;
    if killed.elapsed() < Duration::from_millis(1000) {
        assert_eq!(status, 200, "{v}");
        assert!(v["data"].as_array().is_some_and(|d| !d.is_empty()), "{v}");
        assert!(age.is_some(), "{v}");
    }
    // Past it: 503 naming Redis and the age, promptly, every time.
    let end = Instant::now() + Duration::from_secs(20);
    let v = loop {
        let asked = Instant::now();
        let (status, age, v) = models(&s).await;
        assert!(asked.elapsed() < Duration::from_secs(4), "{v}");
        if status == 503 {
            break v;
        }
        assert_eq!(status, 200, "{v}");
        assert!(age.is_some_and(|a| a < 1500), "served {age:?} ms old: {v}");
        assert!(Instant::now() < end, "never refused: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(v["error"]["code"], "redis_unavailable", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("--catalog-max-stale-ms"), "{message}");
    assert!(message.contains("s ago"), "{message}");
    for _ in 0..3 {
        let asked = Instant::now();
        let (status, _, v) = models(&s).await;
        assert_eq!(status, 503, "{v}");
        assert!(asked.elapsed() < Duration::from_secs(4), "{v}");
    }
    // A completion naming a model is refused the same way, not from the
    // stale list.
    let r = s
        .post(
            "k-all",
            "/v1/chat/completions",
            json!({"model": "fake-model", "messages": [{"role": "user", "content": "a"}]}),
        )
        .await;
    assert_eq!(r.status(), 503);

    // Redis back (empty: the worker registers again): a fresh list.
    s.redis.restart();
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, age, v) = models(&s).await;
        let listed = v["data"]
            .as_array()
            .is_some_and(|d| d.iter().any(|m| m["id"] == "chat"));
        if status == 200 && listed {
            assert!(age.is_some_and(|a| a < 1500), "{age:?}");
            break;
        }
        assert!(
            Instant::now() < end,
            "no list after Redis came back: {status} {v}\n{}",
            s.gw.proc.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Opens `GET .../tasks/{id}/stream` of `queue` with `key` (the response
/// is kept open by the caller).
async fn follow(s: &Stack, key: &str, queue: &str, id: &str) -> reqwest::Response {
    s.get(key, &format!("/v1/queues/{queue}/tasks/{id}/stream"))
        .await
}

#[tokio::test]
async fn a_key_waits_on_at_most_its_share_of_distinct_queues() {
    let s = Stack::start(
        &[],
        &[
            "--key-wait-queues",
            "2",
            "--create-queues",
            "--keepalive-secs",
            "1",
        ],
    )
    .await;
    // A queued task on each of three queues nobody serves.
    let mut ids = Vec::new();
    for q in ["w1", "w2", "w3"] {
        let r = s
            .post(
                "k-all",
                &format!("/v1/queues/{q}/tasks"),
                json!({"input": {}}),
            )
            .await;
        assert_eq!(r.status(), 202);
        let v: Value = r.json().await.unwrap();
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    let one = follow(&s, "k-all", "w1", &ids[0]).await;
    assert_eq!(one.status(), 200);
    let two = follow(&s, "k-all", "w2", &ids[1]).await;
    assert_eq!(two.status(), 200);
    // A third distinct queue is refused, for a follow and for a wait.
    let r = follow(&s, "k-all", "w3", &ids[2]).await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "wait_queues_limit_exceeded", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("wait_queues="),
        "{v}"
    );
    let r = s
        .get(
            "k-all",
            &format!("/v1/queues/w3/tasks/{}/result?wait_ms=100", ids[2]),
        )
        .await;
    assert_eq!(r.status(), 429);
    // Reads that do not wait are not limited.
    let r = s
        .get("k-all", &format!("/v1/queues/w3/tasks/{}", ids[2]))
        .await;
    assert_eq!(r.status(), 200);
    // More waits on a queue the key waits on already are.
    let again = follow(&s, "k-all", "w1", &ids[0]).await;
    assert_eq!(again.status(), 200);
    // Another key has a share of its own.
    let other = follow(&s, "k-one", "w3", &ids[2]).await;
    assert_eq!(other.status(), 200);
    drop(other);
    // A stream that ends gives its queue back.
    drop(two);
    let end = Instant::now() + Duration::from_secs(20);
    let three = loop {
        let r = follow(&s, "k-all", "w3", &ids[2]).await;
        if r.status() == 200 {
            break r;
        }
        assert_eq!(r.status(), 429);
        assert!(Instant::now() < end, "w2's share never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    drop((one, again, three));
}

/// `head_with_unfinished_body`, checked to answer `status` with `code`
/// (the body deadline of the stack is far longer than `within`).
async fn refused_before_the_body(
    s: &Stack,
    path: &str,
    key: &str,
    declared: usize,
    status: u16,
    code: &str,
) {
    let within = Duration::from_secs(10);
    let answer = head_with_unfinished_body(&s.gw.url, path, key, declared, within)
        .await
        .unwrap_or_else(|e| panic!("{key} {path}: {e}\n{}", s.gw.proc.log()));
    assert!(
        answer.starts_with(&format!("HTTP/1.1 {status}")),
        "{key} {path}: {answer}"
    );
    assert!(answer.contains(code), "{key} {path}: {answer}");
}

/// A chat body of about `size` bytes (padded) naming `model`.
fn padded_chat(model: &str, size: usize) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "user": "x".repeat(size),
    })
}

/// POSTs `body` without a length (a chunked body, as a streaming client
/// sends it), in small pieces.
async fn post_chunked(s: &Stack, key: &str, path: &str, body: &Value) -> reqwest::Response {
    let bytes = body.to_string().into_bytes();
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
        bytes.chunks(256).map(|c| Ok(c.to_vec())).collect();
    s.http
        .post(format!("{}{path}", s.gw.url))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(pieces)))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_openai_routes_refuse_on_the_head_what_does_not_depend_on_the_body() {
    let s = Stack::start(&[], &["--body-timeout-secs", "300"]).await;
    // A key granted only the task API may use no queue through the OpenAI
    // routes: refused before any of its body is read, and its model list
    // says the same (it lists nothing it could use).
    for path in ["/v1/chat/completions", "/v1/completions"] {
        refused_before_the_body(&s, path, "k-tasks", 1 << 20, 403, "route_not_allowed").await;
    }
    let r = s.get("k-tasks", "/v1/models").await;
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "route_not_allowed", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("routes="),
        "{v}"
    );
    // It keeps the task API.
    let r = s
        .post(
            "k-tasks",
            "/v1/queues/chat/tasks?wait=true",
            json!({"input": {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}}),
        )
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    // A key's rate limit holds whatever the model: over it, the next
    // completion is refused on its head.
    let r = s
        .post("k-rate", "/v1/chat/completions", padded_chat("nope", 10))
        .await;
    assert_eq!(r.status(), 404);
    refused_before_the_body(
        &s,
        "/v1/chat/completions",
        "k-rate",
        1 << 20,
        429,
        "rate_limit_exceeded",
    )
    .await;

    // A key's own body limit, below --max-body-bytes: a larger declared
    // length is refused on the head, a body without a length once it
    // passes the limit, on both APIs.
    for path in ["/v1/chat/completions", "/v1/queues/chat/tasks"] {
        refused_before_the_body(&s, path, "k-small", 4096, 413, "max_body=").await;
    }
    let big = padded_chat("nope", 4096);
    let r = post_chunked(&s, "k-small", "/v1/chat/completions", &big).await;
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "payload_too_large", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_body="),
        "{v}"
    );
    let r = post_chunked(
        &s,
        "k-small",
        "/v1/queues/chat/tasks",
        &json!({"input": {"pad": "x".repeat(4096)}}),
    )
    .await;
    assert_eq!(r.status(), 413);
    // Under the limit the same key is served; other keys have the
    // gateway's limit.
    let r = post_chunked(
        &s,
        "k-small",
        "/v1/chat/completions",
        &padded_chat("nope", 100),
    )
    .await;
    assert_eq!(r.status(), 404);
    let r = post_chunked(&s, "k-all", "/v1/chat/completions", &big).await;
    assert_eq!(r.status(), 404);
}

/// A client still sending a body past its key's `max_body=` gets the 413,
/// not a reset connection: the gateway reads a modest overshoot to its end
/// before answering (closing with unread data would make the client's TCP
/// discard the answer).
#[tokio::test]
async fn a_body_past_the_key_limit_gets_its_413_while_the_client_still_sends() {
    let s = Stack::start(&[], &["--body-timeout-secs", "300"]).await;
    // 40 KB against a 4 KB limit, in 256-byte pieces: most of it is still
    // on its way when the gateway decides.
    for _ in 0..3 {
        let r = post_chunked(
            &s,
            "k-small",
            "/v1/chat/completions",
            &padded_chat("nope", 40_000),
        )
        .await;
        assert_eq!(r.status(), 413);
    }
}

#[tokio::test]
async fn a_follow_wait_or_waiting_submit_of_an_ended_task_takes_no_share_of_the_queues_waited_on() {
    let s = Stack::start(
        &[],
        &[
            "--key-wait-queues",
            "1",
            "--create-queues",
            "--keepalive-secs",
            "1",
        ],
    )
    .await;
    // A task on chat that has ended.
    let r = s
        .post(
            "k-all",
            "/v1/queues/chat/tasks?wait=true",
            json!({"input": {"model": "fake-model", "messages": [{"role": "user", "content": "one two"}]}}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let done: Value = r.json().await.unwrap();
    let id = done["id"].as_str().unwrap().to_string();
    // The key's one share is taken by a follow of a queued task elsewhere.
    let r = s
        .post("k-all", "/v1/queues/w1/tasks", json!({"input": {}}))
        .await;
    assert_eq!(r.status(), 202);
    let queued: Value = r.json().await.unwrap();
    let held = follow(&s, "k-all", "w1", queued["id"].as_str().unwrap()).await;
    assert_eq!(held.status(), 200);

    // The ended task is answered from what is stored: its chunks and
    // result, from the start or from a Last-Event-ID.
    let r = follow(&s, "k-all", "chat", &id).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let events = support::sse_events(r).await;
    let names: Vec<&str> = events.iter().map(|(e, _, _)| e.as_str()).collect();
    assert_eq!(names.last(), Some(&"done"), "{events:?}");
    assert!(names.contains(&"chunk"), "{events:?}");
    let (_, first_id, _) = events
        .iter()
        .find(|(e, _, _)| e == "chunk")
        .unwrap()
        .clone();
    let r = s
        .http
        .get(format!("{}/v1/queues/chat/tasks/{id}/stream", s.gw.url))
        .bearer_auth("k-all")
        .header("last-event-id", first_id)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let rest = support::sse_events(r).await;
    assert_eq!(rest.len(), events.len() - 1, "{rest:?}");
    let r = s
        .get(
            "k-all",
            &format!("/v1/queues/chat/tasks/{id}/result?wait_ms=5000"),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["result"], done["result"], "{v}");

    // A waiting submit whose id names the ended task (an idempotent retry)
    // gets its stored result or events; it needs no share either.
    let retry = json!({"id": id, "input": {"model": "fake-model", "messages": [{"role": "user", "content": "one two"}]}});
    let r = s
        .post("k-all", "/v1/queues/chat/tasks?wait=true", retry.clone())
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["id"], id.as_str(), "{v}");
    assert_eq!(v["result"], done["result"], "{v}");
    let r = s
        .post("k-all", "/v1/queues/chat/tasks?stream=true", retry)
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let replayed = support::sse_events(r).await;
    assert_eq!(replayed.len(), events.len(), "{replayed:?}");
    assert_eq!(replayed.last().map(|e| e.0.as_str()), Some("done"));
    // One naming an id no task has creates it, and waits: limited.
    let r = s
        .post(
            "k-all",
            "/v1/queues/chat/tasks?wait=true",
            json!({"id": "fresh-1", "input": {}}),
        )
        .await;
    assert_eq!(r.status(), 429, "{}", r.text().await.unwrap());
    let r = s.get("k-all", "/v1/queues/chat/tasks/fresh-1").await;
    assert_eq!(r.status(), 404, "refused before anything was submitted");

    // A task still to be waited on is limited as before.
    let r = s
        .post("k-all", "/v1/queues/w2/tasks", json!({"input": {}}))
        .await;
    let other: Value = r.json().await.unwrap();
    let r = follow(&s, "k-all", "w2", other["id"].as_str().unwrap()).await;
    assert_eq!(r.status(), 429);
    drop(held);
}
