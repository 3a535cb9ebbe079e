//! Adversarial review of protocol revision 11 (the Lua around the hot
//! path, leaner): task hash views with absent counters read as zero, no
//! zero counters written at submit or hand-out, memo caches that outlive
//! a call (bound queue, owned-set key, time and score strings), small
//! integers and ids checked without patterns. Nothing observable may
//! change but the absent zero counters: errors name the same argument,
//! integers and ids are accepted or refused as before, a second attempt
//! never shows the first one's output, replays answer as before, and
//! queues that alternate never see each other's keys.

mod support;

use redis::Value;
use rtq_core::functions::chunk::WriteStatus;
use rtq_core::functions::complete::CompleteOutcome;
use rtq_core::functions::release::{HandBack, ReleaseMode};
use rtq_core::functions::submit::SubmitReply;
use rtq_core::protocol::{InboxMessage, TaskState};
use rtq_core::TaskInfo;
use support::proto::{reply_items, task_of, Ending, Proto, Task};
use support::*;

use CompleteOutcome::{Done, Retry};

fn chunks(texts: &[&str]) -> Vec<Vec<u8>> {
    texts.iter().map(|t| t.as_bytes().to_vec()).collect()
}

/// `FCALL name` on the queue of `p` with binary arguments; an error
/// reply as its text.
async fn fcall(p: &mut Proto, name: &str, args: &[&[u8]]) -> Result<Value, String> {
    fcall_keys(p, name, p.keys.meta().as_bytes(), args).await
}

/// `FCALL name` with KEYS[1] = `meta` (any bytes).
async fn fcall_keys(
    p: &mut Proto,
    name: &str,
    meta: &[u8],
    args: &[&[u8]],
) -> Result<Value, String> {
    let mut cmd = redis::cmd("FCALL");
    cmd.arg(name).arg(1).arg(meta);
    for a in args {
        cmd.arg(*a);
    }
    let r: redis::RedisResult<Value> = cmd.query_async(&mut p.conn).await;
    r.map_err(|e| e.to_string())
}

/// rtq2_submit's 8 arguments, each overridable.
struct Args<'a> {
    id: &'a [u8],
    priority: &'a [u8],
    timeout: &'a [u8],
    max: &'a [u8],
    retention: &'a [u8],
    reply: &'a [u8],
    stream: &'a [u8],
}

impl<'a> Args<'a> {
    fn new(id: &'a str) -> Self {
        Self {
            id: id.as_bytes(),
            priority: b"0",
            timeout: b"0",
            max: b"3",
            retention: b"600000",
            reply: b"",
            stream: b"0",
        }
    }

    fn list(&self) -> Vec<&'a [u8]> {
        vec![
            self.id,
            br#"{"v":2,"input":{}}"#,
            self.priority,
            self.timeout,
            self.max,
            self.retention,
            self.reply,
            self.stream,
        ]
    }
}

async fn submit_raw(p: &mut Proto, a: &Args<'_>) -> Result<Value, String> {
    fcall(p, "rtq2_submit", &a.list()).await
}

async fn submit_many_raw(p: &mut Proto, tasks: &[Args<'_>]) -> Result<Value, String> {
    let n = tasks.len().to_string();
    let mut args: Vec<&[u8]> = vec![n.as_bytes()];
    for t in tasks {
        args.extend(t.list());
    }
    fcall(p, "rtq2_submit_many", &args).await
}

/// An INVALID refusal naming `what` (redis-rs quotes the error code).
fn refused(err: &str, what: &str) -> bool {
    err.contains("INVALID") && err.contains(what)
}

fn info(id: &str, h: &std::collections::HashMap<String, String>) -> TaskInfo {
    TaskInfo::from_hash(id, h).unwrap()
}

// Arguments ------------------------------------------------------------------

/// A task with more than one invalid argument is refused naming the first
/// one in argument order, as revision 10 did (revision 11 checked the
/// reply stream before the priority, timeout, attempts and retention).
#[tokio::test]
async fn a_submit_with_two_invalid_arguments_names_the_first_as_before() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    let before = p.snapshot().await;

    let mut a = Args::new("t1");
    a.priority = b"1001";
    a.reply = b"rtq:{other}:r:c1";
    let err = submit_raw(&mut p, &a).await.unwrap_err();
    assert!(refused(&err, "priority"), "{err}");

    let mut a = Args::new("t1");
    a.retention = b"0";
    a.reply = b"bad";
    let err = submit_raw(&mut p, &a).await.unwrap_err();
    assert!(refused(&err, "retention"), "{err}");

    // In a batch: the second task's retention comes before its reply
    // stream, which differs from the first task's (checked, refused).
    let reply = p.keys.reply("c1");
    let mut first = Args::new("t1");
    first.reply = reply.as_bytes();
    let mut second = Args::new("t2");
    second.max = b"1001";
    second.reply = b"rtq:{q}:r:";
    let err = submit_many_raw(&mut p, &[first, second]).await.unwrap_err();
    assert!(refused(&err, "max attempts"), "{err}");

    // The same with only the reply stream wrong: refused for it.
    let mut first = Args::new("t1");
    first.reply = reply.as_bytes();
    let mut second = Args::new("t2");
    second.reply = b"rtq:{q}:r:";
    let err = submit_many_raw(&mut p, &[first, second]).await.unwrap_err();
    assert!(refused(&err, "reply stream client id"), "{err}");
    assert_eq!(
        p.snapshot().await,
        before,
        "a refused submit writes nothing"
    );
}

/// Integer arguments are accepted or refused exactly as the pattern of
/// revision 10 did, whether or not they are small canonical integers
/// (the lookup table of revision 11): leading zeros and '-0' are integers,
/// spaces, signs, exponents, decimals and hex are not.
#[tokio::test]
async fn integer_arguments_are_read_as_before() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    // (max attempts, stored as)
    for (i, (arg, stored)) in [
        ("007", "7"),
        ("01", "1"),
        ("1", "1"),
        ("1000", "1000"),
        ("0001000", "1000"),
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("m{i}");
        let mut a = Args::new(&id);
        a.max = arg.as_bytes();
        submit_raw(&mut p, &a).await.unwrap();
        assert_eq!(
            p.field(&id, "max").await.as_deref(),
            Some(stored),
            "{arg:?}"
        );
    }
    // Priorities: '-0' is 0 (the band of 0, not a refusal).
    let mut a = Args::new("p0");
    a.priority = b"-0";
    submit_raw(&mut p, &a).await.unwrap();
    assert_eq!(p.field("p0", "pri").await.as_deref(), Some("0"));
    let mut a = Args::new("p1");
    a.priority = b"-007";
    submit_raw(&mut p, &a).await.unwrap();
    assert_eq!(p.field("p1", "pri").await.as_deref(), Some("-7"));

    for bad in [
        " 1", "1 ", "+1", "1e3", "1.0", "0x1", "", "x", "1\n", "\u{661}", "１",
    ] {
        let mut a = Args::new("bad");
        a.max = bad.as_bytes();
        let err = submit_raw(&mut p, &a).await.unwrap_err();
        assert!(
            refused(&err, "max attempts must be an integer"),
            "{bad:?}: {err}"
        );
    }
    for (bad, why) in [
        ("0", "must be in [1, 1000]"),
        ("-0", "must be in [1, 1000]"),
        ("1001", "must be in [1, 1000]"),
        ("4095", "must be in [1, 1000]"),
        ("4096", "must be in [1, 1000]"),
        ("99999999999999999999", "must be in [1, 1000]"),
        ("999999999999999999999", "must be an integer"),
    ] {
        let mut a = Args::new("bad");
        a.max = bad.as_bytes();
        let err = submit_raw(&mut p, &a).await.unwrap_err();
        assert!(err.contains(why), "{bad:?}: {err}");
    }
    assert_eq!(p.field("bad", "st").await, None);

    // Around the table's end (4095) with a range that holds it.
    for (arg, stored) in [("4095", "4095"), ("4096", "4096"), ("04095", "4095")] {
        fcall(&mut p, "rtq2_set_max_depth", &[arg.as_bytes()])
            .await
            .unwrap();
        let maxd: String = redis::cmd("HGET")
            .arg(p.keys.meta())
            .arg("maxd")
            .query_async(&mut p.conn)
            .await
            .unwrap();
        assert_eq!(maxd, stored, "{arg:?}");
    }
}

/// Ids and queue names outside [A-Za-z0-9._:-] are refused, bytes above
/// 127 included (letters in Latin-1 or UTF-8); the refused queue key is
/// refused also right after a valid call bound the queue (the check a
/// bound queue skips), and a valid call after it binds the right queue.
#[tokio::test]
async fn ids_and_queue_names_outside_the_allowed_bytes_are_refused() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    let good = "Az09._:-x";
    submit_raw(&mut p, &Args::new(good)).await.unwrap();
    assert_eq!(p.field(good, "st").await.as_deref(), Some("queued"));
    let before = p.snapshot().await;
    for bad in [
        &b"a b"[..],
        "é".as_bytes(),
        b"a\xaa",
        b"\xe9",
        b"a/b",
        b"a\0b",
        b"a\n",
        b"a{b}",
        b"a%",
        b"a[",
        b"a^",
        b"",
    ] {
        let a = Args {
            id: bad,
            ..Args::new("x")
        };
        let err = submit_raw(&mut p, &a).await.unwrap_err();
        assert!(refused(&err, "task id must be"), "{bad:?}: {err}");
        let err = fcall(&mut p, "rtq2_cancel", &[bad, b"cancel", b"r"])
            .await
            .unwrap_err();
        assert!(refused(&err, "task id must be"), "{bad:?}: {err}");
    }
    let long = "a".repeat(129);
    let err = submit_raw(&mut p, &Args::new(&long)).await.unwrap_err();
    assert!(refused(&err, "task id must be"), "{err}");

    for meta in [
        "rtq:{é}:meta".as_bytes(),
        b"rtq:{a\xaa}:meta",
        b"rtq:{a:b}:meta",
        b"rtq:{q}:meta2",
        b"rtq:{q}:meta\n",
        b"rtq:{}:meta",
        b"xrtq:{q}:meta",
    ] {
        // Bind the valid queue first: the next call's key is another one.
        fcall(&mut p, "rtq2_read", &[b"x", b"0"]).await.unwrap();
        let err = fcall_keys(&mut p, "rtq2_submit", meta, &Args::new("x").list())
            .await
            .unwrap_err();
        assert!(refused(&err, "KEYS must be"), "{meta:?}: {err}");
        // And twice in a row (nothing was bound by the refusal).
        let err = fcall_keys(&mut p, "rtq2_submit", meta, &Args::new("x").list())
            .await
            .unwrap_err();
        assert!(refused(&err, "KEYS must be"), "{meta:?}: {err}");
    }
    assert_eq!(p.snapshot().await, before, "refused calls write nothing");
    // A valid call after refusals binds its own queue.
    submit_raw(&mut p, &Args::new("y")).await.unwrap();
    assert_eq!(p.field("y", "st").await.as_deref(), Some("queued"));
}

/// The reply stream is checked once per run of equal reply streams in a
/// submit_many call: a stream that changes is checked again, a wrong one
/// after valid ones refuses the call, and each task keeps its own.
#[tokio::test]
async fn reply_streams_that_change_within_a_batch_are_each_checked_and_kept() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    let c1 = p.create_reply_stream("c1").await;
    let c2 = p.create_reply_stream("c2").await;
    let other = Proto::connect(&redis, "q1").await.keys.reply("c1");
    let before = p.snapshot().await;
    for wrong in [
        &other[..],
        "rtq:{q}:r:",
        "rtq:{q}:r:a b",
        "rtq:{q}:x:c1",
        "rtq:{q}:r:c1 ",
    ] {
        let tasks: Vec<Args<'_>> = [c1.as_str(), c1.as_str(), wrong, c1.as_str()]
            .iter()
            .enumerate()
            .map(|(i, r)| Args {
                id: ["a", "b", "c", "d"][i].as_bytes(),
                reply: r.as_bytes(),
                ..Args::new("x")
            })
            .collect();
        let err = submit_many_raw(&mut p, &tasks).await.unwrap_err();
        assert!(refused(&err, "reply stream"), "{wrong:?}: {err}");
    }
    assert_eq!(p.snapshot().await, before, "a refused batch writes nothing");

    let streams = [&c1[..], &c1[..], "", &c2[..], &c2[..], &c1[..], ""];
    let ids = ["a", "b", "c", "d", "e", "f", "g"];
    let tasks: Vec<Args<'_>> = ids
        .iter()
        .zip(streams)
        .map(|(id, r)| Args {
            reply: r.as_bytes(),
            ..Args::new(id)
        })
        .collect();
    submit_many_raw(&mut p, &tasks).await.unwrap();
    for (id, r) in ids.iter().zip(streams) {
        assert_eq!(p.field(id, "reply").await.as_deref(), Some(r), "{id}");
    }
}

// Memo caches across calls ----------------------------------------------------

/// Two queues whose names are prefixes of each other, alternating call by
/// call with the same worker and task ids: each call's keys are its own
/// queue's (the bound queue, the owned-set key and the score survive
/// from call to call).
#[tokio::test]
async fn alternating_queues_with_the_same_worker_and_ids_keep_apart() {
    let redis = RedisServer::start();
    let mut a = Proto::connect(&redis, "q").await;
    let mut b = Proto::connect(&redis, "q1").await;
    a.register("w1", "i1", 1, &[]).await;
    b.register("w1", "i1", 1, &[]).await;
    for p in [&mut a, &mut b] {
        for id in ["t1", "t2"] {
            p.submit(&Task::new(id)).await;
        }
    }
    // Each queue handed its t1 to its w1; t2 waits in each.
    for p in [&mut a, &mut b] {
        assert_eq!(task_of(p.pop("w1").await), ("t1".into(), 1));
        assert_eq!(p.owned("w1").await, ["t1"]);
        assert_eq!(p.zset(&p.keys.pending()).await, ["t2"]);
    }
    // Alternating completes: each takes its own queue's t2.
    let out = chunks(&["x"]);
    let ra = a
        .end("w1", &Ending::first("t1", Done, true).with_chunks(&out))
        .await;
    let rb = b.end("w1", &Ending::first("t1", Done, true)).await;
    for (p, r, nc) in [(&mut a, ra, 1), (&mut b, rb, 0)] {
        match r.next {
            Some(InboxMessage::Task(d)) => assert_eq!((d.id.as_str(), d.attempt), ("t2", 1)),
            other => panic!("t2 was expected, got {other:?}"),
        }
        assert_eq!(p.owned("w1").await, ["t2"]);
        assert_eq!(p.field("t1", "st").await.as_deref(), Some("done"));
        assert_eq!(p.count("t1", "nc").await, nc);
        assert!(p.zset(&p.keys.pending()).await.is_empty());
    }
    assert_eq!(a.list(&a.keys.output("t1")).await, out);
    assert!(b.list(&b.keys.output("t1")).await.is_empty());
    // Priorities and times differ between calls: each pending score is
    // its own task's (a stale score would put t4 before t3).
    for p in [&mut a, &mut b] {
        let mut low = Task::new("t3");
        low.priority = -5;
        p.submit(&low).await;
        let mut high = Task::new("t4");
        high.priority = 5;
        p.submit(&high).await;
        assert_eq!(p.zset(&p.keys.pending()).await, ["t4", "t3"]);
    }
    // A worker of the same name in one queue only: q1's w2 does not exist
    // in q, and a's calls for w2 see no worker.
    b.register("w2", "i2", 1, &[]).await;
    assert_eq!(task_of(b.pop("w2").await), ("t4".into(), 1));
    let r = fcall(
        &mut a,
        "rtq2_heartbeat",
        &[b"w2", b"i2", b"600000", b"1", b"1", b"0"],
    )
    .await
    .unwrap();
    assert_eq!(reply_items(r)[0], b"GONE");
    assert!(a.owned("w2").await.is_empty());
    assert_eq!(b.owned("w2").await, ["t4"]);
}

/// A new library loaded over the running one (FUNCTION LOAD REPLACE) or
/// after FUNCTION FLUSH starts with no memo: calls after it use the queue
/// they name.
#[tokio::test]
async fn a_reloaded_library_binds_the_queue_each_call_names() {
    let redis = RedisServer::start();
    let mut a = Proto::connect(&redis, "q").await;
    let mut b = Proto::connect(&redis, "q1").await;
    a.submit(&Task::new("t1")).await;
    let source = rtq_core::functions::library_source().into_owned();
    let mut admin = admin_conn(&redis).await;
    let _: Value = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(&source)
        .query_async(&mut admin)
        .await
        .unwrap();
    b.submit(&Task::new("t2")).await;
    a.submit(&Task::new("t3")).await;
    let _: Value = redis::cmd("FUNCTION")
        .arg("FLUSH")
        .query_async(&mut admin)
        .await
        .unwrap();
    rtq_core::functions::ensure_loaded(&mut admin)
        .await
        .unwrap();
    a.submit(&Task::new("t4")).await;
    b.submit(&Task::new("t5")).await;
    assert_eq!(a.zset(&a.keys.pending()).await, ["t1", "t3", "t4"]);
    assert_eq!(b.zset(&b.keys.pending()).await, ["t2", "t5"]);
}

/// A call that fails halfway (a foreign key of the wrong type under a
/// later task's name) leaves nothing bound that the next call of another
/// queue would use.
#[tokio::test]
async fn a_call_refused_halfway_binds_nothing_for_the_next_queue() {
    let redis = RedisServer::start();
    let mut a = Proto::connect(&redis, "q").await;
    let mut b = Proto::connect(&redis, "q1").await;
    a.raw(&["SET", &a.keys.pending(), "foreign"]).await;
    let err = submit_raw(&mut a, &Args::new("t1")).await.unwrap_err();
    assert!(err.contains("WRONGTYPE"), "{err}");
    b.submit(&Task::new("t1")).await;
    assert_eq!(b.zset(&b.keys.pending()).await, ["t1"]);
    assert_eq!(a.field("t1", "st").await, None);
    assert_eq!(b.field("t1", "st").await.as_deref(), Some("queued"));
}

// Hashes without zero counters ------------------------------------------------

/// A queued task of revision 11 holds no zero counters, worker or
/// attempt; it reads like revision 10's (which wrote them) in TaskInfo.
#[tokio::test]
async fn a_queued_task_without_zero_fields_reads_as_one_with_them() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    p.submit(&Task::new("t1")).await;
    let h = p.hash("t1").await;
    for f in ["fails", "fc", "lc", "nc", "nb", "w", "att", "due", "start"] {
        assert!(!h.contains_key(f), "{f} written: {h:?}");
    }
    let fresh = info("t1", &h);
    assert_eq!(fresh.state, TaskState::Queued);
    assert_eq!(
        (fresh.attempt, fresh.failures, fresh.chunks, fresh.bytes),
        (0, 0, 0, 0)
    );
    assert_eq!(fresh.worker, "");
    assert_eq!(
        (fresh.first_chunk_ms, fresh.last_chunk_ms, fresh.started_ms),
        (0, 0, 0)
    );
    assert_eq!(fresh.retry_at_ms, None);
    // As revision 10 wrote it.
    let mut older = h.clone();
    for (f, v) in [
        ("fails", "0"),
        ("fc", "0"),
        ("lc", "0"),
        ("nc", "0"),
        ("nb", "0"),
        ("w", ""),
        ("att", "0"),
    ] {
        older.insert(f.into(), v.into());
    }
    assert_eq!(info("t1", &older), fresh);
}

/// A queued task written by revision 10 (zero counters, worker '' and
/// attempt '0' present) and one written by revision 11 run side by side:
/// hand-out, chunks, cancel and completion answer and store the same.
#[tokio::test]
async fn revision_10_and_11_tasks_run_alike() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    let reply = p.create_reply_stream("c").await;
    for id in ["old", "new", "old2", "new2"] {
        let mut t = Task::new(id);
        t.reply = &reply;
        t.stream = true;
        p.submit(&t).await;
    }
    for id in ["old", "old2"] {
        let key = p.keys.task(id);
        p.raw(&[
            "HSET", &key, "fails", "0", "fc", "0", "lc", "0", "nc", "0", "nb", "0", "w", "", "att",
            "0",
        ])
        .await;
    }
    // Cancelled while queued: the same event (attempt 0, no chunks).
    p.cancel("old2").await;
    p.cancel("new2").await;
    p.register("w1", "i1", 2, &[]).await;
    let mut handed = [task_of(p.pop("w1").await), task_of(p.pop("w1").await)];
    handed.sort();
    assert_eq!(handed, [("new".into(), 1), ("old".into(), 1)]);
    let c = chunks(&["a", "bc"]);
    for id in ["old", "new"] {
        assert_eq!(p.chunk("w1", id, 1, 0, &c).await.status, WriteStatus::Ok);
        let end = Ending {
            seq0: 2,
            ..Ending::first(id, Done, false)
        };
        let r = p.end("w1", &end).await;
        assert_eq!((r.status, r.chunks), (WriteStatus::Ok, 2));
        assert!(r.first_chunk_ms > 0);
    }
    const TIMES: [&str; 6] = ["sub", "start", "fin", "fc", "lc", "sc"];
    let strip = |h: std::collections::HashMap<String, String>| {
        let mut h: std::collections::BTreeMap<_, _> = h
            .into_iter()
            .filter(|(k, _)| !TIMES.contains(&k.as_str()))
            .collect();
        // The zeros revision 10 wrote and revision 11 does not.
        for (f, zero) in [
            ("fails", "0"),
            ("nc", "0"),
            ("nb", "0"),
            ("w", ""),
            ("att", "0"),
        ] {
            if h.get(f).map(String::as_str) == Some(zero) {
                h.remove(f);
            }
        }
        h
    };
    let spec = |h: &mut std::collections::BTreeMap<String, String>| h.remove("spec");
    let (mut old, mut new) = (strip(p.hash("old").await), strip(p.hash("new").await));
    spec(&mut old);
    spec(&mut new);
    assert_eq!(old, new);
    let (mut old, mut new) = (strip(p.hash("old2").await), strip(p.hash("new2").await));
    spec(&mut old);
    spec(&mut new);
    assert_eq!(old, new);
    // The followers saw the same events for both.
    let events = xrange(&mut p.conn.clone(), &reply).await;
    let of = |id: &str| -> Vec<String> {
        events
            .iter()
            .filter(|(_, f)| f.get("t").map(String::as_str) == Some(id))
            .map(|(_, f)| {
                let mut f = f.clone();
                f.remove("t");
                format!(
                    "{:?}",
                    f.into_iter().collect::<std::collections::BTreeMap<_, _>>()
                )
            })
            .collect()
    };
    assert!(!of("old").is_empty());
    assert_eq!(of("old"), of("new"));
    assert_eq!(of("old2"), of("new2"));
}

/// Checks that attempt `att` of `id`, just handed out, shows nothing of
/// an earlier attempt: no chunks, bytes or chunk times, no retry time,
/// an empty output list.
async fn assert_fresh_attempt(p: &mut Proto, id: &str, att: u64, how: &str) {
    let h = p.hash(id).await;
    let i = info(id, &h);
    assert_eq!(i.state, TaskState::Running, "{how}: {h:?}");
    assert_eq!(i.attempt, att, "{how}");
    assert_eq!(
        (i.chunks, i.bytes, i.first_chunk_ms, i.last_chunk_ms),
        (0, 0, 0, 0),
        "{how}: {h:?}"
    );
    assert_eq!(i.retry_at_ms, None, "{how}: {h:?}");
    assert!(p.list(&p.keys.output(id)).await.is_empty(), "{how}");
    // The new attempt's first chunk write starts at 0 and sets the times.
    assert_eq!(
        p.chunk("w2", id, att, 0, &chunks(&["n"])).await.status,
        WriteStatus::Ok,
        "{how}"
    );
    assert_eq!(p.list(&p.keys.output(id)).await, chunks(&["n"]), "{how}");
    assert_eq!(p.count(id, "nc").await, 1, "{how}");
    assert_eq!(p.count(id, "nb").await, 1, "{how}");
    assert!(p.count(id, "fc").await > 0, "{how}");
}

/// Every way an attempt ends without the task ending (retry with a
/// backoff, lost worker, hand-back of a started attempt, operator
/// requeue of a running and of an ended task), after chunks were written:
/// the next hand-out, which no longer resets counters, shows none of them.
#[tokio::test]
async fn a_second_attempt_never_shows_the_first_attempts_output() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    let out = chunks(&["first", "attempt"]);
    let ids = ["retry", "lost", "handback", "requeue", "ended"];
    p.register("w1", "i1", ids.len(), &[]).await;
    for id in ids {
        p.submit(&Task::new(id)).await;
        assert_eq!(task_of(p.pop("w1").await), (id.into(), 1));
        assert_eq!(p.chunk("w1", id, 1, 0, &out).await.status, WriteStatus::Ok);
        assert_eq!(p.count(id, "nc").await, 2);
    }
    // The endings, w2 not yet there to take them.
    let x = chunks(&["x"]);
    let r = p
        .end(
            "w1",
            &Ending {
                seq0: 2,
                ..Ending::first("retry", Retry, false).with_chunks(&x)
            },
        )
        .await;
    assert_eq!(r.state, Some(TaskState::Queued));
    assert!(p.count("retry", "due").await > 0);
    p.release(
        "w1",
        "i1",
        ReleaseMode::HandBack,
        &[HandBack {
            id: "handback".into(),
            attempt: 1,
            started: true,
        }],
    )
    .await;
    p.requeue("requeue").await;
    let y = chunks(&["y"]);
    let r = p
        .end(
            "w1",
            &Ending {
                seq0: 2,
                ..Ending::first("ended", Done, false).with_chunks(&y)
            },
        )
        .await;
    assert_eq!(r.state, Some(TaskState::Done));
    assert_eq!(p.count("ended", "nc").await, 3);
    p.requeue("ended").await;
    // w1 restarts: its "lost" attempt is lost (the others are not its);
    // paused, the queue hands nothing to the restarted w1, which leaves.
    fcall(&mut p, "rtq2_pause", &[b"1"]).await.unwrap();
    p.register("w1", "i9", 1, &[]).await;
    p.release("w1", "i9", ReleaseMode::Leave, &[]).await;
    fcall(&mut p, "rtq2_pause", &[b"0"]).await.unwrap();
    for id in ["lost", "handback", "requeue", "ended"] {
        assert_eq!(p.field(id, "st").await.as_deref(), Some("queued"), "{id}");
    }
    // w2 takes them all, the retry once its backoff passed.
    p.register("w2", "i2", ids.len(), &[]).await;
    let mut handed = Vec::new();
    while let Some(m) = p.pop("w2").await {
        handed.push(task_of(Some(m)));
    }
    eventually("the retry is handed out", || {
        let mut p = Proto {
            conn: p.conn.clone(),
            keys: p.keys.clone(),
        };
        async move {
            p.heartbeat("w2", "i2", 5, true, &[]).await;
            p.field("retry", "st").await.as_deref() == Some("running")
        }
    })
    .await;
    while let Some(m) = p.pop("w2").await {
        handed.push(task_of(Some(m)));
    }
    handed.sort();
    assert_eq!(
        handed,
        [
            ("ended".into(), 2),
            ("handback".into(), 2),
            ("lost".into(), 2),
            ("requeue".into(), 2),
            ("retry".into(), 2),
        ]
    );
    for (id, _) in handed {
        assert_fresh_attempt(&mut p, &id, 2, &id).await;
    }
}

// Replays -----------------------------------------------------------------------

/// A plain success (no trailing chunks) reads the smaller view without
/// `nx`; its replay after a lost reply answers the same next task for
/// want next 0, 1 and 2, with the same counts, also once the task was
/// deleted (the mark kept in ca:<id>) and for an attempt that streamed.
#[tokio::test]
async fn a_replayed_plain_success_answers_as_the_first_reply() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    p.register("w1", "i1", 3, &[]).await;
    for id in ["a", "b", "c", "n1", "n2"] {
        p.submit(&Task::new(id)).await;
    }
    for id in ["a", "b", "c"] {
        assert_eq!(task_of(p.pop("w1").await), (id.into(), 1));
    }
    p.chunk("w1", "c", 1, 0, &chunks(&["s"])).await;
    let (conn, meta) = (p.conn.clone(), p.keys.meta());
    let raw_complete = |id: &'static str, next: &'static str| {
        let mut conn = conn.clone();
        let meta = meta.clone();
        async move {
            let r: Value = redis::cmd("FCALL")
                .arg("rtq2_complete")
                .arg(1)
                .arg(meta)
                .arg("w1")
                .arg(id)
                .arg(1)
                .arg(if id == "c" { 1 } else { 0 })
                .arg("done")
                .arg("{}")
                .arg(next)
                .query_async(&mut conn)
                .await
                .unwrap();
            let mut items = reply_items(r);
            items[4] = b"now".to_vec();
            items
        }
    };
    // a: want next 0; b: want next 2 (takes n1); c: want next 1 (n2).
    for (id, next) in [("a", "0"), ("b", "2"), ("c", "1")] {
        let first = raw_complete(id, next).await;
        let again = raw_complete(id, next).await;
        assert_eq!(again, first, "{id} want next {next}");
        // Asked with another want next, the replay answers the same.
        if next != "0" {
            let mut other = raw_complete(id, if next == "1" { "2" } else { "1" }).await;
            if next == "2" {
                // Joined instead of apart: the same message.
                let joined = [first[1].clone(), first[6].clone()].concat();
                assert_eq!(other[1], joined, "{id}");
                other[1] = first[1].clone();
                other.push(first[6].clone());
            } else {
                let joined = [other[1].clone(), other[6].clone()].concat();
                assert_eq!(joined, first[1], "{id}");
                other[1] = first[1].clone();
                other.pop();
            }
            assert_eq!(other, first, "{id}");
        }
        match id {
            "a" => assert_eq!(first[1], b""),
            "b" => {
                assert!(first[1].starts_with(b"T\tn1\t1\t"), "{:?}", first[1]);
                assert_eq!(first.len(), 7);
                assert!(!first[6].is_empty());
            }
            _ => {
                assert!(first[1].starts_with(b"T\tn2\t1\t"), "{:?}", first[1]);
                assert_eq!(first[2], b"1");
                assert_ne!(first[5], b"0", "c streamed: its first chunk time");
            }
        }
        assert_eq!(first[0], b"OK");
        assert_eq!(first[3], b"done");
    }
    // Deleted once its worker let go: the mark kept apart answers.
    p.heartbeat("w1", "i1", 3, true, &[("n1".into(), 1), ("n2".into(), 1)])
        .await;
    for (id, next) in [("b", "2"), ("c", "1")] {
        let first = raw_complete(id, next).await;
        let r = fcall(&mut p, "rtq2_delete_task", &[id.as_bytes()])
            .await
            .unwrap();
        assert_eq!(reply_items(r)[0], b"OK");
        assert_eq!(raw_complete(id, next).await, first, "{id} after delete");
    }
}

/// A complete whose task was cancelled meanwhile answers ENDED, and its
/// replay (plain success, the small view) answers ENDED again without a
/// second slot.
#[tokio::test]
async fn a_replayed_success_of_a_cancelled_task_answers_ended_once() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    p.register("w1", "i1", 1, &[]).await;
    p.submit(&Task::new("a")).await;
    p.submit(&Task::new("b")).await;
    assert_eq!(task_of(p.pop("w1").await), ("a".into(), 1));
    p.cancel("a").await;
    let first = p.end("w1", &Ending::first("a", Done, true)).await;
    assert_eq!(first.status, WriteStatus::Ended);
    assert_eq!(first.state, Some(TaskState::Cancelled));
    assert!(matches!(&first.next, Some(InboxMessage::Task(d)) if d.id == "b"));
    let again = p.end("w1", &Ending::first("a", Done, true)).await;
    assert_eq!((again.status, again.state), (first.status, first.state));
    assert_eq!(again.next, first.next);
    assert_eq!(p.owned("w1").await, ["b"]);
    assert_eq!(p.free("w1").await, 0.0);
}

// Retention ---------------------------------------------------------------------

/// An ending arms the retention as stored; a value submit would not have
/// written (a hand-edited or foreign hash) is read as revision 10 read it:
/// a number, at least 1 ms, not capped at 30 days.
#[tokio::test]
async fn odd_stored_retentions_are_read_as_before() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    for (i, (ret, lo, hi)) in [
        ("600000", 590_000, 600_000),
        (" 600000", 590_000, 600_000),
        ("0600000", 590_000, 600_000),
        ("6e5", 590_000, 600_000),
        ("600000.9", 590_000, 600_000),
        ("99999999999", 99_999_000_000, 99_999_999_999),
        ("2592000001", 2_591_999_000, 2_592_000_001),
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("t{i}");
        p.submit(&Task::new(&id)).await;
        let key = p.keys.task(&id);
        p.raw(&["HSET", &key, "ret", ret]).await;
        p.cancel(&id).await;
        let ttl = pttl(&mut p.conn, &key).await;
        assert!((lo..=hi).contains(&ttl), "{ret:?}: {ttl}");
    }
    // Below 1 ms or no number: 1 ms.
    for (i, ret) in ["0", "-5", "", "x"].into_iter().enumerate() {
        let id = format!("z{i}");
        p.submit(&Task::new(&id)).await;
        let key = p.keys.task(&id);
        p.raw(&["HSET", &key, "ret", ret]).await;
        p.cancel(&id).await;
        eventually("the 1 ms retention ends the task", || {
            let mut conn = p.conn.clone();
            let key = key.clone();
            async move { pttl(&mut conn, &key).await == -2 }
        })
        .await;
    }
}

/// A task submitted straight to a free worker holds only what a hand-out
/// writes; its reply names the deadline and the worker as before.
#[tokio::test]
async fn a_task_handed_out_at_submit_holds_no_zero_counters() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    p.register("w1", "i1", 1, &[]).await;
    let mut t = Task::new("t1");
    t.timeout_ms = 60_000;
    let r = p.submit(&t).await;
    let SubmitReply::Accepted {
        state,
        worker,
        deadline_ms,
        now_ms,
    } = r
    else {
        panic!("accepted expected, got {r:?}")
    };
    assert_eq!(state, TaskState::Running);
    assert_eq!(worker.as_deref(), Some("w1"));
    assert_eq!(deadline_ms, now_ms + 60_000);
    let h = p.hash("t1").await;
    for f in ["fails", "fc", "lc", "nc", "nb", "due"] {
        assert!(!h.contains_key(f), "{f}: {h:?}");
    }
    assert_eq!(h["att"], "1");
    assert_eq!(h["w"], "w1");
    assert_eq!(h["start"], now_ms.to_string());
    match p.pop("w1").await {
        Some(InboxMessage::Task(d)) => {
            assert_eq!((d.id.as_str(), d.attempt), ("t1", 1));
            assert_eq!(d.deadline_ms, deadline_ms);
            assert_eq!(d.submitted_ms, now_ms);
        }
        other => panic!("t1 expected, got {other:?}"),
    }
}

/// A success with trailing chunks reads the attempt's byte count (the
/// view DONE, which leaves it out, serves only successes without chunks):
/// the output's bytes are those written before plus the trailing ones.
#[tokio::test]
async fn a_success_with_trailing_chunks_adds_their_bytes_to_the_attempts_count() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    p.register("w1", "i1", 1, &[]).await;
    p.submit(&Task::new("t1")).await;
    assert_eq!(task_of(p.pop("w1").await), ("t1".into(), 1));
    let r = p.chunk("w1", "t1", 1, 0, &chunks(&["ab", "cd"])).await;
    assert_eq!(r.status, WriteStatus::Ok);
    assert_eq!(
        (p.count("t1", "nc").await, p.count("t1", "nb").await),
        (2, 4)
    );
    let r = p
        .complete("w1", "t1", 1, 2, Done, false, &chunks(&["efg"]))
        .await;
    assert_eq!(r.status, WriteStatus::Ok);
    assert_eq!(r.chunks, 3);
    assert_eq!(
        (p.count("t1", "nc").await, p.count("t1", "nb").await),
        (3, 7)
    );
}

/// An attempt whose output sits exactly at the byte cap may still end, and
/// write nothing more, without trailing chunks: no chunks count as no bytes.
#[tokio::test]
async fn an_attempt_at_the_output_byte_cap_can_still_end_without_chunks() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    p.register("w1", "i1", 2, &[]).await;
    for id in ["t1", "t2"] {
        p.submit(&Task::new(id)).await;
        let _ = p.pop("w1").await;
        let _: () = redis::cmd("HSET")
            .arg(p.keys.task(id))
            .arg("nb")
            .arg(rtq_core::protocol::MAX_OUTPUT_BYTES)
            .query_async(&mut p.conn)
            .await
            .unwrap();
    }
    let r = p.chunk("w1", "t1", 1, 0, &[]).await;
    assert_eq!(r.status, WriteStatus::Ok, "an empty chunk write at the cap");
    let r = p
        .complete("w1", "t1", 1, 0, CompleteOutcome::Failed, false, &[])
        .await;
    assert_eq!(r.status, WriteStatus::Ok, "a failure at the cap");
    let r = p.complete("w1", "t2", 1, 0, Done, false, &[]).await;
    assert_eq!(r.status, WriteStatus::Ok, "a success at the cap");
    let one_more = p.chunk("w1", "t2", 1, 0, &chunks(&["x"])).await;
    assert_ne!(one_more.status, WriteStatus::Ok, "the task has ended");
}

/// A queued task whose hash lost its deadline and submit time (a foreign
/// or older writer) is handed out with zeros there, not refused: the
/// message reads a missing field (false in Lua) as 0.
#[tokio::test]
async fn a_task_missing_its_deadline_and_submit_time_is_handed_out_with_zeros() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    p.register("w1", "i1", 1, &[]).await;
    p.submit(&Task::new("t1")).await;
    p.submit(&Task::new("t2")).await;
    assert_eq!(task_of(p.pop("w1").await), ("t1".into(), 1));
    let _: () = redis::cmd("HDEL")
        .arg(p.keys.task("t2"))
        .arg("dl")
        .arg("sub")
        .query_async(&mut p.conn)
        .await
        .unwrap();
    let r = p.complete("w1", "t1", 1, 0, Done, true, &[]).await;
    assert_eq!(r.status, WriteStatus::Ok);
    match r.next {
        Some(InboxMessage::Task(d)) => {
            assert_eq!((d.id.as_str(), d.attempt), ("t2", 1));
            assert_eq!((d.deadline_ms, d.submitted_ms), (0, 0));
        }
        other => panic!("t2 expected as the next task, got {other:?}"),
    }
}
