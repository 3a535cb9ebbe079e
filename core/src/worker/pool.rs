//! The slot pool: the one owner of a worker's capacity. Every attempt this
//! process runs is admitted here, keyed by (task id, attempt), and never
//! more than `slots` at once, whatever Redis hands out (retried calls,
//! restarts, races): a delivery beyond the free slots is refused and
//! handed back. Everything that touches a running attempt (cancels, stop
//! orders, heartbeats) names the attempt, so an old attempt winding down
//! can never touch a new attempt of the same task.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::config::WorkerStatus;
use super::handler::{StopReason, StopSignal};
use crate::functions::release::HandBack;

/// An attempt's identity.
pub(crate) type AttemptKey = (String, u64);

/// One attempt in the pool.
struct Running {
    stop: StopSignal,
    /// Set once the handler was started (a hand-back of a started attempt
    /// uses it up; of an unstarted one does not).
    started: Arc<AtomicBool>,
}

/// Why an attempt was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Every slot is busy.
    Full,
    /// The worker drains or takes no new tasks.
    Closed,
    /// This attempt runs already (a repeated delivery): ignore it.
    Duplicate,
}

/// A slot held by an admitted attempt.
pub(crate) struct Admitted {
    pub(crate) key: AttemptKey,
    pub(crate) stop: StopSignal,
    pub(crate) started: Arc<AtomicBool>,
}

#[derive(Default)]
struct State {
    running: HashMap<AttemptKey, Running>,
    closed: bool,
    /// Attempts stopped for shutdown, to hand back when the worker leaves.
    interrupted: Vec<HandBack>,
}

/// The slots of one worker process.
pub(crate) struct SlotPool {
    capacity: usize,
    state: Mutex<State>,
    /// Where the count of running attempts is published (`busy`).
    status: Arc<WorkerStatus>,
}

/// The pool's state under its lock; publishes the running count on drop.
struct Guard<'a> {
    state: std::sync::MutexGuard<'a, State>,
    gauge: &'a AtomicUsize,
}

impl std::ops::Deref for Guard<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.state
    }
}

impl std::ops::DerefMut for Guard<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.state
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        self.gauge
            .store(self.state.running.len(), Ordering::Release);
    }
}

impl SlotPool {
    pub(crate) fn new(capacity: usize, status: Arc<WorkerStatus>) -> Self {
        Self {
            capacity,
            state: Mutex::new(State::default()),
            status,
        }
    }

    fn lock(&self) -> Guard<'_> {
        Guard {
            state: self.state.lock().unwrap_or_else(|p| p.into_inner()),
            gauge: &self.status.busy,
        }
    }

    /// Admits an attempt into a free slot.
    pub(crate) fn admit(&self, key: AttemptKey) -> Result<Admitted, Refusal> {
        let mut state = self.lock();
        if state.running.contains_key(&key) {
            return Err(Refusal::Duplicate);
        }
        if state.closed {
            return Err(Refusal::Closed);
        }
        if state.running.len() >= self.capacity {
            return Err(Refusal::Full);
        }
        Ok(Self::insert(&mut state, key))
    }

    fn insert(state: &mut State, key: AttemptKey) -> Admitted {
        let stop = StopSignal::default();
        let started = Arc::new(AtomicBool::new(false));
        state.running.insert(
            key.clone(),
            Running {
                stop: stop.clone(),
                started: Arc::clone(&started),
            },
        );
        Admitted { key, stop, started }
    }

    /// Moves a slot from its finished attempt to the next one Redis handed
    /// it in the same call (the slot's capacity is kept).
    pub(crate) fn chain(&self, done: &AttemptKey, next: AttemptKey) -> Result<Admitted, Refusal> {
        let mut state = self.lock();
        state.running.remove(done);
        if state.running.contains_key(&next) {
            return Err(Refusal::Duplicate);
        }
        if state.closed {
            return Err(Refusal::Closed);
        }
        Ok(Self::insert(&mut state, next))
    }

    /// Frees the slot of a finished attempt.
    pub(crate) fn release(&self, key: &AttemptKey) {
        self.lock().running.remove(key);
    }

    /// Records an attempt stopped for shutdown and frees its slot.
    pub(crate) fn interrupted(&self, key: &AttemptKey, started: bool) {
        let mut state = self.lock();
        state.running.remove(key);
        state.interrupted.push(HandBack {
            id: key.0.clone(),
            attempt: key.1,
            started,
        });
    }

    /// Stops admitting (draining, or intake off with `false` to reopen).
    pub(crate) fn set_closed(&self, closed: bool) {
        self.lock().closed = closed;
    }

    /// Attempts running now.
    pub(crate) fn busy(&self) -> usize {
        self.lock().running.len()
    }

    /// Every attempt running now (for the heartbeat).
    pub(crate) fn running(&self) -> Vec<AttemptKey> {
        let mut keys: Vec<AttemptKey> = self.lock().running.keys().cloned().collect();
        keys.sort();
        keys
    }

    /// Stops one attempt (no-op if it does not run here).
    pub(crate) fn stop(&self, key: &AttemptKey, reason: StopReason) -> bool {
        match self.lock().running.get(key) {
            Some(run) => {
                run.stop.stop(reason);
                true
            }
            None => false,
        }
    }

    /// Stops every attempt.
    pub(crate) fn stop_all(&self, reason: StopReason) {
        for run in self.lock().running.values() {
            run.stop.stop(reason.clone());
        }
    }

    /// What to hand back when the worker leaves: attempts interrupted for
    /// shutdown, and any still registered (their slot was aborted).
    pub(crate) fn hand_backs(&self) -> Vec<HandBack> {
        let mut state = self.lock();
        let mut out = std::mem::take(&mut state.interrupted);
        for ((id, attempt), run) in state.running.drain() {
            out.push(HandBack {
                id,
                attempt,
                started: run.started.load(Ordering::Acquire),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, attempt: u64) -> AttemptKey {
        (id.to_string(), attempt)
    }

    #[test]
    fn never_admits_more_than_its_slots_and_refuses_repeats() {
        let pool = SlotPool::new(2, Default::default());
        let a = pool.admit(key("a", 1)).unwrap();
        assert_eq!(pool.admit(key("a", 1)).err(), Some(Refusal::Duplicate));
        let _b = pool.admit(key("a", 2)).unwrap(); // a new attempt of the same task
        assert_eq!(pool.admit(key("c", 1)).err(), Some(Refusal::Full));
        assert_eq!(pool.busy(), 2);
        pool.release(&a.key);
        assert!(pool.admit(key("c", 1)).is_ok());
        assert_eq!(pool.busy(), 2);
    }

    #[test]
    fn an_old_attempt_never_touches_the_new_one() {
        let pool = SlotPool::new(2, Default::default());
        let old = pool.admit(key("t", 1)).unwrap();
        let new = pool.admit(key("t", 2)).unwrap();
        assert!(pool.stop(&key("t", 1), StopReason::Requeued));
        assert!(old.stop.token().is_cancelled());
        assert!(!new.stop.token().is_cancelled());
        pool.release(&old.key);
        assert_eq!(pool.running(), vec![key("t", 2)]);
    }

    #[test]
    fn chaining_keeps_the_slot_and_closing_refuses_new_work() {
        let pool = SlotPool::new(1, Default::default());
        let a = pool.admit(key("a", 1)).unwrap();
        let b = pool.chain(&a.key, key("b", 1)).unwrap();
        assert_eq!(pool.busy(), 1);
        pool.set_closed(true);
        assert_eq!(pool.chain(&b.key, key("c", 1)).err(), Some(Refusal::Closed));
        assert_eq!(pool.busy(), 0);
        assert_eq!(pool.admit(key("d", 1)).err(), Some(Refusal::Closed));
    }

    #[test]
    fn hand_backs_name_interrupted_and_aborted_attempts() {
        let pool = SlotPool::new(3, Default::default());
        let a = pool.admit(key("a", 1)).unwrap();
        let b = pool.admit(key("b", 4)).unwrap();
        b.started.store(true, Ordering::Release);
        pool.interrupted(&a.key, true);
        let mut backs = pool.hand_backs();
        backs.sort_by(|x, y| x.id.cmp(&y.id));
        assert_eq!(
            backs,
            vec![
                HandBack {
                    id: "a".into(),
                    attempt: 1,
                    started: true
                },
                HandBack {
                    id: "b".into(),
                    attempt: 4,
                    started: true
                }
            ]
        );
        assert_eq!(pool.busy(), 0);
    }
}
