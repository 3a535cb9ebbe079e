//! Guards of the client and the worker runtime that no other test pinned
//! down (issue 16: found with cargo-mutants, or listed in the issue as
//! never exercised). Each test names the behaviour it guards and fails
//! when that behaviour breaks; the state is checked in Redis, not only in
//! what the client saw.
//!
//! Client side: the stream's de-duplication of chunks by index, the reply
//! reader resuming from the last entry it delivered after its connection
//! was cut, `follow` resuming a live task from a chunk position, and a
//! wait limit ending a wait on a running task.
//!
//! Worker side: heartbeat info clipped to what Redis accepts, and the
//! chunk writer's `min_bytes` / `max_delay` grouping.

mod support;

use std::time::Duration;

use futures::StreamExt;
use rtq_core::{Client, Error, Granularity, StreamEvent, TaskRequest, TaskState, WorkerConfig};
use serde_json::json;
use support::*;

fn fast(queue: &str) -> WorkerConfig {
    WorkerConfig::new(queue)
        .lease(Duration::from_millis(1000))
        .heartbeat_every(Duration::from_millis(200))
}

/// The next item of a stream, which must be a chunk: (index, text).
async fn next_chunk(stream: &mut rtq_core::TaskStream) -> (u64, String) {
    match within(stream.next()).await {
        Some(Ok(StreamEvent::Chunk(c))) => (c.index, c.text().into_owned()),
        other => panic!("expected a chunk, got {other:?}"),
    }
}

/// Appends a chunk event to a reply stream, as a worker's `rtq2_chunk`
/// would: `chunks` are the chunks from index `seq0` of `attempt`.
async fn add_chunk_event(
    conn: &mut redis::aio::MultiplexedConnection,
    reply: &str,
    id: &str,
    attempt: u64,
    seq0: u64,
    chunks: &[&str],
) {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(reply)
        .arg("*")
        .arg("t")
        .arg(id)
        .arg("a")
        .arg(attempt)
        .arg("e")
        .arg("c")
        .arg("s")
        .arg(seq0)
        .arg("n")
        .arg(chunks.len());
    for (i, c) in chunks.iter().enumerate() {
        cmd.arg(format!("c{i}")).arg(*c);
    }
    let _: String = cmd.query_async(conn).await.unwrap();
}

/// Reply events are notifications that may arrive twice (a duplicated
/// delivery, or an event overlapping chunks the stream already has): the
/// stream yields every chunk index exactly once, in order, skipping the
/// part of an event it already delivered.
#[tokio::test]
async fn a_stream_yields_each_chunk_once_when_events_repeat_or_overlap() {
    let redis = RedisServer::start();
    let mut conn = admin_conn(&redis).await;
    let (seen, mut rx) = seen_channel();
    let w = TestWorker::start(&redis.url(), fast("dd"), seen).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("dd").unwrap();
    let mut stream = q
        .stream(TaskRequest::json(
            json!({"hold": true, "chunks": 3, "chunk": "d"}),
        ))
        .await
        .unwrap();
    let id = stream.id().to_string();
    let Seen::Started { attempt, .. } = next_seen(&mut rx, 20).await else {
        panic!("the task did not start");
    };
    let reply = q.keys().reply(client.id());

    // Chunks 0 and 1 arrive first (the events the worker will send again).
    add_chunk_event(&mut conn, &reply, &id, attempt, 0, &["d0 ", "d1 "]).await;
    assert_eq!(next_chunk(&mut stream).await, (0, "d0 ".to_string()));
    assert_eq!(next_chunk(&mut stream).await, (1, "d1 ".to_string()));
    // An event overlapping what was delivered: only chunk 2 is new.
    add_chunk_event(&mut conn, &reply, &id, attempt, 1, &["X", "d2 "]).await;
    assert_eq!(next_chunk(&mut stream).await, (2, "d2 ".to_string()));
    // A repeat of an event wholly delivered: nothing new.
    add_chunk_event(&mut conn, &reply, &id, attempt, 0, &["X", "X"]).await;

    // Now the worker sends chunks 0..3 itself: all of them repeats.
    w.release.notify_one();
    let (indexes, text, done) = within(drain_stream(stream)).await;
    assert_eq!(indexes, Vec::<u64>::new(), "no chunk delivered twice");
    assert_eq!(text, "");
    assert_eq!(done.unwrap().result["echo"]["chunks"], 3);
    assert_eq!(state_of(&mut conn, &q, &id).await.as_deref(), Some("done"));
    let info = q.status(&id).await.unwrap();
    assert_eq!(info.chunks, 3, "Redis holds the three chunks once each");
    w.stop().await;
}

/// The reply reader remembers the last entry it delivered: after its
/// connection was cut, it resumes from there, so events written while it
/// was away (here all of a task's chunks and its final event) still
/// arrive. The client may not run the router's verification (no HGET), so
/// only the reader can end the stream.
#[tokio::test]
async fn a_reply_reader_cut_off_resumes_where_it_stopped_and_delivers_what_was_written_meanwhile() {
    let redis = RedisServer::start();
    let mut conn = admin_conn(&redis).await;
    let (seen, mut rx) = seen_channel();
    let w = TestWorker::start(&redis.url(), fast("rs"), seen).await;
    let client = Client::connect(&acl_user(&redis, "c", &["-hget"]))
        .await
        .unwrap();
    let q = client.queue("rs").unwrap();
    let reply = q.keys().reply(client.id());

    // A first task moves the reader past entries of its own (delivered,
    // then trimmed).
    let first = within(q.run(TaskRequest::json(json!({"chunks": 2, "chunk": "a"}))))
        .await
        .unwrap();
    assert_eq!(first.result["echo"]["chunks"], 2);
    next_seen(&mut rx, 20).await;

    let stream = q
        .stream(TaskRequest::json(
            json!({"hold": true, "chunks": 4, "chunk": "r"}),
        ))
        .await
        .unwrap();
    let id = stream.id().to_string();
    next_seen(&mut rx, 20).await;

    // Cut the client off and keep it away while the task runs to its end.
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("c")
        .arg("off")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("USER")
        .arg("c")
        .query_async(&mut conn)
        .await
        .unwrap();
    w.release.notify_one();
    wait_for_state(&conn, &q, &id, "done").await;
    let written = xrange(&mut conn, &reply).await;
    assert!(
        written
            .iter()
            .any(|(_, f)| f.get("e").map(String::as_str) == Some("f") && f.get("t") == Some(&id)),
        "the final event was written while the client was away: {written:?}"
    );

    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("c")
        .arg("on")
        .query_async(&mut conn)
        .await
        .unwrap();
    let (indexes, text, done) = within(drain_stream(stream)).await;
    assert_eq!(indexes, (0..4).collect::<Vec<_>>());
    assert_eq!(text, expected_text("r", 4));
    assert_eq!(done.unwrap().result["echo"]["chunks"], 4);
    w.stop().await;
}

/// The reply reader deletes the entries it delivered, so a busy client's
/// reply stream does not grow: once later events were read, the events of
/// earlier tasks are gone from it. (The newest entries stay until the next
/// delivery when a trim was in flight: at most one runs at a time.)
#[tokio::test]
async fn delivered_reply_events_are_trimmed_from_the_reply_stream() {
    let redis = RedisServer::start();
    let mut conn = admin_conn(&redis).await;
    let (seen, _rx) = seen_channel();
    let w = TestWorker::start(&redis.url(), fast("tr"), seen).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("tr").unwrap();
    let reply = q.keys().reply(client.id());
    let mut ids = Vec::new();
    for _ in 0..4 {
        let (out, text) = within(
            q.stream(TaskRequest::json(json!({"chunks": 5, "chunk": "t"})))
                .await
                .unwrap()
                .collect_text(),
        )
        .await
        .unwrap();
        assert_eq!(
            (out.result["echo"]["chunks"].as_u64(), text.len()),
            (Some(5), 15)
        );
        ids.push(out.id);
    }
    let earlier = ids[..2].to_vec();
    eventually("the events of the first tasks are trimmed", || {
        let mut conn = conn.clone();
        let (reply, earlier) = (reply.clone(), earlier.clone());
        async move {
            let entries = xrange(&mut conn, &reply).await;
            !entries
                .iter()
                .any(|(_, f)| f.get("t").is_some_and(|t| earlier.contains(t)))
        }
    })
    .await;
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&reply)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(exists, 1, "trimmed, not deleted");
    w.stop().await;
}

/// A caller that lost its stream resumes with `follow(id, k)`: it gets the
/// stored chunks from `k`, then the live ones, none repeated or missing,
/// then the result.
#[tokio::test]
async fn following_a_running_task_from_a_position_yields_the_rest_then_live_chunks() {
    let redis = RedisServer::start();
    let mut conn = admin_conn(&redis).await;
    let (seen, mut rx) = seen_channel();
    let w = TestWorker::start(&redis.url(), fast("fp"), seen).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("fp").unwrap();
    let id = q
        .submit(TaskRequest::json(
            json!({"hold_at": 3, "chunks": 6, "chunk": "f"}),
        ))
        .await
        .unwrap()
        .id;
    next_seen(&mut rx, 20).await;
    eventually("Redis holds the first three chunks", || {
        let q = q.clone();
        let id = id.clone();
        async move { q.status(&id).await.unwrap().chunks == 3 }
    })
    .await;

    let other = Client::connect(&redis.url()).await.unwrap();
    let mut stream = other.queue("fp").unwrap().follow(&id, 1).await.unwrap();
    assert_eq!(next_chunk(&mut stream).await, (1, "f1 ".to_string()));
    assert_eq!(next_chunk(&mut stream).await, (2, "f2 ".to_string()));
    w.release.notify_one();
    let (indexes, text, done) = within(drain_stream(stream)).await;
    assert_eq!(indexes, vec![3, 4, 5]);
    assert_eq!(text, "f3 f4 f5 ");
    assert_eq!(done.unwrap().result["echo"]["chunks"], 6);
    assert_eq!(state_of(&mut conn, &q, &id).await.as_deref(), Some("done"));
    w.stop().await;
}

/// `wait(id, Some(max))` on a task that is running when the limit passes
/// ends with `WaitTimedOut` naming the running state and its worker, and
/// leaves the task running.
#[tokio::test]
async fn a_wait_limit_on_a_running_task_ends_with_wait_timed_out_naming_its_worker() {
    let redis = RedisServer::start();
    let mut conn = admin_conn(&redis).await;
    let (seen, mut rx) = seen_channel();
    let w = TestWorker::start(&redis.url(), fast("wr"), seen).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("wr").unwrap();
    let id = q
        .submit(TaskRequest::json(json!({"hold": true})))
        .await
        .unwrap()
        .id;
    next_seen(&mut rx, 20).await;
    let err = within(q.wait(&id, Some(Duration::from_millis(300))))
        .await
        .unwrap_err();
    match err {
        Error::WaitTimedOut {
            id: got,
            state,
            worker,
            waited_ms,
        } => {
            assert_eq!(
                (got.as_str(), state, worker.as_deref()),
                (id.as_str(), TaskState::Running, Some(w.id.as_str()))
            );
            assert!(waited_ms >= 300, "waited {waited_ms} ms");
        }
        other => panic!("{other}"),
    }
    assert_eq!(
        state_of(&mut conn, &q, &id).await.as_deref(),
        Some("running")
    );
    w.release.notify_one();
    let out = within(q.wait(&id, None)).await.unwrap();
    assert_eq!(out.result["worker"], w.id.as_str());
    w.stop().await;
}

/// A worker's heartbeat carries its last error and labels, which Redis
/// refuses over 4096 bytes: a longer error is cut on a character boundary
/// and oversized labels are replaced by `{}`, so the heartbeat is still
/// accepted and the worker keeps its lease.
#[tokio::test]
async fn a_worker_s_oversized_last_error_and_labels_are_clipped_so_its_heartbeat_is_accepted() {
    let redis = RedisServer::start();
    let mut conn = admin_conn(&redis).await;
    let (seen, mut rx) = seen_channel();
    let config = fast("clip").label("big", "L".repeat(5000));
    let w = TestWorker::start(&redis.url(), config, seen).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("clip").unwrap();
    // 1 + 2 x 2500 bytes: byte 4096 falls inside a two-byte character.
    let why = format!("x{}", "é".repeat(2500));
    let err = within(q.run(TaskRequest::json(json!({ "fail": why }))))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Failed { .. }), "{err}");
    next_seen(&mut rx, 20).await;

    let worker_key = q.keys().worker(&w.id);
    eventually("a heartbeat carried the last error", || {
        let mut conn = conn.clone();
        let key = worker_key.clone();
        async move {
            let e: Option<String> = redis::cmd("HGET")
                .arg(&key)
                .arg("last_error")
                .query_async(&mut conn)
                .await
                .unwrap();
            e.is_some_and(|e| !e.is_empty())
        }
    })
    .await;
    let (last_error, labels): (String, String) = redis::cmd("HMGET")
        .arg(&worker_key)
        .arg("last_error")
        .arg("labels")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(last_error.len(), 4095, "cut before the split character");
    assert!(why.starts_with(&last_error));
    assert_eq!(labels, "{}");
    assert!(w.status.redis_ok.load(std::sync::atomic::Ordering::Acquire));
    w.stop().await;
}

/// The number of chunks Redis holds for a task's current attempt.
async fn stored_chunks(q: &rtq_core::Queue, id: &str) -> u64 {
    q.status(id).await.unwrap().chunks
}

/// With a `min_bytes` floor no chunk is held past `max_delay`: a single
/// small chunk reaches Redis while the handler is still running.
#[tokio::test]
async fn a_chunk_held_for_min_bytes_is_written_once_max_delay_passes() {
    let redis = RedisServer::start();
    let (seen, mut rx) = seen_channel();
    let mut config = fast("md");
    config.granularity = Granularity {
        max_in_flight: 1,
        min_bytes: 1 << 20,
        max_delay: Duration::from_millis(100),
    };
    let w = TestWorker::start(&redis.url(), config, seen).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("md").unwrap();
    let id = q
        .submit(TaskRequest::json(
            json!({"chunks": 1, "chunk": "m", "hold_after": true}),
        ))
        .await
        .unwrap()
        .id;
    next_seen(&mut rx, 20).await;
    eventually("the chunk reached Redis while the handler runs", || {
        let q = q.clone();
        let id = id.clone();
        async move { stored_chunks(&q, &id).await == 1 }
    })
    .await;
    let mut conn = admin_conn(&redis).await;
    assert_eq!(
        state_of(&mut conn, &q, &id).await.as_deref(),
        Some("running")
    );
    w.release.notify_one();
    let out = within(q.wait(&id, None)).await.unwrap();
    assert_eq!(out.result["echo"]["chunks"], 1);
    assert_eq!(stored_chunks(&q, &id).await, 1);
    w.stop().await;
}

/// Chunks that reach `min_bytes` are written at once, without waiting for
/// `max_delay`; what stays below the floor waits. Chunks here are "x0 ",
/// "x1 ", "x2 " (3 bytes each) with a 6-byte floor and a one-hour delay:
/// the first two go out together, the third waits for the end.
#[tokio::test]
async fn chunks_reaching_min_bytes_are_written_at_once_and_the_rest_waits() {
    let redis = RedisServer::start();
    let (seen, mut rx) = seen_channel();
    let mut config = fast("mb");
    config.granularity = Granularity {
        max_in_flight: 1,
        min_bytes: 6,
        max_delay: Duration::from_secs(3600),
    };
    let w = TestWorker::start(&redis.url(), config, seen).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("mb").unwrap();
    let id = q
        .submit(TaskRequest::json(
            json!({"chunks": 3, "chunk": "x", "hold_after": true}),
        ))
        .await
        .unwrap()
        .id;
    next_seen(&mut rx, 20).await;
    eventually("the first two chunks reached Redis", || {
        let q = q.clone();
        let id = id.clone();
        async move { stored_chunks(&q, &id).await == 2 }
    })
    .await;
    w.release.notify_one();
    let (_, text) = within(q.follow(&id, 0).await.unwrap().collect_text())
        .await
        .unwrap();
    assert_eq!(text, "x0 x1 x2 ");
    assert_eq!(stored_chunks(&q, &id).await, 3);
    w.stop().await;
}

/// The overview and the dashboard read every registered worker and every
/// free slot (not a page of them), and the dashboard's statistics buckets
/// are the same 10-second buckets `stats` reads.
#[tokio::test]
async fn the_overview_and_the_dashboard_count_every_worker_and_every_idle_slot() {
    let redis = RedisServer::start();
    let mut workers = Vec::new();
    for slots in [1, 2, 3] {
        let (seen, _rx) = seen_channel();
        workers.push(TestWorker::start(&redis.url(), fast("aw").slots(slots), seen).await);
    }
    let client = Client::connect(&redis.url()).await.unwrap();
    let admin = rtq_core::admin::Admin::new(&client);
    let q = client.queue("aw").unwrap();
    within(q.run(TaskRequest::json(json!(1)))).await.unwrap();
    eventually("every slot is idle again", || {
        let admin = &admin;
        async move { admin.overview("aw").await.unwrap().idle_slots == 6 }
    })
    .await;
    let o = admin.overview("aw").await.unwrap();
    assert_eq!((o.workers_alive, o.workers_stale), (3, 0));

    eventually("the worker's statistics arrive", || {
        let admin = &admin;
        async move { admin.stats("aw", 3).await.unwrap().sum("done") == 1 }
    })
    .await;
    let board = admin.dashboard(3).await.unwrap();
    let (o, s) = board.iter().find(|(o, _)| o.name == "aw").unwrap();
    assert_eq!((o.workers_alive, o.idle_slots), (3, 6));
    let stats = admin.stats("aw", 3).await.unwrap();
    let starts = |s: &rtq_core::admin::QueueStats| -> Vec<i64> {
        s.buckets.iter().map(|b| b.start_ms).collect()
    };
    assert_eq!(starts(s).len(), 3);
    let newest = *starts(s).last().unwrap();
    assert_eq!(newest % 10_000, 0);
    assert!(newest <= o.now_ms && o.now_ms < newest + 10_000);
    assert_eq!(s.sum("done"), 1);
    assert!(starts(&stats).iter().all(|b| b % 10_000 == 0));
    for w in workers {
        w.stop().await;
    }
}

/// Purge works in batches of 500: a backlog larger than one batch is
/// emptied completely, and the count covers every batch.
#[tokio::test]
async fn purging_a_backlog_larger_than_one_batch_cancels_every_queued_task() {
    let redis = RedisServer::start();
    let mut conn = admin_conn(&redis).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let admin = rtq_core::admin::Admin::new(&client);
    let q = client.queue("pg").unwrap();
    let mut last = String::new();
    for _ in 0..501 {
        last = q.submit(TaskRequest::json(json!(1))).await.unwrap().id;
    }
    assert_eq!(within(admin.purge("pg")).await.unwrap(), 501);
    let pending: u64 = redis::cmd("ZCARD")
        .arg(q.keys().pending())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(pending, 0);
    assert_eq!(
        state_of(&mut conn, &q, &last).await.as_deref(),
        Some("cancelled")
    );
}

/// `Admin::housekeeping` repeats rounds only while a round was busy: on a
/// queue with nothing to do it calls Redis once.
#[tokio::test]
async fn admin_housekeeping_with_nothing_to_do_runs_one_round() {
    let redis = RedisServer::start();
    let mut conn = admin_conn(&redis).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let admin = rtq_core::admin::Admin::new(&client);
    client.queue("hk").unwrap();
    log_every_command(&mut conn).await;
    let report = within(admin.housekeeping("hk")).await.unwrap();
    assert_eq!(
        (report.reaped, report.expired, report.dispatched),
        (0, 0, 0)
    );
    let rounds = command_log(&mut conn)
        .await
        .iter()
        .filter(|args| {
            args.len() > 1 && args[0].eq_ignore_ascii_case("fcall") && args[1] == "rtq2_housekeep"
        })
        .count();
    assert_eq!(rounds, 1);
}

/// A running task whose hash vanished from Redis (data loss, a stray DEL)
/// is stopped at the worker's next heartbeat as gone ("the task no longer
/// exists"), its slot freed, and the heartbeat keeps working.
#[tokio::test]
async fn a_running_task_whose_hash_vanished_is_stopped_as_gone_at_the_next_heartbeat() {
    let redis = RedisServer::start();
    let mut conn = admin_conn(&redis).await;
    let (seen, mut rx) = seen_channel();
    let w = TestWorker::start(&redis.url(), fast("gn"), seen).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("gn").unwrap();
    let id = q
        .submit(TaskRequest::json(json!({"hold": true})))
        .await
        .unwrap()
        .id;
    next_seen(&mut rx, 20).await;
    let _: i64 = redis::cmd("DEL")
        .arg(q.keys().task(&id))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        next_seen(&mut rx, 20).await,
        Seen::Cancelled {
            id: id.clone(),
            reason: "the task no longer exists".into()
        }
    );
    eventually("the slot is free again", || async {
        w.status.busy.load(std::sync::atomic::Ordering::Acquire) == 0
    })
    .await;
    assert!(w.status.redis_ok.load(std::sync::atomic::Ordering::Acquire));
    assert_eq!(state_of(&mut conn, &q, &id).await, None);
    w.stop().await;
}

/// A stream that missed a task's "requeued" event (its reader was away
/// and the event is gone) still switches to the new attempt when that
/// attempt's chunks arrive: it announces the abandoned attempt (the
/// caller holds its chunks) with `Restarted`, then the new attempt's
/// chunks from index 0, none skipped because the old attempt had already
/// delivered as many.
#[tokio::test]
async fn a_stream_that_missed_the_requeue_event_switches_to_the_new_attempt_from_index_0() {
    let redis = RedisServer::start();
    let mut conn = admin_conn(&redis).await;
    let (seen, mut rx) = seen_channel();
    let w = TestWorker::start(&redis.url(), fast("sw"), seen).await;
    let client = Client::connect(&acl_user(&redis, "c", &[])).await.unwrap();
    let q = client.queue("sw").unwrap();
    let reply = q.keys().reply(client.id());
    let mut stream = q
        .stream(TaskRequest::json(
            json!({"chunks": 3, "chunk": "s", "hold_after": true}),
        ))
        .await
        .unwrap();
    let id = stream.id().to_string();
    for i in 0..3 {
        assert_eq!(next_chunk(&mut stream).await, (i, format!("s{i} ")));
    }

    // The client goes away; an operator requeues the task; attempt 2 runs
    // to its hold, writing its chunks while the client is away.
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("c")
        .arg("off")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("USER")
        .arg("c")
        .query_async(&mut conn)
        .await
        .unwrap();
    let admin_client = Client::connect(&redis.url()).await.unwrap();
    let operator = rtq_core::admin::Admin::new(&admin_client);
    operator.requeue("sw", &id).await.unwrap();
    let mut seen_events = Vec::new();
    while !seen_events
        .iter()
        .any(|s| matches!(s, Seen::Started { attempt: 2, .. }))
    {
        assert!(
            seen_events.len() < 5,
            "attempt 2 never started: {seen_events:?}"
        );
        seen_events.push(next_seen(&mut rx, 20).await);
    }
    let oq = admin_client.queue("sw").unwrap();
    eventually("attempt 2 wrote its chunks", || {
        let q = oq.clone();
        let id = id.clone();
        async move {
            let info = q.status(&id).await.unwrap();
            info.attempt == 2 && info.chunks == 3
        }
    })
    .await;
    // The "requeued" event is lost.
    for (entry, fields) in xrange(&mut conn, &reply).await {
        if fields.get("e").map(String::as_str) == Some("q") {
            let _: i64 = redis::cmd("XDEL")
                .arg(&reply)
                .arg(&entry)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    }
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("c")
        .arg("on")
        .query_async(&mut conn)
        .await
        .unwrap();
    w.release.notify_one();
    let mut got = Vec::new();
    let mut restarts = Vec::new();
    loop {
        match within(stream.next()).await {
            Some(Ok(StreamEvent::Chunk(c))) => {
                got.push((c.attempt, c.index, c.text().into_owned()))
            }
            Some(Ok(StreamEvent::Restarted {
                attempt,
                next_attempt,
                ..
            })) => {
                assert!(got.is_empty(), "announced before the new chunks");
                restarts.push((attempt, next_attempt));
            }
            Some(Ok(StreamEvent::Done(out))) => {
                assert_eq!(out.attempt, 2);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(restarts, vec![(1, 2)]);
    assert_eq!(
        got,
        (0..3).map(|i| (2, i, format!("s{i} "))).collect::<Vec<_>>()
    );
    assert_eq!(state_of(&mut conn, &q, &id).await.as_deref(), Some("done"));
    w.stop().await;
}

/// A handler that returns on its own as soon as its task is stopped (the
/// usual cooperative handler) is not polled again afterwards: the cancel
/// grace wait is only for handlers that have not returned. Polling a
/// finished future panics ("`async fn` resumed after completion"); the
/// panic was caught and only printed, so the test counts panics through a
/// chained panic hook.
#[tokio::test]
async fn a_handler_that_returns_when_stopped_is_not_polled_again() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static REPOLLS: AtomicUsize = AtomicUsize::new(0);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.to_string().contains("resumed after completion") {
            REPOLLS.fetch_add(1, Ordering::SeqCst);
        }
        previous(info);
    }));

    let redis = RedisServer::start();
    let (seen, mut rx) = seen_channel();
    let w = TestWorker::start(&redis.url(), fast("rp"), seen).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("rp").unwrap();
    for _ in 0..3 {
        let id = q
            .submit(TaskRequest::json(json!({"hold": true})))
            .await
            .unwrap()
            .id;
        assert!(matches!(next_seen(&mut rx, 20).await, Seen::Started { .. }));
        q.cancel(&id, "enough").await.unwrap();
        assert!(matches!(
            next_seen(&mut rx, 20).await,
            Seen::Cancelled { .. }
        ));
        eventually("the slot is free again", || async {
            w.status.busy.load(Ordering::Acquire) == 0
        })
        .await;
    }
    assert_eq!(REPOLLS.load(Ordering::SeqCst), 0);
    w.stop().await;
}

/// The worker's heartbeat reports its state for the console: `busy` while
/// it runs a task, `idle` once it is done, and how many tasks it finished.
#[tokio::test]
async fn the_heartbeat_reports_busy_while_a_task_runs_and_idle_after() {
    let redis = RedisServer::start();
    let conn = admin_conn(&redis).await;
    let (seen, mut rx) = seen_channel();
    let w = TestWorker::start(&redis.url(), fast("bz"), seen).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("bz").unwrap();
    let worker_key = q.keys().worker(&w.id);
    let state_is = |want: &'static str| {
        let (conn, key) = (conn.clone(), worker_key.clone());
        move || {
            let (mut conn, key) = (conn.clone(), key.clone());
            async move {
                let state: Option<String> = redis::cmd("HGET")
                    .arg(&key)
                    .arg("state")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                state.as_deref() == Some(want)
            }
        }
    };
    eventually("idle before any task", state_is("idle")).await;
    let id = q
        .submit(TaskRequest::json(json!({"hold": true})))
        .await
        .unwrap()
        .id;
    next_seen(&mut rx, 20).await;
    eventually("busy while the task runs", state_is("busy")).await;
    w.release.notify_one();
    within(q.wait(&id, None)).await.unwrap();
    eventually("idle again", state_is("idle")).await;
    eventually("the heartbeat counts the finished task", || {
        let (mut conn, key) = (conn.clone(), worker_key.clone());
        async move {
            let done: Option<String> = redis::cmd("HGET")
                .arg(&key)
                .arg("done")
                .query_async(&mut conn)
                .await
                .unwrap();
            done.as_deref() == Some("1")
        }
    })
    .await;
    w.stop().await;
}

/// A task still running when a draining worker's grace period ends is
/// handed back, not failed: it is queued again (the started attempt is
/// used up and recorded as interrupted), and another worker runs it to its
/// result.
#[tokio::test]
async fn a_task_running_past_the_drain_grace_is_handed_back_not_failed() {
    let redis = RedisServer::start();
    let mut conn = admin_conn(&redis).await;
    let (seen, mut rx) = seen_channel();
    let config = fast("hb").grace(Duration::from_millis(100));
    let w = TestWorker::start(&redis.url(), config, seen).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("hb").unwrap();
    let id = q
        .submit(TaskRequest::json(json!({"hold": true})))
        .await
        .unwrap()
        .id;
    next_seen(&mut rx, 20).await;
    within(w.stop()).await;
    assert_eq!(
        state_of(&mut conn, &q, &id).await.as_deref(),
        Some("queued")
    );
    let info = q.status(&id).await.unwrap();
    assert!(
        info.attempt_errors[&1].starts_with("interrupted:"),
        "{:?}",
        info.attempt_errors
    );

    let (seen, mut rx2) = seen_channel();
    let other = TestWorker::start(&redis.url(), fast("hb"), seen).await;
    assert!(matches!(
        next_seen(&mut rx2, 20).await,
        Seen::Started { attempt: 2, .. }
    ));
    other.release.notify_one();
    let out = within(q.wait(&id, None)).await.unwrap();
    assert_eq!(out.result["worker"], other.id.as_str());
    other.stop().await;
}

/// A panicking handler fails its task with the panic's own message, and
/// the worker keeps serving.
#[tokio::test]
async fn a_handler_panic_fails_the_task_with_the_panic_message() {
    let redis = RedisServer::start();
    let mut conn = admin_conn(&redis).await;
    let (seen, _rx) = seen_channel();
    let w = TestWorker::start(&redis.url(), fast("pm"), seen).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("pm").unwrap();
    let err = within(q.run(TaskRequest::json(json!({"panic": true})).id("p1")))
        .await
        .unwrap_err();
    match &err {
        Error::Failed { reason, .. } => assert_eq!(reason, "handler panicked: scripted panic"),
        other => panic!("{other}"),
    }
    assert_eq!(
        state_of(&mut conn, &q, "p1").await.as_deref(),
        Some("failed")
    );
    let out = within(q.run(TaskRequest::json(json!({"after": 1}))))
        .await
        .unwrap();
    assert_eq!(out.result["echo"]["after"], 1);
    w.stop().await;
}

/// The admin reads an operator sees: each worker's owned tasks (and a
/// heartbeat age on the Redis clock), the running tasks, and the age of
/// the oldest queued task.
#[tokio::test]
async fn admin_reads_name_each_worker_s_tasks_the_running_tasks_and_the_head_s_age() {
    let redis = RedisServer::start();
    let mut conn = admin_conn(&redis).await;
    let (seen, mut rx) = seen_channel();
    let w = TestWorker::start(&redis.url(), fast("ar").slots(2), seen).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let admin = rtq_core::admin::Admin::new(&client);
    let q = client.queue("ar").unwrap();
    let mut running = Vec::new();
    for _ in 0..2 {
        running.push(
            q.submit(TaskRequest::json(json!({"hold": true})))
                .await
                .unwrap()
                .id,
        );
        next_seen(&mut rx, 20).await;
    }
    running.sort();
    let queued = q.submit(TaskRequest::json(json!(1))).await.unwrap().id;
    // The queued task was submitted 5 s ago, by its hash.
    let now_ms = admin.overview("ar").await.unwrap().now_ms;
    let _: i64 = redis::cmd("HSET")
        .arg(q.keys().task(&queued))
        .arg("sub")
        .arg(now_ms - 5_000)
        .query_async(&mut conn)
        .await
        .unwrap();

    let workers = admin.workers("ar").await.unwrap();
    assert_eq!(workers.len(), 1);
    assert_eq!(workers[0].tasks, running);
    let age = workers[0].heartbeat_age_ms(now_ms).unwrap();
    assert!((-1_000..60_000).contains(&age), "heartbeat age {age} ms");

    let tasks = admin.running("ar").await.unwrap();
    let ids: Vec<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, running.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(tasks.iter().all(|t| t.state == TaskState::Running));

    let head = admin.overview("ar").await.unwrap().head_wait_ms.unwrap();
    assert!((5_000..65_000).contains(&head), "head waited {head} ms");
    let board = admin.dashboard(1).await.unwrap();
    let head = board[0].0.head_wait_ms.unwrap();
    assert!((5_000..65_000).contains(&head), "head waited {head} ms");

    for _ in 0..3 {
        w.release.notify_one();
    }
    w.stop().await;
}

/// One housekeeping round ends at most 100 overdue tasks; the admin's
/// `housekeeping` keeps going while a round was that busy, so a backlog of
/// 150 overdue tasks ends in one call.
#[tokio::test]
async fn admin_housekeeping_repeats_rounds_until_every_overdue_task_ended() {
    let redis = RedisServer::start();
    let mut conn = admin_conn(&redis).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let admin = rtq_core::admin::Admin::new(&client);
    let q = client.queue("od").unwrap();
    let mut last = 0;
    for _ in 0..150 {
        let sub = q
            .submit(TaskRequest::json(json!(1)).timeout(Duration::from_millis(1)))
            .await
            .unwrap();
        last = last.max(sub.deadline_ms);
    }
    eventually("every deadline passed on the Redis clock", || {
        let mut conn = conn.clone();
        async move {
            let (s, us): (i64, i64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
            s * 1000 + us / 1000 > last
        }
    })
    .await;
    let report = within(admin.housekeeping("od")).await.unwrap();
    assert_eq!(report.expired, 150);
    let pending: u64 = redis::cmd("ZCARD")
        .arg(q.keys().pending())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(pending, 0);
}

/// A running task whose deadline passes while nobody waits for it ends as
/// expired (the worker records the expiry in Redis), never as a failure of
/// its handler.
#[tokio::test]
async fn a_running_task_past_its_deadline_with_nobody_waiting_ends_expired() {
    let redis = RedisServer::start();
    let mut conn = admin_conn(&redis).await;
    let (seen, mut rx) = seen_channel();
    let w = TestWorker::start(&redis.url(), fast("dl"), seen).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("dl").unwrap();
    let id = q
        .submit(TaskRequest::json(json!({"hold": true})).timeout(Duration::from_millis(300)))
        .await
        .unwrap()
        .id;
    next_seen(&mut rx, 20).await;
    assert!(matches!(
        next_seen(&mut rx, 20).await,
        Seen::Cancelled { .. }
    ));
    wait_for_state(&conn, &q, &id, "expired").await;
    let info = q.status(&id).await.unwrap();
    assert_eq!(info.failures, 0, "{:?}", info.attempt_errors);
    assert_eq!(
        state_of(&mut conn, &q, &id).await.as_deref(),
        Some("expired")
    );
    w.stop().await;
}

/// A task submitted by reference reaches the handler as that reference.
#[tokio::test]
async fn a_task_submitted_by_reference_reaches_the_handler_as_its_reference() {
    let redis = RedisServer::start();
    let (seen, _rx) = seen_channel();
    let w = TestWorker::start(&redis.url(), fast("rf"), seen).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("rf").unwrap();
    let out = within(q.run(TaskRequest::reference("s3://bucket/audio.wav")))
        .await
        .unwrap();
    assert_eq!(out.result["input_ref"], "s3://bucket/audio.wav");
    assert_eq!(
        q.status(&out.id)
            .await
            .unwrap()
            .spec
            .unwrap()
            .input_ref
            .as_deref(),
        Some("s3://bucket/audio.wav")
    );
    w.stop().await;
}

/// One write carries at most 256 KiB: six buffered chunks of 100 KB go out
/// as several writes (two chunks each), not as one call of 600 KB.
#[tokio::test]
async fn a_burst_of_big_chunks_is_split_into_writes_of_at_most_256_kib() {
    let redis = RedisServer::start();
    let mut conn = admin_conn(&redis).await;
    let (seen, _rx) = seen_channel();
    let mut config = fast("bw");
    config.granularity = Granularity {
        max_in_flight: 1,
        min_bytes: 1 << 20,
        max_delay: Duration::from_secs(3600),
    };
    let w = TestWorker::start(&redis.url(), config, seen).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("bw").unwrap();
    log_every_command(&mut conn).await;
    let big = "x".repeat(100_000);
    let out = within(q.run(TaskRequest::json(json!({"chunks": 6, "chunk": big}))))
        .await
        .unwrap();
    assert_eq!(q.status(&out.id).await.unwrap().chunks, 6);
    let writes = calls(&mut conn, "rtq2_chunk", &out.id).await;
    assert_eq!(
        writes, 2,
        "two writes of two chunks, the last two with the complete"
    );
    w.stop().await;
}
