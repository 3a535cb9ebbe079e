//! A handler that gives a task back unstarted (`HandlerError::not_started`),
//! the forced stop (`ForceStop`), and the time of a worker's `last_error`.
//! Real Redis, workers in the test's runtime.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rtq_core::admin::Admin;
use rtq_core::{
    async_trait, Client, Handler, HandlerError, Queue, TaskContext, TaskRequest, TaskState, Worker,
    WorkerConfig,
};
use serde_json::{json, Value};
use support::{wait_registered, RedisServer};

/// Gives every task back unstarted, counting the tasks it was handed.
struct Declines {
    handed: Arc<AtomicU64>,
}

#[async_trait]
impl Handler for Declines {
    async fn handle(&self, task: TaskContext) -> Result<Value, HandlerError> {
        self.handed.fetch_add(1, Ordering::SeqCst);
        if task.input().is_some_and(|i| i["send_first"] == true) {
            task.send("partial").await?;
        }
        Err(HandlerError::not_started("the model is not loaded here"))
    }
}

/// Answers with its worker's name; with `"fail"` in the input, fails.
struct Serves {
    name: String,
}

#[async_trait]
impl Handler for Serves {
    async fn handle(&self, task: TaskContext) -> Result<Value, HandlerError> {
        if let Some(why) = task.input().and_then(|i| i["fail"].as_str()) {
            return Err(HandlerError::fatal(why));
        }
        Ok(json!({"by": self.name}))
    }
}

/// Waits on its stop until the task is stopped (a long generation).
struct Endless {
    started: Arc<tokio::sync::Notify>,
}

#[async_trait]
impl Handler for Endless {
    async fn handle(&self, task: TaskContext) -> Result<Value, HandlerError> {
        self.started.notify_one();
        task.cancelled().await;
        Err(HandlerError::fatal("stopped"))
    }
}

/// Runs `worker` with `handler` until the returned sender fires (or is
/// dropped); the join handle ends when `run` returned.
fn spawn_run<H: Handler>(
    worker: Worker,
    handler: H,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), rtq_core::Error>>,
) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        worker
            .run(Arc::new(handler), async {
                let _ = rx.await;
            })
            .await
    });
    (tx, handle)
}

async fn connect(redis: &RedisServer, config: WorkerConfig) -> Worker {
    Worker::connect(&redis.url(), config).await.unwrap()
}

/// Polls `check` every 20 ms for up to 30 s.
async fn eventually<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..1500 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never happened: {what}");
}

async fn redis_now_ms(redis: &RedisServer) -> i64 {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let (s, us): (i64, i64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
    s * 1000 + us / 1000
}

async fn queue(redis: &RedisServer, name: &str) -> (Client, Queue) {
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue(name).unwrap();
    (client, q)
}

#[tokio::test]
async fn a_task_handed_back_unstarted_uses_no_attempt_and_runs_on_a_worker_that_can() {
    let redis = RedisServer::start();
    let (_client, q) = queue(&redis, "hb1").await;
    let handed = Arc::new(AtomicU64::new(0));
    let a = connect(&redis, WorkerConfig::new("hb1").worker_id("node-a")).await;
    let a_status = a.status();
    let (_stop_a, _a) = spawn_run(
        a,
        Declines {
            handed: Arc::clone(&handed),
        },
    );
    wait_registered(&redis.url(), "node-a").await;
    // One attempt only: a hand-back that used it would fail the task.
    let sub = q
        .submit(TaskRequest::json(json!({})).max_attempts(1))
        .await
        .unwrap();
    eventually("node-a was handed the task", || async {
        handed.load(Ordering::SeqCst) >= 1
    })
    .await;
    let b = connect(&redis, WorkerConfig::new("hb1").worker_id("node-b")).await;
    let (_stop_b, _b) = spawn_run(
        b,
        Serves {
            name: "node-b".into(),
        },
    );
    let out = tokio::time::timeout(Duration::from_secs(30), q.wait(&sub.id, None))
        .await
        .expect("finished")
        .expect("done, not failed");
    assert_eq!(out.result, json!({"by": "node-b"}));
    let info = q.status(&sub.id).await.unwrap();
    assert_eq!(info.state, TaskState::Done);
    assert_eq!(info.failures, 0, "the hand-back used no attempt: {info:?}");
    assert!(out.attempt >= 2, "handed out to node-a first: {out:?}");
    assert!(
        a_status
            .last_error()
            .contains("handed a task back unstarted: the model is not loaded here"),
        "{}",
        a_status.last_error()
    );
    assert!(a_status.last_error_at_ms().is_some());
}

#[tokio::test]
async fn a_task_every_worker_hands_back_moves_between_them_at_a_bounded_rate() {
    let redis = RedisServer::start();
    let (_client, q) = queue(&redis, "hb2").await;
    let handed = Arc::new(AtomicU64::new(0));
    let mut runs = Vec::new();
    for id in ["node-a", "node-b"] {
        // Beats every 50 ms: Redis reopens a worker's free slots at its
        // next beat, so without the hand-back pause the task would move
        // between the two about 40 times a second.
        let config = WorkerConfig::new("hb2")
            .worker_id(id)
            .lease(Duration::from_secs(1))
            .heartbeat_every(Duration::from_millis(50));
        let w = connect(&redis, config).await;
        runs.push(spawn_run(
            w,
            Declines {
                handed: Arc::clone(&handed),
            },
        ));
        wait_registered(&redis.url(), id).await;
    }
    let sub = q.submit(TaskRequest::json(json!({}))).await.unwrap();
    eventually("both workers handed the task back", || async {
        handed.load(Ordering::SeqCst) >= 2
    })
    .await;
    let before = handed.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let moves = handed.load(Ordering::SeqCst) - before;
    // Pauses of 0.5, 1, 2 s per worker: at most about 3 hand-outs each in
    // 3 s (an upper bound: a slow machine only makes fewer).
    assert!(
        moves <= 8,
        "{moves} hand-outs in 3 s: the hand-back loop is not paced"
    );
    let info = q.status(&sub.id).await.unwrap();
    assert_eq!(info.failures, 0, "{info:?}");
    assert!(
        matches!(info.state, TaskState::Queued | TaskState::Running),
        "{info:?}"
    );
}

#[tokio::test]
async fn a_handler_that_sent_output_cannot_hand_its_task_back_unstarted() {
    let redis = RedisServer::start();
    let (_client, q) = queue(&redis, "hb3").await;
    let w = connect(&redis, WorkerConfig::new("hb3").worker_id("node-a")).await;
    let (_stop, _run) = spawn_run(
        w,
        Declines {
            handed: Arc::default(),
        },
    );
    wait_registered(&redis.url(), "node-a").await;
    let sub = q
        .submit(TaskRequest::json(json!({"send_first": true})).max_attempts(1))
        .await
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(30), q.wait(&sub.id, None))
        .await
        .expect("finished")
        .expect_err("the attempt was used: its only attempt failed");
    assert!(err.to_string().contains("after sending output"), "{err}");
    assert_eq!(q.status(&sub.id).await.unwrap().state, TaskState::Failed);
}

#[tokio::test]
async fn a_forced_stop_hands_the_running_attempt_back_at_once() {
    let redis = RedisServer::start();
    let (_client, q) = queue(&redis, "hb4").await;
    // A lease of a minute and a drain of ten: only the forced hand-back
    // can requeue the task within this test's patience.
    let config = WorkerConfig::new("hb4")
        .worker_id("node-a")
        .lease(Duration::from_secs(60))
        .heartbeat_every(Duration::from_millis(200))
        .grace(Duration::from_secs(600));
    let w = connect(&redis, config).await;
    let force = w.force_stop();
    let started = Arc::new(tokio::sync::Notify::new());
    let (drain, run) = spawn_run(
        w,
        Endless {
            started: Arc::clone(&started),
        },
    );
    wait_registered(&redis.url(), "node-a").await;
    let sub = q
        .submit(TaskRequest::json(json!({})).max_attempts(3))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), started.notified())
        .await
        .expect("the handler started");
    let _ = drain.send(()); // the drain begins, and would wait 10 minutes
    let admin = Admin::new(&Client::connect(&redis.url()).await.unwrap());
    eventually("node-a drains", || async {
        admin
            .workers("hb4")
            .await
            .unwrap()
            .iter()
            .any(|w| w.field("state") == "draining")
    })
    .await;
    force.force();
    tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("run returned after the forced stop")
        .unwrap()
        .unwrap();
    let info = q.status(&sub.id).await.unwrap();
    assert_eq!(info.state, TaskState::Queued, "requeued at once: {info:?}");
    assert_eq!(info.failures, 1, "an interrupted attempt counts: {info:?}");
    assert!(
        info.attempt_errors[&1].contains("interrupted: worker node-a shut down"),
        "{:?}",
        info.attempt_errors
    );
    let b = connect(&redis, WorkerConfig::new("hb4").worker_id("node-b")).await;
    let (_stop_b, _b) = spawn_run(
        b,
        Serves {
            name: "node-b".into(),
        },
    );
    let out = tokio::time::timeout(Duration::from_secs(30), q.wait(&sub.id, None))
        .await
        .expect("finished")
        .unwrap();
    assert_eq!((out.attempt, out.result), (2, json!({"by": "node-b"})));
}

#[tokio::test]
async fn a_task_failure_is_published_with_its_time_on_the_redis_clock() {
    let redis = RedisServer::start();
    let (client, q) = queue(&redis, "hb5").await;
    let config = WorkerConfig::new("hb5")
        .worker_id("node-a")
        .heartbeat_every(Duration::from_millis(100));
    let w = connect(&redis, config).await;
    let (_stop, _run) = spawn_run(
        w,
        Serves {
            name: "node-a".into(),
        },
    );
    wait_registered(&redis.url(), "node-a").await;
    let before = redis_now_ms(&redis).await;
    let sub = q
        .submit(TaskRequest::json(json!({"fail": "bad input"})).max_attempts(1))
        .await
        .unwrap();
    let _ = q.wait(&sub.id, None).await;
    let admin = Admin::new(&client);
    eventually("the heartbeat publishes the failure", || async {
        admin.workers("hb5").await.unwrap()[0].field("last_error") == "bad input"
    })
    .await;
    let w = admin.workers("hb5").await.unwrap().remove(0);
    let after = redis_now_ms(&redis).await;
    let at = w.last_error_ms().expect("a time next to the error");
    // The same machine's clock as Redis's, converted with the offset the
    // heartbeat measured: within a second either way.
    assert!(
        at >= before - 1000 && at <= after + 1000,
        "{before} <= {at} <= {after}"
    );
    assert!(w.last_error_age_ms(after).is_some());
    // A task's failure stays, as history, beat after beat.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let w = admin.workers("hb5").await.unwrap().remove(0);
    assert_eq!(w.field("last_error"), "bad input");
    assert_eq!(w.last_error_ms(), Some(at));
}

#[tokio::test]
async fn a_redis_outage_s_error_is_cleared_once_reads_and_beats_succeed_again() {
    let mut redis = RedisServer::start();
    let config = WorkerConfig::new("hb6")
        .worker_id("node-a")
        .lease(Duration::from_secs(1));
    let w = connect(&redis, config).await;
    let status = w.status();
    let (_stop, _run) = spawn_run(
        w,
        Serves {
            name: "node-a".into(),
        },
    );
    wait_registered(&redis.url(), "node-a").await;
    redis.kill();
    eventually("the worker records the outage", || async {
        !status.last_error().is_empty()
    })
    .await;
    redis.restart();
    eventually("the error is cleared once Redis answers again", || async {
        status.last_error().is_empty()
    })
    .await;
    assert_eq!(status.last_error_at_ms(), None);
    let admin = Admin::new(&Client::connect(&redis.url()).await.unwrap());
    eventually("the heartbeat publishes no error", || async {
        admin
            .workers("hb6")
            .await
            .unwrap()
            .first()
            .is_some_and(|w| w.field("last_error").is_empty() && w.last_error_ms().is_none())
    })
    .await;
    // Still serving.
    let (_client, q) = queue(&redis, "hb6").await;
    let out = tokio::time::timeout(Duration::from_secs(30), q.run(TaskRequest::json(json!({}))))
        .await
        .expect("finished")
        .unwrap();
    assert_eq!(out.result, json!({"by": "node-a"}));
}

/// `kill -<sig>` to the Redis server (`-STOP` freezes it, `-CONT` thaws).
fn signal(redis: &RedisServer, sig: &str) {
    let pid = redis.pid().expect("redis runs");
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill runs")
        .success();
    assert!(ok, "kill {sig} {pid}");
}

#[tokio::test]
async fn a_forced_stop_does_not_wait_long_for_a_frozen_redis() {
    let redis = RedisServer::start();
    let (_client, q) = queue(&redis, "hb7").await;
    let config = WorkerConfig::new("hb7")
        .worker_id("node-a")
        .lease(Duration::from_secs(60))
        .heartbeat_every(Duration::from_millis(100))
        .grace(Duration::from_secs(600));
    let w = connect(&redis, config).await;
    let force = w.force_stop();
    let started = Arc::new(tokio::sync::Notify::new());
    let (_drain, run) = spawn_run(
        w,
        Endless {
            started: Arc::clone(&started),
        },
    );
    wait_registered(&redis.url(), "node-a").await;
    q.submit(TaskRequest::json(json!({}))).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), started.notified())
        .await
        .expect("the handler started");
    // Frozen: connections stay open, nothing answers (a beat in flight
    // and the hand-back would each wait out the 10 s response timeout).
    signal(&redis, "-STOP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = std::time::Instant::now();
    force.force();
    let returned = tokio::time::timeout(Duration::from_secs(60), run).await;
    let took = t0.elapsed();
    signal(&redis, "-CONT");
    returned.expect("run returned").unwrap().unwrap();
    // Bounded by the handler wait (1 s) and FORCED_LEAVE_TIMEOUT (2 s);
    // without the bound a frozen Redis held the exit for 10 s or more.
    assert!(
        took < rtq_core::FORCED_LEAVE_TIMEOUT + Duration::from_secs(6),
        "the forced stop waited {took:?} for a frozen Redis"
    );
}
