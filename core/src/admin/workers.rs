//! The workers of many queues at once ([`Admin::workers_of_many`]): two
//! pipelined round trips whatever the number of queues, what a catalog of
//! every served queue (the gateway's model list) needs on each refresh.

use std::collections::HashMap;

use redis::Value;

use super::stream::{self, StreamMeta};
use super::summary::decode_named;
use super::{Admin, WorkerInfo};
use crate::error::Error;
use crate::functions::v3;
use crate::keys::QueueKeys;

impl Admin {
    /// The registered workers of each of `queues` (live, or past their
    /// lease and not reaped yet), with their heartbeat fields and owned
    /// tasks, in the order of `queues`: one pipelined round trip for the
    /// worker sets of every queue, one for the heartbeats and owned tasks
    /// of every worker (two commands each). On a Redis Cluster each round
    /// trip is one pipeline per hash slot, run concurrently (queues live
    /// on several masters).
    ///
    /// A queue whose workers key cannot be read (a key of the wrong type)
    /// is an `Err` in its place, naming the queue and the key; the other
    /// queues are read as usual. A heartbeat or task set that cannot be
    /// decoded reads as empty, as in [`Admin::workers`].
    ///
    /// A stream queue (its mode is read in the first round trip) has no
    /// heartbeat hashes: its workers are the members of its live set `lv`
    /// (lease expiry) and the consumers of its bands' group that still
    /// hold entries without being live (lease `None`: their worker died),
    /// each with the fields `mode=stream`, `busy` (entries held) and
    /// `state` (`busy` or `idle`) and the ids of its running tasks (up to
    /// 1,000 entries per band are read, specs included). Stream queues
    /// add two round trips, whatever their number: their pending lists,
    /// then their running entries.
    ///
    /// # Errors
    /// [`Error::InvalidName`] for a bad queue name (nothing is read), Redis
    /// connection errors.
    pub async fn workers_of_many(
        &self,
        queues: &[String],
    ) -> Result<Vec<Result<Vec<WorkerInfo>, Error>>, Error> {
        let keys: Vec<QueueKeys> = queues
            .iter()
            .map(|q| QueueKeys::new(q))
            .collect::<Result<_, _>>()?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // Round trip 1: every queue's workers with their lease expiry, its
        // mode, and its live set if it is a stream queue.
        let mut first = redis::pipe();
        for k in &keys {
            first
                .cmd("ZRANGE")
                .arg(k.workers())
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .cmd("HMGET")
                .arg(k.meta())
                .arg("mode")
                .arg("bands")
                .cmd("ZRANGE")
                .arg(v3::live_key(k))
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES");
        }
        first.ignore_errors();
        let sets = crate::cluster::query_spread(&mut self.conn.clone(), &first, true).await?;
        let mut sets = sets.into_iter();
        let mut listed: Vec<Result<Vec<(String, f64)>, Error>> = Vec::with_capacity(keys.len());
        // Stream queues: (index in `keys`, meta, live set).
        let mut streams: Vec<(usize, StreamRead)> = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let workers = sets.next().unwrap_or(Value::Nil);
            let mode = sets.next().unwrap_or(Value::Nil);
            let live = sets.next().unwrap_or(Value::Nil);
            match stream_mode(k, mode) {
                Ok(None) => listed.push(decode_named(k, &k.workers(), workers)),
                Ok(Some(meta)) => {
                    listed.push(Ok(Vec::new()));
                    streams.push((i, Ok((meta, live))));
                }
                Err(e) => {
                    listed.push(Ok(Vec::new()));
                    streams.push((i, Err(e)));
                }
            }
        }
        // Round trip 2: each listed worker's heartbeat and owned tasks.
        let mut second = redis::pipe();
        for (k, workers) in keys.iter().zip(&listed) {
            for (w, _) in workers.iter().flatten() {
                second.hgetall(k.worker(w)).smembers(k.worker_tasks(w));
            }
        }
        second.ignore_errors();
        let replies = if second.cmd_iter().next().is_none() {
            Vec::new()
        } else {
            crate::cluster::query_spread(&mut self.conn.clone(), &second, true).await?
        };
        let mut replies = replies.into_iter();
        let mut next = || replies.next().unwrap_or(Value::Nil);
        let mut out: Vec<Result<Vec<WorkerInfo>, Error>> = listed
            .into_iter()
            .map(|workers| {
                Ok(workers?
                    .into_iter()
                    .map(|(id, exp)| worker_info(id, exp, next(), next()))
                    .collect())
            })
            .collect();
        // Stream queues: their pending lists and running entries.
        let mut asked = Vec::new();
        let mut reads = Vec::new();
        for (i, read) in streams {
            let live =
                read.and_then(|(meta, live)| Ok((meta, stream::decode_live(&keys[i], live)?)));
            match live {
                Ok((meta, live)) => {
                    asked.push(i);
                    reads.push((keys[i].clone(), meta.bands, live));
                }
                Err(e) => out[i] = Err(e),
            }
        }
        for (i, read) in asked.into_iter().zip(self.stream_running(reads).await?) {
            out[i] = read.map(|r| r.workers());
        }
        Ok(out)
    }
}

/// A stream queue's first-round-trip read: its meta fields and the reply
/// of `ZRANGE lv`, or why its mode is unreadable.
type StreamRead = Result<(StreamMeta, Value), Error>;

/// A queue's stream meta fields from its `HMGET meta mode bands` reply:
/// `None` for an exact queue (or a meta hash that cannot be read: the
/// exact queue's reads say why), an error for a stream queue without a
/// readable band count.
fn stream_mode(k: &QueueKeys, reply: Value) -> Result<Option<StreamMeta>, Error> {
    let Ok([mode, bands]) = redis::from_redis_value::<[Option<String>; 2]>(reply) else {
        return Ok(None);
    };
    let mut meta = HashMap::new();
    meta.extend(mode.map(|m| ("mode".to_string(), m)));
    meta.extend(bands.map(|b| ("bands".to_string(), b)));
    stream::stream_meta(k, &meta)
}

/// A worker from its lease expiry and the replies of `HGETALL` of its
/// heartbeat and `SMEMBERS` of its owned tasks (undecodable ones read as
/// empty).
fn worker_info(id: String, exp: f64, heartbeat: Value, owned: Value) -> WorkerInfo {
    let fields: HashMap<String, String> = redis::from_redis_value(heartbeat).unwrap_or_default();
    let mut tasks: Vec<String> = redis::from_redis_value(owned).unwrap_or_default();
    tasks.sort();
    WorkerInfo {
        id,
        lease_until_ms: Some(exp as i64),
        fields,
        tasks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_is_decoded_from_its_two_replies_and_bad_ones_read_as_empty() {
        let heartbeat = Value::Array(vec![
            Value::BulkString(b"slots".to_vec()),
            Value::BulkString(b"4".to_vec()),
        ]);
        let owned = Value::Array(vec![
            Value::BulkString(b"t2".to_vec()),
            Value::BulkString(b"t1".to_vec()),
        ]);
        let w = worker_info("w1".into(), 1_000.0, heartbeat, owned);
        assert_eq!(w.field("slots"), "4");
        assert_eq!(w.tasks, ["t1", "t2"]);
        assert_eq!(w.lease_until_ms, Some(1_000));
        let w = worker_info("w2".into(), 5.0, Value::Int(3), Value::Nil);
        assert!(w.fields.is_empty() && w.tasks.is_empty());
    }
}
