//! The `exec` handler: one long-lived child process (say `python infer.py`
//! holding a model in memory) serves many tasks at once over JSON lines.
//!
//! Worker -> child (stdin), one JSON object per line:
//! - `{"type":"task","id":"...","attempt":1,"input":{...},"input_ref":null,"labels":{}}`
//! - `{"type":"cancel","id":"..."}` - stop that task (cancelled, expired,
//!   or the worker is shutting down)
//!
//! Child -> worker (stdout), one JSON object per line, tagged with the id:
//! - `{"id":"...","chunk":"text"}` - a piece of output (any number)
//! - `{"id":"...","result":{...}}` - the task's result (ends it)
//! - `{"id":"...","error":"why","retryable":false}` - the task failed (ends it)
//!
//! Other stdout lines are logged and ignored; stderr is logged. If the
//! child exits, its unfinished tasks fail as retryable (so they are requeued
//! while attempts remain), the worker takes no new tasks, and the child is
//! restarted with backoff.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rtq_core::{async_trait, Handler, HandlerError, TaskContext};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::upstream::UpstreamState;

/// What the child said about one task.
#[derive(Debug)]
enum ChildEvent {
    Chunk(String),
    Result(Value),
    Error { message: String, retryable: bool },
    Died(String),
}

struct ExecShared {
    stdin: Mutex<Option<mpsc::UnboundedSender<String>>>,
    pending: Mutex<HashMap<String, mpsc::UnboundedSender<ChildEvent>>>,
}

impl ExecShared {
    fn write(&self, line: String) -> bool {
        match self.stdin.lock().ok().and_then(|s| s.clone()) {
            Some(tx) => tx.send(line).is_ok(),
            None => false,
        }
    }

    fn route(&self, line: &str) {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            tracing::warn!(line = %line.chars().take(200).collect::<String>(), "exec child printed a non-JSON line");
            return;
        };
        let Some(id) = v["id"].as_str() else {
            tracing::warn!(%line, "exec child line without an id");
            return;
        };
        let event = if let Some(result) = v.get("result") {
            ChildEvent::Result(result.clone())
        } else if let Some(err) = v.get("error") {
            ChildEvent::Error {
                message: err
                    .as_str()
                    .map(String::from)
                    .unwrap_or_else(|| err.to_string()),
                retryable: v["retryable"].as_bool().unwrap_or(false),
            }
        } else if let Some(chunk) = v.get("chunk") {
            ChildEvent::Chunk(
                chunk
                    .as_str()
                    .map(String::from)
                    .unwrap_or_else(|| chunk.to_string()),
            )
        } else {
            tracing::warn!(%line, "exec child line with neither chunk, result nor error");
            return;
        };
        if let Some(tx) = self.pending.lock().ok().and_then(|p| p.get(id).cloned()) {
            let _ = tx.send(event);
        }
    }

    fn fail_all(&self, why: &str) {
        if let Ok(mut pending) = self.pending.lock() {
            for (_, tx) in pending.drain() {
                let _ = tx.send(ChildEvent::Died(why.to_string()));
            }
        }
    }
}

/// Runs tasks through a supervised child process.
pub struct ExecHandler {
    shared: Arc<ExecShared>,
}

impl ExecHandler {
    /// Starts the child (`sh -c command`) and its supervisor, which runs
    /// until `stop` fires.
    pub fn start(command: String, upstream: Arc<UpstreamState>, stop: CancellationToken) -> Self {
        let shared = Arc::new(ExecShared {
            stdin: Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
        });
        tokio::spawn(supervise(Arc::clone(&shared), command, upstream, stop));
        Self { shared }
    }
}

async fn supervise(
    shared: Arc<ExecShared>,
    command: String,
    upstream: Arc<UpstreamState>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(250);
    loop {
        let started = Instant::now();
        let spawned = Command::new("sh")
            .arg("-c")
            .arg(&command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        let why = match spawned {
            Err(e) => format!("cannot start exec child `{command}`: {e}"),
            Ok(mut child) => {
                let (Some(mut stdin), Some(stdout), Some(stderr)) =
                    (child.stdin.take(), child.stdout.take(), child.stderr.take())
                else {
                    return;
                };
                let (tx, mut rx) = mpsc::unbounded_channel::<String>();
                if let Ok(mut s) = shared.stdin.lock() {
                    *s = Some(tx);
                }
                tracing::info!(pid = child.id(), %command, "exec child started");
                upstream.mark_up();
                let writer = tokio::spawn(async move {
                    while let Some(mut line) = rx.recv().await {
                        line.push('\n');
                        if stdin.write_all(line.as_bytes()).await.is_err()
                            || stdin.flush().await.is_err()
                        {
                            break;
                        }
                    }
                });
                let logger = tokio::spawn(async move {
                    let mut lines = BufReader::new(stderr).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        tracing::warn!(target: "exec_child", "{line}");
                    }
                });
                let mut lines = BufReader::new(stdout).lines();
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => {
                            let _ = child.kill().await;
                            writer.abort();
                            logger.abort();
                            return;
                        }
                        line = lines.next_line() => match line {
                            Ok(Some(line)) => shared.route(&line),
                            Ok(None) | Err(_) => break,
                        }
                    }
                }
                if let Ok(mut s) = shared.stdin.lock() {
                    *s = None;
                }
                writer.abort();
                logger.abort();
                let status = child
                    .wait()
                    .await
                    .map(|s| s.to_string())
                    .unwrap_or_else(|e| e.to_string());
                format!("exec child `{command}` exited ({status})")
            }
        };
        tracing::error!(reason = %why, "exec child is gone; restarting");
        upstream.mark_down(&why);
        shared.fail_all(&why);
        backoff = if started.elapsed() > Duration::from_secs(10) {
            Duration::from_millis(250)
        } else {
            (backoff * 2).min(Duration::from_secs(30))
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
    }
}

/// Unregisters a task; tells the child to stop it unless it ended.
struct Registration<'a> {
    shared: &'a ExecShared,
    id: String,
    ended: bool,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if let Ok(mut p) = self.shared.pending.lock() {
            p.remove(&self.id);
        }
        if !self.ended {
            self.shared
                .write(json!({ "type": "cancel", "id": self.id }).to_string());
        }
    }
}

#[async_trait]
impl Handler for ExecHandler {
    async fn handle(&self, task: TaskContext) -> Result<Value, HandlerError> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        if let Ok(mut p) = self.shared.pending.lock() {
            p.insert(task.id().to_string(), tx);
        }
        let mut reg = Registration {
            shared: &self.shared,
            id: task.id().to_string(),
            ended: false,
        };
        let line = json!({
            "type": "task",
            "id": task.id(),
            "attempt": task.attempt(),
            "input": task.input(),
            "input_ref": task.input_ref(),
            "labels": task.labels(),
        });
        if !self.shared.write(line.to_string()) {
            reg.ended = true;
            return Err(HandlerError::retryable("exec child is not running"));
        }
        while let Some(event) = rx.recv().await {
            match event {
                ChildEvent::Chunk(c) => task.send(c).await?,
                ChildEvent::Result(v) => {
                    reg.ended = true;
                    return Ok(v);
                }
                ChildEvent::Error { message, retryable } => {
                    reg.ended = true;
                    return Err(HandlerError { message, retryable });
                }
                ChildEvent::Died(why) => {
                    reg.ended = true;
                    return Err(HandlerError::retryable(why));
                }
            }
        }
        reg.ended = true;
        Err(HandlerError::retryable("exec child went away"))
    }
}
