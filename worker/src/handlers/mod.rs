//! Built-in handlers: `http` (any local HTTP endpoint), `openai` (an
//! OpenAI-compatible server), `exec` (a long-lived child process speaking
//! JSON lines). The `mock` handler lives in `crate::mock`; [`body`] reads
//! upstream bodies (JSON, SSE, NDJSON) within the `--max-*-bytes` limits.
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
use std::time::Duration;

use rtq_core::{async_trait, HandlerError, StopReason, Stopped, TaskContext};
use serde_json::Value;

use body::error_text;

use crate::upstream::{describe, UpstreamState};

/// Longest upstream error body quoted in a failure reason, in characters.
pub(crate) const QUOTE_LIMIT: usize = 500;
/// Longest part of an unusable upstream line or body quoted in a failure
/// reason, in characters.
pub(crate) const LINE_QUOTE: usize = 200;

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

/// What a task does when its upstream cannot be reached
/// (`--upstream-down`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum UpstreamDown {
    /// Give the task back to the queue unstarted, without using an
    /// attempt, while this node's intake stays off until its upstream is
    /// back: another node whose upstream works serves it at once.
    HandBack,
    /// Fail the task as retryable (uses an attempt; the task is retried
    /// after the queue's back-off, on another node if one is free).
    Retry,
}

/// How a task waits for a down upstream and what happens after:
/// `--upstream-hold-secs` and `--upstream-down`.
///
/// Why hand-back is the default: while this node's upstream is
/// unreachable nothing of the task reached the model, so using one of its
/// attempts would only bring it closer to failing for a fault of this node
/// (a fleet restarting its model servers would drain the queue into
/// failures). Holding it here helps nobody either: with other nodes up it
/// delays the task for the whole hold while they could run it, and with
/// every node down the queue holds it just as well. Handed back, it goes to
/// the front of the queue for a node that can run it; this node's intake
/// stays off until its health probe (or the TCP trial) sees the upstream
/// back, and the runtime's hand-back pause (doubling from 500 ms to 30 s,
/// see [`HandlerError::not_started`]) bounds how often a task that every
/// node hands back moves between them. The task keeps its deadline.
#[derive(Clone, Copy, Debug)]
pub struct Hold {
    /// How long a task waits on this node for its upstream first
    /// (`--upstream-hold-secs`; default 0).
    pub wait: Duration,
    /// What happens to it after.
    pub then: UpstreamDown,
}

impl Hold {
    /// The handler's error once the hold is over.
    fn give_up(&self, why: &str) -> HandlerError {
        match self.then {
            UpstreamDown::HandBack => HandlerError::not_started(crate::secrets::scrub(&format!(
                "{why}; handed the task back unstarted (--upstream-down hand-back)"
            ))),
            UpstreamDown::Retry => HandlerError::retryable(crate::secrets::scrub(&format!(
                "{why}; held the task {}s (--upstream-hold-secs) and gave it back",
                self.wait.as_secs()
            ))),
        }
    }
}

/// Sends the request `build` makes while the upstream is down: a task
/// taken just before intake went off, or one whose request could not
/// connect (refused, DNS, connect timeout: nothing of it reached the
/// upstream), waits up to `hold.wait` for the upstream to come back
/// (health probe, or the TCP trial without one) and is sent again; after
/// that it is handed back unstarted or failed as retryable, as
/// `hold.then` says (see [`Hold`] and README "Upstream down").
///
/// # Errors
/// As [`request_failed`], or the upstream stayed down for the hold.
pub(crate) async fn send_holding(
    build: impl Fn() -> reqwest::RequestBuilder,
    url: &str,
    upstream: &Arc<UpstreamState>,
    hold: Hold,
) -> Result<reqwest::Response, HandlerError> {
    let until = tokio::time::Instant::now() + hold.wait;
    loop {
        if !upstream.is_up() && !upstream.wait_until_up(until).await {
            return Err(hold.give_up(&format!(
                "upstream {} is down ({})",
                rtq_core::redact_url(url),
                upstream.last_error(),
            )));
        }
        match build().send().await {
            Ok(resp) => return Ok(resp),
            Err(e) => {
                let unreachable = unreachable(&e);
                let failed = request_failed(e, url, upstream);
                if !unreachable {
                    return Err(failed);
                }
                if tokio::time::Instant::now() >= until {
                    return Err(match hold.then {
                        UpstreamDown::HandBack => hold.give_up(&failed.message),
                        // The connection failure itself, as before.
                        UpstreamDown::Retry => failed,
                    });
                }
            }
        }
    }
}

/// True if the request failed to reach the upstream at all (refused,
/// unresolvable, connect timeout): nothing of it was accepted. A TLS
/// failure is a connect error too, but waiting does not fix a
/// certificate, so it is not one of these.
fn unreachable(e: &reqwest::Error) -> bool {
    if !e.is_connect() {
        return false;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if is_tls(s) {
            return false;
        }
        source = s.source();
    }
    true
}

/// True if `e` is a TLS error, or an I/O error wrapping one (at any depth:
/// an I/O error's `source` skips the error it wraps).
fn is_tls(e: &(dyn std::error::Error + 'static)) -> bool {
    if e.is::<rustls::Error>() {
        return true;
    }
    match e
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
    {
        Some(inner) => is_tls(inner),
        None => false,
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

/// `text` as quoted in a failure reason: secrets masked *first* (cut
/// first, a secret's prefix would no longer be recognised and would
/// leak), then cut to `limit` characters.
pub(crate) fn quote(text: &str, limit: usize) -> String {
    crate::secrets::scrub(text.trim())
        .chars()
        .take(limit)
        .collect()
}

/// How much of an error body to read for a [`QUOTE_LIMIT`] quote: enough
/// that a secret starting within the quoted part is read whole (and so
/// masked whole).
fn error_read_limit() -> usize {
    QUOTE_LIMIT * 4 + crate::secrets::longest()
}

/// A reply that is not 2xx, turned into the task's failure; `extract`
/// picks the server's message out of the body. Also tells `upstream`:
/// - 3xx: the worker follows no redirect (it would carry the credentials
///   and the input elsewhere); fails the task naming the `Location`.
/// - 429 and 503: retryable, and a `Retry-After` pauses intake for that
///   long; the upstream is not marked up (it asked to be left alone).
/// - 502 and 504 retryable, the rest final; the upstream answered, so it
///   is up.
pub(crate) async fn reply_failed(
    resp: reqwest::Response,
    upstream: &Arc<UpstreamState>,
    extract: fn(&str) -> String,
) -> HandlerError {
    let status = resp.status();
    if status.is_redirection() {
        upstream.mark_up();
        let location = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .map(|l| String::from_utf8_lossy(l.as_bytes()).into_owned())
            .unwrap_or_default();
        let location = quote(&rtq_core::redact_url(&location), QUOTE_LIMIT);
        return HandlerError::fatal(format!(
            "upstream answered {status}, a redirect to {location:?}; the worker follows no \
             redirects (they would carry the credentials and the input to another address): \
             set --upstream-url to the final URL"
        ));
    }
    let wait = match status.as_u16() {
        429 | 503 => retry_after(resp.headers()),
        _ => {
            upstream.mark_up();
            None
        }
    };
    let text = error_text(resp, error_read_limit()).await;
    let why = format!(
        "upstream answered {status}: {}",
        quote(&extract(&text), QUOTE_LIMIT)
    );
    if let Some(wait) = wait {
        upstream.pause(wait, &why);
    }
    match status.as_u16() {
        429 | 502 | 503 | 504 => HandlerError::retryable(why),
        _ => HandlerError::fatal(why),
    }
}

/// The `Retry-After` of a reply: delay-seconds or an HTTP date (RFC 9110
/// section 10.2.3); `None` if absent, unreadable or already past.
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return (secs > 0).then(|| Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    at.duration_since(std::time::SystemTime::now()).ok()
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

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};

    fn after(value: &str) -> Option<Duration> {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_str(value).unwrap());
        retry_after(&headers)
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        assert_eq!(after("30"), Some(Duration::from_secs(30)));
        assert_eq!(after(" 2 "), Some(Duration::from_secs(2)));
        assert_eq!(after("0"), None);
        assert_eq!(after("soon"), None);
        assert_eq!(after("Wed, 21 Oct 2015 07:28:00 GMT"), None, "in the past");
        let later = std::time::SystemTime::now() + Duration::from_secs(120);
        let wait = after(&httpdate::fmt_http_date(later)).unwrap();
        assert!(
            wait > Duration::from_secs(100) && wait <= Duration::from_secs(120),
            "{wait:?}"
        );
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn a_quote_masks_a_secret_before_cutting_it() {
        crate::secrets::register(["sk-live-0123456789abcdef".to_string()]);
        let text = format!("{} sk-live-0123456789abcdef", "A".repeat(480));
        let quoted = quote(&text, 500);
        assert!(!quoted.contains("sk-live"), "{quoted}");
        assert!(quoted.ends_with("***"), "{quoted}");
        // Cut on a character boundary.
        assert_eq!(quote("ééé", 2), "éé");
    }
}
