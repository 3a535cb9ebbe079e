//! The revision-7 hot path: coalesced submits (`rtq2_submit_many`), the
//! earliest-due mark that lets hand-outs skip `delayed`, the latencies the
//! complete reply carries for the worker's statistics, and the Client's
//! coalescing. Each test drives real functions on a real redis-server and
//! asserts the state in Redis, not only the replies.

mod support;

use std::time::Duration;

use rtq_core::functions::complete::CompleteOutcome;
use rtq_core::functions::heartbeat::BeatReply;
use rtq_core::functions::queue_admin::SetMaxDepth;
use rtq_core::functions::submit::{SubmitMany, SubmitReply};
use rtq_core::protocol::{InboxMessage, TaskState};
use rtq_core::{Client, TaskRequest};
use serde_json::json;
use support::proto::{task_of, Proto, RedisServer, Task};
use support::*;

fn accepted(r: &SubmitReply) -> (TaskState, Option<String>) {
    match r {
        SubmitReply::Accepted { state, worker, .. } => (*state, worker.clone()),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_batch_fills_free_slots_in_order_then_queues_and_repeats_are_duplicates() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    p.submit(&Task::new("old")).await;
    let r = p.register("w1", "i1", 2, &[]).await;
    assert!(matches!(r, BeatReply::Ok(_)), "{r:?}");
    // Registration dispatched "old" into one of the two slots.
    assert_eq!(task_of(p.pop("w1").await), ("old".into(), 1));
    let replies = p
        .submit_many(&[
            Task::new("a"),
            Task::new("b"),
            Task::new("a"),
            Task::new("old"),
            Task::new("c"),
        ])
        .await;
    assert_eq!(replies.len(), 5);
    assert_eq!(
        accepted(&replies[0]),
        (TaskState::Running, Some("w1".into()))
    );
    assert_eq!(accepted(&replies[1]), (TaskState::Queued, None));
    assert!(
        matches!(&replies[2], SubmitReply::Duplicate { state: TaskState::Running, worker: Some(w), .. } if w == "w1"),
        "{:?}",
        replies[2]
    );
    assert!(
        matches!(
            &replies[3],
            SubmitReply::Duplicate {
                state: TaskState::Running,
                ..
            }
        ),
        "{:?}",
        replies[3]
    );
    assert_eq!(accepted(&replies[4]), (TaskState::Queued, None));
    // State: a handed out (owned, in the inbox), b and c pending in order.
    assert_eq!(task_of(p.pop("w1").await), ("a".into(), 1));
    assert!(p.pop("w1").await.is_none());
    let mut owned = p.owned("w1").await;
    owned.sort();
    assert_eq!(owned, ["a", "old"]);
    assert_eq!(p.free("w1").await, 0.0);
    assert_eq!(p.zset(&p.keys.pending()).await, ["b", "c"]);
    assert_eq!(p.field("a", "att").await.as_deref(), Some("1"));
    assert_eq!(p.field("b", "st").await.as_deref(), Some("queued"));
    // One `sub` per created task.
    let now: Vec<i64> = redis::cmd("TIME")
        .query_async::<Vec<String>>(&mut p.conn)
        .await
        .unwrap()
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let bucket = (now[0] * 1000 + now[1] / 1000) / 10_000;
    let mut sub = 0u64;
    for b in [bucket - 1, bucket] {
        let n: Option<u64> = redis::cmd("HGET")
            .arg(p.keys.stats(b))
            .arg("sub")
            .query_async(&mut p.conn)
            .await
            .unwrap();
        sub += n.unwrap_or(0);
    }
    assert_eq!(sub, 4, "old, a, b, c");
}

#[tokio::test]
async fn a_batch_over_the_depth_limit_queues_what_fits_and_refuses_the_rest() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    p.call(&SetMaxDepth { max_depth: 2 }).await.unwrap();
    let replies = p
        .submit_many(&[
            Task::new("a"),
            Task::new("b"),
            Task::new("c"),
            Task::new("d"),
        ])
        .await;
    assert_eq!(accepted(&replies[0]).0, TaskState::Queued);
    assert_eq!(accepted(&replies[1]).0, TaskState::Queued);
    for r in &replies[2..] {
        assert!(
            matches!(
                r,
                SubmitReply::QueueFull {
                    depth: 2,
                    max_depth: 2
                }
            ),
            "{r:?}"
        );
    }
    assert_eq!(p.zset(&p.keys.pending()).await, ["a", "b"]);
    assert!(
        p.hash("c").await.is_empty(),
        "a refused task writes nothing"
    );
}

#[tokio::test]
async fn one_invalid_task_refuses_the_whole_batch_and_nothing_is_written() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    p.register("w1", "i1", 4, &[]).await;
    p.submit(&Task::new("before")).await;
    let before = p.snapshot().await;
    let specs = ["{}".to_string(), "{}".to_string()];
    let submits = [
        rtq_core::functions::submit::Submit {
            id: "ok-1",
            spec: &specs[0],
            priority: 0,
            timeout_ms: 0,
            max_attempts: 3,
            retention_ms: 1000,
            reply: "",
            stream: false,
        },
        rtq_core::functions::submit::Submit {
            id: "ok-2",
            spec: &specs[1],
            priority: 0,
            timeout_ms: 0,
            max_attempts: 0,
            retention_ms: 1000,
            reply: "",
            stream: false,
        },
    ];
    let err = p
        .call(&SubmitMany { tasks: &submits })
        .await
        .expect_err("max attempts 0 is invalid");
    assert!(err.to_string().contains("max attempts"), "{err}");
    assert_eq!(p.snapshot().await, before);
    // The count and the arity are checked too.
    for args in [
        vec!["0"],
        vec!["257"],
        vec!["2", "a", "{}", "0", "0", "3", "1000", "", "0"],
    ] {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg("rtq2_submit_many").arg(1).arg(p.keys.meta());
        for a in &args {
            cmd.arg(*a);
        }
        let r: redis::RedisResult<redis::Value> = cmd.query_async(&mut p.conn).await;
        let e = r.expect_err("refused");
        assert!(e.to_string().contains("INVALID"), "{args:?}: {e}");
    }
    assert_eq!(p.snapshot().await, before);
}

#[tokio::test]
async fn a_due_retry_is_handed_out_by_the_next_complete_and_a_stale_mark_heals() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    p.register("w1", "i1", 1, &[]).await;
    p.submit(&Task::new("r")).await;
    assert_eq!(task_of(p.pop("w1").await), ("r".into(), 1));
    p.submit(&Task::new("x")).await;
    // "r" fails retryably: delayed for 250 ms, `dd` marks when.
    let retried = p
        .complete("w1", "r", 1, 0, CompleteOutcome::Retry, true, &[])
        .await;
    assert_eq!(retried.state, Some(TaskState::Queued));
    assert_eq!(task_of(retried.next), ("x".into(), 1));
    let due: i64 = p.field("r", "due").await.unwrap().parse().unwrap();
    let dd = due_mark(&mut p).await;
    assert_eq!(dd, Some(due));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The next complete promotes it without housekeeping. (The avoidance
    // of the worker that failed it applies only while another is alive.)
    let next = p
        .complete("w1", "x", 1, 0, CompleteOutcome::Done, true, &[])
        .await;
    assert_eq!(task_of(next.next), ("r".into(), 2));
    let dd = due_mark(&mut p).await;
    assert_eq!(dd, Some(0), "nothing is delayed any more");

    // A mark left early by a retry that was cancelled meanwhile costs one
    // look at `delayed` and is then cleared.
    let _ = p
        .complete("w1", "r", 2, 0, CompleteOutcome::Retry, true, &[])
        .await;
    p.cancel("r").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    p.submit(&Task::new("y")).await;
    assert_eq!(task_of(p.pop("w1").await), ("y".into(), 1));
    let _ = p
        .complete("w1", "y", 1, 0, CompleteOutcome::Done, true, &[])
        .await;
    let dd = due_mark(&mut p).await;
    assert_eq!(dd, Some(0));
}

#[tokio::test]
async fn housekeeping_promotes_a_due_retry_even_without_a_mark() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    p.register("w1", "i1", 1, &[]).await;
    p.submit(&Task::new("r")).await;
    assert_eq!(task_of(p.pop("w1").await), ("r".into(), 1));
    let _ = p
        .complete("w1", "r", 1, 0, CompleteOutcome::Retry, true, &[])
        .await;
    // A mark lost (say, a meta hash restored from an old backup).
    p.raw(&["HDEL", &p.keys.meta(), "dd"]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    p.housekeep().await;
    assert_eq!(task_of(p.pop("w1").await), ("r".into(), 2));
}

#[tokio::test]
async fn the_complete_reply_carries_the_times_the_worker_s_statistics_need() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    p.register("w1", "i1", 1, &[]).await;
    p.submit(&Task::new("t")).await;
    let Some(InboxMessage::Task(d)) = p.pop("w1").await else {
        panic!("no delivery")
    };
    let h = p.hash("t").await;
    assert_eq!(d.submitted_ms.to_string(), h["sub"]);
    assert_eq!(d.handed_out_ms.to_string(), h["start"]);
    tokio::time::sleep(Duration::from_millis(20)).await;
    p.chunk("w1", "t", 1, 0, &[b"x".to_vec()]).await;
    let fc: i64 = p.field("t", "fc").await.unwrap().parse().unwrap();
    let r = p
        .complete("w1", "t", 1, 1, CompleteOutcome::Done, false, &[])
        .await;
    assert_eq!(r.first_chunk_ms, fc);
    assert_eq!(r.now_ms.to_string(), p.field("t", "fin").await.unwrap());
    // The worker counts this ending; the function does not.
    let stats: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", p.keys.stats(0).trim_end_matches('0')))
        .query_async(&mut p.conn)
        .await
        .unwrap();
    for key in stats {
        let done: Option<u64> = redis::cmd("HGET")
            .arg(&key)
            .arg("done")
            .query_async(&mut p.conn)
            .await
            .unwrap();
        assert_eq!(done, None, "{key}");
    }
    // A first chunk that arrives with the complete is timed by it.
    p.submit(&Task::new("u")).await;
    let _ = p.pop("w1").await;
    let r = p
        .complete(
            "w1",
            "u",
            1,
            0,
            CompleteOutcome::Done,
            false,
            &[b"y".to_vec()],
        )
        .await;
    assert_eq!(r.first_chunk_ms, r.now_ms);
}

#[tokio::test]
async fn concurrent_submits_of_one_client_coalesce_and_each_gets_its_own_answer() {
    let redis = RedisServer::start();
    let mut conn = admin_conn(&redis).await;
    log_every_command(&mut conn).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("co").unwrap();
    // No worker: every task is queued. 200 submits at once.
    let submits = (0..200).map(|i| {
        let q = q.clone();
        async move {
            q.submit(TaskRequest::json(json!({ "i": i })).id(format!("t{i}")))
                .await
        }
    });
    let results = within(futures::future::join_all(submits)).await;
    for (i, r) in results.iter().enumerate() {
        let s = r.as_ref().unwrap();
        assert_eq!(s.id, format!("t{i}"));
        assert_eq!(s.state, TaskState::Queued);
    }
    let log = command_log(&mut conn).await;
    let single = log
        .iter()
        .filter(|a| a.len() > 1 && a[1] == "rtq2_submit")
        .count();
    let many = log
        .iter()
        .filter(|a| a.len() > 1 && a[1] == "rtq2_submit_many")
        .count();
    assert!(many > 0, "some submits were coalesced");
    assert!(
        single + many < 200,
        "{single} single and {many} coalesced calls for 200 submits"
    );
    let pending: u64 = redis::cmd("ZCARD")
        .arg(q.keys().pending())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(pending, 200);
    // A duplicate among coalesced submits is reported as such.
    let again = within(futures::future::join_all((0..3).map(|_| {
        let q = q.clone();
        async move { q.submit(TaskRequest::json(json!({})).id("t7")).await }
    })))
    .await;
    for r in again {
        assert!(matches!(r, Err(rtq_core::Error::Duplicate { .. })), "{r:?}");
    }
}

/// The queue's earliest-due mark (`meta.dd`), if set.
async fn due_mark(p: &mut Proto) -> Option<i64> {
    redis::cmd("HGET")
        .arg(p.keys.meta())
        .arg("dd")
        .query_async(&mut p.conn)
        .await
        .unwrap()
}
