//! The completes of a stream worker, coalesced: one `rtq3_complete` in
//! flight at a time; endings queued meanwhile go together in the next call
//! (at most 1024). An ending may bring its attempt's last chunks (a
//! tail): the batch's tails go as one `rtq3_write` pipelined before the
//! complete (`v3::write_then_complete`, one round trip), and each such
//! ending carries the output count its attempt holds once its tail
//! applied, so an ending whose chunks did not land is answered ORDER and
//! written not at all. A call whose reply was lost (connection trouble)
//! is sent again as it was: the functions answer REPLAY (and ORDER with
//! the count the first call left) for what the first one wrote, so
//! nothing is written twice. A call Redis refuses outright is split and
//! each ending sent alone, so one bad ending cannot fail the others.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::connection::RedisConnection;
use crate::error::Error;
use crate::functions::v3::{self, ChunkWrite, Completed, Ending, Written};
use crate::keys::QueueKeys;
use crate::worker::config::WorkerStatus;

/// Endings one call carries at most (the function's limit).
const MAX_BATCH: usize = 1024;
/// How long a call is retried while Redis does not answer; the entries'
/// leases lapse long before, so their tasks are taken over meanwhile.
pub(crate) const PATIENCE: Duration = Duration::from_secs(300);
/// Longest pause between retries.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(2);

/// What one ending came to: its complete's answer, and its tail write's
/// (when it brought one).
pub(crate) type Answer = (Completed, Option<Written>);

type Reply = oneshot::Sender<Result<Answer, Error>>;

/// An ending waiting for the completer, with its attempt's last chunks.
struct Waiting {
    ending: Ending,
    tail: Option<ChunkWrite>,
    reply: Reply,
}

/// Queues endings for the completer task.
#[derive(Clone)]
pub(crate) struct Completer {
    tx: mpsc::UnboundedSender<Waiting>,
}

impl Completer {
    /// Starts the completer task (it ends when every `Completer` is gone).
    pub(crate) fn start(
        conn: RedisConnection,
        keys: QueueKeys,
        worker: String,
        status: Arc<WorkerStatus>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(conn, keys, worker, status, rx));
        Self { tx }
    }

    /// Writes `ending` (coalesced with others) and returns its answer.
    ///
    /// # Errors
    /// What Redis answered when it refused the ending alone, or the last
    /// connection error after [`PATIENCE`].
    pub(crate) async fn complete(&self, ending: Ending) -> Result<Completed, Error> {
        self.complete_with(ending, None).await.map(|(c, _)| c)
    }

    /// Writes `tail` (the attempt's last chunks) and then `ending` in one
    /// round trip, coalesced with others; the ending should carry the
    /// output count the attempt holds once `tail` applied.
    ///
    /// # Errors
    /// As [`Completer::complete`].
    pub(crate) async fn complete_with(
        &self,
        ending: Ending,
        tail: Option<ChunkWrite>,
    ) -> Result<Answer, Error> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Waiting {
                ending,
                tail,
                reply,
            })
            .map_err(|_| Error::Protocol("the completer stopped".into()))?;
        rx.await
            .map_err(|_| Error::Protocol("the completer stopped".into()))?
    }
}

async fn run(
    mut conn: RedisConnection,
    keys: QueueKeys,
    worker: String,
    status: Arc<WorkerStatus>,
    mut rx: mpsc::UnboundedReceiver<Waiting>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        match call(&mut conn, &keys, &worker, &status, &batch).await {
            Ok(answers) => {
                for (waiting, answer) in batch.into_iter().zip(answers) {
                    let _ = waiting.reply.send(Ok(answer));
                }
            }
            Err(e) if batch.len() > 1 && !e.is_retryable() => {
                tracing::warn!(error = %e, endings = batch.len(), "Redis refused a batch of completes; sending each alone");
                for waiting in batch {
                    let one = std::slice::from_ref(&waiting);
                    let alone = call(&mut conn, &keys, &worker, &status, one)
                        .await
                        .map(|mut a| a.pop().unwrap_or((Completed::Lost, None)));
                    let _ = waiting.reply.send(alone);
                }
            }
            Err(e) => {
                // Error is not Clone: every ending gets its text.
                let text = e.to_string();
                for waiting in batch {
                    let _ = waiting.reply.send(Err(Error::Protocol(text.clone())));
                }
            }
        }
    }
}

/// One `rtq3_complete` (after one `rtq3_write` of the batch's tails, in
/// the same round trip), sent again as it was while the connection fails.
async fn call(
    conn: &mut RedisConnection,
    keys: &QueueKeys,
    worker: &str,
    status: &WorkerStatus,
    batch: &[Waiting],
) -> Result<Vec<Answer>, Error> {
    let endings: Vec<Ending> = batch.iter().map(|w| w.ending.clone()).collect();
    let tails: Vec<ChunkWrite> = batch.iter().filter_map(|w| w.tail.clone()).collect();
    let give_up = Instant::now() + PATIENCE;
    let mut failures = 0u32;
    loop {
        match v3::write_then_complete(conn, keys, worker, &tails, &endings).await {
            Ok((written, completed)) => {
                let mut written = written.into_iter();
                return Ok(batch
                    .iter()
                    .zip(completed)
                    .map(|(w, c)| (c, w.tail.as_ref().and_then(|_| written.next())))
                    .collect());
            }
            Err(e) if e.is_retryable() && Instant::now() < give_up => {
                failures += 1;
                tracing::warn!(error = %e, endings = endings.len(), failures, "complete failed; sending it again");
                status.set_last_error(format!("complete failed: {e}"));
                let delay = Duration::from_millis(50) * failures.min(40);
                tokio::time::sleep(delay.min(MAX_RETRY_DELAY)).await;
            }
            Err(e) => return Err(e),
        }
    }
}
