//! `rtq submit` and `rtq task` through the real binary against a real
//! redis-server: a queue without a live worker is reported at once and
//! gets no task unless the caller said how long to wait; input from stdin
//! or a file with labels, id, attempts and retention; one task's status,
//! result or error, and `--follow`.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use rtq_core::{async_trait, Handler, HandlerError, TaskContext, Worker, WorkerConfig};
use serde_json::{json, Value};
use support::*;

fn rtq(redis: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rtq"))
        .arg("--redis")
        .arg(redis)
        .args(args)
        .env_remove("RTQ_JSON")
        .output()
        .expect("rtq runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Answers `{"echo": <input>}`.
struct Echo;

#[async_trait]
impl Handler for Echo {
    async fn handle(&self, task: TaskContext) -> Result<Value, HandlerError> {
        Ok(json!({"echo": task.input().cloned().unwrap_or_default()}))
    }
}

fn task_keys(redis: &RedisServer, q: &str) -> Vec<String> {
    redis::cmd("KEYS")
        .arg(format!("rtq:{{{q}}}:t:*"))
        .query(&mut redis.conn())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn submit_to_a_queue_without_a_worker_says_so_and_creates_no_task_unless_told_to_wait() {
    let redis = RedisServer::start();
    let url = redis.url();
    assert!(rtq(&url, &["max-depth", "idle", "0", "--create"])
        .status
        .success());

    let o = rtq(&url, &["submit", "idle", "{}"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = text(&o.stderr);
    assert!(
        err.contains("queue idle has no live worker")
            && err.contains("nothing was submitted")
            && err.contains("--wait-for-workers"),
        "{err}"
    );
    assert!(task_keys(&redis, "idle").is_empty(), "no task was created");

    // With a deadline it waits, and the task ends as timed out while queued.
    let o = rtq(&url, &["submit", "idle", "{}", "--timeout-secs", "1"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = text(&o.stderr);
    assert!(
        err.contains("has no live worker") && err.contains("timed out while queued"),
        "{err}"
    );

    // --no-wait queues it, says so, and prints the id.
    let o = rtq(
        &url,
        &["submit", "idle", "{}", "--no-wait", "--id", "later"],
    );
    assert!(o.status.success(), "{o:?}");
    assert_eq!(text(&o.stdout).trim(), "later");
    assert!(text(&o.stderr).contains("stays queued until a worker starts"));
    let pending: Vec<String> = redis::cmd("ZRANGE")
        .arg("rtq:{idle}:pending")
        .arg(0)
        .arg(-1)
        .query(&mut redis.conn())
        .unwrap();
    assert_eq!(pending, ["later"]);

    // Following it says at once that nothing will run it, then keeps
    // following (until stopped).
    let mut child = Command::new(env!("CARGO_BIN_EXE_rtq"))
        .args(["--redis", &url, "task", "idle", "later", "--follow"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let first = tokio::task::spawn_blocking(move || {
        BufReader::new(stderr).lines().next().unwrap().unwrap()
    })
    .await
    .unwrap();
    assert!(
        first.contains("queue idle has no live worker; following anyway"),
        "{first}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_for_workers_reports_at_once_then_runs_when_a_worker_starts() {
    let redis = RedisServer::start();
    let url = redis.url();
    assert!(rtq(&url, &["pause", "gpu", "--create"]).status.success());
    assert!(rtq(&url, &["resume", "gpu"]).status.success());
    let mut child = Command::new(env!("CARGO_BIN_EXE_rtq"))
        .args([
            "--redis",
            &url,
            "submit",
            "gpu",
            r#"{"n":7}"#,
            "--wait-for-workers",
        ])
        .args(["--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The notice comes before any worker exists. (The rest of stderr is
    // read to its end, so the child never writes into a closed pipe.)
    let stderr = child.stderr.take().unwrap();
    let (first, rest) = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stderr).lines();
        let first = lines.next().unwrap().unwrap();
        (first, lines)
    })
    .await
    .unwrap();
    assert!(first.contains("queue gpu has no live worker"), "{first}");
    let rest = std::thread::spawn(move || rest.map(Result::unwrap).collect::<Vec<_>>());

    let worker = Worker::connect(&url, WorkerConfig::new("gpu"))
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(Arc::new(Echo), async {
        let _ = stopped.await;
    }));
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["schema"], 1);
    assert_eq!(v["state"], "done");
    assert_eq!(v["result"], json!({"echo": {"n": 7}}));
    let rest = rest.join().unwrap();
    assert!(
        rest.iter().any(|l| l.contains("--wait-for-workers")),
        "{rest:?}"
    );
    let _ = stop.send(());
    running.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn submit_reads_stdin_or_a_file_and_sets_labels_id_attempts_and_retention() {
    let seed = Seeded::new().await;
    let url = seed.redis.url();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rtq"))
        .args([
            "--redis",
            &url,
            "submit",
            "llm",
            "-",
            "--no-wait",
            "--id",
            "s1",
        ])
        .args(["--label", "team=search", "--label", "env=prod"])
        .args(["--max-attempts", "5", "--retention-secs", "60"])
        .args(["--priority", "-3"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"prompt": "from stdin"}"#)
        .unwrap();
    let o = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    assert_eq!(text(&o.stdout).trim(), "s1");
    assert!(
        text(&o.stderr).contains("paused"),
        "the seeded queue is paused"
    );

    let o = tokio::task::block_in_place(|| rtq(&url, &["task", "llm", "s1", "--json"]));
    assert!(o.status.success(), "{o:?}");
    let t: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(t["schema"], 1);
    assert_eq!(t["input"], json!({"prompt": "from stdin"}));
    assert_eq!(t["labels"], json!({"team": "search", "env": "prod"}));
    assert_eq!(
        (t["max_attempts"].as_u64(), t["priority"].as_i64()),
        (Some(5), Some(-3))
    );
    assert_eq!(t["state"], "queued");
    let ret: i64 = redis::cmd("HGET")
        .arg("rtq:{llm}:t:s1")
        .arg("ret")
        .query(&mut seed.redis.conn())
        .unwrap();
    assert_eq!(ret, 60_000);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("input.json");
    std::fs::write(&file, r#"{"prompt": "from a file"}"#).unwrap();
    let at = format!("@{}", file.display());
    let o = tokio::task::block_in_place(|| {
        rtq(&url, &["submit", "llm", &at, "--no-wait", "--id", "f1"])
    });
    assert!(o.status.success(), "{o:?}");
    let input = seed
        .admin
        .task("llm", "f1")
        .await
        .unwrap()
        .spec
        .unwrap()
        .input;
    assert_eq!(input, Some(json!({"prompt": "from a file"})));
    // An unreadable file is a usage error; nothing is created.
    let o = tokio::task::block_in_place(|| {
        rtq(
            &url,
            &[
                "submit",
                "llm",
                "@/nonexistent/in.json",
                "--no-wait",
                "--id",
                "f2",
            ],
        )
    });
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(seed.admin.task("llm", "f2").await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn task_shows_status_result_or_error_and_follow_streams_its_output() {
    let seed = Seeded::new().await;
    let url = seed.redis.url();
    let run = |args: &[&str]| tokio::task::block_in_place(|| rtq(&url, args));

    let o = run(&["task", "llm", "bad"]);
    assert!(o.status.success(), "{o:?}");
    let out = text(&o.stdout);
    assert!(
        out.contains("state failed") && out.contains("CUDA out of memory"),
        "{out}"
    );
    let o = run(&["task", "llm", "done0", "--json"]);
    let t: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (t["state"].as_str(), t["chunks"].as_u64()),
        (Some("done"), Some(3))
    );
    assert_eq!(t["result"], json!({"ok": true}));
    assert!(t["error"].is_null());
    let o = run(&["task", "llm", "nope"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(text(&o.stderr).contains("not found"));

    // Following an ended task: its output, then its result or its error.
    let o = run(&["task", "llm", "done0", "--follow"]);
    assert!(o.status.success(), "{o:?}");
    let out = text(&o.stdout);
    assert!(
        out.contains("word0 word1 word2") && out.contains(r#"{"ok":true}"#),
        "{out}"
    );
    let o = run(&["task", "llm", "bad", "--follow"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(text(&o.stderr).contains("CUDA out of memory"));

    // Following a running task streams until it ends (here: cancelled).
    let mut child = Command::new(env!("CARGO_BIN_EXE_rtq"))
        .args(["--redis", &url, "--json", "task", "llm", "h1", "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (first, rest) = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().unwrap().unwrap();
        (first, lines)
    })
    .await
    .unwrap();
    let chunk: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(
        (
            chunk["schema"].as_u64(),
            chunk["event"].as_str(),
            chunk["text"].as_str()
        ),
        (Some(1), Some("chunk"), Some("word0 "))
    );
    seed.admin.cancel("llm", "h1").await.unwrap();
    let (lines, out) = tokio::task::spawn_blocking(move || {
        let lines: Vec<String> = rest.map(Result::unwrap).collect();
        (lines, child.wait_with_output().unwrap())
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        text(&out.stderr).contains("cancelled"),
        "{}",
        text(&out.stderr)
    );
    assert!(lines.iter().any(|l| l.contains("word1")), "{lines:?}");
}
