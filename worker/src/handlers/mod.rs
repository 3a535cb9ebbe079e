//! Built-in handlers: `http` (any local HTTP endpoint), `openai` (an
//! OpenAI-compatible server), `exec` (a long-lived child process speaking
//! JSON lines). The `mock` handler lives in `crate::mock`.

pub mod exec;
pub mod http;
pub mod openai;

use std::sync::Arc;

use reqwest::StatusCode;
use rtq_core::HandlerError;

use crate::upstream::{describe, UpstreamState};

/// Longest upstream error body quoted in a failure reason.
const QUOTE_LIMIT: usize = 500;

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
