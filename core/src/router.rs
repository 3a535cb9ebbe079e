//! The reply router: one reader per (client process, queue) blocks on the
//! client's reply stream with XREAD on a connection of its own, and routes
//! each event to the wait or stream that registered for its task. Any number
//! of concurrent waits costs one blocking connection.
//!
//! Waiters register *before* the submit is sent, so no event can be missed.
//! The reader remembers the last entry id it delivered: after a lost
//! connection it reconnects and continues from there, so no event is missed
//! or delivered twice. Delivered entries are trimmed (XTRIM MINID) in the
//! background. While waits are open, the reader also runs the queue's
//! housekeeping (heartbeat.lua without a worker) so a dead worker is noticed
//! even when no live worker is left to notice it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::connection::Endpoint;
use crate::keys::QueueKeys;
use crate::protocol::{value_to_bytes, value_to_string, ReplyEvent};

/// How long one XREAD blocks on the server before it is re-issued. Long:
/// every re-issue opens a one-round-trip window in which new events wait.
const BLOCK: Duration = Duration::from_secs(10);
/// Entries read per XREAD at most.
const READ_COUNT: usize = 1000;

/// What a registered waiter receives.
#[derive(Debug)]
pub(crate) enum Routed {
    /// An event of its task.
    Event(ReplyEvent),
    /// The reader has been unable to reach Redis for longer than the
    /// client's `give_up_after`; the message says why.
    Disconnected(String),
}

/// Routes the events of one reply stream to registered waiters.
pub(crate) struct ReplyRouter {
    key: String,
    waiters: Mutex<HashMap<String, mpsc::UnboundedSender<Routed>>>,
    trimming: AtomicBool,
}

/// A registration; unregisters itself on drop.
pub(crate) struct Waiter {
    router: Arc<ReplyRouter>,
    id: String,
    pub(crate) rx: mpsc::UnboundedReceiver<Routed>,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if let Ok(mut w) = self.router.waiters.lock() {
            w.remove(&self.id);
        }
    }
}

/// Settings the reader needs from the client.
pub(crate) struct ReaderSettings {
    pub endpoint: Endpoint,
    pub shared: ConnectionManager,
    pub keys: QueueKeys,
    pub housekeeping_every: Duration,
    pub give_up_after: Duration,
    pub shutdown: CancellationToken,
}

impl ReplyRouter {
    /// Creates the router and starts its reader task.
    pub(crate) fn start(key: String, settings: ReaderSettings) -> Arc<Self> {
        let router = Arc::new(Self {
            key,
            waiters: Mutex::new(HashMap::new()),
            trimming: AtomicBool::new(false),
        });
        let span =
            tracing::debug_span!("reply_reader", queue = settings.keys.name(), key = %router.key);
        tokio::spawn(
            Arc::clone(&router)
                .housekeeping_loop(
                    settings.shared.clone(),
                    settings.keys.prefix().to_string(),
                    settings.housekeeping_every,
                    settings.shutdown.clone(),
                )
                .instrument(span.clone()),
        );
        tokio::spawn(Arc::clone(&router).read_loop(settings).instrument(span));
        router
    }

    /// The reply stream key workers write to for this client.
    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    /// Registers interest in a task's events. Call before submitting.
    pub(crate) fn register(self: &Arc<Self>, id: &str) -> Waiter {
        let (tx, rx) = mpsc::unbounded_channel();
        self.waiters
            .lock()
            .expect("waiter map poisoned")
            .insert(id.to_string(), tx);
        Waiter {
            router: Arc::clone(self),
            id: id.to_string(),
            rx,
        }
    }

    fn waiting(&self) -> usize {
        self.waiters.lock().map(|w| w.len()).unwrap_or(0)
    }

    fn route(&self, event: ReplyEvent) {
        let waiters = self.waiters.lock().expect("waiter map poisoned");
        if let Some(tx) = waiters.get(event.task_id()) {
            let _ = tx.send(Routed::Event(event));
        }
    }

    fn broadcast_disconnected(&self, why: &str) {
        let waiters = self.waiters.lock().expect("waiter map poisoned");
        for tx in waiters.values() {
            let _ = tx.send(Routed::Disconnected(why.to_string()));
        }
    }

    /// While waits are open, runs the queue's housekeeping every `every`,
    /// on the shared connection (never delaying the blocking reader).
    async fn housekeeping_loop(
        self: Arc<Self>,
        mut shared: ConnectionManager,
        prefix: String,
        every: Duration,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            if self.waiting() == 0 {
                continue;
            }
            let r: redis::RedisResult<Value> = crate::scripts::scripts()
                .heartbeat
                .key(&prefix)
                .arg("")
                .arg(0)
                .invoke_async(&mut shared)
                .await;
            if let Err(e) = r {
                tracing::debug!(error = %e, "housekeeping failed");
            }
        }
    }

    async fn read_loop(self: Arc<Self>, s: ReaderSettings) {
        let mut last_id = "0-0".to_string();
        let mut conn = None;
        let mut down_since: Option<Instant> = None;
        let mut told_down = false;
        let mut backoff = Duration::from_millis(50);
        loop {
            if s.shutdown.is_cancelled() {
                break;
            }
            if conn.is_none() {
                match s.endpoint.dedicated(BLOCK + Duration::from_secs(5)).await {
                    Ok(c) => conn = Some(c),
                    Err(e) => {
                        let since = *down_since.get_or_insert_with(Instant::now);
                        tracing::warn!(error = %e, "reply reader cannot connect; retrying");
                        if !told_down && since.elapsed() >= s.give_up_after {
                            told_down = true;
                            self.broadcast_disconnected(&e.to_string());
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = s.shutdown.cancelled() => break,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                        continue;
                    }
                }
            }
            let c = conn.as_mut().expect("connected above");
            let block_ms = BLOCK;
            let mut cmd = redis::cmd("XREAD");
            cmd.arg("COUNT")
                .arg(READ_COUNT)
                .arg("BLOCK")
                .arg(block_ms.as_millis() as u64)
                .arg("STREAMS")
                .arg(&self.key)
                .arg(&last_id);
            let reply: redis::RedisResult<Value> = tokio::select! {
                r = cmd.query_async(c) => r,
                _ = s.shutdown.cancelled() => break,
            };
            match reply {
                Ok(value) => {
                    down_since = None;
                    told_down = false;
                    backoff = Duration::from_millis(50);
                    let entries = stream_entries(value);
                    if let Some((id, _)) = entries.last() {
                        let newest = id.clone();
                        for (_, fields) in entries {
                            match ReplyEvent::decode(&fields) {
                                Ok(event) => self.route(event),
                                Err(e) => tracing::warn!(error = %e, "skipping reply entry"),
                            }
                        }
                        self.trim_through(&s.shared, &newest);
                        last_id = newest;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reply reader lost its connection; reconnecting");
                    conn = None;
                    down_since.get_or_insert_with(Instant::now);
                }
            }
        }
        // Best effort: the stream has a TTL anyway.
        let mut shared = s.shared.clone();
        let _: redis::RedisResult<()> = redis::cmd("DEL")
            .arg(&self.key)
            .query_async(&mut shared)
            .await;
    }

    /// Deletes delivered entries (everything up to and including `id`),
    /// with at most one trim in flight.
    fn trim_through(self: &Arc<Self>, shared: &ConnectionManager, id: &str) {
        if self.trimming.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(next) = next_stream_id(id) else {
            self.trimming.store(false, Ordering::Release);
            return;
        };
        let mut shared = shared.clone();
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let _: redis::RedisResult<Value> = redis::cmd("XTRIM")
                .arg(&me.key)
                .arg("MINID")
                .arg(next)
                .query_async(&mut shared)
                .await;
            me.trimming.store(false, Ordering::Release);
        });
    }
}

/// The smallest stream id greater than `id` ("ms-seq").
fn next_stream_id(id: &str) -> Option<String> {
    let (ms, seq) = id.split_once('-')?;
    let seq: u64 = seq.parse().ok()?;
    Some(format!("{ms}-{}", seq + 1))
}

/// Flattens an XREAD reply for one stream into (entry id, field pairs),
/// keeping repeated field names (chunk events repeat `c`).
/// A stream entry: its id and its field/value pairs in order.
pub(crate) type StreamEntry = (String, Vec<(Vec<u8>, Vec<u8>)>);

pub(crate) fn stream_entries(value: Value) -> Vec<StreamEntry> {
    let streams = match value {
        Value::Array(streams) => streams,
        Value::Map(pairs) => pairs
            .into_iter()
            .map(|(k, v)| Value::Array(vec![k, v]))
            .collect(),
        _ => return Vec::new(),
    };
    let mut out = Vec::new();
    for stream in streams {
        let Value::Array(mut parts) = stream else {
            continue;
        };
        if parts.len() != 2 {
            continue;
        }
        let Value::Array(entries) = parts.remove(1) else {
            continue;
        };
        for entry in entries {
            let Value::Array(mut e) = entry else { continue };
            if e.len() != 2 {
                continue;
            }
            let fields = e.remove(1);
            let id = value_to_string(&e[0]);
            let Value::Array(flat) = fields else { continue };
            let pairs = flat
                .chunks(2)
                .filter(|p| p.len() == 2)
                .map(|p| (value_to_bytes(&p[0]), value_to_bytes(&p[1])))
                .collect();
            out.push((id, pairs));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_id_is_strictly_greater() {
        assert_eq!(
            next_stream_id("1700000000000-0").unwrap(),
            "1700000000000-1"
        );
        assert_eq!(next_stream_id("5-41").unwrap(), "5-42");
        assert!(next_stream_id("garbage").is_none());
    }

    #[test]
    fn xread_reply_keeps_repeated_fields() {
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let reply = Value::Array(vec![Value::Array(vec![
            b("k"),
            Value::Array(vec![Value::Array(vec![
                b("1-0"),
                Value::Array(vec![b("t"), b("x"), b("c"), b("a"), b("c"), b("b")]),
            ])]),
        ])]);
        let entries = stream_entries(reply);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].0, "1-0");
        assert_eq!(entries[0].1.iter().filter(|(k, _)| k == b"c").count(), 2);
    }
}
