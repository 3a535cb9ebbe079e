//! The protocol functions one call at a time, with the faults placed by
//! hand: regressions for every capacity, attempt and validation defect the
//! v1 review reproduced, and the guards a mutation run found unguarded.
//! Every test asserts the state in Redis, not only the replies.

mod support;

use rtq_core::functions::cancel::CancelReply;
use rtq_core::functions::chunk::WriteStatus;
use rtq_core::functions::complete::CompleteOutcome;
use rtq_core::functions::heartbeat::{BeatReply, StopWhy};
use rtq_core::functions::release::{HandBack, ReleaseMode, ReleaseReply};
use rtq_core::functions::requeue::RequeueReply;
use rtq_core::functions::submit::{Submit, SubmitReply};
use rtq_core::protocol::{InboxMessage, TaskState};
use rtq_core::Error;
use support::proto::{spec_of, task_of, Proto, RedisServer, Task};

fn report(r: BeatReply) -> rtq_core::functions::heartbeat::BeatReport {
    match r {
        BeatReply::Ok(report) => report,
        other => panic!("expected OK, got {other:?}"),
    }
}

const DONE: CompleteOutcome = CompleteOutcome::Done;

#[tokio::test]
async fn a_retried_complete_replays_its_answer_and_never_adds_capacity() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    report(p.register("w1", "i1", 1, &[]).await);
    p.submit(&Task::new("t1")).await;
    assert_eq!(task_of(p.pop("w1").await), ("t1".into(), 1));
    // Empty queue: the first complete frees the slot once; the retry of a
    // call whose reply was lost adds nothing.
    let first = p.complete("w1", "t1", 1, 0, DONE, true, &[]).await;
    let again = p.complete("w1", "t1", 1, 0, DONE, true, &[]).await;
    assert_eq!(first.status, WriteStatus::Ok);
    // The same answer, but for its time: a replay answers its own.
    assert!(again.now_ms >= first.now_ms, "{again:?} {first:?}");
    let again = rtq_core::functions::complete::CompleteReply {
        now_ms: first.now_ms,
        ..again
    };
    assert_eq!(again, first);
    assert_eq!(p.free("w1").await, 1.0);

    // Queued work: the retry answers with the same next task, and no second
    // task is handed out.
    p.submit(&Task::new("t2")).await; // taken by the free slot
    assert_eq!(task_of(p.pop("w1").await), ("t2".into(), 1));
    p.submit(&Task::new("t3")).await;
    p.submit(&Task::new("t4")).await;
    let first = p.complete("w1", "t2", 1, 0, DONE, true, &[]).await;
    let again = p.complete("w1", "t2", 1, 0, DONE, true, &[]).await;
    let next = |r: &rtq_core::functions::complete::CompleteReply| match &r.next {
        Some(InboxMessage::Task(d)) => (d.id.clone(), d.attempt),
        other => panic!("{other:?}"),
    };
    assert_eq!(next(&first), ("t3".into(), 1));
    assert_eq!(next(&again), ("t3".into(), 1));
    assert_eq!(p.owned("w1").await, vec!["t3".to_string()]);
    assert_eq!(p.free("w1").await, 0.0);
    assert_eq!(p.field("t4", "st").await.as_deref(), Some("queued"));
}

#[tokio::test]
async fn registering_again_sets_capacity_instead_of_adding_to_it() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    for _ in 0..3 {
        assert_eq!(report(p.register("w1", "i1", 4, &[]).await).free, 4);
    }
    assert_eq!(p.free("w1").await, 4.0);
    for i in 0..6 {
        p.submit(&Task::new(&format!("t{i}"))).await;
    }
    assert_eq!(p.owned("w1").await.len(), 4, "four slots, four tasks");
    // A restart under the same id (a new instance) reclaims the old
    // process's tasks: they use an attempt and come back, never doubling up.
    let r = report(p.register("w1", "i2", 4, &[]).await);
    assert_eq!(r.swept, 4);
    let owned = p.owned("w1").await;
    assert_eq!(owned.len(), 4, "still four: {owned:?}");
    let mut fails = 0;
    for i in 0..6 {
        fails += p.count(&format!("t{i}"), "fails").await;
    }
    assert_eq!(
        fails, 4,
        "each task of the replaced process used an attempt"
    );
    // The old process's heartbeat is refused and writes nothing.
    assert_eq!(
        p.heartbeat("w1", "i1", 4, true, &[]).await,
        BeatReply::Replaced
    );
    assert_eq!(p.free("w1").await, 0.0);
}

#[tokio::test]
async fn the_heartbeat_counts_attempts_still_winding_down_as_busy() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    report(p.register("w1", "i1", 2, &[]).await);
    p.submit(&Task::new("t1")).await;
    assert_eq!(task_of(p.pop("w1").await), ("t1".into(), 1));
    // An operator requeue while attempt 1 runs: it lands on the same worker
    // (the other slot) as attempt 2.
    assert_eq!(
        p.requeue("t1").await,
        RequeueReply::Requeued(TaskState::Running)
    );
    let cancel = p.pop("w1").await;
    assert!(
        matches!(&cancel, Some(InboxMessage::Cancel { attempt: 1, .. })),
        "{cancel:?}"
    );
    assert_eq!(task_of(p.pop("w1").await), ("t1".into(), 2));
    // Both attempts run locally: attempt 1 is stale, attempt 2 current.
    let running = vec![("t1".to_string(), 1), ("t1".to_string(), 2)];
    let r = report(p.heartbeat("w1", "i1", 2, true, &running).await);
    assert_eq!(r.free, 0, "two local attempts fill two slots");
    assert_eq!(r.stop.len(), 1);
    assert_eq!((r.stop[0].attempt, r.stop[0].why), (1, StopWhy::Reassigned));
    assert_eq!(
        r.swept, 0,
        "attempt 2 is reported: never swept as an orphan"
    );
    // Attempt 1's late complete is fenced and changes nothing.
    let late = p.complete("w1", "t1", 1, 0, DONE, true, &[]).await;
    assert_eq!(late.status, WriteStatus::Fenced);
    assert_eq!(p.owned("w1").await, vec!["t1".to_string()]);
    assert_eq!(p.field("t1", "st").await.as_deref(), Some("running"));
    // Once attempt 1 is gone, the slot comes back.
    let r = report(p.heartbeat("w1", "i1", 2, true, &running[1..]).await);
    assert_eq!(r.free, 1);
    let done = p.complete("w1", "t1", 2, 0, DONE, false, &[]).await;
    assert_eq!(done.status, WriteStatus::Ok);
    assert_eq!(p.field("t1", "att").await.as_deref(), Some("2"));
}

#[tokio::test]
async fn the_orphan_sweep_waits_a_lease_and_counts_the_lost_attempt() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    report(p.register("w1", "i1", 1, &[]).await);
    p.submit(&Task::new("t1")).await;
    let _lost = p.pop("w1").await; // the delivery never reaches the worker
                                   // Fresh: the message may still be in flight; nothing happens.
    let r = report(p.heartbeat("w1", "i1", 1, true, &[]).await);
    assert_eq!((r.swept, r.free), (0, 0));
    assert_eq!(p.owned("w1").await, vec!["t1".to_string()]);
    // Owned for longer than the lease and not reported: requeued, with the
    // attempt counted, and the slot offered again (the task itself comes
    // straight back to it).
    let key = p.keys.task("t1");
    p.raw(&["HSET", &key, "start", "0"]).await;
    let r = report(p.heartbeat("w1", "i1", 1, true, &[]).await);
    assert_eq!(r.swept, 1);
    assert_eq!(p.count("t1", "fails").await, 1);
    assert_eq!(task_of(p.pop("w1").await), ("t1".into(), 2));
}

#[tokio::test]
async fn a_worker_never_gets_work_while_its_free_count_is_zero() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    report(p.register("w1", "i1", 1, &[]).await);
    report(p.heartbeat("w1", "i1", 1, false, &[]).await);
    assert_eq!(p.free("w1").await, 0.0, "intake off: no free slots");
    p.submit(&Task::new("t1")).await;
    assert_eq!(p.pop("w1").await, None);
    assert_eq!(p.field("t1", "st").await.as_deref(), Some("queued"));
    // Intake on: the next heartbeat offers the slot and dispatches.
    report(p.heartbeat("w1", "i1", 1, true, &[]).await);
    assert_eq!(task_of(p.pop("w1").await), ("t1".into(), 1));
}

#[tokio::test]
async fn a_delivery_handed_back_unstarted_uses_no_attempt_and_withdraws_the_slot() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    report(p.register("w1", "i1", 1, &[]).await);
    p.submit(&Task::new("t1")).await;
    assert_eq!(task_of(p.pop("w1").await), ("t1".into(), 1));
    let back = HandBack {
        id: "t1".into(),
        attempt: 1,
        started: false,
    };
    let r = p.release("w1", "i1", ReleaseMode::HandBack, &[back]).await;
    assert_eq!(r, ReleaseReply::Ok { handed_back: 1 });
    assert_eq!(p.field("t1", "st").await.as_deref(), Some("queued"));
    assert_eq!(p.count("t1", "fails").await, 0);
    assert_eq!(
        p.free("w1").await,
        0.0,
        "not offered again until the next heartbeat"
    );
    assert!(p.owned("w1").await.is_empty());
    // A started attempt handed back at shutdown uses one.
    report(p.register("w2", "i2", 1, &[]).await);
    assert_eq!(task_of(p.pop("w2").await), ("t1".into(), 2));
    let back = HandBack {
        id: "t1".into(),
        attempt: 2,
        started: true,
    };
    p.release("w2", "i2", ReleaseMode::Leave, &[back]).await;
    assert_eq!(p.count("t1", "fails").await, 1);
    assert!(p
        .field("t1", "e:2")
        .await
        .unwrap()
        .contains("interrupted: worker w2 shut down"));
    let workers = p.zset(&p.keys.workers()).await;
    assert_eq!(workers, vec!["w1".to_string()], "w2 left");
}

#[tokio::test]
async fn a_retryable_failure_backs_off_and_goes_to_another_worker() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    report(p.register("w1", "i1", 1, &[]).await);
    p.submit(&Task::new("t1")).await;
    p.submit(&Task::new("older")).await;
    assert_eq!(task_of(p.pop("w1").await), ("t1".into(), 1));
    report(p.register("w2", "i2", 1, &[]).await);
    assert_eq!(task_of(p.pop("w2").await), ("older".into(), 1));
    // w1 fails t1 retryably and asks for more: t1 is not handed straight
    // back; it waits out its backoff in `delayed`.
    let r = p
        .complete("w1", "t1", 1, 0, CompleteOutcome::Retry, true, &[])
        .await;
    assert_eq!((r.status, r.next.is_none()), (WriteStatus::Ok, true));
    assert_eq!(p.zset(&p.keys.delayed()).await, vec!["t1".to_string()]);
    assert_eq!(p.count("t1", "fails").await, 1);
    // Backoff over (made due by hand): w1 has the free slot but avoids t1
    // while w2 lives; w2 takes it as soon as it frees its slot.
    let delayed = p.keys.delayed();
    p.raw(&["ZADD", &delayed, "XX", "0", "t1"]).await;
    p.housekeep().await;
    assert_eq!(
        p.pop("w1").await,
        None,
        "the failing worker does not get it back"
    );
    assert_eq!(p.field("t1", "st").await.as_deref(), Some("queued"));
    let r = p.complete("w2", "older", 1, 0, DONE, true, &[]).await;
    match r.next {
        Some(InboxMessage::Task(d)) => assert_eq!((d.id.as_str(), d.attempt), ("t1", 2)),
        other => panic!("w2 should take t1: {other:?}"),
    }
}

#[tokio::test]
async fn a_retry_goes_back_to_the_same_worker_when_it_is_the_only_one() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    report(p.register("w1", "i1", 1, &[]).await);
    p.submit(&Task::new("t1")).await;
    assert_eq!(task_of(p.pop("w1").await), ("t1".into(), 1));
    p.complete("w1", "t1", 1, 0, CompleteOutcome::Retry, true, &[])
        .await;
    let delayed = p.keys.delayed();
    p.raw(&["ZADD", &delayed, "XX", "0", "t1"]).await;
    p.housekeep().await;
    assert_eq!(task_of(p.pop("w1").await), ("t1".into(), 2));
}

#[tokio::test]
async fn expired_tasks_at_the_head_never_starve_valid_ones() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    for i in 0..250 {
        let id = format!("old{i}");
        let mut t = Task::new(&id);
        t.timeout_ms = 1;
        p.submit(&t).await;
    }
    p.submit(&Task::new("good")).await;
    // Let the deadlines pass on the Redis clock (TIME moves on its own).
    let deadlines = p.keys.deadlines();
    let due: Vec<String> = p.zset(&deadlines).await;
    for id in &due {
        p.raw(&["ZADD", &deadlines, "XX", "1", id]).await;
        let key = p.keys.task(id);
        p.raw(&["HSET", &key, "dl", "1"]).await;
    }
    report(p.register("w1", "i1", 1, &[]).await);
    // Scans are capped per call; housekeeping continues until the valid
    // task is handed out, even with no other traffic.
    for _ in 0..5 {
        if p.field("good", "st").await.as_deref() == Some("running") {
            break;
        }
        p.housekeep().await;
    }
    assert_eq!(p.field("good", "st").await.as_deref(), Some("running"));
    assert_eq!(p.field("old7", "st").await.as_deref(), Some("expired"));
}

#[tokio::test]
async fn a_late_write_from_an_older_attempt_of_the_same_worker_is_fenced() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    report(p.register("w1", "i1", 2, &[]).await);
    p.submit(&Task::new("t1")).await;
    assert_eq!(task_of(p.pop("w1").await), ("t1".into(), 1));
    let ok = p.chunk("w1", "t1", 1, 0, &[b"a".to_vec()]).await;
    assert_eq!((ok.status, ok.chunks), (WriteStatus::Ok, 1));
    p.requeue("t1").await;
    let _cancel = p.pop("w1").await;
    assert_eq!(task_of(p.pop("w1").await), ("t1".into(), 2));
    let stale = p.chunk("w1", "t1", 1, 1, &[b"stale".to_vec()]).await;
    assert_eq!(stale.status, WriteStatus::Fenced);
    let stale = p.complete("w1", "t1", 1, 1, DONE, true, &[]).await;
    assert_eq!(stale.status, WriteStatus::Fenced);
    assert!(p.list(&p.keys.output("t1")).await.is_empty());
    assert_eq!(p.field("t1", "st").await.as_deref(), Some("running"));
    assert_eq!(p.count("t1", "nc").await, 0);
}

#[tokio::test]
async fn chunk_writes_apply_only_at_the_stored_count() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    report(p.register("w1", "i1", 1, &[]).await);
    p.submit(&Task::new("t1")).await;
    let _ = p.pop("w1").await;
    let c = |s: &str| s.as_bytes().to_vec();
    assert_eq!(p.chunk("w1", "t1", 1, 0, &[c("a"), c("b")]).await.chunks, 2);
    // Behind (a retried write) and ahead (a write that overtook another):
    // both refused, the count returned, nothing stored.
    for seq0 in [0, 1, 3] {
        let r = p.chunk("w1", "t1", 1, seq0, &[c("x")]).await;
        assert_eq!((r.status, r.chunks), (WriteStatus::Order, 2), "seq0 {seq0}");
        let r = p
            .complete("w1", "t1", 1, seq0, DONE, false, &[c("x")])
            .await;
        assert_eq!((r.status, r.chunks), (WriteStatus::Order, 2), "seq0 {seq0}");
    }
    let r = p.complete("w1", "t1", 1, 2, DONE, false, &[c("c")]).await;
    assert_eq!((r.status, r.chunks), (WriteStatus::Ok, 3));
    assert_eq!(
        p.list(&p.keys.output("t1")).await,
        vec![c("a"), c("b"), c("c")]
    );
}

#[tokio::test]
async fn cancelling_a_finished_task_changes_nothing() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    report(p.register("w1", "i1", 1, &[]).await);
    p.submit(&Task::new("t1")).await;
    let _ = p.pop("w1").await;
    p.complete("w1", "t1", 1, 0, DONE, false, &[]).await;
    let before = p.hash("t1").await;
    assert_eq!(p.cancel("t1").await, CancelReply::Finished(TaskState::Done));
    assert_eq!(p.hash("t1").await, before);
}

#[tokio::test]
async fn a_retried_task_keeps_nothing_of_the_failed_attempt() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    report(p.register("w1", "i1", 1, &[]).await);
    p.submit(&Task::new("t1")).await;
    let _ = p.pop("w1").await;
    p.chunk("w1", "t1", 1, 0, &[b"half".to_vec()]).await;
    p.complete("w1", "t1", 1, 1, CompleteOutcome::Retry, false, &[])
        .await;
    let h = p.hash("t1").await;
    assert_eq!(
        (h["st"].as_str(), h["nc"].as_str(), h["nb"].as_str()),
        ("queued", "0", "0")
    );
    assert!(p.list(&p.keys.output("t1")).await.is_empty());
}

#[tokio::test]
async fn an_operator_requeue_of_an_ended_task_clears_its_expiry_and_budget() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    report(p.register("w1", "i1", 1, &[]).await);
    let mut t = Task::new("t1");
    t.max_attempts = 1;
    t.timeout_ms = 60_000;
    p.submit(&t).await;
    let _ = p.pop("w1").await;
    p.complete("w1", "t1", 1, 0, CompleteOutcome::Failed, false, &[])
        .await;
    let ttl = |v: redis::Value| redis::from_redis_value::<i64>(v).unwrap();
    let key = p.keys.task("t1");
    assert!(ttl(p.raw(&["PTTL", &key]).await) > 0);
    assert_eq!(
        p.requeue("t1").await,
        RequeueReply::Requeued(TaskState::Failed)
    );
    assert_eq!(
        ttl(p.raw(&["PTTL", &key]).await),
        -1,
        "no expiry while queued again"
    );
    let h = p.hash("t1").await;
    assert_eq!((h["fails"].as_str(), h["dl"].as_str()), ("0", "0"));
    assert!(p.zset(&p.keys.deadlines()).await.is_empty());
}

#[tokio::test]
async fn a_reaped_worker_loses_its_free_slots_and_gets_them_back_by_registering() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    report(p.register("w1", "i1", 3, &[]).await);
    assert_eq!(p.free("w1").await, 3.0);
    let workers = p.keys.workers();
    p.raw(&["ZADD", &workers, "XX", "1", "w1"]).await;
    assert_eq!(p.housekeep().await.reaped, 1);
    assert_eq!(p.free("w1").await, 0.0);
    p.submit(&Task::new("t1")).await;
    assert_eq!(p.pop("w1").await, None, "a dead worker gets nothing");
    // Its next heartbeat says GONE and writes nothing; it registers again.
    assert_eq!(p.heartbeat("w1", "i1", 3, true, &[]).await, BeatReply::Gone);
    assert_eq!(p.free("w1").await, 0.0);
    report(p.register("w1", "i1", 3, &[]).await);
    assert_eq!(task_of(p.pop("w1").await), ("t1".into(), 1));
    assert_eq!(p.free("w1").await, 2.0);
}

#[tokio::test]
async fn a_complete_after_the_lease_lapsed_loses_no_slot() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    report(p.register("w1", "i1", 1, &[]).await);
    p.submit(&Task::new("t1")).await;
    let _ = p.pop("w1").await;
    // A Redis outage longer than the lease: the worker is reaped, its task
    // requeued (and handed to nobody: no other worker).
    let workers = p.keys.workers();
    p.raw(&["ZADD", &workers, "XX", "1", "w1"]).await;
    p.housekeep().await;
    let late = p.complete("w1", "t1", 1, 0, DONE, true, &[]).await;
    assert_eq!(late.status, WriteStatus::Fenced);
    assert_eq!(p.field("t1", "st").await.as_deref(), Some("queued"));
    // The worker hears GONE, registers again with its stale attempt
    // winding down: told to stop it, and its slot is whole once it ends.
    assert_eq!(
        p.heartbeat("w1", "i1", 1, true, &[("t1".into(), 1)]).await,
        BeatReply::Gone
    );
    let r = report(p.register("w1", "i1", 1, &[("t1".into(), 1)]).await);
    assert_eq!((r.stop[0].why, r.free), (StopWhy::Requeued, 0));
    let r = report(p.heartbeat("w1", "i1", 1, true, &[]).await);
    assert_eq!(r.free, 1, "the stale attempt ended: the slot is whole");
    // ...and went straight to the queued task.
    assert_eq!(task_of(p.pop("w1").await), ("t1".into(), 2));
    assert_eq!(p.free("w1").await, 0.0);
}

#[tokio::test]
async fn every_argument_is_checked_before_anything_is_written() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    report(p.register("w1", "i1", 1, &[]).await);
    p.submit(&Task::new("t1")).await;
    let before = p.snapshot().await;
    let spec = spec_of("x");
    let submit = |id: &'static str, timeout_ms: u64, reply: &'static str| Submit {
        id,
        spec: "{}",
        priority: 0,
        timeout_ms,
        max_attempts: 3,
        retention_ms: 1000,
        reply,
        stream: false,
    };
    let deadlines = p.keys.deadlines();
    let cases: Vec<(&str, Result<SubmitReply, Error>)> = vec![
        (
            "timeout 1e17",
            p.call(&submit("a", 100_000_000_000_000_000, "")).await,
        ),
        (
            "reply key of another kind",
            p.call(&submit("b", 0, Box::leak(deadlines.into_boxed_str())))
                .await,
        ),
        (
            "reply key of another queue",
            p.call(&submit("c", 0, "rtq:{other}:r:c1")).await,
        ),
        ("bad id", p.call(&submit("a b", 0, "")).await),
    ];
    for (what, r) in cases {
        assert!(matches!(r, Err(Error::InvalidInput(_))), "{what}: {r:?}");
    }
    let raw_cases: Vec<Vec<&str>> = vec![
        vec!["t2", &spec, "0", "0", "abc", "1000", "", "0"],
        vec!["t2", &spec, "5000", "0", "3", "1000", "", "0"],
        vec!["t2", &spec, "0", "-5", "3", "1000", "", "0"],
        vec!["t2", &spec, "0", "0", "3", "1e3", "", "0"],
        vec!["t2", &spec, "0", "0", "3", "1000", "", "2"],
        vec!["t2", "", "0", "0", "3", "1000", "", "0"],
        vec!["t2", &spec, "0", "0", "3"],
    ];
    let meta = p.keys.meta();
    for args in raw_cases {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg("rtq2_submit").arg(1).arg(&meta);
        for a in &args {
            cmd.arg(*a);
        }
        let r: redis::RedisResult<redis::Value> = cmd.query_async(&mut p.conn).await;
        let e = r.expect_err(&format!("{args:?} must be refused"));
        assert_eq!(e.code(), Some("INVALID"), "{args:?}: {e}");
    }
    // Worker functions: too many chunks, a chunk too big, unknown info field,
    // a wrong key.
    let many: Vec<Vec<u8>> = (0..513).map(|_| b"x".to_vec()).collect();
    let r = p
        .call(&rtq_core::functions::chunk::Chunk {
            worker: "w1",
            id: "t1",
            attempt: 1,
            seq0: 0,
            chunks: &many,
        })
        .await;
    assert!(matches!(r, Err(Error::InvalidInput(_))), "{r:?}");
    let big = vec![vec![0u8; (1 << 20) + 1]];
    let r = p
        .call(&rtq_core::functions::chunk::Chunk {
            worker: "w1",
            id: "t1",
            attempt: 1,
            seq0: 0,
            chunks: &big,
        })
        .await;
    assert!(matches!(r, Err(Error::InvalidInput(_))), "{r:?}");
    for (name, keys) in [
        ("rtq2_housekeep", vec![p.keys.pending()]),
        ("rtq2_housekeep", vec![]),
        ("rtq2_housekeep", vec![meta.clone(), meta.clone()]),
    ] {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg(name).arg(keys.len());
        for k in &keys {
            cmd.arg(k);
        }
        let r: redis::RedisResult<redis::Value> = cmd.query_async(&mut p.conn).await;
        assert_eq!(r.unwrap_err().code(), Some("INVALID"), "{keys:?}");
    }
    let mut hb = redis::cmd("FCALL");
    hb.arg("rtq2_heartbeat")
        .arg(1)
        .arg(&meta)
        .arg("w1")
        .arg("i1")
        .arg(600000)
        .arg(1)
        .arg(1)
        .arg(0)
        .arg("inst")
        .arg("hijack");
    let r: redis::RedisResult<redis::Value> = hb.query_async(&mut p.conn).await;
    assert_eq!(r.unwrap_err().code(), Some("INVALID"));
    assert_eq!(p.snapshot().await, before, "nothing was written");
}

#[tokio::test]
async fn output_past_the_caps_is_refused_whole() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    report(p.register("w1", "i1", 1, &[]).await);
    p.submit(&Task::new("t1")).await;
    let _ = p.pop("w1").await;
    let key = p.keys.task("t1");
    // Pretend the attempt already wrote just under 64 MiB.
    p.raw(&["HSET", &key, "nb", &((64u64 << 20) - 10).to_string()])
        .await;
    let r = p.chunk("w1", "t1", 1, 0, &[vec![b'x'; 11]]).await;
    assert_eq!(r.status, WriteStatus::TooLarge);
    assert!(p.list(&p.keys.output("t1")).await.is_empty());
    let r = p
        .complete("w1", "t1", 1, 0, CompleteOutcome::Failed, false, &[])
        .await;
    assert_eq!(r.status, WriteStatus::Ok);
    assert_eq!(p.field("t1", "st").await.as_deref(), Some("failed"));
}

#[tokio::test]
async fn a_submit_failing_on_a_foreign_key_writes_nothing() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    // A foreign client replaced the pending zset with a string.
    let pending = p.keys.pending();
    p.raw(&["SET", &pending, "not a zset"]).await;
    let before = p.snapshot().await;
    let spec = spec_of("t1");
    let r = p
        .call(&Submit {
            id: "t1",
            spec: &spec,
            priority: 0,
            timeout_ms: 60_000,
            max_attempts: 3,
            retention_ms: 1000,
            reply: "",
            stream: false,
        })
        .await;
    assert!(
        matches!(&r, Err(Error::Function { function: "rtq2_submit", task: Some(t), reason, .. }) if t == "t1" && reason.starts_with("WRONGTYPE")),
        "{r:?}"
    );
    assert_eq!(
        p.snapshot().await,
        before,
        "no task hash, deadline or stats left behind"
    );
}

#[tokio::test]
async fn a_heartbeat_taken_before_a_complete_s_reply_loses_no_slot() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    report(p.register("w1", "i1", 1, &[]).await);
    p.submit(&Task::new("t1")).await;
    let _ = p.pop("w1").await;
    // The worker snapshots its running attempts, then its complete runs
    // in Redis before that heartbeat arrives.
    let snapshot = vec![("t1".to_string(), 1)];
    let done = p.complete("w1", "t1", 1, 0, DONE, true, &[]).await;
    assert_eq!((done.status, p.free("w1").await), (WriteStatus::Ok, 1.0));
    let r = report(p.heartbeat("w1", "i1", 1, true, &snapshot).await);
    assert_eq!(r.free, 1, "the finished attempt is not a stale one");
    assert!(r.stop.is_empty(), "{:?}", r.stop);
    assert_eq!(p.free("w1").await, 1.0);
    // Same when the complete found the task cancelled meanwhile.
    p.submit(&Task::new("t2")).await;
    let _ = p.pop("w1").await;
    p.cancel("t2").await;
    let _cancel = p.pop("w1").await;
    let ended = p.complete("w1", "t2", 1, 0, DONE, true, &[]).await;
    assert_eq!(ended.status, WriteStatus::Ended);
    let r = report(
        p.heartbeat("w1", "i1", 1, true, &[("t2".to_string(), 1)])
            .await,
    );
    assert_eq!((r.free, r.stop.len()), (1, 0));
}

#[tokio::test]
async fn an_operator_requeue_of_an_ended_task_its_worker_still_holds_ends_that_ownership() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    report(p.register("w1", "i1", 1, &[]).await);
    report(p.register("w2", "i2", 1, &[]).await);
    p.submit(&Task::new("t1")).await;
    let holder = if p.owned("w1").await.is_empty() {
        "w2"
    } else {
        "w1"
    };
    let other = if holder == "w1" { "w2" } else { "w1" };
    let _ = p.pop(holder).await;
    // Its deadline passes while it runs: expired, but the worker has not
    // released it yet (its complete is still to come).
    let key = p.keys.task("t1");
    let deadlines = p.keys.deadlines();
    p.raw(&["HSET", &key, "dl", "1"]).await;
    p.raw(&["ZADD", &deadlines, "1", "t1"]).await;
    p.housekeep().await;
    assert_eq!(p.field("t1", "st").await.as_deref(), Some("expired"));
    assert_eq!(p.owned(holder).await, vec!["t1".to_string()]);
    // The operator requeues it: it goes to the other worker, and only
    // that worker owns it.
    assert_eq!(
        p.requeue("t1").await,
        RequeueReply::Requeued(TaskState::Expired)
    );
    assert!(
        p.owned(holder).await.is_empty(),
        "the old holder no longer owns it"
    );
    assert_eq!(p.owned(other).await, vec!["t1".to_string()]);
    let late = p.complete(holder, "t1", 1, 0, DONE, false, &[]).await;
    assert_eq!(late.status, WriteStatus::Fenced);
}
