//! Every wait ends with the truth (issue 9): a wait, stream or follow ends
//! with the task's real outcome read from Redis, or with an error naming
//! the real cause, whatever happens to the events on the way: short
//! retentions, lost final events, trimmed chunk events, a Redis restart,
//! refused reads, cut connections, memory limits, dropped futures.
//!
//! Many tests take a reply path away on purpose with real ACL users: a
//! worker that may not XADD loses every reply event (the task hash stays
//! the truth), and a client that may not HGET cannot run the router's
//! wait verification, which isolates the other paths (timers, deadlines)
//! that must find the outcome on their own.

mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use redis::Value;
use rtq_core::{
    Client, ClientConfig, Error, Granularity, StreamEvent, TaskRequest, TaskState, Worker,
    WorkerConfig,
};
use rtq_testkit::Proxy;
use serde_json::json;
use support::*;

fn fast(queue: &str) -> WorkerConfig {
    WorkerConfig::new(queue)
        .lease(Duration::from_millis(1000))
        .heartbeat_every(Duration::from_millis(200))
}

/// A worker user whose reply events are all refused (`-xadd`).
fn no_xadd(redis: &RedisServer) -> String {
    acl_user(redis, "w", &["-xadd"])
}

/// A client user that cannot run the router's wait verification (its
/// HGET pipeline is refused), so only the path under test can end a wait.
fn no_verification(redis: &RedisServer) -> String {
    acl_user(redis, "c", &["-hget"])
}

// Reply streams and their keys ------------------------------------------------

/// Workers write reply events with NOMKSTREAM: an event sent before the
/// client created its reply stream is lost, and the wait would end only at
/// its first verification, seconds later.
#[tokio::test]
async fn a_new_client_creates_its_reply_stream_before_its_first_submit_or_watch() {
    let redis = RedisServer::start();
    let mut conn = admin_conn(&redis).await;
    log_every_command(&mut conn).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("first").unwrap();
    let _stream = q
        .stream(TaskRequest::json(json!(1)).id("t1"))
        .await
        .unwrap();
    let follower = Client::connect(&redis.url()).await.unwrap();
    let fq = follower.queue("first").unwrap();
    let _follow = fq.follow("t1", 0).await.unwrap();

    let log = command_log(&mut conn).await;
    let position = |what: &str, pred: &dyn Fn(&[String]) -> bool| {
        log.iter()
            .position(|args| pred(args))
            .unwrap_or_else(|| panic!("{what} not in the command log: {log:?}"))
    };
    let created = |reply: String| {
        move |args: &[String]| {
            args.len() > 1 && args[0].eq_ignore_ascii_case("xadd") && args[1] == reply
        }
    };
    let submitter_stream = position(
        "the submitter's stream",
        &created(q.keys().reply(client.id())),
    );
    let submit = position("the submit", &|args| is_fcall(args, "rtq2_submit", "t1"));
    assert!(submitter_stream < submit, "{log:?}");
    let follower_stream = position(
        "the follower's stream",
        &created(fq.keys().reply(follower.id())),
    );
    let watch = position("the watch", &|args| is_fcall(args, "rtq2_watch", "t1"));
    assert!(follower_stream < watch, "{log:?}");
}

#[tokio::test]
async fn a_task_with_a_1_ms_retention_never_expires_another_task_s_unread_events() {
    let redis = RedisServer::start();
    let mut conn = admin_conn(&redis).await;
    let (seen, mut rx) = seen_channel();
    let w = TestWorker::start(&redis.url(), fast("ret").slots(2), seen).await;
    // Without verification, a lost final event would hang the long wait.
    let client = Client::connect(&no_verification(&redis)).await.unwrap();
    let q = client.queue("ret").unwrap();
    let long = tokio::spawn({
        let q = q.clone();
        async move {
            q.run(TaskRequest::json(json!({"hold": true, "tag": "long"})))
                .await
        }
    });
    let Seen::Started { id: long_id, .. } = next_seen(&mut rx, 20).await else {
        panic!("expected a start")
    };

    let short = within(
        q.run(TaskRequest::json(json!({"tag": "short"})).retention(Duration::from_millis(1))),
    )
    .await
    .unwrap();
    assert_eq!(short.result["echo"]["tag"], "short");
    let short_key = q.keys().task(&short.id);
    eventually("the short task's hash expires", || {
        let mut conn = conn.clone();
        let key = short_key.clone();
        async move { pttl(&mut conn, &key).await == -2 }
    })
    .await;

    // The shared keys kept their own lifetimes.
    let reply = q.keys().reply(client.id());
    let ttl = pttl(&mut conn, &reply).await;
    assert!(
        (500_000..=600_000).contains(&ttl),
        "the reply stream keeps its reader's TTL (~600 s), has {ttl} ms"
    );
    assert_eq!(
        pttl(&mut conn, &q.keys().ended()).await,
        -1,
        "the ended index exists without a TTL"
    );

    w.release.notify_one();
    let out = within(long).await.unwrap().unwrap();
    assert_eq!(
        (out.id.as_str(), &out.result["echo"]["tag"]),
        (long_id.as_str(), &json!("long"))
    );
    assert_eq!(
        state_of(&mut conn, &q, &long_id).await.as_deref(),
        Some("done")
    );
    assert!(pttl(&mut conn, &reply).await > 500_000);
    w.stop().await;
}

// Lost events ------------------------------------------------------------------

#[tokio::test]
async fn a_wait_whose_final_event_is_lost_still_ends_with_the_real_outcome() {
    let redis = RedisServer::start();
    let mut conn = admin_conn(&redis).await;
    let (seen, _rx) = seen_channel();
    let w = TestWorker::start(&no_xadd(&redis), fast("lost"), seen).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("lost").unwrap();

    // run() without a deadline: the router's verification reads the hash.
    let out = within(q.run(TaskRequest::json(json!({"chunks": 3, "tag": "run"}))))
        .await
        .unwrap();
    assert_eq!(out.result["echo"]["tag"], "run");
    assert_eq!(
        state_of(&mut conn, &q, &out.id).await.as_deref(),
        Some("done")
    );

    // stream(): no chunk event arrives either; every chunk is read from the
    // stored output up to the final chunk count, then Done.
    let stream = q
        .stream(TaskRequest::json(json!({"chunks": 25, "chunk": "s"})))
        .await
        .unwrap();
    let id = stream.id().to_string();
    let (indexes, text, done) = within(drain_stream(stream)).await;
    assert_eq!(indexes, (0..25).collect::<Vec<_>>());
    assert_eq!(text, expected_text("s", 25));
    assert_eq!(done.unwrap().result["echo"]["chunks"], 25);
    assert_eq!(state_of(&mut conn, &q, &id).await.as_deref(), Some("done"));

    // The events really were lost: Redis refused the worker's XADDs.
    let log: Vec<Value> = redis::cmd("ACL")
        .arg("LOG")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        format!("{log:?}").contains("xadd"),
        "the ACL log shows refused XADDs: {log:?}"
    );
    w.stop().await;
}

#[tokio::test]
async fn waits_end_with_task_lost_when_redis_restarts_empty() {
    let mut redis = RedisServer::start();
    let mut conn = admin_conn(&redis).await;
    log_every_command(&mut conn).await;
    let (seen, mut rx) = seen_channel();
    let w = KillableWorker::start(&redis.url(), fast("rs"), seen).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("rs").unwrap();

    let hold = || TaskRequest::json(json!({"hold": true}));
    // Running on the worker, waited on without a deadline...
    let running = tokio::spawn({
        let q = q.clone();
        async move { q.run(hold().id("running")).await }
    });
    next_seen(&mut rx, 20).await;
    // ...and queued behind it: with a deadline, streamed, waited on.
    let timed = tokio::spawn({
        let q = q.clone();
        async move {
            q.run(hold().id("timed").timeout(Duration::from_secs(120)))
                .await
        }
    });
    let streamed = q.stream(hold().id("streamed")).await.unwrap();
    let streamed = tokio::spawn(drain_stream(streamed));
    q.submit(hold().id("waited")).await.unwrap();
    let waited = tokio::spawn({
        let q = q.clone();
        async move { q.wait("waited", None).await }
    });
    let waited_max = tokio::spawn({
        let q = q.clone();
        async move { q.wait("waited", Some(Duration::from_secs(120))).await }
    });
    // Every wait is open once Redis has seen its submit or watch.
    for (function, id, n) in [
        ("rtq2_submit", "running", 1),
        ("rtq2_submit", "timed", 1),
        ("rtq2_submit", "streamed", 1),
        ("rtq2_watch", "waited", 2),
    ] {
        eventually(&format!("{function} {id} reached Redis"), || {
            let mut conn = conn.clone();
            async move { calls(&mut conn, function, id).await >= n }
        })
        .await;
    }

    redis.restart();

    let lost = |what: &str, r: Result<rtq_core::TaskOutput, Error>| match r {
        Err(Error::TaskLost { reason, .. }) => {
            assert!(reason.contains("lost its data"), "{what}: {reason}")
        }
        other => panic!("{what}: expected TaskLost, got {other:?}"),
    };
    lost("run without deadline", within(running).await.unwrap());
    lost("run with deadline", within(timed).await.unwrap());
    lost("wait without limit", within(waited).await.unwrap());
    lost("wait with limit", within(waited_max).await.unwrap());
    let (indexes, _, end) = within(streamed).await.unwrap();
    assert!(indexes.is_empty());
    lost("stream", end);
    let mut conn = admin_conn(&redis).await;
    assert_eq!(state_of(&mut conn, &q, "running").await, None);
    w.kill();
}

/// The follower is a second client connected as ACL user `f`. Switching
/// `f` off and killing its connections keeps its reader away while the
/// task writes its chunk events into the follower's reply stream; the test
/// then deletes a middle run of them and the tail (XDEL), as MAXLEN
/// trimming of a reader that was away would, and lets `f` back in. The
/// worker sends one write per chunk (pipelined writes, 1 ms between
/// chunks), so each chunk has its own event.
#[tokio::test]
async fn a_stream_whose_chunk_events_were_trimmed_fills_the_gap_and_the_tail() {
    let redis = RedisServer::start();
    let mut conn = admin_conn(&redis).await;
    let (seen, mut rx) = seen_channel();
    let mut config = fast("gap");
    config.granularity = Granularity {
        max_in_flight: 64,
        ..Granularity::default()
    };
    let w = TestWorker::start(&redis.url(), config, seen).await;
    let submitter = Client::connect(&redis.url()).await.unwrap();
    let id = submitter
        .queue("gap")
        .unwrap()
        .submit(TaskRequest::json(
            json!({"hold": true, "chunks": 12, "chunk": "g", "delay_ms": 1}),
        ))
        .await
        .unwrap()
        .id;
    next_seen(&mut rx, 20).await;

    let follower = Client::connect(&acl_user(&redis, "f", &[])).await.unwrap();
    let fq = follower.queue("gap").unwrap();
    let stream = fq.follow(&id, 0).await.unwrap();
    let reply = fq.keys().reply(follower.id());
    assert!(is_member(&mut conn, &fq.keys().watchers(&id), &reply).await);
    eventually("the follower's reply stream exists", || {
        let mut conn = conn.clone();
        let reply = reply.clone();
        async move {
            redis::cmd("EXISTS")
                .arg(&reply)
                .query_async::<i64>(&mut conn)
                .await
                .unwrap()
                == 1
        }
    })
    .await;

    // Keep the follower away.
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("f")
        .arg("off")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("USER")
        .arg("f")
        .query_async(&mut conn)
        .await
        .unwrap();
    w.release.notify_one();
    wait_for_state(&conn, &fq, &id, "done").await;

    // Delete the events of chunks 3..6 and 9..12.
    let entries = xrange(&mut conn, &reply).await;
    let mut kept_after_gap = false;
    let mut tail_deleted = false;
    let mut final_kept = false;
    for (entry, fields) in &entries {
        match fields.get("e").map(String::as_str) {
            Some("c") => {
                let s: u64 = fields["s"].parse().unwrap();
                let n: u64 = fields["n"].parse().unwrap();
                let hits = |a: u64, b: u64| s < b && s + n > a;
                if hits(3, 6) || hits(9, 12) {
                    tail_deleted |= s + n == 12;
                    let _: i64 = redis::cmd("XDEL")
                        .arg(&reply)
                        .arg(entry)
                        .query_async(&mut conn)
                        .await
                        .unwrap();
                } else if s >= 6 {
                    kept_after_gap = true;
                }
            }
            Some("f") => final_kept = true,
            _ => {}
        }
    }
    assert!(
        kept_after_gap && tail_deleted && final_kept,
        "the scenario needs a live event after the gap, a missing tail and the final event: {entries:?}"
    );

    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("f")
        .arg("on")
        .query_async(&mut conn)
        .await
        .unwrap();
    let (indexes, text, done) = within(drain_stream(stream)).await;
    assert_eq!(indexes, (0..12).collect::<Vec<_>>());
    assert_eq!(text, expected_text("g", 12));
    assert_eq!(done.unwrap().result["echo"]["chunks"], 12);
    w.stop().await;
}

// Several waits on one id --------------------------------------------------------

#[tokio::test]
async fn two_runs_with_one_id_in_one_process_share_one_task_and_both_get_the_result() {
    let redis = RedisServer::start();
    let mut conn = admin_conn(&redis).await;
    log_every_command(&mut conn).await;
    let (seen, mut rx) = seen_channel();
    let w = TestWorker::start(&redis.url(), fast("dup"), seen).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("dup").unwrap();
    let request = TaskRequest::json(json!({"hold": true})).id("same");
    let first = tokio::spawn({
        let (q, r) = (q.clone(), request.clone());
        async move { q.run(r).await }
    });
    let second = tokio::spawn({
        let (q, r) = (q.clone(), request.clone());
        async move { q.run(r).await }
    });
    next_seen(&mut rx, 20).await;
    // Both submits reached Redis: the second one attached to the task.
    eventually("both submits reached Redis", || {
        let mut conn = conn.clone();
        async move { calls(&mut conn, "rtq2_submit", "same").await == 2 }
    })
    .await;
    let err = q.submit(request.clone()).await.unwrap_err();
    assert!(
        matches!(&err, Error::Duplicate { id, state } if id == "same" && *state == TaskState::Running),
        "{err}"
    );

    w.release.notify_one();
    let a = within(first).await.unwrap().unwrap();
    let b = within(second).await.unwrap().unwrap();
    assert_eq!(a, b);
    assert_eq!(a.attempt, 1);
    assert!(rx.try_recv().is_err(), "the handler ran once");
    assert_eq!(
        state_of(&mut conn, &q, "same").await.as_deref(),
        Some("done")
    );
    w.stop().await;
}

/// A stream() attaching to a task this process submitted with run() (no
/// chunk events requested) subscribes to the chunks and starts from the
/// ones already written, instead of learning of them at the end.
#[tokio::test]
async fn a_stream_attached_to_a_run_of_the_same_id_streams_chunks_before_the_end() {
    let redis = RedisServer::start();
    let mut conn = admin_conn(&redis).await;
    let (seen, mut rx) = seen_channel();
    let w = TestWorker::start(&redis.url(), fast("rs2"), seen).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("rs2").unwrap();
    let request =
        TaskRequest::json(json!({"chunks": 3, "chunk": "r", "hold_after": true})).id("shared");
    let run = tokio::spawn({
        let (q, r) = (q.clone(), request.clone());
        async move { q.run(r).await }
    });
    next_seen(&mut rx, 20).await;
    eventually("three chunks are stored", || {
        let mut conn = conn.clone();
        let key = q.keys().task("shared");
        async move {
            redis::cmd("HGET")
                .arg(&key)
                .arg("nc")
                .query_async::<Option<u64>>(&mut conn)
                .await
                .unwrap()
                == Some(3)
        }
    })
    .await;

    let mut stream = q.stream(request).await.unwrap();
    let mut text = String::new();
    for i in 0..3 {
        match within(stream.next()).await {
            Some(Ok(StreamEvent::Chunk(c))) => {
                assert_eq!(c.index, i);
                text.push_str(&c.text());
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(text, "r0 r1 r2 ");
    assert_eq!(
        state_of(&mut conn, &q, "shared").await.as_deref(),
        Some("running")
    );
    w.release.notify_one();
    match within(stream.next()).await {
        Some(Ok(StreamEvent::Done(out))) => assert_eq!(out.id, "shared"),
        other => panic!("{other:?}"),
    }
    assert_eq!(within(run).await.unwrap().unwrap().id, "shared");
    w.stop().await;
}

#[tokio::test]
async fn two_waits_on_one_id_both_get_the_result_and_dropping_one_leaves_the_other_subscribed() {
    let redis = RedisServer::start();
    let mut conn = admin_conn(&redis).await;
    log_every_command(&mut conn).await;
    let (seen, mut rx) = seen_channel();
    let w = TestWorker::start(&redis.url(), fast("ww"), seen).await;
    let submitter = Client::connect(&redis.url()).await.unwrap();
    let id = submitter
        .queue("ww")
        .unwrap()
        .submit(TaskRequest::json(json!({"hold": true})))
        .await
        .unwrap()
        .id;
    next_seen(&mut rx, 20).await;

    // Verification off: only the subscription can deliver the result.
    let client = Client::connect(&no_verification(&redis)).await.unwrap();
    let q = client.queue("ww").unwrap();
    let spawn_wait = || {
        let (q, id) = (q.clone(), id.clone());
        tokio::spawn(async move { q.wait(&id, None).await })
    };
    let (a, b, dropped) = (spawn_wait(), spawn_wait(), spawn_wait());
    eventually("three watches reached Redis", || {
        let mut conn = conn.clone();
        let id = id.clone();
        async move { calls(&mut conn, "rtq2_watch", &id).await == 3 }
    })
    .await;
    let watchers = q.keys().watchers(&id);
    let reply = q.keys().reply(client.id());
    assert!(is_member(&mut conn, &watchers, &reply).await);

    // Drop one wait. Two round trips on the client's connection let any
    // clean-up it started reach Redis first.
    dropped.abort();
    assert!(dropped.await.unwrap_err().is_cancelled());
    for _ in 0..2 {
        q.status(&id).await.unwrap();
    }
    assert!(
        is_member(&mut conn, &watchers, &reply).await,
        "the other waits still need the subscription"
    );

    w.release.notify_one();
    let a = within(a).await.unwrap().unwrap();
    let b = within(b).await.unwrap().unwrap();
    assert_eq!(a, b);
    assert_eq!(a.id, id);
    w.stop().await;
}

// Refused reads, lost replies, cut connections --------------------------------

#[tokio::test]
async fn a_refused_reply_reader_backs_off_and_tells_the_waits() {
    let redis = RedisServer::start();
    let mut conn = admin_conn(&redis).await;
    let url = acl_user(&redis, "r", &["-xread"]);
    let before = info_number(&mut conn, "stats", "total_connections_received").await;
    let client = Client::connect(&url).await.unwrap();
    let q = client.queue("nr").unwrap();
    let err = within(q.run(TaskRequest::json(json!(1))))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PermissionDenied(_)), "{err}");
    // A wait opened later learns it at once, before submitting a task it
    // could never hear of; a follow too.
    let err = within(q.run(TaskRequest::json(json!(2))))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PermissionDenied(_)), "{err}");
    let pending: Vec<String> = redis::cmd("ZRANGE")
        .arg(q.keys().pending())
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        pending.len(),
        1,
        "only the first run submitted: {pending:?}"
    );
    let err = within(q.wait(&pending[0], None)).await.unwrap_err();
    assert!(matches!(err, Error::PermissionDenied(_)), "{err}");

    // The reader keeps trying, backing off (50 ms doubling to 2 s): five
    // more refusals take at least 50+100+200+400 ms after the first ones;
    // a reader that spins gets there in a few milliseconds, opening a
    // connection per refusal.
    let since = Instant::now();
    let refused_then = info_number(&mut conn, "commandstats", "cmdstat_xread.rejected_calls").await;
    assert!(refused_then >= 1);
    eventually("the reader tried five more times", || {
        let mut conn = conn.clone();
        async move {
            info_number(&mut conn, "commandstats", "cmdstat_xread.rejected_calls").await
                >= refused_then + 5
        }
    })
    .await;
    let elapsed = since.elapsed();
    assert!(
        elapsed >= Duration::from_millis(700),
        "five refusals in {elapsed:?}: the reader does not back off"
    );
    // The refusal is an answer on a working connection: the client keeps
    // its two connections (shared, reader) instead of opening one per try.
    let opened = info_number(&mut conn, "stats", "total_connections_received").await - before;
    assert!(
        opened <= 3,
        "{opened} connections opened while XREAD was refused"
    );
}

#[tokio::test]
async fn a_submit_whose_reply_is_lost_is_retried_and_creates_one_task() {
    let redis = RedisServer::start();
    let mut conn = admin_conn(&redis).await;
    log_every_command(&mut conn).await;
    let proxy = Proxy::start(redis.port()).await;
    let client = Client::connect(&proxy.url()).await.unwrap();
    let q = client.queue("px").unwrap();

    proxy.cut_reply_to(b"rtq2_submit");
    let sub = within(q.submit(TaskRequest::json(json!({"n": 1}))))
        .await
        .unwrap();
    assert_eq!(proxy.cuts(), 1, "the first try's reply was dropped");
    assert_eq!(sub.state, TaskState::Queued);
    assert_eq!(calls(&mut conn, "rtq2_submit", &sub.id).await, 2);
    let tasks: Vec<String> = redis::cmd("KEYS")
        .arg(q.keys().task("*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(tasks, vec![q.keys().task(&sub.id)]);
    let pending: Vec<String> = redis::cmd("ZRANGE")
        .arg(q.keys().pending())
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(pending, vec![sub.id.clone()]);
}

/// A network black hole after the submit reached Redis: every try times
/// out (a short response timeout keeps the test quick), the submit ends
/// with `Uncertain` naming the id, and submitting that id again once the
/// network is back creates nothing new.
#[tokio::test]
async fn a_submit_lost_in_a_black_hole_is_uncertain_and_its_id_creates_one_task() {
    let redis = RedisServer::start();
    let mut conn = admin_conn(&redis).await;
    let proxy = Proxy::start(redis.port()).await;
    let config = ClientConfig::default().response_timeout(Duration::from_millis(300));
    let client = Client::connect_with(&proxy.url(), config).await.unwrap();
    let q = client.queue("bh").unwrap();
    let request = TaskRequest::json(json!({"n": 1})).id("bh1");

    proxy.black_hole_after(b"rtq2_submit");
    let err = within(q.submit(request.clone())).await.unwrap_err();
    assert!(
        matches!(&err, Error::Uncertain { id, .. } if id == "bh1"),
        "{err}"
    );
    assert_eq!(proxy.black_holes(), 1);
    assert_eq!(
        state_of(&mut conn, &q, "bh1").await.as_deref(),
        Some("queued")
    );

    // The network is back: the dark connection closes, the client connects
    // again (on its next command: a read, which may fail once on the
    // closed connection) and the same id finds its task.
    let accepted = proxy.accepted();
    proxy.cut_all();
    eventually("the client reconnected", || async {
        q.status("bh1").await.is_ok() && proxy.accepted() > accepted
    })
    .await;
    let err = within(q.submit(request)).await.unwrap_err();
    assert!(
        matches!(&err, Error::Duplicate { id, state } if id == "bh1" && *state == TaskState::Queued),
        "{err}"
    );
    let tasks: Vec<String> = redis::cmd("KEYS")
        .arg(q.keys().task("*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(tasks, vec![q.keys().task("bh1")]);
}

#[tokio::test]
async fn a_run_whose_submit_reply_is_lost_still_returns_the_result() {
    let redis = RedisServer::start();
    let mut conn = admin_conn(&redis).await;
    let (seen, mut rx) = seen_channel();
    let w = TestWorker::start(&redis.url(), fast("pxr"), seen).await;
    let proxy = Proxy::start(redis.port()).await;
    let client = Client::connect(&proxy.url()).await.unwrap();
    let q = client.queue("pxr").unwrap();

    proxy.cut_reply_to(b"rtq2_submit");
    let out = within(q.run(TaskRequest::json(json!({"chunks": 2}))))
        .await
        .unwrap();
    assert_eq!(proxy.cuts(), 1);
    assert_eq!(out.result["echo"]["chunks"], 2);
    assert!(matches!(next_seen(&mut rx, 20).await, Seen::Started { id, .. } if id == out.id));
    assert!(rx.try_recv().is_err(), "the task ran once");
    let tasks: Vec<String> = redis::cmd("KEYS")
        .arg(q.keys().task("*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(tasks.len(), 1);
    w.stop().await;
}

/// The outcome of a task whose final event was lost is read from Redis;
/// a connection cut during that read is retried, not reported as the
/// wait's outcome. The proxy cuts the first read of the outcome (from
/// chunk 100000: state only) and, for the stream, the first read of the
/// stored chunks (from chunk 0).
#[tokio::test]
async fn a_read_of_the_outcome_cut_by_the_network_is_retried() {
    let redis = RedisServer::start();
    let mut conn = admin_conn(&redis).await;
    let (seen, _rx) = seen_channel();
    let w = TestWorker::start(&no_xadd(&redis), fast("rr"), seen).await;
    let proxy = Proxy::start(redis.port()).await;
    let client = Client::connect(&proxy.url()).await.unwrap();
    let q = client.queue("rr").unwrap();

    proxy.cut_reply_to(b"rtq2_read");
    let out = within(q.run(TaskRequest::json(json!({"tag": "read"})).id("r1")))
        .await
        .unwrap();
    assert_eq!(out.result["echo"]["tag"], "read");
    assert_eq!(proxy.cuts(), 1);

    let stream = q
        .stream(TaskRequest::json(json!({"chunks": 4, "chunk": "c"})).id("r2"))
        .await
        .unwrap();
    proxy.cut_reply_to(b"r2\r\n$1\r\n0\r\n");
    let (indexes, text, done) = within(drain_stream(stream)).await;
    assert_eq!(indexes, vec![0, 1, 2, 3]);
    assert_eq!(text, "c0 c1 c2 c3 ");
    assert_eq!(done.unwrap().id, "r2");
    assert_eq!(proxy.cuts(), 2);
    assert_eq!(state_of(&mut conn, &q, "r2").await.as_deref(), Some("done"));
    w.stop().await;
}

// Dropped futures --------------------------------------------------------------

#[tokio::test]
async fn a_dropped_run_with_cancel_on_drop_cancels_its_task_and_the_handler_sees_it() {
    let redis = RedisServer::start();
    let conn = admin_conn(&redis).await;
    let (seen, mut rx) = seen_channel();
    let w = TestWorker::start(&redis.url(), fast("cod"), seen).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("cod").unwrap();
    let mut run = Box::pin(q.run(TaskRequest::json(json!({"hold": true})).cancel_on_drop(true)));
    // Drive the run until the handler holds the task...
    let id = tokio::select! {
        r = &mut run => panic!("the run ended: {r:?}"),
        s = next_seen(&mut rx, 20) => match s {
            Seen::Started { id, .. } => id,
            other => panic!("{other:?}"),
        },
    };
    // ...then give up on it with a timeout that expires while it holds.
    let timed_out = tokio::time::timeout(Duration::from_millis(50), &mut run).await;
    assert!(timed_out.is_err(), "the handler still holds");
    drop(run);

    match next_seen(&mut rx, 20).await {
        Seen::Cancelled {
            id: cancelled,
            reason,
        } => {
            assert_eq!(cancelled, id);
            assert!(reason.contains("went away"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    wait_for_state(&conn, &q, &id, "cancelled").await;
    w.stop().await;
}

/// The future is dropped after the first submit went through but its
/// reply was lost, while the client waits to retry: no tracker exists yet,
/// and still the task must not run for nobody.
#[tokio::test]
async fn a_run_with_cancel_on_drop_dropped_while_its_submit_is_retried_cancels_the_task() {
    let redis = RedisServer::start();
    let conn = admin_conn(&redis).await;
    let proxy = Proxy::start(redis.port()).await;
    let client = Client::connect(&proxy.url()).await.unwrap();
    let q = client.queue("codr").unwrap();
    proxy.cut_reply_to(b"rtq2_submit");
    // A generated id: only this call can have created the task.
    let run = q.run(TaskRequest::json(json!({"hold": true})).cancel_on_drop(true));
    tokio::select! {
        r = run => panic!("the run ended: {r:?}"),
        () = eventually("the first submit's reply was dropped", || async { proxy.cuts() == 1 }) => {}
    }
    let mut admin = conn.clone();
    let tasks: Vec<String> = redis::cmd("KEYS")
        .arg(q.keys().task("*"))
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    let id = tasks[0].rsplit(':').next().unwrap().to_string();
    // Dropped during the retry's 100 ms backoff (or, on a slow machine,
    // after the retry: then the tracker cancels). Either way:
    wait_for_state(&conn, &q, &id, "cancelled").await;
}

/// A run or stream whose explicit id names a task that exists already
/// attaches to it; dropping it must not cancel that task (it may be
/// another caller's), with or without a lost submit reply.
#[tokio::test]
async fn a_dropped_run_attached_to_an_existing_task_leaves_it_running() {
    let redis = RedisServer::start();
    let mut conn = admin_conn(&redis).await;
    let (seen, mut rx) = seen_channel();
    let w = TestWorker::start(&redis.url(), fast("att"), seen).await;
    let proxy = Proxy::start(redis.port()).await;
    let owner = Client::connect(&redis.url()).await.unwrap();
    let other = Client::connect(&proxy.url()).await.unwrap();
    let mine = owner.queue("att").unwrap();
    let theirs = other.queue("att").unwrap();
    mine.submit(TaskRequest::json(json!({"hold": true})).id("shared"))
        .await
        .unwrap();
    next_seen(&mut rx, 20).await;

    // Attached by a run, then dropped while it waits.
    let mut run = Box::pin(
        theirs.run(
            TaskRequest::json(json!({"hold": true}))
                .id("shared")
                .cancel_on_drop(true),
        ),
    );
    assert!(tokio::time::timeout(Duration::from_millis(300), &mut run)
        .await
        .is_err());
    drop(run);
    // Attached by a stream, then dropped.
    let stream = theirs
        .stream(
            TaskRequest::json(json!({"hold": true}))
                .id("shared")
                .cancel_on_drop(true),
        )
        .await
        .unwrap();
    drop(stream);
    // Dropped while its submit's reply is lost and retried...
    proxy.cut_reply_to(b"rtq2_submit");
    let run = theirs.run(
        TaskRequest::json(json!({"hold": true}))
            .id("shared")
            .cancel_on_drop(true),
    );
    tokio::select! {
        r = run => panic!("the run ended: {r:?}"),
        () = eventually("the submit's reply was dropped", || async { proxy.cuts() == 1 }) => {}
    }
    // ...and after the retry found the task (a DUPLICATE after a lost
    // reply: with an explicit id, not proof that the first try made it).
    proxy.cut_reply_to(b"rtq2_submit");
    let mut run = Box::pin(
        theirs.run(
            TaskRequest::json(json!({"hold": true}))
                .id("shared")
                .cancel_on_drop(true),
        ),
    );
    assert!(tokio::time::timeout(Duration::from_millis(1500), &mut run)
        .await
        .is_err());
    assert_eq!(proxy.cuts(), 2);
    drop(run);
    // Every cancel would be sent within a moment of the drop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        state_of(&mut conn, &mine, "shared").await.as_deref(),
        Some("running"),
        "an attached call that went away cancelled a task it did not create"
    );
    w.release.notify_one();
    wait_for_state(&conn, &mine, "shared", "done").await;
    w.stop().await;
}

#[tokio::test]
async fn a_dropped_follow_removes_its_subscription() {
    let redis = RedisServer::start();
    let mut conn = admin_conn(&redis).await;
    let (seen, mut rx) = seen_channel();
    let w = TestWorker::start(&redis.url(), fast("fd"), seen).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("fd").unwrap();
    let id = q
        .submit(TaskRequest::json(json!({"hold": true})))
        .await
        .unwrap()
        .id;
    next_seen(&mut rx, 20).await;
    let stream = q.follow(&id, 0).await.unwrap();
    let watchers = q.keys().watchers(&id);
    let reply = q.keys().reply(client.id());
    assert!(is_member(&mut conn, &watchers, &reply).await);
    drop(stream);
    eventually("the subscription is removed", || {
        let mut conn = conn.clone();
        let (watchers, reply) = (watchers.clone(), reply.clone());
        async move { !is_member(&mut conn, &watchers, &reply).await }
    })
    .await;
    assert_eq!(
        state_of(&mut conn, &q, &id).await.as_deref(),
        Some("running"),
        "a dropped follow does not cancel"
    );
    w.release.notify_one();
    wait_for_state(&conn, &q, &id, "done").await;
    w.stop().await;
}

#[tokio::test]
async fn aborting_the_worker_s_task_hands_its_running_task_back_at_once() {
    let redis = RedisServer::start();
    let mut conn = admin_conn(&redis).await;
    let (seen, mut rx) = seen_channel();
    // A long lease: only the hand-back can requeue within the test.
    let w = TestWorker::start(
        &redis.url(),
        WorkerConfig::new("wa").lease(Duration::from_secs(120)),
        seen,
    )
    .await;
    let worker_id = w.id.clone();
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("wa").unwrap();
    let id = q
        .submit(TaskRequest::json(json!({"hold": true})))
        .await
        .unwrap()
        .id;
    next_seen(&mut rx, 20).await;
    let aborted_at = Instant::now();
    w.abort().await;
    wait_for_state(&conn, &q, &id, "queued").await;
    let registered: Option<f64> = redis::cmd("ZSCORE")
        .arg(q.keys().workers())
        .arg(&worker_id)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(registered, None, "the worker deregistered");
    assert!(aborted_at.elapsed() < Duration::from_secs(120));
    let info = q.status(&id).await.unwrap();
    assert_eq!((info.state, info.worker.as_str()), (TaskState::Queued, ""));
}

// Timers -----------------------------------------------------------------------

#[tokio::test]
async fn a_wait_limit_on_a_queued_task_ends_with_wait_timed_out_naming_queued() {
    let redis = RedisServer::start();
    let mut conn = admin_conn(&redis).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("wq").unwrap();
    let id = q.submit(TaskRequest::json(json!(1))).await.unwrap().id;
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
                (got.as_str(), state, worker),
                (id.as_str(), TaskState::Queued, None)
            );
            assert!(waited_ms >= 300);
        }
        other => panic!("{other}"),
    }
    assert_eq!(
        state_of(&mut conn, &q, &id).await.as_deref(),
        Some("queued")
    );
}

#[tokio::test]
async fn a_wait_limit_reached_after_the_task_ended_reports_the_result() {
    let redis = RedisServer::start();
    let mut conn = admin_conn(&redis).await;
    let (seen, mut rx) = seen_channel();
    let w = TestWorker::start(&no_xadd(&redis), fast("wl"), seen).await;
    let client = Client::connect(&no_verification(&redis)).await.unwrap();
    let q = client.queue("wl").unwrap();
    let id = q
        .submit(TaskRequest::json(json!({"hold": true, "tag": "late"})))
        .await
        .unwrap()
        .id;
    next_seen(&mut rx, 20).await;
    let waiting = tokio::spawn({
        let (q, id) = (q.clone(), id.clone());
        async move { q.wait(&id, Some(Duration::from_secs(3))).await }
    });
    eventually("the wait subscribed", || {
        let mut conn = conn.clone();
        let (watchers, reply) = (q.keys().watchers(&id), q.keys().reply(client.id()));
        async move { is_member(&mut conn, &watchers, &reply).await }
    })
    .await;
    // The task ends; its final event is lost (the worker may not XADD).
    w.release.notify_one();
    wait_for_state(&conn, &q, &id, "done").await;
    let out = within(waiting).await.unwrap().unwrap();
    assert_eq!(out.result["echo"]["tag"], "late");
    assert_eq!(state_of(&mut conn, &q, &id).await.as_deref(), Some("done"));
    w.stop().await;
}

// Memory limits and big outputs -------------------------------------------------

#[tokio::test]
async fn a_full_redis_refuses_submits_cleanly_and_still_lets_running_tasks_finish() {
    let redis = RedisServer::start();
    let mut conn = admin_conn(&redis).await;
    let (seen, mut rx) = seen_channel();
    let w = TestWorker::start(&redis.url(), fast("oom"), seen).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("oom").unwrap();
    let running = tokio::spawn({
        let q = q.clone();
        async move {
            q.run(TaskRequest::json(json!({"hold": true, "tag": "running"})))
                .await
        }
    });
    let Seen::Started { id: running_id, .. } = next_seen(&mut rx, 20).await else {
        panic!()
    };

    let used = info_number(&mut conn, "memory", "used_memory").await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("noeviction")
        .arg("maxmemory")
        .arg(used + (2 << 20))
        .query_async(&mut conn)
        .await
        .unwrap();
    let pad = "x".repeat(100_000);
    let mut refused = None;
    for i in 0..1000 {
        let id = format!("fill-{i}");
        match q
            .submit(TaskRequest::json(json!({ "pad": pad })).id(&id))
            .await
        {
            Ok(_) => {}
            Err(Error::OutOfMemory(_)) => {
                refused = Some(id);
                break;
            }
            Err(other) => panic!("submit {i}: {other}"),
        }
    }
    let refused = refused.expect("a submit was refused with OutOfMemory");
    assert_eq!(
        state_of(&mut conn, &q, &refused).await,
        None,
        "the refused submit wrote nothing"
    );

    // Keep Redis out of memory however its buffers shrink, then let the
    // running task end: the worker's functions run under OOM.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let err = q
        .submit(TaskRequest::json(json!(1)).id("late"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::OutOfMemory(_)), "{err}");
    assert_eq!(state_of(&mut conn, &q, "late").await, None);
    w.release.notify_one();
    let out = within(running).await.unwrap().unwrap();
    assert_eq!(
        (out.id.as_str(), &out.result["echo"]["tag"]),
        (running_id.as_str(), &json!("running"))
    );
    assert_eq!(
        state_of(&mut conn, &q, &running_id).await.as_deref(),
        Some("done")
    );
    w.stop().await;

    // An evicting policy would delete tasks silently: workers refuse it.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(0)
        .arg("maxmemory-policy")
        .arg("allkeys-lru")
        .query_async(&mut conn)
        .await
        .unwrap();
    match Worker::connect(&redis.url(), fast("oom")).await {
        Err(Error::UnsuitableServer(why)) => assert!(why.contains("allkeys-lru"), "{why}"),
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("a worker accepted an evicting Redis"),
    }
}

#[tokio::test]
async fn a_burst_of_5000_chunks_streams_in_order_and_9000_chunks_complete() {
    let redis = RedisServer::start();
    let mut conn = admin_conn(&redis).await;
    let (seen, _rx) = seen_channel();
    let w = TestWorker::start(&redis.url(), fast("burst"), seen).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("burst").unwrap();

    let stream = q
        .stream(TaskRequest::json(json!({"chunks": 5000, "chunk": "b"})))
        .await
        .unwrap();
    let (indexes, text, done) = within(drain_stream(stream)).await;
    assert_eq!(indexes, (0..5000).collect::<Vec<_>>());
    assert_eq!(text, expected_text("b", 5000));
    assert_eq!(done.unwrap().result["echo"]["chunks"], 5000);

    let out = within(q.run(TaskRequest::json(json!({"chunks": 9000}))))
        .await
        .unwrap();
    assert_eq!(out.result["echo"]["chunks"], 9000);
    let stored: i64 = redis::cmd("LLEN")
        .arg(q.keys().output(&out.id))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(stored, 9000);
    w.stop().await;
}

#[tokio::test]
async fn a_deadline_reached_after_a_lost_final_event_reports_the_real_outcome() {
    let redis = RedisServer::start();
    let mut conn = admin_conn(&redis).await;
    let (seen, _rx) = seen_channel();
    let w = TestWorker::start(&no_xadd(&redis), fast("dlf"), seen).await;
    let client = Client::connect(&no_verification(&redis)).await.unwrap();
    let q = client.queue("dlf").unwrap();
    // Done in milliseconds, its final event lost; at the deadline the
    // tracker's cancel answers FINISHED and it reads the hash.
    let out =
        within(q.run(TaskRequest::json(json!({"tag": "fast"})).timeout(Duration::from_secs(2))))
            .await
            .unwrap();
    assert_eq!(out.result["echo"]["tag"], "fast");
    assert_eq!(
        state_of(&mut conn, &q, &out.id).await.as_deref(),
        Some("done")
    );
    w.stop().await;
}

/// A queue with clients but no live worker: after Redis restarts empty,
/// the client's reply reader finds its stream gone and lists the queue
/// again, so consoles and `rtq stats` do not lose it.
#[tokio::test]
async fn after_redis_restarted_empty_a_client_lists_its_queue_again() {
    let mut redis = RedisServer::start();
    let client = Client::connect_with(
        &redis.url(),
        ClientConfig::default().housekeeping_every(Duration::from_millis(100)),
    )
    .await
    .unwrap();
    let q = client.queue("orphan").unwrap();
    // A wait opens the queue's reply reader (no worker: it stays queued).
    let id = q.submit(TaskRequest::json(json!({}))).await.unwrap().id;
    let waiting = tokio::spawn({
        let q = q.clone();
        async move { q.wait(&id, None).await }
    });
    let listed = |redis: &RedisServer| {
        let url = redis.url();
        async move {
            let c = redis::Client::open(url).unwrap();
            let Ok(mut conn) = c.get_multiplexed_async_connection().await else {
                return false;
            };
            let member: redis::RedisResult<bool> = redis::cmd("SISMEMBER")
                .arg("rtq:queues")
                .arg("orphan")
                .query_async(&mut conn)
                .await;
            member.unwrap_or(false)
        }
    };
    eventually("listed at first use", || listed(&redis)).await;
    redis.restart();
    eventually("listed again after the restart", || listed(&redis)).await;
    // The wait itself ends with the reason: lost with Redis's data, or not
    // found if the wait began only after the restart.
    let end = within(waiting).await.unwrap();
    assert!(
        matches!(end, Err(Error::TaskLost { .. } | Error::NotFound { .. })),
        "{end:?}"
    );
}

// Reply readers are bounded ---------------------------------------------------

/// Connections of this Redis whose last command was XREAD: the clients'
/// reply readers.
async fn reply_readers_in_redis(conn: &mut redis::aio::MultiplexedConnection) -> usize {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(conn)
        .await
        .unwrap();
    list.lines().filter(|l| l.contains("cmd=xread")).count()
}

/// A process that waits on many queues (a gateway taking queue names from
/// its callers) must not keep a blocking connection per name forever: idle
/// readers close, at most `max_reply_readers` are open, and a wait beyond
/// that while all are in use is refused with a clear error, submitting
/// nothing.
#[tokio::test]
async fn reply_readers_are_capped_and_idle_ones_close() {
    let redis = RedisServer::start();
    let mut conn = admin_conn(&redis).await;
    let config = ClientConfig::default()
        .max_reply_readers(2)
        .reply_reader_idle(Duration::from_millis(300));
    let client = Client::connect_with(&redis.url(), config).await.unwrap();
    let submitted = |q: &str| {
        let q = client.queue(q).unwrap();
        async move { q.submit(TaskRequest::json(json!(1))).await.unwrap().id }
    };

    // Two follows in use: a third queue is refused, and nothing is
    // submitted on it.
    let (a, b) = (client.queue("a").unwrap(), client.queue("b").unwrap());
    let follow_a = a.follow(&submitted("a").await, 0).await.unwrap();
    let follow_b = b.follow(&submitted("b").await, 0).await.unwrap();
    let c = client.queue("c").unwrap();
    match c.run(TaskRequest::json(json!(1)).id("refused")).await {
        Err(Error::TooManyQueues { queue, max }) => assert_eq!((queue.as_str(), max), ("c", 2)),
        other => panic!("expected TooManyQueues, got {other:?}"),
    }
    assert!(matches!(
        c.status("refused").await,
        Err(Error::NotFound { .. })
    ));
    // A task that has ended needs no reader: its outcome is read as it is.
    let ended = submitted("c").await;
    c.cancel(&ended, "ended before the wait").await.unwrap();
    match c.wait(&ended, None).await {
        Err(Error::Cancelled { reason, .. }) => assert_eq!(reason, "ended before the wait"),
        other => panic!("expected the stored outcome, got {other:?}"),
    }
    assert_eq!(client.reply_readers_open(), 2);

    // One ends: the third queue takes its place at once.
    drop(follow_a);
    let waited = c
        .wait(&submitted("c").await, Some(Duration::from_millis(50)))
        .await;
    assert!(
        matches!(waited, Err(Error::WaitTimedOut { .. })),
        "{waited:?}"
    );
    assert!(client.reply_readers_open() <= 2);

    // Nothing in use: every reader closes, in the client and in Redis,
    // and its reply stream goes with it.
    drop(follow_b);
    eventually("the idle readers close", || async {
        client.reply_readers_open() == 0
    })
    .await;
    eventually("Redis sees their connections close", || {
        let mut conn = conn.clone();
        async move { reply_readers_in_redis(&mut conn).await == 0 }
    })
    .await;
    let streams: Vec<String> = redis::cmd("KEYS")
        .arg("rtq:*:r:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(streams.is_empty(), "{streams:?}");

    // A queue used again gets a new reader that hears its results.
    let (seen, _rx) = seen_channel();
    let w = TestWorker::start(&redis.url(), fast("a"), seen).await;
    let out = within(a.run(TaskRequest::json(json!({"tag": "again"}))))
        .await
        .unwrap();
    assert_eq!(out.result["echo"]["tag"], "again");
    assert!(reply_readers_in_redis(&mut conn).await <= 1);
    w.stop().await;
}

/// Many callers on many queues at once against a small cap: every wait
/// ends (timed out, or refused as one queue too many), none hangs, and
/// once they are over every reader closes.
#[tokio::test]
async fn concurrent_waits_on_many_queues_all_end_and_their_readers_close() {
    let redis = RedisServer::start();
    let conn = admin_conn(&redis).await;
    let config = ClientConfig::default()
        .max_reply_readers(4)
        .reply_reader_idle(Duration::from_millis(100));
    let client = Client::connect_with(&redis.url(), config).await.unwrap();
    let calls = (0..120).map(|i| {
        let q = client.queue(&format!("many{}", i % 30)).unwrap();
        async move {
            match q.submit(TaskRequest::json(json!(i))).await {
                Ok(s) => q.wait(&s.id, Some(Duration::from_millis(150))).await,
                Err(e) => Err(e),
            }
        }
    });
    let results = within(futures::future::join_all(calls)).await;
    let (mut timed_out, mut refused) = (0, 0);
    for r in results {
        match r {
            Err(Error::WaitTimedOut { .. }) => timed_out += 1,
            Err(Error::TooManyQueues { max: 4, .. }) => refused += 1,
            other => panic!("unexpected end of a wait: {other:?}"),
        }
    }
    assert_eq!(timed_out + refused, 120);
    assert!(timed_out >= 4, "{timed_out} waits ran");
    eventually("every reader closes", || {
        let mut conn = conn.clone();
        let open = client.reply_readers_open();
        async move { open == 0 && reply_readers_in_redis(&mut conn).await == 0 }
    })
    .await;
}

/// A wait that has ended frees its reader at once: at a cap of one, waits
/// alternating between two queues are never refused, whether they end
/// with the result or by their own time limit (the task goes on, and the
/// subscription's removal is still on its way to Redis).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_a_cap_of_one_alternating_waits_are_never_refused() {
    let redis = RedisServer::start();
    let config = ClientConfig::default().max_reply_readers(1);
    let client = Client::connect_with(&redis.url(), config).await.unwrap();
    // Waits that end by their own limit, back to back (queues without
    // workers: the tasks stay queued).
    let idle = [client.queue("xa").unwrap(), client.queue("xb").unwrap()];
    let mut ids = Vec::new();
    for q in &idle {
        ids.push(q.submit(TaskRequest::json(json!(1))).await.unwrap().id);
    }
    for i in 0..60 {
        let waited = idle[i % 2]
            .wait(&ids[i % 2], Some(Duration::from_millis(5)))
            .await;
        assert!(
            matches!(waited, Err(Error::WaitTimedOut { .. })),
            "wait {i}: {waited:?}"
        );
    }
    // Waits and streams that end with the result.
    let (seen, _rx) = seen_channel();
    let wa = TestWorker::start(&redis.url(), fast("ma"), seen.clone()).await;
    let wb = TestWorker::start(&redis.url(), fast("mb"), seen).await;
    let served = [client.queue("ma").unwrap(), client.queue("mb").unwrap()];
    for i in 0..40 {
        let q = &served[i % 2];
        within(q.run(TaskRequest::json(json!(i)))).await.unwrap();
        let stream = q
            .stream(TaskRequest::json(json!({"chunks": 2})))
            .await
            .unwrap();
        // (A delivery that reached a slot while it was taking its next
        // task is handed back unstarted, announced as a restart: not what
        // this test is about, so restarts are allowed; the last attempt's
        // chunks must be whole.)
        let (chunks, restarts, attempt) = drain_all(stream).await;
        let last: Vec<_> = chunks.iter().filter(|c| c.0 == attempt).collect();
        assert_eq!(
            last,
            [&(attempt, 0), &(attempt, 1)],
            "{chunks:?} {restarts:?}"
        );
    }
    wa.stop().await;
    wb.stop().await;
}

/// Everything a stream yields, up to its end: chunk (attempt, index) pairs
/// in order, restarts (abandoned, next), and the final output's attempt.
async fn drain_all(mut stream: rtq_core::TaskStream) -> (Vec<(u64, u64)>, Vec<(u64, u64)>, u64) {
    let (mut chunks, mut restarts) = (Vec::new(), Vec::new());
    while let Some(item) = within(stream.next()).await {
        match item.unwrap() {
            StreamEvent::Chunk(c) => {
                assert_eq!(c.text(), format!("tok{} ", c.index));
                chunks.push((c.attempt, c.index));
            }
            StreamEvent::Restarted {
                attempt,
                next_attempt,
                ..
            } => restarts.push((attempt, next_attempt)),
            StreamEvent::Done(out) => {
                assert!(within(stream.next()).await.is_none(), "nothing after Done");
                return (chunks, restarts, out.attempt);
            }
        }
    }
    panic!("the stream ended without Done");
}

/// A task that has ended needs no reply reader to be followed: at the
/// cap, with the only reader held by a wait on another queue, a follow of
/// a finished task reads its stored chunks (more than one page) and its
/// outcome, as a wait on it does; one that has not ended is still refused.
#[tokio::test]
async fn at_the_reader_cap_a_follow_of_an_ended_task_reads_it_without_a_reader() {
    let redis = RedisServer::start();
    let (seen, _rx) = seen_channel();
    let w = TestWorker::start(&redis.url(), fast("ended"), seen).await;
    // Tasks run to their end by another client.
    let other = Client::connect(&redis.url()).await.unwrap();
    let oq = other.queue("ended").unwrap();
    let long = within(oq.run(TaskRequest::json(json!({"chunks": 1500}))))
        .await
        .unwrap()
        .id;
    // Ended in attempt 2, after an operator ran it again.
    let twice = within(oq.run(TaskRequest::json(json!({"chunks": 3}))))
        .await
        .unwrap()
        .id;
    let admin = rtq_core::admin::Admin::new(&other);
    admin.requeue("ended", &twice).await.unwrap();
    eventually("the task ends again", || async {
        let info = oq.status(&twice).await.unwrap();
        info.attempt == 2 && info.state == TaskState::Done
    })
    .await;
    let running = oq
        .submit(TaskRequest::json(json!({"hold": true})))
        .await
        .unwrap()
        .id;

    let config = ClientConfig::default().max_reply_readers(1);
    let client = Client::connect_with(&redis.url(), config).await.unwrap();
    let busy = client.queue("busy").unwrap();
    let pending = busy.submit(TaskRequest::json(json!(1))).await.unwrap().id;
    let waiting = tokio::spawn(async move { busy.wait(&pending, None).await });
    eventually("the wait holds the only reader", || async {
        client.reply_readers_open() == 1
    })
    .await;

    let q = client.queue("ended").unwrap();
    let (chunks, restarts, attempt) = drain_all(within(q.follow(&long, 0)).await.unwrap()).await;
    let all: Vec<(u64, u64)> = (0..1500).map(|i| (1, i)).collect();
    assert_eq!((chunks, restarts, attempt), (all.clone(), vec![], 1));
    let (chunks, _, _) = drain_all(within(q.follow(&long, 1200)).await.unwrap()).await;
    assert_eq!(chunks, all[1200..]);
    let (chunks, _, _) = drain_all(within(q.follow_from(&long, 1, 3)).await.unwrap()).await;
    assert_eq!(chunks, all[3..]);
    // Resumed from the attempt it abandoned: the restart, then the last.
    let (chunks, restarts, attempt) =
        drain_all(within(q.follow_from(&twice, 1, 2)).await.unwrap()).await;
    assert_eq!(
        (chunks, restarts, attempt),
        (vec![(2, 0), (2, 1), (2, 2)], vec![(1, 2)], 2)
    );
    assert!(matches!(
        q.follow_from(&twice, 3, 0).await,
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        q.follow(&running, 0).await,
        Err(Error::TooManyQueues { .. })
    ));
    assert_eq!(client.reply_readers_open(), 1);
    assert!(!waiting.is_finished());
    waiting.abort();
    oq.cancel(&running, "test over").await.unwrap();
    w.stop().await;
}

/// `follow_if_ended` reads an ended task's stream without opening a reply
/// reader (what a caller that counts readers, the gateway, tries first),
/// and says `None` for a task that has not ended.
#[tokio::test]
async fn follow_if_ended_reads_an_ended_task_without_a_reader() {
    let redis = RedisServer::start();
    let (seen, _rx) = seen_channel();
    let w = TestWorker::start(&redis.url(), fast("ended"), seen).await;
    let other = Client::connect(&redis.url()).await.unwrap();
    let oq = other.queue("ended").unwrap();
    let done = within(oq.run(TaskRequest::json(json!({"chunks": 5}))))
        .await
        .unwrap()
        .id;
    let running = oq
        .submit(TaskRequest::json(json!({"hold": true})))
        .await
        .unwrap()
        .id;

    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("ended").unwrap();
    let stream = within(q.follow_if_ended(&done, 0, None)).await.unwrap();
    let (chunks, restarts, attempt) = drain_all(stream.expect("the task ended")).await;
    let all: Vec<(u64, u64)> = (0..5).map(|i| (1, i)).collect();
    assert_eq!((chunks, restarts, attempt), (all.clone(), vec![], 1));
    let stream = within(q.follow_if_ended(&done, 3, Some(1))).await.unwrap();
    let (chunks, _, _) = drain_all(stream.unwrap()).await;
    assert_eq!(chunks, all[3..]);
    assert!(within(q.follow_if_ended(&running, 0, None))
        .await
        .unwrap()
        .is_none());
    assert!(matches!(
        q.follow_if_ended(&done, 0, Some(4)).await,
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        q.follow_if_ended("nope", 0, None).await,
        Err(Error::NotFound { .. })
    ));
    assert_eq!(client.reply_readers_open(), 0, "no reader was opened");
    oq.cancel(&running, "test over").await.unwrap();
    w.stop().await;
}

/// A follow given up while its subscription call is in flight (a caller
/// that went away, a timeout) must not leave its reader unretirable.
#[tokio::test]
async fn a_follow_dropped_mid_subscription_leaves_its_reader_free() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(redis.port()).await;
    let config = ClientConfig::default()
        .max_reply_readers(1)
        .reply_reader_idle(Duration::from_millis(200))
        .response_timeout(Duration::from_secs(2));
    let client = Client::connect_with(&proxy.url(), config).await.unwrap();
    let a = client.queue("pa").unwrap();
    let id = a.submit(TaskRequest::json(json!(1))).await.unwrap().id;
    proxy.black_hole_after(b"rtq2_watch");
    let f = tokio::time::timeout(Duration::from_millis(500), a.follow(&id, 0)).await;
    assert!(f.is_err(), "the follow ended: {:?}", f.map(|_| ()));
    assert_eq!(proxy.black_holes(), 1);
    proxy.cut_all();
    eventually("the reader is retired", || async {
        client.reply_readers_open() == 0
    })
    .await;
    let b = client.queue("pb").unwrap();
    let id = b.submit(TaskRequest::json(json!(1))).await.unwrap().id;
    let waited = b.wait(&id, Some(Duration::from_millis(50))).await;
    assert!(
        matches!(waited, Err(Error::WaitTimedOut { .. })),
        "{waited:?}"
    );
}

/// Readers retired one after another leave no reply stream behind (the
/// housekeeping loop must not re-create a stream its reader deleted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retired_readers_leave_no_reply_stream_behind() {
    let redis = RedisServer::start();
    let mut conn = admin_conn(&redis).await;
    let config = ClientConfig::default().max_reply_readers(1);
    let client = Client::connect_with(&redis.url(), config).await.unwrap();
    for i in 0..100 {
        let q = client.queue(&format!("ch{i}")).unwrap();
        let r = q.follow("nope", 0).await;
        assert!(
            matches!(r, Err(Error::NotFound { .. })),
            "{:?}",
            r.map(|_| ())
        );
    }
    // The last reader stays; every earlier one's stream goes.
    eventually("only the open reader's stream is left", || {
        let mut conn = conn.clone();
        async move {
            let streams: Vec<String> = redis::cmd("KEYS")
                .arg("rtq:*:r:*")
                .query_async(&mut conn)
                .await
                .unwrap();
            streams.len() == 1 && streams[0].starts_with("rtq:{ch99}")
        }
    })
    .await;
    // And none comes back.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let streams: Vec<String> = redis::cmd("KEYS")
        .arg("rtq:*:r:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(streams.len(), 1, "{streams:?}");
}
