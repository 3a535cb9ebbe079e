//! Adversarial review of protocol v2 revision 8: `rtq2_complete_many`
//! (and `rtq2_complete`) under foreign keys of the wrong type, and
//! `rtq2_delete_task` against a client still waiting on the task. Each
//! test reproduces a defect the review found (and fails without its fix).

mod support;

use rtq_core::functions::chunk::WriteStatus;
use rtq_core::functions::complete::CompleteOutcome;
use rtq_core::functions::heartbeat::BeatReply;
use rtq_core::Error;
use support::proto::{task_of, Ending, Proto, RedisServer, Task};

use CompleteOutcome::{Done, Retry};

fn is_wrongtype(r: &Result<impl std::fmt::Debug, Error>) -> bool {
    matches!(r, Err(Error::Function { reason, .. }) if reason.starts_with("WRONGTYPE"))
}

fn e<'a>(
    id: &'a str,
    outcome: CompleteOutcome,
    want_next: bool,
    chunks: &'a [Vec<u8>],
) -> Ending<'a> {
    Ending::first(id, outcome, want_next).with_chunks(chunks)
}

/// Worker w1 (2 slots) runs t1 and t2; t3 and t4 are queued.
async fn two_running(redis: &RedisServer) -> Proto {
    let mut p = Proto::connect(redis, "r8").await;
    assert!(matches!(
        p.register("w1", "i1", 2, &[]).await,
        BeatReply::Ok(_)
    ));
    for id in ["t1", "t2", "t3", "t4"] {
        p.submit(&Task::new(id)).await;
    }
    for id in ["t1", "t2"] {
        assert_eq!(task_of(p.pop("w1").await), (id.into(), 1));
    }
    p
}

/// Replaces `key` with a string, calls the batch and checks that the call
/// is refused with WRONGTYPE and that nothing at all was written.
async fn refused_whole(p: &mut Proto, key: &str, batch: &[Ending<'_>]) {
    p.raw(&["SET", key, "foreign"]).await;
    let before = p.snapshot().await;
    let r = p.complete_many("w1", batch).await;
    assert!(is_wrongtype(&r), "{key}: {r:?}");
    assert_eq!(
        p.snapshot().await,
        before,
        "{key}: the completions before the failing one were written"
    );
}

// 1. A foreign key met by a later completion of a batch: Redis does not
//    undo the completions already written, so every key a write of the
//    call could fail on must be checked before the first write.

#[tokio::test]
async fn a_batch_whose_second_task_hash_is_foreign_writes_nothing() {
    let redis = RedisServer::start();
    let mut p = two_running(&redis).await;
    let key = p.keys.task("x");
    let batch = [e("t1", Done, true, &[]), e("x", Done, true, &[])];
    refused_whole(&mut p, &key, &batch).await;
}

#[tokio::test]
async fn a_batch_whose_second_output_list_is_foreign_writes_nothing() {
    let redis = RedisServer::start();
    let mut p = two_running(&redis).await;
    let key = p.keys.output("t2");
    let chunk = [b"c".to_vec()];
    let batch = [e("t1", Done, true, &[]), e("t2", Done, true, &chunk)];
    refused_whole(&mut p, &key, &batch).await;
}

#[tokio::test]
async fn a_batch_failing_on_a_foreign_delayed_set_writes_nothing() {
    let redis = RedisServer::start();
    let mut p = two_running(&redis).await;
    let key = p.keys.delayed();
    let batch = [e("t1", Done, false, &[]), e("t2", Retry, false, &[])];
    refused_whole(&mut p, &key, &batch).await;
}

#[tokio::test]
async fn a_batch_failing_on_a_foreign_pending_set_writes_nothing() {
    let redis = RedisServer::start();
    let mut p = two_running(&redis).await;
    let key = p.keys.pending();
    let batch = [e("t1", Done, false, &[]), e("t2", Done, true, &[])];
    refused_whole(&mut p, &key, &batch).await;
}

#[tokio::test]
async fn a_batch_failing_on_a_foreign_free_set_writes_nothing() {
    let redis = RedisServer::start();
    let mut p = two_running(&redis).await;
    // Nothing queued: a want_next completion adds a free slot.
    for id in ["t3", "t4"] {
        p.cancel(id).await;
    }
    let key = p.keys.free();
    let batch = [e("t1", Done, false, &[]), e("t2", Done, true, &[])];
    refused_whole(&mut p, &key, &batch).await;
}

#[tokio::test]
async fn a_single_complete_failing_on_its_foreign_output_list_writes_nothing() {
    // Within one completion: the slot was freed and t3 handed out (and
    // lost with the failed reply) before the chunk write failed.
    let redis = RedisServer::start();
    let mut p = two_running(&redis).await;
    let key = p.keys.output("t1");
    let chunk = [b"c".to_vec()];
    refused_whole(&mut p, &key, &[e("t1", Done, true, &chunk)]).await;
    let again = p
        .call(&rtq_core::functions::complete::Complete {
            worker: "w1",
            id: "t1",
            attempt: 1,
            seq0: 0,
            outcome: Done,
            payload: "{}",
            want_next: true,
            next_apart: true,
            chunks: &chunk,
        })
        .await;
    assert!(is_wrongtype(&again), "{again:?}");
    p.raw(&["DEL", &key]).await;
    let r = p.complete("w1", "t1", 1, 0, Done, true, &chunk).await;
    assert_eq!(r.status, WriteStatus::Ok);
    assert_eq!(task_of(r.next), ("t3".into(), 1), "t3 was stranded");
}

// 2. Summaries of a queue whose head task cannot be read: the head's age
//    is unknown, never "since 1970" (a stalled-queue alarm).

#[tokio::test]
async fn a_head_task_without_a_readable_submit_time_has_no_age() {
    use rtq_core::admin::Admin;
    use rtq_core::keys::QUEUES;
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "r8").await;
    p.raw(&["SADD", QUEUES, "r8"]).await;
    p.submit(&Task::new("t1")).await;
    p.submit(&Task::new("t2")).await;
    let client = rtq_core::Client::connect(&redis.url()).await.unwrap();
    let admin = Admin::new(&client);
    let ok = admin.overview("r8").await.unwrap();
    assert!(
        ok.head_wait_ms.is_some_and(|ms| ms < 600_000),
        "{:?}",
        ok.head_wait_ms
    );
    // The head's hash vanished (its safety-net expiry, a foreign DEL) or
    // holds a foreign value; then a foreign key of another type.
    let key = p.keys.task("t1");
    for corrupt in [
        vec!["DEL", &key],
        vec!["HSET", &key, "sub", "garbage"],
        vec!["SET", &key, "foreign"],
    ] {
        p.raw(&["DEL", &key]).await;
        p.raw(&corrupt).await;
        let one = admin.overview("r8").await.unwrap().head_wait_ms;
        let all = admin.summaries().await.unwrap();
        let listed = all.iter().find(|o| o.name == "r8").unwrap().head_wait_ms;
        assert_eq!(
            (one, listed),
            (None, None),
            "{corrupt:?}: the head's age is unknown"
        );
    }
}

// 3. A hand-out meeting a pending entry whose task key is foreign (after
//    the call wrote already): the entry is dropped like a stale one.

#[tokio::test]
async fn a_next_task_skips_a_pending_entry_whose_task_key_is_foreign() {
    let redis = RedisServer::start();
    let mut p = two_running(&redis).await;
    let pending = p.keys.pending();
    let key = p.keys.task("x");
    p.raw(&["ZADD", &pending, "0", "x"]).await;
    p.raw(&["SET", &key, "foreign"]).await;
    let r = p.complete("w1", "t1", 1, 0, Done, true, &[]).await;
    assert_eq!(r.status, WriteStatus::Ok);
    assert_eq!(task_of(r.next), ("t3".into(), 1));
    assert_eq!(p.zset(&pending).await, vec!["t4".to_string()]);
    assert_eq!(
        p.owned("w1").await,
        vec!["t2".to_string(), "t3".to_string()]
    );
}

// 4. Deleting a task whose complete reply was lost. The retried complete
//    found no hash (NOT_FOUND, no replay mark), so the next task the first
//    call handed out never reached the worker: it stayed owned until the
//    heartbeat's orphan sweep, one lease later, and used up one of its
//    attempts. Fixed in revision 9: the delete keeps the replay mark in
//    `ca:<id>` for 10 minutes.

#[tokio::test]
async fn deleting_a_task_whose_complete_reply_was_lost_keeps_its_next_task() {
    use rtq_core::admin::Admin;
    let redis = RedisServer::start();
    let mut p = two_running(&redis).await;
    let first = p.complete("w1", "t1", 1, 0, Done, true, &[]).await;
    assert_eq!(task_of(first.next), ("t3".into(), 1));
    // The reply was lost; an operator deletes the finished t1.
    let client = rtq_core::Client::connect(&redis.url()).await.unwrap();
    Admin::new(&client).delete_task("r8", "t1").await.unwrap();
    assert!(p.hash("t1").await.is_empty(), "the task itself is gone");
    let kept = p.keys.replay_mark("t1");
    let ttl = support::pttl(&mut p.conn, &kept).await;
    assert!(ttl > 0 && ttl <= 600_000, "the replay mark expires: {ttl}");
    let again = p.complete("w1", "t1", 1, 0, Done, true, &[]).await;
    assert_eq!(
        again.next.map(|m| task_of(Some(m))),
        Some(("t3".into(), 1)),
        "the retry lost t3 (status {:?})",
        again.status
    );
    assert_eq!(again.status, WriteStatus::Ok);
    // Only that call's retry replays: another worker's or attempt's gets
    // NOT_FOUND and no task, and nothing else is handed out.
    for (worker, attempt) in [("w2", 1), ("w1", 2)] {
        let other = p.complete(worker, "t1", attempt, 0, Done, true, &[]).await;
        assert_eq!((other.status, other.next), (WriteStatus::NotFound, None));
    }
    assert_eq!(p.zset(&p.keys.pending()).await, ["t4"]);
}
