//! [`ApiError`]: every refusal and failure the gateway answers, in OpenAI's
//! error shape (`{"error": {"message", "type", "param", "code"}}`) on every
//! route, and the mapping from [`rtq_core::Error`] to HTTP statuses.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use rtq_core::{Error, TimeoutPhase};
use serde_json::{json, Value};

/// An error answer: status, OpenAI error `type` and `code`, a message that
/// says what to do, and an optional `Retry-After`.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// OpenAI's error class (`invalid_request_error`, `rate_limit_error`, ...).
    pub kind: &'static str,
    /// A stable machine-readable code.
    pub code: &'static str,
    /// What went wrong and what to do.
    pub message: String,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with no `Retry-After`.
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            kind,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400: the request cannot be served as sent.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_request",
            message,
        )
    }

    /// 401: no key, or an unknown one.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid_api_key",
            message,
        )
    }

    /// 403: the key may not use this queue.
    pub fn forbidden(queue: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            "queue_not_allowed",
            format!("this API key may not use queue {queue:?}"),
        )
    }

    /// 403: the key may not use this family of routes (`routes=`).
    pub fn route_forbidden(route: crate::auth::Route) -> Self {
        let (this, other) = match route {
            crate::auth::Route::OpenAi => ("the OpenAI-compatible routes", "tasks"),
            crate::auth::Route::Tasks => ("the task API (/v1/queues/...)", "openai"),
        };
        Self::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            "route_not_allowed",
            format!("this API key may not use {this}: its routes= grants only {other}"),
        )
    }

    /// 503: the queue cannot serve now (paused, no live worker, Redis down).
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            code,
            message,
        )
        .retry_after(Duration::from_secs(5))
    }

    /// Adds `Retry-After` (whole seconds, at least 1).
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after.as_secs_f64().ceil().max(1.0) as u64);
        self
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        json!({ "error": {
            "message": self.message,
            "type": self.kind,
            "param": Value::Null,
            "code": self.code,
        }})
    }

    /// Maps a library error; `retry_after` is what a full queue advises.
    pub fn from_rtq(err: &Error, retry_after: Duration) -> Self {
        use StatusCode as S;
        let msg = err.to_string();
        match err {
            Error::QueueFull { .. } => {
                Self::new(S::TOO_MANY_REQUESTS, "rate_limit_error", "queue_full", msg)
                    .retry_after(retry_after)
            }
            Error::InvalidName { .. } | Error::InvalidInput(_) => Self::bad_request(msg),
            Error::PayloadTooLarge { .. } => Self::new(
                S::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "payload_too_large",
                msg,
            ),
            Error::NotFound { .. } => {
                Self::new(S::NOT_FOUND, "invalid_request_error", "task_not_found", msg)
            }
            Error::Duplicate { .. } => {
                Self::new(S::CONFLICT, "invalid_request_error", "duplicate_task", msg)
            }
            Error::TimedOut { phase, .. } => Self::new(
                S::GATEWAY_TIMEOUT,
                "timeout_error",
                match phase {
                    TimeoutPhase::Queued => "deadline_exceeded_queued",
                    TimeoutPhase::Running { .. } => "deadline_exceeded_running",
                },
                msg,
            ),
            Error::WaitTimedOut { .. } => {
                Self::new(S::GATEWAY_TIMEOUT, "timeout_error", "wait_timed_out", msg)
            }
            Error::Cancelled { .. } => {
                Self::new(S::CONFLICT, "invalid_request_error", "task_cancelled", msg)
            }
            Error::Failed { .. } | Error::Forged { .. } => {
                Self::new(S::BAD_GATEWAY, "server_error", "task_failed", msg)
            }
            Error::WorkerLost { .. } | Error::TaskLost { .. } => {
                Self::new(S::BAD_GATEWAY, "server_error", "task_lost", msg)
            }
            Error::TooManyQueues { .. } => {
                Self::unavailable("too_many_queues", msg).retry_after(retry_after)
            }
            e if e.is_retryable() || e.is_connection_lost() => {
                Self::unavailable("redis_unavailable", msg)
            }
            _ => Self::new(
                S::INTERNAL_SERVER_ERROR,
                "server_error",
                "internal_error",
                msg,
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_many_queues_is_503_naming_itself_not_redis() {
        let e = Error::TooManyQueues {
            queue: "q".into(),
            max: 256,
        };
        let api = ApiError::from_rtq(&e, Duration::from_secs(2));
        assert_eq!(api.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(api.body()["error"]["code"], "too_many_queues");
        assert_eq!(api.retry_after, Some(2));
    }

    #[test]
    fn a_full_queue_is_429_with_retry_after() {
        let e = Error::QueueFull {
            queue: "q".into(),
            depth: 3,
            max_depth: 3,
        };
        let api = ApiError::from_rtq(&e, Duration::from_millis(1500));
        assert_eq!(api.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(api.retry_after, Some(2));
        assert_eq!(api.body()["error"]["code"], "queue_full");
    }

    #[test]
    fn deadlines_name_the_phase() {
        let queued = Error::TimedOut {
            id: "t".into(),
            phase: TimeoutPhase::Queued,
        };
        let running = Error::TimedOut {
            id: "t".into(),
            phase: TimeoutPhase::Running { worker: "w".into() },
        };
        let q = ApiError::from_rtq(&queued, Duration::ZERO);
        let r = ApiError::from_rtq(&running, Duration::ZERO);
        assert_eq!(q.status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(q.code, "deadline_exceeded_queued");
        assert!(q.message.contains("while queued"), "{}", q.message);
        assert_eq!(r.code, "deadline_exceeded_running");
        assert!(r.message.contains("worker w"), "{}", r.message);
    }

    #[test]
    fn the_body_has_openais_shape() {
        let b = ApiError::bad_request("nope").body();
        assert_eq!(b["error"]["message"], "nope");
        assert_eq!(b["error"]["type"], "invalid_request_error");
        assert!(b["error"]["param"].is_null());
    }
}
