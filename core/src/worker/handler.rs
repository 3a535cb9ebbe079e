//! The [`Handler`] trait workers implement, and the [`TaskContext`] a
//! handler receives: the task, a chunk sink, and cancellation.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::protocol::TaskSpec;

/// Runs tasks. One value serves every slot of a worker, concurrently.
///
/// When a task is cancelled, expires, or is reassigned, the future returned
/// by `handle` is dropped (which closes, for example, an in-flight HTTP
/// request so the model stops working), after [`TaskContext::cancelled`]
/// has fired for any work the handler spawned.
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
    /// remain, others fail it with the message as the reason.
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
}

impl HandlerError {
    /// A failure that retrying will not fix (bad input, model refused).
    pub fn fatal(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
        }
    }

    /// A failure another attempt may not hit (upstream hiccup, OOM).
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
        }
    }
}

impl From<Stopped> for HandlerError {
    fn from(stopped: Stopped) -> Self {
        HandlerError::fatal(format!("stopped: {}", stopped.reason))
    }
}

/// Returned by [`TaskContext::send`] once the task must stop.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("task stopped: {reason}")]
pub struct Stopped {
    /// Why: "cancelled: ...", "deadline", "fenced", "shutting down", ...
    pub reason: String,
}

/// Shared cancellation state of one running attempt.
#[derive(Clone, Default)]
pub(crate) struct StopSignal {
    token: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
}

impl StopSignal {
    pub(crate) fn stop(&self, reason: &str) {
        if let Ok(mut r) = self.reason.lock() {
            r.get_or_insert_with(|| reason.to_string());
        }
        self.token.cancel();
    }
    pub(crate) fn reason(&self) -> Option<String> {
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

    /// Queues a chunk of output. Never waits for Redis: chunks produced
    /// while a write is in flight are coalesced into the next write.
    ///
    /// # Errors
    /// [`Stopped`] once the task was cancelled, expired or reassigned; the
    /// handler should return (the `?` operator converts it).
    pub async fn send(&self, chunk: impl Into<Vec<u8>>) -> Result<(), Stopped> {
        if let Some(reason) = self.stop_reason() {
            return Err(Stopped { reason });
        }
        self.sink.send(chunk.into()).map_err(|_| Stopped {
            reason: "the chunk writer has stopped".into(),
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
    pub fn stop_reason(&self) -> Option<String> {
        self.is_cancelled()
            .then(|| self.stop.reason().unwrap_or_else(|| "cancelled".into()))
    }
}
