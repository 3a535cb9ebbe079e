//! Admin operations for the console, scripts and autoscalers: list queues,
//! counts, workers, pages of tasks, operator actions, statistics. Reads are
//! pipelined (one round trip per view) and bounded (no KEYS, no full scan
//! of a big list or zset).
//!
//! # Layout
//! - this file: [`Admin`], reads and operator actions on tasks and queues.
//! - `lifecycle`: whether a queue exists, and deleting one
//!   ([`Admin::delete_queue`]).
//! - `summary`: every queue at a glance ([`Admin::summaries`],
//!   [`Admin::dashboard`]).
//! - `stats_cache`: statistics for a poller, closed buckets read once
//!   ([`StatsCache`]).
//! - `task_pages`: pages of task summaries for lists, running tasks paged
//!   on the server ([`Admin::running_page`]).
//! - [`stats`]: rates and latency percentiles from the 10-second buckets.
//! - `workers`: the workers of many queues in two pipelined round trips
//!   ([`Admin::workers_of_many`]).
//! - `served`: what a catalog of served queues needs (pause flag, live
//!   workers' handlers and labels) and nothing more
//!   ([`Admin::served_queues`]).
//! - `events`: the queue's event tail, the workers that died or left in the
//!   last ten minutes, and deleting an ended task.
//! - `stream`: stream queues (protocol v3): their mode ([`QueueMode`]),
//!   counts, workers, running and queued tasks, and the actions they do
//!   not have yet. Every read and action here dispatches on the queue's
//!   mode.

mod events;
mod lifecycle;
mod served;
pub mod stats;
pub mod stats_cache;
pub mod stream;
mod summary;
pub mod task_pages;
mod workers;

use std::collections::{BTreeMap, HashMap};

use crate::connection::RedisConnection;
use redis::Value;

use crate::client::{Client, TaskInfo};
use crate::error::Error;
pub use crate::functions::queue_admin::DeleteTaskReply;
use crate::functions::queue_admin::{
    Housekeep, HousekeepReport, Pause, Purge, SetMaxDepth, SetPriority,
};
use crate::functions::requeue::{Requeue, RequeueReply};
use crate::functions::{self, Function};
use crate::keys::{validate_id, QueueKeys, QUEUES};
use crate::protocol::{value_to_i64, TaskState, PRIORITY_MAX, PRIORITY_MIN};
pub use events::{EventKind, QueueEvent};
pub use lifecycle::DeletedQueue;
pub use served::{ServedQueue, ServedQueues, ServedWorker};
pub use stats::{Percentiles, QueueStats};
pub use stats_cache::StatsCache;
pub use stream::{QueueMode, Unavailable};
pub use summary::ServerState;
pub use task_pages::RunningPage;

/// TIME, meta, pending count, delayed count, free slots with scores,
/// workers with scores, head id.
type OverviewReply = (
    Vec<i64>,
    HashMap<String, String>,
    u64,
    u64,
    Vec<(String, f64)>,
    Vec<(String, f64)>,
    Vec<String>,
);

/// Batch size of one purge step.
const PURGE_BATCH: u32 = 500;
/// Housekeeping rounds one `housekeeping` call runs at most.
const HOUSEKEEPING_ROUNDS: usize = 100;

/// A queue at a glance.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueueOverview {
    /// Queue name.
    pub name: String,
    /// The queue's kind: [`QueueMode::Exact`] (v2) or
    /// [`QueueMode::Stream`] (v3), from its meta hash. For a stream queue
    /// `pending` is its task count `n` less the running ones, `running`
    /// the entries its consumer group holds, the workers those of its
    /// live set `lv`; `paused`, `delayed` and `idle_slots` stay 0 (it has
    /// none of them), and `head_wait_ms` is read by [`Admin::overview`]
    /// only (it reads a queued entry, spec included: not for every queue
    /// of a summary).
    pub mode: QueueMode,
    /// True while nothing is handed out.
    pub paused: bool,
    /// Maximum pending tasks (0 = unlimited).
    pub max_depth: u64,
    /// Tasks waiting (pending and retries waiting out their backoff).
    pub pending: u64,
    /// Of those, retries waiting out their backoff.
    pub delayed: u64,
    /// Tasks handed to live workers.
    pub running: u64,
    /// Workers whose lease is current.
    pub workers_alive: u64,
    /// Workers registered but past their lease (not reaped yet).
    pub workers_stale: u64,
    /// Free slots of live workers.
    pub idle_slots: u64,
    /// How long the task at the head of the queue has waited (ms).
    pub head_wait_ms: Option<i64>,
    /// Redis time of the read (ms).
    pub now_ms: i64,
    /// Set when this queue's keys could not be read (a key of the wrong
    /// type, data this version cannot decode): the counts above are then
    /// zero, and every other queue is read as usual.
    pub error: Option<String>,
}

/// A worker as its heartbeat describes it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkerInfo {
    /// Worker id.
    pub id: String,
    /// Lease expiry (ms, Redis clock); `None` once reaped or stopped.
    pub lease_until_ms: Option<i64>,
    /// Every field of its heartbeat (host, slots, busy, done, state, ...).
    pub fields: HashMap<String, String>,
    /// Tasks it owns.
    pub tasks: Vec<String>,
}

impl WorkerInfo {
    /// A heartbeat field ("" if absent).
    pub fn field(&self, name: &str) -> &str {
        self.fields.get(name).map(String::as_str).unwrap_or("")
    }
    /// Milliseconds since its last heartbeat, at Redis time `now_ms`.
    pub fn heartbeat_age_ms(&self, now_ms: i64) -> Option<i64> {
        self.field("hb").parse::<i64>().ok().map(|hb| now_ms - hb)
    }
    /// When its `last_error` happened (ms, Redis clock), from the
    /// `last_error_ms` field (revision 14). `None` without an error, and
    /// for a worker older than revision 14, which sends no time: its
    /// error's age is unknown.
    pub fn last_error_ms(&self) -> Option<i64> {
        if self.field("last_error").is_empty() {
            return None;
        }
        self.field("last_error_ms")
            .parse::<i64>()
            .ok()
            .filter(|ms| *ms > 0)
    }
    /// How old its `last_error` is at Redis time `now_ms` (never
    /// negative); `None` as for [`last_error_ms`](Self::last_error_ms).
    pub fn last_error_age_ms(&self, now_ms: i64) -> Option<i64> {
        self.last_error_ms().map(|at| (now_ms - at).max(0))
    }
}

/// How long the head task has waited, from the reply of `HGET <head> sub`:
/// `None` when its submit time cannot be read (the hash vanished, holds a
/// foreign value, or is a foreign key): unknown, never "since 1970".
pub(crate) fn head_wait(now_ms: i64, sub: &Value) -> Option<i64> {
    let sub = match sub {
        Value::Int(i) => *i,
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok()?,
        _ => return None,
    };
    (sub > 0).then(|| now_ms - sub)
}

/// Admin access to rtq queues.
#[derive(Clone)]
pub struct Admin {
    conn: RedisConnection,
    /// The client it was made from (a stream queue's task status is read
    /// through its [`crate::Queue`]).
    client: Client,
}

impl Admin {
    /// Admin operations over a client's connection.
    pub fn new(client: &Client) -> Self {
        Self {
            conn: client.conn(),
            client: client.clone(),
        }
    }

    fn keys(queue: &str) -> Result<QueueKeys, Error> {
        QueueKeys::new(queue)
    }

    /// Names of all queues ever used (sorted).
    ///
    /// # Errors
    /// Redis errors.
    pub async fn queues(&self) -> Result<Vec<String>, Error> {
        let raw: Vec<Vec<u8>> = redis::cmd("SMEMBERS")
            .arg(QUEUES)
            .query_async(&mut self.conn.clone())
            .await?;
        // A name that is not UTF-8 cannot be a queue (names are checked on
        // every write path); one such entry must not hide the others.
        let mut names: Vec<String> = raw
            .into_iter()
            .filter_map(|n| String::from_utf8(n).ok())
            .collect();
        names.sort();
        Ok(names)
    }

    /// On a Redis Cluster, the master (`host:port`) that holds each of
    /// `queues` now (one round trip: `CLUSTER SLOTS`); empty on a single
    /// node.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn queue_nodes(&self, queues: &[String]) -> Result<HashMap<String, String>, Error> {
        Ok(crate::cluster::queue_nodes(&mut self.conn.clone(), queues).await?)
    }

    /// On a Redis Cluster, the queues of `queues` whose hash slot is
    /// being moved between masters now (live resharding, which rtq does
    /// not serve through: see docs/CLUSTER.md), with a description of the
    /// move; empty on a single node.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn moving_queues(&self, queues: &[String]) -> Result<Vec<(String, String)>, Error> {
        let moves = crate::cluster::slot_moves(&mut self.conn.clone()).await?;
        let mut out = Vec::new();
        for q in queues {
            let Ok(k) = QueueKeys::new(q) else { continue };
            let slot = crate::keys::cluster_slot(&k.meta());
            for m in moves.iter().filter(|m| m.slot == slot) {
                let dir = if m.migrating { "out of" } else { "into" };
                out.push((q.clone(), format!("slot {slot} moving {dir} {}", m.node)));
            }
        }
        Ok(out)
    }

    /// Counts of a queue: two round trips for an exact queue; for a stream
    /// queue (seen in the first) one more for its counts, and one for its
    /// oldest queued entry when it has queued tasks.
    ///
    /// # Errors
    /// Redis errors, invalid names.
    pub async fn overview(&self, queue: &str) -> Result<QueueOverview, Error> {
        let k = Self::keys(queue)?;
        let mut pipe = redis::pipe();
        pipe.cmd("TIME");
        summary::first_trip(&mut pipe, &k);
        let (time, meta, pending, delayed, free, workers, head): OverviewReply =
            pipe.query_async(&mut self.conn.clone()).await?;
        let now_ms = time_ms(&time);
        if let Some(stream) = stream::stream_meta(&k, &meta)? {
            return self.stream_overview(&k, &stream, now_ms).await;
        }
        let alive: Vec<&String> = workers
            .iter()
            .filter(|(_, exp)| *exp as i64 > now_ms)
            .map(|(w, _)| w)
            .collect();
        let mut pipe = redis::pipe();
        for w in &alive {
            pipe.scard(k.worker_tasks(w));
        }
        if let Some(h) = head.first() {
            pipe.hget(k.task(h), "sub");
        }
        // A foreign key (a worker's owned set, the head's hash) reads as
        // unknown in place, never as a failed overview.
        pipe.ignore_errors();
        let mut extra: Vec<Value> = if pipe.cmd_iter().count() > 0 {
            pipe.query_async(&mut self.conn.clone()).await?
        } else {
            Vec::new()
        };
        let head_wait_ms = if head.is_empty() {
            None
        } else {
            extra.pop().and_then(|v| head_wait(now_ms, &v))
        };
        let running = extra.iter().map(|v| value_to_i64(v).max(0) as u64).sum();
        Ok(QueueOverview {
            name: queue.to_string(),
            mode: QueueMode::Exact,
            paused: meta.get("paused").map(String::as_str) == Some("1"),
            max_depth: meta.get("maxd").and_then(|m| m.parse().ok()).unwrap_or(0),
            pending: pending + delayed,
            delayed,
            running,
            workers_alive: alive.len() as u64,
            workers_stale: (workers.len() - alive.len()) as u64,
            idle_slots: free_of_live(&free, &workers, now_ms),
            head_wait_ms,
            now_ms,
            error: None,
        })
    }

    /// Registered workers (live, or past their lease and not reaped yet)
    /// with their heartbeat fields and owned tasks (two round trips; for
    /// many queues, [`Admin::workers_of_many`] reads them all in two).
    ///
    /// # Errors
    /// [`Error::InvalidName`], Redis errors, [`Error::Protocol`] naming a
    /// workers key this version cannot read (say, of the wrong type).
    pub async fn workers(&self, queue: &str) -> Result<Vec<WorkerInfo>, Error> {
        let queues = [queue.to_string()];
        let mut read = self.workers_of_many(&queues).await?;
        read.pop().unwrap_or_else(|| Ok(Vec::new()))
    }

    /// A page of pending tasks in hand-out order. On a stream queue: its
    /// queued entries, band 0 first, each band in order (see
    /// `stream_pending` for the cost of deep pages).
    ///
    /// # Errors
    /// Redis errors.
    pub async fn pending(
        &self,
        queue: &str,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<TaskInfo>, Error> {
        let k = Self::keys(queue)?;
        if let QueueMode::Stream { bands } = self.mode_of(&k).await? {
            return self.stream_pending(&k, bands, offset, limit).await;
        }
        let ids = self.pending_ids(&k, offset, limit).await?;
        self.tasks(&k, &ids).await
    }

    /// A page of recently ended tasks, newest first (the `ended` stream
    /// keeps about its last 1000 entries, each one ending or the endings
    /// of one coalesced complete; a task that ended twice, after an
    /// operator requeue, is listed once).
    ///
    /// # Errors
    /// Redis errors.
    pub async fn recent(
        &self,
        queue: &str,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<TaskInfo>, Error> {
        let k = Self::keys(queue)?;
        let ids = self.recent_ids(&k, offset, limit).await?;
        self.tasks(&k, &ids).await
    }

    /// Ids of a page of `pending` in hand-out order: none for a limit of 0
    /// or an offset past what Redis can index (any `usize` is accepted,
    /// never an overflow).
    pub(crate) async fn pending_ids(
        &self,
        k: &QueueKeys,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<String>, Error> {
        let Some((first, last)) = rank_range(offset, limit) else {
            return Ok(Vec::new());
        };
        Ok(redis::cmd("ZRANGE")
            .arg(k.pending())
            .arg(first)
            .arg(last)
            .query_async(&mut self.conn.clone())
            .await?)
    }

    /// Ids of a page of the recent endings, newest first, each task once.
    async fn recent_ids(
        &self,
        k: &QueueKeys,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<String>, Error> {
        Ok(self
            .endings(k, offset.saturating_add(limit))
            .await?
            .into_iter()
            .map(|(id, _)| id)
            .skip(offset)
            .take(limit)
            .collect())
    }

    /// The last `count` endings of the queue's `ended` stream, newest
    /// first, as (task id, state), each task once (a task that ended
    /// twice, after an operator requeue, is listed at its newest ending).
    /// An entry holds one ending, or (revision 9) every ending of one
    /// coalesced complete as `t`/`st` pairs in the order they ended, so
    /// `count` entries are read and the endings past `count` dropped.
    async fn endings(&self, k: &QueueKeys, count: usize) -> Result<Vec<(String, String)>, Error> {
        let reply: Value = redis::cmd("XREVRANGE")
            .arg(k.ended())
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(count.min(i64::MAX as usize))
            .query_async(&mut self.conn.clone())
            .await?;
        let Value::Array(entries) = reply else {
            return Ok(Vec::new());
        };
        let mut seen = std::collections::HashSet::new();
        Ok(entries
            .into_iter()
            .filter_map(crate::client::stream_entry)
            .flat_map(|(_, fields)| {
                let mut endings = ended_pairs(&fields);
                endings.reverse();
                endings
            })
            .filter(|(id, _)| seen.insert(id.clone()))
            .take(count)
            .collect())
    }

    /// Recently failed or expired tasks, newest first: those among the
    /// last `scan` endings (see [`Admin::recent`] for what is kept) whose
    /// ending was a failure or a deadline. Only their summaries are read (no inputs
    /// or results: see [`Admin::task_summaries`]).
    ///
    /// # Errors
    /// Redis errors.
    pub async fn recent_failures(&self, queue: &str, scan: usize) -> Result<Vec<TaskInfo>, Error> {
        let k = Self::keys(queue)?;
        let ids: Vec<String> = self
            .endings(&k, scan)
            .await?
            .into_iter()
            .filter(|(_, state)| matches!(state.as_str(), "failed" | "expired"))
            .map(|(id, _)| id)
            .collect();
        let tasks = self.task_summaries(queue, &ids).await?;
        // A task requeued by an operator since is no longer a failure.
        Ok(tasks
            .into_iter()
            .filter(|t| matches!(t.state, TaskState::Failed | TaskState::Expired))
            .collect())
    }

    /// Tasks owned by live or stale workers (running, or in an inbox). On
    /// a stream queue: the entries its consumer group holds (at most
    /// 1,000 per band), read from their entries.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn running(&self, queue: &str) -> Result<Vec<TaskInfo>, Error> {
        let k = Self::keys(queue)?;
        if let QueueMode::Stream { bands } = self.mode_of(&k).await? {
            return Ok(self.stream_running_of(&k, bands).await?.tasks());
        }
        let mut ids: Vec<String> = self
            .workers(queue)
            .await?
            .into_iter()
            .flat_map(|w| w.tasks)
            .collect();
        ids.sort();
        self.tasks(&k, &ids).await
    }

    /// Decodes many tasks in one round trip (missing ones are skipped).
    async fn tasks(&self, k: &QueueKeys, ids: &[String]) -> Result<Vec<TaskInfo>, Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.hgetall(k.task(id));
        }
        // One task of the wrong type or with bytes that are not UTF-8 must
        // not fail the page: errors come back in place, fields are decoded
        // lossily, and an undecodable task is left out.
        pipe.ignore_errors();
        let hashes: Vec<Value> = pipe.query_async(&mut self.conn.clone()).await?;
        Ok(ids
            .iter()
            .zip(hashes)
            .filter_map(|(id, h)| {
                let raw: Vec<(Vec<u8>, Vec<u8>)> = redis::from_redis_value(h).ok()?;
                let h: HashMap<String, String> = raw
                    .into_iter()
                    .map(|(k, v)| {
                        (
                            String::from_utf8_lossy(&k).into_owned(),
                            String::from_utf8_lossy(&v).into_owned(),
                        )
                    })
                    .collect();
                if h.is_empty() {
                    return None;
                }
                TaskInfo::from_hash(id, &h).ok()
            })
            .collect())
    }

    /// One task's stored state (on a stream queue, what its status reads:
    /// see [`crate::Queue::status`]).
    ///
    /// # Errors
    /// [`Error::NotFound`], Redis errors.
    pub async fn task(&self, queue: &str, id: &str) -> Result<TaskInfo, Error> {
        let k = Self::keys(queue)?;
        validate_id(id, "task id")?;
        if self.mode_of(&k).await?.is_stream() {
            return self.stream_task(queue, id).await;
        }
        let found = self.tasks(&k, &[id.to_string()]).await?;
        found.into_iter().next().ok_or_else(|| Error::NotFound {
            queue: queue.into(),
            id: id.into(),
        })
    }

    /// The last `n` chunks of a task's current attempt (live tail); on a
    /// stream queue, of the attempt running it or the one that ended it.
    ///
    /// # Errors
    /// Redis errors; on a stream queue [`Error::NotFound`] for a task it
    /// does not know.
    pub async fn tail(&self, queue: &str, id: &str, n: usize) -> Result<Vec<Vec<u8>>, Error> {
        let k = Self::keys(queue)?;
        validate_id(id, "task id")?;
        if self.mode_of(&k).await?.is_stream() {
            return self.stream_tail(&k, id, n).await;
        }
        Ok(redis::cmd("LRANGE")
            .arg(k.output(id))
            .arg(-(n.max(1) as i64))
            .arg(-1)
            .query_async(&mut self.conn.clone())
            .await?)
    }

    async fn call<F: Function>(&self, queue: &QueueKeys, f: &F) -> Result<F::Reply, Error> {
        functions::call(&mut self.conn.clone(), queue, f).await
    }

    fn not_found(queue: &str, id: &str) -> Error {
        Error::NotFound {
            queue: queue.into(),
            id: id.into(),
        }
    }

    /// Puts a task back in the queue (running, failed, cancelled, expired
    /// or done) with a fresh budget of attempts. Returns the state it was
    /// in (`Queued` if it already was).
    ///
    /// # Errors
    /// [`Error::NotFound`], Redis errors, [`Error::InvalidInput`] on a
    /// stream queue (not available there yet).
    pub async fn requeue(&self, queue: &str, id: &str) -> Result<TaskState, Error> {
        let k = Self::keys(queue)?;
        validate_id(id, "task id")?;
        self.refuse_stream(&k, stream::Unavailable::Requeue).await?;
        let requeue = Requeue {
            id,
            reason: "requeued by an operator",
        };
        match self.call(&k, &requeue).await? {
            RequeueReply::Requeued(state) => Ok(state),
            RequeueReply::AlreadyQueued => Ok(TaskState::Queued),
            RequeueReply::NotFound => Err(Self::not_found(queue, id)),
        }
    }

    /// Cancels a task (as `Queue::cancel`; on a stream queue through
    /// `rtq3_cancel`). Returns the state it was in.
    ///
    /// # Errors
    /// [`Error::NotFound`], Redis errors.
    pub async fn cancel(&self, queue: &str, id: &str) -> Result<TaskState, Error> {
        use crate::functions::cancel::{Cancel, CancelMode, CancelReply};
        let k = Self::keys(queue)?;
        validate_id(id, "task id")?;
        if self.mode_of(&k).await?.is_stream() {
            return self.stream_cancel(&k, id).await;
        }
        let cancel = Cancel {
            id,
            mode: CancelMode::Cancel,
            reason: "cancelled by an operator",
        };
        match self.call(&k, &cancel).await? {
            CancelReply::Ended { previous, .. } => Ok(previous),
            CancelReply::Finished(state) => Ok(state),
            CancelReply::NotFound => Err(Self::not_found(queue, id)),
            CancelReply::NotDue(_) => Err(Error::Protocol("cancel answered NOT_DUE".into())),
        }
    }

    /// Changes a task's priority. Returns its state.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] out of range or on a stream queue (not
    /// available there yet), [`Error::NotFound`], Redis errors.
    pub async fn set_priority(
        &self,
        queue: &str,
        id: &str,
        priority: i16,
    ) -> Result<TaskState, Error> {
        if !(PRIORITY_MIN..=PRIORITY_MAX).contains(&priority) {
            return Err(Error::InvalidInput(format!(
                "priority {priority} is outside [{PRIORITY_MIN}, {PRIORITY_MAX}]"
            )));
        }
        let k = Self::keys(queue)?;
        validate_id(id, "task id")?;
        self.refuse_stream(&k, stream::Unavailable::Priority)
            .await?;
        self.call(&k, &SetPriority { id, priority })
            .await?
            .ok_or_else(|| Self::not_found(queue, id))
    }

    /// Pauses (`true`) or resumes a queue; returns tasks dispatched on resume.
    ///
    /// # Errors
    /// Redis errors, [`Error::InvalidInput`] on a stream queue (not
    /// available there yet).
    pub async fn pause(&self, queue: &str, paused: bool) -> Result<u64, Error> {
        let k = Self::keys(queue)?;
        self.refuse_stream(
            &k,
            if paused {
                stream::Unavailable::Pause
            } else {
                stream::Unavailable::Resume
            },
        )
        .await?;
        self.register(queue).await?;
        self.call(&k, &Pause { paused }).await
    }

    /// Sets the maximum depth (0 = unlimited); on a stream queue its depth
    /// limit (`rtq3_create`).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] above 2^40, Redis errors.
    pub async fn set_max_depth(&self, queue: &str, max_depth: u64) -> Result<(), Error> {
        let k = Self::keys(queue)?;
        if let QueueMode::Stream { bands } = self.mode_of(&k).await? {
            // rtq3_create updates the depth limit of an existing stream
            // queue (its band count must match, and does).
            crate::functions::v3::create(&mut self.conn.clone(), &k, bands, max_depth).await?;
            return self.register(queue).await;
        }
        self.register(queue).await?;
        self.call(&k, &SetMaxDepth { max_depth }).await
    }

    async fn register(&self, queue: &str) -> Result<(), Error> {
        let _: i64 = redis::cmd("SADD")
            .arg(QUEUES)
            .arg(queue)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// Cancels every queued task (in batches); returns how many.
    ///
    /// # Errors
    /// Redis errors, [`Error::InvalidInput`] on a stream queue (not
    /// available there yet).
    pub async fn purge(&self, queue: &str) -> Result<u64, Error> {
        let k = Self::keys(queue)?;
        self.refuse_stream(&k, stream::Unavailable::Purge).await?;
        let mut removed = 0;
        loop {
            let step = self.call(&k, &Purge { batch: PURGE_BATCH }).await?;
            removed += step.removed;
            if step.remaining == 0 || step.removed == 0 {
                return Ok(removed);
            }
        }
    }

    /// Runs housekeeping until it has nothing left to do (at most 100
    /// bounded rounds): reaps dead workers, ends overdue tasks, dispatches
    /// queued work to free slots. Returns what it did in total. A stream
    /// queue is housekept by its own workers (`rtq3_takeover`): nothing is
    /// done and nothing reported.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn housekeeping(&self, queue: &str) -> Result<HousekeepReport, Error> {
        let k = Self::keys(queue)?;
        let mut total = HousekeepReport::default();
        for _ in 0..HOUSEKEEPING_ROUNDS {
            let r = match self.call(&k, &Housekeep).await {
                Ok(r) => r,
                // A stream queue's workers housekeep it (rtq3_takeover):
                // nothing to do here.
                Err(Error::InvalidInput(m)) if m.contains("is a stream queue") => break,
                Err(e) => return Err(e),
            };
            total.reaped += r.reaped;
            total.expired += r.expired;
            total.dispatched += r.dispatched;
            if r.reaped < 8 && r.expired < 100 && r.dispatched < 1000 {
                break;
            }
        }
        Ok(total)
    }

    /// Statistics over the last `buckets` 10-second buckets (at most 360).
    ///
    /// # Errors
    /// Redis errors.
    pub async fn stats(&self, queue: &str, buckets: usize) -> Result<QueueStats, Error> {
        let k = Self::keys(queue)?;
        let buckets = buckets.clamp(1, 360) as i64;
        let time: Vec<i64> = redis::cmd("TIME")
            .query_async(&mut self.conn.clone())
            .await?;
        let now_ms = time_ms(&time);
        let newest = now_ms.div_euclid(stats::BUCKET_MS);
        let first = newest - buckets + 1;
        let mut pipe = redis::pipe();
        for b in first..=newest {
            pipe.hgetall(k.stats(b));
        }
        let hashes: Vec<HashMap<String, String>> = pipe.query_async(&mut self.conn.clone()).await?;
        Ok(QueueStats::from_buckets(
            (first..=newest)
                .map(|b| b * stats::BUCKET_MS)
                .zip(hashes)
                .collect(),
        ))
    }
}

/// Redis TIME (seconds, microseconds) in ms.
fn time_ms(time: &[i64]) -> i64 {
    time.first().copied().unwrap_or(0) * 1000 + time.get(1).copied().unwrap_or(0) / 1000
}

/// Free slots of the workers whose lease is current.
fn free_of_live(free: &[(String, f64)], workers: &[(String, f64)], now_ms: i64) -> u64 {
    free.iter()
        .filter(|(w, _)| {
            workers
                .iter()
                .any(|(id, exp)| id == w && *exp as i64 > now_ms)
        })
        .map(|(_, n)| n.max(0.0) as u64)
        .sum()
}

/// Labels of a worker's heartbeat, decoded.
pub fn worker_labels(info: &WorkerInfo) -> BTreeMap<String, String> {
    serde_json::from_str(info.field("labels")).unwrap_or_default()
}

/// The (task id, state) endings of one `ended` entry in the order they
/// ended: each `t` field opens an ending, the `st` after it is its state.
fn ended_pairs(fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<(String, String)> {
    let mut endings: Vec<(String, String)> = Vec::new();
    for (name, value) in fields {
        let value = String::from_utf8_lossy(value).into_owned();
        match name.as_slice() {
            b"t" => endings.push((value, String::new())),
            b"st" => {
                if let Some(last) = endings.last_mut() {
                    last.1 = value;
                }
            }
            _ => {}
        }
    }
    endings
}

/// The inclusive rank range `[offset, offset + limit - 1]` of a page, as
/// Redis takes it (signed 64-bit), or `None` if the page is empty: a limit
/// of 0, or an offset no sorted set reaches.
fn rank_range(offset: usize, limit: usize) -> Option<(u64, u64)> {
    let max = i64::MAX as u64;
    let offset = u64::try_from(offset).ok().filter(|o| *o <= max)?;
    let limit = u64::try_from(limit).unwrap_or(u64::MAX);
    if limit == 0 {
        return None;
    }
    Some((offset, offset.saturating_add(limit - 1).min(max)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker_with(fields: &[(&str, &str)]) -> WorkerInfo {
        WorkerInfo {
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..WorkerInfo::default()
        }
    }

    #[test]
    fn a_last_error_has_an_age_only_with_its_time_and_old_heartbeats_read_without_one() {
        let w = worker_with(&[("last_error", "boom"), ("last_error_ms", "1000")]);
        assert_eq!(w.last_error_ms(), Some(1000));
        assert_eq!(w.last_error_age_ms(4000), Some(3000));
        assert_eq!(
            w.last_error_age_ms(500),
            Some(0),
            "clock steps never go negative"
        );
        let old = worker_with(&[("last_error", "boom")]);
        assert_eq!(
            old.last_error_age_ms(4000),
            None,
            "a worker before revision 14"
        );
        let cleared = worker_with(&[("last_error", ""), ("last_error_ms", "0")]);
        assert_eq!(cleared.last_error_ms(), None);
        let garbled = worker_with(&[("last_error", "x"), ("last_error_ms", "soon")]);
        assert_eq!(garbled.last_error_ms(), None);
    }

    #[test]
    fn a_page_range_never_overflows_and_a_zero_limit_is_empty() {
        assert_eq!(rank_range(10, 5), Some((10, 14)));
        assert_eq!(rank_range(0, 1), Some((0, 0)));
        assert_eq!(rank_range(0, 0), None);
        assert_eq!(rank_range(usize::MAX, 10), None);
        let max = i64::MAX as u64;
        assert_eq!(rank_range(5, usize::MAX), Some((5, max)));
        assert_eq!(rank_range(max as usize, 2), Some((max, max)));
    }

    #[test]
    fn redis_time_is_read_as_milliseconds() {
        assert_eq!(time_ms(&[1_700_000_000, 123_456]), 1_700_000_000_123);
        assert_eq!(time_ms(&[]), 0);
    }

    #[test]
    fn idle_slots_count_only_workers_whose_lease_is_current() {
        let free = [("a".to_string(), 2.0), ("b".to_string(), 3.0)];
        let workers = [("a".to_string(), 1_000.0), ("b".to_string(), 999.0)];
        assert_eq!(free_of_live(&free, &workers, 999), 2);
        assert_eq!(free_of_live(&free, &workers, 998), 5);
    }

    #[test]
    fn an_ended_entry_yields_every_ending_in_order() {
        let f = |k: &str, v: &str| (k.as_bytes().to_vec(), v.as_bytes().to_vec());
        let one = [f("t", "a"), f("st", "done")];
        assert_eq!(
            super::ended_pairs(&one),
            vec![("a".to_string(), "done".to_string())]
        );
        let many = [
            f("t", "a"),
            f("st", "done"),
            f("t", "b"),
            f("st", "failed"),
            f("t", "c"),
        ];
        assert_eq!(
            super::ended_pairs(&many),
            vec![
                ("a".to_string(), "done".to_string()),
                ("b".to_string(), "failed".to_string()),
                ("c".to_string(), String::new()),
            ]
        );
        assert!(super::ended_pairs(&[f("st", "done")]).is_empty());
    }
}
