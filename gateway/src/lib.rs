//! # rtq-gateway: HTTP in front of rtq queues
//!
//! A stateless HTTP server that lets any language reach the queues without
//! a Redis client: an OpenAI-compatible API (the official SDKs work with
//! only `base_url` changed) and a task API for other work. Any number of
//! replicas can run behind a load balancer; each holds one shared Redis
//! connection plus one blocking reader per queue it serves, however many
//! streams are open. The HTTP API is specified in `gateway/API.md`.
//!
//! # Layout
//! - [`config`]: the command line ([`Config`]).
//! - [`auth`]: API keys (hashed), queue and route grants, rate,
//!   concurrency and body limits, each key's share of the queues waited
//!   on.
//! - [`body`]: request body limits (413 on a declared size over the
//!   limit, a total deadline for the body).
//! - [`catalog`]: live queues, workers and models (cached), refusals for
//!   paused or unserved queues.
//! - [`error`]: [`error::ApiError`], OpenAI's error shape, the mapping of
//!   rtq errors to statuses.
//! - [`openai`]: `/v1/chat/completions`, `/v1/completions`.
//! - `openai_stream`: their streaming answers (the head does not wait
//!   for the first token).
//! - [`tasks`]: the task API under `/v1/queues/{queue}/tasks`.
//! - [`task_sse`]: its server-sent events; ids carry the attempt, resuming
//!   never splices two attempts.
//! - [`app`]: shared state, the router, health, readiness, metrics, models.
//! - [`metrics`]: Prometheus metrics and the request middleware.
//! - [`open`]: tasks of open responses, owned or followed (gauge; shutdown
//!   cancels the owned ones).
//! - [`server`]: accept loop, TLS, header timeout, graceful shutdown.

pub mod app;
pub mod auth;
pub mod body;
pub mod catalog;
pub mod config;
pub mod error;
pub mod metrics;
pub mod open;
pub mod openai;
pub(crate) mod openai_stream;
pub mod server;
pub mod task_sse;
pub mod tasks;

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use rtq_core::{redact_url, Client, ClientConfig};
use tokio_util::sync::CancellationToken;

pub use config::{Command, Config, LogFormat};

/// Sets up the tracing subscriber (binaries only).
pub fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Loads the API keys of `--api-keys` and `--api-keys-env`.
///
/// # Errors
/// An unreadable file, an unset variable, or a bad entry (named).
pub fn load_keys(config: &Config) -> anyhow::Result<auth::KeyStore> {
    let mut keys = auth::KeyStore::default().default_wait_queues(config.key_wait_queues as usize);
    if let Some(path) = &config.api_keys {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the API key file {}", path.display()))?;
        keys.parse(&text, &path.display().to_string())
            .map_err(anyhow::Error::msg)?;
    }
    if let Some(var) = &config.api_keys_env {
        let text = std::env::var(var)
            .with_context(|| format!("--api-keys-env names {var}, which is not set"))?;
        keys.parse(&text, var).map_err(anyhow::Error::msg)?;
    }
    Ok(keys)
}

/// SIGTERM and SIGINT, one after the other.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers (before the first signal can arrive).
    fn new() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        Self {
            term: signal(SignalKind::terminate()).expect("SIGTERM handler"),
            int: signal(SignalKind::interrupt()).expect("SIGINT handler"),
        }
    }

    /// Resolves on the next SIGTERM or SIGINT.
    async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {},
            _ = self.int.recv() => {},
        }
    }
}

/// Runs the gateway until SIGTERM/SIGINT, then drains.
///
/// # Errors
/// Bad key files or TLS files, an unreachable Redis at start-up, a listen
/// address in use.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let redis = config
        .redis
        .clone()
        .context("--redis (RTQ_REDIS_URL) is required")?;
    let keys = load_keys(&config)?;
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(server::tls_acceptor(cert, key)?),
        _ => None,
    };
    let redis_tls = config.redis_tls().context("Redis TLS settings")?;
    let client_config = ClientConfig::default()
        .tls(redis_tls)
        .max_reply_readers(config.max_reply_readers as usize);
    let client = Client::connect_with(&redis, client_config)
        .await
        .with_context(|| format!("cannot connect to Redis at {}", redact_url(&redis)))?;
    if keys.is_open() {
        tracing::warn!("no API keys configured (--api-keys): every caller may use every queue");
    } else {
        tracing::info!(keys = keys.len(), "API keys loaded");
    }
    let settings = app::Settings {
        task_timeout: config.task_timeout(),
        max_wait: config.max_wait(),
        retry_after: Duration::from_secs(config.retry_after_secs.max(1)),
        keepalive: Duration::from_secs(config.keepalive_secs),
        max_body_bytes: config.max_body_bytes,
        body_timeout: config.body_timeout(),
        create_queues: config.create_queues,
    };
    let state = app::AppState::new(client, keys, settings, config.catalog_limits());
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr().context("listen address")?;
    // Before the address is printed: a signal sent as soon as it is known
    // must find the handlers.
    let mut signals = Signals::new();
    let scheme = if tls.is_some() { "https" } else { "http" };
    // The one line on stdout: scripts and tests read the address here
    // (useful with --listen 127.0.0.1:0).
    println!("rtq-gateway listening on {scheme}://{addr}");
    tracing::info!(%addr, redis = %redact_url(&redis), "rtq-gateway started");
    let shutdown = CancellationToken::new();
    let force = CancellationToken::new();
    let (trigger, forced) = (shutdown.clone(), force.clone());
    let draining = std::sync::Arc::clone(&state);
    tokio::spawn(async move {
        signals.next().await;
        draining.draining.store(true, Ordering::Relaxed);
        trigger.cancel();
        // A second signal during the grace period: stop at once.
        signals.next().await;
        forced.cancel();
    });
    let open = std::sync::Arc::clone(&state.open);
    let router = app::router(state);
    server::serve(
        listener,
        router,
        server::ServeOptions {
            tls,
            header_timeout: config.header_timeout(),
            grace: Duration::from_secs(config.grace_secs),
        },
        open,
        shutdown,
        force,
    )
    .await;
    Ok(())
}

/// `rtq-gateway hash-key`: reads a key on stdin, prints its key-file line
/// (checked by the key-file parser first, so the line always loads).
///
/// # Errors
/// An empty key, or `--queues` that makes no valid line (empty, spaces).
pub fn hash_key_command(queues: &str) -> anyhow::Result<()> {
    // Before reading the key: a bad --queues needs no key to be refused.
    // `#` and `;` would cut the printed line short when it is loaded.
    if queues.contains(['#', ';']) || queues.contains(char::is_whitespace) {
        anyhow::bail!("--queues {queues:?}: queue names cannot hold spaces, `#` or `;`");
    }
    auth::KeyStore::default()
        .parse(
            &format!("sha256:{} queues={queues}", "0".repeat(64)),
            "--queues",
        )
        .map_err(|e| anyhow::anyhow!("--queues {queues:?} makes no valid key line: {e}"))?;
    let mut key = String::new();
    std::io::stdin()
        .read_line(&mut key)
        .context("cannot read the key from stdin")?;
    let key = key.trim();
    if key.is_empty() {
        anyhow::bail!("no key on stdin (e.g. `echo -n $KEY | rtq-gateway hash-key`)");
    }
    println!("sha256:{} queues={queues}", auth::hash_key(key));
    Ok(())
}
