//! Output chunks of a stream worker's running attempts: each attempt has
//! an [`Outbox`] its handler's chunks go to, and one writer task sends
//! what every outbox holds in one `rtq3_write` at a time; chunks queued
//! while a call is in flight go in the next one (the default
//! [`Granularity`](crate::worker::Granularity): nothing is held back).
//!
//! Every group carries `seq0`, the chunks Redis holds for the attempt: a
//! call whose reply was lost is sent again as it was and answered ORDER
//! with the count it left, which the writer takes as written. LOST stops
//! the attempt (it is not this worker's any more), TOO_LARGE stops it as
//! failed. Chunks stay in the outbox until Redis acknowledged them; the
//! handler's output budget is given back then.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::slots::Key;
use crate::connection::RedisConnection;
use crate::error::Error;
use crate::functions::v3::{self, ChunkWrite, Delivery, Held, Written};
use crate::keys::QueueKeys;
use crate::protocol::{MAX_CHUNKS_PER_CALL, MAX_CHUNK_BYTES};
use crate::worker::budget::OutputBudget;
use crate::worker::config::WorkerStatus;
use crate::worker::handler::{StopReason, StopSignal};

/// Bytes one group carries at most (a single bigger chunk goes alone).
const MAX_GROUP_BYTES: usize = 256 << 10;
/// Groups (attempts) one call carries at most.
const MAX_GROUPS: usize = 1024;
/// Chunks an attempt may write (`rtq3_write`'s cap).
pub(crate) const MAX_OUTPUT_CHUNKS: u64 = 100_000;
/// Longest pause between retries of a call Redis did not answer.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(2);

#[derive(Default)]
struct OutState {
    /// Chunks Redis has not acknowledged, in order; the first `in_flight`
    /// are in the call in flight.
    queued: VecDeque<Vec<u8>>,
    in_flight: usize,
    /// Chunks Redis holds.
    acked: u64,
    /// Chunks taken from the handler.
    taken: u64,
    /// The handler sent a chunk.
    produced: bool,
    /// Writing stopped (the attempt was stopped by a refusal): chunks
    /// are dropped.
    halted: bool,
    /// The attempt ended: its last chunks go with its complete (see
    /// [`Outbox::seal`]); the writer sends nothing more of it.
    sealed: bool,
}

/// An ended attempt's last chunks, for its complete ([`Outbox::seal`]).
pub(crate) enum Tail {
    /// The chunks not yet sent (none: `write` is `None`) and the count the
    /// attempt holds once they and any write in flight applied.
    Ready {
        /// The last chunks, from where the write in flight ends.
        write: Option<ChunkWrite>,
        /// The attempt's whole output count.
        output: u64,
    },
    /// More than one write's worth waits: let the writer send it first.
    TooBig,
    /// Writing stopped (see the stop reason).
    Halted,
}

/// The output of one running attempt.
pub(crate) struct Outbox {
    held: Held,
    id: String,
    stop: StopSignal,
    budget: OutputBudget,
    state: Mutex<OutState>,
    /// Notified when the outbox empties or halts.
    flushed: Notify,
}

impl Outbox {
    fn lock(&self) -> MutexGuard<'_, OutState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True once the handler sent any chunk.
    pub(crate) fn produced(&self) -> bool {
        self.lock().produced
    }

    /// Stops writing and the attempt with `reason`.
    fn halt(&self, state: &mut OutState, reason: StopReason) {
        if !state.halted {
            tracing::warn!(task_id = %self.id, attempt = self.held.attempt(), %reason, "output refused; stopping the attempt");
        }
        state.halted = true;
        self.budget
            .give_back(state.queued.drain(..).map(|c| c.len()));
        state.in_flight = 0;
        self.stop.stop(reason);
        self.flushed.notify_waiters();
    }

    /// Stops writing and the attempt with `reason` (from outside the
    /// writer).
    pub(crate) fn halt_now(&self, reason: StopReason) {
        let mut state = self.lock();
        self.halt(&mut state, reason);
    }

    /// Queues a chunk; false when it is dropped (writing stopped).
    fn push(&self, chunk: Vec<u8>) -> bool {
        let mut state = self.lock();
        state.produced = true;
        if state.halted {
            self.budget.give_back([chunk.len()]);
            return false;
        }
        if chunk.len() > MAX_CHUNK_BYTES {
            self.budget.give_back([chunk.len()]);
            let reason = format!(
                "a chunk of {} bytes is over the {MAX_CHUNK_BYTES}-byte limit",
                chunk.len()
            );
            self.halt(&mut state, StopReason::OutputTooLarge { reason });
            return false;
        }
        if state.taken >= MAX_OUTPUT_CHUNKS {
            self.budget.give_back([chunk.len()]);
            self.halt(&mut state, too_large());
            return false;
        }
        state.taken += 1;
        state.queued.push_back(chunk);
        true
    }

    /// Ends the writer's part: the chunks it has not sent yet become the
    /// tail the complete carries, written right after the writer's call in
    /// flight (same connection: Redis runs them in order).
    pub(crate) fn seal(&self) -> Tail {
        let mut state = self.lock();
        if state.halted {
            return Tail::Halted;
        }
        let sent = state.acked + state.in_flight as u64;
        let rest: Vec<Vec<u8>> = state.queued.iter().skip(state.in_flight).cloned().collect();
        if rest.is_empty() {
            state.sealed = true;
            return Tail::Ready {
                write: None,
                output: sent,
            };
        }
        let bytes: usize = rest.iter().map(Vec::len).sum();
        if rest.len() > MAX_CHUNKS_PER_CALL || (rest.len() > 1 && bytes > MAX_GROUP_BYTES) {
            return Tail::TooBig;
        }
        state.sealed = true;
        let output = sent + rest.len() as u64;
        Tail::Ready {
            write: Some(ChunkWrite {
                held: self.held.clone(),
                id: self.id.clone(),
                seq0: sent,
                chunks: rest,
            }),
            output,
        }
    }

    /// Gives the chunks not yet in Redis back to the writer (a sealed
    /// attempt's tail or complete did not apply: they go the usual way,
    /// then the complete again).
    pub(crate) fn unseal(&self, wake: &Chunks) {
        self.lock().sealed = false;
        wake.wake.notify_one();
    }

    /// Waits until every chunk queued is in Redis (or writing stopped).
    pub(crate) async fn flushed(&self) {
        loop {
            let notified = self.flushed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let state = self.lock();
                if state.halted || state.queued.is_empty() {
                    return;
                }
            }
            notified.await;
        }
    }

    /// The next group to send, if chunks wait and none are in flight.
    fn next_group(&self) -> Option<ChunkWrite> {
        let mut state = self.lock();
        if state.halted || state.sealed || state.in_flight > 0 || state.queued.is_empty() {
            return None;
        }
        let mut bytes = 0;
        let mut chunks = Vec::new();
        for c in &state.queued {
            if chunks.len() == MAX_CHUNKS_PER_CALL
                || (!chunks.is_empty() && bytes + c.len() > MAX_GROUP_BYTES)
            {
                break;
            }
            bytes += c.len();
            chunks.push(c.clone());
        }
        state.in_flight = chunks.len();
        Some(ChunkWrite {
            held: self.held.clone(),
            id: self.id.clone(),
            seq0: state.acked,
            chunks,
        })
    }

    /// Applies Redis's answer to the group in flight.
    fn answered(&self, answer: Result<Written, String>) {
        let mut state = self.lock();
        if state.halted {
            return;
        }
        state.in_flight = 0;
        let stored = match answer {
            Ok(Written::Ok(n)) | Ok(Written::Order(n)) => n,
            Ok(Written::Lost) => {
                self.halt(&mut state, StopReason::Reassigned);
                return;
            }
            Ok(Written::TooLarge) => {
                self.halt(&mut state, too_large());
                return;
            }
            Err(reason) => {
                self.halt(&mut state, StopReason::WriteRefused { reason });
                return;
            }
        };
        // ORDER after a call sent again: Redis holds `stored`; what it
        // holds beyond our count came from the lost call (the same chunks).
        if stored < state.acked || stored - state.acked > state.queued.len() as u64 {
            let reason = format!(
                "Redis holds {stored} chunks of this attempt, the worker counted {} acknowledged and {} queued",
                state.acked,
                state.queued.len()
            );
            self.halt(&mut state, StopReason::WriteRefused { reason });
            return;
        }
        let applied = (stored - state.acked) as usize;
        self.budget
            .give_back(state.queued.drain(..applied).map(|c| c.len()));
        state.acked = stored;
        // Every answer: a waiter for the output (flushed) or for the
        // writer's call to settle (a sealed attempt's retry) re-checks.
        self.flushed.notify_waiters();
    }
}

fn too_large() -> StopReason {
    StopReason::OutputTooLarge {
        reason: format!("an attempt may write at most {MAX_OUTPUT_CHUNKS} chunks"),
    }
}

/// The outboxes of every running attempt and their writer task.
pub(crate) struct Chunks {
    outboxes: Mutex<HashMap<Key, Arc<Outbox>>>,
    wake: Notify,
}

impl Chunks {
    /// Starts the writer task; it stops (halting every outbox) at `stop`.
    pub(crate) fn start(
        conn: RedisConnection,
        keys: QueueKeys,
        worker: String,
        status: Arc<WorkerStatus>,
        stop: CancellationToken,
    ) -> Arc<Self> {
        let chunks = Arc::new(Self {
            outboxes: Mutex::new(HashMap::new()),
            wake: Notify::new(),
        });
        tokio::spawn(run(Arc::clone(&chunks), conn, keys, worker, status, stop));
        chunks
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Arc<Outbox>>> {
        self.outboxes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens the outbox of a delivery about to run.
    pub(crate) fn open(&self, d: &Delivery, stop: StopSignal, budget: OutputBudget) -> Arc<Outbox> {
        let outbox = Arc::new(Outbox {
            held: d.held.clone(),
            id: d.id.clone(),
            stop,
            budget,
            state: Mutex::new(OutState::default()),
            flushed: Notify::new(),
        });
        self.lock()
            .insert((d.id.clone(), d.held.attempt()), Arc::clone(&outbox));
        outbox
    }

    /// Closes an attempt's outbox (its chunks are written or dropped).
    pub(crate) fn close(&self, key: &Key) {
        self.lock().remove(key);
    }

    /// Queues a chunk of `outbox` and wakes the writer.
    pub(crate) fn push(&self, outbox: &Outbox, chunk: Vec<u8>) {
        if outbox.push(chunk) {
            self.wake.notify_one();
        }
    }

    fn halt_all(&self, reason: StopReason) {
        for outbox in self.lock().values() {
            let mut state = outbox.lock();
            outbox.halt(&mut state, reason.clone());
        }
    }
}

async fn run(
    chunks: Arc<Chunks>,
    mut conn: RedisConnection,
    keys: QueueKeys,
    worker: String,
    status: Arc<WorkerStatus>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = chunks.wake.notified() => {}
        }
        loop {
            let batch: Vec<(Arc<Outbox>, ChunkWrite)> = chunks
                .lock()
                .values()
                .filter_map(|o| o.next_group().map(|g| (Arc::clone(o), g)))
                .take(MAX_GROUPS)
                .collect();
            if batch.is_empty() {
                break;
            }
            let writes: Vec<ChunkWrite> = batch.iter().map(|(_, g)| g.clone()).collect();
            let answers = tokio::select! {
                _ = stop.cancelled() => break,
                answers = call(&mut conn, &keys, &worker, &status, &writes) => answers,
            };
            match answers {
                Ok(answers) => {
                    for ((outbox, _), answer) in batch.iter().zip(answers) {
                        outbox.answered(Ok(answer));
                    }
                }
                Err(e) => {
                    let reason = e.to_string();
                    for (outbox, _) in &batch {
                        outbox.answered(Err(reason.clone()));
                    }
                }
            }
        }
        if stop.is_cancelled() {
            break;
        }
    }
    chunks.halt_all(StopReason::Shutdown);
}

/// One `rtq3_write`, sent again as it was while the connection fails.
async fn call(
    conn: &mut RedisConnection,
    keys: &QueueKeys,
    worker: &str,
    status: &WorkerStatus,
    writes: &[ChunkWrite],
) -> Result<Vec<Written>, Error> {
    let give_up = Instant::now() + super::writes::PATIENCE;
    let mut failures = 0u32;
    loop {
        match v3::write(conn, keys, worker, writes).await {
            Ok(answers) => return Ok(answers),
            Err(e) if e.is_retryable() && Instant::now() < give_up => {
                failures += 1;
                tracing::warn!(error = %e, groups = writes.len(), failures, "chunk write failed; sending it again");
                status.set_last_error(format!("chunk write failed: {e}"));
                let delay = Duration::from_millis(50) * failures.min(40);
                tokio::time::sleep(delay.min(MAX_RETRY_DELAY)).await;
            }
            Err(e) => return Err(e),
        }
    }
}
