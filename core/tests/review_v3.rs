//! A second review of the rtq3 library (`core/lua/v3/stream.lua`,
//! `write.lua`) after the hot-path rewrite: each test is an attack that
//! found a bug (it fails on the library as it was), kept as a regression.

mod support;

use redis::aio::MultiplexedConnection;
use redis::Value;
use rtq_core::functions::v3::{self, Completed, EndState, Ending, Held, NewTask};
use rtq_core::keys::QueueKeys;
use support::keyspace::snapshot;
use support::{patient_conn, RedisServer};

/// The queue every test uses.
const Q: &str = "rv";
/// A lease longer than any test runs: only entries aged on purpose lapse.
const LEASE: u64 = 600_000;
/// Idle time given to an entry to make its lease lapse.
const AGED_MS: &str = "10000000";

/// A raw command; panics on an error (test setup).
async fn raw(conn: &mut MultiplexedConnection, args: &[&str]) -> Value {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(conn)
        .await
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn task(id: &str, band: u8, reply: &str, max_attempts: u32) -> NewTask {
    NewTask {
        id: id.into(),
        band,
        spec: b"{}".to_vec(),
        reply: reply.into(),
        deadline_ms: 0,
        max_attempts,
        retention_ms: 3_600_000,
    }
}

/// A fresh queue with `bands` bands.
async fn queue(conn: &mut MultiplexedConnection, bands: u8) -> QueueKeys {
    raw(conn, &["FLUSHALL"]).await;
    let keys = QueueKeys::new(Q).unwrap();
    v3::create(conn, &keys, bands, 0).await.unwrap();
    keys
}

/// Makes the lease of `entry` (held by `worker` in `band`) lapse without
/// counting a delivery.
async fn age(
    conn: &mut MultiplexedConnection,
    keys: &QueueKeys,
    band: u8,
    worker: &str,
    entry: &str,
) {
    let b = v3::band_key(keys, band);
    raw(
        conn,
        &[
            "XCLAIM", &b, "w", worker, "0", entry, "IDLE", AGED_MS, "JUSTID",
        ],
    )
    .await;
}

fn ending(held: &Held, id: &str, state: EndState) -> Ending {
    Ending {
        held: held.clone(),
        id: id.into(),
        state,
        output: None,
    }
}

/// A worker's first attempt of a task froze; its lease lapsed and the same
/// worker id took the entry over (delivery 2) and retried it. The first
/// attempt's late `done` must be LOST: answering REPLAY tells the worker
/// its result was written when it was dropped.
#[tokio::test]
async fn a_late_complete_of_an_attempt_taken_over_by_the_same_worker_is_lost() {
    let redis = RedisServer::start();
    let mut conn = patient_conn(&redis.url()).await;
    let keys = queue(&mut conn, 1).await;
    v3::submit(&mut conn, &keys, &[task("t", 0, "", 3)])
        .await
        .unwrap();
    let first = v3::read_new(&mut conn, &keys, "w", 0, 1, None)
        .await
        .unwrap()
        .remove(0);
    age(&mut conn, &keys, 0, "w", &first.held.entry).await;
    // Housekeeping leaves a worker's own idle entries to it (revision 6:
    // it is alive, it calls; a take-over would count a delivery it never
    // had).
    let (_, taken) = v3::takeover(&mut conn, &keys, "w", LEASE, 1).await.unwrap();
    assert!(taken.is_empty(), "{taken:?}");
    // Delivery 2 to the same worker id (what takeover did before).
    let _: redis::Value = redis::cmd("XCLAIM")
        .arg(v3::band_key(&keys, 0))
        .arg(v3::GROUP)
        .arg("w")
        .arg(0)
        .arg(&first.held.entry)
        .query_async(&mut conn)
        .await
        .unwrap();
    let second = v3::Held {
        deliveries: 2,
        ..first.held.clone()
    };
    let got = v3::complete(
        &mut conn,
        &keys,
        "w",
        &[ending(&second, "t", EndState::Retry("boom".into()))],
    )
    .await
    .unwrap();
    assert_eq!(got, vec![Completed::Ok]);
    let late = v3::complete(
        &mut conn,
        &keys,
        "w",
        &[ending(&first.held, "t", EndState::Done("{}".into()))],
    )
    .await
    .unwrap();
    assert_eq!(
        late,
        vec![Completed::Lost],
        "attempt 1's result was dropped"
    );
    // A retried call of attempt 2's retry still replays.
    let again = v3::complete(
        &mut conn,
        &keys,
        "w",
        &[ending(&second, "t", EndState::Retry("boom".into()))],
    )
    .await
    .unwrap();
    assert_eq!(again, vec![Completed::Replay]);
}

/// FCALL `function` on queue `Q` with string arguments.
async fn fcall(
    conn: &mut MultiplexedConnection,
    function: &str,
    args: &[&str],
) -> redis::RedisResult<Value> {
    let meta = QueueKeys::new(Q).unwrap().meta();
    let mut cmd = redis::cmd("FCALL");
    cmd.arg(function).arg(1).arg(meta);
    for a in args {
        cmd.arg(*a);
    }
    cmd.query_async(conn).await
}

/// A stream meta without its `bands` field (every other function reads
/// it as 1 band): rtq3_create crashed on it with a Lua error (concatenating
/// the missing field) instead of refusing it with INVALID.
#[tokio::test]
async fn create_on_a_stream_meta_without_bands_answers_invalid_not_a_lua_error() {
    let redis = RedisServer::start();
    let mut conn = patient_conn(&redis.url()).await;
    let keys = queue(&mut conn, 1).await;
    raw(&mut conn, &["HDEL", &keys.meta(), "bands"]).await;
    let before = snapshot(&mut conn).await;
    let err = fcall(&mut conn, "rtq3_create", &["3", "0"])
        .await
        .expect_err("a band count other than the queue's");
    assert_eq!(err.code(), Some("INVALID"), "{err}");
    assert!(
        snapshot(&mut conn).await == before,
        "a refused create wrote"
    );
    // As every other function reads it: one band.
    fcall(&mut conn, "rtq3_create", &["1", "5"]).await.unwrap();
}

/// A task whose worker died with its last attempt: the housekeeping
/// worker that fails it must name the lost worker in the ending (as v2
/// does), not itself (it never ran the task).
#[tokio::test]
async fn an_attempt_failed_by_takeover_names_the_worker_that_was_lost() {
    let redis = RedisServer::start();
    let mut conn = patient_conn(&redis.url()).await;
    let keys = queue(&mut conn, 1).await;
    let reply = keys.reply("c");
    raw(&mut conn, &["XADD", &reply, "*", "created", "1"]).await;
    v3::submit(&mut conn, &keys, &[task("t", 0, &reply, 1)])
        .await
        .unwrap();
    let d = v3::read_new(&mut conn, &keys, "dead", 0, 1, None)
        .await
        .unwrap()
        .remove(0);
    age(&mut conn, &keys, 0, "dead", &d.held.entry).await;
    let (ended, taken) = v3::takeover(&mut conn, &keys, "keeper", LEASE, 1)
        .await
        .unwrap();
    assert_eq!((ended, taken.len()), (1, 0));
    match v3::status(&mut conn, &keys, "t").await.unwrap() {
        v3::Status::Ended {
            kind,
            worker,
            attempt,
            ..
        } => {
            assert_eq!(kind, "worker_lost");
            assert_eq!(attempt, 1);
            assert_eq!(worker, "dead");
        }
        other => panic!("expected an ending, got {other:?}"),
    }
}

/// An entry deleted by hand while its worker held it: a retry (which
/// needs the entry's fields to queue it again) cannot be written and must
/// answer LOST, as the library's comment says, not REPLAY (which tells
/// the worker its retry was queued when nothing was written).
#[tokio::test]
async fn a_retry_of_an_entry_deleted_by_hand_is_lost_not_replayed() {
    let redis = RedisServer::start();
    let mut conn = patient_conn(&redis.url()).await;
    let keys = queue(&mut conn, 1).await;
    v3::submit(&mut conn, &keys, &[task("t", 0, "", 3)])
        .await
        .unwrap();
    let d = v3::read_new(&mut conn, &keys, "w", 0, 1, None)
        .await
        .unwrap()
        .remove(0);
    raw(&mut conn, &["XDEL", &v3::band_key(&keys, 0), &d.held.entry]).await;
    let before = snapshot(&mut conn).await;
    for state in [EndState::Retry("x".into()), EndState::HandBack("x".into())] {
        let got = v3::complete(&mut conn, &keys, "w", &[ending(&d.held, "t", state)])
            .await
            .unwrap();
        assert_eq!(got, vec![Completed::Lost]);
    }
    assert!(snapshot(&mut conn).await == before, "a LOST retry wrote");
}

/// `Status::Ended` promises an empty kind and message for a done task
/// (its final event carries neither); the library answered kind
/// `handler` for every done task.
#[tokio::test]
async fn the_status_of_a_done_task_has_no_error_kind() {
    let redis = RedisServer::start();
    let mut conn = patient_conn(&redis.url()).await;
    let keys = queue(&mut conn, 1).await;
    v3::submit(&mut conn, &keys, &[task("t", 0, "", 3)])
        .await
        .unwrap();
    let d = v3::read_new(&mut conn, &keys, "w", 0, 1, None)
        .await
        .unwrap()
        .remove(0);
    let got = v3::complete(
        &mut conn,
        &keys,
        "w",
        &[ending(&d.held, "t", EndState::Done("{\"ok\":1}".into()))],
    )
    .await
    .unwrap();
    assert_eq!(got, vec![Completed::Ok]);
    match v3::status(&mut conn, &keys, "t").await.unwrap() {
        v3::Status::Ended {
            kind,
            message,
            attempt,
            worker,
            ..
        } => {
            assert_eq!((kind.as_str(), message.as_str()), ("", ""));
            assert_eq!((attempt, worker.as_str()), (1, "w"));
        }
        other => panic!("expected an ending, got {other:?}"),
    }
}

/// A marker whose reply key was overwritten to name the queue's own band
/// stream: the final event went into the band as a foreign entry, and
/// every later housekeeping call was refused ("not a task") for good.
/// Events go only to reply streams of the queue (`r:<client>`).
#[tokio::test]
async fn events_go_only_to_reply_streams_never_to_a_band() {
    let redis = RedisServer::start();
    let mut conn = patient_conn(&redis.url()).await;
    let keys = queue(&mut conn, 1).await;
    v3::submit(
        &mut conn,
        &keys,
        &[task("t", 0, "", 3), task("u", 0, "", 3)],
    )
    .await
    .unwrap();
    let d = v3::read_new(&mut conn, &keys, "w", 0, 1, None)
        .await
        .unwrap()
        .remove(0);
    let band = v3::band_key(&keys, 0);
    let marker = v3::marker_key(&keys, "t");
    raw(
        &mut conn,
        &[
            "SET",
            &marker,
            &format!("0 {} 3600000 {band}", d.held.entry),
        ],
    )
    .await;
    v3::complete(
        &mut conn,
        &keys,
        "w",
        &[ending(&d.held, "t", EndState::Done("{}".into()))],
    )
    .await
    .unwrap();
    let len: i64 = redis::cmd("XLEN")
        .arg(&band)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(len, 1, "only u's entry is left in the band");
    v3::takeover(&mut conn, &keys, "w", LEASE, 1)
        .await
        .expect("housekeeping still runs");
}

/// A depth counter written with a leading zero (or as `-0`) passed the
/// meta check (`tonumber` reads it), but Redis's `HINCRBY` refuses it: a
/// submit added the task's entry and marker, then failed. Every function
/// that moves the counter must refuse such a meta before its first write.
#[tokio::test]
async fn a_depth_counter_redis_cannot_increment_is_refused_before_any_write() {
    let redis = RedisServer::start();
    let mut conn = patient_conn(&redis.url()).await;
    for bad in ["012", "-0", "-07", "00"] {
        let keys = queue(&mut conn, 1).await;
        v3::submit(&mut conn, &keys, &[task("t", 0, "", 3)])
            .await
            .unwrap();
        let d = v3::read_new(&mut conn, &keys, "w", 0, 1, None)
            .await
            .unwrap()
            .remove(0);
        raw(&mut conn, &["HSET", &keys.meta(), "n", bad]).await;
        let before = snapshot(&mut conn).await;
        let submit = fcall(
            &mut conn,
            "rtq3_submit",
            &["1", "u", "0", "{}", "", "0", "3", "60000"],
        )
        .await;
        let entry = d.held.entry.as_str();
        let complete = fcall(
            &mut conn,
            "rtq3_complete",
            &["w", "1", "0", entry, "t", "1", "0", "done", "{}", "-"],
        )
        .await;
        let cancel = fcall(&mut conn, "rtq3_cancel", &["t", "stop"]).await;
        for (what, got) in [
            ("submit", submit),
            ("complete", complete),
            ("cancel", cancel),
        ] {
            let err = got.expect_err(what);
            assert_eq!(err.code(), Some("INVALID"), "{what} with n={bad}: {err}");
        }
        assert!(
            snapshot(&mut conn).await == before,
            "n={bad}: a refused call wrote"
        );
    }
}
