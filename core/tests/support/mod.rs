//! Shared test support: a scripted handler and workers that can be stopped
//! gracefully or "killed" (their runtime torn down without any goodbye, as
//! kill -9 looks from Redis).
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use rtq_core::{async_trait, Handler, HandlerError, TaskContext, Worker, WorkerConfig};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

pub use rtq_testkit::RedisServer;

/// What the scripted handler saw, reported to the test.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    Started {
        id: String,
        attempt: u64,
        worker: String,
    },
    Cancelled {
        id: String,
        reason: String,
    },
}

/// A handler driven by its input:
/// `{"chunks": n, "chunk": "text", "delay_ms": d, "hold": true, "fail": "why",
///   "retryable": bool, "panic": true, "hold_after": true}`: `hold` waits
/// for `release` (or the cancel) before sending the chunks, `hold_after`
/// after sending them.
pub struct Scripted {
    pub worker: String,
    pub seen: mpsc::UnboundedSender<Seen>,
    pub release: Arc<tokio::sync::Notify>,
}

impl Scripted {
    /// Waits for `release`, or reports the cancel and fails.
    async fn hold(&self, task: &TaskContext) -> Result<(), HandlerError> {
        tokio::select! {
            _ = self.release.notified() => Ok(()),
            _ = task.cancelled() => {
                let reason = task.stop_reason().map(|r| r.to_string()).unwrap_or_default();
                let _ = self.seen.send(Seen::Cancelled {
                    id: task.id().to_string(),
                    reason: reason.clone(),
                });
                Err(HandlerError::fatal(reason))
            }
        }
    }
}

#[async_trait]
impl Handler for Scripted {
    async fn handle(&self, task: TaskContext) -> Result<Value, HandlerError> {
        let input = task.input().cloned().unwrap_or(Value::Null);
        let _ = self.seen.send(Seen::Started {
            id: task.id().to_string(),
            attempt: task.attempt(),
            worker: self.worker.clone(),
        });
        if input["panic"].as_bool() == Some(true) {
            panic!("scripted panic");
        }
        if input["hold"].as_bool() == Some(true) {
            self.hold(&task).await?;
        }
        let n = input["chunks"].as_u64().unwrap_or(0);
        let delay = input["delay_ms"].as_u64().unwrap_or(0);
        let text = input["chunk"].as_str().unwrap_or("tok").to_string();
        for i in 0..n {
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            task.send(format!("{text}{i} ")).await?;
        }
        if input["hold_after"].as_bool() == Some(true) {
            self.hold(&task).await?;
        }
        if let Some(why) = input["fail"].as_str() {
            return Err(if input["retryable"].as_bool() == Some(true) {
                HandlerError::retryable(why)
            } else {
                HandlerError::fatal(why)
            });
        }
        Ok(json!({"echo": input, "worker": self.worker, "attempt": task.attempt()}))
    }
}

/// A worker running in the test's runtime; stops gracefully.
pub struct TestWorker {
    pub id: String,
    pub status: Arc<rtq_core::WorkerStatus>,
    stop: Option<oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<()>,
    pub release: Arc<tokio::sync::Notify>,
}

impl TestWorker {
    pub async fn start(
        url: &str,
        config: WorkerConfig,
        seen: mpsc::UnboundedSender<Seen>,
    ) -> TestWorker {
        let worker = Worker::connect(url, config).await.expect("worker connects");
        let id = worker.id().to_string();
        let status = worker.status();
        let release = Arc::new(tokio::sync::Notify::new());
        let handler = Arc::new(Scripted {
            worker: id.clone(),
            seen,
            release: Arc::clone(&release),
        });
        let (tx, rx) = oneshot::channel();
        let handle = tokio::spawn(async move {
            worker
                .run(handler, async {
                    let _ = rx.await;
                })
                .await
                .expect("worker runs");
        });
        wait_registered(url, &id).await;
        TestWorker {
            id,
            status,
            stop: Some(tx),
            handle,
            release,
        }
    }

    /// SIGTERM-like: drain and deregister.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = self.handle.await;
    }

    /// Aborts the tokio task running `Worker::run`, dropping its future
    /// (what a cancelled `select!` or an aborted task does to a worker
    /// embedded in a larger program). Returns once the future is dropped.
    pub async fn abort(self) {
        self.handle.abort();
        let _ = self.handle.await;
    }
}

/// A worker in a runtime of its own, to be torn down like a kill -9:
/// no deregistration, no further heartbeats, connections just close.
pub struct KillableWorker {
    pub id: String,
    runtime: Option<tokio::runtime::Runtime>,
    pub release: Arc<tokio::sync::Notify>,
}

impl KillableWorker {
    pub async fn start(
        url: &str,
        config: WorkerConfig,
        seen: mpsc::UnboundedSender<Seen>,
    ) -> KillableWorker {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let release = Arc::new(tokio::sync::Notify::new());
        let (id_tx, id_rx) = oneshot::channel();
        let url2 = url.to_string();
        let rel = Arc::clone(&release);
        runtime.spawn(async move {
            let worker = Worker::connect(&url2, config)
                .await
                .expect("worker connects");
            let id = worker.id().to_string();
            let handler = Arc::new(Scripted {
                worker: id.clone(),
                seen,
                release: rel,
            });
            let _ = id_tx.send(id);
            let _ = worker.run(handler, std::future::pending()).await;
        });
        let id = id_rx.await.unwrap();
        wait_registered(url, &id).await;
        KillableWorker {
            id,
            runtime: Some(runtime),
            release,
        }
    }

    pub fn kill(mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for KillableWorker {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Waits until the worker has parked idle tokens or taken work (registered).
pub async fn wait_registered(url: &str, id: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for _ in 0..500 {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("rtq:*:workers")
            .query_async(&mut conn)
            .await
            .unwrap();
        for k in keys {
            let score: Option<f64> = redis::cmd("ZSCORE")
                .arg(&k)
                .arg(id)
                .query_async(&mut conn)
                .await
                .unwrap();
            if score.is_some() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("worker {id} never registered");
}

/// Creates the ACL user `name` (password `pw`) with every key, channel and
/// command, then `rules` (e.g. `"-xadd"`), and returns its URL.
pub fn acl_user(redis: &RedisServer, name: &str, rules: &[&str]) -> String {
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER")
        .arg(name)
        .arg("reset")
        .arg("on")
        .arg(">pw")
        .arg("~*")
        .arg("&*")
        .arg("+@all");
    for rule in rules {
        cmd.arg(*rule);
    }
    let _: () = cmd.query(&mut redis.conn()).expect("ACL SETUSER");
    format!("redis://{name}:pw@127.0.0.1:{}/", redis.port())
}

/// An async connection to the test server as the default user, for
/// assertions.
pub async fn admin_conn(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("cannot connect to the test redis-server")
}

/// Polls `check` until it holds; fails the test after [`PATIENCE`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = std::time::Instant::now();
    while !check().await {
        if started.elapsed() > PATIENCE {
            panic!("still not true after {PATIENCE:?}: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn seen_channel() -> (mpsc::UnboundedSender<Seen>, mpsc::UnboundedReceiver<Seen>) {
    mpsc::unbounded_channel()
}

/// Receives the next observation or fails the test after `secs`.
pub async fn next_seen(rx: &mut mpsc::UnboundedReceiver<Seen>, secs: u64) -> Seen {
    tokio::time::timeout(Duration::from_secs(secs), rx.recv())
        .await
        .expect("handler observation did not arrive")
        .expect("channel closed")
}

/// Upper bound on any single wait in a test: generous, so a slow shared
/// machine never flakes; only a hang trips it.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub async fn within<T>(fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, fut)
        .await
        .expect("operation hung")
}
