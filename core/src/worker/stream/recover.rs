//! Recovery of a stream worker's own pending entries after a read whose
//! reply was lost: `XREADGROUP` wrote before it answered (the entries are
//! in this worker's pending list), so a reply that never arrived leaves
//! entries the worker does not know it holds. Unrenewed, their lease
//! would lapse and housekeeping would count another delivery: a task
//! could use an attempt (or its last one) without ever running. After a
//! failed read the worker lists its pending entries (`XPENDING ... <wid>`)
//! and admits those it does not hold, as the delivery they are, or hands
//! them back when no slot is free (no attempt used).

use std::collections::HashSet;
use std::sync::Arc;

use redis::Value;

use super::Runtime;
use crate::error::Error;
use crate::functions::v3;
use crate::protocol::value_to_string;

/// Pending entries listed per band at most (the fence read's limit).
const MAX_LISTED: usize = 1024;

/// Admits (or hands back) the entries of this worker's pending list it
/// does not hold; returns how many it found.
///
/// # Errors
/// Connection errors (the next failed read tries again).
pub(super) async fn own_entries(rt: &Arc<Runtime>) -> Result<usize, Error> {
    let held: HashSet<(u8, String)> = rt
        .slots
        .held()
        .into_iter()
        .map(|h| (h.band, h.entry))
        .collect();
    let mut found = Vec::new();
    for band in 0..rt.bands {
        let key = v3::band_key(&rt.keys, band);
        let rows: Value = redis::cmd("XPENDING")
            .arg(&key)
            .arg(v3::GROUP)
            .arg("-")
            .arg("+")
            .arg(MAX_LISTED)
            .arg(&rt.id)
            .query_async(&mut rt.conn.clone())
            .await?;
        let Value::Array(rows) = rows else { continue };
        for row in rows {
            let Value::Array(row) = row else { continue };
            let (Some(entry), Some(deliveries)) = (row.first(), row.get(3)) else {
                continue;
            };
            let entry = value_to_string(entry);
            let deliveries = crate::protocol::value_to_i64(deliveries).max(1) as u64;
            if held.contains(&(band, entry.clone())) {
                continue;
            }
            let rows: Value = redis::cmd("XRANGE")
                .arg(&key)
                .arg(&entry)
                .arg(&entry)
                .query_async(&mut rt.conn.clone())
                .await?;
            // Gone, or not a task: housekeeping drops its row.
            let Value::Array(mut rows) = rows else {
                continue;
            };
            if let Some(d) = rows
                .pop()
                .and_then(|row| v3::entry_delivery(band, row, deliveries))
            {
                found.push(d);
            }
        }
    }
    let n = found.len();
    for d in &found {
        tracing::warn!(task_id = %d.id, attempt = d.held.attempt(), "found an entry this worker holds without knowing it (a read's reply was lost); running it");
    }
    rt.admit(0, found).await;
    Ok(n)
}
