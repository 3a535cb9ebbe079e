//! Protocol behaviours a Lua mutation run found unguarded: each test names
//! the behaviour, drives the functions one call at a time on a real
//! redis-server and asserts the state in Redis, not only the replies.

mod support;

use rtq_core::functions::cancel::{Cancel, CancelMode, CancelReply};
use rtq_core::functions::chunk::WriteStatus;
use rtq_core::functions::complete::CompleteOutcome;
use rtq_core::functions::heartbeat::BeatReply;
use rtq_core::protocol::TaskState;
use support::proto::{task_of, Proto, RedisServer, Task};

const DONE: CompleteOutcome = CompleteOutcome::Done;

async fn registered(redis: &RedisServer, slots: usize) -> Proto {
    let mut p = Proto::connect(redis, "q").await;
    let r = p.register("w1", "i1", slots, &[]).await;
    assert!(matches!(r, BeatReply::Ok(_)), "{r:?}");
    p
}

#[tokio::test]
async fn a_deadline_check_on_a_task_without_a_deadline_is_not_due_and_changes_nothing() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    p.submit(&Task::new("t1")).await;
    let before = p.snapshot().await;
    let r = p
        .call(&Cancel {
            id: "t1",
            mode: CancelMode::Deadline,
            reason: "deadline",
        })
        .await
        .unwrap();
    assert_eq!(r, CancelReply::NotDue(None));
    assert_eq!(p.field("t1", "st").await.as_deref(), Some("queued"));
    assert_eq!(p.snapshot().await, before);
}

#[tokio::test]
async fn an_empty_chunk_write_is_accepted_and_writes_nothing() {
    let redis = RedisServer::start();
    let mut p = registered(&redis, 1).await;
    p.submit(&Task::new("t1")).await;
    assert_eq!(task_of(p.pop("w1").await), ("t1".into(), 1));
    let before = p.snapshot().await;
    let r = p.chunk("w1", "t1", 1, 0, &[]).await;
    assert_eq!(r.status, WriteStatus::Ok);
    assert_eq!(r.chunks, 0);
    assert_eq!(r.state, Some(TaskState::Running));
    assert_eq!(p.snapshot().await, before);
}

#[tokio::test]
async fn a_replayed_complete_never_hands_out_again_a_next_task_that_has_ended() {
    let redis = RedisServer::start();
    let mut p = registered(&redis, 1).await;
    p.submit(&Task::new("t1")).await;
    assert_eq!(task_of(p.pop("w1").await), ("t1".into(), 1));
    p.submit(&Task::new("t2")).await;
    let first = p.complete("w1", "t1", 1, 0, DONE, true, &[]).await;
    assert!(first.next.is_some(), "t2 is handed out with the reply");
    let ended = p.complete("w1", "t2", 1, 0, DONE, true, &[]).await;
    assert_eq!(ended.state, Some(TaskState::Done));
    // The reply of the first complete was lost and the call is retried
    // after t2 ended: the replay must not hand t2 out again.
    let again = p.complete("w1", "t1", 1, 0, DONE, true, &[]).await;
    assert_eq!(again.status, first.status);
    assert!(again.next.is_none(), "{again:?}");
    assert_eq!(p.field("t2", "st").await.as_deref(), Some("done"));
    assert!(p.owned("w1").await.is_empty());
    assert_eq!(p.free("w1").await, 1.0);
}
