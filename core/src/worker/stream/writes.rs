//! The completes of a stream worker, coalesced: one `rtq3_complete` in
//! flight at a time; endings queued meanwhile go together in the next call
//! (at most 1024). A call whose reply was lost (connection trouble) is
//! sent again as it was: the function answers REPLAY for what the first
//! one wrote, so nothing is written twice. A call Redis refuses outright
//! is split and each ending sent alone, so one bad ending cannot fail
//! the others.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::connection::RedisConnection;
use crate::error::Error;
use crate::functions::v3::{self, Completed, Ending};
use crate::keys::QueueKeys;
use crate::worker::config::WorkerStatus;

/// Endings one call carries at most (the function's limit).
const MAX_BATCH: usize = 1024;
/// How long a call is retried while Redis does not answer; the entries'
/// leases lapse long before, so their tasks are taken over meanwhile.
pub(crate) const PATIENCE: Duration = Duration::from_secs(300);
/// Longest pause between retries.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(2);

type Reply = oneshot::Sender<Result<Completed, Error>>;

/// Queues endings for the completer task.
#[derive(Clone)]
pub(crate) struct Completer {
    tx: mpsc::UnboundedSender<(Ending, Reply)>,
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
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((ending, tx))
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
    mut rx: mpsc::UnboundedReceiver<(Ending, Reply)>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let endings: Vec<Ending> = batch.iter().map(|(e, _)| e.clone()).collect();
        match call(&mut conn, &keys, &worker, &status, &endings).await {
            Ok(answers) => {
                for ((_, reply), answer) in batch.into_iter().zip(answers) {
                    let _ = reply.send(Ok(answer));
                }
            }
            Err(e) if batch.len() > 1 && !e.is_retryable() => {
                tracing::warn!(error = %e, endings = batch.len(), "Redis refused a batch of completes; sending each alone");
                for (ending, reply) in batch {
                    let alone = call(&mut conn, &keys, &worker, &status, &[ending])
                        .await
                        .map(|mut a| a.pop().unwrap_or(Completed::Lost));
                    let _ = reply.send(alone);
                }
            }
            Err(e) => {
                // Error is not Clone: every ending gets its text.
                let text = e.to_string();
                for (_, reply) in batch {
                    let _ = reply.send(Err(Error::Protocol(text.clone())));
                }
            }
        }
    }
}

/// One `rtq3_complete`, sent again as it was while the connection fails.
async fn call(
    conn: &mut RedisConnection,
    keys: &QueueKeys,
    worker: &str,
    status: &WorkerStatus,
    endings: &[Ending],
) -> Result<Vec<Completed>, Error> {
    let give_up = Instant::now() + PATIENCE;
    let mut failures = 0u32;
    loop {
        match v3::complete(conn, keys, worker, endings).await {
            Ok(answers) => return Ok(answers),
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
