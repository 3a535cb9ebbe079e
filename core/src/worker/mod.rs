//! The worker runtime: registers a worker process, keeps its heartbeat,
//! receives tasks pushed to its inbox, runs a [`Handler`] per slot, writes
//! chunks and results, and shuts down cleanly.
//!
//! # Layout
//! - `config`: settings and the live status;
//! - `handler`: the [`Handler`] trait, [`TaskContext`], [`StopReason`];
//! - `pool`: the slot pool, sole owner of the capacity invariant (never
//!   more than `slots` attempts, keyed by task id *and* attempt);
//! - `slot`: one slot's life (run, complete, take the next task);
//! - `writer`: chunk writes and completion;
//! - `budget`: a running attempt's output budget (bytes not yet in Redis;
//!   `TaskContext::send` waits while it is spent);
//! - `coalescer`: coalesces the chunk writes and completes of the slots
//!   into one call while one is in flight;
//! - `declines`: the intake back-off after a handler hands a task back
//!   unstarted ([`HandlerError::not_started`]);
//! - `heartbeat`: liveness, reconciliation with Redis, housekeeping;
//! - `stats`: the worker's share of the queue statistics, sent with the
//!   heartbeat (nothing on the per-task path);
//! - `inbox`: the blocking inbox reader;
//! - `stream`: the runtime of a `stream` queue (protocol v3), chosen by
//!   `run` from the queue's `mode`;
//! - this file: [`Worker`], the inbox loop, intake switching, shutdown.

mod budget;
mod coalescer;
mod config;
mod declines;
mod handler;
mod heartbeat;
mod inbox;
mod pool;
mod slot;
mod stats;
mod stream;
mod writer;

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::connection::RedisConnection;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use budget::DEFAULT_MAX_BUFFERED_OUTPUT_BYTES;
pub use config::{ErrorSource, WorkerConfig, WorkerStatus};
pub use handler::{Handler, HandlerError, StopReason, Stopped, TaskContext};
pub use writer::Granularity;

use crate::connection::Endpoint;
use crate::error::Error;
use crate::functions::release::{HandBack, Release, ReleaseMode, ReleaseReply};
use crate::functions::{self};
use crate::keys::{validate_id, QueueKeys};
use crate::protocol::{CancelKind, InboxMessage};
use crate::server::ServerReport;
use heartbeat::Beaten;
use pool::{Refusal, SlotPool};
use slot::Job;

/// State shared by the inbox loop, the slots and the heartbeat.
pub(crate) struct Shared {
    conn: RedisConnection,
    keys: QueueKeys,
    id: String,
    /// Random per process: a restart under the same id is a new instance.
    instance: String,
    config: WorkerConfig,
    status: Arc<WorkerStatus>,
    handler: Arc<dyn Handler>,
    pool: SlotPool,
    /// Wakes the heartbeat early (intake switched).
    beat_now: Notify,
    /// Statistics waiting for the next heartbeat.
    stats: stats::StatsTally,
    /// Sends the slots' chunk writes and completes, coalesced under load.
    coalescer: coalescer::Coalescer,
    /// Hand-backs of unstarted tasks in a row, and the intake pause they
    /// call for.
    declines: declines::Declines,
}

impl Shared {
    /// True while the worker takes new tasks.
    fn want_next(&self) -> bool {
        self.status.accepting.load(Ordering::Acquire)
            && !self.status.draining.load(Ordering::Acquire)
            && !self.declines.pausing()
    }

    /// A handler gave a task back unstarted: hands it back without using
    /// an attempt and pauses intake for the back-off (see `declines`);
    /// when the pause ends, the heartbeat reopens the free slots at once.
    async fn decline(self: &Arc<Self>, id: &str, attempt: u64, reason: &str) {
        let pause = self.declines.declined();
        tracing::warn!(
            task_id = %id,
            attempt,
            %reason,
            pause_ms = pause.as_millis() as u64,
            "the handler gave the task back unstarted; taking no new tasks for the pause"
        );
        self.status
            .set_last_error(format!("handed a task back unstarted: {reason}"));
        self.hand_back(vec![HandBack {
            id: id.to_string(),
            attempt,
            started: false,
        }])
        .await;
        let me = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(pause).await;
            me.beat_now.notify_one();
        });
    }

    async fn release(&self, mode: ReleaseMode, items: &[HandBack]) -> Result<u64, Error> {
        let release = Release {
            worker: &self.id,
            instance: &self.instance,
            mode,
            items,
        };
        match functions::call(&mut self.conn.clone(), &self.keys, &release).await? {
            ReleaseReply::Ok { handed_back } => Ok(handed_back),
            ReleaseReply::Gone | ReleaseReply::Replaced => Ok(0),
        }
    }

    /// Gives deliveries this process will not run back to the queue.
    async fn hand_back(&self, items: Vec<HandBack>) {
        for item in &items {
            tracing::info!(task_id = %item.id, attempt = item.attempt, "handing a delivery back");
        }
        if let Err(e) = self.release(ReleaseMode::HandBack, &items).await {
            tracing::warn!(error = %e, "hand-back failed; the heartbeat's orphan sweep will requeue");
        }
    }
}

/// After a forced stop, how long handlers get to return before their
/// futures are dropped (their attempts are handed back either way).
const FORCED_HANDLER_WAIT: Duration = Duration::from_secs(1);
/// After a forced stop, how long the hand-back and leave may take: a dead
/// or unreachable Redis must not hold up the exit (the attempts then go
/// back when the lease lapses, as after a kill).
pub const FORCED_LEAVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Forces a running worker to stop at once, for an operator who will not
/// wait for the drain (a second SIGTERM). See [`Worker::force_stop`].
#[derive(Clone, Debug, Default)]
pub struct ForceStop {
    token: CancellationToken,
}

impl ForceStop {
    /// Stops the worker now: every running attempt is stopped
    /// ([`StopReason::Shutdown`]) and, after at most a second for its
    /// handler to return, handed back to the queue with `rtq2_release`
    /// (an attempt whose handler had started counts as interrupted and
    /// uses one; a delivery never started does not), then the worker
    /// leaves. The hand-back is bounded by [`FORCED_LEAVE_TIMEOUT`].
    /// Works before the drain and during it.
    pub fn force(&self) {
        self.token.cancel();
    }

    /// True once [`force`](Self::force) was called.
    pub fn is_forced(&self) -> bool {
        self.token.is_cancelled()
    }
}

/// Switches a worker's intake on and off (used for upstream health: while
/// the model server is down the worker takes no new tasks).
#[derive(Clone)]
pub struct IntakeSwitch {
    tx: watch::Sender<bool>,
    status: Arc<WorkerStatus>,
}

impl IntakeSwitch {
    /// Takes new tasks (`true`) or stops taking them (`false`); running
    /// tasks are not affected. Takes effect at once: a slot that finishes
    /// a task after `set(false)` returns takes no next task with its
    /// complete (the worker then withdraws its free slots in Redis).
    pub fn set(&self, accepting: bool) {
        self.status.accepting.store(accepting, Ordering::Release);
        self.tx.send_if_modified(|v| {
            let changed = *v != accepting;
            *v = accepting;
            changed
        });
    }
}

/// A worker process serving one queue.
///
/// # Examples
/// ```no_run
/// # use std::sync::Arc;
/// # use rtq_core::{async_trait, Handler, HandlerError, TaskContext, Worker, WorkerConfig};
/// # struct Echo;
/// # #[async_trait]
/// # impl Handler for Echo {
/// #     async fn handle(&self, t: TaskContext) -> Result<serde_json::Value, HandlerError> {
/// #         Ok(t.input().cloned().unwrap_or_default())
/// #     }
/// # }
/// # async fn demo() -> Result<(), rtq_core::Error> {
/// let worker = Worker::connect("redis://127.0.0.1", WorkerConfig::new("llm").slots(4)).await?;
/// worker.run(Arc::new(Echo), async { let _ = tokio::signal::ctrl_c().await; }).await?;
/// # Ok(()) }
/// ```
pub struct Worker {
    endpoint: Endpoint,
    conn: RedisConnection,
    keys: QueueKeys,
    config: WorkerConfig,
    id: String,
    status: Arc<WorkerStatus>,
    intake: watch::Sender<bool>,
    /// Cancelled by [`ForceStop::force`].
    force: ForceStop,
}

/// Stops the background tasks and hands everything back if `run` is
/// dropped before it finished (cancel safety).
struct RunGuard {
    shared: Arc<Shared>,
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
        self.shared.pool.stop_all(StopReason::Shutdown);
        let items = self.shared.pool.hand_backs();
        let shared = Arc::clone(&self.shared);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = shared.release(ReleaseMode::Leave, &items).await {
                    tracing::warn!(error = %e, "could not leave after Worker::run was dropped; the lease will lapse");
                }
            });
        }
    }
}

impl Worker {
    /// Connects to Redis, checks the server, and prepares a worker (nothing
    /// is taken yet).
    ///
    /// # Errors
    /// [`Error::Connection`] (password redacted), [`Error::InvalidName`],
    /// [`Error::InvalidInput`] for settings out of range,
    /// [`Error::UnsuitableServer`] for a Redis that would lose tasks
    /// silently (an evicting `maxmemory-policy`) or is older than 7.0.
    pub async fn connect(url: &str, config: WorkerConfig) -> Result<Self, Error> {
        let keys = QueueKeys::new(&config.queue)?;
        config.validate()?;
        let id = match &config.worker_id {
            Some(id) => id.clone(),
            None => default_worker_id(&config.host),
        };
        validate_id(&id, "worker id")?;
        let endpoint = Endpoint::parse(url, &config.tls)?;
        let mut conn = endpoint.shared().await?;
        match ServerReport::read(&mut conn).await {
            Ok(report) => report.enforce()?,
            Err(e) => tracing::warn!(error = %e, "could not check the Redis server (INFO)"),
        }
        crate::cluster::refuse_moving_queue(&mut conn, &keys).await?;
        let status = Arc::new(WorkerStatus::default());
        status.accepting.store(true, Ordering::Release);
        Ok(Self {
            endpoint,
            conn,
            keys,
            config,
            id,
            status,
            intake: watch::channel(true).0,
            force: ForceStop::default(),
        })
    }

    /// This worker's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Live counters (shared; read them while the worker runs).
    pub fn status(&self) -> Arc<WorkerStatus> {
        Arc::clone(&self.status)
    }

    /// A handle that stops this worker at once, running tasks handed back
    /// without the drain (see [`ForceStop::force`]). The graceful stop is
    /// the `shutdown` future of [`run`](Self::run).
    pub fn force_stop(&self) -> ForceStop {
        self.force.clone()
    }

    /// A switch to stop and resume taking new tasks.
    pub fn intake(&self) -> IntakeSwitch {
        IntakeSwitch {
            tx: self.intake.clone(),
            status: Arc::clone(&self.status),
        }
    }

    /// Runs until `shutdown` completes, then drains: takes no new tasks,
    /// lets running ones finish within the grace period, and hands the rest
    /// back to the queue. [`ForceStop::force`] (see
    /// [`force_stop`](Self::force_stop)), before or during the drain, stops
    /// every attempt at once and hands it back, waiting for Redis at most
    /// [`FORCED_LEAVE_TIMEOUT`]. Dropping the returned future instead stops
    /// everything and hands every attempt back (best effort: nothing waits
    /// for the hand-back, which a process exiting right after never sends).
    ///
    /// The queue's mode is read once here: a `stream` queue (protocol v3)
    /// is served by the stream runtime (`worker::stream`: `rtq3_join`,
    /// band-by-band reads, `rtq3_beat` and `rtq3_takeover` every third of
    /// the lease, hand-backs with `rtq3_complete`), any other by v2's.
    ///
    /// # Errors
    /// [`Error::Connection`] if Redis cannot be reached at start;
    /// [`Error::WorkerReplaced`] if another process registers under this
    /// worker id. Later connection trouble is retried and logged.
    pub async fn run<H: Handler>(
        self,
        handler: Arc<H>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), Error> {
        // The queue's kind, read once: a stream queue has its own runtime.
        let mode: Option<String> = redis::cmd("HGET")
            .arg(self.keys.meta())
            .arg("mode")
            .query_async(&mut self.conn.clone())
            .await?;
        if mode.as_deref() == Some("stream") {
            return stream::run(self, handler, shutdown).await;
        }
        let mut intake_rx = self.intake.subscribe();
        // The switch may have been flipped before run() (say, a health probe
        // that found the upstream down): start from its current value.
        let accepting = *intake_rx.borrow_and_update();
        self.status.accepting.store(accepting, Ordering::Release);
        let shared = Arc::new(Shared {
            conn: self.conn.clone(),
            keys: self.keys.clone(),
            id: self.id.clone(),
            instance: uuid::Uuid::now_v7().simple().to_string(),
            config: self.config.clone(),
            status: Arc::clone(&self.status),
            handler,
            pool: SlotPool::new(self.config.slots, Arc::clone(&self.status)),
            beat_now: Notify::new(),
            stats: stats::StatsTally::default(),
            coalescer: coalescer::Coalescer::start(
                self.conn.clone(),
                self.keys.clone(),
                self.id.clone(),
            ),
            declines: declines::Declines::default(),
        });
        // The inbox reader first: registration dispatches into the inbox.
        let inbox_conn = self
            .endpoint
            .dedicated(&self.keys.inbox(&self.id), inbox::RESPONSE_TIMEOUT)
            .await?;
        let reader_stop = CancellationToken::new();
        let hb_stop = CancellationToken::new();
        let fatal = CancellationToken::new();
        let mut guard = RunGuard {
            shared: Arc::clone(&shared),
            stops: vec![reader_stop.clone(), hb_stop.clone()],
            armed: true,
        };
        let (inbox_tx, mut inbox_rx) = mpsc::channel(64);
        let reader = tokio::spawn(inbox::read(
            self.endpoint.clone(),
            Some(inbox_conn),
            self.keys.inbox(&self.id),
            inbox_tx,
            reader_stop.clone(),
            Arc::clone(&self.status),
            self.config.lease / 4,
        ));
        if let Beaten::Replaced = heartbeat::beat(&shared, true).await? {
            return Err(Error::WorkerReplaced {
                worker: self.id.clone(),
            });
        }
        let hb = tokio::spawn(heartbeat::run_loop(
            Arc::clone(&shared),
            hb_stop.clone(),
            fatal.clone(),
        ));
        tracing::info!(worker_id = %self.id, queue = self.keys.name(), slots = self.config.slots, "worker started");

        tokio::pin!(shutdown);
        let mut slots = JoinSet::new();
        let mut replaced = false;
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = self.force.token.cancelled() => break,
                _ = fatal.cancelled() => {
                    replaced = true;
                    break;
                }
                Ok(()) = intake_rx.changed() => {
                    let accepting = *intake_rx.borrow_and_update();
                    self.status.accepting.store(accepting, Ordering::Release);
                    if accepting {
                        tracing::info!("intake resumed");
                    } else {
                        tracing::warn!("intake paused: taking no new tasks");
                        if let Err(e) = shared.release(ReleaseMode::Pause, &[]).await {
                            tracing::warn!(error = %e, "could not withdraw free slots");
                        }
                    }
                    // The heartbeat reports the new capacity at once.
                    shared.beat_now.notify_one();
                }
                Some(joined) = slots.join_next(), if !slots.is_empty() => log_join(joined),
                Some(raw) = inbox_rx.recv() => on_message(&shared, &raw, &mut slots).await,
            }
        }

        if replaced {
            slots.abort_all();
            while slots.join_next().await.is_some() {}
            guard.armed = false;
            return Err(Error::WorkerReplaced {
                worker: self.id.clone(),
            });
        }
        let force = self.force.token.clone();
        let (items, forced) = tokio::select! {
            biased;
            _ = force.cancelled() => (self.forced(&shared, &mut inbox_rx, &mut slots).await, true),
            items = self.drain(&shared, &mut inbox_rx, &mut slots) => (items, false),
        };
        // The heartbeat stops before the worker leaves: a beat landing after
        // the leave would hear GONE and register the worker again.
        hb_stop.cancel();
        if forced {
            // A beat stuck on a dead Redis must not hold up the exit.
            hb.abort();
        }
        let _ = hb.await;
        let leave = shared.release(ReleaseMode::Leave, &items);
        let left = if forced {
            tokio::time::timeout(FORCED_LEAVE_TIMEOUT, leave).await.ok()
        } else {
            Some(leave.await)
        };
        match left {
            Some(Ok(n)) if n > 0 => {
                tracing::info!(handed_back = n, forced, "handed tasks back to the queue")
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::error!(error = %e, "could not deregister; the lease will lapse and housekeeping will requeue")
            }
            None => tracing::error!(
                timeout_ms = FORCED_LEAVE_TIMEOUT.as_millis() as u64,
                "Redis did not answer the forced hand-back in time; the lease will lapse and housekeeping will requeue"
            ),
        }
        guard.armed = false;
        reader_stop.cancel();
        let _ = reader.await;
        tracing::info!(worker_id = %self.id, "worker stopped");
        Ok(())
    }

    /// The forced stop: stops every attempt at once, gives handlers at most
    /// [`FORCED_HANDLER_WAIT`] to return, drops the rest, and returns what
    /// to hand back when leaving (what a drain cut short had not handed
    /// back yet; deliveries it never listed are handed back by the leave,
    /// which returns every task the worker still owns).
    async fn forced(
        &self,
        shared: &Arc<Shared>,
        inbox: &mut mpsc::Receiver<Vec<u8>>,
        slots: &mut JoinSet<()>,
    ) -> Vec<HandBack> {
        tracing::warn!(
            running = shared.pool.busy(),
            "forced stop: handing every running task back now"
        );
        self.status.draining.store(true, Ordering::Release);
        let mut items: Vec<HandBack> = shared
            .pool
            .set_closed(true)
            .iter()
            .map(Job::unstarted)
            .collect();
        shared.pool.stop_all(StopReason::Shutdown);
        let wait = shared.config.cancel_grace.min(FORCED_HANDLER_WAIT);
        let stopped = async { while slots.join_next().await.is_some() {} };
        if tokio::time::timeout(wait, stopped).await.is_err() {
            slots.abort_all();
            while slots.join_next().await.is_some() {}
        }
        items.extend(shared.pool.hand_backs());
        items.extend(unstarted_deliveries(inbox));
        items
    }

    /// Stops intake, lets running tasks finish within the grace period,
    /// stops the rest, and returns what to hand back when leaving.
    async fn drain(
        &self,
        shared: &Arc<Shared>,
        inbox: &mut mpsc::Receiver<Vec<u8>>,
        slots: &mut JoinSet<()>,
    ) -> Vec<HandBack> {
        self.status.draining.store(true, Ordering::Release);
        let held: Vec<HandBack> = shared
            .pool
            .set_closed(true)
            .iter()
            .map(Job::unstarted)
            .collect();
        if !held.is_empty() {
            shared.hand_back(held).await;
        }
        tracing::info!(
            running = shared.pool.busy(),
            grace_s = self.config.grace.as_secs_f64(),
            "draining"
        );
        if let Err(e) = shared.release(ReleaseMode::Pause, &[]).await {
            tracing::warn!(error = %e, "could not withdraw free slots");
        }
        let grace_end = Instant::now() + self.config.grace;
        while !slots.is_empty() {
            tokio::select! {
                Some(joined) = slots.join_next() => log_join(joined),
                _ = tokio::time::sleep_until(grace_end.into()) => break,
                Some(raw) = inbox.recv() => on_message(shared, &raw, slots).await,
            }
        }
        if !slots.is_empty() {
            tracing::warn!(
                running = slots.len(),
                "grace period over; handing tasks back"
            );
            shared.pool.stop_all(StopReason::Shutdown);
            // Handlers get their cancel grace to return; then they are
            // dropped (their attempts stay registered and are handed back).
            let stopped = async { while slots.join_next().await.is_some() {} };
            if tokio::time::timeout(self.config.cancel_grace * 2, stopped)
                .await
                .is_err()
            {
                slots.abort_all();
                while slots.join_next().await.is_some() {}
            }
        }
        // One last beat carries the statistics of the tasks that ended
        // since the previous one. It runs while the pool still reports
        // the attempts being handed back (a beat that did not report them
        // would sweep them as lost deliveries).
        if shared.stats.has_pending() {
            if let Err(e) = heartbeat::beat(shared, false).await {
                tracing::debug!(error = %e, "could not send the last statistics");
            }
        }
        // Deliveries still queued in the channel were never started.
        let mut items = shared.pool.hand_backs();
        items.extend(unstarted_deliveries(inbox));
        items
    }
}

/// The deliveries still queued in the inbox channel, drained: never
/// started, so handed back without using an attempt.
fn unstarted_deliveries(inbox: &mut mpsc::Receiver<Vec<u8>>) -> Vec<HandBack> {
    let mut items = Vec::new();
    while let Ok(raw) = inbox.try_recv() {
        if let InboxMessage::Task(d) = InboxMessage::parse(&raw) {
            items.push(HandBack {
                id: d.id,
                attempt: d.attempt,
                started: false,
            });
        }
    }
    items
}

/// Handles one inbox message: a delivery is admitted into a free slot or
/// handed back at once; a cancel stops exactly the attempt it names.
async fn on_message(shared: &Arc<Shared>, raw: &[u8], slots: &mut JoinSet<()>) {
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
            if shared.pool.stop(&(id.clone(), attempt), why.clone()) {
                tracing::info!(task_id = %id, attempt, reason = %why, "stopping task");
            }
        }
        message => {
            let Some(job) = Job::from_message(message) else {
                return;
            };
            let key = job.key();
            let admitted = if shared.want_next() || matches!(job, Job::Reject { .. }) {
                shared.pool.admit_or_hold(job)
            } else {
                Err((Refusal::Closed, Some(job)))
            };
            match admitted {
                Ok((admitted, job)) => {
                    slots.spawn(slot::run(Arc::clone(shared), admitted, job));
                }
                Err((Refusal::Duplicate, _)) => {
                    tracing::debug!(task_id = %key.0, attempt = key.1, "ignoring a repeated delivery");
                }
                Err((Refusal::Held, _)) => {
                    tracing::debug!(task_id = %key.0, attempt = key.1, "holding a delivery for a slot that is completing");
                }
                Err((refusal, _)) => {
                    tracing::warn!(task_id = %key.0, attempt = key.1, ?refusal, "no free slot for a delivery; handing it back");
                    let shared = Arc::clone(shared);
                    slots.spawn(async move {
                        shared
                            .hand_back(vec![HandBack {
                                id: key.0,
                                attempt: key.1,
                                started: false,
                            }])
                            .await;
                    });
                }
            }
        }
    }
}

/// Sleeps until `at`, or forever without one (for optional timers in
/// `select!`).
pub(crate) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

fn log_join(joined: Result<(), tokio::task::JoinError>) {
    if let Err(e) = joined {
        if !e.is_cancelled() {
            tracing::error!(error = %e, "slot task failed");
        }
    }
}

fn default_worker_id(host: &str) -> String {
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(40)
        .collect();
    let rand = uuid::Uuid::now_v7().simple().to_string();
    format!(
        "{}-{}-{}",
        if host.is_empty() { "worker" } else { &host },
        std::process::id(),
        &rand[rand.len() - 6..]
    )
}
