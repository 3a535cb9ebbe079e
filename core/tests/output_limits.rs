//! A running attempt's output against its limits and a stalled Redis: an
//! output past the caps fails the task (never "done" with its output cut
//! short), a Redis frozen mid-stream neither loses chunks nor leaves the
//! task running forever, and a handler that produces faster than Redis
//! takes is slowed down (its queued output is bounded) instead of filling
//! the worker's memory.

mod support;

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rtq_core::{
    Client, Error, Handler, HandlerError, Outcome, TaskContext, TaskRequest, TaskState, Worker,
    WorkerConfig,
};
use serde_json::{json, Value};
use support::*;

/// Sends `input.chunks` chunks of 9 bytes as fast as `send` lets it (or,
/// with `input.pace` = k, pausing 1 ms after every k chunks), counting
/// them in `sent`, then returns `{"sent": n}`.
struct Firehose {
    sent: Arc<AtomicU64>,
}

#[async_trait]
impl Handler for Firehose {
    async fn handle(&self, task: TaskContext) -> Result<Value, HandlerError> {
        let input = task.input().cloned().unwrap_or(Value::Null);
        let n = input["chunks"].as_u64().unwrap_or(0);
        let pace = input["pace"].as_u64().unwrap_or(0);
        for i in 0..n {
            task.send(format!("{:08} ", i % 100_000_000)).await?;
            self.sent.fetch_add(1, Ordering::Relaxed);
            if pace > 0 && i % pace == pace - 1 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        Ok(json!({ "sent": n }))
    }
}

/// Runs a worker in the background with the handler `make` builds around
/// the counter of chunks sent, which it returns.
async fn start_worker<H: Handler>(
    url: &str,
    config: WorkerConfig,
    make: impl FnOnce(Arc<AtomicU64>) -> H,
) -> Arc<AtomicU64> {
    let sent = Arc::new(AtomicU64::new(0));
    let worker = Worker::connect(url, config).await.expect("worker connects");
    let id = worker.id().to_string();
    let handler = Arc::new(make(Arc::clone(&sent)));
    tokio::spawn(async move {
        let _ = worker.run(handler, std::future::pending::<()>()).await;
    });
    wait_registered(url, &id).await;
    sent
}

/// Runs a worker with the `Firehose` handler in the background.
async fn start_firehose(url: &str, config: WorkerConfig) -> Arc<AtomicU64> {
    start_worker(url, config, |sent| Firehose { sent }).await
}

fn signal(redis: &RedisServer, sig: &str) {
    let pid = redis.pid().expect("redis runs");
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill runs")
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// Waits (up to `secs`) for the task to end; its final output.
async fn outcome(client: &Client, queue: &str, id: &str, secs: u64) -> Result<(), Error> {
    let q = client.queue(queue).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let status = q.status(id).await?;
        if status.state.is_terminal() {
            return match (status.state, status.outcome) {
                (TaskState::Done, _) => Ok(()),
                (state, Some(Outcome::Ended { message, .. })) => {
                    Err(Error::InvalidInput(format!("{state:?}: {message}")))
                }
                (state, _) => Err(Error::InvalidInput(format!("{state:?}"))),
            };
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "task {id} still {:?} after {secs} s",
            status.state
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn chunk_count(client: &Client, queue: &str, id: &str) -> u64 {
    client
        .queue(queue)
        .unwrap()
        .status(id)
        .await
        .unwrap()
        .chunks
}

#[tokio::test]
async fn output_past_the_chunk_cap_fails_the_task_instead_of_reporting_it_done() {
    let redis = RedisServer::start();
    start_firehose(&redis.url(), WorkerConfig::new("cap")).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("cap").unwrap();
    let id = q
        .submit(TaskRequest::json(json!({ "chunks": 150_000 })))
        .await
        .unwrap()
        .id;
    let ended = outcome(&client, "cap", &id, 120).await;
    let message = ended
        .expect_err("an output cut short must not be done")
        .to_string();
    assert!(
        message.contains("Failed") && message.contains("at most 100000 chunks"),
        "{message}"
    );
    assert!(chunk_count(&client, "cap", &id).await <= 100_000);
}

#[tokio::test]
async fn a_redis_frozen_past_the_reply_timeout_mid_stream_still_ends_the_task() {
    // Writes in flight when Redis froze time out (their fate unknown);
    // the attempt then passes the chunk cap. Before, the writer's count
    // of what Redis held stayed behind and every complete was answered
    // ORDER, forever (the task stayed running, the worker spun), or the
    // task ended "done" with its output cut short.
    let redis = RedisServer::start();
    let sent = start_firehose(&redis.url(), WorkerConfig::new("freeze")).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("freeze").unwrap();
    let id = q
        .submit(TaskRequest::json(json!({ "chunks": 100_050 })))
        .await
        .unwrap()
        .id;
    eventually("the handler is streaming", || {
        let sent = Arc::clone(&sent);
        async move { sent.load(Ordering::Relaxed) > 1_000 }
    })
    .await;
    signal(&redis, "-STOP");
    // Past the connection's 10 s reply timeout.
    tokio::time::sleep(Duration::from_secs(11)).await;
    signal(&redis, "-CONT");
    let ended = outcome(&client, "freeze", &id, 90).await;
    let message = ended
        .expect_err("an output cut short must not be done")
        .to_string();
    assert!(message.contains("at most 100000 chunks"), "{message}");
    assert!(chunk_count(&client, "freeze", &id).await <= 100_000);
}

#[tokio::test]
async fn a_handler_faster_than_a_frozen_redis_waits_once_its_output_budget_is_spent() {
    let redis = RedisServer::start();
    let budget = 256 << 10;
    let sent = start_firehose(
        &redis.url(),
        WorkerConfig::new("budget").max_buffered_output_bytes(budget),
    )
    .await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("budget").unwrap();
    let id = q
        // About 20 chunks per ms: Redis takes them as they come, so the
        // stream lasts 3 s or more and spans the freeze.
        .submit(TaskRequest::json(json!({ "chunks": 60_000, "pace": 20 })))
        .await
        .unwrap()
        .id;
    eventually("the handler is streaming", || {
        let sent = Arc::clone(&sent);
        async move { sent.load(Ordering::Relaxed) > 100 }
    })
    .await;
    signal(&redis, "-STOP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let at_freeze = sent.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = sent.load(Ordering::Relaxed) - at_freeze;
    signal(&redis, "-CONT");
    // Each 9-byte chunk counts 73 bytes: 256 KiB holds about 3,600.
    assert!(
        during < 4_000,
        "the handler queued {during} chunks while Redis was frozen"
    );
    outcome(&client, "budget", &id, 120)
        .await
        .expect("the task finishes once Redis is back");
    assert_eq!(chunk_count(&client, "budget", &id).await, 60_000);
    assert_eq!(sent.load(Ordering::Relaxed), 60_000);
}

/// Sends `input.chunks` chunks, one every `input.every_ms` ms.
struct Paced {
    sent: Arc<AtomicU64>,
}

#[async_trait]
impl Handler for Paced {
    async fn handle(&self, task: TaskContext) -> Result<Value, HandlerError> {
        let input = task.input().cloned().unwrap_or(Value::Null);
        let n = input["chunks"].as_u64().unwrap_or(0);
        let every = input["every_ms"].as_u64().unwrap_or(10);
        for i in 0..n {
            task.send(format!("{i} ")).await?;
            self.sent.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(every)).await;
        }
        Ok(json!({ "sent": n }))
    }
}

/// A Redis that refuses writes for 2 s (READONLY: a failover in progress,
/// or MISCONF after a failed BGSAVE) is a passing state: the writer
/// retries until it takes the chunks, and the task ends done (a first cut
/// of the refusal limit failed it after 3 such errors).
#[tokio::test]
async fn a_redis_refusing_writes_for_two_seconds_does_not_fail_a_streaming_task() {
    let redis = RedisServer::start();
    let sent = start_worker(&redis.url(), WorkerConfig::new("ro"), |sent| Paced { sent }).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("ro").unwrap();
    let id = q
        .submit(TaskRequest::json(json!({ "chunks": 300, "every_ms": 10 })))
        .await
        .unwrap()
        .id;
    eventually("streaming", || {
        let sent = Arc::clone(&sent);
        async move { sent.load(Ordering::Relaxed) > 20 }
    })
    .await;
    // Writes refused (READONLY) for 2 s: a replica of a master that is not
    // there keeps its data, then becomes a master again.
    let mut c = redis.conn();
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(1)
        .query(&mut c)
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query(&mut c)
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let info = loop {
        let info = q.status(&id).await.unwrap();
        if info.state.is_terminal() {
            break info;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still {:?}",
            info.state
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let why = match &info.outcome {
        Some(Outcome::Ended { message, .. }) => message.clone(),
        _ => String::new(),
    };
    assert_eq!(
        info.state,
        TaskState::Done,
        "attempt {}: {why}",
        info.attempt
    );
    assert_eq!(info.chunks, 300);
}

/// Redis holds fewer chunks than the writer saw acknowledged (a failover
/// to a replica that lagged: acknowledged writes lost). Simulated by
/// lowering the task's `nc` as such a replica would hold it. Before, every
/// chunk write was answered ORDER, resent at round-trip speed, and the
/// handler blocked in send() for ever under a live heartbeat; now the
/// attempt stops as a retryable failure and the next attempt writes the
/// output whole.
#[tokio::test]
async fn redis_losing_acknowledged_chunks_neither_spins_nor_hangs_the_task() {
    let redis = RedisServer::start();
    let sent = start_worker(
        &redis.url(),
        WorkerConfig::new("lost").max_buffered_output_bytes(256 << 10),
        |sent| Paced { sent },
    )
    .await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("lost").unwrap();
    // 5,000 chunks of ~6 bytes (70 budget bytes each: ~3,700 fit).
    let id = q
        .submit(TaskRequest::json(json!({ "chunks": 5_000, "every_ms": 0 })))
        .await
        .unwrap()
        .id;
    eventually("streaming", || {
        let sent = Arc::clone(&sent);
        async move { sent.load(Ordering::Relaxed) > 200 }
    })
    .await;
    let mut c = redis.conn();
    let _: () = redis::cmd("HSET")
        .arg(q.keys().task(&id))
        .arg("nc")
        .arg(10)
        .query(&mut c)
        .unwrap();
    // Attempt 1 stops at once as a retryable failure (before: it was
    // resent at round-trip speed, its handler blocked for ever).
    eventually("attempt 1 is given up", || {
        let q = q.clone();
        let id = id.clone();
        async move {
            let info = q.status(&id).await.unwrap();
            info.attempt_errors.contains_key(&1)
        }
    })
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let info = q.status(&id).await.unwrap();
        if info.state.is_terminal() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "task still {:?} after 60 s; handler blocked at {} chunks sent",
            info.state,
            sent.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let info = q.status(&id).await.unwrap();
    assert_eq!(info.state, TaskState::Done, "{:?}", info.outcome);
    assert_eq!((info.attempt, info.chunks), (2, 5_000));
    assert!(
        info.attempt_errors[&1].contains("lost"),
        "{:?}",
        info.attempt_errors
    );
}

#[test]
fn an_output_budget_outside_its_bounds_is_refused() {
    for bytes in [0, 1000, (64 << 20) + 1] {
        let err = WorkerConfig::new("q")
            .max_buffered_output_bytes(bytes)
            .validate()
            .expect_err("refused");
        assert!(
            err.to_string().contains("max_buffered_output_bytes"),
            "{err}"
        );
    }
    WorkerConfig::new("q")
        .max_buffered_output_bytes(256 << 10)
        .validate()
        .expect("the smallest budget is allowed");
}
