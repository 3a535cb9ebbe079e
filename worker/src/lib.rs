//! The rtq worker binary's library: configuration ([`Config`]), logging,
//! the built-in handlers and [`run`].
//!
//! Layout: `handlers` (http, openai, exec), `mock` (simulated model),
//! `upstream` (health probe and intake switching), `http_client` (the
//! upstream HTTP client: URL checks, authentication headers, no
//! redirects), `metrics` (Prometheus
//! registry and the timing handler wrapper), `probes` (/healthz, /readyz,
//! /metrics), `secrets` (masking of configured secrets in every text that
//! leaves the process), this file (configuration and wiring).

pub mod handlers;
mod http_client;
mod metrics;
mod mock;
mod probes;
pub mod secrets;
mod upstream;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use rtq_core::protocol::{MAX_RESULT_BYTES, MAX_SLOTS};
use rtq_core::{redact_url, Granularity, TlsConfig, Worker, WorkerConfig};
use tokio_util::sync::CancellationToken;

use handlers::body::Limits;
use handlers::exec::ExecHandler;
use handlers::http::HttpHandler;
use handlers::openai::OpenAiHandler;
use handlers::{Hold, Serve, UpstreamDown};
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
// No `Debug`: the configuration holds secrets (URLs with passwords, the
// upstream API key), and a debug print of it would log them.
#[derive(Clone, Parser)]
#[command(version, about)]
pub struct Config {
    /// Redis URL (required; there is no default Redis), e.g.
    /// redis://:password@host:6379/0 (rediss:// for TLS); a Redis Cluster:
    /// redis+cluster://:password@host1:6379,host2:6379.
    #[arg(
        long,
        env = "RTQ_REDIS_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub redis: Option<String>,
    /// CA certificate(s), PEM, that signed the Redis server's certificate
    /// (rediss:// URLs); default: the system's roots.
    #[arg(long, env = "RTQ_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate, PEM, for a Redis that requires one (mutual TLS);
    /// needs --tls-key.
    #[arg(long, env = "RTQ_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key, PEM, of --tls-cert.
    #[arg(long, env = "RTQ_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Run only tasks signed by this ed25519 key (64 hex digits, as `rtq
    /// keygen` prints it; repeatable); other tasks fail unrun. Default:
    /// every task runs.
    #[arg(
        long = "verify-key",
        env = "RTQ_VERIFY_KEYS",
        value_delimiter = ',',
        value_name = "HEX"
    )]
    pub verify_keys: Vec<String>,
    /// Queue to serve.
    #[arg(long, env = "RTQ_QUEUE", default_value = "default")]
    pub queue: String,
    /// Tasks run at once (slots), 1 to 1024.
    #[arg(long, env = "RTQ_CONCURRENCY", default_value_t = 1, value_parser = parse_slots)]
    pub concurrency: usize,
    /// Handler that runs the tasks.
    #[arg(long, env = "RTQ_HANDLER", value_enum, default_value = "mock")]
    pub handler: HandlerKind,
    /// Upstream URL: the endpoint for --handler http, the server base URL
    /// (e.g. http://127.0.0.1:8000) for --handler openai.
    #[arg(long, env = "RTQ_UPSTREAM_URL", hide_env_values = true)]
    pub upstream_url: Option<String>,
    /// CA certificate(s), PEM, trusted for https:// upstreams in addition
    /// to the system's roots (a private CA, a self-signed server).
    #[arg(long, env = "RTQ_UPSTREAM_CA", value_name = "FILE")]
    pub upstream_ca: Option<PathBuf>,
    /// API key sent to the upstream (and its health URL) as
    /// `Authorization: Bearer <key>`. Prefer the environment variable to the
    /// flag: a flag shows in the process list.
    #[arg(
        long,
        env = "RTQ_UPSTREAM_API_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub upstream_api_key: Option<String>,
    /// File of HTTP headers sent with every upstream request, one
    /// `Name: value` per line (blank lines and lines starting with # are
    /// skipped), e.g. a gateway's `X-Api-Key`. Values are treated as
    /// secrets.
    #[arg(long, env = "RTQ_UPSTREAM_HEADER_FILE", value_name = "FILE")]
    pub upstream_header_file: Option<PathBuf>,
    /// Health probe URL (GET, 2xx = up). While it fails the worker takes no
    /// new tasks. Default for openai: <upstream>/v1/models; none for http.
    #[arg(long, env = "RTQ_HEALTH_URL", hide_env_values = true)]
    pub health_url: Option<String>,
    /// Health probe period in ms.
    #[arg(long, env = "RTQ_HEALTH_INTERVAL_MS", default_value_t = 2000)]
    pub health_interval_ms: u64,
    /// While the upstream is down (its requests cannot connect, or its
    /// health probe fails), seconds a task this worker took waits for it
    /// before --upstream-down applies. 0 = at once (the default: another
    /// node may be able to run the task now).
    #[arg(long, env = "RTQ_UPSTREAM_HOLD_SECS", default_value_t = 0)]
    pub upstream_hold_secs: u64,
    /// What happens to a task whose upstream is down, after
    /// --upstream-hold-secs: hand-back gives it back to the queue
    /// unstarted without using an attempt (this node takes no new tasks
    /// until its upstream is back); retry fails it as retryable, which
    /// uses an attempt.
    #[arg(
        long,
        env = "RTQ_UPSTREAM_DOWN",
        value_enum,
        default_value = "hand-back"
    )]
    pub upstream_down: UpstreamDown,
    /// Upstream request timeout in seconds (0 = none; task deadlines still apply).
    #[arg(long, env = "RTQ_UPSTREAM_TIMEOUT_SECS", default_value_t = 0)]
    pub upstream_timeout_secs: u64,
    /// Longest line an upstream may send (SSE, NDJSON), in bytes; a longer
    /// one fails the task. An exec child's longer line fails the attempt
    /// its start names, or is dropped (with a warning) if it names none.
    #[arg(long, env = "RTQ_MAX_LINE_BYTES", default_value_t = Limits::default().max_line)]
    pub max_line_bytes: usize,
    /// Largest SSE event (all its data lines), in bytes.
    #[arg(long, env = "RTQ_MAX_EVENT_BYTES", default_value_t = Limits::default().max_event)]
    pub max_event_bytes: usize,
    /// Largest chunk passed on to the client, in bytes.
    #[arg(long, env = "RTQ_MAX_CHUNK_BYTES", default_value_t = Limits::default().max_chunk)]
    pub max_chunk_bytes: usize,
    /// Largest upstream response body (a JSON reply, a whole stream), in
    /// bytes.
    #[arg(long, env = "RTQ_MAX_BODY_BYTES", default_value_t = Limits::default().max_body)]
    pub max_body_bytes: u64,
    /// Largest task result (its JSON), in bytes, up to 16 MiB. A larger
    /// result fails the task; an http JSON reply over it fails at once
    /// with this flag named; the openai handler leaves the text out of a
    /// result that would pass it (the text was streamed as chunks).
    #[arg(long, env = "RTQ_MAX_RESULT_BYTES",
          default_value_t = WorkerConfig::default().max_result_bytes as u64,
          value_parser = clap::value_parser!(u64).range(1..=MAX_RESULT_BYTES as u64))]
    pub max_result_bytes: u64,
    /// Bytes of one task's output not yet in Redis the worker holds, from
    /// 256 KiB to 64 MiB (each chunk counts 64 bytes more than its
    /// length). Past it the worker stops reading the upstream until Redis
    /// catches up, so a slow or frozen Redis cannot fill the node's memory.
    #[arg(long, env = "RTQ_MAX_BUFFERED_OUTPUT_BYTES",
          default_value_t = rtq_core::DEFAULT_MAX_BUFFERED_OUTPUT_BYTES as u64,
          value_parser = clap::value_parser!(u64).range((256 << 10)..=(64 << 20)))]
    pub max_buffered_output_bytes: u64,
    /// Model name for --handler openai when the task input names none.
    #[arg(long, env = "RTQ_OPENAI_MODEL")]
    pub openai_model: Option<String>,
    /// Command for --handler exec, run with `sh -c` (e.g. "python3 infer.py").
    // The command line may carry tokens or paths an operator would rather
    // not print: `--help` does not show the environment's value.
    #[arg(long, env = "RTQ_EXEC_COMMAND", hide_env_values = true)]
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
    /// Streaming granularity: ms the worker may hold a task's chunks to
    /// write them in one call (0 = write each at once). Paced tokens cost
    /// one Redis call each at 0; 50 ms cuts Redis CPU per token about 2.4x
    /// (BENCHMARKS.md section 11) for 50 ms more delivery delay.
    #[arg(long, env = "RTQ_STREAM_HOLD_MS", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub stream_hold_ms: u64,
    /// With --stream-hold-ms: write as soon as this many bytes are held
    /// (0 = 64 KiB, so the hold time decides).
    #[arg(long, env = "RTQ_STREAM_MIN_BYTES", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=16_777_216))]
    pub stream_min_bytes: u64,
    /// Chunk writes of one task in flight at once (1 coalesces chunks
    /// produced while a write is under way; more pipelines them).
    #[arg(long, env = "RTQ_STREAM_WRITES_IN_FLIGHT", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..=64))]
    pub stream_writes_in_flight: u64,
    /// Labels shown in the console, as key=value (repeatable), e.g. gpu=A100.
    #[arg(
        long = "label",
        env = "RTQ_LABELS",
        value_delimiter = ',',
        hide_env_values = true
    )]
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
    /// How the worker groups a task's chunks into writes (the
    /// `--stream-*` flags).
    pub fn granularity(&self) -> Granularity {
        let hold = Duration::from_millis(self.stream_hold_ms);
        let min_bytes = match (self.stream_hold_ms, self.stream_min_bytes) {
            (0, _) => 0,
            (_, 0) => 64 * 1024,
            (_, n) => n as usize,
        };
        Granularity {
            max_in_flight: self.stream_writes_in_flight.max(1) as usize,
            min_bytes,
            max_delay: hold,
        }
    }

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
            HandlerKind::Http | HandlerKind::Openai if self.upstream_url.is_none() => {
                return Err(format!(
                    "--handler {} needs --upstream-url (or RTQ_UPSTREAM_URL)",
                    self.handler_name()
                ))
            }
            HandlerKind::Exec if self.exec_command.is_none() => {
                return Err("--handler exec needs --exec-command (or RTQ_EXEC_COMMAND)".into())
            }
            _ => {}
        }
        let mut with_credentials = None;
        for (flag, url) in [
            ("--upstream-url", &self.upstream_url),
            ("--health-url", &self.health_url),
        ] {
            let Some(url) = url else { continue };
            let parsed = http_client::check_url(flag, url)?;
            if !parsed.username().is_empty() || parsed.password().is_some() {
                with_credentials = with_credentials.or(Some(flag));
            }
        }
        if let (Some(flag), Some(_)) = (
            with_credentials,
            self.upstream_api_key.as_deref().filter(|k| !k.is_empty()),
        ) {
            // Both would set `Authorization`; the URL's would win and the
            // key would silently not be sent.
            return Err(format!(
                "{flag} holds a user:password and --upstream-api-key (RTQ_UPSTREAM_API_KEY) \
                 is set: both would be sent as the Authorization header; keep one"
            ));
        }
        if self.probe_addr != "off" && self.probe_addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(format!(
                "--probe-addr {:?} is not host:port or \"off\"",
                self.probe_addr
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log) {
            return Err(format!(
                "--log {:?} is not a log filter ({e}); e.g. info, or warn,rtq_worker=debug",
                self.log
            ));
        }
        // Files and the key are checked here, before Redis is contacted, so
        // a typo is a usage error rather than a failure after "connected".
        http_client::default_headers(self)?;
        http_client::extra_roots(self)?;
        parse_labels(&self.labels).map_err(|e| format!("--label: {e}"))?;
        Ok(())
    }

    /// Every secret value in the configuration: passwords and tokens in
    /// the Redis and upstream URLs, the API key, header-file values.
    fn secret_values(&self) -> Vec<String> {
        let mut values: Vec<String> = self
            .redis
            .iter()
            .chain(self.upstream_url.iter())
            .chain(self.health_url.iter())
            .flat_map(|u| secrets::of_url(u))
            .collect();
        values.extend(self.upstream_api_key.iter().cloned());
        if let Some(text) = self
            .upstream_header_file
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
        {
            values.extend(
                text.lines()
                    .filter_map(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string()),
            );
        }
        values
    }

    /// What a task does while its upstream is down.
    fn hold(&self) -> Hold {
        Hold {
            wait: Duration::from_secs(self.upstream_hold_secs),
            then: self.upstream_down,
        }
    }

    fn handler_name(&self) -> String {
        format!("{:?}", self.handler).to_lowercase()
    }
}

/// `--concurrency`: 1 to rtq's [`MAX_SLOTS`], checked before anything
/// connects.
fn parse_slots(raw: &str) -> Result<usize, String> {
    let n: usize = raw
        .trim()
        .parse()
        .map_err(|_| format!("{raw:?} is not a number"))?;
    if (1..=MAX_SLOTS).contains(&n) {
        Ok(n)
    } else {
        Err(format!("{n} is not in 1..={MAX_SLOTS}"))
    }
}

/// Sets up the tracing subscriber (binaries only). The filter was checked
/// by [`Config::validate`]; an invalid one still falls back to `info`.
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
    secrets::register(config.secret_values());
    // Before connecting: a bad CA file or header is a start-up error.
    let http = http_client::upstream_client(&config)?;
    let mut wc = WorkerConfig::new(&config.queue)
        .slots(config.concurrency)
        .lease(Duration::from_millis(config.lease_ms.max(100)))
        .grace(Duration::from_secs(config.grace_secs))
        .handler_name(config.handler_name());
    wc.cancel_grace = Duration::from_millis(config.cancel_grace_ms);
    wc.granularity = config.granularity();
    wc.max_result_bytes = config.max_result_bytes as usize;
    wc.max_buffered_output_bytes = config.max_buffered_output_bytes as usize;
    for key in config.verify_keys.iter().filter(|k| !k.trim().is_empty()) {
        wc.verify_keys.push(
            rtq_core::signing::VerifyKey::from_hex(key)
                .context("--verify-key / RTQ_VERIFY_KEYS")?,
        );
    }
    wc.tls = TlsConfig::from_files(
        config.tls_ca.as_deref(),
        config.tls_cert.as_deref(),
        config.tls_key.as_deref(),
    )?;
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
    // Without a probe, a down upstream is tried again with a TCP connect.
    let trial = (!probe_configured)
        .then(|| {
            config.upstream_url.as_deref().and_then(|url| {
                upstream::Trial::for_url(
                    url,
                    Duration::from_millis(config.health_interval_ms.max(50)),
                )
            })
        })
        .flatten();
    // The exec handler's tasks cannot run before its child does: intake
    // stays off until the supervisor reports the child running.
    let upstream = if config.handler == HandlerKind::Exec {
        UpstreamState::awaiting_child(worker.intake())
    } else {
        UpstreamState::new(worker.intake(), trial)
    };
    let mut exec_supervisor = None;
    let limits = Limits {
        max_line: config.max_line_bytes.max(1),
        max_event: config.max_event_bytes.max(1),
        max_chunk: config.max_chunk_bytes.max(1),
        max_body: config.max_body_bytes.max(1),
    };
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
            Arc::new(HttpHandler::new(
                http.clone(),
                url,
                Arc::clone(&upstream),
                limits,
                config.max_result_bytes as usize,
                config.hold(),
            )),
            config.health_url.clone(),
        ),
        HandlerKind::Openai => (
            Arc::new(OpenAiHandler::new(
                http.clone(),
                url.clone(),
                config.openai_model.clone(),
                Arc::clone(&upstream),
                limits,
                config.max_result_bytes as usize,
                config.hold(),
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
                limits.max_line,
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
    let force = worker.force_stop();
    let result = worker.run(handler, shutdown_signals(force.clone())).await;
    if force.is_forced() {
        tracing::warn!(
            "stopped at once on a second signal; running tasks were handed back to the queue"
        );
    }
    stop.cancel();
    if let Some(supervisor) = exec_supervisor {
        // The child's process group must be gone before this process is.
        let _ = supervisor.await;
    }
    result?;
    Ok(())
}

/// The process exit code for an error of [`run`]: 2 a `--redis` URL that
/// does not parse (a usage error), 3 Redis unreachable, 4 authentication
/// failed, 5 TLS failed, 6 permission denied (see
/// [`rtq_core::ConnectionProblem::exit_code`]), 1 anything else.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    let Some(e) = err
        .chain()
        .find_map(|e| e.downcast_ref::<rtq_core::Error>())
    else {
        return 1;
    };
    if matches!(e, rtq_core::Error::InvalidUrl { .. }) {
        return 2;
    }
    e.connection_problem()
        .map_or(1, rtq_core::ConnectionProblem::exit_code)
}

/// SIGTERM and SIGINT (Ctrl-C), installed when created, not when first
/// awaited: the worker registers (and may receive a task) before its loop
/// polls the shutdown future, and a SIGTERM in that window must drain, not
/// kill the process.
struct Signals {
    #[cfg(unix)]
    handlers: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Self {
                handlers: signal(SignalKind::terminate())
                    .ok()
                    .zip(signal(SignalKind::interrupt()).ok()),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Resolves on the next SIGTERM or SIGINT.
    async fn next(&mut self) {
        #[cfg(unix)]
        if let Some((term, int)) = &mut self.handlers {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The worker's shutdown future: resolves on the first signal (the
/// drain), and forces the stop on a second one (an operator who does not
/// want to wait for the drain): the running tasks are handed back to the
/// queue at once (an interrupted attempt uses one, as at the end of the
/// grace period), so clients do not wait for this worker's lease to lapse;
/// Redis gets at most [`rtq_core::FORCED_LEAVE_TIMEOUT`] for it.
fn shutdown_signals(force: rtq_core::ForceStop) -> impl std::future::Future<Output = ()> {
    let mut signals = Signals::new();
    async move {
        signals.next().await;
        tokio::spawn(async move {
            signals.next().await;
            force.force();
        });
    }
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
    fn stream_flags_map_to_the_granularity() {
        use clap::Parser;
        let g = |args: &[&str]| {
            let mut argv = vec!["rtq-worker", "--redis", "redis://127.0.0.1:6379"];
            argv.extend_from_slice(args);
            Config::try_parse_from(argv).unwrap().granularity()
        };
        assert_eq!(g(&[]), Granularity::default());
        let held = g(&["--stream-hold-ms", "50"]);
        assert_eq!(held.max_delay, Duration::from_millis(50));
        assert_eq!(held.min_bytes, 64 * 1024);
        assert_eq!(held.max_in_flight, 1);
        let sized = g(&["--stream-hold-ms", "50", "--stream-min-bytes", "100"]);
        assert_eq!(sized.min_bytes, 100);
        // A byte floor without a hold would hold nothing: writes at once.
        assert_eq!(g(&["--stream-min-bytes", "100"]).min_bytes, 0);
        assert_eq!(g(&["--stream-writes-in-flight", "4"]).max_in_flight, 4);
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
