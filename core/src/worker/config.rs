//! Worker settings and the live status a worker publishes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::writer::Granularity;
use crate::error::Error;
use crate::protocol::{MAX_RESULT_BYTES, MAX_SLOTS};

/// Smallest output budget per attempt: one write's worth (256 KiB), so
/// writes are never starved of chunks to coalesce.
const MIN_BUFFERED_OUTPUT_BYTES: usize = 256 << 10;
/// Largest output budget per attempt: the output cap of an attempt (64 MiB).
const MAX_BUFFERED_OUTPUT_BYTES: usize = crate::protocol::MAX_OUTPUT_BYTES as usize;

/// Worker settings. `Default` gives the documented defaults.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Queue to serve.
    pub queue: String,
    /// Tasks run at once (default 1).
    pub slots: usize,
    /// A worker whose heartbeat is older than this is dead and its tasks
    /// are requeued (default 5 s).
    pub lease: Duration,
    /// Heartbeat period (default lease / 5).
    pub heartbeat_every: Option<Duration>,
    /// On shutdown, how long running tasks may take before they are handed
    /// back to the queue (default 25 s: inside Kubernetes' default 30 s
    /// termination grace, so the hand-back happens before SIGKILL).
    pub grace: Duration,
    /// When a task is stopped (cancel, deadline, reassignment), how long its
    /// handler may take to return on its own before its future is dropped
    /// (default 1 s).
    pub cancel_grace: Duration,
    /// Worker id (default `<host>-<pid>-<random>`).
    pub worker_id: Option<String>,
    /// Host name shown in the console (default: $HOSTNAME or "unknown").
    pub host: String,
    /// Free-form labels, e.g. `gpu=A100`.
    pub labels: BTreeMap<String, String>,
    /// Handler name shown in the console.
    pub handler_name: String,
    /// Software version shown in the console.
    pub version: String,
    /// How chunks are grouped into writes.
    pub granularity: Granularity,
    /// Largest accepted result JSON in bytes (default 1 MiB).
    pub max_result_bytes: usize,
    /// Bytes of output one running attempt may have queued that Redis has
    /// not acknowledged (each chunk counts 64 bytes more than its length);
    /// past it [`TaskContext::send`](super::TaskContext::send) waits
    /// (default 4 MiB). Bounds a worker's memory while Redis is slow,
    /// frozen or unreachable.
    pub max_buffered_output_bytes: usize,
    /// TLS settings for a `rediss://` URL (default: system roots, no
    /// client certificate).
    pub tls: crate::TlsConfig,
    /// When not empty, only tasks signed by one of these keys run; others
    /// fail with [`Error::Forged`] (default: empty, every task runs).
    pub verify_keys: Vec<crate::signing::VerifyKey>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            queue: "default".into(),
            slots: 1,
            lease: Duration::from_secs(5),
            heartbeat_every: None,
            grace: Duration::from_secs(25),
            cancel_grace: Duration::from_secs(1),
            worker_id: None,
            host: host_name(),
            labels: BTreeMap::new(),
            handler_name: "rust".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            granularity: Granularity::default(),
            max_result_bytes: crate::client::DEFAULT_MAX_INLINE_BYTES,
            max_buffered_output_bytes: super::budget::DEFAULT_MAX_BUFFERED_OUTPUT_BYTES,
            tls: crate::TlsConfig::default(),
            verify_keys: Vec::new(),
        }
    }
}

/// The machine's name: `$HOSTNAME`, else `/etc/hostname`, else "unknown".
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

impl WorkerConfig {
    /// Settings for `queue` with defaults otherwise.
    pub fn new(queue: impl Into<String>) -> Self {
        Self {
            queue: queue.into(),
            ..Self::default()
        }
    }
    /// Sets [`WorkerConfig::slots`] (1..=1024).
    pub fn slots(mut self, slots: usize) -> Self {
        self.slots = slots.max(1);
        self
    }
    /// Sets [`WorkerConfig::heartbeat_every`].
    pub fn heartbeat_every(mut self, every: Duration) -> Self {
        self.heartbeat_every = Some(every);
        self
    }
    /// Sets [`WorkerConfig::cancel_grace`].
    pub fn cancel_grace(mut self, grace: Duration) -> Self {
        self.cancel_grace = grace;
        self
    }
    /// Sets [`WorkerConfig::max_buffered_output_bytes`].
    pub fn max_buffered_output_bytes(mut self, bytes: usize) -> Self {
        self.max_buffered_output_bytes = bytes;
        self
    }

    /// Sets [`WorkerConfig::max_result_bytes`].
    pub fn max_result_bytes(mut self, bytes: usize) -> Self {
        self.max_result_bytes = bytes;
        self
    }
    /// Adds a key to [`WorkerConfig::verify_keys`].
    pub fn verify_key(mut self, key: crate::signing::VerifyKey) -> Self {
        self.verify_keys.push(key);
        self
    }
    /// Sets [`WorkerConfig::tls`].
    pub fn tls(mut self, tls: crate::TlsConfig) -> Self {
        self.tls = tls;
        self
    }
    /// Sets [`WorkerConfig::lease`].
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }
    /// Sets [`WorkerConfig::grace`].
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }
    /// Sets [`WorkerConfig::worker_id`].
    pub fn worker_id(mut self, id: impl Into<String>) -> Self {
        self.worker_id = Some(id.into());
        self
    }
    /// Adds a label.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }
    /// Sets [`WorkerConfig::granularity`].
    pub fn granularity(mut self, granularity: Granularity) -> Self {
        self.granularity = granularity;
        self
    }
    /// Sets [`WorkerConfig::handler_name`].
    pub fn handler_name(mut self, name: impl Into<String>) -> Self {
        self.handler_name = name.into();
        self
    }

    /// Checks the settings against the protocol's limits.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the setting.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::InvalidInput(m));
        if !(1..=MAX_SLOTS).contains(&self.slots) {
            return bad(format!(
                "slots must be in [1, {MAX_SLOTS}], got {}",
                self.slots
            ));
        }
        if self.lease < Duration::from_millis(100) || self.lease > Duration::from_secs(600) {
            return bad(format!(
                "lease must be between 100 ms and 10 min, got {:?}",
                self.lease
            ));
        }
        if self.heartbeat_period() >= self.lease {
            return bad(format!(
                "the heartbeat period ({:?}) must be shorter than the lease ({:?})",
                self.heartbeat_period(),
                self.lease
            ));
        }
        if self.max_result_bytes > MAX_RESULT_BYTES {
            return bad(format!(
                "max_result_bytes must be at most {MAX_RESULT_BYTES}, got {}",
                self.max_result_bytes
            ));
        }
        if !(MIN_BUFFERED_OUTPUT_BYTES..=MAX_BUFFERED_OUTPUT_BYTES)
            .contains(&self.max_buffered_output_bytes)
        {
            return bad(format!(
                "max_buffered_output_bytes must be in [{MIN_BUFFERED_OUTPUT_BYTES}, {MAX_BUFFERED_OUTPUT_BYTES}], got {}",
                self.max_buffered_output_bytes
            ));
        }
        Ok(())
    }

    pub(crate) fn heartbeat_period(&self) -> Duration {
        self.heartbeat_every
            .unwrap_or(self.lease / 5)
            .max(Duration::from_millis(50))
    }
}

/// Live counters of a worker, shared with whoever embeds it (the worker
/// binary serves them as metrics and health).
#[derive(Debug, Default)]
pub struct WorkerStatus {
    /// Slots running an attempt now (kept by the slot pool).
    pub busy: AtomicUsize,
    /// Tasks finished with a result.
    pub done: AtomicU64,
    /// Tasks failed by the handler.
    pub failed: AtomicU64,
    /// Attempts stopped by cancel, deadline, requeue or reassignment.
    pub stopped: AtomicU64,
    /// True while the last heartbeat reached Redis.
    pub redis_ok: AtomicBool,
    /// True while the worker takes new tasks (false while its upstream is
    /// down or it drains).
    pub accepting: AtomicBool,
    /// True once shutdown began.
    pub draining: AtomicBool,
    /// Redis time (ms) of the worker's first heartbeat: its start time.
    pub started_ms: AtomicI64,
    /// Redis time minus this machine's time (ms), as of the last
    /// heartbeat's reply: turns local times into Redis times, so the
    /// console compares the time of `last_error` with Redis's clock.
    pub(crate) clock_offset_ms: AtomicI64,
    /// Last error seen (handler or Redis) and when, for the heartbeat and
    /// logs; see [`WorkerStatus::last_error`].
    last_error: Mutex<Option<LastError>>,
}

/// Where an error a worker records comes from; decides when it is cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorSource {
    /// A task failed or could not be recorded: kept (with its time) until
    /// a later error replaces it, as history.
    Task,
    /// A heartbeat failed: cleared by the next heartbeat that succeeds.
    Heartbeat,
    /// The inbox could not be read: cleared by the next read that succeeds.
    Inbox,
}

/// An error a worker recorded, and when.
#[derive(Clone, Debug, PartialEq, Eq)]
struct LastError {
    message: String,
    source: ErrorSource,
    /// This machine's clock, ms since the Unix epoch.
    at_ms: i64,
    /// The same on Redis's clock, as of the heartbeat before it (fixed
    /// when recorded, so each beat publishes the same time).
    at_redis_ms: i64,
}

/// This machine's time, ms since the Unix epoch.
pub(crate) fn local_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl WorkerStatus {
    /// Records an error message for operators, as a task's error (kept as
    /// history until another error replaces it), stamped with the time.
    pub fn set_last_error(&self, message: impl Into<String>) {
        self.record_error(ErrorSource::Task, message);
    }

    /// Records an error from `source`, stamped with the time.
    pub fn record_error(&self, source: ErrorSource, message: impl Into<String>) {
        let at_ms = local_now_ms();
        let at_redis_ms = at_ms + self.clock_offset_ms.load(Ordering::Acquire);
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(LastError {
                message: message.into(),
                source,
                at_ms,
                at_redis_ms,
            });
        }
    }

    /// `source` works again: clears the last error if it came from there
    /// (a task's error stays).
    pub fn clear_error(&self, source: ErrorSource) {
        if let Ok(mut e) = self.last_error.lock() {
            if e.as_ref().is_some_and(|e| e.source == source) {
                *e = None;
            }
        }
    }

    /// The last error message ("" when none, or once cleared).
    pub fn last_error(&self) -> String {
        self.last_error
            .lock()
            .ok()
            .and_then(|e| e.as_ref().map(|e| e.message.clone()))
            .unwrap_or_default()
    }

    /// When the last error happened, ms since the Unix epoch by this
    /// machine's clock; `None` when there is none.
    pub fn last_error_at_ms(&self) -> Option<i64> {
        self.last_error
            .lock()
            .ok()
            .and_then(|e| e.as_ref().map(|e| e.at_ms))
    }

    /// What a heartbeat publishes: the last error and its time on Redis's
    /// clock (as of the heartbeat before it). A heartbeat's own failure is
    /// not published: a beat that reaches Redis proves it over.
    pub(crate) fn published_error(&self) -> Option<(String, i64)> {
        self.last_error.lock().ok().and_then(|e| {
            e.as_ref()
                .filter(|e| e.source != ErrorSource::Heartbeat)
                .map(|e| (e.message.clone(), e.at_redis_ms))
        })
    }
    pub(crate) fn get(&self, counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_setter_sets_its_own_setting() {
        let g = Granularity {
            max_in_flight: 7,
            min_bytes: 3,
            max_delay: Duration::from_millis(9),
        };
        let c = WorkerConfig::new("q")
            .slots(4)
            .heartbeat_every(Duration::from_millis(300))
            .cancel_grace(Duration::from_millis(1500))
            .max_result_bytes(1234)
            .lease(Duration::from_secs(7))
            .grace(Duration::from_secs(11))
            .worker_id("w-1")
            .label("gpu", "A100")
            .granularity(g.clone())
            .handler_name("vllm");
        assert_eq!(c.queue, "q");
        assert_eq!(c.slots, 4);
        assert_eq!(c.heartbeat_every, Some(Duration::from_millis(300)));
        assert_eq!(c.cancel_grace, Duration::from_millis(1500));
        assert_eq!(c.max_result_bytes, 1234);
        assert_eq!(c.lease, Duration::from_secs(7));
        assert_eq!(c.grace, Duration::from_secs(11));
        assert_eq!(c.worker_id.as_deref(), Some("w-1"));
        assert_eq!(c.labels.get("gpu").map(String::as_str), Some("A100"));
        assert_eq!(c.granularity, g);
        assert_eq!(c.handler_name, "vllm");
        assert_eq!(
            WorkerConfig::new("q").slots(0).slots,
            1,
            "at least one slot"
        );
    }

    #[test]
    fn validation_accepts_the_limits_and_names_what_is_out_of_them() {
        let ok = |c: WorkerConfig| c.validate().is_ok();
        assert!(ok(WorkerConfig::new("q")));
        assert!(ok(WorkerConfig::new("q").slots(MAX_SLOTS)));
        assert!(!ok(WorkerConfig::new("q").slots(MAX_SLOTS + 1)));
        assert!(ok(WorkerConfig::new("q").lease(Duration::from_millis(100))));
        assert!(!ok(WorkerConfig::new("q").lease(Duration::from_millis(99))));
        assert!(ok(WorkerConfig::new("q").lease(Duration::from_secs(600))));
        assert!(!ok(
            WorkerConfig::new("q").lease(Duration::from_millis(600_001))
        ));
        let lease = Duration::from_secs(1);
        let beat = |every: u64| {
            WorkerConfig::new("q")
                .lease(lease)
                .heartbeat_every(Duration::from_millis(every))
        };
        assert!(ok(beat(999)));
        assert!(!ok(beat(1000)), "a heartbeat as long as the lease");
        assert!(ok(WorkerConfig::new("q").max_result_bytes(MAX_RESULT_BYTES)));
        let err = WorkerConfig::new("q")
            .max_result_bytes(MAX_RESULT_BYTES + 1)
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("max_result_bytes"), "{err}");
    }

    #[test]
    fn an_error_is_time_stamped_and_cleared_only_by_its_own_source() {
        let s = WorkerStatus::default();
        assert_eq!(s.last_error_at_ms(), None);
        let before = local_now_ms();
        s.record_error(ErrorSource::Heartbeat, "heartbeat failed: refused");
        let at = s.last_error_at_ms().unwrap();
        assert!(at >= before && at <= local_now_ms());
        s.clear_error(ErrorSource::Inbox);
        assert_eq!(
            s.last_error(),
            "heartbeat failed: refused",
            "another source"
        );
        s.clear_error(ErrorSource::Heartbeat);
        assert_eq!(
            (s.last_error(), s.last_error_at_ms()),
            (String::new(), None)
        );
        s.clock_offset_ms.store(1000, Ordering::Release);
        s.set_last_error("handler: boom");
        s.clear_error(ErrorSource::Heartbeat);
        s.clear_error(ErrorSource::Inbox);
        assert_eq!(s.last_error(), "handler: boom", "a task's error is history");
        let at = s.last_error_at_ms().unwrap();
        s.clock_offset_ms.store(5, Ordering::Release);
        assert_eq!(
            s.published_error(),
            Some(("handler: boom".to_string(), at + 1000))
        );
        s.record_error(ErrorSource::Heartbeat, "heartbeat failed");
        assert_eq!(
            s.published_error(),
            None,
            "a beat that lands proves it over"
        );
    }

    #[test]
    fn the_default_host_name_is_never_empty() {
        assert!(!host_name().is_empty());
        assert_eq!(WorkerConfig::default().host, host_name());
    }

    #[test]
    fn the_heartbeat_period_defaults_to_a_fifth_of_the_lease_and_is_at_least_50_ms() {
        let c = WorkerConfig::new("q").lease(Duration::from_secs(5));
        assert_eq!(c.heartbeat_period(), Duration::from_secs(1));
        let c = c.heartbeat_every(Duration::from_millis(10));
        assert_eq!(c.heartbeat_period(), Duration::from_millis(50));
    }
}
