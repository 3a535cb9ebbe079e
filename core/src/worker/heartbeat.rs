//! The heartbeat: renews the worker's lease from a task of its own (so a
//! long handler never makes it look dead), reports every attempt it runs
//! so Redis can reconcile ownership and free slots, stops the attempts
//! Redis says are no longer current, and runs a share of the queue's
//! housekeeping.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::config::ErrorSource;
use super::handler::StopReason;
use super::Shared;
use crate::error::Error;
use crate::functions::heartbeat::{Beat, BeatReply, BeatReport, Heartbeat, Register, StopWhy};
use crate::functions::{self};
use crate::protocol::MAX_TEXT_BYTES;

/// How a beat went.
pub(crate) enum Beaten {
    /// Renewed or registered.
    Ok,
    /// Another process holds this worker id: the worker must stop.
    Replaced,
}

fn info(shared: &Shared) -> Vec<(&'static str, String)> {
    let status = &shared.status;
    let state = if status.draining.load(Ordering::Acquire) {
        "draining"
    } else if !status.accepting.load(Ordering::Acquire) || shared.declines.pausing() {
        // (Also during the pause after a hand-back of an unstarted task.)
        "paused"
    } else if shared.pool.busy() > 0 {
        "busy"
    } else {
        "idle"
    };
    // With its time on Redis's clock ("0": none). Both always sent, so a
    // cleared error clears the worker hash too.
    let (mut last_error, last_error_ms) = status.published_error().unwrap_or_default();
    if last_error.len() > MAX_TEXT_BYTES {
        let mut end = MAX_TEXT_BYTES;
        while !last_error.is_char_boundary(end) {
            end -= 1;
        }
        last_error.truncate(end);
    }
    let mut labels = serde_json::to_string(&shared.config.labels).unwrap_or_default();
    if labels.len() > MAX_TEXT_BYTES {
        labels = "{}".into();
    }
    vec![
        ("host", shared.config.host.chars().take(256).collect()),
        ("pid", std::process::id().to_string()),
        ("version", shared.config.version.chars().take(64).collect()),
        (
            "handler",
            shared.config.handler_name.chars().take(64).collect(),
        ),
        ("labels", labels),
        ("busy", shared.pool.busy().to_string()),
        ("done", status.get(&status.done).to_string()),
        ("failed", status.get(&status.failed).to_string()),
        ("stopped", status.get(&status.stopped).to_string()),
        ("state", state.into()),
        (
            "upstream",
            if status.accepting.load(Ordering::Acquire) {
                "up"
            } else {
                "down"
            }
            .into(),
        ),
        ("last_error", last_error),
        ("last_error_ms", last_error_ms.max(0).to_string()),
        (
            "started",
            status.started_ms.load(Ordering::Acquire).to_string(),
        ),
    ]
}

/// One heartbeat, or a registration with `register`. On GONE (the worker
/// was reaped, say after a long pause or network cut) it registers again at
/// once; the attempts Redis took away are stopped as reassigned.
pub(crate) async fn beat(shared: &Arc<Shared>, register: bool) -> Result<Beaten, Error> {
    // Interrupted attempts still occupy their slots until handed back: a
    // beat that did not report them would sweep them as lost deliveries.
    let running: Vec<(String, u64)> = shared.pool.reported();
    let mut info = info(shared);
    if let Some(stats) = shared.stats.take_encoded() {
        info.push(("stats", stats));
    }
    let accepting = shared.want_next();
    let make = || Beat {
        worker: &shared.id,
        instance: &shared.instance,
        lease_ms: shared.config.lease.as_millis() as u64,
        slots: shared.config.slots,
        accepting,
        running: &running,
        info: &info,
    };
    let mut conn = shared.conn.clone();
    let mut reply = if register {
        functions::call(&mut conn, &shared.keys, &Register(make())).await?
    } else {
        functions::call(&mut conn, &shared.keys, &Heartbeat(make())).await?
    };
    let gone = reply == BeatReply::Gone;
    if gone {
        tracing::warn!("this worker had been declared dead (its lease lapsed); registering again");
        reply = functions::call(&mut conn, &shared.keys, &Register(make())).await?;
    }
    if register || gone {
        // List the queue for consoles and `rtq stats`, on every
        // registration: after Redis restarted empty, the first heartbeat
        // hears GONE and the queue is listed again at once.
        let listed: redis::RedisResult<i64> = redis::cmd("SADD")
            .arg(crate::keys::QUEUES)
            .arg(shared.keys.name())
            .query_async(&mut conn)
            .await;
        if let Err(e) = listed {
            tracing::debug!(error = %e, "could not list the queue in the registry");
        }
    }
    shared.status.redis_ok.store(true, Ordering::Release);
    shared.status.clear_error(ErrorSource::Heartbeat);
    match reply {
        BeatReply::Ok(report) => {
            apply(shared, &report);
            Ok(Beaten::Ok)
        }
        BeatReply::Replaced => Ok(Beaten::Replaced),
        BeatReply::Gone => Err(Error::Protocol(
            "rtq2_register answered GONE to a registration".into(),
        )),
    }
}

/// Applies a report: stop orders, start time, logs.
fn apply(shared: &Shared, report: &BeatReport) {
    shared.status.clock_offset_ms.store(
        report.now_ms - super::config::local_now_ms(),
        Ordering::Release,
    );
    let _ = shared.status.started_ms.compare_exchange(
        0,
        report.now_ms,
        Ordering::AcqRel,
        Ordering::Acquire,
    );
    for order in &report.stop {
        let reason = match order.why {
            StopWhy::Cancelled => StopReason::Cancelled {
                reason: "the task was cancelled".into(),
            },
            StopWhy::Expired => StopReason::Deadline,
            StopWhy::Requeued => StopReason::Requeued,
            StopWhy::Reassigned | StopWhy::Ended => StopReason::Reassigned,
            StopWhy::Gone => StopReason::Gone,
        };
        let key = (order.id.clone(), order.attempt);
        if shared.pool.stop(&key, reason.clone()) {
            tracing::info!(task_id = %order.id, attempt = order.attempt, %reason, "stopping an attempt that is no longer current");
        }
    }
    if report.swept > 0 {
        tracing::warn!(
            swept = report.swept,
            "requeued tasks this worker owned but never ran (lost deliveries, or the tasks of the process it replaced)"
        );
    }
}

/// Beats every period (or at once when asked) until stopped. On REPLACED,
/// stops every attempt and cancels `fatal`.
pub(crate) async fn run_loop(
    shared: Arc<Shared>,
    stop: CancellationToken,
    fatal: CancellationToken,
) {
    let period = shared.config.heartbeat_period();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
            _ = shared.beat_now.notified() => {}
        }
        match beat(&shared, false).await {
            Ok(Beaten::Ok) => {}
            Ok(Beaten::Replaced) => {
                tracing::error!(worker_id = %shared.id, "another process registered under this worker id; stopping");
                shared.pool.stop_all(StopReason::Reassigned);
                fatal.cancel();
                return;
            }
            Err(e) => {
                shared.status.redis_ok.store(false, Ordering::Release);
                shared
                    .status
                    .record_error(ErrorSource::Heartbeat, format!("heartbeat failed: {e}"));
                tracing::warn!(error = %e, "heartbeat failed");
            }
        }
    }
}
