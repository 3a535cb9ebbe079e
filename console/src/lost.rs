//! "Redis lost its data" versus "no data yet": after Redis restarts empty
//! (no persistence) or is flushed, the queue list is empty or short
//! although queues were listed a moment ago. The console says so instead
//! of drawing an empty list as if nothing existed.

use rtq_core::admin::ServerState;

/// A loss being reported.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Loss {
    /// Queues listed just before.
    before: u64,
    /// The message, without the current count.
    message: String,
}

/// Watches the server's run id and the number of registered queues from
/// one refresh to the next.
#[derive(Clone, Debug, Default)]
pub struct ServerWatch {
    /// The run id last seen (`None` until read, or when `INFO` is refused).
    run_id: Option<String>,
    /// Queues registered at the last refresh.
    last: Option<u64>,
    /// The loss being reported, until the queues are back.
    loss: Option<Loss>,
}

impl ServerWatch {
    /// Takes one refresh's [`ServerState`] (at local time `at`); returns
    /// the message to show while queues are missing after a restart or a
    /// flush, `None` otherwise.
    pub fn observe(&mut self, state: &ServerState, at: &str) -> Option<String> {
        let restarted = match (&self.run_id, &state.run) {
            (Some(old), Some((new, _))) => old != new,
            _ => false,
        };
        if let Some((id, _)) = &state.run {
            self.run_id = Some(id.clone());
        }
        let before = self.last.unwrap_or(0);
        if self.loss.is_none() && state.queues < before {
            if restarted {
                let uptime = state.run.as_ref().map_or(0, |(_, u)| *u);
                self.loss = Some(Loss {
                    before,
                    message: format!(
                        "Redis lost its data: restarted at {at} (up {uptime} s), \
                         {before} queues listed before"
                    ),
                });
            } else if state.queues == 0 {
                self.loss = Some(Loss {
                    before,
                    message: format!(
                        "Redis lost its data (or every queue was deleted): registry \
                         emptied at {at}, {before} queues listed before"
                    ),
                });
            }
        }
        if self.loss.as_ref().is_some_and(|l| state.queues >= l.before) {
            self.loss = None;
        }
        if self.loss.is_none() {
            self.last = Some(state.queues);
        }
        self.loss.as_ref().map(|l| {
            // Live workers list their queue again at their next heartbeat
            // (it hears GONE and registers again): the count climbs back.
            // A client with open waits lists its queue again when its
            // reader finds its reply stream gone (within a second).
            format!("{}; {} now", l.message, state.queues)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(run: Option<&str>, queues: u64) -> ServerState {
        ServerState {
            run: run.map(|r| (r.to_string(), 5)),
            queues,
        }
    }

    #[test]
    fn a_restart_that_lost_queues_is_reported_until_they_are_back() {
        let mut w = ServerWatch::default();
        assert_eq!(w.observe(&state(Some("a"), 0), "t0"), None, "nothing yet");
        assert_eq!(w.observe(&state(Some("a"), 3), "t1"), None);
        // A queue deleted on the same server is no loss.
        assert_eq!(w.observe(&state(Some("a"), 2), "t2"), None);
        let msg = w.observe(&state(Some("b"), 0), "t3").expect("a loss");
        assert!(
            msg.contains("Redis lost its data: restarted at t3 (up 5 s)"),
            "{msg}"
        );
        assert!(msg.contains("2 queues listed before; 0 now"), "{msg}");
        let msg = w.observe(&state(Some("b"), 1), "t4").expect("still short");
        assert!(msg.contains("1 now") && msg.contains("at t3"), "{msg}");
        assert_eq!(w.observe(&state(Some("b"), 2), "t5"), None, "back");
        // A restart that kept its data (persistence) is no loss.
        assert_eq!(w.observe(&state(Some("c"), 2), "t6"), None);
    }

    #[test]
    fn without_info_an_emptied_registry_is_still_reported() {
        let mut w = ServerWatch::default();
        assert_eq!(w.observe(&state(None, 4), "t0"), None);
        let msg = w.observe(&state(None, 0), "t1").expect("a loss");
        assert!(
            msg.contains("emptied at t1, 4 queues listed before"),
            "{msg}"
        );
        assert_eq!(w.observe(&state(None, 4), "t2"), None);
    }
}
