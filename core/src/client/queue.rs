//! [`Queue`]: the client's handle on one queue - submit, wait, stream,
//! fetch later, cancel.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::functions::cancel::{Cancel, CancelMode, CancelReply};
use crate::functions::submit::{Submit, SubmitReply};
use crate::functions::watch::{refuses_held, Held, Read, ResumeRead, Resumed, TaskSnapshot};
use crate::functions::{self, Function};
use crate::keys::{validate_id, QueueKeys};
use crate::protocol::{ReplyEvent, TaskState, MAX_ATTEMPT_NUMBER, MAX_OUTPUT_CHUNKS};

use super::batcher::{Batched, OwnedSubmit};
use super::info::TaskInfo;
use super::request::TaskRequest;
use super::router::ReplyRouter;
use super::stream::{abandoned_reason, Start, StreamEvent, TaskStream};
use super::stream_mode::{is_other_mode, Mode};
use super::tracker::{cancel_for_departed_caller, Tracker};
use super::Client;

/// Tries of one submit (the first included) when Redis does not answer.
pub(super) const SUBMIT_TRIES: u32 = 3;
/// First and longest delay between retries of a task read.
const READ_RETRY_MIN: Duration = Duration::from_millis(50);
const READ_RETRY_MAX: Duration = Duration::from_secs(2);

/// A task accepted by Redis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submitted {
    /// Task id (generated unless the request set one).
    pub id: String,
    /// `Running` if an idle worker took it in the same step, else `Queued`
    /// (or, for a submit that attached to an existing task, its state).
    pub state: TaskState,
    /// The worker it was handed to, if any.
    pub worker: Option<String>,
    /// Deadline on the Redis clock (ms), 0 = none.
    pub deadline_ms: i64,
    /// Submit time on the Redis clock (ms).
    pub submitted_ms: i64,
}

/// The final result of a task.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskOutput {
    /// Task id.
    pub id: String,
    /// The handler's JSON result.
    pub result: serde_json::Value,
    /// The attempt that produced it.
    pub attempt: u64,
}

impl TaskOutput {
    /// The output of task `id` that ended with `outcome` in `attempt`, or
    /// the error that says why there is none.
    pub(crate) fn from_outcome(
        id: &str,
        attempt: u64,
        outcome: crate::protocol::Outcome,
    ) -> Result<Self, Error> {
        outcome.into_result(id).map(|result| TaskOutput {
            id: id.to_string(),
            result,
            attempt,
        })
    }
}

/// How a submit ended: created, or found existing.
pub(super) enum Placed {
    Created(Submitted),
    Existing {
        submitted: Submitted,
        reply: String,
    },
    /// A `DUPLICATE` answered a retry after a lost reply: the first try's
    /// own task, unless the id was explicit and named a task that existed
    /// before it (then it is somebody else's).
    Retried {
        submitted: Submitted,
        reply: String,
    },
}

/// How long a wait on one more queue waits for a reply router to come free
/// before [`Error::TooManyQueues`].
const ROUTER_PATIENCE: Duration = Duration::from_secs(1);

/// Cancels (in the background) the task of a `run`/`stream` with
/// `cancel_on_drop` whose future is dropped before its tracker exists.
struct CancelIfDropped<'a> {
    queue: &'a Queue,
    id: &'a str,
    armed: bool,
}

impl Drop for CancelIfDropped<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let queue = self.queue.clone();
        let id = self.id.to_string();
        runtime.spawn(async move { cancel_for_departed_caller(&queue, &id).await });
    }
}

/// A handle on one queue. Cheap to clone.
#[derive(Clone)]
pub struct Queue {
    pub(crate) client: Client,
    pub(crate) keys: QueueKeys,
}

impl Queue {
    pub(crate) fn new(client: Client, keys: QueueKeys) -> Self {
        Self { client, keys }
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        self.keys.name()
    }

    /// The queue's key builder.
    pub fn keys(&self) -> &QueueKeys {
        &self.keys
    }

    /// The queue's reply router. At the client's cap of open routers, it
    /// waits [`ROUTER_PATIENCE`] for one to come free before refusing: a
    /// wait that just ended may hold its router one round trip longer
    /// (removing its subscription).
    pub(crate) async fn router(&self) -> Result<Arc<ReplyRouter>, Error> {
        let stream_queue = self.is_stream().await?;
        let router = self.router_of_any_mode().await?;
        if stream_queue {
            router.mark_stream_queue();
        }
        Ok(router)
    }

    async fn router_of_any_mode(&self) -> Result<Arc<ReplyRouter>, Error> {
        let give_up = Instant::now() + ROUTER_PATIENCE;
        let mut delay = Duration::from_millis(2);
        loop {
            match self.client.router(&self.keys) {
                Err(Error::TooManyQueues { .. }) if Instant::now() + delay < give_up => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(50));
                }
                other => return other,
            }
        }
    }

    /// Submits a task and returns at once (asynchronous use: fetch the
    /// result later with [`Queue::wait`] or [`Queue::follow`]). The id is
    /// fixed before the first try, so a submit retried after a lost reply
    /// never creates a second task.
    ///
    /// # Errors
    /// [`Error::QueueFull`], [`Error::Duplicate`] (the id exists already),
    /// [`Error::InvalidInput`], [`Error::PayloadTooLarge`],
    /// [`Error::InvalidName`], [`Error::OutOfMemory`] (nothing stored),
    /// [`Error::Uncertain`] (no answer: submit again with the same id), or a
    /// Redis error.
    pub async fn submit(&self, request: TaskRequest) -> Result<Submitted, Error> {
        let id = request.id_or_new()?;
        match self.place(&request, &id, "", false).await? {
            Placed::Created(s) | Placed::Retried { submitted: s, .. } => Ok(s),
            Placed::Existing { submitted, .. } => Err(Error::Duplicate {
                id,
                state: submitted.state,
            }),
        }
    }

    /// Submits a task and waits for its whole result (synchronous use).
    /// With an explicit id that exists already (a retried request with the
    /// same idempotency key), it waits for that task instead.
    ///
    /// # Errors
    /// Everything [`Queue::submit`] returns but `Duplicate`, and every
    /// reason the task can end without a result: [`Error::TimedOut`]
    /// (naming the phase), [`Error::Cancelled`], [`Error::Failed`],
    /// [`Error::WorkerLost`], [`Error::TaskLost`], [`Error::Disconnected`],
    /// [`Error::PermissionDenied`] (this user may not read its reply stream;
    /// once that is known, nothing is submitted).
    pub async fn run(&self, request: TaskRequest) -> Result<TaskOutput, Error> {
        let (mut tracker, _, _) = self.start(&request, false).await?;
        tracker.final_output().await
    }

    /// Submits a task and returns a stream of its chunks, ending with the
    /// final result or the reason there is none. With an explicit id that
    /// exists already, it follows that task from its first chunk.
    ///
    /// # Errors
    /// As [`Queue::submit`], and [`Error::PermissionDenied`] as for
    /// [`Queue::run`]; later failures arrive through the stream.
    pub async fn stream(&self, request: TaskRequest) -> Result<TaskStream, Error> {
        let (tracker, snap, created) = self.start(&request, true).await?;
        let start = match snap {
            Some(snap) => Start {
                attempt: snap.attempt,
                first: snap.first,
                chunks: snap.chunks,
                restarted: None,
            },
            None => Start {
                attempt: 0,
                first: 0,
                chunks: Vec::new(),
                restarted: None,
            },
        };
        let stream = TaskStream::new(tracker, start);
        Ok(stream.created_by_submit(created))
    }

    /// Registers a waiter, submits, and returns the tracker of the task
    /// (with a snapshot when it attached to another process's task) and
    /// whether this call created the task.
    async fn start(
        &self,
        request: &TaskRequest,
        stream: bool,
    ) -> Result<(Tracker, Option<TaskSnapshot>, bool), Error> {
        let id = request.id_or_new()?;
        // Until the tracker exists, a future dropped mid-submit (or
        // between a lost reply and its retry) cancels the task it may have
        // created; an error returned does not. Only with an id of its own
        // making: an explicit id may name another caller's task, which
        // this call must never cancel.
        let mut guard = CancelIfDropped {
            queue: self,
            id: &id,
            armed: request.cancel_on_drop && request.id.is_none(),
        };
        let started = self.start_tracking(request, &id, stream).await;
        guard.armed = false;
        let (mut tracker, snap, created) = started?;
        // Attached to a task that existed already (an idempotency key used
        // again, perhaps by someone else): leaving does not cancel it.
        tracker.cancel_on_drop(request.cancel_on_drop && created);
        Ok((tracker, snap, created))
    }

    async fn start_tracking(
        &self,
        request: &TaskRequest,
        id: &str,
        stream: bool,
    ) -> Result<(Tracker, Option<TaskSnapshot>, bool), Error> {
        let deadline = request.timeout.map(|t| Instant::now() + t);
        let router = self.router().await?;
        if let Some(reason) = router.refusal() {
            return Err(Error::PermissionDenied(reason));
        }
        let waiter = router.register(id);
        router.ready(&mut self.client.conn()).await;
        let placed = self.place(request, id, router.key(), stream).await?;
        let mut tracker = Tracker::new(self.clone(), id.to_string(), waiter, deadline, None);
        let (submitted, existing_reply) = match placed {
            Placed::Created(s) => (s, None),
            // A generated id: only the first try can have created it.
            Placed::Retried { submitted, .. } if request.id.is_none() => (submitted, None),
            Placed::Retried { submitted, reply } | Placed::Existing { submitted, reply } => {
                (submitted, Some(reply))
            }
        };
        if submitted.deadline_ms == 0 {
            tracker.without_deadline();
        }
        let Some(reply) = existing_reply else {
            return Ok((tracker, None, true));
        };
        if self.is_stream().await? {
            // A stream queue's events go to its submitter's reply stream
            // only: read the task, and poll another submitter's task.
            if reply == router.key() && !submitted.state.is_terminal() && !stream {
                return Ok((tracker, None, false));
            }
            let snap = self.read(id, 0).await?.ok_or_else(|| self.not_found(id))?;
            if reply != router.key() {
                tracker.poll_for_final();
            }
            tracker.note_snapshot(&snap);
            return Ok((tracker, Some(snap), false));
        }
        if reply != router.key() || submitted.state.is_terminal() || stream {
            // Another process's task, one that already ended, or one whose
            // submit may not have asked for chunk events (a run): read it
            // and subscribe to its events. (A stream subscribed to twice
            // gets each event once.)
            let snap = self
                .watch(&router, id, 0, None)
                .await?
                .into_snapshot()
                .ok_or_else(|| self.not_found(id))?;
            if !snap.state.is_terminal() {
                tracker.subscribed();
            }
            tracker.note_snapshot(&snap);
            return Ok((tracker, Some(snap), false));
        }
        Ok((tracker, None, false))
    }

    /// Waits for the result of a task submitted earlier (by any process).
    /// `max_wait` bounds the wait without affecting the task.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::WaitTimedOut`] (naming the task's state
    /// and worker), [`Error::PermissionDenied`] (this user may not read its
    /// reply stream), [`Error::TooManyQueues`] (only for a task that has
    /// not ended: an ended one's outcome is read without a reader), or any
    /// reason the task ended without a result.
    pub async fn wait(&self, id: &str, max_wait: Option<Duration>) -> Result<TaskOutput, Error> {
        match self
            .follow_inner(id, MAX_OUTPUT_CHUNKS, None, max_wait)
            .await
        {
            Ok((mut tracker, _)) => tracker.final_output().await,
            Err(refused @ Error::TooManyQueues { .. }) => {
                // A task that ended needs no reader: its outcome is stored.
                let Some(snap) = self.read(id, MAX_OUTPUT_CHUNKS).await? else {
                    return Err(self.not_found(id));
                };
                let Some(outcome) = snap.outcome else {
                    return Err(refused);
                };
                TaskOutput::from_outcome(id, snap.attempt, outcome)
            }
            Err(e) => Err(e),
        }
    }

    /// Streams a task submitted earlier (by any process) from chunk `from`
    /// (0 = the beginning) of its current attempt; chunks already written
    /// come first, then live ones, with none missing or repeated. If the
    /// current attempt was abandoned and the task waits to run again, a
    /// `from` above 0 (chunks of it held) gets [`StreamEvent::Restarted`]
    /// first; on a task never handed out, `from` counts chunks of the
    /// attempt that runs first. A caller that knows the attempt its chunks
    /// belong to resumes with [`Queue::follow_from`].
    ///
    /// A task that has ended is read without a reply reader: its stream is
    /// finite (stored chunks, then its outcome) and is served also when
    /// every reader of the client is in use.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::PermissionDenied`] (this user may not
    /// read its reply stream), [`Error::TooManyQueues`] (only for a task
    /// that has not ended), or a Redis error; later failures arrive
    /// through the stream.
    pub async fn follow(&self, id: &str, from: u64) -> Result<TaskStream, Error> {
        // From chunk 0 the caller holds nothing an abandoned attempt voids.
        let held = (from > 0).then_some(Held::Current);
        self.follow_at(id, from, held).await
    }

    /// Resumes following a task for a caller that holds chunks `0..index`
    /// of attempt `attempt` (an SSE client's last event id, say). One
    /// atomic step reads the task and subscribes to it: if the task still
    /// runs (or ended in) that attempt, the stream goes on from chunk
    /// `index`; if the attempt was abandoned since (the task ran again, or
    /// waits to), the stream starts with [`StreamEvent::Restarted`] naming
    /// `attempt` and the attempt that follows, then that attempt from
    /// chunk 0. Chunks of two attempts are never spliced together, however
    /// the task moves meanwhile. An ended task is served without a reply
    /// reader, as by [`Queue::follow`].
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the task never ran `attempt` (0, or
    /// beyond its current one), and what [`Queue::follow`] returns.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(queue: rtq_core::Queue) -> Result<(), rtq_core::Error> {
    /// use futures::StreamExt;
    /// use rtq_core::StreamEvent;
    /// // The caller saw chunks 0..=7 of attempt 1 before it went away.
    /// let mut stream = queue.follow_from("job-42", 1, 8).await?;
    /// while let Some(event) = stream.next().await {
    ///     match event? {
    ///         StreamEvent::Chunk(c) => println!("{}:{} {}", c.attempt, c.index, c.text()),
    ///         StreamEvent::Restarted { next_attempt, .. } => {
    ///             println!("discard what you hold; attempt {next_attempt} from chunk 0")
    ///         }
    ///         StreamEvent::Done(out) => println!("{}", out.result),
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn follow_from(
        &self,
        id: &str,
        attempt: u64,
        index: u64,
    ) -> Result<TaskStream, Error> {
        validate_id(id, "task id")?;
        if attempt == 0 || attempt > MAX_ATTEMPT_NUMBER {
            return Err(self.no_attempt(id, attempt, None));
        }
        self.follow_at(id, index, Some(Held::Attempt(attempt)))
            .await
    }

    async fn follow_at(
        &self,
        id: &str,
        from: u64,
        held: Option<Held>,
    ) -> Result<TaskStream, Error> {
        match self.follow_inner(id, from, held, None).await {
            Ok((tracker, start)) => Ok(TaskStream::new(tracker, start)),
            Err(refused @ Error::TooManyQueues { .. }) => {
                self.follow_ended(id, from, held, refused).await
            }
            Err(e) => Err(e),
        }
    }

    /// At the reader cap: the finite stream of a task that has ended (its
    /// chunks and outcome are stored), else `refused`.
    async fn follow_ended(
        &self,
        id: &str,
        from: u64,
        held: Option<Held>,
        refused: Error,
    ) -> Result<TaskStream, Error> {
        self.read_ended(id, from, held).await?.ok_or(refused)
    }

    /// If task `id` has ended, its finite stream (as [`Queue::follow`] from
    /// chunk `from`, or with `attempt`, as [`Queue::follow_from`]), read
    /// without a reply reader and without subscribing: a caller that must
    /// not open a reader for a task with nothing left to wait for (the
    /// gateway counts each key's readers) tries this first. `None` while
    /// the task has not ended (follow it then).
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::InvalidInput`] for an attempt the task
    /// never ran, or a Redis error.
    pub async fn follow_if_ended(
        &self,
        id: &str,
        from: u64,
        attempt: Option<u64>,
    ) -> Result<Option<TaskStream>, Error> {
        validate_id(id, "task id")?;
        let held = match attempt {
            Some(a) if a == 0 || a > MAX_ATTEMPT_NUMBER => return Err(self.no_attempt(id, a, None)),
            Some(a) => Some(Held::Attempt(a)),
            None => (from > 0).then_some(Held::Current),
        };
        self.read_ended(id, from, held).await
    }

    /// The finite stream of a task that has ended, read without a reader;
    /// `None` while it has not.
    async fn read_ended(
        &self,
        id: &str,
        from: u64,
        held: Option<Held>,
    ) -> Result<Option<TaskStream>, Error> {
        let from = from.min(MAX_OUTPUT_CHUNKS);
        let resumed = self.read_at(id, from, held).await?;
        let (snap, start) = self.start_of(id, held, resumed)?;
        let Some(outcome) = snap.outcome else {
            return Ok(None);
        };
        let last = ReplyEvent::Final {
            id: id.to_string(),
            attempt: snap.attempt,
            chunks: snap.chunk_count,
            outcome,
        };
        Ok(Some(TaskStream::ended(
            self.clone(),
            id.to_string(),
            last,
            start,
        )))
    }

    async fn follow_inner(
        &self,
        id: &str,
        from: u64,
        held: Option<Held>,
        max_wait: Option<Duration>,
    ) -> Result<(Tracker, Start), Error> {
        validate_id(id, "task id")?;
        let from = from.min(MAX_OUTPUT_CHUNKS);
        let router = self.router().await?;
        if let Some(reason) = router.refusal() {
            return Err(Error::PermissionDenied(reason));
        }
        let waiter = router.register(id);
        router.ready(&mut self.client.conn()).await;
        let stream_queue = self.is_stream().await?;
        let resumed = if stream_queue {
            // No subscription on a stream queue: its events go to the
            // submitter only; the tracker polls for the ending.
            self.read_at(id, from, held).await?
        } else {
            self.watch(&router, id, from, held).await?
        };
        let (snap, start) = self.start_of(id, held, resumed)?;
        // A stream queue's task is ended at its deadline by whoever waits
        // (v2's waits have the router's housekeeping for that).
        let deadline = if stream_queue && !snap.state.is_terminal() {
            self.stream_deadline(id).await?
        } else {
            None
        };
        let mut tracker = Tracker::new(
            self.clone(),
            id.to_string(),
            waiter,
            deadline,
            max_wait.map(|d| Instant::now() + d),
        );
        if stream_queue {
            tracker.poll_for_final();
        } else if !snap.state.is_terminal() {
            tracker.subscribed();
        }
        tracker.note_snapshot(&snap);
        Ok((tracker, start))
    }

    /// Splits what a watch or read answered into the task's state (its
    /// chunks taken out) and where its stream starts.
    fn start_of(
        &self,
        id: &str,
        held: Option<Held>,
        resumed: Resumed,
    ) -> Result<(TaskSnapshot, Start), Error> {
        match resumed {
            Resumed::NotFound => Err(self.not_found(id)),
            Resumed::NoAttempt { attempt } => match held {
                Some(Held::Attempt(asked)) => Err(self.no_attempt(id, asked, Some(attempt))),
                _ => Err(Error::Protocol(format!(
                    "the read of task {id} answered NO_ATTEMPT without an attempt asked"
                ))),
            },
            Resumed::Same(mut snap) => {
                // The held attempt, which may be the one a queued task
                // runs next (the snapshot's is then the one before).
                let attempt = match held {
                    Some(Held::Attempt(n)) => n.max(snap.attempt),
                    _ => snap.attempt,
                };
                let start = Start {
                    attempt,
                    first: snap.first,
                    chunks: std::mem::take(&mut snap.chunks),
                    restarted: None,
                };
                Ok((snap, start))
            }
            Resumed::Restarted {
                abandoned,
                next,
                reason,
                mut snapshot,
            } => {
                let start = Start {
                    attempt: next,
                    first: snapshot.first,
                    chunks: std::mem::take(&mut snapshot.chunks),
                    restarted: Some(StreamEvent::Restarted {
                        attempt: abandoned,
                        next_attempt: next,
                        reason: reason.unwrap_or_else(|| abandoned_reason(abandoned)),
                    }),
                };
                Ok((snapshot, start))
            }
        }
    }

    /// The error for a resume from an attempt task `id` never ran (it is
    /// at `current`, when known).
    fn no_attempt(&self, id: &str, attempt: u64, current: Option<u64>) -> Error {
        let at = match current {
            Some(0) => " (it has not run yet)".to_string(),
            Some(n) => format!(" (it is at attempt {n})"),
            None => String::new(),
        };
        Error::InvalidInput(format!(
            "task {id} on queue {} never ran attempt {attempt}{at}: resume from an attempt whose chunks you received",
            self.name()
        ))
    }

    /// Reads state and chunks from `from`, subscribing the router's stream
    /// to later events in the same atomic step (counted by the router);
    /// with `held`, `from` counts chunks of that attempt (see
    /// [`Resumed`]).
    async fn watch(
        &self,
        router: &ReplyRouter,
        id: &str,
        from: u64,
        held: Option<Held>,
    ) -> Result<Resumed, Error> {
        // Retried like `read`: a wait that starts while the connection is
        // cut (Redis restarting, a failover) must end with what happened
        // to the task, not with "broken pipe". Subscribing twice is
        // harmless (a set member; the router counts successes only).
        let give_up = Instant::now() + self.client.inner.config.give_up_after;
        let mut delay = READ_RETRY_MIN;
        loop {
            match router
                .watch(&mut self.client.conn(), &self.keys, id, from, held)
                .await
            {
                Err(e) if e.is_connection_lost() && Instant::now() + delay < give_up => {
                    tracing::debug!(task_id = %id, error = %e, retry_in_ms = delay.as_millis() as u64, "subscribing to the task failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(READ_RETRY_MAX);
                }
                other => return other,
            }
        }
    }

    /// Reads state and one page of chunks from `from` without subscribing.
    /// Waits read the truth here (an outcome whose event was lost, chunks
    /// whose events were trimmed), so errors that may pass (a cut
    /// connection, `LOADING`) are retried, backing off, for up to the
    /// client's `give_up_after`.
    pub(crate) async fn read(&self, id: &str, from: u64) -> Result<Option<TaskSnapshot>, Error> {
        if self.is_stream().await? {
            let snap = self.read_stream_retrying(id, from).await?;
            // No marker: the queue may have been made again as a v2 queue
            // since its mode was read (a plain read cannot be refused for
            // it): read the mode again, once.
            if snap.is_some() {
                return Ok(snap);
            }
            self.forget_mode();
            if self.is_stream().await? {
                return Ok(None);
            }
        }
        self.read_retrying(id, &Read { id, from }).await
    }

    /// [`Queue::read_stream`], retried as [`Queue::read`] says.
    async fn read_stream_retrying(
        &self,
        id: &str,
        from: u64,
    ) -> Result<Option<TaskSnapshot>, Error> {
        let give_up = Instant::now() + self.client.inner.config.give_up_after;
        let mut delay = READ_RETRY_MIN;
        loop {
            match self.read_stream(id, from).await {
                Err(e) if e.is_retryable() && Instant::now() + delay < give_up => {
                    tracing::debug!(task_id = %id, error = %e, retry_in_ms = delay.as_millis() as u64, "reading the task failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(READ_RETRY_MAX);
                }
                other => return other,
            }
        }
    }

    /// As [`Queue::read`], with `from` counting chunks of `held` (see
    /// [`Resumed`]); none: of whatever attempt the task is at.
    async fn read_at(&self, id: &str, from: u64, held: Option<Held>) -> Result<Resumed, Error> {
        let Some(held) = held else {
            return Ok(self
                .read(id, from)
                .await?
                .map_or(Resumed::NotFound, Resumed::Same));
        };
        if self.is_stream().await? {
            return Ok(Resumed::classify(held, from, self.read(id, 0).await?));
        }
        match self.read_retrying(id, &ResumeRead { id, from, held }).await {
            Err(e) if refuses_held(&e) => {
                super::router::warn_old_library();
                Ok(Resumed::classify(held, from, self.read(id, 0).await?))
            }
            other => other,
        }
    }

    /// Calls a read, retrying as [`Queue::read`] says.
    async fn read_retrying<F: Function>(&self, id: &str, read: &F) -> Result<F::Reply, Error> {
        let give_up = Instant::now() + self.client.inner.config.give_up_after;
        let mut delay = READ_RETRY_MIN;
        loop {
            match functions::call(&mut self.client.conn(), &self.keys, read).await {
                Err(e) if e.is_retryable() && Instant::now() + delay < give_up => {
                    tracing::debug!(task_id = %id, error = %e, retry_in_ms = delay.as_millis() as u64, "reading the task failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(READ_RETRY_MAX);
                }
                other => return other,
            }
        }
    }

    /// Everything stored about a task.
    ///
    /// # Errors
    /// [`Error::NotFound`] or a Redis error.
    pub async fn status(&self, id: &str) -> Result<TaskInfo, Error> {
        validate_id(id, "task id")?;
        // A queue Redis says is of the other kind (made again as the other
        // kind) has its mode read again, once, as a submit does.
        match self.status_in_mode(id).await {
            Err(e) if is_other_mode(&e) => {
                self.forget_mode();
                self.status_in_mode(id).await
            }
            other => other,
        }
    }

    async fn status_in_mode(&self, id: &str) -> Result<TaskInfo, Error> {
        if self.is_stream().await? {
            return self.status_stream(id).await;
        }
        let hash: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys.task(id))
            .query_async(&mut self.client.conn())
            .await?;
        if hash.is_empty() {
            return Err(self.not_found(id));
        }
        TaskInfo::from_hash(id, &hash)
    }

    /// Cancels a task: a queued one is removed, a running one's handler is
    /// told to stop; followers get [`Error::Cancelled`]. Returns the state
    /// the task was in (a task that already ended is left as it is and its
    /// final state returned).
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::InvalidInput`] for a reason over 4 KiB.
    pub async fn cancel(&self, id: &str, reason: &str) -> Result<TaskState, Error> {
        validate_id(id, "task id")?;
        match self.cancel_in_mode(id, reason).await {
            Err(e) if is_other_mode(&e) => {
                self.forget_mode();
                self.cancel_in_mode(id, reason).await
            }
            other => other,
        }
    }

    async fn cancel_in_mode(&self, id: &str, reason: &str) -> Result<TaskState, Error> {
        if self.is_stream().await? {
            return self.cancel_stream(id, reason).await;
        }
        let cancel = Cancel {
            id,
            mode: CancelMode::Cancel,
            reason,
        };
        match functions::call(&mut self.client.conn(), &self.keys, &cancel).await? {
            CancelReply::Ended { previous, .. } => Ok(previous),
            CancelReply::Finished(state) => Ok(state),
            CancelReply::NotFound => Err(self.not_found(id)),
            CancelReply::NotDue(_) => Err(Error::Protocol(
                "rtq2_cancel answered NOT_DUE to a cancel".into(),
            )),
        }
    }

    pub(crate) fn not_found(&self, id: &str) -> Error {
        Error::NotFound {
            queue: self.name().to_string(),
            id: id.to_string(),
        }
    }

    /// Creates the task (or finds it), retrying when Redis does not answer.
    /// A DUPLICATE on a retry is the first try's own task.
    /// One submit call; a durable request also waits for a replica.
    async fn call_submit(
        &self,
        submit: &Submit<'_>,
        request: &TaskRequest,
    ) -> Result<SubmitReply, Error> {
        let Some(wait) = request.durable else {
            return functions::call(&mut self.client.conn(), &self.keys, submit).await;
        };
        let (reply, acked) =
            crate::durable::call_replicated(&mut self.client.conn(), &self.keys, submit, wait)
                .await?;
        if acked == 0 && matches!(reply, SubmitReply::Accepted { .. }) {
            return Err(Error::NotReplicated {
                queue: self.name().to_string(),
                id: submit.id.to_string(),
                waited_ms: wait.as_millis() as u64,
            });
        }
        Ok(reply)
    }

    /// Creates the task (or finds it) in the queue's protocol; a queue
    /// Redis says is of the other kind (made again as the other kind) has
    /// its mode read again, once.
    async fn place(
        &self,
        request: &TaskRequest,
        id: &str,
        reply: &str,
        stream: bool,
    ) -> Result<Placed, Error> {
        match self.place_in_mode(request, id, reply, stream).await {
            Err(e) if is_other_mode(&e) => {
                let before = self.forget_mode();
                self.restore_stream_queue(before).await?;
                self.place_in_mode(request, id, reply, stream).await
            }
            other => other,
        }
    }

    async fn place_in_mode(
        &self,
        request: &TaskRequest,
        id: &str,
        reply: &str,
        stream: bool,
    ) -> Result<Placed, Error> {
        match self.mode().await? {
            Mode::Stream { bands } => self.place_stream(request, id, reply, bands).await,
            Mode::Exact => self.place_exact(request, id, reply, stream).await,
        }
    }

    async fn place_exact(
        &self,
        request: &TaskRequest,
        id: &str,
        reply: &str,
        stream: bool,
    ) -> Result<Placed, Error> {
        let config = &self.client.inner.config;
        let signer = config
            .signing_key
            .as_deref()
            .map(|key| (key, self.keys.name()));
        let spec = request.encode_signed(id, config.max_inline_bytes, signer)?;
        let owned = OwnedSubmit {
            id: id.to_string(),
            spec,
            priority: request.priority,
            timeout_ms: request.timeout.map_or(0, |t| t.as_millis().max(1) as u64),
            max_attempts: request.max_attempts,
            retention_ms: request.retention.as_millis() as u64,
            reply: reply.to_string(),
            stream,
        };
        let submit = owned.as_submit();
        let mut last_error = None;
        // The first try goes through the queue's batcher (coalesced with
        // concurrent submits); retries and refused batches go alone.
        // (A durable submit waits for a replica after its own call.)
        let mut batched = config.coalesce_submits && request.durable.is_none();
        for attempt in 0..SUBMIT_TRIES {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 * 4u64.pow(attempt - 1))).await;
            }
            let answer = if std::mem::take(&mut batched) {
                match self.client.batcher(&self.keys).submit(owned.clone()).await {
                    Batched::Replied(reply) => Ok(reply),
                    Batched::Uncertain(e) => {
                        tracing::warn!(task_id = %id, error = %e, "submit got no answer; retrying with the same id");
                        last_error = Some(e);
                        continue;
                    }
                    Batched::Refused => self.call_submit(&submit, request).await,
                }
            } else {
                self.call_submit(&submit, request).await
            };
            match answer {
                Ok(SubmitReply::Accepted {
                    state,
                    worker,
                    deadline_ms,
                    now_ms,
                }) => {
                    return Ok(Placed::Created(Submitted {
                        id: id.to_string(),
                        state,
                        worker,
                        deadline_ms,
                        submitted_ms: now_ms,
                    }))
                }
                Ok(SubmitReply::QueueFull { depth, max_depth }) => {
                    return Err(Error::QueueFull {
                        queue: self.name().to_string(),
                        depth,
                        max_depth,
                    })
                }
                Ok(SubmitReply::Duplicate {
                    state,
                    worker,
                    deadline_ms,
                    submitted_ms,
                    reply: existing_reply,
                }) => {
                    let submitted = Submitted {
                        id: id.to_string(),
                        state,
                        worker,
                        deadline_ms,
                        submitted_ms,
                    };
                    if last_error.is_some() {
                        // Most likely our own first try, whose reply was lost.
                        return Ok(Placed::Retried {
                            submitted,
                            reply: existing_reply,
                        });
                    }
                    return Ok(Placed::Existing {
                        submitted,
                        reply: existing_reply,
                    });
                }
                Err(e) if e.is_retryable() && !matches!(e, Error::OutOfMemory(_)) => {
                    tracing::warn!(task_id = %id, error = %e, "submit got no answer; retrying with the same id");
                    last_error = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Uncertain {
            id: id.to_string(),
            reason: last_error.map(|e| e.to_string()).unwrap_or_default(),
        })
    }
}
