//! How a queue looks at a glance: healthy, worth a look (warning) or in
//! trouble (critical), with the reason in a word. The thresholds are
//! constants here, so the colours mean the same thing everywhere.

use crate::model::QueueRow;

/// Oldest queued task older than this: a backlog (warning).
pub const BACKLOG_WARN_MS: i64 = 10_000;
/// Oldest queued task older than this: stalled (critical).
pub const STALLED_MS: i64 = 60_000;
/// Share of failed tasks over the last minute for a warning.
pub const FAILING_WARN: f64 = 0.10;
/// Share of failed tasks over the last minute that is critical.
pub const FAILING_CRITICAL: f64 = 0.50;
/// Ended tasks needed in the last minute before a failure share counts.
pub const FAILING_MIN_ENDED: u64 = 5;

/// How bad it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Nothing to do.
    Ok,
    /// Worth a look.
    Warning,
    /// Someone should act.
    Critical,
}

/// A queue's health: level and a one-word reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// How bad.
    pub level: Level,
    /// Why, short enough for the STATE column ("no worker", "stalled").
    pub label: &'static str,
}

fn health(level: Level, label: &'static str) -> Health {
    Health { level, label }
}

/// Rate per second over the last six 10-second buckets (the live view
/// wants "now", not the 5-minute average).
pub fn last_minute_rate(stats: &rtq_core::admin::QueueStats, name: &str) -> f64 {
    stats.series(name).iter().rev().take(6).sum::<u64>() as f64 / 60.0
}

/// Failed share of the tasks that ended over the last minute (six
/// 10-second buckets), if enough ended to say.
pub fn failure_share(row: &QueueRow) -> Option<f64> {
    let last = |name: &str| row.stats.series(name).iter().rev().take(6).sum::<u64>();
    let (done, failed) = (last("done"), last("failed"));
    let ended = done + failed;
    (ended >= FAILING_MIN_ENDED).then(|| failed as f64 / ended as f64)
}

/// The queue's health, worst reason first.
pub fn queue_health(row: &QueueRow) -> Health {
    let o = &row.overview;
    let waiting = o.pending + o.delayed;
    let head = o.head_wait_ms.unwrap_or(0);
    let failing = failure_share(row).unwrap_or(0.0);
    if o.error.is_some() {
        health(Level::Critical, "error")
    } else if waiting > 0 && o.workers_alive == 0 {
        health(Level::Critical, "no worker")
    } else if !o.paused && waiting > 0 && head >= STALLED_MS {
        health(Level::Critical, "stalled")
    } else if failing >= FAILING_CRITICAL {
        health(Level::Critical, "failing")
    } else if o.paused {
        health(Level::Warning, "paused")
    } else if o.workers_stale > 0 {
        health(Level::Warning, "stale wrk")
    } else if waiting > 0 && head >= BACKLOG_WARN_MS {
        health(Level::Warning, "backlog")
    } else if failing >= FAILING_WARN {
        health(Level::Warning, "failing")
    } else if o.workers_alive == 0 && o.running == 0 {
        health(Level::Ok, "idle")
    } else {
        health(Level::Ok, "running")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtq_core::admin::stats::Bucket;

    fn row(f: impl FnOnce(&mut QueueRow)) -> QueueRow {
        let mut r = QueueRow::default();
        r.overview.name = "q".into();
        r.overview.workers_alive = 1;
        f(&mut r);
        r
    }

    fn ended(r: &mut QueueRow, done: u64, failed: u64) {
        let mut b = Bucket::default();
        b.counts.insert("done".into(), done);
        b.counts.insert("failed".into(), failed);
        r.stats.buckets = vec![b];
    }

    #[test]
    fn the_worst_reason_wins_and_each_threshold_is_inclusive() {
        let cases: Vec<(QueueRow, Level, &str)> = vec![
            (row(|_| {}), Level::Ok, "running"),
            (row(|r| r.overview.workers_alive = 0), Level::Ok, "idle"),
            (
                row(|r| {
                    r.overview.workers_alive = 0;
                    r.overview.pending = 20_000;
                }),
                Level::Critical,
                "no worker",
            ),
            (
                row(|r| {
                    r.overview.workers_alive = 0;
                    r.overview.delayed = 1;
                }),
                Level::Critical,
                "no worker",
            ),
            (
                row(|r| {
                    r.overview.pending = 1;
                    r.overview.head_wait_ms = Some(STALLED_MS);
                }),
                Level::Critical,
                "stalled",
            ),
            (
                row(|r| {
                    r.overview.pending = 1;
                    r.overview.head_wait_ms = Some(STALLED_MS - 1);
                }),
                Level::Warning,
                "backlog",
            ),
            (
                row(|r| {
                    r.overview.pending = 1;
                    r.overview.head_wait_ms = Some(BACKLOG_WARN_MS - 1);
                }),
                Level::Ok,
                "running",
            ),
            (
                row(|r| {
                    r.overview.paused = true;
                    r.overview.pending = 1;
                    r.overview.head_wait_ms = Some(STALLED_MS * 10);
                }),
                Level::Warning,
                "paused",
            ),
            (row(|r| ended(r, 5, 5)), Level::Critical, "failing"),
            (row(|r| ended(r, 9, 1)), Level::Warning, "failing"),
            (row(|r| ended(r, 91, 9)), Level::Ok, "running"),
            (row(|r| ended(r, 0, 4)), Level::Ok, "running"),
            (
                row(|r| r.overview.workers_stale = 1),
                Level::Warning,
                "stale wrk",
            ),
            (
                row(|r| r.overview.error = Some("WRONGTYPE".into())),
                Level::Critical,
                "error",
            ),
        ];
        for (i, (r, level, label)) in cases.into_iter().enumerate() {
            assert_eq!(queue_health(&r), health(level, label), "case {i}");
        }
    }
}
