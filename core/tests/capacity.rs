//! Capacity and attempts with the real Worker runtime: a worker never runs
//! more than its slots, never silently loses one, and no task loops. Each
//! test is a reproduction from the v1 review, kept as a regression.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use rtq_core::admin::Admin;
use rtq_core::functions::submit::Submit;
use rtq_core::functions::{self};
use rtq_core::{Client, Error, StreamEvent, TaskRequest, TaskState, WorkerConfig};
use serde_json::json;
use support::*;

fn fast(queue: &str) -> WorkerConfig {
    WorkerConfig::new(queue)
        .lease(Duration::from_millis(1000))
        .heartbeat_every(Duration::from_millis(200))
        .grace(Duration::from_millis(200))
}

/// Collects the handler's observations until `n` starts were seen.
async fn starts(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Seen>,
    n: usize,
) -> Vec<(String, u64, String)> {
    let mut out = Vec::new();
    while out.len() < n {
        if let Seen::Started {
            id,
            attempt,
            worker,
        } = next_seen(rx, 20).await
        {
            out.push((id, attempt, worker));
        }
    }
    out
}

#[tokio::test]
async fn an_operator_requeue_onto_the_same_worker_runs_the_task_once_more_and_it_ends() {
    let redis = RedisServer::start();
    let (seen, mut rx) = seen_channel();
    let w = TestWorker::start(&redis.url(), fast("same").slots(2), seen).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("same").unwrap();
    // Runs for three leases after the requeue: in v1 the old attempt's end
    // unlisted the new one, which the orphan sweep then restarted forever.
    let sub = q
        .submit(TaskRequest::json(json!({"chunks": 30, "delay_ms": 100})))
        .await
        .unwrap();
    assert_eq!(starts(&mut rx, 1).await[0].1, 1);
    Admin::new(&client).requeue("same", &sub.id).await.unwrap();
    assert_eq!(starts(&mut rx, 1).await[0].1, 2);
    let out = within(q.wait(&sub.id, None)).await.unwrap();
    assert_eq!(out.attempt, 2);
    let info = q.status(&sub.id).await.unwrap();
    assert_eq!((info.attempt, info.state), (2, TaskState::Done));
    // No third start was ever observed.
    while let Ok(seen) = rx.try_recv() {
        assert!(
            !matches!(seen, Seen::Started { attempt: 3.., .. }),
            "{seen:?}"
        );
    }
    w.stop().await;
}

#[tokio::test]
async fn a_worker_runs_no_more_than_its_slots_when_redis_offers_more() {
    let redis = RedisServer::start();
    let (seen, mut rx) = seen_channel();
    let w = TestWorker::start(&redis.url(), fast("one").slots(1), seen).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("one").unwrap();
    // Redis believes the worker has five free slots (a corrupted count).
    let mut conn = redis.conn();
    let _: () = redis::cmd("ZADD")
        .arg(q.keys().free())
        .arg(5)
        .arg(&w.id)
        .query(&mut conn)
        .unwrap();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            q.submit(TaskRequest::json(json!({"hold": true})))
                .await
                .unwrap()
                .id,
        );
    }
    let first = starts(&mut rx, 1).await;
    // The other two were handed back unstarted: queued, no attempt used.
    within(async {
        loop {
            let mut queued = 0;
            for id in &ids {
                let info = q.status(id).await.unwrap();
                if info.state == TaskState::Queued {
                    assert_eq!(info.failures, 0);
                    queued += 1;
                }
            }
            if queued == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(w.status.busy.load(Ordering::Acquire), 1);
    assert!(rx.try_recv().is_err(), "only one task started");
    // Releasing the held task lets the next one run, one at a time.
    w.release.notify_one();
    let second = starts(&mut rx, 1).await;
    assert_ne!(first[0].0, second[0].0);
    assert!(w.status.busy.load(Ordering::Acquire) <= 1);
    w.stop().await;
}

#[tokio::test]
async fn a_restart_under_the_same_worker_id_never_doubles_the_slots() {
    let redis = RedisServer::start();
    let (seen, mut rx) = seen_channel();
    let a = KillableWorker::start(
        &redis.url(),
        fast("re").slots(2).worker_id("node-1"),
        seen.clone(),
    )
    .await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("re").unwrap();
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(
            q.submit(TaskRequest::json(json!({"hold": true})).max_attempts(3))
                .await
                .unwrap()
                .id,
        );
    }
    starts(&mut rx, 2).await;
    a.kill();
    // The supervisor restarts it at once under the same id, before its
    // lease lapses.
    let b = TestWorker::start(&redis.url(), fast("re").slots(2).worker_id("node-1"), seen).await;
    let again = starts(&mut rx, 2).await;
    assert!(again.iter().all(|(_, _, w)| w == "node-1"));
    assert_eq!(b.status.busy.load(Ordering::Acquire), 2);
    let mut running = 0;
    let mut lost = 0;
    let mut why = Vec::new();
    for id in &ids {
        let info = q.status(id).await.unwrap();
        running += usize::from(info.state == TaskState::Running);
        lost += info.failures;
        why.push((
            id.clone(),
            info.state,
            info.attempt,
            info.attempt_errors.clone(),
        ));
    }
    assert_eq!(running, 2, "two slots, two running tasks: {why:?}");
    assert_eq!(
        lost, 2,
        "the two tasks of the dead process used an attempt: {why:?}"
    );
    assert!(rx.try_recv().is_err(), "no third start");
    b.stop().await;
}

#[tokio::test]
async fn an_unreadable_delivery_fails_its_task_and_returns_the_slot() {
    let redis = RedisServer::start();
    let (seen, mut rx) = seen_channel();
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("bad").unwrap();
    // A foreign client stored a spec that is not UTF-8 JSON, and a task
    // hash lost its spec field.
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut cmd = redis::cmd("FCALL");
    cmd.arg("rtq2_submit")
        .arg(1)
        .arg(q.keys().meta())
        .arg("binary")
        .arg(&b"\xff\xfe{"[..])
        .arg(0)
        .arg(0)
        .arg(3)
        .arg(60000)
        .arg("")
        .arg(0);
    let _: redis::Value = cmd.query_async(&mut conn).await.unwrap();
    let spec = r#"{"v":2,"id":"damaged"}"#;
    let _ = functions::call(
        &mut conn,
        q.keys(),
        &Submit {
            id: "damaged",
            spec,
            priority: 0,
            timeout_ms: 0,
            max_attempts: 3,
            retention_ms: 60000,
            reply: "",
            stream: false,
        },
    )
    .await
    .unwrap();
    let _: i64 = redis::cmd("HDEL")
        .arg(q.keys().task("damaged"))
        .arg("spec")
        .query_async(&mut conn)
        .await
        .unwrap();
    let w = TestWorker::start(&redis.url(), fast("bad").slots(1), seen).await;
    for id in ["binary", "damaged"] {
        let err = within(q.wait(id, None)).await.unwrap_err();
        assert!(
            matches!(&err, Error::Failed { reason, .. } if reason.contains("malformed task spec")),
            "{id}: {err}"
        );
    }
    // The single slot is free again: a normal task runs.
    let out = within(q.run(TaskRequest::json(json!({"ok": 1}))))
        .await
        .unwrap();
    assert_eq!(out.result["echo"]["ok"], 1);
    assert_eq!(starts(&mut rx, 1).await.len(), 1);
    w.stop().await;
}

#[tokio::test]
async fn losing_the_lease_stops_the_attempt_as_reassigned_not_as_a_failure() {
    let redis = RedisServer::start();
    let (seen, mut rx) = seen_channel();
    let w = TestWorker::start(
        &redis.url(),
        WorkerConfig::new("lease")
            .lease(Duration::from_secs(3))
            .heartbeat_every(Duration::from_millis(300)),
        seen,
    )
    .await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("lease").unwrap();
    let mut stream = q
        .stream(TaskRequest::json(json!({"hold": true})).max_attempts(3))
        .await
        .unwrap();
    assert_eq!(starts(&mut rx, 1).await[0].1, 1);
    // A network cut longer than the lease: housekeeping reaps the worker.
    let mut conn = redis.conn();
    let _: () = redis::cmd("ZADD")
        .arg(q.keys().workers())
        .arg("XX")
        .arg(1)
        .arg(&w.id)
        .query(&mut conn)
        .unwrap();
    let reaped = Admin::new(&client).housekeeping("lease").await.unwrap();
    assert_eq!(reaped.reaped, 1);
    // The worker hears GONE, stops attempt 1 as reassigned, registers again
    // and runs attempt 2.
    let (_, attempt, _) = starts(&mut rx, 1).await.remove(0);
    assert_eq!(attempt, 2);
    assert!(matches!(
        within(stream.next()).await,
        Some(Ok(StreamEvent::Restarted { attempt: 1, .. }))
    ));
    let info = q.status(stream.id()).await.unwrap();
    assert_eq!(info.failures, 1);
    let why = &info.attempt_errors[&1];
    assert!(why.contains("stopped heartbeating"), "{why}");
    assert!(!why.contains("stopped:"), "never a handler failure: {why}");
    assert_eq!(w.status.failed.load(Ordering::Acquire), 0);
    w.release.notify_one();
    while let Some(item) = within(stream.next()).await {
        if let StreamEvent::Done(out) = item.unwrap() {
            assert_eq!(out.attempt, 2);
            break;
        }
    }
    w.stop().await;
}

#[tokio::test]
async fn a_retryable_failure_moves_to_a_healthy_worker() {
    let redis = RedisServer::start();
    let (seen, mut rx) = seen_channel();
    let a = TestWorker::start(
        &redis.url(),
        fast("retry").worker_id("broken"),
        seen.clone(),
    )
    .await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("retry").unwrap();
    let run = tokio::spawn({
        let q = q.clone();
        async move {
            q.run(TaskRequest::json(json!({"fail_on": "broken"})).max_attempts(3))
                .await
        }
    });
    assert_eq!(starts(&mut rx, 1).await[0].2, "broken");
    let b = TestWorker::start(&redis.url(), fast("retry").worker_id("healthy"), seen).await;
    let out = within(run).await.unwrap().unwrap();
    assert_eq!(out.result["worker"], "healthy");
    assert_eq!(
        out.attempt, 2,
        "one failure on the broken node, then done elsewhere"
    );
    a.stop().await;
    b.stop().await;
}
