//! The task API, the probes and the metrics against a real stack.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{parse_sse, read_events, sse_events, Stack};

#[tokio::test]
async fn tasks_are_submitted_read_waited_for_streamed_resumed_and_cancelled() {
    let s = Stack::start(&[], &[]).await;
    // Asynchronous submit, then the result with a wait.
    let r = s
        .post(
            "k-all",
            "/v1/queues/chat/tasks",
            json!({"input": {"prompt": "a b c d e"}, "labels": {"team": "x"}, "id": "job-1"}),
        )
        .await;
    assert_eq!(r.status(), 202);
    assert_eq!(r.headers()["location"], "/v1/queues/chat/tasks/job-1");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["id"], "job-1");
    assert!(v["state"] == "queued" || v["state"] == "running", "{v}");
    let v: Value = s
        .get("k-all", "/v1/queues/chat/tasks/job-1/result?wait_ms=10000")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["state"], "done", "{v}");
    assert_eq!(v["result"]["text"], "a b c d e ");
    let v: Value = s
        .get("k-all", "/v1/queues/chat/tasks/job-1")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["state"], "done");
    assert_eq!(v["chunks"], 5);
    assert_eq!(v["labels"]["team"], "x");
    assert_eq!(v["labels"]["api_key"], "all");
    // The same id again is a conflict.
    let r = s
        .post(
            "k-all",
            "/v1/queues/chat/tasks",
            json!({"input": {"prompt": "x"}, "id": "job-1"}),
        )
        .await;
    assert_eq!(r.status(), 409);

    // The stream of an ended task, whole and resumed after chunk 2.
    let events = sse_events(s.get("k-all", "/v1/queues/chat/tasks/job-1/stream").await).await;
    let chunks: Vec<_> = events.iter().filter(|e| e.0 == "chunk").collect();
    assert_eq!(chunks.len(), 5);
    assert_eq!(chunks[0].1, "1:0");
    let last = events.last().unwrap();
    assert_eq!(last.0, "done");
    assert_eq!(
        serde_json::from_str::<Value>(&last.2).unwrap()["result"]["text"],
        "a b c d e "
    );
    let resumed = s
        .http
        .get(format!("{}/v1/queues/chat/tasks/job-1/stream", s.gw.url))
        .bearer_auth("k-all")
        .header("last-event-id", "1:2")
        .send()
        .await
        .unwrap();
    let events = sse_events(resumed).await;
    let ids: Vec<&str> = events
        .iter()
        .filter(|e| e.0 == "chunk")
        .map(|e| e.1.as_str())
        .collect();
    assert_eq!(ids, ["1:3", "1:4"]);
    let text: Value = serde_json::from_str(&events[0].2).unwrap();
    assert_eq!(text["text"], "d ");

    // Synchronous submit, and a submit that streams.
    let r = s
        .post(
            "k-all",
            "/v1/queues/chat/tasks?wait=true",
            json!({"input": {"prompt": "p q"}}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["result"]["text"], "p q ");
    let r = s
        .post(
            "k-all",
            "/v1/queues/chat/tasks?stream=true",
            json!({"input": {"prompt": "m n"}}),
        )
        .await;
    let events = sse_events(r).await;
    assert_eq!(events.iter().filter(|e| e.0 == "chunk").count(), 2);
    assert_eq!(events.last().unwrap().0, "done");

    // Cancel a running task: its followers see the cancel, the upstream
    // stops.
    let r = s
        .post(
            "k-all",
            "/v1/queues/chat/tasks",
            json!({"input": {"prompt": "slow"}, "id": "long"}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let follower = s.get("k-all", "/v1/queues/chat/tasks/long/stream").await;
    assert_eq!(follower.status(), 200);
    let r = s
        .http
        .delete(format!("{}/v1/queues/chat/tasks/long", s.gw.url))
        .bearer_auth("k-all")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["cancelled"], true, "{v}");
    let events = sse_events(follower).await;
    let last = events.last().unwrap();
    assert_eq!(last.0, "error");
    assert_eq!(
        serde_json::from_str::<Value>(&last.2).unwrap()["error"]["code"],
        "task_cancelled"
    );
    assert!(s.upstream.wait_aborted(1, Duration::from_secs(10)).await);
    let r = s.get("k-all", "/v1/queues/chat/tasks/long/result").await;
    assert_eq!(r.status(), 409);
}

#[tokio::test]
async fn bad_task_requests_get_clear_errors() {
    let s = Stack::start(&[], &[]).await;
    let cases = [
        ("/v1/queues/chat/tasks", json!({}), 400, "input"),
        (
            "/v1/queues/chat/tasks",
            json!({"input": 1, "input_ref": "r"}),
            400,
            "exactly one",
        ),
        (
            "/v1/queues/chat/tasks",
            json!({"input": 1, "colour": "red"}),
            400,
            "unknown field",
        ),
        (
            "/v1/queues/chat/tasks",
            json!({"input": 1, "priority": 5000}),
            400,
            "priority",
        ),
        (
            "/v1/queues/chat/tasks",
            json!({"input": 1, "id": "a b"}),
            400,
            "task id",
        ),
        (
            "/v1/queues/chat/tasks?wait=maybe",
            json!({"input": 1}),
            400,
            "wait",
        ),
        (
            "/v1/queues/bad%20name/tasks",
            json!({"input": 1}),
            400,
            "queue name",
        ),
    ];
    for (path, body, status, needle) in cases {
        let r = s.post("k-all", path, body.clone()).await;
        assert_eq!(r.status().as_u16(), status, "{path} {body}");
        let v: Value = r.json().await.unwrap();
        let msg = v["error"]["message"].as_str().unwrap_or("");
        assert!(msg.contains(needle), "{path} {body}: {v}");
    }
    let r = s.get("k-all", "/v1/queues/chat/tasks/nope").await;
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "task_not_found"
    );
    let r = s.get("k-all", "/v1/queues/never-used/tasks/x").await;
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "queue_not_found"
    );
    // Submits do not create queues either (a typo, a hostile caller), in
    // any mode; the queue stays unknown.
    for mode in ["", "?wait=true", "?stream=true"] {
        let r = s
            .post(
                "k-all",
                &format!("/v1/queues/typo-queue/tasks{mode}"),
                json!({"input": 1}),
            )
            .await;
        assert_eq!(r.status(), 404, "{mode}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "queue_not_found", "{mode}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("--create-queues"),
            "{body}"
        );
    }
    let r = s.get("k-all", "/v1/queues/typo-queue/tasks/x").await;
    assert_eq!(r.status(), 404, "the refused submits created the queue");
    let r = s
        .http
        .get(format!("{}/v1/queues/chat/tasks/x/stream", s.gw.url))
        .bearer_auth("k-all")
        .header("last-event-id", "abc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = s.get("k-chat", "/v1/queues/other/tasks/x").await;
    assert_eq!(r.status(), 403);
    let r = s.get("k-all", "/no/such/route").await;
    assert_eq!(r.status(), 404);
    // A known route with a method it does not have: 405, JSON, Allow.
    let r = s
        .http
        .delete(format!("{}/v1/chat/completions", s.gw.url))
        .bearer_auth("k-all")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "method_not_allowed", "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
}

#[tokio::test]
async fn probes_report_health_readiness_and_metrics() {
    let mut s = Stack::start(&[], &[]).await;
    assert_eq!(s.get("", "/healthz").await.status(), 200);
    assert_eq!(s.get("", "/readyz").await.status(), 200);
    let r = s
        .post(
            "k-all",
            "/v1/chat/completions",
            json!({"model": "chat", "messages": [{"role": "user", "content": "a b"}], "stream": true}),
        )
        .await;
    let events = parse_sse(&r.text().await.unwrap());
    assert_eq!(events.last().unwrap().2, "[DONE]");
    let text = s.get("", "/metrics").await.text().await.unwrap();
    for needle in [
        "rtq_gateway_requests_total{route=\"/v1/chat/completions\",status=\"200\"} 1",
        "rtq_gateway_request_duration_seconds_bucket{",
        "rtq_gateway_time_to_first_token_seconds_count{route=\"/v1/chat/completions\"} 1",
        "rtq_gateway_open_streams 0",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
    // Redis gone: not ready, and requests get 503 instead of hanging.
    s.redis.kill();
    let r = s.get("", "/readyz").await;
    assert_eq!(r.status(), 503);
    let r = s
        .post(
            "k-all",
            "/v1/chat/completions",
            json!({"model": "chat", "messages": [{"role": "user", "content": "a"}]}),
        )
        .await;
    assert_eq!(r.status(), 503, "{}", r.text().await.unwrap());
}

/// `GET .../stream` of task `id` resumed from `last_event_id`.
async fn resume(s: &Stack, id: &str, last_event_id: &str) -> reqwest::Response {
    s.http
        .get(format!("{}/v1/queues/chat/tasks/{id}/stream", s.gw.url))
        .bearer_auth("k-all")
        .header("last-event-id", last_event_id)
        .send()
        .await
        .unwrap()
}

/// Waits until task `id` runs attempt `attempt` and wrote `chunks` chunks.
async fn wait_attempt(s: &Stack, id: &str, attempt: u64, chunks: u64) {
    let end = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let v: Value = s
            .get("k-all", &format!("/v1/queues/chat/tasks/{id}"))
            .await
            .json()
            .await
            .unwrap();
        if v["attempt"] == attempt && v["chunks"].as_u64().unwrap_or(0) >= chunks {
            return;
        }
        assert!(std::time::Instant::now() < end, "{v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_resumed_stream_restarts_with_the_new_attempt_instead_of_splicing_two() {
    let s = Stack::start(&[], &[]).await;
    let admin =
        rtq_core::admin::Admin::new(&rtq_core::Client::connect(&s.redis.url()).await.unwrap());
    let r = s
        .post(
            "k-all",
            "/v1/queues/chat/tasks",
            json!({"input": {"prompt": "slow"}, "id": "again"}),
        )
        .await;
    assert_eq!(r.status(), 202);
    // A client reads chunks 0..=7 of attempt 1, then goes away.
    let follower = s.get("k-all", "/v1/queues/chat/tasks/again/stream").await;
    let seen = read_events(follower, 8).await;
    let ids: Vec<&str> = seen.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(
        ids,
        ["1:0", "1:1", "1:2", "1:3", "1:4", "1:5", "1:6", "1:7"]
    );
    // Meanwhile the task is run again, further than chunk 7.
    admin.requeue("chat", "again").await.unwrap();
    wait_attempt(&s, "again", 2, 10).await;

    // Resuming after 1:7: restarted, then attempt 2 from its first chunk.
    let events = read_events(resume(&s, "again", "1:7").await, 3).await;
    assert_eq!(events[0].0, "restarted", "{events:?}");
    assert_eq!(events[0].1, "2:-1");
    let restarted: Value = serde_json::from_str(&events[0].2).unwrap();
    assert_eq!(restarted["attempt"], 1, "{restarted}");
    assert_eq!(
        (events[1].0.as_str(), events[1].1.as_str()),
        ("chunk", "2:0")
    );
    let first: Value = serde_json::from_str(&events[1].2).unwrap();
    assert_eq!(
        (first["attempt"].clone(), first["text"].clone()),
        (json!(2), json!("w0 "))
    );
    assert_eq!(events[2].1, "2:1");
    // The restarted event's id resumes at chunk 0 of attempt 2.
    let events = read_events(resume(&s, "again", "2:-1").await, 1).await;
    assert_eq!(events[0].1, "2:0", "{events:?}");
    // A bare index (older clients) means the current attempt.
    let events = read_events(resume(&s, "again", "7").await, 1).await;
    assert_eq!(events[0].1, "2:8", "{events:?}");

    // A follower of attempt 2 that sees the task run again gets a
    // restarted event whose id resumes at attempt 3's first chunk.
    let live = resume(&s, "again", "2:3").await;
    let mut body = Box::pin(live.bytes_stream());
    let mut text = String::new();
    use futures::StreamExt;
    while !text.contains("id: 2:4") {
        text.push_str(&String::from_utf8_lossy(
            &body.next().await.unwrap().unwrap(),
        ));
    }
    admin.requeue("chat", "again").await.unwrap();
    let end = std::time::Instant::now() + Duration::from_secs(20);
    while !text.contains("id: 3:0") {
        assert!(std::time::Instant::now() < end, "{text}");
        text.push_str(&String::from_utf8_lossy(
            &body.next().await.unwrap().unwrap(),
        ));
    }
    let events = parse_sse(&text);
    let at = events
        .iter()
        .position(|e| e.0 == "restarted")
        .expect("restarted");
    assert_eq!(events[at].1, "3:-1", "{events:?}");
    assert_eq!(events[at + 1].1, "3:0", "{events:?}");
    assert!(
        events[..at].iter().all(|e| e.1.starts_with("2:")),
        "{events:?}"
    );
    drop(body);

    // Requeued before the client came back and not run yet (the queue is
    // paused): restarted (at once, see the next test), then attempt 4's
    // first chunk once it runs.
    admin.pause("chat", true).await.unwrap();
    admin.requeue("chat", "again").await.unwrap();
    let back = resume(&s, "again", "3:0").await;
    assert_eq!(back.status(), 200);
    admin.pause("chat", false).await.unwrap();
    let events = read_events(back, 2).await;
    assert_eq!(events[0].0, "restarted", "{events:?}");
    assert_eq!(events[0].1, "4:-1", "{events:?}");
    assert_eq!(events[1].1, "4:0", "{events:?}");

    // Attempts the task never ran (ids this stream never sent): 400.
    for bad in ["99:3", "0:3", "5:0"] {
        let r = resume(&s, "again", bad).await;
        assert_eq!(r.status(), 400, "{bad}");
    }
    // A bare index or `from` on a task not handed out yet skips that many
    // chunks of the attempt that runs first, with no false restart.
    admin.pause("chat", true).await.unwrap();
    let r = s
        .post(
            "k-all",
            "/v1/queues/chat/tasks",
            json!({"input": {"prompt": "a b c d e f g h"}, "id": "fresh"}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let bare = resume(&s, "fresh", "2").await;
    let from = s
        .get("k-all", "/v1/queues/chat/tasks/fresh/stream?from=3")
        .await;
    assert_eq!((bare.status().as_u16(), from.status().as_u16()), (200, 200));
    admin.pause("chat", false).await.unwrap();
    for resp in [bare, from] {
        let events = read_events(resp, 1).await;
        assert_eq!(
            (events[0].0.as_str(), events[0].1.as_str()),
            ("chunk", "1:3"),
            "{events:?}"
        );
    }
}

/// An SSE response read a few events at a time.
struct SseReader {
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    text: String,
    taken: usize,
}

impl SseReader {
    fn new(resp: reqwest::Response) -> Self {
        assert_eq!(resp.status(), 200);
        Self {
            body: Box::pin(resp.bytes_stream()),
            text: String::new(),
            taken: 0,
        }
    }

    /// The next `n` whole events, each within `patience`.
    async fn take(&mut self, n: usize, patience: Duration) -> Vec<(String, String, String)> {
        use futures::StreamExt;
        loop {
            let whole = self
                .text
                .rfind("\n\n")
                .map_or("", |end| &self.text[..end + 2]);
            let events = parse_sse(whole);
            if events.len() >= self.taken + n {
                let out = events[self.taken..self.taken + n].to_vec();
                self.taken += n;
                return out;
            }
            let part = tokio::time::timeout(patience, self.body.next())
                .await
                .unwrap_or_else(|_| {
                    panic!("no event within {patience:?}; so far: {:?}", self.text)
                });
            let bytes = part.expect("the stream ended").unwrap();
            self.text.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
}

/// A resume reads the task and subscribes to it in one step of the
/// library, so it learns that the client's attempt is void there and
/// then, even before anything of the next attempt exists (the queue is
/// paused): `restarted` comes first, for an attempt id and a bare index
/// alike, and the next attempt follows from chunk 0 when it runs. (The
/// gateway used to read the task's status and then follow it: a requeue
/// between the two went unnoticed until the next attempt's first chunk.)
#[tokio::test]
async fn a_resume_learns_its_attempt_was_abandoned_in_the_step_that_subscribes() {
    let s = Stack::start(&[], &[]).await;
    let admin =
        rtq_core::admin::Admin::new(&rtq_core::Client::connect(&s.redis.url()).await.unwrap());
    let r = s
        .post(
            "k-all",
            "/v1/queues/chat/tasks",
            json!({"input": {"prompt": "slow"}, "id": "void"}),
        )
        .await;
    assert_eq!(r.status(), 202);
    wait_attempt(&s, "void", 1, 3).await;
    admin.pause("chat", true).await.unwrap();
    admin.requeue("chat", "void").await.unwrap();

    let quick = Duration::from_secs(5);
    let mut by_id = SseReader::new(resume(&s, "void", "1:2").await);
    let mut bare = SseReader::new(resume(&s, "void", "2").await);
    for reader in [&mut by_id, &mut bare] {
        let events = reader.take(1, quick).await;
        assert_eq!(
            (events[0].0.as_str(), events[0].1.as_str()),
            ("restarted", "2:-1"),
            "{events:?}"
        );
        let data: Value = serde_json::from_str(&events[0].2).unwrap();
        assert_eq!(data["attempt"], 1, "{data}");
    }
    // The restarted event's id resumes before attempt 2 exists; a chunk id
    // of it cannot have been sent yet.
    let mut next = SseReader::new(resume(&s, "void", "2:-1").await);
    assert_eq!(resume(&s, "void", "2:0").await.status(), 400);

    admin.pause("chat", false).await.unwrap();
    for reader in [&mut by_id, &mut bare, &mut next] {
        let events = reader.take(2, Duration::from_secs(20)).await;
        let ids: Vec<&str> = events.iter().map(|e| e.1.as_str()).collect();
        assert_eq!(ids, ["2:0", "2:1"], "{events:?}");
    }
}

#[tokio::test]
async fn hostile_last_event_ids_are_refused_with_400() {
    let s = Stack::start(&[], &[]).await;
    let r = s
        .post(
            "k-all",
            "/v1/queues/chat/tasks?wait=true",
            json!({"input": {"prompt": "a b c"}, "id": "short"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let long = "1:".to_string() + &"9".repeat(5000);
    for bad in [
        "abc",
        "-5",
        "1:-2",
        "x:1",
        "1:2:3",
        "99999999999999999999999:1",
        &long,
    ] {
        let r = resume(&s, "short", bad).await;
        assert_eq!(r.status(), 400, "{bad:?}");
        let v: Value = r.json().await.unwrap();
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Last-Event-ID"),
            "{bad:?}: {v}"
        );
    }
    // Past the end, or at a huge index: only the end.
    for late in ["1:2", "1:18446744073709551615", "18446744073709551615"] {
        let events = sse_events(resume(&s, "short", late).await).await;
        assert_eq!(events.len(), 1, "{late:?}: {events:?}");
        assert_eq!(events[0].0, "done", "{late:?}: {events:?}");
    }
}

#[tokio::test]
async fn a_wait_past_max_wait_secs_is_504_and_cancels_the_task_it_created() {
    let s = Stack::start(&[], &["--max-wait-secs", "1"]).await;
    let r = s
        .post(
            "k-all",
            "/v1/queues/chat/tasks?wait=true",
            json!({"input": {"prompt": "slow"}}),
        )
        .await;
    assert_eq!(r.status(), 504);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "wait_timed_out", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("it was cancelled"), "{v}");
    let id = message.split_whitespace().nth(1).unwrap();
    // The worker is told to stop: the upstream request is dropped.
    assert!(s.upstream.wait_aborted(1, Duration::from_secs(10)).await);
    let v: Value = s
        .get("k-all", &format!("/v1/queues/chat/tasks/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["state"], "cancelled", "{v}");
}

/// The gateway waits on at most `--max-reply-readers` queues at once (one
/// Redis connection each): one queue more is a clear 503 naming the
/// limit, not a Redis error, and it passes once the other wait ends.
#[tokio::test]
async fn waits_on_more_queues_than_the_reader_limit_get_too_many_queues() {
    let s = Stack::start(&[], &["--max-reply-readers", "1", "--create-queues"]).await;
    let mut ids = Vec::new();
    for q in ["held", "other"] {
        let r = s
            .post(
                "k-all",
                &format!("/v1/queues/{q}/tasks"),
                json!({"input": 1}),
            )
            .await;
        assert_eq!(r.status(), 202);
        ids.push(
            r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    // A follower holds queue "held"'s reader (the task stays queued).
    let follow = s
        .get("k-all", &format!("/v1/queues/held/tasks/{}/stream", ids[0]))
        .await;
    assert_eq!(follow.status(), 200);
    let path = format!("/v1/queues/other/tasks/{}/result?wait_ms=2000", ids[1]);
    let r = s.get("k-all", &path).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_queues", "{body}");
    // The follower leaves: the reader is free for the other queue.
    drop(follow);
    let mut status = 0;
    for _ in 0..50 {
        let path = format!("/v1/queues/other/tasks/{}/result?wait_ms=10", ids[1]);
        status = s.get("k-all", &path).await.status().as_u16();
        if status == 202 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 202, "a wait on the other queue still refused");
}
