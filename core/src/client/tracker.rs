//! [`Tracker`]: follows one task's events for a wait or a stream and turns
//! every way a wait can end into a precise answer read from Redis: the
//! task's outcome, or an error naming the real cause. At the local
//! deadline it asks Redis (whose clock decides) to end the task and reports
//! where it was; a task that ended meanwhile is read, never waited for.

use std::time::{Duration, Instant};

use crate::error::{Error, TimeoutPhase};
use crate::functions::cancel::{Cancel, CancelMode, CancelReply};
use crate::functions::watch::TaskSnapshot;
use crate::functions::{self, v3};
use crate::protocol::{ReplyEvent, TaskState, MAX_OUTPUT_CHUNKS};

use super::queue::{Queue, TaskOutput};
use super::router::{Routed, Waiter};

/// How long to wait before asking again after a failed deadline call.
const DEADLINE_RETRY: Duration = Duration::from_millis(500);
/// First and longest interval between reads of a polled task (a stream
/// queue's task submitted by another process: its events do not come
/// here).
const POLL_MIN: Duration = Duration::from_millis(20);
const POLL_MAX: Duration = Duration::from_secs(1);

/// Follows one task.
pub(crate) struct Tracker {
    pub(crate) queue: Queue,
    pub(crate) id: String,
    waiter: Waiter,
    deadline: Option<Instant>,
    max_wait_until: Option<Instant>,
    started: Instant,
    known_final: Option<ReplyEvent>,
    /// This tracker holds one of the router's counted subscriptions
    /// (`rtq2_watch`), released on drop.
    subscribed: bool,
    /// Cancel the task if this tracker is dropped before it ends.
    cancel_on_drop: bool,
    /// The wait ended (with the final event or an error).
    ended: bool,
    /// The task ended: its final event was delivered.
    finished: bool,
    /// Reads the task from time to time: its events do not come to this
    /// client.
    poll: Option<Poll>,
}

/// How a tracker whose task's events do not come to it reads the task.
#[derive(Clone, Copy, Debug)]
struct Poll {
    /// The next read.
    at: Instant,
    /// The interval, doubling up to [`POLL_MAX`] while nothing changes,
    /// back to [`POLL_MIN`] when chunks came.
    every: Duration,
    /// A stream's position: the attempt it is at (0: whichever runs first)
    /// and the next chunk it needs; `None` for a wait (no chunks read).
    chunks: Option<(u64, u64)>,
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
            subscribed: false,
            cancel_on_drop: false,
            ended: false,
            finished: false,
            poll: None,
        }
    }

    /// The task's events do not come to this client (a stream queue's
    /// task submitted by another): read it for its ending from time to
    /// time.
    pub(crate) fn poll_for_final(&mut self) {
        self.poll = Some(Poll {
            at: Instant::now() + POLL_MIN,
            every: POLL_MIN,
            chunks: None,
        });
    }

    /// A polled tracker that feeds a stream: its reads also take the
    /// chunks from `next` of `attempt` on, as chunk events.
    pub(crate) fn poll_chunks_from(&mut self, attempt: u64, next: u64) {
        if let Some(poll) = &mut self.poll {
            poll.chunks = Some((attempt, next));
        }
    }

    /// One read of a polled task: its final event, chunks a stream has not
    /// seen, or nothing new (`None`).
    async fn poll_once(&mut self, now: Instant) -> Result<Option<ReplyEvent>, Error> {
        let Some(mut poll) = self.poll else {
            return Ok(None);
        };
        poll.every = (poll.every * 2).min(POLL_MAX);
        let from = poll.chunks.map_or(MAX_OUTPUT_CHUNKS, |(_, next)| next);
        let snap = self.queue.read(&self.id, from).await?;
        let Some(snap) = snap else {
            return Err(self.lost("Redis no longer has it although it never ended: Redis lost its data (a restart without persistence, a failover) or evicted the key"));
        };
        let mut event = None;
        if let Some(outcome) = snap.outcome {
            event = Some(ReplyEvent::Final {
                id: self.id.clone(),
                attempt: snap.attempt,
                chunks: snap.chunk_count,
                outcome,
            });
        } else if let Some((attempt, next)) = poll.chunks {
            if snap.state == TaskState::Running && snap.attempt > attempt && attempt != 0 {
                // Another attempt runs: its chunks count from 0 (the read
                // was from the old position: read again at once).
                poll.chunks = Some((snap.attempt, 0));
                poll.every = POLL_MIN;
            } else if snap.state == TaskState::Running && !snap.chunks.is_empty() {
                let seq0 = snap.first;
                poll.chunks = Some((snap.attempt, seq0 + snap.chunks.len() as u64));
                poll.every = POLL_MIN;
                event = Some(ReplyEvent::Chunks {
                    id: self.id.clone(),
                    attempt: snap.attempt,
                    seq0,
                    chunks: snap.chunks,
                });
            } else if next > 0
                && snap.state == TaskState::Queued
                && snap.attempt >= attempt
                && attempt != 0
            {
                // The attempt it followed was abandoned.
                poll.chunks = Some((snap.attempt + 1, 0));
                event = Some(ReplyEvent::Requeued {
                    id: self.id.clone(),
                    attempt,
                    reason: String::new(),
                });
            }
        }
        poll.at = now + poll.every;
        self.poll = Some(poll);
        Ok(event)
    }

    /// The submit found no deadline on the task: no local timer.
    pub(crate) fn without_deadline(&mut self) {
        self.deadline = None;
    }

    pub(crate) fn cancel_on_drop(&mut self, on: bool) {
        self.cancel_on_drop = on;
    }

    /// The snapshot this tracker starts from was read with the router's
    /// `watch` and subscribed (the task had not ended).
    pub(crate) fn subscribed(&mut self) {
        self.subscribed = true;
    }

    /// Takes note of a snapshot read at subscription time.
    pub(crate) fn note_snapshot(&mut self, snap: &TaskSnapshot) {
        if let Some(outcome) = &snap.outcome {
            self.known_final = Some(ReplyEvent::Final {
                id: self.id.clone(),
                attempt: snap.attempt,
                chunks: snap.chunk_count,
                outcome: outcome.clone(),
            });
        }
    }

    /// Reads the task now: its final event if it ended, `None` if not.
    ///
    /// # Errors
    /// [`Error::TaskLost`] if it no longer exists; Redis errors.
    async fn read_final(&mut self) -> Result<Option<ReplyEvent>, Error> {
        // From past any output: the state only, no chunks.
        let snap = self.queue.read(&self.id, MAX_OUTPUT_CHUNKS).await?;
        match snap {
            None => Err(self.lost("Redis no longer has it although it never ended: Redis lost its data (a restart without persistence, a failover) or evicted the key")),
            Some(snap) => Ok(snap.outcome.map(|outcome| ReplyEvent::Final {
                id: self.id.clone(),
                attempt: snap.attempt,
                chunks: snap.chunk_count,
                outcome,
            })),
        }
    }

    fn lost(&self, reason: &str) -> Error {
        Error::TaskLost {
            id: self.id.clone(),
            reason: reason.to_string(),
        }
    }

    /// The next event of the task, or the error that ends the wait.
    pub(crate) async fn next_event(&mut self) -> Result<ReplyEvent, Error> {
        let event = self.next_event_inner().await;
        if matches!(event, Ok(ReplyEvent::Final { .. })) {
            self.finished = true;
        }
        if matches!(event, Ok(ReplyEvent::Final { .. }) | Err(_)) {
            self.ended = true;
        }
        event
    }

    async fn next_event_inner(&mut self) -> Result<ReplyEvent, Error> {
        if let Some(event) = self.known_final.take() {
            return Ok(event);
        }
        loop {
            let timer = [self.deadline, self.max_wait_until, self.poll.map(|p| p.at)]
                .into_iter()
                .flatten()
                .min();
            let sleep = async {
                match timer {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                routed = self.waiter.rx.recv() => match routed {
                    Some(Routed::Event(event)) => return Ok(event),
                    Some(Routed::Ended) => {
                        if let Some(event) = self.read_final().await? {
                            return Ok(event);
                        }
                    }
                    Some(Routed::Vanished(reason)) => {
                        // Re-read: a task requeued by an operator between
                        // the check and now is alive.
                        if let Some(event) = self.read_final().await.map_err(|_| self.lost(&reason))? {
                            return Ok(event);
                        }
                    }
                    Some(Routed::ReaderFailed { refused: true, reason }) => {
                        return Err(Error::PermissionDenied(reason));
                    }
                    Some(Routed::ReaderFailed { refused: false, reason }) => {
                        return Err(Error::Disconnected {
                            url: self.queue.client.redacted_url().to_string(),
                            id: self.id.clone(),
                            reason,
                        })
                    }
                    None => return Err(Error::Closed { id: self.id.clone() }),
                },
                _ = sleep => {
                    let now = Instant::now();
                    if self.deadline.is_some_and(|d| d <= now) {
                        if let Some(end) = self.end_at_deadline().await {
                            return end;
                        }
                    } else if self.max_wait_until.is_some_and(|d| d <= now) {
                        return self.wait_timed_out().await;
                    } else if self.poll.is_some_and(|p| p.at <= now) {
                        if let Some(event) = self.poll_once(now).await? {
                            return Ok(event);
                        }
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
                return TaskOutput::from_outcome(&self.id, attempt, outcome);
            }
        }
    }

    /// Asks Redis to end the task at its deadline. Returns how the wait
    /// ends, or `None` to keep waiting (the deadline is later by Redis
    /// time, or Redis could not be asked: retried shortly).
    async fn end_at_deadline(&mut self) -> Option<Result<ReplyEvent, Error>> {
        if self.queue.cached_stream() {
            return self.expire_at_deadline().await;
        }
        let cancel = Cancel {
            id: &self.id,
            mode: CancelMode::Deadline,
            reason: "deadline passed",
        };
        let reply = functions::call(&mut self.queue.client.conn(), &self.queue.keys, &cancel).await;
        match reply {
            Ok(CancelReply::Ended { previous, worker }) => {
                let phase = if previous == TaskState::Queued {
                    TimeoutPhase::Queued
                } else {
                    TimeoutPhase::Running {
                        worker: worker.unwrap_or_default(),
                    }
                };
                Some(Err(Error::TimedOut {
                    id: self.id.clone(),
                    phase,
                }))
            }
            Ok(CancelReply::NotDue(remaining)) => {
                self.deadline = remaining.map(|r| Instant::now() + r + Duration::from_millis(1));
                None
            }
            Ok(CancelReply::Finished(_)) => {
                // It ended just before: read how, instead of waiting for an
                // event that may never come.
                self.deadline = None;
                match self.read_final().await {
                    Ok(Some(event)) => Some(Ok(event)),
                    Ok(None) => None,
                    Err(e) => Some(Err(e)),
                }
            }
            Ok(CancelReply::NotFound) => Some(Err(self.lost(
                "Redis no longer has it at its deadline: Redis lost its data or evicted the key",
            ))),
            Err(e) => {
                tracing::warn!(task_id = %self.id, error = %e, "could not end the task at its deadline; retrying");
                self.deadline = Some(Instant::now() + DEADLINE_RETRY);
                None
            }
        }
    }

    /// [`Tracker::end_at_deadline`] on a stream queue (`rtq3_expire`).
    async fn expire_at_deadline(&mut self) -> Option<Result<ReplyEvent, Error>> {
        let reply = v3::expire(&mut self.queue.client.conn(), &self.queue.keys, &self.id).await;
        match reply {
            Ok(v3::Expired::Ok(worker)) => {
                let phase = match worker {
                    Some(worker) => TimeoutPhase::Running { worker },
                    None => TimeoutPhase::Queued,
                };
                Some(Err(Error::TimedOut {
                    id: self.id.clone(),
                    phase,
                }))
            }
            Ok(v3::Expired::NotDue(left)) => {
                self.deadline = Some(Instant::now() + left + Duration::from_millis(1));
                None
            }
            Ok(v3::Expired::NoDeadline) => {
                self.deadline = None;
                None
            }
            Ok(v3::Expired::Ended(_)) => {
                self.deadline = None;
                match self.read_final().await {
                    Ok(Some(event)) => Some(Ok(event)),
                    Ok(None) => None,
                    Err(e) => Some(Err(e)),
                }
            }
            Ok(v3::Expired::NotFound) => Some(Err(self.lost(
                "Redis no longer has it at its deadline: Redis lost its data or evicted the key",
            ))),
            Err(e) => {
                tracing::warn!(task_id = %self.id, error = %e, "could not end the task at its deadline; retrying");
                self.deadline = Some(Instant::now() + DEADLINE_RETRY);
                None
            }
        }
    }

    /// The caller's own wait limit passed: the task's outcome if it ended
    /// just now, else how it stands.
    async fn wait_timed_out(&mut self) -> Result<ReplyEvent, Error> {
        let waited_ms = self.started.elapsed().as_millis() as u64;
        if let Some(event) = self.read_final().await? {
            return Ok(event);
        }
        let info = self.queue.status(&self.id).await?;
        Err(Error::WaitTimedOut {
            id: self.id.clone(),
            waited_ms,
            state: info.state,
            worker: Some(info.worker).filter(|w| !w.is_empty() && info.state == TaskState::Running),
        })
    }
}

/// Cancels a task whose waiting caller went away (`cancel_on_drop`). A
/// task that does not exist (its submit never reached Redis) or already
/// ended is left alone by `rtq2_cancel`.
pub(crate) async fn cancel_for_departed_caller(queue: &Queue, id: &str) {
    const REASON: &str = "the waiting caller went away";
    let result = if queue.cached_stream() {
        v3::cancel(&mut queue.client.conn(), &queue.keys, id, REASON)
            .await
            .map(|_| ())
    } else {
        let c = Cancel {
            id,
            mode: CancelMode::Cancel,
            reason: REASON,
        };
        functions::call(&mut queue.client.conn(), &queue.keys, &c)
            .await
            .map(|_| ())
    };
    if let Err(e) = result {
        tracing::warn!(task_id = %id, error = %e, "could not cancel a dropped task");
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        let cancel = self.cancel_on_drop && !self.ended;
        // A subscription to an ended task needs no Redis call: release it
        // now, so the router is free (to be retired) the moment the wait
        // ends, not one spawned task later.
        if self.subscribed && self.finished && self.waiter.router().release_ended(&self.id) {
            self.subscribed = false;
        }
        if !self.subscribed && !cancel {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let queue = self.queue.clone();
        let mut conn = self.queue.client.conn();
        let keys = self.queue.keys.clone();
        let id = self.id.clone();
        let router = self.waiter.router().clone();
        let subscribed = self.subscribed;
        let finished = self.finished;
        runtime.spawn(async move {
            if cancel {
                cancel_for_departed_caller(&queue, &id).await;
            }
            if subscribed {
                // Other waits of this process may share the subscription:
                // the router removes it when the last one leaves.
                router.unwatch(&mut conn, &keys, &id, finished).await;
            }
        });
    }
}
