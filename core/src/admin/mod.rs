//! Admin operations for the console, scripts and autoscalers: list queues,
//! counts, workers, pages of tasks, operator actions, statistics. Reads are
//! pipelined (one round trip per view) and bounded (no KEYS, no full scan
//! of a big list or zset).

pub mod stats;

use std::collections::{BTreeMap, HashMap};

use redis::aio::ConnectionManager;
use redis::Value;

use crate::client::Client;
use crate::error::Error;
use crate::info::TaskInfo;
use crate::keys::{validate_id, QueueKeys, QUEUES};
use crate::protocol::{
    split_status, value_to_i64, value_to_string, TaskState, PRIORITY_MAX, PRIORITY_MIN,
};
use crate::scripts::scripts;
pub use stats::{Percentiles, QueueStats};

/// TIME, meta, pending count, idle count, workers with scores, head id.
type OverviewReply = (
    Vec<i64>,
    HashMap<String, String>,
    u64,
    u64,
    Vec<(String, f64)>,
    Vec<String>,
);

/// Batch size of one purge step.
const PURGE_BATCH: usize = 500;

/// A queue at a glance.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueueOverview {
    /// Queue name.
    pub name: String,
    /// True while nothing is handed out.
    pub paused: bool,
    /// Maximum pending tasks (0 = unlimited).
    pub max_depth: u64,
    /// Tasks waiting.
    pub pending: u64,
    /// Tasks handed to live workers.
    pub running: u64,
    /// Workers whose lease is current.
    pub workers_alive: u64,
    /// Workers registered but past their lease (not reaped yet).
    pub workers_stale: u64,
    /// Free slots parked in the idle list.
    pub idle_slots: u64,
    /// How long the task at the head of the queue has waited (ms).
    pub head_wait_ms: Option<i64>,
    /// Redis time of the read (ms).
    pub now_ms: i64,
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
}

/// Admin access to rtq queues.
#[derive(Clone)]
pub struct Admin {
    conn: ConnectionManager,
}

impl Admin {
    /// Admin operations over a client's connection.
    pub fn new(client: &Client) -> Self {
        Self {
            conn: client.conn(),
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
        let mut names: Vec<String> = redis::cmd("SMEMBERS")
            .arg(QUEUES)
            .query_async(&mut self.conn.clone())
            .await?;
        names.sort();
        Ok(names)
    }

    /// Counts of a queue in one round trip.
    ///
    /// # Errors
    /// Redis errors, invalid names.
    pub async fn overview(&self, queue: &str) -> Result<QueueOverview, Error> {
        let k = Self::keys(queue)?;
        let (time, meta, pending, idle, workers, head): OverviewReply = redis::pipe()
            .cmd("TIME")
            .hgetall(k.meta())
            .zcard(k.pending())
            .llen(k.idle())
            .cmd("ZRANGE")
            .arg(k.workers())
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .zrange(k.pending(), 0, 0)
            .query_async(&mut self.conn.clone())
            .await?;
        let now_ms =
            time.first().copied().unwrap_or(0) * 1000 + time.get(1).copied().unwrap_or(0) / 1000;
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
        let mut extra: Vec<Value> = if pipe.cmd_iter().count() > 0 {
            pipe.query_async(&mut self.conn.clone()).await?
        } else {
            Vec::new()
        };
        let head_wait_ms = if head.is_empty() {
            None
        } else {
            extra
                .pop()
                .map(|v| now_ms - value_to_i64(&v))
                .filter(|_| true)
        };
        let running = extra.iter().map(|v| value_to_i64(v).max(0) as u64).sum();
        Ok(QueueOverview {
            name: queue.to_string(),
            paused: meta.get("paused").map(String::as_str) == Some("1"),
            max_depth: meta.get("maxd").and_then(|m| m.parse().ok()).unwrap_or(0),
            pending,
            running,
            workers_alive: alive.len() as u64,
            workers_stale: (workers.len() - alive.len()) as u64,
            idle_slots: idle,
            head_wait_ms,
            now_ms,
        })
    }

    /// Overviews and statistics of every queue in two pipelined round
    /// trips, whatever the number of queues (what a dashboard polls).
    /// `buckets` is the stats window in 10-second buckets (at most 360).
    ///
    /// # Errors
    /// Redis errors.
    pub async fn dashboard(
        &self,
        buckets: usize,
    ) -> Result<Vec<(QueueOverview, QueueStats)>, Error> {
        let buckets = buckets.clamp(1, 360) as i64;
        let names = self.queues().await?;
        let keys: Vec<QueueKeys> = names
            .iter()
            .filter_map(|n| QueueKeys::new(n).ok())
            .collect();
        // Round trip 1: time, and per queue its counts, workers and head.
        let mut first = redis::pipe();
        first.cmd("TIME");
        for k in &keys {
            first
                .hgetall(k.meta())
                .zcard(k.pending())
                .llen(k.idle())
                .cmd("ZRANGE")
                .arg(k.workers())
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .zrange(k.pending(), 0, 0);
        }
        let replies: Vec<Value> = first.query_async(&mut self.conn.clone()).await?;
        let mut it = replies.into_iter();
        let time: Vec<i64> = decode(it.next().unwrap_or(Value::Nil))?;
        let now_ms =
            time.first().copied().unwrap_or(0) * 1000 + time.get(1).copied().unwrap_or(0) / 1000;
        let newest = now_ms.div_euclid(stats::BUCKET_MS);
        let oldest = newest - buckets + 1;
        struct Partial {
            overview: QueueOverview,
            alive: Vec<String>,
            head: Option<String>,
        }
        let mut partials = Vec::new();
        for k in &keys {
            let mut next = || it.next().unwrap_or(Value::Nil);
            let meta: HashMap<String, String> = decode(next())?;
            let pending: u64 = decode(next())?;
            let idle: u64 = decode(next())?;
            let workers: Vec<(String, f64)> = decode(next())?;
            let head: Vec<String> = decode(next())?;
            let alive: Vec<String> = workers
                .iter()
                .filter(|(_, exp)| *exp as i64 > now_ms)
                .map(|(w, _)| w.clone())
                .collect();
            partials.push(Partial {
                overview: QueueOverview {
                    name: k.name().to_string(),
                    paused: meta.get("paused").map(String::as_str) == Some("1"),
                    max_depth: meta.get("maxd").and_then(|m| m.parse().ok()).unwrap_or(0),
                    pending,
                    running: 0,
                    workers_alive: alive.len() as u64,
                    workers_stale: (workers.len() - alive.len()) as u64,
                    idle_slots: idle,
                    head_wait_ms: None,
                    now_ms,
                },
                alive,
                head: head.into_iter().next(),
            });
        }
        // Round trip 2: running counts, head age, and every stats bucket.
        let mut second = redis::pipe();
        for (k, p) in keys.iter().zip(&partials) {
            for w in &p.alive {
                second.scard(k.worker_tasks(w));
            }
            if let Some(h) = &p.head {
                second.hget(k.task(h), "sub");
            }
            for b in oldest..=newest {
                second.hgetall(k.stats(b));
            }
        }
        let replies: Vec<Value> = if keys.is_empty() {
            Vec::new()
        } else {
            second.query_async(&mut self.conn.clone()).await?
        };
        let mut it = replies.into_iter();
        let mut out = Vec::new();
        for mut p in partials {
            let mut next = || it.next().unwrap_or(Value::Nil);
            p.overview.running = (0..p.alive.len())
                .map(|_| value_to_i64(&next()).max(0) as u64)
                .sum();
            if p.head.is_some() {
                p.overview.head_wait_ms = Some(now_ms - value_to_i64(&next()));
            }
            let mut raw = Vec::new();
            for b in oldest..=newest {
                let hash: HashMap<String, String> = decode(next()).unwrap_or_default();
                raw.push((b * stats::BUCKET_MS, hash));
            }
            out.push((p.overview, QueueStats::from_buckets(raw)));
        }
        Ok(out)
    }

    /// Registered workers with their heartbeat fields and owned tasks,
    /// plus recently stopped/dead ones still within their info TTL.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn workers(&self, queue: &str) -> Result<Vec<WorkerInfo>, Error> {
        let k = Self::keys(queue)?;
        let workers: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(k.workers())
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut self.conn.clone())
            .await?;
        let mut pipe = redis::pipe();
        for (w, _) in &workers {
            pipe.hgetall(k.worker(w)).smembers(k.worker_tasks(w));
        }
        let replies: Vec<Value> = if workers.is_empty() {
            Vec::new()
        } else {
            pipe.query_async(&mut self.conn.clone()).await?
        };
        let mut out = Vec::new();
        for (i, (id, exp)) in workers.into_iter().enumerate() {
            let fields: HashMap<String, String> =
                redis::from_redis_value(replies.get(2 * i).cloned().unwrap_or(Value::Nil))
                    .unwrap_or_default();
            let mut tasks: Vec<String> =
                redis::from_redis_value(replies.get(2 * i + 1).cloned().unwrap_or(Value::Nil))
                    .unwrap_or_default();
            tasks.sort();
            out.push(WorkerInfo {
                id,
                lease_until_ms: Some(exp as i64),
                fields,
                tasks,
            });
        }
        Ok(out)
    }

    /// A page of pending tasks in hand-out order.
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
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(k.pending())
            .arg(offset)
            .arg((offset + limit).saturating_sub(1))
            .query_async(&mut self.conn.clone())
            .await?;
        self.tasks(&k, &ids).await
    }

    /// A page of recently ended tasks, newest first (the last 1000 are kept).
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
        let ids: Vec<String> = redis::cmd("ZREVRANGE")
            .arg(k.recent())
            .arg(offset)
            .arg((offset + limit).saturating_sub(1))
            .query_async(&mut self.conn.clone())
            .await?;
        self.tasks(&k, &ids).await
    }

    /// Tasks owned by live or stale workers (running, or in an inbox).
    ///
    /// # Errors
    /// Redis errors.
    pub async fn running(&self, queue: &str) -> Result<Vec<TaskInfo>, Error> {
        let k = Self::keys(queue)?;
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
        let hashes: Vec<HashMap<String, String>> = pipe.query_async(&mut self.conn.clone()).await?;
        Ok(ids
            .iter()
            .zip(hashes)
            .filter(|(_, h)| !h.is_empty())
            .filter_map(|(id, h)| TaskInfo::from_hash(id, &h).ok())
            .collect())
    }

    /// One task's stored state.
    ///
    /// # Errors
    /// [`Error::NotFound`], Redis errors.
    pub async fn task(&self, queue: &str, id: &str) -> Result<TaskInfo, Error> {
        let k = Self::keys(queue)?;
        validate_id(id, "task id")?;
        let found = self.tasks(&k, &[id.to_string()]).await?;
        found.into_iter().next().ok_or_else(|| Error::NotFound {
            queue: queue.into(),
            id: id.into(),
        })
    }

    /// The last `n` chunks of a task's current attempt (live tail).
    ///
    /// # Errors
    /// Redis errors.
    pub async fn tail(&self, queue: &str, id: &str, n: usize) -> Result<Vec<Vec<u8>>, Error> {
        let k = Self::keys(queue)?;
        validate_id(id, "task id")?;
        Ok(redis::cmd("LRANGE")
            .arg(k.output(id))
            .arg(-(n.max(1) as i64))
            .arg(-1)
            .query_async(&mut self.conn.clone())
            .await?)
    }

    async fn status_script(
        &self,
        inv: redis::ScriptInvocation<'_>,
        queue: &str,
        id: &str,
    ) -> Result<TaskState, Error> {
        let value: Value = inv.invoke_async(&mut self.conn.clone()).await?;
        let (status, items) = split_status(value)?;
        match status.as_str() {
            "OK" | "FINISHED" => {
                let s = items.first().map(value_to_string).unwrap_or_default();
                TaskState::parse(&s)
                    .ok_or_else(|| Error::Protocol(format!("unexpected state {s:?}")))
            }
            "QUEUED" => Ok(TaskState::Queued),
            "NOT_FOUND" => Err(Error::NotFound {
                queue: queue.into(),
                id: id.into(),
            }),
            other => Err(Error::Protocol(format!("unexpected status {other}"))),
        }
    }

    /// Puts a task back in the queue (running, failed, cancelled, expired
    /// or done). Returns the state it was in.
    ///
    /// # Errors
    /// [`Error::NotFound`], Redis errors.
    pub async fn requeue(&self, queue: &str, id: &str) -> Result<TaskState, Error> {
        let k = Self::keys(queue)?;
        validate_id(id, "task id")?;
        let mut inv = scripts().requeue.key(k.prefix());
        inv.arg(id).arg("requeued by an operator");
        self.status_script(inv, queue, id).await
    }

    /// Cancels a task (as `Queue::cancel`). Returns the state it was in.
    ///
    /// # Errors
    /// [`Error::NotFound`], Redis errors.
    pub async fn cancel(&self, queue: &str, id: &str) -> Result<TaskState, Error> {
        let k = Self::keys(queue)?;
        validate_id(id, "task id")?;
        let mut inv = scripts().cancel.key(k.prefix());
        inv.arg(id).arg("cancel").arg("cancelled by an operator");
        self.status_script(inv, queue, id).await
    }

    /// Changes a task's priority. Returns its state.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] out of range, [`Error::NotFound`], Redis errors.
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
        let mut inv = scripts().set_priority.key(k.prefix());
        inv.arg(id).arg(priority);
        self.status_script(inv, queue, id).await
    }

    /// Pauses (`true`) or resumes a queue; returns tasks dispatched on resume.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn pause(&self, queue: &str, paused: bool) -> Result<u64, Error> {
        let k = Self::keys(queue)?;
        self.register(queue).await?;
        let value: Value = scripts()
            .pause
            .key(k.prefix())
            .arg(if paused { "1" } else { "0" })
            .invoke_async(&mut self.conn.clone())
            .await?;
        let (_, items) = split_status(value)?;
        Ok(items.first().map(value_to_i64).unwrap_or(0) as u64)
    }

    /// Sets the maximum depth (0 = unlimited).
    ///
    /// # Errors
    /// Redis errors.
    pub async fn set_max_depth(&self, queue: &str, max_depth: u64) -> Result<(), Error> {
        let k = Self::keys(queue)?;
        self.register(queue).await?;
        let _: () = redis::cmd("HSET")
            .arg(k.meta())
            .arg("maxd")
            .arg(max_depth)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    async fn register(&self, queue: &str) -> Result<(), Error> {
        let _: i64 = redis::cmd("SADD")
            .arg(QUEUES)
            .arg(queue)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// Cancels every pending task (in batches); returns how many.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn purge(&self, queue: &str) -> Result<u64, Error> {
        let k = Self::keys(queue)?;
        let mut removed = 0;
        loop {
            let reply: Vec<i64> = scripts()
                .purge
                .key(k.prefix())
                .arg(PURGE_BATCH)
                .invoke_async(&mut self.conn.clone())
                .await?;
            removed += reply.first().copied().unwrap_or(0) as u64;
            if reply.get(1).copied().unwrap_or(0) == 0 || reply.first().copied().unwrap_or(0) == 0 {
                return Ok(removed);
            }
        }
    }

    /// Runs one round of housekeeping: reaps dead workers and ends overdue
    /// tasks. Returns (workers reaped, tasks expired).
    ///
    /// # Errors
    /// Redis errors.
    pub async fn housekeeping(&self, queue: &str) -> Result<(u64, u64), Error> {
        let k = Self::keys(queue)?;
        let value: Value = scripts()
            .heartbeat
            .key(k.prefix())
            .arg("")
            .arg(0)
            .invoke_async(&mut self.conn.clone())
            .await?;
        let (_, items) = split_status(value)?;
        Ok((
            items.first().map(value_to_i64).unwrap_or(0) as u64,
            items.get(1).map(value_to_i64).unwrap_or(0) as u64,
        ))
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
        let now_ms =
            time.first().copied().unwrap_or(0) * 1000 + time.get(1).copied().unwrap_or(0) / 1000;
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

/// Decodes a pipelined reply item, naming the mismatch.
fn decode<T: redis::FromRedisValue>(value: Value) -> Result<T, Error> {
    redis::from_redis_value(value).map_err(|e| Error::Protocol(format!("unexpected reply: {e}")))
}

/// Labels of a worker's heartbeat, decoded.
pub fn worker_labels(info: &WorkerInfo) -> BTreeMap<String, String> {
    serde_json::from_str(info.field("labels")).unwrap_or_default()
}
