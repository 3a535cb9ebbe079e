//! The real rtq-worker binary as operators run it: kill -9 mid-task (the
//! task finishes on another worker process), SIGTERM hand-back, and its
//! command line. Every process is held by a [`ChildGuard`].

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::Signal;
use rtq_core::{Client, TaskRequest, TaskState};
use rtq_testkit::RedisServer;
use serde_json::json;
use support::ChildGuard;

fn spawn_worker(redis: &RedisServer, queue: &str, id: &str, extra: &[&str]) -> ChildGuard {
    ChildGuard::spawn(&mut worker_command(redis, queue, id, extra))
}

/// The worker command for `queue` under worker id `id`.
fn worker_command(redis: &RedisServer, queue: &str, id: &str, extra: &[&str]) -> Command {
    let mut args = vec!["--queue", queue, "--worker-id", id];
    args.extend_from_slice(extra);
    support::worker_command(&redis.url(), &args)
}

/// A worker whose handler start can be awaited: Redis says "running" from
/// the hand-out on, a little before the slot starts the handler, and a
/// SIGTERM in between hands back a task that never started (no attempt
/// used). The receiver gets one message per "task started" log line.
fn spawn_observed_worker(
    redis: &RedisServer,
    queue: &str,
    id: &str,
    extra: &[&str],
) -> (ChildGuard, mpsc::Receiver<()>) {
    let mut cmd = worker_command(redis, queue, id, extra);
    cmd.env("RTQ_LOG", "warn,rtq_core::worker=debug")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped());
    let mut child = ChildGuard::spawn(&mut cmd);
    // The worker logs to stdout.
    let log = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    // Reads to the end, so the worker never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(log).lines().map_while(Result::ok) {
            if line.contains("task started") {
                let _ = tx.send(());
            }
        }
    });
    (child, rx)
}

async fn wait_state(q: &rtq_core::Queue, id: &str, want: TaskState, worker: Option<&str>) {
    for _ in 0..400 {
        let info = q.status(id).await.unwrap();
        if info.state == want && worker.is_none_or(|w| info.worker == w) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("task {id} never reached {want} on {worker:?}");
}

#[tokio::test]
async fn kill_9_mid_stream_the_task_finishes_on_another_worker() {
    let redis = RedisServer::start();
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("gpu").unwrap();
    // 40 tokens at 20/s: about two seconds of streaming.
    let slow = ["--mock-tokens-per-sec", "20", "--mock-tokens", "40"];
    let mut a = spawn_worker(&redis, "gpu", "node-a", &slow);
    let stream = q
        .stream(TaskRequest::json(json!({})).max_attempts(2))
        .await
        .unwrap();
    let id = stream.id().to_string();
    wait_state(&q, &id, TaskState::Running, Some("node-a")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.kill().unwrap(); // SIGKILL
    a.wait().unwrap();
    let mut b = spawn_worker(&redis, "gpu", "node-b", &slow);
    let (out, text) = tokio::time::timeout(Duration::from_secs(30), stream.collect_text())
        .await
        .expect("finished in time")
        .expect("one final result");
    assert_eq!(out.attempt, 2);
    assert_eq!(q.status(&id).await.unwrap().worker, "node-b");
    let expected: String = (0..40).map(|i| format!("tok{i} ")).collect();
    assert_eq!(
        text, expected,
        "only the second attempt's tokens, each once"
    );
    b.kill().unwrap();
    b.wait().unwrap();
}

#[tokio::test]
async fn sigterm_hands_unfinished_tasks_back_at_once() {
    let redis = RedisServer::start();
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("drain").unwrap();
    let (mut a, started) =
        spawn_observed_worker(&redis, "drain", "node-a", &["--mock-latency-ms", "60000"]);
    let sub = q.submit(TaskRequest::json(json!({}))).await.unwrap();
    started
        .recv_timeout(Duration::from_secs(30))
        .expect("the handler never started");
    a.signal(Signal::SIGTERM);
    let status = a.wait_exit();
    assert!(status.success(), "clean exit: {status}");
    // Grace 0: handed back at once and queued again. The interrupted
    // attempt counts (a fleet that keeps scaling down must not restart a
    // long task forever), with the shutdown named as the reason.
    let info = q.status(&sub.id).await.unwrap();
    assert_eq!(info.state, TaskState::Queued);
    assert_eq!(info.failures, 1);
    assert!(
        info.attempt_errors[&1].contains("interrupted: worker node-a shut down"),
        "{:?}",
        info.attempt_errors
    );
}

#[test]
fn help_and_bad_redis_are_clear() {
    let help = Command::new(env!("CARGO_BIN_EXE_rtq-worker"))
        .arg("--help")
        .env_remove("RTQ_REDIS_URL")
        .output()
        .unwrap();
    assert!(help.status.success(), "--help needs nothing: {help:?}");
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        text.contains("RTQ_REDIS_URL") && text.contains("--concurrency"),
        "{text}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_rtq-worker"))
        .args([
            "--redis",
            "redis://:topsecret@127.0.0.1:1/",
            "--probe-addr",
            "off",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach Redis") && !err.contains("topsecret"),
        "{err}"
    );
}

#[test]
fn without_a_redis_url_the_worker_refuses_to_start_and_says_how_to_give_one() {
    let out = Command::new(env!("CARGO_BIN_EXE_rtq-worker"))
        .args(["--queue", "q", "--probe-addr", "off"])
        .env_remove("RTQ_REDIS_URL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a usage error: {out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--redis") && err.contains("RTQ_REDIS_URL") && err.contains("required"),
        "{err}"
    );
    assert!(
        !err.contains("cannot reach Redis"),
        "it must not try a Redis it was not given: {err}"
    );
}

/// Redis's count of `XADD` calls so far (one per chunk write of a
/// streamed task: the chunk event to the submitter's reply stream).
async fn xadd_calls(redis: &RedisServer) -> u64 {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_xadd:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn stream_hold_groups_paced_tokens_into_few_writes_and_loses_none() {
    let redis = RedisServer::start();
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("held").unwrap();
    // 20 tokens at 40/s (about half a second), held up to 5 s: the whole
    // stream fits one hold, however slow the machine, so the tokens leave
    // in the final write or one or two before it, never one call each.
    let mut w = spawn_worker(
        &redis,
        "held",
        "held-1",
        &[
            "--mock-tokens-per-sec",
            "40",
            "--mock-tokens",
            "20",
            "--stream-hold-ms",
            "5000",
        ],
    );
    // A first task warms up both sides (reply stream, registration).
    q.run(TaskRequest::json(json!({"max_tokens": 1})))
        .await
        .unwrap();
    let before = xadd_calls(&redis).await;
    let stream = q.stream(TaskRequest::json(json!({}))).await.unwrap();
    let (_, text) = tokio::time::timeout(Duration::from_secs(30), stream.collect_text())
        .await
        .expect("finished in time")
        .expect("a result");
    let expected: String = (0..20).map(|i| format!("tok{i} ")).collect();
    assert_eq!(text, expected);
    let writes = xadd_calls(&redis).await - before;
    // Chunk events (at most 2) + the ending's `ended` entry and reply event.
    assert!(writes <= 4, "{writes} XADDs for 20 held tokens");
    w.kill().unwrap();
    w.wait().unwrap();
}

#[test]
fn stream_flags_are_range_checked() {
    for (flag, bad) in [
        ("--stream-hold-ms", "10001"),
        ("--stream-writes-in-flight", "0"),
        ("--stream-min-bytes", "16777217"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_rtq-worker"))
            .args(["--redis", "redis://127.0.0.1:1/", flag, bad])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag} {bad}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(flag),
            "{out:?}"
        );
    }
}

#[tokio::test]
async fn a_second_sigterm_during_the_drain_stops_the_worker_at_once() {
    let redis = RedisServer::start();
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("twice").unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rtq-worker"));
    cmd.args([
        "--queue",
        "twice",
        "--lease-ms",
        "1000",
        "--probe-addr",
        "off",
    ])
    // A drain that would last ten minutes.
    .args(["--grace-secs", "600", "--mock-latency-ms", "600000"])
    .env("RTQ_REDIS_URL", redis.url())
    .env("RTQ_LOG", "warn,rtq_core::worker=debug")
    .env("NO_COLOR", "1")
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    let mut worker = ChildGuard::spawn(&mut cmd);
    let log = worker.stdout.take().expect("piped stdout");
    let (tx, seen) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(log).lines().map_while(Result::ok) {
            for what in ["task started", "draining"] {
                if line.contains(what) {
                    let _ = tx.send(what);
                }
            }
        }
    });
    let sub = q.submit(TaskRequest::json(json!({}))).await.unwrap();
    let patience = Duration::from_secs(30);
    assert_eq!(seen.recv_timeout(patience), Ok("task started"));
    worker.signal(Signal::SIGTERM);
    assert_eq!(seen.recv_timeout(patience), Ok("draining"));
    worker.signal(Signal::SIGTERM);
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while worker.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < until,
            "still draining 10 s after the second SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Neither finished nor failed by the forced stop: it is requeued when
    // the vanished worker's lease lapses.
    let state = q.status(&sub.id).await.unwrap().state;
    assert!(
        matches!(state, TaskState::Running | TaskState::Queued),
        "{state:?}"
    );
}

#[tokio::test]
async fn a_second_sigterm_hands_the_running_task_back_and_another_worker_finishes_it_at_once() {
    let redis = RedisServer::start();
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("forced").unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rtq-worker"));
    // A lease of a minute and a drain of ten: before the forced hand-back,
    // the task stayed with the vanished worker until its lease lapsed.
    cmd.args(["--queue", "forced", "--worker-id", "node-a"])
        .args(["--lease-ms", "60000", "--probe-addr", "off"])
        .args(["--grace-secs", "600", "--mock-latency-ms", "600000"])
        .env("RTQ_REDIS_URL", redis.url())
        .env("RTQ_LOG", "warn,rtq_core::worker=debug")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut a = ChildGuard::spawn(&mut cmd);
    let log = a.stdout.take().expect("piped stdout");
    let (tx, seen) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(log).lines().map_while(Result::ok) {
            for what in ["task started", "draining"] {
                if line.contains(what) {
                    let _ = tx.send(what);
                }
            }
        }
    });
    let sub = q
        .submit(TaskRequest::json(json!({})).max_attempts(3))
        .await
        .unwrap();
    let patience = Duration::from_secs(30);
    assert_eq!(seen.recv_timeout(patience), Ok("task started"));
    a.signal(Signal::SIGTERM);
    assert_eq!(seen.recv_timeout(patience), Ok("draining"));
    a.signal(Signal::SIGTERM);
    let status = a.wait_exit();
    assert!(status.success(), "clean exit: {status}");
    // Requeued before the process exited: the interrupted attempt counts.
    let info = q.status(&sub.id).await.unwrap();
    assert_eq!(info.state, TaskState::Queued, "{info:?}");
    assert_eq!(info.failures, 1, "{info:?}");
    assert!(
        info.attempt_errors[&1].contains("interrupted: worker node-a shut down"),
        "{:?}",
        info.attempt_errors
    );
    // Finished by a second worker far sooner than the 60 s lease.
    let mut b = spawn_worker(&redis, "forced", "node-b", &[]);
    let out = tokio::time::timeout(Duration::from_secs(30), q.wait(&sub.id, None))
        .await
        .expect("finished well before the lease would have lapsed")
        .unwrap();
    assert_eq!(out.attempt, 2);
    assert_eq!(q.status(&sub.id).await.unwrap().worker, "node-b");
    b.kill().unwrap();
    b.wait().unwrap();
}
