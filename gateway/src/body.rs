//! Request body limits, applied before any handler reads a byte:
//! a `Content-Length` over `--max-body-bytes` is refused with 413 at once
//! (nothing is read), and the whole body must arrive within
//! `--body-timeout-secs` of the request head: a total deadline, so a
//! client that trickles a byte now and then cannot hold a request open
//! for longer (an idle timeout would let it).

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use crate::error::ApiError;

/// The limits of [`limit`].
#[derive(Clone, Copy, Debug)]
pub struct BodyLimits {
    /// Largest body, in bytes (`--max-body-bytes`).
    pub max_bytes: usize,
    /// Time from the request head to the body's last byte
    /// (`--body-timeout-secs`).
    pub total: Duration,
}

/// The error a body stream ends with when its deadline passed (found by
/// [`is_deadline`] among the causes of a buffering failure).
#[derive(Debug)]
pub struct BodyDeadline(Duration);

impl std::fmt::Display for BodyDeadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body did not arrive within {} s (--body-timeout-secs)",
            self.0.as_secs()
        )
    }
}

impl std::error::Error for BodyDeadline {}

/// True if `err` or one of its causes is a [`BodyDeadline`].
pub fn is_deadline(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if e.is::<BodyDeadline>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Middleware: refuses an oversized declared body, and gives the body a
/// total deadline.
pub async fn limit(State(limits): State<BodyLimits>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(n) = declared.filter(|n| *n > limits.max_bytes as u64) {
        let mut resp = ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "payload_too_large",
            format!(
                "the body is {n} bytes; the limit is {} (--max-body-bytes)",
                limits.max_bytes
            ),
        )
        .into_response();
        // The body stays unread: the connection cannot be reused.
        resp.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
        return resp;
    }
    let deadline = tokio::time::Instant::now() + limits.total;
    let (parts, body) = req.into_parts();
    let data = body.into_data_stream();
    let timed = futures::stream::unfold(Some(data), move |state| async move {
        let mut data = state?;
        match tokio::time::timeout_at(deadline, data.next()).await {
            Ok(Some(item)) => Some((item.map_err(axum::BoxError::from), Some(data))),
            Ok(None) => None,
            Err(_) => Some((Err(BodyDeadline(limits.total).into()), None)),
        }
    });
    next.run(Request::from_parts(parts, Body::from_stream(timed)))
        .await
}
