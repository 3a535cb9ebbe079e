//! The verdict: after the chaos, every check compares the client's outcomes,
//! what the observer saw and what Redis holds (PROTOCOL.md sections 4-6, 9
//! and 15). Each check has a name, passes or fails, and says why.

use std::collections::{HashMap, HashSet};

use redis::aio::ConnectionManager;
use rtq_core::keys::QueueKeys;

use super::fleet::Profile;
use super::load::{Ledger, Outcome, Plan};
use super::observe::Observations;

/// One named check.
#[derive(Clone, Debug)]
pub struct Check {
    /// What it asserts.
    pub name: &'static str,
    /// Findings; empty means it passed.
    pub problems: Vec<String>,
    /// Problems beyond those kept in `problems`.
    pub more: usize,
}

/// Problems listed per check (all are counted).
const KEEP: usize = 8;

impl Check {
    /// A check named `name`, passing until it fails.
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            problems: Vec::new(),
            more: 0,
        }
    }

    /// Records a finding.
    pub fn fail(&mut self, problem: String) {
        if self.problems.len() < KEEP {
            self.problems.push(problem);
        } else {
            self.more += 1;
        }
    }

    /// True if nothing was found.
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Figures the checks compute on the way (for the summary).
#[derive(Clone, Debug, Default)]
pub struct Audit {
    /// Tasks whose hash is missing from Redis.
    pub lost: usize,
    /// Tasks with more than one ending in the `ended` stream, or more than
    /// one outcome at the client.
    pub duplicates: usize,
    /// Highest `att` of any task.
    pub max_att: u64,
    /// Highest number of hand-outs of one task that used no attempt
    /// (deliveries handed back unstarted).
    pub max_free_handouts: u64,
    /// Total such hand-outs.
    pub free_handouts: u64,
    /// Entries of the `ended` stream never read (trimmed before the
    /// observer got to them).
    pub ended_gap: u64,
}

/// A task hash, as read.
type Hash = HashMap<String, String>;

fn num(h: &Hash, field: &str) -> u64 {
    h.get(field).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn is_terminal(st: &str) -> bool {
    matches!(st, "done" | "failed" | "cancelled" | "expired")
}

/// Reads the task hashes of the ledger, 200 per round trip.
///
/// # Errors
/// Redis errors.
pub async fn read_tasks(
    conn: &mut ConnectionManager,
    keys: &QueueKeys,
    ids: &[String],
) -> redis::RedisResult<HashMap<String, Hash>> {
    let mut out = HashMap::new();
    for batch in ids.chunks(200) {
        let mut pipe = redis::pipe();
        for id in batch {
            pipe.hgetall(keys.task(id));
        }
        let hashes: Vec<Hash> = pipe.query_async(conn).await?;
        out.extend(batch.iter().cloned().zip(hashes));
    }
    Ok(out)
}

/// Ids of every task hash in the queue (SCAN over its prefix).
///
/// # Errors
/// Redis errors.
pub async fn task_ids_in_redis(
    conn: &mut ConnectionManager,
    keys: &QueueKeys,
) -> redis::RedisResult<HashSet<String>> {
    let prefix = keys.task("");
    let pattern = format!("{}*", glob_escape(&prefix));
    let mut cursor: u64 = 0;
    let mut ids = HashSet::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        ids.extend(
            batch
                .into_iter()
                .filter_map(|k| k.strip_prefix(&prefix).map(str::to_string)),
        );
        if next == 0 {
            return Ok(ids);
        }
        cursor = next;
    }
}

/// Escapes the glob characters of a key prefix (`{`, `}` are literal in
/// SCAN patterns, `[`, `*`, `?`, `\` are not).
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

/// Counts of the queue's structures that must be empty at the end.
#[derive(Clone, Debug, Default)]
pub struct Leftovers {
    /// `ZCARD pending`.
    pub pending: u64,
    /// `ZCARD delayed`.
    pub delayed: u64,
    /// `ZCARD deadlines` (unended tasks with a deadline).
    pub deadlines: u64,
    /// Worker ids whose `wq:` set is not empty, with its size.
    pub owned: Vec<(String, u64)>,
    /// Task ids in Redis the client never submitted.
    pub unknown: Vec<String>,
}

/// Reads what must be empty once every task ended.
///
/// # Errors
/// Redis errors.
pub async fn leftovers(
    conn: &mut ConnectionManager,
    keys: &QueueKeys,
    profiles: &[Profile],
    known: &HashSet<String>,
) -> redis::RedisResult<Leftovers> {
    let (pending, delayed, deadlines): (u64, u64, u64) = redis::pipe()
        .zcard(keys.pending())
        .zcard(keys.delayed())
        .zcard(keys.deadlines())
        .query_async(conn)
        .await?;
    let mut owned = Vec::new();
    for p in profiles {
        let n: u64 = redis::cmd("SCARD")
            .arg(keys.worker_tasks(&p.id))
            .query_async(conn)
            .await?;
        if n > 0 {
            owned.push((p.id.clone(), n));
        }
    }
    let mut unknown: Vec<String> = task_ids_in_redis(conn, keys)
        .await?
        .into_iter()
        .filter(|id| !known.contains(id))
        .collect();
    unknown.sort();
    Ok(Leftovers {
        pending,
        delayed,
        deadlines,
        owned,
        unknown,
    })
}

/// Everything the verdict needs.
pub struct Evidence<'a> {
    /// The client's records.
    pub ledger: &'a Ledger,
    /// Task hashes by id (read after the settle).
    pub hashes: &'a HashMap<String, Hash>,
    /// What the observer saw.
    pub obs: &'a Observations,
    /// Entries ever added to the `ended` stream.
    pub endings_added: u64,
    /// What must be empty.
    pub leftovers: &'a Leftovers,
    /// Workers whose capacity did not come back at rest:
    /// (id, free, owned, slots).
    pub at_rest: &'a [(String, i64, i64, i64)],
    /// Problems of the fleet (drains that hung, unexpected exits, strays).
    pub fleet_problems: &'a [String],
}

/// Runs every check; returns them with the audit figures.
pub fn verdict(ev: &Evidence<'_>) -> (Vec<Check>, Audit) {
    let mut audit = Audit::default();
    let mut outcome_once = Check::new("every submitted task got exactly one outcome");
    let mut terminal = Check::new("every task in Redis is terminal (nothing lost or stuck)");
    let mut agree = Check::new("the client's outcome agrees with the task hash");
    let mut expected = Check::new("outcomes are explained by the plan and the faults");
    let mut intact = Check::new("results are intact (streamed text, token counts)");
    let mut dup = Check::new("duplicates = 0 (one ending per task, result from the last attempt)");
    let mut attempts = Check::new("attempts within max_attempts (fails <= max, no loops)");
    let mut capacity = Check::new("capacity during chaos: free + owned <= slots, busy <= slots");
    let mut rest = Check::new("capacity at rest: every live worker has all its slots free");
    let mut empty = Check::new("queue empty at the end (pending, delayed, deadlines, owned)");
    let mut fleet = Check::new("workers drained, exited and were swept as expected");

    let endings_lost = ev.endings_added.saturating_sub(ev.obs.ended_read);
    audit.ended_gap = endings_lost;
    if endings_lost > 0 {
        dup.fail(format!(
            "{endings_lost} entries of the ended stream were trimmed before they were read: \
             the duplicate audit is incomplete"
        ));
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
        let Some(h) = ev.hashes.get(id).filter(|h| !h.is_empty()) else {
            audit.lost += 1;
            terminal.fail(format!("{id}: no task hash in Redis"));
            continue;
        };
        let st = h.get("st").map(String::as_str).unwrap_or("");
        let ek = h.get("ek").map(String::as_str).unwrap_or("");
        if !is_terminal(st) {
            terminal.fail(format!("{id}: state {st:?} (worker {:?})", h.get("w")));
        }
        let att = num(h, "att");
        let fails = num(h, "fails");
        let max = num(h, "max");
        let e_fields: Vec<u64> = h
            .keys()
            .filter_map(|k| k.strip_prefix("e:"))
            .filter_map(|n| n.parse().ok())
            .collect();
        audit.max_att = audit.max_att.max(att);
        check_attempts(
            id,
            plan,
            h,
            att,
            fails,
            max,
            &e_fields,
            &mut attempts,
            &mut audit,
        );
        let endings = ev.obs.endings.get(id).copied().unwrap_or(0);
        if endings > 1 {
            audit.duplicates += 1;
            dup.fail(format!("{id}: ended {endings} times"));
        } else if endings == 0 && endings_lost == 0 && is_terminal(st) {
            dup.fail(format!(
                "{id}: ended ({st}) without an entry in the ended stream"
            ));
        }
        let Some(outcome) = &record.outcome else {
            continue;
        };
        match outcome {
            Outcome::Done {
                attempt,
                intact: ok,
            } => {
                if st != "done" {
                    agree.fail(format!("{id}: client got a result, Redis says {st}/{ek}"));
                }
                if *attempt != att {
                    dup.fail(format!(
                        "{id}: result from attempt {attempt}, the task's last attempt is {att}"
                    ));
                }
                if !ok {
                    intact.fail(format!(
                        "{id}: output of {} tokens ({}) differs from the mock's",
                        plan.tokens,
                        if plan.stream { "stream" } else { "run" }
                    ));
                }
                if plan.planned_fail {
                    expected.fail(format!("{id}: planned to fail, but got a result"));
                }
            }
            Outcome::Failed(reason) => {
                if (st, ek) != ("failed", "handler") {
                    agree.fail(format!("{id}: client got Failed, Redis says {st}/{ek}"));
                }
                if !plan.planned_fail {
                    expected.fail(format!(
                        "{id}: handler failure without a planned failure: {reason}"
                    ));
                }
            }
            Outcome::WorkerLost => {
                if (st, ek) != ("failed", "worker_lost") {
                    agree.fail(format!("{id}: client got WorkerLost, Redis says {st}/{ek}"));
                }
                if fails < max {
                    agree.fail(format!(
                        "{id}: worker_lost with attempts left ({fails}/{max})"
                    ));
                }
            }
            Outcome::TimedOut(queued) => {
                let want = if *queued {
                    "timeout_queued"
                } else {
                    "timeout_running"
                };
                if (st, ek) != ("expired", want) {
                    agree.fail(format!("{id}: client got TimedOut, Redis says {st}/{ek}"));
                }
                if plan.deadline.is_none() {
                    expected.fail(format!("{id}: timed out without a deadline"));
                }
            }
            other => expected.fail(format!("{id}: {} ({other:?})", other.label())),
        }
    }
    if ev.obs.violations > 0 {
        for v in &ev.obs.violation_details {
            capacity.fail(format!(
                "at {:.1} s worker {}: free {} + owned {} vs slots {} (busy {})",
                v.at.as_secs_f64(),
                v.worker,
                v.free,
                v.owned,
                v.slots,
                v.busy
            ));
        }
        capacity.more = ev.obs.violations as usize - capacity.problems.len();
    }
    if ev.obs.samples == 0 {
        capacity.fail("no capacity sample was taken".into());
    }
    for (w, free, owned, slots) in ev.at_rest {
        rest.fail(format!(
            "worker {w}: free {free}, owned {owned}, slots {slots}"
        ));
    }
    let l = ev.leftovers;
    for (what, n) in [
        ("pending", l.pending),
        ("delayed", l.delayed),
        ("deadlines", l.deadlines),
    ] {
        if n > 0 {
            empty.fail(format!("{what} holds {n}"));
        }
    }
    for (w, n) in &l.owned {
        empty.fail(format!("wq:{w} holds {n}"));
    }
    for id in &l.unknown {
        empty.fail(format!("task {id} is in Redis but was never submitted"));
    }
    for p in ev.fleet_problems {
        fleet.fail(p.clone());
    }
    let checks = vec![
        outcome_once,
        terminal,
        agree,
        expected,
        intact,
        dup,
        attempts,
        capacity,
        rest,
        empty,
        fleet,
    ];
    (checks, audit)
}

/// `fails <= max`, one `e:<n>` per used attempt, and the hand-outs that used
/// no attempt (deliveries handed back unstarted) bounded: PROTOCOL.md
/// section 6, "a task can never loop".
#[allow(clippy::too_many_arguments)]
fn check_attempts(
    id: &str,
    plan: &Plan,
    h: &Hash,
    att: u64,
    fails: u64,
    max: u64,
    e_fields: &[u64],
    check: &mut Check,
    audit: &mut Audit,
) {
    if max != u64::from(plan.max_attempts) {
        check.fail(format!(
            "{id}: max {max}, submitted with {}",
            plan.max_attempts
        ));
    }
    if fails > max {
        check.fail(format!("{id}: fails {fails} > max {max}"));
    }
    if e_fields.len() as u64 != fails {
        check.fail(format!(
            "{id}: fails {fails} but {} attempts have a recorded reason (e:<n>)",
            e_fields.len()
        ));
    }
    if let Some(n) = e_fields.iter().find(|n| **n == 0 || **n > att) {
        check.fail(format!("{id}: e:{n} outside attempts 1..={att}"));
    }
    // The last hand-out ended without using an attempt if the task is done,
    // or expired or was cancelled while running.
    let st = h.get("st").map(String::as_str).unwrap_or("");
    let ek = h.get("ek").map(String::as_str).unwrap_or("");
    let last_unused = u64::from(
        att > 0
            && !e_fields.contains(&att)
            && (st == "done" || ek == "timeout_running" || ek == "cancelled"),
    );
    let free = att.saturating_sub(fails + last_unused);
    audit.free_handouts += free;
    audit.max_free_handouts = audit.max_free_handouts.max(free);
}

/// The bound on hand-outs without an attempt per task: each comes from one
/// fault (a drain handing back unstarted deliveries, a process stopped or
/// restarted with deliveries in its inbox), so more than the run's faults
/// means a loop.
pub fn check_free_handouts(checks: &mut [Check], audit: &Audit, faults: u64) {
    if audit.max_free_handouts > faults.max(1) {
        if let Some(c) = checks.iter_mut().find(|c| c.name.starts_with("attempts")) {
            c.fail(format!(
                "a task was handed out {} times without using an attempt, more than the {faults} \
                 faults of the run: a loop",
                audit.max_free_handouts
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::load::Record;
    use std::time::Duration;

    fn plan(id: &str) -> Plan {
        Plan {
            id: id.into(),
            tokens: 3,
            stream: false,
            deadline: None,
            max_attempts: 3,
            planned_fail: false,
            priority: 0,
            cancel_after: None,
        }
    }

    fn hash(pairs: &[(&str, &str)]) -> Hash {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// One task `t1`, done at attempt 1, with one ending: every check
    /// passes; `tweak` breaks something first.
    fn run(tweak: impl FnOnce(&mut Ledger, &mut Hash, &mut Observations)) -> Vec<Check> {
        let mut ledger = Ledger::default();
        ledger.order.push("t1".into());
        ledger.records.insert(
            "t1".into(),
            Record {
                plan: plan("t1"),
                outcome: Some(Outcome::Done {
                    attempt: 1,
                    intact: true,
                }),
                outcomes: 1,
                repeats: 0,
                latency: Some(Duration::from_millis(5)),
            },
        );
        let mut h = hash(&[("st", "done"), ("att", "1"), ("fails", "0"), ("max", "3")]);
        let mut obs = Observations {
            samples: 1,
            ended_read: 1,
            ..Default::default()
        };
        obs.endings.insert("t1".into(), 1);
        tweak(&mut ledger, &mut h, &mut obs);
        let hashes = HashMap::from([("t1".to_string(), h)]);
        let (checks, _) = verdict(&Evidence {
            ledger: &ledger,
            hashes: &hashes,
            obs: &obs,
            endings_added: 1,
            leftovers: &Leftovers::default(),
            at_rest: &[],
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

    #[test]
    fn a_clean_task_passes_every_check() {
        assert_eq!(failed(&run(|_, _, _| {})), Vec::<&str>::new());
    }

    #[test]
    fn a_second_ending_is_a_duplicate() {
        let checks = run(|_, _, o| {
            o.endings.insert("t1".into(), 2);
        });
        assert_eq!(failed(&checks), vec![checks[5].name]);
        assert!(checks[5].name.starts_with("duplicates"));
    }

    #[test]
    fn a_result_from_an_older_attempt_is_a_duplicate() {
        let checks = run(|_, h, _| {
            h.insert("att".into(), "2".into());
        });
        assert!(failed(&checks).iter().any(|n| n.starts_with("duplicates")));
    }

    #[test]
    fn a_task_still_running_or_missing_is_caught() {
        let checks = run(|_, h, _| {
            h.insert("st".into(), "running".into());
        });
        assert!(failed(&checks).iter().any(|n| n.contains("terminal")));
        let checks = run(|_, h, _| h.clear());
        assert!(failed(&checks).iter().any(|n| n.contains("terminal")));
    }

    #[test]
    fn an_unplanned_handler_failure_is_a_finding() {
        let checks = run(|l, h, _| {
            l.records.get_mut("t1").unwrap().outcome = Some(Outcome::Failed("stopped".into()));
            *h = hash(&[
                ("st", "failed"),
                ("ek", "handler"),
                ("att", "1"),
                ("fails", "1"),
                ("e:1", "stopped"),
                ("max", "3"),
            ]);
        });
        assert_eq!(
            failed(&checks),
            vec!["outcomes are explained by the plan and the faults"]
        );
    }

    #[test]
    fn attempts_beyond_the_maximum_or_unrecorded_are_caught() {
        let checks = run(|_, h, _| {
            h.insert("fails".into(), "4".into());
        });
        assert!(failed(&checks).iter().any(|n| n.starts_with("attempts")));
    }

    #[test]
    fn free_hand_outs_beyond_the_faults_are_a_loop() {
        let mut checks = run(|_, h, _| {
            // Done at attempt 9 with no attempt used: 8 free hand-outs.
            h.insert("att".into(), "9".into());
        });
        let audit = Audit {
            max_free_handouts: 8,
            ..Default::default()
        };
        check_free_handouts(&mut checks, &audit, 3);
        assert!(failed(&checks).iter().any(|n| n.starts_with("attempts")));
    }

    #[test]
    fn an_incomplete_ending_audit_fails() {
        let checks = run(|_, _, o| {
            o.ended_read = 0;
        });
        assert!(failed(&checks).iter().any(|n| n.starts_with("duplicates")));
    }
}
