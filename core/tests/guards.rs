//! Protocol behaviours a Lua mutation run found unguarded: each test names
//! the behaviour, drives the functions one call at a time on a real
//! redis-server and asserts the state in Redis, not only the replies.

mod support;

use rtq_core::functions::cancel::{Cancel, CancelMode, CancelReply};
use rtq_core::functions::chunk::WriteStatus;
use rtq_core::functions::complete::CompleteOutcome;
use rtq_core::functions::heartbeat::{Beat, BeatReply, Heartbeat};
use rtq_core::protocol::TaskState;
use support::proto::{task_of, Proto, RedisServer, Task};

const DONE: CompleteOutcome = CompleteOutcome::Done;

async fn registered(redis: &RedisServer, slots: usize) -> Proto {
    let mut p = Proto::connect(redis, "q").await;
    let r = p.register("w1", "i1", slots, &[]).await;
    assert!(matches!(r, BeatReply::Ok(_)), "{r:?}");
    p
}

#[tokio::test]
async fn a_deadline_check_on_a_task_without_a_deadline_is_not_due_and_changes_nothing() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    p.submit(&Task::new("t1")).await;
    let before = p.snapshot().await;
    let r = p
        .call(&Cancel {
            id: "t1",
            mode: CancelMode::Deadline,
            reason: "deadline",
        })
        .await
        .unwrap();
    assert_eq!(r, CancelReply::NotDue(None));
    assert_eq!(p.field("t1", "st").await.as_deref(), Some("queued"));
    assert_eq!(p.snapshot().await, before);
}

#[tokio::test]
async fn an_empty_chunk_write_is_accepted_and_writes_nothing() {
    let redis = RedisServer::start();
    let mut p = registered(&redis, 1).await;
    p.submit(&Task::new("t1")).await;
    assert_eq!(task_of(p.pop("w1").await), ("t1".into(), 1));
    let before = p.snapshot().await;
    let r = p.chunk("w1", "t1", 1, 0, &[]).await;
    assert_eq!(r.status, WriteStatus::Ok);
    assert_eq!(r.chunks, 0);
    assert_eq!(r.state, Some(TaskState::Running));
    assert_eq!(p.snapshot().await, before);
}

#[tokio::test]
async fn a_replayed_complete_never_hands_out_again_a_next_task_that_has_ended() {
    let redis = RedisServer::start();
    let mut p = registered(&redis, 1).await;
    p.submit(&Task::new("t1")).await;
    assert_eq!(task_of(p.pop("w1").await), ("t1".into(), 1));
    p.submit(&Task::new("t2")).await;
    let first = p.complete("w1", "t1", 1, 0, DONE, true, &[]).await;
    assert!(first.next.is_some(), "t2 is handed out with the reply");
    let ended = p.complete("w1", "t2", 1, 0, DONE, true, &[]).await;
    assert_eq!(ended.state, Some(TaskState::Done));
    // The reply of the first complete was lost and the call is retried
    // after t2 ended: the replay must not hand t2 out again.
    let again = p.complete("w1", "t1", 1, 0, DONE, true, &[]).await;
    assert_eq!(again.status, first.status);
    assert!(again.next.is_none(), "{again:?}");
    assert_eq!(p.field("t2", "st").await.as_deref(), Some("done"));
    assert!(p.owned("w1").await.is_empty());
    assert_eq!(p.free("w1").await, 1.0);
}

/// The 10-second stats bucket that holds time `ms`.
const STATS_BUCKET_MS: i64 = 10_000;

#[tokio::test]
async fn an_ending_counted_by_redis_files_its_total_time_where_the_readers_look_for_it() {
    // Cancels, deadlines and lost attempts are counted by the functions
    // (workers count only the endings they report themselves).
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    p.submit(&Task::new("t1")).await;
    // Long enough to land beyond the first buckets (at 0 ms every bucket
    // rule agrees).
    tokio::time::sleep(std::time::Duration::from_millis(60)).await;
    p.cancel("t1").await;
    let h = p.hash("t1").await;
    let sub: i64 = h["sub"].parse().unwrap();
    let fin: i64 = h["fin"].parse().unwrap();
    assert!(fin - sub >= 50, "took {} ms", fin - sub);
    let index = rtq_core::admin::stats::bucket_index((fin - sub) as f64);
    let key = p.keys.stats(fin / STATS_BUCKET_MS);
    let counted: Vec<Option<u64>> = redis::cmd("HMGET")
        .arg(&key)
        .arg(format!("t:{index}"))
        .arg("cancelled")
        .query_async(&mut p.conn)
        .await
        .unwrap();
    assert_eq!(
        counted,
        [Some(1), Some(1)],
        "{key} t:{index} for {} ms",
        fin - sub
    );
}

#[tokio::test]
async fn heartbeat_statistics_land_in_their_buckets_and_malformed_ones_write_nothing() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    let r = p.register("w1", "i1", 1, &[]).await;
    let BeatReply::Ok(report) = r else {
        panic!("{r:?}")
    };
    let newest = report.now_ms / STATS_BUCKET_MS;
    let stale = newest - 400; // older than the hour buckets live
    let info = vec![(
        "stats",
        format!(
            "{newest}/done/3 {newest}/w:12/2 {}/t:40/1 {stale}/failed/9",
            newest - 1
        ),
    )];
    let reply = p
        .call(&Heartbeat(Beat {
            worker: "w1",
            instance: "i1",
            lease_ms: 5000,
            slots: 1,
            accepting: true,
            running: &[],
            info: &info,
        }))
        .await
        .unwrap();
    assert!(matches!(reply, BeatReply::Ok(_)), "{reply:?}");
    assert_eq!(stat(&mut p, newest, "done").await, Some(3));
    assert_eq!(stat(&mut p, newest, "w:12").await, Some(2));
    assert_eq!(stat(&mut p, newest - 1, "t:40").await, Some(1));
    assert_eq!(
        stat(&mut p, stale, "failed").await,
        None,
        "too old: dropped"
    );
    let ttl: i64 = redis::cmd("PTTL")
        .arg(p.keys.stats(newest))
        .query_async(&mut p.conn)
        .await
        .unwrap();
    assert!(ttl > 0, "a bucket expires");

    for bad in [
        format!("{newest}/sub/1"),
        format!("{newest}/w:201/1"),
        format!("{newest}/done/0"),
        format!("{newest}/done/x"),
        format!("{newest}:done:1"),
        "x".repeat(70_000),
    ] {
        let before = p.snapshot().await;
        let info = vec![("stats", bad.clone())];
        let err = p
            .call(&Heartbeat(Beat {
                worker: "w1",
                instance: "i1",
                lease_ms: 5000,
                slots: 1,
                accepting: true,
                running: &[],
                info: &info,
            }))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("stats"), "{bad:.60}: {err}");
        assert_eq!(p.snapshot().await, before, "{bad:.60} wrote something");
    }
}

#[tokio::test]
async fn a_new_attempt_starts_with_no_chunk_times_of_the_last_one() {
    let redis = RedisServer::start();
    let mut p = registered(&redis, 1).await;
    p.submit(&Task::new("t1")).await;
    assert_eq!(task_of(p.pop("w1").await), ("t1".into(), 1));
    let r = p.chunk("w1", "t1", 1, 0, &[b"a".to_vec()]).await;
    assert_eq!(r.status, WriteStatus::Ok);
    let h = p.hash("t1").await;
    assert_ne!(h["fc"], "0");
    assert_ne!(h["lc"], "0");
    // An operator requeue hands the task out again (the only worker's slot
    // is still taken by attempt 1 until it completes).
    p.requeue("t1").await;
    let ended = p.complete("w1", "t1", 1, 1, DONE, true, &[]).await;
    assert_eq!(ended.status, WriteStatus::Fenced, "{ended:?}");
    let r = p.heartbeat("w1", "i1", 1, true, &[]).await;
    assert!(matches!(r, BeatReply::Ok(_)), "{r:?}");
    // The inbox holds the cancel message for attempt 1, then attempt 2.
    let cancel = p.pop("w1").await;
    assert!(
        matches!(
            &cancel,
            Some(rtq_core::protocol::InboxMessage::Cancel { attempt: 1, .. })
        ),
        "{cancel:?}"
    );
    assert_eq!(task_of(p.pop("w1").await), ("t1".into(), 2));
    let h = p.hash("t1").await;
    for field in ["fc", "lc", "nc", "nb"] {
        assert_eq!(h[field], "0", "{field} of attempt 2: {h:?}");
    }
}

#[tokio::test]
async fn a_late_read_of_a_failed_task_names_its_error_kind_message_and_worker() {
    let redis = RedisServer::start();
    let mut p = registered(&redis, 1).await;
    p.submit(&Task::new("t1")).await;
    assert_eq!(task_of(p.pop("w1").await), ("t1".into(), 1));
    let r = p
        .complete("w1", "t1", 1, 0, CompleteOutcome::Failed, true, &[])
        .await;
    assert_eq!(r.state, Some(TaskState::Failed));
    let snapshot = p
        .call(&rtq_core::functions::watch::Read { id: "t1", from: 0 })
        .await
        .unwrap()
        .expect("the task exists");
    assert_eq!(snapshot.state, TaskState::Failed);
    match snapshot.outcome {
        Some(rtq_core::protocol::Outcome::Ended {
            state,
            kind,
            message,
            worker,
        }) => {
            assert_eq!(state, TaskState::Failed);
            assert_eq!(kind, "handler");
            assert_eq!(message, "it broke");
            assert_eq!(worker, "w1");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(p.field("t1", "ek").await.as_deref(), Some("handler"));
}

#[tokio::test]
async fn a_max_depth_of_one_admits_exactly_one_queued_task() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    p.call(&rtq_core::functions::queue_admin::SetMaxDepth { max_depth: 1 })
        .await
        .unwrap();
    let first = p.submit(&Task::new("t1")).await;
    assert!(
        matches!(
            first,
            rtq_core::functions::submit::SubmitReply::Accepted { .. }
        ),
        "{first:?}"
    );
    let second = p.submit(&Task::new("t2")).await;
    assert!(
        matches!(
            second,
            rtq_core::functions::submit::SubmitReply::QueueFull { .. }
        ),
        "{second:?}"
    );
    assert_eq!(p.zset(&p.keys.pending()).await, vec!["t1".to_string()]);
    assert!(p.hash("t2").await.is_empty());
}

#[tokio::test]
async fn pausing_dispatches_nothing_and_resuming_dispatches_what_waits() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    use rtq_core::functions::queue_admin::Pause;
    assert_eq!(p.call(&Pause { paused: true }).await.unwrap(), 0);
    p.submit(&Task::new("t1")).await;
    p.submit(&Task::new("t2")).await;
    let r = p.register("w1", "i1", 1, &[]).await;
    assert!(matches!(r, BeatReply::Ok(_)), "{r:?}");
    // Paused: the free slot takes nothing, and pausing again says so.
    assert_eq!(p.call(&Pause { paused: true }).await.unwrap(), 0);
    assert_eq!(p.field("t1", "st").await.as_deref(), Some("queued"));
    assert_eq!(p.free("w1").await, 1.0);
    // Resuming hands the oldest task to the free slot, and says how many.
    assert_eq!(p.call(&Pause { paused: false }).await.unwrap(), 1);
    assert_eq!(task_of(p.pop("w1").await), ("t1".into(), 1));
    assert_eq!(p.field("t2", "st").await.as_deref(), Some("queued"));
}

#[tokio::test]
async fn purge_removes_a_queued_id_whose_task_hash_is_gone() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    p.submit(&Task::new("t1")).await;
    p.submit(&Task::new("t2")).await;
    // t1's hash vanished (evicted, or deleted by hand).
    let t1 = p.keys.task("t1");
    p.raw(&["DEL", &t1]).await;
    let r = p
        .call(&rtq_core::functions::queue_admin::Purge { batch: 10 })
        .await
        .unwrap();
    assert_eq!(r.removed, 2);
    assert!(p.zset(&p.keys.pending()).await.is_empty());
    assert!(p.hash("t1").await.is_empty(), "no hash is made up for t1");
    assert_eq!(p.field("t2", "st").await.as_deref(), Some("cancelled"));
    assert_eq!(p.field("t2", "ek").await.as_deref(), Some("purged"));
}

#[tokio::test]
async fn a_complete_whose_task_vanished_frees_exactly_one_slot_and_hands_out_nothing() {
    let redis = RedisServer::start();
    let mut p = registered(&redis, 1).await;
    p.submit(&Task::new("t1")).await;
    assert_eq!(task_of(p.pop("w1").await), ("t1".into(), 1));
    p.submit(&Task::new("t2")).await;
    let t1 = p.keys.task("t1");
    p.raw(&["DEL", &t1]).await;
    let r = p.complete("w1", "t1", 1, 0, DONE, true, &[]).await;
    assert_eq!(r.status, WriteStatus::NotFound);
    assert!(r.next.is_none(), "{r:?}");
    assert_eq!(p.free("w1").await, 1.0);
    assert!(p.owned("w1").await.is_empty());
    assert_eq!(p.field("t2", "st").await.as_deref(), Some("queued"));
}

#[tokio::test]
async fn a_complete_that_ends_no_ownership_frees_no_slot() {
    let redis = RedisServer::start();
    let mut p = registered(&redis, 1).await;
    let mut once = Task::new("t1");
    once.max_attempts = 1;
    p.submit(&once).await;
    assert_eq!(task_of(p.pop("w1").await), ("t1".into(), 1));
    // The worker's lease lapses: it is reaped and t1, on its last attempt,
    // fails as worker_lost.
    let workers = p.keys.workers();
    p.raw(&["ZADD", &workers, "XX", "1", "w1"]).await;
    p.housekeep().await;
    assert_eq!(p.field("t1", "st").await.as_deref(), Some("failed"));
    // The process comes back under its id and takes t2 with its one slot.
    let r = p.register("w1", "i2", 1, &[]).await;
    assert!(matches!(r, BeatReply::Ok(_)), "{r:?}");
    p.submit(&Task::new("t2")).await;
    assert_eq!(task_of(p.pop("w1").await), ("t2".into(), 1));
    p.submit(&Task::new("t3")).await;
    // The old attempt's complete arrives late: it owned nothing any more,
    // so it frees nothing and takes nothing.
    let late = p.complete("w1", "t1", 1, 0, DONE, true, &[]).await;
    assert!(late.next.is_none(), "{late:?}");
    assert_eq!(p.free("w1").await, 0.0);
    assert_eq!(p.owned("w1").await, vec!["t2".to_string()]);
    assert_eq!(p.field("t3", "st").await.as_deref(), Some("queued"));
    assert_eq!(p.field("t1", "st").await.as_deref(), Some("failed"));
}

async fn redis_ms(p: &mut Proto) -> u64 {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut p.conn).await.unwrap();
    secs * 1000 + micros / 1000
}

#[tokio::test]
async fn a_retryable_failure_backs_off_250_ms_and_doubles_per_failure() {
    let redis = RedisServer::start();
    let mut p = registered(&redis, 1).await;
    let mut t = Task::new("t1");
    t.max_attempts = 5;
    p.submit(&t).await;
    let delayed = p.keys.delayed();
    for (attempt, backoff) in [(1u64, 250u64), (2, 500)] {
        assert_eq!(task_of(p.pop("w1").await), ("t1".into(), attempt));
        let before = redis_ms(&mut p).await;
        let r = p
            .complete("w1", "t1", attempt, 0, CompleteOutcome::Retry, true, &[])
            .await;
        let after = redis_ms(&mut p).await;
        assert_eq!(r.state, Some(TaskState::Queued));
        let due: f64 = redis::cmd("ZSCORE")
            .arg(&delayed)
            .arg("t1")
            .query_async(&mut p.conn)
            .await
            .unwrap();
        let due = due as u64;
        assert!(
            before + backoff <= due && due <= after + backoff,
            "attempt {attempt}: due {due}, expected {backoff} ms after [{before}, {after}]"
        );
        // Past the backoff, upkeep hands it back (the only worker).
        while redis_ms(&mut p).await <= due {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        p.housekeep().await;
    }
}

#[tokio::test]
async fn the_worker_entry_says_whether_it_takes_work_as_documented() {
    let redis = RedisServer::start();
    let mut p = registered(&redis, 1).await;
    let key = p.keys.worker("w1");
    let fields = |h: std::collections::HashMap<String, String>| {
        (h.get("acc").cloned(), h.get("state").cloned())
    };
    let h: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(&key)
        .query_async(&mut p.conn)
        .await
        .unwrap();
    assert_eq!(fields(h), (Some("1".into()), Some("idle".into())));
    let r = p.heartbeat("w1", "i1", 1, false, &[]).await;
    assert!(matches!(r, BeatReply::Ok(_)), "{r:?}");
    let h: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(&key)
        .query_async(&mut p.conn)
        .await
        .unwrap();
    assert_eq!(fields(h), (Some("0".into()), Some("paused".into())));
    assert_eq!(p.free("w1").await, 0.0);
}

#[tokio::test]
async fn a_read_returns_one_full_page_of_chunks_and_the_rest_from_where_it_ended() {
    use rtq_core::protocol::READ_PAGE;
    let redis = RedisServer::start();
    let mut p = registered(&redis, 1).await;
    p.submit(&Task::new("t1")).await;
    assert_eq!(task_of(p.pop("w1").await), ("t1".into(), 1));
    let total = READ_PAGE + READ_PAGE / 2;
    let mut written = 0;
    while written < total {
        let batch: Vec<Vec<u8>> = (written..(written + 500).min(total))
            .map(|i| i.to_string().into_bytes())
            .collect();
        let r = p.chunk("w1", "t1", 1, written, &batch).await;
        assert_eq!(r.status, WriteStatus::Ok);
        written += batch.len() as u64;
    }
    let read = |from| rtq_core::functions::watch::Read { id: "t1", from };
    let page = p.call(&read(0)).await.unwrap().unwrap();
    assert_eq!((page.chunk_count, page.first), (total, 0));
    assert_eq!(page.chunks.len() as u64, READ_PAGE);
    assert_eq!(
        page.chunks.last().unwrap(),
        &(READ_PAGE - 1).to_string().into_bytes()
    );
    let rest = p.call(&read(READ_PAGE)).await.unwrap().unwrap();
    assert_eq!(rest.first, READ_PAGE);
    assert_eq!(rest.chunks.len() as u64, total - READ_PAGE);
    assert_eq!(rest.chunks[0], READ_PAGE.to_string().into_bytes());
}

#[tokio::test]
async fn a_new_task_has_no_chunk_times_or_output() {
    let redis = RedisServer::start();
    let mut p = registered(&redis, 1).await;
    // Handed out by the submit itself (one write creates it running), then
    // one that waits in pending.
    p.submit(&Task::new("direct")).await;
    p.submit(&Task::new("queued")).await;
    assert_eq!(p.field("direct", "st").await.as_deref(), Some("running"));
    assert_eq!(p.field("queued", "st").await.as_deref(), Some("queued"));
    // Revision 11 writes no zero counters: absent reads as zero.
    for id in ["queued", "direct"] {
        let h = p.hash(id).await;
        for field in ["fc", "lc", "nc", "nb", "fails"] {
            assert_eq!(
                h.get(field).map_or("0", String::as_str),
                "0",
                "{id} {field}: {h:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_watch_on_a_task_with_a_deadline_expires_with_the_task() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    let mut t = Task::new("t1");
    t.timeout_ms = 60_000;
    p.submit(&t).await;
    let reply = p.create_reply_stream("c1").await;
    let watched = p
        .call(&rtq_core::functions::watch::Watch {
            id: "t1",
            reply: &reply,
            from: 0,
        })
        .await
        .unwrap();
    assert!(watched.is_some());
    let task_ttl = support::pttl(&mut p.conn, &p.keys.task("t1")).await;
    let watch_ttl = support::pttl(&mut p.conn, &p.keys.watchers("t1")).await;
    assert!(task_ttl > 0, "a task with a deadline has a TTL: {task_ttl}");
    assert!(
        watch_ttl > 0 && watch_ttl <= task_ttl,
        "the watchers set lives no longer than its task: {watch_ttl} vs {task_ttl}"
    );
}

#[tokio::test]
async fn a_refused_chunk_write_names_the_task_state_and_its_chunk_count() {
    let redis = RedisServer::start();
    let mut p = registered(&redis, 1).await;
    p.submit(&Task::new("t1")).await;
    assert_eq!(task_of(p.pop("w1").await), ("t1".into(), 1));
    let r = p
        .chunk("w1", "t1", 1, 0, &[b"a".to_vec(), b"b".to_vec()])
        .await;
    assert_eq!(r.status, WriteStatus::Ok);
    // Out of order: the reply names the stored count to resend from.
    let r = p.chunk("w1", "t1", 1, 5, &[b"x".to_vec()]).await;
    assert_eq!(
        (r.status, r.chunks, r.state),
        (WriteStatus::Order, 2, Some(TaskState::Running))
    );
    // Cancelled meanwhile: the reply says so, with the count it kept.
    p.cancel("t1").await;
    let r = p.chunk("w1", "t1", 1, 2, &[b"c".to_vec()]).await;
    assert_eq!(
        (r.status, r.chunks, r.state),
        (WriteStatus::Ended, 2, Some(TaskState::Cancelled))
    );
    assert_eq!(
        p.list(&p.keys.output("t1")).await,
        vec![b"a".to_vec(), b"b".to_vec()]
    );
    // Gone: no count, no state.
    let t1 = p.keys.task("t1");
    p.raw(&["DEL", &t1]).await;
    let r = p.chunk("w1", "t1", 1, 2, &[b"c".to_vec()]).await;
    assert_eq!(
        (r.status, r.chunks, r.state),
        (WriteStatus::NotFound, 0, None)
    );
}

#[tokio::test]
async fn a_worker_that_leaves_takes_its_inbox_and_owned_set_with_it() {
    let redis = RedisServer::start();
    let mut p = registered(&redis, 2).await;
    // Handed out, still unread in the inbox.
    p.submit(&Task::new("t1")).await;
    assert_eq!(p.owned("w1").await, vec!["t1".to_string()]);
    let r = p
        .release(
            "w1",
            "i1",
            rtq_core::functions::release::ReleaseMode::Leave,
            &[],
        )
        .await;
    assert!(
        matches!(r, rtq_core::functions::release::ReleaseReply::Ok { .. }),
        "{r:?}"
    );
    assert_eq!(p.field("t1", "st").await.as_deref(), Some("queued"));
    for key in [p.keys.inbox("w1"), p.keys.worker_tasks("w1")] {
        let exists: bool = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut p.conn)
            .await
            .unwrap();
        assert!(!exists, "{key} is left behind");
    }
    assert!(p.zset(&p.keys.free()).await.is_empty());
}

#[tokio::test]
async fn a_watch_on_a_task_without_a_deadline_keeps_its_watchers() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    p.submit(&Task::new("t1")).await;
    let reply = p.create_reply_stream("c1").await;
    let watched = p
        .call(&rtq_core::functions::watch::Watch {
            id: "t1",
            reply: &reply,
            from: 0,
        })
        .await
        .unwrap();
    assert!(watched.is_some());
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg(p.keys.watchers("t1"))
        .query_async(&mut p.conn)
        .await
        .unwrap();
    assert_eq!(members, vec![reply]);
    assert_eq!(support::pttl(&mut p.conn, &p.keys.watchers("t1")).await, -1);
}

#[tokio::test]
async fn a_task_waiting_for_its_retry_has_no_chunk_times_or_output() {
    let redis = RedisServer::start();
    let mut p = registered(&redis, 1).await;
    p.submit(&Task::new("t1")).await;
    assert_eq!(task_of(p.pop("w1").await), ("t1".into(), 1));
    let r = p.chunk("w1", "t1", 1, 0, &[b"a".to_vec()]).await;
    assert_eq!(r.status, WriteStatus::Ok);
    let r = p
        .complete("w1", "t1", 1, 1, CompleteOutcome::Retry, false, &[])
        .await;
    assert_eq!(r.state, Some(TaskState::Queued));
    let h = p.hash("t1").await;
    for field in ["fc", "lc", "nc", "nb"] {
        assert_eq!(h[field], "0", "{field} while waiting: {h:?}");
    }
    assert!(p.list(&p.keys.output("t1")).await.is_empty());
}

#[tokio::test]
async fn upkeep_counts_each_overdue_task_it_ends_once() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    for id in ["t1", "t2", "t3"] {
        let mut t = Task::new(id);
        t.timeout_ms = 1;
        p.submit(&t).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let report = p.housekeep().await;
    assert_eq!(report.expired, 3);
    for id in ["t1", "t2", "t3"] {
        assert_eq!(p.field(id, "st").await.as_deref(), Some("expired"));
    }
}

#[tokio::test]
async fn upkeep_on_a_paused_queue_hands_out_nothing_and_says_so() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    use rtq_core::functions::queue_admin::Pause;
    p.call(&Pause { paused: true }).await.unwrap();
    p.submit(&Task::new("t1")).await;
    let r = p.register("w1", "i1", 1, &[]).await;
    assert!(matches!(r, BeatReply::Ok(_)), "{r:?}");
    let report = p.housekeep().await;
    assert_eq!(report.dispatched, 0);
    assert_eq!(p.field("t1", "st").await.as_deref(), Some("queued"));
    assert!(p.pop("w1").await.is_none());
}

#[tokio::test]
async fn watching_a_task_that_already_ended_registers_no_watcher() {
    let redis = RedisServer::start();
    let mut p = registered(&redis, 1).await;
    p.submit(&Task::new("t1")).await;
    assert_eq!(task_of(p.pop("w1").await), ("t1".into(), 1));
    p.complete("w1", "t1", 1, 0, DONE, false, &[]).await;
    let reply = p.create_reply_stream("c1").await;
    let watched = p
        .call(&rtq_core::functions::watch::Watch {
            id: "t1",
            reply: &reply,
            from: 0,
        })
        .await
        .unwrap()
        .expect("the task exists");
    assert_eq!(watched.state, TaskState::Done);
    let exists: bool = redis::cmd("EXISTS")
        .arg(p.keys.watchers("t1"))
        .query_async(&mut p.conn)
        .await
        .unwrap();
    assert!(!exists, "no event will come: no watcher");
    assert_ne!(p.field("t1", "watch").await.as_deref(), Some("1"));
}

async fn stat(p: &mut Proto, bucket: i64, field: &str) -> Option<u64> {
    redis::cmd("HGET")
        .arg(p.keys.stats(bucket))
        .arg(field)
        .query_async(&mut p.conn)
        .await
        .unwrap()
}
