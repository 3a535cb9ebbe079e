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
    /// This bucket's queue-wait histogram (`w:` fields).
    pub wait: Histogram,
    /// This bucket's submit-to-first-chunk histogram (`f:` fields).
    pub first_chunk: Histogram,
    /// This bucket's submit-to-end histogram (`t:` fields).
    pub total: Histogram,
}

impl Bucket {
    /// A counter's value (0 if absent).
    pub fn get(&self, name: &str) -> u64 {
        self.counts.get(name).copied().unwrap_or(0)
    }

    /// This bucket's histogram of one latency.
    pub fn histogram(&self, kind: Latency) -> &Histogram {
        match kind {
            Latency::Wait => &self.wait,
            Latency::FirstChunk => &self.first_chunk,
            Latency::Total => &self.total,
        }
    }
}

/// Which latency a histogram measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Latency {
    /// Queue wait (submit to hand-out), `w:` fields.
    Wait,
    /// Submit to first chunk, `f:` fields.
    FirstChunk,
    /// Submit to end, `t:` fields.
    Total,
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
    /// Adds `count` observations to bucket `index` (saturating: a corrupt
    /// field must not panic a reader).
    pub fn add(&mut self, index: u32, count: u64) {
        let n = self.counts.entry(index).or_default();
        *n = n.saturating_add(count);
    }

    /// Adds every observation of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (&i, &n) in &other.counts {
            self.add(i, n);
        }
    }

    /// Observations in total.
    pub fn total(&self) -> u64 {
        self.counts.values().fold(0, |a, &n| a.saturating_add(n))
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
            if seen.saturating_add(n) as f64 >= rank {
                let lo = bucket_floor_ms(i);
                let hi = bucket_floor_ms(i.saturating_add(1));
                let within = (rank - seen as f64) / n as f64;
                return Some(lo + (hi - lo) * within);
            }
            seen = seen.saturating_add(n);
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
                ..Bucket::default()
            };
            for (k, v) in hash {
                let n: u64 = v.parse().unwrap_or(0);
                let hist =
                    |prefix: &str| k.strip_prefix(prefix).and_then(|i| i.parse::<u32>().ok());
                if let Some(i) = hist("w:") {
                    b.wait.add(i, n);
                } else if let Some(i) = hist("f:") {
                    b.first_chunk.add(i, n);
                } else if let Some(i) = hist("t:") {
                    b.total.add(i, n);
                } else {
                    b.counts.insert(k, n);
                }
            }
            wait.merge(&b.wait);
            first.merge(&b.first_chunk);
            total.merge(&b.total);
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

    /// The `q`-quantile of a latency per bucket in ms, oldest first, each
    /// from that bucket's own histogram (`None` for a bucket without
    /// observations): p50/p99 over time for charts.
    pub fn series_quantile(&self, kind: Latency, q: f64) -> Vec<Option<f64>> {
        self.buckets
            .iter()
            .map(|b| b.histogram(kind).quantile(q))
            .collect()
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

    #[test]
    fn quantile_series_is_per_bucket_not_the_aggregate() {
        let mk = |pairs: &[(String, String)]| -> HashMap<String, String> {
            pairs.iter().cloned().collect()
        };
        let hist = |prefix: &str, ms: f64, n: u64| {
            (format!("{prefix}{}", bucket_index(ms)), n.to_string())
        };
        // Bucket 0: 99 fast tasks (10 ms) and one slow (1000 ms); bucket 1:
        // nothing; bucket 2: all at 200 ms. Wait is recorded only in 2.
        let s = QueueStats::from_buckets(vec![
            (0, mk(&[hist("t:", 10.0, 99), hist("t:", 1000.0, 1)])),
            (10_000, mk(&[("done".into(), "0".into())])),
            (20_000, mk(&[hist("t:", 200.0, 50), hist("w:", 5.0, 50)])),
        ]);
        let within = |got: Option<f64>, truth: f64| {
            let got = got.expect("a value");
            assert!((got - truth).abs() / truth < 0.2, "{got} vs {truth}");
        };
        let p50 = s.series_quantile(Latency::Total, 0.5);
        let p99 = s.series_quantile(Latency::Total, 0.99);
        assert_eq!(p50.len(), 3);
        within(p50[0], 10.0);
        assert_eq!(p50[1], None);
        within(p50[2], 200.0);
        // The 99th of 100 observations is still a fast one; the 100th
        // (q = 1.0) is the slow one.
        within(p99[0], 10.0);
        within(s.series_quantile(Latency::Total, 1.0)[0], 1000.0);
        within(p99[2], 200.0);
        // The aggregate mixes the buckets: its median is not bucket 2's.
        assert_eq!(s.total.count, 150);
        within(s.total.p50, 10.0);
        let wait = s.series_quantile(Latency::Wait, 0.5);
        assert_eq!(&wait[..2], &[None, None]);
        within(wait[2], 5.0);
        assert_eq!(s.buckets[2].wait.total(), 50);
        assert!(QueueStats::default()
            .series_quantile(Latency::FirstChunk, 0.5)
            .is_empty());
        // Corrupt fields (huge counts and indexes) neither panic nor
        // overflow.
        let max = u64::MAX.to_string();
        let s = QueueStats::from_buckets(vec![
            (0, mk(&[(format!("t:{}", u32::MAX), max.clone())])),
            (
                10_000,
                mk(&[(format!("t:{}", u32::MAX), max), hist("t:", 1.0, 1)]),
            ),
        ]);
        assert_eq!(s.total.count, u64::MAX);
        assert!(s.series_quantile(Latency::Total, 0.99)[1].is_some());
    }
}
