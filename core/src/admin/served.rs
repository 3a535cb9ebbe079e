//! What a catalog of served queues needs, and nothing more
//! ([`Admin::served_queues`]): per queue whether it is paused and which
//! workers hold a current lease, with each live worker's handler and
//! labels. The gateway reads it every `--catalog-ttl-ms` to list models.
//!
//! Three pipelined round trips whatever the number of queues (the
//! registry; `TIME` and two commands per queue; one `HMGET` per live v2
//! worker and one `ZRANGE` per stream queue), so 2 + 2 × queues + live
//! workers commands. A stream queue's live workers are its `lv` members;
//! they keep no heartbeat hash, so their handler and labels read as
//! empty. The console's
//! readers ([`Admin::summaries`] then [`Admin::workers_of_many`]) would
//! send six per queue, one per live worker, then three per worker
//! (every heartbeat field and owned task), which a model list never shows.
//! On a Redis Cluster each round trip is one pipeline per hash slot, run
//! concurrently.

use std::collections::BTreeMap;

use redis::Value;

use super::summary::{decode, decode_named};
use super::{time_ms, Admin};
use crate::error::Error;
use crate::keys::QueueKeys;

/// Heartbeat fields a catalog reads, in the order of the `HMGET`.
const WORKER_FIELDS: [&str; 2] = ["handler", "labels"];

/// One queue as a catalog of served queues sees it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServedQueue {
    /// Queue name.
    pub name: String,
    /// Paused by an operator (nothing is handed out).
    pub paused: bool,
    /// Its workers whose lease is current at the read's Redis time, by id.
    pub workers: Vec<ServedWorker>,
    /// Set when the queue's meta or workers key could not be read (a key
    /// of the wrong type): the queue is then listed unpaused and without
    /// workers, and every other queue is read as usual.
    pub error: Option<String>,
}

impl ServedQueue {
    /// Workers whose lease is current (what "served" means).
    pub fn workers_alive(&self) -> u64 {
        self.workers.len() as u64
    }
}

/// A live worker: what it runs and how it is labelled.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServedWorker {
    /// Worker id.
    pub id: String,
    /// Lease expiry (ms, Redis clock), later than the read's time.
    pub lease_until_ms: i64,
    /// Its handler (`openai`, `mock`, ...); empty if its heartbeat has none
    /// (yet, or any more).
    pub handler: String,
    /// Its labels (`model=...`, ...); empty if none or undecodable.
    pub labels: BTreeMap<String, String>,
}

/// A read of every served queue at one Redis time.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServedQueues {
    /// Redis time of the read (ms).
    pub now_ms: i64,
    /// Every registered queue with a valid name, sorted by name.
    pub queues: Vec<ServedQueue>,
}

impl Admin {
    /// Every registered queue, paused or not, with its live workers'
    /// handlers and labels (see the module documentation for the cost).
    ///
    /// # Errors
    /// Redis connection errors; a queue whose keys cannot be decoded is a
    /// [`ServedQueue::error`] instead.
    pub async fn served_queues(&self) -> Result<ServedQueues, Error> {
        let names = self.queues().await?;
        self.served_queues_of(&names).await
    }

    /// [`Admin::served_queues`] of the queues named (invalid names are left
    /// out, the order is kept).
    ///
    /// # Errors
    /// As [`Admin::served_queues`].
    pub async fn served_queues_of(&self, names: &[String]) -> Result<ServedQueues, Error> {
        let keys: Vec<QueueKeys> = names
            .iter()
            .filter_map(|n| QueueKeys::new(n).ok())
            .collect();
        // Round trip 1: time, and per queue its pause flag and mode, and
        // its (v2) workers.
        let mut first = redis::pipe();
        first.cmd("TIME");
        for k in &keys {
            first
                .cmd("HMGET")
                .arg(k.meta())
                .arg("paused")
                .arg("mode")
                .cmd("ZRANGE")
                .arg(k.workers())
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES");
        }
        first.ignore_errors();
        let replies = crate::cluster::query_spread(&mut self.conn.clone(), &first, true).await?;
        let mut it = replies.into_iter();
        let time: Vec<i64> = decode(it.next().unwrap_or(Value::Nil))?;
        let now_ms = time_ms(&time);
        let mut stream = Vec::with_capacity(keys.len());
        let mut queues: Vec<ServedQueue> = keys
            .iter()
            .map(|k| {
                let meta = it.next().unwrap_or(Value::Nil);
                let workers = it.next().unwrap_or(Value::Nil);
                let (paused, mode) = match meta {
                    Value::Array(mut fields) if fields.len() == 2 => {
                        let mode = fields.pop().unwrap_or(Value::Nil);
                        (fields.pop().unwrap_or(Value::Nil), mode)
                    }
                    other => (other, Value::Nil),
                };
                let is_stream = redis::from_redis_value::<Option<String>>(mode)
                    .ok()
                    .flatten()
                    .is_some_and(|m| m == "stream");
                stream.push(is_stream);
                // A stream queue's workers are read in round trip 2.
                let workers = if is_stream {
                    Value::Array(Vec::new())
                } else {
                    workers
                };
                queue_of(k, paused, workers, now_ms)
            })
            .collect();
        // Round trip 2: the handler and labels of each live v2 worker, and
        // a stream queue's live workers (`lv`: they keep no heartbeat hash,
        // so their handler and labels read as empty).
        let mut second = redis::pipe();
        for ((k, q), is_stream) in keys.iter().zip(&queues).zip(&stream) {
            if *is_stream {
                second
                    .cmd("ZRANGE")
                    .arg(crate::functions::v3::live_key(k))
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES");
                continue;
            }
            for w in &q.workers {
                second
                    .cmd("HMGET")
                    .arg(k.worker(&w.id))
                    .arg(&WORKER_FIELDS[..]);
            }
        }
        second.ignore_errors();
        if second.cmd_iter().next().is_some() {
            let replies =
                crate::cluster::query_spread(&mut self.conn.clone(), &second, true).await?;
            let mut it = replies.into_iter();
            for ((k, q), is_stream) in keys.iter().zip(queues.iter_mut()).zip(&stream) {
                if *is_stream {
                    let live = it.next().unwrap_or(Value::Nil);
                    let paused = if q.paused {
                        Value::BulkString(b"1".to_vec())
                    } else {
                        Value::Nil
                    };
                    *q = queue_of(k, paused, live, now_ms);
                    continue;
                }
                for w in q.workers.iter_mut() {
                    describe(w, it.next().unwrap_or(Value::Nil));
                }
            }
        }
        Ok(ServedQueues { now_ms, queues })
    }
}

/// A queue from its `HGET meta paused` and `ZRANGE workers WITHSCORES`
/// replies: its workers whose lease ends after `now_ms`, not described yet.
fn queue_of(k: &QueueKeys, paused: Value, workers: Value, now_ms: i64) -> ServedQueue {
    let mut queue = ServedQueue {
        name: k.name().to_string(),
        ..ServedQueue::default()
    };
    let read = decode_named::<Option<String>>(k, &k.meta(), paused).and_then(|p| {
        let w = decode_named::<Vec<(String, f64)>>(k, &k.workers(), workers)?;
        Ok((p, w))
    });
    match read {
        Ok((paused, workers)) => {
            queue.paused = paused.as_deref() == Some("1");
            queue.workers = workers
                .into_iter()
                .map(|(id, exp)| (id, exp as i64))
                .filter(|(_, until)| *until > now_ms)
                .map(|(id, lease_until_ms)| ServedWorker {
                    id,
                    lease_until_ms,
                    ..ServedWorker::default()
                })
                .collect();
        }
        Err(e) => queue.error = Some(e.to_string()),
    }
    queue
}

/// Fills a worker's handler and labels from its `HMGET handler labels`
/// reply (anything undecodable reads as empty, as in [`Admin::workers`]).
fn describe(w: &mut ServedWorker, reply: Value) {
    let [handler, labels]: [Option<String>; 2] = redis::from_redis_value(reply).unwrap_or_default();
    w.handler = handler.unwrap_or_default();
    w.labels = labels
        .and_then(|l| serde_json::from_str(&l).ok())
        .unwrap_or_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn only_workers_with_a_current_lease_are_kept() {
        let k = QueueKeys::new("q").unwrap();
        let workers = Value::Array(vec![bulk("old"), bulk("999"), bulk("new"), bulk("2000")]);
        let q = queue_of(&k, bulk("1"), workers, 1_000);
        assert!(q.paused && q.error.is_none());
        assert_eq!(q.workers.len(), 1);
        assert_eq!(
            (q.workers[0].id.as_str(), q.workers[0].lease_until_ms),
            ("new", 2000)
        );
        let q = queue_of(&k, Value::Nil, Value::Array(vec![]), 1_000);
        assert!(!q.paused && q.workers.is_empty() && q.error.is_none());
    }

    #[test]
    fn an_unreadable_queue_is_an_error_row_without_workers() {
        let k = QueueKeys::new("q").unwrap();
        // Not (member, score) pairs: what a key of the wrong shape reads as.
        let odd = Value::Array(vec![bulk("w"), bulk("2000"), bulk("x")]);
        let q = queue_of(&k, bulk("1"), odd, 1_000);
        assert!(q.workers.is_empty() && !q.paused);
        assert!(q.error.unwrap().contains("workers"));
    }

    #[test]
    fn a_worker_is_described_by_its_handler_and_labels() {
        let mut w = ServedWorker::default();
        describe(
            &mut w,
            Value::Array(vec![bulk("openai"), bulk(r#"{"model":"llama"}"#)]),
        );
        assert_eq!(w.handler, "openai");
        assert_eq!(w.labels["model"], "llama");
        let mut w = ServedWorker::default();
        describe(&mut w, Value::Array(vec![Value::Nil, bulk("not json")]));
        assert!(w.handler.is_empty() && w.labels.is_empty());
        describe(&mut w, Value::Int(1));
        assert!(w.handler.is_empty() && w.labels.is_empty());
    }
}
