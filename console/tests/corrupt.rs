//! `rtq stats` with one corrupt queue: that queue is an error row (the
//! reason on stderr, an `error` field in JSON), every other queue is
//! listed as usual, and the command succeeds.

use std::process::Command;

use rtq_core::admin::Admin;
use rtq_core::keys::QueueKeys;
use rtq_core::Client;
use rtq_testkit::RedisServer;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
async fn stats_shows_a_corrupt_queue_as_an_error_row_and_the_rest_as_usual() {
    let redis = RedisServer::start();
    let client = Client::connect(&redis.url()).await.unwrap();
    let admin = Admin::new(&client);
    admin.pause("good", true).await.unwrap();
    admin.pause("bad", true).await.unwrap();
    let bad = QueueKeys::new("bad").unwrap();
    let mut conn = redis.conn();
    let _: () = redis::cmd("DEL")
        .arg(bad.pending())
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(bad.pending())
        .arg("x")
        .query(&mut conn)
        .unwrap();
    let url = redis.url();
    let (text, json) = tokio::task::spawn_blocking(move || {
        let run = |args: &[&str]| {
            Command::new(env!("CARGO_BIN_EXE_rtq"))
                .arg("--redis")
                .arg(&url)
                .args(args)
                .output()
                .unwrap()
        };
        (run(&["stats"]), run(&["stats", "--json"]))
    })
    .await
    .unwrap();
    assert!(text.status.success(), "{text:?}");
    let out = String::from_utf8_lossy(&text.stdout);
    let err = String::from_utf8_lossy(&text.stderr);
    let bad_line = out
        .lines()
        .find(|l| l.starts_with("bad "))
        .expect("a row for bad");
    assert!(bad_line.contains("error"), "{out}");
    let good_line = out
        .lines()
        .find(|l| l.starts_with("good "))
        .expect("a row for good");
    assert!(good_line.contains("paused"), "{out}");
    assert!(
        err.contains("queue bad") && err.contains("WRONGTYPE"),
        "{err}"
    );

    assert!(json.status.success(), "{json:?}");
    let rows: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(rows["schema"], 1);
    let rows = rows["queues"].as_array().unwrap();
    let by_name = |n: &str| rows.iter().find(|r| r["queue"] == n).unwrap().clone();
    assert!(by_name("bad")["error"]
        .as_str()
        .unwrap()
        .contains("WRONGTYPE"));
    assert!(by_name("good")["error"].is_null());
}
