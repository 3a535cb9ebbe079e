//! Every queue at a glance, in pipelined round trips whatever the number of
//! queues: [`Admin::summaries`] (counts only, what a list of 10,000 queues
//! can afford every second) and [`Admin::dashboard`] (counts and the
//! statistics window, what `rtq stats` prints).

use std::collections::HashMap;

use redis::Value;

use super::stream::{self, StreamMeta};
use super::{free_of_live, head_wait, stats, time_ms, Admin, QueueOverview, QueueStats};
use crate::error::Error;
use crate::keys::QueueKeys;
use crate::protocol::value_to_i64;

/// Commands the first round trip sends per queue (see [`first_trip`]).
const FIRST_TRIP_CMDS: usize = 6;

impl Admin {
    /// Overviews of every queue (counts, workers, head age; no
    /// statistics) in two pipelined round trips after the registry read:
    /// six cheap commands per queue, then one `SCARD` per live worker and
    /// one `HGET` of the head task of an exact queue, or for a stream
    /// queue (its meta hash, read in the first, says so) its live set and
    /// one `XPENDING` summary per band (no head age: see
    /// [`QueueOverview::mode`]). A queue whose keys cannot be read is an
    /// overview with [`QueueOverview::error`] set.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn summaries(&self) -> Result<Vec<QueueOverview>, Error> {
        let names = self.queues().await?;
        self.summaries_of(&names).await
    }

    /// [`Admin::summaries`] of the queues named (invalid names are left out).
    ///
    /// # Errors
    /// Redis errors.
    pub async fn summaries_of(&self, names: &[String]) -> Result<Vec<QueueOverview>, Error> {
        let keys: Vec<QueueKeys> = names
            .iter()
            .filter_map(|n| QueueKeys::new(n).ok())
            .collect();
        // Round trip 1: time, and per queue its counts, workers and head.
        let mut first = redis::pipe();
        first.cmd("TIME");
        for k in &keys {
            first_trip(&mut first, k);
        }
        // Errors of single commands (a key of the wrong type) come back in
        // place, so one corrupt queue shows as an error row, not as a
        // failed read of every queue.
        first.ignore_errors();
        // On a cluster, one pipeline per queue slot (the queues live on
        // several masters).
        let replies = crate::cluster::query_spread(&mut self.conn.clone(), &first, true).await?;
        let mut it = replies.into_iter();
        let time: Vec<i64> = decode(it.next().unwrap_or(Value::Nil))?;
        let now_ms = time_ms(&time);
        struct Partial {
            overview: QueueOverview,
            alive: Vec<String>,
            head: Option<String>,
            /// A stream queue's meta fields (its counts come in trip 2).
            stream: Option<StreamMeta>,
        }
        let mut partials = Vec::with_capacity(keys.len());
        for k in &keys {
            let items: Vec<Value> = (0..FIRST_TRIP_CMDS)
                .map(|_| it.next().unwrap_or(Value::Nil))
                .collect();
            let mut overview = QueueOverview {
                name: k.name().to_string(),
                now_ms,
                ..QueueOverview::default()
            };
            let decoded =
                decode_queue(k, items).and_then(|d| Ok((stream::stream_meta(k, &d.0)?, d)));
            let mut stream = None;
            let (alive, head) = match decoded {
                Ok((Some(meta), _)) => {
                    overview.mode = stream::QueueMode::Stream { bands: meta.bands };
                    overview.max_depth = meta.max_depth;
                    stream = Some(meta);
                    (Vec::new(), None)
                }
                Ok((None, (meta, pending, delayed, free, workers, head))) => {
                    let alive: Vec<String> = workers
                        .iter()
                        .filter(|(_, exp)| *exp as i64 > now_ms)
                        .map(|(w, _)| w.clone())
                        .collect();
                    overview.paused = meta.get("paused").map(String::as_str) == Some("1");
                    overview.max_depth = meta.get("maxd").and_then(|m| m.parse().ok()).unwrap_or(0);
                    overview.pending = pending + delayed;
                    overview.delayed = delayed;
                    overview.workers_alive = alive.len() as u64;
                    overview.workers_stale = (workers.len() - alive.len()) as u64;
                    overview.idle_slots = free_of_live(&free, &workers, now_ms);
                    (alive, head.into_iter().next())
                }
                Err(e) => {
                    overview.error = Some(e.to_string());
                    (Vec::new(), None)
                }
            };
            partials.push(Partial {
                overview,
                alive,
                head,
                stream,
            });
        }
        // Round trip 2: running counts and head age.
        let mut second = redis::pipe();
        for (k, p) in keys.iter().zip(&partials) {
            if let Some(meta) = &p.stream {
                stream::count_trip(&mut second, k, meta.bands);
            }
            for w in &p.alive {
                second.scard(k.worker_tasks(w));
            }
            if let Some(h) = &p.head {
                second.hget(k.task(h), "sub");
            }
        }
        second.ignore_errors();
        let replies: Vec<Value> = if second.cmd_iter().next().is_none() {
            Vec::new()
        } else {
            crate::cluster::query_spread(&mut self.conn.clone(), &second, true).await?
        };
        let mut it = replies.into_iter();
        let mut out = Vec::with_capacity(partials.len());
        for (k, mut p) in keys.iter().zip(partials) {
            if let Some(meta) = &p.stream {
                // Collected first: a decode that stops at an error must not
                // shift the replies of the queues after it.
                let items: Vec<Value> = it.by_ref().take(stream::count_cmds(meta.bands)).collect();
                let o = &mut p.overview;
                if let Err(e) = stream::decode_counts(k, meta, items.into_iter(), now_ms, o) {
                    *o = QueueOverview {
                        name: k.name().to_string(),
                        mode: o.mode,
                        now_ms,
                        error: Some(e.to_string()),
                        ..QueueOverview::default()
                    };
                }
                out.push(p.overview);
                continue;
            }
            let mut next = || it.next().unwrap_or(Value::Nil);
            p.overview.running = (0..p.alive.len())
                .map(|_| value_to_i64(&next()).max(0) as u64)
                .sum();
            if p.head.is_some() {
                p.overview.head_wait_ms = head_wait(now_ms, &next());
            }
            out.push(p.overview);
        }
        Ok(out)
    }

    /// Overviews and statistics of every queue in three pipelined round
    /// trips, whatever the number of queues (what `rtq stats` prints).
    /// `buckets` is the stats window in 10-second buckets (at most 360).
    /// It reads every bucket of every queue: a console showing many queues
    /// reads [`Admin::summaries`] and the statistics of the rows it shows
    /// through a [`super::StatsCache`] instead.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn dashboard(
        &self,
        buckets: usize,
    ) -> Result<Vec<(QueueOverview, QueueStats)>, Error> {
        let buckets = buckets.clamp(1, 360) as i64;
        let overviews = self.summaries().await?;
        let Some(now_ms) = overviews.first().map(|o| o.now_ms) else {
            return Ok(Vec::new());
        };
        let newest = now_ms.div_euclid(stats::BUCKET_MS);
        let oldest = newest - buckets + 1;
        let mut pipe = redis::pipe();
        for o in &overviews {
            let k = QueueKeys::new(&o.name)?;
            for b in oldest..=newest {
                pipe.hgetall(k.stats(b));
            }
        }
        pipe.ignore_errors();
        let replies = crate::cluster::query_spread(&mut self.conn.clone(), &pipe, true).await?;
        let mut it = replies.into_iter();
        Ok(overviews
            .into_iter()
            .map(|o| {
                let raw = (oldest..=newest)
                    .map(|b| {
                        let hash: HashMap<String, String> =
                            decode(it.next().unwrap_or(Value::Nil)).unwrap_or_default();
                        (b * stats::BUCKET_MS, hash)
                    })
                    .collect();
                (o, QueueStats::from_buckets(raw))
            })
            .collect())
    }
}

/// Adds a queue's first-round-trip commands: meta, pending and delayed
/// counts, free slots and workers with their scores, the head task.
pub(super) fn first_trip(pipe: &mut redis::Pipeline, k: &QueueKeys) {
    pipe.hgetall(k.meta())
        .zcard(k.pending())
        .zcard(k.delayed())
        .cmd("ZRANGE")
        .arg(k.free())
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .cmd("ZRANGE")
        .arg(k.workers())
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .zrange(k.pending(), 0, 0);
}

/// A queue's first-round-trip replies, decoded.
type QueueReplies = (
    HashMap<String, String>,
    u64,
    u64,
    Vec<(String, f64)>,
    Vec<(String, f64)>,
    Vec<String>,
);

/// Decodes a queue's six replies of the first round trip; the error names
/// the queue and the key that could not be read.
fn decode_queue(k: &QueueKeys, items: Vec<Value>) -> Result<QueueReplies, Error> {
    let mut items = items.into_iter();
    let mut next = || items.next().unwrap_or(Value::Nil);
    let meta = decode_named(k, &k.meta(), next())?;
    let pending = decode_named(k, &k.pending(), next())?;
    let delayed = decode_named(k, &k.delayed(), next())?;
    let free = decode_named(k, &k.free(), next())?;
    let workers = decode_named(k, &k.workers(), next())?;
    let head = decode_named(k, &k.pending(), next())?;
    Ok((meta, pending, delayed, free, workers, head))
}

/// Decodes one reply of key `key` of queue `k`; a server error in its place
/// (say, WRONGTYPE) or a reply of the wrong shape names both.
pub(super) fn decode_named<T: redis::FromRedisValue>(
    k: &QueueKeys,
    key: &str,
    v: Value,
) -> Result<T, Error> {
    let why = match v {
        Value::ServerError(e) => format!("{} {}", e.code(), e.details().unwrap_or("")),
        v => match redis::from_redis_value(v) {
            Ok(t) => return Ok(t),
            Err(e) => e.to_string(),
        },
    };
    Err(Error::Protocol(format!(
        "queue {}: cannot read {key}: {}",
        k.name(),
        why.trim()
    )))
}

/// Decodes a pipelined reply item, naming the mismatch.
pub(super) fn decode<T: redis::FromRedisValue>(value: Value) -> Result<T, Error> {
    redis::from_redis_value(value).map_err(|e| Error::Protocol(format!("unexpected reply: {e}")))
}

/// Which Redis answers, to tell "Redis restarted empty" from "nothing yet".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerState {
    /// `run_id` and `uptime_in_seconds` of `INFO server`; `None` on a
    /// cluster (each master has its own) or when `INFO` is refused.
    pub run: Option<(String, u64)>,
    /// Queues in the registry now (`SCARD`).
    pub queues: u64,
}

impl Admin {
    /// The server's run id and uptime, and the number of registered
    /// queues: two commands, whatever the number of queues.
    ///
    /// # Errors
    /// Redis errors of the `SCARD` (a refused `INFO` is `run: None`).
    pub async fn server_state(&self) -> Result<ServerState, Error> {
        let queues: u64 = redis::cmd("SCARD")
            .arg(crate::keys::QUEUES)
            .query_async(&mut self.conn.clone())
            .await?;
        let run = if matches!(self.conn, crate::connection::RedisConnection::Cluster(_)) {
            None
        } else {
            let info: Result<String, _> = redis::cmd("INFO")
                .arg("server")
                .query_async(&mut self.conn.clone())
                .await;
            info.ok().and_then(|text| {
                let field = |name: &str| {
                    text.lines()
                        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                        .map(|v| v.trim().to_string())
                };
                Some((field("run_id")?, field("uptime_in_seconds")?.parse().ok()?))
            })
        };
        Ok(ServerState { run, queues })
    }
}
