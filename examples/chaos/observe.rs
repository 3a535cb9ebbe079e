//! What the run watches in Redis while the chaos goes on, every
//! [`TICK`]:
//! - **capacity**: for every worker id, `free` score + `SCARD wq:<wid>` <=
//!   `slots` of its `w:` hash, and the worker's own `busy` <= `slots`, read
//!   in one MULTI/EXEC so the numbers are one consistent snapshot;
//! - **endings**: the queue's `ended` stream (an entry per ending, or per
//!   coalesced complete, PROTOCOL.md section 4), read to the end, so a task that ends twice is seen even if
//!   its second ending carries no result;
//! - **recovery** after each kill -9: the tasks the killed worker owned
//!   (including those handed to it after the kill, until it is reaped or
//!   restarted), until each runs again (a later attempt) or has ended.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::Value;
use rtq_core::keys::QueueKeys;
use rtq_core::TaskState;
use tokio_util::sync::CancellationToken;

use super::fleet::Profile;

/// The observer's period; capacity is sampled every [`CAPACITY_EVERY`]
/// ticks and the `ended` stream read every [`ENDED_EVERY`].
pub const TICK: Duration = Duration::from_millis(50);
const CAPACITY_EVERY: u64 = 4;
const ENDED_EVERY: u64 = 2;
/// Violations kept with their details (all are counted).
const KEEP_DETAILS: usize = 20;

/// One broken capacity invariant, as sampled.
#[derive(Clone, Debug)]
pub struct Violation {
    /// Since the start of the run.
    pub at: Duration,
    /// Worker id.
    pub worker: String,
    /// Its `free` score (0 if absent).
    pub free: i64,
    /// `SCARD wq:<wid>`.
    pub owned: i64,
    /// `slots` of its `w:` hash.
    pub slots: i64,
    /// `busy` of its `w:` hash (what the process itself runs).
    pub busy: i64,
}

/// Recovery after one kill -9.
#[derive(Clone, Debug)]
pub struct Recovery {
    /// Worker id that was killed.
    pub worker: String,
    /// When it was killed.
    pub at: Instant,
    /// No more tasks are counted for it: it was reaped (left `workers`) or
    /// restarted under its id.
    pub closed: bool,
    /// Tasks it owned: attempt it held them with, and when they ran again
    /// (a later attempt) or ended.
    pub tasks: HashMap<String, (u64, Option<Instant>)>,
    /// When every task had recovered (closed and none left).
    pub done_at: Option<Instant>,
}

impl Recovery {
    /// Kill to the last task's recovery; `None` while open or if it owned
    /// nothing.
    pub fn time(&self) -> Option<Duration> {
        self.done_at?;
        self.tasks
            .values()
            .filter_map(|(_, t)| *t)
            .max()
            .map(|last| last - self.at)
    }
}

/// Everything observed, shared with the chaos loop and the checks.
#[derive(Debug, Default)]
pub struct Observations {
    /// Capacity snapshots taken.
    pub samples: u64,
    /// Snapshots that failed (Redis down or restarting).
    pub sample_errors: u64,
    /// Capacity violations seen (every worker in every snapshot).
    pub violations: u64,
    /// The first few violations.
    pub violation_details: Vec<Violation>,
    /// Endings per task id, from the `ended` stream.
    pub endings: HashMap<String, u32>,
    /// Entries read from the `ended` stream.
    pub ended_read: u64,
    /// Last entry id read.
    pub ended_last: Option<String>,
    /// Recoveries after kill -9, in order (on a stream queue the keys of
    /// `tasks` are the killed worker's entries, `<band>/<entry>`).
    pub recoveries: Vec<Recovery>,
    /// Stream queue: (worker, sample) pairs where the worker's pending
    /// entries exceeded its slots (allowed: see `observe_stream`).
    pub held_above_slots: u64,
    /// Stream queue: the sample with the most pending entries relative to
    /// the worker's slots: (worker, entries held, slots).
    pub held_peak: Option<(String, i64, i64)>,
    /// Stream queue: the ending audit (keyspace events) ran.
    pub ending_audit: bool,
    /// Stream queue: `APPEND`s to each task's marker (one per ending).
    pub ending_appends: HashMap<String, u32>,
    /// Stream queue: times the audit's subscription broke (events missed).
    pub ending_audit_breaks: u64,
}

/// Shared observations.
pub type SharedObs = Arc<Mutex<Observations>>;

impl Observations {
    /// Starts tracking recovery after a kill -9 of `worker`.
    pub fn killed(&mut self, worker: &str) {
        self.recoveries.push(Recovery {
            worker: worker.to_string(),
            at: Instant::now(),
            closed: false,
            tasks: HashMap::new(),
            done_at: None,
        });
    }

    /// Stops counting new tasks for `worker`: it is being restarted, and
    /// what its id owns from now on belongs to the new process.
    pub fn restarting(&mut self, worker: &str) {
        for r in &mut self.recoveries {
            if r.worker == worker {
                r.closed = true;
            }
        }
    }
}

/// Watches Redis until `stop` is cancelled.
pub async fn observe(
    mut conn: ConnectionManager,
    keys: QueueKeys,
    fleet: Arc<Mutex<Vec<Profile>>>,
    obs: SharedObs,
    started: Instant,
    stop: CancellationToken,
) {
    let mut tick: u64 = 0;
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.cancelled() => return,
        }
        tick += 1;
        if let Err(e) = track_recoveries(&mut conn, &keys, &obs).await {
            tracing::debug!(error = %e, "recovery poll failed");
        }
        if tick.is_multiple_of(ENDED_EVERY) {
            if let Err(e) = read_endings(&mut conn, &keys, &obs).await {
                tracing::debug!(error = %e, "reading the ended stream failed");
            }
        }
        if tick.is_multiple_of(CAPACITY_EVERY) {
            let profiles = fleet.lock().unwrap().clone();
            match sample_capacity(&mut conn, &keys, &profiles).await {
                Ok(found) => {
                    let mut o = obs.lock().unwrap();
                    o.samples += 1;
                    for mut v in found {
                        v.at = started.elapsed();
                        tracing::error!(worker = %v.worker, free = v.free, owned = v.owned, slots = v.slots, busy = v.busy, "capacity invariant broken");
                        o.violations += 1;
                        if o.violation_details.len() < KEEP_DETAILS {
                            o.violation_details.push(v);
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "capacity sample failed");
                    obs.lock().unwrap().sample_errors += 1;
                }
            }
        }
    }
}

/// One consistent snapshot of every worker's capacity; returns the workers
/// that break `free + owned <= slots` or `busy <= slots`.
///
/// # Errors
/// Redis errors.
pub async fn sample_capacity(
    conn: &mut ConnectionManager,
    keys: &QueueKeys,
    profiles: &[Profile],
) -> redis::RedisResult<Vec<Violation>> {
    let snap = capacity_snapshot(conn, keys, profiles).await?;
    Ok(snap
        .into_iter()
        .filter(|v| v.slots >= 0 && (v.free + v.owned > v.slots || v.busy > v.slots))
        .collect())
}

/// Every worker's free, owned, slots and busy in one MULTI/EXEC; `slots`
/// is -1 for an id with no `w:` hash (never registered, or expired).
///
/// # Errors
/// Redis errors.
pub async fn capacity_snapshot(
    conn: &mut ConnectionManager,
    keys: &QueueKeys,
    profiles: &[Profile],
) -> redis::RedisResult<Vec<Violation>> {
    if profiles.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    pipe.atomic();
    for p in profiles {
        pipe.zscore(keys.free(), &p.id)
            .scard(keys.worker_tasks(&p.id))
            .hget(keys.worker(&p.id), "slots")
            .hget(keys.worker(&p.id), "busy");
    }
    let replies: Vec<Value> = pipe.query_async(conn).await?;
    let num = |v: Option<&Value>, absent: i64| -> i64 {
        match v {
            Some(Value::Int(n)) => *n,
            Some(Value::Double(d)) => *d as i64,
            Some(Value::BulkString(b)) => String::from_utf8_lossy(b)
                .parse::<f64>()
                .map(|f| f as i64)
                .unwrap_or(absent),
            Some(Value::SimpleString(s)) => s.parse::<f64>().map(|f| f as i64).unwrap_or(absent),
            _ => absent,
        }
    };
    Ok(profiles
        .iter()
        .enumerate()
        .map(|(i, p)| Violation {
            at: Duration::ZERO,
            worker: p.id.clone(),
            free: num(replies.get(4 * i), 0),
            owned: num(replies.get(4 * i + 1), 0),
            slots: num(replies.get(4 * i + 2), -1),
            busy: num(replies.get(4 * i + 3), 0),
        })
        .collect())
}

/// Reads the `ended` stream from the last entry read to its end.
///
/// # Errors
/// Redis errors.
pub async fn read_endings(
    conn: &mut ConnectionManager,
    keys: &QueueKeys,
    obs: &SharedObs,
) -> redis::RedisResult<()> {
    loop {
        let from = match &obs.lock().unwrap().ended_last {
            Some(id) => format!("({id}"),
            None => "-".to_string(),
        };
        let reply: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XRANGE")
            .arg(keys.ended())
            .arg(&from)
            .arg("+")
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        let n = reply.len();
        let mut o = obs.lock().unwrap();
        for (id, fields) in reply {
            // An entry holds one ending or (revision 9) every ending of a
            // coalesced complete: each `t` field names one.
            for pair in fields.chunks_exact(2) {
                if pair[0] == b"t" {
                    let task = String::from_utf8_lossy(&pair[1]).into_owned();
                    *o.endings.entry(task).or_insert(0) += 1;
                }
            }
            o.ended_read += 1;
            o.ended_last = Some(id);
        }
        if n < 1000 {
            return Ok(());
        }
    }
}

/// Entries ever added to the `ended` stream (`XINFO STREAM` entries-added;
/// 0 if it does not exist).
///
/// # Errors
/// Redis errors.
pub async fn endings_added(
    conn: &mut ConnectionManager,
    keys: &QueueKeys,
) -> redis::RedisResult<u64> {
    let exists: bool = redis::cmd("EXISTS")
        .arg(keys.ended())
        .query_async(conn)
        .await?;
    if !exists {
        return Ok(0);
    }
    let info: HashMap<String, Value> = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(keys.ended())
        .query_async(conn)
        .await?;
    Ok(match info.get("entries-added") {
        Some(Value::Int(n)) => *n as u64,
        _ => 0,
    })
}

/// Updates every open recovery: new tasks of the killed worker while it is
/// not closed, and tasks that ran again or ended.
async fn track_recoveries(
    conn: &mut ConnectionManager,
    keys: &QueueKeys,
    obs: &SharedObs,
) -> redis::RedisResult<()> {
    let open: Vec<(usize, String, bool, Vec<String>)> = {
        let o = obs.lock().unwrap();
        o.recoveries
            .iter()
            .enumerate()
            .filter(|(_, r)| r.done_at.is_none())
            .map(|(i, r)| {
                let waiting = r
                    .tasks
                    .iter()
                    .filter(|(_, (_, done))| done.is_none())
                    .map(|(id, _)| id.clone())
                    .collect();
                (i, r.worker.clone(), r.closed, waiting)
            })
            .collect()
    };
    for (i, worker, closed, waiting) in open {
        let mut fresh: Vec<(String, u64)> = Vec::new();
        let mut now_closed = closed;
        if !closed {
            let (lease, owned): (Option<f64>, Vec<String>) = redis::pipe()
                .atomic()
                .zscore(keys.workers(), &worker)
                .smembers(keys.worker_tasks(&worker))
                .query_async(conn)
                .await?;
            for id in owned {
                let (st, w, att): (Option<String>, Option<String>, Option<u64>) =
                    redis::cmd("HMGET")
                        .arg(keys.task(&id))
                        .arg("st")
                        .arg("w")
                        .arg("att")
                        .query_async(conn)
                        .await?;
                if st.as_deref() == Some("running") && w.as_deref() == Some(worker.as_str()) {
                    fresh.push((id, att.unwrap_or(0)));
                }
            }
            now_closed = lease.is_none();
        }
        let mut progressed: Vec<(String, Instant)> = Vec::new();
        for id in waiting {
            let (st, att): (Option<String>, Option<u64>) = redis::cmd("HMGET")
                .arg(keys.task(&id))
                .arg("st")
                .arg("att")
                .query_async(conn)
                .await?;
            let held = obs.lock().unwrap().recoveries[i]
                .tasks
                .get(&id)
                .map(|(a, _)| *a)
                .unwrap_or(0);
            // A vanished hash counts as ended here; the checks find it.
            let ended = match st.as_deref().and_then(TaskState::parse) {
                Some(state) => state.is_terminal(),
                None => true,
            };
            if ended || att.unwrap_or(0) > held {
                progressed.push((id, Instant::now()));
            }
        }
        let mut o = obs.lock().unwrap();
        let r = &mut o.recoveries[i];
        for (id, att) in fresh {
            r.tasks.entry(id).or_insert((att, None));
        }
        for (id, at) in progressed {
            if let Some(entry) = r.tasks.get_mut(&id) {
                entry.1.get_or_insert(at);
            }
        }
        r.closed |= now_closed;
        if r.closed && r.tasks.values().all(|(_, t)| t.is_some()) {
            r.done_at = Some(Instant::now());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(id: &str) -> Profile {
        Profile {
            id: id.into(),
            slots: 2,
            latency_ms: 0,
            tokens_per_sec: 0,
        }
    }

    #[tokio::test]
    async fn the_sampler_sees_a_worker_holding_more_than_its_slots() {
        let redis = rtq_testkit::RedisServer::start();
        let keys = QueueKeys::new("q").unwrap();
        let mut conn = ConnectionManager::new(redis::Client::open(redis.url()).unwrap())
            .await
            .unwrap();
        let _: () = redis::pipe()
            // ok: 1 free + 1 owned of 2 slots
            .hset(keys.worker("ok"), "slots", 2)
            .zadd(keys.free(), "ok", 1)
            .sadd(keys.worker_tasks("ok"), "t1")
            // over: 1 free + 2 owned of 2 slots
            .hset(keys.worker("over"), "slots", 2)
            .zadd(keys.free(), "over", 1)
            .sadd(keys.worker_tasks("over"), &["t2", "t3"])
            // busy: runs 3 of 2 by its own count
            .hset(keys.worker("busy"), "slots", 2)
            .hset(keys.worker("busy"), "busy", 3)
            .query_async(&mut conn)
            .await
            .unwrap();
        let profiles = ["ok", "over", "busy", "never-registered"].map(profile);
        let found = sample_capacity(&mut conn, &keys, &profiles).await.unwrap();
        let names: Vec<&str> = found.iter().map(|v| v.worker.as_str()).collect();
        assert_eq!(names, ["over", "busy"]);
        assert_eq!((found[0].free, found[0].owned, found[0].slots), (1, 2, 2));
    }
}
