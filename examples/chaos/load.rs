//! The load: a client submitting tasks at a rate, half with `run()` and half
//! with `stream()`, some with deadlines, some planned to fail, with
//! `max_attempts` 3-5 and at most `max_in_flight` open at once. Every task's
//! outcome is recorded in the [`Ledger`] exactly once. On a stream queue
//! (`--stream-queue`) each task also gets a priority (high or low, so both
//! bands fill) and about one in twelve is cancelled 50-1550 ms after its
//! submit (queued or running, or already ended); the cancel's answer is
//! recorded. The load makes no durable submit (a stream queue refuses
//! them).
//!
//! A call that ends with a connection error or an uncertain submit (Redis
//! restarting) is repeated with the same task id, as the client docs say is
//! safe: the submit attaches to the existing task instead of creating one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rtq_core::{Error, Queue, TaskRequest, TaskState, TimeoutPhase};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::Rng;

/// What one task was asked to do, decided by the seeded generator.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Task id (`<run tag>-<n>`).
    pub id: String,
    /// Tokens the mock handler emits (`max_tokens`).
    pub tokens: u64,
    /// Submitted with `stream()` (else `run()`).
    pub stream: bool,
    /// Deadline, if any.
    pub deadline: Option<Duration>,
    /// `max_attempts`.
    pub max_attempts: u32,
    /// The input asks the mock to fail (`"fail"`): a handler failure is the
    /// expected outcome; anything else failing as `handler` is a finding.
    pub planned_fail: bool,
    /// Priority (0 on a v2 queue: its seeds replay as before).
    pub priority: i16,
    /// Cancel the task this long after its submit (stream queue only).
    pub cancel_after: Option<Duration>,
}

impl Plan {
    /// The text a complete stream of this task must have produced.
    pub fn expected_text(&self) -> String {
        (0..self.tokens).map(|i| format!("tok{i} ")).collect()
    }
}

/// How a task ended, as the client saw it.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// A result. `attempt` is the attempt that produced it; `intact` says
    /// whether the output is exactly what the mock produces for the plan
    /// (the streamed text for `stream()`, the token count for `run()`).
    Done {
        /// The attempt that produced the result.
        attempt: u64,
        /// Output as expected.
        intact: bool,
    },
    /// `Error::Failed`: the handler failed it.
    Failed(String),
    /// `Error::WorkerLost`: attempts used up by lost workers.
    WorkerLost,
    /// `Error::TimedOut`; true if it was still queued.
    TimedOut(bool),
    /// `Error::Cancelled` (the run never cancels: a finding).
    Cancelled,
    /// `Error::TaskLost` (a finding).
    TaskLost,
    /// Anything else (a finding), as text.
    Other(String),
}

impl Outcome {
    /// A short name for the summary's table.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Done { .. } => "done",
            Outcome::Failed(_) => "failed (handler)",
            Outcome::WorkerLost => "failed (worker_lost)",
            Outcome::TimedOut(true) => "expired (queued)",
            Outcome::TimedOut(false) => "expired (running)",
            Outcome::Cancelled => "cancelled",
            Outcome::TaskLost => "task lost",
            Outcome::Other(_) => "other error",
        }
    }
}

/// One task's record.
#[derive(Debug)]
pub struct Record {
    /// What it was asked to do.
    pub plan: Plan,
    /// Its outcome, once known.
    pub outcome: Option<Outcome>,
    /// Outcomes recorded for it (must end as exactly 1).
    pub outcomes: u32,
    /// Calls repeated after a connection error or an uncertain submit.
    pub repeats: u32,
    /// Submit to outcome.
    pub latency: Option<Duration>,
}

/// Every task of the run and the counters of the load.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Records by task id.
    pub records: HashMap<String, Record>,
    /// Task ids in submission order.
    pub order: Vec<String>,
    /// Tasks submitted whose outcome is not known yet.
    pub in_flight: usize,
    /// Highest `in_flight` seen.
    pub peak_in_flight: usize,
    /// What the client got for each task that ended with a result: the
    /// result JSON (`run()`) or the assembled text (`stream()`).
    pub outputs: HashMap<String, ClientOutput>,
    /// The answer of each planned cancel: the state the task was in (a
    /// queued or running one was cancelled by it), or the error.
    pub cancels: HashMap<String, Result<TaskState, String>>,
}

/// The output the client got for a task (kept for the stream checks,
/// which compare it with what Redis stored).
#[derive(Clone, Debug, PartialEq)]
pub enum ClientOutput {
    /// `run()`: the result.
    Result(serde_json::Value),
    /// `stream()`: the text assembled from the chunks, and the result.
    Text(String, serde_json::Value),
}

/// The ledger, shared between the generator, the tasks and the checks.
pub type SharedLedger = Arc<Mutex<Ledger>>;

impl Ledger {
    fn open(&mut self, plan: Plan) {
        self.order.push(plan.id.clone());
        self.records.insert(
            plan.id.clone(),
            Record {
                plan,
                outcome: None,
                outcomes: 0,
                repeats: 0,
                latency: None,
            },
        );
        self.in_flight += 1;
        self.peak_in_flight = self.peak_in_flight.max(self.in_flight);
    }

    fn close(&mut self, id: &str, outcome: Outcome, latency: Duration) {
        let Some(record) = self.records.get_mut(id) else {
            return;
        };
        record.outcomes += 1;
        if record.outcome.is_none() {
            record.outcome = Some(outcome);
            record.latency = Some(latency);
            self.in_flight -= 1;
        }
    }
}

/// Settings of the load.
#[derive(Clone, Debug)]
pub struct LoadSettings {
    /// Tasks submitted per second.
    pub rate: f64,
    /// Tasks open at once at most (the generator waits above it).
    pub max_in_flight: usize,
    /// Prefix of task ids.
    pub id_prefix: String,
    /// The queue is a stream queue: tasks get priorities.
    pub stream_queue: bool,
}

/// Submits tasks until `stop` is cancelled; each task runs on its own and
/// records its outcome in `ledger`. Tasks still open when `abandon` is
/// cancelled stop waiting (their outcome stays unknown).
pub async fn generate(
    queue: Queue,
    settings: LoadSettings,
    mut rng: Rng,
    ledger: SharedLedger,
    stop: CancellationToken,
    abandon: CancellationToken,
) {
    let mean = Duration::from_secs_f64(1.0 / settings.rate.max(0.01));
    let mut n: u64 = 0;
    while !stop.is_cancelled() {
        // Inter-arrival time: uniform in [0.5, 1.5] x the mean.
        let pause = mean.mul_f64(0.5 + rng.unit());
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.cancelled() => break,
        }
        while ledger.lock().unwrap().in_flight >= settings.max_in_flight {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                _ = stop.cancelled() => return,
            }
        }
        let plan = Plan {
            id: format!("{}-{n}", settings.id_prefix),
            tokens: 2 + rng.below(43),
            stream: rng.below(2) == 0,
            deadline: (rng.below(4) == 0).then(|| Duration::from_millis(2000 + rng.below(6000))),
            max_attempts: 3 + rng.below(3) as u32,
            planned_fail: rng.below(20) == 0,
            priority: if settings.stream_queue {
                if rng.below(3) == 0 {
                    500
                } else {
                    -500
                }
            } else {
                0
            },
            cancel_after: (settings.stream_queue && rng.below(12) == 0)
                .then(|| Duration::from_millis(50 + rng.below(1500))),
        };
        n += 1;
        ledger.lock().unwrap().open(plan.clone());
        if let Some(after) = plan.cancel_after {
            tokio::spawn(cancel_later(
                queue.clone(),
                plan.id.clone(),
                after,
                Arc::clone(&ledger),
                abandon.clone(),
            ));
        }
        let span = tracing::debug_span!("task", task_id = %plan.id);
        tokio::spawn(
            run_task(queue.clone(), plan, Arc::clone(&ledger), abandon.clone()).instrument(span),
        );
    }
}

/// Cancels task `id` after `after` (repeating the call after connection
/// trouble) and records the answer.
async fn cancel_later(
    queue: Queue,
    id: String,
    after: Duration,
    ledger: SharedLedger,
    abandon: CancellationToken,
) {
    tokio::select! {
        _ = tokio::time::sleep(after) => {}
        _ = abandon.cancelled() => return,
    }
    for _ in 0..20 {
        let answer = tokio::select! {
            a = queue.cancel(&id, "chaos: planned cancel") => a,
            _ = abandon.cancelled() => return,
        };
        match answer {
            Err(e) if repeatable(&e) => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            answer => {
                tracing::debug!(task_id = %id, ?answer, "cancelled");
                ledger
                    .lock()
                    .unwrap()
                    .cancels
                    .insert(id, answer.map_err(|e| e.to_string()));
                return;
            }
        }
    }
}

/// Runs one task to its outcome, repeating the call with the same id after
/// connection trouble, and records the outcome.
async fn run_task(queue: Queue, plan: Plan, ledger: SharedLedger, abandon: CancellationToken) {
    let started = Instant::now();
    loop {
        let result = tokio::select! {
            r = call(&queue, &plan) => r,
            _ = abandon.cancelled() => return,
        };
        match result {
            Err(e) if repeatable(&e) => {
                tracing::debug!(error = %e, "repeating the call with the same id");
                if let Some(r) = ledger.lock().unwrap().records.get_mut(&plan.id) {
                    r.repeats += 1;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    _ = abandon.cancelled() => return,
                }
            }
            result => {
                let (result, output) = match result {
                    Ok((attempt, intact, output)) => (Ok((attempt, intact)), Some(output)),
                    Err(e) => (Err(e), None),
                };
                let outcome = classify(&plan, result);
                let mut ledger = ledger.lock().unwrap();
                if let Some(output) = output {
                    ledger.outputs.entry(plan.id.clone()).or_insert(output);
                }
                ledger.close(&plan.id, outcome, started.elapsed());
                return;
            }
        }
    }
}

/// Connection trouble or an uncertain submit: the same call with the same id
/// is safe and is what a careful caller does.
fn repeatable(e: &Error) -> bool {
    matches!(e, Error::Uncertain { .. }) || e.is_connection_lost() || {
        matches!(e, Error::Redis(r) if r.is_timeout() || r.code() == Some("LOADING"))
    }
}

/// One `run()` or `stream()` of the plan: the attempt, whether the output
/// is intact, and the output.
async fn call(queue: &Queue, plan: &Plan) -> Result<(u64, bool, ClientOutput), Error> {
    let mut input = json!({ "prompt": "chaos", "max_tokens": plan.tokens });
    if plan.planned_fail {
        input["fail"] = json!("chaos: planned failure");
    }
    let mut request = TaskRequest::json(input)
        .id(plan.id.clone())
        .max_attempts(plan.max_attempts);
    if plan.priority != 0 {
        request = request.priority(plan.priority);
    }
    if let Some(d) = plan.deadline {
        request = request.timeout(d);
    }
    if plan.stream {
        let (out, text) = queue.stream(request).await?.collect_text().await?;
        let intact = text == plan.expected_text();
        Ok((out.attempt, intact, ClientOutput::Text(text, out.result)))
    } else {
        let out = queue.run(request).await?;
        let tokens = out.result["usage"]["completion_tokens"].as_u64();
        Ok((
            out.attempt,
            tokens == Some(plan.tokens),
            ClientOutput::Result(out.result),
        ))
    }
}

fn classify(plan: &Plan, result: Result<(u64, bool), Error>) -> Outcome {
    match result {
        Ok((attempt, intact)) => Outcome::Done { attempt, intact },
        Err(Error::Failed { reason, .. }) => Outcome::Failed(reason),
        Err(Error::WorkerLost { .. }) => Outcome::WorkerLost,
        Err(Error::TimedOut { phase, .. }) => Outcome::TimedOut(phase == TimeoutPhase::Queued),
        Err(Error::Cancelled { .. }) => Outcome::Cancelled,
        Err(Error::TaskLost { .. }) => Outcome::TaskLost,
        Err(e) => {
            tracing::warn!(task_id = %plan.id, error = %e, "unexpected outcome");
            Outcome::Other(e.to_string())
        }
    }
}
