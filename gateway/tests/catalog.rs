//! The catalog of served queues against a real Redis with many queues:
//! a request never waits for a read of every queue once a snapshot
//! exists.

mod support;

use std::time::{Duration, Instant};

use rtq_core::admin::Admin;
use rtq_testkit::RedisServer;
use serde_json::{json, Value};
use support::{start_gateway, start_worker, wait_model};

const QUEUES: usize = 500;

async fn commands_processed(redis: &RedisServer) -> u64 {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(&mut conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn unknown_models_cost_a_targeted_read_not_a_read_of_every_queue() {
    let redis = RedisServer::start();
    let client = rtq_core::Client::connect(&redis.url()).await.unwrap();
    let admin = Admin::new(&client);
    futures::future::try_join_all((0..QUEUES).map(|i| {
        let admin = admin.clone();
        async move { admin.register_queue(&format!("q{i:04}")).await }
    }))
    .await
    .unwrap();
    let _worker = start_worker(&redis.url(), "m", &["--handler", "mock"]);
    let end = Instant::now() + Duration::from_secs(20);
    while admin.overview("m").await.unwrap().workers_alive == 0 {
        assert!(Instant::now() < end, "the worker never came up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A TTL longer than the test: no background read during it.
    let gw = start_gateway(&redis.url(), &["--catalog-ttl-ms", "600000"]);
    let http = reqwest::Client::new();
    wait_model(&http, &gw, "", "m").await;

    let before = commands_processed(&redis).await;
    for i in 0..20 {
        let r = http
            .post(format!("{}/v1/chat/completions", gw.url))
            .json(&json!({"model": format!("nope-{i}"), "messages": []}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "model_not_found", "{v}");
    }
    // A queue the snapshot does not know yet is found by name.
    admin.register_queue("late").await.unwrap();
    let r = http
        .post(format!("{}/v1/chat/completions", gw.url))
        .json(&json!({"model": "late", "messages": []}))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "no_live_worker", "{v}");
    let spent = commands_processed(&redis).await - before;
    // One read of every queue costs several commands per queue.
    assert!(
        spent < QUEUES as u64,
        "21 requests ran {spent} Redis commands with {QUEUES} queues\n{}",
        gw.proc.log()
    );
}
