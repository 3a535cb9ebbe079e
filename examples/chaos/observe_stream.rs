//! What the run watches while the chaos goes on when the queue is a stream
//! queue (`--stream-queue`, protocol v3), every [`TICK`]:
//! - **held entries**: every band's pending-list summary (`XPENDING b:<band>
//!   w`, all bands in one MULTI/EXEC), summed per worker id. A stream queue
//!   keeps no per-worker `busy` or `free` in Redis, and a worker's pending
//!   list is not its running attempts: it also holds attempts that finished
//!   while their ending is being written (the worker reads the next task
//!   while the previous complete is in flight) and, for one round trip, the
//!   surplus of a blocking read over several bands (one entry per band at
//!   most, handed back at once). So the hard bound checked is
//!   `2 x slots + bands`; samples above `slots` are counted and reported,
//!   not failed. "Running at most `slots` attempts" itself is not checked.
//! - **endings**: a keyspace-notification subscription on the queue's
//!   markers (`m:<id>`): every ending writes its payload with one `APPEND`
//!   to the marker (PROTOCOL-V3 and `end_task` in core/lua/v3/stream.lua;
//!   a submit or a requeue only `SET`s it), so two `append` events for one
//!   task are two endings. Only on the private Redis (it sets
//!   `notify-keyspace-events`); a broken subscription (a Redis restart)
//!   makes the audit partial, which the checks take into account.
//! - **recovery** after each kill -9: the entries the killed worker held
//!   (read at the first tick after the kill: nothing can be delivered to a
//!   dead consumer afterwards), until each has left its pending list (taken
//!   over by a live worker, voided by a restart under the same id, or
//!   ended).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use redis::aio::ConnectionManager;
use redis::Value;
use rtq_core::functions::v3;
use rtq_core::keys::QueueKeys;
use tokio_util::sync::CancellationToken;

use super::fleet::Profile;
use super::observe::{SharedObs, Violation, TICK};

const CAPACITY_EVERY: u64 = 4;
/// Violations kept with their details (all are counted).
const KEEP_DETAILS: usize = 20;

/// Watches Redis until `stop` is cancelled.
pub async fn observe(
    mut conn: ConnectionManager,
    keys: QueueKeys,
    bands: u8,
    fleet: Arc<Mutex<Vec<Profile>>>,
    obs: SharedObs,
    started: Instant,
    stop: CancellationToken,
) {
    let mut tick: u64 = 0;
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut snapshotted: Vec<bool> = Vec::new();
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.cancelled() => return,
        }
        tick += 1;
        if let Err(e) = track_recoveries(&mut conn, &keys, bands, &obs, &mut snapshotted).await {
            tracing::debug!(error = %e, "recovery poll failed");
        }
        if tick.is_multiple_of(CAPACITY_EVERY) {
            let profiles = fleet.lock().unwrap().clone();
            match held_by_worker(&mut conn, &keys, bands).await {
                Ok(held) => {
                    let mut o = obs.lock().unwrap();
                    o.samples += 1;
                    for p in &profiles {
                        let n = held.get(&p.id).copied().unwrap_or(0);
                        let slots = i64::from(p.slots);
                        if n > slots {
                            o.held_above_slots += 1;
                        }
                        if o.held_peak
                            .as_ref()
                            .is_none_or(|(_, m, s)| n - slots > m - s)
                        {
                            o.held_peak = Some((p.id.clone(), n, slots));
                        }
                        if n > hard_bound(slots, bands) {
                            let v = Violation {
                                at: started.elapsed(),
                                worker: p.id.clone(),
                                free: 0,
                                owned: n,
                                slots,
                                busy: 0,
                            };
                            tracing::error!(worker = %v.worker, held = n, slots, "a worker holds more entries than it can");
                            o.violations += 1;
                            if o.violation_details.len() < KEEP_DETAILS {
                                o.violation_details.push(v);
                            }
                        }
                    }
                    // Entries held by an id the run never started.
                    for (w, n) in held {
                        if !profiles.iter().any(|p| p.id == w) {
                            o.violations += 1;
                            if o.violation_details.len() < KEEP_DETAILS {
                                o.violation_details.push(Violation {
                                    at: started.elapsed(),
                                    worker: w,
                                    free: 0,
                                    owned: n,
                                    slots: -1,
                                    busy: 0,
                                });
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "pending-list sample failed");
                    obs.lock().unwrap().sample_errors += 1;
                }
            }
        }
    }
}

/// The most entries a worker with `slots` may hold in the pending lists:
/// running attempts and reads in flight (`slots`), attempts whose ending
/// is being written (`slots`), and a blocking read's surplus (`bands`).
pub fn hard_bound(slots: i64, bands: u8) -> i64 {
    2 * slots + i64::from(bands)
}

/// Entries held per worker id over every band, from one MULTI/EXEC of the
/// bands' pending summaries.
///
/// # Errors
/// Redis errors.
pub async fn held_by_worker(
    conn: &mut ConnectionManager,
    keys: &QueueKeys,
    bands: u8,
) -> redis::RedisResult<HashMap<String, i64>> {
    let mut pipe = redis::pipe();
    pipe.atomic();
    for b in 0..bands {
        pipe.cmd("XPENDING")
            .arg(v3::band_key(keys, b))
            .arg(v3::GROUP);
    }
    let replies: Vec<Value> = pipe.query_async(conn).await?;
    let mut out = HashMap::new();
    for reply in replies {
        for (w, n) in summary_consumers(&reply) {
            *out.entry(w).or_insert(0) += n;
        }
    }
    Ok(out)
}

/// The total of an `XPENDING key group` summary reply.
pub fn summary_total(reply: &Value) -> i64 {
    match reply {
        Value::Array(items) => match items.first() {
            Some(v) => int_of(v),
            None => 0,
        },
        _ => 0,
    }
}

/// The consumers and their counts of an `XPENDING key group` summary reply.
pub fn summary_consumers(reply: &Value) -> Vec<(String, i64)> {
    let Value::Array(items) = reply else {
        return Vec::new();
    };
    let Some(Value::Array(consumers)) = items.get(3) else {
        return Vec::new();
    };
    consumers
        .iter()
        .filter_map(|c| match c {
            Value::Array(pair) if pair.len() == 2 => Some((text_of(&pair[0]), int_of(&pair[1]))),
            _ => None,
        })
        .collect()
}

fn int_of(v: &Value) -> i64 {
    match v {
        Value::Int(n) => *n,
        Value::BulkString(b) => String::from_utf8_lossy(b).parse().unwrap_or(0),
        Value::SimpleString(s) => s.parse().unwrap_or(0),
        _ => 0,
    }
}

fn text_of(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        other => format!("{other:?}"),
    }
}

/// The entries `worker` holds, as `<band>/<entry>` -> delivery count.
///
/// # Errors
/// Redis errors.
pub async fn held_entries(
    conn: &mut ConnectionManager,
    keys: &QueueKeys,
    bands: u8,
    worker: &str,
) -> redis::RedisResult<HashMap<String, u64>> {
    let mut pipe = redis::pipe();
    for b in 0..bands {
        pipe.cmd("XPENDING")
            .arg(v3::band_key(keys, b))
            .arg(v3::GROUP)
            .arg("-")
            .arg("+")
            .arg(1024)
            .arg(worker);
    }
    let replies: Vec<Vec<(String, String, u64, u64)>> = pipe.query_async(conn).await?;
    let mut out = HashMap::new();
    for (b, rows) in replies.into_iter().enumerate() {
        for (entry, _consumer, _idle, deliveries) in rows {
            out.insert(format!("{b}/{entry}"), deliveries);
        }
    }
    Ok(out)
}

/// Updates every open recovery: the killed worker's entries are read once
/// (at the first tick after the kill), then each is recovered when it left
/// that worker's pending list.
async fn track_recoveries(
    conn: &mut ConnectionManager,
    keys: &QueueKeys,
    bands: u8,
    obs: &SharedObs,
    snapshotted: &mut Vec<bool>,
) -> redis::RedisResult<()> {
    let open: Vec<(usize, String, bool)> = {
        let o = obs.lock().unwrap();
        o.recoveries
            .iter()
            .enumerate()
            .filter(|(_, r)| r.done_at.is_none())
            .map(|(i, r)| (i, r.worker.clone(), r.closed))
            .collect()
    };
    for (i, worker, restarted) in open {
        if snapshotted.len() <= i {
            snapshotted.resize(i + 1, false);
        }
        let held = if restarted && !snapshotted[i] {
            // Restarted before the first look: the new process's join
            // voided what the id held; nothing to follow.
            HashMap::new()
        } else {
            held_entries(conn, keys, bands, &worker).await?
        };
        let now = Instant::now();
        let mut o = obs.lock().unwrap();
        let r = &mut o.recoveries[i];
        if !snapshotted[i] {
            snapshotted[i] = true;
            for (entry, deliveries) in &held {
                r.tasks.insert(entry.clone(), (*deliveries, None));
            }
            r.closed = true;
        } else {
            for (entry, (deliveries, done)) in r.tasks.iter_mut() {
                if done.is_none() && held.get(entry) != Some(deliveries) {
                    *done = Some(now);
                }
            }
        }
        if r.tasks.values().all(|(_, t)| t.is_some()) {
            r.done_at = Some(now);
        }
    }
    Ok(())
}

/// Starts the ending audit (see the module doc) on the private Redis at
/// `url`: sets `notify-keyspace-events`, subscribes to the queue's markers
/// and returns once subscribed; the audit then runs until `stop`.
///
/// # Errors
/// Redis errors of the first subscription.
pub async fn start_ending_audit(
    url: &str,
    keys: &QueueKeys,
    obs: SharedObs,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let client = redis::Client::open(url)?;
    let pattern = format!("__keyspace@*__:{}", glob_escape(&v3::marker_key(keys, ""))) + "*";
    let prefix = v3::marker_key(keys, "");
    let first = subscribe(&client, &pattern).await?;
    obs.lock().unwrap().ending_audit = true;
    Ok(tokio::spawn(async move {
        let mut pubsub = Some(first);
        loop {
            let Some(mut ps) = pubsub.take() else {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
                match subscribe(&client, &pattern).await {
                    Ok(ps) => pubsub = Some(ps),
                    Err(e) => tracing::debug!(error = %e, "re-subscribing the ending audit failed"),
                }
                continue;
            };
            {
                let mut messages = ps.on_message();
                loop {
                    let msg = tokio::select! {
                        _ = stop.cancelled() => return,
                        m = messages.next() => m,
                    };
                    let Some(msg) = msg else { break };
                    let event: String = msg.get_payload().unwrap_or_default();
                    if event != "append" {
                        continue;
                    }
                    let channel = msg.get_channel_name();
                    let Some(key) = channel.split_once("__:").map(|(_, k)| k) else {
                        continue;
                    };
                    if let Some(id) = key.strip_prefix(&prefix) {
                        *obs.lock()
                            .unwrap()
                            .ending_appends
                            .entry(id.to_string())
                            .or_insert(0) += 1;
                    }
                }
            }
            // The connection broke (a Redis restart): events were missed.
            tracing::info!("the ending audit lost its subscription; re-subscribing");
            obs.lock().unwrap().ending_audit_breaks += 1;
        }
    }))
}

/// Enables keyspace events for string commands and subscribes to `pattern`.
async fn subscribe(
    client: &redis::Client,
    pattern: &str,
) -> redis::RedisResult<redis::aio::PubSub> {
    let mut conn = client.get_multiplexed_async_connection().await?;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("notify-keyspace-events")
        .arg("K$")
        .query_async(&mut conn)
        .await?;
    let mut ps = client.get_async_pubsub().await?;
    ps.psubscribe(pattern).await?;
    Ok(ps)
}

/// Escapes the glob characters of a key prefix.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_summary_is_read_per_consumer() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let reply = Value::Array(vec![
            Value::Int(3),
            bulk("1-0"),
            bulk("3-0"),
            Value::Array(vec![
                Value::Array(vec![bulk("w0"), bulk("2")]),
                Value::Array(vec![bulk("w1"), bulk("1")]),
            ]),
        ]);
        assert_eq!(summary_total(&reply), 3);
        assert_eq!(
            summary_consumers(&reply),
            vec![("w0".to_string(), 2), ("w1".to_string(), 1)]
        );
        let empty = Value::Array(vec![Value::Int(0), Value::Nil, Value::Nil, Value::Nil]);
        assert_eq!(summary_total(&empty), 0);
        assert!(summary_consumers(&empty).is_empty());
    }

    #[tokio::test]
    async fn the_sampler_reads_each_worker_s_entries_over_every_band() {
        let redis = rtq_testkit::RedisServer::start();
        let keys = QueueKeys::new("q").unwrap();
        let mut conn = ConnectionManager::new(redis::Client::open(redis.url()).unwrap())
            .await
            .unwrap();
        for b in 0..2u8 {
            let key = v3::band_key(&keys, b);
            let _: () = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&key)
                .arg(v3::GROUP)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut conn)
                .await
                .unwrap();
            for _ in 0..3 {
                let _: String = redis::cmd("XADD")
                    .arg(&key)
                    .arg("*")
                    .arg("t")
                    .arg("x")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
            }
            // w0 reads 2 of each band, w1 the last one.
            for (w, n) in [("w0", 2), ("w1", 1)] {
                let _: Value = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(v3::GROUP)
                    .arg(w)
                    .arg("COUNT")
                    .arg(n)
                    .arg("STREAMS")
                    .arg(&key)
                    .arg(">")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
            }
        }
        let held = held_by_worker(&mut conn, &keys, 2).await.unwrap();
        assert_eq!(held.get("w0"), Some(&4));
        assert_eq!(held.get("w1"), Some(&2));
        let entries = held_entries(&mut conn, &keys, 2, "w1").await.unwrap();
        assert_eq!(entries.len(), 2);
        assert!(entries.keys().any(|k| k.starts_with("0/")));
        assert!(entries.keys().any(|k| k.starts_with("1/")));
        assert!(entries.values().all(|d| *d == 1));
    }
}
