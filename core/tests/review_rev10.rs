//! Adversarial review of protocol revision 10 (`rtq2_write_many` and the
//! worker's coalescer): hostile calls on the Lua side, and a real worker's
//! many streaming slots while its calls' replies are lost, its
//! connections are cut or Redis restarts. Every stream's text must arrive
//! whole, in order and exactly once.

mod support;

use std::time::Duration;

use redis::Value;
use rtq_core::functions::chunk::{ChunkReply, WriteStatus};
use rtq_core::functions::complete::{CompleteOutcome, SlotWriteReply};
use rtq_core::protocol::TaskState;
use rtq_core::{Client, Granularity, TaskRequest, WorkerConfig};
use rtq_testkit::Proxy;
use serde_json::json;
use support::proto::{task_of, Ending, Proto, Task, Write};
use support::*;

use CompleteOutcome::{Done, Retry};

fn chunks(texts: &[&str]) -> Vec<Vec<u8>> {
    texts.iter().map(|t| t.as_bytes().to_vec()).collect()
}

/// Worker `w1` (`n` slots) runs streamed tasks `ids` (attempt 1).
async fn running(p: &mut Proto, ids: &[&str]) {
    p.register("w1", "i1", ids.len(), &[]).await;
    for id in ids {
        let mut t = Task::new(id);
        t.stream = true;
        p.submit(&t).await;
    }
    for id in ids {
        assert_eq!(task_of(p.pop("w1").await), ((*id).into(), 1));
    }
}

fn status(r: &SlotWriteReply) -> (WriteStatus, u64) {
    match r {
        SlotWriteReply::Chunks(c) => (c.status, c.chunks),
        SlotWriteReply::Complete(c) => (c.status, c.chunks),
    }
}

fn chunk_write<'a>(id: &'a str, seq0: u64, chunks: &'a [Vec<u8>]) -> Write<'a> {
    Write::Chunks {
        id,
        attempt: 1,
        seq0,
        chunks,
    }
}

// Lua: hostile and odd calls --------------------------------------------------

/// The same chunk write twice in one call (a resend coalesced with its
/// first copy): the second answers ORDER, nothing is appended twice.
#[tokio::test]
async fn the_same_chunk_write_twice_in_one_call_appends_once() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "twice").await;
    running(&mut p, &["t1"]).await;
    let a = chunks(&["a0", "a1"]);
    let replies = p
        .write_many("w1", &[chunk_write("t1", 0, &a), chunk_write("t1", 0, &a)])
        .await
        .unwrap();
    let got: Vec<_> = replies.iter().map(status).collect();
    assert_eq!(got, [(WriteStatus::Ok, 2), (WriteStatus::Order, 2)]);
    let key = p.keys.output("t1");
    assert_eq!(p.list(&key).await, a);
    assert_eq!(p.count("t1", "nc").await, 2);
}

/// A complete, then a chunk write of the same attempt in the same call:
/// the chunk write must not touch the ended task (ENDED after done,
/// FENCED after a retry that requeued it), and the output stays as the
/// complete left it (a retry's output is deleted, not recreated).
#[tokio::test]
async fn a_chunk_write_after_its_task_s_complete_in_one_call_writes_nothing() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "after").await;
    running(&mut p, &["t1", "t2"]).await;
    let a = chunks(&["a0"]);
    let late = chunks(&["late"]);
    let replies = p
        .write_many(
            "w1",
            &[
                chunk_write("t1", 0, &a),
                Write::End(Ending {
                    seq0: 1,
                    ..Ending::first("t1", Done, false)
                }),
                chunk_write("t1", 1, &late),
                chunk_write("t2", 0, &a),
                Write::End(Ending {
                    seq0: 1,
                    ..Ending::first("t2", Retry, false)
                }),
                chunk_write("t2", 1, &late),
            ],
        )
        .await
        .unwrap();
    let got: Vec<_> = replies.iter().map(status).collect();
    assert_eq!(
        got,
        [
            (WriteStatus::Ok, 1),
            (WriteStatus::Ok, 1),
            (WriteStatus::Ended, 1),
            (WriteStatus::Ok, 1),
            (WriteStatus::Ok, 1),
            (WriteStatus::Fenced, 0),
        ]
    );
    assert_eq!(
        replies[2],
        SlotWriteReply::Chunks(ChunkReply {
            status: WriteStatus::Ended,
            chunks: 1,
            state: Some(TaskState::Done)
        })
    );
    let key = p.keys.output("t1");
    assert_eq!(p.list(&key).await, a);
    let key = p.keys.output("t2");
    assert!(p.list(&key).await.is_empty(), "a retry's output is gone");
    assert_eq!(p.count("t2", "nc").await, 0);
    assert_eq!(p.field("t2", "st").await.as_deref(), Some("queued"));
}

/// 1024 groups (a worker's largest batch) are accepted; 1025 are refused
/// before anything is written.
#[tokio::test]
async fn a_call_takes_at_most_1024_groups() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "cap").await;
    running(&mut p, &["t1"]).await;
    let one = chunks(&["x"]);
    let writes: Vec<Write<'_>> = (0..1024).map(|i| chunk_write("t1", i, &one)).collect();
    let replies = p.write_many("w1", &writes).await.unwrap();
    assert!(replies.iter().all(|r| status(r).0 == WriteStatus::Ok));
    assert_eq!(p.count("t1", "nc").await, 1024);
    let before = p.snapshot().await;
    let writes: Vec<Write<'_>> = (0..1025)
        .map(|i| chunk_write("t1", 1024 + i, &one))
        .collect();
    let err = p.write_many("w1", &writes).await.expect_err("1025 groups");
    assert!(err.to_string().contains("completion count"), "{err}");
    assert_eq!(p.snapshot().await, before, "a refused call wrote");
}

/// A foreign key where a completion's trailing chunks go, in a call whose
/// earlier chunk write (of another task) would apply first: the whole call
/// is refused before anything is written.
#[tokio::test]
async fn a_foreign_output_list_of_a_later_complete_refuses_the_call_before_any_chunk_write() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "foreign").await;
    running(&mut p, &["t1", "t2"]).await;
    let out2 = p.keys.output("t2");
    p.raw(&["SET", &out2, "not a list"]).await;
    let a = chunks(&["a0"]);
    let before = p.snapshot().await;
    let err = p
        .write_many(
            "w1",
            &[
                chunk_write("t1", 0, &a),
                Write::End(Ending::first("t2", Done, true).with_chunks(&a)),
            ],
        )
        .await
        .expect_err("a foreign output list refuses the call");
    assert!(err.to_string().contains("WRONGTYPE"), "{err}");
    assert_eq!(p.snapshot().await, before, "the chunk write applied");
}

/// Foreign keys where only best-effort writes go (the `ended` log, the
/// reply stream, the replay keeper): the call still applies every write.
#[tokio::test]
async fn foreign_best_effort_keys_do_not_fail_a_write_many() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "besteffort").await;
    let reply = p.keys.reply("client");
    p.register("w1", "i1", 2, &[]).await;
    for id in ["t1", "t2"] {
        let mut t = Task::new(id);
        t.stream = true;
        t.reply = &reply;
        p.submit(&t).await;
        assert_eq!(task_of(p.pop("w1").await), (id.into(), 1));
    }
    // The reply stream's name now holds a string, and so does `ended`.
    p.raw(&["DEL", &reply]).await;
    p.raw(&["SET", &reply, "x"]).await;
    let ended = format!("rtq:{{{}}}:ended", p.keys.name());
    p.raw(&["DEL", &ended]).await;
    p.raw(&["SET", &ended, "x"]).await;
    let a = chunks(&["a0"]);
    let replies = p
        .write_many(
            "w1",
            &[
                chunk_write("t1", 0, &a),
                Write::End(Ending {
                    seq0: 1,
                    ..Ending::first("t1", Done, false)
                }),
                Write::End(Ending::first("t2", Done, false).with_chunks(&a)),
            ],
        )
        .await
        .unwrap();
    let got: Vec<_> = replies.iter().map(status).collect();
    assert_eq!(
        got,
        [
            (WriteStatus::Ok, 1),
            (WriteStatus::Ok, 1),
            (WriteStatus::Ok, 1)
        ]
    );
    assert_eq!(p.field("t1", "st").await.as_deref(), Some("done"));
    assert_eq!(p.field("t2", "st").await.as_deref(), Some("done"));
    assert_eq!(p.count("t2", "nc").await, 1);
}

/// A lost reply of a call that wrote a task's chunks and then ended it
/// with a retry (its output deleted): the call sent again appends nothing
/// (the chunk write is fenced), and the complete replays.
#[tokio::test]
async fn a_write_many_resent_after_a_retry_recreates_no_output() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "resend").await;
    running(&mut p, &["t1"]).await;
    let a = chunks(&["a0", "a1"]);
    let writes = [
        chunk_write("t1", 0, &a),
        Write::End(Ending {
            seq0: 2,
            ..Ending::first("t1", Retry, true)
        }),
    ];
    let first = p.write_many("w1", &writes).await.unwrap();
    let before = p.snapshot().await;
    let again = p.write_many("w1", &writes).await.unwrap();
    assert_eq!(status(&first[1]).0, WriteStatus::Ok);
    assert_eq!(status(&again[0]).0, WriteStatus::Fenced);
    assert_eq!(status(&again[1]).0, WriteStatus::Ok, "the complete replays");
    let key = p.keys.output("t1");
    assert!(p.list(&key).await.is_empty());
    // Only the replay's reads: every key as it was.
    assert_eq!(p.snapshot().await, before);
}

// A real worker under faults ----------------------------------------------

fn fast(queue: &str, slots: usize) -> WorkerConfig {
    let mut c = WorkerConfig::new(queue)
        .slots(slots)
        .lease(Duration::from_millis(3000));
    c.heartbeat_every = Some(Duration::from_millis(200));
    c
}

/// Streams `n` tasks through queue `q` (client on `url`), stream `i` of
/// `chunks + i * step` chunks `delay_ms` apart (different lengths: the
/// completes of some slots coalesce with the chunk writes of others),
/// calling `fault` while they run; each stream must arrive whole, in
/// order, without a restart, and Redis must hold every chunk exactly once.
async fn streams_survive<F, Fut>(
    url: &str,
    queue: &str,
    n: usize,
    (chunks, step): (u64, u64),
    delay_ms: u64,
    fault: F,
) where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let client = Client::connect(url).await.unwrap();
    let q = client.queue(queue).unwrap();
    let mut streams = Vec::new();
    for i in 0..n {
        let chunks = chunks + i as u64 * step;
        let text = format!("s{i}-");
        let stream = q
            .stream(TaskRequest::json(
                json!({ "chunks": chunks, "chunk": text, "delay_ms": delay_ms }),
            ))
            .await
            .unwrap();
        streams.push((i, chunks, text, stream));
    }
    let ids: Vec<(String, u64)> = streams
        .iter()
        .map(|(_, chunks, _, s)| (s.id().to_string(), *chunks))
        .collect();
    let reads =
        futures::future::join_all(streams.into_iter().map(|(i, chunks, text, s)| async move {
            let (indexes, got, out) = drain_stream(s).await;
            (i, chunks, text, indexes, got, out)
        }));
    let (results, ()) = within(async { tokio::join!(reads, fault()) }).await;
    for (i, chunks, text, indexes, got, out) in results {
        let out = out.unwrap_or_else(|e| panic!("stream {i}: {e}"));
        assert_eq!(indexes, (0..chunks).collect::<Vec<_>>(), "stream {i}");
        assert_eq!(got, expected_text(&text, chunks), "stream {i}");
        assert_eq!(out.result["echo"]["chunk"], json!(text), "stream {i}");
    }
    let mut conn = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for (id, chunks) in ids {
        let nc: u64 = redis::cmd("HGET")
            .arg(q.keys().task(&id))
            .arg("nc")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(nc, chunks, "task {id}: chunks stored");
        let stored: u64 = redis::cmd("LLEN")
            .arg(q.keys().output(&id))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(stored, chunks, "task {id}: output list");
    }
}

/// Loses the replies of up to `cuts` calls whose request holds `pattern`
/// (Redis applies them, the connection is cut), one after the other,
/// `gap` apart; stops early once no such call comes for a second (the
/// streams ended). Returns the cuts made.
async fn lose_replies(proxy: &Proxy, pattern: &[u8], cuts: u64, gap: Duration) -> u64 {
    for k in 1..=cuts {
        tokio::time::sleep(gap).await;
        proxy.cut_reply_to(pattern);
        let waited = std::time::Instant::now();
        while proxy.cuts() < k {
            if waited.elapsed() > Duration::from_secs(1) {
                // Disarm: a later test step must not lose a reply.
                proxy.cut_reply_to(b"\0never\0");
                return k - 1;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    cuts
}

/// Streams of `slots` slots (`writes_in_flight` chunk writes in flight
/// per stream) through a proxy that loses the replies of up to 4-6 calls
/// matching `pattern`, `gap` apart: every stream must arrive whole, in
/// order and stored once.
async fn lost_replies_survived(
    queue: &str,
    slots: usize,
    writes_in_flight: usize,
    shape: (u64, u64),
    pattern: &'static [u8],
    gap: Duration,
) {
    let redis = RedisServer::start();
    let proxy = Proxy::start(redis.port()).await;
    let (seen, _rx) = seen_channel();
    let config = fast(queue, slots).granularity(Granularity {
        max_in_flight: writes_in_flight,
        ..Granularity::default()
    });
    let w = TestWorker::start(&proxy.url(), config, seen).await;
    let cuts = if pattern == b"rtq2_write_many" { 4 } else { 6 };
    streams_survive(&redis.url(), queue, slots, shape, 3, || async {
        let cuts = lose_replies(&proxy, pattern, cuts, gap).await;
        eprintln!("lost the replies of {cuts} calls matching {pattern:?}");
    })
    .await;
    assert!(proxy.cuts() >= 2, "only {} cuts struck", proxy.cuts());
    w.stop().await;
}

/// The worker's coalesced calls lose their replies (Redis applied them,
/// the connection is cut): every slot's writer resyncs; nothing is lost
/// or stored twice.
#[tokio::test]
async fn lost_replies_of_coalesced_writes_lose_and_repeat_nothing() {
    lost_replies_survived(
        "lost",
        16,
        1,
        (60, 0),
        b"rtq2_write_many",
        Duration::from_millis(30),
    )
    .await;
}

/// As above with pipelined writes (max_in_flight 4): several writes of one
/// stream wait in the same coalesced call that loses its reply.
#[tokio::test]
async fn lost_replies_with_pipelined_writes_lose_and_repeat_nothing() {
    lost_replies_survived(
        "pipe",
        12,
        4,
        (60, 0),
        b"rtq2_write_many",
        Duration::from_millis(30),
    )
    .await;
}

/// Every connection (the worker's and the client's) cut again and again
/// while 16 slots stream.
#[tokio::test]
async fn cutting_every_connection_while_many_slots_stream_loses_nothing() {
    let redis = RedisServer::start();
    let (seen, _rx) = seen_channel();
    let w = TestWorker::start(&redis.url(), fast("cutmany", 16), seen).await;
    let mut admin = admin_conn(&redis).await;
    streams_survive(&redis.url(), "cutmany", 16, (40, 3), 3, || async move {
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(35)).await;
            let _: Value = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg("normal")
                .arg("SKIPME")
                .arg("yes")
                .query_async(&mut admin)
                .await
                .unwrap();
        }
    })
    .await;
    w.stop().await;
}

/// The replies of calls that end tasks are lost (a complete coalesced
/// with other slots' chunk writes, or alone): the completes replay, the
/// other slots' writers resync.
#[tokio::test]
async fn lost_replies_of_calls_carrying_completes_lose_and_repeat_nothing() {
    lost_replies_survived(
        "ends",
        16,
        1,
        (10, 4),
        b"\r\ndone\r\n",
        Duration::from_millis(10),
    )
    .await;
}

/// Redis restarts (append-only file kept) while 12 slots stream.
#[tokio::test]
async fn a_redis_restart_while_many_slots_stream_loses_nothing() {
    let mut redis = RedisServer::start_with(rtq_testkit::Options {
        appendonly: true,
        ..Default::default()
    });
    let url = redis.url();
    let (seen, _rx) = seen_channel();
    let w = TestWorker::start(&url, fast("restart", 12), seen).await;
    let redis_ref = &mut redis;
    streams_survive(&url, "restart", 12, (40, 2), 5, || async move {
        tokio::time::sleep(Duration::from_millis(80)).await;
        redis_ref.restart();
    })
    .await;
    w.stop().await;
}

/// A worker whose ACL user was made by an older `rtq acl worker` (no
/// `fcall|rtq2_write_many`): the first coalesced call is refused (NOPERM),
/// its writes go alone, and the worker stops asking; every stream arrives
/// whole.
#[tokio::test]
async fn a_worker_whose_user_may_not_call_write_many_streams_alone() {
    let redis = RedisServer::start();
    let mut admin = admin_conn(&redis).await;
    rtq_core::functions::ensure_loaded(&mut admin)
        .await
        .unwrap();
    let rules: Vec<String> = rtq_core::acl::Role::Worker
        .rules("noperm")
        .into_iter()
        .filter(|r| r != "+fcall|rtq2_write_many")
        .collect();
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER")
        .arg("old")
        .arg("reset")
        .arg("on")
        .arg(">pw");
    for r in &rules {
        cmd.arg(r);
    }
    let _: () = cmd.query_async(&mut admin).await.unwrap();
    let url = format!("redis://old:pw@127.0.0.1:{}/", redis.port());
    // TestWorker waits for the registration with KEYS, which this user
    // may not run: the worker is started here, and waited for as admin.
    let worker = rtq_core::Worker::connect(&url, fast("noperm", 12))
        .await
        .unwrap();
    let id = worker.id().to_string();
    let (seen, _rx) = seen_channel();
    let handler = std::sync::Arc::new(Scripted {
        worker: id.clone(),
        seen,
        release: Default::default(),
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(async move {
        worker
            .run(handler, async {
                let _ = stopped.await;
            })
            .await
    });
    wait_registered(&redis.url(), &id).await;
    log_every_command(&mut admin).await;
    streams_survive(&redis.url(), "noperm", 12, (20, 1), 3, || async {}).await;
    // The first round asked (and was refused) at least once: the only
    // FCALL this user may not make is rtq2_write_many.
    let refusals: Value = redis::cmd("ACL")
        .arg("LOG")
        .query_async(&mut admin)
        .await
        .unwrap();
    let text = format!("{refusals:?}");
    assert!(
        text.contains("\"fcall\"") && text.contains("user=old"),
        "the worker never asked for rtq2_write_many: {text}"
    );
    let _: () = redis::cmd("SLOWLOG")
        .arg("RESET")
        .query_async(&mut admin)
        .await
        .unwrap();
    streams_survive(&redis.url(), "noperm", 12, (20, 1), 3, || async {}).await;
    let log = command_log(&mut admin).await;
    let asked = log
        .iter()
        .filter(|a| a.len() > 1 && a[0].eq_ignore_ascii_case("fcall") && a[1] == "rtq2_write_many")
        .count();
    assert_eq!(asked, 0, "the worker stopped asking for rtq2_write_many");
    let _ = stop.send(());
    run.await.unwrap().unwrap();
}
