//! Shared by the gateway's integration tests: a real stack of processes.
//! A private redis-server (rtq-testkit), a fake OpenAI-compatible server
//! in this process (real HTTP on a port of its own), real `rtq-worker`
//! processes with the `openai` (or `mock`) handler in front of it, and the
//! real `rtq-gateway` binary. Everything stops on drop.
//!
//! The fake server streams the words of the last message back as tokens.
//! Prompts steer it: one containing `slow` sends 200 tokens 50 ms apart;
//! `refuse` answers 400 with an OpenAI error; `sleepy` answers only after
//! [`SLEEPY`]. It counts the streams whose caller went away (`aborted`).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rtq_testkit::{target_dir, RedisServer};
use serde_json::{json, Value};

/// How long the fake upstream waits before answering a prompt containing
/// `sleepy` (a model slow to start).
pub const SLEEPY: Duration = Duration::from_millis(2500);

/// What the fake upstream saw.
#[derive(Default)]
pub struct UpstreamStats {
    /// Streams started.
    pub started: AtomicUsize,
    /// Streams whose caller dropped the connection before the end.
    pub aborted: AtomicUsize,
    /// Streams sent to their end.
    pub finished: AtomicUsize,
}

/// Counts a stream as aborted unless it reached its end.
struct StreamGuard {
    stats: Arc<UpstreamStats>,
    done: bool,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.done {
            self.stats.finished.fetch_add(1, Ordering::SeqCst);
        } else {
            self.stats.aborted.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn prompt_of(body: &Value) -> String {
    if let Some(msgs) = body["messages"].as_array() {
        return msgs
            .last()
            .and_then(|m| m["content"].as_str())
            .unwrap_or("")
            .to_string();
    }
    match &body["prompt"] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

async fn complete(State(stats): State<Arc<UpstreamStats>>, Json(body): Json<Value>) -> Response {
    let prompt = prompt_of(&body);
    if prompt.contains("sleepy") {
        tokio::time::sleep(SLEEPY).await;
    }
    if prompt.contains("refuse") {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"message": "the fake model refuses", "type": "invalid_request_error"}})),
        )
            .into_response();
    }
    let chat = body.get("messages").is_some();
    let slow = prompt.contains("slow");
    let words: Vec<String> = if slow {
        (0..200).map(|i| format!("w{i} ")).collect()
    } else {
        prompt.split_whitespace().map(|w| format!("{w} ")).collect()
    };
    let model = body["model"].as_str().unwrap_or("fake").to_string();
    stats.started.fetch_add(1, Ordering::SeqCst);
    let guard = StreamGuard {
        stats: Arc::clone(&stats),
        done: false,
    };
    let frames = futures::stream::unfold((0usize, words, guard), move |(i, words, mut guard)| {
        let model = model.clone();
        async move {
            if i > words.len() + 1 {
                return None;
            }
            if slow && i > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let frame = if i < words.len() {
                let choice = if chat {
                    json!({"index": 0, "delta": {"content": words[i]}, "finish_reason": null})
                } else {
                    json!({"index": 0, "text": words[i], "finish_reason": null})
                };
                format!("data: {}\n\n", json!({"model": model, "choices": [choice]}))
            } else if i == words.len() {
                let choice = if chat {
                    json!({"index": 0, "delta": {}, "finish_reason": "stop"})
                } else {
                    json!({"index": 0, "text": "", "finish_reason": "stop"})
                };
                let usage = json!({"prompt_tokens": 3, "completion_tokens": words.len(),
                                       "total_tokens": 3 + words.len()});
                format!(
                    "data: {}\n\n",
                    json!({"model": model, "choices": [choice], "usage": usage})
                )
            } else {
                guard.done = true;
                "data: [DONE]\n\n".to_string()
            };
            Some((Ok::<_, std::io::Error>(frame), (i + 1, words, guard)))
        }
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(frames))
        .unwrap()
}

async fn stats_of(State(stats): State<Arc<UpstreamStats>>) -> Json<Value> {
    Json(json!({
        "started": stats.started.load(Ordering::SeqCst),
        "aborted": stats.aborted.load(Ordering::SeqCst),
        "finished": stats.finished.load(Ordering::SeqCst),
    }))
}

/// The fake OpenAI-compatible server (`GET /stats` reports what it saw).
pub struct FakeUpstream {
    /// Base URL (`http://127.0.0.1:port`).
    pub url: String,
    /// What it saw.
    pub stats: Arc<UpstreamStats>,
}

impl FakeUpstream {
    /// Starts it on a free port of this runtime.
    pub async fn start() -> Self {
        let stats = Arc::new(UpstreamStats::default());
        let app = Router::new()
            .route("/v1/chat/completions", post(complete))
            .route("/v1/completions", post(complete))
            .route("/v1/models", get(|| async { Json(json!({"data": []})) }))
            .route("/stats", get(stats_of))
            .with_state(Arc::clone(&stats));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, stats }
    }

    /// Waits until `n` streams were aborted by their caller.
    pub async fn wait_aborted(&self, n: usize, within: Duration) -> bool {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if self.stats.aborted.load(Ordering::SeqCst) >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

/// A child process killed on drop; its output goes to a log file printed
/// when a test fails.
pub struct Proc {
    child: Child,
    name: String,
    log: PathBuf,
}

impl Proc {
    /// The output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Waits for the exit (at most `within`).
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- {} log ---\n{}", self.name, self.log());
        }
    }
}

fn log_file(name: &str) -> (PathBuf, std::fs::File) {
    let dir = std::env::temp_dir().join("rtq-gateway-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}-{}-{}.log", std::process::id(), uuid_like()));
    let file = std::fs::File::create(&path).unwrap();
    (path, file)
}

fn uuid_like() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// The worker binary, built with the workspace.
pub fn worker_bin() -> PathBuf {
    let path = target_dir().join("rtq-worker");
    assert!(
        path.exists(),
        "{} not built: `cargo build -p rtq-worker` (scripts/test.sh builds it with the workspace)",
        path.display()
    );
    path
}

/// Starts an `rtq-worker` on `queue` with extra arguments.
pub fn start_worker(redis: &str, queue: &str, args: &[&str]) -> Proc {
    let (log, file) = log_file(&format!("worker-{queue}"));
    let child = Command::new(worker_bin())
        .args(["--redis", redis, "--queue", queue, "--probe-addr", "off"])
        .args(["--lease-ms", "2000", "--health-interval-ms", "200"])
        .args(args)
        .env_remove("RTQ_LOG")
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .expect("rtq-worker starts");
    Proc {
        child,
        name: format!("worker {queue}"),
        log,
    }
}

/// Starts an openai-handler worker in front of `upstream`.
pub fn start_openai_worker(redis: &str, queue: &str, upstream: &str, extra: &[&str]) -> Proc {
    let mut args = vec![
        "--handler",
        "openai",
        "--upstream-url",
        upstream,
        "--openai-model",
        "fake-model",
    ];
    args.extend_from_slice(extra);
    start_worker(redis, queue, &args)
}

/// A running gateway.
pub struct Gateway {
    /// Base URL (`http://127.0.0.1:port`).
    pub url: String,
    /// The process.
    pub proc: Proc,
}

/// Starts `rtq-gateway` on a free port with extra arguments; returns once
/// it listens.
pub fn start_gateway(redis: &str, args: &[&str]) -> Gateway {
    start_gateway_with_env(redis, args, &[])
}

/// [`start_gateway`] with extra environment variables.
pub fn start_gateway_with_env(redis: &str, args: &[&str], env: &[(&str, &str)]) -> Gateway {
    let (log, file) = log_file("gateway");
    let mut child = Command::new(env!("CARGO_BIN_EXE_rtq-gateway"))
        .args(["--redis", redis, "--listen", "127.0.0.1:0"])
        .args(if args.contains(&"--catalog-ttl-ms") {
            &[][..]
        } else {
            &["--catalog-ttl-ms", "200"][..]
        })
        .args(args)
        .env_remove("RTQ_LOG")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(file)
        .spawn()
        .expect("rtq-gateway starts");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let proc = Proc {
        child,
        name: "gateway".into(),
        log,
    };
    let url = line
        .trim()
        .rsplit(' ')
        .next()
        .filter(|u| u.starts_with("http"))
        .unwrap_or_else(|| panic!("gateway did not start: {line:?}\n{}", proc.log()))
        .to_string();
    Gateway { url, proc }
}

/// Writes a key file granting `lines` (each `key queues=.. [limits]`,
/// with the key in clear; it is hashed here).
pub fn key_file(lines: &[&str]) -> tempfile::NamedTempFile {
    let mut text = String::new();
    for line in lines {
        let (key, rest) = line.split_once(' ').unwrap();
        text.push_str(&format!(
            "sha256:{} {rest}\n",
            rtq_gateway::auth::hash_key(key)
        ));
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    file
}

/// Waits until `GET /v1/models` lists `model`.
pub async fn wait_model(http: &reqwest::Client, gw: &Gateway, key: &str, model: &str) {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let v: Value = http
            .get(format!("{}/v1/models", gw.url))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or(Value::Null);
        let listed = v["data"]
            .as_array()
            .is_some_and(|d| d.iter().any(|m| m["id"] == model));
        if listed {
            return;
        }
        assert!(
            Instant::now() < end,
            "model {model} never listed: {v}\n{}",
            gw.proc.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A Redis with an openai worker on queue `chat` (label model=fake-model)
/// in front of a fake upstream, and a gateway with keys:
/// `k-all` (every queue), `k-chat` (queue chat only), `k-one`
/// (concurrency 1), `k-tasks` (the task API only), `k-small` (bodies of
/// at most 2 KiB), `k-rate` (one request, then one per 100 s).
pub struct Stack {
    /// Redis.
    pub redis: RedisServer,
    /// The fake upstream.
    pub upstream: FakeUpstream,
    /// Workers.
    pub workers: Vec<Proc>,
    /// The gateway.
    pub gw: Gateway,
    /// The key file (kept alive).
    pub keys: tempfile::NamedTempFile,
    /// An HTTP client.
    pub http: reqwest::Client,
}

impl Stack {
    /// Starts everything; `worker_args` go to the chat worker.
    pub async fn start(worker_args: &[&str], gateway_args: &[&str]) -> Self {
        let redis = RedisServer::start();
        let upstream = FakeUpstream::start().await;
        let worker = start_openai_worker(
            &redis.url(),
            "chat",
            &upstream.url,
            &[&["--label", "model=fake-model"], worker_args].concat(),
        );
        let keys = key_file(&[
            "k-all queues=* name=all",
            "k-chat queues=chat name=chat",
            "k-one queues=* concurrency=1 name=one",
            "k-tasks queues=* routes=tasks name=tasks",
            "k-small queues=* max_body=2048 name=small",
            "k-rate queues=* rate=0.01 burst=1 name=rate",
        ]);
        let mut args = vec!["--api-keys", keys.path().to_str().unwrap()];
        args.extend_from_slice(gateway_args);
        let gw = start_gateway(&redis.url(), &args);
        let http = reqwest::Client::new();
        wait_model(&http, &gw, "k-all", "chat").await;
        Self {
            redis,
            upstream,
            workers: vec![worker],
            gw,
            keys,
            http,
        }
    }

    /// `POST path` with key `key` and a JSON body.
    pub async fn post(&self, key: &str, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.gw.url))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// `GET path` with key `key`.
    pub async fn get(&self, key: &str, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.gw.url))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
    }
}

/// Reads an SSE body into its `data:` payloads (and event names).
pub async fn sse_events(resp: reqwest::Response) -> Vec<(String, String, String)> {
    let text = resp.text().await.unwrap();
    parse_sse(&text)
}

/// Parses SSE text into (event, id, data) triples.
pub fn parse_sse(text: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let (mut event, mut id, mut data) = (String::new(), String::new(), Vec::new());
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("id:") {
                id = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
            }
        }
        if !data.is_empty() {
            out.push((event, id, data.join("\n")));
        }
    }
    out
}

/// Reads the first `n` whole events of an SSE response (waiting at most
/// 20 s for each part), leaving the rest unread.
pub async fn read_events(resp: reqwest::Response, n: usize) -> Vec<(String, String, String)> {
    use futures::StreamExt;
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    loop {
        let whole = text.rfind("\n\n").map_or("", |end| &text[..end + 2]);
        let events = parse_sse(whole);
        if events.len() >= n {
            return events.into_iter().take(n).collect();
        }
        let part = tokio::time::timeout(Duration::from_secs(20), body.next())
            .await
            .unwrap_or_else(|_| panic!("no event within 20 s; so far: {text:?}"));
        match part {
            Some(bytes) => text.push_str(&String::from_utf8_lossy(&bytes.unwrap())),
            None => panic!("the stream ended after {:?}", parse_sse(&text)),
        }
    }
}
