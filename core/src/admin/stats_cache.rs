//! Statistics for a reader that polls (the console): buckets that can no
//! longer change are read once and kept, so a refresh reads only the few
//! buckets still being written instead of the whole window.
//!
//! A 10-second bucket is written by scripts at its own time and by worker
//! heartbeats that carry the statistics of the tasks they ended since the
//! previous beat, so a bucket can still grow for about one heartbeat period
//! after it ends. [`CLOSED_AFTER_MS`] later it is treated as closed. (A
//! heartbeat that was retried for longer can still add to a closed bucket;
//! the cache then shows a little less than Redis holds until the bucket
//! leaves the window.)

use std::collections::{BTreeMap, HashMap};

use redis::Value;

use super::summary::decode;
use super::{stats, Admin, QueueStats};
use crate::error::Error;
use crate::keys::QueueKeys;

/// How long after its end a bucket is still re-read (one heartbeat period
/// of lateness, with margin).
pub const CLOSED_AFTER_MS: i64 = 30_000;

/// Buckets of the counters-only window (one minute: what failure shares and
/// "per second now" rates use).
pub const COUNTER_BUCKETS: usize = 6;

/// Whether bucket number `bucket` (start `bucket * BUCKET_MS`) can no
/// longer change at Redis time `now_ms`.
pub fn is_closed(bucket: i64, now_ms: i64) -> bool {
    (bucket + 1) * stats::BUCKET_MS + CLOSED_AFTER_MS <= now_ms
}

/// The bucket numbers of a window of `buckets` ending at `now_ms`.
fn window(buckets: usize, now_ms: i64) -> std::ops::RangeInclusive<i64> {
    let newest = now_ms.div_euclid(stats::BUCKET_MS);
    (newest - buckets.clamp(1, 360) as i64 + 1)..=newest
}

/// Counters of one bucket in the counters-only window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counters {
    done: u64,
    failed: u64,
}

/// Closed buckets already read, per queue: whole buckets (with latency
/// histograms) for the queues whose rows are shown, counters (`done`,
/// `failed`) for the others. Memory is bounded by the window: buckets that
/// left it are dropped at each read.
#[derive(Debug, Default)]
pub struct StatsCache {
    /// Queue -> bucket number -> bucket hash, closed buckets only.
    full: HashMap<String, BTreeMap<i64, HashMap<String, String>>>,
    /// Queue -> bucket number -> counters (open buckets too: the newest
    /// read, refreshed when the queue's turn comes).
    counters: HashMap<String, BTreeMap<i64, (Counters, bool)>>,
    /// Redis commands sent by the last read (for benchmarks and tests).
    pub last_commands: usize,
    /// The newest closed, non-empty bucket cached (key, bucket number):
    /// while Redis still has it, it still has every bucket cached (they
    /// were written no later and expire no sooner). When it is gone,
    /// Redis lost its data (a restart without persistence, a flush, a
    /// failover to an empty replica) and the cache is forgotten; a queue
    /// listed again before the next read must not show its old figures.
    sentinel: Option<(String, i64)>,
    /// The Redis time at which the sentinel was last checked (one check
    /// per refresh serves both reads).
    checked_at: Option<i64>,
}

impl StatsCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a new refresh: its first read checks again whether Redis
    /// lost its data, even at the same Redis millisecond as the previous
    /// refresh (two refreshes can fall in one millisecond, one on each side
    /// of a flush).
    pub fn new_refresh(&mut self) {
        self.checked_at = None;
    }

    /// Forgets everything cached if Redis no longer holds the sentinel
    /// bucket (see [`StatsCache::sentinel`]); checked once per `now_ms`.
    /// Returns the commands sent (0 or 1).
    async fn forget_if_lost(&mut self, admin: &Admin, now_ms: i64) -> Result<usize, Error> {
        if self.checked_at == Some(now_ms) {
            return Ok(0);
        }
        self.checked_at = Some(now_ms);
        let Some((key, _)) = &self.sentinel else {
            return Ok(0);
        };
        let exists: bool = redis::cmd("EXISTS")
            .arg(key)
            .query_async(&mut admin.conn.clone())
            .await?;
        if !exists {
            tracing::info!(bucket = %key, "a cached statistics bucket is gone from Redis (Redis lost its data): reading statistics afresh");
            self.full.clear();
            self.counters.clear();
            self.sentinel = None;
        }
        Ok(1)
    }

    /// Notes a closed bucket just read: the newest non-empty one becomes
    /// the sentinel.
    fn note_closed(&mut self, key: impl FnOnce() -> String, bucket: i64, empty: bool) {
        if !empty && !self.sentinel.as_ref().is_some_and(|(_, b)| bucket <= *b) {
            self.sentinel = Some((key(), bucket));
        }
    }

    /// Forgets queues not in `names` (deleted queues, rows no longer shown).
    pub fn retain(&mut self, names: &std::collections::HashSet<&str>) {
        self.full.retain(|q, _| names.contains(q.as_str()));
        self.counters.retain(|q, _| names.contains(q.as_str()));
    }

    /// Whole statistics (counters and latency histograms) of `queues` over
    /// `buckets` 10-second buckets ending at Redis time `now_ms`: one
    /// pipelined round trip of `HGETALL` for the buckets not cached yet
    /// (at steady state the ones still open: four per queue instead of the
    /// whole window). Queues of the cache not in `queues` are forgotten.
    ///
    /// # Errors
    /// Redis errors (a bucket that cannot be read counts as empty).
    pub async fn read_full(
        &mut self,
        admin: &Admin,
        queues: &[String],
        buckets: usize,
        now_ms: i64,
    ) -> Result<HashMap<String, QueueStats>, Error> {
        let checks = self.forget_if_lost(admin, now_ms).await?;
        let range = window(buckets, now_ms);
        let keep: std::collections::HashSet<&str> = queues.iter().map(String::as_str).collect();
        self.full.retain(|q, _| keep.contains(q.as_str()));
        let mut pipe = redis::pipe();
        let mut wanted = Vec::new();
        for q in queues {
            let Ok(k) = QueueKeys::new(q) else { continue };
            let cached = self.full.entry(q.clone()).or_default();
            cached.retain(|b, _| range.contains(b));
            for b in range.clone() {
                if !cached.contains_key(&b) {
                    pipe.hgetall(k.stats(b));
                    wanted.push((q.clone(), b));
                }
            }
        }
        self.last_commands = checks + wanted.len();
        let mut fresh: HashMap<String, HashMap<i64, HashMap<String, String>>> = HashMap::new();
        if !wanted.is_empty() {
            pipe.ignore_errors();
            let replies =
                crate::cluster::query_spread(&mut admin.conn.clone(), &pipe, true).await?;
            for ((q, b), v) in wanted.into_iter().zip(replies) {
                let hash: HashMap<String, String> = decode(v).unwrap_or_default();
                if is_closed(b, now_ms) {
                    self.note_closed(|| stats_key(&q, b), b, hash.is_empty());
                    self.full
                        .entry(q.clone())
                        .or_default()
                        .insert(b, hash.clone());
                }
                fresh.entry(q).or_default().insert(b, hash);
            }
        }
        let mut out = HashMap::new();
        for q in queues {
            let cached = self.full.get(q);
            let mut mine = fresh.remove(q).unwrap_or_default();
            let raw = range
                .clone()
                .map(|b| {
                    let hash = mine
                        .remove(&b)
                        .or_else(|| cached.and_then(|c| c.get(&b).cloned()))
                        .unwrap_or_default();
                    (b * stats::BUCKET_MS, hash)
                })
                .collect();
            out.insert(q.clone(), QueueStats::from_buckets(raw));
        }
        Ok(out)
    }

    /// Re-reads the `done` and `failed` counters of `queues` over the last
    /// [`COUNTER_BUCKETS`] buckets (one `HMGET` per bucket not closed and
    /// cached), for rows that are not shown but whose failure share and
    /// rates still colour and sort the list. See [`StatsCache::counters`].
    ///
    /// # Errors
    /// Redis errors (a bucket that cannot be read counts as empty).
    pub async fn read_counters(
        &mut self,
        admin: &Admin,
        queues: &[String],
        now_ms: i64,
    ) -> Result<(), Error> {
        let checks = self.forget_if_lost(admin, now_ms).await?;
        let range = window(COUNTER_BUCKETS, now_ms);
        let mut pipe = redis::pipe();
        let mut wanted = Vec::new();
        for q in queues {
            let Ok(k) = QueueKeys::new(q) else { continue };
            let cached = self.counters.entry(q.clone()).or_default();
            cached.retain(|b, _| range.contains(b));
            for b in range.clone() {
                if !cached.get(&b).is_some_and(|(_, closed)| *closed) {
                    pipe.cmd("HMGET").arg(k.stats(b)).arg("done").arg("failed");
                    wanted.push((q.clone(), b));
                }
            }
        }
        self.last_commands = checks + wanted.len();
        if wanted.is_empty() {
            return Ok(());
        }
        pipe.ignore_errors();
        let replies = crate::cluster::query_spread(&mut admin.conn.clone(), &pipe, true).await?;
        for ((q, b), v) in wanted.into_iter().zip(replies) {
            let (done, failed) = hmget_pair(v);
            let c = Counters { done, failed };
            if is_closed(b, now_ms) {
                self.note_closed(|| stats_key(&q, b), b, done == 0 && failed == 0);
            }
            self.counters
                .entry(q)
                .or_default()
                .insert(b, (c, is_closed(b, now_ms)));
        }
        Ok(())
    }

    /// The counters-only statistics of `queue` (`done` and `failed` over the
    /// last [`COUNTER_BUCKETS`] buckets ending at `now_ms`) as last read by
    /// [`StatsCache::read_counters`]; `None` if never read.
    pub fn counters(&self, queue: &str, now_ms: i64) -> Option<QueueStats> {
        let cached = self.counters.get(queue)?;
        let raw = window(COUNTER_BUCKETS, now_ms)
            .map(|b| {
                let mut hash = HashMap::new();
                if let Some((c, _)) = cached.get(&b) {
                    hash.insert("done".to_string(), c.done.to_string());
                    hash.insert("failed".to_string(), c.failed.to_string());
                }
                (b * stats::BUCKET_MS, hash)
            })
            .collect();
        Some(QueueStats::from_buckets(raw))
    }
}

/// The key of bucket `b` of queue `q` (a name the cache read already).
fn stats_key(q: &str, b: i64) -> String {
    QueueKeys::new(q).map(|k| k.stats(b)).unwrap_or_default()
}

/// Decodes the reply of `HMGET <bucket> done failed` (absent fields and
/// unreadable replies count as 0).
fn hmget_pair(v: Value) -> (u64, u64) {
    let pair: Vec<Option<u64>> = decode(v).unwrap_or_default();
    (
        pair.first().copied().flatten().unwrap_or(0),
        pair.get(1).copied().flatten().unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_closes_thirty_seconds_after_it_ends() {
        // Bucket 10 spans [100 s, 110 s): open until 140 s.
        assert!(!is_closed(10, 105_000));
        assert!(!is_closed(10, 139_999));
        assert!(is_closed(10, 140_000));
        // Of a 30-bucket window, the newest four are re-read.
        let now = 1_000_000 * stats::BUCKET_MS + 5_000;
        let open = window(30, now).filter(|b| !is_closed(*b, now)).count();
        assert_eq!(open, 4);
        assert_eq!(window(30, now).count(), 30);
    }

    #[test]
    fn counters_of_a_queue_never_read_are_unknown() {
        let cache = StatsCache::new();
        assert!(cache.counters("q", 0).is_none());
        assert_eq!(
            hmget_pair(Value::Array(vec![
                Value::BulkString(b"3".to_vec()),
                Value::Nil
            ])),
            (3, 0)
        );
    }
}
