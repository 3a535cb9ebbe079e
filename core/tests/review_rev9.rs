//! Adversarial review of protocol v2 revision 9: `istr` from a table of
//! small integers, the complete reply with the next task's spec apart
//! (want next '2'), and one `ended` entry per complete call. Tests named
//! `finding_N_...` reproduce a defect the review found (all three fixed:
//! endings lost by a complete failing halfway, `recent_failures` reading
//! past its window, a replay handing out a requeued next task again); the
//! others pin what the review checked and found right.

mod support;

use redis::Value;
use rtq_core::admin::Admin;
use rtq_core::functions::chunk::WriteStatus;
use rtq_core::functions::complete::CompleteOutcome;
use rtq_core::functions::submit::Submit;
use rtq_core::protocol::{InboxMessage, TaskState};
use rtq_core::Client;
use support::proto::{reply_items, spec_of, task_of, Ending, Proto, RedisServer, Task};

use CompleteOutcome::{Done, Failed};

/// `FCALL <function> 1 <meta> <args...>` with binary-safe arguments.
async fn fcall(p: &mut Proto, function: &str, args: &[&[u8]]) -> redis::RedisResult<Value> {
    let mut cmd = redis::cmd("FCALL");
    cmd.arg(function).arg(1).arg(p.keys.meta());
    for a in args {
        cmd.arg(*a);
    }
    cmd.query_async(&mut p.conn).await
}

/// Raw `rtq2_complete` of worker `w`: (task, attempt, seq0, outcome, want
/// next mode, chunks); the reply's items.
#[allow(clippy::too_many_arguments)]
async fn complete_raw(
    p: &mut Proto,
    w: &str,
    id: &str,
    att: &str,
    seq0: &str,
    outcome: &str,
    mode: &str,
    chunks: &[&[u8]],
) -> Vec<Vec<u8>> {
    let mut args: Vec<&[u8]> = vec![
        w.as_bytes(),
        id.as_bytes(),
        att.as_bytes(),
        seq0.as_bytes(),
        outcome.as_bytes(),
        b"{}",
        mode.as_bytes(),
    ];
    args.extend_from_slice(chunks);
    reply_items(fcall(p, "rtq2_complete", &args).await.unwrap())
}

/// The task ids of every `ended` entry, oldest entry first, each entry's
/// ids in the order they were written; with their states.
async fn ended_entries(p: &mut Proto) -> Vec<Vec<(String, String)>> {
    let ended = p.keys.ended();
    let Value::Array(entries) = p.raw(&["XRANGE", &ended, "-", "+"]).await else {
        panic!("XRANGE answers an array")
    };
    entries
        .into_iter()
        .map(|entry| {
            let Value::Array(mut parts) = entry else {
                panic!("an entry is [id, fields]")
            };
            let fields = reply_items(parts.remove(1));
            let text: Vec<String> = fields
                .iter()
                .map(|f| String::from_utf8_lossy(f).into_owned())
                .collect();
            let mut out: Vec<(String, String)> = Vec::new();
            for pair in text.chunks_exact(2) {
                match pair[0].as_str() {
                    "t" => out.push((pair[1].clone(), String::new())),
                    "st" => out.last_mut().unwrap().1 = pair[1].clone(),
                    other => panic!("unexpected field {other}"),
                }
            }
            out
        })
        .collect()
}

/// Every task id named by the `ended` stream, in stream order.
async fn ended_ids(p: &mut Proto) -> Vec<String> {
    ended_entries(p)
        .await
        .into_iter()
        .flatten()
        .map(|(id, _)| id)
        .collect()
}

/// Worker `w` runs each of `endings`' tasks (one attempt each) and ends
/// them all in one complete_many with the given outcomes; returns an Admin
/// of the same server.
async fn end_in_one_call(
    redis: &RedisServer,
    p: &mut Proto,
    endings: &[(&str, CompleteOutcome)],
) -> Admin {
    p.register("w", "i", endings.len(), &[]).await;
    for (id, _) in endings {
        let mut t = Task::new(id);
        t.max_attempts = 1;
        p.submit(&t).await;
        assert_eq!(task_of(p.pop("w").await).0, *id);
    }
    let batch: Vec<Ending<'_>> = endings
        .iter()
        .map(|(id, o)| Ending::first(id, *o, false))
        .collect();
    p.complete_many("w", &batch).await.unwrap();
    let client = Client::connect(&redis.url()).await.unwrap();
    Admin::new(&client)
}

/// The Redis clock in ms.
async fn redis_now_ms(p: &mut Proto) -> i64 {
    let t: Vec<String> = redis::cmd("TIME").query_async(&mut p.conn).await.unwrap();
    t[0].parse::<i64>().unwrap() * 1000 + t[1].parse::<i64>().unwrap() / 1000
}

/// The statistics buckets of now and of the next 10 s.
async fn stats_keys_now(p: &mut Proto) -> [String; 2] {
    let bucket = redis_now_ms(p).await / 10_000;
    [p.keys.stats(bucket), p.keys.stats(bucket + 1)]
}

/// Finding 1 (fixed). Worker `w` (2 slots) runs a and b; x waits in
/// pending, written by an older protocol (so a take_next fails it, which
/// counts it in the statistics); the statistics buckets are foreign keys.
/// One complete_many ends a (no next) and b (want next). As first
/// reviewed, the statistics write of x's ending failed the call after a
/// was written: a's `ended` entry and b's slot were lost. Statistics are
/// now best effort, like events: the count is lost, nothing else. Every
/// ending has its entry (x's first: it ended inside b's completion, before
/// b's ending was recorded), and b's slot comes back as a free slot.
/// (The endings of a call would also reach `ended` if a write failed
/// halfway, by a pcall around the call's completions; no test reaches
/// that path now that nothing after the first write can fail.)
#[tokio::test]
async fn finding_1_a_foreign_stats_key_loses_the_count_only() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "f1").await;
    p.register("w", "i", 2, &[]).await;
    for id in ["a", "b", "x"] {
        p.submit(&Task::new(id)).await;
    }
    assert_eq!(task_of(p.pop("w").await).0, "a");
    assert_eq!(task_of(p.pop("w").await).0, "b");
    let x = p.keys.task("x");
    p.raw(&["HSET", &x, "v", "1"]).await;
    for key in stats_keys_now(&mut p).await {
        p.raw(&["SET", &key, "foreign"]).await;
    }
    let replies = p
        .complete_many(
            "w",
            &[
                Ending::first("a", Done, false),
                Ending::first("b", Done, true),
            ],
        )
        .await
        .expect("a foreign statistics key fails no complete");
    assert!(replies
        .iter()
        .all(|r| r.status == WriteStatus::Ok && r.next.is_none()));
    for (id, st) in [("a", "done"), ("b", "done"), ("x", "failed")] {
        assert_eq!(p.field(id, "st").await.as_deref(), Some(st), "{id}");
    }
    assert_eq!(
        ended_entries(&mut p).await,
        [vec![
            ("a".to_string(), "done".to_string()),
            ("x".to_string(), "failed".to_string()),
            ("b".to_string(), "done".to_string()),
        ]]
    );
    assert!(p.owned("w").await.is_empty());
    assert_eq!(
        p.free("w").await,
        1.0,
        "b's slot is free again (a asked for no next task)"
    );
    for key in stats_keys_now(&mut p).await {
        assert_eq!(
            p.raw(&["GET", &key]).await,
            Value::BulkString(b"foreign".to_vec())
        );
    }
}

// Finding 2 ------------------------------------------------------------------

/// `Admin::recent_failures(queue, scan)` promises the failures "among the
/// last `scan` endings"; as first reviewed it read the last `scan`
/// entries, each up to 128 endings, so the console (FAILURE_SCAN = 1000)
/// could read summaries of up to 128,000 tasks per refresh. Fixed: the
/// endings past `scan` are dropped.
#[tokio::test]
async fn finding_2_recent_failures_examines_at_most_scan_endings() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "f2").await;
    let admin = end_in_one_call(
        &redis,
        &mut p,
        &[("f1", Failed), ("f2", Failed), ("f3", Failed)],
    )
    .await;
    let ids: Vec<String> = admin
        .recent_failures("f2", 1)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(ids, ["f3"], "the last 1 ending only");
}

// Finding 3 ------------------------------------------------------------------

/// Not new in revision 9 (the replay's `nx` mark is older), found while
/// checking replays after an operator requeue: the replay rebuilt the
/// next task's message from the task as it is now, checking the worker but
/// not the attempt (fixed: `nx` names the attempt too). After the next task was requeued and handed to the
/// same worker again through its inbox (attempt 2), the replay of the lost
/// complete hands out attempt 2 a second time: the worker runs it in two
/// slots.
#[tokio::test]
async fn finding_3_a_replay_never_hands_out_an_attempt_the_inbox_also_holds() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "f3").await;
    p.register("w", "i", 2, &[]).await;
    for id in ["t1", "t2", "t3"] {
        p.submit(&Task::new(id)).await;
    }
    assert_eq!(task_of(p.pop("w").await).0, "t1");
    assert_eq!(task_of(p.pop("w").await).0, "t2");
    // t1's complete takes t3 (attempt 1); its reply is lost.
    let first = complete_raw(&mut p, "w", "t1", "1", "0", "done", "2", &[]).await;
    assert!(first[1].starts_with(b"T\tt3\t1\t"), "{first:?}");
    // t2 ends and frees its slot; an operator requeues t3, which goes
    // straight back to w (attempt 2) through its inbox.
    let r = p.complete("w", "t2", 1, 0, Done, true, &[]).await;
    assert_eq!(r.next, None);
    p.requeue("t3").await;
    let mut inbox = Vec::new();
    while let Some(m) = p.pop("w").await {
        inbox.push(m);
    }
    let delivered_by_inbox = inbox
        .iter()
        .filter(|m| matches!(m, InboxMessage::Task(d) if d.id == "t3" && d.attempt == 2))
        .count();
    assert_eq!(delivered_by_inbox, 1, "{inbox:?}");
    // The worker retries t1's complete.
    let replay = complete_raw(&mut p, "w", "t1", "1", "0", "done", "2", &[]).await;
    assert!(
        !replay[1].starts_with(b"T\tt3\t2\t"),
        "t3 attempt 2 handed out twice (inbox and replay): {:?}",
        String::from_utf8_lossy(&replay[1])
    );
}

// Verified: the split reply -------------------------------------------------------

/// Every status answers 7 items with want next '2' and 6 with '1'; only a
/// reply that hands out a task carries a spec.
#[tokio::test]
async fn the_split_reply_has_seven_items_on_every_status() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "split").await;
    p.register("w", "i", 5, &[]).await;
    for id in ["ok", "ended", "gone", "fenced", "order"] {
        p.submit(&Task::new(id)).await;
        assert_eq!(task_of(p.pop("w").await).0, id);
    }
    for mode in ["1", "2"] {
        let want = if mode == "2" { 7 } else { 6 };
        // FENCED, ORDER and TOO_LARGE write nothing: ask them in both modes.
        let r = complete_raw(&mut p, "w", "fenced", "2", "0", "done", mode, &[]).await;
        assert_eq!(
            (r.len(), r[0].as_slice(), r[1].as_slice()),
            (want, &b"FENCED"[..], &b""[..])
        );
        let r = complete_raw(&mut p, "w", "order", "1", "3", "done", mode, &[]).await;
        assert_eq!(
            (r.len(), r[0].as_slice(), r[1].as_slice()),
            (want, &b"ORDER"[..], &b""[..])
        );
        let nb = p.keys.task("order");
        p.raw(&["HSET", &nb, "nb", "67108864"]).await;
        let r = complete_raw(&mut p, "w", "order", "1", "0", "done", mode, &[b"z"]).await;
        assert_eq!(
            (r.len(), r[0].as_slice(), r[1].as_slice()),
            (want, &b"TOO_LARGE"[..], &b""[..])
        );
        p.raw(&["HSET", &nb, "nb", "0"]).await;
        if mode == "2" {
            assert!(r[6].is_empty());
        }
    }
    // Queue a next task for the statuses that free a slot.
    p.submit(&Task::new("n1")).await;
    p.submit(&Task::new("n2")).await;
    p.submit(&Task::new("n3")).await;

    // ENDED (cancelled meanwhile) takes the next task: apart.
    p.cancel("ended").await;
    let r = complete_raw(&mut p, "w", "ended", "1", "0", "done", "2", &[]).await;
    assert_eq!((r.len(), r[0].as_slice()), (7, &b"ENDED"[..]));
    assert!(
        r[1].starts_with(b"T\tn1\t1\t") && r[1].ends_with(b"\t"),
        "{r:?}"
    );
    assert_eq!(r[6], spec_of("n1").into_bytes());
    assert_eq!(r[3], b"cancelled");
    // Its replay with '1' joins the same task.
    let j = complete_raw(&mut p, "w", "ended", "1", "0", "done", "1", &[]).await;
    assert_eq!((j.len(), j[0].as_slice()), (6, &b"ENDED"[..]));
    assert_eq!(j[1], [r[1].as_slice(), r[6].as_slice()].concat());

    // OK takes the next task.
    let r = complete_raw(&mut p, "w", "ok", "1", "0", "done", "2", &[]).await;
    assert_eq!((r.len(), r[0].as_slice()), (7, &b"OK"[..]));
    assert!(r[1].starts_with(b"T\tn2\t1\t"), "{r:?}");
    assert_eq!(r[6], spec_of("n2").into_bytes());

    // NOT_FOUND (the hash vanished) frees the slot and takes nothing.
    let gone = p.keys.task("gone");
    p.raw(&["DEL", &gone]).await;
    let r = complete_raw(&mut p, "w", "gone", "1", "0", "done", "2", &[]).await;
    assert_eq!(
        (r.len(), r[0].as_slice(), r[1].as_slice(), r[6].as_slice()),
        (7, &b"NOT_FOUND"[..], &b""[..], &b""[..])
    );
    let r = complete_raw(&mut p, "w", "gone", "1", "0", "done", "1", &[]).await;
    assert_eq!(
        (r.len(), r[0].as_slice(), r[1].as_slice()),
        (6, &b"NOT_FOUND"[..], &b""[..])
    );
    assert_eq!(p.zset(&p.keys.pending()).await, ["n3"], "n3 still queued");
}

/// A spec is answered byte for byte, whatever it holds: tabs, newlines,
/// CR, NUL and bytes that are not UTF-8, or nothing at all (a task hash
/// whose spec was emptied or removed).
#[tokio::test]
async fn a_spec_of_any_bytes_or_none_comes_back_exact_apart_and_joined() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "bytes").await;
    p.register("w", "i", 1, &[]).await;
    p.submit(&Task::new("t1")).await;
    assert_eq!(task_of(p.pop("w").await).0, "t1");
    let spec: &[u8] = b"{\"a\":\"x\ty\"}\t\n\r\x00\xff\xfe\tT\tfake\t9\t";
    let r = fcall(
        &mut p,
        "rtq2_submit",
        &[b"bin", spec, b"0", b"0", b"3", b"600000", b"", b"0"],
    )
    .await
    .unwrap();
    assert_eq!(reply_items(r)[0], b"OK");
    for id in ["empty", "none"] {
        p.submit(&Task::new(id)).await;
    }
    let empty = p.keys.task("empty");
    p.raw(&["HSET", &empty, "spec", ""]).await;
    let none = p.keys.task("none");
    p.raw(&["HDEL", &none, "spec"]).await;

    let r = complete_raw(&mut p, "w", "t1", "1", "0", "done", "2", &[]).await;
    assert!(r[1].starts_with(b"T\tbin\t1\t") && r[1].ends_with(b"\t"));
    assert_eq!(r[1].iter().filter(|&&b| b == b'\t').count(), 6, "{r:?}");
    assert_eq!(r[6], spec);
    let j = complete_raw(&mut p, "w", "t1", "1", "0", "done", "1", &[]).await;
    assert_eq!(j[1], [r[1].as_slice(), spec].concat());
    // The typed binding (want next '2') joins them into the same message.
    let typed = p.complete("w", "t1", 1, 0, Done, true, &[]).await;
    match typed.next {
        Some(InboxMessage::Task(d)) => {
            assert_eq!((d.id.as_str(), d.spec.as_slice()), ("bin", spec))
        }
        other => panic!("{other:?}"),
    }

    for id in ["empty", "none"] {
        let prev = if id == "empty" { "bin" } else { "empty" };
        let r = complete_raw(&mut p, "w", prev, "1", "0", "done", "2", &[]).await;
        assert!(
            r[1].starts_with(format!("T\t{id}\t1\t").as_bytes()),
            "{r:?}"
        );
        assert!(r[1].ends_with(b"\t") && r[6].is_empty(), "{r:?}");
        let typed = p.complete("w", prev, 1, 0, Done, true, &[]).await;
        match typed.next {
            Some(InboxMessage::Task(d)) => {
                assert_eq!((d.id.as_str(), d.spec.as_slice()), (id, &b""[..]))
            }
            other => panic!("{other:?}"),
        }
    }
}

/// The largest spec (16 MiB) comes back whole, apart and joined.
#[tokio::test]
async fn a_16_mib_spec_comes_back_whole() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "big").await;
    p.register("w", "i", 1, &[]).await;
    p.submit(&Task::new("t1")).await;
    assert_eq!(task_of(p.pop("w").await).0, "t1");
    let mut spec = String::from("{\"pad\":\"");
    spec.push_str(&"\t".repeat(16 * 1024 * 1024 - spec.len() - 2));
    spec.push_str("\"}");
    assert_eq!(spec.len(), 16 * 1024 * 1024);
    p.call(&Submit {
        id: "big",
        spec: &spec,
        priority: 0,
        timeout_ms: 0,
        max_attempts: 3,
        retention_ms: 600_000,
        reply: "",
        stream: false,
    })
    .await
    .unwrap();
    let r = complete_raw(&mut p, "w", "t1", "1", "0", "done", "2", &[]).await;
    assert!(
        r[1].len() < 100,
        "the head holds no spec: {} bytes",
        r[1].len()
    );
    assert!(r[6] == spec.as_bytes(), "the spec item differs");
    let typed = p.complete("w", "t1", 1, 0, Done, true, &[]).await;
    match typed.next {
        Some(InboxMessage::Task(d)) => {
            assert_eq!((d.id.as_str(), d.attempt), ("big", 1));
            assert!(d.spec == spec.as_bytes(), "the joined spec differs");
        }
        other => panic!("{other:?}"),
    }
}

/// One complete_many may mix '1' (an older worker's shape) and '2': each
/// completion is answered in its own shape, also on a replay with the
/// modes swapped.
#[tokio::test]
async fn mixed_want_next_modes_in_one_batch_answer_each_its_own_shape() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "mixed").await;
    p.register("w", "i", 2, &[]).await;
    for id in ["t1", "t2", "t3", "t4"] {
        p.submit(&Task::new(id)).await;
    }
    assert_eq!(task_of(p.pop("w").await).0, "t1");
    assert_eq!(task_of(p.pop("w").await).0, "t2");
    let call = |m1: &'static [u8], m2: &'static [u8]| -> Vec<&'static [u8]> {
        vec![
            b"w", b"2", b"t1", b"1", b"0", b"done", b"{}", m1, b"0", b"t2", b"1", b"0", b"done",
            b"{}", m2, b"0",
        ]
    };
    let Value::Array(replies) = fcall(&mut p, "rtq2_complete_many", &call(b"1", b"2"))
        .await
        .unwrap()
    else {
        panic!("an array")
    };
    let replies: Vec<Vec<Vec<u8>>> = replies.into_iter().map(reply_items).collect();
    assert_eq!(replies[0].len(), 6);
    assert_eq!(
        replies[0][1],
        [b"T\tt3\t1\t".as_slice(), &replies[0][1][7..]].concat()
    );
    assert!(replies[0][1].ends_with(spec_of("t3").as_bytes()));
    assert_eq!(replies[1].len(), 7);
    assert!(replies[1][1].starts_with(b"T\tt4\t1\t") && replies[1][1].ends_with(b"\t"));
    assert_eq!(replies[1][6], spec_of("t4").into_bytes());

    let Value::Array(again) = fcall(&mut p, "rtq2_complete_many", &call(b"2", b"1"))
        .await
        .unwrap()
    else {
        panic!("an array")
    };
    let again: Vec<Vec<Vec<u8>>> = again.into_iter().map(reply_items).collect();
    assert_eq!((again[0].len(), again[1].len()), (7, 6));
    assert_eq!(
        [again[0][1].as_slice(), &again[0][6]].concat(),
        replies[0][1]
    );
    assert_eq!(
        again[1][1],
        [replies[1][1].as_slice(), &replies[1][6]].concat()
    );
    assert_eq!(
        ended_ids(&mut p).await,
        ["t1", "t2"],
        "the replay ended nothing"
    );
}

/// A replay after the next task was requeued or cancelled by an operator
/// hands out nothing, in both shapes.
#[tokio::test]
async fn a_replay_after_the_next_task_was_requeued_or_cancelled_answers_no_next_task() {
    let redis = RedisServer::start();
    for op in ["requeue", "cancel"] {
        let mut p = Proto::connect(&redis, op).await;
        p.register("w", "i", 1, &[]).await;
        p.submit(&Task::new("t1")).await;
        p.submit(&Task::new("t2")).await;
        assert_eq!(task_of(p.pop("w").await).0, "t1");
        let first = complete_raw(&mut p, "w", "t1", "1", "0", "done", "2", &[]).await;
        assert!(first[1].starts_with(b"T\tt2\t1\t"));
        if op == "requeue" {
            p.requeue("t2").await;
        } else {
            p.cancel("t2").await;
        }
        let r = complete_raw(&mut p, "w", "t1", "1", "0", "done", "2", &[]).await;
        assert_eq!(
            (r.len(), r[0].as_slice(), r[1].as_slice(), r[6].as_slice()),
            (7, &b"OK"[..], &b""[..], &b""[..]),
            "{op}"
        );
        let r = complete_raw(&mut p, "w", "t1", "1", "0", "done", "1", &[]).await;
        assert_eq!(
            (r.len(), r[0].as_slice(), r[1].as_slice()),
            (6, &b"OK"[..], &b""[..]),
            "{op}"
        );
        let typed = p.complete("w", "t1", 1, 0, Done, true, &[]).await;
        assert_eq!((typed.status, typed.next), (WriteStatus::Ok, None), "{op}");
    }
}

// Verified: the ended batch --------------------------------------------------------

/// A call ending more than 16 tasks writes entries of at most 16
/// endings, in the order they ended; the recent list reads them back
/// newest first and its pages join up whatever their bounds.
#[tokio::test]
async fn a_batch_of_130_endings_writes_two_entries_and_pages_read_back_in_order() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "many").await;
    p.register("w", "i", 130, &[]).await;
    let ids: Vec<String> = (0..130).map(|i| format!("c{i:03}")).collect();
    let tasks: Vec<Task<'_>> = ids.iter().map(|id| Task::new(id)).collect();
    p.submit_many(&tasks).await;
    let batch: Vec<Ending<'_>> = ids
        .iter()
        .map(|id| Ending::first(id, Done, false))
        .collect();
    let replies = p.complete_many("w", &batch).await.unwrap();
    assert!(replies.iter().all(|r| r.status == WriteStatus::Ok));

    let entries = ended_entries(&mut p).await;
    assert_eq!(
        entries.iter().map(Vec::len).collect::<Vec<_>>(),
        [16, 16, 16, 16, 16, 16, 16, 16, 2],
        "entries of at most 16 endings"
    );
    let flat: Vec<String> = entries.into_iter().flatten().map(|(id, _)| id).collect();
    assert_eq!(flat, ids, "in the order they ended");

    let client = Client::connect(&redis.url()).await.unwrap();
    let admin = Admin::new(&client);
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    let all: Vec<String> = admin
        .recent("many", 0, 500)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(all, newest_first);
    for size in [1, 3, 7, 15, 16, 17, 129] {
        let mut joined = Vec::new();
        let mut offset = 0;
        loop {
            let page = admin.recent("many", offset, size).await.unwrap();
            if page.is_empty() {
                break;
            }
            assert!(page.len() <= size);
            offset += page.len();
            joined.extend(page.into_iter().map(|t| t.id));
        }
        assert_eq!(joined, newest_first, "pages of {size}");
    }
}

/// Endings a take_next causes inside a complete (a task of an older
/// protocol failed, a queued task past its deadline expired) share the
/// call's entry, before the ending of the completed task.
#[tokio::test]
async fn endings_made_by_take_next_share_the_calls_entry() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "take").await;
    p.register("w", "i", 1, &[]).await;
    // Submitted within one ms, equal scores pop by id: a_old, b_late, c_next.
    for id in ["t1", "a_old", "b_late", "c_next"] {
        p.submit(&Task::new(id)).await;
    }
    assert_eq!(task_of(p.pop("w").await).0, "t1");
    let old = p.keys.task("a_old");
    p.raw(&["HSET", &old, "v", "1"]).await;
    let late = p.keys.task("b_late");
    p.raw(&["HSET", &late, "dl", "1"]).await;
    let r = p.complete("w", "t1", 1, 0, Done, true, &[]).await;
    assert_eq!(task_of(r.next).0, "c_next");
    assert_eq!(
        ended_entries(&mut p).await,
        [vec![
            ("a_old".to_string(), "failed".to_string()),
            ("b_late".to_string(), "expired".to_string()),
            ("t1".to_string(), "done".to_string()),
        ]]
    );
    let client = Client::connect(&redis.url()).await.unwrap();
    let admin = Admin::new(&client);
    let failures: Vec<String> = admin
        .recent_failures("take", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    // (a_old, a task of another protocol version, is not summarised.)
    assert_eq!(failures, ["b_late"], "{failures:?}");
}

/// A foreign key at `ended` loses the entry only: the completions are
/// written and answered as usual.
#[tokio::test]
async fn a_foreign_ended_key_loses_only_the_entry() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "foreign").await;
    p.register("w", "i", 2, &[]).await;
    for id in ["a", "b"] {
        p.submit(&Task::new(id)).await;
        assert_eq!(task_of(p.pop("w").await).0, id);
    }
    let ended = p.keys.ended();
    p.raw(&["SET", &ended, "foreign"]).await;
    let r = p
        .complete_many(
            "w",
            &[
                Ending::first("a", Done, false),
                Ending::first("b", Failed, false),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        r.iter().map(|r| (r.status, r.state)).collect::<Vec<_>>(),
        [
            (WriteStatus::Ok, Some(TaskState::Done)),
            (WriteStatus::Ok, Some(TaskState::Failed))
        ]
    );
    assert_eq!(p.field("a", "st").await.as_deref(), Some("done"));
    assert_eq!(
        p.raw(&["GET", &ended]).await,
        Value::BulkString(b"foreign".to_vec())
    );
}

/// A task that ended in a batch entry and again later (after an operator
/// requeue) is listed once, at its newest ending; a failure requeued since
/// is no longer listed as one.
#[tokio::test]
async fn a_task_ending_twice_is_listed_once_at_its_newest_ending() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "twice").await;
    let admin = end_in_one_call(&redis, &mut p, &[("a", Done), ("b", Failed), ("c", Done)]).await;
    let ids = |v: Vec<rtq_core::TaskInfo>| v.into_iter().map(|t| t.id).collect::<Vec<_>>();
    assert_eq!(
        ids(admin.recent_failures("twice", 10).await.unwrap()),
        ["b"]
    );
    p.requeue("b").await;
    assert!(admin.recent_failures("twice", 10).await.unwrap().is_empty());
    p.cancel("b").await;
    assert_eq!(
        ids(admin.recent("twice", 0, 10).await.unwrap()),
        ["b", "c", "a"]
    );
    assert_eq!(ids(admin.recent("twice", 1, 1).await.unwrap()), ["c"]);
    assert_eq!(ids(admin.recent("twice", 2, 5).await.unwrap()), ["a"]);
}

// Verified: numbers ------------------------------------------------------------------

/// Numbers are written as plain integers on both sides of the table of
/// small integers (4095, 4096) and far beyond it (10^15, never '1e+15'),
/// and a chunk event names its chunks c0 .. c511.
#[tokio::test]
async fn numbers_are_written_as_plain_integers_around_the_small_int_table() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "nums").await;
    p.register("w", "i", 1, &[]).await;
    let reply = p.create_reply_stream("cl").await;
    let mut t1 = Task::new("t1");
    t1.reply = &reply;
    t1.stream = true;
    p.submit(&t1).await;
    for id in ["n1_4095", "n2_4096", "n3_1e15"] {
        p.submit(&Task::new(id)).await;
    }
    for (id, att) in [
        ("n1_4095", "4094"),
        ("n2_4096", "4095"),
        ("n3_1e15", "999999999999999"),
    ] {
        let k = p.keys.task(id);
        p.raw(&["HSET", &k, "att", att]).await;
    }
    assert_eq!(task_of(p.pop("w").await).0, "t1");

    // 512 chunks in one complete: the event names c0 .. c511.
    let chunks: Vec<Vec<u8>> = (0..512).map(|i| format!("k{i}").into_bytes()).collect();
    let r = p.complete("w", "t1", 1, 0, Done, true, &chunks).await;
    assert_eq!((r.status, r.chunks), (WriteStatus::Ok, 512));
    let Value::Array(events) = p.raw(&["XRANGE", &reply, "-", "+"]).await else {
        panic!("XRANGE answers an array")
    };
    let chunk_event = events
        .into_iter()
        .map(|e| {
            let Value::Array(mut parts) = e else { panic!() };
            reply_items(parts.remove(1))
        })
        .find(|f| f.len() > 3 && f[2] == b"e" && f[3] == b"c")
        .expect("a chunk event");
    let text: Vec<String> = chunk_event
        .iter()
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect();
    assert_eq!(
        text[..10],
        ["t", "t1", "e", "c", "a", "1", "s", "0", "n", "512"]
    );
    for i in 0..512 {
        assert_eq!(text[10 + 2 * i], format!("c{i}"));
        assert_eq!(text[11 + 2 * i], format!("k{i}"));
    }
    assert_eq!(text.len(), 10 + 1024);

    let mut prev = ("t1".to_string(), 1u64);
    for (id, att) in [
        ("n1_4095", 4095u64),
        ("n2_4096", 4096),
        ("n3_1e15", 1_000_000_000_000_000),
    ] {
        let next = r_next(&mut p, &prev).await;
        assert!(
            next.starts_with(format!("T\t{id}\t{att}\t").as_bytes()),
            "{:?}",
            String::from_utf8_lossy(&next)
        );
        assert_eq!(p.field(id, "att").await, Some(att.to_string()));
        prev = (id.to_string(), att);
    }
    // The last one, at attempt 10^15 (the largest a worker may name), ends.
    let r = p
        .complete("w", "n3_1e15", 1_000_000_000_000_000, 0, Done, false, &[])
        .await;
    assert_eq!(r.status, WriteStatus::Ok);
    let fin = p.field("n3_1e15", "fin").await.unwrap();
    assert!(fin.bytes().all(|b| b.is_ascii_digit()), "{fin}");
}

/// Completes (or, when it ran already, replays) attempt `prev` of worker
/// `w` with want next '2'; answers the next task's head.
async fn r_next(p: &mut Proto, prev: &(String, u64)) -> Vec<u8> {
    let att = prev.1.to_string();
    let r = complete_raw(p, "w", &prev.0, &att, "0", "done", "2", &[]).await;
    assert_eq!(r[0], b"OK", "{r:?}");
    r[1].clone()
}

/// Numbers a caller writes in an unusual spelling ('-0', leading zeros)
/// are stored as before revision 9: canonical integers ('-0' is '0').
#[tokio::test]
async fn unusual_number_spellings_are_stored_canonically() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "spell").await;
    p.register("w", "i", 1, &[]).await;
    let r = fcall(
        &mut p,
        "rtq2_submit",
        &[b"t1", b"{}", b"-0", b"0", b"03", b"600000", b"", b"0"],
    )
    .await
    .unwrap();
    assert_eq!(reply_items(r)[0], b"OK");
    assert_eq!(task_of(p.pop("w").await), ("t1".into(), 1));
    let h = p.hash("t1").await;
    assert_eq!((h["pri"].as_str(), h["max"].as_str()), ("0", "3"));
    // Attempt '01' and seq0 '-0' name attempt 1 with no chunks written.
    let r = complete_raw(&mut p, "w", "t1", "01", "-0", "done", "2", &[b"x"]).await;
    assert_eq!((r[0].as_slice(), r[2].as_slice()), (&b"OK"[..], &b"1"[..]));
    let h = p.hash("t1").await;
    assert_eq!(
        (h["nc"].as_str(), h["nb"].as_str(), h["st"].as_str()),
        ("1", "1", "done")
    );
    assert_eq!(h["ca"], "OK 1@w");
}

/// An older worker ('1', the joined reply) and a newer one ('2', through
/// the typed binding, which joins the parts) share a queue: each gets its
/// own next task, whole, and one entry per call lists its endings.
#[tokio::test]
async fn an_older_and_a_newer_worker_share_a_queue() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "share").await;
    p.register("old", "i1", 1, &[]).await;
    p.register("new", "i2", 2, &[]).await;
    for id in ["a", "b", "c", "d", "e", "f"] {
        p.submit(&Task::new(id)).await;
    }
    let mut running = Vec::new();
    for w in ["old", "new"] {
        while let Some(m) = p.pop(w).await {
            let (id, _) = task_of(Some(m));
            running.push((w, id));
        }
    }
    assert_eq!(running.len(), 3, "{running:?}");
    let old_task = running.iter().find(|(w, _)| *w == "old").unwrap().1.clone();
    let new_tasks: Vec<String> = running
        .iter()
        .filter(|(w, _)| *w == "new")
        .map(|(_, id)| id.clone())
        .collect();

    let r = complete_raw(&mut p, "old", &old_task, "1", "0", "done", "1", &[]).await;
    assert_eq!(r.len(), 6);
    let old_next = match InboxMessage::parse(&r[1]) {
        InboxMessage::Task(d) => d,
        other => panic!("{other:?}"),
    };
    assert_eq!(old_next.spec, spec_of(&old_next.id).into_bytes());

    let batch: Vec<Ending<'_>> = new_tasks
        .iter()
        .map(|id| Ending::first(id, Done, true))
        .collect();
    let replies = p.complete_many("new", &batch).await.unwrap();
    let mut handed = vec![old_next.id.clone()];
    for r in replies {
        match r.next {
            Some(InboxMessage::Task(d)) => {
                assert_eq!(d.spec, spec_of(&d.id).into_bytes(), "joined whole");
                handed.push(d.id);
            }
            other => panic!("{other:?}"),
        }
    }
    handed.sort();
    handed.dedup();
    assert_eq!(handed.len(), 3, "three distinct next tasks: {handed:?}");
    let entries = ended_entries(&mut p).await;
    assert_eq!(
        entries.iter().map(Vec::len).collect::<Vec<_>>(),
        [1, 2],
        "{entries:?}"
    );
}
