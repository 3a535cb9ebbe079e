//! [`OpenTasks`]: the tasks that open responses are following right now.
//! It feeds the `open_streams` gauge (every open response counts) and,
//! when a shutdown's grace period runs out, cancels the tasks the gateway
//! *owns*: those a request created and is the only reason to run (a chat
//! completion, a `wait=true` / `stream=true` submit without an explicit
//! `id`), so no GPU keeps working for a caller the gateway is about to
//! drop. Tasks a response only *follows* (`GET .../stream`, a submit that
//! named an `id` and may have attached to someone else's task) are never
//! cancelled: following a task does not make it ours.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use rtq_core::Queue;

/// How an open response relates to its task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// The request created the task for its caller alone: cancelled when
    /// the gateway shuts down with the response still open.
    Owned,
    /// The response only follows the task: never cancelled by the gateway.
    Followed,
}

/// One open response's task.
struct Entry {
    queue: Queue,
    id: String,
    hold: Hold,
}

/// The registry of tasks followed by open responses.
pub struct OpenTasks {
    next: AtomicU64,
    map: Mutex<HashMap<u64, Entry>>,
    gauge: Gauge,
}

/// Removes its task from the registry when dropped (the response ended,
/// or the caller went away).
pub struct OpenGuard {
    owner: Arc<OpenTasks>,
    key: u64,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        if self
            .owner
            .map
            .lock()
            .expect("open tasks poisoned")
            .remove(&self.key)
            .is_some()
        {
            self.owner.gauge.dec();
        }
    }
}

impl OpenTasks {
    /// A registry that keeps `gauge` at its size.
    pub fn new(gauge: Gauge) -> Arc<Self> {
        Arc::new(Self {
            next: AtomicU64::new(0),
            map: Mutex::new(HashMap::new()),
            gauge,
        })
    }

    /// Notes that a response follows task `id` of `queue`, as `hold` says,
    /// until the guard is dropped.
    pub fn open(self: &Arc<Self>, queue: &Queue, id: &str, hold: Hold) -> OpenGuard {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        let entry = Entry {
            queue: queue.clone(),
            id: id.to_string(),
            hold,
        };
        self.map
            .lock()
            .expect("open tasks poisoned")
            .insert(key, entry);
        self.gauge.inc();
        OpenGuard {
            owner: Arc::clone(self),
            key,
        }
    }

    /// How many responses are open (owned and followed).
    pub fn len(&self) -> usize {
        self.map.lock().expect("open tasks poisoned").len()
    }

    /// True if none is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many open responses own their task.
    pub fn owned(&self) -> usize {
        self.owned_tasks().len()
    }

    fn owned_tasks(&self) -> Vec<(Queue, String)> {
        self.map
            .lock()
            .expect("open tasks poisoned")
            .values()
            .filter(|e| e.hold == Hold::Owned)
            .map(|e| (e.queue.clone(), e.id.clone()))
            .collect()
    }

    /// Cancels every owned task still open (at most `within` in all);
    /// followed tasks are left alone. Returns how many cancels were sent.
    pub async fn cancel_owned(&self, reason: &str, within: Duration) -> usize {
        let tasks = self.owned_tasks();
        let n = tasks.len();
        let cancels = futures::future::join_all(tasks.iter().map(|(q, id)| async move {
            if let Err(e) = q.cancel(id, reason).await {
                tracing::warn!(task_id = %id, queue = q.name(), error = %e, "cancel at shutdown failed");
            }
        }));
        let _ = tokio::time::timeout(within, cancels).await;
        n
    }
}
