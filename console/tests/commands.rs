//! The scriptable commands through the real `rtq` binary: output a script
//! can parse and exit codes it can rely on.

mod support;

use std::process::{Command, Output};

use serde_json::Value;
use support::*;

fn rtq(redis: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rtq"))
        .arg("--redis")
        .arg(redis)
        .args(args)
        .output()
        .expect("rtq runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn stats_workers_and_tasks_as_json() {
    let seed = Seeded::new().await;
    let url = seed.redis.url();
    let o = rtq(&url, &["stats", "--json"]);
    assert!(o.status.success());
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["schema"], 1);
    assert_eq!(v["window_secs"], 60);
    let llm = &v["queues"][0];
    assert_eq!(llm["queue"], "llm");
    assert_eq!(
        (
            llm["pending"].as_u64(),
            llm["running"].as_u64(),
            llm["workers_alive"].as_u64()
        ),
        (Some(5), Some(2), Some(1))
    );
    assert_eq!(llm["paused"], true);
    assert!(llm["max_depth"].is_null(), "unlimited is null: {llm}");
    assert!(llm["total"]["p99_ms"].is_number());

    let w: Value =
        serde_json::from_str(&stdout(&rtq(&url, &["workers", "llm", "--json"]))).unwrap();
    assert_eq!(
        (w["schema"].as_u64(), w["queue"].as_str()),
        (Some(1), Some("llm"))
    );
    let gpu = &w["workers"][0];
    assert_eq!(gpu["id"], "gpu-1");
    assert_eq!(gpu["alive"], true);
    assert_eq!(
        gpu["labels"],
        serde_json::json!({"gpu": "A100"}),
        "labels as an object"
    );
    assert_eq!(gpu["slots"].as_u64(), Some(2), "numbers as numbers: {gpu}");
    assert!(gpu["busy"].is_u64() && gpu["pid"].is_u64(), "{gpu}");
    assert_eq!(gpu["tasks"], serde_json::json!(["h1", "h2"]));

    let t: Value = serde_json::from_str(&stdout(&rtq(
        &url,
        &["tasks", "llm", "--state", "recent", "--json"],
    )))
    .unwrap();
    assert_eq!(
        (t["schema"].as_u64(), t["list"].as_str()),
        (Some(1), Some("recent"))
    );
    let bad = t["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == "bad")
        .unwrap();
    assert_eq!(bad["error"], "CUDA out of memory");
    assert_eq!(
        (bad["state"].as_str(), bad["attempt"].as_u64()),
        (Some("failed"), Some(1))
    );
    let running: Value = serde_json::from_str(&stdout(&rtq(
        &url,
        &["tasks", "llm", "--state", "running", "--json"],
    )))
    .unwrap();
    assert_eq!(
        running["tasks"][0]["labels"],
        serde_json::json!({"tenant": "acme"})
    );
    assert_eq!(running["tasks"][0]["worker"], "gpu-1");
    assert!(
        running["tasks"][0]["finished_ms"].is_null(),
        "0 times are null"
    );
    let plain = stdout(&rtq(&url, &["stats"]));
    assert!(plain.contains("llm") && plain.contains("paused"), "{plain}");
}

#[tokio::test(flavor = "multi_thread")]
async fn actions_and_their_exit_codes() {
    let seed = Seeded::new().await;
    let url = seed.redis.url();
    let o = rtq(&url, &["resume", "llm"]);
    assert!(o.status.success(), "{o:?}");
    assert!(stdout(&o).contains("resumed llm"));
    // Free one of the two held slots, then stream a task through it.
    let o = rtq(&url, &["cancel", "llm", "h2"]);
    assert!(
        o.status.success() && stdout(&o).contains("cancelled h2 (was running)"),
        "{o:?}"
    );
    let o = rtq(
        &url,
        &[
            "submit",
            "llm",
            r#"{"chunks": 2}"#,
            "--stream",
            "--timeout-secs",
            "20",
        ],
    );
    assert!(o.status.success(), "{o:?}");
    assert!(stdout(&o).contains("word0 word1"), "{}", stdout(&o));

    // Operation failures exit 1 with a reason on stderr.
    let o = rtq(&url, &["requeue", "llm", "no-such-task"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not found"));
    let o = rtq(&url, &["submit", "llm", "{not json"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not valid JSON"));
    // A --confirm that does not match is a usage error (what it leaves
    // untouched: tests/queue_admin.rs).
    let o = rtq(&url, &["purge", "llm", "--confirm", "wrong"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("--confirm must repeat"));
    let o = rtq(&url, &["--read-only", "pause", "llm"]);
    assert_eq!(o.status.code(), Some(1));
    // Submitting writes too.
    let o = rtq(
        &url,
        &[
            "--read-only",
            "submit",
            "llm",
            "{}",
            "--no-wait",
            "--id",
            "ro",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(seed.admin.task("llm", "ro").await.is_err());
    // Usage errors exit 2 (clap); unreachable Redis exits 3, password hidden.
    assert_eq!(rtq(&url, &["frobnicate"]).status.code(), Some(2));
    let o = rtq("redis://:hunter2@127.0.0.1:1/", &["stats"]);
    assert_eq!(o.status.code(), Some(3));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cannot reach Redis") && !err.contains("hunter2"),
        "{err}"
    );
}

#[test]
fn without_a_redis_url_rtq_refuses_to_guess() {
    let out = Command::new(env!("CARGO_BIN_EXE_rtq"))
        .arg("stats")
        .env_remove("RTQ_REDIS_URL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--redis") && err.contains("RTQ_REDIS_URL"),
        "{err}"
    );
    let help = Command::new(env!("CARGO_BIN_EXE_rtq"))
        .arg("--help")
        .env_remove("RTQ_REDIS_URL")
        .output()
        .unwrap();
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("Exit codes: 0 success") && help.contains("3 Redis unreachable"),
        "{help}"
    );
}

#[test]
fn the_console_without_a_terminal_exits_2_with_a_message() {
    // stdin and stdout are pipes here; checked before any connection.
    let o = rtq("redis://127.0.0.1:1/", &[]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("needs a terminal") && err.contains("rtq stats --json"),
        "{err}"
    );
    let o = rtq("redis://127.0.0.1:1/", &["ui"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
}

#[test]
fn completions_and_the_man_page_come_from_the_cli_definition() {
    let offline = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_rtq"))
            .args(args)
            .env_remove("RTQ_REDIS_URL")
            .output()
            .unwrap()
    };
    for (shell, marker) in [
        ("bash", "_rtq()"),
        ("zsh", "#compdef rtq"),
        ("fish", "complete -c rtq"),
    ] {
        let o = offline(&["completions", shell]);
        assert!(o.status.success(), "{shell}: {o:?}");
        let script = stdout(&o);
        assert!(script.contains(marker), "{shell}: {script}");
        for flag in ["wait-for-workers", "delete", "follow"] {
            assert!(script.contains(flag), "{shell} completes {flag}");
        }
    }
    assert_eq!(offline(&["completions", "tcsh"]).status.code(), Some(2));
    let o = offline(&["man"]);
    assert!(o.status.success(), "{o:?}");
    let page = stdout(&o);
    assert!(
        page.starts_with(".ie") || page.contains(".TH rtq 1"),
        "{page}"
    );
    assert!(page.contains(".TH rtq 1"), "roff title");
    assert!(
        page.contains("RTQ SUBMIT") && page.contains("wait\\-for\\-workers"),
        "{page}"
    );
    assert!(
        page.contains("Exit codes: 0 success"),
        "the exit codes are in the page"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn actions_answer_json_with_the_schema_version() {
    let seed = Seeded::new().await;
    let url = seed.redis.url();
    let json = |args: &[&str]| -> Value {
        let o = tokio::task::block_in_place(|| rtq(&url, args));
        assert!(o.status.success(), "{args:?}: {o:?}");
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["schema"], 1, "{args:?}: {v}");
        v
    };
    let v = json(&["--json", "cancel", "llm", "p1"]);
    assert_eq!(
        (v["previous"].as_str(), v["action"].as_str()),
        (Some("queued"), Some("cancelled"))
    );
    let v = json(&["requeue", "llm", "bad", "--json"]);
    assert_eq!(v["previous"], "failed");
    let v = json(&["max-depth", "llm", "0", "--json"]);
    assert!(v["max_depth"].is_null());
    let v = json(&["purge", "llm", "--confirm", "llm", "--json"]);
    assert_eq!(
        v["purged"].as_u64(),
        Some(5),
        "p0, p2, p3, p4 and the requeued bad: {v}"
    );
    assert_eq!(seed.admin.overview("llm").await.unwrap().pending, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_closed_stdout_or_stderr_never_turns_into_a_panic() {
    let seed = Seeded::new().await;
    let url = seed.redis.url();
    let closed = |args: &[&str], stdout: bool| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rtq"))
            .arg("--redis")
            .arg(&url)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Close one end before rtq has connected to Redis and written.
        if stdout {
            drop(child.stdout.take());
        } else {
            drop(child.stderr.take());
        }
        child.wait().unwrap().code()
    };
    tokio::task::block_in_place(|| {
        assert_eq!(closed(&["stats"], true), Some(0));
        assert_eq!(
            closed(&["tasks", "llm", "--state", "recent"], true),
            Some(0)
        );
        assert_eq!(closed(&["workers", "nope"], false), Some(1));
    });
}
