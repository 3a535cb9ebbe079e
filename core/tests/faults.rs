//! Fault injection on a real redis-server: dead workers, stale writers,
//! deadlines, cancellation, cut connections, a restarted Redis, and the
//! keys left behind afterwards.

mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use rtq_core::admin::Admin;
use rtq_core::{Client, Error, StreamEvent, TaskRequest, TaskState, TimeoutPhase, WorkerConfig};
use serde_json::json;
use support::*;

fn fast(queue: &str) -> WorkerConfig {
    let mut c = WorkerConfig::new(queue).lease(Duration::from_millis(1000));
    c.heartbeat_every = Some(Duration::from_millis(200));
    c
}

#[tokio::test]
async fn a_killed_worker_s_task_is_finished_elsewhere_with_one_result() {
    let redis = RedisServer::start();
    let (seen, mut rx) = seen_channel();
    let a = KillableWorker::start(&redis.url(), fast("k"), seen.clone()).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("k").unwrap();
    let mut stream = q
        .stream(TaskRequest::json(json!({"hold": true, "chunks": 3})).max_attempts(3))
        .await
        .unwrap();
    assert_eq!(
        next_seen(&mut rx, 20).await,
        Seen::Started {
            id: stream.id().to_string(),
            attempt: 1,
            worker: a.id.clone()
        }
    );
    let killed_at = Instant::now();
    a.kill();
    let b = TestWorker::start(&redis.url(), fast("k"), seen).await;
    let Seen::Started {
        attempt, worker, ..
    } = next_seen(&mut rx, 20).await
    else {
        panic!()
    };
    println!("kill -> running elsewhere: {:?}", killed_at.elapsed());
    assert_eq!((attempt, worker.as_str()), (2, b.id.as_str()));
    b.release.notify_one();

    let mut events = Vec::new();
    within(async {
        while let Some(item) = stream.next().await {
            events.push(item.unwrap());
        }
    })
    .await;
    assert!(
        matches!(&events[0], StreamEvent::Restarted { attempt: 1, .. }),
        "{events:?}"
    );
    let chunks: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Chunk(c) => Some(c.attempt),
            _ => None,
        })
        .collect();
    assert_eq!(chunks, vec![2, 2, 2]);
    let finals: Vec<_> = events
        .iter()
        .filter(|e| matches!(e, StreamEvent::Done(_)))
        .collect();
    assert_eq!(finals.len(), 1, "exactly one final result");
    let StreamEvent::Done(out) = finals[0] else {
        unreachable!()
    };
    assert_eq!(out.result["worker"], b.id.as_str());
    b.stop().await;
}

#[tokio::test]
async fn a_worker_lost_on_the_last_attempt_fails_as_worker_lost() {
    let redis = RedisServer::start();
    let (seen, mut rx) = seen_channel();
    let a = KillableWorker::start(&redis.url(), fast("wl"), seen).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("wl").unwrap();
    let waiting = tokio::spawn({
        let q = q.clone();
        async move {
            q.run(TaskRequest::json(json!({"hold": true})).max_attempts(1))
                .await
        }
    });
    next_seen(&mut rx, 20).await;
    let a_id = a.id.clone();
    a.kill();
    // No other worker exists: the waiting client's own housekeeping notices.
    let err = within(waiting).await.unwrap().unwrap_err();
    match err {
        Error::WorkerLost { worker, .. } => assert_eq!(worker, a_id),
        other => panic!("{other}"),
    }
}

#[tokio::test]
async fn a_stale_worker_s_late_writes_are_fenced() {
    let redis = RedisServer::start();
    let (seen, mut rx) = seen_channel();
    // Worker A renews its lease rarely, so the test can expire it by hand,
    // as if the process had been paused.
    let mut slow = WorkerConfig::new("fence").lease(Duration::from_secs(60));
    slow.heartbeat_every = Some(Duration::from_secs(30));
    let a = TestWorker::start(&redis.url(), slow, seen.clone()).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("fence").unwrap();
    let stream = q
        .stream(TaskRequest::json(
            json!({"hold": true, "chunks": 3, "chunk": "x"}),
        ))
        .await
        .unwrap();
    let id = stream.id().to_string();
    next_seen(&mut rx, 20).await;

    // A's lease "expires": the reaper requeues the task, B takes attempt 2.
    let mut conn = redis.conn();
    let _: () = redis::cmd("ZADD")
        .arg(q.keys().workers())
        .arg(0)
        .arg(&a.id)
        .query(&mut conn)
        .unwrap();
    let b = TestWorker::start(&redis.url(), fast("fence"), seen).await;
    let admin = Admin::new(&client);
    admin.housekeeping("fence").await.unwrap();
    let Seen::Started {
        attempt, worker, ..
    } = next_seen(&mut rx, 20).await
    else {
        panic!()
    };
    assert_eq!((attempt, worker.as_str()), (2, b.id.as_str()));

    // A wakes up and writes: rejected. Wait until A's attempt has really
    // ended (its complete was answered FENCED) before looking.
    a.release.notify_one();
    within(async {
        while a.status.stopped.load(std::sync::atomic::Ordering::Acquire) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(
        a.status.done.load(std::sync::atomic::Ordering::Acquire),
        0,
        "A's result was refused"
    );
    let stored: Vec<String> = redis::cmd("LRANGE")
        .arg(q.keys().output(&id))
        .arg(0)
        .arg(-1)
        .query(&mut conn)
        .unwrap();
    assert!(stored.is_empty(), "A's chunks must not land: {stored:?}");
    assert_eq!(q.status(&id).await.unwrap().state, TaskState::Running);
    b.release.notify_one();
    let (out, text) = within(stream.collect_text()).await.unwrap();
    assert_eq!(out.result["worker"], b.id.as_str());
    assert_eq!(text, "x0 x1 x2 ");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_queued_task_expires_at_its_deadline_and_never_runs() {
    let redis = RedisServer::start();
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("dlq").unwrap();
    let err = within(q.run(TaskRequest::json(json!(1)).timeout(Duration::from_millis(300))))
        .await
        .unwrap_err();
    let Error::TimedOut { id, phase } = err else {
        panic!("{err}")
    };
    assert_eq!(phase, TimeoutPhase::Queued);
    assert_eq!(q.status(&id).await.unwrap().state, TaskState::Expired);
    // A worker arriving later does not get it.
    let (seen, mut rx) = seen_channel();
    let w = TestWorker::start(&redis.url(), fast("dlq"), seen).await;
    let other = q
        .run(TaskRequest::json(json!({"marker": 1})))
        .await
        .unwrap();
    let Seen::Started {
        id: first_started, ..
    } = next_seen(&mut rx, 20).await
    else {
        panic!()
    };
    assert_eq!(
        first_started, other.id,
        "the expired task was never handed out"
    );
    w.stop().await;
}

#[tokio::test]
async fn a_running_task_past_its_deadline_is_stopped_and_the_wait_names_the_worker() {
    let redis = RedisServer::start();
    let (seen, mut rx) = seen_channel();
    let w = TestWorker::start(&redis.url(), fast("dlr"), seen).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("dlr").unwrap();
    let err =
        within(q.run(TaskRequest::json(json!({"hold": true})).timeout(Duration::from_millis(500))))
            .await
            .unwrap_err();
    match &err {
        Error::TimedOut {
            phase: TimeoutPhase::Running { worker },
            ..
        } => assert_eq!(worker, &w.id),
        other => panic!("{other}"),
    }
    assert!(matches!(next_seen(&mut rx, 20).await, Seen::Started { .. }));
    let Seen::Cancelled { reason, .. } = next_seen(&mut rx, 20).await else {
        panic!()
    };
    assert!(reason.contains("deadline"), "{reason}");
    w.stop().await;
}

#[tokio::test]
async fn cancel_removes_a_queued_task_and_stops_a_running_handler() {
    let redis = RedisServer::start();
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("c").unwrap();
    let queued = q.submit(TaskRequest::json(json!(1))).await.unwrap();
    assert_eq!(
        q.cancel(&queued.id, "changed my mind").await.unwrap(),
        TaskState::Queued
    );
    let err = within(q.wait(&queued.id, None)).await.unwrap_err();
    assert!(
        matches!(err, Error::Cancelled { ref reason, .. } if reason == "changed my mind"),
        "{err}"
    );

    let (seen, mut rx) = seen_channel();
    let w = TestWorker::start(&redis.url(), fast("c"), seen).await;
    let mut stream = q
        .stream(TaskRequest::json(json!({"hold": true})))
        .await
        .unwrap();
    next_seen(&mut rx, 20).await;
    let t0 = Instant::now();
    assert_eq!(
        q.cancel(stream.id(), "user left").await.unwrap(),
        TaskState::Running
    );
    let Seen::Cancelled { reason, .. } = next_seen(&mut rx, 20).await else {
        panic!()
    };
    println!("cancel -> handler saw it: {:?}", t0.elapsed());
    assert!(reason.contains("user left"), "{reason}");
    let item = within(stream.next()).await.unwrap();
    assert!(matches!(item, Err(Error::Cancelled { .. })), "{item:?}");
    // The slot is free again.
    within(q.run(TaskRequest::json(json!(2)))).await.unwrap();
    w.stop().await;
}

#[tokio::test]
async fn a_stream_resumes_after_its_connection_is_cut_without_loss_or_duplicates() {
    let redis = RedisServer::start();
    let (seen, _rx) = seen_channel();
    let w = TestWorker::start(&redis.url(), fast("cut"), seen).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("cut").unwrap();
    let mut stream = q
        .stream(TaskRequest::json(
            json!({"chunks": 150, "delay_ms": 4, "chunk": "c"}),
        ))
        .await
        .unwrap();
    let mut conn = redis.conn();
    let mut cuts = 0;
    let indexes = chunk_indexes_cutting_every(&mut stream, 40, || {
        // Cut the reader's blocking connection.
        let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut conn).unwrap();
        for line in list.lines().filter(|l| l.contains("cmd=xread")) {
            let id = line.split(' ').find_map(|f| f.strip_prefix("id=")).unwrap();
            let _: redis::Value = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("ID")
                .arg(id)
                .query(&mut conn)
                .unwrap();
            cuts += 1;
        }
    })
    .await;
    assert!(cuts >= 2, "the connection was cut {cuts} times");
    assert_eq!(indexes, (0..150).collect::<Vec<_>>());
    w.stop().await;
}

#[tokio::test]
async fn tasks_survive_a_redis_restart_and_workers_reconnect() {
    let mut redis = RedisServer::start_with(rtq_testkit::Options {
        appendonly: true,
        ..Default::default()
    });
    let (seen, _rx) = seen_channel();
    let w = TestWorker::start(&redis.url(), fast("rs"), seen).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("rs").unwrap();
    within(q.run(TaskRequest::json(json!(0)))).await.unwrap();
    redis.restart();
    // Submits retry until the shared connection is back.
    let mut ids = Vec::new();
    for i in 0..5 {
        let sub = within(async {
            loop {
                match q.submit(TaskRequest::json(json!({"i": i}))).await {
                    Ok(s) => break s,
                    Err(e) if e.is_retryable() => {
                        tokio::time::sleep(Duration::from_millis(100)).await
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        })
        .await;
        ids.push(sub.id);
    }
    for id in ids {
        let out = within(q.wait(&id, None)).await.unwrap();
        assert_eq!(out.result["worker"], w.id.as_str());
    }
    w.stop().await;
}

#[tokio::test]
async fn nothing_is_left_behind_after_retention() {
    let redis = RedisServer::start();
    let (seen, _rx) = seen_channel();
    let w = TestWorker::start(&redis.url(), fast("gc"), seen).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("gc").unwrap();
    let keep = Duration::from_millis(300);
    for i in 0..10 {
        within(q.run(TaskRequest::json(json!({"i": i})).retention(keep)))
            .await
            .unwrap();
        within(
            q.stream(
                TaskRequest::json(json!({"chunks": 3}))
                    .retention(keep)
                    .timeout(Duration::from_secs(9)),
            )
            .await
            .unwrap()
            .collect_text(),
        )
        .await
        .unwrap();
    }
    let cancelled = q
        .submit(TaskRequest::json(json!({"hold": true})).retention(keep))
        .await
        .unwrap();
    q.cancel(&cancelled.id, "x").await.unwrap();
    w.stop().await;
    drop(q);
    drop(client);
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let mut conn = redis.conn();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
    for key in &keys {
        let ttl: i64 = redis::cmd("PTTL").arg(key).query(&mut conn).unwrap();
        // The registry, the queue's settings and its capped log of
        // endings are the only keys without a TTL.
        let structural = key == "rtq:queues" || key == "rtq:{gc}:meta" || key == "rtq:{gc}:ended";
        assert!(ttl > 0 || structural, "{key} has no TTL");
        for per_task in [":t:", ":o:", ":wt:", ":r:", ":wq:", ":in:"] {
            assert!(!key.contains(per_task), "{key} outlived its retention");
        }
    }
}

#[tokio::test]
async fn cutting_every_connection_mid_stream_loses_and_repeats_nothing() {
    let redis = RedisServer::start();
    let (seen, _rx) = seen_channel();
    let w = TestWorker::start(&redis.url(), fast("cutall"), seen).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("cutall").unwrap();
    let mut stream = q
        .stream(TaskRequest::json(
            json!({"chunks": 120, "delay_ms": 5, "chunk": "c"}),
        ))
        .await
        .unwrap();
    let mut conn = redis.conn();
    let indexes = chunk_indexes_cutting_every(&mut stream, 30, || {
        // Worker writes, worker inbox, client reader: all cut.
        let _: redis::Value = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("normal")
            .arg("SKIPME")
            .arg("yes")
            .query(&mut conn)
            .unwrap();
    })
    .await;
    assert_eq!(indexes, (0..120).collect::<Vec<_>>());
    let stored: i64 = redis::cmd("HGET")
        .arg(q.keys().task(stream.id()))
        .arg("nc")
        .query(&mut conn)
        .unwrap();
    assert_eq!(stored, 120, "no chunk stored twice");
    w.stop().await;
}

/// Reads a stream to its end, calling `cut` after every `every` chunks, and
/// returns the chunk indexes seen (a restart would fail the test).
async fn chunk_indexes_cutting_every(
    stream: &mut rtq_core::TaskStream,
    every: usize,
    mut cut: impl FnMut(),
) -> Vec<u64> {
    let mut indexes = Vec::new();
    within(async {
        while let Some(item) = stream.next().await {
            match item.unwrap() {
                StreamEvent::Chunk(c) => {
                    indexes.push(c.index);
                    if indexes.len() % every == 0 {
                        cut();
                    }
                }
                StreamEvent::Done(_) => break,
                StreamEvent::Restarted { .. } => panic!("no restart expected"),
            }
        }
    })
    .await;
    indexes
}

/// The switch takes effect when `set` returns, not when the worker's main
/// loop next runs: a slot completing in between must not take a next task.
#[tokio::test]
async fn the_intake_switch_takes_effect_at_once() {
    let redis = RedisServer::start();
    let worker = rtq_core::Worker::connect(&redis.url(), fast("intake-now"))
        .await
        .unwrap();
    let status = worker.status();
    let intake = worker.intake();
    intake.set(false);
    assert!(!status.accepting.load(std::sync::atomic::Ordering::Acquire));
    intake.set(true);
    assert!(status.accepting.load(std::sync::atomic::Ordering::Acquire));
}

#[tokio::test]
async fn intake_switched_off_before_run_offers_no_slot_until_switched_on() {
    let redis = RedisServer::start();
    let worker = rtq_core::Worker::connect(&redis.url(), fast("intake"))
        .await
        .unwrap();
    let intake = worker.intake();
    intake.set(false); // before run(): must not be lost
    let (seen, mut rx) = seen_channel();
    let id = worker.id().to_string();
    let handler = std::sync::Arc::new(Scripted {
        worker: id.clone(),
        seen,
        release: std::sync::Arc::new(tokio::sync::Notify::new()),
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(worker.run(handler, async {
        let _ = stop_rx.await;
    }));
    wait_registered(&redis.url(), &id).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("intake").unwrap();
    let admin = Admin::new(&client);
    assert_eq!(admin.overview("intake").await.unwrap().idle_slots, 0);
    let sub = q.submit(TaskRequest::json(json!(1))).await.unwrap();
    assert_eq!(sub.state, TaskState::Queued, "no slot was offered");
    intake.set(true);
    let Seen::Started { id: started, .. } = next_seen(&mut rx, 20).await else {
        panic!()
    };
    assert_eq!(started, sub.id);
    let _ = stop_tx.send(());
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_worker_lists_its_queue_again_after_redis_restarted_empty() {
    let mut redis = RedisServer::start();
    let (seen, _rx) = seen_channel();
    let w = TestWorker::start(&redis.url(), fast("relist"), seen).await;
    let mut conn = admin_conn(&redis).await;
    assert!(is_member(&mut conn, rtq_core::keys::QUEUES, "relist").await);
    // Redis comes back with nothing (no persistence): the queue registry
    // is gone with everything else.
    redis.restart();
    let conn = admin_conn(&redis).await;
    // The worker's next heartbeat hears GONE, registers again and lists
    // its queue: consoles see it without waiting for a new process.
    eventually("the queue is listed again", || {
        let mut conn = conn.clone();
        async move { is_member(&mut conn, rtq_core::keys::QUEUES, "relist").await }
    })
    .await;
    w.stop().await;
}
