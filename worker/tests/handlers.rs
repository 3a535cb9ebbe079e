//! The built-in handlers against real upstream servers started by the
//! tests, through the real rtq-worker binary.

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use rtq_core::admin::Admin;
use rtq_core::{Client, Error, StreamEvent, TaskRequest, TaskState};
use rtq_testkit::RedisServer;
use serde_json::json;
use support::*;

const PATIENCE: Duration = Duration::from_secs(30);

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f).await.expect("hung")
}

#[tokio::test]
async fn http_json_sse_ndjson_and_garbage() {
    let redis = RedisServer::start();
    let up = Arc::new(Upstream::default());
    let base = start_upstream(Arc::clone(&up)).await;
    let url = format!("{base}/generate");
    let _w = start_worker(
        &redis,
        &[
            "--queue",
            "h",
            "--handler",
            "http",
            "--upstream-url",
            &url,
            "--concurrency",
            "2",
        ],
    );
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("h").unwrap();

    let out = within(q.run(TaskRequest::json(json!({"mode": "json", "x": 1}))))
        .await
        .unwrap();
    assert_eq!(out.result["echo"]["x"], 1);

    let (out, text) = within(
        q.stream(TaskRequest::json(json!({"mode": "sse", "n": 4})))
            .await
            .unwrap()
            .collect_text(),
    )
    .await
    .unwrap();
    assert_eq!(
        (text.as_str(), out.result["n"].as_u64()),
        ("s0s1s2s3", Some(4))
    );

    let (out, text) = within(
        q.stream(TaskRequest::json(json!({"mode": "ndjson", "n": 3})))
            .await
            .unwrap()
            .collect_text(),
    )
    .await
    .unwrap();
    assert_eq!(
        (text.as_str(), out.result["lines"].as_u64()),
        ("n0n1n2", Some(3))
    );

    let err = within(q.run(TaskRequest::json(json!({"mode": "garbage"}))))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not JSON"), "{err}");
    let err = within(q.run(TaskRequest::json(json!({"mode": "error"}))))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("400 Bad Request: bad prompt: too long"),
        "{err}"
    );
}

#[tokio::test]
async fn openai_streams_tokens_reports_usage_and_server_errors() {
    let redis = RedisServer::start();
    let up = Arc::new(Upstream::default());
    up.healthy.store(true, Ordering::SeqCst);
    let base = start_upstream(Arc::clone(&up)).await;
    let _w = start_worker(
        &redis,
        &[
            "--queue",
            "oa",
            "--handler",
            "openai",
            "--upstream-url",
            &base,
            "--openai-model",
            "tiny",
        ],
    );
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("oa").unwrap();
    let chat = json!({"messages": [{"role": "user", "content": "hi"}]});
    let mut stream = q.stream(TaskRequest::json(chat)).await.unwrap();
    let mut tokens = Vec::new();
    let result = within(async {
        while let Some(ev) = stream.next().await {
            match ev.unwrap() {
                StreamEvent::Chunk(c) => tokens.push(c.text().to_string()),
                StreamEvent::Done(out) => return out.result,
                StreamEvent::Restarted { .. } => panic!("restart"),
            }
        }
        panic!("no result")
    })
    .await;
    assert_eq!(tokens.concat(), "Hello there");
    assert_eq!(result["text"], "Hello there");
    assert_eq!(result["finish_reason"], "stop");
    assert_eq!(result["usage"]["total_tokens"], 7);
    assert_eq!(result["model"], "tiny");

    let out = within(q.run(TaskRequest::json(json!({"prompt": "x"}))))
        .await
        .unwrap();
    assert_eq!(out.result["text"], "Hello there");

    let err = within(q.run(TaskRequest::json(
        json!({"prompt": "x", "model": "missing"}),
    )))
    .await
    .unwrap_err();
    match err {
        Error::Failed { reason, .. } => assert!(
            reason.contains("The model `missing` does not exist."),
            "{reason}"
        ),
        other => panic!("{other}"),
    }
    let err = within(q.run(TaskRequest::json(json!({"nothing": 1}))))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("\"messages\""), "{err}");
}

#[tokio::test]
async fn cancelling_a_task_closes_the_upstream_request() {
    let redis = RedisServer::start();
    let up = Arc::new(Upstream::default());
    let base = start_upstream(Arc::clone(&up)).await;
    let url = format!("{base}/generate");
    let _w = start_worker(
        &redis,
        &["--queue", "cx", "--handler", "http", "--upstream-url", &url],
    );
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("cx").unwrap();
    let mut stream = q
        .stream(TaskRequest::json(json!({"mode": "slow"})))
        .await
        .unwrap();
    let first = within(stream.next()).await.unwrap().unwrap();
    assert!(matches!(first, StreamEvent::Chunk(_)));
    q.cancel(stream.id(), "user closed the tab").await.unwrap();
    let up2 = Arc::clone(&up);
    eventually("the upstream saw its connection closed", move || {
        let up = Arc::clone(&up2);
        async move { up.closed_early.load(Ordering::SeqCst) == 1 }.boxed()
    })
    .await;
    assert!(matches!(
        within(stream.next()).await,
        Some(Err(Error::Cancelled { .. }))
    ));
}

#[tokio::test]
async fn a_dead_upstream_stops_intake_until_it_is_back() {
    let redis = RedisServer::start();
    let up = Arc::new(Upstream::default());
    let base = start_upstream(Arc::clone(&up)).await;
    let (url, health) = (format!("{base}/generate"), format!("{base}/health"));
    // Unhealthy from the start.
    let _w = start_worker(
        &redis,
        &[
            "--queue",
            "ud",
            "--handler",
            "http",
            "--upstream-url",
            &url,
            "--health-url",
            &health,
            "--health-interval-ms",
            "100",
        ],
    );
    let client = Client::connect(&redis.url()).await.unwrap();
    let admin = Admin::new(&client);
    let q = client.queue("ud").unwrap();
    let a = admin.clone();
    eventually("the heartbeat reports the upstream down", move || {
        let a = a.clone();
        async move {
            a.workers("ud")
                .await
                .unwrap()
                .first()
                .map(|w| w.field("upstream") == "down")
                .unwrap_or(false)
                && a.overview("ud").await.unwrap().idle_slots == 0
        }
        .boxed()
    })
    .await;
    // No idle slot is offered, so the task stays queued rather than failing.
    let sub = q
        .submit(TaskRequest::json(json!({"mode": "json"})))
        .await
        .unwrap();
    assert_eq!(sub.state, TaskState::Queued);
    assert_eq!(up.requests.load(Ordering::SeqCst), 0);
    up.healthy.store(true, Ordering::SeqCst);
    let out = within(q.wait(&sub.id, None)).await.unwrap();
    assert_eq!(out.result["echo"]["mode"], "json");
}

#[tokio::test]
async fn exec_child_serves_concurrent_tasks_and_is_restarted_after_a_crash() {
    let redis = RedisServer::start();
    let cmd = exec_child_command();
    let _w = start_worker(
        &redis,
        &[
            "--queue",
            "ex",
            "--handler",
            "exec",
            "--exec-command",
            &cmd,
            "--concurrency",
            "4",
        ],
    );
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("ex").unwrap();
    let runs = (0..4).map(|i| {
        let q = q.clone();
        async move {
            q.stream(TaskRequest::json(
                json!({"prompt": format!("abc def {i}"), "delay_ms": 50}),
            ))
            .await
            .unwrap()
            .collect_text()
            .await
        }
    });
    for (i, r) in within(futures::future::join_all(runs))
        .await
        .into_iter()
        .enumerate()
    {
        let (out, text) = r.unwrap();
        assert_eq!(text, format!("cba fed {i} "));
        assert_eq!(out.result["words"], 3);
    }
    let err = within(q.run(TaskRequest::json(json!({"fail": "no GPU memory"}))))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no GPU memory"), "{err}");
    // The child crashes: the task fails with the reason (no attempts left),
    // the child is restarted and serves the next task.
    let err = within(q.run(TaskRequest::json(json!({"crash": true})).max_attempts(1)))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("exec child") && err.to_string().contains("exited"),
        "{err}"
    );
    let out = within(q.run(TaskRequest::json(json!({"prompt": "again"}))))
        .await
        .unwrap();
    assert_eq!(out.result["words"], 1);
}

#[tokio::test]
async fn health_readiness_and_metrics_endpoints() {
    let redis = RedisServer::start();
    let up = Arc::new(Upstream::default());
    up.healthy.store(true, Ordering::SeqCst);
    let base = start_upstream(Arc::clone(&up)).await;
    let (url, health) = (format!("{base}/generate"), format!("{base}/health"));
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let _w = start_worker(
        &redis,
        &[
            "--queue",
            "m",
            "--handler",
            "http",
            "--upstream-url",
            &url,
            "--health-url",
            &health,
            "--health-interval-ms",
            "100",
            "--probe-addr",
            &addr,
        ],
    );
    let http = reqwest::Client::new();
    let probe = format!("http://{addr}");
    let (h, p) = (http.clone(), probe.clone());
    eventually("/readyz answers 200", move || {
        let (h, p) = (h.clone(), p.clone());
        async move { matches!(h.get(format!("{p}/readyz")).send().await, Ok(r) if r.status() == 200) }.boxed()
    })
    .await;
    assert_eq!(
        http.get(format!("{probe}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("m").unwrap();
    within(q.run(TaskRequest::json(json!({"mode": "json"}))))
        .await
        .unwrap();
    let _ = within(q.run(TaskRequest::json(json!({"mode": "garbage"})))).await;
    let text = http
        .get(format!("{probe}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "rtq_worker_tasks_total{outcome=\"done\"} 1",
        "rtq_worker_tasks_total{outcome=\"failed\"} 1",
        "rtq_worker_upstream_up 1",
        "rtq_worker_redis_up 1",
        "rtq_worker_slots 1",
        "rtq_worker_task_duration_seconds_count 2",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    up.healthy.store(false, Ordering::SeqCst);
    let (h, p) = (http.clone(), probe.clone());
    eventually("/readyz answers 503 naming the upstream", move || {
        let (h, p) = (h.clone(), p.clone());
        async move {
            match h.get(format!("{p}/readyz")).send().await {
                Ok(r) if r.status() == 503 => {
                    r.text().await.unwrap_or_default() == "upstream down\n"
                }
                _ => false,
            }
        }
        .boxed()
    })
    .await;
}

#[tokio::test]
async fn an_unreachable_upstream_fails_clearly_and_is_tried_again_later() {
    let redis = RedisServer::start();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/generate");
    let _w = start_worker(
        &redis,
        &[
            "--queue",
            "un",
            "--handler",
            "http",
            "--upstream-url",
            &url,
            "--health-interval-ms",
            "200",
            // Fail at once rather than hold the task for the upstream or
            // hand it back.
            "--upstream-hold-secs",
            "0",
            "--upstream-down",
            "retry",
        ],
    );
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("un").unwrap();
    let err = within(q.run(TaskRequest::json(json!({"mode": "json"})).max_attempts(1)))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("connection refused or unreachable"),
        "{err}"
    );
    // The model server comes up on that port: without a health probe the
    // worker tries again by itself and the next task succeeds.
    let up = Arc::new(Upstream::default());
    start_upstream_at(Arc::clone(&up), port).await;
    let out = within(q.run(TaskRequest::json(json!({"mode": "json", "after": true}))))
        .await
        .unwrap();
    assert_eq!(out.result["echo"]["after"], true);
}

#[tokio::test]
async fn cancelling_an_exec_task_tells_the_child() {
    let redis = RedisServer::start();
    let child = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/exec_child.py");
    let dir = std::env::temp_dir().join(format!("rtq-exec-cancel-{}", std::process::id()));
    let report = dir.to_string_lossy().to_string();
    let _ = std::fs::remove_file(&dir);
    // The cancel log is the operator's choice (the child's environment);
    // a path named by the task input is never written.
    let planted = scratch("exec-planted-path");
    let cmd = format!("EXEC_CHILD_CANCEL_LOG={report} python3 {child}");
    let _w = start_worker(
        &redis,
        &[
            "--queue",
            "exc",
            "--handler",
            "exec",
            "--exec-command",
            &cmd,
        ],
    );
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("exc").unwrap();
    let words = vec!["w"; 500].join(" ");
    let mut stream = q
        .stream(TaskRequest::json(json!({
            "prompt": words,
            "delay_ms": 20,
            "report_cancel_to": planted.to_string_lossy(),
        })))
        .await
        .unwrap();
    assert!(matches!(
        within(stream.next()).await,
        Some(Ok(StreamEvent::Chunk(_)))
    ));
    q.cancel(stream.id(), "stop").await.unwrap();
    let (path, id) = (dir.clone(), stream.id().to_string());
    eventually(
        "the child received the cancel line naming the attempt",
        move || {
            let (path, id) = (path.clone(), id.clone());
            async move {
                std::fs::read_to_string(&path)
                    .map(|s| s.contains(&format!("cancelled {id} 1")))
                    .unwrap_or(false)
            }
            .boxed()
        },
    )
    .await;
    let _ = std::fs::remove_file(&dir);
    assert!(
        !planted.exists(),
        "the child wrote to a file the task input named"
    );
    // Without its test hooks the child ignores "crash" in task input.
    let out = within(q.run(TaskRequest::json(json!({"prompt": "a b", "crash": true}))))
        .await
        .expect("the child did not crash on task input");
    assert_eq!(out.result["words"], 2);
}

/// A cancel grace long enough that a handler which does not stop on its own
/// keeps its upstream work going far beyond every patience bound here.
const TEN_MINUTES_MS: &str = "600000";

/// The example child with its test hooks (`crash`, `ignore_cancel`) on.
fn exec_child_command() -> String {
    let child = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/exec_child.py");
    format!("EXEC_CHILD_TEST_HOOKS=1 python3 {child}")
}

/// A fresh path in the temp dir for files a test's processes write.
fn scratch(name: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("rtq-{name}-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

async fn wait_running(q: &rtq_core::Queue, id: &str) {
    let (q, id) = (q.clone(), id.to_string());
    eventually("the task is running", move || {
        let (q, id) = (q.clone(), id.clone());
        async move { q.status(&id).await.unwrap().state == TaskState::Running }.boxed()
    })
    .await;
}

/// Submits `input`, waits until the upstream has the request, cancels the
/// task and waits until the upstream saw its connection closed.
async fn cancel_when_requested(q: &rtq_core::Queue, up: &Arc<Upstream>, input: serde_json::Value) {
    let (requests, closed) = (
        up.requests.load(Ordering::SeqCst),
        up.closed_early.load(Ordering::SeqCst),
    );
    let sub = q.submit(TaskRequest::json(input)).await.unwrap();
    let u = Arc::clone(up);
    eventually("the upstream has the request", move || {
        let u = Arc::clone(&u);
        async move { u.requests.load(Ordering::SeqCst) > requests }.boxed()
    })
    .await;
    q.cancel(&sub.id, "user closed the tab").await.unwrap();
    let u = Arc::clone(up);
    eventually(
        "the upstream saw its connection closed (long before the cancel grace)",
        move || {
            let u = Arc::clone(&u);
            async move { u.closed_early.load(Ordering::SeqCst) > closed }.boxed()
        },
    )
    .await;
    assert_eq!(q.status(&sub.id).await.unwrap().state, TaskState::Cancelled);
}

#[tokio::test]
async fn cancelling_a_silent_http_request_closes_the_upstream_connection_at_once() {
    let redis = RedisServer::start();
    let up = Arc::new(Upstream::default());
    let base = start_upstream(Arc::clone(&up)).await;
    let url = format!("{base}/generate");
    let addr = format!("127.0.0.1:{}", free_port());
    let _w = start_worker(
        &redis,
        &[
            "--queue",
            "sh",
            "--handler",
            "http",
            "--upstream-url",
            &url,
            "--cancel-grace-ms",
            TEN_MINUTES_MS,
            "--probe-addr",
            &addr,
        ],
    );
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("sh").unwrap();
    // A stream that has begun but carries no token yet, then a JSON answer
    // that never completes: in neither case does the handler get to send a
    // chunk and notice the cancel that way.
    cancel_when_requested(&q, &up, json!({"mode": "stall"})).await;
    cancel_when_requested(&q, &up, json!({"mode": "stall_json"})).await;
    let metrics = format!("http://{addr}/metrics");
    eventually("both are counted as stopped, not failed", move || {
        let metrics = metrics.clone();
        async move {
            let Ok(resp) = reqwest::get(&metrics).await else {
                return false;
            };
            let text = resp.text().await.unwrap_or_default();
            text.contains("rtq_worker_tasks_total{outcome=\"stopped\"} 2")
                && !text.contains("outcome=\"failed\"")
        }
        .boxed()
    })
    .await;
}

#[tokio::test]
async fn cancelling_a_silent_openai_request_closes_the_upstream_connection_at_once() {
    let redis = RedisServer::start();
    let up = Arc::new(Upstream::default());
    up.healthy.store(true, Ordering::SeqCst);
    let base = start_upstream(Arc::clone(&up)).await;
    let _w = start_worker(
        &redis,
        &[
            "--queue",
            "so",
            "--handler",
            "openai",
            "--upstream-url",
            &base,
            "--openai-model",
            "tiny",
            "--cancel-grace-ms",
            TEN_MINUTES_MS,
        ],
    );
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("so").unwrap();
    cancel_when_requested(&q, &up, json!({"prompt": "x", "stall": true})).await;
}

#[tokio::test]
async fn cancelling_a_mock_task_frees_its_slot_at_once() {
    let redis = RedisServer::start();
    // One slot; 1000 s per token.
    let _w = start_worker(
        &redis,
        &[
            "--queue",
            "sm",
            "--mock-tokens-per-sec",
            "0.001",
            "--cancel-grace-ms",
            TEN_MINUTES_MS,
        ],
    );
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("sm").unwrap();
    let slow = q
        .submit(TaskRequest::json(json!({"max_tokens": 1})))
        .await
        .unwrap();
    wait_running(&q, &slow.id).await;
    q.cancel(&slow.id, "stop").await.unwrap();
    // The only slot serves the next task only once the cancelled one let go.
    let out = within(q.run(TaskRequest::json(json!({"max_tokens": 0}))))
        .await
        .unwrap();
    assert_eq!(out.result["model"], "mock");
}

#[tokio::test]
async fn cancelling_a_silent_exec_task_sends_the_child_its_cancel_line_at_once() {
    let redis = RedisServer::start();
    let report = scratch("exec-silent-cancel");
    let cmd = format!(
        "EXEC_CHILD_CANCEL_LOG={} {}",
        report.to_string_lossy(),
        exec_child_command()
    );
    let _w = start_worker(
        &redis,
        &[
            "--queue",
            "se",
            "--handler",
            "exec",
            "--exec-command",
            &cmd,
            "--cancel-grace-ms",
            TEN_MINUTES_MS,
        ],
    );
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("se").unwrap();
    // Ten minutes of silent prefill before the first token.
    let sub = q
        .submit(TaskRequest::json(json!({
            "prompt": "never said",
            "hold_ms": 600_000,
        })))
        .await
        .unwrap();
    // Running in Redis is not yet running in the child (the delivery may
    // still be on its way: a cancel then stops it before the child hears
    // of it, and there is nothing to tell the child). Wait for the child.
    let (path, id) = (report.clone(), sub.id.clone());
    eventually("the child started the task", move || {
        let (path, id) = (path.clone(), id.clone());
        async move {
            std::fs::read_to_string(&path)
                .map(|s| s.contains(&format!("started {id} 1")))
                .unwrap_or(false)
        }
        .boxed()
    })
    .await;
    q.cancel(&sub.id, "stop").await.unwrap();
    let (path, id) = (report.clone(), sub.id.clone());
    eventually("the child received the cancel line", move || {
        let (path, id) = (path.clone(), id.clone());
        async move {
            std::fs::read_to_string(&path)
                .map(|s| s.contains(&format!("cancelled {id} 1")))
                .unwrap_or(false)
        }
        .boxed()
    })
    .await;
    let _ = std::fs::remove_file(&report);
}

#[tokio::test]
async fn output_of_a_requeued_attempt_still_running_in_the_child_does_not_reach_the_next_attempt() {
    let redis = RedisServer::start();
    let cmd = exec_child_command();
    let _w = start_worker(
        &redis,
        &[
            "--queue",
            "ra",
            "--handler",
            "exec",
            "--exec-command",
            &cmd,
            "--concurrency",
            "2",
        ],
    );
    let client = Client::connect(&redis.url()).await.unwrap();
    let admin = Admin::new(&client);
    let q = client.queue("ra").unwrap();
    // The child cannot abort a step: attempt 1 keeps talking after its
    // cancel, and ends before attempt 2 (which started later) does.
    let words: Vec<String> = (0..20).map(|i| format!("w{i}")).collect();
    let mut stream = q
        .stream(TaskRequest::json(json!({
            "prompt": words.join(" "),
            "delay_ms": 50,
            "ignore_cancel": true,
        })))
        .await
        .unwrap();
    assert!(matches!(
        within(stream.next()).await,
        Some(Ok(StreamEvent::Chunk(_)))
    ));
    admin.requeue("ra", stream.id()).await.unwrap();
    let (out, text) = within(stream.collect_text()).await.unwrap();
    // Attempt 2, on the same worker while attempt 1 winds down: the worker
    // tracks attempts by (id, attempt), so attempt 1's end never unlists
    // attempt 2 (which would get it swept as an orphan and restarted).
    assert_eq!(out.attempt, 2, "finished by attempt {}", out.attempt);
    assert_eq!(
        out.result["attempt"], out.attempt,
        "the result is the finishing attempt's, not the old attempt's"
    );
    let expected: String = words
        .iter()
        .map(|w| format!("{} ", w.chars().rev().collect::<String>()))
        .collect();
    assert_eq!(text, expected, "attempt 2's tokens, each once");
}

#[tokio::test]
async fn no_process_of_the_exec_child_survives_a_restart_or_the_worker_shutdown() {
    let redis = RedisServer::start();
    let sleepers = ListedProcesses {
        path: scratch("exec-group-pids"),
        comm: "sleep",
    };
    // `sh` runs a "model" in the background next to the child (and, being
    // dash, may not exec the child either): killing only `sh` would leave
    // them running.
    let cmd = format!(
        "sleep 1000 & echo $! >> {}; {}",
        sleepers.path.display(),
        exec_child_command()
    );
    let mut worker = start_worker(
        &redis,
        &["--queue", "pg", "--handler", "exec", "--exec-command", &cmd],
    );
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("pg").unwrap();
    within(q.run(TaskRequest::json(json!({"prompt": "up"}))))
        .await
        .unwrap();
    let first = sleepers.pids();
    assert_eq!(first.len(), 1, "one child started: {first:?}");
    assert!(process_runs(first[0], "sleep"));

    // The child crashes: the rest of its group goes before the restart.
    let err = within(q.run(TaskRequest::json(json!({"crash": true})).max_attempts(1)))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("exited"), "{err}");
    within(q.run(TaskRequest::json(json!({"prompt": "again"}))))
        .await
        .unwrap();
    let both = sleepers.pids();
    assert_eq!(both.len(), 2, "restarted once: {both:?}");
    assert!(
        !process_runs(first[0], "sleep"),
        "the first child's group outlived the restart"
    );
    assert!(process_runs(both[1], "sleep"));

    // SIGTERM: the worker exits only after the child's group is gone.
    worker.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(worker.wait_exit().success());
    assert!(
        !process_runs(both[1], "sleep"),
        "the child's group outlived the worker"
    );
}
