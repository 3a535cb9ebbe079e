//! The summary: a Markdown table ready for BENCHMARKS.md, then every check
//! with PASS or FAIL and what it found.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use super::load::Ledger;
use super::observe::Observations;
use super::verify::{Audit, Check};

/// Counters of the faults injected.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// kill -9 of a worker.
    pub kills: u64,
    /// SIGSTOP for longer than the lease, then SIGCONT.
    pub stops: u64,
    /// SIGTERM (graceful drain).
    pub terms: u64,
    /// Restarts of a killed or drained worker under the same id.
    pub restarts_same_id: u64,
    /// Workers started under a new id.
    pub new_ids: u64,
    /// kill -9 and restart of Redis.
    pub redis_restarts: u64,
    /// Drain times of SIGTERMed workers.
    pub drains: Vec<Duration>,
}

impl Faults {
    /// All faults that can make a task change hands.
    pub fn total(&self) -> u64 {
        self.kills + self.stops + self.terms + self.restarts_same_id + self.redis_restarts
    }
}

/// What the run was.
#[derive(Clone, Debug)]
pub struct Setup {
    /// The seed.
    pub seed: u64,
    /// Chaos window.
    pub duration: Duration,
    /// Workers at the start.
    pub workers: usize,
    /// Slots of each worker id at the start.
    pub slots: Vec<u32>,
    /// Lease (ms).
    pub lease_ms: u64,
    /// Submit rate.
    pub rate: f64,
    /// Max in flight.
    pub max_in_flight: usize,
    /// Redis: private (with or without AOF) or given.
    pub redis: String,
    /// Whole run, chaos and settle.
    pub wall: Duration,
    /// The queue is a stream queue with this many bands (`--stream-queue`).
    pub stream_bands: Option<u8>,
}

fn quantile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    Some(sorted[i])
}

fn ms(d: Duration) -> String {
    format!("{}", d.as_millis())
}

/// Renders the summary.
pub fn render(
    setup: &Setup,
    faults: &Faults,
    ledger: &Ledger,
    obs: &Observations,
    audit: &Audit,
    checks: &[Check],
) -> String {
    let mut s = String::new();
    let mut by_outcome: BTreeMap<&str, usize> = BTreeMap::new();
    let mut latencies: Vec<Duration> = Vec::new();
    let mut repeats = 0u32;
    for r in ledger.records.values() {
        let label = r.outcome.as_ref().map_or("no outcome", |o| o.label());
        *by_outcome.entry(label).or_insert(0) += 1;
        latencies.extend(r.latency);
        repeats += r.repeats;
    }
    latencies.sort();
    let mut recoveries: Vec<Duration> = obs.recoveries.iter().filter_map(|r| r.time()).collect();
    recoveries.sort();
    let idle_kills = obs
        .recoveries
        .iter()
        .filter(|r| r.done_at.is_some() && r.tasks.is_empty())
        .count();
    let open_recoveries = obs
        .recoveries
        .iter()
        .filter(|r| r.done_at.is_none())
        .count();
    let lease = Duration::from_millis(setup.lease_ms);
    let in_leases = |d: Duration| d.as_secs_f64() / lease.as_secs_f64();
    let failed = checks.iter().filter(|c| !c.passed()).count();

    let _ = writeln!(
        s,
        "### Chaos run{}: seed {}, {} s, {} workers (slots {:?}), lease {} ms, {} tasks/s, max {} in flight, {}",
        setup
            .stream_bands
            .map_or(String::new(), |b| format!(" (stream queue, {b} bands)")),
        setup.seed,
        setup.duration.as_secs(),
        setup.workers,
        setup.slots,
        setup.lease_ms,
        setup.rate,
        setup.max_in_flight,
        setup.redis
    );
    let _ = writeln!(s);
    let _ = writeln!(s, "| figure | value |");
    let _ = writeln!(s, "| --- | --- |");
    let mut row = |k: &str, v: String| {
        let _ = writeln!(s, "| {k} | {v} |");
    };
    row("tasks submitted", ledger.records.len().to_string());
    for (label, n) in &by_outcome {
        row(&format!("- {label}"), n.to_string());
    }
    row(
        "calls repeated after a connection error (same id)",
        repeats.to_string(),
    );
    row(
        "task latency p50 / p99 / max (ms)",
        format!(
            "{} / {} / {}",
            quantile(&latencies, 0.5).map_or("-".into(), ms),
            quantile(&latencies, 0.99).map_or("-".into(), ms),
            latencies.last().copied().map_or("-".into(), ms)
        ),
    );
    row("peak in flight", ledger.peak_in_flight.to_string());
    row(
        "kill -9 / SIGSTOP > lease / SIGTERM",
        format!("{} / {} / {}", faults.kills, faults.stops, faults.terms),
    );
    row(
        "restarts same id / new ids / Redis kill -9 + restart",
        format!(
            "{} / {} / {}",
            faults.restarts_same_id, faults.new_ids, faults.redis_restarts
        ),
    );
    let mut drains = faults.drains.clone();
    drains.sort();
    row(
        "SIGTERM drain time p50 / max (ms)",
        format!(
            "{} / {}",
            quantile(&drains, 0.5).map_or("-".into(), ms),
            drains.last().copied().map_or("-".into(), ms)
        ),
    );
    row(
        "recovery after kill -9: p50 / max",
        match (quantile(&recoveries, 0.5), recoveries.last()) {
            (Some(p50), Some(max)) => format!(
                "{} ms ({:.2} leases) / {} ms ({:.2} leases), n = {} (+{} kills of idle workers{})",
                ms(p50),
                in_leases(p50),
                ms(*max),
                in_leases(*max),
                recoveries.len(),
                idle_kills,
                if open_recoveries > 0 {
                    format!(", {open_recoveries} never closed")
                } else {
                    String::new()
                }
            ),
            _ => format!("- (no kill of a busy worker; {idle_kills} idle)"),
        },
    );
    if let Some(bands) = setup.stream_bands {
        row(
            "pending-list samples / over the bound (2 x slots + bands)",
            format!(
                "{} / {} ({} samples failed: Redis down)",
                obs.samples, obs.violations, obs.sample_errors
            ),
        );
        row(
            "worker samples holding more entries than slots (endings in flight, surplus reads)",
            match &obs.held_peak {
                Some((w, held, slots)) => format!(
                    "{} (peak: {w} held {held} with {slots} slots, {bands} bands)",
                    obs.held_above_slots
                ),
                None => obs.held_above_slots.to_string(),
            },
        );
        row(
            "ending audit (APPENDs to markers): tasks seen / subscription breaks",
            if obs.ending_audit {
                format!("{} / {}", obs.ending_appends.len(), obs.ending_audit_breaks)
            } else {
                "not run (needs the private Redis)".into()
            },
        );
        let mut answers: BTreeMap<String, usize> = BTreeMap::new();
        for answer in ledger.cancels.values() {
            let key = match answer {
                Ok(state) => format!("found {state}"),
                Err(e) if e.contains("not found") => "not found".into(),
                Err(_) => "error".into(),
            };
            *answers.entry(key).or_insert(0) += 1;
        }
        row(
            "planned cancels (answers)",
            format!(
                "{} ({})",
                ledger.cancels.len(),
                answers
                    .iter()
                    .map(|(k, n)| format!("{k}: {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        row(
            "attempts: max ending attempt",
            format!(
                "{} (hand-outs without an attempt are not counted on a stream queue)",
                audit.max_att
            ),
        );
    } else {
        row(
            "capacity samples / violations",
            format!(
                "{} / {} ({} samples failed: Redis down)",
                obs.samples, obs.violations, obs.sample_errors
            ),
        );
        row(
            "attempts: max att / hand-outs without an attempt (total, max per task)",
            format!(
                "{} / {}, {}",
                audit.max_att, audit.free_handouts, audit.max_free_handouts
            ),
        );
    }
    row("lost", audit.lost.to_string());
    row("duplicates", audit.duplicates.to_string());
    row("checks failed", format!("{failed} of {}", checks.len()));
    row("wall time (s)", format!("{:.1}", setup.wall.as_secs_f64()));
    let _ = writeln!(s);
    for c in checks {
        let _ = writeln!(s, "{} {}", if c.passed() { "PASS" } else { "FAIL" }, c.name);
        for p in &c.problems {
            let _ = writeln!(s, "     - {p}");
        }
        if c.more > 0 {
            let _ = writeln!(s, "     - ... and {} more", c.more);
        }
    }
    s
}
