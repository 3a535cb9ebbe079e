//! Coalesced submits to a stream queue: as the v2 batcher
//! ([`super::batcher`]), the submits issued while calls are in flight go
//! together as one `rtq3_submit` (up to 1,024 tasks per call). A call
//! that fails is never an answer: its tasks go alone (a refusal wrote
//! nothing) or are retried under the same id (a lost answer).

use tokio::sync::{mpsc, oneshot};

use crate::connection::RedisConnection;
use crate::error::Error;
use crate::functions::batch::{
    batch_answer, coalesce, copy_error, BatchAnswer, BatchLimits, Waiter,
};
use crate::functions::v3::{self, Admission, NewTask};
use crate::keys::QueueKeys;

/// Tasks one `rtq3_submit` carries at most (the function's limit).
const MAX_BATCH: usize = 1024;
/// Spec bytes one batch carries at most (a bigger task goes alone).
const MAX_BATCH_BYTES: usize = 1 << 20;

/// What a batched submit came to for one task.
#[derive(Debug)]
pub(crate) enum Batched {
    /// Redis answered for this task.
    Replied(Admission),
    /// The call failed without an answer: it may have been applied, so
    /// the task must be retried under the same id.
    Uncertain(Error),
    /// Redis refused the call (nothing of it was written): the task goes
    /// on its own to learn its own answer.
    Refused,
}

struct Waiting {
    task: NewTask,
    answer: oneshot::Sender<Batched>,
}

impl Waiter for Waiting {
    fn bytes(&self) -> usize {
        self.task.spec.len()
    }

    fn gave_up(&self) -> bool {
        self.answer.is_closed()
    }
}

/// The coalescing submitter of one stream queue (one per client and queue).
pub(crate) struct StreamBatcher {
    tx: mpsc::UnboundedSender<Waiting>,
}

impl StreamBatcher {
    /// Starts the batcher's task; it ends when the batcher is dropped.
    pub(crate) fn start(conn: RedisConnection, keys: QueueKeys) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let limits = BatchLimits {
            // One call in flight (v2's batcher allows four): a v3 call's
            // fixed cost (meta and key checks) is a larger share of a small
            // batch; at low load a submit still goes at once, alone.
            in_flight: 1,
            len: MAX_BATCH,
            bytes: MAX_BATCH_BYTES,
        };
        tokio::spawn(async move {
            coalesce(rx, limits, |batch| send(conn.clone(), keys.clone(), batch)).await;
        });
        Self { tx }
    }

    /// Submits one task through the batcher.
    pub(crate) async fn submit(&self, task: NewTask) -> Batched {
        let (answer, rx) = oneshot::channel();
        if self.tx.send(Waiting { task, answer }).is_err() {
            return Batched::Refused;
        }
        rx.await.unwrap_or_else(|_| {
            Batched::Uncertain(Error::Protocol(
                "the submit batcher stopped before it answered".into(),
            ))
        })
    }
}

async fn send(mut conn: RedisConnection, keys: QueueKeys, batch: Vec<Waiting>) {
    let tasks: Vec<&NewTask> = batch.iter().map(|w| &w.task).collect();
    let replies = v3::submit_refs(&mut conn, &keys, &tasks).await;
    drop(tasks);
    match batch_answer(replies, batch.len(), "rtq3_submit", "tasks") {
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
            tracing::debug!(error = %e, tasks = batch.len(), "a coalesced stream submit was refused; submitting each task alone");
            for waiting in batch {
                let _ = waiting.answer.send(Batched::Refused);
            }
        }
    }
}
