//! Protocol revision 10 on a real redis-server: `rtq2_write_many` carries
//! a worker's chunk writes and completes of several slots in one call.
//! Each write must be answered, and leave Redis, exactly as the same
//! writes sent one by one (`rtq2_chunk`, `rtq2_complete`) would; a
//! malformed or hostile call is refused before anything is written; the
//! real worker coalesces its slots' paced chunk writes, and on a library
//! without `rtq2_write_many` writes each alone and loses nothing.

mod support;

use std::collections::BTreeMap;

use redis::Value;
use rtq_core::functions::chunk::{ChunkReply, WriteStatus};
use rtq_core::functions::complete::{CompleteOutcome, SlotWriteReply};
use rtq_core::protocol::{InboxMessage, TaskState};
use rtq_core::{Client, TaskRequest, WorkerConfig};
use serde_json::json;
use support::proto::{payload_of, task_of, Ending, Proto, Task, Write};
use support::*;

use CompleteOutcome::Done;

/// Worker `w1` (3 slots) runs streamed t1, t2 and t3 (attempt 1), each
/// followed by reply stream `client`; t4 waits in `pending`.
async fn three_running_one_queued(p: &mut Proto) {
    let reply = p.create_reply_stream("client").await;
    p.register("w1", "i1", 3, &[]).await;
    for id in ["t1", "t2", "t3", "t4"] {
        let mut t = Task::new(id);
        t.reply = &reply;
        t.stream = true;
        p.submit(&t).await;
    }
    for id in ["t1", "t2", "t3"] {
        assert_eq!(task_of(p.pop("w1").await), (id.into(), 1));
    }
}

fn chunks(texts: &[&str]) -> Vec<Vec<u8>> {
    texts.iter().map(|t| t.as_bytes().to_vec()).collect()
}

/// A reply as comparable text, without times.
fn timeless(r: &SlotWriteReply) -> String {
    match r {
        SlotWriteReply::Chunks(c) => format!("chunks {:?} {} {:?}", c.status, c.chunks, c.state),
        SlotWriteReply::Complete(c) => {
            let next = c.next.as_ref().map(|m| match m {
                InboxMessage::Task(d) => (d.id.clone(), d.attempt, d.spec.clone()),
                other => panic!("a next task was expected, got {other:?}"),
            });
            format!(
                "complete {:?} {next:?} {} {:?}",
                c.status, c.chunks, c.state
            )
        }
    }
}

/// The queue's state without times: task hashes, output lists, the
/// queue's sorted sets, the worker's owned set, free slots, and the reply
/// stream's events.
async fn state(p: &mut Proto, reply: &str) -> Vec<String> {
    const TIMES: [&str; 8] = ["sub", "start", "fin", "fc", "lc", "due", "avu", "sc"];
    let mut out = Vec::new();
    for id in ["t1", "t2", "t3", "t4"] {
        let h: BTreeMap<String, String> = p
            .hash(id)
            .await
            .into_iter()
            .filter(|(k, _)| !TIMES.contains(&k.as_str()))
            .collect();
        out.push(format!("{id}: {h:?}"));
        let key = p.keys.output(id);
        out.push(format!("{key}: {:?}", p.list(&key).await));
    }
    for key in [p.keys.pending(), p.keys.delayed(), p.keys.deadlines()] {
        out.push(format!("{key}: {:?}", p.zset(&key).await));
    }
    out.push(format!(
        "owned {:?} free {}",
        p.owned("w1").await,
        p.free("w1").await
    ));
    let mut conn = p.conn.clone();
    for (_, fields) in xrange(&mut conn, reply).await {
        out.push(format!(
            "event {:?}",
            fields.into_iter().collect::<BTreeMap<_, _>>()
        ));
    }
    // Two queues compare: their names are not part of the state.
    let tag = format!("{{{}}}", p.keys.name());
    out.into_iter().map(|s| s.replace(&tag, "{q}")).collect()
}

/// The writes of the comparison, in order, with what each must answer.
struct Scenario {
    a: Vec<Vec<u8>>,
    a_last: Vec<Vec<u8>>,
    b: Vec<Vec<u8>>,
    b_more: Vec<Vec<u8>>,
    other: Vec<Vec<u8>>,
}

impl Scenario {
    fn new() -> Self {
        Self {
            a: chunks(&["a0", "a1"]),
            a_last: chunks(&["a2"]),
            b: chunks(&["b0"]),
            b_more: vec![b"b1".to_vec(), b"b\0binary\xff".to_vec()],
            other: chunks(&["x"]),
        }
    }

    fn writes(&self) -> Vec<Write<'_>> {
        let chunk = |id, attempt, seq0, chunks| Write::Chunks {
            id,
            attempt,
            seq0,
            chunks,
        };
        vec![
            chunk("t1", 1, 0, &self.a[..]),
            chunk("t2", 1, 0, &self.b[..]),
            Write::End(Ending {
                seq0: 2,
                ..Ending::first("t1", Done, true).with_chunks(&self.a_last)
            }),
            // t3 holds no chunks: out of order.
            chunk("t3", 1, 5, &self.other[..]),
            // Attempt 2 of t2 is not current: fenced.
            chunk("t2", 2, 1, &self.other[..]),
            chunk("t2", 1, 1, &self.b_more[..]),
            // t1 ended two writes ago.
            chunk("t1", 1, 3, &self.other[..]),
            chunk("nosuch", 1, 0, &self.other[..]),
            // A probe: no chunks, the count answered.
            chunk("t2", 1, 3, &[]),
        ]
    }
}

/// What `write` answers when sent alone (`rtq2_chunk` or `rtq2_complete`).
async fn alone(p: &mut Proto, write: &Write<'_>) -> SlotWriteReply {
    match write {
        Write::Chunks {
            id,
            attempt,
            seq0,
            chunks,
        } => SlotWriteReply::Chunks(p.chunk("w1", id, *attempt, *seq0, chunks).await),
        Write::End(e) => SlotWriteReply::Complete(p.end("w1", e).await),
    }
}

#[tokio::test]
async fn write_many_answers_and_writes_each_write_as_if_sent_alone() {
    let redis = RedisServer::start();
    let scenario = Scenario::new();
    let writes = scenario.writes();

    let mut many = Proto::connect(&redis, "many").await;
    three_running_one_queued(&mut many).await;
    let batched = many.write_many("w1", &writes).await.unwrap();

    let mut one = Proto::connect(&redis, "one").await;
    three_running_one_queued(&mut one).await;
    let mut sequential = Vec::new();
    for w in &writes {
        sequential.push(alone(&mut one, w).await);
    }

    let batched_text: Vec<String> = batched.iter().map(timeless).collect();
    let sequential_text: Vec<String> = sequential.iter().map(timeless).collect();
    assert_eq!(batched_text, sequential_text);
    // And what they are, so that both cannot be wrong the same way.
    let statuses: Vec<(WriteStatus, u64)> = batched
        .iter()
        .map(|r| match r {
            SlotWriteReply::Chunks(c) => (c.status, c.chunks),
            SlotWriteReply::Complete(c) => (c.status, c.chunks),
        })
        .collect();
    use WriteStatus::*;
    assert_eq!(
        statuses,
        [
            (Ok, 2),
            (Ok, 1),
            (Ok, 3),
            (Order, 0),
            (Fenced, 1),
            (Ok, 3),
            (Ended, 3),
            (NotFound, 0),
            (Ok, 3)
        ]
    );
    match &batched[2] {
        SlotWriteReply::Complete(c) => assert_eq!(
            c.next
                .as_ref()
                .map(|m| task_of(Some(m.clone())))
                .expect("t1's slot takes t4"),
            ("t4".into(), 1)
        ),
        other => panic!("t1's complete answered {other:?}"),
    }
    assert_eq!(
        batched[6],
        SlotWriteReply::Chunks(ChunkReply {
            status: Ended,
            chunks: 3,
            state: Some(TaskState::Done)
        })
    );

    let reply_many = many.keys.reply("client");
    let reply_one = one.keys.reply("client");
    let state_many = state(&mut many, &reply_many).await;
    let state_one = state(&mut one, &reply_one).await;
    assert_eq!(state_many, state_one);
    let key = many.keys.output("t2");
    assert_eq!(
        many.list(&key).await,
        [&scenario.b[..], &scenario.b_more[..]].concat()
    );
    let key = many.keys.output("t1");
    assert_eq!(
        many.list(&key).await,
        [&scenario.a[..], &scenario.a_last[..]].concat()
    );
}

/// A retry of a whole `rtq2_write_many` after a lost reply appends no
/// chunk twice and replays the complete's answer (the same next task).
#[tokio::test]
async fn a_write_many_sent_again_appends_nothing_twice() {
    let redis = RedisServer::start();
    let scenario = Scenario::new();
    let writes = scenario.writes();
    let mut p = Proto::connect(&redis, "again").await;
    three_running_one_queued(&mut p).await;
    let first = p.write_many("w1", &writes).await.unwrap();
    let reply = p.keys.reply("client");
    let before = state(&mut p, &reply).await;
    let again = p.write_many("w1", &writes).await.unwrap();
    assert_eq!(state(&mut p, &reply).await, before, "nothing written twice");
    for (i, (a, f)) in again.iter().zip(&first).enumerate() {
        match (a, f) {
            (SlotWriteReply::Chunks(a), SlotWriteReply::Chunks(f)) => {
                if f.status == WriteStatus::Ok && i != 8 {
                    assert_ne!(a.status, WriteStatus::Ok, "write {i} applied twice");
                }
            }
            (SlotWriteReply::Complete(a), SlotWriteReply::Complete(f)) => {
                assert_eq!((a.status, &a.next), (f.status, &f.next), "write {i}")
            }
            other => panic!("write {i} changed kind: {other:?}"),
        }
    }
}

/// `FCALL rtq2_write_many` with `groups` (each: id, attempt, seq0,
/// outcome, payload, want next, then k and k chunks) of worker w1.
async fn raw_many(
    p: &mut Proto,
    function: &str,
    groups: &[Vec<&str>],
) -> redis::RedisResult<Value> {
    let mut cmd = redis::cmd("FCALL");
    cmd.arg(function)
        .arg(1)
        .arg(p.keys.meta())
        .arg("w1")
        .arg(groups.len());
    for g in groups {
        cmd.arg(g);
    }
    cmd.query_async(&mut p.conn).await
}

#[tokio::test]
async fn malformed_calls_are_refused_whole_and_a_chunk_write_on_a_foreign_key_is_not_found() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "bad").await;
    three_running_one_queued(&mut p).await;
    let good = vec!["t1", "1", "0", "chunks", "", "0", "1", "a0"];
    let over: Vec<String> = (0..513).map(|i| format!("c{i}")).collect();
    let mut too_many = vec!["t2", "1", "0", "chunks", "", "0", "513"];
    too_many.extend(over.iter().map(String::as_str));
    let payload = payload_of(Done);
    let cases: Vec<(&str, Vec<Vec<&str>>, &str)> = vec![
        (
            "rtq2_write_many",
            vec![
                good.clone(),
                vec!["t2", "1", "0", "chunks", "a result", "0", "0"],
            ],
            "no result or reason",
        ),
        (
            "rtq2_write_many",
            vec![good.clone(), vec!["t2", "1", "0", "chunks", "", "1", "0"]],
            "want next must be 0",
        ),
        ("rtq2_complete_many", vec![good.clone()], "outcome"),
        (
            "rtq2_write_many",
            vec![
                good.clone(),
                vec!["t2", "1", "0", "chunks", "", "0", "3", "x"],
            ],
            "past the last argument",
        ),
        ("rtq2_write_many", vec![good.clone(), too_many], "[0, 512]"),
        (
            "rtq2_write_many",
            vec![good.clone(), vec!["t2", "1", "-1", "chunks", "", "0", "0"]],
            "seq0",
        ),
        (
            "rtq2_write_many",
            vec![good.clone(), vec!["t2", "1", "0", "flush", "", "0", "0"]],
            "outcome",
        ),
        (
            "rtq2_write_many",
            vec![
                good.clone(),
                vec!["t1", "1", "1", "done", payload, "7", "0"],
            ],
            "want next",
        ),
    ];
    let before = p.snapshot().await;
    for (function, groups, why) in &cases {
        // The second group, cut for the message (one has 513 chunks).
        let shown: Vec<&str> = groups.last().unwrap().iter().take(8).copied().collect();
        let err = raw_many(&mut p, function, groups)
            .await
            .expect_err(&format!("{function} {shown:?} must be refused"));
        assert!(
            err.to_string().contains(why),
            "{function} {shown:?}: {err} (expected {why:?})"
        );
        assert_eq!(p.snapshot().await, before, "{function} {shown:?} wrote");
    }

    // A foreign key where a chunk write's output list or task hash goes:
    // that write answers NOT_FOUND and writes nothing, the others apply.
    let foreign_list = p.keys.output("t2");
    p.raw(&["SET", &foreign_list, "not a list"]).await;
    let foreign_hash = p.keys.task("t9");
    p.raw(&["RPUSH", &foreign_hash, "not a hash"]).await;
    let reply = raw_many(
        &mut p,
        "rtq2_write_many",
        &[
            vec!["t2", "1", "0", "chunks", "", "0", "1", "b0"],
            vec!["t9", "1", "0", "chunks", "", "0", "1", "z0"],
            good.clone(),
        ],
    )
    .await
    .expect("foreign keys of chunk writes do not fail the call");
    let statuses: Vec<Vec<u8>> = match reply {
        Value::Array(items) => items
            .into_iter()
            .map(|i| support::proto::reply_items(i).remove(0))
            .collect(),
        other => panic!("write_many answered {other:?}"),
    };
    assert_eq!(statuses, [&b"NOT_FOUND"[..], b"NOT_FOUND", b"OK"]);
    assert_eq!(p.count("t2", "nc").await, 0);
    assert_eq!(p.count("t1", "nc").await, 1);
    let kind: String = redis::cmd("TYPE")
        .arg(&foreign_list)
        .query_async(&mut p.conn)
        .await
        .unwrap();
    assert_eq!(kind, "string", "the foreign key is left alone");
    // rtq2_chunk alone answers the same (the task's fate does not depend
    // on whether its write was coalesced).
    let alone = p.chunk("w1", "t2", 1, 0, &chunks(&["b0"])).await;
    assert_eq!(alone.status, WriteStatus::NotFound);
    let alone = p.chunk("w1", "t9", 1, 0, &chunks(&["z0"])).await;
    assert_eq!(alone.status, WriteStatus::NotFound);
    assert_eq!(p.count("t2", "nc").await, 0);

    // A foreign worker's owned set, with a chunk write before a complete
    // (the complete's SREM would be a write after the chunk write's):
    // refused before the chunk write applies.
    let owned = p.keys.worker_tasks("w1");
    p.raw(&["RENAME", &owned, "saved"]).await;
    p.raw(&["SET", &owned, "not a set"]).await;
    let before = p.snapshot().await;
    let err = raw_many(
        &mut p,
        "rtq2_write_many",
        &[
            vec!["t3", "1", "0", "chunks", "", "0", "1", "c0"],
            vec!["t1", "1", "1", "done", payload, "1", "0"],
        ],
    )
    .await
    .expect_err("a foreign owned set refuses the call");
    assert!(err.to_string().contains("WRONGTYPE"), "{err}");
    assert_eq!(p.snapshot().await, before, "the chunk write applied");
}

/// `n` streamed tasks of `chunks` chunks each, `delay_ms` apart, through a
/// worker with one slot per task; every task's text arrives whole and in
/// order.
async fn stream_all(url: &str, queue: &str, n: usize, chunks: u64, delay_ms: u64) {
    let client = Client::connect(url).await.unwrap();
    let q = client.queue(queue).unwrap();
    let runs = (0..n).map(|i| {
        let q = q.clone();
        async move {
            let text = format!("s{i}-");
            let stream = q
                .stream(TaskRequest::json(
                    json!({ "chunks": chunks, "chunk": text, "delay_ms": delay_ms }),
                ))
                .await
                .unwrap_or_else(|e| panic!("stream {i}: {e}"));
            let (output, got) = stream
                .collect_text()
                .await
                .unwrap_or_else(|e| panic!("stream {i}: {e}"));
            let want: String = (0..chunks).map(|c| format!("{text}{c} ")).collect();
            assert_eq!(got, want, "stream {i}");
            assert_eq!(output.result["echo"]["chunk"], json!(text), "stream {i}");
        }
    });
    within(futures::future::join_all(runs)).await;
}

/// The calls of `function` in the command log, as their write counts.
fn many_calls(log: &[Vec<String>], function: &str) -> Vec<usize> {
    log.iter()
        .filter(|a| a.len() > 5 && a[0].eq_ignore_ascii_case("fcall") && a[1] == function)
        .map(|a| a[5].parse().unwrap_or(0))
        .collect()
}

#[tokio::test]
async fn a_worker_coalesces_the_paced_chunk_writes_of_its_slots() {
    let redis = RedisServer::start();
    let mut admin = admin_conn(&redis).await;
    let (seen, _rx) = seen_channel();
    let w = TestWorker::start(&redis.url(), WorkerConfig::new("coal").slots(32), seen).await;
    log_every_command(&mut admin).await;
    stream_all(&redis.url(), "coal", 32, 20, 3).await;
    let log = command_log(&mut admin).await;
    let batched = many_calls(&log, "rtq2_write_many");
    let alone = log
        .iter()
        .filter(|a| a.len() > 2 && a[0].eq_ignore_ascii_case("fcall") && a[1] == "rtq2_chunk")
        .count();
    // 32 streams of 20 chunks 3 ms apart, on one worker: while one call
    // is in flight the other slots' writes wait and go together.
    assert!(
        batched.iter().any(|&n| n >= 2),
        "no rtq2_write_many carried several writes ({} calls, {alone} rtq2_chunk alone)",
        batched.len()
    );
    let writes: usize = batched.iter().sum::<usize>() + alone;
    assert!(
        batched.len() + alone < writes,
        "coalescing must save calls: {} calls for {writes} writes",
        batched.len() + alone
    );
    w.stop().await;
}

/// A worker whose user may not upgrade the server's library, on a library
/// without `rtq2_write_many` (revision 9 and older): simulated by this
/// library without it under a newer revision number, which no process
/// replaces. Every stream still arrives whole: the worker writes each
/// slot's chunks alone after the first refusal and stops asking.
#[tokio::test]
async fn a_worker_on_a_library_without_write_many_writes_chunks_alone() {
    let redis = RedisServer::start();
    let register = "redis.register_function{function_name = 'rtq2_write_many', callback = write_many, flags = {'allow-oom'}}";
    let mut admin = load_older_library(&redis, &[(register, "")]).await;
    let (seen, _rx) = seen_channel();
    let w = TestWorker::start(&redis.url(), WorkerConfig::new("old10").slots(16), seen).await;
    log_every_command(&mut admin).await;
    stream_all(&redis.url(), "old10", 16, 15, 3).await;
    // A second round after the refusal: no more attempts.
    let _: () = redis::cmd("SLOWLOG")
        .arg("RESET")
        .query_async(&mut admin)
        .await
        .unwrap();
    stream_all(&redis.url(), "old10", 16, 15, 3).await;
    let log = command_log(&mut admin).await;
    assert_eq!(
        many_calls(&log, "rtq2_write_many"),
        Vec::<usize>::new(),
        "the worker stopped asking for rtq2_write_many"
    );
    let version: Vec<i64> = redis::cmd("FCALL_RO")
        .arg("rtq2_version")
        .arg(0)
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(version, [2, 99], "the newer-numbered library stayed");
    w.stop().await;
}
