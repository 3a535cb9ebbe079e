//! Coalesced submits: the submits a client issues on one queue while
//! [`MAX_IN_FLIGHT`] submit calls are already in flight wait and then go
//! to Redis together, as one `rtq2_submit_many` call. At low load nothing
//! waits (a submit is sent at once, so the latency stays at two round
//! trips); under load the per-call cost (the function call, the clock,
//! the queue's state, free slots, counters) is paid once per batch instead
//! of once per task.
//!
//! A batch that fails is never an answer for its tasks: each task's
//! submit then falls back to its own call (`Queue::place`), which either
//! reports that task's own error (a call Redis refused wrote nothing) or
//! retries with the same id (a call whose answer was lost).

use crate::connection::RedisConnection;
use tokio::sync::{mpsc, oneshot};

use crate::error::Error;
use crate::functions::batch::{
    batch_answer, coalesce, copy_error, BatchAnswer, BatchLimits, Waiter,
};
use crate::functions::submit::{Submit, SubmitMany, SubmitReply, MAX_SUBMIT_BATCH};
use crate::functions::{self, Function};
use crate::keys::QueueKeys;

/// Submit calls in flight at once per queue before submits start to wait
/// and coalesce.
pub(crate) const MAX_IN_FLIGHT: usize = 4;
/// Spec bytes one batch carries at most (a bigger task goes alone).
const MAX_BATCH_BYTES: usize = 1 << 20;

/// One task's submit arguments, owned so they can wait in the queue.
#[derive(Clone, Debug)]
pub(crate) struct OwnedSubmit {
    pub(crate) id: String,
    pub(crate) spec: String,
    pub(crate) priority: i16,
    pub(crate) timeout_ms: u64,
    pub(crate) max_attempts: u32,
    pub(crate) retention_ms: u64,
    pub(crate) reply: String,
    pub(crate) stream: bool,
}

impl OwnedSubmit {
    pub(crate) fn as_submit(&self) -> Submit<'_> {
        Submit {
            id: &self.id,
            spec: &self.spec,
            priority: self.priority,
            timeout_ms: self.timeout_ms,
            max_attempts: self.max_attempts,
            retention_ms: self.retention_ms,
            reply: &self.reply,
            stream: self.stream,
        }
    }
}

/// What a batched submit came to for one task.
#[derive(Debug)]
pub(crate) enum Batched {
    /// Redis answered for this task.
    Replied(SubmitReply),
    /// The call failed without an answer: it may have been applied (a
    /// lost reply), so the task must be retried under the same id.
    Uncertain(Error),
    /// Redis refused the call (nothing of it was written): the task
    /// goes on its own to learn its own answer.
    Refused,
}

struct Waiting {
    submit: OwnedSubmit,
    answer: oneshot::Sender<Batched>,
}

/// The coalescing submitter of one queue (one per client and queue).
pub(crate) struct SubmitBatcher {
    tx: mpsc::UnboundedSender<Waiting>,
}

impl SubmitBatcher {
    /// Starts the batcher's task; it ends when the batcher is dropped.
    pub(crate) fn start(conn: RedisConnection, keys: QueueKeys) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(conn, keys, rx));
        Self { tx }
    }

    /// Submits one task through the batcher.
    pub(crate) async fn submit(&self, submit: OwnedSubmit) -> Batched {
        let (answer, rx) = oneshot::channel();
        if self.tx.send(Waiting { submit, answer }).is_err() {
            // Never sent: the task goes on its own.
            return Batched::Refused;
        }
        // An answer lost with the batcher (its task ended mid-call) is no
        // answer: the call may have been applied.
        rx.await.unwrap_or_else(|_| {
            Batched::Uncertain(Error::Protocol(
                "the submit batcher stopped before it answered".into(),
            ))
        })
    }
}

async fn run(conn: RedisConnection, keys: QueueKeys, rx: mpsc::UnboundedReceiver<Waiting>) {
    let limits = BatchLimits {
        in_flight: MAX_IN_FLIGHT,
        len: MAX_SUBMIT_BATCH,
        bytes: MAX_BATCH_BYTES,
    };
    coalesce(rx, limits, |batch| send(conn.clone(), keys.clone(), batch)).await;
}

impl Waiter for Waiting {
    fn bytes(&self) -> usize {
        self.submit.spec.len()
    }

    /// A caller that gave up (its future was dropped) is not submitted
    /// for: it was told nothing was done.
    fn gave_up(&self) -> bool {
        self.answer.is_closed()
    }
}

async fn send(mut conn: RedisConnection, keys: QueueKeys, batch: Vec<Waiting>) {
    let submits: Vec<Submit<'_>> = batch.iter().map(|w| w.submit.as_submit()).collect();
    let replies: Result<Vec<SubmitReply>, Error> = if submits.len() == 1 {
        functions::call(&mut conn, &keys, &submits[0])
            .await
            .map(|r| vec![r])
    } else {
        functions::call(&mut conn, &keys, &SubmitMany { tasks: &submits }).await
    };
    drop(submits);
    match batch_answer(replies, batch.len(), SubmitMany::NAME, "tasks") {
        BatchAnswer::Each(replies) => {
            for (waiting, reply) in batch.into_iter().zip(replies) {
                let _ = waiting.answer.send(Batched::Replied(reply));
            }
        }
        BatchAnswer::Uncertain(e) => {
            for waiting in batch {
                let _ = waiting.answer.send(Batched::Uncertain(copy_error(&e)));
            }
        }
        BatchAnswer::Refused(e) => {
            tracing::debug!(error = %e, tasks = batch.len(), "a coalesced submit was refused; submitting each task alone");
            for waiting in batch {
                let _ = waiting.answer.send(Batched::Refused);
            }
        }
    }
}
