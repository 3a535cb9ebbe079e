//! The verdict of a run on a stream queue (`--stream-queue`, protocol v3,
//! docs/PROTOCOL-V3.md): after the settle, the client's outcomes are
//! compared with the task markers (`m:<id>`: the ending overwrites the
//! place), the stored output of each ending attempt (`o:<id>:<attempt>`),
//! what the observer saw (held entries, one `APPEND` per ending) and what
//! must be empty (meta `n`, the bands and their pending lists, the
//! deadline set). A stream queue keeps no task hash and no `ended` stream,
//! so the v2 checks of `verify` do not apply; each check here has a name,
//! passes or fails, and says why.

use std::collections::{HashMap, HashSet};

use redis::aio::ConnectionManager;
use redis::Value;
use rtq_core::functions::v3::{self, Marker};
use rtq_core::keys::QueueKeys;

use super::load::{ClientOutput, Ledger, Outcome};
use super::observe::Observations;
use super::observe_stream::{hard_bound, summary_total};
use super::verify::{Audit, Check};

/// What Redis holds for the ledger's tasks.
#[derive(Debug, Default)]
pub struct Stored {
    /// Each task's marker as read (`None`: no marker).
    pub markers: HashMap<String, Option<Vec<u8>>>,
    /// The output list of each ended task's ending attempt (attempt >= 1).
    pub outputs: HashMap<String, Vec<Vec<u8>>>,
}

/// Reads the markers of `ids` and the output of each ending attempt, 200
/// tasks per round trip.
///
/// # Errors
/// Redis errors.
pub async fn read_stored(
    conn: &mut ConnectionManager,
    keys: &QueueKeys,
    ids: &[String],
) -> redis::RedisResult<Stored> {
    let mut stored = Stored::default();
    for batch in ids.chunks(200) {
        let mut pipe = redis::pipe();
        for id in batch {
            pipe.cmd("GET").arg(v3::marker_key(keys, id));
        }
        let raw: Vec<Option<Vec<u8>>> = pipe.query_async(conn).await?;
        stored.markers.extend(batch.iter().cloned().zip(raw));
    }
    let ended: Vec<(String, u64)> = ids
        .iter()
        .filter_map(|id| match parsed(&stored.markers, id) {
            Some(Marker::Ended { attempt, .. }) if attempt > 0 => Some((id.clone(), attempt)),
            _ => None,
        })
        .collect();
    for batch in ended.chunks(200) {
        let mut pipe = redis::pipe();
        for (id, attempt) in batch {
            pipe.cmd("LRANGE")
                .arg(v3::output_key(keys, id, *attempt))
                .arg(0)
                .arg(-1);
        }
        let lists: Vec<Vec<Vec<u8>>> = pipe.query_async(conn).await?;
        stored
            .outputs
            .extend(batch.iter().map(|(id, _)| id.clone()).zip(lists));
    }
    Ok(stored)
}

fn parsed(markers: &HashMap<String, Option<Vec<u8>>>, id: &str) -> Option<Marker> {
    markers
        .get(id)
        .and_then(|m| m.as_deref())
        .and_then(Marker::parse)
}

/// What must be empty (or hold only ended tasks) once every task ended.
#[derive(Clone, Debug, Default)]
pub struct Leftovers {
    /// Meta `n` (tasks queued or running); `None` if absent.
    pub n: Option<i64>,
    /// Per band: entries in the pending list (`XPENDING` summary).
    pub pending: Vec<i64>,
    /// Per band: entries in the stream (`XLEN`).
    pub entries: Vec<i64>,
    /// Members of the deadline set `dl` (ended tasks' members go lazily).
    pub deadline_members: u64,
    /// Members of `dl` whose task still lives (its marker is a place).
    pub deadline_live: Vec<String>,
    /// Markers in Redis of ids the client never submitted.
    pub unknown: Vec<String>,
    /// Output lists `o:<id>:<attempt>` that are not the ending attempt's
    /// (a void attempt's output is deleted with it).
    pub stray_outputs: Vec<String>,
}

impl Leftovers {
    /// True when nothing is left.
    pub fn clean(&self) -> bool {
        self.n.unwrap_or(0) == 0
            && self.pending.iter().all(|n| *n == 0)
            && self.entries.iter().all(|n| *n == 0)
            && self.deadline_live.is_empty()
            && self.unknown.is_empty()
            && self.stray_outputs.is_empty()
    }
}

/// Keys under `prefix` (SCAN), returned without the prefix.
async fn scan_suffixes(
    conn: &mut ConnectionManager,
    prefix: &str,
) -> redis::RedisResult<Vec<String>> {
    let pattern = format!("{}*", glob_escape(prefix));
    let mut cursor: u64 = 0;
    let mut out = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        out.extend(
            batch
                .into_iter()
                .filter_map(|k| k.strip_prefix(prefix).map(str::to_string)),
        );
        if next == 0 {
            return Ok(out);
        }
        cursor = next;
    }
}

fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Reads what must be empty once every task ended; `known` are the ids the
/// client submitted.
///
/// # Errors
/// Redis errors.
pub async fn leftovers(
    conn: &mut ConnectionManager,
    keys: &QueueKeys,
    bands: u8,
    known: &HashSet<String>,
) -> redis::RedisResult<Leftovers> {
    let mut pipe = redis::pipe();
    pipe.atomic();
    pipe.cmd("HGET").arg(keys.meta()).arg("n");
    for b in 0..bands {
        pipe.cmd("XPENDING")
            .arg(v3::band_key(keys, b))
            .arg(v3::GROUP);
        pipe.cmd("XLEN").arg(v3::band_key(keys, b));
    }
    let replies: Vec<Value> = pipe.query_async(conn).await?;
    let n = match replies.first() {
        Some(Value::BulkString(b)) => String::from_utf8_lossy(b).parse().ok(),
        Some(Value::Int(n)) => Some(*n),
        _ => None,
    };
    let mut pending = Vec::new();
    let mut entries = Vec::new();
    for b in 0..usize::from(bands) {
        pending.push(replies.get(1 + 2 * b).map_or(-1, summary_total));
        entries.push(match replies.get(2 + 2 * b) {
            Some(Value::Int(n)) => *n,
            _ => -1,
        });
    }
    let dl_key = format!("{}dl", keys.prefix());
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(&dl_key)
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await?;
    let mut deadline_live = Vec::new();
    for batch in members.chunks(200) {
        let mut pipe = redis::pipe();
        for id in batch {
            pipe.cmd("GET").arg(v3::marker_key(keys, id));
        }
        let raw: Vec<Option<Vec<u8>>> = pipe.query_async(conn).await?;
        for (id, m) in batch.iter().zip(raw) {
            if matches!(
                m.as_deref().and_then(Marker::parse),
                Some(Marker::Place { .. })
            ) {
                deadline_live.push(id.clone());
            }
        }
    }
    let mut unknown: Vec<String> = scan_suffixes(conn, &v3::marker_key(keys, ""))
        .await?
        .into_iter()
        .filter(|id| !known.contains(id))
        .collect();
    unknown.sort();
    // Output lists: each must be its task's ending attempt's.
    let outputs = scan_suffixes(conn, &format!("{}o:", keys.prefix())).await?;
    let mut stray_outputs = Vec::new();
    for batch in outputs.chunks(200) {
        let mut pipe = redis::pipe();
        let mut parts = Vec::new();
        for suffix in batch {
            let Some((id, attempt)) = suffix.rsplit_once(':') else {
                stray_outputs.push(suffix.clone());
                continue;
            };
            pipe.cmd("GET").arg(v3::marker_key(keys, id));
            parts.push((suffix.clone(), attempt.parse::<u64>().ok()));
        }
        if parts.is_empty() {
            continue;
        }
        let raw: Vec<Option<Vec<u8>>> = pipe.query_async(conn).await?;
        for ((suffix, attempt), m) in parts.into_iter().zip(raw) {
            let ending = match m.as_deref().and_then(Marker::parse) {
                Some(Marker::Ended { attempt, .. }) => Some(attempt),
                _ => None,
            };
            if attempt.is_none() || ending != attempt {
                stray_outputs.push(format!(
                    "o:{suffix} (the task's marker: {})",
                    match ending {
                        Some(a) => format!("ended at attempt {a}"),
                        None => "not an ending".into(),
                    }
                ));
            }
        }
    }
    stray_outputs.sort();
    Ok(Leftovers {
        n,
        pending,
        entries,
        deadline_members: members.len() as u64,
        deadline_live,
        unknown,
        stray_outputs,
    })
}

/// Everything the stream verdict needs.
pub struct Evidence<'a> {
    /// The client's records.
    pub ledger: &'a Ledger,
    /// Markers and outputs.
    pub stored: &'a Stored,
    /// What the observer saw.
    pub obs: &'a Observations,
    /// What must be empty.
    pub leftovers: &'a Leftovers,
    /// Bands of the queue.
    pub bands: u8,
    /// Problems of the fleet (drains that hung, unexpected exits, strays).
    pub fleet_problems: &'a [String],
}

fn joined(chunks: &[Vec<u8>]) -> String {
    chunks
        .iter()
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect()
}

/// Runs every check; returns them with the audit figures.
pub fn verdict(ev: &Evidence<'_>) -> (Vec<Check>, Audit) {
    let mut audit = Audit::default();
    let mut outcome_once = Check::new("every submitted task got exactly one outcome");
    let mut ended =
        Check::new("every task has an ending in Redis (marker ended: nothing lost or stuck)");
    let mut agree =
        Check::new("the client's outcome equals the marker's ending (state, kind, attempt)");
    let mut expected = Check::new("outcomes are explained by the plan and the faults");
    let mut intact = Check::new(
        "results intact: the client's result and text equal the stored result and the ending attempt's output",
    );
    let mut dup = Check::new("duplicates = 0 (one ending per task: one APPEND to its marker)");
    let mut attempts = Check::new("ending attempt within max_attempts");
    let mut capacity =
        Check::new("entries held during chaos: at most 2 x slots + bands per worker");
    let mut empty = Check::new(
        "queue empty at the end (meta n, pending lists, bands, live members of dl, strays)",
    );
    let mut fleet = Check::new("workers drained, exited and were swept as expected");

    let obs = ev.obs;
    let audit_complete = obs.ending_audit && obs.ending_audit_breaks == 0;
    if !obs.ending_audit {
        dup.fail(
            "the ending audit did not run (it needs the private Redis): duplicates unchecked"
                .into(),
        );
    }
    for id in &ev.ledger.order {
        let record = &ev.ledger.records[id];
        let plan = &record.plan;
        if record.outcomes == 0 {
            outcome_once.fail(format!("{id}: no outcome"));
        } else if record.outcomes > 1 {
            audit.duplicates += 1;
            outcome_once.fail(format!("{id}: {} outcomes", record.outcomes));
        }
        let appends = obs.ending_appends.get(id).copied().unwrap_or(0);
        if appends > 1 {
            audit.duplicates += 1;
            dup.fail(format!(
                "{id}: ended {appends} times (APPENDs to its marker)"
            ));
        }
        let marker = match ev.stored.markers.get(id) {
            None | Some(None) => {
                audit.lost += 1;
                ended.fail(format!("{id}: no marker in Redis"));
                continue;
            }
            Some(Some(raw)) => match Marker::parse(raw) {
                Some(m) => m,
                None => {
                    ended.fail(format!(
                        "{id}: unreadable marker {:?}",
                        String::from_utf8_lossy(&raw[..raw.len().min(80)])
                    ));
                    continue;
                }
            },
        };
        let Marker::Ended {
            state,
            attempt,
            worker,
            kind,
            payload,
            ..
        } = marker
        else {
            ended.fail(format!("{id}: still placed ({marker:?})"));
            continue;
        };
        if appends == 0 && audit_complete {
            dup.fail(format!(
                "{id}: ended ({state}) without an APPEND seen by the audit"
            ));
        }
        audit.max_att = audit.max_att.max(attempt);
        let max = u64::from(plan.max_attempts);
        if attempt > max {
            attempts.fail(format!("{id}: ended at attempt {attempt} > max {max}"));
        }
        if kind == "worker_lost" && attempt != max {
            attempts.fail(format!(
                "{id}: worker_lost at attempt {attempt}, max {max} (attempts left, or beyond)"
            ));
        }
        let payload_text = String::from_utf8_lossy(&payload).into_owned();
        let (st, ek) = (state.as_str(), kind.as_str());
        match ev.ledger.cancels.get(id) {
            // The cancel found the task alive: it wrote the ending.
            Some(Ok(was)) if !was.is_terminal() && (st, ek) != ("cancelled", "cancelled") => {
                agree.fail(format!(
                    "{id}: the cancel found it {was} (and ended it), Redis says {st}/{ek}"
                ));
            }
            Some(Ok(was)) if was.is_terminal() && st != was.as_str() => {
                agree.fail(format!(
                    "{id}: the cancel found it ended {was}, Redis says {st}/{ek}"
                ));
            }
            Some(Err(e)) if !e.contains("not found") => {
                expected.fail(format!("{id}: the planned cancel failed: {e}"));
            }
            _ => {}
        }
        let Some(outcome) = &record.outcome else {
            continue;
        };
        match outcome {
            Outcome::Done {
                attempt: got,
                intact: ok,
            } => {
                if st != "done" {
                    agree.fail(format!("{id}: client got a result, Redis says {st}/{ek}"));
                }
                if *got != attempt {
                    agree.fail(format!(
                        "{id}: result from attempt {got}, the marker's ending is attempt {attempt}"
                    ));
                }
                if *got == 0 {
                    attempts.fail(format!("{id}: done at attempt 0"));
                }
                if !ok {
                    intact.fail(format!(
                        "{id}: output of {} tokens ({}) differs from the mock's",
                        plan.tokens,
                        if plan.stream { "stream" } else { "run" }
                    ));
                }
                let stored_result: Option<serde_json::Value> =
                    serde_json::from_slice(&payload).ok();
                let client_result = match ev.ledger.outputs.get(id) {
                    Some(ClientOutput::Result(v)) | Some(ClientOutput::Text(_, v)) => Some(v),
                    None => None,
                };
                if st == "done" && stored_result.as_ref() != client_result {
                    intact.fail(format!(
                        "{id}: the client's result {client_result:?} differs from the stored {payload_text:?}"
                    ));
                }
                let stored_text = ev.stored.outputs.get(id).map(|c| joined(c));
                if st == "done" && stored_text.as_deref() != Some(plan.expected_text().as_str()) {
                    intact.fail(format!(
                        "{id}: the stored output of attempt {attempt} ({} chars) is not the mock's {} tokens",
                        stored_text.as_ref().map_or(0, String::len),
                        plan.tokens
                    ));
                }
                if let Some(ClientOutput::Text(text, _)) = ev.ledger.outputs.get(id) {
                    if stored_text.as_deref() != Some(text.as_str()) {
                        intact.fail(format!(
                            "{id}: the client assembled {} chars, o:{id}:{attempt} holds {}",
                            text.len(),
                            stored_text.as_ref().map_or(0, String::len)
                        ));
                    }
                }
                if plan.planned_fail {
                    expected.fail(format!("{id}: planned to fail, but got a result"));
                }
            }
            Outcome::Failed(reason) => {
                if (st, ek) != ("failed", "handler") {
                    agree.fail(format!("{id}: client got Failed, Redis says {st}/{ek}"));
                }
                if *reason != payload_text {
                    agree.fail(format!(
                        "{id}: client got reason {reason:?}, the marker holds {payload_text:?}"
                    ));
                }
                if !plan.planned_fail {
                    expected.fail(format!(
                        "{id}: handler failure without a planned failure: {reason} (worker {worker})"
                    ));
                }
            }
            Outcome::WorkerLost => {
                if (st, ek) != ("failed", "worker_lost") {
                    agree.fail(format!("{id}: client got WorkerLost, Redis says {st}/{ek}"));
                }
            }
            Outcome::TimedOut(queued) => {
                let want = if *queued {
                    "timeout_queued"
                } else {
                    "timeout_running"
                };
                if (st, ek) != ("expired", want) {
                    agree.fail(format!(
                        "{id}: client got TimedOut ({want}), Redis says {st}/{ek}"
                    ));
                }
                if plan.deadline.is_none() {
                    expected.fail(format!("{id}: timed out without a deadline"));
                }
            }
            Outcome::Cancelled => {
                if (st, ek) != ("cancelled", "cancelled") {
                    agree.fail(format!("{id}: client got Cancelled, Redis says {st}/{ek}"));
                }
                if plan.cancel_after.is_none() {
                    expected.fail(format!("{id}: cancelled, but no cancel was planned"));
                }
            }
            other => expected.fail(format!(
                "{id}: {} ({other:?}); Redis says {st}/{ek} at attempt {attempt}",
                other.label()
            )),
        }
    }
    if obs.violations > 0 {
        for v in &obs.violation_details {
            capacity.fail(if v.slots < 0 {
                format!(
                    "at {:.1} s: {} entries held by {}, a worker id the run never started",
                    v.at.as_secs_f64(),
                    v.owned,
                    v.worker
                )
            } else {
                format!(
                    "at {:.1} s worker {}: {} entries held, slots {} (bound {})",
                    v.at.as_secs_f64(),
                    v.worker,
                    v.owned,
                    v.slots,
                    hard_bound(v.slots, ev.bands)
                )
            });
        }
        capacity.more = obs.violations as usize - capacity.problems.len();
    }
    if obs.samples == 0 {
        capacity.fail("no sample of the pending lists was taken".into());
    }
    let l = ev.leftovers;
    match l.n {
        Some(0) => {}
        Some(n) => empty.fail(format!("meta n is {n}")),
        None => empty.fail("meta n is missing".into()),
    }
    for (b, n) in l.pending.iter().enumerate() {
        if *n != 0 {
            empty.fail(format!("band {b}: {n} entries in the pending list"));
        }
    }
    for (b, n) in l.entries.iter().enumerate() {
        if *n != 0 {
            empty.fail(format!("band {b}: XLEN {n}"));
        }
    }
    for id in &l.deadline_live {
        empty.fail(format!("dl holds {id}, whose task still lives"));
    }
    for id in &l.unknown {
        empty.fail(format!("task {id} has a marker but was never submitted"));
    }
    for o in &l.stray_outputs {
        empty.fail(format!("output list of a void attempt left: {o}"));
    }
    for p in ev.fleet_problems {
        fleet.fail(p.clone());
    }
    let checks = vec![
        outcome_once,
        ended,
        agree,
        expected,
        intact,
        dup,
        attempts,
        capacity,
        empty,
        fleet,
    ];
    (checks, audit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::load::{Plan, Record};
    use std::time::Duration;

    fn plan(id: &str) -> Plan {
        Plan {
            id: id.into(),
            tokens: 2,
            stream: true,
            deadline: None,
            max_attempts: 3,
            planned_fail: false,
            priority: 500,
            cancel_after: None,
        }
    }

    const RESULT: &str = r#"{"model":"mock","usage":{"completion_tokens":2}}"#;

    fn ending(state: &str, attempt: u64, kind: &str, payload: &str) -> Vec<u8> {
        format!("{state}\t{attempt}\t1\tw0\t1-0\t{kind}\n{payload}").into_bytes()
    }

    /// One streamed task `t1`, done at attempt 2 with one ending: every
    /// check passes; `tweak` breaks something first.
    fn run(
        tweak: impl FnOnce(&mut Ledger, &mut Stored, &mut Observations, &mut Leftovers),
    ) -> Vec<Check> {
        let mut ledger = Ledger::default();
        ledger.order.push("t1".into());
        ledger.records.insert(
            "t1".into(),
            Record {
                plan: plan("t1"),
                outcome: Some(Outcome::Done {
                    attempt: 2,
                    intact: true,
                }),
                outcomes: 1,
                repeats: 0,
                latency: Some(Duration::from_millis(5)),
            },
        );
        let result: serde_json::Value = serde_json::from_str(RESULT).unwrap();
        ledger
            .outputs
            .insert("t1".into(), ClientOutput::Text("tok0 tok1 ".into(), result));
        let mut stored = Stored::default();
        stored
            .markers
            .insert("t1".into(), Some(ending("done", 2, "", RESULT)));
        stored
            .outputs
            .insert("t1".into(), vec![b"tok0 ".to_vec(), b"tok1 ".to_vec()]);
        let mut obs = Observations {
            samples: 1,
            ending_audit: true,
            ..Default::default()
        };
        obs.ending_appends.insert("t1".into(), 1);
        let mut leftovers = Leftovers {
            n: Some(0),
            pending: vec![0, 0],
            entries: vec![0, 0],
            ..Default::default()
        };
        tweak(&mut ledger, &mut stored, &mut obs, &mut leftovers);
        let (checks, _) = verdict(&Evidence {
            ledger: &ledger,
            stored: &stored,
            obs: &obs,
            leftovers: &leftovers,
            bands: 2,
            fleet_problems: &[],
        });
        checks
    }

    fn failed(checks: &[Check]) -> Vec<&'static str> {
        checks
            .iter()
            .filter(|c| !c.passed())
            .map(|c| c.name)
            .collect()
    }

    fn fails_with(checks: &[Check], prefix: &str) -> bool {
        failed(checks).iter().any(|n| n.starts_with(prefix))
    }

    #[test]
    fn a_clean_task_passes_every_check() {
        assert_eq!(failed(&run(|_, _, _, _| {})), Vec::<&str>::new());
    }

    #[test]
    fn a_task_still_placed_or_without_a_marker_is_caught() {
        let checks = run(|_, s, _, _| {
            s.markers
                .insert("t1".into(), Some(b"0 1-0 1000 -".to_vec()));
        });
        assert!(fails_with(&checks, "every task has an ending"));
        let checks = run(|_, s, _, _| {
            s.markers.insert("t1".into(), None);
        });
        assert!(fails_with(&checks, "every task has an ending"));
    }

    #[test]
    fn a_result_of_another_attempt_or_state_disagrees() {
        let checks = run(|_, s, _, _| {
            s.markers
                .insert("t1".into(), Some(ending("done", 3, "", RESULT)));
        });
        assert!(fails_with(&checks, "the client's outcome equals"));
        let checks = run(|_, s, _, _| {
            s.markers
                .insert("t1".into(), Some(ending("failed", 2, "handler", "x")));
        });
        assert!(fails_with(&checks, "the client's outcome equals"));
    }

    #[test]
    fn a_stored_output_other_than_the_client_s_text_is_caught() {
        let checks = run(|_, s, _, _| {
            s.outputs.insert("t1".into(), vec![b"tok0 ".to_vec()]);
        });
        assert!(fails_with(&checks, "results intact"));
        let checks = run(|l, _, _, _| {
            l.outputs.insert(
                "t1".into(),
                ClientOutput::Text("tok0 tok1 ".into(), serde_json::json!({"other": 1})),
            );
        });
        assert!(fails_with(&checks, "results intact"));
    }

    #[test]
    fn two_endings_or_none_seen_are_caught() {
        let checks = run(|_, _, o, _| {
            o.ending_appends.insert("t1".into(), 2);
        });
        assert!(fails_with(&checks, "duplicates"));
        let checks = run(|_, _, o, _| {
            o.ending_appends.clear();
        });
        assert!(fails_with(&checks, "duplicates"));
        // A broken subscription: no APPEND seen is not a finding.
        let checks = run(|_, _, o, _| {
            o.ending_appends.clear();
            o.ending_audit_breaks = 1;
        });
        assert!(!fails_with(&checks, "duplicates"));
    }

    #[test]
    fn a_cancel_that_found_the_task_alive_is_its_ending() {
        // The cancel answered Running, so it ended the task: a done marker
        // means a second ending overwrote it.
        let checks = run(|l, _, _, _| {
            l.cancels
                .insert("t1".into(), Ok(rtq_core::TaskState::Running));
        });
        assert!(fails_with(&checks, "the client's outcome equals"));
        let cancelled = ending("cancelled", 1, "cancelled", "chaos: planned cancel");
        let checks = run(|l, s, _, _| {
            l.cancels
                .insert("t1".into(), Ok(rtq_core::TaskState::Running));
            l.records.get_mut("t1").unwrap().outcome = Some(Outcome::Cancelled);
            l.records.get_mut("t1").unwrap().plan.cancel_after = Some(Duration::from_millis(50));
            s.markers.insert("t1".into(), Some(cancelled.clone()));
        });
        assert_eq!(failed(&checks), Vec::<&str>::new());
        // Cancelled without a planned cancel.
        let checks = run(|l, s, _, _| {
            l.records.get_mut("t1").unwrap().outcome = Some(Outcome::Cancelled);
            s.markers.insert("t1".into(), Some(cancelled.clone()));
        });
        assert!(fails_with(&checks, "outcomes are explained"));
    }

    #[test]
    fn attempts_beyond_the_maximum_are_caught() {
        let checks = run(|l, s, _, _| {
            s.markers
                .insert("t1".into(), Some(ending("done", 4, "", RESULT)));
            l.records.get_mut("t1").unwrap().outcome = Some(Outcome::Done {
                attempt: 4,
                intact: true,
            });
        });
        assert!(fails_with(&checks, "ending attempt within"));
    }

    #[test]
    fn leftovers_and_held_entries_beyond_the_bound_are_caught() {
        for tweak in [
            (|l: &mut Leftovers| l.n = Some(1)) as fn(&mut Leftovers),
            |l| l.pending[1] = 1,
            |l| l.entries[0] = 1,
            |l| l.deadline_live.push("t1".into()),
            |l| l.stray_outputs.push("o:t1:1".into()),
        ] {
            let checks = run(|_, _, _, l| tweak(l));
            assert!(fails_with(&checks, "queue empty"), "{checks:?}");
        }
        let checks = run(|_, _, o, _| {
            o.violations = 1;
            o.violation_details.push(crate::chaos::observe::Violation {
                at: Duration::ZERO,
                worker: "w0".into(),
                free: 0,
                owned: 9,
                slots: 2,
                busy: 0,
            });
        });
        assert!(fails_with(&checks, "entries held"));
    }
}
