//! The worker runtime: registers a worker process, keeps its heartbeat,
//! receives tasks pushed to its inbox, runs a [`Handler`] per slot, writes
//! chunks and results, and shuts down cleanly.
//!
//! Layout: `config` (settings and live status), `handler` (the trait and
//! the task context), `writer` (chunk writes and completion), `slot` (one
//! task's life), `heartbeat` (liveness and housekeeping), this file (the
//! inbox loop and shutdown).

mod config;
mod handler;
mod heartbeat;
mod slot;
mod writer;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::Value;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::{WorkerConfig, WorkerStatus};
pub use handler::{Handler, HandlerError, Stopped, TaskContext};
pub use writer::Granularity;

use crate::connection::Endpoint;
use crate::error::Error;
use crate::keys::{validate_id, QueueKeys, QUEUES};
use crate::protocol::{value_to_string, InboxMessage, TaskDelivery};
use crate::scripts::scripts;
use handler::StopSignal;

/// How long one BLPOP on the inbox blocks on the server. Long: every
/// re-issue opens a one-round-trip window in which a pushed task waits.
const INBOX_BLOCK_SECS: f64 = 10.0;
/// Response timeout of the inbox connection (above the BLPOP timeout).
const INBOX_RESPONSE_TIMEOUT: Duration = Duration::from_secs(15);

/// One attempt running in this process.
struct Running {
    attempt: u64,
    stop: StopSignal,
}

/// State shared by the inbox loop, the slots and the heartbeat.
pub(crate) struct Shared {
    conn: ConnectionManager,
    keys: QueueKeys,
    id: String,
    config: WorkerConfig,
    status: Arc<WorkerStatus>,
    handler: Arc<dyn Handler>,
    running: Mutex<HashMap<String, Running>>,
}

impl Shared {
    fn want_next(&self) -> bool {
        self.status.accepting.load(Ordering::Acquire)
            && !self.status.draining.load(Ordering::Acquire)
    }

    fn running_ids(&self) -> Vec<String> {
        self.running
            .lock()
            .map(|r| r.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn stop_all(&self, reason: &str) {
        if let Ok(r) = self.running.lock() {
            for run in r.values() {
                run.stop.stop(reason);
            }
        }
    }

    async fn claim(&self, slots: usize) -> Result<Vec<TaskDelivery>, Error> {
        if slots == 0 {
            return Ok(Vec::new());
        }
        let msgs: Vec<Value> = scripts()
            .claim
            .key(self.keys.prefix())
            .arg(&self.id)
            .arg(self.config.lease.as_millis() as u64)
            .arg(slots)
            .invoke_async(&mut self.conn.clone())
            .await?;
        let mut out = Vec::new();
        for m in msgs {
            if let InboxMessage::Task(d) = InboxMessage::parse(&value_to_string(&m))? {
                out.push(d);
            }
        }
        Ok(out)
    }

    async fn deregister(&self, mode: &str, ids: &[String]) -> Result<i64, Error> {
        let mut inv = scripts().deregister.key(self.keys.prefix());
        inv.arg(&self.id).arg(mode);
        for id in ids {
            inv.arg(id);
        }
        let reply: Vec<i64> = inv.invoke_async(&mut self.conn.clone()).await?;
        Ok(reply.first().copied().unwrap_or(0))
    }
}

/// Switches a worker's intake on and off (used for upstream health: while
/// the model server is down the worker takes no new tasks).
#[derive(Clone)]
pub struct IntakeSwitch {
    tx: watch::Sender<bool>,
}

impl IntakeSwitch {
    /// Takes new tasks (`true`) or stops taking them (`false`); running
    /// tasks are not affected.
    pub fn set(&self, accepting: bool) {
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
    conn: ConnectionManager,
    keys: QueueKeys,
    config: WorkerConfig,
    id: String,
    status: Arc<WorkerStatus>,
    intake: watch::Sender<bool>,
}

impl Worker {
    /// Connects to Redis and prepares a worker (nothing is taken yet).
    ///
    /// # Errors
    /// [`Error::Connection`] (password redacted), [`Error::InvalidName`].
    pub async fn connect(url: &str, config: WorkerConfig) -> Result<Self, Error> {
        let keys = QueueKeys::new(&config.queue)?;
        let id = match &config.worker_id {
            Some(id) => id.clone(),
            None => default_worker_id(&config.host),
        };
        validate_id(&id, "worker id")?;
        let endpoint = Endpoint::parse(url)?;
        let conn = endpoint.shared().await?;
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

    /// A switch to stop and resume taking new tasks.
    pub fn intake(&self) -> IntakeSwitch {
        IntakeSwitch {
            tx: self.intake.clone(),
        }
    }

    /// Runs until `shutdown` completes, then drains: takes no new tasks,
    /// lets running ones finish within the grace period, and hands the rest
    /// back to the queue at once.
    ///
    /// # Errors
    /// [`Error::Connection`] if Redis cannot be reached at start; later
    /// connection trouble is retried with backoff and logged.
    pub async fn run<H: Handler>(
        self,
        handler: Arc<H>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), Error> {
        let mut intake_rx = self.intake.subscribe();
        // The switch may have been flipped before run() (say, a health probe
        // that found the upstream down): start from its current value.
        let accepting = *intake_rx.borrow_and_update();
        self.status.accepting.store(accepting, Ordering::Release);
        let shared = Arc::new(Shared {
            conn: self.conn.clone(),
            keys: self.keys.clone(),
            id: self.id.clone(),
            config: self.config.clone(),
            status: Arc::clone(&self.status),
            handler,
            running: Mutex::new(HashMap::new()),
        });
        let _: redis::RedisResult<i64> = redis::cmd("SADD")
            .arg(QUEUES)
            .arg(self.keys.name())
            .query_async(&mut self.conn.clone())
            .await;
        let inbox = self.endpoint.dedicated(INBOX_RESPONSE_TIMEOUT).await?;
        heartbeat::beat(&shared).await?;
        let mut slots = JoinSet::new();
        let offered = if accepting { self.config.slots } else { 0 };
        for delivery in shared.claim(offered).await? {
            slots.spawn(slot::run(Arc::clone(&shared), delivery));
        }
        let hb_stop = CancellationToken::new();
        let hb = tokio::spawn(heartbeat::run_loop(Arc::clone(&shared), hb_stop.clone()));
        tracing::info!(worker_id = %self.id, queue = self.keys.name(), slots = self.config.slots, "worker started");

        tokio::pin!(shutdown);
        let reader_stop = CancellationToken::new();
        let (inbox_tx, mut inbox_rx) = tokio::sync::mpsc::channel(64);
        let reader = tokio::spawn(read_inbox(
            self.endpoint.clone(),
            inbox,
            self.keys.inbox(&self.id),
            inbox_tx,
            reader_stop.clone(),
            Arc::clone(&self.status),
        ));
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Ok(()) = intake_rx.changed() => {
                    let accepting = *intake_rx.borrow_and_update();
                    self.status.accepting.store(accepting, Ordering::Release);
                    let result = if accepting {
                        tracing::info!("intake resumed");
                        let free = self.config.slots.saturating_sub(self.status.busy.load(Ordering::Acquire));
                        match shared.deregister("tokens", &[]).await {
                            Ok(_) => shared.claim(free).await.map(|ds| {
                                for d in ds { slots.spawn(slot::run(Arc::clone(&shared), d)); }
                            }),
                            Err(e) => Err(e),
                        }
                    } else {
                        tracing::warn!("intake paused: taking no new tasks");
                        shared.deregister("tokens", &[]).await.map(|_| ())
                    };
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "could not switch intake");
                    }
                }
                Some(joined) = slots.join_next(), if !slots.is_empty() => log_join(joined),
                Some(raw) = inbox_rx.recv() => self.on_message(&shared, &raw, &mut slots).await,
            }
        }

        self.drain(&shared, &mut inbox_rx, &mut slots).await;
        reader_stop.cancel();
        let _ = reader.await;
        hb_stop.cancel();
        let _ = hb.await;
        tracing::info!(worker_id = %self.id, "worker stopped");
        Ok(())
    }

    async fn on_message(&self, shared: &Arc<Shared>, raw: &str, slots: &mut JoinSet<()>) {
        match InboxMessage::parse(raw) {
            Ok(InboxMessage::Task(d)) => {
                if self.status.draining.load(Ordering::Acquire) {
                    if let Err(e) = shared.deregister("ids", std::slice::from_ref(&d.id)).await {
                        tracing::warn!(task_id = %d.id, error = %e, "hand-back failed");
                    }
                } else {
                    slots.spawn(slot::run(Arc::clone(shared), d));
                }
            }
            Ok(InboxMessage::Cancel {
                id,
                attempt,
                reason,
            }) => {
                if let Ok(r) = shared.running.lock() {
                    if let Some(run) = r.get(&id).filter(|run| run.attempt == attempt) {
                        tracing::info!(task_id = %id, %reason, "stopping task");
                        run.stop.stop(&format!("cancelled: {reason}"));
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "ignoring inbox message"),
        }
    }

    async fn drain(
        &self,
        shared: &Arc<Shared>,
        inbox: &mut tokio::sync::mpsc::Receiver<String>,
        slots: &mut JoinSet<()>,
    ) {
        self.status.draining.store(true, Ordering::Release);
        tracing::info!(
            running = slots.len(),
            grace_s = self.config.grace.as_secs_f64(),
            "draining"
        );
        if let Err(e) = shared.deregister("tokens", &[]).await {
            tracing::warn!(error = %e, "could not withdraw idle tokens");
        }
        let grace_end = Instant::now() + self.config.grace;
        while !slots.is_empty() {
            tokio::select! {
                Some(joined) = slots.join_next() => log_join(joined),
                _ = tokio::time::sleep_until(grace_end.into()) => break,
                Some(raw) = inbox.recv() => self.on_message(shared, &raw, slots).await,
            }
        }
        if !slots.is_empty() {
            tracing::warn!(
                running = slots.len(),
                "grace period over; handing tasks back"
            );
            shared.stop_all("shutting down");
            slots.abort_all();
            while let Some(joined) = slots.join_next().await {
                if let Err(e) = joined {
                    if !e.is_cancelled() {
                        tracing::warn!(error = %e, "slot ended abnormally");
                    }
                }
            }
        }
        match shared.deregister("all", &[]).await {
            Ok(n) if n > 0 => tracing::info!(handed_back = n, "handed tasks back to the queue"),
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "could not deregister; the lease will expire and the reaper will requeue")
            }
        }
    }
}

/// Reads the worker's inbox on a connection of its own and forwards each
/// message. A BLPOP is never abandoned mid-flight (that would lose the
/// popped message), except after deregistration emptied the inbox.
async fn read_inbox(
    endpoint: Endpoint,
    mut conn: redis::aio::MultiplexedConnection,
    key: String,
    tx: tokio::sync::mpsc::Sender<String>,
    stop: CancellationToken,
    status: Arc<WorkerStatus>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let popped = tokio::select! {
            _ = stop.cancelled() => return,
            popped = blpop(&mut conn, &key) => popped,
        };
        match popped {
            Ok(Some(raw)) => {
                backoff = Duration::from_millis(100);
                if tx.send(raw).await.is_err() {
                    return;
                }
            }
            Ok(None) => backoff = Duration::from_millis(100),
            Err(e) => {
                tracing::warn!(error = %e, "inbox read failed; reconnecting");
                status.set_last_error(format!("inbox read failed: {e}"));
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                if let Ok(c) = endpoint.dedicated(INBOX_RESPONSE_TIMEOUT).await {
                    conn = c;
                }
            }
        }
    }
}

async fn blpop(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
) -> redis::RedisResult<Option<String>> {
    let reply: Option<(String, String)> = redis::cmd("BLPOP")
        .arg(key)
        .arg(INBOX_BLOCK_SECS)
        .query_async(conn)
        .await?;
    Ok(reply.map(|(_, v)| v))
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
