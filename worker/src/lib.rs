//! The rtq worker binary's library: configuration ([`Config`]), logging,
//! the built-in handlers and [`run`].
//!
//! Layout: `handlers` (http, openai, exec), `mock` (simulated model),
//! `upstream` (health probe and intake switching), `metrics` (Prometheus
//! registry and the timing handler wrapper), `probes` (/healthz, /readyz,
//! /metrics), this file (configuration and wiring).

pub mod handlers;
mod metrics;
mod mock;
mod probes;
mod upstream;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use rtq_core::{redact_url, Worker, WorkerConfig};
use tokio_util::sync::CancellationToken;

use handlers::exec::ExecHandler;
use handlers::http::HttpHandler;
use handlers::openai::OpenAiHandler;
use handlers::Serve;
use metrics::{Instrumented, Metrics};
use upstream::UpstreamState;

pub use mock::{MockHandler, MockSettings};

/// Which handler serves the tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum HandlerKind {
    /// A simulated model: latency, tokens per second, output size, errors.
    Mock,
    /// POST the input to --upstream-url; JSON, SSE or NDJSON replies.
    Http,
    /// An OpenAI-compatible server at --upstream-url (vLLM, TGI, Ollama, llama.cpp).
    Openai,
    /// A long-lived child process (--exec-command) speaking JSON lines.
    Exec,
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
    /// Redis URL (required; there is no default Redis), e.g.
    /// redis://:password@host:6379/0 (rediss:// for TLS).
    #[arg(
        long,
        env = "RTQ_REDIS_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub redis: Option<String>,
    /// Queue to serve.
    #[arg(long, env = "RTQ_QUEUE", default_value = "default")]
    pub queue: String,
    /// Tasks run at once (slots).
    #[arg(long, env = "RTQ_CONCURRENCY", default_value_t = 1)]
    pub concurrency: usize,
    /// Handler that runs the tasks.
    #[arg(long, env = "RTQ_HANDLER", value_enum, default_value = "mock")]
    pub handler: HandlerKind,
    /// Upstream URL: the endpoint for --handler http, the server base URL
    /// (e.g. http://127.0.0.1:8000) for --handler openai.
    #[arg(long, env = "RTQ_UPSTREAM_URL")]
    pub upstream_url: Option<String>,
    /// Health probe URL (GET, 2xx = up). While it fails the worker takes no
    /// new tasks. Default for openai: <upstream>/v1/models; none for http.
    #[arg(long, env = "RTQ_HEALTH_URL")]
    pub health_url: Option<String>,
    /// Health probe period in ms.
    #[arg(long, env = "RTQ_HEALTH_INTERVAL_MS", default_value_t = 2000)]
    pub health_interval_ms: u64,
    /// Upstream request timeout in seconds (0 = none; task deadlines still apply).
    #[arg(long, env = "RTQ_UPSTREAM_TIMEOUT_SECS", default_value_t = 0)]
    pub upstream_timeout_secs: u64,
    /// Model name for --handler openai when the task input names none.
    #[arg(long, env = "RTQ_OPENAI_MODEL")]
    pub openai_model: Option<String>,
    /// Command for --handler exec, run with `sh -c` (e.g. "python3 infer.py").
    #[arg(long, env = "RTQ_EXEC_COMMAND")]
    pub exec_command: Option<String>,
    /// Address of /healthz, /readyz and /metrics, or "off".
    #[arg(long, env = "RTQ_PROBE_ADDR", default_value = "0.0.0.0:9090")]
    pub probe_addr: String,
    /// Lease in ms: if no heartbeat renews it, the worker counts as dead
    /// and its tasks are requeued.
    #[arg(long, env = "RTQ_LEASE_MS", default_value_t = 5000)]
    pub lease_ms: u64,
    /// On SIGTERM/SIGINT, seconds running tasks may take before they are
    /// handed back to the queue.
    #[arg(long, env = "RTQ_GRACE_SECS", default_value_t = 25)]
    pub grace_secs: u64,
    /// When a task is cancelled, expires or is reassigned, ms its handler
    /// may take to stop on its own before it is dropped. The built-in
    /// handlers stop at once; this bounds custom ones.
    #[arg(long, env = "RTQ_CANCEL_GRACE_MS", default_value_t = 1000)]
    pub cancel_grace_ms: u64,
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

impl Config {
    /// Cross-field checks clap cannot express; the message says what to set.
    ///
    /// # Errors
    /// A message for the operator.
    pub fn validate(&self) -> Result<(), String> {
        if self
            .redis
            .as_deref()
            .filter(|url| !url.is_empty())
            .is_none()
        {
            return Err(
                "--redis <URL> (or RTQ_REDIS_URL) is required: the Redis that holds \
                 the queue, e.g. redis://:password@host:6379/0"
                    .into(),
            );
        }
        match self.handler {
            HandlerKind::Http | HandlerKind::Openai if self.upstream_url.is_none() => Err(format!(
                "--handler {} needs --upstream-url (or RTQ_UPSTREAM_URL)",
                self.handler_name()
            )),
            HandlerKind::Exec if self.exec_command.is_none() => {
                Err("--handler exec needs --exec-command (or RTQ_EXEC_COMMAND)".into())
            }
            _ if self.probe_addr != "off"
                && self.probe_addr.parse::<std::net::SocketAddr>().is_err() =>
            {
                Err(format!(
                    "--probe-addr {:?} is not host:port or \"off\"",
                    self.probe_addr
                ))
            }
            _ => Ok(()),
        }
    }

    fn handler_name(&self) -> String {
        format!("{:?}", self.handler).to_lowercase()
    }
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
    config.validate().map_err(anyhow::Error::msg)?;
    let redis_url = config.redis.clone().unwrap_or_default();
    let mut wc = WorkerConfig::new(&config.queue)
        .slots(config.concurrency)
        .lease(Duration::from_millis(config.lease_ms.max(100)))
        .grace(Duration::from_secs(config.grace_secs))
        .handler_name(config.handler_name());
    wc.cancel_grace = Duration::from_millis(config.cancel_grace_ms);
    wc.labels = parse_labels(&config.labels)?;
    if let Some(id) = &config.worker_id {
        wc = wc.worker_id(id);
    }
    let redacted = redact_url(&redis_url);
    let probe_listener = match config.probe_addr.as_str() {
        "off" => None,
        addr => Some(
            probes::bind(addr.parse()?)
                .await
                .with_context(|| format!("cannot listen on --probe-addr {addr}"))?,
        ),
    };
    let worker = Worker::connect(&redis_url, wc)
        .await
        .with_context(|| format!("starting the worker against {redacted}"))?;
    tracing::info!(worker_id = worker.id(), redis = %redacted, queue = %config.queue, handler = %config.handler_name(), "connected");

    let stop = CancellationToken::new();
    let probe_configured = config.health_url.is_some() || config.handler == HandlerKind::Openai;
    let retry_after =
        (!probe_configured).then(|| Duration::from_millis(config.health_interval_ms.max(50)));
    // The exec handler's tasks cannot run before its child does: intake
    // stays off until the supervisor reports the child running.
    let upstream = if config.handler == HandlerKind::Exec {
        UpstreamState::awaiting_child(worker.intake(), retry_after)
    } else {
        UpstreamState::new(worker.intake(), retry_after)
    };
    let mut exec_supervisor = None;
    let mut http = reqwest::Client::builder().connect_timeout(Duration::from_secs(5));
    if config.upstream_timeout_secs > 0 {
        http = http.timeout(Duration::from_secs(config.upstream_timeout_secs));
    }
    let http = http.build().context("building the HTTP client")?;
    let url = config.upstream_url.clone().unwrap_or_default();
    let (handler, health_url): (Arc<dyn Serve>, Option<String>) = match config.handler {
        HandlerKind::Mock => (
            Arc::new(MockHandler::new(MockSettings {
                latency: Duration::from_millis(config.mock_latency_ms),
                tokens_per_sec: config.mock_tokens_per_sec,
                tokens: config.mock_tokens,
                error_rate: config.mock_error_rate.clamp(0.0, 1.0),
            })),
            config.health_url.clone(),
        ),
        HandlerKind::Http => (
            Arc::new(HttpHandler::new(http.clone(), url, Arc::clone(&upstream))),
            config.health_url.clone(),
        ),
        HandlerKind::Openai => (
            Arc::new(OpenAiHandler::new(
                http.clone(),
                url.clone(),
                config.openai_model.clone(),
                Arc::clone(&upstream),
            )),
            Some(config.health_url.clone().unwrap_or_else(|| {
                format!(
                    "{}/v1/models",
                    url.trim_end_matches('/').trim_end_matches("/v1")
                )
            })),
        ),
        HandlerKind::Exec => {
            let (handler, supervisor) = ExecHandler::start(
                config.exec_command.clone().unwrap_or_default(),
                Arc::clone(&upstream),
                stop.clone(),
            );
            exec_supervisor = Some(supervisor);
            (Arc::new(handler), config.health_url.clone())
        }
    };
    if let Some(health_url) = health_url {
        tokio::spawn(upstream::probe_loop(
            http.clone(),
            health_url,
            Duration::from_millis(config.health_interval_ms.max(50)),
            Arc::clone(&upstream),
            stop.clone(),
        ));
    }
    let metrics = Arc::new(Metrics::new(config.concurrency));
    if let Some(listener) = probe_listener {
        tracing::info!(addr = %listener.local_addr()?, "probe endpoint: /healthz /readyz /metrics");
        tokio::spawn(probes::serve(
            listener,
            probes::ProbeState {
                status: worker.status(),
                upstream: Arc::clone(&upstream),
                metrics: Arc::clone(&metrics),
            },
            stop.clone(),
        ));
    }
    let handler = Arc::new(Instrumented::new(handler, metrics));
    let result = worker.run(handler, shutdown_signal()).await;
    stop.cancel();
    if let Some(supervisor) = exec_supervisor {
        // The child's process group must be gone before this process is.
        let _ = supervisor.await;
    }
    result?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_trimmed_key_value_pairs_and_anything_else_is_refused() {
        let raw = ["gpu = A100", "", "zone=eu=1"].map(String::from);
        let labels = parse_labels(&raw).unwrap();
        assert_eq!(
            labels,
            BTreeMap::from([
                ("gpu".to_string(), "A100".to_string()),
                ("zone".to_string(), "eu=1".to_string()),
            ])
        );
        let err = parse_labels(&["novalue".to_string()]).unwrap_err();
        assert!(err.to_string().contains("novalue"), "{err}");
        assert!(parse_labels(&[]).unwrap().is_empty());
    }

    #[test]
    fn validation_names_the_missing_flag_of_each_handler() {
        use clap::Parser;
        let check = |args: &[&str]| {
            let mut argv = vec!["rtq-worker", "--redis", "redis://127.0.0.1:6379"];
            argv.extend_from_slice(args);
            Config::try_parse_from(argv).unwrap().validate()
        };
        let err = check(&["--handler", "exec"]).unwrap_err();
        assert!(err.contains("--exec-command"), "{err}");
        let err = check(&["--handler", "http"]).unwrap_err();
        assert!(err.contains("--upstream-url"), "{err}");
        let err = check(&["--probe-addr", "nowhere"]).unwrap_err();
        assert!(err.contains("--probe-addr"), "{err}");
        check(&["--handler", "exec", "--exec-command", "cat"]).unwrap();
        check(&["--handler", "mock", "--probe-addr", "127.0.0.1:0"]).unwrap();
    }
}
