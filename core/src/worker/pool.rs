//! The slot pool: the one owner of a worker's capacity. Every attempt this
//! process runs is admitted here, keyed by (task id, attempt), and never
//! more than `slots` at once, whatever Redis hands out (retried calls,
//! restarts, races): a delivery beyond the free slots is refused and
//! handed back. Everything that touches a running attempt (cancels, stop
//! orders, heartbeats) names the attempt, so an old attempt winding down
//! can never touch a new attempt of the same task.
//!
//! One window needs care: a slot's `complete` that takes no next task
//! frees the slot in Redis before its reply reaches the worker. A delivery
//! arriving in that window finds the pool full although it is meant for
//! that very slot. Such a delivery is held (at most one per slot whose
//! complete is in flight) and the slot takes it when the reply comes back;
//! only what cannot be matched to a completing slot is handed back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::config::WorkerStatus;
use super::handler::{StopReason, StopSignal};
use super::slot::Job;
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
    /// Held for a slot whose complete is in flight: it runs there next.
    Held,
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
    /// Slots whose `complete` (asking for a next task) is in flight.
    completing: usize,
    /// Deliveries waiting for one of those slots (never more than
    /// `completing`).
    held: std::collections::VecDeque<(AttemptKey, Job)>,
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

    /// Admits a delivery, or holds it for a slot whose complete is in
    /// flight when every slot is busy. Returns the admitted slot and the
    /// job back, or why it was neither admitted nor held.
    pub(crate) fn admit_or_hold(
        &self,
        job: Job,
    ) -> Result<(Admitted, Job), (Refusal, Option<Job>)> {
        let key = job.key();
        let mut state = self.lock();
        if state.running.contains_key(&key) || state.held.iter().any(|(k, _)| *k == key) {
            return Err((Refusal::Duplicate, Some(job)));
        }
        if state.closed {
            return Err((Refusal::Closed, Some(job)));
        }
        if state.running.len() < self.capacity {
            return Ok((Self::insert(&mut state, key), job));
        }
        if state.held.len() < state.completing {
            state.held.push_back((key, job));
            return Err((Refusal::Held, None));
        }
        Err((Refusal::Full, Some(job)))
    }

    /// A slot starts a `complete` that asks for its next task.
    pub(crate) fn begin_completing(&self) {
        self.lock().completing += 1;
    }

    /// That `complete` answered. With no next task from Redis, the slot
    /// takes a held delivery if there is one (the slot is admitted for it;
    /// `None` means free the slot). Held deliveries that no completing slot
    /// can take any more are returned for a hand-back.
    pub(crate) fn end_completing(
        &self,
        done: &AttemptKey,
        took_next: bool,
    ) -> (Option<(Admitted, Job)>, Vec<Job>) {
        let mut state = self.lock();
        state.completing = state.completing.saturating_sub(1);
        let mut taken = None;
        if !took_next && !state.closed {
            if let Some((key, job)) = state.held.pop_front() {
                state.running.remove(done);
                taken = Some((Self::insert(&mut state, key), job));
            }
        }
        let mut orphans = Vec::new();
        while state.held.len() > state.completing {
            if let Some((_, job)) = state.held.pop_back() {
                orphans.push(job);
            }
        }
        (taken, orphans)
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
    /// Closing returns the held deliveries, to hand back.
    pub(crate) fn set_closed(&self, closed: bool) -> Vec<Job> {
        let mut state = self.lock();
        state.closed = closed;
        if closed {
            state.held.drain(..).map(|(_, job)| job).collect()
        } else {
            Vec::new()
        }
    }

    /// Attempts running now.
    pub(crate) fn busy(&self) -> usize {
        self.lock().running.len()
    }

    /// Every attempt running now.
    #[cfg(test)]
    pub(crate) fn running(&self) -> Vec<AttemptKey> {
        let mut keys: Vec<AttemptKey> = self.lock().running.keys().cloned().collect();
        keys.sort();
        keys
    }

    /// What a heartbeat reports running: the attempts running and those
    /// interrupted for shutdown but not yet handed back.
    pub(crate) fn reported(&self) -> Vec<AttemptKey> {
        let state = self.lock();
        let mut keys: Vec<AttemptKey> = state
            .running
            .keys()
            .cloned()
            .chain(state.interrupted.iter().map(|h| (h.id.clone(), h.attempt)))
            .collect();
        keys.sort();
        keys.dedup();
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
    /// shutdown, any still registered (their slot was aborted), and held
    /// deliveries (never started).
    pub(crate) fn hand_backs(&self) -> Vec<HandBack> {
        let mut state = self.lock();
        let mut out = std::mem::take(&mut state.interrupted);
        for ((id, attempt), _) in state.held.drain(..) {
            out.push(HandBack {
                id,
                attempt,
                started: false,
            });
        }
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

    fn admit(pool: &SlotPool, id: &str, attempt: u64) -> Result<Admitted, Refusal> {
        pool.admit_or_hold(job(id, attempt))
            .map(|(a, _)| a)
            .map_err(|(r, _)| r)
    }

    #[test]
    fn never_admits_more_than_its_slots_and_refuses_repeats() {
        let pool = SlotPool::new(2, Default::default());
        let a = admit(&pool, "a", 1).unwrap();
        assert_eq!(admit(&pool, "a", 1).err(), Some(Refusal::Duplicate));
        let _b = admit(&pool, "a", 2).unwrap(); // a new attempt of the same task
        assert_eq!(admit(&pool, "c", 1).err(), Some(Refusal::Full));
        assert_eq!(pool.busy(), 2);
        pool.release(&a.key);
        assert!(admit(&pool, "c", 1).is_ok());
        assert_eq!(pool.busy(), 2);
    }

    #[test]
    fn an_old_attempt_never_touches_the_new_one() {
        let pool = SlotPool::new(2, Default::default());
        let old = admit(&pool, "t", 1).unwrap();
        let new = admit(&pool, "t", 2).unwrap();
        assert!(pool.stop(&key("t", 1), StopReason::Requeued));
        assert!(old.stop.token().is_cancelled());
        assert!(!new.stop.token().is_cancelled());
        pool.release(&old.key);
        assert_eq!(pool.running(), vec![key("t", 2)]);
    }

    #[test]
    fn chaining_keeps_the_slot_and_closing_refuses_new_work() {
        let pool = SlotPool::new(1, Default::default());
        let a = admit(&pool, "a", 1).unwrap();
        let b = pool.chain(&a.key, key("b", 1)).unwrap();
        assert_eq!(pool.busy(), 1);
        let _ = pool.set_closed(true);
        assert_eq!(pool.chain(&b.key, key("c", 1)).err(), Some(Refusal::Closed));
        assert_eq!(pool.busy(), 0);
        assert_eq!(admit(&pool, "d", 1).err(), Some(Refusal::Closed));
    }

    fn job(id: &str, attempt: u64) -> Job {
        Job::Reject {
            key: key(id, attempt),
            reason: String::new(),
        }
    }

    #[test]
    fn a_delivery_meant_for_a_completing_slot_is_held_for_it() {
        let pool = SlotPool::new(1, Default::default());
        let (a, _) = pool.admit_or_hold(job("a", 1)).ok().unwrap();
        // No complete in flight: a delivery beyond the slots is refused.
        assert!(matches!(
            pool.admit_or_hold(job("b", 1)),
            Err((Refusal::Full, Some(_)))
        ));
        pool.begin_completing();
        assert!(matches!(
            pool.admit_or_hold(job("b", 1)),
            Err((Refusal::Held, None))
        ));
        assert!(matches!(
            pool.admit_or_hold(job("b", 1)),
            Err((Refusal::Duplicate, Some(_)))
        ));
        // One held delivery per completing slot, no more.
        assert!(matches!(
            pool.admit_or_hold(job("c", 1)),
            Err((Refusal::Full, Some(_)))
        ));
        // The complete took no next task: the slot runs the held delivery.
        let (taken, orphans) = pool.end_completing(&a.key, false);
        let (b, _) = taken.unwrap();
        assert_eq!(b.key, key("b", 1));
        assert!(orphans.is_empty());
        assert_eq!(pool.running(), vec![key("b", 1)]);
    }

    #[test]
    fn a_held_delivery_is_returned_when_its_slot_got_a_task_from_redis() {
        let pool = SlotPool::new(1, Default::default());
        let (a, _) = pool.admit_or_hold(job("a", 1)).ok().unwrap();
        pool.begin_completing();
        assert!(matches!(
            pool.admit_or_hold(job("b", 1)),
            Err((Refusal::Held, None))
        ));
        let (taken, orphans) = pool.end_completing(&a.key, true);
        assert!(taken.is_none());
        assert_eq!(orphans.len(), 1, "handed back: the slot is busy again");
        assert_eq!(orphans[0].key(), key("b", 1));
    }

    #[test]
    fn hand_backs_name_interrupted_and_aborted_attempts() {
        let pool = SlotPool::new(3, Default::default());
        let a = admit(&pool, "a", 1).unwrap();
        let b = admit(&pool, "b", 4).unwrap();
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
