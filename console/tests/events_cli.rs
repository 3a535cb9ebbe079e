//! `rtq events` and `rtq workers --departed` through the real binary: what
//! a script reads after an incident.

mod support;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

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

fn json_of(o: &Output) -> Value {
    assert!(o.status.success(), "{o:?}");
    serde_json::from_slice(&o.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn events_and_departed_workers_as_text_and_json() {
    let mut seed = Seeded::new().await;
    let url = seed.redis.url();
    // The seed failed "bad" and paused the queue: newest first.
    let v = json_of(&rtq(&url, &["events", "llm", "--json"]));
    assert_eq!(v["schema"], 1);
    let kinds: Vec<&str> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["paused", "failed"], "{v}");
    let failed = &v["events"][1];
    assert_eq!(failed["task"], "bad");
    assert_eq!(failed["worker"], "gpu-1");
    assert!(failed["message"]
        .as_str()
        .unwrap()
        .contains("CUDA out of memory"));
    assert!(failed["at_ms"].as_i64().unwrap() > 1_700_000_000_000);
    assert!(v["events"][0]["task"].is_null());

    let limited = json_of(&rtq(&url, &["events", "llm", "--json", "--limit", "1"]));
    assert_eq!(limited["events"].as_array().unwrap().len(), 1);

    let text = rtq(&url, &["events", "llm"]);
    let out = String::from_utf8_lossy(&text.stdout);
    assert!(out.starts_with("TIME (UTC)"), "{out}");
    assert!(out.contains(" failed ") && out.contains("bad"), "{out}");

    // Nobody departed yet; then the worker leaves.
    let none = json_of(&rtq(&url, &["workers", "llm", "--departed", "--json"]));
    assert_eq!(none["departed"].as_array().unwrap().len(), 0);
    // Its held tasks end first, so it drains at once.
    seed.admin.cancel("llm", "h1").await.unwrap();
    seed.admin.cancel("llm", "h2").await.unwrap();
    seed.stop_worker();
    let deadline = Instant::now() + Duration::from_secs(20);
    let gone = loop {
        let v = json_of(&rtq(&url, &["workers", "llm", "--departed", "--json"]));
        if !v["departed"].as_array().unwrap().is_empty() {
            break v;
        }
        assert!(Instant::now() < deadline, "gpu-1 never departed: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let w = &gone["departed"][0];
    assert_eq!(w["id"], "gpu-1");
    assert_eq!(w["alive"], false);
    assert_eq!(w["departed_why"], "left");
    assert!(w["departed_at_ms"].as_i64().unwrap() > 1_700_000_000_000);
    assert_eq!(w["labels"], serde_json::json!({"gpu": "A100"}));
    let text = rtq(&url, &["workers", "llm", "--departed"]);
    let out = String::from_utf8_lossy(&text.stdout);
    assert!(
        out.contains("gpu-1") && out.trim_end().ends_with("left"),
        "{out}"
    );
    let events = json_of(&rtq(&url, &["events", "llm", "--json", "--limit", "1"]));
    assert_eq!(events["events"][0]["kind"], "worker_left");
}

#[tokio::test(flavor = "multi_thread")]
async fn events_of_an_unknown_queue_exit_1_and_bad_limits_exit_2() {
    let seed = Seeded::new().await;
    let url = seed.redis.url();
    let o = rtq(&url, &["events", "nope"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let o = rtq(&url, &["events", "llm", "--limit", "0"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let o = rtq(&url, &["events", "bad name!"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
}
