//! [`Catalog`]: which queues are served right now (live workers, their
//! labels and handlers, paused or not), read from Redis and cached. It
//! answers `GET /v1/models`, maps a model name to its queue (only among
//! the queues the caller's key may use), and decides "paused" and "no live
//! worker" refusals (always re-checked against Redis before refusing, so a
//! cache never refuses a queue that just came up).
//!
//! No request waits for a read of every queue once a snapshot exists: a
//! stale snapshot is served while one background task reads the next
//! (pipelined: [`Admin::summaries`], then the workers of the served queues
//! concurrently). A name the snapshot does not know is looked up as a
//! queue with a targeted read; a new `model` label is known from the next
//! snapshot (within `--catalog-ttl-ms` of a request).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rtq_core::admin::{worker_labels, Admin, QueueOverview};
use rtq_core::Error;
use tokio::sync::Mutex;

use crate::error::ApiError;

/// Worker lists read at once during a refresh (one multiplexed connection
/// pipelines them).
const WORKER_READS_IN_FLIGHT: usize = 32;

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
    cache: std::sync::Mutex<Option<(Instant, Arc<Snapshot>)>>,
    /// Set while the background task reads a new snapshot.
    refreshing: AtomicBool,
    /// Held by the request that reads the first snapshot (the others wait
    /// for it instead of reading too).
    first: Mutex<()>,
}

impl Catalog {
    /// A catalog read through `admin`, read again in the background when
    /// a request finds it older than `ttl`.
    pub fn new(admin: Admin, ttl: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                admin,
                ttl,
                cache: std::sync::Mutex::new(None),
                refreshing: AtomicBool::new(false),
                first: Mutex::new(()),
            }),
        }
    }

    fn cached(&self) -> Option<(Instant, Arc<Snapshot>)> {
        self.inner.cache.lock().expect("catalog poisoned").clone()
    }

    /// The current snapshot. Once one exists it is returned at once; if it
    /// is older than the TTL, a background task reads the next one. Only
    /// the first requests of a process wait for a read.
    ///
    /// # Errors
    /// Redis errors (of the first read only).
    pub async fn snapshot(&self) -> Result<Arc<Snapshot>, Error> {
        if let Some((at, snap)) = self.cached() {
            if at.elapsed() >= self.inner.ttl {
                self.refresh_in_background();
            }
            return Ok(snap);
        }
        let _first = self.inner.first.lock().await;
        if let Some((_, snap)) = self.cached() {
            return Ok(snap);
        }
        let snap = Arc::new(self.inner.read().await?);
        self.inner.store(&snap);
        Ok(snap)
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
        let snap = self.snapshot().await.map_err(redis_down)?;
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

    /// Reads every queue: their counts in two pipelined round trips, then
    /// the workers of the served ones, many at once.
    async fn read(&self) -> Result<Snapshot, Error> {
        let overviews = self.admin.summaries().await?;
        let entries: Vec<Result<QueueEntry, Error>> = futures::stream::iter(overviews)
            .map(|o| self.entry(o))
            .buffer_unordered(WORKER_READS_IN_FLIGHT)
            .collect()
            .await;
        let mut out = Snapshot {
            read_at_secs: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            ..Default::default()
        };
        for entry in entries {
            let entry = entry?;
            out.queues.insert(entry.name.clone(), entry);
        }
        Ok(out)
    }

    async fn entry(&self, overview: QueueOverview) -> Result<QueueEntry, Error> {
        let mut entry = QueueEntry {
            name: overview.name.clone(),
            paused: overview.paused,
            workers_alive: overview.workers_alive,
            ..Default::default()
        };
        if overview.workers_alive == 0 {
            return Ok(entry);
        }
        for w in self.admin.workers(&overview.name).await? {
            if w.lease_until_ms.is_some_and(|l| l <= overview.now_ms) {
                continue;
            }
            let handler = w.field("handler");
            if !handler.is_empty() {
                entry.handlers.insert(handler.to_string());
            }
            for (k, v) in worker_labels(&w) {
                if k == "model" {
                    entry.models.insert(v.clone());
                }
                entry.labels.entry(k).or_default().insert(v);
            }
        }
        Ok(entry)
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
