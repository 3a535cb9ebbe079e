//! One attempt of a stream worker: builds the handler's [`TaskContext`]
//! as a v2 slot does, runs the handler (panics caught), moves its chunks
//! to its outbox, and maps how it ended to an [`EndState`], written
//! through the completer once its output is in Redis.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use futures::FutureExt;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::chunks::{Outbox, Tail};
use super::{clock, Runtime};
use crate::error::Error;
use crate::functions::v3::{Completed, Delivery, EndState, Ending};
use crate::protocol::{TaskSpec, MAX_TEXT_BYTES};
use crate::worker::budget::OutputBudget;
use crate::worker::handler::{StopReason, StopSignal, TaskContext};
use crate::worker::{sleep_until, FORCED_HANDLER_WAIT};

/// Spawns the attempt of an admitted delivery.
pub(super) fn spawn(rt: &Arc<Runtime>, d: Delivery, stop: StopSignal) {
    let key = (d.id.clone(), d.held.attempt());
    let span = tracing::info_span!("task", task_id = %d.id, attempt = d.held.attempt());
    let fut = run(Arc::clone(rt), d, stop).instrument(span);
    rt.slots.spawn(key, fut);
}

/// Runs the attempt and writes its ending.
async fn run(rt: Arc<Runtime>, d: Delivery, stop: StopSignal) {
    let key = (d.id.clone(), d.held.attempt());
    let mut outbox = None;
    let Some(state) = decide(&rt, &d, &stop, &mut outbox).await else {
        // Redis ended the task or gave it to another attempt: nothing to
        // write.
        rt.chunks.close(&key);
        rt.slots.finish(&key, None);
        rt.status.stopped.fetch_add(1, Ordering::Relaxed);
        return;
    };
    rt.slots.finish(&key, Some(&d.held));
    let (answer, state) = match (&state, outbox) {
        (EndState::Done(_), Some(outbox)) => finish_with_tail(&rt, &d, state, &outbox, &stop).await,
        _ => {
            let ending = Ending {
                held: d.held.clone(),
                id: d.id.clone(),
                state: state.clone(),
                output: None,
            };
            (rt.completer.complete(ending).await, state)
        }
    };
    rt.chunks.close(&key);
    rt.slots.written(&key);
    let status = &rt.status;
    match (answer, &state) {
        (Ok(Completed::Ok | Completed::Replay), EndState::Done(_)) => {
            status.done.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("task done");
        }
        (Ok(Completed::Ok | Completed::Replay), EndState::Failed(r) | EndState::Retry(r)) => {
            status.failed.fetch_add(1, Ordering::Relaxed);
            status.set_last_error(r.clone());
            tracing::warn!(reason = %r, "task failed");
        }
        (Ok(Completed::Ok | Completed::Replay), EndState::Expired(_)) => {
            status.stopped.fetch_add(1, Ordering::Relaxed);
            tracing::info!("task expired");
        }
        (Ok(Completed::Ok | Completed::Replay), EndState::HandBack(r)) => {
            tracing::info!(reason = %r, "handed the task back");
        }
        (Ok(Completed::Order(n)), _) => {
            status.set_last_error(format!("could not complete a task: Redis holds {n} chunks of it, not what the worker wrote"));
            tracing::error!(held = n, "the task's output in Redis does not match what the worker wrote; its lease will lapse and another worker takes it over");
        }
        (Ok(Completed::Lost), _) => {
            status.stopped.fetch_add(1, Ordering::Relaxed);
            tracing::info!("the attempt is not this worker's any more (cancelled, expired or taken over); its ending is dropped");
        }
        (Err(e), _) => {
            status.set_last_error(format!("could not complete a task: {e}"));
            tracing::error!(error = %e, "could not complete the task; its lease will lapse and another worker takes it over");
        }
    }
}

/// Completes a done attempt with its last chunks in the same round trip
/// (see [`Outbox::seal`]). When they did not land (a write in flight
/// failed or was answered ORDER), the writer sends what Redis lacks and
/// the complete goes again; when the writer was stopped meanwhile, the
/// ending follows the stop (too large: failed; refused: retry; taken
/// over: none). Returns the answer and the ending it was for.
async fn finish_with_tail(
    rt: &Arc<Runtime>,
    d: &Delivery,
    mut state: EndState,
    outbox: &Outbox,
    stop: &StopSignal,
) -> (Result<Completed, Error>, EndState) {
    for _ in 0..TAIL_ROUNDS {
        let (tail, output) = match outbox.seal() {
            Tail::Ready { write, output } => (write, Some(output)),
            Tail::TooBig => {
                outbox.flushed().await;
                continue;
            }
            Tail::Halted => match stop.reason().as_ref().and_then(after_writer_stop) {
                Some(after) => {
                    state = after;
                    (None, None)
                }
                None => return (Ok(Completed::Lost), state),
            },
        };
        let ending = Ending {
            held: d.held.clone(),
            id: d.id.clone(),
            state: state.clone(),
            output,
        };
        match rt.completer.complete_with(ending, tail).await {
            Ok((Completed::Order(_), written)) => {
                tracing::debug!(
                    ?written,
                    "the last chunks did not land with the complete; writing them first"
                );
                outbox.unseal(&rt.chunks);
                outbox.flushed().await;
            }
            other => return (other.map(|(c, _)| c), state),
        }
    }
    let reason = format!("the output and the complete did not agree after {TAIL_ROUNDS} tries");
    outbox.halt_now(StopReason::WriteRefused {
        reason: reason.clone(),
    });
    let ending = Ending {
        held: d.held.clone(),
        id: d.id.clone(),
        state: EndState::Retry(reason.clone()),
        output: None,
    };
    (rt.completer.complete(ending).await, EndState::Retry(reason))
}

/// Tries of a done attempt's complete whose last chunks did not land.
const TAIL_ROUNDS: usize = 5;

/// The ending an attempt gets when its writer stopped it: output too
/// large fails it, a refused write retries it; taken over: none.
fn after_writer_stop(reason: &StopReason) -> Option<EndState> {
    match reason {
        StopReason::OutputTooLarge { reason } => Some(EndState::Failed(truncate(reason))),
        StopReason::WriteRefused { reason } => Some(EndState::Retry(truncate(reason))),
        _ => None,
    }
}

// What the handler's run came to.
use crate::worker::handler::HandlerOutcome as Outcome;

/// Runs the handler (unless the delivery cannot run) and returns the
/// ending to write; `None` when Redis already ended the attempt.
async fn decide(
    rt: &Arc<Runtime>,
    d: &Delivery,
    stop: &StopSignal,
    opened: &mut Option<Arc<Outbox>>,
) -> Option<EndState> {
    let deadline = if d.deadline_ms > 0 {
        match clock::left(&rt.status, d.deadline_ms) {
            Some(left) => Some(Instant::now() + left),
            None => {
                tracing::info!("the deadline passed before the task started; not running it");
                return Some(EndState::Expired(
                    "deadline passed before the task started".into(),
                ));
            }
        }
    } else {
        None
    };
    let spec = match TaskSpec::decode(&d.spec).and_then(|spec| {
        if !rt.config.verify_keys.is_empty() {
            crate::signing::check(&rt.config.verify_keys, rt.keys.name(), &spec)?;
        }
        Ok(spec)
    }) {
        Ok(spec) if spec.id == d.id => spec,
        Ok(spec) => {
            return Some(EndState::Failed(truncate(&format!(
                "the task's spec names another task ({})",
                spec.id
            ))))
        }
        Err(e) => return Some(EndState::Failed(truncate(&e.to_string()))),
    };
    let budget = OutputBudget::new(rt.config.max_buffered_output_bytes);
    let outbox = rt.chunks.open(d, stop.clone(), budget.clone());
    *opened = Some(Arc::clone(&outbox));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let ctx = TaskContext {
        spec,
        attempt: d.held.attempt(),
        deadline,
        stop: stop.clone(),
        sink: tx,
        budget,
    };
    tracing::debug!("task started");
    let handler = Arc::clone(&rt.handler);
    let mut work =
        Box::pin(AssertUnwindSafe(async move { handler.handle(ctx).await }).catch_unwind());
    let mut returned = false;
    let mut outcome = loop {
        tokio::select! {
            biased;
            out = &mut work => {
                returned = true;
                break Outcome::of(out, stop);
            }
            _ = stop.token().cancelled() => {
                break Outcome::Stopped(stop.reason().unwrap_or(StopReason::Shutdown));
            }
            _ = sleep_until(deadline), if deadline.is_some() => {
                stop.stop(StopReason::Deadline);
                break Outcome::Stopped(StopReason::Deadline);
            }
            Some(chunk) = rx.recv() => rt.chunks.push(&outbox, chunk),
        }
    };
    if let Outcome::Stopped(reason) = &outcome {
        tracing::info!(%reason, "stopping the handler");
        if !returned {
            // The handler saw the stop: a moment to return on its own,
            // then it is dropped (closing what it holds).
            let grace = if rt.forced.load(Ordering::Acquire) {
                rt.config.cancel_grace.min(FORCED_HANDLER_WAIT)
            } else {
                rt.config.cancel_grace
            };
            let _ = tokio::time::timeout(grace, &mut work).await;
        }
    }
    drop(work);
    while let Ok(chunk) = rx.try_recv() {
        rt.chunks.push(&outbox, chunk);
    }
    if !matches!(outcome, Outcome::Stopped(_) | Outcome::Result(_)) {
        // The output goes before the ending (its final event counts it);
        // a result's last chunks go with its complete (`finish_with_tail`).
        outbox.flushed().await;
    }
    // A stop by the writer (output refused) decides over what the
    // handler returned.
    if let Some(
        reason @ (StopReason::OutputTooLarge { .. }
        | StopReason::WriteRefused { .. }
        | StopReason::Reassigned),
    ) = stop.reason()
    {
        outcome = Outcome::Stopped(reason);
    }
    if matches!(outcome, Outcome::Result(_) | Outcome::Failed { .. }) {
        rt.declines.ran();
    }
    let was_result = matches!(outcome, Outcome::Result(_));
    let state = match outcome {
        Outcome::Result(value) => match serde_json::to_string(&value) {
            Ok(json) if json.len() <= rt.config.max_result_bytes => EndState::Done(json),
            Ok(json) => EndState::Failed(format!(
                "result is {} bytes, over the {}-byte limit; store it elsewhere and return a reference",
                json.len(),
                rt.config.max_result_bytes
            )),
            Err(e) => EndState::Failed(truncate(&format!("result cannot be encoded: {e}"))),
        },
        Outcome::Failed { message, retryable } if retryable => EndState::Retry(truncate(&message)),
        Outcome::Failed { message, .. } => EndState::Failed(truncate(&message)),
        // Output was seen: the task did start, whatever the handler says.
        Outcome::NotStarted(reason) if outbox.produced() => EndState::Retry(truncate(&format!(
            "the handler gave the task back as not started after sending output: {reason}"
        ))),
        Outcome::NotStarted(reason) => {
            rt.decline(&reason);
            EndState::HandBack(truncate(&reason))
        }
        Outcome::Stopped(reason) => match reason {
            // Redis ended the task or took it from this attempt.
            StopReason::Cancelled { .. }
            | StopReason::Requeued
            | StopReason::Reassigned
            | StopReason::Gone => return None,
            StopReason::Deadline => EndState::Expired("deadline passed while running".into()),
            // Chunks sent: the next run must not have this attempt's number
            // (a hand-back keeps it), or a follower holding those chunks
            // would take the next run's as their continuation. It uses an
            // attempt, as an interrupted v2 attempt does.
            StopReason::Shutdown if outbox.produced() => {
                EndState::Retry("the worker shut down while the task ran".into())
            }
            StopReason::Shutdown => EndState::HandBack("the worker is shutting down".into()),
            StopReason::OutputTooLarge { reason } => EndState::Failed(truncate(&reason)),
            // Another attempt writes the output whole.
            StopReason::WriteRefused { reason } => EndState::Retry(truncate(&reason)),
            // (StopReason is non-exhaustive.)
            #[allow(unreachable_patterns)]
            other => EndState::Failed(truncate(&format!("stopped: {other}"))),
        },
    };
    if was_result && !matches!(state, EndState::Done(_)) {
        // A result refused (too large): the output still goes first.
        outbox.flushed().await;
    }
    Some(state)
}

/// At most the 4096 bytes a reason may have, cut on a character boundary.
fn truncate(text: &str) -> String {
    if text.len() <= MAX_TEXT_BYTES {
        return text.to_string();
    }
    let mut end = MAX_TEXT_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_is_cut_to_the_functions_limit_on_a_character_boundary() {
        let long = "é".repeat(MAX_TEXT_BYTES);
        let cut = truncate(&long);
        assert!(cut.len() <= MAX_TEXT_BYTES && cut.len() > MAX_TEXT_BYTES - 2);
        assert_eq!(truncate("short"), "short");
    }
}
