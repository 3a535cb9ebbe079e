//! The chunk writer of one running attempt: sends chunks to Redis without
//! the handler ever waiting, coalesces chunks produced while a write is in
//! flight, and ends the attempt with one `complete` call that carries the
//! last chunks and is sent behind any write still in flight. Chunk writes
//! and the complete go through the worker's coalescer, which sends the
//! slots' writes issued while a call is in flight together, in order.
//!
//! Every write carries `seq0` (chunks written before it); the functions
//! apply it only if Redis holds exactly that many, so writes can be
//! pipelined, split and retried after a cut connection without loss,
//! reordering or duplication. One write carries at most 512 chunks or
//! 256 KiB (bigger bursts go out as several pipelined writes); a single
//! chunk over 1 MiB stops the task as failed.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::connection::RedisConnection;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc;

use super::budget::OutputBudget;
use super::coalescer::{Batched, Coalescer, OwnedChunks, OwnedComplete};
use super::handler::{StopReason, StopSignal};
use super::sleep_until;
use crate::error::Error;
use crate::functions;
use crate::functions::chunk::{ChunkReply, WriteStatus};
use crate::functions::complete::{refuses_next_apart, CompleteOutcome, CompleteReply};
use crate::keys::QueueKeys;
use crate::protocol::{
    TaskDelivery, TaskState, MAX_CHUNKS_PER_CALL, MAX_CHUNK_BYTES, MAX_OUTPUT_BYTES,
    MAX_OUTPUT_CHUNKS,
};

/// Bytes one write carries at most (a single bigger chunk goes alone).
const MAX_WRITE_BYTES: usize = 256 << 10;
/// How long `complete` is retried while Redis does not answer.
const COMPLETE_PATIENCE: Duration = Duration::from_secs(300);
/// Refused chunk writes (an error Redis will give again: a script or ACL
/// refusal) in a row after which the attempt stops as failed.
const MAX_REFUSED_WRITES: u32 = 3;
/// Longest pause between retries of a chunk write Redis did not answer.
const MAX_WRITE_RETRY_DELAY: Duration = Duration::from_secs(5);

/// How chunks are grouped into Redis writes.
///
/// The default sends a chunk at once when no write is in flight and
/// coalesces what arrives while one is: tiny tokens never each cost a
/// round trip, and the first token is never held back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Granularity {
    /// Writes allowed in flight at once (default 1; more pipelines writes
    /// instead of coalescing them, for per-token delivery).
    pub max_in_flight: usize,
    /// Hold chunks until this many bytes are buffered (default 0: no floor).
    pub min_bytes: usize,
    /// ...or until the oldest buffered chunk waited this long (default 0).
    pub max_delay: Duration,
}

impl Default for Granularity {
    fn default() -> Self {
        Self {
            max_in_flight: 1,
            min_bytes: 0,
            max_delay: Duration::ZERO,
        }
    }
}

struct WriteReply {
    count: usize,
    reply: Result<ChunkReply, Error>,
}

pub(crate) struct ChunkWriter {
    conn: RedisConnection,
    /// Sends chunk writes and the final complete (coalesced with other
    /// slots' writes under load).
    coalescer: Coalescer,
    keys: QueueKeys,
    worker: String,
    id: String,
    attempt: u64,
    granularity: Granularity,
    stop: StopSignal,
    /// The handler's budget of queued output: given back as chunks leave
    /// `unacked`.
    budget: OutputBudget,
    /// Chunks Redis is known to hold.
    acked: u64,
    /// Bytes of every chunk taken from the handler (the attempt's output
    /// size once written): the output caps are checked before sending.
    taken_bytes: u64,
    /// Chunks not yet acknowledged, in order; the first `sent` are in flight.
    unacked: VecDeque<Vec<u8>>,
    sent: usize,
    in_flight: FuturesOrdered<BoxFuture<'static, WriteReply>>,
    resync: Option<u64>,
    retry_at: Option<Instant>,
    buffered_since: Option<Instant>,
    stopped: bool,
    /// Why this writer stopped the attempt, if it did.
    halted: Option<StopReason>,
    /// Chunk writes that failed in a row (for the retry delay and the
    /// warning's rate).
    write_failures: u32,
    /// Refusals Redis will repeat (not connection trouble or a passing
    /// server state) in a row.
    refused_writes: u32,
    /// ORDER answers in a row that showed no progress (the pump backs off).
    stalled_orders: u32,
    /// Set once the handler sent a chunk (even one never written): its
    /// attempt can no longer be handed back as never started.
    produced: bool,
}

/// The stop reason a refused write means.
fn stop_reason(status: WriteStatus, state: Option<TaskState>) -> Option<StopReason> {
    if status == WriteStatus::TooLarge {
        return Some(output_too_large());
    }
    match status {
        WriteStatus::Ok | WriteStatus::Order => None,
        WriteStatus::Ended => Some(match state {
            Some(TaskState::Expired) => StopReason::Deadline,
            _ => StopReason::Cancelled {
                reason: "the task was cancelled".into(),
            },
        }),
        WriteStatus::Fenced => Some(StopReason::Reassigned),
        WriteStatus::NotFound => Some(StopReason::Gone),
        WriteStatus::TooLarge => Some(output_too_large()),
    }
}

/// The stop of an attempt whose output passes the caps.
fn output_too_large() -> StopReason {
    StopReason::OutputTooLarge {
        reason: format!(
            "an attempt may write at most {MAX_OUTPUT_CHUNKS} chunks and {} MiB",
            MAX_OUTPUT_BYTES >> 20
        ),
    }
}

impl ChunkWriter {
    pub(crate) fn new(
        conn: RedisConnection,
        coalescer: Coalescer,
        keys: &QueueKeys,
        worker: &str,
        delivery: &TaskDelivery,
        granularity: Granularity,
        stop: StopSignal,
    ) -> Self {
        Self {
            conn,
            coalescer,
            keys: keys.clone(),
            worker: worker.to_string(),
            id: delivery.id.clone(),
            attempt: delivery.attempt,
            granularity,
            stop,
            budget: OutputBudget::new(super::budget::DEFAULT_MAX_BUFFERED_OUTPUT_BYTES),
            acked: 0,
            taken_bytes: 0,
            produced: false,
            unacked: VecDeque::new(),
            sent: 0,
            in_flight: FuturesOrdered::new(),
            resync: None,
            retry_at: None,
            buffered_since: None,
            stopped: false,
            halted: None,
            write_failures: 0,
            refused_writes: 0,
            stalled_orders: 0,
        }
    }

    /// Gives the writer the handler's output budget (a budget of its own
    /// by default, which no handler spends).
    pub(crate) fn with_budget(mut self, budget: OutputBudget) -> Self {
        self.budget = budget;
        self
    }

    fn unsent(&self) -> usize {
        self.unacked.len() - self.sent
    }

    /// True once the handler sent any chunk.
    pub(crate) fn produced(&self) -> bool {
        self.produced
    }

    fn push(&mut self, chunk: Vec<u8>) {
        self.produced = true;
        if self.stopped {
            self.budget.give_back([chunk.len()]);
            return;
        }
        if chunk.len() > MAX_CHUNK_BYTES {
            self.budget.give_back([chunk.len()]);
            self.halt(StopReason::OutputTooLarge {
                reason: format!(
                    "a chunk of {} bytes is over the {}-byte limit",
                    chunk.len(),
                    MAX_CHUNK_BYTES
                ),
            });
            return;
        }
        // The caps Redis would refuse a write for, checked here: a write
        // past them is never sent (its seq0 could not even be expressed).
        self.taken_bytes += chunk.len() as u64;
        if self.acked + self.unacked.len() as u64 >= MAX_OUTPUT_CHUNKS
            || self.taken_bytes > MAX_OUTPUT_BYTES
        {
            self.budget.give_back([chunk.len()]);
            self.halt(output_too_large());
            return;
        }
        if self.unsent() == 0 {
            self.buffered_since = Some(Instant::now());
        }
        self.unacked.push_back(chunk);
    }

    /// Moves chunks from the handler to Redis until the handler's sender is
    /// dropped. Cancel-safe: dropping this future loses nothing.
    pub(crate) async fn pump(&mut self, rx: &mut mpsc::UnboundedReceiver<Vec<u8>>) {
        loop {
            self.maybe_send(false);
            let timer = self.next_timer();
            tokio::select! {
                Some(reply) = self.in_flight.next(), if !self.in_flight.is_empty() => self.on_reply(reply),
                msg = rx.recv() => match msg {
                    Some(chunk) => self.push(chunk),
                    None => return,
                },
                _ = sleep_until(timer), if timer.is_some() => {}
            }
        }
    }

    /// Takes every chunk still queued by a finished handler.
    pub(crate) fn drain(&mut self, rx: &mut mpsc::UnboundedReceiver<Vec<u8>>) {
        while let Ok(chunk) = rx.try_recv() {
            self.push(chunk);
        }
    }

    fn next_timer(&self) -> Option<Instant> {
        if let Some(at) = self.retry_at {
            return Some(at);
        }
        if self.unsent() > 0 && self.in_flight.len() < self.granularity.max_in_flight.max(1) {
            return self.buffered_since.map(|t| t + self.granularity.max_delay);
        }
        None
    }

    /// True when the retry delay (if any) has passed and no resync waits.
    fn ready_to_send(&mut self) -> bool {
        if self.stopped {
            return false;
        }
        if let Some(at) = self.retry_at {
            if Instant::now() < at {
                return false;
            }
            self.retry_at = None;
        }
        if self.in_flight.is_empty() {
            if let Some(nc) = self.resync.take() {
                self.resync_to(nc);
            }
        } else if self.resync.is_some() {
            return false;
        }
        true
    }

    fn maybe_send(&mut self, force: bool) {
        if !self.ready_to_send() {
            return;
        }
        if self.unsent() == 0 || self.in_flight.len() >= self.granularity.max_in_flight.max(1) {
            return;
        }
        // Held chunks are never allowed to block the handler: past half
        // its budget they go whatever the granularity asks.
        let force = force || self.budget.in_use() >= self.budget.capacity() / 2;
        if !force && self.granularity.min_bytes > 0 {
            let bytes: usize = self.unacked.iter().skip(self.sent).map(Vec::len).sum();
            let waited = self.buffered_since.map_or(Duration::ZERO, |t| t.elapsed());
            if bytes < self.granularity.min_bytes && waited < self.granularity.max_delay {
                return;
            }
        }
        self.send_batch();
    }

    /// How many unsent chunks the next write takes: at most 512 and 256 KiB
    /// (always at least one).
    fn batch_len(&self) -> usize {
        let mut bytes = 0;
        let mut n = 0;
        for c in self.unacked.iter().skip(self.sent) {
            if n == MAX_CHUNKS_PER_CALL || (n > 0 && bytes + c.len() > MAX_WRITE_BYTES) {
                break;
            }
            bytes += c.len();
            n += 1;
        }
        n
    }

    /// Sends the next batch of unsent chunks as one pipelined write.
    fn send_batch(&mut self) {
        let count = self.batch_len();
        if count == 0 {
            return;
        }
        let seq0 = self.acked + self.sent as u64;
        let chunks: Vec<Vec<u8>> = self
            .unacked
            .iter()
            .skip(self.sent)
            .take(count)
            .cloned()
            .collect();
        self.sent += count;
        self.buffered_since = (self.unsent() > 0).then(Instant::now);
        // Queued now, not when the future is first polled: the writes of
        // this slot reach Redis in the order they were made, and before a
        // complete made after them.
        let queued = self.coalescer.write_chunks(OwnedChunks {
            id: self.id.clone(),
            attempt: self.attempt,
            seq0,
            chunks,
        });
        let mut conn = self.conn.clone();
        let (keys, worker) = (self.keys.clone(), self.worker.clone());
        self.in_flight.push_back(
            async move {
                let reply = match queued.await {
                    Batched::Replied(r) => Ok(r),
                    Batched::Uncertain(e) => Err(e),
                    Batched::Refused(alone) => {
                        functions::call(&mut conn, &keys, &alone.as_chunk(&worker)).await
                    }
                };
                WriteReply { count, reply }
            }
            .boxed(),
        );
    }

    /// Forgets chunks Redis already holds (`nc` in total) and marks the
    /// rest unsent, after an ORDER answer or a write whose fate is unknown.
    fn resync_to(&mut self, nc: u64) {
        if self.stopped {
            // Nothing is left to resend (halt dropped it), but what Redis
            // holds is what the complete's seq0 must name, or every
            // complete would be answered ORDER.
            self.acked = nc;
            self.sent = 0;
            return;
        }
        if nc < self.acked {
            // Redis lost chunks it had acknowledged (a failover to a
            // replica that lagged): this attempt's output has a hole that
            // cannot be filled, so it is run again.
            let lost = self.acked - nc;
            self.halt(StopReason::WriteRefused {
                reason: format!(
                    "Redis lost {lost} chunks it had acknowledged (a failover to a lagging replica?)"
                ),
            });
            self.acked = nc;
            return;
        }
        let applied = nc.saturating_sub(self.acked).min(self.unacked.len() as u64) as usize;
        self.budget
            .give_back(self.unacked.drain(..applied).map(|c| c.len()));
        self.acked += applied as u64;
        self.sent = 0;
        if self.unsent() > 0 && self.buffered_since.is_none() {
            self.buffered_since = Some(Instant::now());
        }
    }

    fn on_reply(&mut self, reply: WriteReply) {
        if self.stopped {
            return;
        }
        match reply.reply {
            Ok(r) => match r.status {
                WriteStatus::Ok if self.resync.is_none() => {
                    self.write_failures = 0;
                    self.refused_writes = 0;
                    self.stalled_orders = 0;
                    self.budget
                        .give_back(self.unacked.drain(..reply.count).map(|c| c.len()));
                    self.acked += reply.count as u64;
                    self.sent -= reply.count;
                }
                WriteStatus::Ok => {}
                WriteStatus::Order => {
                    if r.chunks <= self.acked {
                        // No progress since the last answer: resending at
                        // once would spin; back off (first one at once).
                        self.stalled_orders += 1;
                        if self.stalled_orders > 1 {
                            let delay = (Duration::from_millis(50) * self.stalled_orders.min(40))
                                .min(Duration::from_secs(2));
                            self.retry_at = Some(Instant::now() + delay);
                        }
                    } else {
                        self.stalled_orders = 0;
                    }
                    self.resync = Some(self.resync.map_or(r.chunks, |x| x.max(r.chunks)));
                }
                other => {
                    if let Some(reason) = stop_reason(other, r.state) {
                        self.halt(reason);
                    }
                }
            },
            Err(e) => self.on_write_error(&e),
        }
    }

    /// A chunk write Redis did not answer, or refused with an error: the
    /// write is retried (from what Redis is known to hold) after a pause
    /// that grows to 5 s, warned about once per 10 failures; an error
    /// Redis will give again (a script or ACL refusal, not connection
    /// trouble) stops the attempt as failed after 3 in a row.
    fn on_write_error(&mut self, e: &Error) {
        self.write_failures += 1;
        // Only what Redis will answer again: a function's own refusal or
        // an ACL's. A read-only replica during a failover, MISCONF, a
        // cut connection are passing states: retried without limit.
        let refused = matches!(
            e,
            Error::InvalidInput(_) | Error::PermissionDenied(_) | Error::Function { .. }
        );
        if !refused {
            self.refused_writes = 0;
        } else {
            self.refused_writes += 1;
            if self.refused_writes >= MAX_REFUSED_WRITES {
                tracing::warn!(task_id = %self.id, error = %e, "chunk writes refused; the attempt fails");
                self.halt(StopReason::WriteRefused {
                    reason: e.to_string(),
                });
                return;
            }
        }
        if self.write_failures % 10 == 1 {
            tracing::warn!(task_id = %self.id, error = %e, failures = self.write_failures, "chunk write failed; retrying");
        }
        self.resync = Some(self.resync.unwrap_or(self.acked));
        let delay =
            (Duration::from_millis(200) * self.write_failures.min(25)).min(MAX_WRITE_RETRY_DELAY);
        self.retry_at = Some(Instant::now() + delay);
    }

    fn halt(&mut self, reason: StopReason) {
        self.stopped = true;
        self.budget
            .give_back(self.unacked.drain(..).map(|c| c.len()));
        self.sent = 0;
        self.halted.get_or_insert(reason.clone());
        self.stop.stop(reason);
    }

    async fn drain_in_flight(&mut self) {
        while let Some(reply) = self.in_flight.next().await {
            self.on_reply(reply);
        }
    }

    /// Ends the attempt: pipelined writes for chunks beyond one write's
    /// worth, then one `complete` with the rest, retried until Redis
    /// decides (the call is idempotent).
    ///
    /// With `want_next` the slot takes the next task.
    pub(crate) async fn finish(
        mut self,
        outcome: CompleteOutcome,
        payload: &str,
        want_next: bool,
    ) -> Result<CompleteReply, Error> {
        let mut outcome = outcome;
        let mut payload = payload.to_string();
        let give_up = Instant::now() + COMPLETE_PATIENCE;
        let mut failures = 0u32;
        // ORDER answers in a row: the first resyncs at once (a write in
        // flight landed meanwhile); repeated ones back off like failures.
        let mut orders = 0u32;
        // Set once a batch refused this complete and it failed alone too:
        // its retries go alone, so they do not refuse other slots' batches.
        let mut alone = false;
        loop {
            if !self.stopped {
                if !self.ready_to_send() {
                    // A resync or a retry delay is pending: settle it first.
                    self.drain_in_flight().await;
                    if let Some(at) = self.retry_at {
                        tokio::time::sleep_until(at.into()).await;
                    }
                    continue;
                }
                while self.unsent() > self.batch_len() {
                    self.send_batch();
                }
            }
            if let (Some(reason @ StopReason::OutputTooLarge { .. }), CompleteOutcome::Done) =
                (&self.halted, outcome)
            {
                // Chunks were refused (or never sent) for size: whatever
                // the handler returned, the output is incomplete, so the
                // attempt fails. A complete sent before this could not
                // apply: its seq0 counts the refused chunks (ORDER).
                payload = reason.to_string();
                outcome = CompleteOutcome::Failed;
            }
            let seq0 = self.acked + self.sent as u64;
            let trailing: Vec<Vec<u8>> = if self.stopped {
                Vec::new()
            } else {
                self.unacked.iter().skip(self.sent).cloned().collect()
            };
            let owned = OwnedComplete {
                id: self.id.clone(),
                attempt: self.attempt,
                seq0,
                outcome,
                payload: payload.clone(),
                want_next,
                next_apart: self.coalescer.next_apart(),
                chunks: trailing,
            };
            let (coalescer, conn) = (self.coalescer.clone(), self.conn.clone());
            let (keys, worker) = (self.keys.clone(), self.worker.clone());
            let (reply, ()) = tokio::join!(
                complete(&coalescer, &conn, &keys, &worker, owned, &mut alone),
                self.drain_in_flight()
            );
            match reply {
                Ok(r) if r.status == WriteStatus::Order => {
                    orders += 1;
                    if orders > 1 {
                        if Instant::now() >= give_up {
                            return Err(Error::InvalidInput(format!(
                                "task {}: Redis holds {} chunks and keeps answering ORDER to the complete",
                                self.id, r.chunks
                            )));
                        }
                        if orders % 10 == 2 {
                            tracing::warn!(task_id = %self.id, held = r.chunks, orders, "complete answered ORDER again; resending");
                        }
                        tokio::time::sleep(Duration::from_millis(50 * u64::from(orders.min(40))))
                            .await;
                    }
                    self.resync = None;
                    self.resync_to(r.chunks);
                }
                Ok(r) if r.status == WriteStatus::TooLarge => {
                    // The trailing chunks would pass the output caps: the
                    // attempt fails instead, without them.
                    let reason = output_too_large();
                    payload = reason.to_string();
                    outcome = CompleteOutcome::Failed;
                    self.halt(reason);
                }
                Ok(r) => return Ok(r),
                Err(e) => {
                    failures += 1;
                    if Instant::now() >= give_up {
                        return Err(e);
                    }
                    tracing::warn!(task_id = %self.id, error = %e, "complete failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(failures.min(20))))
                        .await;
                    // The fate of the failed call is unknown: resend from
                    // what Redis is known to hold; seq0 and the replay rule
                    // sort it out.
                    self.resync_to(self.acked);
                }
            }
        }
    }
}

/// Sends one complete through the coalescer; a completion the coalescer
/// could not send in a batch goes alone (its own answer or error), and
/// when that fails too, `alone` is set and its retries skip the coalescer
/// (a complete Redis keeps refusing, e.g. on a foreign key, would refuse
/// every batch it joined). A library older than revision 9 refuses a next
/// task's spec apart (nothing written): the completion is sent again
/// asking for it whole, and so are the worker's later ones.
async fn complete(
    coalescer: &Coalescer,
    conn: &RedisConnection,
    keys: &QueueKeys,
    worker: &str,
    owned: OwnedComplete,
    alone: &mut bool,
) -> Result<CompleteReply, Error> {
    let mut owned = if *alone {
        owned
    } else {
        match coalescer.complete(owned).await {
            Batched::Replied(r) => return Ok(r),
            Batched::Uncertain(e) => return Err(e),
            Batched::Refused(owned) => owned,
        }
    };
    let reply = match functions::call(&mut conn.clone(), keys, &owned.as_complete(worker)).await {
        Err(e) if owned.want_next && owned.next_apart && refuses_next_apart(&e) => {
            coalescer.ask_next_whole();
            owned.next_apart = false;
            functions::call(&mut conn.clone(), keys, &owned.as_complete(worker)).await
        }
        other => other,
    };
    *alone = reply.is_err();
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_writes_map_to_typed_stop_reasons() {
        assert_eq!(stop_reason(WriteStatus::Ok, None), None);
        assert_eq!(stop_reason(WriteStatus::Order, None), None);
        assert_eq!(
            stop_reason(WriteStatus::Ended, Some(TaskState::Expired)),
            Some(StopReason::Deadline)
        );
        assert!(matches!(
            stop_reason(WriteStatus::Ended, Some(TaskState::Cancelled)),
            Some(StopReason::Cancelled { .. })
        ));
        assert_eq!(
            stop_reason(WriteStatus::Fenced, Some(TaskState::Running)),
            Some(StopReason::Reassigned)
        );
        assert_eq!(
            stop_reason(WriteStatus::NotFound, None),
            Some(StopReason::Gone)
        );
        assert!(matches!(
            stop_reason(WriteStatus::TooLarge, None),
            Some(StopReason::OutputTooLarge { .. })
        ));
    }
}
