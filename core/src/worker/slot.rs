//! One slot: runs an attempt through the handler, completes it and, in the
//! same round trip, takes the slot's next task. The slot's capacity stays
//! admitted in the [`SlotPool`](super::pool::SlotPool) from the first
//! attempt to the last.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::budget::OutputBudget;
use super::handler::{StopReason, TaskContext};
use super::pool::{Admitted, AttemptKey, Refusal};
use super::sleep_until;
use super::writer::ChunkWriter;
use super::Shared;
use crate::functions::cancel::{Cancel, CancelMode, CancelReply};
use crate::functions::chunk::WriteStatus;
use crate::functions::complete::CompleteOutcome;
use crate::functions::release::HandBack;
use crate::functions::{self};
use crate::protocol::{InboxMessage, TaskDelivery, TaskSpec, MAX_TEXT_BYTES};

/// Longest failure reason sent to Redis (the functions accept 64 KiB).
const MAX_REASON_BYTES: usize = 16 * MAX_TEXT_BYTES;

/// What a slot is asked to do with an attempt.
pub(crate) enum Job {
    /// Run the task.
    Run(TaskDelivery),
    /// A delivery that cannot be read: fail the attempt with the reason.
    Reject {
        /// Task id and attempt.
        key: AttemptKey,
        /// What is wrong with it.
        reason: String,
    },
}

impl Job {
    /// Turns an inbox message (or complete's next task) into a job.
    pub(crate) fn from_message(message: InboxMessage) -> Option<Job> {
        match message {
            InboxMessage::Task(d) => Some(Job::Run(d)),
            InboxMessage::Unreadable {
                task: Some(key),
                reason,
            } => Some(Job::Reject { key, reason }),
            InboxMessage::Unreadable { task: None, reason } => {
                tracing::warn!(%reason, "dropping an inbox message without task id or attempt");
                None
            }
            InboxMessage::Cancel { .. } => None,
        }
    }

    /// This job handed back without having started (no attempt used).
    pub(crate) fn unstarted(&self) -> HandBack {
        let (id, attempt) = self.key();
        HandBack {
            id,
            attempt,
            started: false,
        }
    }

    pub(crate) fn key(&self) -> AttemptKey {
        match self {
            Job::Run(d) => (d.id.clone(), d.attempt),
            Job::Reject { key, .. } => key.clone(),
        }
    }
}

// What the handler's run came to.
use super::handler::HandlerOutcome as Ending;

/// What the slot does after an attempt.
enum After {
    /// Nothing: free the slot.
    Free,
    /// The attempt was stopped for shutdown: hand it back when leaving.
    Interrupted,
    /// Run the next task Redis handed this slot.
    Next(Job),
    /// Run a delivery that was held for this slot (already admitted).
    Held(Admitted, Job),
}

/// Runs attempts in one admitted slot until no next task comes back.
pub(crate) async fn run(shared: Arc<Shared>, first: Admitted, job: Job) {
    let mut admitted = first;
    let mut job = job;
    loop {
        let span = tracing::info_span!("task", task_id = %admitted.key.0, attempt = admitted.key.1);
        match run_one(&shared, &admitted, job).instrument(span).await {
            After::Free => {
                shared.pool.release(&admitted.key);
                return;
            }
            After::Interrupted => {
                let started = admitted.started.load(Ordering::Acquire);
                shared.pool.interrupted(&admitted.key, started);
                return;
            }
            After::Held(next_admitted, next) => {
                admitted = next_admitted;
                job = next;
            }
            After::Next(next) => match shared.pool.chain(&admitted.key, next.key()) {
                Ok(a) => {
                    admitted = a;
                    job = next;
                }
                Err(Refusal::Duplicate) => return,
                Err(_) => {
                    shared.hand_back(vec![next.unstarted()]).await;
                    return;
                }
            },
        }
    }
}

async fn run_one(shared: &Arc<Shared>, admitted: &Admitted, job: Job) -> After {
    let stop = admitted.stop.clone();
    let (id, attempt) = admitted.key.clone();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let budget = OutputBudget::new(shared.config.max_buffered_output_bytes);
    let delivery = match &job {
        Job::Run(d) => d.clone(),
        Job::Reject { .. } => TaskDelivery {
            id: id.clone(),
            attempt,
            handed_out_ms: 0,
            deadline_ms: 0,
            submitted_ms: 0,
            spec: Vec::new(),
        },
    };
    let mut writer = ChunkWriter::new(
        shared.conn.clone(),
        shared.coalescer.clone(),
        &shared.keys,
        &shared.id,
        &delivery,
        shared.config.granularity.clone(),
        stop.clone(),
    )
    .with_budget(budget.clone());
    shared.stats.record_start(&delivery);
    let ending = match job {
        Job::Reject { reason, .. } => Ending::Failed {
            message: reason,
            retryable: false,
        },
        Job::Run(delivery) => match TaskSpec::decode(&delivery.spec).and_then(|spec| {
            if !shared.config.verify_keys.is_empty() {
                crate::signing::check(&shared.config.verify_keys, shared.keys.name(), &spec)?;
            }
            Ok(spec)
        }) {
            Err(e) => Ending::Failed {
                message: e.to_string(),
                retryable: false,
            },
            Ok(spec) => {
                admitted.started.store(true, Ordering::Release);
                let deadline = delivery.time_left().map(|left| Instant::now() + left);
                let ctx = TaskContext {
                    spec,
                    attempt,
                    deadline,
                    stop: stop.clone(),
                    sink: tx,
                    budget,
                };
                tracing::debug!("task started");
                let handler = Arc::clone(&shared.handler);
                let mut work = Box::pin(
                    AssertUnwindSafe(async move { handler.handle(ctx).await }).catch_unwind(),
                );
                let mut pump_open = true;
                // Set once the handler's future completed: it must not be
                // polled again (its grace wait below is for a handler that
                // has not returned yet).
                let mut returned = false;
                let ending = loop {
                    tokio::select! {
                        biased;
                        outcome = &mut work => {
                            returned = true;
                            break Ending::of(outcome, &stop);
                        }
                        _ = stop.token().cancelled() => {
                            break Ending::Stopped(stop.reason().unwrap_or(StopReason::Shutdown));
                        }
                        _ = sleep_until(deadline), if deadline.is_some() => {
                            stop.stop(StopReason::Deadline);
                            break Ending::Stopped(StopReason::Deadline);
                        }
                        _ = writer.pump(&mut rx), if pump_open => pump_open = false,
                    }
                };
                if let Ending::Stopped(reason) = &ending {
                    tracing::info!(%reason, "stopping the handler");
                    // The handler saw the stop; give it a moment to return
                    // on its own, then drop it (closing what it holds).
                    if !returned {
                        let _ = tokio::time::timeout(shared.config.cancel_grace, &mut work).await;
                    }
                }
                drop(work);
                writer.drain(&mut rx);
                match (&ending, stop.reason()) {
                    // Chunks were refused for size: whatever the handler
                    // returned, the output is incomplete, so the attempt
                    // fails.
                    (_, Some(reason @ StopReason::OutputTooLarge { .. })) => {
                        Ending::Stopped(reason)
                    }
                    // Output was sent: the task did start, whatever the
                    // handler says. A retry (using the attempt) lets
                    // another attempt write the output whole.
                    (Ending::NotStarted(reason), _) if writer.produced() => Ending::Failed {
                        message: format!(
                            "the handler gave the task back as not started after sending output: {reason}"
                        ),
                        retryable: true,
                    },
                    _ => ending,
                }
            }
        },
    };

    // A handler that ran a task to its end resets the hand-back pause.
    if matches!(ending, Ending::Result(_) | Ending::Failed { .. })
        && admitted.started.load(Ordering::Acquire)
    {
        shared.declines.ran();
    }
    let (outcome, payload) = match &ending {
        Ending::Result(value) => match serde_json::to_string(value) {
            Ok(json) if json.len() <= shared.config.max_result_bytes => (CompleteOutcome::Done, json),
            Ok(json) => (
                CompleteOutcome::Failed,
                format!(
                    "result is {} bytes, over the {}-byte limit; store it elsewhere and return a reference",
                    json.len(),
                    shared.config.max_result_bytes
                ),
            ),
            Err(e) => (CompleteOutcome::Failed, format!("result cannot be encoded: {e}")),
        },
        // Nothing of the task ran: back to the queue without using an
        // attempt (no complete: the hand-back ends this attempt).
        Ending::NotStarted(reason) => {
            drop(writer);
            shared.decline(&id, attempt, reason).await;
            return After::Free;
        }
        Ending::Failed { message, retryable } => (
            if *retryable {
                CompleteOutcome::Retry
            } else {
                CompleteOutcome::Failed
            },
            truncate(message, MAX_REASON_BYTES),
        ),
        Ending::Stopped(reason) => match reason {
            // Redis already took the task away from this attempt: nothing
            // to record, and the slot is counted free again at the next
            // heartbeat.
            StopReason::Requeued | StopReason::Reassigned => {
                shared.status.stopped.fetch_add(1, Ordering::Relaxed);
                return After::Free;
            }
            StopReason::Shutdown => return After::Interrupted,
            StopReason::Deadline => {
                expire_in_redis(shared, &id).await;
                (CompleteOutcome::Failed, format!("stopped: {reason}"))
            }
            StopReason::OutputTooLarge { reason } => (CompleteOutcome::Failed, reason.clone()),
            // Redis refused or lost this attempt's output: another attempt
            // (while the task has attempts left) writes it whole.
            StopReason::WriteRefused { .. } => {
                (CompleteOutcome::Retry, format!("stopped: {reason}"))
            }
            // Ended in Redis: complete releases the slot (ENDED/NOT_FOUND).
            _ => (CompleteOutcome::Failed, format!("stopped: {reason}")),
        },
    };
    let want_next = shared.want_next();
    if want_next {
        shared.pool.begin_completing();
    }
    let completed = writer.finish(outcome, &payload, want_next).await;
    let held = if want_next {
        let took_next = matches!(&completed, Ok(r) if r.next.is_some());
        let (taken, orphans) = shared.pool.end_completing(&admitted.key, took_next);
        if !orphans.is_empty() {
            let items = orphans.iter().map(Job::unstarted).collect();
            shared.hand_back(items).await;
        }
        taken
    } else {
        None
    };
    let status = &shared.status;
    match completed {
        Ok(reply) => {
            shared.stats.record_end(&delivery, &reply);
            match (reply.status, &ending) {
                // (A result whose output was cut for size was sent as a
                // failure by the writer.)
                (WriteStatus::Ok, Ending::Result(_))
                    if outcome == CompleteOutcome::Done
                        && !matches!(stop.reason(), Some(StopReason::OutputTooLarge { .. })) =>
                {
                    status.done.fetch_add(1, Ordering::Relaxed);
                }
                (WriteStatus::Ok, _) => {
                    status.failed.fetch_add(1, Ordering::Relaxed);
                    status.set_last_error(payload.clone());
                    tracing::warn!(reason = %payload, "task failed");
                }
                (other, _) => {
                    status.stopped.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        status = ?other,
                        "task ended elsewhere (cancelled, expired or reassigned)"
                    );
                }
            }
            match (reply.next.and_then(Job::from_message), held) {
                (Some(job), _) => After::Next(job),
                (None, Some((admitted, job))) => After::Held(admitted, job),
                (None, None) => After::Free,
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "could not complete the task; the heartbeat's orphan sweep will requeue it");
            status.set_last_error(e.to_string());
            match held {
                Some((admitted, job)) => After::Held(admitted, job),
                None => After::Free,
            }
        }
    }
}

/// Records the expiry in Redis (whose clock decides; re-checks if early).
async fn expire_in_redis(shared: &Shared, id: &str) {
    let cancel = Cancel {
        id,
        mode: CancelMode::Deadline,
        reason: "deadline passed",
    };
    for _ in 0..20 {
        match functions::call(&mut shared.conn.clone(), &shared.keys, &cancel).await {
            Ok(CancelReply::NotDue(Some(left))) => {
                tokio::time::sleep(left.clamp(Duration::from_millis(1), Duration::from_secs(1)))
                    .await;
            }
            _ => return,
        }
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}
