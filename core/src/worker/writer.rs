//! The chunk writer of one running attempt: sends chunks to Redis without
//! the handler ever waiting, coalesces chunks produced while a write is in
//! flight, and ends the attempt with one `complete` call that carries the
//! last chunks and is pipelined behind any write still in flight.
//!
//! Every write carries `seq0` (chunks written before it); the scripts apply
//! it only if Redis holds exactly that many, so writes can be pipelined and
//! retried after a cut connection without loss, reordering or duplication.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use redis::aio::ConnectionManager;
use redis::Value;
use tokio::sync::mpsc;

use super::handler::StopSignal;
use super::sleep_until;
use crate::error::Error;
use crate::protocol::{split_status, value_to_i64, value_to_string, InboxMessage, TaskDelivery};
use crate::scripts::scripts;

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

/// The reply of `complete.lua`, decoded.
#[derive(Debug)]
pub(crate) struct Completed {
    /// OK, CANCELLED, FENCED or NOT_FOUND.
    pub status: String,
    /// The next task for this slot, if one was taken.
    pub next: Option<TaskDelivery>,
}

struct WriteReply {
    count: usize,
    reply: redis::RedisResult<Value>,
}

pub(crate) struct ChunkWriter {
    conn: ConnectionManager,
    prefix: String,
    worker: String,
    id: String,
    attempt: String,
    granularity: Granularity,
    stop: StopSignal,
    /// Chunks Redis is known to hold.
    acked: u64,
    /// Chunks not yet acknowledged, in order; the first `sent` are in flight.
    unacked: VecDeque<Vec<u8>>,
    sent: usize,
    in_flight: FuturesOrdered<BoxFuture<'static, WriteReply>>,
    resync: Option<u64>,
    retry_at: Option<Instant>,
    buffered_since: Option<Instant>,
    stopped: bool,
}

impl ChunkWriter {
    pub(crate) fn new(
        conn: ConnectionManager,
        prefix: &str,
        worker: &str,
        delivery: &TaskDelivery,
        granularity: Granularity,
        stop: StopSignal,
    ) -> Self {
        Self {
            conn,
            prefix: prefix.to_string(),
            worker: worker.to_string(),
            id: delivery.id.clone(),
            attempt: delivery.attempt.to_string(),
            granularity,
            stop,
            acked: 0,
            unacked: VecDeque::new(),
            sent: 0,
            in_flight: FuturesOrdered::new(),
            resync: None,
            retry_at: None,
            buffered_since: None,
            stopped: false,
        }
    }

    fn unsent(&self) -> usize {
        self.unacked.len() - self.sent
    }

    fn push(&mut self, chunk: Vec<u8>) {
        if self.stopped {
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

    fn maybe_send(&mut self, force: bool) {
        if self.stopped {
            return;
        }
        if let Some(at) = self.retry_at {
            if Instant::now() < at {
                return;
            }
            self.retry_at = None;
        }
        if self.in_flight.is_empty() {
            if let Some(nc) = self.resync.take() {
                self.resync_to(nc);
            }
        } else if self.resync.is_some() {
            return;
        }
        if self.unsent() == 0 || self.in_flight.len() >= self.granularity.max_in_flight.max(1) {
            return;
        }
        if !force && self.granularity.min_bytes > 0 {
            let bytes: usize = self.unacked.iter().skip(self.sent).map(Vec::len).sum();
            let waited = self.buffered_since.map_or(Duration::ZERO, |t| t.elapsed());
            if bytes < self.granularity.min_bytes && waited < self.granularity.max_delay {
                return;
            }
        }
        let seq0 = self.acked + self.sent as u64;
        let chunks: Vec<Vec<u8>> = self.unacked.iter().skip(self.sent).cloned().collect();
        let count = chunks.len();
        self.sent += count;
        self.buffered_since = None;
        let mut invocation = scripts().chunk.key(&self.prefix);
        invocation
            .arg(&self.worker)
            .arg(&self.id)
            .arg(&self.attempt)
            .arg(seq0);
        for c in &chunks {
            invocation.arg(c.as_slice());
        }
        let mut conn = self.conn.clone();
        self.in_flight.push_back(
            async move {
                WriteReply {
                    count,
                    reply: invocation.invoke_async(&mut conn).await,
                }
            }
            .boxed(),
        );
    }

    /// Forgets chunks Redis already holds (`nc` in total) and marks the
    /// rest unsent, after an ORDER answer or a write whose fate is unknown.
    fn resync_to(&mut self, nc: u64) {
        let applied = nc.saturating_sub(self.acked).min(self.unacked.len() as u64) as usize;
        self.unacked.drain(..applied);
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
        match reply.reply.map_err(Error::from).and_then(split_status) {
            Ok((status, items)) => match status.as_str() {
                "OK" if self.resync.is_none() => {
                    self.unacked.drain(..reply.count);
                    self.acked += reply.count as u64;
                    self.sent -= reply.count;
                }
                "OK" => {}
                "ORDER" => {
                    let nc = items.first().map(value_to_i64).unwrap_or(0) as u64;
                    self.resync = Some(self.resync.map_or(nc, |r| r.max(nc)));
                }
                other => self.halt(other),
            },
            Err(e) => {
                tracing::warn!(task_id = %self.id, error = %e, "chunk write failed; retrying");
                self.resync = Some(self.resync.unwrap_or(self.acked));
                self.retry_at = Some(Instant::now() + Duration::from_millis(200));
            }
        }
    }

    fn halt(&mut self, status: &str) {
        self.stopped = true;
        self.unacked.clear();
        self.sent = 0;
        let reason = match status {
            "CANCELLED" => "cancelled",
            "FENCED" => "fenced: the task was reassigned",
            _ => "the task no longer exists",
        };
        self.stop.stop(reason);
    }

    async fn drain_in_flight(&mut self) {
        while let Some(reply) = self.in_flight.next().await {
            self.on_reply(reply);
        }
    }

    /// Ends the attempt: one `complete` call with the remaining chunks,
    /// pipelined behind any write in flight; retried until Redis decides.
    ///
    /// `outcome` is "done", "failed" or "retry"; `payload` the result JSON or
    /// the failure reason. With `want_next` the slot takes the next task.
    pub(crate) async fn finish(
        mut self,
        outcome: &str,
        payload: &str,
        want_next: bool,
    ) -> Result<Completed, Error> {
        let mut failures = 0u32;
        loop {
            let seq0 = self.acked + self.sent as u64;
            let mut invocation = scripts().complete.key(&self.prefix);
            invocation
                .arg(&self.worker)
                .arg(&self.id)
                .arg(&self.attempt)
                .arg(seq0)
                .arg(outcome)
                .arg(payload)
                .arg(if want_next { "1" } else { "0" });
            if !self.stopped {
                for c in self.unacked.iter().skip(self.sent) {
                    invocation.arg(c.as_slice());
                }
            }
            let mut conn = self.conn.clone();
            let (reply, ()) = tokio::join!(
                invocation.invoke_async::<Value>(&mut conn),
                self.drain_in_flight()
            );
            match reply.map_err(Error::from).and_then(split_status) {
                Ok((status, items)) if status == "ORDER" => {
                    let nc = items.get(1).map(value_to_i64).unwrap_or(0) as u64;
                    self.resync = None;
                    self.resync_to(nc);
                }
                Ok((status, items)) => {
                    let raw = items.first().map(value_to_string).unwrap_or_default();
                    let next = if raw.is_empty() {
                        None
                    } else {
                        match InboxMessage::parse(&raw)? {
                            InboxMessage::Task(d) => Some(d),
                            InboxMessage::Cancel { .. } => None,
                        }
                    };
                    return Ok(Completed { status, next });
                }
                Err(e) => {
                    failures += 1;
                    if failures >= 50 {
                        return Err(e);
                    }
                    tracing::warn!(task_id = %self.id, error = %e, "complete failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100 * failures.min(10) as u64)).await;
                    // The fate of the failed call is unknown: resend from
                    // what Redis is known to hold; the seq0 guard sorts it out.
                    self.resync_to(self.acked);
                }
            }
        }
    }
}
