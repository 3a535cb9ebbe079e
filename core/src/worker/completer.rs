//! Coalesced completes: the completes a worker's slots issue while one
//! complete call is in flight wait and then go to Redis together, as one
//! `rtq2_complete_many` call (the same pattern as the client's submit
//! batcher). At low load nothing waits (a complete is sent at once); under
//! load the per-call cost (the function call, the clock, the queue's
//! state) is paid once per batch instead of once per task, and each
//! completion keeps its own fencing check, replay mark and next task.
//!
//! A batch that fails is never an answer for its completions: a call
//! whose answer was lost is reported as uncertain (the slot's writer
//! retries it, and the replay mark answers what the first call did); a
//! call Redis refused wrote nothing, and each completion then goes on its
//! own to learn its own answer. A server that does not know
//! `rtq2_complete_many`, or a user that may not call it, turns batching
//! off for the process (every complete goes alone, as before).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};

use crate::connection::RedisConnection;
use crate::error::Error;
use crate::functions::batch::{batch_answer, copy_error, BatchAnswer};
use crate::functions::complete::{
    Complete, CompleteMany, CompleteOutcome, CompleteReply, MAX_COMPLETE_BATCH,
};
use crate::functions::{self, Function};
use crate::keys::QueueKeys;

/// Complete calls in flight at once per worker before completes start to
/// wait and coalesce.
const MAX_IN_FLIGHT: usize = 1;
/// Result, reason and chunk bytes one batch carries at most (a bigger
/// completion goes alone).
const MAX_BATCH_BYTES: usize = 1 << 20;

/// One completion's arguments, owned so they can wait in the queue.
#[derive(Clone, Debug)]
pub(crate) struct OwnedComplete {
    pub(crate) id: String,
    pub(crate) attempt: u64,
    pub(crate) seq0: u64,
    pub(crate) outcome: CompleteOutcome,
    pub(crate) payload: String,
    pub(crate) want_next: bool,
    /// The next task's spec answered apart (see `Complete::next_apart`).
    pub(crate) next_apart: bool,
    pub(crate) chunks: Vec<Vec<u8>>,
}

impl OwnedComplete {
    pub(crate) fn as_complete<'a>(&'a self, worker: &'a str) -> Complete<'a> {
        Complete {
            worker,
            id: &self.id,
            attempt: self.attempt,
            seq0: self.seq0,
            outcome: self.outcome,
            payload: &self.payload,
            want_next: self.want_next,
            next_apart: self.next_apart,
            chunks: &self.chunks,
        }
    }

    fn bytes(&self) -> usize {
        self.payload.len() + self.chunks.iter().map(Vec::len).sum::<usize>()
    }
}

/// What a batched complete came to for one completion.
#[derive(Debug)]
pub(crate) enum Batched {
    /// Redis answered for this completion.
    Replied(CompleteReply),
    /// The call failed without an answer: it may have been applied (a
    /// lost reply), so the completion must be retried as it is.
    Uncertain(Error),
    /// Redis refused the call (nothing of it was written), or batching is
    /// off: the completion (given back) goes on its own.
    Refused(OwnedComplete),
}

struct Waiting {
    complete: OwnedComplete,
    answer: oneshot::Sender<Batched>,
}

/// The coalescing completer of one worker process.
#[derive(Clone)]
pub(crate) struct Completer {
    tx: mpsc::UnboundedSender<Waiting>,
    /// Set when the server or the user refuses `rtq2_complete_many`.
    off: Arc<AtomicBool>,
    /// Set when the server's library (older than revision 9) refuses a
    /// next task's spec apart: completes ask for it whole from then on.
    next_whole: Arc<AtomicBool>,
}

impl Completer {
    /// Starts the completer's task; it ends when every clone is dropped.
    pub(crate) fn start(conn: RedisConnection, keys: QueueKeys, worker: String) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let off = Arc::new(AtomicBool::new(false));
        tokio::spawn(run(conn, keys, worker, rx, Arc::clone(&off)));
        Self {
            tx,
            off,
            next_whole: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Whether completes ask for the next task's spec apart (true until
    /// the server's library refused it once).
    pub(crate) fn next_apart(&self) -> bool {
        !self.next_whole.load(Ordering::Relaxed)
    }

    /// Completes ask for next tasks whole from now on (the server's
    /// library is older than revision 9). Warns the first time.
    pub(crate) fn ask_next_whole(&self) {
        if !self.next_whole.swap(true, Ordering::Relaxed) {
            tracing::warn!("the server runs an rtq functions library older than revision 9; next tasks come whole (an admin should connect once to load the current library)");
        }
    }

    /// Completes one attempt through the completer.
    pub(crate) async fn complete(&self, complete: OwnedComplete) -> Batched {
        if self.off.load(Ordering::Relaxed) {
            return Batched::Refused(complete);
        }
        let (answer, rx) = oneshot::channel();
        if let Err(unsent) = self.tx.send(Waiting { complete, answer }) {
            return Batched::Refused(unsent.0.complete);
        }
        // An answer lost with the completer (its task ended mid-call) is
        // no answer: the call may have been applied.
        rx.await.unwrap_or_else(|_| {
            Batched::Uncertain(Error::Protocol(
                "the completer stopped before it answered".into(),
            ))
        })
    }
}

async fn run(
    conn: RedisConnection,
    keys: QueueKeys,
    worker: String,
    mut rx: mpsc::UnboundedReceiver<Waiting>,
    off: Arc<AtomicBool>,
) {
    let mut in_flight = FuturesUnordered::new();
    let mut carry: Option<Waiting> = None;
    let mut open = true;
    while open || carry.is_some() || !in_flight.is_empty() {
        tokio::select! {
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            first = next(&mut carry, &mut rx), if (open || carry.is_some()) && in_flight.len() < MAX_IN_FLIGHT => {
                let Some(first) = first else {
                    open = false;
                    continue;
                };
                // A slot that gave up (its future was dropped) is not
                // completed for: the heartbeat's sweep settles it.
                if first.answer.is_closed() {
                    continue;
                }
                let mut bytes = first.complete.bytes();
                let mut batch = vec![first];
                while batch.len() < MAX_COMPLETE_BATCH {
                    let Ok(more) = rx.try_recv() else { break };
                    if more.answer.is_closed() {
                        continue;
                    }
                    if bytes + more.complete.bytes() > MAX_BATCH_BYTES {
                        carry = Some(more);
                        break;
                    }
                    bytes += more.complete.bytes();
                    batch.push(more);
                }
                in_flight.push(send(conn.clone(), keys.clone(), worker.clone(), batch, Arc::clone(&off)));
            }
        }
    }
}

async fn next(
    carry: &mut Option<Waiting>,
    rx: &mut mpsc::UnboundedReceiver<Waiting>,
) -> Option<Waiting> {
    match carry.take() {
        Some(w) => Some(w),
        None => rx.recv().await,
    }
}

/// True for a refusal that every later batch would meet as well: the
/// server's library predates `rtq2_complete_many`, or the user's ACL
/// rules do not name it.
fn refused_for_good(e: &Error) -> bool {
    match e {
        Error::PermissionDenied(_) => true,
        Error::Redis(r) => functions::is_library_missing(r),
        _ => false,
    }
}

async fn send(
    mut conn: RedisConnection,
    keys: QueueKeys,
    worker: String,
    batch: Vec<Waiting>,
    off: Arc<AtomicBool>,
) {
    let completes: Vec<Complete<'_>> = batch
        .iter()
        .map(|w| w.complete.as_complete(&worker))
        .collect();
    let replies: Result<Vec<CompleteReply>, Error> = if completes.len() == 1 {
        functions::call(&mut conn, &keys, &completes[0])
            .await
            .map(|r| vec![r])
    } else {
        functions::call(
            &mut conn,
            &keys,
            &CompleteMany {
                completes: &completes,
            },
        )
        .await
    };
    drop(completes);
    match batch_answer(replies, batch.len(), CompleteMany::NAME, "completions") {
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
            if batch.len() > 1 && refused_for_good(&e) {
                tracing::warn!(error = %e, "the server or this user refuses coalesced completes; completing each task alone from now on (load the current rtq library, grant `fcall|rtq2_complete_many`)");
                off.store(true, Ordering::Relaxed);
            } else {
                tracing::debug!(error = %e, completions = batch.len(), "a coalesced complete was refused; completing each task alone");
            }
            for waiting in batch {
                let _ = waiting.answer.send(Batched::Refused(waiting.complete));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_refusals_that_every_batch_would_meet_turn_batching_off() {
        assert!(refused_for_good(&Error::PermissionDenied("NOPERM".into())));
        assert!(!refused_for_good(&Error::InvalidInput("x".into())));
        assert!(!refused_for_good(&Error::Protocol("x".into())));
    }

    #[test]
    fn a_completion_counts_its_payload_and_chunks() {
        let c = OwnedComplete {
            id: "t".into(),
            attempt: 1,
            seq0: 0,
            outcome: CompleteOutcome::Done,
            payload: "abc".into(),
            want_next: true,
            next_apart: true,
            chunks: vec![vec![0; 10], vec![0; 5]],
        };
        assert_eq!(c.bytes(), 18);
        let borrowed = c.as_complete("w1");
        assert_eq!(borrowed.worker, "w1");
        assert_eq!(borrowed.chunks.len(), 2);
    }
}
