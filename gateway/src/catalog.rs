//! [`Catalog`]: which queues are served right now (live workers, their
//! labels and handlers, paused or not), read from Redis and cached. It
//! answers `GET /v1/models`, maps a model name to its queue (only among
//! the queues the caller's key may use), and decides "paused" and "no live
//! worker" refusals (always re-checked against Redis before refusing, so a
//! cache never refuses a queue that just came up).
//!
//! No request waits for a read of every queue once a recent snapshot
//! exists: a snapshot older than the TTL is served while one background
//! task reads the next
//! ([`Admin::served_queues`]: three pipelined round trips whatever the
//! number of queues, two commands per queue and one per live worker). A
//! name the snapshot does not know is looked up as a queue with a
//! targeted read; a new `model` label is known from the next
//! snapshot (within `--catalog-ttl-ms` of a request).
//!
//! A snapshot is never served past its staleness bound
//! (`--catalog-max-stale-ms`): when every background read failed (Redis
//! down) for that long, a request reads the catalog itself (at most
//! [`READ_TIMEOUT`]), and if that fails too it gets 503
//! `redis_unavailable` naming the snapshot's age, rather than a model list
//! that may name queues whose workers are long gone. Callers see the age
//! of what they get ([`Catalog::snapshot_with_age`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtq_core::admin::{Admin, ServedWorker};
use rtq_core::Error;
use tokio::sync::Mutex;

use crate::error::ApiError;

/// Longest a request waits for a read of the whole catalog (the first one
/// of a process, or one past the staleness bound): a Redis that does not
/// answer gets a 503, not a hung request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a snapshot is trusted and how long it may be served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CatalogLimits {
    /// Age after which a request starts a background read of the next
    /// snapshot (`--catalog-ttl-ms`, default 2 s); the current one is
    /// still served meanwhile.
    pub ttl: Duration,
    /// Age after which a snapshot is no longer served
    /// (`--catalog-max-stale-ms`, default 10 s): a request then reads the
    /// catalog itself and gets 503 if it cannot. At least `ttl`.
    pub max_stale: Duration,
}

impl Default for CatalogLimits {
    /// 2 s TTL, 10 s staleness bound.
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(2),
            max_stale: Duration::from_secs(10),
        }
    }
}

/// What is known about one queue.
#[derive(Clone, Debug, Default)]
pub struct QueueEntry {
    /// Queue name.
    pub name: String,
    /// Paused by an operator (submits queue, nothing is handed out).
    pub paused: bool,
    /// Workers whose lease is current.
    pub workers_alive: u64,
    /// Handlers of the live workers (`openai`, `mock`, ...).
    pub handlers: BTreeSet<String>,
    /// `model` labels of the live workers: other names of this queue.
    pub models: BTreeSet<String>,
    /// Every label of the live workers.
    pub labels: BTreeMap<String, BTreeSet<String>>,
}

impl QueueEntry {
    /// True if a live worker serves it.
    pub fn served(&self) -> bool {
        self.workers_alive > 0
    }
}

/// A read of every queue at one moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// By queue name.
    pub queues: BTreeMap<String, QueueEntry>,
    /// When it was read (Unix seconds), for `created` in model lists.
    pub read_at_secs: u64,
}

impl Snapshot {
    /// The queue a model name selects, among the queues `allowed` lets the
    /// caller use (the others are as if they did not exist):
    /// 1. a queue of that name with a live worker;
    /// 2. else a queue whose live workers carry the label `model=<name>`
    ///    (an unpaused one first, then by name);
    /// 3. else a queue of that name without a live worker (a refusal with
    ///    its reason follows), so a leftover registry entry never shadows a
    ///    label that is served.
    pub fn resolve(&self, model: &str, allowed: &dyn Fn(&str) -> bool) -> Option<Resolved> {
        let named = self.queues.get(model).filter(|q| allowed(&q.name));
        if let Some(q) = named.filter(|q| q.served()) {
            return Some(Resolved {
                queue: q.name.clone(),
                by_label: false,
            });
        }
        let labelled = self
            .queues
            .values()
            .filter(|q| q.served() && q.models.contains(model) && allowed(&q.name))
            .min_by_key(|q| q.paused);
        if let Some(q) = labelled {
            return Some(Resolved {
                queue: q.name.clone(),
                by_label: true,
            });
        }
        named.map(|q| Resolved {
            queue: q.name.clone(),
            by_label: false,
        })
    }
}

/// A model name resolved to a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The queue.
    pub queue: String,
    /// True if the name is a worker's `model` label (the upstream's own
    /// model name, passed on), false if it is the queue's name.
    pub by_label: bool,
}

/// The cached catalog (cheap to clone: one shared cache).
#[derive(Clone)]
pub struct Catalog {
    inner: Arc<Inner>,
}

struct Inner {
    admin: Admin,
    ttl: Duration,
    max_stale: Duration,
    cache: std::sync::Mutex<Option<(Instant, Arc<Snapshot>)>>,
    /// Set while the background task reads a new snapshot.
    refreshing: AtomicBool,
    /// Held by the request that reads a snapshot in the foreground (the
    /// first, or one past the staleness bound); the others wait for it
    /// instead of reading too.
    reading: Mutex<()>,
    /// When the last foreground read failed, and why: requests that waited
    /// for it get its answer instead of trying again one after the other.
    failed: std::sync::Mutex<Option<(Instant, String)>>,
}

impl Catalog {
    /// A catalog read through `admin`, read again in the background when
    /// a request finds it older than `limits.ttl`, and never served older
    /// than `limits.max_stale`.
    pub fn new(admin: Admin, limits: CatalogLimits) -> Self {
        Self {
            inner: Arc::new(Inner {
                admin,
                ttl: limits.ttl,
                max_stale: limits.max_stale.max(limits.ttl),
                cache: std::sync::Mutex::new(None),
                refreshing: AtomicBool::new(false),
                reading: Mutex::new(()),
                failed: std::sync::Mutex::new(None),
            }),
        }
    }

    fn cached(&self) -> Option<(Instant, Arc<Snapshot>)> {
        self.inner.cache.lock().expect("catalog poisoned").clone()
    }

    /// The current snapshot (see [`Catalog::snapshot_with_age`]).
    ///
    /// # Errors
    /// As [`Catalog::snapshot_with_age`].
    pub async fn snapshot(&self) -> Result<Arc<Snapshot>, ApiError> {
        Ok(self.snapshot_with_age().await?.0)
    }

    /// The current snapshot and its age. One younger than the TTL is
    /// returned at once; one older than the TTL too, while a background
    /// task reads the next one. Only the first requests of a process, and
    /// requests that find the snapshot past the staleness bound (every
    /// background read failed for that long), wait for a read (at most
    /// [`READ_TIMEOUT`]).
    ///
    /// # Errors
    /// 503 `redis_unavailable` when a read was needed and failed: the
    /// message names the Redis error and, past the staleness bound, the
    /// age of the snapshot that is no longer served.
    pub async fn snapshot_with_age(&self) -> Result<(Arc<Snapshot>, Duration), ApiError> {
        if let Some((at, snap)) = self.cached() {
            let age = at.elapsed();
            if age < self.inner.max_stale {
                if age >= self.inner.ttl {
                    self.refresh_in_background();
                }
                return Ok((snap, age));
            }
        }
        let asked = Instant::now();
        let _reading = self.inner.reading.lock().await;
        if let Some((at, snap)) = self.cached() {
            if at.elapsed() < self.inner.max_stale {
                return Ok((snap, at.elapsed()));
            }
        }
        // A read that failed while this request waited for it: the same
        // answer, not one more READ_TIMEOUT each.
        let failed = self.inner.failed.lock().expect("catalog poisoned").clone();
        if let Some((_, why)) = failed.filter(|(when, _)| *when >= asked) {
            return Err(self.unavailable(&why));
        }
        let read = match tokio::time::timeout(READ_TIMEOUT, self.inner.read()).await {
            Ok(Ok(snap)) => Ok(snap),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "Redis did not answer within {} s",
                READ_TIMEOUT.as_secs()
            )),
        };
        match read {
            Ok(snap) => {
                let snap = Arc::new(snap);
                self.inner.store(&snap);
                *self.inner.failed.lock().expect("catalog poisoned") = None;
                Ok((snap, Duration::ZERO))
            }
            Err(why) => {
                *self.inner.failed.lock().expect("catalog poisoned") =
                    Some((Instant::now(), why.clone()));
                Err(self.unavailable(&why))
            }
        }
    }

    /// The 503 of a failed foreground read: why, and how old the snapshot
    /// that is no longer served is.
    fn unavailable(&self, why: &str) -> ApiError {
        let message = match self.cached() {
            Some((at, _)) => format!(
                "cannot read the queues from Redis: {why}; the last list of models, read \
                 {} s ago, is past the staleness bound of {} ms (--catalog-max-stale-ms) \
                 and no longer served",
                at.elapsed().as_secs(),
                self.inner.max_stale.as_millis()
            ),
            None => format!("cannot read the queues from Redis: {why}"),
        };
        ApiError::unavailable("redis_unavailable", message)
    }

    /// Starts a background read unless one runs.
    fn refresh_in_background(&self) {
        if self.inner.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let inner = Arc::clone(&self.inner);
        tokio::spawn(async move {
            match inner.read().await {
                Ok(snap) => inner.store(&Arc::new(snap)),
                Err(e) => tracing::warn!(error = %e, "cannot read the queues for the catalog"),
            }
            inner.refreshing.store(false, Ordering::Release);
        });
    }

    /// Resolves a model name among the queues `allowed` lets the caller
    /// use. A name the snapshot does not resolve is looked up as a queue
    /// (one targeted read, never a read of every queue).
    ///
    /// # Errors
    /// 404 `model_not_found` (also for a queue the key may not use: the
    /// answer does not tell whether it exists), 503 when Redis cannot be
    /// read.
    pub async fn resolve(
        &self,
        model: &str,
        allowed: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Resolved, ApiError> {
        let snap = self.snapshot().await?;
        if let Some(r) = snap.resolve(model, allowed) {
            return Ok(r);
        }
        if allowed(model) {
            let exists = match self.inner.admin.queue_exists(model).await {
                Ok(exists) => exists,
                Err(Error::InvalidName { .. }) => false,
                Err(e) => return Err(redis_down(e)),
            };
            if exists {
                return Ok(Resolved {
                    queue: model.to_string(),
                    by_label: false,
                });
            }
        }
        Err(model_not_found(model))
    }

    /// True if queue `queue` exists (in the registry or with its meta
    /// hash). A queue the cached snapshot lists passes without Redis
    /// (queues are rarely deleted); any other is read for itself alone.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn queue_exists(&self, queue: &str) -> Result<bool, Error> {
        if let Some((_, snap)) = self.cached() {
            if snap.queues.contains_key(queue) {
                return Ok(true);
            }
        }
        self.inner.admin.queue_exists(queue).await
    }

    /// Refuses a queue that cannot serve now: paused, or without a live
    /// worker. A "serving" from a snapshot younger than the TTL passes at
    /// once; anything else (an older snapshot, a queue it does not know or
    /// shows unserved) is read from Redis, for this queue alone.
    ///
    /// # Errors
    /// 503 `queue_paused` or `no_live_worker` with the reason, or 503
    /// `redis_unavailable`.
    pub async fn check_serving(&self, queue: &str) -> Result<(), ApiError> {
        if let Some((at, snap)) = self.cached() {
            if at.elapsed() >= self.inner.ttl {
                self.refresh_in_background();
            } else if snap
                .queues
                .get(queue)
                .is_some_and(|e| e.served() && !e.paused)
            {
                return Ok(());
            }
        }
        let overview = self.inner.admin.overview(queue).await.map_err(redis_down)?;
        if overview.paused {
            return Err(ApiError::unavailable(
                "queue_paused",
                format!("queue {queue} is paused by an operator (`rtq resume {queue}` resumes it)"),
            ));
        }
        if overview.workers_alive == 0 {
            return Err(ApiError::unavailable(
                "no_live_worker",
                format!(
                    "no live worker serves queue {queue}; start one (`rtq-worker --queue {queue}`)"
                ),
            ));
        }
        Ok(())
    }
}

impl Inner {
    fn store(&self, snap: &Arc<Snapshot>) {
        *self.cache.lock().expect("catalog poisoned") = Some((Instant::now(), Arc::clone(snap)));
    }

    /// Reads every queue in a fixed number of pipelined round trips,
    /// whatever the number of queues, fetching only what the catalog
    /// shows ([`Admin::served_queues`]: the registry, then each queue's
    /// pause flag and workers, then the handler and labels of each live
    /// worker).
    async fn read(&self) -> Result<Snapshot, Error> {
        let served = self.admin.served_queues().await?;
        let mut out = Snapshot {
            read_at_secs: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            ..Default::default()
        };
        for queue in served.queues {
            // One queue's unreadable keys must not take the whole list
            // down: it is listed unserved.
            if let Some(e) = &queue.error {
                tracing::warn!(
                    queue = %queue.name, error = %e,
                    "cannot read a queue for the catalog"
                );
            }
            let mut entry = QueueEntry {
                name: queue.name.clone(),
                paused: queue.paused,
                workers_alive: queue.workers_alive(),
                ..Default::default()
            };
            entry.add_workers(&queue.workers);
            out.queues.insert(entry.name.clone(), entry);
        }
        Ok(out)
    }
}

impl QueueEntry {
    /// Adds the handlers and labels of live workers.
    fn add_workers(&mut self, workers: &[ServedWorker]) {
        for w in workers {
            if !w.handler.is_empty() {
                self.handlers.insert(w.handler.clone());
            }
            for (k, v) in &w.labels {
                if k == "model" {
                    self.models.insert(v.clone());
                }
                self.labels.entry(k.clone()).or_default().insert(v.clone());
            }
        }
    }
}

/// The answer for a model the caller cannot use, whether or not it exists.
fn model_not_found(model: &str) -> ApiError {
    let model: String = model.chars().take(100).collect();
    ApiError::new(
        axum::http::StatusCode::NOT_FOUND,
        "invalid_request_error",
        "model_not_found",
        format!(
            "the model {model:?} does not exist or this API key may not use it \
             (GET /v1/models lists the models it may use)"
        ),
    )
}

fn redis_down(e: Error) -> ApiError {
    ApiError::unavailable(
        "redis_unavailable",
        format!("cannot read the queues from Redis: {e}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(name: &str, workers: u64, models: &[&str]) -> QueueEntry {
        QueueEntry {
            name: name.into(),
            workers_alive: workers,
            models: models.iter().map(|m| m.to_string()).collect(),
            ..Default::default()
        }
    }

    fn snapshot(queues: Vec<QueueEntry>) -> Snapshot {
        Snapshot {
            queues: queues.into_iter().map(|q| (q.name.clone(), q)).collect(),
            read_at_secs: 0,
        }
    }

    fn by_name(q: &str) -> Option<Resolved> {
        Some(Resolved {
            queue: q.into(),
            by_label: false,
        })
    }

    fn by_label(q: &str) -> Option<Resolved> {
        Some(Resolved {
            queue: q.into(),
            by_label: true,
        })
    }

    const ALL: &dyn Fn(&str) -> bool = &|_| true;

    #[test]
    fn a_served_queue_name_wins_over_a_label() {
        let snap = snapshot(vec![
            queue("llm", 1, &["llama-3"]),
            queue("llama-3", 1, &[]),
        ]);
        assert_eq!(snap.resolve("llama-3", ALL), by_name("llama-3"));
        assert_eq!(snap.resolve("llm", ALL), by_name("llm"));
        assert_eq!(snap.resolve("gpt-9", ALL), None);
    }

    #[test]
    fn an_unserved_queue_never_shadows_a_served_label() {
        // A leftover registry entry named like the model.
        let snap = snapshot(vec![
            queue("llm", 2, &["llama-3"]),
            queue("llama-3", 0, &[]),
        ]);
        assert_eq!(snap.resolve("llama-3", ALL), by_label("llm"));
        // Without a worker carrying the label, the queue name still
        // resolves (and the refusal says that no worker serves it).
        let snap = snapshot(vec![queue("llm", 0, &[]), queue("llama-3", 0, &[])]);
        assert_eq!(snap.resolve("llama-3", ALL), by_name("llama-3"));
    }

    #[test]
    fn resolution_sees_only_the_queues_the_key_may_use() {
        let snap = snapshot(vec![
            queue("a-first", 1, &["shared"]),
            queue("mine", 1, &["shared"]),
            queue("secret", 1, &[]),
        ]);
        let only_mine: &dyn Fn(&str) -> bool = &|q| q == "mine";
        assert_eq!(snap.resolve("shared", only_mine), by_label("mine"));
        assert_eq!(snap.resolve("shared", ALL), by_label("a-first"));
        assert_eq!(snap.resolve("secret", only_mine), None);
        assert_eq!(snap.resolve("secret", ALL), by_name("secret"));
    }

    #[test]
    fn an_unpaused_queue_is_preferred_for_a_label() {
        let mut paused = queue("a", 1, &["m"]);
        paused.paused = true;
        let snap = snapshot(vec![paused, queue("b", 1, &["m"])]);
        assert_eq!(snap.resolve("m", ALL), by_label("b"));
    }
}
