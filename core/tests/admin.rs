//! Admin operations against a real redis-server: counts, workers, pages,
//! requeue, priority changes, purge and statistics.

mod support;

use std::time::Duration;

use rtq_core::admin::Admin;
use rtq_core::{Client, Error, TaskRequest, TaskState, WorkerConfig};
use serde_json::json;
use support::*;

#[tokio::test]
async fn overview_pages_priority_and_purge() {
    let redis = RedisServer::start();
    let client = Client::connect(&redis.url()).await.unwrap();
    let admin = Admin::new(&client);
    let q = client.queue("ops").unwrap();
    admin.pause("ops", true).await.unwrap();
    for i in 0..30 {
        q.submit(TaskRequest::json(json!({"i": i})).id(format!("t{i:02}")))
            .await
            .unwrap();
    }
    let o = admin.overview("ops").await.unwrap();
    assert!(o.paused);
    assert_eq!((o.pending, o.running, o.workers_alive), (30, 0, 0));
    assert!(o.head_wait_ms.unwrap() >= 0);
    assert!(admin.queues().await.unwrap().contains(&"ops".to_string()));

    let page: Vec<String> = admin
        .pending("ops", 10, 5)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(page, ["t10", "t11", "t12", "t13", "t14"]);
    assert_eq!(
        admin.set_priority("ops", "t29", 7).await.unwrap(),
        TaskState::Queued
    );
    assert_eq!(admin.pending("ops", 0, 1).await.unwrap()[0].id, "t29");
    assert!(matches!(
        admin.set_priority("ops", "t29", 5000).await,
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        admin.requeue("ops", "missing").await,
        Err(Error::NotFound { .. })
    ));

    // A follower of a purged task is told why it ends.
    let follower = tokio::spawn({
        let q = q.clone();
        async move { q.wait("t05", None).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(admin.purge("ops").await.unwrap(), 30);
    assert_eq!(admin.overview("ops").await.unwrap().pending, 0);
    let err = within(follower).await.unwrap().unwrap_err();
    assert!(
        matches!(err, Error::Cancelled { ref reason, .. } if reason == "queue purged"),
        "{err}"
    );
    assert_eq!(admin.recent("ops", 0, 100).await.unwrap().len(), 30);
}

#[tokio::test]
async fn workers_requeue_and_stats() {
    let redis = RedisServer::start();
    let (seen, mut rx) = seen_channel();
    let w = TestWorker::start(
        &redis.url(),
        WorkerConfig::new("st").slots(2).label("gpu", "A100"),
        seen,
    )
    .await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let admin = Admin::new(&client);
    let q = client.queue("st").unwrap();
    for i in 0..20 {
        within(q.run(TaskRequest::json(json!({"i": i, "chunks": 2}))))
            .await
            .unwrap();
    }
    let failed = within(q.run(TaskRequest::json(json!({"fail": "boom"})).id("will-fail")))
        .await
        .unwrap_err();
    assert!(matches!(failed, Error::Failed { .. }));

    let workers = admin.workers("st").await.unwrap();
    assert_eq!(workers.len(), 1);
    // Read with other queues (one that does not exist, one corrupt): the
    // same worker, and the corrupt queue's error in its place only.
    let mut conn = redis.conn();
    let corrupt = rtq_core::keys::QueueKeys::new("corrupt").unwrap();
    let _: () = redis::cmd("SET")
        .arg(corrupt.workers())
        .arg("x")
        .query(&mut conn)
        .unwrap();
    let many = admin
        .workers_of_many(&["none".into(), "st".into(), "corrupt".into()])
        .await
        .unwrap();
    assert!(many[0].as_ref().unwrap().is_empty());
    assert_eq!(many[1].as_ref().unwrap(), &workers);
    let err = many[2].as_ref().unwrap_err().to_string();
    assert!(
        err.contains("corrupt") && err.contains("WRONGTYPE"),
        "{err}"
    );
    assert!(matches!(
        admin.workers_of_many(&["bad name".into()]).await,
        Err(Error::InvalidName { .. })
    ));
    assert_eq!(workers[0].id, w.id);
    assert_eq!(workers[0].field("slots"), "2");
    assert_eq!(rtq_core::admin::worker_labels(&workers[0])["gpu"], "A100");

    // The worker adds its statistics with its heartbeat.
    eventually("the worker's statistics arrive", || {
        let admin = &admin;
        async move {
            let s = admin.stats("st", 30).await.unwrap();
            s.sum("done") == 20 && s.sum("failed") == 1
        }
    })
    .await;
    let stats = admin.stats("st", 30).await.unwrap();
    assert_eq!(stats.sum("done"), 20);
    assert_eq!(stats.sum("failed"), 1);
    assert_eq!(stats.sum("sub"), 21);
    assert_eq!(stats.total.count, 21);
    assert_eq!(stats.first_chunk.count, 20);
    assert!(stats.wait.p99.is_some());

    // Requeue the failed task: it runs again (attempt 2) and now fails again
    // the same way, recorded on the same task.
    while rx.try_recv().is_ok() {}
    assert_eq!(
        admin.requeue("st", "will-fail").await.unwrap(),
        TaskState::Failed
    );
    let Seen::Started { id, attempt, .. } = next_seen(&mut rx, 20).await else {
        panic!()
    };
    assert_eq!((id.as_str(), attempt), ("will-fail", 2));
    let running_or_done = admin.task("st", "will-fail").await.unwrap();
    assert!(running_or_done.attempt == 2);
    w.stop().await;
    assert_eq!(admin.overview("st").await.unwrap().workers_alive, 0);
}

#[tokio::test]
async fn the_dashboard_agrees_with_per_queue_reads() {
    let redis = RedisServer::start();
    let (seen, _rx) = seen_channel();
    let w = TestWorker::start(&redis.url(), WorkerConfig::new("d1").slots(1), seen).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let admin = Admin::new(&client);
    let q1 = client.queue("d1").unwrap();
    for i in 0..5 {
        within(q1.run(TaskRequest::json(json!({"i": i}))))
            .await
            .unwrap();
    }
    // A held task keeps the worker busy; a paused second queue holds a backlog.
    let held = q1
        .submit(TaskRequest::json(json!({"hold": true})))
        .await
        .unwrap();
    admin.pause("d2", true).await.unwrap();
    let q2 = client.queue("d2").unwrap();
    for _ in 0..3 {
        q2.submit(TaskRequest::json(json!(1))).await.unwrap();
    }
    for _ in 0..200 {
        if admin.overview("d1").await.unwrap().running == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eventually("the worker's statistics arrive", || {
        let admin = &admin;
        async move { admin.stats("d1", 30).await.unwrap().sum("done") == 5 }
    })
    .await;
    let board = admin.dashboard(30).await.unwrap();
    assert_eq!(board.len(), 2);
    for (o, s) in &board {
        let single = admin.overview(&o.name).await.unwrap();
        let stats = admin.stats(&o.name, 30).await.unwrap();
        assert_eq!(
            (
                o.pending,
                o.running,
                o.workers_alive,
                o.paused,
                o.idle_slots
            ),
            (
                single.pending,
                single.running,
                single.workers_alive,
                single.paused,
                single.idle_slots
            ),
            "{}",
            o.name
        );
        assert_eq!(o.head_wait_ms.is_some(), single.head_wait_ms.is_some());
        assert_eq!(
            (s.sum("done"), s.sum("sub")),
            (stats.sum("done"), stats.sum("sub"))
        );
    }
    let d1 = &board.iter().find(|(o, _)| o.name == "d1").unwrap();
    assert_eq!((d1.0.running, d1.1.sum("done")), (1, 5));
    let d2 = &board.iter().find(|(o, _)| o.name == "d2").unwrap();
    assert_eq!((d2.0.pending, d2.0.paused), (3, true));
    q1.cancel(&held.id, "done").await.unwrap();
    w.stop().await;
}

#[tokio::test]
async fn pages_take_any_offset_and_limit_without_overflow() {
    let redis = RedisServer::start();
    let client = Client::connect(&redis.url()).await.unwrap();
    let admin = Admin::new(&client);
    let q = client.queue("pages").unwrap();
    admin.pause("pages", true).await.unwrap();
    for i in 0..4 {
        q.submit(TaskRequest::json(json!({"i": i})).id(format!("p{i}")))
            .await
            .unwrap();
    }
    let ids = |page: Vec<rtq_core::TaskInfo>| page.into_iter().map(|t| t.id).collect::<Vec<_>>();
    // A limit of 0 is an empty page (it read one task before).
    assert!(admin.pending("pages", 0, 0).await.unwrap().is_empty());
    assert!(admin.pending_page("pages", 1, 0).await.unwrap().is_empty());
    // offset + limit past usize (a panic in debug builds before) or past
    // what Redis indexes (an error before): the rest, or nothing.
    assert_eq!(
        ids(admin.pending("pages", 2, usize::MAX).await.unwrap()),
        ["p2", "p3"]
    );
    assert_eq!(
        ids(admin.pending_page("pages", 1, usize::MAX).await.unwrap()),
        ["p1", "p2", "p3"]
    );
    for offset in [usize::MAX, i64::MAX as usize, i64::MAX as usize + 1] {
        assert!(admin
            .pending("pages", offset, usize::MAX)
            .await
            .unwrap()
            .is_empty());
        assert!(admin
            .recent("pages", offset, usize::MAX)
            .await
            .unwrap()
            .is_empty());
        assert!(admin
            .recent_page("pages", offset, 10)
            .await
            .unwrap()
            .is_empty());
        let running = admin
            .running_page("pages", offset, usize::MAX)
            .await
            .unwrap();
        assert!(running.tasks.is_empty());
    }
    assert_eq!(admin.recent("pages", 0, usize::MAX).await.unwrap().len(), 0);
}
