//! Review of revision 12 (a complete call reads what it needs before its
//! first write, pops `pending` ahead, and writes the owned set, the free
//! slots and unused pending entries once at its end):
//! - retries this worker failed, skipped while another worker is live,
//!   count against every later hand-out's scan as sequential completes
//!   (which pop them again) count them, and so many of them that the
//!   call's give-back would pass Lua's unpack limit do not fail the call
//!   after its writes;
//! - a FENCED completion and a replay that ask for a next task write
//!   nothing, not even the promotion of a due retry;
//! - a foreign key where `delayed` belongs does not fail a complete
//!   halfway when its hand-out meets a queued task past its deadline.

mod support;

use rtq_core::functions::chunk::WriteStatus;
use rtq_core::functions::complete::{CompleteOutcome, CompleteReply};
use rtq_core::functions::heartbeat::BeatReply;
use rtq_core::protocol::{InboxMessage, TaskState};
use support::proto::{task_of, Ending, Proto, RedisServer, Task};

use CompleteOutcome::{Done, Retry};

/// A reply without its times.
fn timeless(r: &CompleteReply) -> (WriteStatus, Option<(String, u64)>, u64, Option<TaskState>) {
    let next = r.next.as_ref().map(|m| match m {
        InboxMessage::Task(d) => (d.id.clone(), d.attempt),
        other => panic!("a next task was expected, got {other:?}"),
    });
    (r.status, next, r.chunks, r.state)
}

/// Worker w2 (1 slot, live) runs z; worker w1 (`slots` slots) runs
/// a0..; `avoided` queued tasks s0000.. are retries w1 failed (avoiding
/// it for long), then x is queued behind them.
async fn avoided(redis: &RedisServer, slots: usize, avoided: usize) -> Proto {
    let mut p = Proto::connect(redis, "r12").await;
    assert!(matches!(
        p.register("w2", "i2", 1, &[]).await,
        BeatReply::Ok(_)
    ));
    p.submit(&Task::new("z")).await;
    assert_eq!(task_of(p.pop("w2").await), ("z".into(), 1));
    assert!(matches!(
        p.register("w1", "i1", slots, &[]).await,
        BeatReply::Ok(_)
    ));
    let running: Vec<String> = (0..slots).map(|i| format!("a{i}")).collect();
    for id in &running {
        p.submit(&Task::new(id)).await;
        assert_eq!(task_of(p.pop("w1").await), (id.clone(), 1));
    }
    let ids: Vec<String> = (0..avoided).map(|i| format!("s{i:04}")).collect();
    for part in ids.chunks(256) {
        let tasks: Vec<Task<'_>> = part.iter().map(|id| Task::new(id)).collect();
        p.submit_many(&tasks).await;
    }
    let prefix = p.keys.task("");
    let script = "for i = 0, tonumber(ARGV[2]) - 1 do \
        redis.call('HSET', ARGV[1] .. string.format('s%04d', i), 'avoid', 'w1', 'avu', '99999999999999') end";
    p.raw(&["EVAL", script, "0", &prefix, &avoided.to_string()])
        .await;
    p.submit(&Task::new("x")).await;
    p
}

/// What the completions leave: pending's members, w1's owned set and
/// free slots, x's state.
async fn left(p: &mut Proto) -> (Vec<String>, Vec<String>, f64, Option<String>) {
    let pending = p.zset(&p.keys.pending()).await;
    (
        pending,
        p.owned("w1").await,
        p.free("w1").await,
        p.field("x", "st").await,
    )
}

async fn compare(slots: usize, n_avoided: usize) {
    let ids: Vec<String> = (0..slots).map(|i| format!("a{i}")).collect();
    let batch: Vec<Ending<'_>> = ids.iter().map(|id| Ending::first(id, Done, true)).collect();

    let seq_redis = RedisServer::start();
    let mut seq = avoided(&seq_redis, slots, n_avoided).await;
    let mut sequential = Vec::new();
    for e in &batch {
        sequential.push(seq.end("w1", e).await);
    }

    let many_redis = RedisServer::start();
    let mut many = avoided(&many_redis, slots, n_avoided).await;
    let batched = many.complete_many("w1", &batch).await.unwrap();

    let a: Vec<_> = sequential.iter().map(timeless).collect();
    let b: Vec<_> = batched.iter().map(timeless).collect();
    assert_eq!(a, b);
    assert_eq!(left(&mut seq).await, left(&mut many).await);
}

#[tokio::test]
async fn avoided_retries_count_against_each_later_scan_as_in_sequential_completes() {
    // Sequential: each complete pops the 100 avoided retries again (the
    // scan cap) and finds nothing; x stays queued, both slots free.
    compare(2, 100).await;
}

#[tokio::test]
async fn thousands_of_avoided_retries_do_not_fail_a_large_batch() {
    // 50 completions, each scanning 100 more avoided retries in one call,
    // would give back 4200 entries (8400 values) in one ZADD.
    compare(50, 4200).await;
}

/// w1 (2 slots) runs a (attempt 1) and ended b; r, a retry w1 failed, is
/// due (its backoff passed).
async fn due_retry(redis: &RedisServer) -> Proto {
    let mut p = Proto::connect(redis, "r12").await;
    assert!(matches!(
        p.register("w1", "i1", 2, &[]).await,
        BeatReply::Ok(_)
    ));
    for id in ["a", "r"] {
        p.submit(&Task::new(id)).await;
        assert_eq!(task_of(p.pop("w1").await), (id.into(), 1));
    }
    let r = p.end("w1", &Ending::first("r", Retry, true)).await;
    assert_eq!(r.state, Some(TaskState::Queued));
    p.submit(&Task::new("b")).await;
    assert_eq!(task_of(p.pop("w1").await), ("b".into(), 1));
    let b = p.end("w1", &Ending::first("b", Done, true)).await;
    assert_eq!(b.status, WriteStatus::Ok);
    // The backoff passed.
    let (delayed, meta) = (p.keys.delayed(), p.keys.meta());
    p.raw(&["ZADD", &delayed, "XX", "1", "r"]).await;
    p.raw(&["HSET", &meta, "dd", "1"]).await;
    p
}

#[tokio::test]
async fn a_fenced_completion_asking_for_a_next_task_writes_nothing() {
    let redis = RedisServer::start();
    let mut p = due_retry(&redis).await;
    let before = p.snapshot().await;
    let stale = Ending {
        attempt: 5,
        ..Ending::first("a", Done, true)
    };
    assert_eq!(p.end("w1", &stale).await.status, WriteStatus::Fenced);
    assert_eq!(p.snapshot().await, before, "rtq2_complete");
    let replies = p.complete_many("w1", &[stale]).await.unwrap();
    assert_eq!(replies[0].status, WriteStatus::Fenced);
    assert_eq!(p.snapshot().await, before, "rtq2_complete_many");
}

#[tokio::test]
async fn a_replay_asking_for_a_next_task_writes_nothing() {
    let redis = RedisServer::start();
    let mut p = due_retry(&redis).await;
    let before = p.snapshot().await;
    let replay = p.end("w1", &Ending::first("b", Done, true)).await;
    assert_eq!(replay.status, WriteStatus::Ok);
    assert_eq!(p.snapshot().await, before);
}

#[tokio::test]
async fn a_foreign_delayed_key_fails_no_hand_out_halfway() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "r12").await;
    assert!(matches!(
        p.register("w1", "i1", 1, &[]).await,
        BeatReply::Ok(_)
    ));
    p.submit(&Task::new("a")).await;
    assert_eq!(task_of(p.pop("w1").await), ("a".into(), 1));
    // q is queued, its deadline passed; nothing is delayed, and a foreign
    // string sits where `delayed` belongs.
    p.submit(&Task {
        timeout_ms: 600_000,
        ..Task::new("q")
    })
    .await;
    let (q, meta, delayed) = (p.keys.task("q"), p.keys.meta(), p.keys.delayed());
    p.raw(&["HSET", &q, "dl", "1"]).await;
    p.raw(&["HSET", &meta, "dd", "0"]).await;
    p.raw(&["SET", &delayed, "foreign"]).await;
    let before = p.snapshot().await;
    match p
        .complete_many("w1", &[Ending::first("a", Done, true)])
        .await
    {
        Err(e) => {
            assert!(e.to_string().contains("WRONGTYPE"), "{e}");
            assert_eq!(p.snapshot().await, before, "refused: nothing written");
        }
        Ok(r) => {
            // Written in full: a done, q expired on the way, the slot free.
            assert_eq!(
                timeless(&r[0]),
                (WriteStatus::Ok, None, 0, Some(TaskState::Done))
            );
            assert_eq!(p.field("q", "st").await.as_deref(), Some("expired"));
            assert!(p.owned("w1").await.is_empty());
            assert_eq!(p.free("w1").await, 1.0);
            assert!(p.zset(&p.keys.pending()).await.is_empty());
            let kind: String = redis::cmd("TYPE")
                .arg(&delayed)
                .query_async(&mut p.conn)
                .await
                .unwrap();
            assert_eq!(kind, "string");
        }
    }
}
