//! The client's per-queue resources, bounded: one reply router (a blocking
//! Redis connection) and one submit batcher (a task) per queue in use.
//!
//! A process that touches many queues (a gateway that takes queue names
//! from its callers) must not keep a connection per name forever: routers
//! nobody uses are retired after [`ClientConfig::reply_reader_idle`]
//! (crate::ClientConfig), and when [`ClientConfig::max_reply_readers`]
//! are open, the least recently used idle one makes room; if every one is
//! in use, the new wait fails with [`Error::TooManyQueues`] instead of
//! opening one more connection.
//!
//! A router is retired only under the pool's lock and only when nobody
//! else holds it (its `Arc` count is its own tasks' plus the pool's): new
//! holders come only through the pool, so no wait can register with a
//! router that is stopping. A retired router deletes its stream; its
//! successor for the same queue gets a stream key of its own (the
//! client id with a generation suffix), so that deletion never races it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::batcher::SubmitBatcher;
use super::router::{ReplyRouter, OWN_HANDLES};
use super::stream_batcher::StreamBatcher;
use crate::error::Error;

/// The routers and batchers of one client.
#[derive(Default)]
pub(crate) struct QueuePool {
    routers: Mutex<Routers>,
    batchers: Mutex<HashMap<String, Arc<SubmitBatcher>>>,
    stream_batchers: Mutex<HashMap<String, Arc<StreamBatcher>>>,
}

#[derive(Default)]
struct Routers {
    by_queue: HashMap<String, Arc<ReplyRouter>>,
    /// Routers retired so far: the next router's stream key suffix.
    retired: u64,
}

impl Routers {
    /// True if nobody but the pool and the router's own tasks holds it
    /// and no wait or subscription is open on it.
    fn idle_since(router: &Arc<ReplyRouter>) -> Option<Instant> {
        if Arc::strong_count(router) > OWN_HANDLES + 1 {
            return None;
        }
        router.unused_since()
    }

    fn retire(&mut self, queue: &str) {
        if let Some(router) = self.by_queue.remove(queue) {
            tracing::debug!(queue, key = router.key(), "retiring an idle reply reader");
            router.retire();
            self.retired += 1;
        }
    }
}

impl QueuePool {
    /// The router of `queue`, started with `start(generation)` if there is
    /// none. At `max` routers the least recently used idle one is retired
    /// first.
    ///
    /// # Errors
    /// [`Error::TooManyQueues`] when `max` routers are open and all in use.
    pub(crate) fn router(
        &self,
        queue: &str,
        max: usize,
        start: impl FnOnce(u64) -> Arc<ReplyRouter>,
    ) -> Result<Arc<ReplyRouter>, Error> {
        let mut routers = self.routers.lock().expect("router pool poisoned");
        if let Some(r) = routers.by_queue.get(queue) {
            return Ok(Arc::clone(r));
        }
        if routers.by_queue.len() >= max.max(1) {
            let oldest = routers
                .by_queue
                .iter()
                .filter_map(|(name, r)| Routers::idle_since(r).map(|t| (t, name.clone())))
                .min();
            match oldest {
                Some((_, name)) => routers.retire(&name),
                None => {
                    return Err(Error::TooManyQueues {
                        queue: queue.to_string(),
                        max,
                    })
                }
            }
        }
        let router = start(routers.retired);
        routers
            .by_queue
            .insert(queue.to_string(), Arc::clone(&router));
        Ok(router)
    }

    /// The batcher of `queue`, started with `start` if there is none.
    pub(crate) fn batcher(
        &self,
        queue: &str,
        start: impl FnOnce() -> SubmitBatcher,
    ) -> Arc<SubmitBatcher> {
        let mut batchers = self.batchers.lock().expect("batcher pool poisoned");
        Arc::clone(
            batchers
                .entry(queue.to_string())
                .or_insert_with(|| Arc::new(start())),
        )
    }

    /// The stream-queue batcher of `queue`, started with `start` if there
    /// is none.
    pub(crate) fn stream_batcher(
        &self,
        queue: &str,
        start: impl FnOnce() -> StreamBatcher,
    ) -> Arc<StreamBatcher> {
        let mut batchers = self.stream_batchers.lock().expect("batcher pool poisoned");
        Arc::clone(
            batchers
                .entry(queue.to_string())
                .or_insert_with(|| Arc::new(start())),
        )
    }

    /// Retires routers unused for `idle` and drops batchers nobody holds
    /// (their task ends with them). Returns how many routers it retired.
    pub(crate) fn sweep(&self, idle: Duration) -> usize {
        let now = Instant::now();
        let mut routers = self.routers.lock().expect("router pool poisoned");
        let stale: Vec<String> = routers
            .by_queue
            .iter()
            .filter(|(_, r)| {
                Routers::idle_since(r).is_some_and(|t| now.saturating_duration_since(t) >= idle)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in &stale {
            routers.retire(name);
        }
        drop(routers);
        self.batchers
            .lock()
            .expect("batcher pool poisoned")
            .retain(|_, b| Arc::strong_count(b) > 1);
        self.stream_batchers
            .lock()
            .expect("batcher pool poisoned")
            .retain(|_, b| Arc::strong_count(b) > 1);
        stale.len()
    }

    /// Open routers (one blocking connection each).
    pub(crate) fn routers_open(&self) -> usize {
        self.routers.lock().map(|r| r.by_queue.len()).unwrap_or(0)
    }
}

/// How often the client sweeps its pool for a given idle time: a quarter
/// of it, between 100 ms and 15 s.
pub(crate) fn sweep_every(idle: Duration) -> Duration {
    (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(15))
}

/// Sweeps the client's pool every [`sweep_every`] until `stop` is
/// cancelled or the client is gone.
pub(crate) async fn sweep_loop(
    client: std::sync::Weak<super::ClientInner>,
    idle: Duration,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(sweep_every(idle)) => {}
        }
        let Some(client) = client.upgrade() else {
            return;
        };
        client.pool.sweep(idle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Starts a router without tasks; its tasks' handles are stood in for
    /// by clones that live as long as the test (what the pool must not
    /// count as holders).
    fn start(pool: &QueuePool, queue: &str, max: usize) -> Result<Arc<ReplyRouter>, Error> {
        pool.router(queue, max, |generation| {
            let router =
                ReplyRouter::idle(format!("r:{queue}.{generation}"), CancellationToken::new());
            for _ in 0..OWN_HANDLES {
                std::mem::forget(Arc::clone(&router));
            }
            router
        })
    }

    #[test]
    fn an_idle_router_is_retired_and_its_successor_gets_a_new_key() {
        let pool = QueuePool::default();
        let first = start(&pool, "a", 8).unwrap();
        let key = first.key().to_string();
        drop(first);
        assert_eq!(pool.sweep(Duration::ZERO), 1);
        assert_eq!(pool.routers_open(), 0);
        let second = start(&pool, "a", 8).unwrap();
        assert_ne!(second.key(), key, "a successor must not share the stream");
    }

    #[test]
    fn a_router_held_or_waited_on_is_never_retired() {
        let pool = QueuePool::default();
        let held = start(&pool, "held", 8).unwrap();
        let waited = start(&pool, "waited", 8).unwrap();
        let waiter = waited.register("t1");
        drop(waited);
        assert_eq!(pool.sweep(Duration::ZERO), 0);
        assert_eq!(pool.routers_open(), 2);
        drop(waiter);
        assert_eq!(pool.sweep(Duration::ZERO), 1, "the waited one is free now");
        assert_eq!(pool.sweep(Duration::ZERO), 0, "the held one is still held");
        drop(held);
        assert_eq!(pool.sweep(Duration::ZERO), 1);
    }

    #[test]
    fn at_the_cap_the_least_recently_used_idle_router_makes_room() {
        let pool = QueuePool::default();
        let busy = start(&pool, "busy", 2).unwrap();
        let _w = busy.register("t");
        drop(start(&pool, "idle", 2).unwrap());
        // "idle" is retired to open "new"...
        let new = start(&pool, "new", 2).unwrap();
        assert_eq!(pool.routers_open(), 2);
        // ...and with both in use, one more queue is refused.
        match start(&pool, "more", 2) {
            Err(Error::TooManyQueues { queue, max }) => {
                assert_eq!((queue.as_str(), max), ("more", 2));
            }
            other => panic!("expected TooManyQueues, got {:?}", other.map(|_| ())),
        }
        drop(new);
        assert!(start(&pool, "more", 2).is_ok());
    }

    #[test]
    fn sweep_timing_is_bounded() {
        assert_eq!(sweep_every(Duration::ZERO), Duration::from_millis(100));
        assert_eq!(
            sweep_every(Duration::from_secs(60)),
            Duration::from_secs(15)
        );
        assert_eq!(
            sweep_every(Duration::from_secs(2)),
            Duration::from_millis(500)
        );
    }
}
