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
    let llm = &v[0];
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
    assert!(llm["total"]["p99_ms"].is_number());

    let w: Value =
        serde_json::from_str(&stdout(&rtq(&url, &["workers", "llm", "--json"]))).unwrap();
    assert_eq!(w[0]["id"], "gpu-1");
    assert_eq!(w[0]["alive"], true);

    let t: Value = serde_json::from_str(&stdout(&rtq(
        &url,
        &["tasks", "llm", "--state", "recent", "--json"],
    )))
    .unwrap();
    let bad = t
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == "bad")
        .unwrap();
    assert_eq!(bad["error"], "CUDA out of memory");
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
    let o = rtq(&url, &["purge", "llm", "--confirm", "wrong"]);
    assert_eq!(o.status.code(), Some(1));
    let o = rtq(&url, &["--read-only", "pause", "llm"]);
    assert_eq!(o.status.code(), Some(1));
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
}
