//! The operator side of stream queues (protocol v3) against a real
//! redis-server: summaries of a mix of exact and stream queues, a foreign
//! key in a band, workers, running and queued tasks, cancel, the actions a
//! stream queue refuses. Tasks are submitted through the real client and
//! made running by a hand-driven worker calling the real functions
//! (`beat` for liveness, `read_new` to take entries).

mod support;

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use rtq_core::admin::{Admin, QueueMode};
use rtq_core::functions::v3::{self, Delivery};
use rtq_core::keys::QueueKeys;
use rtq_core::{Client, Error, TaskRequest, TaskState};
use serde_json::json;
use support::*;

/// Submits `id` to stream queue `q` with `priority` (with 2 bands: > 0 goes
/// to band 0, the rest to band 1).
async fn submit(client: &Client, q: &str, id: &str, priority: i16) {
    client
        .queue(q)
        .unwrap()
        .submit(
            TaskRequest::json(json!({"id": id}))
                .id(id)
                .priority(priority),
        )
        .await
        .unwrap();
}

/// Worker `wid` is live on `q` (a lease of 30 s) and takes `count` new
/// entries of `band`.
async fn take(
    conn: &mut MultiplexedConnection,
    q: &str,
    wid: &str,
    band: u8,
    count: usize,
) -> Vec<Delivery> {
    let keys = QueueKeys::new(q).unwrap();
    v3::beat(conn, &keys, wid, 30_000, &[]).await.unwrap();
    let got = v3::read_new(conn, &keys, wid, band, count, None)
        .await
        .unwrap();
    assert_eq!(got.len(), count, "entries taken by {wid}");
    got
}

/// A stream queue "st" (2 bands, depth limit 50) with 6 tasks: b0a, b0b,
/// b0c in band 0, b1a, b1b, b1c in band 1; worker w1 runs b0a and b0b,
/// worker w2 runs b1a, worker old beat with a 100 ms lease that lapsed.
/// And an exact queue "ex" with 3 queued tasks (paused).
async fn seed(redis: &RedisServer) -> (Client, Admin, MultiplexedConnection) {
    let client = Client::connect(&redis.url()).await.unwrap();
    let admin = Admin::new(&client);
    let mut conn = admin_conn(redis).await;
    client
        .queue("st")
        .unwrap()
        .create_stream(2, 50)
        .await
        .unwrap();
    for id in ["b0a", "b0b", "b0c"] {
        submit(&client, "st", id, 500).await;
    }
    for id in ["b1a", "b1b", "b1c"] {
        submit(&client, "st", id, -500).await;
    }
    take(&mut conn, "st", "w1", 0, 2).await;
    take(&mut conn, "st", "w2", 1, 1).await;
    let keys = QueueKeys::new("st").unwrap();
    v3::beat(&mut conn, &keys, "old", 100, &[]).await.unwrap();
    admin.pause("ex", true).await.unwrap();
    let ex = client.queue("ex").unwrap();
    for i in 0..3 {
        ex.submit(TaskRequest::json(json!({"i": i})).id(format!("e{i}")))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    (client, admin, conn)
}

#[tokio::test]
async fn summaries_count_exact_and_stream_queues_side_by_side() {
    let redis = RedisServer::start();
    let (_client, admin, _conn) = seed(&redis).await;
    let rows = admin.summaries().await.unwrap();
    let row = |name: &str| rows.iter().find(|o| o.name == name).unwrap().clone();
    let st = row("st");
    assert_eq!(st.error, None);
    assert_eq!(st.mode, QueueMode::Stream { bands: 2 });
    assert_eq!(
        (st.pending, st.running, st.delayed, st.max_depth),
        (3, 3, 0, 50)
    );
    assert_eq!((st.workers_alive, st.workers_stale), (2, 1));
    assert!(!st.paused);
    assert_eq!(st.head_wait_ms, None, "summaries do not read entries");
    let ex = row("ex");
    assert_eq!(ex.mode, QueueMode::Exact);
    assert_eq!((ex.pending, ex.running, ex.error), (3, 0, None));
    assert!(ex.paused);
    assert!(ex.head_wait_ms.is_some());

    // One queue's overview reads the same counts, and its head's age.
    let o = admin.overview("st").await.unwrap();
    assert_eq!(
        (o.mode, o.pending, o.running, o.max_depth),
        (QueueMode::Stream { bands: 2 }, 3, 3, 50)
    );
    assert_eq!((o.workers_alive, o.workers_stale), (2, 1));
    let head = o.head_wait_ms.expect("a queued task has waited");
    assert!((150..60_000).contains(&head), "head waited {head} ms");
    assert_eq!(admin.overview("ex").await.unwrap().mode, QueueMode::Exact);

    // The dashboard rows are the summaries.
    let dash = admin.dashboard(6).await.unwrap();
    let (d, _) = dash.iter().find(|(o, _)| o.name == "st").unwrap();
    assert_eq!((d.mode, d.pending, d.running), (st.mode, 3, 3));
    assert_eq!(admin.queue_mode("st").await.unwrap(), st.mode);
    assert_eq!(admin.queue_mode("nothing").await.unwrap(), QueueMode::Exact);
}

#[tokio::test]
async fn the_head_age_is_the_oldest_queued_entry_and_none_without_one() {
    let redis = RedisServer::start();
    let client = Client::connect(&redis.url()).await.unwrap();
    let admin = Admin::new(&client);
    let mut conn = admin_conn(&redis).await;
    client
        .queue("h")
        .unwrap()
        .create_stream(2, 0)
        .await
        .unwrap();
    // The oldest queued task is in band 1; band 0's only task runs.
    submit(&client, "h", "old", -500).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    submit(&client, "h", "new", 500).await;
    let o = admin.overview("h").await.unwrap();
    assert!(
        o.head_wait_ms.unwrap() >= 300,
        "the oldest queued task, whatever its band: {o:?}"
    );
    take(&mut conn, "h", "w", 1, 1).await;
    let o = admin.overview("h").await.unwrap();
    assert!(
        o.head_wait_ms.unwrap() < 300,
        "a running task is not waiting: {o:?}"
    );
    take(&mut conn, "h", "w", 0, 1).await;
    let o = admin.overview("h").await.unwrap();
    assert_eq!((o.pending, o.running, o.head_wait_ms), (0, 2, None));
}

#[tokio::test]
async fn a_foreign_key_in_a_band_is_that_rows_error_only() {
    let redis = RedisServer::start();
    let (_client, admin, mut conn) = seed(&redis).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    client
        .queue("bad")
        .unwrap()
        .create_stream(3, 0)
        .await
        .unwrap();
    submit(&client, "bad", "x", 0).await;
    let _: () = redis::cmd("SET")
        .arg("rtq:{bad}:b:2")
        .arg("foreign")
        .query_async(&mut conn)
        .await
        .unwrap();
    let rows = admin.summaries().await.unwrap();
    let bad = rows.iter().find(|o| o.name == "bad").unwrap();
    let e = bad.error.as_deref().expect("the bad row has an error");
    assert!(
        e.contains("rtq:{bad}:b:2") && e.contains("WRONGTYPE"),
        "{e}"
    );
    assert_eq!(bad.mode, QueueMode::Stream { bands: 3 });
    assert_eq!((bad.pending, bad.running), (0, 0));
    let st = rows.iter().find(|o| o.name == "st").unwrap();
    assert_eq!((st.error.as_deref(), st.pending, st.running), (None, 3, 3));
    let ex = rows.iter().find(|o| o.name == "ex").unwrap();
    assert_eq!((ex.error.as_deref(), ex.pending), (None, 3));

    let many = admin
        .workers_of_many(&["st".into(), "bad".into(), "ex".into()])
        .await
        .unwrap();
    assert_eq!(many[0].as_ref().unwrap().len(), 3);
    assert!(many[1].as_ref().unwrap_err().to_string().contains("b:2"));
    assert!(many[2].as_ref().unwrap().is_empty());
    assert!(admin.overview("bad").await.is_err());

    // A band stream that is missing, or lost its group, holds nothing.
    let _: () = redis::cmd("DEL")
        .arg("rtq:{bad}:b:2")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg("rtq:{bad}:b:1")
        .arg("w")
        .query_async(&mut conn)
        .await
        .unwrap();
    let rows = admin.summaries_of(&["bad".into()]).await.unwrap();
    assert_eq!((rows[0].error.as_deref(), rows[0].pending), (None, 1));
    let pending = admin.pending("bad", 0, 10).await.unwrap();
    assert_eq!(ids(&pending), ["x"], "a band without its group: all queued");
}

fn ids(tasks: &[rtq_core::TaskInfo]) -> Vec<&str> {
    tasks.iter().map(|t| t.id.as_str()).collect()
}

#[tokio::test]
async fn workers_running_and_queued_tasks_of_a_stream_queue() {
    let redis = RedisServer::start();
    let (_client, admin, mut conn) = seed(&redis).await;
    let keys = QueueKeys::new("st").unwrap();
    // w9 takes b0c, then vanishes from the live set (died): its entry is
    // still held.
    take(&mut conn, "st", "w9", 0, 1).await;
    let _: () = redis::cmd("ZREM")
        .arg(v3::live_key(&keys))
        .arg("w9")
        .query_async(&mut conn)
        .await
        .unwrap();

    let workers = admin.workers("st").await.unwrap();
    let summary: Vec<(&str, bool, &str, Vec<&str>)> = workers
        .iter()
        .map(|w| {
            (
                w.id.as_str(),
                w.lease_until_ms.is_some(),
                w.field("busy"),
                w.tasks.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("old", true, "0", vec![]),
            ("w1", true, "2", vec!["b0a", "b0b"]),
            ("w2", true, "1", vec!["b1a"]),
            ("w9", false, "1", vec!["b0c"]),
        ]
    );
    assert_eq!(workers[1].field("mode"), "stream");
    assert_eq!(workers[1].field("state"), "busy");
    assert_eq!(workers[0].field("state"), "idle");

    let running = admin.running("st").await.unwrap();
    let rows: Vec<(&str, &str, TaskState, u64)> = running
        .iter()
        .map(|t| (t.id.as_str(), t.worker.as_str(), t.state, t.attempt))
        .collect();
    assert_eq!(
        rows,
        vec![
            ("b0a", "w1", TaskState::Running, 1),
            ("b0b", "w1", TaskState::Running, 1),
            ("b1a", "w2", TaskState::Running, 1),
            ("b0c", "w9", TaskState::Running, 1),
        ]
    );
    assert!(running[0].submitted_ms > 0 && running[0].max_attempts >= 1);
    let page = admin.running_page("st", 1, 2).await.unwrap();
    assert_eq!(page.total, 4);
    assert_eq!(ids(&page.tasks), ["b0b", "b1a"]);
    assert_eq!(page.leases.len(), 3);

    // Queued: band 0 first (none left), then band 1 in order, paged.
    let pending = admin.pending("st", 0, 10).await.unwrap();
    assert_eq!(ids(&pending), ["b1b", "b1c"]);
    assert!(pending.iter().all(|t| t.state == TaskState::Queued));
    assert_eq!(ids(&admin.pending("st", 1, 10).await.unwrap()), ["b1c"]);
    assert_eq!(ids(&admin.pending_page("st", 0, 1).await.unwrap()), ["b1b"]);
    assert!(admin.pending("st", 2, 10).await.unwrap().is_empty());
    assert!(admin.pending("st", 0, 0).await.unwrap().is_empty());

    // One task, and its output.
    let t = admin.task("st", "b0a").await.unwrap();
    assert_eq!((t.state, t.worker.as_str()), (TaskState::Running, "w1"));
    assert_eq!(
        admin.task("st", "b1b").await.unwrap().state,
        TaskState::Queued
    );
    assert!(matches!(
        admin.task("st", "nope").await,
        Err(Error::NotFound { .. })
    ));
    let d = v3::read_new(&mut conn, &keys, "w2", 1, 1, None)
        .await
        .unwrap()
        .remove(0);
    let write = v3::ChunkWrite {
        held: d.held.clone(),
        id: d.id.clone(),
        seq0: 0,
        chunks: vec![b"one ".to_vec(), b"two ".to_vec(), b"three".to_vec()],
    };
    v3::write(&mut conn, &keys, "w2", &[write]).await.unwrap();
    assert_eq!(
        admin.tail("st", &d.id, 2).await.unwrap(),
        vec![b"two ".to_vec(), b"three".to_vec()]
    );
    assert!(admin.tail("st", "b1c", 5).await.unwrap().is_empty());
}

#[tokio::test]
async fn cancel_and_max_depth_work_and_other_actions_are_refused_without_a_write() {
    let redis = RedisServer::start();
    let (_client, admin, mut conn) = seed(&redis).await;
    // Queued: removed from its band.
    assert_eq!(admin.cancel("st", "b1b").await.unwrap(), TaskState::Queued);
    assert_eq!(
        ids(&admin.pending("st", 0, 10).await.unwrap()),
        ["b0c", "b1c"]
    );
    // Running: its worker gets a stop order.
    assert_eq!(admin.cancel("st", "b0a").await.unwrap(), TaskState::Running);
    let orders: Vec<String> = redis::cmd("LRANGE")
        .arg("rtq:{st}:in:w1")
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(orders.len(), 1);
    assert!(orders[0].contains("b0a"), "{orders:?}");
    assert_eq!(
        admin.cancel("st", "b0a").await.unwrap(),
        TaskState::Cancelled
    );
    assert!(matches!(
        admin.cancel("st", "nope").await,
        Err(Error::NotFound { .. })
    ));
    let o = admin.overview("st").await.unwrap();
    assert_eq!((o.pending, o.running), (2, 2), "{o:?}");

    admin.set_max_depth("st", 7).await.unwrap();
    assert_eq!(admin.overview("st").await.unwrap().max_depth, 7);

    let before = keyspace::snapshot(&mut conn).await;
    let refused: Vec<(&str, Result<(), Error>)> = vec![
        ("pause", admin.pause("st", true).await.map(drop)),
        ("resume", admin.pause("st", false).await.map(drop)),
        ("purge", admin.purge("st").await.map(drop)),
        ("requeue", admin.requeue("st", "b0b").await.map(drop)),
        (
            "priority",
            admin.set_priority("st", "b1c", 9).await.map(drop),
        ),
        ("delete", admin.delete_task("st", "b0a").await.map(drop)),
    ];
    for (what, r) in refused {
        match r {
            Err(Error::InvalidInput(m)) => assert!(
                m.contains("queue st is a stream queue")
                    && m.contains("not available on stream queues yet"),
                "{what}: {m}"
            ),
            other => panic!("{what} on a stream queue: {other:?}"),
        }
    }
    let report = admin.housekeeping("st").await.unwrap();
    assert_eq!(
        (report.reaped, report.expired, report.dispatched),
        (0, 0, 0)
    );
    assert_eq!(
        keyspace::snapshot(&mut conn).await,
        before,
        "a refused action writes nothing"
    );
    // The exact queue still has every action.
    assert_eq!(admin.pause("ex", false).await.unwrap(), 0);
    assert_eq!(admin.purge("ex").await.unwrap(), 3);
}

/// The served-queues catalog (the gateway's `queue_not_served` check and
/// model list) sees a stream queue's live workers, from `lv`.
#[tokio::test]
async fn the_served_catalog_sees_a_stream_queue_s_live_workers() {
    let redis = RedisServer::start();
    let (_client, admin, _conn) = seed(&redis).await;
    let served = admin.served_queues().await.unwrap();
    let st = served.queues.iter().find(|q| q.name == "st").unwrap();
    assert_eq!(st.error, None);
    let mut ids: Vec<&str> = st.workers.iter().map(|w| w.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["w1", "w2"], "live only: 'old' lapsed");
    let ex = served.queues.iter().find(|q| q.name == "ex").unwrap();
    assert!(ex.paused && ex.workers.is_empty());
}
