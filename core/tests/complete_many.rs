//! `rtq2_complete_many`: several completes of one worker in one call. Each
//! completion must be answered, and leave Redis, exactly as sequential
//! `rtq2_complete` calls would (only the time is the call's); a hostile
//! caller (a malformed item, a huge batch, repeated ids, another worker's
//! task in the middle) gets a clear refusal or a per-item answer and
//! never a partial write. The worker coalesces its slots' completes.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use rtq_core::functions::chunk::WriteStatus;
use rtq_core::functions::complete::{CompleteOutcome, CompleteReply};
use rtq_core::functions::heartbeat::BeatReply;
use rtq_core::protocol::{InboxMessage, TaskState};
use rtq_core::{Client, TaskRequest, WorkerConfig};
use serde_json::json;
use support::proto::{task_of, Ending, Proto, RedisServer, Task};
use support::*;

use CompleteOutcome::{Done, Failed, Retry};

/// A reply without its times (a batch answers one time for all).
fn timeless(r: &CompleteReply) -> (WriteStatus, Option<(String, u64)>, u64, Option<TaskState>) {
    let next = r.next.as_ref().map(|m| match m {
        InboxMessage::Task(d) => (d.id.clone(), d.attempt),
        other => panic!("a next task was expected, got {other:?}"),
    });
    (r.status, next, r.chunks, r.state)
}

/// Task hash fields that do not hold a time.
fn timeless_hash(h: BTreeMap<String, String>) -> BTreeMap<String, String> {
    const TIMES: [&str; 8] = ["sub", "start", "fin", "fc", "lc", "due", "avu", "sc"];
    h.into_iter()
        .filter(|(k, _)| !TIMES.contains(&k.as_str()))
        .collect()
}

/// The queue's state without times: task hashes, the members of its
/// sorted sets, the worker's owned set, free slots and inbox task ids.
async fn state(p: &mut Proto, ids: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for id in ids {
        let h: BTreeMap<String, String> = p.hash(id).await.into_iter().collect();
        out.push(format!("{id}: {:?}", timeless_hash(h)));
    }
    for key in [p.keys.pending(), p.keys.delayed(), p.keys.deadlines()] {
        let mut members = p.zset(&key).await;
        members.sort();
        out.push(format!("{key}: {members:?}"));
    }
    for w in ["w1", "w2"] {
        let mut owned = p.owned(w).await;
        owned.sort();
        let key = p.keys.inbox(w);
        let inbox: Vec<String> = p
            .list(&key)
            .await
            .iter()
            .map(|m| format!("{:?}", task_of(Some(InboxMessage::parse(m)))))
            .collect();
        out.push(format!(
            "{w}: owns {owned:?} free {} inbox {inbox:?}",
            p.free(w).await
        ));
    }
    out
}

/// Worker w2 (1 slot) runs t0; w1 (4 slots) runs t1..t4, with two chunks
/// of t4 written; t5..t7 are queued.
async fn setup(redis: &RedisServer) -> Proto {
    let mut p = Proto::connect(redis, "cm").await;
    assert!(matches!(
        p.register("w2", "i2", 1, &[]).await,
        BeatReply::Ok(_)
    ));
    p.submit(&Task::new("t0")).await;
    assert_eq!(task_of(p.pop("w2").await), ("t0".into(), 1));
    assert!(matches!(
        p.register("w1", "i1", 4, &[]).await,
        BeatReply::Ok(_)
    ));
    for id in ["t1", "t2", "t3", "t4", "t5", "t6", "t7"] {
        p.submit(&Task::new(id)).await;
    }
    for id in ["t1", "t2", "t3", "t4"] {
        assert_eq!(task_of(p.pop("w1").await), (id.into(), 1));
    }
    let two = [b"a".to_vec(), b"b".to_vec()];
    assert_eq!(
        p.chunk("w1", "t4", 1, 0, &two).await.status,
        WriteStatus::Ok
    );
    p
}

const IDS: [&str; 9] = ["t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7", "gone"];

fn e<'a>(
    id: &'a str,
    attempt: u64,
    seq0: u64,
    outcome: CompleteOutcome,
    want_next: bool,
    chunks: &'a [Vec<u8>],
) -> Ending<'a> {
    Ending {
        id,
        attempt,
        seq0,
        outcome,
        want_next,
        chunks,
    }
}

fn hostile_batch(trailing: &[Vec<u8>]) -> Vec<Ending<'_>> {
    vec![
        e("t1", 1, 0, Done, true, &[]),
        // Another worker's task in the middle: FENCED, nothing written.
        e("t0", 1, 0, Done, true, &[]),
        e("t2", 1, 0, Retry, true, &[]),
        // Out of order (t4 holds 2 chunks): ORDER, nothing written.
        e("t4", 1, 0, Done, true, trailing),
        e("t3", 1, 0, Failed, false, &[]),
        // Repeated: replays the first t1's answer, the same next task.
        e("t1", 1, 0, Done, true, &[]),
        e("t4", 1, 2, Done, true, trailing),
        // A stale attempt and a task that does not exist.
        e("t2", 7, 0, Done, true, &[]),
        e("gone", 1, 0, Done, true, &[]),
    ]
}

/// Runs `batch` of w1 as sequential completes on one server and as one
/// `rtq2_complete_many` on another (both from `setup`), and checks that
/// the answers (without times) are equal. Returns the servers (kept
/// alive), the two connections and the batch's replies.
async fn sequential_and_batched(
    batch: &[Ending<'_>],
) -> ([RedisServer; 2], Proto, Proto, Vec<CompleteReply>) {
    let seq_redis = RedisServer::start();
    let mut seq = setup(&seq_redis).await;
    let mut sequential = Vec::new();
    for e in batch {
        sequential.push(seq.end("w1", e).await);
    }
    let many_redis = RedisServer::start();
    let mut many = setup(&many_redis).await;
    let batched = many.complete_many("w1", batch).await.unwrap();
    let a: Vec<_> = sequential.iter().map(timeless).collect();
    let b: Vec<_> = batched.iter().map(timeless).collect();
    assert_eq!(a, b);
    ([seq_redis, many_redis], seq, many, batched)
}

#[tokio::test]
async fn a_batch_answers_and_writes_what_sequential_completes_do() {
    let trailing = [b"c".to_vec()];
    let batch = hostile_batch(&trailing);
    let (_servers, mut seq, mut many, batched) = sequential_and_batched(&batch).await;
    let b: Vec<_> = batched.iter().map(timeless).collect();
    // The answers are the ones the protocol promises, not just equal.
    let status: Vec<WriteStatus> = batched.iter().map(|r| r.status).collect();
    use WriteStatus::*;
    assert_eq!(
        status,
        [Ok, Fenced, Ok, Order, Ok, Ok, Ok, Fenced, NotFound]
    );
    assert_eq!(b[0].1, Some(("t5".into(), 1)));
    assert_eq!(b[5].1, b[0].1, "a repeat replays the same next task");
    assert_eq!(b[2].1, Some(("t6".into(), 1)));
    assert_eq!(b[6].1, Some(("t7".into(), 1)));
    assert_eq!(b[6].2, 3, "t4 took its trailing chunk");
    assert_eq!(b[2].3, Some(TaskState::Queued), "t2 waits for its retry");
    assert_eq!(b[4].3, Some(TaskState::Failed));
    // One time for the whole call.
    let times: BTreeSet<i64> = batched
        .iter()
        .filter(|r| r.now_ms > 0)
        .map(|r| r.now_ms)
        .collect();
    assert_eq!(times.len(), 1, "{batched:?}");

    assert_eq!(state(&mut seq, &IDS).await, state(&mut many, &IDS).await);
    // w2's task is untouched, w1 runs t5, t6, t7 and nothing else.
    assert_eq!(many.field("t0", "st").await.as_deref(), Some("running"));
    let mut owned = many.owned("w1").await;
    owned.sort();
    assert_eq!(owned, ["t5", "t6", "t7"]);
}

#[tokio::test]
async fn one_malformed_completion_refuses_the_call_and_writes_nothing() {
    let redis = RedisServer::start();
    let mut p = setup(&redis).await;
    let meta = p.keys.meta();
    let before = p.snapshot().await;
    let good = |id: &'static str| -> Vec<String> {
        vec![
            id.into(),
            "1".into(),
            "0".into(),
            "done".into(),
            "{}".into(),
            "1".into(),
            "0".into(),
        ]
    };
    let mut cases: Vec<(&str, Vec<String>)> = Vec::new();
    let with_last = |last: Vec<String>| -> Vec<String> {
        let mut args = vec!["w1".to_string(), "2".into()];
        args.extend(good("t1"));
        args.extend(last);
        args
    };
    let mut bad_outcome = good("t2");
    bad_outcome[3] = "maybe".into();
    cases.push(("an unknown outcome", with_last(bad_outcome)));
    let mut bad_attempt = good("t2");
    bad_attempt[1] = "0".into();
    cases.push(("attempt 0", with_last(bad_attempt)));
    let mut bad_id = good("t2");
    bad_id[0] = "t 2".into();
    cases.push(("a task id with a space", with_last(bad_id)));
    let mut past_end = good("t2");
    past_end[6] = "3".into();
    past_end.push("x".into());
    cases.push(("chunks past the last argument", with_last(past_end)));
    let mut too_many = good("t2");
    too_many[6] = "513".into();
    cases.push(("513 chunks", with_last(too_many)));
    let mut big_chunk = good("t2");
    big_chunk[6] = "1".into();
    big_chunk.push("x".repeat((1 << 20) + 1));
    cases.push(("a chunk over 1 MiB", with_last(big_chunk)));
    let mut extra = good("t2");
    extra.push("surplus".into());
    cases.push(("an argument after the last completion", with_last(extra)));
    cases.push((
        "a cut-short completion",
        with_last(good("t2")[..5].to_vec()),
    ));
    let mut zero = vec!["w1".to_string(), "0".into()];
    cases.push(("a count of 0", zero.clone()));
    zero[1] = "1025".into();
    cases.push(("a count over 1024", zero));
    let mut bad_worker = with_last(good("t2"));
    bad_worker[0] = String::new();
    cases.push(("an empty worker id", bad_worker));
    let mut count_lies = with_last(good("t2"));
    count_lies[1] = "3".into();
    cases.push(("a count above the completions sent", count_lies));

    for (what, args) in cases {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg("rtq2_complete_many").arg(1).arg(&meta);
        for a in &args {
            cmd.arg(a);
        }
        let err = cmd
            .query_async::<redis::Value>(&mut p.conn)
            .await
            .expect_err(what);
        assert!(err.to_string().contains("INVALID"), "{what}: {err}");
        assert_eq!(p.snapshot().await, before, "{what} wrote something");
    }
}

#[tokio::test]
async fn a_batch_of_1024_completions_each_takes_its_next_task() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "huge").await;
    assert!(matches!(
        p.register("w1", "i1", 1024, &[]).await,
        BeatReply::Ok(_)
    ));
    let ids: Vec<String> = (0..2048).map(|i| format!("h{i}")).collect();
    for group in ids.chunks(256) {
        let tasks: Vec<Task<'_>> = group.iter().map(|id| Task::new(id)).collect();
        p.submit_many(&tasks).await;
    }
    let key = p.keys.inbox("w1");
    let inbox = p.list(&key).await;
    assert_eq!(inbox.len(), 1024);
    let running: Vec<(String, u64)> = inbox
        .iter()
        .map(|m| task_of(Some(InboxMessage::parse(m))))
        .collect();
    let endings: Vec<Ending<'_>> = running
        .iter()
        .map(|(id, attempt)| Ending {
            id,
            attempt: *attempt,
            seq0: 0,
            outcome: Done,
            want_next: true,
            chunks: &[],
        })
        .collect();
    let replies = p.complete_many("w1", &endings).await.unwrap();
    assert_eq!(replies.len(), 1024);
    let mut next = BTreeSet::new();
    for r in &replies {
        let (status, n, _, state) = timeless(r);
        assert_eq!((status, state), (WriteStatus::Ok, Some(TaskState::Done)));
        next.insert(n.expect("a next task").0);
    }
    let expected: BTreeSet<String> = ids[1024..].iter().cloned().collect();
    assert_eq!(next, expected, "every queued task handed out once");
    assert_eq!(p.owned("w1").await.len(), 1024);
    let pending = p.keys.pending();
    assert!(p.zset(&pending).await.is_empty());

    // 1025 completions are refused whole.
    let mut over = endings.clone();
    over.push(endings[0].clone());
    let before = p.snapshot().await;
    let err = p.complete_many("w1", &over).await.unwrap_err();
    assert!(matches!(err, rtq_core::Error::InvalidInput(_)), "{err}");
    assert_eq!(p.snapshot().await, before);
}

#[tokio::test]
async fn a_lost_batch_reply_is_replayed_item_by_item() {
    let redis = RedisServer::start();
    let mut p = setup(&redis).await;
    let trailing = [b"c".to_vec()];
    let batch = hostile_batch(&trailing);
    let first = p.complete_many("w1", &batch).await.unwrap();
    let after = state(&mut p, &IDS).await;
    let again = p.complete_many("w1", &batch).await.unwrap();
    for (i, (a, b)) in first.iter().zip(&again).enumerate() {
        // The out-of-order t4 (ORDER, no write) is sent again after the
        // later t4 completion ended the attempt: it replays that one.
        if i == 3 {
            assert_eq!(timeless(b), timeless(&first[6]), "item 3");
            continue;
        }
        assert_eq!(timeless(a), timeless(b), "item {i}");
    }
    assert_eq!(state(&mut p, &IDS).await, after, "a replay writes nothing");
}

#[tokio::test]
async fn a_worker_coalesces_its_slots_completes_and_each_task_gets_its_result() {
    let redis = RedisServer::start();
    let mut conn = admin_conn(&redis).await;
    log_every_command(&mut conn).await;
    let (seen, _rx) = seen_channel();
    let worker = TestWorker::start(&redis.url(), WorkerConfig::new("co").slots(8), seen).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("co").unwrap();
    // Eight tasks held in the handler, released together, then 100 more
    // behind them: completes issued while one is in flight coalesce.
    for i in 0..8 {
        q.submit(TaskRequest::json(json!({"hold": true, "i": i})).id(format!("held{i}")))
            .await
            .unwrap();
    }
    eventually("8 tasks running", || {
        let status = std::sync::Arc::clone(&worker.status);
        async move { status.busy.load(std::sync::atomic::Ordering::Acquire) == 8 }
    })
    .await;
    // 100 more queue behind them: each complete also takes one.
    for i in 0..100 {
        q.submit(TaskRequest::json(json!({"i": 100 + i})).id(format!("more{i}")))
            .await
            .unwrap();
    }
    let (release, qq) = (std::sync::Arc::clone(&worker.release), q.clone());
    eventually("the held tasks released", || {
        release.notify_waiters();
        let qq = qq.clone();
        async move {
            for i in 0..8 {
                match qq.status(&format!("held{i}")).await {
                    Ok(s) if s.state == TaskState::Done => {}
                    _ => return false,
                }
            }
            true
        }
    })
    .await;
    for i in 0..8 {
        let out = within(q.wait(&format!("held{i}"), None)).await.unwrap();
        assert_eq!(out.result["echo"]["i"], i);
    }
    for i in 0..100 {
        let out = within(q.wait(&format!("more{i}"), None)).await.unwrap();
        assert_eq!(out.result["echo"]["i"], 100 + i);
    }
    let log = command_log(&mut conn).await;
    let batched: Vec<&Vec<String>> = log
        .iter()
        .filter(|a| a.len() > 5 && a[1] == "rtq2_complete_many")
        .collect();
    assert!(!batched.is_empty(), "some completes were coalesced");
    assert!(
        batched
            .iter()
            .any(|a| a[5].parse::<usize>().unwrap_or(0) > 1),
        "a coalesced call ended several attempts"
    );
    worker.stop().await;
}

// Revision 12: a call reads its tasks, the owned set and pending before
// its first write, pops pending ahead for the slots it expects to fill,
// and writes the owned set, free slots and unused pops when it ends.

/// A batch that completes a task the same batch hands out (a worker
/// guessing its next task): the call popped that task, so its view and
/// its owned-set read are stale and read again. The answers and the
/// state are still those of sequential completes.
#[tokio::test]
async fn a_batch_completing_a_task_it_hands_out_answers_as_sequential_completes() {
    let batch = vec![
        e("t1", 1, 0, Done, true, &[]),
        // t5 is handed out (attempt 1) by the completion before.
        e("t5", 1, 0, Done, true, &[]),
        e("t2", 1, 0, Done, true, &[]),
        // t7 is handed out by t5's completion; a wrong attempt of it.
        e("t7", 2, 0, Done, true, &[]),
        e("t3", 1, 0, Done, false, &[]),
    ];
    let (_servers, mut seq, mut many, batched) = sequential_and_batched(&batch).await;
    let b: Vec<_> = batched.iter().map(timeless).collect();
    use WriteStatus::*;
    let status: Vec<WriteStatus> = batched.iter().map(|r| r.status).collect();
    assert_eq!(status, [Ok, Ok, Ok, Fenced, Ok]);
    assert_eq!(b[0].1, Some(("t5".into(), 1)));
    assert_eq!(b[1].1, Some(("t6".into(), 1)));
    assert_eq!(b[2].1, Some(("t7".into(), 1)));
    assert_eq!(state(&mut seq, &IDS).await, state(&mut many, &IDS).await);
    let mut owned = many.owned("w1").await;
    owned.sort();
    assert_eq!(owned, ["t4", "t6", "t7"]);
}

/// A completion the call expected to free a slot (the worker owns the
/// task) but that is fenced: the task it popped ahead goes back to
/// pending at its score, and nothing else changes.
#[tokio::test]
async fn a_fenced_completion_gives_back_the_task_popped_for_it() {
    let redis = RedisServer::start();
    let mut p = setup(&redis).await;
    let pending = p.keys.pending();
    let scores_before: Vec<(String, String)> = redis::cmd("ZRANGE")
        .arg(&pending)
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(&mut p.conn)
        .await
        .unwrap();
    let before = p.snapshot().await;
    let r = p
        .complete_many(
            "w1",
            &[
                e("t2", 7, 0, Done, true, &[]),
                e("t1", 3, 0, Done, true, &[]),
            ],
        )
        .await
        .unwrap();
    assert!(r.iter().all(|r| r.status == WriteStatus::Fenced), "{r:?}");
    let scores_after: Vec<(String, String)> = redis::cmd("ZRANGE")
        .arg(&pending)
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(&mut p.conn)
        .await
        .unwrap();
    assert_eq!(scores_after, scores_before);
    assert_eq!(p.snapshot().await, before, "a fenced batch changed data");
}

/// The deadline index is written best effort (revision 12): a foreign
/// key there no longer refuses a complete, which ends the task.
#[tokio::test]
async fn a_foreign_deadline_index_does_not_stop_a_complete() {
    let redis = RedisServer::start();
    let mut p = setup(&redis).await;
    let deadlines = p.keys.deadlines();
    p.raw(&["SET", &deadlines, "foreign"]).await;
    let r = p
        .complete_many("w1", &[e("t1", 1, 0, Done, true, &[])])
        .await
        .unwrap();
    assert_eq!(r[0].status, WriteStatus::Ok);
    assert_eq!(timeless(&r[0]).1, Some(("t5".into(), 1)));
    assert_eq!(p.field("t1", "st").await.as_deref(), Some("done"));
    assert_eq!(
        p.raw(&["GET", &deadlines]).await,
        redis::Value::BulkString(b"foreign".to_vec()),
        "the foreign key is left alone"
    );
}
