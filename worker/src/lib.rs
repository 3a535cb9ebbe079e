//! The rtq worker binary's library: configuration ([`Config`]), logging,
//! the built-in handlers (`mock` for now) and [`run`].

mod mock;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use rtq_core::{redact_url, Worker, WorkerConfig};

pub use mock::{MockHandler, MockSettings};

/// Which handler serves the tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum HandlerKind {
    /// A simulated model: latency, tokens per second, output size, errors.
    Mock,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// rtq-worker: pulls inference tasks from an rtq queue in Redis, runs them
/// and pushes results and streamed chunks back. Every flag has an RTQ_*
/// environment variable.
#[derive(Clone, Debug, Parser)]
#[command(version, about)]
pub struct Config {
    /// Redis URL, e.g. redis://:password@host:6379/0 (rediss:// for TLS).
    #[arg(
        long,
        env = "RTQ_REDIS_URL",
        default_value = "redis://127.0.0.1:6379/",
        hide_env_values = true
    )]
    pub redis: String,
    /// Queue to serve.
    #[arg(long, env = "RTQ_QUEUE", default_value = "default")]
    pub queue: String,
    /// Tasks run at once (slots).
    #[arg(long, env = "RTQ_CONCURRENCY", default_value_t = 1)]
    pub concurrency: usize,
    /// Handler that runs the tasks.
    #[arg(long, env = "RTQ_HANDLER", value_enum, default_value = "mock")]
    pub handler: HandlerKind,
    /// Lease in ms: if no heartbeat renews it, the worker counts as dead
    /// and its tasks are requeued.
    #[arg(long, env = "RTQ_LEASE_MS", default_value_t = 5000)]
    pub lease_ms: u64,
    /// On SIGTERM/SIGINT, seconds running tasks may take before they are
    /// handed back to the queue.
    #[arg(long, env = "RTQ_GRACE_SECS", default_value_t = 30)]
    pub grace_secs: u64,
    /// Labels shown in the console, as key=value (repeatable), e.g. gpu=A100.
    #[arg(long = "label", env = "RTQ_LABELS", value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Worker id (default: host-pid-random).
    #[arg(long, env = "RTQ_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Log format.
    #[arg(long, env = "RTQ_LOG_FORMAT", value_enum, default_value = "human")]
    pub log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "RTQ_LOG", default_value = "info")]
    pub log: String,
    /// Mock: fixed latency before the first token, in ms.
    #[arg(long, env = "RTQ_MOCK_LATENCY_MS", default_value_t = 0)]
    pub mock_latency_ms: u64,
    /// Mock: tokens per second (0 = as fast as possible).
    #[arg(long, env = "RTQ_MOCK_TOKENS_PER_SEC", default_value_t = 0.0)]
    pub mock_tokens_per_sec: f64,
    /// Mock: tokens per task unless the input's "max_tokens" says otherwise.
    #[arg(long, env = "RTQ_MOCK_TOKENS", default_value_t = 16)]
    pub mock_tokens: u64,
    /// Mock: fraction of tasks that fail (0.0 - 1.0).
    #[arg(long, env = "RTQ_MOCK_ERROR_RATE", default_value_t = 0.0)]
    pub mock_error_rate: f64,
}

/// Sets up the tracing subscriber (binaries only).
pub fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match config.log_format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn parse_labels(raw: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    raw.iter()
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .with_context(|| format!("label {l:?} is not key=value"))
        })
        .collect()
}

/// Runs the worker until SIGTERM or SIGINT, then drains.
///
/// # Errors
/// Bad configuration, or Redis unreachable at start (password redacted).
pub async fn run(config: Config) -> anyhow::Result<()> {
    let mut wc = WorkerConfig::new(&config.queue)
        .slots(config.concurrency)
        .lease(Duration::from_millis(config.lease_ms.max(100)))
        .grace(Duration::from_secs(config.grace_secs))
        .handler_name(format!("{:?}", config.handler).to_lowercase());
    wc.labels = parse_labels(&config.labels)?;
    if let Some(id) = &config.worker_id {
        wc = wc.worker_id(id);
    }
    let redacted = redact_url(&config.redis);
    let worker = Worker::connect(&config.redis, wc)
        .await
        .with_context(|| format!("starting the worker against {redacted}"))?;
    tracing::info!(worker_id = worker.id(), redis = %redacted, queue = %config.queue, "connected");
    let handler = match config.handler {
        HandlerKind::Mock => Arc::new(MockHandler::new(MockSettings {
            latency: Duration::from_millis(config.mock_latency_ms),
            tokens_per_sec: config.mock_tokens_per_sec,
            tokens: config.mock_tokens,
            error_rate: config.mock_error_rate.clamp(0.0, 1.0),
        })),
    };
    worker.run(handler, shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
