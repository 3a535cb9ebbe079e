//! The client: connects once, hands out [`Queue`] handles that submit, wait,
//! stream, fetch and cancel.
//!
//! # Layout
//! - this file: [`Client`] and [`ClientConfig`];
//! - `queue`: [`Queue`], submit (with safe retries), run, stream, wait,
//!   follow and resume a follow (`follow_from`; an ended task needs no
//!   reply reader), status, cancel;
//! - `request`: [`TaskRequest`], what a client submits, validated here;
//! - `router`: one blocking reader per client and queue routes reply
//!   events to every waiter, owns the reply stream (created before the
//!   first wait needs it) and its subscriptions (shared by the waits of
//!   one task), verifies open waits;
//! - `batcher`: coalesced submits (the submits issued while others are in
//!   flight go together as one `rtq2_submit_many`);
//! - `pool`: the per-queue routers and batchers, bounded (idle routers
//!   retired, a cap on open ones);
//! - `tracker`: follows one task; turns every way a wait ends into an
//!   answer read from Redis;
//! - `stream`: [`TaskStream`], a task's chunks as a `futures::Stream`,
//!   gaps and missing tails filled from the stored output, every change
//!   of attempt announced;
//! - `info`: [`TaskInfo`], a task's stored state.

mod batcher;
mod info;
mod pool;
mod queue;
mod request;
mod router;
mod stream;
mod stream_batcher;
mod stream_mode;
mod tracker;

pub use info::TaskInfo;
pub use queue::{Queue, Submitted, TaskOutput};
pub use request::{TaskRequest, DEFAULT_MAX_INLINE_BYTES, DEFAULT_RETENTION};

pub(crate) use router::entry as stream_entry;
pub use stream::{Chunk, StreamEvent, TaskStream};

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::connection::RedisConnection;
use tokio_util::sync::CancellationToken;

use crate::connection::Endpoint;
use crate::error::Error;
use crate::keys::{QueueKeys, QUEUES};
use router::{ReaderSettings, ReplyRouter};

/// Default of [`ClientConfig::max_reply_readers`].
pub const DEFAULT_MAX_REPLY_READERS: usize = 256;

/// Queue names a client remembers having listed in the registry; past
/// this it forgets them all (and lists each again on its next use).
const MAX_REMEMBERED_QUEUES: usize = 10_000;

/// Client settings. `Default` gives the documented defaults.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Largest accepted inline input spec, in bytes (default 1 MiB); larger
    /// data goes by reference.
    pub max_inline_bytes: usize,
    /// How often a client with open waits runs the queue's housekeeping
    /// (reaping dead workers, ending overdue tasks). Default 1 s.
    pub housekeeping_every: Duration,
    /// How long the reply reader may fail to reach Redis before open waits
    /// end with [`Error::Disconnected`]; also how long reads of a task's
    /// outcome are retried. Default 30 s.
    pub give_up_after: Duration,
    /// How long a command on the shared connection (submit, cancel, reads)
    /// may go unanswered before it fails (default 10 s). A submit that
    /// times out is retried with the same id and, when no try is answered,
    /// fails with [`Error::Uncertain`]: a submit gives up after about three
    /// times this. Lower it where a quick "uncertain" beats patience.
    pub response_timeout: Duration,
    /// TLS settings for a `rediss://` URL (default: system roots, no
    /// client certificate).
    pub tls: crate::TlsConfig,
    /// Signs every task this client submits (default: none). Workers with
    /// verify keys run only tasks signed by one of them.
    pub signing_key: Option<Arc<crate::signing::SigningKey>>,
    /// Coalesce submits (default on): while a few submit calls on a queue
    /// are in flight, further submits wait and go to Redis together as
    /// one call. Nothing waits at low load.
    pub coalesce_submits: bool,
    /// Most queues this client reads replies of at once (default 256):
    /// each holds one blocking Redis connection while waits on it are
    /// open. At the cap the least recently used idle one is closed; when
    /// all have open waits, a wait on one more queue fails with
    /// [`Error::TooManyQueues`]. Bounds the connections of a process that
    /// takes queue names from its callers.
    pub max_reply_readers: usize,
    /// How long a queue's reply reader stays open with no wait on it
    /// (default 60 s); reopening costs a connection and a round trip.
    pub reply_reader_idle: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            max_inline_bytes: DEFAULT_MAX_INLINE_BYTES,
            housekeeping_every: Duration::from_secs(1),
            give_up_after: Duration::from_secs(30),
            response_timeout: crate::connection::RESPONSE_TIMEOUT,
            tls: crate::TlsConfig::default(),
            signing_key: None,
            coalesce_submits: true,
            max_reply_readers: DEFAULT_MAX_REPLY_READERS,
            reply_reader_idle: Duration::from_secs(60),
        }
    }
}

impl ClientConfig {
    /// Sets [`ClientConfig::max_inline_bytes`].
    pub fn max_inline_bytes(mut self, bytes: usize) -> Self {
        self.max_inline_bytes = bytes;
        self
    }
    /// Sets [`ClientConfig::housekeeping_every`].
    pub fn housekeeping_every(mut self, every: Duration) -> Self {
        self.housekeeping_every = every;
        self
    }
    /// Sets [`ClientConfig::give_up_after`].
    pub fn give_up_after(mut self, after: Duration) -> Self {
        self.give_up_after = after;
        self
    }
    /// Sets [`ClientConfig::signing_key`].
    pub fn signing_key(mut self, key: crate::signing::SigningKey) -> Self {
        self.signing_key = Some(Arc::new(key));
        self
    }
    /// Sets [`ClientConfig::tls`].
    pub fn tls(mut self, tls: crate::TlsConfig) -> Self {
        self.tls = tls;
        self
    }
    /// Sets [`ClientConfig::response_timeout`].
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }
    /// Sets [`ClientConfig::max_reply_readers`] (at least 1).
    pub fn max_reply_readers(mut self, max: usize) -> Self {
        self.max_reply_readers = max.max(1);
        self
    }
    /// Sets [`ClientConfig::reply_reader_idle`].
    pub fn reply_reader_idle(mut self, idle: Duration) -> Self {
        self.reply_reader_idle = idle;
        self
    }
    /// Sets [`ClientConfig::coalesce_submits`].
    pub fn coalesce_submits(mut self, on: bool) -> Self {
        self.coalesce_submits = on;
        self
    }
}

pub(crate) struct ClientInner {
    pub(crate) endpoint: Endpoint,
    pub(crate) conn: RedisConnection,
    pub(crate) client_id: String,
    pub(crate) config: ClientConfig,
    pool: pool::QueuePool,
    /// Queue modes and the Redis clock (stream queues).
    pub(crate) modes: stream_mode::ModeCache,
    registered: Mutex<std::collections::HashSet<String>>,
    shutdown: CancellationToken,
}

impl Drop for ClientInner {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A connection to Redis for submitting and following tasks. Cheap to clone;
/// all clones share one multiplexed connection and, per queue, one blocking
/// reader for results and chunks.
///
/// # Examples
/// ```no_run
/// # async fn demo() -> Result<(), rtq_core::Error> {
/// use rtq_core::{Client, TaskRequest};
/// let client = Client::connect("redis://127.0.0.1:6379").await?;
/// let llm = client.queue("llm")?;
/// let out = llm.run(TaskRequest::json(serde_json::json!({"prompt": "Hi"}))).await?;
/// println!("{}", out.result);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<ClientInner>,
}

impl Client {
    /// Connects with default settings.
    ///
    /// # Errors
    /// [`Error::Connection`] (password redacted) if Redis is unreachable,
    /// [`Error::AuthenticationFailed`], [`Error::Tls`] / [`Error::TlsSetup`],
    /// [`Error::PermissionDenied`]; [`Error::connection_problem`] sorts them.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::connect_with(url, ClientConfig::default()).await
    }

    /// Connects with explicit settings.
    ///
    /// # Errors
    /// As [`Client::connect`].
    pub async fn connect_with(url: &str, config: ClientConfig) -> Result<Self, Error> {
        let endpoint = Endpoint::parse(url, &config.tls)?;
        let conn = endpoint.shared_with(config.response_timeout).await?;
        let idle = config.reply_reader_idle;
        let inner = Arc::new(ClientInner {
            endpoint,
            conn,
            client_id: uuid::Uuid::now_v7().simple().to_string(),
            config,
            pool: pool::QueuePool::default(),
            modes: stream_mode::ModeCache::default(),
            registered: Mutex::new(Default::default()),
            shutdown: CancellationToken::new(),
        });
        tokio::spawn(pool::sweep_loop(
            Arc::downgrade(&inner),
            idle,
            inner.shutdown.clone(),
        ));
        Ok(Self { inner })
    }

    /// A handle on queue `name` (registered in the queue list on first use).
    ///
    /// # Errors
    /// [`Error::InvalidName`] for names that would break the key layout.
    pub fn queue(&self, name: &str) -> Result<Queue, Error> {
        let keys = QueueKeys::new(name)?;
        let first_use = {
            let mut registered = self.inner.registered.lock().expect("registry poisoned");
            if registered.len() >= MAX_REMEMBERED_QUEUES {
                // Bounded for processes that take queue names from their
                // callers; forgetting costs one more (idempotent) SADD.
                registered.clear();
            }
            registered.insert(name.to_string())
        };
        if first_use {
            // List the queue for the console, once per process and queue,
            // retried while Redis does not answer (and again by the reply
            // reader if Redis restarts empty while waits are open).
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let mut conn = self.conn();
                let name = name.to_string();
                rt.spawn(async move {
                    for delay_ms in [0, 200, 1000, 5000, 30000] {
                        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                        let added: redis::RedisResult<i64> = redis::cmd("SADD")
                            .arg(QUEUES)
                            .arg(&name)
                            .query_async(&mut conn)
                            .await;
                        if added.is_ok() {
                            return;
                        }
                    }
                });
            }
        }
        Ok(Queue::new(self.clone(), keys))
    }

    /// What rtq needs to know about the server (version, eviction policy,
    /// persistence); [`ServerReport::concerns`](crate::server::ServerReport::concerns)
    /// says what is wrong with it.
    ///
    /// # Errors
    /// Redis errors, [`Error::PermissionDenied`] if the user may not run INFO.
    pub async fn server_report(&self) -> Result<crate::server::ServerReport, Error> {
        crate::server::ServerReport::read(&mut self.conn()).await
    }

    /// The Redis URL this client uses, password redacted.
    pub fn redacted_url(&self) -> &str {
        self.inner.endpoint.redacted()
    }

    /// This client process's id (part of its reply stream keys).
    pub fn id(&self) -> &str {
        &self.inner.client_id
    }

    /// A clone of the shared connection, for admin reads.
    pub(crate) fn conn(&self) -> RedisConnection {
        self.inner.conn.clone()
    }

    /// The submit batcher for a queue, started on first use.
    pub(crate) fn batcher(&self, keys: &QueueKeys) -> Arc<batcher::SubmitBatcher> {
        self.inner.pool.batcher(keys.name(), || {
            batcher::SubmitBatcher::start(self.inner.conn.clone(), keys.clone())
        })
    }

    /// The submit batcher for a stream queue, started on first use.
    pub(crate) fn stream_batcher(&self, keys: &QueueKeys) -> Arc<stream_batcher::StreamBatcher> {
        self.inner.pool.stream_batcher(keys.name(), || {
            stream_batcher::StreamBatcher::start(self.inner.conn.clone(), keys.clone())
        })
    }

    /// The reply router for a queue, started on first use (its stream is
    /// `r:<client id>`, or `r:<client id>.<n>` after `n` routers of this
    /// client were retired).
    ///
    /// # Errors
    /// [`Error::TooManyQueues`] (see [`ClientConfig::max_reply_readers`]).
    pub(crate) fn router(&self, keys: &QueueKeys) -> Result<Arc<ReplyRouter>, Error> {
        let inner = &self.inner;
        inner
            .pool
            .router(keys.name(), inner.config.max_reply_readers, |generation| {
                let id = match generation {
                    0 => inner.client_id.clone(),
                    n => format!("{}.{n}", inner.client_id),
                };
                ReplyRouter::start(
                    keys.reply(&id),
                    ReaderSettings {
                        endpoint: inner.endpoint.clone(),
                        shared: inner.conn.clone(),
                        keys: keys.clone(),
                        housekeeping_every: inner.config.housekeeping_every,
                        give_up_after: inner.config.give_up_after,
                        shutdown: inner.shutdown.child_token(),
                    },
                )
            })
    }

    /// How many queues' reply readers (one blocking connection each) this
    /// client has open.
    pub fn reply_readers_open(&self) -> usize {
        self.inner.pool.routers_open()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_setter_sets_its_own_setting() {
        let c = ClientConfig::default()
            .max_inline_bytes(77)
            .housekeeping_every(Duration::from_millis(250))
            .give_up_after(Duration::from_secs(3))
            .response_timeout(Duration::from_millis(400))
            .coalesce_submits(false);
        assert_eq!(c.max_inline_bytes, 77);
        assert_eq!(c.housekeeping_every, Duration::from_millis(250));
        assert_eq!(c.give_up_after, Duration::from_secs(3));
        assert_eq!(c.response_timeout, Duration::from_millis(400));
        assert!(!c.coalesce_submits);
        assert!(ClientConfig::default().coalesce_submits);
        let d = ClientConfig::default();
        assert_eq!(d.max_inline_bytes, DEFAULT_MAX_INLINE_BYTES);
        assert_eq!(d.give_up_after, Duration::from_secs(30));
    }
}
