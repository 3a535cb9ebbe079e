//! Stream queues (protocol v3, `docs/PROTOCOL-V3.md`) as the operator sees
//! them: a queue's mode ([`QueueMode`]), its counts from the band streams'
//! consumer group `w` (whose pending list is the running tasks), its live
//! workers from the zset `lv`, its running and queued tasks from the band
//! entries, and the operator actions that a stream queue does not have yet.
//!
//! Every read is plain commands (`XPENDING`, `XINFO GROUPS`, `XRANGE`,
//! `ZRANGE`): a band stream or its group that does not exist holds nothing
//! (zero), a key of a foreign type is an error naming the queue and the key.
//! Reads that span many queues put their key first (`XPENDING`, `XRANGE`,
//! `ZRANGE`) so a Redis Cluster routes each command by it
//! (`crate::cluster::query_spread`); `XINFO` (the key second) is only sent in
//! pipelines of one queue.
//!
//! A stream queue keeps no per-task hash: a running or queued task is read
//! from its entry (`t` id, `s` spec, `d` deadline, `x` max attempts, `a0`
//! attempts used before, `u` submit time), which holds the whole spec. Lists
//! of stream tasks therefore read the specs of the tasks they show.

use std::collections::HashMap;

use redis::Value;

use super::{Admin, QueueOverview, WorkerInfo};
use crate::client::TaskInfo;
use crate::error::Error;
use crate::functions::v3;
use crate::keys::QueueKeys;
use crate::protocol::{value_to_bytes, value_to_string, TaskSpec, TaskState};

/// Running entries read per band at most (`XPENDING ... - + <n>`): the
/// tasks listed for a worker, and a page of running tasks, come from them.
pub(super) const ENTRIES_PER_BAND: usize = 1000;

/// The kind of a queue: which protocol its tasks, workers and operator
/// actions speak (`docs/PROTOCOL-V3.md`, section 1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QueueMode {
    /// Protocol v2 (`rtq2`): exact priorities, tasks pushed to workers'
    /// free slots, every operator action. The default, and what a queue
    /// without a `mode` in its meta hash is.
    #[default]
    Exact,
    /// Protocol v3 (`rtq3`): tasks are entries of consumer-group streams
    /// in `bands` priority bands (band 0 served first), read by workers
    /// themselves. Pause, purge, requeue and priority changes are not
    /// available yet.
    Stream {
        /// Priority bands (1-5).
        bands: u8,
    },
}

impl QueueMode {
    /// True for a stream queue.
    pub fn is_stream(&self) -> bool {
        matches!(self, QueueMode::Stream { .. })
    }

    /// The mode's name as its meta hash stores it: `exact` or `stream`.
    pub fn name(&self) -> &'static str {
        match self {
            QueueMode::Exact => "exact",
            QueueMode::Stream { .. } => "stream",
        }
    }
}

/// An operator action a stream queue does not have yet: [`Admin`] refuses
/// it with [`Unavailable::error`] before writing anything, and a console
/// can say so without asking Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unavailable {
    /// Pausing the queue.
    Pause,
    /// Resuming the queue.
    Resume,
    /// Cancelling every queued task at once.
    Purge,
    /// Putting a task back in the queue.
    Requeue,
    /// Changing a task's priority.
    Priority,
    /// Forgetting an ended task before its retention ends.
    Delete,
}

impl Unavailable {
    /// The action's name and what to do instead.
    fn words(self) -> (&'static str, &'static str) {
        match self {
            Unavailable::Pause => ("pause", "to stop hand-outs, stop or drain its workers"),
            Unavailable::Resume => ("resume", "a stream queue is never paused"),
            Unavailable::Purge => ("purge", "cancel its queued tasks one by one"),
            Unavailable::Requeue => ("requeue", "cancel the task and submit it again"),
            Unavailable::Priority => (
                "changing a priority",
                "cancel the task and submit it again with the priority wanted",
            ),
            Unavailable::Delete => (
                "deleting a task",
                "an ended task is forgotten at the end of its retention",
            ),
        }
    }

    /// The refusal on stream queue `queue`: [`Error::InvalidInput`] naming
    /// the queue, the action and what to do instead.
    pub fn error(self, queue: &str) -> Error {
        let (action, instead) = self.words();
        Error::InvalidInput(format!(
            "queue {queue} is a stream queue: {action} is not available on stream queues yet; {instead}"
        ))
    }
}

/// What the meta hash of a stream queue says besides its mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct StreamMeta {
    /// Priority bands (1-5).
    pub bands: u8,
    /// Tasks queued or running (`n`).
    pub n: u64,
    /// Depth limit (`maxd`, 0 = none).
    pub max_depth: u64,
}

/// The stream fields of a queue's meta hash: `None` for an exact queue,
/// an error naming the queue for a stream queue whose band count, task
/// count or depth limit is unreadable.
pub(super) fn stream_meta(
    k: &QueueKeys,
    meta: &HashMap<String, String>,
) -> Result<Option<StreamMeta>, Error> {
    if meta.get("mode").map(String::as_str) != Some("stream") {
        return Ok(None);
    }
    let bad = |field: &str| {
        Error::Protocol(format!(
            "queue {}: stream queue with an unreadable {field} in {}",
            k.name(),
            k.meta()
        ))
    };
    let bands = meta
        .get("bands")
        .and_then(|b| b.parse::<u8>().ok())
        .filter(|b| (1..=v3::MAX_BANDS).contains(b))
        .ok_or_else(|| bad("band count"))?;
    let number = |field: &str| -> Result<u64, Error> {
        match meta.get(field) {
            None => Ok(0),
            Some(v) => v.parse().map_err(|_| bad(field)),
        }
    };
    Ok(Some(StreamMeta {
        bands,
        n: number("n")?,
        max_depth: number("maxd")?,
    }))
}

/// A reply of a read of one of a stream queue's keys: `None` when the
/// key or its group `w` does not exist (nothing there), an error naming
/// the queue and the key for anything else Redis refused (a foreign type).
fn present(k: &QueueKeys, key: &str, v: Value) -> Result<Option<Value>, Error> {
    match v {
        Value::ServerError(e) => {
            let details = e.details().unwrap_or("");
            if e.code() == "NOGROUP" || details.contains("no such key") {
                return Ok(None);
            }
            Err(Error::Protocol(format!(
                "queue {}: cannot read {key}: {} {}",
                k.name(),
                e.code(),
                details
            )))
        }
        Value::Nil => Ok(None),
        v => Ok(Some(v)),
    }
}

/// The workers of `lv` with their lease expiry (ms).
pub(super) fn decode_live(k: &QueueKeys, v: Value) -> Result<Vec<(String, i64)>, Error> {
    let key = v3::live_key(k);
    let Some(v) = present(k, &key, v)? else {
        return Ok(Vec::new());
    };
    let pairs: Vec<(String, f64)> = redis::from_redis_value(v)
        .map_err(|e| Error::Protocol(format!("queue {}: cannot read {key}: {e}", k.name())))?;
    Ok(pairs.into_iter().map(|(w, s)| (w, s as i64)).collect())
}

/// An `XPENDING <band> w` summary: entries held, and per consumer.
fn decode_pending_summary(
    k: &QueueKeys,
    key: &str,
    v: Value,
) -> Result<(u64, Vec<(String, u64)>), Error> {
    let Some(v) = present(k, key, v)? else {
        return Ok((0, Vec::new()));
    };
    let bad = || {
        Error::Protocol(format!(
            "queue {}: cannot read {key}: not an XPENDING summary",
            k.name()
        ))
    };
    let Value::Array(items) = v else {
        return Err(bad());
    };
    let count = match items.first() {
        Some(Value::Int(n)) => u64::try_from(*n).map_err(|_| bad())?,
        _ => return Err(bad()),
    };
    let consumers = match items.get(3) {
        Some(Value::Array(rows)) => rows
            .iter()
            .filter_map(|row| match row {
                Value::Array(pair) if pair.len() == 2 => Some((
                    value_to_string(&pair[0]),
                    value_to_string(&pair[1]).parse().ok()?,
                )),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Ok((count, consumers))
}

/// Adds the second-round-trip reads of a stream queue's counts: `lv` with
/// scores, then one `XPENDING` summary per band (key first: a Cluster
/// routes each by it).
pub(super) fn count_trip(pipe: &mut redis::Pipeline, k: &QueueKeys, bands: u8) {
    pipe.cmd("ZRANGE")
        .arg(v3::live_key(k))
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES");
    for band in 0..bands {
        pipe.cmd("XPENDING")
            .arg(v3::band_key(k, band))
            .arg(v3::GROUP);
    }
}

/// Commands [`count_trip`] adds for a queue of `bands` bands.
pub(super) fn count_cmds(bands: u8) -> usize {
    1 + usize::from(bands)
}

/// Fills a stream queue's overview from its meta fields and the replies of
/// [`count_trip`]: running = entries held by the group over the bands,
/// pending = the rest of `n`, workers from `lv` (alive while their lease
/// is after `now_ms`). Free slots are not stored for stream workers (0).
pub(super) fn decode_counts(
    k: &QueueKeys,
    meta: &StreamMeta,
    mut items: impl Iterator<Item = Value>,
    now_ms: i64,
    o: &mut QueueOverview,
) -> Result<(), Error> {
    let mut next = || items.next().unwrap_or(Value::Nil);
    let live = decode_live(k, next())?;
    let mut running = 0u64;
    for band in 0..meta.bands {
        let key = v3::band_key(k, band);
        running += decode_pending_summary(k, &key, next())?.0;
    }
    let alive = live.iter().filter(|(_, until)| *until > now_ms).count() as u64;
    o.mode = QueueMode::Stream { bands: meta.bands };
    o.max_depth = meta.max_depth;
    o.running = running;
    o.pending = meta.n.saturating_sub(running);
    o.delayed = 0;
    o.workers_alive = alive;
    o.workers_stale = live.len() as u64 - alive;
    o.idle_slots = 0;
    o.paused = false;
    Ok(())
}

/// The group `w` of an `XINFO GROUPS` reply: its last-delivered id and
/// lag (`None`: Redis cannot say). `None` without a group `w`.
fn group_w(v: Value) -> Option<(String, Option<u64>)> {
    let Value::Array(groups) = v else {
        return None;
    };
    groups.into_iter().find_map(|g| {
        let fields: Vec<(String, Value)> = match g {
            Value::Array(flat) => flat
                .chunks(2)
                .filter_map(|kv| match kv {
                    [k, v] => Some((value_to_string(k), v.clone())),
                    _ => None,
                })
                .collect(),
            Value::Map(pairs) => pairs
                .into_iter()
                .map(|(k, v)| (value_to_string(&k), v))
                .collect(),
            _ => return None,
        };
        let get = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v);
        if get("name").map(value_to_string).as_deref() != Some(v3::GROUP) {
            return None;
        }
        let ldid = get("last-delivered-id").map(value_to_string)?;
        let lag = match get("lag") {
            Some(Value::Int(n)) => u64::try_from(*n).ok(),
            _ => None,
        };
        Some((ldid, lag))
    })
}

/// The ms part of a stream entry id.
fn entry_ms(id: &str) -> Option<i64> {
    id.split('-').next()?.parse().ok()
}

/// Where each band's undelivered entries start: the group's
/// last-delivered id (exclusive), `"-"` for a band without the group
/// (every entry is queued), with the lag when Redis knows it. A missing
/// band stream is `None` (nothing queued).
type BandStarts = Vec<Option<(String, Option<u64>)>>;

/// A stream entry's fields, by name.
type Fields = Vec<(String, Vec<u8>)>;

/// A stream queue to read the running entries of: its keys, band count
/// and live set (`lv`, worker -> lease expiry ms).
pub(super) type StreamQueue = (QueueKeys, u8, Vec<(String, i64)>);

/// A parsed `XRANGE` reply: (entry id, fields); deleted entries skipped.
fn decode_entries(v: Value) -> Vec<(String, Fields)> {
    let Value::Array(entries) = v else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter_map(|e| {
            let Value::Array(mut parts) = e else {
                return None;
            };
            let (Some(Value::Array(raw)), Some(id)) = (parts.pop(), parts.pop()) else {
                return None;
            };
            let fields = raw
                .chunks(2)
                .filter_map(|kv| match kv {
                    [k, v] => Some((value_to_string(k), value_to_bytes(v))),
                    _ => None,
                })
                .collect();
            Some((value_to_string(&id), fields))
        })
        .collect()
}

fn field<'a>(fields: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_slice())
}

fn number(fields: &[(String, Vec<u8>)], name: &str) -> i64 {
    field(fields, name)
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A task from its band entry's fields: `None` for an entry without a
/// task id (a foreign entry). `attempt` is the attempt running it (0 for
/// a queued task: the attempts used before are its failures).
fn entry_task(
    fields: &[(String, Vec<u8>)],
    state: TaskState,
    worker: &str,
    attempt: u64,
) -> Option<TaskInfo> {
    let id = String::from_utf8(field(fields, "t")?.to_vec()).ok()?;
    let mut t = TaskInfo::empty(&id);
    let a0 = number(fields, "a0").max(0) as u64;
    t.state = state;
    t.attempt = if attempt > 0 { attempt } else { a0 };
    t.failures = u32::try_from(a0).unwrap_or(u32::MAX);
    t.max_attempts = u32::try_from(number(fields, "x").max(0)).unwrap_or(u32::MAX);
    t.worker = worker.to_string();
    t.submitted_ms = number(fields, "u");
    t.deadline_ms = number(fields, "d");
    t.spec = field(fields, "s").and_then(|s| TaskSpec::decode(s).ok());
    t.priority = t.spec.as_ref().map_or(0, |s| s.priority);
    Some(t)
}

/// One entry of a band's pending list: a running attempt.
#[derive(Clone, Debug)]
pub(super) struct RunningEntry {
    /// Priority band.
    pub band: u8,
    /// Stream entry id.
    pub entry: String,
    /// The worker holding it.
    pub worker: String,
    /// Deliveries of the entry (the attempt is `a0` plus this).
    pub deliveries: u64,
    /// The entry's fields (empty when it was deleted meanwhile).
    pub fields: Vec<(String, Vec<u8>)>,
}

impl RunningEntry {
    /// The task it runs, if its entry is readable.
    fn task(&self) -> Option<TaskInfo> {
        let a0 = number(&self.fields, "a0").max(0) as u64;
        entry_task(
            &self.fields,
            TaskState::Running,
            &self.worker,
            a0 + self.deliveries,
        )
    }

    /// The task id, if its entry is readable.
    fn task_id(&self) -> Option<String> {
        field(&self.fields, "t").map(|t| String::from_utf8_lossy(t).into_owned())
    }
}

/// What a stream queue's workers read: live workers, entries held per
/// consumer, and the running entries (at most [`ENTRIES_PER_BAND`] per
/// band).
#[derive(Clone, Debug, Default)]
pub(super) struct StreamRunning {
    /// `lv`: worker -> lease expiry (ms), in lease order.
    pub live: Vec<(String, i64)>,
    /// Entries held per consumer over the bands (exact).
    pub held: Vec<(String, u64)>,
    /// The running entries read, by band then entry.
    pub entries: Vec<RunningEntry>,
}

impl StreamRunning {
    /// Workers: every live one, then consumers that hold entries without
    /// being live (their worker died; a live worker will take the entries
    /// over), each with its running tasks.
    pub fn workers(&self) -> Vec<WorkerInfo> {
        let held: HashMap<&str, u64> = self.held.iter().map(|(w, n)| (w.as_str(), *n)).collect();
        let worker = |id: &str, lease: Option<i64>| {
            let busy = held.get(id).copied().unwrap_or(0);
            let mut tasks: Vec<String> = self
                .entries
                .iter()
                .filter(|e| e.worker == id)
                .filter_map(RunningEntry::task_id)
                .collect();
            tasks.sort();
            let fields = HashMap::from([
                ("mode".to_string(), "stream".to_string()),
                ("busy".to_string(), busy.to_string()),
                (
                    "state".to_string(),
                    if busy > 0 { "busy" } else { "idle" }.to_string(),
                ),
            ]);
            WorkerInfo {
                id: id.to_string(),
                lease_until_ms: lease,
                fields,
                tasks,
            }
        };
        let mut out: Vec<WorkerInfo> = self
            .live
            .iter()
            .map(|(w, until)| worker(w, Some(*until)))
            .collect();
        let mut gone: Vec<&str> = self
            .held
            .iter()
            .filter(|(w, n)| *n > 0 && !self.live.iter().any(|(l, _)| l == w))
            .map(|(w, _)| w.as_str())
            .collect();
        gone.sort();
        gone.dedup();
        out.extend(gone.into_iter().map(|w| worker(w, None)));
        out
    }

    /// The running tasks, by worker then task id.
    pub fn tasks(&self) -> Vec<TaskInfo> {
        let mut tasks: Vec<TaskInfo> = self.entries.iter().filter_map(RunningEntry::task).collect();
        tasks.sort_by(|a, b| (&a.worker, &a.id).cmp(&(&b.worker, &b.id)));
        tasks
    }
}

/// Parses an `XPENDING <band> w - + <n>` reply: (entry, consumer,
/// deliveries).
fn decode_pending_entries(
    k: &QueueKeys,
    key: &str,
    v: Value,
) -> Result<Vec<(String, String, u64)>, Error> {
    let Some(Value::Array(rows)) = present(k, key, v)? else {
        return Ok(Vec::new());
    };
    Ok(rows
        .into_iter()
        .filter_map(|row| match row {
            Value::Array(parts) if parts.len() >= 4 => Some((
                value_to_string(&parts[0]),
                value_to_string(&parts[1]),
                u64::try_from(crate::protocol::value_to_i64(&parts[3])).ok()?,
            )),
            _ => None,
        })
        .collect())
}

impl Admin {
    /// The mode of `queue` (one `HMGET` of its meta hash); a queue that
    /// does not exist is [`QueueMode::Exact`].
    ///
    /// # Errors
    /// [`Error::InvalidName`], Redis errors (a meta key of a foreign
    /// type), [`Error::Protocol`] for a stream queue without a readable
    /// band count.
    pub async fn queue_mode(&self, queue: &str) -> Result<QueueMode, Error> {
        let k = QueueKeys::new(queue)?;
        self.mode_of(&k).await
    }

    pub(super) async fn mode_of(&self, k: &QueueKeys) -> Result<QueueMode, Error> {
        let (mode, bands): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(k.meta())
            .arg("mode")
            .arg("bands")
            .query_async(&mut self.conn.clone())
            .await?;
        let mut meta = HashMap::new();
        meta.extend(mode.map(|m| ("mode".to_string(), m)));
        meta.extend(bands.map(|b| ("bands".to_string(), b)));
        Ok(match stream_meta(k, &meta)? {
            Some(m) => QueueMode::Stream { bands: m.bands },
            None => QueueMode::Exact,
        })
    }

    /// Refuses `action` on a stream queue (one `HMGET` of the mode).
    pub(super) async fn refuse_stream(
        &self,
        k: &QueueKeys,
        action: Unavailable,
    ) -> Result<(), Error> {
        if self.mode_of(k).await?.is_stream() {
            return Err(action.error(k.name()));
        }
        Ok(())
    }

    /// A stream queue's overview after the first round trip read its meta
    /// hash: its counts (one more round trip) and how long its oldest
    /// queued task has waited (one or two more: the groups' positions, the
    /// first queued entry of each band that has one).
    pub(super) async fn stream_overview(
        &self,
        k: &QueueKeys,
        meta: &StreamMeta,
        now_ms: i64,
    ) -> Result<QueueOverview, Error> {
        let mut pipe = redis::pipe();
        count_trip(&mut pipe, k, meta.bands);
        for band in 0..meta.bands {
            pipe.cmd("XINFO").arg("GROUPS").arg(v3::band_key(k, band));
        }
        pipe.ignore_errors();
        let replies: Vec<Value> = pipe.query_async(&mut self.conn.clone()).await?;
        let mut it = replies.into_iter();
        let mut o = QueueOverview {
            name: k.name().to_string(),
            now_ms,
            ..QueueOverview::default()
        };
        decode_counts(
            k,
            meta,
            it.by_ref().take(count_cmds(meta.bands)),
            now_ms,
            &mut o,
        )?;
        let starts = decode_starts(k, meta.bands, it)?;
        if o.pending > 0 {
            o.head_wait_ms = self.oldest_queued(k, &starts).await?.map(|ms| now_ms - ms);
        }
        Ok(o)
    }

    /// The submit time (the entry id's ms) of the oldest queued entry over
    /// the bands: one `XRANGE ... COUNT 1` per band that may hold one.
    async fn oldest_queued(
        &self,
        k: &QueueKeys,
        starts: &BandStarts,
    ) -> Result<Option<i64>, Error> {
        let mut pipe = redis::pipe();
        let mut asked = 0;
        for (band, start) in starts.iter().enumerate() {
            let Some((from, lag)) = start else { continue };
            if *lag == Some(0) {
                continue;
            }
            pipe.cmd("XRANGE")
                .arg(v3::band_key(k, band as u8))
                .arg(exclusive(from))
                .arg("+")
                .arg("COUNT")
                .arg(1);
            asked += 1;
        }
        if asked == 0 {
            return Ok(None);
        }
        pipe.ignore_errors();
        let replies: Vec<Value> = pipe.query_async(&mut self.conn.clone()).await?;
        Ok(replies
            .into_iter()
            .flat_map(decode_entries)
            .filter_map(|(id, _)| entry_ms(&id))
            .min())
    }

    /// Where each band's queued entries start (one round trip of `XINFO
    /// GROUPS`, a pipeline of one queue).
    async fn band_starts(&self, k: &QueueKeys, bands: u8) -> Result<BandStarts, Error> {
        let mut pipe = redis::pipe();
        for band in 0..bands {
            pipe.cmd("XINFO").arg("GROUPS").arg(v3::band_key(k, band));
        }
        pipe.ignore_errors();
        let replies: Vec<Value> = pipe.query_async(&mut self.conn.clone()).await?;
        decode_starts(k, bands, replies.into_iter())
    }

    /// The running entries and workers of stream queues (`queues`: keys,
    /// band count, `lv` already read), in two pipelined round trips
    /// whatever their number: the pending lists of every band (`XPENDING`
    /// summary and up to [`ENTRIES_PER_BAND`] entries), then each running
    /// entry (`XRANGE`, for its task id). A queue whose band is of a
    /// foreign type is an `Err` in its place.
    pub(super) async fn stream_running(
        &self,
        queues: Vec<StreamQueue>,
    ) -> Result<Vec<Result<StreamRunning, Error>>, Error> {
        if queues.is_empty() {
            return Ok(Vec::new());
        }
        let mut first = redis::pipe();
        for (k, bands, _) in &queues {
            for band in 0..*bands {
                let key = v3::band_key(k, band);
                first.cmd("XPENDING").arg(&key).arg(v3::GROUP);
                first
                    .cmd("XPENDING")
                    .arg(&key)
                    .arg(v3::GROUP)
                    .arg("-")
                    .arg("+")
                    .arg(ENTRIES_PER_BAND);
            }
        }
        first.ignore_errors();
        let replies = crate::cluster::query_spread(&mut self.conn.clone(), &first, true).await?;
        let mut it = replies.into_iter();
        let mut read: Vec<Result<StreamRunning, Error>> = Vec::with_capacity(queues.len());
        for (k, bands, live) in queues.iter() {
            let mut one = || -> Result<StreamRunning, Error> {
                let mut held: HashMap<String, u64> = HashMap::new();
                let mut entries = Vec::new();
                let mut failed = None;
                for band in 0..*bands {
                    let key = v3::band_key(k, band);
                    let summary = it.next().unwrap_or(Value::Nil);
                    let list = it.next().unwrap_or(Value::Nil);
                    if failed.is_some() {
                        continue;
                    }
                    let decoded = decode_pending_summary(k, &key, summary)
                        .and_then(|(_, per)| Ok((per, decode_pending_entries(k, &key, list)?)));
                    match decoded {
                        Ok((per, list)) => {
                            for (w, n) in per {
                                *held.entry(w).or_default() += n;
                            }
                            entries.extend(list.into_iter().map(|(entry, worker, deliveries)| {
                                RunningEntry {
                                    band,
                                    entry,
                                    worker,
                                    deliveries,
                                    fields: Vec::new(),
                                }
                            }));
                        }
                        Err(e) => failed = Some(e),
                    }
                }
                if let Some(e) = failed {
                    return Err(e);
                }
                let mut held: Vec<(String, u64)> = held.into_iter().collect();
                held.sort();
                Ok(StreamRunning {
                    live: live.clone(),
                    held,
                    entries,
                })
            };
            read.push(one());
        }
        // Round trip 2: each running entry, for its task id.
        let mut second = redis::pipe();
        for (r, (k, _, _)) in read.iter().zip(&queues) {
            for e in r.iter().flat_map(|r| &r.entries) {
                second
                    .cmd("XRANGE")
                    .arg(v3::band_key(k, e.band))
                    .arg(&e.entry)
                    .arg(&e.entry);
            }
        }
        second.ignore_errors();
        if second.cmd_iter().next().is_some() {
            let replies =
                crate::cluster::query_spread(&mut self.conn.clone(), &second, true).await?;
            let mut it = replies.into_iter();
            for e in read.iter_mut().flatten().flat_map(|r| r.entries.iter_mut()) {
                let v = it.next().unwrap_or(Value::Nil);
                if let Some((_, fields)) = decode_entries(v).into_iter().next() {
                    e.fields = fields;
                }
            }
        }
        Ok(read)
    }

    /// One stream queue's running entries and workers (three round trips:
    /// `lv`, the pending lists, the entries).
    pub(super) async fn stream_running_of(
        &self,
        k: &QueueKeys,
        bands: u8,
    ) -> Result<StreamRunning, Error> {
        let mut pipe = redis::pipe();
        pipe.cmd("ZRANGE")
            .arg(v3::live_key(k))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES");
        pipe.ignore_errors();
        let mut live: Vec<Value> = pipe.query_async(&mut self.conn.clone()).await?;
        let live = live.pop().unwrap_or(Value::Nil);
        let live = decode_live(k, live)?;
        self.stream_running(vec![(k.clone(), bands, live)])
            .await?
            .pop()
            .unwrap_or_else(|| Ok(StreamRunning::default()))
    }

    /// A page of a stream queue's queued tasks in hand-out order: band 0
    /// first, each band's entries after the group's last-delivered id. The
    /// entries before `offset` are read too (a stream has no rank index),
    /// so deep pages cost more.
    pub(super) async fn stream_pending(
        &self,
        k: &QueueKeys,
        bands: u8,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<TaskInfo>, Error> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let starts = self.band_starts(k, bands).await?;
        let mut skip = offset;
        let mut out = Vec::new();
        for (band, start) in starts.iter().enumerate() {
            let Some((from, lag)) = start else { continue };
            if *lag == Some(0) {
                continue;
            }
            let want = skip.saturating_add(limit - out.len());
            let reply: Value = redis::cmd("XRANGE")
                .arg(v3::band_key(k, band as u8))
                .arg(exclusive(from))
                .arg("+")
                .arg("COUNT")
                .arg(want.min(i64::MAX as usize))
                .query_async(&mut self.conn.clone())
                .await?;
            let entries = decode_entries(reply);
            let got = entries.len();
            for (_, fields) in entries.into_iter().skip(skip) {
                out.extend(entry_task(&fields, TaskState::Queued, "", 0));
            }
            skip = skip.saturating_sub(got);
            if out.len() >= limit || got < want {
                if out.len() >= limit {
                    break;
                }
                continue;
            }
        }
        out.truncate(limit);
        Ok(out)
    }

    /// A stream queue's task as its status reads it (marker, pending
    /// list; see [`crate::Queue::status`]), and while it is queued or
    /// running what its entry holds besides (submit time, deadline,
    /// attempts allowed and used, spec).
    pub(super) async fn stream_task(&self, queue: &str, id: &str) -> Result<TaskInfo, Error> {
        let k = QueueKeys::new(queue)?;
        let mut info = self.client.queue(queue)?.status(id).await?;
        if info.state.is_terminal() {
            return Ok(info);
        }
        let mut conn = self.conn.clone();
        let raw: Option<Vec<u8>> = redis::cmd("GET")
            .arg(v3::marker_key(&k, id))
            .query_async(&mut conn)
            .await?;
        let Some(v3::Marker::Place { band, entry, .. }) =
            raw.as_deref().and_then(v3::Marker::parse)
        else {
            return Ok(info);
        };
        let reply: Value = redis::cmd("XRANGE")
            .arg(v3::band_key(&k, band))
            .arg(&entry)
            .arg(&entry)
            .query_async(&mut conn)
            .await?;
        let Some((_, fields)) = decode_entries(reply).into_iter().next() else {
            return Ok(info);
        };
        if let Some(t) = entry_task(&fields, info.state, &info.worker, info.attempt) {
            if t.id == info.id {
                info.submitted_ms = t.submitted_ms;
                info.deadline_ms = t.deadline_ms;
                info.max_attempts = t.max_attempts;
                info.failures = t.failures;
                info.priority = t.priority;
                info.spec = t.spec;
            }
        }
        Ok(info)
    }

    /// The last `n` chunks of a stream queue's task's current (or ending)
    /// attempt, from `o:<id>:<attempt>`.
    pub(super) async fn stream_tail(
        &self,
        k: &QueueKeys,
        id: &str,
        n: usize,
    ) -> Result<Vec<Vec<u8>>, Error> {
        let mut conn = self.conn.clone();
        let attempt = match v3::status(&mut conn, k, id).await? {
            v3::Status::Running { attempt, .. } | v3::Status::Ended { attempt, .. } => attempt,
            v3::Status::Queued { .. } => return Ok(Vec::new()),
            v3::Status::Unknown => {
                return Err(Error::NotFound {
                    queue: k.name().into(),
                    id: id.into(),
                })
            }
        };
        if attempt == 0 {
            return Ok(Vec::new());
        }
        Ok(redis::cmd("LRANGE")
            .arg(v3::output_key(k, id, attempt))
            .arg(-(n.clamp(1, i64::MAX as usize) as i64))
            .arg(-1)
            .query_async(&mut conn)
            .await?)
    }

    /// Cancels a stream queue's task (`rtq3_cancel`): the state it was in.
    pub(super) async fn stream_cancel(&self, k: &QueueKeys, id: &str) -> Result<TaskState, Error> {
        match v3::cancel(&mut self.conn.clone(), k, id, "cancelled by an operator").await? {
            v3::Cancelled::Ok(Some(_)) => Ok(TaskState::Running),
            v3::Cancelled::Ok(None) => Ok(TaskState::Queued),
            v3::Cancelled::Ended(state) => Ok(state),
            v3::Cancelled::NotFound => Err(Error::NotFound {
                queue: k.name().into(),
                id: id.into(),
            }),
        }
    }
}

/// The start of an exclusive `XRANGE` after entry `from` (`-`: all).
fn exclusive(from: &str) -> String {
    if from == "-" {
        "-".to_string()
    } else {
        format!("({from}")
    }
}

/// Decodes one `XINFO GROUPS` reply per band into where its queued entries
/// start; a band stream of a foreign type is an error naming it.
fn decode_starts(
    k: &QueueKeys,
    bands: u8,
    mut replies: impl Iterator<Item = Value>,
) -> Result<BandStarts, Error> {
    (0..bands)
        .map(|band| {
            let key = v3::band_key(k, band);
            let v = replies.next().unwrap_or(Value::Nil);
            Ok(present(k, &key, v)?.map(|v| group_w(v).unwrap_or_else(|| ("-".into(), None))))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn meta(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_mode_is_read_from_the_meta_hash_and_a_bad_band_count_is_an_error() {
        let k = QueueKeys::new("q").unwrap();
        assert_eq!(stream_meta(&k, &meta(&[])).unwrap(), None);
        assert_eq!(stream_meta(&k, &meta(&[("mode", "exact")])).unwrap(), None);
        let m = stream_meta(
            &k,
            &meta(&[
                ("mode", "stream"),
                ("bands", "3"),
                ("n", "7"),
                ("maxd", "9"),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!((m.bands, m.n, m.max_depth), (3, 7, 9));
        for bad in ["0", "6", "x"] {
            let e = stream_meta(&k, &meta(&[("mode", "stream"), ("bands", bad)])).unwrap_err();
            assert!(e.to_string().contains("band count"), "{e}");
        }
        let e = stream_meta(
            &k,
            &meta(&[("mode", "stream"), ("bands", "1"), ("n", "-1")]),
        )
        .unwrap_err();
        assert!(e.to_string().contains(" n "), "{e}");
        assert_eq!(QueueMode::default(), QueueMode::Exact);
        assert_eq!(QueueMode::Stream { bands: 2 }.name(), "stream");
    }

    #[test]
    fn the_group_w_gives_where_queued_entries_start() {
        let group = |name: &str, lag: Value| {
            Value::Array(vec![
                bulk("name"),
                bulk(name),
                bulk("last-delivered-id"),
                bulk("5-1"),
                bulk("lag"),
                lag,
            ])
        };
        let v = Value::Array(vec![
            group("other", Value::Int(1)),
            group("w", Value::Int(3)),
        ]);
        assert_eq!(group_w(v), Some(("5-1".into(), Some(3))));
        let v = Value::Array(vec![group("w", Value::Nil)]);
        assert_eq!(group_w(v), Some(("5-1".into(), None)));
        assert_eq!(group_w(Value::Array(vec![group("x", Value::Int(0))])), None);
        assert_eq!(entry_ms("1700-3"), Some(1700));
        assert_eq!(exclusive("1-2"), "(1-2");
        assert_eq!(exclusive("-"), "-");
    }

    #[test]
    fn a_missing_stream_or_group_is_empty_and_a_foreign_type_an_error() {
        let k = QueueKeys::new("q").unwrap();
        let summary = Value::Array(vec![
            Value::Int(3),
            bulk("1-0"),
            bulk("2-0"),
            Value::Array(vec![
                Value::Array(vec![bulk("a"), bulk("2")]),
                Value::Array(vec![bulk("b"), bulk("1")]),
            ]),
        ]);
        let (n, per) = decode_pending_summary(&k, "b", summary).unwrap();
        assert_eq!(n, 3);
        assert_eq!(per, vec![("a".to_string(), 2), ("b".to_string(), 1)]);
        let empty = Value::Array(vec![Value::Int(0), Value::Nil, Value::Nil, Value::Nil]);
        assert_eq!(decode_pending_summary(&k, "b", empty).unwrap().0, 0);
        assert!(decode_pending_summary(&k, "b", Value::Int(4)).is_err());
    }
}
