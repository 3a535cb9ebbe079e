//! Built-in handlers: `http` (any local HTTP endpoint), `openai` (an
//! OpenAI-compatible server), `exec` (a long-lived child process speaking
//! JSON lines). The `mock` handler lives in `crate::mock`.
//!
//! Each implements [`Serve`] (its work on a borrowed task) and, for use on
//! its own, [`Handler`](rtq_core::Handler) through [`run_until_stopped`]:
//! a cancel (or deadline, or reassignment) stops the upstream work the
//! moment it arrives, not when the runtime's cancel grace runs out. The
//! binary wraps them in `crate::metrics::Instrumented`, which does the same
//! and also counts the stop.

pub mod body;
pub mod exec;
pub mod http;
pub mod openai;

use std::future::Future;
use std::sync::Arc;

use reqwest::StatusCode;
use rtq_core::{async_trait, HandlerError, StopReason, Stopped, TaskContext};
use serde_json::Value;

use crate::upstream::{describe, UpstreamState};

/// Longest upstream error body quoted in a failure reason.
pub(crate) const QUOTE_LIMIT: usize = 500;

/// A built-in handler's work on one task. The task is borrowed, so the
/// caller keeps it and can watch for its stop (see [`run_until_stopped`]).
#[async_trait]
pub trait Serve: Send + Sync + 'static {
    /// Runs `task` to its result or failure. Dropping the future stops the
    /// work: it closes the upstream request, or tells the exec child.
    ///
    /// # Errors
    /// Why the task failed; retryable or not.
    async fn serve(&self, task: &TaskContext) -> Result<Value, HandlerError>;
}

/// How a run under [`run_until_stopped`] ended.
#[derive(Debug)]
pub enum Run {
    /// The work ended by itself.
    Ended(Result<Value, HandlerError>),
    /// The task had to stop first; the work was dropped.
    Stopped(Stopped),
}

impl Run {
    /// The handler's return value: a stop becomes the error
    /// `stopped: <reason>` (the runtime records the stop itself and does
    /// not use it).
    pub fn into_result(self) -> Result<Value, HandlerError> {
        match self {
            Run::Ended(outcome) => outcome,
            Run::Stopped(stopped) => Err(stopped.into()),
        }
    }
}

/// Runs `work` until it ends or `task` must stop, whichever comes first.
///
/// On a stop it drops `work` at once, and with it whatever `work` holds: an
/// in-flight HTTP request (dropping it closes the connection, which is how
/// vLLM, TGI and friends learn to abort the generation), a timer, an exec
/// registration (which sends the child its `cancel` line). Without this a
/// handler waiting on a silent upstream (a long prefill, a non-streaming
/// request) would keep the GPU busy until the runtime drops the future
/// after its cancel grace.
pub async fn run_until_stopped(
    task: &TaskContext,
    work: impl Future<Output = Result<Value, HandlerError>>,
) -> Run {
    let stopped = tokio::select! {
        biased;
        () = task.cancelled() => Stopped {
            reason: task.stop_reason().unwrap_or(StopReason::Cancelled {
                reason: "cancelled".into(),
            }),
        },
        outcome = work => return Run::Ended(outcome),
    };
    // `work` is dropped by now. Yield once before returning: the runtime
    // polls this future and the same stop in one `select!` of random
    // order; returning in that very poll could make it record the stop as
    // this handler's failure (for "shutting down", a failed task instead
    // of one handed back to the queue). Pending once, the runtime takes
    // its stop branch in that poll, then sees this future end at once.
    tokio::task::yield_now().await;
    Run::Stopped(stopped)
}

/// Turns a failed request into a handler error; connection failures also
/// mark the upstream down (so the worker stops taking tasks) and are
/// retryable (another node's upstream may be fine).
pub(crate) fn request_failed(
    e: reqwest::Error,
    url: &str,
    upstream: &Arc<UpstreamState>,
) -> HandlerError {
    let why = crate::secrets::scrub(&format!(
        "upstream {}: {}",
        rtq_core::redact_url(url),
        describe(&e)
    ));
    if e.is_connect() {
        upstream.mark_down(&why);
    }
    if e.is_connect() || e.is_timeout() {
        HandlerError::retryable(why)
    } else {
        HandlerError::fatal(why)
    }
}

/// A non-2xx answer: overload and gateway errors are retryable, the rest
/// final; `message` is what the server said.
pub(crate) fn status_failed(status: StatusCode, message: &str) -> HandlerError {
    let quoted: String = message.trim().chars().take(QUOTE_LIMIT).collect();
    let why = crate::secrets::scrub(&format!("upstream answered {status}: {quoted}"));
    match status.as_u16() {
        429 | 502 | 503 | 504 => HandlerError::retryable(why),
        _ => HandlerError::fatal(why),
    }
}

/// The media type of a response, lower-cased, without parameters.
pub(crate) fn media_type(resp: &reqwest::Response) -> String {
    resp.headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}
