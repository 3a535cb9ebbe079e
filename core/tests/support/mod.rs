//! Shared test support: a scripted handler and workers that can be stopped
//! gracefully or "killed" (their runtime torn down without any goodbye, as
//! kill -9 looks from Redis).
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use redis::aio::MultiplexedConnection;
use rtq_core::{
    async_trait, Error, Handler, HandlerError, Queue, StreamEvent, TaskContext, TaskOutput,
    TaskStream, Worker, WorkerConfig,
};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

#[allow(unused_imports)]
pub use rtq_testkit::RedisServer;

pub mod keyspace;
pub mod proto;
pub mod rng;

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
///   "retryable": bool, "panic": true, "hold_after": true, "hold_at": k,
///   "fail_on": "<worker id>"}`: `hold` waits for `release` (or the cancel)
/// before sending the chunks, `hold_at` before sending chunk `k`,
/// `hold_after` after sending them all; `fail_on` fails retryably on that
/// worker only.
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
        let hold_at = input["hold_at"].as_u64();
        for i in 0..n {
            if hold_at == Some(i) {
                self.hold(&task).await?;
            }
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            task.send(format!("{text}{i} ")).await?;
        }
        if input["hold_after"].as_bool() == Some(true) {
            self.hold(&task).await?;
        }
        if input["fail_on"].as_str() == Some(self.worker.as_str()) {
            return Err(HandlerError::retryable(format!(
                "{} is broken",
                self.worker
            )));
        }
        if let Some(why) = input["fail"].as_str() {
            return Err(if input["retryable"].as_bool() == Some(true) {
                HandlerError::retryable(why)
            } else {
                HandlerError::fatal(why)
            });
        }
        Ok(json!({
            "echo": input,
            "input_ref": task.input_ref(),
            "worker": self.worker,
            "attempt": task.attempt()
        }))
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

    /// Like kill -9: when this returns, every connection of the worker is
    /// closed (the kernel closes a killed process's sockets at once), so a
    /// blocked inbox read of the dead worker can never take a task handed
    /// to its successor. (`shutdown_background` left them open for a
    /// moment: a restart under the same id could lose its first delivery
    /// to the dead reader, a flake the soak found.)
    pub fn kill(mut self) {
        if let Some(rt) = self.runtime.take() {
            // A runtime cannot be shut down and waited for from inside
            // another one; a plain thread can.
            std::thread::spawn(move || rt.shutdown_timeout(std::time::Duration::from_secs(10)))
                .join()
                .expect("the killed worker's runtime shuts down");
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
    if url.starts_with("redis+cluster://") {
        return wait_registered_in_cluster(url, id).await;
    }
    let mut conn = patient_conn(url).await;
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

/// [`wait_registered`] on a Redis Cluster (`redis+cluster://h:p,h:p`):
/// the worker's key may be on any master.
async fn wait_registered_in_cluster(url: &str, id: &str) {
    use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo};
    // The first seed (with the credentials) is enough to find the rest.
    let first = url["redis+cluster://".len()..].split(',').next().unwrap();
    let client = redis::cluster::ClusterClient::new(vec![format!("redis://{first}")]).unwrap();
    let mut conn = client.get_async_connection().await.unwrap();
    for _ in 0..500 {
        let keys = conn
            .route_command(
                redis::cmd("KEYS").arg("rtq:*:workers").clone(),
                RoutingInfo::MultiNode((
                    MultipleNodeRoutingInfo::AllMasters,
                    Some(ResponsePolicy::CombineArrays),
                )),
            )
            .await
            .unwrap();
        let keys: Vec<String> = redis::from_redis_value(keys).unwrap();
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

/// An async connection for a test's own commands, with a response
/// timeout of a minute: redis-rs's default (500 ms) fails a large call
/// (a 16 MiB spec hashed by Lua) on a loaded 2-core machine.
pub async fn patient_conn(url: &str) -> MultiplexedConnection {
    let config = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(std::time::Duration::from_secs(60)));
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("cannot connect to the test redis-server")
}

/// An async connection to the test server as the default user, for
/// assertions.
pub async fn admin_conn(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    patient_conn(&redis.url()).await
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

// Reading Redis in assertions -------------------------------------------------

/// The task's `st` field, `None` if its hash does not exist.
pub async fn state_of(conn: &mut MultiplexedConnection, q: &Queue, id: &str) -> Option<String> {
    redis::cmd("HGET")
        .arg(q.keys().task(id))
        .arg("st")
        .query_async(conn)
        .await
        .unwrap()
}

/// Waits (up to [`PATIENCE`]) until the task is in `state` in Redis.
pub async fn wait_for_state(conn: &MultiplexedConnection, q: &Queue, id: &str, state: &str) {
    eventually(&format!("task {id} is {state} in Redis"), || {
        let mut conn = conn.clone();
        async move { state_of(&mut conn, q, id).await.as_deref() == Some(state) }
    })
    .await;
}

/// `PTTL` of a key: -2 missing, -1 no TTL, else milliseconds left.
pub async fn pttl(conn: &mut MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PTTL").arg(key).query_async(conn).await.unwrap()
}

/// `SISMEMBER`.
pub async fn is_member(conn: &mut MultiplexedConnection, set: &str, member: &str) -> bool {
    redis::cmd("SISMEMBER")
        .arg(set)
        .arg(member)
        .query_async(conn)
        .await
        .unwrap()
}

/// A numeric field of `INFO <section>`; for `cmdstat_*` lines, `field` is
/// `cmdstat_xread.rejected_calls` style.
pub async fn info_number(conn: &mut MultiplexedConnection, section: &str, field: &str) -> u64 {
    let text: String = redis::cmd("INFO")
        .arg(section)
        .query_async(conn)
        .await
        .unwrap();
    let (line, sub) = field.split_once('.').unwrap_or((field, ""));
    for l in text.lines() {
        let Some((name, value)) = l.trim_end().split_once(':') else {
            continue;
        };
        if name != line {
            continue;
        }
        if sub.is_empty() {
            return value.parse().unwrap();
        }
        for part in value.split(',') {
            if let Some((k, v)) = part.split_once('=') {
                if k == sub {
                    return v.parse().unwrap();
                }
            }
        }
    }
    0
}

/// Makes the server log every command (SLOWLOG), so a test can see which
/// calls reached Redis.
pub async fn log_every_command(conn: &mut MultiplexedConnection) {
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-log-slower-than")
        .arg(0)
        .arg("slowlog-max-len")
        .arg(100_000)
        .query_async(conn)
        .await
        .unwrap();
}

/// The commands Redis executed, oldest first, as text arguments (needs
/// [`log_every_command`]).
pub async fn command_log(conn: &mut MultiplexedConnection) -> Vec<Vec<String>> {
    let log: redis::Value = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(-1)
        .query_async(conn)
        .await
        .unwrap();
    let redis::Value::Array(entries) = log else {
        return Vec::new();
    };
    let text = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        _ => String::new(),
    };
    let mut commands: Vec<Vec<String>> = entries
        .iter()
        .filter_map(|e| {
            let redis::Value::Array(fields) = e else {
                return None;
            };
            let Some(redis::Value::Array(args)) = fields.get(3) else {
                return None;
            };
            Some(args.iter().map(text).collect())
        })
        .collect();
    commands.reverse();
    commands
}

pub fn is_fcall(args: &[String], function: &str, id: &str) -> bool {
    args.len() > 2
        && args[0].eq_ignore_ascii_case("fcall")
        && args[1] == function
        && args.iter().any(|a| a == id)
}

/// The groups of an `rtq2_write_many` or `rtq2_complete_many` call as
/// (task id, outcome, chunk count): `FCALL <name> 1 <meta> <worker> <n>`,
/// then per group task id, attempt, seq0, outcome, payload, want next,
/// k and k chunks. Empty for any other command.
pub fn write_groups(args: &[String]) -> Vec<(String, String, usize)> {
    let many = args.len() > 5
        && args[0].eq_ignore_ascii_case("fcall")
        && (args[1] == "rtq2_write_many" || args[1] == "rtq2_complete_many");
    if !many {
        return Vec::new();
    }
    let mut groups = Vec::new();
    let mut o = 6;
    while o + 6 < args.len() {
        // SLOWLOG keeps the first 32 arguments of a command only.
        let Ok(k) = args[o + 6].parse::<usize>() else {
            break;
        };
        groups.push((args[o].clone(), args[o + 3].clone(), k));
        o += 7 + k;
    }
    groups
}

/// How many FCALLs of `function` with `id` among their arguments Redis
/// executed (needs [`log_every_command`]). For `rtq2_submit`, each submit
/// of `id` inside a coalesced `rtq2_submit_many` counts as one call too,
/// and for `rtq2_chunk` each chunk write of `id` inside an
/// `rtq2_write_many`.
pub async fn calls(conn: &mut MultiplexedConnection, function: &str, id: &str) -> usize {
    command_log(conn)
        .await
        .iter()
        .map(|args| {
            if function == "rtq2_submit" && is_fcall(args, "rtq2_submit_many", id) {
                // FCALL rtq2_submit_many 1 <meta> <n> then 8 arguments per task.
                args.iter().skip(5).step_by(8).filter(|a| *a == id).count()
            } else if function == "rtq2_chunk" && is_fcall(args, "rtq2_write_many", id) {
                write_groups(args)
                    .iter()
                    .filter(|(t, outcome, _)| t == id && outcome == "chunks")
                    .count()
            } else {
                usize::from(is_fcall(args, function, id))
            }
        })
        .sum()
}

/// The entries of a stream: (entry id, fields).
pub async fn xrange(
    conn: &mut MultiplexedConnection,
    key: &str,
) -> Vec<(String, HashMap<String, String>)> {
    let reply: redis::Value = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .unwrap();
    let text = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        _ => String::new(),
    };
    let redis::Value::Array(entries) = reply else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter_map(|e| {
            let redis::Value::Array(e) = e else {
                return None;
            };
            let redis::Value::Array(flat) = &e[1] else {
                return None;
            };
            let fields = flat.chunks(2).map(|p| (text(&p[0]), text(&p[1]))).collect();
            Some((text(&e[0]), fields))
        })
        .collect()
}

/// Reads a stream to its end: chunk indexes, text, and the final output.
pub async fn drain_stream(mut stream: TaskStream) -> (Vec<u64>, String, Result<TaskOutput, Error>) {
    let mut indexes = Vec::new();
    let mut text = String::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(StreamEvent::Chunk(c)) => {
                indexes.push(c.index);
                text.push_str(&c.text());
            }
            Ok(StreamEvent::Done(out)) => {
                assert!(stream.next().await.is_none(), "nothing after Done");
                return (indexes, text, Ok(out));
            }
            Ok(StreamEvent::Restarted {
                attempt, reason, ..
            }) => {
                panic!("no restart expected (attempt {attempt}: {reason})")
            }
            Err(e) => return (indexes, text, Err(e)),
        }
    }
    panic!("the stream ended without Done or an error")
}

pub fn expected_text(prefix: &str, n: u64) -> String {
    (0..n).map(|i| format!("{prefix}{i} ")).collect()
}

/// Loads into `redis` this library with each `(from, to)` edit applied
/// and its revision renumbered 99, which no process replaces: a server
/// whose library lacks what the edits take out, and whose user may not
/// upgrade it. Panics if an edit does not apply. Returns an admin
/// connection.
pub async fn load_older_library(
    redis: &RedisServer,
    edits: &[(&str, &str)],
) -> redis::aio::MultiplexedConnection {
    let mut older = rtq_core::functions::library_source().into_owned();
    let revision = format!(
        "local REVISION = {}\n",
        rtq_core::functions::LIBRARY_REVISION
    );
    for (from, to) in edits
        .iter()
        .chain([(revision.as_str(), "local REVISION = 99\n")].iter())
    {
        assert!(older.contains(from), "the library no longer holds {from:?}");
        older = older.replace(from, to);
    }
    let mut admin = admin_conn(redis).await;
    let _: redis::Value = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg(&older)
        .query_async(&mut admin)
        .await
        .unwrap();
    admin
}
