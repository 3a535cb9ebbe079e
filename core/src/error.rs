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
    /// A durable submit ([`TaskRequest::durable`](crate::TaskRequest::durable)):
    /// the task is stored on the queue's master, but no replica
    /// acknowledged it within the wait. It exists and may run; it is lost
    /// if that master fails before replicating it. Its state tells later.
    #[error("task {id} of queue {queue} is stored but no replica acknowledged it within {waited_ms} ms (a crash of its master now would lose it; check the replicas)")]
    NotReplicated {
        /// Queue name.
        queue: String,
        /// Task id.
        id: String,
        /// How long the submit waited for a replica (ms).
        waited_ms: u64,
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
    /// The Redis URL cannot be parsed (a typo, a bad port or database
    /// number, an unknown scheme): a configuration error, never retryable.
    #[error("invalid Redis URL {url}: {reason} (expected redis://[user:password@]host[:port][/db], rediss:// for TLS, unix:///path, or redis+cluster:// / a comma-separated list for a Cluster)")]
    InvalidUrl {
        /// The URL with any password redacted.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Could not reach Redis, or the connection was lost and not regained.
    #[error("cannot reach Redis at {url}: {source}")]
    Connection {
        /// The Redis URL with any password redacted.
        url: String,
        /// The underlying error.
        source: redis::RedisError,
    },
    /// Redis refused the credentials (wrong password or user, or none
    /// given to a server that requires one). Retrying will not help.
    #[error(
        "Redis at {url} refused the credentials: {reason} (check the user and password in the URL)"
    )]
    AuthenticationFailed {
        /// The Redis URL with any secret redacted.
        url: String,
        /// Redis's answer.
        reason: String,
    },
    /// The TLS handshake with Redis failed (untrusted or wrong certificate,
    /// a client certificate required, a plain port). Retrying will not help.
    #[error("TLS with Redis at {url} failed: {reason}")]
    Tls {
        /// The Redis URL with any secret redacted.
        url: String,
        /// What went wrong, with a hint at the fix.
        reason: String,
    },
    /// The TLS settings themselves are unusable (an unreadable file, a
    /// certificate without its key, PEM that does not parse, TLS options
    /// for a URL that is not `rediss://`).
    #[error("TLS setup: {0}")]
    TlsSetup(String),
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
    /// A worker with verify keys refused a task that is not validly
    /// signed (see `rtq_core::signing`); it never ran.
    #[error("task {id} refused: {reason} (this worker runs only tasks signed by a trusted key)")]
    Forged {
        /// Task id.
        id: String,
        /// Why the signature does not hold.
        reason: String,
    },
    /// Redis answered with an error.
    #[error("Redis error: {0}")]
    Redis(redis::RedisError),
    /// A protocol function failed inside Redis (usually data that is not
    /// what the protocol wrote, such as a key of the wrong type); names
    /// the operation, the queue and the task instead of a script line.
    #[error("{function} on queue {queue}{} failed inside Redis: {reason}", task.as_ref().map(|t| format!(", task {t},")).unwrap_or_default())]
    Function {
        /// The function (`rtq2_submit`, ...).
        function: &'static str,
        /// The queue it was called on.
        queue: String,
        /// The task it was about, if any.
        task: Option<String>,
        /// Redis's message without the script location.
        reason: String,
    },
    /// Data in Redis that this version cannot read (unknown protocol
    /// version, malformed message).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// No queue of this name: it is not in the queue registry and has no
    /// keys (a typo, or a queue deleted since).
    #[error("no queue named {queue:?}")]
    UnknownQueue {
        /// The name asked for.
        queue: String,
    },
    /// This client already has open waits on
    /// [`ClientConfig::max_reply_readers`](crate::ClientConfig::max_reply_readers)
    /// queues (one blocking Redis connection each), so a wait on one more
    /// is refused rather than opening another connection. Nothing was
    /// submitted. Passes as waits end.
    #[error("not waiting on queue {queue}: this client has open waits on {max} queues already, each holding a Redis connection (ClientConfig::max_reply_readers); retry when some end, or raise the limit")]
    TooManyQueues {
        /// The queue the refused wait was for.
        queue: String,
        /// The limit.
        max: usize,
    },
    /// A queue still has work or workers, so deleting it would lose tasks
    /// or leave workers serving nothing; `force` deletes it anyway.
    #[error("queue {queue} is in use ({pending} pending, {running} running, {workers} live workers); drain it and stop its workers first, or force the deletion")]
    QueueInUse {
        /// Queue name.
        queue: String,
        /// Tasks waiting.
        pending: u64,
        /// Tasks owned by workers (live, or past their lease and not
        /// reaped yet).
        running: u64,
        /// Workers whose lease is current.
        workers: u64,
    },
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
                        Some(
                            "LOADING"
                                | "BUSY"
                                | "TRYAGAIN"
                                | "MASTERDOWN"
                                | "CLUSTERDOWN"
                                | "MOVED"
                                | "ASK"
                        )
                    )
            }
            Error::Uncertain { .. } | Error::OutOfMemory(_) | Error::TooManyQueues { .. } => true,
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

/// Why a connection to Redis could not be used, in the four classes a
/// caller reacts to differently: a script may retry "unreachable" but must
/// not retry a wrong password forever. The binaries turn each into an exit
/// code of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionProblem {
    /// No answer: a closed port, an unknown host, a timeout, a lost
    /// connection. May go away by itself.
    Unreachable,
    /// Wrong or missing user or password.
    Authentication,
    /// The TLS handshake failed, or the TLS settings are unusable.
    Tls,
    /// The user is known but the ACL refuses a command it needs.
    PermissionDenied,
}

impl ConnectionProblem {
    /// A short name for messages and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionProblem::Unreachable => "unreachable",
            ConnectionProblem::Authentication => "authentication failed",
            ConnectionProblem::Tls => "TLS failed",
            ConnectionProblem::PermissionDenied => "permission denied",
        }
    }
}

impl ConnectionProblem {
    /// The exit code rtq's binaries (`rtq`, `rtq-worker`) use for it:
    /// 3 unreachable, 4 authentication failed, 5 TLS failed, 6 permission
    /// denied (1 is any other failure, 2 a usage error).
    pub fn exit_code(self) -> i32 {
        match self {
            ConnectionProblem::Unreachable => 3,
            ConnectionProblem::Authentication => 4,
            ConnectionProblem::Tls => 5,
            ConnectionProblem::PermissionDenied => 6,
        }
    }
}

impl Error {
    /// The class of a connection-level failure, or `None` for errors of
    /// the operation itself (a full queue, an unknown task, ...).
    pub fn connection_problem(&self) -> Option<ConnectionProblem> {
        match self {
            Error::AuthenticationFailed { .. } => Some(ConnectionProblem::Authentication),
            Error::Tls { .. } | Error::TlsSetup(_) => Some(ConnectionProblem::Tls),
            Error::PermissionDenied(_) => Some(ConnectionProblem::PermissionDenied),
            _ if self.is_connection_lost() => Some(ConnectionProblem::Unreachable),
            _ => None,
        }
    }

    /// Sorts an error met while connecting to `url` (already redacted):
    /// refused credentials, TLS, ACL refusals, and the rest as
    /// [`Error::Connection`].
    pub(crate) fn from_connect(url: &str, e: redis::RedisError) -> Self {
        if let Some(reason) = crate::tls::describe_failure(&e) {
            return Error::Tls {
                url: url.to_string(),
                reason,
            };
        }
        if e.kind() == redis::ErrorKind::AuthenticationFailed
            || matches!(e.code(), Some("WRONGPASS" | "NOAUTH"))
        {
            let reason = match e.detail() {
                Some(d) => format!("{} {d}", e.code().unwrap_or("")).trim().to_string(),
                None => e.to_string(),
            };
            return Error::AuthenticationFailed {
                url: url.to_string(),
                reason,
            };
        }
        match Error::from(e) {
            // A client-configuration error about TLS (say, `#insecure`,
            // which this build refuses) is a TLS setup error.
            Error::Redis(e)
                if e.kind() == redis::ErrorKind::InvalidClientConfig && mentions_tls(&e) =>
            {
                Error::TlsSetup(format!("{url}: {e}"))
            }
            Error::Redis(e) => Error::Connection {
                url: url.to_string(),
                source: e,
            },
            other => other,
        }
    }
}

fn mentions_tls(e: &redis::RedisError) -> bool {
    let text = e.to_string().to_lowercase();
    text.contains("tls") || text.contains("certificate") || text.contains("insecure")
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

/// Query parameters whose values are secrets (compared case-insensitively,
/// `-` read as `_`): redis-rs's `pass`/`password` for `unix://` URLs, and
/// the usual API-key and token names of HTTP services.
const SECRET_PARAMS: &[&str] = &[
    "pass",
    "password",
    "passwd",
    "pwd",
    "secret",
    "token",
    "access_token",
    "auth",
    "authorization",
    "key",
    "api_key",
    "apikey",
    "client_secret",
    "sig",
    "signature",
    "credential",
    "credentials",
];

fn is_secret_param(name: &str) -> bool {
    let name = name.to_ascii_lowercase().replace('-', "_");
    SECRET_PARAMS.contains(&name.as_str())
        || name.ends_with("_token")
        || name.ends_with("_key")
        || name.ends_with("_secret")
        || name.ends_with("_password")
}

/// Masks every secret in a URL so it can be logged or shown: the password
/// of the userinfo (and a user name that stands alone, as tokens do in
/// `https://<token>@host`), and the values of secret query parameters
/// (`unix:///run/redis.sock?pass=...`, `?api_key=...`, `?token=...`).
///
/// `redis://user:secret@host:6379/0` becomes `redis://user:***@host:6379/0`.
/// Input that is not a URL is returned with everything before the last `@`
/// masked, and secret query values masked, which never leaks a secret
/// either.
pub fn redact_url(url: &str) -> String {
    // A URL without a host whose text has an `@` is a typo such as
    // `redis:/:secret@host` (parsed as a path): mask it as text.
    let parsed = url::Url::parse(url)
        .ok()
        .filter(|p| p.host().is_some() || !url.contains('@'));
    match parsed {
        Some(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            } else if !parsed.username().is_empty() {
                let _ = parsed.set_username("***");
            }
            if parsed.query().is_some() {
                let pairs: Vec<(String, String)> = parsed
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if is_secret_param(&k) {
                            "***".to_string()
                        } else {
                            v.into_owned()
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                parsed.query_pairs_mut().clear().extend_pairs(pairs);
            }
            parsed.to_string()
        }
        None => {
            let tail = match url.rfind('@') {
                Some(at) => format!("***{}", &url[at..]),
                None => url.to_string(),
            };
            mask_query_text(&tail)
        }
    }
}

/// Masks `name=value` pairs with secret names in text that is not a
/// parseable URL.
fn mask_query_text(text: &str) -> String {
    let Some(q) = text.find('?') else {
        return text.to_string();
    };
    let (head, query) = text.split_at(q + 1);
    let parts: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if is_secret_param(k) => format!("{k}=***"),
            _ => pair.to_string(),
        })
        .collect();
    format!("{head}{}", parts.join("&"))
}

/// [`redact_url`] applied to every URL (`scheme://...`) inside free text,
/// such as an error message that quotes the URL it failed on.
pub fn redact_urls_in(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(sep) = rest.find("://") {
        // The scheme: letters, digits, + - . right before "://".
        let start = rest[..sep]
            .char_indices()
            .rev()
            .take_while(|(_, c)| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            .last()
            .map_or(sep, |(i, _)| i);
        let end = rest[sep..]
            .find(|c: char| {
                c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`' | ')' | ']' | ',')
            })
            .map_or(rest.len(), |e| sep + e);
        out.push_str(&rest[..start]);
        if start == sep {
            // "://" with no scheme: not a URL; keep it and go on.
            out.push_str("://");
            rest = &rest[sep + 3..];
            continue;
        }
        out.push_str(&redact_url(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
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
        // Typos that parse as a URL without a host.
        for typo in [
            "redis:/:hunter2@localhost:6379",
            "redis::hunter2@localhost",
            "redis:hunter2@localhost",
        ] {
            let r = redact_url(typo);
            assert!(!r.contains("hunter2") && r.contains("localhost"), "{r}");
        }
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
    fn secret_query_parameters_and_lone_tokens_are_masked() {
        let r = redact_url("unix:///run/redis.sock?db=2&pass=hunter2");
        assert!(!r.contains("hunter2") && r.contains("db=2"), "{r}");
        let r = redact_url("redis+unix:///run/redis.sock?password=hunter2");
        assert!(!r.contains("hunter2"), "{r}");
        let r = redact_url("http://127.0.0.1:8000/v1?api_key=hunter2&model=m&X-Auth-Token=t0k3n");
        assert!(
            !r.contains("hunter2") && !r.contains("t0k3n") && r.contains("model=m"),
            "{r}"
        );
        let r = redact_url("https://ghp_hunter2@example.com/x");
        assert!(!r.contains("hunter2"), "{r}");
        let r = redact_url("unix:///sock?pass=hunter2 with space");
        assert!(!r.contains("hunter2"), "{r}");
    }

    #[test]
    fn urls_inside_text_are_redacted_and_the_rest_kept() {
        let text = "upstream http://u:hunter2@h:1/g?token=t0k3n failed (see https://ok.example/doc), redis unix:///s?pass=pw9";
        let r = redact_urls_in(text);
        for secret in ["hunter2", "t0k3n", "pw9"] {
            assert!(!r.contains(secret), "{r}");
        }
        assert!(
            r.starts_with("upstream http://u:***@h:1/g?token=***"),
            "{r}"
        );
        assert!(r.contains("(see https://ok.example/doc), redis"), "{r}");
        assert_eq!(
            redact_urls_in("no url here :// at all"),
            "no url here :// at all"
        );
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
