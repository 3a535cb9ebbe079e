//! The library's error type and the mapping from script status codes to it.

use std::fmt;

/// Where a task was when its deadline passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TimeoutPhase {
    /// Still waiting in the queue: no worker ever started it.
    Queued,
    /// Running on the named worker; that worker was told to stop.
    Running {
        /// Worker id the task was running on.
        worker: String,
    },
}

impl fmt::Display for TimeoutPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TimeoutPhase::Queued => write!(f, "while queued"),
            TimeoutPhase::Running { worker } => write!(f, "while running on worker {worker}"),
        }
    }
}

/// Everything that can go wrong in rtq, each variant saying why and where.
///
/// A wait that ends without a result always ends with one of these, so a
/// caller can tell "still queued" from "running" from "lost".
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A queue name, task id or worker id that would break the key layout.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        /// Which kind of name ("queue name", "task id", ...).
        what: &'static str,
        /// The offending value (truncated to 80 characters).
        value: String,
        /// What rule it breaks.
        reason: String,
    },
    /// Task input or options that cannot be accepted (non-JSON input, a
    /// priority out of range, ...).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// Inline data above the configured limit; send it by reference instead.
    #[error("{what} is {size} bytes, over the {limit}-byte inline limit; store the data elsewhere and pass a reference (TaskRequest::reference)")]
    PayloadTooLarge {
        /// What was too large ("input", "result", "chunk").
        what: &'static str,
        /// Its size in bytes.
        size: usize,
        /// The configured limit in bytes.
        limit: usize,
    },
    /// The queue is at its maximum depth; decided atomically in Redis.
    #[error("queue {queue} is full: {depth} pending, max depth {max_depth}")]
    QueueFull {
        /// Queue name.
        queue: String,
        /// Pending tasks at the time of the submit.
        depth: u64,
        /// The queue's configured maximum depth.
        max_depth: u64,
    },
    /// A task with this id already exists.
    #[error("task {id} already exists (state {state})")]
    Duplicate {
        /// Task id.
        id: String,
        /// Its current state.
        state: crate::protocol::TaskState,
    },
    /// No such task: never submitted to this queue, or ended longer ago than
    /// its retention.
    #[error("task {id} not found in queue {queue} (unknown id, or its retention has passed)")]
    NotFound {
        /// Queue name.
        queue: String,
        /// Task id.
        id: String,
    },
    /// The task's deadline passed; it was ended and will not run (further).
    #[error("task {id} timed out {phase}")]
    TimedOut {
        /// Task id.
        id: String,
        /// Where the task was when the deadline passed.
        phase: TimeoutPhase,
    },
    /// The caller's own wait limit passed; the task itself goes on.
    #[error("gave up waiting for task {id} after {waited_ms} ms; it is still {state}{}", worker.as_ref().map(|w| format!(" on worker {w}")).unwrap_or_default())]
    WaitTimedOut {
        /// Task id.
        id: String,
        /// How long the caller waited.
        waited_ms: u64,
        /// The task's state when the wait ended.
        state: crate::protocol::TaskState,
        /// The worker running it, if any.
        worker: Option<String>,
    },
    /// The task was cancelled (by a client, an operator, or a purge).
    #[error("task {id} was cancelled: {reason}")]
    Cancelled {
        /// Task id.
        id: String,
        /// Reason given with the cancel.
        reason: String,
    },
    /// The handler failed the task; `reason` is the worker's message.
    #[error("task {id} failed on worker {worker}: {reason}")]
    Failed {
        /// Task id.
        id: String,
        /// Worker that reported the failure.
        worker: String,
        /// The worker's reason.
        reason: String,
    },
    /// The task's worker died (stopped heartbeating) and no attempts were left.
    #[error("task {id} lost its worker {worker} and has no attempts left: {reason}")]
    WorkerLost {
        /// Task id.
        id: String,
        /// The worker that died last.
        worker: String,
        /// Details.
        reason: String,
    },
    /// The task disappeared from Redis while it was being waited on, before
    /// it ended: Redis lost its data (a restart without persistence, a
    /// failover to a replica that had not received it) or evicted the key
    /// (`maxmemory-policy` must be `noeviction`).
    #[error("task {id} vanished from Redis while it was waited on: {reason}")]
    TaskLost {
        /// Task id.
        id: String,
        /// What was observed.
        reason: String,
    },
    /// A submit whose outcome is unknown: the request may or may not have
    /// reached Redis (a timeout or a cut connection, retried without an
    /// answer). Submitting again with the same id (`TaskRequest::id`) is
    /// safe: it creates the task at most once.
    #[error("submit of task {id} may or may not have reached Redis ({reason}); submit again with the same id to be safe")]
    Uncertain {
        /// The task id to retry with.
        id: String,
        /// The last error.
        reason: String,
    },
    /// Redis is over its `maxmemory` limit and refused to store more (the
    /// call wrote nothing). Workers keep draining the queue; free memory or
    /// raise the limit.
    #[error("Redis is out of memory and refused the write (nothing was stored): {0}")]
    OutOfMemory(String),
    /// The Redis user lacks a permission the operation needs (ACL).
    #[error("Redis refused the operation for this user (ACL): {0}")]
    PermissionDenied(String),
    /// Another worker process registered under this worker's id (two
    /// processes with one `--worker-id`); this one stopped.
    #[error("another process registered as worker {worker}; this one stopped (give every process its own worker id)")]
    WorkerReplaced {
        /// The contested worker id.
        worker: String,
    },
    /// The Redis server is unfit for rtq as configured (too old, or an
    /// eviction policy that would silently delete tasks).
    #[error("unsuitable Redis server: {0}")]
    UnsuitableServer(String),
    /// The client was dropped while a wait was still open.
    #[error("the client was shut down while waiting for task {id}")]
    Closed {
        /// Task id.
        id: String,
    },
    /// Could not reach Redis, or the connection was lost and not regained.
    #[error("cannot reach Redis at {url}: {source}")]
    Connection {
        /// The Redis URL with any password redacted.
        url: String,
        /// The underlying error.
        source: redis::RedisError,
    },
    /// The reply reader could not reach Redis for longer than the client's
    /// `give_up_after`; the task itself may still finish (fetch it later).
    #[error("lost the connection to Redis at {url} while waiting for task {id}: {reason}")]
    Disconnected {
        /// The Redis URL with any password redacted.
        url: String,
        /// Task id.
        id: String,
        /// The last connection error.
        reason: String,
    },
    /// Redis answered with an error.
    #[error("Redis error: {0}")]
    Redis(redis::RedisError),
    /// Data in Redis that this version cannot read (unknown protocol
    /// version, malformed message).
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl Error {
    /// True for errors a caller may simply retry later (connection trouble,
    /// a full queue), false for errors that will not go away by retrying.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::QueueFull { .. } | Error::Connection { .. } | Error::Disconnected { .. } => true,
            Error::Redis(e) => {
                e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || matches!(
                        e.code(),
                        Some("LOADING" | "BUSY" | "TRYAGAIN" | "MASTERDOWN")
                    )
            }
            Error::Uncertain { .. } | Error::OutOfMemory(_) => true,
            _ => false,
        }
    }

    /// True if the error means the connection to Redis was lost or refused.
    pub fn is_connection_lost(&self) -> bool {
        match self {
            Error::Connection { .. } | Error::Disconnected { .. } => true,
            Error::Redis(e) => {
                e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal()
            }
            _ => false,
        }
    }
}

impl From<redis::RedisError> for Error {
    /// Sorts server errors rtq can name: refused arguments (`INVALID`, from
    /// the functions' validation), `OOM`, `NOPERM`; the rest stay
    /// [`Error::Redis`].
    fn from(e: redis::RedisError) -> Self {
        let detail = || e.detail().unwrap_or("").to_string();
        match e.code() {
            Some("INVALID") => Error::InvalidInput(format!("Redis refused the call: {}", detail())),
            Some("OOM") => Error::OutOfMemory(detail()),
            Some("NOPERM") => Error::PermissionDenied(detail()),
            // An ACL refusal of a command inside a function (Redis 7.0
            // reports it as a plain ERR).
            Some("ERR")
                if e.detail().is_some_and(|d| {
                    d.starts_with("The user executing the script can't run this command")
                }) =>
            {
                Error::PermissionDenied(detail())
            }
            _ => Error::Redis(e),
        }
    }
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Removes the password (and user) from a Redis URL so it can be logged.
///
/// `redis://user:secret@host:6379/0` becomes `redis://user:***@host:6379/0`.
/// Input that is not a URL is returned with everything before the last `@`
/// masked, which never leaks a secret either.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => match url.rfind('@') {
            Some(at) => format!("***{}", &url[at..]),
            None => url.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_survive_redaction() {
        assert_eq!(
            redact_url("redis://:hunter2@localhost:6379/0"),
            "redis://:***@localhost:6379/0"
        );
        assert_eq!(
            redact_url("rediss://app:hunter2@cache.example:6380"),
            "rediss://app:***@cache.example:6380"
        );
        assert_eq!(redact_url("redis://127.0.0.1/"), "redis://127.0.0.1/");
        assert!(!redact_url("not a url:hunter2@x").contains("hunter2"));
    }

    #[test]
    fn retryable_errors_are_the_ones_that_may_pass() {
        let retryable = [
            Error::QueueFull {
                queue: "q".into(),
                depth: 1,
                max_depth: 1,
            },
            Error::Disconnected {
                url: "u".into(),
                id: "t".into(),
                reason: "r".into(),
            },
            Error::Uncertain {
                id: "t".into(),
                reason: "r".into(),
            },
            Error::OutOfMemory("full".into()),
        ];
        for e in &retryable {
            assert!(e.is_retryable(), "{e:?}");
        }
        let not_retryable = [
            Error::InvalidInput("bad".into()),
            Error::PermissionDenied("no".into()),
            Error::NotFound {
                queue: "q".into(),
                id: "t".into(),
            },
            Error::Protocol("p".into()),
        ];
        for e in &not_retryable {
            assert!(!e.is_retryable(), "{e:?}");
        }
    }

    #[test]
    fn any_io_failure_and_a_refused_connection_count_as_connection_lost() {
        let io = |kind| Error::Redis(std::io::Error::new(kind, "x").into());
        assert!(io(std::io::ErrorKind::TimedOut).is_connection_lost());
        assert!(io(std::io::ErrorKind::BrokenPipe).is_connection_lost());
        assert!(io(std::io::ErrorKind::ConnectionRefused).is_connection_lost());
        assert!(Error::Disconnected {
            url: "u".into(),
            id: "t".into(),
            reason: "r".into(),
        }
        .is_connection_lost());
        assert!(!Error::InvalidInput("bad".into()).is_connection_lost());
        assert!(!Error::OutOfMemory("full".into()).is_connection_lost());
    }
}
