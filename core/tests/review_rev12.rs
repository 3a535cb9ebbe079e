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
//!   halfway when its hand-out meets a queued task past its deadline;
//! - what held: mixed rtq2_write_many batches (chunk writes and completes
//!   of one task, repeats, ENDED and NOT_FOUND tasks still owned, tasks
//!   the call hands out then completes, a stale pending entry, a queued
//!   task past its deadline, an avoided retry due in the call or pending
//!   already, a paused queue) answer and leave what sequential calls do;
//!   stale pending entries past the scan cap; a due retry promoted by a
//!   slot freed after a chunk write; a foreign key at the owned set, free,
//!   pending, meta's `dd` states, delayed, a task hash (first or later
//!   group) or an output list refuses the call with nothing written;
//!   random rtq2_write_many batches over that mixed queue (24 fixed
//!   rounds here; 400 were run once) leave what sequential calls do.

mod support;

use rtq_core::functions::chunk::WriteStatus;
use rtq_core::functions::complete::{CompleteOutcome, CompleteReply, SlotWriteReply};
use rtq_core::functions::heartbeat::BeatReply;
use rtq_core::protocol::{InboxMessage, TaskState};
use support::proto::{task_of, Ending, Proto, RedisServer, Task, Write};

use CompleteOutcome::{Done, Failed, Retry};

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

/// The queue's state without times: task hashes, the members of its
/// sorted sets, owned sets, free slots, inboxes and output lists.
async fn whole_state(p: &mut Proto, ids: &[&str]) -> Vec<String> {
    const TIMES: [&str; 9] = ["sub", "start", "fin", "fc", "lc", "due", "avu", "sc", "dl"];
    let mut out = Vec::new();
    for id in ids {
        let h: std::collections::BTreeMap<String, String> = p
            .hash(id)
            .await
            .into_iter()
            .filter(|(k, _)| !TIMES.contains(&k.as_str()))
            .collect();
        let o = p.keys.output(id);
        out.push(format!("{id}: {h:?} out {:?}", p.list(&o).await));
    }
    for key in [p.keys.pending(), p.keys.delayed(), p.keys.deadlines()] {
        // Pending in score order (its order matters; setups give its
        // tasks the same scores on both servers); delayed and deadlines
        // are by times.
        let mut members = p.zset(&key).await;
        if key != p.keys.pending() {
            members.sort();
        }
        out.push(format!("{key}: {members:?}"));
    }
    for w in ["w1", "w2"] {
        let owned = p.owned(w).await;
        let key = p.keys.inbox(w);
        let inbox: Vec<String> = p
            .list(&key)
            .await
            .iter()
            .map(|m| format!("{:?}", InboxMessage::parse(m)))
            .collect();
        out.push(format!(
            "{w}: owns {owned:?} free {} inbox {}",
            p.free(w).await,
            inbox.len()
        ));
    }
    let meta = p.keys.meta();
    let dd: Option<String> = redis::cmd("HGET")
        .arg(&meta)
        .arg("paused")
        .query_async(&mut p.conn)
        .await
        .unwrap();
    out.push(format!("paused {dd:?}"));
    out
}

const MIXED: [&str; 13] = [
    "z", "t1", "t2", "t3", "t4", "t5", "t6", "t7", "t8", "t9", "r", "ghost", "x",
];

/// w2 (1 slot) runs z; w1 (4 slots) runs t1 (cancelled since), t2 (its
/// hash deleted since), t3, t4. Pending: a stale entry (ghost), t5..t9
/// (t8 past its deadline); r, a retry w1 failed that avoids it, is due
/// (`due`: in delayed, past its backoff; else in pending already).
async fn mixed(redis: &RedisServer, paused: bool, due: bool) -> Proto {
    let mut p = Proto::connect(redis, "r12").await;
    assert!(matches!(
        p.register("w2", "i2", 1, &[]).await,
        BeatReply::Ok(_)
    ));
    p.submit(&Task::new("z")).await;
    assert_eq!(task_of(p.pop("w2").await), ("z".into(), 1));
    assert!(matches!(
        p.register("w1", "i1", 4, &[]).await,
        BeatReply::Ok(_)
    ));
    for id in ["t1", "t2", "t3", "t4"] {
        p.submit(&Task::new(id)).await;
        assert_eq!(task_of(p.pop("w1").await), (id.into(), 1));
    }
    for id in ["t5", "t6", "t7", "t8", "t9", "r"] {
        p.submit(&Task {
            timeout_ms: 600_000,
            ..Task::new(id)
        })
        .await;
    }
    p.cancel("t1").await;
    let k = |p: &Proto, id: &str| p.keys.task(id);
    let (t2, t8, r) = (k(&p, "t2"), k(&p, "t8"), k(&p, "r"));
    let (pending, delayed, meta) = (p.keys.pending(), p.keys.delayed(), p.keys.meta());
    p.raw(&["DEL", &t2]).await;
    p.raw(&["HSET", &t8, "dl", "1"]).await;
    p.raw(&["ZADD", &pending, "0", "ghost"]).await;
    p.raw(&[
        "HSET",
        &r,
        "fails",
        "1",
        "avoid",
        "w1",
        "avu",
        "99999999999999",
    ])
    .await;
    // Scores (submit times) the same on both servers of a comparison.
    for (i, id) in ["t5", "t6", "t7", "t8", "t9", "r"].iter().enumerate() {
        let score = (1000 + i).to_string();
        p.raw(&["ZADD", &pending, "XX", &score, id]).await;
        let t = p.keys.task(id);
        p.raw(&["HSET", &t, "sc", &score]).await;
    }
    if due {
        p.raw(&["ZREM", &pending, "r"]).await;
        p.raw(&["ZADD", &delayed, "1", "r"]).await;
        p.raw(&["HSET", &r, "due", "1"]).await;
        p.raw(&["HSET", &meta, "dd", "1"]).await;
    } else {
        p.raw(&["HSET", &meta, "dd", "0"]).await;
    }
    if paused {
        p.raw(&["HSET", &meta, "paused", "1"]).await;
    }
    p
}

fn mixed_batch<'a>(a: &'a [Vec<u8>], b: &'a [Vec<u8>], x: &'a [Vec<u8>]) -> Vec<Write<'a>> {
    let end = |id, attempt, seq0, outcome, chunks| {
        Write::End(Ending {
            id,
            attempt,
            seq0,
            outcome,
            want_next: true,
            chunks,
        })
    };
    vec![
        Write::Chunks {
            id: "t3",
            attempt: 1,
            seq0: 0,
            chunks: a,
        },
        end("t3", 1, 1, Done, &[]),
        end("t1", 1, 0, Done, &[]),
        end("t2", 1, 0, Done, &[]),
        end("t4", 1, 0, Retry, x),
        end("t5", 1, 0, Done, &[]),
        Write::Chunks {
            id: "t6",
            attempt: 1,
            seq0: 0,
            chunks: b,
        },
        end("t6", 1, 1, Failed, &[]),
        end("r", 1, 0, Done, &[]),
        end("r", 2, 0, Done, &[]),
        end("t3", 1, 1, Done, &[]),
        end("t7", 1, 0, Retry, &[]),
        end("t9", 1, 0, Done, &[]),
        end("t4", 1, 0, Retry, x),
    ]
}

fn timeless_write(r: &SlotWriteReply) -> String {
    match r {
        SlotWriteReply::Chunks(c) => format!("chunks {:?} {} {:?}", c.status, c.chunks, c.state),
        SlotWriteReply::Complete(c) => format!("end {:?}", timeless(c)),
    }
}

async fn compare_mixed(paused: bool, due: bool) {
    let (a, b, x) = ([b"a".to_vec()], [b"b".to_vec()], [b"x".to_vec()]);
    let batch = mixed_batch(&a, &b, &x);

    let seq_redis = RedisServer::start();
    let mut seq = mixed(&seq_redis, paused, due).await;
    let mut sequential = Vec::new();
    for w in &batch {
        let r = match w {
            Write::Chunks {
                id,
                attempt,
                seq0,
                chunks,
            } => SlotWriteReply::Chunks(seq.chunk("w1", id, *attempt, *seq0, chunks).await),
            Write::End(e) => SlotWriteReply::Complete(seq.end("w1", e).await),
        };
        sequential.push(timeless_write(&r));
    }

    let many_redis = RedisServer::start();
    let mut many = mixed(&many_redis, paused, due).await;
    let batched: Vec<String> = many
        .write_many("w1", &batch)
        .await
        .unwrap()
        .iter()
        .map(timeless_write)
        .collect();
    assert_eq!(sequential, batched);
    assert_eq!(
        whole_state(&mut seq, &MIXED).await,
        whole_state(&mut many, &MIXED).await
    );
}

#[tokio::test]
async fn a_mixed_write_many_batch_leaves_what_sequential_calls_do() {
    compare_mixed(false, true).await;
}

#[tokio::test]
async fn a_mixed_write_many_batch_promoting_nothing_leaves_what_sequential_calls_do() {
    compare_mixed(false, false).await;
}

#[tokio::test]
async fn a_mixed_write_many_batch_on_a_paused_queue_leaves_what_sequential_calls_do() {
    compare_mixed(true, true).await;
}

/// w1 (4 slots) runs t1..t4, t4 with 2 chunks written; t5..t7 queued.
async fn four(redis: &RedisServer) -> Proto {
    let mut p = Proto::connect(redis, "r12").await;
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

#[tokio::test]
async fn a_foreign_key_a_write_would_meet_refuses_the_call_with_nothing_written() {
    let c = [b"c".to_vec()];
    let done = |id| Write::End(Ending::first(id, Done, true));
    let chunks = |id| Write::Chunks {
        id,
        attempt: 1,
        seq0: 0,
        chunks: &c,
    };
    let t4 = Write::End(Ending {
        seq0: 2,
        ..Ending::first("t4", Done, true).with_chunks(&c)
    });
    let retry = Write::End(Ending::first("t2", Retry, false));
    // (the key, "dd" to set in meta or none, the batch)
    let cases: Vec<(&str, Option<&str>, Vec<Write<'_>>)> = vec![
        ("wq:w1", None, vec![done("t1")]),
        ("wq:w1", None, vec![chunks("t1"), done("t1")]),
        ("free", None, vec![done("t1")]),
        ("free", Some("0"), vec![done("t1")]),
        ("pending", None, vec![done("t1")]),
        ("pending", Some("0"), vec![done("t1")]),
        ("pending", Some("1"), vec![done("t1")]),
        ("delayed", None, vec![retry.clone()]),
        ("delayed", Some("1"), vec![done("t1")]),
        ("t:t3", None, vec![done("t1"), done("t3")]),
        ("t:t3", None, vec![done("t1"), chunks("t3"), done("t3")]),
        ("t:t1", Some("0"), vec![done("t2"), done("t1"), done("t1")]),
        ("o:t4", Some("0"), vec![done("t1"), t4.clone()]),
        (
            "o:t3",
            Some("0"),
            vec![done("t1"), done("t2"), chunks("t3"), done("t3")],
        ),
    ];
    for (key, dd, batch) in cases {
        let redis = RedisServer::start();
        let mut p = four(&redis).await;
        let meta = p.keys.meta();
        if let Some(dd) = dd {
            p.raw(&["HSET", &meta, "dd", dd]).await;
        }
        let full = format!("{}{key}", p.keys.task("").trim_end_matches("t:"));
        p.raw(&["DEL", &full]).await;
        p.raw(&["SET", &full, "foreign"]).await;
        if key == "o:t3" {
            // A later group's chunks would meet it: the call's last write.
            let batch = [
                done("t1"),
                done("t2"),
                Write::End(Ending::first("t3", Done, true).with_chunks(&c)),
            ];
            let before = p.snapshot().await;
            let err = p.write_many("w1", &batch).await.expect_err(key);
            assert!(err.to_string().contains("WRONGTYPE"), "{key}: {err}");
            assert_eq!(p.snapshot().await, before, "{key} (trailing chunks)");
        }
        let before = p.snapshot().await;
        match p.write_many("w1", &batch).await {
            Err(err) => {
                assert!(err.to_string().contains("WRONGTYPE"), "{key}: {err}");
                assert_eq!(
                    p.snapshot().await,
                    before,
                    "{key} {dd:?}: wrote before refusing"
                );
            }
            // A chunk write meeting a foreign output list answers
            // NOT_FOUND and the call goes on (write_chunks): it wrote
            // nothing to that key.
            Ok(r) if key == "o:t3" => {
                assert_eq!(timeless_write(&r[2]), "chunks NotFound 0 None");
            }
            Ok(r) => panic!("{key} {dd:?}: not refused: {r:?}"),
        }
    }
}

/// Runs `batch` on `setup` twice: write by write, and as one
/// rtq2_write_many call; both answer and leave the same.
async fn compare_writes<F, Fut>(setup: F, batch: &[Write<'_>], ids: &[&str])
where
    F: Fn(RedisServer) -> Fut,
    Fut: std::future::Future<Output = (RedisServer, Proto)>,
{
    let (_seq_redis, mut seq) = setup(RedisServer::start()).await;
    let mut sequential = Vec::new();
    for w in batch {
        let r = match w {
            Write::Chunks {
                id,
                attempt,
                seq0,
                chunks,
            } => SlotWriteReply::Chunks(seq.chunk("w1", id, *attempt, *seq0, chunks).await),
            Write::End(e) => SlotWriteReply::Complete(seq.end("w1", e).await),
        };
        sequential.push(timeless_write(&r));
    }
    let (_many_redis, mut many) = setup(RedisServer::start()).await;
    let batched: Vec<String> = many
        .write_many("w1", batch)
        .await
        .unwrap()
        .iter()
        .map(timeless_write)
        .collect();
    assert_eq!(sequential, batched);
    assert_eq!(
        whole_state(&mut seq, ids).await,
        whole_state(&mut many, ids).await
    );
}

#[tokio::test]
async fn stale_pending_entries_past_the_scan_cap_are_dropped_as_sequential_completes_drop_them() {
    // 250 stale entries ahead of x: the first two takes drop 100 each and
    // find nothing, the third drops 50 and takes x.
    let setup = |redis: RedisServer| async move {
        let mut p = avoided(&redis, 3, 0).await;
        let pending = p.keys.pending();
        for i in 0..250 {
            p.raw(&["ZADD", &pending, "0", &format!("ghost{i:03}")])
                .await;
        }
        (redis, p)
    };
    let batch: Vec<Write<'_>> = ["a0", "a1", "a2"]
        .into_iter()
        .map(|id| Write::End(Ending::first(id, Done, true)))
        .collect();
    compare_writes(setup, &batch, &["a0", "a1", "a2", "x"]).await;
}

#[tokio::test]
async fn a_due_retry_is_promoted_by_a_slot_freed_after_a_chunk_write() {
    // The only slot freed is a later group's (after a chunk write of its
    // task): the call promotes r then, and hands it out.
    let setup = |redis: RedisServer| async move {
        let p = due_retry(&redis).await;
        (redis, p)
    };
    let c = [b"c".to_vec()];
    let batch = [
        Write::End(Ending {
            attempt: 5,
            ..Ending::first("a", Done, true)
        }),
        Write::Chunks {
            id: "a",
            attempt: 1,
            seq0: 0,
            chunks: &c,
        },
        Write::End(Ending {
            seq0: 1,
            ..Ending::first("a", Done, true)
        }),
    ];
    compare_writes(setup, &batch, &["a", "b", "r"]).await;
}

#[tokio::test]
async fn random_write_many_batches_leave_what_sequential_calls_do() {
    // A fixed linear congruential sequence: the same batches every run.
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move |n: u64| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % n
    };
    let ids = ["t1", "t2", "t3", "t4", "t5", "t6", "t7", "t9", "r", "ghost"];
    let outcomes = [Done, Failed, Retry];
    let one = [b"c".to_vec()];
    for round in 0..24 {
        let due = round % 2 == 0;
        let len = 1 + next(12) as usize;
        let batch: Vec<Write<'_>> = (0..len)
            .map(|_| {
                let id = ids[next(ids.len() as u64) as usize];
                let attempt = 1 + next(4) / 3;
                let seq0 = next(3) / 2;
                let chunks: &[Vec<u8>] = if next(3) == 0 { &one } else { &[] };
                if next(4) == 0 {
                    Write::Chunks {
                        id,
                        attempt,
                        seq0,
                        chunks: &one,
                    }
                } else {
                    Write::End(Ending {
                        id,
                        attempt,
                        seq0,
                        outcome: outcomes[next(3) as usize],
                        want_next: next(4) != 0,
                        chunks,
                    })
                }
            })
            .collect();
        let setup = |redis: RedisServer| async move {
            let p = mixed(&redis, false, due).await;
            (redis, p)
        };
        eprintln!("round {round}: {batch:?}");
        compare_writes(setup, &batch, &MIXED).await;
    }
}
