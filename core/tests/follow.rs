//! Resuming a follow (`Queue::follow_from`, and `Queue::follow` from an
//! index): one atomic step decides whether the caller's attempt is still
//! the task's, so a caller that holds chunks of an abandoned attempt gets
//! `Restarted` and then the next attempt from chunk 0, never the tail of
//! one attempt after the head of another; an attempt the task never ran
//! is refused and subscribes nothing. Also against a server whose library
//! predates the held attempt (revision 12), which a user without
//! `function|load` cannot upgrade.

mod support;

use std::time::Duration;

use futures::StreamExt;
use rtq_core::admin::Admin;
use rtq_core::{Client, Error, Queue, StreamEvent, TaskRequest, TaskStream, WorkerConfig};
use serde_json::json;
use support::*;

fn fast(queue: &str) -> WorkerConfig {
    WorkerConfig::new(queue)
        .lease(Duration::from_millis(1000))
        .heartbeat_every(Duration::from_millis(200))
}

/// One item of a stream, compact: `c<attempt>:<index>` for a chunk,
/// `r<attempt>><next>` for a restart, `d<attempt>` for the end.
fn label(item: &StreamEvent) -> String {
    match item {
        StreamEvent::Chunk(c) => format!("c{}:{}", c.attempt, c.index),
        StreamEvent::Restarted {
            attempt,
            next_attempt,
            ..
        } => format!("r{attempt}>{next_attempt}"),
        StreamEvent::Done(out) => format!("d{}", out.attempt),
    }
}

/// The next `n` items' labels (fails the test if they do not come).
async fn take(stream: &mut TaskStream, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let item = within(stream.next()).await.expect("the stream ended early");
        out.push(label(&item.expect("a stream error")));
    }
    out
}

/// Every remaining label, up to the end.
async fn rest(mut stream: TaskStream) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(item) = within(stream.next()).await {
        out.push(label(&item.expect("a stream error")));
    }
    out
}

fn labels(attempt: u64, indexes: std::ops::Range<u64>) -> Vec<String> {
    indexes.map(|i| format!("c{attempt}:{i}")).collect()
}

/// Waits until task `id` runs (or ended in) `attempt` with `chunks` chunks.
async fn wait_attempt(q: &Queue, id: &str, attempt: u64, chunks: u64) {
    eventually(
        &format!("{id} at attempt {attempt}, {chunks} chunks"),
        || async {
            let info = q.status(id).await.unwrap();
            info.attempt == attempt && info.chunks >= chunks
        },
    )
    .await;
}

fn is_never_ran(r: Result<TaskStream, Error>) -> bool {
    matches!(r, Err(Error::InvalidInput(m)) if m.contains("never ran"))
}

#[tokio::test]
async fn a_resume_from_an_abandoned_attempt_restarts_with_the_next_one_from_chunk_0() {
    let redis = RedisServer::start();
    let client = Client::connect(&redis.url()).await.unwrap();
    let admin = Admin::new(&client);
    let q = client.queue("fr").unwrap();
    let (seen, _rx) = seen_channel();
    let w = TestWorker::start(&redis.url(), fast("fr"), seen).await;
    let req = json!({"chunks": 6, "hold_after": true});
    let id = q.submit(TaskRequest::json(req)).await.unwrap().id;
    wait_attempt(&q, &id, 1, 6).await;

    // The attempt still runs: from the index, in that attempt.
    let mut same = within(q.follow_from(&id, 1, 4)).await.unwrap();
    assert_eq!(take(&mut same, 2).await, labels(1, 4..6));
    drop(same);

    // Run again, further than the caller's index: one call gives the
    // restart and the new attempt from its first chunk.
    admin.requeue("fr", &id).await.unwrap();
    wait_attempt(&q, &id, 2, 6).await;
    let mut resumed = within(q.follow_from(&id, 1, 4)).await.unwrap();
    let mut expected = vec!["r1>2".to_string()];
    expected.extend(labels(2, 0..6));
    assert_eq!(take(&mut resumed, 7).await, expected);
    // A bare index means the attempt the task runs.
    let mut bare = within(q.follow(&id, 5)).await.unwrap();
    assert_eq!(take(&mut bare, 1).await, labels(2, 5..6));
    w.release.notify_one();
    assert_eq!(rest(resumed).await, ["d2"]);
    assert_eq!(rest(bare).await, ["d2"]);

    // Ended in attempt 2: a resume from attempt 1 replays attempt 2 whole.
    let ended = within(q.follow_from(&id, 1, 9)).await.unwrap();
    let mut expected = vec!["r1>2".to_string()];
    expected.extend(labels(2, 0..6));
    expected.push("d2".into());
    assert_eq!(rest(ended).await, expected);
    w.stop().await;
}

/// Requeued and not run yet (the queue is paused): the caller learns at
/// once that its attempt is void, before any chunk of the next one.
#[tokio::test]
async fn a_resume_while_the_task_waits_to_run_again_restarts_at_once() {
    let redis = RedisServer::start();
    let client = Client::connect(&redis.url()).await.unwrap();
    let admin = Admin::new(&client);
    let q = client.queue("fw").unwrap();
    let (seen, _rx) = seen_channel();
    let w = TestWorker::start(&redis.url(), fast("fw"), seen).await;
    let out = within(q.run(TaskRequest::json(json!({"chunks": 3}))))
        .await
        .unwrap();
    admin.pause("fw", true).await.unwrap();
    admin.requeue("fw", &out.id).await.unwrap();

    let mut held = within(q.follow_from(&out.id, 1, 2)).await.unwrap();
    let mut current = within(q.follow(&out.id, 2)).await.unwrap();
    let mut fresh = within(q.follow(&out.id, 0)).await.unwrap();
    assert_eq!(take(&mut held, 1).await, ["r1>2"]);
    assert_eq!(take(&mut current, 1).await, ["r1>2"]);
    // The restart's own position (nothing of attempt 2 yet) is no attempt
    // the task never ran; a chunk of it, or attempt 3, is.
    let next = within(q.follow_from(&out.id, 2, 0)).await.unwrap();
    assert!(is_never_ran(q.follow_from(&out.id, 2, 1).await));
    assert!(is_never_ran(q.follow_from(&out.id, 3, 0).await));

    admin.pause("fw", false).await.unwrap();
    let mut expected = labels(2, 0..3);
    expected.push("d2".into());
    assert_eq!(rest(held).await, expected);
    assert_eq!(rest(current).await, expected);
    assert_eq!(rest(next).await, expected);
    // From chunk 0 nothing was held: no restart to announce.
    assert_eq!(take(&mut fresh, 4).await, expected);
    w.stop().await;
}

#[tokio::test]
async fn a_resume_from_an_attempt_the_task_never_ran_is_refused_and_subscribes_nothing() {
    let redis = RedisServer::start();
    let mut conn = admin_conn(&redis).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("fn").unwrap();
    let id = q.submit(TaskRequest::json(json!(1))).await.unwrap().id;
    // Not handed out yet: no chunk of attempt 1 can be held, nor any of 2.
    for (attempt, index) in [(1, 5), (2, 0), (0, 3), (u64::MAX, 1)] {
        assert!(
            is_never_ran(q.follow_from(&id, attempt, index).await),
            "attempt {attempt}"
        );
    }
    // Nothing subscribed: no follower set, no mark on the task.
    let followers: i64 = redis::cmd("EXISTS")
        .arg(format!("rtq:{{fn}}:wt:{id}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let mark: Option<String> = redis::cmd("HGET")
        .arg(q.keys().task(&id))
        .arg("watch")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!((followers, mark), (0, None));
    // What the function answers, for other clients.
    let reply: redis::Value = redis::cmd("FCALL")
        .arg("rtq2_watch")
        .arg(1)
        .arg(q.keys().meta())
        .arg(&id)
        .arg(q.keys().reply("other"))
        .arg(0)
        .arg(4)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        reply,
        redis::Value::Array(vec![
            redis::Value::BulkString(b"NO_ATTEMPT".to_vec()),
            redis::Value::Int(0)
        ])
    );
    // A bare index on a task not handed out yet counts the first attempt's
    // chunks: no restart, the first chunks skipped.
    let mut bare = within(q.follow(&id, 2)).await.unwrap();
    let (seen, _rx) = seen_channel();
    let w = TestWorker::start(&redis.url(), fast("fn"), seen).await;
    let id2 = q
        .submit(TaskRequest::json(json!({"chunks": 4})))
        .await
        .unwrap()
        .id;
    let mut skipping = within(q.follow(&id2, 2)).await.unwrap();
    let first = take(&mut skipping, 1).await;
    assert!(first == ["c1:2"], "{first:?}");
    assert_eq!(take(&mut bare, 1).await, ["d1"]);
    w.stop().await;
}

/// A user that may not load functions, on a server whose library takes no
/// held attempt: the client reads from chunk 0 and decides the same way.
#[tokio::test]
async fn against_an_older_library_a_resume_decides_the_same_way() {
    let redis = RedisServer::start();
    load_older_library(
        &redis,
        &[
            (
                "if #args ~= 3 and #args ~= 4 then invalid('watch takes 3 or 4 arguments') end",
                "if #args ~= 3 then invalid('watch takes 3 arguments') end",
            ),
            (
                "if #args ~= 2 and #args ~= 3 then invalid('read takes 2 or 3 arguments') end",
                "if #args ~= 2 then invalid('read takes 2 arguments') end",
            ),
        ],
    )
    .await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let admin = Admin::new(&client);
    let q = client.queue("fo").unwrap();
    let (seen, _rx) = seen_channel();
    let w = TestWorker::start(&redis.url(), fast("fo"), seen).await;
    let req = json!({"chunks": 5, "hold_after": true});
    let id = q.submit(TaskRequest::json(req)).await.unwrap().id;
    wait_attempt(&q, &id, 1, 5).await;
    let mut same = within(q.follow_from(&id, 1, 3)).await.unwrap();
    assert_eq!(take(&mut same, 2).await, labels(1, 3..5));
    drop(same);
    admin.requeue("fo", &id).await.unwrap();
    wait_attempt(&q, &id, 2, 5).await;
    let mut resumed = within(q.follow_from(&id, 1, 3)).await.unwrap();
    let mut expected = vec!["r1>2".to_string()];
    expected.extend(labels(2, 0..5));
    assert_eq!(take(&mut resumed, 6).await, expected);
    assert!(is_never_ran(q.follow_from(&id, 3, 0).await));
    w.release.notify_one();
    assert_eq!(rest(resumed).await, ["d2"]);
    w.stop().await;
}

/// On an older library the fallback watches from chunk 0 (subscribing)
/// before deciding NoAttempt locally: the subscription is removed again,
/// as the new library subscribes nothing for the same answer.
#[tokio::test]
async fn a_refused_resume_on_an_older_library_leaves_no_subscription() {
    let redis = RedisServer::start();
    let mut admin = load_older_library(
        &redis,
        &[
            (
                "if #args ~= 3 and #args ~= 4 then invalid('watch takes 3 or 4 arguments') end",
                "if #args ~= 3 then invalid('watch takes 3 arguments') end",
            ),
            (
                "if #args ~= 2 and #args ~= 3 then invalid('read takes 2 or 3 arguments') end",
                "if #args ~= 2 then invalid('read takes 2 arguments') end",
            ),
        ],
    )
    .await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("fl").unwrap();
    let (seen, _rx) = seen_channel();
    let w = TestWorker::start(
        &redis.url(),
        WorkerConfig::new("fl").heartbeat_every(Duration::from_millis(200)),
        seen,
    )
    .await;
    let id = q
        .submit(TaskRequest::json(json!({"chunks": 2, "hold_after": true})))
        .await
        .unwrap()
        .id;
    eventually("running", || async {
        q.status(&id).await.unwrap().chunks >= 2
    })
    .await;
    let refused = q.follow_from(&id, 7, 0).await;
    assert!(refused.is_err());
    let followers: Vec<String> = redis::cmd("SMEMBERS")
        .arg(format!("rtq:{{fl}}:wt:{id}"))
        .query_async(&mut admin)
        .await
        .unwrap();
    w.release.notify_one();
    assert!(followers.is_empty(), "left subscribed: {followers:?}");
    w.stop().await;
}
