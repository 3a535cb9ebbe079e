//! The client on a stream queue (protocol v3, stage 2): `Queue` learns the
//! queue's mode from Redis and submits, waits, streams, follows, cancels
//! and reads status through the `rtq3` functions. The worker side here is
//! a hand-driven worker calling the real functions (`read_new`, `write`,
//! `complete`), so each test decides exactly when a task is taken, what
//! it writes and how it ends.

mod support;

use std::time::Duration;

use futures::StreamExt;
use redis::aio::MultiplexedConnection;
use rtq_core::functions::v3::{self, Delivery, EndState, Ending};
use rtq_core::keys::QueueKeys;
use rtq_core::{Client, Error, Queue, StreamEvent, TaskRequest, TaskState, TimeoutPhase};
use serde_json::json;
use support::*;

/// A worker driven by the test, step by step, through the real functions.
struct HandWorker {
    conn: MultiplexedConnection,
    keys: QueueKeys,
    id: String,
}

impl HandWorker {
    async fn new(redis: &RedisServer, queue: &str, id: &str) -> Self {
        let mut conn = admin_conn(redis).await;
        let keys = QueueKeys::new(queue).unwrap();
        v3::beat(&mut conn, &keys, id, 30_000, &[]).await.unwrap();
        Self {
            conn,
            keys,
            id: id.to_string(),
        }
    }

    /// The next new task of `band`, waiting for one.
    async fn take(&mut self, band: u8) -> Delivery {
        within(async {
            loop {
                let got = v3::read_new(&mut self.conn, &self.keys, &self.id, band, 1, None)
                    .await
                    .unwrap();
                if let Some(d) = got.into_iter().next() {
                    return d;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
    }

    async fn write(&mut self, d: &Delivery, seq0: u64, chunks: &[&str]) {
        let w = v3::ChunkWrite {
            held: d.held.clone(),
            id: d.id.clone(),
            seq0,
            chunks: chunks.iter().map(|c| c.as_bytes().to_vec()).collect(),
        };
        let out = v3::write(&mut self.conn, &self.keys, &self.id, &[w])
            .await
            .unwrap();
        assert!(matches!(out[0], v3::Written::Ok(_)), "{out:?}");
    }

    async fn end(&mut self, d: &Delivery, state: EndState) -> v3::Completed {
        let e = Ending {
            held: d.held.clone(),
            id: d.id.clone(),
            state,
            output: None,
        };
        v3::complete(&mut self.conn, &self.keys, &self.id, &[e])
            .await
            .unwrap()[0]
    }
}

async fn stream_queue(
    redis: &RedisServer,
    name: &str,
    bands: u8,
    max_depth: u64,
) -> (Client, Queue) {
    let client = Client::connect(&redis.url()).await.unwrap();
    let queue = client.queue(name).unwrap();
    queue.create_stream(bands, max_depth).await.unwrap();
    (client, queue)
}

#[tokio::test]
async fn run_gets_the_result_a_stream_queue_worker_wrote() {
    let redis = RedisServer::start();
    let (_client, queue) = stream_queue(&redis, "sq", 1, 0).await;
    let mut worker = HandWorker::new(&redis, "sq", "w1").await;
    let run = tokio::spawn({
        let queue = queue.clone();
        async move { queue.run(TaskRequest::json(json!({"x": 1})).id("t1")).await }
    });
    let d = worker.take(0).await;
    assert_eq!(d.id, "t1");
    let spec: serde_json::Value = serde_json::from_slice(&d.spec).unwrap();
    assert_eq!(spec["input"], json!({"x": 1}), "{spec}");
    assert_eq!(
        worker.end(&d, EndState::Done(r#"{"y":2}"#.into())).await,
        v3::Completed::Ok
    );
    let out = within(run).await.unwrap().unwrap();
    assert_eq!(out.result, json!({"y": 2}));
    assert_eq!(out.attempt, 1);
    let info = queue.status("t1").await.unwrap();
    assert_eq!(info.state, TaskState::Done);
    assert_eq!(info.worker, "w1");
}

#[tokio::test]
async fn a_stream_gets_every_chunk_in_order_then_the_result() {
    let redis = RedisServer::start();
    let (_client, queue) = stream_queue(&redis, "sq", 2, 0).await;
    let mut worker = HandWorker::new(&redis, "sq", "w1").await;
    let mut stream = queue
        .stream(TaskRequest::json(json!("hi")).id("t1"))
        .await
        .unwrap();
    let d = worker.take(1).await;
    worker.write(&d, 0, &["a", "b"]).await;
    worker.write(&d, 2, &["c"]).await;
    worker.end(&d, EndState::Done("\"abc\"".into())).await;
    let mut seen = Vec::new();
    while let Some(item) = within(stream.next()).await {
        match item.unwrap() {
            StreamEvent::Chunk(c) => seen.push(format!("{}:{}", c.index, c.text())),
            StreamEvent::Done(out) => seen.push(format!("done {}", out.result)),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, ["0:a", "1:b", "2:c", "done \"abc\""]);
}

#[tokio::test]
async fn another_client_waits_for_and_follows_a_task_it_did_not_submit() {
    let redis = RedisServer::start();
    let (_client, queue) = stream_queue(&redis, "sq", 1, 0).await;
    let other = Client::connect(&redis.url()).await.unwrap();
    let theirs = other.queue("sq").unwrap();
    let mut worker = HandWorker::new(&redis, "sq", "w1").await;
    let submitted = queue
        .submit(TaskRequest::json(json!(1)).id("t1"))
        .await
        .unwrap();
    assert_eq!(submitted.state, TaskState::Queued);
    let wait = tokio::spawn({
        let theirs = theirs.clone();
        async move { theirs.wait("t1", None).await }
    });
    let d = worker.take(0).await;
    worker.write(&d, 0, &["x", "y"]).await;
    // The waiter polls: give it time to be waiting before the ending.
    tokio::time::sleep(Duration::from_millis(100)).await;
    worker.end(&d, EndState::Done("7".into())).await;
    // Its events go to the submitter: the wait learns of the ending from
    // its own reads (every second at most), well before the router's
    // first verification of open waits (5 s).
    let out = tokio::time::timeout(Duration::from_secs(4), wait)
        .await
        .expect("the wait did not notice the ending")
        .unwrap()
        .unwrap();
    assert_eq!(out.result, json!(7));
    // A follow after the end: its stored chunks, then the result.
    let mut stream = theirs.follow("t1", 0).await.unwrap();
    let mut seen = Vec::new();
    while let Some(item) = within(stream.next()).await {
        match item.unwrap() {
            StreamEvent::Chunk(c) => seen.push(c.text().to_string()),
            StreamEvent::Done(out) => seen.push(out.result.to_string()),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, ["x", "y", "7"]);
}

#[tokio::test]
async fn a_submit_with_an_id_that_exists_is_a_duplicate_and_run_attaches_to_it() {
    let redis = RedisServer::start();
    let (_client, queue) = stream_queue(&redis, "sq", 1, 0).await;
    let mut worker = HandWorker::new(&redis, "sq", "w1").await;
    queue
        .submit(TaskRequest::json(json!(1)).id("t1"))
        .await
        .unwrap();
    match queue.submit(TaskRequest::json(json!(2)).id("t1")).await {
        Err(Error::Duplicate { id, state }) => {
            assert_eq!(id, "t1");
            assert_eq!(state, TaskState::Queued);
        }
        other => panic!("expected a duplicate, got {other:?}"),
    }
    let d = worker.take(0).await;
    worker.end(&d, EndState::Done("1".into())).await;
    // A run with the same id attaches to the ended task: its result.
    let out = queue
        .run(TaskRequest::json(json!(2)).id("t1"))
        .await
        .unwrap();
    assert_eq!(out.result, json!(1));
    assert_eq!(
        v3::read_new(&mut worker.conn, &worker.keys, "w1", 0, 10, None)
            .await
            .unwrap()
            .len(),
        0,
        "the duplicate created no second entry"
    );
}

#[tokio::test]
async fn the_depth_limit_refuses_with_the_queue_full_error() {
    let redis = RedisServer::start();
    let (_client, queue) = stream_queue(&redis, "sq", 1, 2).await;
    for id in ["a", "b"] {
        queue
            .submit(TaskRequest::json(json!(1)).id(id))
            .await
            .unwrap();
    }
    match queue.submit(TaskRequest::json(json!(1)).id("c")).await {
        Err(Error::QueueFull {
            depth, max_depth, ..
        }) => assert_eq!((depth, max_depth), (2, 2)),
        other => panic!("expected QueueFull, got {other:?}"),
    }
}

#[tokio::test]
async fn priorities_go_to_their_bands() {
    let redis = RedisServer::start();
    let (_client, queue) = stream_queue(&redis, "sq", 3, 0).await;
    let mut worker = HandWorker::new(&redis, "sq", "w1").await;
    for (id, priority) in [("low", -900), ("mid", 0), ("high", 900)] {
        queue
            .submit(TaskRequest::json(json!(1)).id(id).priority(priority))
            .await
            .unwrap();
    }
    assert_eq!(worker.take(0).await.id, "high");
    assert_eq!(worker.take(1).await.id, "mid");
    assert_eq!(worker.take(2).await.id, "low");
}

#[tokio::test]
async fn cancel_and_status_say_where_the_task_is() {
    let redis = RedisServer::start();
    let (_client, queue) = stream_queue(&redis, "sq", 1, 0).await;
    let mut worker = HandWorker::new(&redis, "sq", "w1").await;
    queue
        .submit(TaskRequest::json(json!(1)).id("q1"))
        .await
        .unwrap();
    queue
        .submit(TaskRequest::json(json!(1)).id("r1"))
        .await
        .unwrap();
    let info = queue.status("q1").await.unwrap();
    assert_eq!((info.state, info.attempt), (TaskState::Queued, 0));
    // q1 is taken first (FIFO), so it runs; r1 stays queued.
    let d = worker.take(0).await;
    assert_eq!(d.id, "q1");
    let info = queue.status("q1").await.unwrap();
    assert_eq!((info.state, info.attempt), (TaskState::Running, 1));
    assert_eq!(info.worker, "w1");
    assert_eq!(
        queue.cancel("q1", "no longer needed").await.unwrap(),
        TaskState::Running
    );
    assert_eq!(queue.cancel("r1", "").await.unwrap(), TaskState::Queued);
    assert_eq!(queue.cancel("r1", "").await.unwrap(), TaskState::Cancelled);
    // The running one's worker got a stop order.
    let order: Option<String> = redis::cmd("LPOP")
        .arg(worker.keys.inbox("w1"))
        .query_async(&mut worker.conn)
        .await
        .unwrap();
    assert!(order.is_some_and(|o| o.starts_with("C\tq1\t1\tcancelled")));
    assert_eq!(
        worker.end(&d, EndState::Done("1".into())).await,
        v3::Completed::Lost
    );
    match queue.wait("q1", None).await {
        Err(Error::Cancelled { reason, .. }) => assert_eq!(reason, "no longer needed"),
        other => panic!("expected Cancelled, got {other:?}"),
    }
    assert!(matches!(
        queue.status("nope").await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        queue.cancel("nope", "").await,
        Err(Error::NotFound { .. })
    ));
}

#[tokio::test]
async fn a_run_past_its_timeout_ends_expired_and_names_the_phase() {
    let redis = RedisServer::start();
    let (_client, queue) = stream_queue(&redis, "sq", 1, 0).await;
    let started = std::time::Instant::now();
    match queue
        .run(
            TaskRequest::json(json!(1))
                .id("t1")
                .timeout(Duration::from_millis(300)),
        )
        .await
    {
        Err(Error::TimedOut {
            phase: TimeoutPhase::Queued,
            ..
        }) => {}
        other => panic!("expected a queued timeout, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(queue.status("t1").await.unwrap().state, TaskState::Expired);
    // Running: the worker holding it is told to stop.
    let mut worker = HandWorker::new(&redis, "sq", "w1").await;
    let run = tokio::spawn({
        let queue = queue.clone();
        async move {
            queue
                .run(
                    TaskRequest::json(json!(1))
                        .id("t2")
                        .timeout(Duration::from_millis(400)),
                )
                .await
        }
    });
    let d = worker.take(0).await;
    match within(run).await.unwrap() {
        Err(Error::TimedOut {
            phase: TimeoutPhase::Running { worker },
            ..
        }) => assert_eq!(worker, "w1"),
        other => panic!("expected a running timeout, got {other:?}"),
    }
    let order: Option<String> = redis::cmd("LPOP")
        .arg(worker.keys.inbox("w1"))
        .query_async(&mut worker.conn)
        .await
        .unwrap();
    assert!(
        order
            .as_deref()
            .is_some_and(|o| o.starts_with("C\tt2\t1\tdeadline")),
        "{order:?}"
    );
    assert_eq!(
        worker.end(&d, EndState::Done("1".into())).await,
        v3::Completed::Lost
    );
}

#[tokio::test]
async fn a_dropped_run_cancels_its_stream_queue_task() {
    let redis = RedisServer::start();
    let (_client, queue) = stream_queue(&redis, "sq", 1, 0).await;
    let run = queue.run(TaskRequest::json(json!(1)).id("t1").cancel_on_drop(true));
    // Long enough to submit, then dropped.
    assert!(tokio::time::timeout(Duration::from_millis(300), run)
        .await
        .is_err());
    eventually("the dropped run's task is cancelled", || async {
        queue.status("t1").await.map(|i| i.state).ok() == Some(TaskState::Cancelled)
    })
    .await;
}

#[tokio::test]
async fn a_client_that_took_the_queue_for_v2_learns_it_is_a_stream_queue() {
    let redis = RedisServer::start();
    let client = Client::connect(&redis.url()).await.unwrap();
    let queue = client.queue("sq").unwrap();
    // The mode is read (no queue yet: v2) and kept.
    assert!(matches!(
        queue.status("nothing").await,
        Err(Error::NotFound { .. })
    ));
    let admin = Client::connect(&redis.url()).await.unwrap();
    admin
        .queue("sq")
        .unwrap()
        .create_stream(1, 0)
        .await
        .unwrap();
    // v2's submit refuses the stream queue; the client reads the mode
    // again and submits through rtq3.
    queue
        .submit(TaskRequest::json(json!(1)).id("t1"))
        .await
        .unwrap();
    let mut worker = HandWorker::new(&redis, "sq", "w1").await;
    assert_eq!(worker.take(0).await.id, "t1");
}

#[tokio::test]
async fn durable_submits_and_bad_band_counts_are_refused_clearly() {
    let redis = RedisServer::start();
    let (client, queue) = stream_queue(&redis, "sq", 1, 0).await;
    match queue
        .submit(TaskRequest::json(json!(1)).durable(Duration::from_millis(10)))
        .await
    {
        Err(Error::InvalidInput(m)) => assert!(m.contains("durable"), "{m}"),
        other => panic!("expected InvalidInput, got {other:?}"),
    }
    for bands in [0, 6] {
        assert!(matches!(
            client.queue("other").unwrap().create_stream(bands, 0).await,
            Err(Error::InvalidInput(_))
        ));
    }
    // Another band count for an existing stream queue is refused by Redis.
    assert!(matches!(
        queue.create_stream(2, 0).await,
        Err(Error::InvalidInput(_))
    ));
}

#[tokio::test]
async fn concurrent_submits_are_coalesced_and_each_gets_its_own_answer() {
    let redis = RedisServer::start();
    let (_client, queue) = stream_queue(&redis, "sq", 1, 150).await;
    let submits: Vec<_> = (0..200)
        .map(|i| {
            let queue = queue.clone();
            tokio::spawn(async move {
                queue
                    .submit(TaskRequest::json(json!(i)).id(format!("t{i}")))
                    .await
            })
        })
        .collect();
    let mut ok = 0;
    let mut full = 0;
    for s in submits {
        match within(s).await.unwrap() {
            Ok(_) => ok += 1,
            Err(Error::QueueFull { .. }) => full += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((ok, full), (150, 50));
    let mut conn = admin_conn(&redis).await;
    let len: u64 = redis::cmd("XLEN")
        .arg(v3::band_key(queue.keys(), 0))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(len, 150);
}

/// The next item of a stream, compact: `<attempt>:<index>:<text>`,
/// `restart <a>><b>` or `done <result>`.
async fn next_label(stream: &mut rtq_core::TaskStream) -> String {
    match within(stream.next()).await.unwrap().unwrap() {
        StreamEvent::Chunk(c) => format!("{}:{}:{}", c.attempt, c.index, c.text()),
        StreamEvent::Restarted {
            attempt,
            next_attempt,
            ..
        } => format!("restart {attempt}>{next_attempt}"),
        StreamEvent::Done(out) => format!("done {}", out.result),
    }
}

#[tokio::test]
async fn another_client_follows_a_running_task_live_and_through_a_restart() {
    let redis = RedisServer::start();
    let (_client, queue) = stream_queue(&redis, "sq", 1, 0).await;
    let other = Client::connect(&redis.url()).await.unwrap();
    let theirs = other.queue("sq").unwrap();
    let mut w1 = HandWorker::new(&redis, "sq", "w1").await;
    queue
        .submit(TaskRequest::json(json!(1)).id("t1").max_attempts(3))
        .await
        .unwrap();
    let mut stream = theirs.follow("t1", 0).await.unwrap();
    let d = w1.take(0).await;
    w1.write(&d, 0, &["a", "b"]).await;
    // Live: the chunks come while the task still runs.
    assert_eq!(next_label(&mut stream).await, "1:0:a");
    assert_eq!(next_label(&mut stream).await, "1:1:b");
    // The attempt fails and the task runs again elsewhere.
    w1.end(&d, EndState::Retry("flaky".into())).await;
    let mut w2 = HandWorker::new(&redis, "sq", "w2").await;
    let d2 = w2.take(0).await;
    assert_eq!(d2.held.attempt(), 2);
    w2.write(&d2, 0, &["x"]).await;
    assert_eq!(next_label(&mut stream).await, "restart 1>2");
    assert_eq!(next_label(&mut stream).await, "2:0:x");
    w2.end(&d2, EndState::Done("9".into())).await;
    assert_eq!(next_label(&mut stream).await, "done 9");
    assert!(within(stream.next()).await.is_none());
}

/// A delivery handed back unstarted keeps its attempt number: a stream
/// must not take the hand-back for an abandoned attempt and then drop the
/// chunks of the same attempt number's real run (found by the chaos run).
#[tokio::test]
async fn a_stream_keeps_every_chunk_of_an_attempt_that_was_handed_back_first() {
    let redis = RedisServer::start();
    let (_client, queue) = stream_queue(&redis, "sq", 1, 0).await;
    let mut worker = HandWorker::new(&redis, "sq", "w1").await;
    let stream = queue
        .stream(TaskRequest::json(json!(1)).id("t1"))
        .await
        .unwrap();
    let d = worker.take(0).await;
    assert_eq!(
        worker
            .end(&d, EndState::HandBack("no free slot".into()))
            .await,
        v3::Completed::Ok
    );
    let d = worker.take(0).await;
    assert_eq!(d.held.attempt(), 1, "a hand-back uses no attempt");
    worker.write(&d, 0, &["a", "b"]).await;
    worker.end(&d, EndState::Done("\"ab\"".into())).await;
    let (out, text) = within(stream.collect_text()).await.unwrap();
    assert_eq!((out.attempt, text.as_str()), (1, "ab"));
}

/// The server's rtq3 library at an older revision (a rolling upgrade: an
/// older process loaded it) is replaced before the client uses a stream
/// queue: a function whose arguments changed would refuse every call.
#[tokio::test]
async fn an_older_v3_library_on_the_server_is_replaced_before_use() {
    let redis = RedisServer::start();
    let mut conn = admin_conn(&redis).await;
    let ours = format!("local REVISION = {}\n", v3::LIBRARY_REVISION);
    let older = v3::LIBRARY_SOURCE.replace(&ours, "local REVISION = 1\n");
    assert_ne!(older, v3::LIBRARY_SOURCE);
    let _: redis::Value = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg(&older)
        .query_async(&mut conn)
        .await
        .unwrap();
    let version = |conn: &mut MultiplexedConnection| {
        let mut conn = conn.clone();
        async move {
            let v: Vec<i64> = redis::cmd("FCALL_RO")
                .arg("rtq3_version")
                .arg(0)
                .query_async(&mut conn)
                .await
                .unwrap();
            v
        }
    };
    assert_eq!(version(&mut conn).await, vec![3, 1]);
    let (_client, queue) = stream_queue(&redis, "sq", 1, 0).await;
    assert_eq!(version(&mut conn).await, vec![3, v3::LIBRARY_REVISION]);
    // A client that only reads the mode checks it too.
    let _: redis::Value = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(&older)
        .query_async(&mut conn)
        .await
        .unwrap();
    let other = Client::connect(&redis.url()).await.unwrap();
    other
        .queue("sq")
        .unwrap()
        .submit(TaskRequest::json(json!(1)).id("t1"))
        .await
        .unwrap();
    assert_eq!(version(&mut conn).await, vec![3, v3::LIBRARY_REVISION]);
    drop(queue);
}
