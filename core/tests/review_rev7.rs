//! Adversarial review of protocol v2 revision 7: coalesced submits
//! (`rtq2_submit_many` and the client's batcher), the earliest-due mark
//! and the "validate, compute, then write" rule under foreign keys of the
//! wrong type. Tests marked `` reproduce a defect
//! found by the review; the others pin down what was checked and held.

mod support;

use std::time::Duration;

use rtq_core::functions::complete::CompleteOutcome;
use rtq_core::functions::submit::{Submit, SubmitMany, SubmitReply};
use rtq_core::protocol::TaskState;
use rtq_core::{Client, Error, TaskRequest};
use serde_json::json;
use support::proto::{spec_of, task_of, Proto, RedisServer, Task};
use support::*;

fn submit_of<'a>(id: &'a str, spec: &'a str, timeout_ms: u64) -> Submit<'a> {
    Submit {
        id,
        spec,
        priority: 0,
        timeout_ms,
        max_attempts: 3,
        retention_ms: 600_000,
        reply: "",
        stream: false,
    }
}

fn is_wrongtype(r: &Result<impl std::fmt::Debug, Error>) -> bool {
    matches!(r, Err(Error::Function { reason, .. }) if reason.starts_with("WRONGTYPE"))
}

fn running_count(replies: &[SubmitReply]) -> usize {
    replies
        .iter()
        .filter(|r| {
            matches!(
                r,
                SubmitReply::Accepted {
                    state: TaskState::Running,
                    ..
                }
            )
        })
        .count()
}

// 1. "Validate all, then compute, then write": a foreign key of the wrong
//    type must refuse the call before anything is written.

#[tokio::test]

async fn a_submit_failing_on_a_foreign_inbox_writes_nothing() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    p.register("w1", "i1", 1, &[]).await;
    let inbox = p.keys.inbox("w1");
    p.raw(&["SET", &inbox, "not a list"]).await;
    let before = p.snapshot().await;
    let spec = spec_of("t1");
    let r = p.call(&submit_of("t1", &spec, 0)).await;
    assert!(is_wrongtype(&r), "{r:?}");
    assert_eq!(
        p.snapshot().await,
        before,
        "a task left 'running' on w1 that its inbox never received"
    );
}

#[tokio::test]

async fn a_handed_out_submit_failing_on_foreign_deadlines_writes_nothing() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    p.register("w1", "i1", 1, &[]).await;
    let deadlines = p.keys.deadlines();
    p.raw(&["SET", &deadlines, "not a zset"]).await;
    let before = p.snapshot().await;
    let spec = spec_of("t1");
    let r = p.call(&submit_of("t1", &spec, 60_000)).await;
    assert!(is_wrongtype(&r), "{r:?}");
    assert_eq!(
        p.snapshot().await,
        before,
        "wq:w1 holds t1 (no task hash) and w1's free slot is gone"
    );
}

#[tokio::test]

async fn a_mixed_batch_failing_on_a_foreign_pending_writes_nothing() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    p.register("w1", "i1", 1, &[]).await;
    let pending = p.keys.pending();
    p.raw(&["SET", &pending, "not a zset"]).await;
    let before = p.snapshot().await;
    let specs = [spec_of("a"), spec_of("b")];
    // "a" goes to w1's only slot, "b" to pending.
    let tasks = [submit_of("a", &specs[0], 0), submit_of("b", &specs[1], 0)];
    let r = p.call(&SubmitMany { tasks: &tasks }).await;
    assert!(is_wrongtype(&r), "{r:?}");
    assert_eq!(p.snapshot().await, before);
}

#[tokio::test]

async fn a_batch_failing_on_a_second_worker_s_foreign_ownership_set_writes_nothing() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    // w1 (2 free) is first in the free pool, w2 (1 free) second.
    p.register("w1", "i1", 2, &[]).await;
    p.register("w2", "i2", 1, &[]).await;
    let wq = p.keys.worker_tasks("w2");
    p.raw(&["SET", &wq, "not a set"]).await;
    let before = p.snapshot().await;
    let specs = [spec_of("a"), spec_of("b"), spec_of("c")];
    let tasks = [
        submit_of("a", &specs[0], 0),
        submit_of("b", &specs[1], 0),
        submit_of("c", &specs[2], 0),
    ];
    let r = p.call(&SubmitMany { tasks: &tasks }).await;
    assert!(is_wrongtype(&r), "{r:?}");
    assert_eq!(p.snapshot().await, before);
}

#[tokio::test]
async fn a_submit_failing_on_a_foreign_ownership_set_writes_nothing() {
    // The first write of a hand-out: refused before anything is written.
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    p.register("w1", "i1", 1, &[]).await;
    let wq = p.keys.worker_tasks("w1");
    p.raw(&["SET", &wq, "not a set"]).await;
    let before = p.snapshot().await;
    let spec = spec_of("t1");
    let r = p.call(&submit_of("t1", &spec, 60_000)).await;
    assert!(is_wrongtype(&r), "{r:?}");
    assert_eq!(p.snapshot().await, before);
}

// 2. Equivalence of one batch with the same submits one after another.

#[tokio::test]

async fn a_batch_hands_out_to_every_free_worker_as_sequential_submits_do() {
    let redis = RedisServer::start();
    let mut seq = Proto::connect(&redis, "seq").await;
    let mut bat = Proto::connect(&redis, "bat").await;
    for i in 0..20 {
        let w = format!("w{i}");
        seq.register(&w, "i", 1, &[]).await;
        bat.register(&w, "i", 1, &[]).await;
    }
    let ids: Vec<String> = (0..20).map(|i| format!("t{i}")).collect();
    let tasks: Vec<Task<'_>> = ids.iter().map(|id| Task::new(id)).collect();
    let mut one_by_one = Vec::new();
    for t in &tasks {
        one_by_one.push(seq.submit(t).await);
    }
    let batched = bat.submit_many(&tasks).await;
    assert_eq!(running_count(&one_by_one), 20, "sequential: every worker");
    assert_eq!(
        running_count(&batched),
        running_count(&one_by_one),
        "the batch left tasks pending while workers had free slots"
    );
}

#[tokio::test]

async fn a_batch_behind_dead_free_entries_reaches_the_live_worker() {
    let redis = RedisServer::start();
    let mut seq = Proto::connect(&redis, "seq").await;
    let mut bat = Proto::connect(&redis, "bat").await;
    for p in [&mut seq, &mut bat] {
        p.register("live", "i", 4, &[]).await;
        let free = p.keys.free();
        for i in 0..16 {
            // Workers that died without being reaped yet.
            p.raw(&["ZADD", &free, "100", &format!("dead{i}")]).await;
        }
    }
    let tasks = [Task::new("a"), Task::new("b")];
    let one_by_one = vec![seq.submit(&tasks[0]).await, seq.submit(&tasks[1]).await];
    let batched = bat.submit_many(&tasks).await;
    assert_eq!(running_count(&one_by_one), 1, "the second finds 'live'");
    // The batch reads past the dead entries (as many more as it has
    // tasks), so it reaches 'live' with both.
    assert!(running_count(&batched) >= running_count(&one_by_one));
}

#[tokio::test]
async fn a_batch_on_a_paused_full_queue_answers_as_sequential_submits() {
    let redis = RedisServer::start();
    let mut seq = Proto::connect(&redis, "seq").await;
    let mut bat = Proto::connect(&redis, "bat").await;
    for p in [&mut seq, &mut bat] {
        p.register("w1", "i", 2, &[]).await;
        let meta = p.keys.meta();
        p.raw(&["HSET", &meta, "paused", "1", "maxd", "2"]).await;
    }
    // Repeats of an id refused as QUEUE_FULL are tried again, like a
    // separate submit would be.
    let tasks = [
        Task::new("a"),
        Task::new("a"),
        Task::new("b"),
        Task::new("c"),
        Task::new("c"),
        Task::new("b"),
    ];
    let mut one_by_one = Vec::new();
    for t in &tasks {
        one_by_one.push(seq.submit(t).await);
    }
    let batched = bat.submit_many(&tasks).await;
    let shape = |rs: &[SubmitReply]| -> Vec<String> {
        rs.iter()
            .map(|r| match r {
                SubmitReply::Accepted { state, worker, .. } => format!("OK {state:?} {worker:?}"),
                SubmitReply::QueueFull { depth, max_depth } => format!("FULL {depth} {max_depth}"),
                SubmitReply::Duplicate { state, worker, .. } => format!("DUP {state:?} {worker:?}"),
            })
            .collect()
    };
    assert_eq!(shape(&batched), shape(&one_by_one));
    assert_eq!(bat.free("w1").await, 2.0, "paused: no slot used");
    assert_eq!(
        bat.zset(&bat.keys.pending()).await.len(),
        seq.zset(&seq.keys.pending()).await.len()
    );
}

#[tokio::test]
async fn a_batch_leaves_each_worker_s_remaining_free_count() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    p.register("w1", "i", 3, &[]).await;
    p.register("w2", "i", 2, &[]).await;
    let ids: Vec<String> = (0..4).map(|i| format!("t{i}")).collect();
    let tasks: Vec<Task<'_>> = ids.iter().map(|id| Task::new(id)).collect();
    let replies = p.submit_many(&tasks).await;
    assert_eq!(running_count(&replies), 4);
    let free = p.free("w1").await + p.free("w2").await;
    assert_eq!(free, 1.0, "5 slots, 4 handed out");
    let owned = p.owned("w1").await.len() + p.owned("w2").await.len();
    assert_eq!(owned, 4);
    let delivered =
        p.list(&p.keys.inbox("w1")).await.len() + p.list(&p.keys.inbox("w2")).await.len();
    assert_eq!(delivered, 4);
}

// 3. The client's batcher.

#[tokio::test]
async fn concurrent_submits_refused_by_a_foreign_key_each_get_their_own_error() {
    let redis = RedisServer::start();
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("co").unwrap();
    let mut conn = admin_conn(&redis).await;
    let _: () = redis::cmd("SET")
        .arg(q.keys().pending())
        .arg("not a zset")
        .query_async(&mut conn)
        .await
        .unwrap();
    let results = within(futures::future::join_all((0..40).map(|i| {
        let q = q.clone();
        async move {
            q.submit(TaskRequest::json(json!({ "i": i })).id(format!("t{i}")))
                .await
        }
    })))
    .await;
    for (i, r) in results.iter().enumerate() {
        assert!(
            matches!(r, Err(Error::Function { task: Some(t), reason, .. }) if *t == format!("t{i}") && reason.starts_with("WRONGTYPE")),
            "{i}: {r:?}"
        );
    }
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("rtq:{co}:t:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(keys.is_empty(), "{keys:?}");
}

#[tokio::test]

async fn a_submit_abandoned_while_waiting_in_the_batcher_is_not_sent() {
    let redis = RedisServer::start();
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("co").unwrap();
    q.submit(TaskRequest::json(json!({})).id("warm"))
        .await
        .unwrap();
    let mut conn = admin_conn(&redis).await;
    // Redis stops answering for 1.5 s: four submits fill the batcher's
    // calls in flight, the fifth waits in the batcher.
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1500)
        .arg("ALL")
        .query_async(&mut conn)
        .await
        .unwrap();
    // One at a time, so that each goes out as its own call (submits that
    // meet in the batcher would share one).
    let mut in_flight = Vec::new();
    for i in 0..4 {
        let q = q.clone();
        in_flight.push(tokio::spawn(async move {
            q.submit(TaskRequest::json(json!({})).id(format!("f{i}")))
                .await
        }));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let gave_up = tokio::time::timeout(
        Duration::from_millis(200),
        q.submit(TaskRequest::json(json!({})).id("abandoned")),
    )
    .await;
    assert!(gave_up.is_err(), "still waiting: {gave_up:?}");
    for h in in_flight {
        within(h).await.unwrap().unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let exists: bool = redis::cmd("EXISTS")
        .arg(q.keys().task("abandoned"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        !exists,
        "the caller was told nothing was submitted (its future was dropped before any call carried it)"
    );
}

// 4. The earliest-due mark.

#[tokio::test]
async fn a_due_retry_reaches_an_idle_worker_with_its_next_heartbeat() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    p.register("w1", "i1", 1, &[]).await;
    p.submit(&Task::new("t1")).await;
    assert_eq!(task_of(p.pop("w1").await), ("t1".into(), 1));
    let r = p
        .complete("w1", "t1", 1, 0, CompleteOutcome::Retry, false, &[])
        .await;
    assert_eq!(r.state, Some(TaskState::Queued));
    let meta = p.keys.meta();
    let dd: Option<String> = redis::cmd("HGET")
        .arg(&meta)
        .arg("dd")
        .query_async(&mut p.conn)
        .await
        .unwrap();
    assert!(dd.is_some(), "the mark is set with the retry");
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Idle: no complete will come; the heartbeat's upkeep promotes it.
    p.heartbeat("w1", "i1", 1, true, &[]).await;
    assert_eq!(task_of(p.pop("w1").await), ("t1".into(), 2));
    let dd: Option<String> = redis::cmd("HGET")
        .arg(&meta)
        .arg("dd")
        .query_async(&mut p.conn)
        .await
        .unwrap();
    assert_eq!(
        dd.as_deref(),
        Some("0"),
        "nothing delayed: the mark says so"
    );
}

// 5. The worker's last beat at shutdown.

#[tokio::test]

async fn a_task_interrupted_at_shutdown_is_handed_back_as_interrupted() {
    let redis = RedisServer::start();
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("sd").unwrap();
    let (seen_tx, mut seen_rx) = seen_channel();
    let config = rtq_core::WorkerConfig::new("sd")
        .slots(2)
        .lease(Duration::from_millis(3000))
        .heartbeat_every(Duration::from_millis(2900))
        .grace(Duration::from_millis(300))
        .cancel_grace(Duration::from_millis(100));
    let worker = TestWorker::start(&redis.url(), config, seen_tx).await;
    let wkey = format!("rtq:{{sd}}:w:{}", worker.id);
    let mut conn = admin_conn(&redis).await;
    q.submit(TaskRequest::json(json!({ "hold": true })).id("long"))
        .await
        .unwrap();
    assert!(matches!(
        next_seen(&mut seen_rx, 10).await,
        Seen::Started { .. }
    ));
    // Wait for two periodic beats: "long" runs for longer than a lease.
    let mut hb: Option<String> = None;
    let mut beats = 0;
    while beats < 2 {
        let now: Option<String> = redis::cmd("HGET")
            .arg(&wkey)
            .arg("hb")
            .query_async(&mut conn)
            .await
            .unwrap();
        if hb.is_some() && now != hb {
            beats += 1;
        }
        hb = now;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A task ends right after that beat: its statistics wait for the
    // shutdown's last beat.
    q.run(TaskRequest::json(json!({})).id("quick"))
        .await
        .unwrap();
    within(worker.stop()).await;
    let e1: Option<String> = redis::cmd("HGET")
        .arg(q.keys().task("long"))
        .arg("e:1")
        .query_async(&mut conn)
        .await
        .unwrap();
    let e1 = e1.unwrap_or_default();
    assert!(
        e1.contains("interrupted"),
        "the attempt's recorded end: {e1:?}"
    );
}

// 6. The earliest-due mark and retries written before it existed.

#[tokio::test]

async fn a_due_retry_without_a_mark_is_handed_out_by_a_busy_worker() {
    busy_worker_takes_the_due_retry_first(false).await;
}

#[tokio::test]
async fn a_due_retry_with_its_mark_is_handed_out_by_a_busy_worker() {
    busy_worker_takes_the_due_retry_first(true).await;
}

async fn busy_worker_takes_the_due_retry_first(keep_mark: bool) {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    p.register("w1", "i1", 1, &[]).await;
    p.submit(&Task::new("r")).await;
    assert_eq!(task_of(p.pop("w1").await), ("r".into(), 1));
    p.complete("w1", "r", 1, 0, CompleteOutcome::Retry, false, &[])
        .await;
    // The worker's heartbeat reports the slot free again.
    p.heartbeat("w1", "i1", 1, true, &[]).await;
    // Revision 6 kept no mark: the retry waits in `delayed` without one.
    let meta = p.keys.meta();
    if !keep_mark {
        p.raw(&["HDEL", &meta, "dd"]).await;
    }
    // Submitted after the retry's failure (a later score, not a tie).
    tokio::time::sleep(Duration::from_millis(10)).await;
    for id in ["p1", "p2", "p3", "p4"] {
        p.submit(&Task::new(id)).await;
    }
    assert_eq!(task_of(p.pop("w1").await), ("p1".into(), 1));
    tokio::time::sleep(Duration::from_millis(400)).await;
    // The worker stays busy: each complete takes the next task, and its
    // heartbeats find no free slot (so their upkeep dispatches nothing).
    let mut handed = Vec::new();
    let mut current = "p1".to_string();
    for _ in 0..4 {
        let r = p
            .complete("w1", &current, 1, 0, CompleteOutcome::Done, true, &[])
            .await;
        p.heartbeat("w1", "i1", 1, true, &[]).await;
        let Some(rtq_core::protocol::InboxMessage::Task(next)) = r.next else {
            break;
        };
        current = next.id.clone();
        handed.push(next.id);
        if current == "r" {
            break;
        }
    }
    assert_eq!(
        handed.first().map(String::as_str),
        Some("r"),
        "the due retry (submitted first) waited behind {handed:?}"
    );
}
