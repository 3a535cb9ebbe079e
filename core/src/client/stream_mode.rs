//! The client's side of stream queues (protocol v3, `docs/PROTOCOL-V3.md`):
//! a queue's mode, learnt once per client and queue; the Redis clock a
//! submit's deadline is computed on; and a task's state and output read
//! from its marker and output lists.
//!
//! A queue is `exact` (v2, the default) or `stream` (its meta hash says
//! `mode=stream`). The mode is read once (`HMGET meta mode bands`) and
//! kept; a call that Redis refuses because the queue is of the other
//! kind (it was deleted and made again as the other kind) forgets it and
//! is made once more with the mode read again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::Value;

use crate::error::Error;
use crate::functions::v3::{self, Marker};
use crate::functions::watch::TaskSnapshot;
use crate::protocol::{value_to_bytes, Outcome, TaskState, MAX_OUTPUT_CHUNKS};

use super::info::TaskInfo;
use super::queue::{Placed, Queue, Submitted, SUBMIT_TRIES};
use super::request::TaskRequest;
use super::stream_batcher::Batched;

/// Queues whose mode a client remembers at most (a process that takes
/// queue names from its callers must not grow without bound; forgetting
/// costs one more read).
const MAX_REMEMBERED_MODES: usize = 10_000;
/// How long a reading of the Redis clock is trusted before it is read
/// again (the local monotonic clock carries it forward meanwhile).
const CLOCK_REFRESH: Duration = Duration::from_secs(60);
/// Chunks one read returns at most (as v2's read).
const READ_PAGE: u64 = 1000;

/// The kind of a queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Protocol v2 (`rtq2`): exact priorities, pushed hand-out.
    Exact,
    /// Protocol v3 (`rtq3`): consumer-group streams in `bands` bands.
    Stream {
        /// Priority bands (1-5).
        bands: u8,
    },
}

/// What a client remembers about queues and the server's clock.
#[derive(Default)]
pub(crate) struct ModeCache {
    modes: Mutex<HashMap<String, Mode>>,
    /// The server's v3 library was checked (or loaded) at our revision.
    v3_ready: std::sync::atomic::AtomicBool,
    /// A reading of Redis's clock (ms) and the local instant it was taken.
    clock: Mutex<Option<(Instant, u64)>>,
}

impl ModeCache {
    fn get(&self, queue: &str) -> Option<Mode> {
        self.modes
            .lock()
            .expect("mode cache poisoned")
            .get(queue)
            .copied()
    }

    fn put(&self, queue: &str, mode: Mode) {
        let mut modes = self.modes.lock().expect("mode cache poisoned");
        if modes.len() >= MAX_REMEMBERED_MODES {
            modes.clear();
        }
        modes.insert(queue.to_string(), mode);
    }

    fn forget(&self, queue: &str) {
        self.modes
            .lock()
            .expect("mode cache poisoned")
            .remove(queue);
    }
}

/// The band a priority in [-1000, 1000] goes to among `bands`: the range
/// split in equal parts, the highest priorities in band 0 (served first).
/// The default priority 0 lands in the middle band (with an even count,
/// the lower of the two middle ones: with two bands, positive priorities
/// go first and the rest after them).
pub(crate) fn band_of(priority: i16, bands: u8) -> u8 {
    let bands = i32::from(bands.max(1));
    let p = i32::from(priority).clamp(-1000, 1000);
    ((1000 - p) * bands / 2000).clamp(0, bands - 1) as u8
}

/// True when Redis refused a call because the queue is of the other
/// kind: the mode this client remembers is out of date.
pub(crate) fn is_other_mode(e: &Error) -> bool {
    let text = e.to_string();
    text.contains("is a stream queue") || text.contains("is not a stream queue")
}

impl Queue {
    /// The queue's mode, read once per client and queue. A queue that does
    /// not exist yet is `Exact` (v2 makes it on first use); reads that
    /// fail for a while (a cut connection) are retried as task reads are.
    ///
    /// # Errors
    /// Redis errors past the client's `give_up_after`; [`Error::Protocol`]
    /// for a stream queue whose band count is unreadable.
    pub(crate) async fn mode(&self) -> Result<Mode, Error> {
        let cache = &self.client.inner.modes;
        if let Some(mode) = cache.get(self.name()) {
            return Ok(mode);
        }
        let give_up = Instant::now() + self.client.inner.config.give_up_after;
        let mut delay = Duration::from_millis(50);
        let (mode, bands): (Option<String>, Option<String>) = loop {
            let read = redis::cmd("HMGET")
                .arg(self.keys.meta())
                .arg("mode")
                .arg("bands")
                .query_async(&mut self.client.conn())
                .await;
            match read {
                Ok(fields) => break fields,
                Err(e) => {
                    let e = Error::from(e);
                    if !e.is_retryable() || Instant::now() + delay >= give_up {
                        return Err(e);
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        };
        let mode = match mode.as_deref() {
            Some("stream") => {
                let bands = bands
                    .and_then(|b| b.parse::<u8>().ok())
                    .filter(|b| (1..=v3::MAX_BANDS).contains(b))
                    .ok_or_else(|| {
                        Error::Protocol(format!(
                            "queue {} is a stream queue without a readable band count",
                            self.name()
                        ))
                    })?;
                Mode::Stream { bands }
            }
            _ => Mode::Exact,
        };
        if matches!(mode, Mode::Stream { .. }) {
            self.ensure_v3().await?;
        }
        cache.put(self.name(), mode);
        Ok(mode)
    }

    /// Checks (once per client) that the server runs our revision of the
    /// v3 library or a newer one, loading ours over an older one.
    async fn ensure_v3(&self) -> Result<(), Error> {
        use std::sync::atomic::Ordering;
        let ready = &self.client.inner.modes.v3_ready;
        if !ready.load(Ordering::Acquire) {
            crate::cluster::ensure_v3_loaded(&mut self.client.conn()).await?;
            ready.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Makes this queue a stream queue (protocol v3, `docs/PROTOCOL-V3.md`)
    /// with `bands` priority bands (1-5; priorities in [-1000, 1000] are
    /// split evenly among them, the highest served first) and a depth
    /// limit (`0`: none), or updates the depth limit of one. Workers and
    /// clients learn the mode from Redis and speak the queue's protocol.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the queue exists as a v2 queue (it
    /// has tasks, workers or settings) or with another band count, or
    /// `bands` is out of range; Redis errors.
    pub async fn create_stream(&self, bands: u8, max_depth: u64) -> Result<(), Error> {
        if !(1..=v3::MAX_BANDS).contains(&bands) {
            return Err(Error::InvalidInput(format!(
                "a stream queue has 1 to {} bands, not {bands}",
                v3::MAX_BANDS
            )));
        }
        self.ensure_v3().await?;
        let mut conn = self.client.conn();
        v3::create(&mut conn, &self.keys, bands, max_depth).await?;
        let _: i64 = redis::cmd("SADD")
            .arg(crate::keys::QUEUES)
            .arg(self.name())
            .query_async(&mut conn)
            .await?;
        self.client
            .inner
            .modes
            .put(self.name(), Mode::Stream { bands });
        Ok(())
    }

    /// True for a stream queue (see [`Queue::mode`]).
    pub(crate) async fn is_stream(&self) -> Result<bool, Error> {
        Ok(matches!(self.mode().await?, Mode::Stream { .. }))
    }

    /// True when this client knows the queue is a stream queue (for paths
    /// that cannot wait for a read: drops, timers; a queue whose mode was
    /// never read has had no task of this client).
    pub(crate) fn cached_stream(&self) -> bool {
        matches!(
            self.client.inner.modes.get(self.name()),
            Some(Mode::Stream { .. })
        )
    }

    /// Forgets the queue's mode after Redis said it is of the other kind;
    /// returns the mode it had.
    pub(crate) fn forget_mode(&self) -> Option<Mode> {
        let before = self.client.inner.modes.get(self.name());
        self.client.inner.modes.forget(self.name());
        before
    }

    /// A queue this client knew as a stream queue (`before`) whose meta is
    /// gone (Redis restarted empty, or it was deleted) is made a stream
    /// queue again with the bands it had (and no depth limit), instead of
    /// turning into a v2 queue on the next submit, which no stream worker
    /// would serve. Nothing happens when the queue exists (as either kind).
    pub(crate) async fn restore_stream_queue(&self, before: Option<Mode>) -> Result<(), Error> {
        let Some(Mode::Stream { bands }) = before else {
            return Ok(());
        };
        let exists: bool = redis::cmd("EXISTS")
            .arg(self.keys.meta())
            .query_async(&mut self.client.conn())
            .await?;
        if exists {
            return Ok(());
        }
        tracing::warn!(
            queue = self.name(),
            bands,
            "the stream queue's definition is gone from Redis (restarted empty, or deleted); making it a stream queue again (no depth limit)"
        );
        // The library may have gone with the data.
        self.client
            .inner
            .modes
            .v3_ready
            .store(false, std::sync::atomic::Ordering::Release);
        self.create_stream(bands, 0).await
    }

    /// Redis's clock now (ms), from a reading at most [`CLOCK_REFRESH`]
    /// old carried forward by the local monotonic clock.
    ///
    /// # Errors
    /// Redis errors of the `TIME` read.
    pub(crate) async fn redis_now_ms(&self) -> Result<u64, Error> {
        let cache = &self.client.inner.modes;
        if let Some((at, ms)) = *cache.clock.lock().expect("clock poisoned") {
            let age = at.elapsed();
            if age < CLOCK_REFRESH {
                return Ok(ms + age.as_millis() as u64);
            }
        }
        let sent = Instant::now();
        let (secs, micros): (u64, u64) = redis::cmd("TIME")
            .query_async(&mut self.client.conn())
            .await?;
        // The reading is from somewhere within the round trip: its middle.
        let half = sent.elapsed() / 2;
        let ms = secs * 1000 + micros / 1000;
        *cache.clock.lock().expect("clock poisoned") = Some((sent + half, ms));
        Ok(ms + half.as_millis() as u64)
    }

    /// A stream queue's task: its state, and chunks from `from` of the
    /// attempt it is at (ended: the one that ended it); `None` when Redis
    /// has no such task. Two reads (the status, then the output), each
    /// atomic.
    pub(crate) async fn read_stream(
        &self,
        id: &str,
        from: u64,
    ) -> Result<Option<TaskSnapshot>, Error> {
        let mut conn = self.client.conn();
        let raw: Option<Vec<u8>> = redis::cmd("GET")
            .arg(v3::marker_key(&self.keys, id))
            .query_async(&mut conn)
            .await?;
        let Some(raw) = raw else {
            return Ok(None);
        };
        let (state, attempt, outcome) = match Marker::parse(&raw) {
            Some(Marker::Ended {
                state,
                attempt,
                worker,
                kind,
                payload,
                ..
            }) => {
                let state = TaskState::parse(&state).ok_or_else(|| {
                    Error::Protocol(format!("task {id} ended in an unknown state {state:?}"))
                })?;
                let payload = String::from_utf8_lossy(&payload);
                let outcome = Outcome::from_fields(state, &payload, &kind, &payload, &worker)?;
                (state, attempt, Some(outcome))
            }
            Some(Marker::Place { .. }) => match v3::status(&mut conn, &self.keys, id).await? {
                v3::Status::Running { attempt, .. } => (TaskState::Running, attempt, None),
                v3::Status::Queued { attempts_used, .. } => {
                    (TaskState::Queued, attempts_used, None)
                }
                v3::Status::Unknown => return Ok(None),
                // It ended between the two reads: read it again.
                v3::Status::Ended { .. } => return Box::pin(self.read_stream(id, from)).await,
            },
            None => {
                return Err(Error::Protocol(format!(
                    "task {id}: its marker on queue {} is unreadable",
                    self.name()
                )))
            }
        };
        let (chunk_count, chunks) = if attempt == 0 || state == TaskState::Queued {
            (0, Vec::new())
        } else {
            self.read_output(&mut conn, id, attempt, from).await?
        };
        Ok(Some(TaskSnapshot {
            state,
            attempt,
            chunk_count,
            outcome,
            first: from.min(MAX_OUTPUT_CHUNKS),
            chunks,
        }))
    }

    /// The count of attempt `attempt`'s stored chunks and a page of them
    /// from `from`.
    async fn read_output(
        &self,
        conn: &mut crate::connection::RedisConnection,
        id: &str,
        attempt: u64,
        from: u64,
    ) -> Result<(u64, Vec<Vec<u8>>), Error> {
        let key = v3::output_key(&self.keys, id, attempt);
        let from = from.min(MAX_OUTPUT_CHUNKS);
        let (count, page): (u64, Vec<Value>) = redis::pipe()
            .cmd("LLEN")
            .arg(&key)
            .cmd("LRANGE")
            .arg(&key)
            .arg(from)
            .arg(from + READ_PAGE - 1)
            .query_async(conn)
            .await?;
        Ok((count, page.iter().map(value_to_bytes).collect()))
    }

    /// [`Queue::status`] of a stream queue's task: what `rtq3_status` and
    /// the marker say (a stream queue keeps no per-task hash: times other
    /// than the ending's, priority and the spec are not stored apart).
    pub(crate) async fn status_stream(&self, id: &str) -> Result<TaskInfo, Error> {
        let status = v3::status(&mut self.client.conn(), &self.keys, id).await?;
        let mut info = TaskInfo::empty(id);
        match status {
            v3::Status::Unknown => return Err(self.not_found(id)),
            v3::Status::Queued { attempts_used, .. } => {
                info.state = TaskState::Queued;
                info.attempt = attempts_used;
            }
            v3::Status::Running {
                worker, attempt, ..
            } => {
                info.state = TaskState::Running;
                info.attempt = attempt;
                info.worker = worker;
            }
            v3::Status::Ended {
                state,
                attempt,
                at_ms,
                worker,
                ..
            } => {
                let Some(snap) = self.read_stream(id, MAX_OUTPUT_CHUNKS).await? else {
                    return Err(self.not_found(id));
                };
                info.state = state;
                info.attempt = attempt;
                info.worker = worker;
                info.finished_ms = i64::try_from(at_ms).unwrap_or(i64::MAX);
                info.chunks = snap.chunk_count;
                info.outcome = snap.outcome;
            }
        }
        Ok(info)
    }

    /// [`Queue::cancel`] of a stream queue's task.
    pub(crate) async fn cancel_stream(&self, id: &str, reason: &str) -> Result<TaskState, Error> {
        match v3::cancel(&mut self.client.conn(), &self.keys, id, reason).await? {
            v3::Cancelled::Ok(Some(_)) => Ok(TaskState::Running),
            v3::Cancelled::Ok(None) => Ok(TaskState::Queued),
            v3::Cancelled::Ended(state) => Ok(state),
            v3::Cancelled::NotFound => Err(self.not_found(id)),
        }
    }

    /// Submits to a stream queue (`rtq3_submit`, coalesced with concurrent
    /// submits), retrying under the same id when Redis does not answer; a
    /// `DUP` is read to tell what the existing task is.
    pub(super) async fn place_stream(
        &self,
        request: &TaskRequest,
        id: &str,
        reply: &str,
        bands: u8,
    ) -> Result<Placed, Error> {
        if request.durable.is_some() {
            // A durable submit pipelines its `WAIT` with the submit on the
            // queue's node; stream queues do not have that path yet.
            return Err(Error::InvalidInput(format!(
                "queue {} is a stream queue: durable submits (waiting for a replica) are not supported on stream queues yet; submit without `durable`",
                self.name()
            )));
        }
        let config = &self.client.inner.config;
        let signer = config
            .signing_key
            .as_deref()
            .map(|key| (key, self.keys.name()));
        let spec = request.encode_signed(id, config.max_inline_bytes, signer)?;
        let now = self.redis_now_ms().await?;
        let deadline_ms = request
            .timeout
            .map_or(0, |t| now + (t.as_millis() as u64).max(1));
        let task = v3::NewTask {
            id: id.to_string(),
            band: band_of(request.priority, bands),
            spec: spec.into_bytes(),
            reply: reply.to_string(),
            deadline_ms,
            max_attempts: request.max_attempts,
            retention_ms: request.retention.as_millis() as u64,
        };
        let mut last_error: Option<Error> = None;
        let mut batched = config.coalesce_submits;
        for attempt in 0..SUBMIT_TRIES {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 * 4u64.pow(attempt - 1))).await;
            }
            let answer = if std::mem::take(&mut batched) {
                match self
                    .client
                    .stream_batcher(&self.keys)
                    .submit(task.clone())
                    .await
                {
                    Batched::Replied(a) => Ok(a),
                    Batched::Uncertain(e) => {
                        tracing::warn!(task_id = %id, error = %e, "submit got no answer; retrying with the same id");
                        last_error = Some(e);
                        continue;
                    }
                    Batched::Refused => self.submit_one(&task).await,
                }
            } else {
                self.submit_one(&task).await
            };
            match answer {
                Ok(v3::Admission::Added { .. }) => {
                    return Ok(Placed::Created(Submitted {
                        id: id.to_string(),
                        state: TaskState::Queued,
                        worker: None,
                        deadline_ms: deadline_ms as i64,
                        submitted_ms: now as i64,
                    }))
                }
                Ok(v3::Admission::Full) => {
                    let (depth, max_depth) = self.stream_depth().await;
                    return Err(Error::QueueFull {
                        queue: self.name().to_string(),
                        depth,
                        max_depth,
                    });
                }
                Ok(v3::Admission::Duplicate) => {
                    let (submitted, reply) = self.existing_stream_task(id).await?;
                    return Ok(if last_error.is_some() {
                        Placed::Retried { submitted, reply }
                    } else {
                        Placed::Existing { submitted, reply }
                    });
                }
                Err(e) if e.is_retryable() && !matches!(e, Error::OutOfMemory(_)) => {
                    tracing::warn!(task_id = %id, error = %e, "submit got no answer; retrying with the same id");
                    last_error = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Uncertain {
            id: id.to_string(),
            reason: last_error.map(|e| e.to_string()).unwrap_or_default(),
        })
    }

    /// One `rtq3_submit` of one task.
    async fn submit_one(&self, task: &v3::NewTask) -> Result<v3::Admission, Error> {
        v3::submit(
            &mut self.client.conn(),
            &self.keys,
            std::slice::from_ref(task),
        )
        .await?
        .pop()
        .ok_or_else(|| Error::Protocol("rtq3_submit answered no reply".into()))
    }

    /// What a submit that found task `id` existing attaches to: its state
    /// and its submitter's reply stream key ("" when none or it ended).
    async fn existing_stream_task(&self, id: &str) -> Result<(Submitted, String), Error> {
        let raw: Option<Vec<u8>> = redis::cmd("GET")
            .arg(v3::marker_key(&self.keys, id))
            .query_async(&mut self.client.conn())
            .await?;
        let mut submitted = Submitted {
            id: id.to_string(),
            state: TaskState::Queued,
            worker: None,
            deadline_ms: 0,
            submitted_ms: 0,
        };
        let reply = match raw.as_deref().and_then(Marker::parse) {
            Some(Marker::Place { reply, .. }) => {
                // Its deadline (Redis ms), from the deadline set, where a
                // live task submitted with one is: an attached run keeps
                // its timer and asks `rtq3_expire` at it.
                let deadline: Option<f64> = redis::cmd("ZSCORE")
                    .arg(format!("{}dl", self.keys.prefix()))
                    .arg(id)
                    .query_async(&mut self.client.conn())
                    .await?;
                submitted.deadline_ms = deadline.map_or(0, |d| d as i64);
                if let v3::Status::Running { worker, .. } =
                    v3::status(&mut self.client.conn(), &self.keys, id).await?
                {
                    submitted.state = TaskState::Running;
                    submitted.worker = Some(worker);
                }
                reply.unwrap_or_default()
            }
            Some(Marker::Ended { state, .. }) => {
                submitted.state = TaskState::parse(&state).unwrap_or(TaskState::Failed);
                String::new()
            }
            // Gone between the submit and this read (its retention ended).
            None => return Err(self.not_found(id)),
        };
        Ok((submitted, reply))
    }

    /// When task `id`'s deadline passes, as a local instant (from the
    /// deadline set, where a live task submitted with one is); `None`
    /// without one. A wait on a stream queue's task asks `rtq3_expire` at
    /// it: with no live worker, nobody else would end the task.
    pub(crate) async fn stream_deadline(&self, id: &str) -> Result<Option<Instant>, Error> {
        let deadline: Option<f64> = redis::cmd("ZSCORE")
            .arg(format!("{}dl", self.keys.prefix()))
            .arg(id)
            .query_async(&mut self.client.conn())
            .await?;
        let Some(deadline) = deadline else {
            return Ok(None);
        };
        let now = self.redis_now_ms().await?;
        let left = (deadline as u64).saturating_sub(now);
        Ok(Some(Instant::now() + Duration::from_millis(left)))
    }

    /// The depth and depth limit of a stream queue (for a `QueueFull`).
    pub(crate) async fn stream_depth(&self) -> (u64, u64) {
        let read: redis::RedisResult<(Option<u64>, Option<u64>)> = redis::cmd("HMGET")
            .arg(self.keys.meta())
            .arg("n")
            .arg("maxd")
            .query_async(&mut self.client.conn())
            .await;
        match read {
            Ok((n, max)) => (n.unwrap_or(0), max.unwrap_or(0)),
            Err(_) => (0, 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_split_evenly_with_the_highest_in_band_zero() {
        assert_eq!(band_of(0, 1), 0);
        assert_eq!(band_of(1000, 1), 0);
        assert_eq!(band_of(-1000, 1), 0);
        assert_eq!(band_of(1, 2), 0);
        assert_eq!(band_of(0, 2), 1);
        assert_eq!(band_of(-1000, 2), 1);
        assert_eq!(band_of(0, 3), 1);
        assert_eq!(band_of(334, 3), 0);
        assert_eq!(band_of(333, 3), 1);
        assert_eq!(band_of(-334, 3), 2);
        assert_eq!(band_of(0, 5), 2);
        assert_eq!(band_of(1000, 5), 0);
        assert_eq!(band_of(-1000, 5), 4);
        assert_eq!(band_of(i16::MIN, 5), 4);
        assert_eq!(band_of(i16::MAX, 5), 0);
    }

    #[test]
    fn a_refusal_for_the_other_kind_of_queue_is_recognised() {
        let e = Error::InvalidInput(
            "queue q is a stream queue (protocol v3, rtq3 functions), not a v2 queue".into(),
        );
        assert!(is_other_mode(&e));
        let e = Error::InvalidInput("queue rtq:{q}: is not a stream queue (create it)".into());
        assert!(is_other_mode(&e));
        assert!(!is_other_mode(&Error::InvalidInput("bad id".into())));
    }
}
