//! Request/response, streaming, fetch-later, priorities, backpressure and
//! bad input, against a real redis-server.

mod support;

use std::time::Duration;

use futures::StreamExt;
use rtq_core::{Client, Error, StreamEvent, TaskRequest, TaskState, WorkerConfig};
use serde_json::json;
use support::*;

#[tokio::test]
async fn run_returns_the_result_and_records_redis_times() {
    let redis = RedisServer::start();
    let (seen, _rx) = seen_channel();
    let w = TestWorker::start(&redis.url(), WorkerConfig::new("q"), seen).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("q").unwrap();
    let out =
        within(q.run(TaskRequest::json(json!({"prompt": "hi"})).timeout(Duration::from_secs(30))))
            .await
            .unwrap();
    assert_eq!(out.result["echo"]["prompt"], "hi");
    assert_eq!(out.result["worker"], w.id.as_str());
    assert_eq!(out.attempt, 1);

    let info = q.status(&out.id).await.unwrap();
    assert_eq!(info.state, TaskState::Done);
    // One clock: every time is Redis time, and the deadline is exactly
    // submit time + timeout on that clock.
    assert_eq!(info.deadline_ms - info.submitted_ms, 30_000);
    assert!(info.started_ms >= info.submitted_ms && info.finished_ms >= info.started_ms);
    w.stop().await;
}

#[tokio::test]
async fn stream_delivers_every_chunk_in_order_then_the_result() {
    let redis = RedisServer::start();
    let (seen, _rx) = seen_channel();
    let w = TestWorker::start(&redis.url(), WorkerConfig::new("q"), seen).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("q").unwrap();
    let mut stream = q
        .stream(TaskRequest::json(json!({"chunks": 50, "chunk": "t"})))
        .await
        .unwrap();
    let mut indexes = Vec::new();
    let mut text = String::new();
    let done = within(async {
        while let Some(item) = stream.next().await {
            match item.unwrap() {
                StreamEvent::Chunk(c) => {
                    indexes.push(c.index);
                    text.push_str(&c.text());
                }
                StreamEvent::Done(out) => return out,
                StreamEvent::Restarted { .. } => panic!("no restart expected"),
            }
        }
        panic!("stream ended without result")
    })
    .await;
    assert_eq!(indexes, (0..50).collect::<Vec<_>>());
    let expected: String = (0..50).map(|i| format!("t{i} ")).collect();
    assert_eq!(text, expected);
    assert_eq!(done.result["echo"]["chunks"], 50);
    w.stop().await;
}

#[tokio::test]
async fn submit_now_fetch_later_from_another_client() {
    let redis = RedisServer::start();
    let submitter = Client::connect(&redis.url()).await.unwrap();
    let q = submitter.queue("q").unwrap();
    // No worker yet: the task waits in the queue.
    let sub = q
        .submit(TaskRequest::json(json!({"chunks": 5, "chunk": "x"})))
        .await
        .unwrap();
    assert_eq!(sub.state, TaskState::Queued);
    assert_eq!(q.status(&sub.id).await.unwrap().state, TaskState::Queued);

    // Another process follows it before a worker exists, then one starts.
    let other = Client::connect(&redis.url()).await.unwrap();
    let oq = other.queue("q").unwrap();
    let follow = oq.follow(&sub.id, 0).await.unwrap();
    let (seen, _rx) = seen_channel();
    let w = TestWorker::start(&redis.url(), WorkerConfig::new("q"), seen).await;
    let (out, text) = within(follow.collect_text()).await.unwrap();
    assert_eq!(text, "x0 x1 x2 x3 x4 ");
    assert_eq!(out.result["echo"]["chunks"], 5);

    // After the end: wait() returns the stored result at once, and follow
    // from a position replays only the rest.
    let again = within(oq.wait(&sub.id, Some(Duration::from_secs(5))))
        .await
        .unwrap();
    assert_eq!(again.result, out.result);
    let (_, tail) = within(oq.follow(&sub.id, 3).await.unwrap().collect_text())
        .await
        .unwrap();
    assert_eq!(tail, "x3 x4 ");
    w.stop().await;
}

#[tokio::test]
async fn priorities_run_highest_first_and_fifo_within_a_priority() {
    let redis = RedisServer::start();
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("prio").unwrap();
    let admin = rtq_core::admin::Admin::new(&client);
    admin.pause("prio", true).await.unwrap();
    let mut ids = Vec::new();
    for (name, prio) in [("a", 0), ("b", 5), ("c", 0), ("d", 5), ("e", -3), ("f", 9)] {
        q.submit(TaskRequest::json(json!({})).id(name).priority(prio))
            .await
            .unwrap();
        ids.push(name);
    }
    let (seen, mut rx) = seen_channel();
    let w = TestWorker::start(&redis.url(), WorkerConfig::new("prio").slots(1), seen).await;
    admin.pause("prio", false).await.unwrap();
    let mut order = Vec::new();
    for _ in 0..6 {
        if let Seen::Started { id, .. } = next_seen(&mut rx, 20).await {
            order.push(id);
        }
    }
    assert_eq!(order, ["f", "b", "d", "a", "c", "e"]);
    w.stop().await;
}

#[tokio::test]
async fn a_full_queue_refuses_atomically() {
    let redis = RedisServer::start();
    let client = Client::connect(&redis.url()).await.unwrap();
    let admin = rtq_core::admin::Admin::new(&client);
    admin.set_max_depth("bp", 10).await.unwrap();
    let q = client.queue("bp").unwrap();
    // 40 concurrent submits race for 10 places: exactly 10 win.
    let results =
        futures::future::join_all((0..40).map(|i| q.submit(TaskRequest::json(json!({"i": i})))))
            .await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let full = results
        .iter()
        .filter(|r| matches!(r, Err(Error::QueueFull { max_depth: 10, .. })))
        .count();
    assert_eq!((ok, full), (10, 30));
    let err = q.submit(TaskRequest::json(json!(1))).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("queue bp is full: 10 pending, max depth 10"),
        "{err}"
    );
    assert!(err.is_retryable());
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_nothing_panics() {
    let redis = RedisServer::start();
    let client = Client::connect(&redis.url()).await.unwrap();
    assert!(matches!(
        client.queue("a{b}"),
        Err(Error::InvalidName { .. })
    ));
    assert!(matches!(client.queue(""), Err(Error::InvalidName { .. })));
    let q = client.queue("bad").unwrap();
    assert!(matches!(
        TaskRequest::parse("{\"unterminated"),
        Err(Error::InvalidInput(_))
    ));
    let huge = TaskRequest::json(json!({"blob": "x".repeat(1_100_000)}));
    let err = q.submit(huge).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::PayloadTooLarge {
                limit: 1_048_576,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("reference"), "{err}");
    // By reference it is fine.
    q.submit(TaskRequest::reference("s3://bucket/audio.flac"))
        .await
        .unwrap();
    let err = q
        .submit(TaskRequest::json(json!(1)).id("has space"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidName { .. }), "{err}");
    q.submit(TaskRequest::json(json!(1)).id("dup"))
        .await
        .unwrap();
    let err = q
        .submit(TaskRequest::json(json!(2)).id("dup"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Duplicate { .. }), "{err}");
    let err = q.status("nope").await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    let err = q.cancel("nope", "x").await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    assert!(q.wait("nope", None).await.is_err());
}

#[tokio::test]
async fn a_task_with_an_unknown_protocol_version_fails_with_a_reason() {
    let redis = RedisServer::start();
    let (seen, _rx) = seen_channel();
    let w = TestWorker::start(&redis.url(), WorkerConfig::new("v"), seen).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("v").unwrap();
    // Submit a normal task while paused, then rewrite its spec as a future
    // client would have written it.
    let admin = rtq_core::admin::Admin::new(&client);
    admin.pause("v", true).await.unwrap();
    let sub = q.submit(TaskRequest::json(json!(1))).await.unwrap();
    let mut conn = redis.conn();
    let _: () = redis::cmd("HSET")
        .arg(q.keys().task(&sub.id))
        .arg("spec")
        .arg(format!("{{\"v\":99,\"id\":\"{}\"}}", sub.id))
        .query(&mut conn)
        .unwrap();
    admin.pause("v", false).await.unwrap();
    let err = within(q.wait(&sub.id, None)).await.unwrap_err();
    assert!(err.to_string().contains("protocol version 99"), "{err}");
    w.stop().await;
}

#[tokio::test]
async fn wrong_password_and_unreachable_redis_are_clear_and_redacted() {
    let redis = RedisServer::start_with(rtq_testkit::Options {
        password: Some("s3cret-pw".into()),
        ..Default::default()
    });
    let wrong = format!("redis://:wrong-pw@127.0.0.1:{}/", redis.port());
    let err = Client::connect(&wrong).await.err().expect("must fail");
    let msg = err.to_string();
    assert!(
        matches!(err, Error::AuthenticationFailed { .. }),
        "a wrong password is not \"unreachable\": {msg}"
    );
    assert_eq!(
        err.connection_problem(),
        Some(rtq_core::ConnectionProblem::Authentication)
    );
    assert!(!err.is_retryable(), "{msg}");
    assert!(msg.contains("refused the credentials"), "{msg}");
    assert!(!msg.contains("wrong-pw") && msg.contains("***"), "{msg}");
    // The right password works.
    Client::connect(&redis.url()).await.unwrap();

    let port = redis.port();
    drop(redis);
    let err = Client::connect(&format!("redis://:pw@127.0.0.1:{port}/"))
        .await
        .err()
        .expect("must fail");
    assert!(err.is_connection_lost(), "{err}");
    assert!(!err.to_string().contains(":pw@"), "{err}");
}

#[tokio::test]
async fn a_retryable_failure_is_retried_and_a_fatal_one_reported() {
    let redis = RedisServer::start();
    let (seen, _rx) = seen_channel();
    let w = TestWorker::start(&redis.url(), WorkerConfig::new("f"), seen).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("f").unwrap();
    let err = within(q.run(TaskRequest::json(json!({"fail": "model said no"}))))
        .await
        .unwrap_err();
    match err {
        Error::Failed { reason, worker, .. } => {
            assert_eq!(reason, "model said no");
            assert_eq!(worker, w.id);
        }
        other => panic!("{other}"),
    }
    let err = within(
        q.run(TaskRequest::json(json!({"fail": "flaky", "retryable": true})).max_attempts(3)),
    )
    .await
    .unwrap_err();
    let Error::Failed { id, .. } = &err else {
        panic!("{err}")
    };
    let info = q.status(id).await.unwrap();
    assert_eq!(info.attempt, 3, "three attempts were made");
    assert_eq!(info.attempt_errors.len(), 3);
    let err = within(q.run(TaskRequest::json(json!({"panic": true}))))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("handler panicked"), "{err}");
    w.stop().await;
}
