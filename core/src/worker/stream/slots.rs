//! The stream runtime's capacity: the attempts running (keyed by task id
//! *and* attempt, never more than `slots`), the endings queued but not yet
//! written, and the slots reserved by a read in flight. Sole owner of the
//! capacity invariant: a read reserves before it asks Redis for entries,
//! and what it got is admitted only into reserved or free slots (the rest
//! is handed back).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::functions::v3::{Delivery, Held};
use crate::worker::config::WorkerStatus;
use crate::worker::handler::{StopReason, StopSignal};

/// A running attempt: task id and attempt number.
pub(crate) type Key = (String, u64);

/// Entries a worker may hold at once in one band: the fence read of
/// `rtq3_complete` sees at most this many (running plus endings not yet
/// written).
pub(crate) const MAX_HELD: usize = 1024;

struct Running {
    held: Held,
    stop: StopSignal,
}

#[derive(Default)]
struct Inner {
    /// Attempts whose handler has not finished.
    running: HashMap<Key, Running>,
    /// Attempts whose ending is queued or in flight (their entry is still
    /// in the pending list: beats keep its lease).
    ending: HashMap<Key, Held>,
    /// The tasks of attempts alive (running or ending), to abort as a last
    /// resort at shutdown.
    tasks: HashMap<Key, AbortHandle>,
    /// Slots reserved by reads in flight.
    reserved: usize,
    /// No more admissions (shutdown).
    closed: bool,
}

/// The slots of one stream worker.
pub(crate) struct Slots {
    capacity: usize,
    inner: Mutex<Inner>,
    status: Arc<WorkerStatus>,
    /// Bumped whenever a slot frees or intake may have changed.
    changed: watch::Sender<()>,
}

impl Slots {
    pub(crate) fn new(capacity: usize, status: Arc<WorkerStatus>) -> Self {
        Self {
            capacity,
            inner: Mutex::new(Inner::default()),
            status,
            changed: watch::channel(()).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn free_in(&self, inner: &Inner) -> usize {
        if inner.closed {
            return 0;
        }
        let by_slots = self
            .capacity
            .saturating_sub(inner.running.len() + inner.reserved);
        let by_fence =
            MAX_HELD.saturating_sub(inner.running.len() + inner.ending.len() + inner.reserved);
        by_slots.min(by_fence)
    }

    fn publish(&self, inner: &Inner) {
        self.status
            .busy
            .store(inner.running.len(), Ordering::Release);
    }

    /// Wakes whoever waits for a slot (the intake).
    pub(crate) fn poke(&self) {
        self.changed.send_replace(());
    }

    /// A receiver woken by [`poke`](Self::poke) and every freed slot.
    pub(crate) fn subscribe(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }

    /// Free slots now (0 once closed).
    pub(crate) fn free(&self) -> usize {
        self.free_in(&self.lock())
    }

    /// Reserves up to `want` free slots for a read; returns how many.
    pub(crate) fn reserve(&self, want: usize) -> usize {
        let mut inner = self.lock();
        let n = want.min(self.free_in(&inner));
        inner.reserved += n;
        n
    }

    /// Gives back `n` reserved slots a read did not use.
    pub(crate) fn unreserve(&self, n: usize) {
        if n == 0 {
            return;
        }
        let mut inner = self.lock();
        inner.reserved = inner.reserved.saturating_sub(n);
        drop(inner);
        self.poke();
    }

    /// Admits what a read with `reserved` slots reserved returned: into
    /// the reservation first, then into free slots; returns the admitted
    /// (each with its stop signal) and the surplus to hand back. A
    /// delivery of an attempt already running or ending is dropped when it
    /// is the same entry, handed back when it is another.
    pub(crate) fn settle(
        &self,
        reserved: usize,
        deliveries: Vec<Delivery>,
    ) -> (Vec<(Delivery, StopSignal)>, Vec<Delivery>) {
        let mut inner = self.lock();
        inner.reserved = inner.reserved.saturating_sub(reserved);
        let mut room = reserved;
        let (mut admitted, mut surplus) = (Vec::new(), Vec::new());
        for d in deliveries {
            let key = (d.id.clone(), d.held.attempt());
            let known = inner
                .running
                .get(&key)
                .map(|r| &r.held)
                .or_else(|| inner.ending.get(&key));
            match known {
                Some(held) if *held == d.held => {
                    tracing::debug!(task_id = %key.0, attempt = key.1, "ignoring a repeated delivery");
                    continue;
                }
                Some(_) => {
                    // The same attempt number in another entry (a hand-back
                    // keeps it) while the first is still ending: given back
                    // (no attempt used) rather than dropped, which would
                    // leave it in this worker's pending list until its
                    // lease lapsed.
                    surplus.push(d);
                    continue;
                }
                None => {}
            }
            let fits = !inner.closed
                && (room > 0 || self.free_in(&inner) > 0)
                && inner.running.len() < self.capacity;
            if !fits {
                surplus.push(d);
                continue;
            }
            room = room.saturating_sub(1);
            let stop = StopSignal::default();
            inner.running.insert(
                key,
                Running {
                    held: d.held.clone(),
                    stop: stop.clone(),
                },
            );
            admitted.push((d, stop));
        }
        self.publish(&inner);
        drop(inner);
        if room > 0 {
            self.poke();
        }
        (admitted, surplus)
    }

    /// Spawns `fut` as the task of attempt `key`, tracked for
    /// [`abort_all`](Self::abort_all).
    pub(crate) fn spawn(
        &self,
        key: Key,
        fut: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let mut inner = self.lock();
        let handle = tokio::spawn(fut);
        inner.tasks.insert(key, handle.abort_handle());
    }

    /// The handler of `key` finished: its slot frees. `ending`: its ending
    /// is queued (the entry stays held until [`written`](Self::written)).
    pub(crate) fn finish(&self, key: &Key, ending: Option<&Held>) {
        let mut inner = self.lock();
        inner.running.remove(key);
        match ending {
            Some(held) => {
                inner.ending.insert(key.clone(), held.clone());
            }
            None => {
                inner.tasks.remove(key);
            }
        }
        self.publish(&inner);
        drop(inner);
        self.poke();
    }

    /// The ending of `key` was written (or given up on).
    pub(crate) fn written(&self, key: &Key) {
        let mut inner = self.lock();
        inner.ending.remove(key);
        inner.tasks.remove(key);
        drop(inner);
        self.poke();
    }

    /// Stops attempt `key`; false if it is not running.
    pub(crate) fn stop(&self, key: &Key, reason: StopReason) -> bool {
        let inner = self.lock();
        match inner.running.get(key) {
            Some(r) => {
                r.stop.stop(reason);
                true
            }
            None => false,
        }
    }

    /// Stops the running attempt that holds `held` (a beat answered LOST).
    pub(crate) fn stop_held(&self, held: &Held, reason: StopReason) -> bool {
        let inner = self.lock();
        let mut found = false;
        for r in inner.running.values().filter(|r| &r.held == held) {
            r.stop.stop(reason.clone());
            found = true;
        }
        found
    }

    /// Stops every running attempt.
    pub(crate) fn stop_all(&self, reason: StopReason) {
        let inner = self.lock();
        for r in inner.running.values() {
            r.stop.stop(reason.clone());
        }
    }

    /// Takes no more deliveries (shutdown).
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.poke();
    }

    /// Every entry this worker holds: running attempts and endings not yet
    /// written (for the beat).
    pub(crate) fn held(&self) -> Vec<Held> {
        let inner = self.lock();
        inner
            .running
            .values()
            .map(|r| r.held.clone())
            .chain(inner.ending.values().cloned())
            .collect()
    }

    /// Attempts running (handler not finished).
    pub(crate) fn running(&self) -> usize {
        self.lock().running.len()
    }

    /// True when no attempt runs and no ending waits.
    pub(crate) fn idle(&self) -> bool {
        let inner = self.lock();
        inner.running.is_empty() && inner.ending.is_empty()
    }

    /// Aborts every attempt's task (last resort at shutdown: their
    /// entries go back when the lease lapses).
    pub(crate) fn abort_all(&self) {
        let mut inner = self.lock();
        for (_, task) in inner.tasks.drain() {
            task.abort();
        }
        inner.running.clear();
        inner.ending.clear();
        self.publish(&inner);
    }

    /// Waits until `done` holds for these slots (re-checked at every
    /// change).
    pub(crate) async fn wait(&self, done: impl Fn(&Self) -> bool) {
        let mut rx = self.subscribe();
        loop {
            rx.borrow_and_update();
            if done(self) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(id: &str, band: u8) -> Delivery {
        Delivery {
            held: Held {
                band,
                entry: format!("1-{id}"),
                deliveries: 1,
                a0: 0,
            },
            id: id.into(),
            spec: Vec::new(),
            reply: String::new(),
            deadline_ms: 0,
            max_attempts: 1,
            retention_ms: 1000,
        }
    }

    #[test]
    fn reads_never_admit_more_than_the_slots_and_the_surplus_is_returned() {
        let slots = Slots::new(2, Arc::new(WorkerStatus::default()));
        assert_eq!(slots.reserve(5), 2);
        assert_eq!(slots.free(), 0, "reserved slots are not free");
        let (admitted, surplus) = slots.settle(
            2,
            vec![delivery("a", 0), delivery("b", 1), delivery("c", 2)],
        );
        assert_eq!(admitted.len(), 2);
        assert_eq!(surplus.len(), 1);
        assert_eq!(surplus[0].id, "c");
        assert_eq!(slots.running(), 2);
        let key = ("a".to_string(), 1);
        let mut woken = slots.subscribe();
        woken.borrow_and_update();
        slots.finish(&key, Some(&admitted[0].0.held));
        assert!(
            woken.has_changed().unwrap(),
            "a freed slot wakes the intake at once, before the ending is written"
        );
        assert_eq!(slots.free(), 1, "a finished handler frees its slot");
        assert_eq!(slots.held().len(), 2, "its entry is held until written");
        slots.written(&key);
        assert_eq!(slots.held().len(), 1);
        slots.close();
        assert_eq!(slots.reserve(1), 0, "closed: nothing is reserved");
        let (admitted, surplus) = slots.settle(0, vec![delivery("d", 0)]);
        assert!(admitted.is_empty());
        assert_eq!(surplus.len(), 1);
    }

    #[test]
    fn a_repeated_entry_is_dropped_and_another_entry_of_the_same_attempt_handed_back() {
        let slots = Slots::new(4, Arc::new(WorkerStatus::default()));
        let first = delivery("a", 0);
        let (admitted, _) = slots.settle(0, vec![first.clone()]);
        assert_eq!(admitted.len(), 1);
        // The same entry again (a repeated read): nothing to do.
        let (admitted, surplus) = slots.settle(0, vec![first.clone()]);
        assert!(admitted.is_empty() && surplus.is_empty());
        // The attempt ends (a hand-back keeps its number); the task comes
        // back as another entry while the ending is still in flight.
        slots.finish(&("a".to_string(), 1), Some(&first.held));
        let mut again = first.clone();
        again.held.entry = "2-a".into();
        let (admitted, surplus) = slots.settle(0, vec![again]);
        assert!(admitted.is_empty());
        assert_eq!(surplus.len(), 1, "handed back, not dropped");
    }
}
