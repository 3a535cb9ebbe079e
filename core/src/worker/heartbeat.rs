//! The heartbeat: renews the worker's lease from a task of its own (so a
//! long handler never makes it look dead), publishes its status, and runs a
//! bounded share of the queue's housekeeping.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use redis::Value;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::error::Error;
use crate::protocol::{split_status, value_to_i64};
use crate::scripts::scripts;

/// One heartbeat. Returns true if the worker had been declared dead.
pub(crate) async fn beat(shared: &Arc<Shared>) -> Result<bool, Error> {
    let status = &shared.status;
    let running = shared.running_ids();
    let state = if status.draining.load(Ordering::Acquire) {
        "draining"
    } else if !status.accepting.load(Ordering::Acquire) {
        "paused"
    } else if status.busy.load(Ordering::Acquire) > 0 {
        "busy"
    } else {
        "idle"
    };
    let labels = serde_json::to_string(&shared.config.labels).unwrap_or_default();
    let mut inv = scripts().heartbeat.key(shared.keys.prefix());
    inv.arg(&shared.id)
        .arg(shared.config.lease.as_millis() as u64)
        .arg(running.len());
    for id in &running {
        inv.arg(id);
    }
    inv.arg("host")
        .arg(&shared.config.host)
        .arg("pid")
        .arg(std::process::id())
        .arg("version")
        .arg(&shared.config.version)
        .arg("handler")
        .arg(&shared.config.handler_name)
        .arg("labels")
        .arg(labels)
        .arg("slots")
        .arg(shared.config.slots)
        .arg("busy")
        .arg(status.busy.load(Ordering::Acquire))
        .arg("done")
        .arg(status.get(&status.done))
        .arg("failed")
        .arg(status.get(&status.failed))
        .arg("state")
        .arg(state)
        .arg("upstream")
        .arg(if status.accepting.load(Ordering::Acquire) {
            "up"
        } else {
            "down"
        })
        .arg("last_error")
        .arg(status.last_error())
        .arg("started")
        .arg(status.started_ms.load(Ordering::Acquire));
    let reply: Value = inv.invoke_async(&mut shared.conn.clone()).await?;
    let (word, items) = split_status(reply)?;
    status.redis_ok.store(true, Ordering::Release);
    let now = items.get(2).map(value_to_i64).unwrap_or(0);
    let _ = status
        .started_ms
        .compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire);
    let swept = items.get(3).map(value_to_i64).unwrap_or(0);
    if swept > 0 {
        tracing::warn!(
            swept,
            "requeued tasks whose messages this worker never received"
        );
    }
    Ok(word == "GONE")
}

/// Beats every period until stopped. On GONE (the worker was declared dead,
/// say after a long pause), stops its running attempts - they were
/// reassigned - and offers its free slots again.
pub(crate) async fn run_loop(shared: Arc<Shared>, stop: CancellationToken) {
    let period = shared.config.heartbeat_period();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        match beat(&shared).await {
            Ok(gone) => {
                shared.status.redis_ok.store(true, Ordering::Release);
                if gone {
                    tracing::warn!("this worker had been declared dead; its tasks were reassigned");
                    shared.stop_all("fenced: the task was reassigned");
                    if shared.want_next() {
                        let free = shared
                            .config
                            .slots
                            .saturating_sub(shared.status.busy.load(Ordering::Acquire));
                        match shared.claim(free).await {
                            Ok(deliveries) => {
                                for d in deliveries {
                                    tokio::spawn(super::slot::run(Arc::clone(&shared), d));
                                }
                            }
                            Err(e) => tracing::warn!(error = %e, "re-registering failed"),
                        }
                    }
                }
            }
            Err(e) => {
                shared.status.redis_ok.store(false, Ordering::Release);
                shared
                    .status
                    .set_last_error(format!("heartbeat failed: {e}"));
                tracing::warn!(error = %e, "heartbeat failed");
            }
        }
    }
}
