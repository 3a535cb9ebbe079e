//! Queue statistics from the time-bucketed counters scripts maintain.
//!
//! Each 10-second bucket hash `s:<n>` holds counters (`sub`,
//! `done`, `failed`, `cancelled`, `expired`, `lost`, `full`) and latency
//! histograms: `w:<i>` (queue wait), `f:<i>` (submit to first chunk),
//! `t:<i>` (submit to end). Bucket `i` counts latencies `ms` with
//! `floor(log2(1 + ms) * 4) == i` (quarter octaves, ~19 % wide). Buckets
//! expire after an hour, so memory is bounded whatever the rate.

use std::collections::{BTreeMap, HashMap};

/// Width of one stats bucket in ms.
pub const BUCKET_MS: i64 = 10_000;

/// Counters of one time bucket.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Bucket {
    /// Bucket start (ms, Redis clock).
    pub start_ms: i64,
    /// Counter name -> value.
    pub counts: BTreeMap<String, u64>,
}

impl Bucket {
    /// A counter's value (0 if absent).
    pub fn get(&self, name: &str) -> u64 {
        self.counts.get(name).copied().unwrap_or(0)
    }
}

/// A latency histogram (bucket index -> count).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    counts: BTreeMap<u32, u64>,
}

/// Lower edge in ms of histogram bucket `i`.
pub fn bucket_floor_ms(i: u32) -> f64 {
    2f64.powf(i as f64 / 4.0) - 1.0
}

/// Index of the bucket holding `ms` (same rule as the Lua scripts).
pub fn bucket_index(ms: f64) -> u32 {
    ((1.0 + ms.max(0.0)).log2() * 4.0).floor() as u32
}

impl Histogram {
    /// Adds `count` observations to bucket `index`.
    pub fn add(&mut self, index: u32, count: u64) {
        *self.counts.entry(index).or_default() += count;
    }

    /// Observations in total.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// The `q`-quantile in ms (0 < q <= 1), interpolated inside its bucket;
    /// `None` without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let rank = (q * total as f64).ceil().max(1.0);
        let mut seen = 0u64;
        for (&i, &n) in &self.counts {
            if (seen + n) as f64 >= rank {
                let lo = bucket_floor_ms(i);
                let hi = bucket_floor_ms(i + 1);
                let within = (rank - seen as f64) / n as f64;
                return Some(lo + (hi - lo) * within);
            }
            seen += n;
        }
        None
    }
}

/// p50/p95/p99 of a latency, in ms.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50: Option<f64>,
    /// 95th percentile.
    pub p95: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// Observations.
    pub count: u64,
}

impl From<&Histogram> for Percentiles {
    fn from(h: &Histogram) -> Self {
        Self {
            p50: h.quantile(0.50),
            p95: h.quantile(0.95),
            p99: h.quantile(0.99),
            count: h.total(),
        }
    }
}

/// Statistics of a queue over a window of buckets.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueueStats {
    /// Buckets oldest first (missing ones are zero-filled).
    pub buckets: Vec<Bucket>,
    /// Queue wait (submit to hand-out).
    pub wait: Percentiles,
    /// Submit to first chunk.
    pub first_chunk: Percentiles,
    /// Submit to end.
    pub total: Percentiles,
    /// Window length in seconds (whole buckets).
    pub window_secs: f64,
}

impl QueueStats {
    /// Builds stats from raw bucket hashes, oldest first.
    pub fn from_buckets(raw: Vec<(i64, HashMap<String, String>)>) -> Self {
        let mut wait = Histogram::default();
        let mut first = Histogram::default();
        let mut total = Histogram::default();
        let mut buckets = Vec::with_capacity(raw.len());
        for (start_ms, hash) in raw {
            let mut b = Bucket {
                start_ms,
                counts: BTreeMap::new(),
            };
            for (k, v) in hash {
                let n: u64 = v.parse().unwrap_or(0);
                let hist =
                    |prefix: &str| k.strip_prefix(prefix).and_then(|i| i.parse::<u32>().ok());
                if let Some(i) = hist("w:") {
                    wait.add(i, n);
                } else if let Some(i) = hist("f:") {
                    first.add(i, n);
                } else if let Some(i) = hist("t:") {
                    total.add(i, n);
                } else {
                    b.counts.insert(k, n);
                }
            }
            buckets.push(b);
        }
        let window_secs = buckets.len() as f64 * BUCKET_MS as f64 / 1000.0;
        Self {
            buckets,
            wait: (&wait).into(),
            first_chunk: (&first).into(),
            total: (&total).into(),
            window_secs,
        }
    }

    /// Sum of a counter over the window.
    pub fn sum(&self, name: &str) -> u64 {
        self.buckets.iter().map(|b| b.get(name)).sum()
    }

    /// Average rate of a counter per second over the window.
    pub fn rate(&self, name: &str) -> f64 {
        if self.window_secs <= 0.0 {
            0.0
        } else {
            self.sum(name) as f64 / self.window_secs
        }
    }

    /// A counter per bucket, oldest first (for sparklines).
    pub fn series(&self, name: &str) -> Vec<u64> {
        self.buckets.iter().map(|b| b.get(name)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_rule_matches_the_lua_rule() {
        // floor(log2(1+ms)*4): 0 -> 0, 1 -> 4, 100 -> 26, 1000 -> 39.
        assert_eq!(bucket_index(0.0), 0);
        assert_eq!(bucket_index(1.0), 4);
        assert_eq!(bucket_index(100.0), 26);
        assert_eq!(bucket_index(1000.0), 39);
        for ms in [0.0, 3.0, 17.0, 250.0, 9_999.0] {
            let i = bucket_index(ms);
            assert!(
                bucket_floor_ms(i) <= ms && ms < bucket_floor_ms(i + 1),
                "{ms}"
            );
        }
    }

    #[test]
    fn quantiles_are_within_one_bucket_of_the_truth() {
        let mut h = Histogram::default();
        for ms in 1..=1000 {
            h.add(bucket_index(ms as f64), 1);
        }
        for (q, truth) in [(0.5, 500.0), (0.95, 950.0), (0.99, 990.0)] {
            let got = h.quantile(q).unwrap();
            assert!((got - truth).abs() / truth < 0.2, "q{q}: {got} vs {truth}");
        }
        assert_eq!(Histogram::default().quantile(0.5), None);
    }

    #[test]
    fn stats_sum_and_rate_over_buckets() {
        let mk = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let s = QueueStats::from_buckets(vec![
            (0, mk(&[("done", "10"), ("w:4", "10")])),
            (
                10_000,
                mk(&[("done", "30"), ("failed", "2"), ("w:8", "30")]),
            ),
        ]);
        assert_eq!(s.sum("done"), 40);
        assert_eq!(s.rate("done"), 2.0);
        assert_eq!(s.series("failed"), vec![0, 2]);
        assert_eq!(s.wait.count, 40);
    }
}
