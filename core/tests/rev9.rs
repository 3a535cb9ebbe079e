//! Protocol revision 9 on a real redis-server: a complete's next task comes
//! with its spec apart when the worker asks (want next '2', what the Rust
//! worker sends) and joined when it does not ('1', what older workers
//! send), the same again on a replay; and a complete call writes one
//! `ended` entry for all the endings it caused, which the console's recent
//! list reads back newest first.

mod support;

use redis::Value;
use rtq_core::admin::Admin;
use rtq_core::functions::complete::CompleteOutcome::Done;
use rtq_core::protocol::InboxMessage;
use rtq_core::{Client, TaskRequest, WorkerConfig};
use serde_json::json;
use support::proto::{reply_items, spec_of, task_of, Ending, Proto, Task};
use support::*;

/// Worker `w` (1 slot) runs t1; t2 waits in `pending`.
async fn one_running_one_queued(p: &mut Proto) {
    p.register("w", "i", 1, &[]).await;
    p.submit(&Task::new("t1")).await;
    p.submit(&Task::new("t2")).await;
    assert_eq!(task_of(p.pop("w").await), ("t1".into(), 1));
}

/// `rtq2_complete` of t1 by `w`, done, with want next `mode`.
async fn complete_t1(p: &mut Proto, mode: &str) -> Vec<Vec<u8>> {
    let meta = p.keys.meta();
    let reply = p
        .raw(&[
            "FCALL",
            "rtq2_complete",
            "1",
            &meta,
            "w",
            "t1",
            "1",
            "0",
            "done",
            "{}",
            mode,
        ])
        .await;
    reply_items(reply)
}

/// The next task a reply carries: (id, attempt, spec).
fn next_task(message: &[u8]) -> (String, u64, Vec<u8>) {
    match InboxMessage::parse(message) {
        InboxMessage::Task(d) => (d.id, d.attempt, d.spec),
        other => panic!("a task message was expected, got {other:?}"),
    }
}

#[tokio::test]
async fn want_next_2_answers_the_spec_apart_and_1_joins_it() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "r9").await;
    one_running_one_queued(&mut p).await;

    let split = complete_t1(&mut p, "2").await;
    assert_eq!(split.len(), 7, "{split:?}");
    assert_eq!(split[0], b"OK");
    let head = &split[1];
    assert!(head.starts_with(b"T\tt2\t1\t"), "{head:?}");
    assert!(head.ends_with(b"\t"), "the head stops before the spec");
    assert_eq!(split[6], spec_of("t2").into_bytes());
    let joined: Vec<u8> = [head.as_slice(), split[6].as_slice()].concat();
    assert_eq!(
        next_task(&joined),
        ("t2".into(), 1, spec_of("t2").into_bytes())
    );

    // A retry after a lost reply replays the same answer, still apart;
    // the same call with '1' (an older worker's retry) gets it joined.
    let replay = complete_t1(&mut p, "2").await;
    assert_eq!(replay[..4], split[..4]);
    assert_eq!(replay[6], split[6]);
    let replay_joined = complete_t1(&mut p, "1").await;
    assert_eq!(replay_joined.len(), 6, "{replay_joined:?}");
    assert_eq!(replay_joined[1], joined);

    // The typed binding joins the parts: the worker sees one message.
    let reply = p.complete("w", "t2", 1, 0, Done, true, &[]).await;
    assert_eq!(reply.next, None, "nothing else is queued");
}

#[tokio::test]
async fn want_next_1_keeps_the_six_item_reply_of_older_workers() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "r9old").await;
    one_running_one_queued(&mut p).await;
    let reply = complete_t1(&mut p, "1").await;
    assert_eq!(reply.len(), 6, "{reply:?}");
    assert_eq!(
        next_task(&reply[1]),
        ("t2".into(), 1, spec_of("t2").into_bytes())
    );
    // Without a next task both shapes answer an empty message.
    let none = p
        .raw(&[
            "FCALL",
            "rtq2_complete",
            "1",
            &p.keys.meta(),
            "w",
            "t2",
            "1",
            "0",
            "done",
            "{}",
            "2",
        ])
        .await;
    let none = reply_items(none);
    assert_eq!(
        (none.len(), none[1].as_slice(), none[6].as_slice()),
        (7, &b""[..], &b""[..])
    );
    // Anything else is refused before any write.
    let Err(e) = redis::cmd("FCALL")
        .arg("rtq2_complete")
        .arg(1)
        .arg(p.keys.meta())
        .arg(&["w", "t2", "1", "0", "done", "{}", "3"][..])
        .query_async::<Value>(&mut p.conn)
        .await
    else {
        panic!("want next '3' was accepted")
    };
    assert!(e.to_string().contains("want next"), "{e}");
}

#[tokio::test]
async fn a_coalesced_complete_writes_one_ended_entry_for_all_its_endings() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "r9end").await;
    p.register("w", "i", 3, &[]).await;
    for id in ["a", "b", "c"] {
        p.submit(&Task::new(id)).await;
        assert_eq!(task_of(p.pop("w").await).0, id);
    }
    p.complete_many(
        "w",
        &[
            Ending::first("a", Done, false),
            Ending::first("b", Done, false),
            Ending::first("c", Done, false),
        ],
    )
    .await
    .unwrap();

    let ended = p.keys.ended();
    assert_eq!(
        p.raw(&["XLEN", &ended]).await,
        Value::Int(1),
        "one entry for the call"
    );
    let Value::Array(range) = p.raw(&["XRANGE", &ended, "-", "+"]).await else {
        panic!("XRANGE answers an array")
    };
    let Value::Array(entry) = &range[0] else {
        panic!("an entry is [id, fields]")
    };
    let fields = reply_items(entry[1].clone());
    let text: Vec<String> = fields
        .iter()
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect();
    assert_eq!(
        text,
        ["t", "a", "st", "done", "t", "b", "st", "done", "t", "c", "st", "done"]
    );

    // An ending outside a complete (a cancel) still writes its own entry.
    p.submit(&Task::new("d")).await;
    p.cancel("d").await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let admin = Admin::new(&client);
    let recent: Vec<String> = admin
        .recent("r9end", 0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(recent, ["d", "c", "b", "a"], "newest first");
    let page: Vec<String> = admin
        .recent("r9end", 1, 2)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(page, ["c", "b"]);
}

/// A worker whose user may not upgrade the server's library, on a library
/// that refuses a next task's spec apart (as revision 8 and older do):
/// simulated by this library with '2' taken out and a newer revision
/// number, which no process replaces. Every task still runs once with its
/// own input: the worker asks for next tasks whole after the first refusal.
#[tokio::test]
async fn a_worker_on_a_library_that_refuses_specs_apart_asks_for_next_tasks_whole() {
    let redis = RedisServer::start();
    let mut admin = load_older_library(
        &redis,
        &[(
            "local NEXT_MODES = {'0', '1', '2'}",
            "local NEXT_MODES = {'0', '1'}",
        )],
    )
    .await;

    let (seen, _rx) = seen_channel();
    let worker = TestWorker::start(&redis.url(), WorkerConfig::new("r9old").slots(1), seen).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("r9old").unwrap();
    let runs = (0..8).map(|i| {
        let q = q.clone();
        async move { (i, q.run(TaskRequest::json(json!({ "n": i }))).await) }
    });
    for (i, result) in within(futures::future::join_all(runs)).await {
        let output = result.unwrap_or_else(|e| panic!("task {i}: {e}"));
        assert_eq!(output.result["echo"], json!({ "n": i }), "task {i}");
    }
    let version: Vec<i64> = redis::cmd("FCALL_RO")
        .arg("rtq2_version")
        .arg(0)
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(version, [2, 99], "the newer-numbered library stayed");
    worker.stop().await;
}
