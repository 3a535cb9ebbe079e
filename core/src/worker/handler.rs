//! The [`Handler`] trait workers implement, and the [`TaskContext`] a
//! handler receives: the task, a chunk sink, and cancellation.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::budget::OutputBudget;
use crate::protocol::TaskSpec;

/// Runs tasks. One value serves every slot of a worker, concurrently.
///
/// When a task is cancelled, expires, or is reassigned,
/// [`TaskContext::cancelled`] fires at once; a handler should return
/// promptly (dropping an in-flight upstream request closes it, so the model
/// stops). A handler that does not is dropped after the worker's
/// `cancel_grace`.
///
/// # Examples
/// ```
/// use rtq_core::{async_trait, Handler, HandlerError, TaskContext};
/// struct Echo;
/// #[async_trait]
/// impl Handler for Echo {
///     async fn handle(&self, task: TaskContext) -> Result<serde_json::Value, HandlerError> {
///         for word in ["hello", " ", "world"] {
///             task.send(word).await?;
///         }
///         Ok(task.input().cloned().unwrap_or_default())
///     }
/// }
/// ```
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Runs one task; the returned JSON is its result.
    ///
    /// # Errors
    /// A [`HandlerError`]: retryable ones requeue the task while attempts
    /// remain, others fail it with the message as the reason, and
    /// [`HandlerError::not_started`] gives the task back unstarted without
    /// using an attempt.
    async fn handle(&self, task: TaskContext) -> Result<Value, HandlerError>;
}

/// Why a handler failed a task.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct HandlerError {
    /// The reason, shown to the client and in the console.
    pub message: String,
    /// True to requeue the task while it has attempts left.
    pub retryable: bool,
    /// True if the handler never started the task and gives it back (see
    /// [`HandlerError::not_started`]); `retryable` is then ignored.
    pub not_started: bool,
}

impl HandlerError {
    /// A failure that retrying will not fix (bad input, model refused).
    pub fn fatal(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
            not_started: false,
        }
    }

    /// A failure another attempt may not hit (upstream hiccup, OOM).
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
            not_started: false,
        }
    }

    /// "I never started this task; give it back unstarted": nothing of it
    /// reached the model (its upstream is unreachable, say), so the task
    /// goes back to the front of the queue *without using an attempt*
    /// (`rtq2_release`, mode `handback`, started `0`), for a worker that
    /// can run it. `reason` is logged and becomes the worker's
    /// `last_error`; the task's record names the hand-back.
    ///
    /// Handing back also pauses this worker's intake for a back-off that
    /// starts at 500 ms and doubles with every further hand-back in a row
    /// (up to 30 s; a task that runs resets it): Redis hands the task to
    /// another worker meanwhile, and a task every worker hands back (the
    /// model down on all nodes) moves between them at most once per
    /// worker per back-off, never at network speed. It keeps its deadline
    /// and expires as usual.
    ///
    /// Only for work that never started: a handler that had sent chunks
    /// is failed as retryable instead (the attempt is used), since its
    /// output was seen.
    pub fn not_started(reason: impl Into<String>) -> Self {
        Self {
            message: reason.into(),
            retryable: false,
            not_started: true,
        }
    }
}

impl From<Stopped> for HandlerError {
    fn from(stopped: Stopped) -> Self {
        HandlerError::fatal(format!("stopped: {}", stopped.reason))
    }
}

/// Why a running attempt must stop.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopReason {
    /// A client or an operator cancelled the task.
    Cancelled {
        /// The reason given with the cancel.
        reason: String,
    },
    /// The task's deadline passed.
    Deadline,
    /// An operator requeued the task; another attempt will run.
    Requeued,
    /// This attempt is no longer the task's current one: the worker lost
    /// its lease and the task was reassigned, or its delivery was swept.
    /// Not a failure of the handler: the task was already requeued.
    Reassigned,
    /// The task no longer exists in Redis.
    Gone,
    /// The worker is shutting down and hands the task back.
    Shutdown,
    /// The output passed a size limit; the task fails with this reason.
    OutputTooLarge {
        /// Which limit.
        reason: String,
    },
    /// Redis kept refusing this attempt's chunk writes with an error it
    /// will give again (a script or ACL refusal), or lost chunks it had
    /// acknowledged (a failover to a lagging replica): the attempt ends as
    /// a retryable failure, so another attempt writes the output whole.
    WriteRefused {
        /// Redis's error.
        reason: String,
    },
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cancelled { reason } => write!(f, "cancelled: {reason}"),
            Self::Deadline => f.write_str("deadline passed"),
            Self::Requeued => f.write_str("requeued by an operator"),
            Self::Reassigned => f.write_str("reassigned: this attempt is no longer current"),
            Self::Gone => f.write_str("the task no longer exists"),
            Self::Shutdown => f.write_str("the worker is shutting down"),
            Self::OutputTooLarge { reason } => write!(f, "output too large: {reason}"),
            Self::WriteRefused { reason } => write!(f, "output could not be written: {reason}"),
        }
    }
}

/// Returned by [`TaskContext::send`] once the task must stop.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("task stopped: {reason}")]
pub struct Stopped {
    /// Why.
    pub reason: StopReason,
}

/// Shared cancellation state of one running attempt: the first reason wins.
#[derive(Clone, Default)]
pub(crate) struct StopSignal {
    token: CancellationToken,
    reason: Arc<Mutex<Option<StopReason>>>,
}

impl StopSignal {
    pub(crate) fn stop(&self, reason: StopReason) {
        if let Ok(mut r) = self.reason.lock() {
            r.get_or_insert(reason);
        }
        self.token.cancel();
    }
    pub(crate) fn reason(&self) -> Option<StopReason> {
        self.reason.lock().ok().and_then(|r| r.clone())
    }
    pub(crate) fn token(&self) -> &CancellationToken {
        &self.token
    }
}

/// A task handed to a handler.
pub struct TaskContext {
    pub(crate) spec: TaskSpec,
    pub(crate) attempt: u64,
    pub(crate) deadline: Option<Instant>,
    pub(crate) stop: StopSignal,
    pub(crate) sink: mpsc::UnboundedSender<Vec<u8>>,
    pub(crate) budget: OutputBudget,
}

impl TaskContext {
    /// Task id.
    pub fn id(&self) -> &str {
        &self.spec.id
    }
    /// Attempt number (1 for the first hand-out).
    pub fn attempt(&self) -> u64 {
        self.attempt
    }
    /// Inline JSON input, if the task has one.
    pub fn input(&self) -> Option<&Value> {
        self.spec.input.as_ref()
    }
    /// Reference to input stored elsewhere, if the task has one.
    pub fn input_ref(&self) -> Option<&str> {
        self.spec.input_ref.as_deref()
    }
    /// The task's labels.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.spec.labels
    }
    /// The full spec.
    pub fn spec(&self) -> &TaskSpec {
        &self.spec
    }
    /// Local instant of the task's deadline, if any.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Queues a chunk of output. Waits for Redis only when this attempt's
    /// output not yet acknowledged passes its budget
    /// ([`WorkerConfig::max_buffered_output_bytes`](super::WorkerConfig::max_buffered_output_bytes),
    /// 4 MiB by default): chunks produced while a write is in flight are
    /// coalesced into the next write, and a handler that produces faster
    /// than Redis takes is slowed down instead of filling memory.
    ///
    /// # Errors
    /// [`Stopped`] once the task was cancelled, expired or reassigned; the
    /// handler should return (the `?` operator converts it).
    pub async fn send(&self, chunk: impl Into<Vec<u8>>) -> Result<(), Stopped> {
        if let Some(reason) = self.stop_reason() {
            return Err(Stopped { reason });
        }
        let chunk = chunk.into();
        tokio::select! {
            biased;
            _ = self.stop.token().cancelled() => {
                return Err(Stopped {
                    reason: self.stop.reason().unwrap_or(StopReason::Shutdown),
                });
            }
            _ = self.budget.spend(chunk.len()) => {}
        }
        self.sink.send(chunk).map_err(|_| Stopped {
            reason: self.stop.reason().unwrap_or(StopReason::Shutdown),
        })
    }

    /// True once the task must stop.
    pub fn is_cancelled(&self) -> bool {
        self.stop.token().is_cancelled()
    }

    /// Completes when the task must stop (cancel, deadline, reassignment,
    /// forced shutdown).
    pub async fn cancelled(&self) {
        self.stop.token().cancelled().await
    }

    /// Why the task must stop, once it must.
    pub fn stop_reason(&self) -> Option<StopReason> {
        if self.is_cancelled() {
            self.stop.reason()
        } else {
            None
        }
    }
}

/// What a handler's run came to (both runtimes, v2 slots and stream
/// attempts, decide an attempt's ending from it).
pub(crate) enum HandlerOutcome {
    /// It returned this result.
    Result(Value),
    /// It failed.
    Failed {
        /// Why.
        message: String,
        /// Another attempt may succeed.
        retryable: bool,
    },
    /// The handler never started the task and gives it back
    /// ([`HandlerError::not_started`]).
    NotStarted(String),
    /// It was stopped.
    Stopped(StopReason),
}

impl HandlerOutcome {
    /// The outcome of a handler's future that finished (`Err`: it
    /// panicked). An error after a stop is the stop, never a failure of
    /// the handler.
    pub(crate) fn of(
        finished: std::thread::Result<Result<Value, HandlerError>>,
        stop: &StopSignal,
    ) -> Self {
        match finished {
            Ok(Ok(value)) => Self::Result(value),
            Ok(Err(_)) if stop.reason().is_some() => {
                Self::Stopped(stop.reason().unwrap_or(StopReason::Shutdown))
            }
            Ok(Err(e)) if e.not_started => Self::NotStarted(e.message),
            Ok(Err(e)) => Self::Failed {
                message: e.message,
                retryable: e.retryable,
            },
            Err(panic) => Self::Failed {
                message: format!("handler panicked: {}", panic_message(&panic)),
                retryable: false,
            },
        }
    }
}

/// The message a panic carried.
fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
}
