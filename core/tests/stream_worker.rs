//! The worker on a `stream` queue (protocol v3, stage 2): `Worker::run`
//! reads the queue's mode and serves it with `rtq3`'s functions. Tasks are
//! submitted with `functions::v3::submit` and results read from the
//! markers (`m:<id>`) and the output lists (`o:<id>:<attempt>`).

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use rtq_core::functions::v3::{self, Admission, Cancelled, Marker, NewTask};
use rtq_core::keys::QueueKeys;
use rtq_core::protocol::PROTOCOL_VERSION;
use rtq_core::{
    async_trait, Handler, HandlerError, StopReason, TaskContext, Worker, WorkerConfig, WorkerStatus,
};
use serde_json::{json, Value};
use support::RedisServer;
use tokio::sync::{oneshot, Notify};

/// What the probe handler saw.
#[derive(Default)]
struct Log {
    /// (task id, attempt, worker) of every start, in order.
    starts: Mutex<Vec<(String, u64, String)>>,
    /// (task id, why) of every stop a handler saw.
    stops: Mutex<Vec<(String, StopReason)>>,
    running: AtomicUsize,
    max_running: AtomicUsize,
}

impl Log {
    fn starts(&self) -> Vec<(String, u64, String)> {
        self.starts.lock().unwrap().clone()
    }
    fn started(&self, id: &str) -> bool {
        self.starts().iter().any(|(i, _, _)| i == id)
    }
    fn stops(&self) -> Vec<(String, StopReason)> {
        self.stops.lock().unwrap().clone()
    }
}

/// A handler driven by its input: `{"decline_first": true, "early": n
/// (chunks sent before any hold), "chunks": n, "sleep_ms": d, "hold":
/// true, "hold_on": "<worker>", "fail": "why", "retryable": true,
/// "fail_until": k}`. `hold` waits for `release` or the stop; `fail_until`
/// fails retryably while the attempt is below k.
struct Probe {
    worker: String,
    log: Arc<Log>,
    release: Arc<Notify>,
}

#[async_trait]
impl Handler for Probe {
    async fn handle(&self, task: TaskContext) -> Result<Value, HandlerError> {
        let input = task.input().cloned().unwrap_or(Value::Null);
        let log = &self.log;
        log.starts.lock().unwrap().push((
            task.id().to_string(),
            task.attempt(),
            self.worker.clone(),
        ));
        let now = log.running.fetch_add(1, Ordering::SeqCst) + 1;
        log.max_running.fetch_max(now, Ordering::SeqCst);
        let out = self.work(&task, &input).await;
        log.running.fetch_sub(1, Ordering::SeqCst);
        if let Some(reason) = task.stop_reason() {
            log.stops
                .lock()
                .unwrap()
                .push((task.id().to_string(), reason));
        }
        out
    }
}

impl Probe {
    async fn work(&self, task: &TaskContext, input: &Value) -> Result<Value, HandlerError> {
        let starts = self
            .log
            .starts()
            .iter()
            .filter(|(id, _, _)| id == task.id())
            .count();
        if input["decline_first"].as_bool() == Some(true) && starts == 1 {
            return Err(HandlerError::not_started("the model is not loaded yet"));
        }
        for i in 0..input["early"].as_u64().unwrap_or(0) {
            task.send(format!("early{i} ")).await?;
        }
        let hold = input["hold"].as_bool() == Some(true)
            || input["hold_on"].as_str() == Some(self.worker.as_str());
        if hold {
            tokio::select! {
                _ = self.release.notified() => {}
                _ = task.cancelled() => return Err(HandlerError::fatal("stopped")),
            }
        }
        if let Some(ms) = input["sleep_ms"].as_u64() {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
                _ = task.cancelled() => return Err(HandlerError::fatal("stopped")),
            }
        }
        for i in 0..input["chunks"].as_u64().unwrap_or(0) {
            task.send(format!("tok{i} ")).await?;
        }
        if let Some(k) = input["fail_until"].as_u64() {
            if task.attempt() < k {
                return Err(HandlerError::retryable(format!(
                    "flaky on attempt {}",
                    task.attempt()
                )));
            }
        }
        if let Some(why) = input["fail"].as_str() {
            return Err(if input["retryable"].as_bool() == Some(true) {
                HandlerError::retryable(why)
            } else {
                HandlerError::fatal(why)
            });
        }
        Ok(json!({"echo": input, "attempt": task.attempt(), "worker": self.worker}))
    }
}

/// A stream queue on a fresh server.
struct Setup {
    redis: RedisServer,
    url: String,
    conn: MultiplexedConnection,
    keys: QueueKeys,
}

async fn setup(bands: u8) -> Setup {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut conn = support::patient_conn(&url).await;
    let keys = QueueKeys::new("sq").unwrap();
    v3::load(&mut conn).await.unwrap();
    v3::create(&mut conn, &keys, bands, 0).await.unwrap();
    Setup {
        redis,
        url,
        conn,
        keys,
    }
}

impl Setup {
    async fn submit_with(&mut self, id: &str, band: u8, input: Value, deadline_ms: u64, max: u32) {
        let spec = json!({"v": PROTOCOL_VERSION, "id": id, "input": input});
        let task = NewTask {
            id: id.into(),
            band,
            spec: serde_json::to_vec(&spec).unwrap(),
            reply: String::new(),
            deadline_ms,
            max_attempts: max,
            retention_ms: 600_000,
        };
        let out = v3::submit(&mut self.conn, &self.keys, &[task])
            .await
            .unwrap();
        assert!(matches!(out[0], Admission::Added { .. }), "{out:?}");
    }

    async fn submit(&mut self, id: &str, band: u8, input: Value) {
        self.submit_with(id, band, input, 0, 3).await;
    }

    async fn marker(&mut self, id: &str) -> Option<Marker> {
        let raw: Option<Vec<u8>> = redis::cmd("GET")
            .arg(v3::marker_key(&self.keys, id))
            .query_async(&mut self.conn)
            .await
            .unwrap();
        raw.and_then(|r| Marker::parse(&r))
    }

    /// Waits for the task's ending: (state, attempt, payload).
    async fn ended(&mut self, id: &str) -> (String, u64, String) {
        let started = Instant::now();
        loop {
            if let Some(Marker::Ended {
                state,
                attempt,
                payload,
                ..
            }) = self.marker(id).await
            {
                return (state, attempt, String::from_utf8(payload).unwrap());
            }
            assert!(
                started.elapsed() < support::PATIENCE,
                "task {id} never ended"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn chunks(&mut self, id: &str, attempt: u64) -> Vec<String> {
        redis::cmd("LRANGE")
            .arg(v3::output_key(&self.keys, id, attempt))
            .arg(0)
            .arg(-1)
            .query_async(&mut self.conn)
            .await
            .unwrap()
    }

    async fn redis_ms(&mut self) -> u64 {
        let (s, us): (u64, u64) = redis::cmd("TIME")
            .query_async(&mut self.conn)
            .await
            .unwrap();
        s * 1000 + us / 1000
    }

    async fn is_live(&mut self, worker: &str) -> bool {
        let score: Option<f64> = redis::cmd("ZSCORE")
            .arg(v3::live_key(&self.keys))
            .arg(worker)
            .query_async(&mut self.conn)
            .await
            .unwrap();
        score.is_some()
    }

    fn config(&self, worker: &str) -> WorkerConfig {
        WorkerConfig::new("sq")
            .worker_id(worker)
            .grace(Duration::from_secs(5))
            .cancel_grace(Duration::from_millis(500))
    }

    /// Starts a worker in the test's runtime and waits until it is live.
    async fn start(&mut self, config: WorkerConfig, log: &Arc<Log>) -> Running {
        let worker = Worker::connect(&self.url, config).await.unwrap();
        let id = worker.id().to_string();
        let status = worker.status();
        let force = worker.force_stop();
        let handler = Arc::new(Probe {
            worker: id.clone(),
            log: Arc::clone(log),
            release: Arc::new(Notify::new()),
        });
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            worker
                .run(handler, async {
                    let _ = rx.await;
                })
                .await
        });
        let started = Instant::now();
        while !self.is_live(&id).await {
            assert!(started.elapsed() < support::PATIENCE, "worker never live");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Running {
            id,
            status,
            force,
            stop: Some(tx),
            handle,
        }
    }
}

struct Running {
    id: String,
    status: Arc<WorkerStatus>,
    force: rtq_core::ForceStop,
    stop: Option<oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<Result<(), rtq_core::Error>>,
}

impl Running {
    /// Graceful stop; returns how long it took.
    async fn stop(mut self) -> Duration {
        let t = Instant::now();
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        support::within(self.handle)
            .await
            .unwrap()
            .expect("the worker stops cleanly");
        t.elapsed()
    }
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(
            started.elapsed() < support::PATIENCE,
            "still not true: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn tasks_submitted_before_and_after_the_start_end_done_with_their_chunks_in_order() {
    let mut s = setup(1).await;
    for i in 0..3 {
        s.submit(&format!("pre{i}"), 0, json!({"chunks": 4, "n": i}))
            .await;
    }
    let log = Arc::new(Log::default());
    let w = s.start(s.config("w1").slots(2), &log).await;
    for i in 0..3 {
        s.submit(&format!("post{i}"), 0, json!({"chunks": 4, "n": i}))
            .await;
    }
    for id in ["pre0", "pre1", "pre2", "post0", "post1", "post2"] {
        let (state, attempt, payload) = s.ended(id).await;
        assert_eq!((state.as_str(), attempt), ("done", 1), "{id}: {payload}");
        let result: Value = serde_json::from_str(&payload).unwrap();
        assert_eq!(result["worker"], "w1");
        assert_eq!(result["echo"]["chunks"], 4);
        assert_eq!(
            s.chunks(id, 1).await,
            vec!["tok0 ", "tok1 ", "tok2 ", "tok3 "],
            "{id}"
        );
    }
    assert_eq!(w.status.done.load(Ordering::Relaxed), 6);
    assert!(w.status.redis_ok.load(Ordering::Relaxed));
    let id = w.id.clone();
    w.stop().await;
    assert!(
        !s.is_live(&id).await,
        "a stopped worker leaves the live set"
    );
}

#[tokio::test]
async fn never_more_attempts_run_than_the_slots() {
    let mut s = setup(1).await;
    for i in 0..10 {
        s.submit(&format!("t{i}"), 0, json!({"sleep_ms": 20})).await;
    }
    let log = Arc::new(Log::default());
    let w = s.start(s.config("w1").slots(2), &log).await;
    for i in 10..20 {
        s.submit(&format!("t{i}"), 0, json!({"sleep_ms": 20})).await;
    }
    for i in 0..20 {
        let (state, attempt, _) = s.ended(&format!("t{i}")).await;
        assert_eq!((state.as_str(), attempt), ("done", 1));
    }
    let max = log.max_running.load(Ordering::SeqCst);
    assert!(max <= 2, "{max} attempts ran at once on 2 slots");
    assert_eq!(max, 2, "both slots were used");
    assert_eq!(log.starts().len(), 20, "each task ran once");
    w.stop().await;
}

#[tokio::test]
async fn band_0_runs_before_band_2() {
    let mut s = setup(3).await;
    s.submit("low1", 2, json!({})).await;
    s.submit("low2", 2, json!({})).await;
    s.submit("high1", 0, json!({})).await;
    s.submit("high2", 0, json!({})).await;
    let log = Arc::new(Log::default());
    let w = s.start(s.config("w1").slots(1), &log).await;
    for id in ["low1", "low2", "high1", "high2"] {
        assert_eq!(s.ended(id).await.0, "done");
    }
    let order: Vec<String> = log.starts().into_iter().map(|(id, _, _)| id).collect();
    assert_eq!(order, vec!["high1", "high2", "low1", "low2"]);
    w.stop().await;
}

#[tokio::test]
async fn a_retryable_error_runs_another_attempt_and_a_fatal_one_fails_with_its_message() {
    let mut s = setup(1).await;
    s.submit("flaky", 0, json!({"fail_until": 2, "chunks": 1}))
        .await;
    s.submit("bad", 0, json!({"fail": "bad input"})).await;
    s.submit_with(
        "spent",
        0,
        json!({"fail": "again", "retryable": true}),
        0,
        2,
    )
    .await;
    let log = Arc::new(Log::default());
    let w = s.start(s.config("w1").slots(2), &log).await;
    let (state, attempt, payload) = s.ended("flaky").await;
    assert_eq!((state.as_str(), attempt), ("done", 2), "{payload}");
    assert_eq!(s.chunks("flaky", 2).await, vec!["tok0 "]);
    assert_eq!(
        s.ended("bad").await,
        ("failed".into(), 1, "bad input".into())
    );
    assert_eq!(
        s.ended("spent").await,
        ("failed".into(), 2, "again".into()),
        "a retryable error on the last attempt fails the task"
    );
    until("failures counted", || {
        w.status.failed.load(Ordering::Relaxed) == 4
    })
    .await;
    assert_eq!(w.status.done.load(Ordering::Relaxed), 1);
    w.stop().await;
}

#[tokio::test]
async fn a_cancel_stops_the_running_handler_and_the_task_ends_cancelled() {
    let mut s = setup(1).await;
    s.submit("long", 0, json!({"hold": true})).await;
    let log = Arc::new(Log::default());
    let w = s.start(s.config("w1"), &log).await;
    until("the task started", || log.started("long")).await;
    let out = v3::cancel(&mut s.conn, &s.keys, "long", "user asked")
        .await
        .unwrap();
    assert_eq!(out, Cancelled::Ok(Some("w1".into())));
    until("the handler saw the stop", || !log.stops().is_empty()).await;
    assert_eq!(
        log.stops(),
        vec![(
            "long".to_string(),
            StopReason::Cancelled {
                reason: "user asked".into()
            }
        )]
    );
    let (state, attempt, payload) = s.ended("long").await;
    assert_eq!(
        (state.as_str(), attempt, payload.as_str()),
        ("cancelled", 1, "user asked")
    );
    until("the slot is free again", || {
        w.status.busy.load(Ordering::Relaxed) == 0
    })
    .await;
    // The worker goes on serving.
    s.submit("next", 0, json!({})).await;
    assert_eq!(s.ended("next").await.0, "done");
    w.stop().await;
}

#[tokio::test]
async fn a_crashed_worker_s_task_is_taken_over_after_its_lease() {
    let mut s = setup(1).await;
    s.submit("t", 0, json!({"hold_on": "dead", "chunks": 2}))
        .await;
    let lease = Duration::from_millis(600);
    // The first worker runs in a runtime of its own, torn down without a
    // goodbye (what kill -9 looks like from Redis).
    let log = Arc::new(Log::default());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (url, config, log1) = (
        s.url.clone(),
        s.config("dead").lease(lease),
        Arc::clone(&log),
    );
    runtime.spawn(async move {
        let worker = Worker::connect(&url, config).await.unwrap();
        let handler = Arc::new(Probe {
            worker: "dead".into(),
            log: log1,
            release: Arc::new(Notify::new()),
        });
        let _ = worker.run(handler, std::future::pending()).await;
    });
    until("the first worker started the task", || log.started("t")).await;
    std::thread::spawn(move || runtime.shutdown_timeout(Duration::from_secs(10)))
        .join()
        .unwrap();
    assert!(s
        .marker("t")
        .await
        .is_some_and(|m| matches!(m, Marker::Place { .. })));
    let w = s.start(s.config("alive").lease(lease), &log).await;
    let (state, attempt, payload) = s.ended("t").await;
    assert_eq!((state.as_str(), attempt), ("done", 2), "{payload}");
    assert_eq!(
        log.starts(),
        vec![
            ("t".to_string(), 1, "dead".to_string()),
            ("t".to_string(), 2, "alive".to_string())
        ]
    );
    assert_eq!(s.chunks("t", 2).await, vec!["tok0 ", "tok1 "]);
    w.stop().await;
}

#[tokio::test]
async fn a_graceful_stop_hands_back_what_outlasts_the_grace_and_another_worker_finishes_it() {
    let mut s = setup(1).await;
    s.submit("slow", 0, json!({"hold_on": "first", "chunks": 1}))
        .await;
    let log = Arc::new(Log::default());
    let first = s
        .start(s.config("first").grace(Duration::from_millis(300)), &log)
        .await;
    until("the task started", || log.started("slow")).await;
    let took = first.stop().await;
    assert!(took < Duration::from_secs(4), "the drain took {took:?}");
    assert_eq!(
        log.stops(),
        vec![("slow".to_string(), StopReason::Shutdown)]
    );
    assert!(
        matches!(s.marker("slow").await, Some(Marker::Place { .. })),
        "handed back to the queue, not ended"
    );
    assert!(!s.is_live("first").await);
    let second = s.start(s.config("second"), &log).await;
    let (state, attempt, _) = s.ended("slow").await;
    assert_eq!(
        (state.as_str(), attempt),
        ("done", 1),
        "a hand-back uses no attempt"
    );
    assert_eq!(s.chunks("slow", 1).await, vec!["tok0 "]);
    second.stop().await;
}

/// An attempt stopped by the drain after it sent chunks is not handed
/// back under its own number (a follower holding its chunks would splice
/// the next run's onto them): it uses an attempt, its output goes, and the
/// next run is attempt 2 from chunk 0.
#[tokio::test]
async fn a_drained_attempt_that_sent_chunks_uses_its_attempt() {
    let mut s = setup(1).await;
    s.submit_with("talker", 0, json!({"hold_on": "first", "early": 1}), 0, 3)
        .await;
    let log = Arc::new(Log::default());
    let first = s
        .start(s.config("first").grace(Duration::from_millis(300)), &log)
        .await;
    let mut stored = Vec::new();
    for _ in 0..200 {
        stored = s.chunks("talker", 1).await;
        if !stored.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stored, vec!["early0 "]);
    first.stop().await;
    assert!(
        s.chunks("talker", 1).await.is_empty(),
        "the void attempt's output is deleted"
    );
    let second = s.start(s.config("second"), &log).await;
    let (state, attempt, _) = s.ended("talker").await;
    assert_eq!((state.as_str(), attempt), ("done", 2));
    assert_eq!(s.chunks("talker", 2).await, vec!["early0 "]);
    second.stop().await;
}

#[tokio::test]
async fn a_forced_stop_hands_back_at_once() {
    let mut s = setup(1).await;
    s.submit("slow", 0, json!({"hold_on": "first"})).await;
    let log = Arc::new(Log::default());
    let first = s.start(s.config("first"), &log).await;
    until("the task started", || log.started("slow")).await;
    let t = Instant::now();
    first.force.force();
    support::within(first.handle).await.unwrap().unwrap();
    // At most a second for the handler and two for Redis; below the 5 s
    // grace a drain would have waited (margin for a busy 2-core machine).
    assert!(
        t.elapsed() < Duration::from_millis(4500),
        "{:?}",
        t.elapsed()
    );
    assert!(matches!(s.marker("slow").await, Some(Marker::Place { .. })));
    let second = s.start(s.config("second"), &log).await;
    assert_eq!(s.ended("slow").await.0, "done");
    second.stop().await;
}

#[tokio::test]
async fn a_delivery_past_its_deadline_expires_without_running_and_a_running_one_is_stopped() {
    let mut s = setup(1).await;
    let now = s.redis_ms().await;
    s.submit_with("late", 0, json!({}), now - 1, 3).await;
    s.submit_with("slow", 0, json!({"hold": true}), now + 400, 3)
        .await;
    let log = Arc::new(Log::default());
    let w = s.start(s.config("w1").slots(2), &log).await;
    let (state, attempt, payload) = s.ended("late").await;
    assert_eq!(state, "expired", "{payload}");
    assert_eq!(attempt, 1, "{payload}");
    let (state, _, payload) = s.ended("slow").await;
    assert_eq!(state, "expired", "{payload}");
    until("the handler saw the deadline", || !log.stops().is_empty()).await;
    assert_eq!(
        log.stops(),
        vec![("slow".to_string(), StopReason::Deadline)]
    );
    let ran: Vec<String> = log.starts().into_iter().map(|(id, _, _)| id).collect();
    assert_eq!(ran, vec!["slow"], "the late task never ran");
    w.stop().await;
}

#[tokio::test]
async fn a_lost_complete_reply_is_sent_again_and_the_task_ends_once() {
    let mut s = setup(1).await;
    let proxy = rtq_testkit::Proxy::start(s.redis.port()).await;
    s.url = proxy.url();
    let log = Arc::new(Log::default());
    let w = s.start(s.config("w1"), &log).await;
    proxy.cut_reply_to(b"rtq3_complete");
    s.submit("t", 0, json!({"chunks": 3})).await;
    assert_eq!(s.ended("t").await.0, "done");
    until("the worker counted it", || {
        w.status.done.load(Ordering::Relaxed) == 1
    })
    .await;
    assert_eq!(proxy.cuts(), 1, "the reply was cut");
    assert_eq!(s.chunks("t", 1).await, vec!["tok0 ", "tok1 ", "tok2 "]);
    assert_eq!(log.starts().len(), 1);
    w.stop().await;
}

#[tokio::test]
async fn intake_switched_off_takes_nothing_until_switched_on() {
    let mut s = setup(1).await;
    let log = Arc::new(Log::default());
    let worker = Worker::connect(&s.url, s.config("w1")).await.unwrap();
    let switch = worker.intake();
    switch.set(false);
    let handler = Arc::new(Probe {
        worker: "w1".into(),
        log: Arc::clone(&log),
        release: Arc::new(Notify::new()),
    });
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(worker.run(handler, async {
        let _ = rx.await;
    }));
    s.submit("t", 0, json!({})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(log.starts().is_empty(), "intake is off");
    switch.set(true);
    assert_eq!(s.ended("t").await.0, "done");
    let _ = tx.send(());
    support::within(handle).await.unwrap().unwrap();
}

/// Calls of `command` so far (`INFO commandstats`).
async fn calls(conn: &mut MultiplexedConnection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn the_busy_path_costs_one_complete_and_one_read_per_task() {
    let mut s = setup(1).await;
    let n = 60;
    for i in 0..n {
        s.submit(&format!("t{i}"), 0, json!({})).await;
    }
    let (fcall0, read0, xadd0) = (
        calls(&mut s.conn, "fcall").await,
        calls(&mut s.conn, "xreadgroup").await,
        calls(&mut s.conn, "xadd").await,
    );
    let log = Arc::new(Log::default());
    let t = Instant::now();
    let w = s.start(s.config("w1").slots(1), &log).await;
    for i in 0..n {
        assert_eq!(s.ended(&format!("t{i}")).await.0, "done");
    }
    let took = t.elapsed();
    let fcalls = calls(&mut s.conn, "fcall").await - fcall0;
    let reads = calls(&mut s.conn, "xreadgroup").await - read0;
    eprintln!("{n} tasks on one slot in {took:?}: {fcalls} FCALLs, {reads} XREADGROUPs");
    // Per task: one rtq3_complete and one read of the next task; beside
    // them the start (join, beat, takeover ticks) and the final blocking
    // read.
    assert!(reads <= n + 4, "{reads} reads for {n} tasks");
    assert!(fcalls <= n + 8, "{fcalls} function calls for {n} tasks");
    // Nothing was read beyond the free slot and handed back (a hand-back
    // adds the task again at its band's tail: FIFO order would break).
    assert_eq!(calls(&mut s.conn, "xadd").await, xadd0, "entries re-added");
    let order: Vec<String> = log.starts().into_iter().map(|(id, _, _)| id).collect();
    let fifo: Vec<String> = (0..n).map(|i| format!("t{i}")).collect();
    assert_eq!(order, fifo, "tasks run in the order they were queued");
    w.stop().await;
}

#[tokio::test]
async fn a_dropped_run_future_hands_its_tasks_back_and_leaves() {
    let mut s = setup(1).await;
    s.submit("t", 0, json!({"hold_on": "first"})).await;
    let log = Arc::new(Log::default());
    let first = s.start(s.config("first"), &log).await;
    until("the task started", || log.started("t")).await;
    first.handle.abort();
    let _ = first.handle.await;
    let started = Instant::now();
    while !matches!(s.marker("t").await, Some(Marker::Place { .. })) || s.is_live("first").await {
        assert!(
            started.elapsed() < Duration::from_millis(4500),
            "not handed back: {:?}",
            s.marker("t").await
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let second = s.start(s.config("second"), &log).await;
    assert_eq!(s.ended("t").await, {
        let r = json!({"echo": {"hold_on": "first"}, "attempt": 1, "worker": "second"});
        ("done".to_string(), 1, r.to_string())
    });
    second.stop().await;
}

#[tokio::test]
async fn an_entry_taken_from_the_worker_stops_its_attempt_at_the_next_beat() {
    let mut s = setup(1).await;
    s.submit("t", 0, json!({"hold": true})).await;
    let log = Arc::new(Log::default());
    let w = s
        .start(s.config("w1").lease(Duration::from_millis(600)), &log)
        .await;
    until("the task started", || log.started("t")).await;
    let Some(Marker::Place { entry, .. }) = s.marker("t").await else {
        panic!("no place")
    };
    // Another consumer takes the entry behind the worker's back.
    let claimed: Vec<String> = redis::cmd("XCLAIM")
        .arg(v3::band_key(&s.keys, 0))
        .arg(v3::GROUP)
        .arg("thief")
        .arg(0)
        .arg(&entry)
        .arg("JUSTID")
        .query_async(&mut s.conn)
        .await
        .unwrap();
    assert_eq!(claimed, vec![entry]);
    until("the handler was stopped", || !log.stops().is_empty()).await;
    assert_eq!(log.stops(), vec![("t".to_string(), StopReason::Reassigned)]);
    until("the attempt counted as stopped", || {
        w.status.stopped.load(Ordering::Relaxed) == 1
    })
    .await;
    assert!(
        matches!(s.marker("t").await, Some(Marker::Place { .. })),
        "the worker wrote no ending for an attempt it lost"
    );
    w.stop().await;
}

#[tokio::test]
async fn a_worker_restarted_under_the_same_id_requeues_what_its_previous_life_held() {
    let mut s = setup(1).await;
    s.submit("t", 0, json!({"hold_on": "w1-old"})).await;
    // A long lease: only the join at start can requeue the task quickly.
    let lease = Duration::from_secs(30);
    let log = Arc::new(Log::default());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (url, config, log1) = (s.url.clone(), s.config("w1").lease(lease), Arc::clone(&log));
    runtime.spawn(async move {
        let worker = Worker::connect(&url, config).await.unwrap();
        let handler = Arc::new(Probe {
            worker: "w1-old".into(),
            log: log1,
            release: Arc::new(Notify::new()),
        });
        let _ = worker.run(handler, std::future::pending()).await;
    });
    until("the first life started the task", || log.started("t")).await;
    std::thread::spawn(move || runtime.shutdown_timeout(Duration::from_secs(10)))
        .join()
        .unwrap();
    let t = Instant::now();
    let w = s.start(s.config("w1").lease(lease), &log).await;
    let (state, attempt, _) = s.ended("t").await;
    assert_eq!((state.as_str(), attempt), ("done", 2));
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    w.stop().await;
}

#[tokio::test]
async fn a_lost_chunk_write_reply_is_sent_again_and_stores_each_chunk_once() {
    let mut s = setup(1).await;
    let proxy = rtq_testkit::Proxy::start(s.redis.port()).await;
    s.url = proxy.url();
    let log = Arc::new(Log::default());
    let w = s.start(s.config("w1"), &log).await;
    proxy.cut_reply_to(b"rtq3_write");
    // The chunks go while the handler still runs (it sleeps after them),
    // so the writer sends them in a write of its own (a done attempt's
    // last chunks would go with its complete, in one transaction).
    s.submit("t", 0, json!({"early": 5, "sleep_ms": 500})).await;
    let (state, attempt, _) = s.ended("t").await;
    assert_eq!((state.as_str(), attempt), ("done", 1));
    assert_eq!(proxy.cuts(), 1, "a write's reply was cut");
    assert_eq!(
        s.chunks("t", 1).await,
        vec!["early0 ", "early1 ", "early2 ", "early3 ", "early4 "]
    );
    w.stop().await;
}

#[tokio::test]
async fn a_task_given_back_unstarted_uses_no_attempt_and_pauses_the_intake() {
    let mut s = setup(1).await;
    let log = Arc::new(Log::default());
    let w = s.start(s.config("w1"), &log).await;
    let t = Instant::now();
    s.submit("t", 0, json!({"decline_first": true})).await;
    let (state, attempt, _) = s.ended("t").await;
    assert_eq!((state.as_str(), attempt), ("done", 1), "no attempt used");
    assert_eq!(log.starts().len(), 2);
    assert!(
        t.elapsed() >= Duration::from_millis(450),
        "taken again after {:?}, within the intake pause",
        t.elapsed()
    );
    assert!(w.status.last_error().contains("unstarted"));
    w.stop().await;
}

/// A busy worker (every slot taken, new work always waiting) still takes
/// over a dead worker's task soon after its lease lapses: the next freed
/// slot goes to housekeeping before new entries (found by the chaos run:
/// recovery took 8-40 leases under load).
#[tokio::test]
async fn a_busy_worker_takes_over_a_dead_worker_s_task_before_new_work() {
    let mut s = setup(1).await;
    let lease = Duration::from_millis(600);
    // A dead worker holds "orphan": read, never completed.
    s.submit("orphan", 0, json!({})).await;
    let mut conn = s.conn.clone();
    v3::beat(&mut conn, &s.keys, "dead", 600, &[])
        .await
        .unwrap();
    let got = v3::read_new(&mut conn, &s.keys, "dead", 0, 1, None)
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    // Then plenty of new work: 40 tasks of 100 ms on one slot (4 s).
    for i in 0..40 {
        s.submit(&format!("new{i}"), 0, json!({"sleep_ms": 100}))
            .await;
    }
    let log = Arc::new(Log::default());
    let w = s.start(s.config("busy").lease(lease).slots(1), &log).await;
    until("the orphan ran", || log.started("orphan")).await;
    let starts = log.starts();
    let before = starts.iter().position(|(id, _, _)| id == "orphan").unwrap();
    assert!(
        before < 15,
        "the orphan waited behind {before} new tasks (lease 600 ms, 100 ms per task)"
    );
    w.stop().await;
}
