//! The intake of a stream worker. With `f` free slots and intake on, it
//! reserves them and reads new entries band by band (band 0 first: strict
//! priority) with `XREADGROUP ... COUNT <left>` on the shared connection,
//! without blocking; when every band is empty it blocks for new entries
//! over all bands (`COUNT 1` each) on a connection of its own, so nobody
//! else's commands wait behind it. A blocked read takes no reservation
//! (housekeeping may use the free slots meanwhile); what it returns beyond
//! the slots then free (one entry per band at most) is handed back at
//! once, using no attempt. A freed slot wakes the intake at once: the next
//! read is sent while the finished attempt's complete is in flight.
//!
//! A blocking read is never abandoned mid-flight (its entries would stay
//! in this worker's pending list unseen until their lease lapsed): it
//! blocks [`BLOCK_MS`] at most, and at shutdown the intake waits for it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::Value;
use tokio_util::sync::CancellationToken;

use super::Runtime;
use crate::error::Error;
use crate::functions::v3::{self, Delivery};
use crate::worker::config::ErrorSource;

/// How long one blocking read waits on the server.
pub(super) const BLOCK_MS: u64 = 1000;
/// Response timeout of the blocking connection (above [`BLOCK_MS`]).
pub(super) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads until `stop`.
pub(super) async fn run(
    rt: Arc<Runtime>,
    mut blocking: Option<MultiplexedConnection>,
    stop: CancellationToken,
) {
    let mut changed = rt.slots.subscribe();
    let mut failures = 0u32;
    let max_backoff = rt.config.lease / 4;
    while !stop.is_cancelled() {
        changed.borrow_and_update();
        let free = if rt.want_next() { rt.slots.free() } else { 0 };
        if free == 0 {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = changed.changed() => {}
            }
            continue;
        }
        if rt.takeover_due.swap(false, Ordering::AcqRel) {
            // Lapsed entries of dead workers before new ones.
            if let Err(e) = super::lease::take_over(&rt).await {
                tracing::warn!(error = %e, "housekeeping failed; retrying at the next tick");
            }
            continue;
        }
        let read = match scan(&rt, free).await {
            // Every band is empty: block for the next entry.
            Ok(0) => block(&rt, &mut blocking).await,
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        match read {
            Ok(()) => {
                if failures > 0 {
                    rt.status.clear_error(ErrorSource::Inbox);
                }
                failures = 0;
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, failures, "reading new tasks failed; retrying");
                rt.restore_if_missing(&e).await;
                // A read whose reply was lost may have taken entries.
                if let Err(e) = super::recover::own_entries(&rt).await {
                    tracing::debug!(error = %e, "could not list this worker's pending entries");
                }
                rt.status
                    .record_error(ErrorSource::Inbox, format!("reading new tasks failed: {e}"));
                let delay = match failures {
                    1 => Duration::ZERO,
                    n => (Duration::from_millis(50) * 2u32.saturating_pow(n.min(16) - 2))
                        .min(max_backoff),
                };
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Reads up to `free` new entries band by band, band 0 first; returns
/// how many it got.
async fn scan(rt: &Arc<Runtime>, free: usize) -> Result<usize, Error> {
    let mut left = rt.slots.reserve(free);
    let mut got = 0;
    for band in 0..rt.bands {
        if left == 0 {
            break;
        }
        let read = v3::read_new(&mut rt.conn.clone(), &rt.keys, &rt.id, band, left, None).await;
        let deliveries = match read {
            Ok(d) => d,
            Err(e) => {
                rt.slots.unreserve(left);
                return Err(e);
            }
        };
        let n = deliveries.len().min(left);
        left -= n;
        got += deliveries.len();
        rt.admit(n, deliveries).await;
    }
    rt.slots.unreserve(left);
    Ok(got)
}

/// One blocking read over every band on the intake's own connection.
async fn block(rt: &Arc<Runtime>, conn: &mut Option<MultiplexedConnection>) -> Result<(), Error> {
    let c = match conn {
        Some(c) => c,
        None => conn.insert(
            rt.endpoint
                .dedicated(&v3::band_key(&rt.keys, 0), RESPONSE_TIMEOUT)
                .await?,
        ),
    };
    match read_blocking(c, rt).await {
        Ok(deliveries) => {
            rt.admit(0, deliveries).await;
            Ok(())
        }
        Err(e) => {
            // A new connection next time (this one may be broken).
            *conn = None;
            Err(e)
        }
    }
}

/// `XREADGROUP GROUP w <worker> COUNT 1 BLOCK <ms> STREAMS b:0 .. b:k > ..`
/// (band order kept in the result: band 0 first).
async fn read_blocking(
    conn: &mut MultiplexedConnection,
    rt: &Runtime,
) -> Result<Vec<Delivery>, Error> {
    let mut cmd = redis::cmd("XREADGROUP");
    cmd.arg("GROUP")
        .arg(v3::GROUP)
        .arg(&rt.id)
        .arg("COUNT")
        .arg(1)
        .arg("BLOCK")
        .arg(BLOCK_MS)
        .arg("STREAMS");
    let bands: Vec<(u8, String)> = (0..rt.bands)
        .map(|b| (b, v3::band_key(&rt.keys, b)))
        .collect();
    for (_, key) in &bands {
        cmd.arg(key);
    }
    for _ in &bands {
        cmd.arg(">");
    }
    let reply: Value = cmd.query_async(conn).await?;
    let mut out = v3::parse_read(reply, &bands)?;
    out.sort_by_key(|d| d.held.band);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn entry(id: &str, task: &str) -> Value {
        let fields = [
            ("t", task),
            ("s", "{}"),
            ("r", ""),
            ("d", "0"),
            ("x", "3"),
            ("a0", "1"),
            ("ret", "1000"),
        ];
        Value::Array(vec![
            bulk(id),
            Value::Array(
                fields
                    .iter()
                    .flat_map(|(k, v)| [bulk(k), bulk(v)])
                    .collect(),
            ),
        ])
    }

    #[test]
    fn a_read_over_several_bands_names_each_entry_s_band() {
        let keys = vec![
            (0, "rtq:{q}:b:0".to_string()),
            (1, "rtq:{q}:b:1".to_string()),
        ];
        let reply = Value::Array(vec![
            Value::Array(vec![
                bulk("rtq:{q}:b:1"),
                Value::Array(vec![entry("5-0", "x")]),
            ]),
            Value::Array(vec![
                bulk("rtq:{q}:b:0"),
                Value::Array(vec![
                    entry("6-0", "y"),
                    Value::Array(vec![bulk("7-0"), Value::Nil]),
                ]),
            ]),
        ]);
        let got = v3::parse_read(reply, &keys).unwrap();
        assert_eq!(got.len(), 2, "a deleted entry is skipped");
        assert_eq!((got[0].held.band, got[0].id.as_str()), (1, "x"));
        assert_eq!((got[1].held.band, got[1].id.as_str()), (0, "y"));
        assert_eq!(got[1].held.attempt(), 2, "a0 + the first delivery");
        assert!(v3::parse_read(Value::Nil, &keys).unwrap().is_empty());
        let foreign = Value::Array(vec![Value::Array(vec![
            bulk("rtq:{q}:b:9"),
            Value::Array(vec![entry("5-0", "x")]),
        ])]);
        assert!(v3::parse_read(foreign, &keys).is_err());
    }
}
