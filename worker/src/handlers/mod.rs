//! Built-in handlers: `http` (any local HTTP endpoint), `openai` (an
//! OpenAI-compatible server), `exec` (a long-lived child process speaking
//! JSON lines). The `mock` handler lives in `crate::mock`.
//!
//! Every built-in handler runs its work through [`until_stopped`], so a
//! cancel (or deadline, or reassignment) stops the upstream work the moment
//! it arrives, not when the runtime's cancel grace runs out.

pub mod exec;
pub mod http;
pub mod openai;

use std::future::Future;
use std::sync::Arc;

use reqwest::StatusCode;
use rtq_core::{HandlerError, Stopped, TaskContext};
use serde_json::Value;

use crate::upstream::{describe, UpstreamState};

/// Longest upstream error body quoted in a failure reason.
const QUOTE_LIMIT: usize = 500;

/// Runs `work` until it ends or `task` must stop, whichever comes first.
///
/// On a stop it returns at once and drops `work`, and with it whatever
/// `work` holds: an in-flight HTTP request (dropping it closes the
/// connection, which is how vLLM, TGI and friends learn to abort the
/// generation), a timer, an exec registration (which sends the child its
/// `cancel` line). Without this a handler waiting on a silent upstream (a
/// long prefill, a non-streaming request) would keep the GPU busy until the
/// runtime drops the future after its cancel grace.
///
/// # Errors
/// `work`'s error, or the stop as a [`HandlerError`] (the runtime records
/// the stop itself; this value is not used).
pub(crate) async fn until_stopped(
    task: &TaskContext,
    work: impl Future<Output = Result<Value, HandlerError>>,
) -> Result<Value, HandlerError> {
    tokio::select! {
        biased;
        () = task.cancelled() => Err(Stopped {
            reason: task.stop_reason().unwrap_or_else(|| "cancelled".into()),
        }
        .into()),
        outcome = work => outcome,
    }
}

/// Turns a failed request into a handler error; connection failures also
/// mark the upstream down (so the worker stops taking tasks) and are
/// retryable (another node's upstream may be fine).
pub(crate) fn request_failed(
    e: reqwest::Error,
    url: &str,
    upstream: &Arc<UpstreamState>,
) -> HandlerError {
    let why = format!("upstream {url}: {}", describe(&e));
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
    let why = format!("upstream answered {status}: {quoted}");
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
