//! The worker runtime of a `stream` queue (protocol v3,
//! `docs/PROTOCOL-V3.md` sections 3 and 6): the same [`Worker`] API as a
//! v2 queue's, on the `rtq3` functions.
//!
//! # Layout
//! - `slots`: capacity (attempts keyed by task id and attempt, never more
//!   than `slots`; reads reserve before they ask);
//! - `intake`: new entries, band by band, then a blocking read;
//! - `attempt`: one attempt (context, handler, ending);
//! - `chunks`: output chunks, coalesced into one `rtq3_write` at a time;
//! - `writes`: endings, coalesced into one `rtq3_complete` at a time;
//! - `lease`: beat and takeover every third of the lease;
//! - `clock`: Redis time, for deadlines;
//! - this file: start (`rtq3_join`, first beat), stop orders from the
//!   worker's inbox, the drain, the forced stop and the leave.

mod attempt;
mod chunks;
mod clock;
mod intake;
mod lease;
mod recover;
mod slots;
mod writes;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::config::{WorkerConfig, WorkerStatus};
use super::declines::Declines;
use super::handler::{Handler, StopReason};
use super::{inbox, Worker, FORCED_LEAVE_TIMEOUT};
use crate::connection::{Endpoint, RedisConnection};
use crate::error::Error;
use crate::functions::v3::{self, Delivery, EndState, Ending};
use crate::keys::QueueKeys;
use crate::protocol::{CancelKind, InboxMessage};

/// State shared by the intake, the lease loop and the attempts.
pub(crate) struct Runtime {
    endpoint: Endpoint,
    conn: RedisConnection,
    keys: QueueKeys,
    id: String,
    bands: u8,
    config: WorkerConfig,
    status: Arc<WorkerStatus>,
    handler: Arc<dyn Handler>,
    slots: slots::Slots,
    completer: writes::Completer,
    chunks: Arc<chunks::Chunks>,
    declines: Declines,
    /// Set by a forced stop: handlers get at most a second to return.
    forced: AtomicBool,
    /// Set by a housekeeping tick that had no free slot to take lapsed
    /// entries over with: the next freed slot goes to housekeeping before
    /// new entries (a busy worker would otherwise never take over a dead
    /// worker's tasks while new work keeps coming).
    takeover_due: AtomicBool,
}

impl Runtime {
    /// True while the worker takes new tasks.
    fn want_next(&self) -> bool {
        self.status.accepting.load(Ordering::Acquire)
            && !self.status.draining.load(Ordering::Acquire)
            && !self.declines.pausing()
    }

    /// After an error that says the queue's structure is gone (its meta:
    /// Redis restarted empty or the queue was deleted; a band's group:
    /// deleted by hand), makes it a stream queue again with this worker's
    /// band count and the depth limit the meta still has (none if gone),
    /// so the worker goes on serving instead of failing every read.
    async fn restore_if_missing(&self, e: &Error) {
        let text = e.to_string();
        if !(text.contains("NOGROUP") || text.contains("not a stream queue")) {
            return;
        }
        let maxd: redis::RedisResult<Option<u64>> = redis::cmd("HGET")
            .arg(self.keys.meta())
            .arg("maxd")
            .query_async(&mut self.conn.clone())
            .await;
        let maxd = maxd.ok().flatten().unwrap_or(0);
        match v3::create(&mut self.conn.clone(), &self.keys, self.bands, maxd).await {
            Ok(()) => tracing::warn!(
                bands = self.bands,
                max_depth = maxd,
                "the stream queue's structure was gone from Redis (restarted empty, deleted, or a band's group destroyed); made it again"
            ),
            Err(e) => tracing::warn!(error = %e, "could not make the stream queue again"),
        }
    }

    /// Admits what a read with `reserved` slots reserved returned, starts
    /// each admitted attempt, and hands the surplus back at once.
    async fn admit(self: &Arc<Self>, reserved: usize, deliveries: Vec<Delivery>) {
        if deliveries.is_empty() && reserved == 0 {
            return;
        }
        let (admitted, surplus) = self.slots.settle(reserved, deliveries);
        for (d, stop) in admitted {
            attempt::spawn(self, d, stop);
        }
        if !surplus.is_empty() {
            self.hand_back(surplus).await;
        }
    }

    /// Gives deliveries this worker will not run back to their band (no
    /// attempt used).
    async fn hand_back(&self, surplus: Vec<Delivery>) {
        let endings: Vec<Ending> = surplus
            .into_iter()
            .map(|d| {
                tracing::info!(task_id = %d.id, attempt = d.held.attempt(), "no free slot for a delivery; handing it back");
                Ending {
                    held: d.held,
                    id: d.id,
                    state: EndState::HandBack("no free slot".into()),
                    output: None,
                }
            })
            .collect();
        let answers = endings.into_iter().map(|e| self.completer.complete(e));
        for answer in futures::future::join_all(answers).await {
            if let Err(e) = answer {
                tracing::warn!(error = %e, "hand-back failed; the lease will lapse and another worker takes the task over");
            }
        }
    }

    /// A handler gave a task back unstarted: intake pauses for the
    /// back-off (see `declines`) and resumes by itself.
    fn decline(self: &Arc<Self>, reason: &str) {
        let pause = self.declines.declined();
        tracing::warn!(%reason, pause_ms = pause.as_millis() as u64, "the handler gave the task back unstarted; taking no new tasks for the pause");
        self.status
            .set_last_error(format!("handed a task back unstarted: {reason}"));
        let me = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(pause).await;
            me.slots.poke();
        });
    }

    /// A stop order from the worker's inbox (`rtq3_cancel`).
    fn on_message(&self, raw: &[u8]) {
        match InboxMessage::parse(raw) {
            InboxMessage::Cancel {
                id,
                attempt,
                kind,
                reason,
            } => {
                let why = match kind {
                    CancelKind::Cancelled => StopReason::Cancelled { reason },
                    CancelKind::Deadline => StopReason::Deadline,
                    CancelKind::Requeued => StopReason::Requeued,
                };
                if self.slots.stop(&(id.clone(), attempt), why.clone()) {
                    tracing::info!(task_id = %id, attempt, reason = %why, "stopping task");
                } else {
                    tracing::debug!(task_id = %id, attempt, "a stop order for an attempt not running here");
                }
            }
            other => {
                tracing::warn!(message = ?other, "ignoring an inbox message a stream worker does not take")
            }
        }
    }

    /// Removes the worker from the live set (best effort).
    async fn leave(&self) -> Result<(), Error> {
        redis::cmd("ZREM")
            .arg(v3::live_key(&self.keys))
            .arg(&self.id)
            .query_async::<i64>(&mut self.conn.clone())
            .await?;
        Ok(())
    }
}

/// Stops the background tasks and hands every attempt back if `run` is
/// dropped before it finished (best effort, as v2's).
struct RunGuard {
    rt: Arc<Runtime>,
    stops: Vec<CancellationToken>,
    armed: bool,
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        for stop in &self.stops {
            stop.cancel();
        }
        if !self.armed {
            return;
        }
        // The attempts' tasks outlive this future: stopped, each hands its
        // task back through the completer; then the worker leaves.
        self.rt.forced.store(true, Ordering::Release);
        self.rt.status.draining.store(true, Ordering::Release);
        self.rt.slots.close();
        self.rt.slots.stop_all(StopReason::Shutdown);
        let rt = Arc::clone(&self.rt);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = tokio::time::timeout(FORCED_LEAVE_TIMEOUT, rt.slots.wait(|s| s.idle())).await;
                if let Err(e) = rt.leave().await {
                    tracing::warn!(error = %e, "could not leave after Worker::run was dropped; the lease will lapse");
                }
            });
        }
    }
}

/// Serves the stream queue of `worker` until `shutdown` (see
/// [`Worker::run`]).
pub(super) async fn run(
    worker: Worker,
    handler: Arc<dyn Handler>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let mut intake_rx = worker.intake.subscribe();
    let accepting = *intake_rx.borrow_and_update();
    worker.status.accepting.store(accepting, Ordering::Release);
    let bands = read_bands(&worker.conn, &worker.keys).await?;
    if worker.config.slots > slots::MAX_HELD {
        return Err(Error::InvalidInput(format!(
            "a stream queue's worker may have at most {} slots, got {}",
            slots::MAX_HELD,
            worker.config.slots
        )));
    }
    let writer_stop = CancellationToken::new();
    let rt = Arc::new(Runtime {
        endpoint: worker.endpoint.clone(),
        conn: worker.conn.clone(),
        keys: worker.keys.clone(),
        id: worker.id.clone(),
        bands,
        config: worker.config.clone(),
        status: Arc::clone(&worker.status),
        handler,
        slots: slots::Slots::new(worker.config.slots, Arc::clone(&worker.status)),
        completer: writes::Completer::start(
            worker.conn.clone(),
            worker.keys.clone(),
            worker.id.clone(),
            Arc::clone(&worker.status),
        ),
        chunks: chunks::Chunks::start(
            worker.conn.clone(),
            worker.keys.clone(),
            worker.id.clone(),
            Arc::clone(&worker.status),
            writer_stop.clone(),
        ),
        declines: Declines::default(),
        forced: AtomicBool::new(false),
        takeover_due: AtomicBool::new(false),
    });

    // Start: the library at our revision (an older one would refuse or
    // misread our calls), void what a previous life under this id held,
    // then register.
    crate::cluster::ensure_v3_loaded(&mut rt.conn.clone()).await?;
    let voided = v3::join(&mut rt.conn.clone(), &rt.keys, &rt.id).await?;
    if voided > 0 {
        tracing::warn!(
            voided,
            "a previous run under this worker id held tasks; they were queued again"
        );
    }
    let now = clock::sync(&rt.conn, &rt.status).await?;
    rt.status.started_ms.store(now, Ordering::Release);
    lease::beat(&rt).await?;
    rt.status.redis_ok.store(true, Ordering::Release);

    let inbox_key = rt.keys.inbox(&rt.id);
    let inbox_conn = rt
        .endpoint
        .dedicated(&inbox_key, inbox::RESPONSE_TIMEOUT)
        .await?;
    let blocking = rt
        .endpoint
        .dedicated(&v3::band_key(&rt.keys, 0), intake::RESPONSE_TIMEOUT)
        .await?;
    let (reader_stop, intake_stop, lease_stop) = (
        CancellationToken::new(),
        CancellationToken::new(),
        CancellationToken::new(),
    );
    let mut guard = RunGuard {
        rt: Arc::clone(&rt),
        stops: vec![
            reader_stop.clone(),
            intake_stop.clone(),
            lease_stop.clone(),
            writer_stop.clone(),
        ],
        armed: true,
    };
    let (inbox_tx, mut inbox_rx) = mpsc::channel(64);
    let reader = tokio::spawn(inbox::read(
        rt.endpoint.clone(),
        Some(inbox_conn),
        inbox_key,
        inbox_tx,
        reader_stop.clone(),
        Arc::clone(&rt.status),
        rt.config.lease / 4,
    ));
    let intake = tokio::spawn(intake::run(
        Arc::clone(&rt),
        Some(blocking),
        intake_stop.clone(),
    ));
    let leases = tokio::spawn(lease::run(Arc::clone(&rt), lease_stop.clone()));
    tracing::info!(worker_id = %rt.id, queue = rt.keys.name(), slots = rt.config.slots, bands, "stream worker started");

    tokio::pin!(shutdown);
    let force = worker.force.token.clone();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = force.cancelled() => break,
            Ok(()) = intake_rx.changed() => {
                let accepting = *intake_rx.borrow_and_update();
                rt.status.accepting.store(accepting, Ordering::Release);
                if accepting {
                    tracing::info!("intake resumed");
                } else {
                    tracing::warn!("intake paused: taking no new tasks");
                }
                rt.slots.poke();
            }
            Some(raw) = inbox_rx.recv() => rt.on_message(&raw),
        }
    }

    // Stop: no intake; attempts finish (drain) or are stopped (forced),
    // each handing its task back through the completer.
    rt.status.draining.store(true, Ordering::Release);
    rt.slots.close();
    let forced = tokio::select! {
        biased;
        _ = force.cancelled() => true,
        () = drain(&rt, &mut inbox_rx) => false,
    };
    if forced {
        forced_stop(&rt).await;
    }
    intake_stop.cancel();
    // The intake finishes its blocking read (BLOCK_MS at most) and hands
    // back what it got; a dead Redis must not hold up a forced stop.
    let limit = if forced {
        FORCED_LEAVE_TIMEOUT
    } else {
        intake::RESPONSE_TIMEOUT
    };
    if tokio::time::timeout(limit, intake).await.is_err() {
        tracing::warn!("the intake did not stop in time");
    }
    // Beats stop before the leave: a beat after it would register the
    // worker again.
    lease_stop.cancel();
    let _ = leases.await;
    let left = if forced {
        tokio::time::timeout(FORCED_LEAVE_TIMEOUT, rt.leave())
            .await
            .ok()
    } else {
        Some(rt.leave().await)
    };
    match left {
        Some(Ok(())) => {}
        Some(Err(e)) => tracing::error!(error = %e, "could not leave; the lease will lapse"),
        None => tracing::error!("Redis did not answer the leave in time; the lease will lapse"),
    }
    guard.armed = false;
    drop(guard);
    let _ = reader.await;
    tracing::info!(worker_id = %rt.id, "stream worker stopped");
    Ok(())
}

/// Lets running attempts finish within the grace period, then stops the
/// rest (they hand their tasks back), and waits for every ending.
async fn drain(rt: &Arc<Runtime>, inbox: &mut mpsc::Receiver<Vec<u8>>) {
    tracing::info!(
        running = rt.slots.running(),
        grace_s = rt.config.grace.as_secs_f64(),
        "draining"
    );
    let grace_end = Instant::now() + rt.config.grace;
    let finished = rt.slots.wait(|s| s.running() == 0);
    tokio::pin!(finished);
    loop {
        tokio::select! {
            () = &mut finished => break,
            _ = tokio::time::sleep_until(grace_end.into()) => break,
            Some(raw) = inbox.recv() => rt.on_message(&raw),
        }
    }
    if rt.slots.running() > 0 {
        tracing::warn!(
            running = rt.slots.running(),
            "grace period over; handing tasks back"
        );
        rt.slots.stop_all(StopReason::Shutdown);
    }
    // Handlers get their cancel grace; endings their patience.
    let patience = rt.config.cancel_grace * 2 + Duration::from_secs(10);
    if tokio::time::timeout(patience, rt.slots.wait(|s| s.idle()))
        .await
        .is_err()
    {
        tracing::error!("attempts did not end in time; their leases will lapse");
        rt.slots.abort_all();
    }
}

/// Stops every attempt now; what is not handed back within
/// [`FORCED_LEAVE_TIMEOUT`] goes back when its lease lapses.
async fn forced_stop(rt: &Arc<Runtime>) {
    tracing::warn!(
        running = rt.slots.running(),
        "forced stop: handing every running task back now"
    );
    rt.forced.store(true, Ordering::Release);
    rt.slots.stop_all(StopReason::Shutdown);
    if tokio::time::timeout(FORCED_LEAVE_TIMEOUT, rt.slots.wait(|s| s.idle()))
        .await
        .is_err()
    {
        tracing::error!(
            timeout_ms = FORCED_LEAVE_TIMEOUT.as_millis() as u64,
            "Redis did not take the forced hand-back in time; the leases will lapse"
        );
        rt.slots.abort_all();
    }
}

/// The queue's band count from its meta hash.
async fn read_bands(conn: &RedisConnection, keys: &QueueKeys) -> Result<u8, Error> {
    let raw: Option<String> = redis::cmd("HGET")
        .arg(keys.meta())
        .arg("bands")
        .query_async(&mut conn.clone())
        .await?;
    raw.as_deref()
        .and_then(|b| b.parse::<u8>().ok())
        .filter(|b| (1..=v3::MAX_BANDS).contains(b))
        .ok_or_else(|| {
            Error::Protocol(format!(
                "stream queue {} has no valid band count ({raw:?})",
                keys.name()
            ))
        })
}
