//! Queues through the real `rtq` binary against a real redis-server: an
//! unknown queue is refused by every command (exit 1) and never created
//! by accident, `--create` creates one when asked, `rtq queue delete`
//! removes one (keys and registry entry) and refuses a busy one unless
//! forced, and bad names and out-of-range values are usage errors (exit 2).

mod support;

use std::process::{Command, Output};

use serde_json::Value;
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

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every key of queue `q` in Redis.
fn keys_of(redis: &RedisServer, q: &str) -> Vec<String> {
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("rtq:{{{q}}}:*"))
        .query(&mut redis.conn())
        .unwrap();
    keys.sort();
    keys
}

fn registry(redis: &RedisServer) -> Vec<String> {
    let mut names: Vec<String> = redis::cmd("SMEMBERS")
        .arg("rtq:queues")
        .query(&mut redis.conn())
        .unwrap();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn every_command_refuses_an_unknown_queue_with_exit_1_and_creates_nothing() {
    let seed = Seeded::new().await;
    let url = seed.redis.url();
    let commands: &[&[&str]] = &[
        &["stats", "lmm"],
        &["workers", "lmm"],
        &["tasks", "lmm"],
        &["task", "lmm", "p0"],
        &["requeue", "lmm", "p0"],
        &["cancel", "lmm", "p0"],
        &["pause", "lmm"],
        &["resume", "lmm"],
        &["max-depth", "lmm", "5"],
        &["purge", "lmm", "--confirm", "lmm"],
        &["queue", "delete", "lmm", "--confirm", "lmm"],
        &["submit", "lmm", "{}", "--no-wait"],
        &["submit", "lmm", "{}", "--wait-for-workers"],
    ];
    for args in commands {
        let o = tokio::task::block_in_place(|| rtq(&url, args));
        assert_eq!(o.status.code(), Some(1), "rtq {args:?}: {o:?}");
        let err = stderr(&o);
        assert!(
            err.contains("no queue named \"lmm\"") && err.contains("known queues: llm"),
            "rtq {args:?}: {err}"
        );
        let creates = matches!(args[0], "pause" | "max-depth" | "submit");
        assert_eq!(
            err.contains("--create"),
            creates,
            "only commands that can create a queue offer --create: {args:?}: {err}"
        );
    }
    assert_eq!(registry(&seed.redis), ["llm"]);
    assert!(keys_of(&seed.redis, "lmm").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_and_max_depth_create_a_queue_only_when_asked() {
    let redis = RedisServer::start();
    let url = redis.url();
    let o = rtq(&url, &["pause", "batch", "--create", "--json"]);
    assert!(o.status.success(), "{o:?}");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"schema": 1, "queue": "batch", "paused": true})
    );
    let o = rtq(&url, &["max-depth", "small", "7", "--create", "--json"]);
    assert!(o.status.success(), "{o:?}");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["max_depth"], 7);
    let o = rtq(&url, &["submit", "fresh", "{}", "--create", "--no-wait"]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(registry(&redis), ["batch", "fresh", "small"]);
    let paused: String = redis::cmd("HGET")
        .arg("rtq:{batch}:meta")
        .arg("paused")
        .query(&mut redis.conn())
        .unwrap();
    assert_eq!(paused, "1");
    // A queue whose registry entry Redis lost (but not its keys) is still
    // known, and `stats QUEUE` reads it.
    let _: i64 = redis::cmd("SREM")
        .arg("rtq:queues")
        .arg("batch")
        .query(&mut redis.conn())
        .unwrap();
    let o = rtq(&url, &["stats", "batch", "--json"]);
    assert!(o.status.success(), "{o:?}");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (
            v["queues"][0]["queue"].as_str(),
            v["queues"][0]["paused"].as_bool()
        ),
        (Some("batch"), Some(true))
    );
    // Once it exists, no --create is needed; resume answers typed JSON.
    let o = rtq(&url, &["resume", "batch", "--json"]);
    assert!(o.status.success(), "{o:?}");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v["paused"].as_bool(), v["dispatched"].as_u64()),
        (Some(false), Some(0))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_delete_refuses_a_busy_queue_unless_forced_then_removes_every_key() {
    let redis = RedisServer::start();
    let url = redis.url();
    assert!(rtq(&url, &["pause", "typo", "--create"]).status.success());
    // Neighbours whose names start alike must survive the deletion.
    for q in ["typo2", "typ"] {
        assert!(rtq(&url, &["pause", q, "--create"]).status.success());
        let o = rtq(&url, &["submit", q, "{}", "--no-wait", "--id", "n1"]);
        assert!(o.status.success(), "{o:?}");
    }
    let o = rtq(
        &url,
        &["submit", "typo", r#"{"x":1}"#, "--no-wait", "--id", "t1"],
    );
    assert!(o.status.success(), "{o:?}");

    // A --confirm that does not match: usage error, nothing touched.
    let o = rtq(&url, &["queue", "delete", "typo", "--confirm", "typ"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let o = rtq(&url, &["purge", "typo", "--confirm", "typ"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    // A task is pending: refused without --force, exit 1, still there.
    let o = rtq(&url, &["queue", "delete", "typo", "--confirm", "typo"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(
        stderr(&o).contains("1 pending") && stderr(&o).contains("--force"),
        "{}",
        stderr(&o)
    );
    assert!(keys_of(&redis, "typo").contains(&"rtq:{typo}:t:t1".to_string()));
    assert_eq!(registry(&redis), ["typ", "typo", "typo2"]);

    let o = rtq(
        &url,
        &[
            "queue",
            "delete",
            "typo",
            "--confirm",
            "typo",
            "--force",
            "--json",
        ],
    );
    assert!(o.status.success(), "{o:?}");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["schema"], 1);
    assert_eq!(
        (v["deleted"].as_bool(), v["pending"].as_u64()),
        (Some(true), Some(1))
    );
    assert!(v["keys"].as_u64().unwrap() >= 3, "{v}");
    assert!(
        keys_of(&redis, "typo").is_empty(),
        "{:?}",
        keys_of(&redis, "typo")
    );
    assert_eq!(registry(&redis), ["typ", "typo2"]);
    for q in ["typo2", "typ"] {
        assert!(
            keys_of(&redis, q).contains(&format!("rtq:{{{q}}}:t:n1")),
            "{q}"
        );
    }
    // Gone for every command.
    assert_eq!(rtq(&url, &["stats", "typo"]).status.code(), Some(1));
    let o = rtq(&url, &["queue", "delete", "typo", "--confirm", "typo"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_delete_refuses_a_queue_with_live_workers() {
    let seed = Seeded::new().await;
    let url = seed.redis.url();
    let o =
        tokio::task::block_in_place(|| rtq(&url, &["queue", "delete", "llm", "--confirm", "llm"]));
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(stderr(&o).contains("1 live workers"), "{}", stderr(&o));
    assert_eq!(registry(&seed.redis), ["llm"]);
    assert!(seed.admin.task("llm", "p0").await.is_ok());
}

#[test]
fn bad_names_and_out_of_range_values_are_usage_errors() {
    // Checked before any connection: no Redis needed, the port is closed.
    let url = "redis://127.0.0.1:1/";
    let usage: &[&[&str]] = &[
        &["stats", "a{b"],
        &["workers", "a:b"],
        &["task", "llm", "bad id"],
        &["submit", "llm", "{}", "--priority", "2000"],
        &["submit", "llm", "{}", "--max-attempts", "0"],
        &["submit", "llm", "{}", "--retention-secs", "0"],
        &["submit", "llm", "{}", "--label", "novalue"],
        &["tasks", "llm", "--limit", "0"],
        &["stats", "--window-secs", "5"],
        &["max-depth", "llm", "2000000000000"],
        &["purge", "llm", "--confirm", "lm"],
        &["submit", "llm", "@/nonexistent/input.json"],
        &["queue", "delete", "llm", "--confirm", "LLM"],
    ];
    for args in usage {
        let o = rtq(url, args);
        assert_eq!(o.status.code(), Some(2), "rtq {args:?}: {o:?}");
    }
    // A URL that does not parse is a usage error too, not "unreachable",
    // and its password is not shown.
    let o = rtq("redis://:hunter2@[::1", &["stats"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(!stderr(&o).contains("hunter2"), "{}", stderr(&o));
    // A well-formed URL of a closed port is "unreachable".
    assert_eq!(rtq(url, &["stats"]).status.code(), Some(3));
}

#[test]
fn queue_delete_counts_the_tasks_of_a_worker_past_its_lease_as_running() {
    let redis = RedisServer::start();
    let url = redis.url();
    assert!(rtq(&url, &["pause", "q", "--create"]).status.success());
    // A worker that died holding a task, not reaped yet (lease long past).
    let _: () = redis::pipe()
        .zadd("rtq:{q}:workers", "dead-1", 1)
        .sadd("rtq:{q}:wq:dead-1", "t1")
        .query(&mut redis.conn())
        .unwrap();
    let o = rtq(&url, &["queue", "delete", "q", "--confirm", "q"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(
        stderr(&o).contains("1 running") && stderr(&o).contains("0 live workers"),
        "{}",
        stderr(&o)
    );
    assert_eq!(registry(&redis), ["q"]);
}
