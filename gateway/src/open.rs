//! [`OpenTasks`]: the tasks that open responses are following right now.
//! It feeds the `open_streams` gauge and, when a shutdown's grace period
//! runs out, cancels every task still followed so no GPU keeps working for
//! a caller the gateway is about to drop.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use rtq_core::Queue;

/// The registry of followed tasks.
pub struct OpenTasks {
    next: AtomicU64,
    map: Mutex<HashMap<u64, (Queue, String)>>,
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

    /// Notes that a response follows task `id` of `queue` until the guard
    /// is dropped.
    pub fn open(self: &Arc<Self>, queue: &Queue, id: &str) -> OpenGuard {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        self.map
            .lock()
            .expect("open tasks poisoned")
            .insert(key, (queue.clone(), id.to_string()));
        self.gauge.inc();
        OpenGuard {
            owner: Arc::clone(self),
            key,
        }
    }

    /// How many responses are open.
    pub fn len(&self) -> usize {
        self.map.lock().expect("open tasks poisoned").len()
    }

    /// True if none is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Cancels every followed task (at most `within` in all); returns how
    /// many cancels were sent.
    pub async fn cancel_all(&self, reason: &str, within: Duration) -> usize {
        let tasks: Vec<(Queue, String)> = self
            .map
            .lock()
            .expect("open tasks poisoned")
            .values()
            .cloned()
            .collect();
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
