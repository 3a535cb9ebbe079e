//! Coalesced slot writes: the chunk writes and completes a worker's slots
//! issue while one call is in flight wait and then go to Redis together,
//! in the order they were issued, as one call (the same pattern as the
//! client's submit batcher):
//! - completes alone: `rtq2_complete_many`;
//! - with chunk writes among them: `rtq2_write_many` (revision 10).
//!
//! At low load nothing waits (a write is sent at once, as `rtq2_chunk` or
//! `rtq2_complete`); under load the per-call cost (the function call, the
//! clock, the queue's state, a request's parsing) is paid once per batch
//! instead of once per write: per-token streams of many slots cost one
//! call per round trip instead of one per token. Each write keeps its own
//! fencing check, ordering by `seq0`, replay mark and next task.
//!
//! A batch that fails is never an answer for its writes: a call whose
//! answer was lost is reported as uncertain (the slot's writer retries,
//! and `seq0` and the replay mark answer what the first call did); a call
//! Redis refused wrote nothing, and each write then goes on its own to
//! learn its own answer. A server that does not know a `_many` function,
//! or a user that may not call it, turns that batching off for the
//! process: completes go alone without `rtq2_complete_many`, chunk writes
//! without `rtq2_write_many` (a library older than revision 10).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::connection::RedisConnection;
use crate::error::Error;
use crate::functions::batch::{
    batch_answer, coalesce, copy_error, BatchAnswer, BatchLimits, Waiter,
};
use crate::functions::chunk::{Chunk, ChunkReply};
use crate::functions::complete::{
    Complete, CompleteMany, CompleteOutcome, CompleteReply, SlotWrite, SlotWriteReply, WriteMany,
    MAX_COMPLETE_BATCH,
};
use crate::functions::{self, Function};
use crate::keys::QueueKeys;

/// Calls in flight at once per worker before writes start to wait and
/// coalesce.
const MAX_IN_FLIGHT: usize = 1;
/// Result, reason and chunk bytes one batch carries at most (a bigger
/// write goes alone).
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
}

/// One chunk write's arguments, owned so they can wait in the queue.
#[derive(Clone, Debug)]
pub(crate) struct OwnedChunks {
    pub(crate) id: String,
    pub(crate) attempt: u64,
    pub(crate) seq0: u64,
    pub(crate) chunks: Vec<Vec<u8>>,
}

impl OwnedChunks {
    pub(crate) fn as_chunk<'a>(&'a self, worker: &'a str) -> Chunk<'a> {
        Chunk {
            worker,
            id: &self.id,
            attempt: self.attempt,
            seq0: self.seq0,
            chunks: &self.chunks,
        }
    }
}

/// A slot's write waiting in the queue.
#[derive(Debug)]
enum OwnedWrite {
    Chunks(OwnedChunks),
    Complete(OwnedComplete),
}

impl OwnedWrite {
    fn bytes(&self) -> usize {
        let (payload, chunks) = match self {
            Self::Chunks(c) => (0, &c.chunks),
            Self::Complete(c) => (c.payload.len(), &c.chunks),
        };
        payload + chunks.iter().map(Vec::len).sum::<usize>()
    }

    fn is_chunks(&self) -> bool {
        matches!(self, Self::Chunks(_))
    }

    fn as_slot_write<'a>(&'a self, worker: &'a str) -> SlotWrite<'a> {
        match self {
            Self::Chunks(c) => SlotWrite::Chunks(c.as_chunk(worker)),
            Self::Complete(c) => SlotWrite::Complete(c.as_complete(worker)),
        }
    }
}

/// What a batched write came to for one write.
#[derive(Debug)]
pub(crate) enum Batched<R, W> {
    /// Redis answered for this write.
    Replied(R),
    /// The call failed without an answer: it may have been applied (a
    /// lost reply), so the write must be retried as it is.
    Uncertain(Error),
    /// Redis refused the call (nothing of it was written), or batching is
    /// off: the write (given back) goes on its own.
    Refused(W),
}

/// What the queue answers one write.
type Answer = Batched<SlotWriteReply, OwnedWrite>;

struct Waiting {
    write: OwnedWrite,
    answer: oneshot::Sender<Answer>,
}

/// The coalescing writer of one worker process: its slots' chunk writes
/// and completes.
#[derive(Clone)]
pub(crate) struct Coalescer {
    tx: mpsc::UnboundedSender<Waiting>,
    /// Set when the server or the user refuses `rtq2_complete_many`.
    completes_off: Arc<AtomicBool>,
    /// Set when the server or the user refuses `rtq2_write_many`.
    chunks_off: Arc<AtomicBool>,
    /// Set when the server's library (older than revision 9) refuses a
    /// next task's spec apart: completes ask for it whole from then on.
    next_whole: Arc<AtomicBool>,
}

impl Coalescer {
    /// Starts the coalescer's task; it ends when every clone is dropped.
    pub(crate) fn start(conn: RedisConnection, keys: QueueKeys, worker: String) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let completes_off = Arc::new(AtomicBool::new(false));
        let chunks_off = Arc::new(AtomicBool::new(false));
        let flags = Flags {
            completes_off: Arc::clone(&completes_off),
            chunks_off: Arc::clone(&chunks_off),
        };
        tokio::spawn(run(conn, keys, worker, rx, flags));
        Self {
            tx,
            completes_off,
            chunks_off,
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

    /// Completes one attempt through the queue.
    pub(crate) async fn complete(
        &self,
        complete: OwnedComplete,
    ) -> Batched<CompleteReply, OwnedComplete> {
        if self.completes_off.load(Ordering::Relaxed) {
            return Batched::Refused(complete);
        }
        match self.enqueue(OwnedWrite::Complete(complete)).await {
            Batched::Replied(SlotWriteReply::Complete(r)) => Batched::Replied(r),
            Batched::Replied(SlotWriteReply::Chunks(_)) => Batched::Uncertain(mismatch()),
            Batched::Uncertain(e) => Batched::Uncertain(e),
            Batched::Refused(OwnedWrite::Complete(c)) => Batched::Refused(c),
            Batched::Refused(OwnedWrite::Chunks(_)) => Batched::Uncertain(mismatch()),
        }
    }

    /// Queues one chunk write at once (so writes issued one after another
    /// reach Redis in that order, before a complete issued later); the
    /// future answers it.
    pub(crate) fn write_chunks(
        &self,
        chunks: OwnedChunks,
    ) -> impl Future<Output = Batched<ChunkReply, OwnedChunks>> + Send + 'static {
        let queued = if self.chunks_off.load(Ordering::Relaxed) {
            Err(chunks)
        } else {
            self.queue(OwnedWrite::Chunks(chunks)).map_err(|w| match w {
                OwnedWrite::Chunks(c) => c,
                OwnedWrite::Complete(_) => unreachable!("a chunk write was queued"),
            })
        };
        async move {
            let rx = match queued {
                Ok(rx) => rx,
                Err(chunks) => return Batched::Refused(chunks),
            };
            match answer_of(rx).await {
                Batched::Replied(SlotWriteReply::Chunks(r)) => Batched::Replied(r),
                Batched::Replied(SlotWriteReply::Complete(_)) => Batched::Uncertain(mismatch()),
                Batched::Uncertain(e) => Batched::Uncertain(e),
                Batched::Refused(OwnedWrite::Chunks(c)) => Batched::Refused(c),
                Batched::Refused(OwnedWrite::Complete(_)) => Batched::Uncertain(mismatch()),
            }
        }
    }

    fn queue(&self, write: OwnedWrite) -> Result<oneshot::Receiver<Answer>, OwnedWrite> {
        let (answer, rx) = oneshot::channel();
        match self.tx.send(Waiting { write, answer }) {
            Ok(()) => Ok(rx),
            Err(unsent) => Err(unsent.0.write),
        }
    }

    async fn enqueue(&self, write: OwnedWrite) -> Answer {
        match self.queue(write) {
            Ok(rx) => answer_of(rx).await,
            Err(write) => Batched::Refused(write),
        }
    }
}

/// The answer of a queued write. An answer lost with the coalescer (its
/// task ended mid-call) is no answer: the call may have been applied.
async fn answer_of(rx: oneshot::Receiver<Answer>) -> Answer {
    rx.await.unwrap_or_else(|_| {
        Batched::Uncertain(Error::Protocol(
            "the coalescer stopped before it answered".into(),
        ))
    })
}

/// The queue answered a write with another kind's answer (a bug).
fn mismatch() -> Error {
    Error::Protocol("the coalescer answered a write with another kind's answer".into())
}

/// What turns batching off for the process.
struct Flags {
    completes_off: Arc<AtomicBool>,
    chunks_off: Arc<AtomicBool>,
}

async fn run(
    conn: RedisConnection,
    keys: QueueKeys,
    worker: String,
    rx: mpsc::UnboundedReceiver<Waiting>,
    flags: Flags,
) {
    let flags = Arc::new(flags);
    let limits = BatchLimits {
        in_flight: MAX_IN_FLIGHT,
        len: MAX_COMPLETE_BATCH,
        bytes: MAX_BATCH_BYTES,
    };
    coalesce(rx, limits, |batch| {
        send(
            conn.clone(),
            keys.clone(),
            worker.clone(),
            batch,
            Arc::clone(&flags),
        )
    })
    .await;
}

impl Waiter for Waiting {
    fn bytes(&self) -> usize {
        self.write.bytes()
    }

    /// A slot that gave up (its future was dropped) is not written for:
    /// its writer resyncs, or the heartbeat's sweep settles its task.
    fn gave_up(&self) -> bool {
        self.answer.is_closed()
    }
}

/// True for a refusal that every later batch would meet as well: the
/// server's library predates the `_many` function, or the user's ACL
/// rules do not name it.
fn refused_for_good(e: &Error) -> bool {
    match e {
        Error::PermissionDenied(_) => true,
        Error::Redis(r) => functions::is_library_missing(r),
        _ => false,
    }
}

/// Sends one batch as the cheapest call that carries it and answers each
/// write.
async fn send(
    mut conn: RedisConnection,
    keys: QueueKeys,
    worker: String,
    batch: Vec<Waiting>,
    flags: Arc<Flags>,
) {
    let with_chunks = batch.iter().any(|w| w.write.is_chunks());
    let writes: Vec<SlotWrite<'_>> = batch
        .iter()
        .map(|w| w.write.as_slot_write(&worker))
        .collect();
    let replies: Result<Vec<SlotWriteReply>, Error> = match writes.as_slice() {
        [SlotWrite::Chunks(c)] => functions::call(&mut conn, &keys, c)
            .await
            .map(|r| vec![SlotWriteReply::Chunks(r)]),
        [SlotWrite::Complete(c)] => functions::call(&mut conn, &keys, c)
            .await
            .map(|r| vec![SlotWriteReply::Complete(r)]),
        _ if with_chunks => {
            let many = WriteMany { writes: &writes };
            match functions::call(&mut conn, &keys, &many).await {
                Ok(replies) => many.sort_replies(replies),
                Err(e) => Err(e),
            }
        }
        _ => {
            let completes: Vec<Complete<'_>> = writes
                .iter()
                .filter_map(|w| match w {
                    SlotWrite::Complete(c) => Some(c.clone()),
                    SlotWrite::Chunks(_) => None,
                })
                .collect();
            functions::call(
                &mut conn,
                &keys,
                &CompleteMany {
                    completes: &completes,
                },
            )
            .await
            .map(|r| r.into_iter().map(SlotWriteReply::Complete).collect())
        }
    };
    drop(writes);
    let function = if with_chunks {
        WriteMany::NAME
    } else {
        CompleteMany::NAME
    };
    match batch_answer(replies, batch.len(), function, "writes") {
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
                if with_chunks {
                    tracing::warn!(error = %e, "the server or this user refuses coalesced chunk writes; writing each slot's chunks alone from now on (load the current rtq library, revision 10, and grant `fcall|rtq2_write_many`)");
                    flags.chunks_off.store(true, Ordering::Relaxed);
                } else {
                    tracing::warn!(error = %e, "the server or this user refuses coalesced completes; completing each task alone from now on (load the current rtq library, grant `fcall|rtq2_complete_many`)");
                    flags.completes_off.store(true, Ordering::Relaxed);
                }
            } else {
                tracing::debug!(error = %e, writes = batch.len(), "a coalesced write was refused; sending each write alone");
            }
            for waiting in batch {
                let _ = waiting.answer.send(Batched::Refused(waiting.write));
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
    fn a_write_counts_its_payload_and_chunks() {
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
        let borrowed = c.as_complete("w1");
        assert_eq!(borrowed.worker, "w1");
        assert_eq!(borrowed.chunks.len(), 2);
        assert_eq!(OwnedWrite::Complete(c).bytes(), 18);
        let chunks = OwnedWrite::Chunks(OwnedChunks {
            id: "t".into(),
            attempt: 2,
            seq0: 3,
            chunks: vec![vec![0; 7]],
        });
        assert_eq!(chunks.bytes(), 7);
        assert!(chunks.is_chunks());
        match chunks.as_slot_write("w2") {
            SlotWrite::Chunks(c) => assert_eq!((c.worker, c.attempt, c.seq0), ("w2", 2, 3)),
            SlotWrite::Complete(_) => panic!("a chunk write borrowed as a complete"),
        }
    }
}
