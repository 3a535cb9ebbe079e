//! The gateway's command line: every flag has an `RTQ_GATEWAY_*` (or
//! `RTQ_*` for the Redis connection) environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Log output format.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// Helper commands.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum Command {
    /// Reads an API key on stdin and prints its key-file line (the key's
    /// SHA-256; the key itself is never stored).
    HashKey {
        /// Queues the key may use (comma-separated, or * for all).
        #[arg(long, default_value = "*")]
        queues: String,
    },
}

/// rtq-gateway: a stateless HTTP server in front of rtq queues. It serves
/// an OpenAI-compatible API (`/v1/chat/completions`, `/v1/completions`,
/// `/v1/models`; the model name selects the queue, served by workers with
/// the `openai` handler) and a task API (`/v1/queues/{queue}/tasks`). Run
/// as many replicas as you like behind a load balancer. Every flag has an
/// environment variable.
// No `Debug`: the configuration holds secrets (the Redis URL may carry a
// password), and a derived `Debug` would print them whole.
#[derive(Clone, Parser)]
#[command(name = "rtq-gateway", version, subcommand_negates_reqs = true)]
pub struct Config {
    /// A helper command instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Redis URL (required; there is no default Redis), e.g.
    /// redis://:password@host:6379/0 (rediss:// for TLS, unix:///path for
    /// a socket); a Redis Cluster: redis+cluster://:password@host1:6379,host2:6379
    /// (rediss+cluster:// for TLS), or several comma-separated seed URLs.
    #[arg(
        long,
        env = "RTQ_REDIS_URL",
        value_name = "URL",
        hide_env_values = true,
        required = true
    )]
    pub redis: Option<String>,
    /// CA certificate(s), PEM, that signed the Redis server's certificate
    /// (rediss:// URLs); default: the system's roots.
    #[arg(long, env = "RTQ_TLS_CA", value_name = "FILE")]
    pub redis_tls_ca: Option<PathBuf>,
    /// Client certificate, PEM, for a Redis that requires one (mutual TLS,
    /// `tls-auth-clients yes`); needs --redis-tls-key. (--tls-cert is the
    /// gateway's own HTTPS certificate.)
    #[arg(
        long,
        env = "RTQ_TLS_CERT",
        value_name = "FILE",
        requires = "redis_tls_key"
    )]
    pub redis_tls_cert: Option<PathBuf>,
    /// Private key, PEM, of --redis-tls-cert.
    #[arg(
        long,
        env = "RTQ_TLS_KEY",
        value_name = "FILE",
        requires = "redis_tls_cert"
    )]
    pub redis_tls_key: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "RTQ_GATEWAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// API key file: one key per line, `sha256:<64 hex digits of the key's
    /// SHA-256> queues=<q1,q2|*> [routes=<openai,tasks>] [rate=<requests
    /// per second>] [burst=<n>] [concurrency=<n>] [wait_queues=<n>]
    /// [max_body=<bytes>] [name=<label>]`; `#` starts a comment.
    /// Print a line with `rtq-gateway hash-key` (reads the key on stdin).
    /// Without a key file (and without --api-keys-env), the gateway runs
    /// without authentication and says so at start-up.
    #[arg(long, env = "RTQ_GATEWAY_API_KEYS", value_name = "FILE")]
    pub api_keys: Option<PathBuf>,
    /// Environment variable holding key lines in the key-file format
    /// (separated by newlines or `;`), read in addition to --api-keys.
    #[arg(long, env = "RTQ_GATEWAY_API_KEYS_ENV", value_name = "VAR")]
    pub api_keys_env: Option<String>,
    /// TLS certificate chain, PEM; with --tls-key the gateway serves HTTPS.
    #[arg(
        long,
        env = "RTQ_GATEWAY_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key, PEM, of --tls-cert.
    #[arg(
        long,
        env = "RTQ_GATEWAY_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// Largest request body accepted, in bytes (a larger one gets 413; a
    /// larger Content-Length is refused before any of the body is read).
    #[arg(long, env = "RTQ_GATEWAY_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Seconds a client may take to send the request headers; also how
    /// long an idle keep-alive connection stays open, and the TLS
    /// handshake's limit.
    #[arg(long, env = "RTQ_GATEWAY_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    pub header_timeout_secs: u64,
    /// Seconds from the request head to the last byte of its body: a total
    /// deadline, not an idle timeout (408 after).
    #[arg(long, env = "RTQ_GATEWAY_BODY_TIMEOUT_SECS", default_value_t = 30)]
    pub body_timeout_secs: u64,
    /// Deadline given to tasks whose request names none, in seconds (0 =
    /// none): a task still queued or running then ends, and the caller gets
    /// 504 naming where it was.
    #[arg(long, env = "RTQ_GATEWAY_TASK_TIMEOUT_SECS", default_value_t = 300)]
    pub task_timeout_secs: u64,
    /// Longest a request waits for its task, in seconds: a `wait=true`
    /// submit or a non-streaming completion for the result, a streaming
    /// completion for its first token. Then it answers 504 wait_timed_out
    /// and the task is cancelled (unless a submit named the id of a task
    /// that existed already: that one goes on). Also caps `wait_ms` of
    /// result reads, which never cancel.
    #[arg(long, env = "RTQ_GATEWAY_MAX_WAIT_SECS", default_value_t = 600)]
    pub max_wait_secs: u64,
    /// On SIGTERM/SIGINT, seconds open requests and streams may take to
    /// finish; after that the tasks the gateway owns (completions, and
    /// wait/stream submits without an id) are cancelled and the process
    /// exits. Followed tasks are never cancelled. A second signal stops at
    /// once.
    #[arg(long, env = "RTQ_GATEWAY_GRACE_SECS", default_value_t = 30)]
    pub grace_secs: u64,
    /// Seconds between SSE keep-alive comments on quiet streams.
    #[arg(long, env = "RTQ_GATEWAY_KEEPALIVE_SECS", default_value_t = 15)]
    pub keepalive_secs: u64,
    /// Seconds `Retry-After` tells a caller to wait after a full queue or a
    /// rate limit.
    #[arg(long, env = "RTQ_GATEWAY_RETRY_AFTER_SECS", default_value_t = 1)]
    pub retry_after_secs: u64,
    /// Accept submits to queues that do not exist yet, creating them. By
    /// default a submit to a queue no worker ever served (and nobody
    /// created) is 404 `queue_not_found`, so a typo or a caller cannot
    /// create queues (as `rtq submit` without `--create`).
    #[arg(long, env = "RTQ_GATEWAY_CREATE_QUEUES")]
    pub create_queues: bool,
    /// Most queues the gateway waits on at once (each holds one blocking
    /// Redis connection while a `wait`/`stream` or completion on it is
    /// open; idle ones close after a minute). Beyond it, a new wait is 503
    /// `too_many_queues`.
    #[arg(long, env = "RTQ_GATEWAY_MAX_REPLY_READERS", default_value_t = rtq_core::DEFAULT_MAX_REPLY_READERS as u64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_reply_readers: u64,
    /// Most distinct queues one API key's open waits and streams may be on
    /// at once (each such queue holds one of the --max-reply-readers that
    /// every key shares), for keys whose line has no `wait_queues=`. Over
    /// it: 429 wait_queues_limit_exceeded. More waits on a queue the key
    /// waits on already are not limited by it (see `concurrency=`).
    #[arg(long, env = "RTQ_GATEWAY_KEY_WAIT_QUEUES", default_value_t = crate::auth::DEFAULT_WAIT_QUEUES as u64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub key_wait_queues: u64,
    /// Milliseconds the list of live workers (models, paused queues) is
    /// trusted; an older one is still used while it is read again in the
    /// background. A refusal for "no live worker" or "paused" is always
    /// checked against Redis first.
    #[arg(long, env = "RTQ_GATEWAY_CATALOG_TTL_MS", default_value_t = 2000)]
    pub catalog_ttl_ms: u64,
    /// Milliseconds the list of live workers may be served while it cannot
    /// be read again (Redis down): past it, `GET /v1/models` and model
    /// lookups answer 503 redis_unavailable naming its age, instead of a
    /// list that may name queues nobody serves any more. At least
    /// --catalog-ttl-ms [default: 10000, or --catalog-ttl-ms if longer].
    /// `GET /v1/models` says the list's age in the `x-rtq-catalog-age-ms`
    /// header.
    #[arg(long, env = "RTQ_GATEWAY_CATALOG_MAX_STALE_MS")]
    pub catalog_max_stale_ms: Option<u64>,
    /// Log format.
    #[arg(long, env = "RTQ_LOG_FORMAT", value_enum, default_value = "human")]
    pub log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "RTQ_LOG", default_value = "info")]
    pub log: String,
}

impl Config {
    /// The header read timeout.
    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs(self.header_timeout_secs.max(1))
    }
    /// The body read timeout.
    pub fn body_timeout(&self) -> Duration {
        Duration::from_secs(self.body_timeout_secs.max(1))
    }
    /// The default task deadline, if any.
    pub fn task_timeout(&self) -> Option<Duration> {
        (self.task_timeout_secs > 0).then(|| Duration::from_secs(self.task_timeout_secs))
    }
    /// How long the catalog is trusted, and how long it may be served
    /// while it cannot be read again.
    pub fn catalog_limits(&self) -> crate::catalog::CatalogLimits {
        let ttl = Duration::from_millis(self.catalog_ttl_ms);
        let max_stale = match self.catalog_max_stale_ms {
            Some(ms) => Duration::from_millis(ms),
            None => crate::catalog::CatalogLimits::default().max_stale,
        };
        crate::catalog::CatalogLimits {
            ttl,
            max_stale: max_stale.max(ttl),
        }
    }
    /// The Redis TLS settings of `--redis-tls-ca`, `--redis-tls-cert` and
    /// `--redis-tls-key` (the files are read here, as the worker and the
    /// console read theirs).
    ///
    /// # Errors
    /// [`rtq_core::Error::TlsSetup`] naming a file that cannot be read.
    pub fn redis_tls(&self) -> Result<rtq_core::TlsConfig, rtq_core::Error> {
        rtq_core::TlsConfig::from_files(
            self.redis_tls_ca.as_deref(),
            self.redis_tls_cert.as_deref(),
            self.redis_tls_key.as_deref(),
        )
    }

    /// The longest synchronous wait.
    pub fn max_wait(&self) -> Duration {
        Duration::from_secs(self.max_wait_secs.max(1))
    }

    /// Cross-field checks clap cannot express; the message says what to set.
    ///
    /// # Errors
    /// A message for the operator.
    pub fn validate(&self) -> Result<(), String> {
        let redis = self.redis.as_deref().unwrap_or("");
        if redis.trim().is_empty() {
            return Err("--redis (RTQ_REDIS_URL) is empty; give the Redis URL".into());
        }
        if self.max_body_bytes < 1024 {
            return Err("--max-body-bytes must be at least 1024".into());
        }
        if let Some(max_stale) = self.catalog_max_stale_ms {
            if max_stale < self.catalog_ttl_ms {
                return Err(format!(
                    "--catalog-max-stale-ms ({max_stale}) must be at least --catalog-ttl-ms ({}): \
                     a list is read again only once it is older than the TTL",
                    self.catalog_ttl_ms
                ));
            }
        }
        if self.keepalive_secs == 0 {
            return Err("--keepalive-secs must be at least 1".into());
        }
        Ok(())
    }
}
