//! [`Tracker`]: follows one task's events for a wait or a stream and turns
//! every way a wait can end into a precise answer. At the local deadline it
//! asks Redis (whose clock decides) to end the task, and reports whether it
//! was still queued or running, and where.

use std::time::{Duration, Instant};

use redis::Value;

use crate::error::{Error, TimeoutPhase};
use crate::protocol::{
    split_status, value_to_i64, value_to_string, Outcome, ReplyEvent, TaskState,
};
use crate::queue::{Queue, Snapshot, Submitted, TaskOutput};
use crate::router::{Routed, Waiter};
use crate::scripts::scripts;

/// Follows one task.
pub(crate) struct Tracker {
    pub(crate) queue: Queue,
    pub(crate) id: String,
    waiter: Waiter,
    deadline: Option<Instant>,
    max_wait_until: Option<Instant>,
    started: Instant,
    known_final: Option<(u64, Outcome)>,
}

impl Tracker {
    pub(crate) fn new(
        queue: Queue,
        id: String,
        waiter: Waiter,
        deadline: Option<Instant>,
        max_wait_until: Option<Instant>,
    ) -> Self {
        Self {
            queue,
            id,
            waiter,
            deadline,
            max_wait_until,
            started: Instant::now(),
            known_final: None,
        }
    }

    pub(crate) fn note_submitted(&mut self, submitted: &Submitted) {
        if submitted.deadline_ms == 0 {
            self.deadline = None;
        }
    }

    pub(crate) fn note_snapshot(&mut self, snap: &Snapshot) {
        if let Some(outcome) = &snap.outcome {
            self.known_final = Some((snap.attempt, outcome.clone()));
        }
    }

    /// The next event of the task, or the error that ends the wait.
    pub(crate) async fn next_event(&mut self) -> Result<ReplyEvent, Error> {
        if let Some((attempt, outcome)) = self.known_final.take() {
            return Ok(ReplyEvent::Final {
                id: self.id.clone(),
                attempt,
                outcome,
            });
        }
        loop {
            let timer = match (self.deadline, self.max_wait_until) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let sleep = async {
                match timer {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                routed = self.waiter.rx.recv() => match routed {
                    Some(Routed::Event(event)) => return Ok(event),
                    Some(Routed::Disconnected(reason)) => {
                        return Err(Error::Disconnected {
                            url: self.queue.client.redacted_url().to_string(),
                            id: self.id.clone(),
                            reason,
                        })
                    }
                    None => return Err(Error::Protocol("the client was shut down".into())),
                },
                _ = sleep => {
                    let now = Instant::now();
                    if self.deadline.is_some_and(|d| d <= now) {
                        if let Some(err) = self.end_at_deadline().await? {
                            return Err(err);
                        }
                    } else if self.max_wait_until.is_some_and(|d| d <= now) {
                        return Err(self.wait_timed_out().await);
                    }
                }
            }
        }
    }

    /// Waits for the final event and converts it.
    pub(crate) async fn final_output(&mut self) -> Result<TaskOutput, Error> {
        loop {
            if let ReplyEvent::Final {
                attempt, outcome, ..
            } = self.next_event().await?
            {
                return outcome.into_result(&self.id).map(|result| TaskOutput {
                    id: self.id.clone(),
                    result,
                    attempt,
                });
            }
        }
    }

    /// Asks Redis to end the task at its deadline. Returns the error that
    /// ends the wait, or `None` to keep waiting (re-armed or already ended).
    async fn end_at_deadline(&mut self) -> Result<Option<Error>, Error> {
        let value: Value = scripts()
            .cancel
            .key(self.queue.keys.prefix())
            .arg(&self.id)
            .arg("deadline")
            .arg("deadline passed")
            .invoke_async(&mut self.queue.client.conn())
            .await?;
        let (status, items) = split_status(value)?;
        match status.as_str() {
            "OK" => {
                let prev = items.first().map(value_to_string).unwrap_or_default();
                let worker = items.get(1).map(value_to_string).unwrap_or_default();
                let phase = if prev == "queued" {
                    TimeoutPhase::Queued
                } else {
                    TimeoutPhase::Running { worker }
                };
                Ok(Some(Error::TimedOut {
                    id: self.id.clone(),
                    phase,
                }))
            }
            "NOT_DUE" => {
                let remaining = items.first().map(value_to_i64).unwrap_or(-1);
                self.deadline = (remaining >= 0)
                    .then(|| Instant::now() + Duration::from_millis(remaining as u64 + 1));
                Ok(None)
            }
            "FINISHED" => {
                // The final event is already on its way through the stream.
                self.deadline = None;
                Ok(None)
            }
            "NOT_FOUND" => Err(self.queue.not_found(&self.id)),
            other => Err(Error::Protocol(format!("cancel returned {other}"))),
        }
    }

    async fn wait_timed_out(&mut self) -> Error {
        let waited_ms = self.started.elapsed().as_millis() as u64;
        match self.queue.status(&self.id).await {
            Ok(info) if info.state.is_terminal() => {
                // Ended just now: report the real outcome instead.
                match info.outcome.map(|o| o.into_result(&self.id)) {
                    Some(Err(e)) => e,
                    _ => Error::WaitTimedOut {
                        id: self.id.clone(),
                        waited_ms,
                        state: TaskState::Done.to_string(),
                        worker: None,
                    },
                }
            }
            Ok(info) => Error::WaitTimedOut {
                id: self.id.clone(),
                waited_ms,
                state: info.state.to_string(),
                worker: Some(info.worker)
                    .filter(|w| !w.is_empty() && info.state == TaskState::Running),
            },
            Err(e) => e,
        }
    }
}
