//! One slot: runs a task's attempt through the handler, then completes it
//! and, in the same round trip, takes the slot's next task.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use redis::Value;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::handler::{StopSignal, TaskContext};
use super::sleep_until;
use super::writer::ChunkWriter;
use super::{Running, Shared};
use crate::protocol::{split_status, value_to_i64, TaskDelivery, TaskSpec};
use crate::scripts::scripts;

/// Runs tasks in one slot until no next task comes back.
pub(crate) async fn run(shared: Arc<Shared>, first: TaskDelivery) {
    shared.status.busy.fetch_add(1, Ordering::AcqRel);
    let mut next = Some(first);
    while let Some(delivery) = next {
        let span = tracing::info_span!("task", task_id = %delivery.id, attempt = delivery.attempt);
        next = run_one(&shared, delivery).instrument(span).await;
    }
    shared.status.busy.fetch_sub(1, Ordering::AcqRel);
}

/// What the handler's run came to.
enum Ending {
    Result(serde_json::Value),
    Failed { message: String, retryable: bool },
    Stopped(String),
}

async fn run_one(shared: &Arc<Shared>, delivery: TaskDelivery) -> Option<TaskDelivery> {
    let stop = StopSignal::default();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut writer = ChunkWriter::new(
        shared.conn.clone(),
        shared.keys.prefix(),
        &shared.id,
        &delivery,
        shared.config.granularity.clone(),
        stop.clone(),
    );
    let ending = match TaskSpec::decode(&delivery.spec_json) {
        Err(e) => Ending::Failed {
            message: e.to_string(),
            retryable: false,
        },
        Ok(spec) => {
            if let Ok(mut r) = shared.running.lock() {
                r.insert(
                    delivery.id.clone(),
                    Running {
                        attempt: delivery.attempt,
                        stop: stop.clone(),
                    },
                );
            }
            let deadline = delivery.time_left().map(|left| Instant::now() + left);
            let ctx = TaskContext {
                spec,
                attempt: delivery.attempt,
                deadline,
                stop: stop.clone(),
                sink: tx,
            };
            tracing::debug!("task started");
            let handler = Arc::clone(&shared.handler);
            let mut work =
                Box::pin(AssertUnwindSafe(async move { handler.handle(ctx).await }).catch_unwind());
            let mut pump_open = true;
            let ending = loop {
                tokio::select! {
                    outcome = &mut work => break match outcome {
                        Ok(Ok(value)) => Ending::Result(value),
                        Ok(Err(e)) => Ending::Failed { message: e.message, retryable: e.retryable },
                        Err(panic) => Ending::Failed {
                            message: format!("handler panicked: {}", panic_message(&panic)),
                            retryable: false,
                        },
                    },
                    _ = stop.token().cancelled() => {
                        break Ending::Stopped(stop.reason().unwrap_or_else(|| "cancelled".into()));
                    }
                    _ = sleep_until(deadline), if deadline.is_some() => {
                        stop.stop("deadline");
                        expire_in_redis(shared, &delivery.id).await;
                        break Ending::Stopped("deadline".into());
                    }
                    _ = writer.pump(&mut rx), if pump_open => pump_open = false,
                }
            };
            if matches!(ending, Ending::Stopped(_)) {
                // Let the handler see the stop and clean up (tell its model
                // server to abort) for a moment; then its future is dropped,
                // which closes whatever upstream request it still holds.
                let _ = tokio::time::timeout(shared.config.cancel_grace, &mut work).await;
            }
            drop(work);
            writer.drain(&mut rx);
            ending
        }
    };

    let want_next = shared.want_next();
    let (outcome, payload) = match &ending {
        Ending::Result(value) => match serde_json::to_string(value) {
            Ok(json) if json.len() <= shared.config.max_result_bytes => ("done", json),
            Ok(json) => (
                "failed",
                format!(
                    "result is {} bytes, over the {}-byte limit; store it elsewhere and return a reference",
                    json.len(),
                    shared.config.max_result_bytes
                ),
            ),
            Err(e) => ("failed", format!("result cannot be encoded: {e}")),
        },
        Ending::Failed { message, retryable } => {
            (if *retryable { "retry" } else { "failed" }, message.clone())
        }
        Ending::Stopped(reason) if reason == "shutting down" => {
            // Handed back by deregistration; nothing to record.
            forget(shared, &delivery.id);
            return None;
        }
        Ending::Stopped(reason) => ("failed", format!("stopped: {reason}")),
    };
    let completed = writer.finish(outcome, &payload, want_next).await;
    forget(shared, &delivery.id);
    let status = &shared.status;
    match completed {
        Ok(c) => {
            match (c.status.as_str(), &ending) {
                ("OK", Ending::Result(_)) => {
                    status.done.fetch_add(1, Ordering::Relaxed);
                }
                ("OK", Ending::Failed { message, .. }) => {
                    status.failed.fetch_add(1, Ordering::Relaxed);
                    status.set_last_error(message.clone());
                    tracing::warn!(reason = %message, "task failed");
                }
                (other, _) => {
                    status.stopped.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        status = other,
                        "task ended elsewhere (cancelled, expired or reassigned)"
                    );
                }
            }
            c.next
        }
        Err(e) => {
            tracing::error!(error = %e, "could not complete task; the orphan sweep will requeue it");
            status.set_last_error(e.to_string());
            None
        }
    }
}

fn forget(shared: &Shared, id: &str) {
    if let Ok(mut r) = shared.running.lock() {
        r.remove(id);
    }
}

/// Records the expiry in Redis (whose clock decides; re-checks if early).
async fn expire_in_redis(shared: &Shared, id: &str) {
    for _ in 0..20 {
        let reply: redis::RedisResult<Value> = scripts()
            .cancel
            .key(shared.keys.prefix())
            .arg(id)
            .arg("deadline")
            .arg("deadline passed")
            .invoke_async(&mut shared.conn.clone())
            .await;
        match reply.map_err(crate::Error::from).and_then(split_status) {
            Ok((status, items)) if status == "NOT_DUE" => {
                let ms = items.first().map(value_to_i64).unwrap_or(0).clamp(1, 1000);
                tokio::time::sleep(Duration::from_millis(ms as u64)).await;
            }
            _ => return,
        }
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
}
