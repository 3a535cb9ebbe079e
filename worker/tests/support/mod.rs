//! Shared support for worker tests: a real upstream HTTP server (plain
//! endpoint and OpenAI-compatible), spawning the real rtq-worker binary
//! under a [`ChildGuard`], and checks on processes.
#![allow(dead_code)]

use std::net::TcpListener as StdListener;
use std::ops::{Deref, DerefMut};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rtq_testkit::RedisServer;
use serde_json::{json, Value};

/// What the upstream observed, and its health switch.
#[derive(Default)]
pub struct Upstream {
    /// Health endpoint answers 200 while true, 503 otherwise.
    pub healthy: AtomicBool,
    /// Streams whose client went away before the end.
    pub closed_early: AtomicUsize,
    /// Requests received.
    pub requests: AtomicUsize,
}

/// Sets `closed_early` when dropped before `finished`.
struct CloseWatch {
    upstream: Arc<Upstream>,
    finished: bool,
}

impl CloseWatch {
    /// The stream reached its end: not an early close.
    fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for CloseWatch {
    fn drop(&mut self) {
        if !self.finished {
            self.upstream.closed_early.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn streamed(
    content_type: &'static str,
    parts: Vec<String>,
    delay_ms: u64,
    up: Arc<Upstream>,
) -> Response {
    let watch = CloseWatch {
        upstream: up,
        finished: false,
    };
    let stream = futures::stream::unfold(
        (parts.into_iter(), watch),
        move |(mut it, watch)| async move {
            if delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            }
            match it.next() {
                Some(p) => Some((Ok::<_, std::io::Error>(p), (it, watch))),
                None => {
                    watch.finish();
                    None
                }
            }
        },
    );
    (
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(stream),
    )
        .into_response()
}

/// A response that sends `filler` every 50 ms for ten minutes and never
/// any data: only a client that goes away ends it early.
fn stalled(content_type: &'static str, filler: &str, up: Arc<Upstream>) -> Response {
    streamed(content_type, vec![filler.to_string(); 12_000], 50, up)
}

/// POST /generate: answers according to input["mode"].
async fn generate(State(up): State<Arc<Upstream>>, Json(input): Json<Value>) -> Response {
    up.requests.fetch_add(1, Ordering::SeqCst);
    let n = input["n"].as_u64().unwrap_or(3);
    match input["mode"].as_str().unwrap_or("json") {
        "json" => Json(json!({ "echo": input })).into_response(),
        "sse" => {
            let mut parts: Vec<String> = (0..n).map(|i| format!("data: s{i}\n\n")).collect();
            parts.push(format!("event: result\ndata: {}\n\n", json!({"n": n})));
            streamed("text/event-stream", parts, 0, up)
        }
        // SSE that ends with `[DONE]` and no result event.
        "sse_done" => {
            let mut parts: Vec<String> = (0..n).map(|i| format!("data: d{i}\n\n")).collect();
            parts.push("data: [DONE]\n\n".to_string());
            streamed("text/event-stream", parts, 0, up)
        }
        // NDJSON chunks and no result line; the last line has no newline.
        "ndjson_plain" => {
            let lines: Vec<String> = (0..n)
                .map(|i| json!({"chunk": format!("p{i}")}).to_string())
                .collect();
            streamed("application/x-ndjson", vec![lines.join("\n")], 0, up)
        }
        "ndjson" => {
            let mut parts: Vec<String> = (0..n)
                .map(|i| format!("{}\n", json!({"chunk": format!("n{i}")})))
                .collect();
            parts.push(format!("{}\n", json!({"result": {"lines": n}})));
            streamed("application/x-ndjson", parts, 0, up)
        }
        "slow" => {
            let parts: Vec<String> = (0..10_000).map(|i| format!("data: slow{i}\n\n")).collect();
            streamed("text/event-stream", parts, 20, up)
        }
        // A model in a long prefill: the response has begun but carries no
        // data yet (SSE comments only, which is also how a vanished client
        // is noticed: the next write fails).
        "stall" => stalled("text/event-stream", ": still thinking\n\n", up),
        // A non-streaming answer that never completes (JSON whitespace).
        "stall_json" => stalled("application/json", " ", up),
        "garbage" => (
            [(header::CONTENT_TYPE, "application/json")],
            "<html>oops</html>",
        )
            .into_response(),
        "error" => (StatusCode::BAD_REQUEST, "bad prompt: too long").into_response(),
        _ => (StatusCode::NOT_FOUND, "unknown mode").into_response(),
    }
}

async fn health(State(up): State<Arc<Upstream>>) -> StatusCode {
    if up.healthy.load(Ordering::SeqCst) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

fn openai_event(v: Value) -> String {
    format!("data: {v}\n\n")
}

/// POST /v1/chat/completions and /v1/completions, streaming like vLLM.
async fn openai(State(up): State<Arc<Upstream>>, Json(body): Json<Value>, chat: bool) -> Response {
    up.requests.fetch_add(1, Ordering::SeqCst);
    if body["model"] == "missing" {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": {"message": "The model `missing` does not exist.", "type": "NotFoundError"}})),
        )
            .into_response();
    }
    assert_eq!(body["stream"], true, "the worker always streams");
    if body["stall"] == true {
        return stalled("text/event-stream", ": prefill\n\n", up);
    }
    let words = ["Hel", "lo", " there"];
    let mut parts = Vec::new();
    if chat {
        parts.push(openai_event(json!({"model": body["model"], "choices": [{"index": 0, "delta": {"role": "assistant"}}]})));
    }
    for w in words {
        let choice = if chat {
            json!({"index": 0, "delta": {"content": w}, "finish_reason": null})
        } else {
            json!({"index": 0, "text": w, "finish_reason": null})
        };
        parts.push(openai_event(
            json!({"model": body["model"], "choices": [choice]}),
        ));
    }
    let last = if chat {
        json!({"index": 0, "delta": {}, "finish_reason": "stop"})
    } else {
        json!({"index": 0, "text": "", "finish_reason": "stop"})
    };
    parts.push(openai_event(
        json!({"model": body["model"], "choices": [last]}),
    ));
    parts.push(openai_event(json!({"model": body["model"], "choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}})));
    parts.push("data: [DONE]\n\n".to_string());
    streamed("text/event-stream", parts, 0, up)
}

/// Starts the upstream on a listener bound by the caller's port 0; returns
/// its base URL.
pub async fn start_upstream(up: Arc<Upstream>) -> String {
    start_upstream_at(up, 0).await
}

/// Starts the upstream on a given port (0 = any).
pub async fn start_upstream_at(up: Arc<Upstream>, port: u16) -> String {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/generate", post(generate))
        .route("/health", get(health))
        .route("/v1/models", get(health))
        .route(
            "/v1/chat/completions",
            post(|s: State<Arc<Upstream>>, b: Json<Value>| openai(s, b, true)),
        )
        .route(
            "/v1/completions",
            post(|s: State<Arc<Upstream>>, b: Json<Value>| openai(s, b, false)),
        )
        .with_state(up);
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    format!("http://{addr}")
}

/// A free local port (for the worker's probe endpoint).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How long a test waits for a process to exit.
pub const EXIT_PATIENCE: Duration = Duration::from_secs(30);

/// A child process of a test, stopped and reaped on drop, on every exit
/// path of the test (a failed assertion included), so no rtq-worker (nor
/// its exec child) outlives it: SIGTERM first, so that an rtq-worker stops
/// its own children, then SIGKILL if it is still running after
/// [`EXIT_PATIENCE`]. Derefs to the [`Child`].
pub struct ChildGuard {
    child: Child,
}

impl ChildGuard {
    /// Spawns `cmd`.
    ///
    /// # Panics
    /// If it cannot be started.
    pub fn spawn(cmd: &mut Command) -> Self {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Self { child }
    }

    /// Sends `signal` to the process (not to its children).
    pub fn signal(&self, signal: Signal) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), signal);
    }

    /// Waits until the process has exited.
    ///
    /// # Panics
    /// If it is still running after [`EXIT_PATIENCE`].
    pub fn wait_exit(&mut self) -> ExitStatus {
        self.exit_within(EXIT_PATIENCE)
            .unwrap_or_else(|| panic!("process {} did not exit", self.child.id()))
    }

    fn exit_within(&mut self, patience: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + patience;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Deref for ChildGuard {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.child
    }
}

impl DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        self.signal(Signal::SIGTERM);
        if self.exit_within(EXIT_PATIENCE).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts rtq-worker against `redis` with `args` (probe endpoint off
/// unless the args set one).
pub fn start_worker(redis: &RedisServer, args: &[&str]) -> ChildGuard {
    ChildGuard::spawn(&mut worker_command(&redis.url(), args))
}

/// The rtq-worker command the tests run against the Redis at `url`:
/// lease 1 s, grace 0, probe endpoint off unless `args` set one, log
/// level warn, output discarded (callers may pipe it instead).
pub fn worker_command(url: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rtq-worker"));
    cmd.args(["--lease-ms", "1000", "--grace-secs", "0"]);
    if !args.contains(&"--probe-addr") {
        cmd.args(["--probe-addr", "off"]);
    }
    cmd.args(args)
        .env("RTQ_REDIS_URL", url)
        .env("RTQ_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// Processes whose pids a test's child processes list in a file, one per
/// line: on drop, those still running `comm` are killed (a failing test
/// must not leave them behind) and the file is removed.
pub struct ListedProcesses {
    /// The file of pids.
    pub path: std::path::PathBuf,
    /// The program they run.
    pub comm: &'static str,
}

impl ListedProcesses {
    /// The pids listed so far.
    pub fn pids(&self) -> Vec<u32> {
        std::fs::read_to_string(&self.path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for ListedProcesses {
    fn drop(&mut self) {
        for pid in self.pids() {
            if process_runs(pid, self.comm) {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// True while process `pid` runs `comm` (a zombie, or a pid now used by
/// another program, does not count).
pub fn process_runs(pid: u32, comm: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let open = stat.find('(')?;
            let close = stat.rfind(')')?;
            let state = stat[close + 1..].split_whitespace().next()?.to_string();
            Some((stat[open + 1..close].to_string(), state))
        })
        .is_some_and(|(name, state)| name == comm && state != "Z" && state != "X")
}

/// Polls `check` every 20 ms until it holds, or panics after 20 s.
pub async fn eventually(
    what: &str,
    mut check: impl FnMut() -> futures::future::BoxFuture<'static, bool>,
) {
    for _ in 0..1000 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never happened: {what}");
}

/// A TLS listener for axum: each accepted connection is a finished
/// handshake (failed handshakes are skipped).
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// Serves `app` over HTTPS with `pki`'s server certificate (for
/// `localhost` and `127.0.0.1`); returns `https://127.0.0.1:<port>`.
pub async fn serve_https(app: Router, pki: &rtq_testkit::Pki) -> String {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certs = CertificateDer::pem_file_iter(pki.server_cert())
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(pki.server_key()).unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let listener = TlsListener {
        tcp,
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
    };
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    format!("https://{addr}")
}

/// An upstream that answers POST /generate with the authentication
/// headers it received (`authorization`, `x-api-key`) and counts health
/// probes that carried them at GET /health.
pub fn auth_echo_app(probes_with_auth: Arc<AtomicUsize>) -> Router {
    Router::new()
        .route(
            "/generate",
            post(|headers: axum::http::HeaderMap| async move {
                let h = |n: &str| {
                    headers
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string()
                };
                Json(json!({"authorization": h("authorization"), "x-api-key": h("x-api-key")}))
            }),
        )
        .route(
            "/health",
            get(move |headers: axum::http::HeaderMap| {
                let probes = Arc::clone(&probes_with_auth);
                async move {
                    if headers.contains_key("authorization") {
                        probes.fetch_add(1, Ordering::SeqCst);
                    }
                    StatusCode::OK
                }
            }),
        )
}
