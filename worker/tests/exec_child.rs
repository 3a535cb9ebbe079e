//! The exec handler against misbehaving real child processes (Python
//! scripts written by the tests), through the real rtq-worker binary: a
//! result line over --max-line-bytes fails its attempt at once, a flood of
//! stderr does not flood the worker's log, and a process the child
//! detached with `setsid` does not outlive the worker.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rtq_core::{Client, Error, TaskRequest};
use rtq_testkit::RedisServer;
use serde_json::json;
use support::*;

/// A child that answers every task with one line of `size` bytes of
/// result (`input.size`), or a normal result.
const BIG_RESULT_CHILD: &str = r#"
import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("type") != "task":
        continue
    size = msg["input"].get("size", 0)
    out = {"id": msg["id"], "attempt": msg["attempt"], "result": "r" * size}
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
"#;

/// Writes `script` to `dir` and returns the command that runs it.
fn python(dir: &std::path::Path, name: &str, script: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, script).unwrap();
    format!("python3 {}", path.display())
}

#[tokio::test]
async fn a_result_line_over_the_line_limit_fails_its_attempt_at_once_naming_the_flag() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let command = python(dir.path(), "big.py", BIG_RESULT_CHILD);
    let _worker = start_worker(
        &redis,
        &[
            "--queue",
            "long",
            "--handler",
            "exec",
            "--exec-command",
            &command,
            "--max-line-bytes",
            "100000",
        ],
    );
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("long").unwrap();
    let started = Instant::now();
    // No deadline: before the fix the attempt waited for ever.
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        q.run(TaskRequest::json(json!({"size": 300_000})).max_attempts(1)),
    )
    .await
    .expect("the attempt waited for a result line that was dropped");
    match result {
        Err(Error::Failed { reason, .. }) => {
            assert!(reason.contains("--max-line-bytes"), "{reason}")
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(20));
    // The child goes on serving.
    let out = q.run(TaskRequest::json(json!({"size": 3}))).await.unwrap();
    assert_eq!(out.result, json!("rrr"));
}

/// A child that writes 30 000 lines to stderr for every task, then the
/// result.
const NOISY_STDERR_CHILD: &str = r#"
import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("type") != "task":
        continue
    for i in range(30000):
        sys.stderr.write("progress %d ##########\n" % i)
    sys.stderr.flush()
    sys.stdout.write(json.dumps({"id": msg["id"], "attempt": msg["attempt"], "result": {"ok": True}}) + "\n")
    sys.stdout.flush()
"#;

#[tokio::test]
async fn a_child_flooding_stderr_gets_a_few_log_lines_a_second_and_a_count_of_the_rest() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let command = python(dir.path(), "noisy.py", NOISY_STDERR_CHILD);
    let log = dir.path().join("worker.log");
    let mut cmd = worker_command(
        &redis.url(),
        &[
            "--queue",
            "noisy",
            "--handler",
            "exec",
            "--exec-command",
            &command,
        ],
    );
    // The worker logs to stdout.
    cmd.stdout(Stdio::from(std::fs::File::create(&log).unwrap()));
    let mut worker = ChildGuard::spawn(&mut cmd);
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("noisy").unwrap();
    let out = q.run(TaskRequest::json(json!({}))).await.unwrap();
    assert_eq!(out.result, json!({"ok": true}));
    worker.signal(Signal::SIGTERM);
    worker.wait_exit();
    let text = std::fs::read_to_string(&log).unwrap();
    let progress = text.matches("progress ").count();
    assert!(progress > 0, "the child's stderr is logged at all: {text}");
    assert!(
        progress < 1000,
        "{progress} of the child's 30000 stderr lines were logged"
    );
    assert!(text.contains("suppressed"), "no count of the rest: {text}");
}

/// A child that starts a grandchild in a session of its own (out of reach
/// of the group's signals) and lists its pid, then serves tasks.
const DETACHING_CHILD: &str = r#"
import json, os, sys, time
if os.fork() == 0:
    os.setsid()
    with open(os.environ["PIDS"], "a") as f:
        f.write("%d\n" % os.getpid())
    while True:
        time.sleep(1)
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("type") != "task":
        continue
    sys.stdout.write(json.dumps({"id": msg["id"], "attempt": msg["attempt"], "result": {"ok": True}}) + "\n")
    sys.stdout.flush()
"#;

#[tokio::test]
async fn a_process_the_child_detached_with_setsid_is_stopped_with_the_worker() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let command = python(dir.path(), "detach.py", DETACHING_CHILD);
    let listed = ListedProcesses {
        path: dir.path().join("pids"),
        comm: "python3",
    };
    let mut cmd = worker_command(
        &redis.url(),
        &[
            "--queue",
            "detach",
            "--handler",
            "exec",
            "--exec-command",
            &command,
        ],
    );
    cmd.env("PIDS", &listed.path);
    let mut worker = ChildGuard::spawn(&mut cmd);
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("detach").unwrap();
    q.run(TaskRequest::json(json!({}))).await.unwrap();
    let path = listed.path.clone();
    eventually("the detached grandchild listed its pid", move || {
        let path = path.clone();
        Box::pin(async move { std::fs::read_to_string(&path).is_ok_and(|t| t.ends_with('\n')) })
    })
    .await;
    let pids = listed.pids();
    assert_eq!(pids.len(), 1);
    assert!(process_runs(pids[0], "python3"));
    worker.signal(Signal::SIGTERM);
    worker.wait_exit();
    assert!(
        !process_runs(pids[0], "python3"),
        "the detached process {} outlived the worker",
        pids[0]
    );
}
