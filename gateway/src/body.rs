//! Request body limits, applied before any handler reads a byte:
//! a `Content-Length` over `--max-body-bytes` (or over the key's own
//! `max_body=`, when smaller) is refused with 413 at once (nothing is
//! read), a body without a length is cut off with 413 as soon as it
//! passes the limit, and the whole body must arrive within
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

use crate::app::Caller;
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

/// The error a body stream ends with when it passed the key's
/// `max_body=` (found by [`is_too_large`]).
#[derive(Debug)]
pub struct BodyTooLarge(usize);

impl std::fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body is larger than {} bytes, this API key's limit (max_body=)",
            self.0
        )
    }
}

impl std::error::Error for BodyTooLarge {}

/// True if `err` or one of its causes is an `E`.
fn caused_by<E: std::error::Error + 'static>(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if e.is::<E>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// True if `err` or one of its causes is a [`BodyDeadline`].
pub fn is_deadline(err: &(dyn std::error::Error + 'static)) -> bool {
    caused_by::<BodyDeadline>(err)
}

/// True if `err` or one of its causes is a [`BodyTooLarge`].
pub fn is_too_large(err: &(dyn std::error::Error + 'static)) -> bool {
    caused_by::<BodyTooLarge>(err)
}

/// How much of a body past its key's limit is read and discarded before
/// the 413 (see [`limit`]).
const DRAIN_BYTES: usize = 64 * 1024;
/// How long that drain may take at most.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(1);

/// Reads and discards the rest of a body, up to [`DRAIN_BYTES`] and
/// [`DRAIN_TIME`] (and the body's own deadline).
async fn drain<S>(data: &mut S, deadline: tokio::time::Instant)
where
    S: futures::Stream<Item = Result<axum::body::Bytes, axum::Error>> + Unpin,
{
    let until = deadline.min(tokio::time::Instant::now() + DRAIN_TIME);
    let mut drained = 0usize;
    while drained <= DRAIN_BYTES {
        match tokio::time::timeout_at(until, data.next()).await {
            Ok(Some(Ok(bytes))) => drained = drained.saturating_add(bytes.len()),
            _ => return,
        }
    }
}

/// Middleware: refuses an oversized declared body, cuts off a body that
/// grows past the key's `max_body=`, and gives the body a total deadline.
/// Runs after [`crate::app::require_key`], whose [`Caller`] it reads.
pub async fn limit(State(limits): State<BodyLimits>, req: Request, next: Next) -> Response {
    let key_max = req
        .extensions()
        .get::<Caller>()
        .and_then(|c| c.0.as_ref())
        .and_then(|k| k.max_body)
        .filter(|m| *m < limits.max_bytes);
    let max = key_max.unwrap_or(limits.max_bytes);
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(n) = declared.filter(|n| *n > max as u64) {
        let whose = match key_max {
            Some(_) => "this API key's limit (max_body=)",
            None => "the limit (--max-body-bytes)",
        };
        let mut resp = ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "payload_too_large",
            format!("the body is {n} bytes; {whose} is {max}"),
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
    // (stream, bytes so far); `None` once it ended with an error.
    let timed = futures::stream::unfold(Some((data, 0usize)), move |state| async move {
        let (mut data, seen) = state?;
        match tokio::time::timeout_at(deadline, data.next()).await {
            Ok(Some(Ok(bytes))) => {
                let seen = seen.saturating_add(bytes.len());
                match key_max {
                    // Past the key's limit (the global limit is axum's, in
                    // the body extractor): a small overshoot is read to its
                    // end and discarded first, so the client, still
                    // sending, gets the 413 instead of a reset connection
                    // (a close with unread data makes the peer's TCP
                    // discard the answer); a larger rest is never read.
                    Some(m) if seen > m => {
                        drain(&mut data, deadline).await;
                        Some((Err(BodyTooLarge(m).into()), None))
                    }
                    _ => Some((Ok(bytes), Some((data, seen)))),
                }
            }
            Ok(Some(Err(e))) => Some((Err(axum::BoxError::from(e)), Some((data, seen)))),
            Ok(None) => None,
            Err(_) => Some((Err(BodyDeadline(limits.total).into()), None)),
        }
    });
    next.run(Request::from_parts(parts, Body::from_stream(timed)))
        .await
}
