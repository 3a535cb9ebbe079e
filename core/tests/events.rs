//! The queue's event stream (`ev`), departed workers (`gone`) and task
//! deletion (`rtq2_delete_task`), driven step by step on a real
//! redis-server, with hostile keys in the way.

mod support;

use std::time::Duration;

use rtq_core::admin::{Admin, DeleteTaskReply, EventKind, QueueEvent};
use rtq_core::functions::complete::CompleteOutcome;
use rtq_core::functions::heartbeat::{Beat, Register};
use rtq_core::functions::release::ReleaseMode;
use rtq_core::functions::submit::SubmitReply;
use rtq_core::protocol::InboxMessage;
use rtq_core::{Client, Error, TaskState};
use support::proto::{Proto, Task};
use support::*;

const Q: &str = "ev";

async fn setup() -> (RedisServer, Proto, Admin) {
    let redis = RedisServer::start();
    let proto = Proto::connect(&redis, Q).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let admin = Admin::new(&client);
    (redis, proto, admin)
}

/// Kinds of the queue's events, oldest first.
async fn kinds(admin: &Admin) -> Vec<String> {
    let mut events: Vec<QueueEvent> = admin.events(Q, 100).await.unwrap();
    events.reverse();
    events.iter().map(|e| e.kind.as_str().to_owned()).collect()
}

/// Registers `worker` with a short lease (so it can lapse in a test).
async fn register_short(proto: &mut Proto, worker: &str, instance: &str, slots: usize) {
    proto
        .call(&Register(Beat {
            worker,
            instance,
            lease_ms: 100,
            slots,
            accepting: true,
            running: &[],
            info: &[],
        }))
        .await
        .unwrap();
}

/// The attempt of the task delivered to `worker` next.
async fn delivered(proto: &mut Proto, worker: &str) -> (String, u64) {
    match proto.pop(worker).await {
        Some(InboxMessage::Task(d)) => (d.id, d.attempt),
        other => panic!("expected a task for {worker}, got {other:?}"),
    }
}

#[tokio::test]
async fn endings_requeues_and_operator_actions_are_events_and_done_is_not() {
    let (_redis, mut p, admin) = setup().await;
    assert!(admin.events(Q, 10).await.unwrap().is_empty());
    p.register("w1", "i1", 4, &[]).await;
    for id in ["ok", "retry", "fail"] {
        let mut t = Task::new(id);
        t.max_attempts = if id == "retry" { 2 } else { 1 };
        assert!(matches!(p.submit(&t).await, SubmitReply::Accepted { .. }));
    }
    for _ in 0..3 {
        let (id, att) = delivered(&mut p, "w1").await;
        let outcome = match id.as_str() {
            "ok" => CompleteOutcome::Done,
            "retry" => CompleteOutcome::Retry,
            _ => CompleteOutcome::Failed,
        };
        p.complete("w1", &id, att, 0, outcome, false, &[]).await;
    }
    // A done task writes no event; a retry and a failure do.
    assert_eq!(kinds(&admin).await, ["retry", "failed"]);
    let events = admin.events(Q, 10).await.unwrap();
    let failed = &events[0];
    assert_eq!(failed.kind, EventKind::Failed);
    assert_eq!(failed.task.as_deref(), Some("fail"));
    assert_eq!(failed.worker.as_deref(), Some("w1"));
    assert_eq!(failed.message, "handler: it broke");
    assert!(failed.at_ms > 1_700_000_000_000, "{failed:?}");
    assert!(events[1].at_ms <= failed.at_ms);

    admin.requeue(Q, "fail").await.unwrap();
    admin.pause(Q, true).await.unwrap();
    admin.pause(Q, false).await.unwrap();
    admin.set_max_depth(Q, 7).await.unwrap();
    admin.pause(Q, true).await.unwrap();
    p.submit(&Task::new("c")).await;
    admin.cancel(Q, "c").await.unwrap();
    for id in ["p1", "p2", "p3"] {
        p.submit(&Task::new(id)).await;
    }
    let before_purge = kinds(&admin).await.len();
    admin.purge(Q).await.unwrap();
    let all = kinds(&admin).await;
    // One event for the whole purge, not one per task.
    assert_eq!(all.len(), before_purge + 1, "{all:?}");
    // The retry came back as "retry" went to delayed, then requeue of the
    // failure, operator actions, the cancel and the purge.
    assert_eq!(
        &all[2..],
        [
            "requeued",
            "paused",
            "resumed",
            "max_depth",
            "paused",
            "cancelled",
            "purged"
        ]
    );
    let newest = &admin.events(Q, 1).await.unwrap()[0];
    // "fail" and "retry" (delayed) were still queued too when purged.
    assert!(
        newest.message.starts_with("queued tasks cancelled: "),
        "{newest:?}"
    );
    assert_eq!(admin.events(Q, 2).await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_reaped_worker_is_departed_with_its_lost_attempts_until_it_registers_again() {
    let (_redis, mut p, admin) = setup().await;
    register_short(&mut p, "gpu-1", "a", 2).await;
    p.submit(&Task::new("t1")).await;
    let (id, _) = delivered(&mut p, "gpu-1").await;
    assert_eq!(id, "t1");
    assert!(admin.departed_workers(Q).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(p.housekeep().await.reaped, 1);

    let gone = admin.departed_workers(Q).await.unwrap();
    assert_eq!(gone.len(), 1, "{gone:?}");
    assert_eq!(gone[0].id, "gpu-1");
    assert_eq!(gone[0].field("state"), "dead");
    assert_eq!(gone[0].field("dead_why"), "stopped heartbeating");
    assert!(gone[0].field("dead_at").parse::<i64>().unwrap() > 0);
    assert_eq!(gone[0].lease_until_ms, None);
    let k = kinds(&admin).await;
    assert_eq!(k, ["lost", "worker_lost"]);
    // The lost attempt's task is back in pending at once (no backoff).
    let t1 = p.hash("t1").await;
    assert_eq!((t1["st"].as_str(), t1["due"].as_str()), ("queued", "0"));
    let in_pending: Option<f64> = redis::cmd("ZSCORE")
        .arg(p.keys.pending())
        .arg("t1")
        .query_async(&mut p.conn)
        .await
        .unwrap();
    assert!(in_pending.is_some());
    let lost = &admin.events(Q, 2).await.unwrap()[1];
    assert_eq!(lost.task.as_deref(), Some("t1"));
    assert!(lost.message.contains("gpu-1"), "{lost:?}");
    let wl = &admin.events(Q, 1).await.unwrap()[0];
    assert_eq!(wl.worker.as_deref(), Some("gpu-1"));
    assert!(wl.message.ends_with("attempts lost: 1"), "{wl:?}");

    // Its info is kept as long as it is listed, no longer.
    let ttl = pttl(&mut p.conn, &p.keys.worker("gpu-1")).await;
    assert!(ttl > 0 && ttl <= 600_000, "{ttl}");
    let ttl = pttl(&mut p.conn, &p.keys.departed()).await;
    assert!(ttl > 0 && ttl <= 600_000, "{ttl}");

    // Back under the same id: no longer departed.
    p.register("gpu-1", "b", 2, &[]).await;
    assert!(admin.departed_workers(Q).await.unwrap().is_empty());
    assert_eq!(departed_score(&mut p, "gpu-1").await, None);
}

#[tokio::test]
async fn a_worker_that_leaves_is_departed_as_stopped_and_a_restart_as_dead() {
    let (_redis, mut p, admin) = setup().await;
    p.register("w-left", "i1", 1, &[]).await;
    p.register("w-restarted", "i1", 1, &[]).await;
    p.release("w-left", "i1", ReleaseMode::Leave, &[]).await;
    // A new process under the same id replaces (reaps) the old one.
    p.register("w-restarted", "i2", 1, &[]).await;
    let gone = admin.departed_workers(Q).await.unwrap();
    let left: Vec<(&str, &str, &str)> = gone
        .iter()
        .map(|w| (w.id.as_str(), w.field("state"), w.field("dead_why")))
        .collect();
    // The restarted one registered again at once, so only the left one
    // stays departed.
    assert_eq!(left, [("w-left", "stopped", "left")]);
    assert_eq!(kinds(&admin).await, ["worker_left", "worker_lost"]);
    let restarted = &admin.events(Q, 1).await.unwrap()[0];
    assert!(restarted.message.contains("was restarted"), "{restarted:?}");
}

/// The raw `gone` entry of a worker.
async fn departed_score(p: &mut Proto, worker: &str) -> Option<i64> {
    redis::cmd("ZSCORE")
        .arg(p.keys.departed())
        .arg(worker)
        .query_async(&mut p.conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn departures_older_than_ten_minutes_are_trimmed_by_the_next_one() {
    let (_redis, mut p, admin) = setup().await;
    let long_ago = 1_000_000_000_000i64;
    let _: () = redis::cmd("ZADD")
        .arg(p.keys.departed())
        .arg(long_ago)
        .arg("ancient")
        .query_async(&mut p.conn)
        .await
        .unwrap();
    p.register("w", "i1", 1, &[]).await;
    p.release("w", "i1", ReleaseMode::Leave, &[]).await;
    assert_eq!(departed_score(&mut p, "ancient").await, None);
    assert!(departed_score(&mut p, "w").await.unwrap() > long_ago);
    let ttl = pttl(&mut p.conn, &p.keys.worker("w")).await;
    assert!(ttl > 0 && ttl <= 600_000, "{ttl}");
    assert_eq!(admin.departed_workers(Q).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_purge_of_one_task_is_one_event_and_of_none_no_event() {
    let (_redis, mut p, admin) = setup().await;
    admin.pause(Q, true).await.unwrap();
    assert_eq!(admin.purge(Q).await.unwrap(), 0);
    assert_eq!(kinds(&admin).await, ["paused"]);
    p.submit(&Task::new("only")).await;
    assert_eq!(admin.purge(Q).await.unwrap(), 1);
    assert_eq!(kinds(&admin).await, ["paused", "purged"]);
    assert_eq!(
        admin.events(Q, 1).await.unwrap()[0].message,
        "queued tasks cancelled: 1"
    );
}

#[tokio::test]
async fn departed_workers_whose_info_expired_are_not_listed() {
    let (_redis, mut p, admin) = setup().await;
    p.register("w", "i1", 1, &[]).await;
    p.release("w", "i1", ReleaseMode::Leave, &[]).await;
    assert_eq!(admin.departed_workers(Q).await.unwrap().len(), 1);
    let _: () = redis::cmd("DEL")
        .arg(p.keys.worker("w"))
        .query_async(&mut p.conn)
        .await
        .unwrap();
    assert!(admin.departed_workers(Q).await.unwrap().is_empty());
}

#[tokio::test]
async fn delete_task_forgets_only_ended_tasks_their_workers_let_go_of() {
    let (_redis, mut p, admin) = setup().await;
    p.register("w1", "i1", 1, &[]).await;
    p.submit(&Task::new("run")).await;
    p.submit(&Task::new("wait")).await;
    let (_, att) = delivered(&mut p, "w1").await;
    assert!(matches!(
        admin.delete_task(Q, "wait").await,
        Ok(DeleteTaskReply::NotEnded(TaskState::Queued))
    ));
    assert!(matches!(
        admin.delete_task(Q, "run").await,
        Ok(DeleteTaskReply::NotEnded(TaskState::Running))
    ));
    assert!(matches!(
        admin.delete_task(Q, "nope").await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        admin.delete_task(Q, "bad id!").await,
        Err(Error::InvalidName { .. })
    ));
    // Cancelled while running: its worker still holds it until it reports.
    admin.cancel(Q, "run").await.unwrap();
    assert_eq!(
        admin.delete_task(Q, "run").await.unwrap(),
        DeleteTaskReply::Owned("w1".into())
    );
    p.complete("w1", "run", att, 0, CompleteOutcome::Done, false, &[])
        .await;
    assert_eq!(
        admin.delete_task(Q, "run").await.unwrap(),
        DeleteTaskReply::Deleted(TaskState::Cancelled)
    );
    assert!(p.hash("run").await.is_empty());
    assert!(matches!(
        admin.task(Q, "run").await,
        Err(Error::NotFound { .. })
    ));
    let newest = &admin.events(Q, 1).await.unwrap()[0];
    assert_eq!(newest.kind, EventKind::Deleted);
    assert_eq!(newest.task.as_deref(), Some("run"));
    // Deleting it again: it is gone.
    assert!(matches!(
        admin.delete_task(Q, "run").await,
        Err(Error::NotFound { .. })
    ));
}

#[tokio::test]
async fn foreign_keys_in_place_of_ev_and_gone_never_stop_the_write_that_caused_them() {
    let (_redis, mut p, admin) = setup().await;
    for key in [p.keys.events(), p.keys.departed()] {
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg("not rtq's")
            .query_async(&mut p.conn)
            .await
            .unwrap();
    }
    p.submit(&Task::new("c")).await;
    assert_eq!(admin.cancel(Q, "c").await.unwrap(), TaskState::Queued);
    assert_eq!(p.hash("c").await["st"], "cancelled");
    register_short(&mut p, "w", "i", 1).await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(p.housekeep().await.reaped, 1);
    // The readers name the problem instead of inventing data.
    assert!(admin.events(Q, 10).await.is_err());
    assert!(admin.departed_workers(Q).await.is_err());
}

/// Cancels task `id` with `reason` (the Admin API gives its own reason).
async fn cancel_with(p: &mut Proto, id: &str, reason: &str) {
    p.call(&rtq_core::functions::cancel::Cancel {
        id,
        mode: rtq_core::functions::cancel::CancelMode::Cancel,
        reason,
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn messages_are_kept_to_exactly_256_bytes() {
    let (_redis, mut p, admin) = setup().await;
    p.submit(&Task::new("x")).await;
    let reason = "r".repeat(300);
    cancel_with(&mut p, "x", &reason).await;
    let e = &admin.events(Q, 1).await.unwrap()[0];
    assert_eq!(e.message.len(), 256);
    assert_eq!(e.message, format!("cancelled: {}", &reason[..245]));
}

#[tokio::test]
async fn huge_reasons_are_cut_in_events() {
    let (_redis, mut p, admin) = setup().await;
    p.submit(&Task::new("x")).await;
    let reason = "é".repeat(2000);
    cancel_with(&mut p, "x", &reason).await;
    let e = &admin.events(Q, 1).await.unwrap()[0];
    assert_eq!(e.kind, EventKind::Cancelled);
    // 256 bytes kept (the reader decodes a cut character lossily).
    assert!(e.message.len() <= 256 + 2, "{}", e.message.len());
    assert!(e.message.len() >= 250, "{}", e.message.len());
    let ttl = pttl(&mut p.conn, &p.keys.events()).await;
    assert!(ttl > 6 * 86_400_000 && ttl <= 7 * 86_400_000, "{ttl}");
    assert!(e.message.starts_with("cancelled: éé"));
}

#[tokio::test]
async fn delete_task_refuses_malformed_calls_and_writes_nothing() {
    let (_redis, mut p, _admin) = setup().await;
    p.submit(&Task::new("t")).await;
    let meta = p.keys.meta();
    let calls: [(&str, Vec<&str>); 4] = [
        (meta.as_str(), vec![]),
        (meta.as_str(), vec!["t", "extra"]),
        (meta.as_str(), vec!["bad id"]),
        ("rtq:{ev}:pending", vec!["t"]),
    ];
    for (key, args) in calls {
        let reply: redis::RedisResult<redis::Value> = redis::cmd("FCALL")
            .arg("rtq2_delete_task")
            .arg(1)
            .arg(key)
            .arg(&args)
            .query_async(&mut p.conn)
            .await;
        let err = reply.expect_err("a malformed call must be refused");
        assert!(err.to_string().contains("INVALID"), "{args:?}: {err}");
    }
    assert_eq!(p.hash("t").await["st"], "queued");
    let events: i64 = redis::cmd("EXISTS")
        .arg(p.keys.events())
        .query_async(&mut p.conn)
        .await
        .unwrap();
    assert_eq!(events, 0);
}
