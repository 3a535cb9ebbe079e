//! The inbox reader: BLPOP on the worker's inbox list, on a connection of
//! its own, forwarding each raw message to the worker loop. A BLPOP is
//! never abandoned mid-flight (that would lose the popped message) except
//! at shutdown. After an error it reconnects at once, then backs off up to
//! a quarter of the lease, so a message pushed meanwhile waits at most
//! that long (well within the lease that would make it an orphan).

use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::config::WorkerStatus;
use crate::connection::Endpoint;

/// How long one BLPOP blocks on the server. Long: every re-issue opens a
/// one-round-trip window in which a pushed task waits.
const BLOCK_SECS: f64 = 10.0;
/// Response timeout of the inbox connection (above the BLPOP timeout).
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
                Ok(c) => conn = Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "inbox reconnect failed");
                    failures += 1;
                }
            }
            continue;
        };
        let popped = tokio::select! {
            _ = stop.cancelled() => return,
            popped = blpop(c, &key) => popped,
        };
        match popped {
            Ok(Some(raw)) => {
                failures = 0;
                if tx.send(raw).await.is_err() {
                    return;
                }
            }
            Ok(None) => failures = 0,
            Err(e) => {
                tracing::warn!(error = %e, "inbox read failed; reconnecting");
                status.set_last_error(format!("inbox read failed: {e}"));
                failures += 1;
                conn = None;
            }
        }
    }
}

async fn blpop(conn: &mut MultiplexedConnection, key: &str) -> redis::RedisResult<Option<Vec<u8>>> {
    let reply: Option<(Vec<u8>, Vec<u8>)> = redis::cmd("BLPOP")
        .arg(key)
        .arg(BLOCK_SECS)
        .query_async(conn)
        .await?;
    Ok(reply.map(|(_, v)| v))
}
