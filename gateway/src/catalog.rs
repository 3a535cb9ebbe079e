//! [`Catalog`]: which queues are served right now (live workers, their
//! labels and handlers, paused or not), read from Redis and cached for a
//! short while. It answers `GET /v1/models`, maps a model name to its
//! queue, and decides "paused" and "no live worker" refusals (always
//! re-checked against Redis before refusing, so a cache never refuses a
//! queue that just came up).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtq_core::admin::{worker_labels, Admin};
use rtq_core::Error;
use tokio::sync::Mutex;

use crate::error::ApiError;

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

/// A read of every queue at one moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// By queue name.
    pub queues: BTreeMap<String, QueueEntry>,
    /// When it was read (Unix seconds), for `created` in model lists.
    pub read_at_secs: u64,
}

impl Snapshot {
    /// The queue a model name selects: a queue of that name, else the queue
    /// whose live workers carry the label `model=<name>`.
    pub fn resolve(&self, model: &str) -> Option<Resolved> {
        if self.queues.contains_key(model) {
            return Some(Resolved {
                queue: model.to_string(),
                by_label: false,
            });
        }
        self.queues
            .values()
            .find(|q| q.models.contains(model))
            .map(|q| Resolved {
                queue: q.name.clone(),
                by_label: true,
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

/// The cached catalog.
pub struct Catalog {
    admin: Admin,
    ttl: Duration,
    cache: std::sync::Mutex<Option<(Instant, Arc<Snapshot>)>>,
    /// Held by the one request that reads Redis again; the others go on
    /// with the previous snapshot meanwhile.
    refreshing: Mutex<()>,
}

impl Catalog {
    /// A catalog read through `admin`, cached for `ttl`.
    pub fn new(admin: Admin, ttl: Duration) -> Self {
        Self {
            admin,
            ttl,
            cache: std::sync::Mutex::new(None),
            refreshing: Mutex::new(()),
        }
    }

    fn cached(&self) -> Option<(Instant, Arc<Snapshot>)> {
        self.cache.lock().expect("catalog poisoned").clone()
    }

    /// The current snapshot, read again when older than the TTL (or when
    /// `fresh`). While one caller reads Redis again, the others get the
    /// previous snapshot instead of waiting (unless `fresh`).
    ///
    /// # Errors
    /// Redis errors.
    pub async fn snapshot(&self, fresh: bool) -> Result<Arc<Snapshot>, Error> {
        let cached = self.cached();
        if let Some((at, snap)) = &cached {
            if !fresh && at.elapsed() < self.ttl {
                return Ok(Arc::clone(snap));
            }
        }
        let _guard = match (self.refreshing.try_lock(), cached) {
            (Ok(guard), _) => guard,
            (Err(_), Some((_, snap))) if !fresh => return Ok(snap),
            (Err(_), _) => {
                let guard = self.refreshing.lock().await;
                // Someone else just read it.
                if let Some((at, snap)) = self.cached() {
                    if at.elapsed() < self.ttl / 4 {
                        return Ok(snap);
                    }
                }
                guard
            }
        };
        let snap = Arc::new(self.read().await?);
        *self.cache.lock().expect("catalog poisoned") = Some((Instant::now(), Arc::clone(&snap)));
        Ok(snap)
    }

    async fn read(&self) -> Result<Snapshot, Error> {
        let mut out = Snapshot {
            read_at_secs: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            ..Default::default()
        };
        for name in self.admin.queues().await? {
            let entry = self.entry(&name).await?;
            out.queues.insert(name, entry);
        }
        Ok(out)
    }

    async fn entry(&self, name: &str) -> Result<QueueEntry, Error> {
        let overview = self.admin.overview(name).await?;
        let mut entry = QueueEntry {
            name: name.to_string(),
            paused: overview.paused,
            workers_alive: overview.workers_alive,
            ..Default::default()
        };
        if overview.workers_alive > 0 {
            for w in self.admin.workers(name).await? {
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
        }
        Ok(entry)
    }

    /// Resolves a model name, reading Redis again if the cached snapshot
    /// does not know it.
    ///
    /// # Errors
    /// 404 `model_not_found`, 503 when Redis cannot be read.
    pub async fn resolve(&self, model: &str) -> Result<Resolved, ApiError> {
        for fresh in [false, true] {
            let snap = self.snapshot(fresh).await.map_err(redis_down)?;
            if let Some(r) = snap.resolve(model) {
                return Ok(r);
            }
        }
        let model: String = model.chars().take(100).collect();
        Err(ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
            format!(
                "the model {model:?} does not exist: no queue of that name and no live worker \
                 labelled model={model} (GET /v1/models lists what is served)"
            ),
        ))
    }

    /// Refuses a queue that cannot serve now: paused, or without a live
    /// worker. A cached "serving" passes at once; anything else is read
    /// fresh from Redis before refusing.
    ///
    /// # Errors
    /// 503 `queue_paused` or `no_live_worker` with the reason, or 503
    /// `redis_unavailable`.
    pub async fn check_serving(&self, queue: &str) -> Result<(), ApiError> {
        if let Ok(snap) = self.snapshot(false).await {
            if let Some(e) = snap.queues.get(queue) {
                if e.workers_alive > 0 && !e.paused {
                    return Ok(());
                }
            }
        }
        let overview = self.admin.overview(queue).await.map_err(redis_down)?;
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

fn redis_down(e: Error) -> ApiError {
    ApiError::unavailable(
        "redis_unavailable",
        format!("cannot read the queues from Redis: {e}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_resolves_by_queue_name_first_then_by_label() {
        let mut snap = Snapshot::default();
        let mut a = QueueEntry {
            name: "llm".into(),
            ..Default::default()
        };
        a.models.insert("llama-3".into());
        snap.queues.insert("llm".into(), a);
        snap.queues.insert(
            "llama-3".into(),
            QueueEntry {
                name: "llama-3".into(),
                ..Default::default()
            },
        );
        assert_eq!(
            snap.resolve("llama-3"),
            Some(Resolved {
                queue: "llama-3".into(),
                by_label: false
            })
        );
        snap.queues.remove("llama-3");
        assert_eq!(
            snap.resolve("llama-3"),
            Some(Resolved {
                queue: "llm".into(),
                by_label: true
            })
        );
        assert_eq!(snap.resolve("gpt-9"), None);
    }
}
