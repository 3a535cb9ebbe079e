//! Handler behaviours no other test pinned down (issue 16, found with
//! cargo-mutants), through the real rtq-worker binary against a test
//! upstream.

mod support;

use std::sync::Arc;
use std::time::Duration;

use rtq_core::{Client, TaskRequest};
use rtq_testkit::RedisServer;
use serde_json::json;
use support::*;

const PATIENCE: Duration = Duration::from_secs(30);

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f).await.expect("hung")
}

/// A streamed answer without a result (SSE ending with `[DONE]`, NDJSON
/// ending without a `result` line, its last line unterminated) completes
/// the task with the number of chunks streamed, every chunk delivered.
#[tokio::test]
async fn http_streams_without_a_result_end_with_their_chunk_count() {
    let redis = RedisServer::start();
    let up = Arc::new(Upstream::default());
    let base = start_upstream(Arc::clone(&up)).await;
    let url = format!("{base}/generate");
    let _w = start_worker(
        &redis,
        &["--queue", "g", "--handler", "http", "--upstream-url", &url],
    );
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("g").unwrap();

    let (out, text) = within(
        q.stream(TaskRequest::json(json!({"mode": "sse_done", "n": 3})))
            .await
            .unwrap()
            .collect_text(),
    )
    .await
    .unwrap();
    assert_eq!(
        (text.as_str(), out.result["chunks"].as_u64()),
        ("d0d1d2", Some(3))
    );

    let (out, text) = within(
        q.stream(TaskRequest::json(json!({"mode": "ndjson_plain", "n": 3})))
            .await
            .unwrap()
            .collect_text(),
    )
    .await
    .unwrap();
    assert_eq!(
        (text.as_str(), out.result["chunks"].as_u64()),
        ("p0p1p2", Some(3))
    );
    assert_eq!(q.status(&out.id).await.unwrap().chunks, 3);
}

/// `--mock-error-rate` fails the tasks whose id draws below the rate (the
/// same tasks every time): at 0.5, ids `m2` and `m4` (draws 0.37, 0.04)
/// fail and `m1`, `m3` (0.70, 0.77) succeed; Redis records each outcome.
#[tokio::test]
async fn the_mock_fails_exactly_the_tasks_drawn_below_its_error_rate() {
    let redis = RedisServer::start();
    let _w = start_worker(
        &redis,
        &[
            "--queue",
            "mk",
            "--handler",
            "mock",
            "--mock-error-rate",
            "0.5",
            "--mock-tokens",
            "2",
        ],
    );
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("mk").unwrap();
    for (id, fails) in [("m1", false), ("m2", true), ("m3", false), ("m4", true)] {
        let out = within(q.run(TaskRequest::json(json!({})).id(id))).await;
        match out {
            Ok(out) => {
                assert!(!fails, "{id} should have failed");
                assert_eq!(out.result["usage"]["completion_tokens"], 2);
            }
            Err(e) => {
                assert!(fails, "{id}: {e}");
                assert!(e.to_string().contains("simulated model error"), "{e}");
            }
        }
        let info = q.status(id).await.unwrap();
        let expected = if fails { "failed" } else { "done" };
        assert_eq!(info.state.to_string(), expected, "{id}");
    }
}
