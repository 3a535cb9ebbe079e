//! The reply router: one reader per (client process, queue) blocks on the
//! client's reply stream with XREAD on a connection of its own, and routes
//! each event to every wait or stream registered for its task. Any number
//! of concurrent waits, several per task id included, costs one blocking
//! connection.
//!
//! The router owns its stream: it creates it (workers write with
//! NOMKSTREAM, so a dead client's stream is never re-created) before the
//! first wait depends on it, and keeps its TTL, re-armed every housekeeping
//! tick. It also owns the stream's subscriptions (`rtq2_watch`): several
//! follows of one task share one, removed when the last of them goes away. Reply events are notifications;
//! the task hash is the truth. So the router also verifies open waits: a
//! task checked and found ended is read from Redis, a task found missing
//! ends its waits with the cause. Checks run 5 s after a wait opens, then
//! at doubling intervals up to 30 s, and at once for every wait when the
//! stream itself vanished (Redis lost its data) or the reader was cut off.
//!
//! Waiters register *before* the submit is sent, so no event is missed.
//! The reader remembers the last entry id it delivered and resumes from it;
//! delivered entries are trimmed in the background. Every reader error
//! backs off (50 ms doubling to 2 s); errors that persist past the
//! client's `give_up_after`, and permission errors at once, end the open
//! waits with the reason.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::connection::RedisConnection;
use redis::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::connection::Endpoint;
use crate::error::Error;
use crate::functions::queue_admin::Housekeep;
use crate::functions::watch::{refuses_held, Held, ResumeWatch, Resumed, Unwatch, Watch};
use crate::keys::QueueKeys;
use crate::protocol::{value_to_bytes, value_to_string, ReplyEvent, TaskState};

/// How long one XREAD blocks on the server before it is re-issued. Long:
/// every re-issue opens a one-round-trip window in which new events wait.
const BLOCK: Duration = Duration::from_secs(10);
/// Entries read per XREAD at most.
const READ_COUNT: usize = 1000;
/// Delivered entries are trimmed from the reply stream once this many
/// wait, or [`TRIM_BYTES`] of them, or [`TRIM_EVERY`] after the last trim,
/// or when a read finds nothing new: not after every read (a trim per
/// result would be a Redis command per task).
const TRIM_ENTRIES: usize = 64;
/// See [`TRIM_ENTRIES`].
const TRIM_BYTES: usize = 1 << 20;
/// See [`TRIM_ENTRIES`].
const TRIM_EVERY: Duration = Duration::from_millis(100);
/// TTL of the reply stream, re-armed every housekeeping tick: a stream
/// whose client died goes away after this.
const STREAM_TTL: Duration = Duration::from_secs(600);
/// First verification of a wait after it opens.
const FIRST_CHECK: Duration = Duration::from_secs(5);
/// Longest interval between verifications of one wait.
const MAX_CHECK_INTERVAL: Duration = Duration::from_secs(30);
/// Waits verified per tick at most.
const CHECKS_PER_TICK: usize = 1000;
/// Reader backoff after an error: first and longest delay.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// What a registered waiter receives.
#[derive(Debug)]
pub(crate) enum Routed {
    /// An event of its task.
    Event(ReplyEvent),
    /// Verification found the task ended: read the outcome from Redis (its
    /// final event may have been lost).
    Ended,
    /// Verification found the task gone from Redis; the reason says what.
    Vanished(String),
    /// The reader cannot read the stream: it gave up after the client's
    /// `give_up_after`, or Redis refused it (`refused`: an ACL).
    ReaderFailed {
        /// True for a permission error (waiting longer will not help).
        refused: bool,
        /// The last error.
        reason: String,
    },
}

struct Entry {
    senders: Vec<(u64, mpsc::UnboundedSender<Routed>)>,
    next_check: Instant,
    interval: Duration,
}

/// How many `Arc`s of a running router its own tasks hold (the reader and
/// the housekeeping loop): a router whose count is at most this plus the
/// client's own is held by nobody else, so it can be retired.
pub(crate) const OWN_HANDLES: usize = 2;

/// Routes the events of one reply stream to registered waiters.
pub(crate) struct ReplyRouter {
    key: String,
    waiters: Mutex<HashMap<String, Entry>>,
    next_token: AtomicU64,
    /// Set while a trim is in flight (shared with the trim's task, which
    /// holds no handle on the router).
    trimming: Arc<AtomicBool>,
    /// Stops the reader and housekeeping (client shutdown, retirement).
    stop: CancellationToken,
    /// When a wait last registered or left.
    last_used: Mutex<Instant>,
    /// Set when every wait must be verified at the next tick.
    verify_all: AtomicBool,
    /// A refusal that new registrations learn at once. Written before the
    /// refusal is broadcast and read under the waiter lock, so a waiter
    /// registering meanwhile hears of it one way or the other.
    refused: Mutex<Option<String>>,
    /// Set once the stream is known to exist.
    stream_ready: AtomicBool,
    /// Subscriptions of this stream per task id: how many open trackers
    /// rely on each. Changes per id are serialized (watch, unwatch), so the
    /// last tracker to leave removes it and a new watch never races that.
    subscriptions: Mutex<HashMap<String, Arc<tokio::sync::Mutex<usize>>>>,
    /// The queue is a stream queue (protocol v3): no v2 housekeeping, and
    /// waits are verified from the tasks' markers.
    stream_queue: AtomicBool,
}

/// A registration; unregisters itself (only itself) on drop.
pub(crate) struct Waiter {
    router: Arc<ReplyRouter>,
    id: String,
    token: u64,
    pub(crate) rx: mpsc::UnboundedReceiver<Routed>,
}

impl Waiter {
    /// The router this waiter is registered with.
    pub(crate) fn router(&self) -> &Arc<ReplyRouter> {
        &self.router
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.router.touch();
        if let Ok(mut w) = self.router.waiters.lock() {
            if let Some(entry) = w.get_mut(&self.id) {
                entry.senders.retain(|(t, _)| *t != self.token);
                if entry.senders.is_empty() {
                    w.remove(&self.id);
                }
            }
        }
    }
}

/// One id's subscription count, held across a watch or unwatch call: when
/// it goes (the call ended, or its future was dropped mid-call) with the
/// count at 0, the id's entry is forgotten, so a cancelled follow never
/// leaves an entry that keeps its router from being retired.
struct SlotGuard<'a> {
    router: &'a ReplyRouter,
    id: &'a str,
    slot: Arc<tokio::sync::Mutex<usize>>,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        // Not locked: the call's own guard on the count is dropped first.
        if let Ok(count) = self.slot.try_lock() {
            if *count == 0 {
                self.router.forget_subscription(self.id, &self.slot);
            }
        }
    }
}

/// Settings the reader needs from the client.
pub(crate) struct ReaderSettings {
    pub endpoint: Endpoint,
    pub shared: RedisConnection,
    pub keys: QueueKeys,
    pub housekeeping_every: Duration,
    pub give_up_after: Duration,
    pub shutdown: CancellationToken,
}

impl ReplyRouter {
    /// Creates the router and starts its reader and housekeeping tasks;
    /// both end when `settings.shutdown` is cancelled (see
    /// [`ReplyRouter::retire`]).
    pub(crate) fn start(key: String, settings: ReaderSettings) -> Arc<Self> {
        let router = Self::idle(key, settings.shutdown.clone());
        let span =
            tracing::debug_span!("reply_reader", queue = settings.keys.name(), key = %router.key);
        let housekeeping = tokio::spawn(
            Arc::clone(&router)
                .housekeeping_loop(
                    settings.shared.clone(),
                    settings.keys.clone(),
                    settings.housekeeping_every,
                    settings.shutdown.clone(),
                )
                .instrument(span.clone()),
        );
        let (key, mut shared) = (router.key.clone(), settings.shared.clone());
        let reader = Arc::clone(&router).read_loop(settings);
        tokio::spawn(
            async move {
                reader.await;
                // Once both loops ended (housekeeping re-creates a missing
                // stream, so it must not outlive this deletion). Best
                // effort: the stream has a TTL anyway.
                let _ = housekeeping.await;
                let _: redis::RedisResult<()> =
                    redis::cmd("DEL").arg(&key).query_async(&mut shared).await;
            }
            .instrument(span),
        );
        router
    }

    /// A router without its reader and housekeeping tasks.
    pub(crate) fn idle(key: String, stop: CancellationToken) -> Arc<Self> {
        Arc::new(Self {
            key,
            waiters: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(1),
            trimming: Arc::new(AtomicBool::new(false)),
            stop,
            last_used: Mutex::new(Instant::now()),
            verify_all: AtomicBool::new(false),
            refused: Mutex::new(None),
            stream_ready: AtomicBool::new(false),
            subscriptions: Mutex::new(HashMap::new()),
            stream_queue: AtomicBool::new(false),
        })
    }

    /// Marks the queue as a stream queue (see `stream_queue`).
    pub(crate) fn mark_stream_queue(&self) {
        self.stream_queue.store(true, Ordering::Release);
    }

    /// The reply stream key workers write to for this client.
    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    fn touch(&self) {
        if let Ok(mut t) = self.last_used.lock() {
            *t = Instant::now();
        }
    }

    /// Since when nothing has used this router: `None` while a wait is
    /// registered or a subscription counted.
    pub(crate) fn unused_since(&self) -> Option<Instant> {
        if self.waiting() > 0
            || !self
                .subscriptions
                .lock()
                .map(|s| s.is_empty())
                .unwrap_or(false)
        {
            return None;
        }
        self.last_used.lock().ok().map(|t| *t)
    }

    /// Stops the reader (closing its connection; it deletes its stream)
    /// and the housekeeping loop. Only for a router nobody holds.
    pub(crate) fn retire(&self) {
        self.stop.cancel();
    }

    /// Registers interest in a task's events. Call before submitting.
    /// Several registrations per id each receive every event.
    pub(crate) fn register(self: &Arc<Self>, id: &str) -> Waiter {
        self.touch();
        let (tx, rx) = mpsc::unbounded_channel();
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let mut waiters = self.waiters.lock().expect("waiter map poisoned");
        // Under the waiter lock: a refusal recorded after this read is
        // broadcast after this waiter is in the map.
        if let Some(reason) = self.refused.lock().ok().and_then(|r| r.clone()) {
            let _ = tx.send(Routed::ReaderFailed {
                refused: true,
                reason,
            });
        }
        waiters
            .entry(id.to_string())
            .or_insert_with(|| Entry {
                senders: Vec::new(),
                next_check: Instant::now() + FIRST_CHECK,
                interval: FIRST_CHECK,
            })
            .senders
            .push((token, tx));
        Waiter {
            router: Arc::clone(self),
            id: id.to_string(),
            token,
            rx,
        }
    }

    /// Makes sure the stream exists before a wait depends on it (one round
    /// trip, on first use only): workers write with NOMKSTREAM, so events
    /// sent before the reader's housekeeping first created the stream would
    /// be lost, and the wait would end only at its first verification.
    /// Failures are left to the housekeeping tick.
    pub(crate) async fn ready(&self, conn: &mut RedisConnection) {
        if self.stream_ready.load(Ordering::Acquire) {
            return;
        }
        match self.keep_stream(conn).await {
            Ok(_) => self.stream_ready.store(true, Ordering::Release),
            Err(e) => tracing::debug!(error = %e, "could not create the reply stream yet"),
        }
    }

    /// Why the reader is refused (an ACL), if it is: a new wait fails at
    /// once instead of submitting a task it could never hear of.
    pub(crate) fn refusal(&self) -> Option<String> {
        self.refused.lock().ok().and_then(|r| r.clone())
    }

    fn subscription(&self, id: &str) -> Arc<tokio::sync::Mutex<usize>> {
        let mut subs = self.subscriptions.lock().expect("subscriptions poisoned");
        Arc::clone(subs.entry(id.to_string()).or_default())
    }

    /// Drops the entry of an id nobody relies on. Call while holding its
    /// lock with a count of 0: whoever cloned it meanwhile keeps it alive.
    fn forget_subscription(&self, id: &str, slot: &Arc<tokio::sync::Mutex<usize>>) {
        let mut subs = self.subscriptions.lock().expect("subscriptions poisoned");
        if Arc::strong_count(slot) == 2 && subs.get(id).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            subs.remove(id);
        }
    }

    /// Releases one subscription counted by [`ReplyRouter::watch`] at once,
    /// without Redis, when its task ended (the subscription went with it)
    /// and the count is not locked; false if it must go through
    /// [`ReplyRouter::unwatch`].
    pub(crate) fn release_ended(&self, id: &str) -> bool {
        let slot = self.subscription(id);
        let Ok(mut count) = slot.try_lock() else {
            return false;
        };
        *count = count.saturating_sub(1);
        if *count == 0 {
            self.forget_subscription(id, &slot);
        }
        true
    }

    /// Reads a task from chunk `from` and subscribes this stream to its
    /// later events (`rtq2_watch`). With `held`, `from` counts chunks of
    /// that attempt and the answer says whether it is still the task's
    /// (see [`Resumed`]); without it, of whatever attempt the task is at
    /// (always [`Resumed::Same`] or [`Resumed::NotFound`]). A subscription
    /// to a task that has not ended is counted: release it with
    /// [`ReplyRouter::unwatch`]. A [`Resumed::NoAttempt`] subscribed nothing.
    ///
    /// # Errors
    /// As `functions::call`.
    pub(crate) async fn watch(
        &self,
        conn: &mut RedisConnection,
        keys: &QueueKeys,
        id: &str,
        from: u64,
        held: Option<Held>,
    ) -> Result<Resumed, Error> {
        let slot = SlotGuard {
            router: self,
            id,
            slot: self.subscription(id),
        };
        let mut count = slot.slot.lock().await;
        let resumed = match held {
            None => self.watch_any(conn, keys, id, from).await,
            Some(held) => {
                let resume = ResumeWatch {
                    id,
                    reply: &self.key,
                    from,
                    held,
                };
                match crate::functions::call(conn, keys, &resume).await {
                    Err(e) if refuses_held(&e) => {
                        warn_old_library();
                        let snap = self.watch_any(conn, keys, id, 0).await?.into_snapshot();
                        let subscribed = snap.as_ref().is_some_and(|s| !s.state.is_terminal());
                        let resumed = Resumed::classify(held, from, snap);
                        if subscribed && *count == 0 && matches!(resumed, Resumed::NoAttempt { .. })
                        {
                            // The old library subscribed before the answer
                            // was known; no follower uses it.
                            let unwatch = Unwatch {
                                id,
                                reply: &self.key,
                            };
                            if let Err(e) = crate::functions::call(conn, keys, &unwatch).await {
                                tracing::debug!(task_id = %id, error = %e, "could not remove a subscription; it ends with the task");
                            }
                        }
                        Ok(resumed)
                    }
                    other => other,
                }
            }
        };
        if let Ok(Some(s)) = resumed.as_ref().map(Resumed::snapshot) {
            if !s.state.is_terminal() {
                *count += 1;
            }
        }
        resumed
    }

    /// `rtq2_watch` without a held attempt.
    async fn watch_any(
        &self,
        conn: &mut RedisConnection,
        keys: &QueueKeys,
        id: &str,
        from: u64,
    ) -> Result<Resumed, Error> {
        let watch = Watch {
            id,
            reply: &self.key,
            from,
        };
        Ok(crate::functions::call(conn, keys, &watch)
            .await?
            .map_or(Resumed::NotFound, Resumed::Same))
    }

    /// Releases one subscription counted by [`ReplyRouter::watch`]; the
    /// last one removes it from Redis (`rtq2_unwatch`), unless the task
    /// ended (`finished`: the subscription goes with the task).
    pub(crate) async fn unwatch(
        &self,
        conn: &mut RedisConnection,
        keys: &QueueKeys,
        id: &str,
        finished: bool,
    ) {
        let slot = SlotGuard {
            router: self,
            id,
            slot: self.subscription(id),
        };
        let mut count = slot.slot.lock().await;
        *count = count.saturating_sub(1);
        if *count > 0 {
            return;
        }
        if !finished {
            let unwatch = Unwatch {
                id,
                reply: &self.key,
            };
            if let Err(e) = crate::functions::call(conn, keys, &unwatch).await {
                tracing::debug!(task_id = %id, error = %e, "could not remove a subscription; it ends with the task");
            }
        }
    }

    fn waiting(&self) -> usize {
        self.waiters.lock().map(|w| w.len()).unwrap_or(0)
    }

    fn send_to(&self, id: &str, make: impl Fn() -> Routed) {
        let waiters = self.waiters.lock().expect("waiter map poisoned");
        if let Some(entry) = waiters.get(id) {
            for (_, tx) in &entry.senders {
                let _ = tx.send(make());
            }
        }
    }

    fn route(&self, event: ReplyEvent) {
        let id = event.task_id().to_string();
        self.send_to(&id, || Routed::Event(event.clone()));
    }

    fn broadcast(&self, refused: bool, reason: &str) {
        let waiters = self.waiters.lock().expect("waiter map poisoned");
        for entry in waiters.values() {
            for (_, tx) in &entry.senders {
                let _ = tx.send(Routed::ReaderFailed {
                    refused,
                    reason: reason.to_string(),
                });
            }
        }
    }

    /// Ids whose verification is due (at most [`CHECKS_PER_TICK`]),
    /// rescheduling them. After `verify_all` every wait is due: those past
    /// the cap stay due for the next ticks.
    fn due_checks(&self, now: Instant) -> Vec<String> {
        let all = self.verify_all.swap(false, Ordering::AcqRel);
        let mut waiters = self.waiters.lock().expect("waiter map poisoned");
        if all {
            for entry in waiters.values_mut() {
                entry.next_check = entry.next_check.min(now);
            }
        }
        let mut due = Vec::new();
        for (id, entry) in waiters.iter_mut() {
            if due.len() >= CHECKS_PER_TICK {
                break;
            }
            if entry.next_check <= now {
                entry.interval = (entry.interval * 2).min(MAX_CHECK_INTERVAL);
                entry.next_check = now + entry.interval;
                due.push(id.clone());
            }
        }
        due
    }

    /// Creates the stream if it is missing (an empty stream: one entry
    /// added and trimmed away) and re-arms its TTL. Returns true if it had
    /// to be created.
    async fn keep_stream(&self, conn: &mut RedisConnection) -> redis::RedisResult<bool> {
        let armed: i64 = redis::cmd("PEXPIRE")
            .arg(&self.key)
            .arg(STREAM_TTL.as_millis() as u64)
            .query_async(conn)
            .await?;
        if armed == 1 {
            return Ok(false);
        }
        let _: Value = redis::pipe()
            .cmd("XADD")
            .arg(&self.key)
            .arg("MAXLEN")
            .arg(0)
            .arg("*")
            .arg("created")
            .arg("1")
            .cmd("PEXPIRE")
            .arg(&self.key)
            .arg(STREAM_TTL.as_millis() as u64)
            .query_async(conn)
            .await?;
        Ok(true)
    }

    /// Every tick: keeps the stream, runs the queue's housekeeping while
    /// waits are open, and verifies the waits that are due.
    async fn housekeeping_loop(
        self: Arc<Self>,
        mut shared: RedisConnection,
        keys: QueueKeys,
        every: Duration,
        shutdown: CancellationToken,
    ) {
        let mut first = true;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            if !first {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
            }
            match self.keep_stream(&mut shared).await {
                Ok(created) => {
                    self.stream_ready.store(true, Ordering::Release);
                    if created && !first {
                        tracing::warn!(
                            "the reply stream had vanished (Redis restarted empty, or evicted it); verifying every open wait"
                        );
                        self.verify_all.store(true, Ordering::Release);
                        // The queue registry went with it: list this
                        // queue again, so consoles and `rtq stats` see a
                        // queue that has clients but no live worker.
                        let listed: redis::RedisResult<i64> = redis::cmd("SADD")
                            .arg(crate::keys::QUEUES)
                            .arg(keys.name())
                            .query_async(&mut shared)
                            .await;
                        if let Err(e) = listed {
                            tracing::debug!(error = %e, "could not list the queue again");
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "could not keep the reply stream"),
            }
            first = false;
            if self.waiting() == 0 {
                continue;
            }
            // A stream queue's housekeeping is its workers' (`rtq3_takeover`).
            let stream_queue = self.stream_queue.load(Ordering::Acquire);
            if !stream_queue {
                if let Err(e) = crate::functions::call(&mut shared, &keys, &Housekeep).await {
                    tracing::debug!(error = %e, "housekeeping failed");
                }
            }
            let due = self.due_checks(Instant::now());
            if !due.is_empty() {
                if let Err(e) = self.verify(&mut shared, &keys, &due).await {
                    tracing::debug!(error = %e, "could not verify open waits");
                    self.verify_all.store(true, Ordering::Release);
                }
            }
        }
    }

    /// Reads the state of `ids` in one round trip and tells the waiters of
    /// ended or vanished tasks.
    async fn verify(
        &self,
        conn: &mut RedisConnection,
        keys: &QueueKeys,
        ids: &[String],
    ) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        let stream_queue = self.stream_queue.load(Ordering::Acquire);
        for id in ids {
            if stream_queue {
                pipe.get(crate::functions::v3::marker_key(keys, id));
            } else {
                pipe.hget(keys.task(id), "st");
            }
        }
        let states: Vec<Option<Vec<u8>>> = pipe.query_async(conn).await?;
        let states = states.into_iter().map(|raw| {
            let raw = raw?;
            if !stream_queue {
                return Some(String::from_utf8_lossy(&raw).into_owned());
            }
            // A marker: its place while the task lives, its ending after.
            Some(match crate::functions::v3::Marker::parse(&raw) {
                Some(crate::functions::v3::Marker::Ended { state, .. }) => state,
                _ => TaskState::Running.as_str().to_string(),
            })
        });
        for (id, state) in ids.iter().zip(states) {
            match state.as_deref().map(TaskState::parse) {
                None => self.send_to(id, || {
                    Routed::Vanished(
                        "Redis no longer has it although it never ended: Redis lost its data (a restart without persistence, a failover) or evicted the key (maxmemory-policy must be noeviction)".into(),
                    )
                }),
                Some(Some(state)) if state.is_terminal() => self.send_to(id, || Routed::Ended),
                Some(_) => {}
            }
        }
        Ok(())
    }

    async fn read_loop(self: Arc<Self>, s: ReaderSettings) {
        let mut last_id = "0-0".to_string();
        let mut conn = None;
        let mut failing_since: Option<Instant> = None;
        let mut told = false;
        let mut backoff = BACKOFF_MIN;
        // Delivered entries not trimmed yet.
        let (mut untrimmed, mut untrimmed_bytes) = (0usize, 0usize);
        let mut last_trim = Instant::now();
        loop {
            if s.shutdown.is_cancelled() {
                break;
            }
            let error = match conn.as_mut() {
                None => match s
                    .endpoint
                    .dedicated(&self.key, BLOCK + Duration::from_secs(5))
                    .await
                {
                    Ok(c) => {
                        conn = Some(c);
                        if failing_since.is_some() {
                            // Events may have been lost with the stream
                            // while we were away: check every wait.
                            self.verify_all.store(true, Ordering::Release);
                        }
                        continue;
                    }
                    Err(e) => e.to_string(),
                },
                Some(c) => {
                    let mut cmd = redis::cmd("XREAD");
                    cmd.arg("COUNT")
                        .arg(READ_COUNT)
                        .arg("BLOCK")
                        .arg(BLOCK.as_millis() as u64)
                        .arg("STREAMS")
                        .arg(&self.key)
                        .arg(&last_id);
                    let reply: redis::RedisResult<Value> = tokio::select! {
                        r = cmd.query_async(c) => r,
                        _ = s.shutdown.cancelled() => break,
                    };
                    match reply {
                        Ok(value) => {
                            failing_since = None;
                            told = false;
                            backoff = BACKOFF_MIN;
                            if let Ok(mut r) = self.refused.lock() {
                                *r = None;
                            }
                            let entries = stream_entries(value);
                            if entries.is_empty() && untrimmed > 0 {
                                // Quiet: trim what was delivered.
                                self.trim_through(&s.shared, &last_id);
                                (untrimmed, untrimmed_bytes) = (0, 0);
                                last_trim = Instant::now();
                            }
                            if let Some((newest, _)) = entries.last() {
                                let newest = newest.clone();
                                untrimmed += entries.len();
                                untrimmed_bytes += entries
                                    .iter()
                                    .flat_map(|(_, f)| f.iter().map(|(k, v)| k.len() + v.len()))
                                    .sum::<usize>();
                                for (_, fields) in entries {
                                    if fields.iter().any(|(k, _)| k == b"created") {
                                        continue;
                                    }
                                    match ReplyEvent::decode(&fields) {
                                        Ok(event) => self.route(event),
                                        Err(e) => {
                                            tracing::warn!(error = %e, "skipping reply entry")
                                        }
                                    }
                                }
                                if untrimmed >= TRIM_ENTRIES
                                    || untrimmed_bytes >= TRIM_BYTES
                                    || last_trim.elapsed() >= TRIM_EVERY
                                {
                                    self.trim_through(&s.shared, &newest);
                                    (untrimmed, untrimmed_bytes) = (0, 0);
                                    last_trim = Instant::now();
                                }
                                last_id = newest;
                            }
                            continue;
                        }
                        Err(e) => {
                            if e.code() == Some("NOPERM") {
                                let reason = format!("reading the reply stream: {e}");
                                if let Ok(mut r) = self.refused.lock() {
                                    *r = Some(reason.clone());
                                }
                                if !told {
                                    told = true;
                                    self.broadcast(true, &reason);
                                }
                            }
                            // A refusal (NOPERM, LOADING, BUSY, WRONGTYPE)
                            // is an answer on a working connection: keep it.
                            // Otherwise its state is unknown: drop it.
                            // A redirect (MOVED: the slot moved or failed
                            // over) means another node: re-resolve it.
                            if !matches!(e.kind(), redis::ErrorKind::Server(_))
                                || crate::cluster::is_redirect(&e)
                            {
                                conn = None;
                            }
                            e.to_string()
                        }
                    }
                }
            };
            let since = *failing_since.get_or_insert_with(Instant::now);
            tracing::warn!(error = %error, retry_in_ms = backoff.as_millis() as u64, "reply reader failed");
            if !told && since.elapsed() >= s.give_up_after {
                told = true;
                self.broadcast(false, &error);
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = s.shutdown.cancelled() => break,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Deletes delivered entries (everything up to and including `id`),
    /// with at most one trim in flight.
    fn trim_through(&self, shared: &RedisConnection, id: &str) {
        if self.trimming.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(next) = next_stream_id(id) else {
            self.trimming.store(false, Ordering::Release);
            return;
        };
        let mut shared = shared.clone();
        let (key, trimming) = (self.key.clone(), Arc::clone(&self.trimming));
        tokio::spawn(async move {
            let _: redis::RedisResult<Value> = redis::cmd("XTRIM")
                .arg(&key)
                .arg("MINID")
                .arg(next)
                .query_async(&mut shared)
                .await;
            trimming.store(false, Ordering::Release);
        });
    }
}

/// Warns, once per process, that the server's library takes no held
/// attempt (a resume then reads from chunk 0 and decides here).
pub(crate) fn warn_old_library() {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!("the server runs an rtq functions library older than revision 13; resumed follows read their attempt from chunk 0 (an admin should connect once to load the current library)");
    }
}

/// The smallest stream id greater than `id` ("ms-seq").
fn next_stream_id(id: &str) -> Option<String> {
    let (ms, seq) = id.split_once('-')?;
    let seq: u64 = seq.parse().ok()?;
    Some(format!("{ms}-{}", seq + 1))
}

/// A stream entry: its id and its field/value pairs in order.
pub(crate) type StreamEntry = (String, Vec<(Vec<u8>, Vec<u8>)>);

/// Flattens an XREAD/XRANGE reply into (entry id, field pairs).
pub(crate) fn stream_entries(value: Value) -> Vec<StreamEntry> {
    let streams = match value {
        Value::Array(streams) => streams,
        Value::Map(pairs) => pairs
            .into_iter()
            .map(|(k, v)| Value::Array(vec![k, v]))
            .collect(),
        _ => return Vec::new(),
    };
    let mut out = Vec::new();
    for stream in streams {
        let Value::Array(mut parts) = stream else {
            continue;
        };
        if parts.len() != 2 {
            continue;
        }
        let Value::Array(entries) = parts.remove(1) else {
            continue;
        };
        out.extend(entries.into_iter().filter_map(entry));
    }
    out
}

/// One entry `[id, [field, value, ...]]`.
pub(crate) fn entry(value: Value) -> Option<StreamEntry> {
    let Value::Array(mut e) = value else {
        return None;
    };
    if e.len() != 2 {
        return None;
    }
    let fields = e.remove(1);
    let id = value_to_string(&e[0]);
    let Value::Array(flat) = fields else {
        return None;
    };
    let pairs = flat
        .chunks(2)
        .filter(|p| p.len() == 2)
        .map(|p| (value_to_bytes(&p[0]), value_to_bytes(&p[1])))
        .collect();
    Some((id, pairs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_id_is_strictly_greater() {
        assert_eq!(
            next_stream_id("1700000000000-0").unwrap(),
            "1700000000000-1"
        );
        assert_eq!(next_stream_id("5-41").unwrap(), "5-42");
        assert!(next_stream_id("garbage").is_none());
    }

    #[test]
    fn verifying_every_wait_reaches_them_all_in_capped_batches() {
        let router = ReplyRouter::idle("rtq:{q}:r:c".into(), CancellationToken::new());
        let waiters: Vec<Waiter> = (0..2500)
            .map(|i| router.register(&format!("t{i}")))
            .collect();
        let now = Instant::now();
        assert!(router.due_checks(now).is_empty(), "none due yet");
        router.verify_all.store(true, Ordering::Release);
        let mut seen = std::collections::HashSet::new();
        for expected in [1000, 1000, 500, 0] {
            let due = router.due_checks(now);
            assert_eq!(due.len(), expected);
            for id in due {
                assert!(seen.insert(id), "verified twice in one round");
            }
        }
        assert_eq!(seen.len(), waiters.len());
    }

    #[test]
    fn xread_reply_keeps_fields_in_order() {
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let reply = Value::Array(vec![Value::Array(vec![
            b("k"),
            Value::Array(vec![Value::Array(vec![
                b("1-0"),
                Value::Array(vec![b("t"), b("x"), b("c0"), b("a"), b("c1"), b("b")]),
            ])]),
        ])]);
        let entries = stream_entries(reply);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].0, "1-0");
        assert_eq!(entries[0].1[1], (b"c0".to_vec(), b"a".to_vec()));
    }
}
