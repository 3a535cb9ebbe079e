//! The worker's share of the queue statistics. Workers, not the protocol
//! functions, record what they see (queue wait at hand-out; first chunk,
//! total time and outcome at the end), computed from the Redis times the
//! functions already return, and add them to the queue's 10-second
//! buckets with their next heartbeat. This keeps every statistics write
//! off the per-task path: one heartbeat carries what many tasks produced.
//!
//! Best effort, as statistics are: a worker killed with -9 loses at most
//! one heartbeat period of them, and so does a heartbeat that fails (Redis
//! unreachable; a beat whose reply is lost may or may not have added its
//! share, so the counts are never sent twice).

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::admin::stats::{bucket_index, BUCKET_MS};
use crate::functions::chunk::WriteStatus;
use crate::functions::complete::CompleteReply;
use crate::protocol::{TaskDelivery, TaskState};

/// Items one heartbeat carries at most (the function's limit); the rest
/// waits for the next beat.
const MAX_ITEMS_PER_BEAT: usize = 1024;

/// Counts per (bucket, field), waiting for the next heartbeat.
#[derive(Debug, Default)]
pub(crate) struct StatsTally {
    counts: Mutex<BTreeMap<(i64, String), u64>>,
}

fn bucket_of(ms: i64) -> i64 {
    ms.div_euclid(BUCKET_MS)
}

fn hist_field(prefix: char, ms: i64) -> String {
    format!("{prefix}:{}", bucket_index(ms.max(0) as f64).min(200))
}

impl StatsTally {
    fn add(&self, bucket: i64, field: String, n: u64) {
        if let Ok(mut counts) = self.counts.lock() {
            *counts.entry((bucket, field)).or_default() += n;
        }
    }

    /// A task handed to this worker: its queue wait.
    pub(crate) fn record_start(&self, delivery: &TaskDelivery) {
        if delivery.handed_out_ms <= 0 || delivery.submitted_ms <= 0 {
            return;
        }
        let wait = delivery.handed_out_ms - delivery.submitted_ms;
        self.add(bucket_of(delivery.handed_out_ms), hist_field('w', wait), 1);
    }

    /// An attempt this worker ended: its outcome, total time and time to
    /// first chunk, when the call ended the task (a retry ends only the
    /// attempt and counts nothing, as before).
    pub(crate) fn record_end(&self, delivery: &TaskDelivery, reply: &CompleteReply) {
        if reply.status != WriteStatus::Ok || reply.now_ms <= 0 || delivery.submitted_ms <= 0 {
            return;
        }
        let outcome = match reply.state {
            Some(TaskState::Done) => "done",
            Some(TaskState::Failed) => "failed",
            _ => return,
        };
        let bucket = bucket_of(reply.now_ms);
        self.add(bucket, outcome.into(), 1);
        self.add(
            bucket,
            hist_field('t', reply.now_ms - delivery.submitted_ms),
            1,
        );
        if reply.first_chunk_ms > 0 {
            self.add(
                bucket_of(reply.first_chunk_ms),
                hist_field('f', reply.first_chunk_ms - delivery.submitted_ms),
                1,
            );
        }
    }

    /// True when counts wait for a heartbeat.
    pub(crate) fn has_pending(&self) -> bool {
        self.counts.lock().map(|c| !c.is_empty()).unwrap_or(false)
    }

    /// Takes up to one heartbeat's worth of counts, encoded for the
    /// heartbeat's `stats` field (`<bucket>/<field>/<count>` items), or
    /// `None` when there is nothing to send.
    pub(crate) fn take_encoded(&self) -> Option<String> {
        let mut counts = self.counts.lock().ok()?;
        if counts.is_empty() {
            return None;
        }
        let keys: Vec<(i64, String)> = counts.keys().take(MAX_ITEMS_PER_BEAT).cloned().collect();
        let mut out = String::new();
        for key in keys {
            if let Some(n) = counts.remove(&key) {
                if !out.is_empty() {
                    out.push(' ');
                }
                out.push_str(&format!("{}/{}/{}", key.0, key.1, n.min(1_000_000_000)));
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(submitted_ms: i64, handed_out_ms: i64) -> TaskDelivery {
        TaskDelivery {
            id: "t".into(),
            attempt: 1,
            handed_out_ms,
            deadline_ms: 0,
            submitted_ms,
            spec: Vec::new(),
        }
    }

    fn reply(status: WriteStatus, state: Option<TaskState>, now_ms: i64, fc: i64) -> CompleteReply {
        CompleteReply {
            status,
            next: None,
            chunks: 0,
            state,
            now_ms,
            first_chunk_ms: fc,
        }
    }

    #[test]
    fn ends_count_outcome_total_and_first_chunk_in_their_buckets() {
        let tally = StatsTally::default();
        let d = delivery(1_000_000, 1_000_100);
        tally.record_start(&d);
        tally.record_end(
            &d,
            &reply(WriteStatus::Ok, Some(TaskState::Done), 1_010_000, 1_000_500),
        );
        let mut items: Vec<&str> = Vec::new();
        let text = tally.take_encoded().unwrap();
        items.extend(text.split(' '));
        items.sort_unstable();
        let w = bucket_index(100.0);
        let f = bucket_index(500.0);
        let t = bucket_index(10_000.0);
        let mut want = vec![
            format!("100/w:{w}/1"),
            format!("100/f:{f}/1"),
            "101/done/1".to_string(),
            format!("101/t:{t}/1"),
        ];
        want.sort_unstable();
        assert_eq!(items, want);
        assert_eq!(tally.take_encoded(), None, "taken once");
    }

    #[test]
    fn retries_refusals_and_rejects_count_nothing() {
        let tally = StatsTally::default();
        let d = delivery(1_000_000, 1_000_100);
        tally.record_end(
            &d,
            &reply(WriteStatus::Ok, Some(TaskState::Queued), 1_010_000, 0),
        );
        tally.record_end(
            &d,
            &reply(WriteStatus::Ended, Some(TaskState::Cancelled), 1_010_000, 0),
        );
        tally.record_end(&d, &reply(WriteStatus::Fenced, Some(TaskState::Done), 0, 0));
        tally.record_start(&delivery(0, 0));
        assert_eq!(tally.take_encoded(), None);
        tally.record_end(
            &d,
            &reply(WriteStatus::Ok, Some(TaskState::Failed), 1_010_000, 0),
        );
        tally.record_end(
            &d,
            &reply(WriteStatus::Ok, Some(TaskState::Failed), 1_010_001, 0),
        );
        let text = tally.take_encoded().unwrap();
        assert!(text.contains("101/failed/2"), "{text}");
        assert!(!text.contains("f:"), "{text}");
    }

    #[test]
    fn one_beat_carries_at_most_the_function_s_item_limit() {
        let tally = StatsTally::default();
        for i in 0..(MAX_ITEMS_PER_BEAT as i64 + 10) {
            tally.add(i, "done".into(), 1);
        }
        assert_eq!(
            tally.take_encoded().unwrap().split(' ').count(),
            MAX_ITEMS_PER_BEAT
        );
        assert_eq!(tally.take_encoded().unwrap().split(' ').count(), 10);
    }
}
