//! A hostile upstream, as a real local HTTP server: one 10 MiB line, a
//! line that never ends, an oversized JSON reply, chunk and event over
//! their limits. Each fails its task with a reason naming the limit (and
//! its flag), and the worker stays healthy for the next task.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use rtq_core::{Client, Error, TaskRequest};
use rtq_testkit::RedisServer;
use serde_json::{json, Value};
use support::*;

const MIB: usize = 1 << 20;

/// Counts bodies the worker stopped reading before their end.
#[derive(Default)]
struct Seen {
    dropped: AtomicUsize,
}

struct DropWatch(Arc<Seen>, bool);

impl DropWatch {
    /// The body reached its end: not abandoned.
    fn finish(mut self) {
        self.1 = true;
    }
}

impl Drop for DropWatch {
    fn drop(&mut self) {
        if !self.1 {
            self.0.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn stream_of(
    content_type: &'static str,
    pieces: impl Iterator<Item = Vec<u8>> + Send + 'static,
    seen: Arc<Seen>,
) -> Response {
    let watch = DropWatch(seen, false);
    let body = futures::stream::unfold((pieces, watch), |(mut it, watch)| async move {
        match it.next() {
            Some(p) => {
                // Let the worker read between pieces, as a network would.
                tokio::task::yield_now().await;
                Some((Ok::<_, std::io::Error>(p), (it, watch)))
            }
            None => {
                watch.finish();
                None
            }
        }
    });
    (
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(body),
    )
        .into_response()
}

async fn hostile(State(seen): State<Arc<Seen>>, Json(input): Json<Value>) -> Response {
    let mode = input["mode"].as_str().unwrap_or("").to_string();
    match mode.as_str() {
        // One `data:` line of 10 MiB, sent in 64 KiB pieces, then a newline.
        "sse_10mib" => {
            let mut pieces = vec![b"data: ".to_vec()];
            pieces.extend((0..160).map(|_| vec![b'x'; 64 * 1024]));
            pieces.push(b"\n\n".to_vec());
            stream_of("text/event-stream", pieces.into_iter(), seen)
        }
        "ndjson_10mib" => {
            let mut pieces = vec![b"{\"chunk\":\"".to_vec()];
            pieces.extend((0..160).map(|_| vec![b'y'; 64 * 1024]));
            pieces.push(b"\"}\n".to_vec());
            stream_of("application/x-ndjson", pieces.into_iter(), seen)
        }
        // A line that never ends: 1 MiB pieces without a newline, for as
        // long as anyone reads.
        "unterminated" => stream_of(
            "application/x-ndjson",
            std::iter::repeat_with(|| vec![b'z'; MIB]),
            seen,
        ),
        "big_json" => {
            let text = format!("{{\"pad\":\"{}\"}}", "p".repeat(5 * MIB));
            Json(serde_json::from_str::<Value>(&text).unwrap()).into_response()
        }
        // One event of 400 KiB in 1 KiB data lines (no line is long).
        "big_event" => {
            let mut pieces: Vec<Vec<u8>> = (0..400)
                .map(|_| format!("data: {}\n", "e".repeat(1024)).into_bytes())
                .collect();
            pieces.push(b"\n".to_vec());
            stream_of("text/event-stream", pieces.into_iter(), seen)
        }
        "big_chunk" => {
            let line = format!("data: {}\n\n", "c".repeat(150 * 1024));
            stream_of(
                "text/event-stream",
                std::iter::once(line.into_bytes()),
                seen,
            )
        }
        _ => Json(json!({"ok": true})).into_response(),
    }
}

async fn run(q: &rtq_core::Queue, mode: &str) -> Result<Value, Error> {
    tokio::time::timeout(
        Duration::from_secs(60),
        q.run(TaskRequest::json(json!({"mode": mode})).max_attempts(1)),
    )
    .await
    .unwrap_or_else(|_| panic!("{mode}: the task did not end"))
    .map(|o| o.result)
}

fn reason(result: Result<Value, Error>, mode: &str) -> String {
    match result {
        Err(Error::Failed { reason, .. }) => reason,
        other => panic!("{mode}: expected a failure, got {other:?}"),
    }
}

#[tokio::test]
async fn a_hostile_upstream_fails_each_task_at_a_named_limit_and_the_worker_goes_on() {
    let seen = Arc::new(Seen::default());
    let app = Router::new()
        .route("/generate", post(hostile))
        .with_state(Arc::clone(&seen));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/generate", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let redis = RedisServer::start();
    let _worker = start_worker(
        &redis,
        &[
            "--queue",
            "hostile",
            "--handler",
            "http",
            "--upstream-url",
            &url,
            "--max-body-bytes",
            "4194304",
            "--max-event-bytes",
            "262144",
            "--max-chunk-bytes",
            "102400",
        ],
    );
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("hostile").unwrap();

    // Default line limit (2 MiB) against a 10 MiB line.
    for mode in ["sse_10mib", "ndjson_10mib", "unterminated"] {
        let why = reason(run(&q, mode).await, mode);
        assert!(why.contains("--max-line-bytes"), "{mode}: {why}");
    }
    let why = reason(run(&q, "big_json").await, "big_json");
    assert!(why.contains("--max-body-bytes"), "{why}");
    let why = reason(run(&q, "big_event").await, "big_event");
    assert!(why.contains("--max-event-bytes"), "{why}");
    let why = reason(run(&q, "big_chunk").await, "big_chunk");
    assert!(why.contains("--max-chunk-bytes"), "{why}");

    // The worker stopped reading the endless body (the finite ones may
    // have fit in socket buffers before it gave up) and serves the next
    // task.
    eventually("the endless body was abandoned", || {
        let seen = Arc::clone(&seen);
        Box::pin(async move { seen.dropped.load(Ordering::SeqCst) >= 1 })
    })
    .await;
    assert_eq!(run(&q, "fine").await.unwrap(), json!({"ok": true}));
}

/// An exec child that answers every task with a 3 MiB line of junk first,
/// then the real result line.
const NOISY_CHILD: &str = r#"
import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("type") != "task":
        continue
    sys.stdout.write("x" * (3 << 20) + "\n")
    sys.stdout.write(json.dumps({"id": msg["id"], "attempt": msg["attempt"], "result": {"ok": True}}) + "\n")
    sys.stdout.flush()
"#;

#[tokio::test]
async fn an_exec_child_line_over_the_limit_is_dropped_and_the_next_line_still_counts() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("noisy.py");
    std::fs::write(&script, NOISY_CHILD).unwrap();
    let command = format!("python3 {}", script.display());
    let _worker = start_worker(
        &redis,
        &[
            "--queue",
            "noisy",
            "--handler",
            "exec",
            "--exec-command",
            &command,
            "--max-line-bytes",
            "1048576",
        ],
    );
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("noisy").unwrap();
    assert_eq!(run(&q, "any").await.unwrap(), json!({"ok": true}));
    assert_eq!(run(&q, "again").await.unwrap(), json!({"ok": true}));
}
