//! The intake back-off after a handler hands a task back unstarted
//! ([`HandlerError::not_started`](super::HandlerError::not_started)).
//!
//! A hand-back puts the task at the front of the queue without using an
//! attempt, and `rtq2_release` sets this worker's free slots to 0. Redis
//! reopens them at the worker's next heartbeat, which alone would let a
//! task that every worker hands back (the model down on every node) move
//! from worker to worker once per heartbeat period per worker, for as long
//! as it lives. So the worker also stops taking tasks for a back-off:
//! [`FIRST_PAUSE`], doubled by each further hand-back in a row, at most
//! [`MAX_PAUSE`]; a task that runs (to a result or a failure) resets it.
//! Each worker then takes a handed-back task at most once per back-off,
//! and the task keeps its deadline.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The pause after the first hand-back in a row.
pub(crate) const FIRST_PAUSE: Duration = Duration::from_millis(500);
/// The longest pause.
pub(crate) const MAX_PAUSE: Duration = Duration::from_secs(30);

#[derive(Default)]
struct State {
    /// Hand-backs since a task last ran.
    in_a_row: u32,
    /// Intake is off until then.
    until: Option<Instant>,
}

/// Hand-backs in a row and the pause they call for.
#[derive(Default)]
pub(crate) struct Declines {
    state: Mutex<State>,
}

impl Declines {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A handler handed a task back: returns how long intake pauses.
    pub(crate) fn declined(&self) -> Duration {
        self.declined_at(Instant::now())
    }

    fn declined_at(&self, now: Instant) -> Duration {
        let mut state = self.lock();
        state.in_a_row = state.in_a_row.saturating_add(1);
        let pause = FIRST_PAUSE
            .saturating_mul(1 << (state.in_a_row - 1).min(16))
            .min(MAX_PAUSE);
        let until = now + pause;
        state.until = Some(state.until.map_or(until, |u| u.max(until)));
        pause
    }

    /// A handler ran a task: the next hand-back starts from
    /// [`FIRST_PAUSE`] again (a pause under way runs out as planned).
    pub(crate) fn ran(&self) {
        let mut state = self.lock();
        if state.in_a_row > 0 {
            state.in_a_row = 0;
        }
    }

    /// True while intake pauses.
    pub(crate) fn pausing(&self) -> bool {
        self.pausing_at(Instant::now())
    }

    fn pausing_at(&self, now: Instant) -> bool {
        let mut state = self.lock();
        match state.until {
            Some(until) if now < until => true,
            Some(_) => {
                state.until = None;
                false
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_hand_back_in_a_row_doubles_the_pause_up_to_the_cap_and_a_run_resets_it() {
        let d = Declines::default();
        let t0 = Instant::now();
        assert!(!d.pausing_at(t0));
        assert_eq!(d.declined_at(t0), FIRST_PAUSE);
        assert!(d.pausing_at(t0));
        assert!(!d.pausing_at(t0 + FIRST_PAUSE));
        assert_eq!(d.declined_at(t0), FIRST_PAUSE * 2);
        assert_eq!(d.declined_at(t0), FIRST_PAUSE * 4);
        for _ in 0..40 {
            d.declined_at(t0);
        }
        assert_eq!(d.declined_at(t0), MAX_PAUSE);
        assert!(d.pausing_at(t0 + MAX_PAUSE - Duration::from_millis(1)));
        assert!(!d.pausing_at(t0 + MAX_PAUSE));
        d.ran();
        assert_eq!(
            d.declined_at(t0),
            FIRST_PAUSE,
            "a task ran: back to the start"
        );
    }
}
