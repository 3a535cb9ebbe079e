//! Adversarial review of revision 8's console reads: what the statistics
//! cache shows after Redis lost its data. Each test reproduces a defect
//! the review found (and fails without its fix). Real Redis.

mod support;

use std::collections::HashMap;

use rtq_console::fetch::Reader;
use rtq_console::model::Fetched;
use rtq_core::admin::stats::BUCKET_MS;
use rtq_core::admin::Admin;
use rtq_core::keys::{QueueKeys, QUEUES};
use rtq_core::{Client, TaskRequest};
use serde_json::json;
use support::*;

async fn redis_now_ms(conn: &mut redis::aio::MultiplexedConnection) -> i64 {
    let t: Vec<i64> = redis::cmd("TIME").query_async(conn).await.unwrap();
    t[0] * 1000 + t[1] / 1000
}

/// done / failed per queue as the queues view shows them.
async fn done_failed(reader: &mut Reader, admin: &Admin) -> HashMap<String, (u64, u64)> {
    let Fetched::Queues { rows, .. } = reader.queues(admin, &["q".to_string()]).await.unwrap()
    else {
        panic!("queues expected")
    };
    rows.iter()
        .map(|r| {
            let s = &r.stats;
            (r.overview.name.clone(), (s.sum("done"), s.sum("failed")))
        })
        .collect()
}

#[tokio::test]
async fn statistics_cached_before_redis_lost_its_data_are_not_shown_after() {
    let redis = RedisServer::start();
    let client = Client::connect(&redis.url()).await.unwrap();
    let admin = Admin::new(&client);
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for q in ["q", "r"] {
        client
            .queue(q)
            .unwrap()
            .submit(TaskRequest::json(json!({})))
            .await
            .unwrap();
        wait_listed(&admin, q).await;
    }
    // Closed buckets (older than 30 s): "q" is on screen (whole
    // statistics), "r" off screen (counters).
    let old = redis_now_ms(&mut conn).await.div_euclid(BUCKET_MS) - 5;
    for (q, field, n) in [("q", "done", 500), ("r", "failed", 70)] {
        let key = QueueKeys::new(q).unwrap().stats(old);
        let _: () = redis::cmd("HSET")
            .arg(&key)
            .arg(field)
            .arg(n)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let mut reader = Reader::new();
    let before = done_failed(&mut reader, &admin).await;
    assert_eq!(before["q"], (500, 0));
    assert_eq!(before["r"], (0, 70));

    // Redis loses its data (a flush, or a restart without persistence);
    // live workers list their queues again before the console's next
    // refresh.
    let registry: Vec<u8> = redis::cmd("DUMP")
        .arg(QUEUES)
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    let _: () = redis::cmd("RESTORE")
        .arg(QUEUES)
        .arg(0)
        .arg(registry)
        .query_async(&mut conn)
        .await
        .unwrap();
    let after = done_failed(&mut reader, &admin).await;
    assert_eq!(
        (after["q"], after["r"]),
        ((0, 0), (0, 0)),
        "Redis holds no statistics, the console showed cached ones"
    );
}

/// A queue "b" (paused) with queued tasks t1 and t2.
async fn two_queued() -> (RedisServer, Client, Admin) {
    let redis = RedisServer::start();
    let client = Client::connect(&redis.url()).await.unwrap();
    let admin = Admin::new(&client);
    admin.pause("b", true).await.unwrap();
    let q = client.queue("b").unwrap();
    for id in ["t1", "t2"] {
        q.submit(TaskRequest::json(json!({})).id(id)).await.unwrap();
    }
    (redis, client, admin)
}

async fn state_of(admin: &Admin, id: &str) -> rtq_core::protocol::TaskState {
    admin.task("b", id).await.unwrap().state
}

#[tokio::test]
async fn a_bulk_cancel_acts_on_every_task_named_after_one_that_is_gone() {
    use rtq_console::fetch::{perform, Action};
    use rtq_core::protocol::TaskState;
    let (_redis, _client, admin) = two_queued().await;
    // "gone" was marked, then its retention passed (or it was deleted).
    let ids = ["t1", "gone", "t2"].map(String::from).to_vec();
    let msg = perform(&admin, &Action::Cancel("b".into(), ids)).await;
    assert_eq!(state_of(&admin, "t1").await, TaskState::Cancelled);
    assert_eq!(
        state_of(&admin, "t2").await,
        TaskState::Cancelled,
        "the confirmation named t2; the action stopped at 'gone': {msg:?}"
    );
    let msg = msg.unwrap();
    assert!(msg.contains("already gone"), "{msg}");
}

#[tokio::test]
async fn a_bulk_requeue_acts_on_every_task_named_after_one_that_is_gone() {
    use rtq_console::fetch::{perform, Action};
    use rtq_core::protocol::TaskState;
    let (_redis, _client, admin) = two_queued().await;
    for id in ["t1", "t2"] {
        admin.cancel("b", id).await.unwrap();
    }
    let ids = ["t1", "gone", "t2"].map(String::from).to_vec();
    let msg = perform(&admin, &Action::Requeue("b".into(), ids)).await;
    assert_eq!(state_of(&admin, "t1").await, TaskState::Queued);
    assert_eq!(
        state_of(&admin, "t2").await,
        TaskState::Queued,
        "the confirmation named t2; the action stopped at 'gone': {msg:?}"
    );
    let msg = msg.unwrap();
    assert!(
        msg.contains("requeued 2") && msg.contains("already gone"),
        "{msg}"
    );
}

#[tokio::test]
async fn foreign_event_and_departed_keys_do_not_hide_the_live_workers() {
    use rtq_console::fetch;
    use rtq_core::WorkerConfig;
    let redis = RedisServer::start();
    let worker = rtq_core::Worker::connect(&redis.url(), WorkerConfig::new("n").worker_id("gpu-9"))
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    struct Idle;
    #[rtq_core::async_trait]
    impl rtq_core::Handler for Idle {
        async fn handle(
            &self,
            _: rtq_core::TaskContext,
        ) -> Result<serde_json::Value, rtq_core::HandlerError> {
            Ok(json!({}))
        }
    }
    let run = tokio::spawn(worker.run(std::sync::Arc::new(Idle), async {
        let _ = rx.await;
    }));
    let client = Client::connect(&redis.url()).await.unwrap();
    let admin = Admin::new(&client);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while admin.workers("n").await.unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "never registered");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let k = QueueKeys::new("n").unwrap();
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // A departed worker whose info key is foreign, then foreign ev and gone.
    for (cmd, key, args) in [
        ("ZADD", k.departed(), vec!["9999999999999", "old"]),
        ("SET", k.worker("old"), vec!["foreign"]),
    ] {
        let _: () = redis::cmd(cmd)
            .arg(&key)
            .arg(args)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let nodes = fetch::nodes(&admin, "n").await;
    let Ok(Fetched::Nodes(n)) = &nodes else {
        panic!("a foreign worker info key hid the nodes view: {nodes:?}")
    };
    assert_eq!(n.workers.len(), 1);
    for key in [k.events(), k.departed()] {
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg("foreign")
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let nodes = fetch::nodes(&admin, "n").await;
    let Ok(Fetched::Nodes(n)) = &nodes else {
        panic!("foreign ev/gone keys hid the live workers: {nodes:?}")
    };
    assert_eq!(n.workers.len(), 1);
    assert!(n.events.is_empty() && n.departed.is_empty());
    let _ = tx.send(());
    let _ = run.await;
}
