//! The inbox reader: BLMPOP on the worker's inbox list, on a connection of
//! its own, forwarding each raw message to the worker loop. One wake-up
//! takes every message waiting (up to [`POP_COUNT`]): under load several
//! tasks arrive for the price of one blocked read. A BLMPOP is
//! never abandoned mid-flight (that would lose the popped message) except
//! at shutdown. After an error it reconnects at once, then backs off up to
//! a quarter of the lease, so a message pushed meanwhile waits at most
//! that long (well within the lease that would make it an orphan). A read
//! error is the worker's `last_error` until the reader reconnects or reads
//! again.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::config::{ErrorSource, WorkerStatus};
use crate::connection::Endpoint;

/// How long one BLMPOP blocks on the server. Long: every re-issue opens a
/// one-round-trip window in which a pushed task waits.
const BLOCK_SECS: f64 = 10.0;
/// Messages one wake-up takes at most.
const POP_COUNT: usize = 64;
/// Response timeout of the inbox connection (above the BLMPOP timeout).
pub(crate) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(15);

/// Reads `key` until `stop`, sending every message to `tx`.
pub(crate) async fn read(
    endpoint: Endpoint,
    mut conn: Option<MultiplexedConnection>,
    key: String,
    tx: mpsc::Sender<Vec<u8>>,
    stop: CancellationToken,
    status: Arc<WorkerStatus>,
    max_backoff: Duration,
) {
    // Consecutive failures: the first retry is immediate, then 50 ms
    // doubling up to `max_backoff`.
    let mut failures = 0u32;
    let delay = |failures: u32| match failures {
        0 | 1 => Duration::ZERO,
        n => (Duration::from_millis(50) * 2u32.saturating_pow(n.min(16) - 2)).min(max_backoff),
    };
    loop {
        let Some(c) = conn.as_mut() else {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(delay(failures)) => {}
            }
            match endpoint.dedicated(&key, RESPONSE_TIMEOUT).await {
                Ok(c) => {
                    // Redis answers again: the read error is past.
                    status.clear_error(ErrorSource::Inbox);
                    conn = Some(c);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "inbox reconnect failed");
                    failures += 1;
                }
            }
            continue;
        };
        let popped = tokio::select! {
            _ = stop.cancelled() => return,
            popped = pop(c, &key) => popped,
        };
        match popped {
            Ok(messages) => {
                if failures > 0 {
                    status.clear_error(ErrorSource::Inbox);
                }
                failures = 0;
                for raw in messages {
                    if tx.send(raw).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "inbox read failed; reconnecting");
                status.record_error(ErrorSource::Inbox, format!("inbox read failed: {e}"));
                failures += 1;
                conn = None;
            }
        }
    }
}

/// Every message waiting (at most [`POP_COUNT`]), oldest first, after
/// blocking until one arrives; none when the block timed out.
async fn pop(conn: &mut MultiplexedConnection, key: &str) -> redis::RedisResult<Vec<Vec<u8>>> {
    let reply: Option<(Vec<u8>, Vec<Vec<u8>>)> = redis::cmd("BLMPOP")
        .arg(BLOCK_SECS)
        .arg(1)
        .arg(key)
        .arg("LEFT")
        .arg("COUNT")
        .arg(POP_COUNT)
        .query_async(conn)
        .await?;
    Ok(reply.map(|(_, v)| v).unwrap_or_default())
}
