//! How the worker treats what an upstream answers (and fails to answer):
//! redirects are not followed, secrets quoted back are masked before any
//! cut, a `Retry-After` is honoured, a down upstream does not use up the
//! attempts of the queue's tasks, and results over the result limit fail
//! early (http) or leave the streamed text out (openai). Real upstream
//! servers on port 0, the real rtq-worker binary, a real Redis.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::FutureExt;
use rtq_core::admin::Admin;
use rtq_core::{Client, Error, TaskRequest, TaskState};
use rtq_testkit::RedisServer;
use serde_json::{json, Value};
use support::*;

/// The API key the workers here send; upstreams quote it back.
const API_KEY: &str = "sk-live-0123456789abcdef";

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("hung")
}

/// Serves `app` on a fresh port of 127.0.0.1; returns `http://addr`.
async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// The bearer token a request carried.
fn bearer(headers: &HeaderMap) -> String {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim_start_matches("Bearer ")
        .to_string()
}

/// Starts an http worker for `queue` against `url`, sending [`API_KEY`].
fn http_worker(redis: &RedisServer, queue: &str, url: &str, extra: &[&str]) -> ChildGuard {
    let mut args = vec!["--queue", queue, "--handler", "http", "--upstream-url", url];
    args.extend_from_slice(extra);
    let mut cmd = worker_command(&redis.url(), &args);
    cmd.env("RTQ_UPSTREAM_API_KEY", API_KEY);
    ChildGuard::spawn(&mut cmd)
}

fn failure(result: Result<rtq_core::TaskOutput, Error>) -> String {
    match result {
        Err(Error::Failed { reason, .. }) => reason,
        other => panic!("expected a failure, got {other:?}"),
    }
}

/// Panics if any 8 consecutive bytes of [`API_KEY`] appear in `text`.
fn assert_no_part_of_the_key(text: &str) {
    for part in API_KEY.as_bytes().windows(8) {
        let part = std::str::from_utf8(part).unwrap();
        assert!(!text.contains(part), "{part:?} of the key leaked: {text}");
    }
}

#[tokio::test]
async fn a_redirect_is_not_followed_and_fails_the_task_naming_where_it_pointed() {
    let landed = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&landed);
    let other = serve(
        Router::new().route(
            "/landing",
            post(move || {
                seen.fetch_add(1, Ordering::SeqCst);
                async { Json(json!({"landed": true})) }
            })
            .get(|| async { Json(json!({"landed": "as GET"})) }),
        ),
    )
    .await;
    let other_port = other.rsplit(':').next().unwrap().to_string();
    let location = format!("http://user:locpw-4711@127.0.0.1:{other_port}/landing");
    let redirecting = serve(Router::new().route(
        "/generate",
        post(move |Json(input): Json<Value>| {
            let location = location.clone();
            async move {
                let code = if input["mode"] == "302" {
                    StatusCode::FOUND
                } else {
                    StatusCode::TEMPORARY_REDIRECT
                };
                (code, [(header::LOCATION, location)]).into_response()
            }
        }),
    ))
    .await;
    let redis = RedisServer::start();
    let _w = http_worker(&redis, "redir", &format!("{redirecting}/generate"), &[]);
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("redir").unwrap();
    for mode in ["307", "302"] {
        let why =
            failure(within(q.run(TaskRequest::json(json!({"mode": mode})).max_attempts(1))).await);
        assert!(
            why.contains("redirect") && why.contains("/landing"),
            "{why}"
        );
        assert!(why.contains("--upstream-url"), "{why}");
        assert!(
            !why.contains("locpw-4711"),
            "the Location's password: {why}"
        );
    }
    assert_eq!(
        landed.load(Ordering::SeqCst),
        0,
        "the credentials and the input went to the other host"
    );
}

/// Bodies that quote the API key after enough filler that a cut at the
/// quote limit falls inside the key.
fn quoting_app() -> Router {
    Router::new()
        .route(
            "/generate",
            post(|headers: HeaderMap, Json(input): Json<Value>| async move {
                let key = bearer(&headers);
                match input["mode"].as_str().unwrap_or("") {
                    // A 500 whose body passes the 500-character quote limit
                    // inside the key.
                    "error" => (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("{} {key} trailing words", "A".repeat(490)),
                    )
                        .into_response(),
                    // A "JSON" reply that is not JSON: 200 characters quoted.
                    "not_json" => (
                        [(header::CONTENT_TYPE, "application/json")],
                        format!("{} {key} tail", "A".repeat(190)),
                    )
                        .into_response(),
                    // An NDJSON line that is not JSON.
                    _ => (
                        [(header::CONTENT_TYPE, "application/x-ndjson")],
                        format!("{} {key} tail\n", "A".repeat(190)),
                    )
                        .into_response(),
                }
            }),
        )
        .route("/v1/models", get(|| async { StatusCode::OK }))
        .route(
            "/v1/completions",
            post(|headers: HeaderMap| async move {
                let key = bearer(&headers);
                (
                    [(header::CONTENT_TYPE, "text/event-stream")],
                    format!("data: {} {key} tail\n\n", "A".repeat(190)),
                )
                    .into_response()
            }),
        )
}

#[tokio::test]
async fn a_secret_quoted_back_by_the_upstream_is_masked_before_the_quote_is_cut() {
    let base = serve(quoting_app()).await;
    let redis = RedisServer::start();
    let _http = http_worker(&redis, "quote", &format!("{base}/generate"), &[]);
    let mut cmd = worker_command(
        &redis.url(),
        &[
            "--queue",
            "quote-oa",
            "--handler",
            "openai",
            "--upstream-url",
            &base,
        ],
    );
    cmd.env("RTQ_UPSTREAM_API_KEY", API_KEY);
    let _openai = ChildGuard::spawn(&mut cmd);
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("quote").unwrap();
    for mode in ["error", "not_json", "ndjson"] {
        let why =
            failure(within(q.run(TaskRequest::json(json!({"mode": mode})).max_attempts(1))).await);
        assert!(why.contains("AAAA"), "{mode}: the body was quoted: {why}");
        assert_no_part_of_the_key(&why);
    }
    let q = client.queue("quote-oa").unwrap();
    let why =
        failure(within(q.run(TaskRequest::json(json!({"prompt": "x"})).max_attempts(1))).await);
    assert!(why.contains("not JSON") && why.contains("AAAA"), "{why}");
    assert_no_part_of_the_key(&why);
}

#[tokio::test]
async fn a_429_with_retry_after_is_not_tried_again_before_the_time_it_names() {
    let arrivals: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let seen = Arc::clone(&arrivals);
    let base = serve(Router::new().route(
        "/generate",
        post(move || {
            let seen = Arc::clone(&seen);
            async move {
                let mut seen = seen.lock().unwrap();
                seen.push(Instant::now());
                if seen.len() == 1 {
                    (
                        StatusCode::TOO_MANY_REQUESTS,
                        [(header::RETRY_AFTER, "3")],
                        "slow down",
                    )
                        .into_response()
                } else {
                    Json(json!({"ok": true})).into_response()
                }
            }
        }),
    ))
    .await;
    let redis = RedisServer::start();
    let _w = http_worker(&redis, "ra", &format!("{base}/generate"), &[]);
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("ra").unwrap();
    let out = within(q.run(TaskRequest::json(json!({})).max_attempts(3)))
        .await
        .unwrap();
    assert_eq!(out.result, json!({"ok": true}));
    let arrivals = arrivals.lock().unwrap();
    assert_eq!(arrivals.len(), 2, "one 429, then the success");
    let gap = arrivals[1] - arrivals[0];
    assert!(
        gap >= Duration::from_millis(2800),
        "tried again after {gap:?}, before the 3 s Retry-After"
    );
}

#[tokio::test]
async fn a_down_upstream_without_a_health_url_does_not_use_up_the_queued_tasks() {
    let redis = RedisServer::start();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/generate");
    let _w = http_worker(&redis, "down", &url, &["--health-interval-ms", "100"]);
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("down").unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        let sub = q
            .submit(TaskRequest::json(json!({"mode": "json", "i": i})).max_attempts(2))
            .await
            .unwrap();
        ids.push(sub.id);
    }
    let admin = Admin::new(&client);
    eventually("the worker reports the upstream down", move || {
        let admin = admin.clone();
        async move {
            admin
                .workers("down")
                .await
                .unwrap()
                .first()
                .is_some_and(|w| w.field("upstream") == "down")
        }
        .boxed()
    })
    .await;
    // Thirty trial periods with the port still closed: no task is handed
    // to the dead upstream on trial, and a task that met the closed port
    // is held, so none uses up an attempt.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for id in &ids {
        let info = q.status(id).await.unwrap();
        assert!(
            matches!(info.state, TaskState::Queued | TaskState::Running),
            "{id}: {info:?}"
        );
        assert_eq!(
            info.failures, 0,
            "an attempt used against a closed port: {info:?}"
        );
    }
    // The model server comes up: every task runs.
    start_upstream_at(Arc::new(Upstream::default()), port).await;
    for id in &ids {
        let out = within(q.wait(id, None)).await.unwrap();
        assert_eq!(out.result["echo"]["mode"], "json");
    }
}

#[tokio::test]
async fn a_task_whose_upstream_is_down_is_handed_back_unstarted_to_a_node_whose_upstream_works() {
    let redis = RedisServer::start();
    let closed = format!("http://127.0.0.1:{}/generate", free_port());
    // node-a's model server is down (nothing listens on its port).
    let _a = http_worker(
        &redis,
        "handback",
        &closed,
        &["--worker-id", "node-a", "--health-interval-ms", "100"],
    );
    let client = Client::connect(&redis.url()).await.unwrap();
    let admin = Admin::new(&client);
    let a = admin.clone();
    eventually("node-a is registered", move || {
        let a = a.clone();
        async move { !a.workers("handback").await.unwrap().is_empty() }.boxed()
    })
    .await;
    let q = client.queue("handback").unwrap();
    // One attempt: a node that used it up against its dead upstream would
    // fail the task.
    let sub = q
        .submit(TaskRequest::json(json!({"mode": "json"})).max_attempts(1))
        .await
        .unwrap();
    let a = admin.clone();
    eventually("node-a met its dead upstream", move || {
        let a = a.clone();
        async move {
            a.workers("handback")
                .await
                .unwrap()
                .iter()
                .any(|w| w.id == "node-a" && w.field("upstream") == "down")
        }
        .boxed()
    })
    .await;
    let live = start_upstream(Arc::new(Upstream::default())).await;
    let _b = http_worker(
        &redis,
        "handback",
        &format!("{live}/generate"),
        &["--worker-id", "node-b"],
    );
    // Handed back at once (not held on node-a for a hold, then retried
    // with its one attempt), and run by node-b.
    let out = within(q.wait(&sub.id, None))
        .await
        .expect("done, not failed");
    assert_eq!(out.result["echo"]["mode"], "json");
    let info = q.status(&sub.id).await.unwrap();
    assert_eq!(info.worker, "node-b");
    assert_eq!(info.failures, 0, "no attempt used on node-a: {info:?}");
    assert!(out.attempt >= 2, "node-a had it first: {out:?}");
}

#[tokio::test]
async fn results_over_the_result_limit_fail_early_for_http_and_drop_the_text_for_openai() {
    const MIB: usize = 1 << 20;
    let base = serve(
        Router::new()
            .route(
                "/generate",
                post(|| async { Json(json!({"pad": "p".repeat(MIB + 1000)})) }),
            )
            .route("/v1/models", get(|| async { StatusCode::OK }))
            .route(
                "/v1/completions",
                post(|| async {
                    // 1.2 MiB of text in 1200 deltas of 1000 characters.
                    let event = format!(
                        "data: {}\n\n",
                        json!({"choices": [{"index": 0, "text": "y".repeat(1000)}]})
                    );
                    let body = event.repeat(1200)
                        + &format!(
                            "data: {}\n\ndata: [DONE]\n\n",
                            json!({"choices": [{"index": 0, "text": "", "finish_reason": "stop"}]})
                        );
                    ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response()
                }),
            ),
    )
    .await;
    let redis = RedisServer::start();
    let _http = http_worker(&redis, "big", &format!("{base}/generate"), &[]);
    let _openai = ChildGuard::spawn(&mut worker_command(
        &redis.url(),
        &[
            "--queue",
            "big-oa",
            "--handler",
            "openai",
            "--upstream-url",
            &base,
        ],
    ));
    let client = Client::connect(&redis.url()).await.unwrap();
    let why = failure(
        within(
            client
                .queue("big")
                .unwrap()
                .run(TaskRequest::json(json!({})).max_attempts(1)),
        )
        .await,
    );
    assert!(why.contains("--max-result-bytes"), "{why}");

    let q = client.queue("big-oa").unwrap();
    let (out, text) = within(
        q.stream(TaskRequest::json(json!({"prompt": "long"})).max_attempts(1))
            .await
            .unwrap()
            .collect_text(),
    )
    .await
    .unwrap();
    assert_eq!(text.len(), 1_200_000, "every delta was streamed");
    assert_eq!(out.result["text"], Value::Null);
    assert_eq!(out.result["text_bytes"], 1_200_000);
    assert_eq!(out.result["finish_reason"], "stop");
}
