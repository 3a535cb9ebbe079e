//! The lease loop of a stream worker, every third of the lease: measures
//! Redis's clock, renews the worker's liveness and the lease of every
//! entry it holds (`rtq3_beat`; an entry answered LOST is not this
//! worker's any more and its attempt stops), then runs housekeeping
//! (`rtq3_takeover`), whose lapsed entries of dead workers it runs as new
//! attempts in its free slots. Connection errors are logged, kept as the
//! worker's last error and retried at the next tick.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{clock, Runtime};
use crate::error::Error;
use crate::functions::v3;
use crate::worker::config::ErrorSource;
use crate::worker::handler::StopReason;

/// The lease in ms, as the functions take it.
pub(super) fn lease_ms(rt: &Runtime) -> u64 {
    rt.config.lease.as_millis() as u64
}

/// Ticks until `stop`.
pub(super) async fn run(rt: Arc<Runtime>, stop: CancellationToken) {
    let period = (rt.config.lease / 3).max(Duration::from_millis(30));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        tick(&rt).await;
    }
}

/// One beat and one housekeeping call.
pub(super) async fn tick(rt: &Arc<Runtime>) {
    match beat(rt).await {
        Ok(()) => {
            rt.status.redis_ok.store(true, Ordering::Release);
            rt.status.clear_error(ErrorSource::Heartbeat);
        }
        Err(e) => {
            rt.status.redis_ok.store(false, Ordering::Release);
            rt.status
                .record_error(ErrorSource::Heartbeat, format!("heartbeat failed: {e}"));
            tracing::warn!(error = %e, "heartbeat failed; retrying at the next tick");
            rt.restore_if_missing(&e).await;
            return;
        }
    }
    if let Err(e) = take_over(rt).await {
        rt.status
            .record_error(ErrorSource::Heartbeat, format!("housekeeping failed: {e}"));
        tracing::warn!(error = %e, "housekeeping failed; retrying at the next tick");
    }
    // Entries this worker holds without knowing it (a read's lost reply):
    // housekeeping leaves a worker's own entries to it.
    if let Err(e) = super::recover::own_entries(rt).await {
        tracing::debug!(error = %e, "could not list this worker's pending entries");
    }
}

/// Renews the leases; stops the attempts whose entries are gone.
///
/// # Errors
/// Connection errors.
pub(super) async fn beat(rt: &Runtime) -> Result<(), Error> {
    if let Err(e) = clock::sync(&rt.conn, &rt.status).await {
        tracing::debug!(error = %e, "could not read Redis's clock");
    }
    let held = rt.slots.held();
    let answers = v3::beat(&mut rt.conn.clone(), &rt.keys, &rt.id, lease_ms(rt), &held).await?;
    for (h, ok) in held.iter().zip(answers) {
        if !ok && rt.slots.stop_held(h, StopReason::Reassigned) {
            tracing::warn!(band = h.band, entry = %h.entry, attempt = h.attempt(), "lease lost: the entry is not this worker's any more; stopping its attempt");
        }
    }
    Ok(())
}

/// Housekeeping: lapsed entries of dead workers come to the free slots.
/// With none free (a busy worker), it still ends what must end (attempts
/// used up, deadlines) and asks the intake to give its next freed slot to
/// housekeeping before new entries.
pub(super) async fn take_over(rt: &Arc<Runtime>) -> Result<(), Error> {
    let free = if rt.want_next() {
        rt.slots.reserve(rt.slots.free())
    } else {
        0
    };
    if free == 0 && rt.want_next() {
        rt.takeover_due.store(true, Ordering::Release);
    }
    let taken = v3::takeover(&mut rt.conn.clone(), &rt.keys, &rt.id, lease_ms(rt), free).await;
    let (ended, deliveries) = match taken {
        Ok(t) => t,
        Err(e) => {
            rt.slots.unreserve(free);
            return Err(e);
        }
    };
    if ended > 0 {
        tracing::info!(
            ended,
            "housekeeping ended tasks (attempts used up or deadlines passed)"
        );
    }
    for d in &deliveries {
        tracing::warn!(task_id = %d.id, attempt = d.held.attempt(), "taking over a task whose worker's lease lapsed");
    }
    if free > 0 && deliveries.len() >= free {
        // Perhaps more lapsed entries than free slots: the next freed
        // slot goes to housekeeping again.
        rt.takeover_due.store(true, Ordering::Release);
    }
    rt.admit(free, deliveries).await;
    Ok(())
}
