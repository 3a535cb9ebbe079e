//! The access-control roles of PROTOCOL.md ("Access control"), proven with
//! real ACL users on a real redis-server.
//!
//! The `ACL SETUSER` lines are read from PROTOCOL.md itself, so the rules
//! tested here are exactly the rules documented. Every test also reads
//! `ACL LOG`: a refusal that rtq swallows (a best-effort registry SADD, a
//! housekeeping tick, a notification XADD inside a function) would pass a
//! functional check unnoticed, but Redis logs it.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use rtq_core::admin::Admin;
use rtq_core::functions::watch::Read;
use rtq_core::functions::{self, library_source, LIBRARY_REVISION};
use rtq_core::keys::QueueKeys;
use rtq_core::{Client, ClientConfig, Error, TaskRequest, TaskState, Worker, WorkerConfig};
use serde_json::json;
use support::*;
use tokio::sync::{mpsc, oneshot};

const PROTOCOL: &str = include_str!("../PROTOCOL.md");
const PASSWORD: &str = "acl-test-secret";
/// The queue the per-queue roles are made for.
const QUEUE: &str = "gpu";
/// A queue they must not touch.
const OTHER: &str = "other";

/// The roles PROTOCOL.md defines.
#[derive(Clone, Copy, Debug)]
enum Role {
    Client,
    Worker,
    Console,
    Admin,
}

impl Role {
    /// The user name PROTOCOL.md gives the role (per-queue roles for `QUEUE`).
    fn user(self) -> String {
        match self {
            Role::Client => format!("rtq-client-{QUEUE}"),
            Role::Worker => format!("rtq-worker-{QUEUE}"),
            Role::Console => "rtq-console".into(),
            Role::Admin => "rtq-admin".into(),
        }
    }

    /// The documented `ACL SETUSER` lines of this role, `<q>` and
    /// `<password>` filled in, split into arguments.
    fn rules(self) -> Vec<Vec<String>> {
        let user = self.user();
        let lines: Vec<Vec<String>> = PROTOCOL
            .lines()
            .filter(|l| l.starts_with("ACL SETUSER "))
            .map(|l| {
                l.replace("<q>", QUEUE)
                    .replace("<password>", PASSWORD)
                    .split_whitespace()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .filter(|args| args[2] == user)
            .collect();
        assert!(
            !lines.is_empty(),
            "PROTOCOL.md has no ACL SETUSER line for {user}"
        );
        lines
    }

    /// Every `+permission` the role is granted.
    fn grants(self) -> BTreeSet<String> {
        self.rules()
            .into_iter()
            .flatten()
            .filter_map(|a| a.strip_prefix('+').map(str::to_lowercase))
            .collect()
    }

    /// Creates the user on `redis` (as the default user) and returns its URL.
    fn create(self, redis: &RedisServer) -> String {
        let mut conn = redis.conn();
        for args in self.rules() {
            let mut cmd = redis::cmd(&args[0]);
            for a in &args[1..] {
                cmd.arg(a);
            }
            let () = cmd
                .query(&mut conn)
                .unwrap_or_else(|e| panic!("{args:?} refused: {e}"));
        }
        format!(
            "redis://{}:{PASSWORD}@127.0.0.1:{}/",
            self.user(),
            redis.port()
        )
    }
}

/// Refusals Redis logged for `user` since the last [`reset_acl_log`], as
/// "reason object" strings. `client|setinfo` is ignored: redis-rs sends it
/// at connect on Redis 7.2+ and ignores a refusal, and Redis 7.0 (where the
/// documented lines must work) does not know the subcommand, so no role can
/// grant it.
fn acl_refusals(redis: &RedisServer, user: &str) -> Vec<String> {
    let entries: Vec<redis::Value> = redis::cmd("ACL")
        .arg("LOG")
        .arg(1000)
        .query(&mut redis.conn())
        .unwrap();
    let text = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        other => format!("{other:?}"),
    };
    let mut out = Vec::new();
    for entry in entries {
        let fields: Vec<redis::Value> = match entry {
            redis::Value::Array(f) => f,
            redis::Value::Map(m) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
            _ => continue,
        };
        let get = |name: &str| {
            fields
                .chunks(2)
                .find(|p| text(&p[0]) == name)
                .map(|p| text(&p[1]))
                .unwrap_or_default()
        };
        if get("username") == user && get("object") != "client|setinfo" {
            out.push(format!(
                "{} {} ({})",
                get("reason"),
                get("object"),
                get("context")
            ));
        }
    }
    out
}

fn reset_acl_log(redis: &RedisServer) {
    let () = redis::cmd("ACL")
        .arg("LOG")
        .arg("RESET")
        .query(&mut redis.conn())
        .unwrap();
}

fn assert_no_refusals(redis: &RedisServer, role: Role) {
    let refused = acl_refusals(redis, &role.user());
    assert!(
        refused.is_empty(),
        "Redis refused {role:?} something the documented role must allow: {refused:#?}"
    );
}

fn assert_denied<T: std::fmt::Debug>(what: &str, result: Result<T, Error>) {
    match result {
        Err(Error::PermissionDenied(_)) => {}
        other => panic!("{what}: expected PermissionDenied, got {other:?}"),
    }
}

/// The error code of a raw command sent as `url`'s user.
async fn raw_error(url: &str, args: &[&str]) -> String {
    let mut conn = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    match cmd.query_async::<redis::Value>(&mut conn).await {
        Ok(v) => panic!("{args:?} was allowed: {v:?}"),
        Err(e) => e.code().unwrap_or("?").to_string(),
    }
}

/// Loads the library as the default user (what an admin does once).
async fn load_library(redis: &RedisServer) {
    Client::connect(&redis.url())
        .await
        .expect("the default user loads the library");
}

/// The library with an older revision, as a server upgraded from an
/// earlier rtq release holds it.
fn older_library() -> String {
    let current = format!("local REVISION = {LIBRARY_REVISION}\n");
    let source = library_source().into_owned();
    assert!(source.contains(&current));
    source.replace(
        &current,
        &format!("local REVISION = {}\n", LIBRARY_REVISION - 1),
    )
}

fn library_revision(redis: &RedisServer) -> Option<i64> {
    let reply: redis::RedisResult<Vec<i64>> = redis::cmd("FCALL_RO")
        .arg("rtq2_version")
        .arg(0)
        .query(&mut redis.conn());
    reply.ok().map(|v| v[1])
}

/// A worker of any user, run in the test's runtime.
struct RoleWorker {
    id: String,
    stop: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<Result<(), Error>>,
    release: Arc<tokio::sync::Notify>,
}

impl RoleWorker {
    /// Starts a worker as `url`'s user and waits (as the default user)
    /// until it registered.
    async fn start(
        redis: &RedisServer,
        url: &str,
        config: WorkerConfig,
        seen: mpsc::UnboundedSender<Seen>,
    ) -> RoleWorker {
        let keys = QueueKeys::new(&config.queue).unwrap();
        let worker = Worker::connect(url, config).await.expect("worker connects");
        let id = worker.id().to_string();
        let release = Arc::new(tokio::sync::Notify::new());
        let handler = Arc::new(Scripted {
            worker: id.clone(),
            seen,
            release: Arc::clone(&release),
        });
        let (stop, stopped) = oneshot::channel();
        let done = tokio::spawn(async move {
            worker
                .run(handler, async {
                    let _ = stopped.await;
                })
                .await
        });
        let mut conn = redis.conn();
        for _ in 0..1000 {
            let lease: Option<f64> = redis::cmd("ZSCORE")
                .arg(keys.workers())
                .arg(&id)
                .query(&mut conn)
                .unwrap();
            if lease.is_some() {
                return RoleWorker {
                    id,
                    stop,
                    done,
                    release,
                };
            }
            assert!(!done.is_finished(), "worker {id} exited before registering");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("worker {id} never registered");
    }

    /// Drains and deregisters; returns what `run` returned.
    async fn stop(self) -> Result<(), Error> {
        let _ = self.stop.send(());
        within(self.done).await.expect("worker task panicked")
    }
}

async fn wait_started(rx: &mut mpsc::UnboundedReceiver<Seen>, task: &str) -> u64 {
    loop {
        if let Seen::Started { id, attempt, .. } = next_seen(rx, 20).await {
            if id == task {
                return attempt;
            }
        }
    }
}

fn task_exists(redis: &RedisServer, queue: &str, id: &str) -> bool {
    redis::cmd("EXISTS")
        .arg(QueueKeys::new(queue).unwrap().task(id))
        .query::<i64>(&mut redis.conn())
        .unwrap()
        == 1
}

#[tokio::test]
async fn the_documented_roles_grant_every_command_the_library_runs_and_the_console_no_write() {
    let redis = RedisServer::start();
    // Both libraries: v2's and the stream queues' (rtq3).
    let source = format!(
        "{}\n{}",
        library_source(),
        rtq_core::functions::v3::LIBRARY_SOURCE
    );
    let mut library_commands = BTreeSet::new();
    for call in ["redis.call('", "redis.pcall('"] {
        for piece in source.split(call).skip(1) {
            let name = piece.split('\'').next().unwrap().to_lowercase();
            library_commands.insert(name);
        }
    }
    assert!(library_commands.len() > 20, "{library_commands:?}");
    let registered: BTreeSet<String> = ["function_name = '", "register_function('"]
        .into_iter()
        .flat_map(|form| {
            source
                .split(form)
                .skip(1)
                .map(|p| p.split('\'').next().unwrap().to_string())
        })
        .collect();

    // Redis checks every command a function runs against the caller's ACL:
    // a role that calls a writing function needs all of them.
    for role in [Role::Client, Role::Worker, Role::Admin] {
        let grants = role.grants();
        let missing: Vec<_> = library_commands.difference(&grants).collect();
        assert!(missing.is_empty(), "{role:?} lacks {missing:?}");
    }
    // Function names granted with the first-argument form must exist, and
    // FCALL_RO ones must be flagged no-writes.
    for role in [Role::Client, Role::Worker, Role::Console, Role::Admin] {
        for grant in role.grants() {
            let Some((command, function)) = grant.split_once('|') else {
                continue;
            };
            if command == "fcall" || command == "fcall_ro" {
                assert!(registered.contains(function), "{role:?}: no {function}");
            }
            if command == "fcall_ro" {
                let flags = source
                    .split(&format!("function_name = '{function}'"))
                    .nth(1)
                    .and_then(|rest| rest.split("register_function").next())
                    .and_then(|call| call.split("flags = {").nth(1))
                    .and_then(|flags| flags.split('}').next())
                    .unwrap_or_default();
                assert!(
                    flags.contains("'no-writes'"),
                    "{role:?}: {function} is not no-writes: {flags}"
                );
            }
        }
    }
    // The console is granted no command Redis flags as a write.
    let mut conn = redis.conn();
    for grant in Role::Console.grants() {
        let command = grant.split('|').next().unwrap().to_string();
        let info: Vec<redis::Value> = redis::cmd("COMMAND")
            .arg("INFO")
            .arg(&command)
            .query(&mut conn)
            .unwrap();
        let described = format!("{info:?}").to_lowercase();
        assert!(described.contains(&format!("\"{command}\"")), "{described}");
        assert!(
            !described.contains("\"write\""),
            "the console role grants {command}, a write command: {described}"
        );
    }
    // And every line is accepted by Redis 7.0.
    for role in [Role::Client, Role::Worker, Role::Console, Role::Admin] {
        role.create(&redis);
    }
}

#[tokio::test]
async fn the_client_role_submits_runs_waits_and_cancels_on_its_queue_and_nothing_else() {
    let redis = RedisServer::start();
    load_library(&redis).await;
    let url = Role::Client.create(&redis);
    let (seen, mut rx) = seen_channel();
    let worker = TestWorker::start(&redis.url(), WorkerConfig::new(QUEUE).slots(2), seen).await;
    reset_acl_log(&redis);

    // Housekeeping every 50 ms: every tick of a wait runs rtq2_housekeep
    // and keeps the reply stream, so any refusal shows up in the ACL log.
    let config = ClientConfig::default().housekeeping_every(Duration::from_millis(50));
    let client = Client::connect_with(&url, config).await.unwrap();
    let q = client.queue(QUEUE).unwrap();

    let out = within(q.run(TaskRequest::json(json!({"x": 1}))))
        .await
        .unwrap();
    assert_eq!(out.result["echo"]["x"], 1);

    let stream = within(q.stream(TaskRequest::json(json!({"chunks": 3}))))
        .await
        .unwrap();
    let (_, text) = within(stream.collect_text()).await.unwrap();
    assert_eq!(text, "tok0 tok1 tok2 ");

    let submitted = q
        .submit(TaskRequest::json(json!({"y": 2})).id("later-1"))
        .await
        .unwrap();
    let out = within(q.wait(&submitted.id, None)).await.unwrap();
    assert_eq!(out.result["echo"]["y"], 2);
    assert_eq!(q.status("later-1").await.unwrap().state, TaskState::Done);

    // A wait that lives past its first verification (5 s), on a task that
    // another process follows too (watch, then unwatch when dropped).
    q.submit(TaskRequest::json(json!({"hold": true})).id("long-1"))
        .await
        .unwrap();
    wait_started(&mut rx, "long-1").await;
    let follower = q.follow("long-1", 0).await.unwrap();
    drop(follower);
    let long_wait = tokio::spawn({
        let q = q.clone();
        async move { q.wait("long-1", None).await }
    });
    tokio::time::sleep(Duration::from_millis(5500)).await;
    worker.release.notify_one();
    within(long_wait).await.unwrap().unwrap();

    // Cancel a running task; a timed run ends at its deadline (rtq2_cancel
    // in deadline mode, from the client's timer).
    q.submit(TaskRequest::json(json!({"hold": true})).id("cancel-1"))
        .await
        .unwrap();
    wait_started(&mut rx, "cancel-1").await;
    assert_eq!(
        q.cancel("cancel-1", "not needed").await.unwrap(),
        TaskState::Running
    );
    let err = within(q.wait("cancel-1", None)).await.unwrap_err();
    assert!(matches!(err, Error::Cancelled { .. }), "{err}");
    let err =
        within(q.run(TaskRequest::json(json!({"hold": true})).timeout(Duration::from_millis(300))))
            .await
            .unwrap_err();
    assert!(matches!(err, Error::TimedOut { .. }), "{err}");
    assert_no_refusals(&redis, Role::Client);

    // Another queue: refused by Redis, nothing written there.
    let other = client.queue(OTHER).unwrap();
    assert_denied(
        "submit to another queue",
        other.submit(TaskRequest::json(json!({})).id("x-1")).await,
    );
    assert_denied(
        "run on another queue",
        within(other.run(TaskRequest::json(json!({})).id("x-2"))).await,
    );
    assert_denied("cancel on another queue", other.cancel("x-1", "no").await);
    assert_denied("status on another queue", other.status("x-1").await);
    assert!(!task_exists(&redis, OTHER, "x-1") && !task_exists(&redis, OTHER, "x-2"));

    // Operator and worker functions on its own queue: refused. (Whether
    // its queue exists it may ask.)
    let admin = Admin::new(&client);
    reset_acl_log(&redis);
    assert!(admin.queue_exists(QUEUE).await.unwrap());
    assert_no_refusals(&redis, Role::Client);
    assert_denied(
        "queue_exists of another queue",
        admin.queue_exists(OTHER).await,
    );
    assert_denied("delete_queue", admin.delete_queue(QUEUE, true).await);
    assert_denied("requeue", admin.requeue(QUEUE, "later-1").await);
    assert_denied("pause", admin.pause(QUEUE, true).await);
    assert_denied("purge", admin.purge(QUEUE).await);
    // A command neither library runs (Redis checks a function's commands
    // against the caller's rules, so those the libraries run are granted).
    assert_eq!(
        raw_error(&url, &["LPUSH", "rtq:{gpu}:meta", "x"]).await,
        "NOPERM"
    );
    assert_eq!(
        raw_error(&url, &["FUNCTION", "LOAD", "REPLACE", "#!lua name=rtq2\n"]).await,
        "NOPERM"
    );
    assert_eq!(q.status("later-1").await.unwrap().state, TaskState::Done);
    worker.stop().await;
}

#[tokio::test]
async fn the_worker_role_serves_its_queue_and_cannot_touch_another() {
    let redis = RedisServer::start();
    load_library(&redis).await;
    let url = Role::Worker.create(&redis);
    reset_acl_log(&redis);
    let (seen, mut rx) = seen_channel();
    let worker = RoleWorker::start(
        &redis,
        &url,
        WorkerConfig::new(QUEUE)
            .slots(2)
            .lease(Duration::from_millis(1000)),
        seen,
    )
    .await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue(QUEUE).unwrap();
    let admin = Admin::new(&client);

    // Results, chunks, retries (complete with retry, backoff, promotion).
    let out = within(q.run(TaskRequest::json(json!({"x": 1}))))
        .await
        .unwrap();
    assert_eq!(out.result["worker"], worker.id.as_str());
    let stream = within(q.stream(TaskRequest::json(json!({"chunks": 700, "chunk": "c"}))))
        .await
        .unwrap();
    let (_, text) = within(stream.collect_text()).await.unwrap();
    assert_eq!(text.matches('c').count(), 700);
    let err = within(
        q.run(TaskRequest::json(json!({"fail": "flaky", "retryable": true})).max_attempts(2)),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, Error::Failed { ref reason, .. } if reason == "flaky"),
        "{err}"
    );

    // A cancel through the inbox; an operator requeue (stop order and
    // fencing) runs the task again; heartbeats go on meanwhile.
    q.submit(TaskRequest::json(json!({"hold": true})).id("held-1"))
        .await
        .unwrap();
    wait_started(&mut rx, "held-1").await;
    q.cancel("held-1", "stop").await.unwrap();
    assert!(matches!(
        within(q.wait("held-1", None)).await,
        Err(Error::Cancelled { .. })
    ));
    q.submit(TaskRequest::json(json!({"hold": true})).id("held-2"))
        .await
        .unwrap();
    assert_eq!(wait_started(&mut rx, "held-2").await, 1);
    assert_eq!(
        admin.requeue(QUEUE, "held-2").await.unwrap(),
        TaskState::Running
    );
    assert_eq!(wait_started(&mut rx, "held-2").await, 2);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    worker.release.notify_one();
    let out = within(q.wait("held-2", None)).await.unwrap();
    assert_eq!(out.attempt, 2);
    let id = worker.id.clone();
    within(worker.stop()).await.unwrap();
    let workers = admin.workers(QUEUE).await.unwrap();
    assert!(
        workers.iter().all(|w| w.id != id),
        "the worker did not leave"
    );
    assert_no_refusals(&redis, Role::Worker);

    // Another queue: registration is refused, and the worker stops.
    let stray = Worker::connect(&url, WorkerConfig::new(OTHER))
        .await
        .unwrap();
    let (seen, _rx) = seen_channel();
    let handler = Arc::new(Scripted {
        worker: "stray".into(),
        seen,
        release: Default::default(),
    });
    assert_denied(
        "a worker on another queue",
        within(stray.run(handler, std::future::pending())).await,
    );
    // No client or operator functions on its own queue.
    let as_worker = Client::connect(&url).await.unwrap();
    assert_denied(
        "submit as the worker role",
        as_worker
            .queue(QUEUE)
            .unwrap()
            .submit(TaskRequest::json(json!({})).id("w-1"))
            .await,
    );
    assert_denied(
        "purge as the worker role",
        Admin::new(&as_worker).purge(QUEUE).await,
    );
    assert!(!task_exists(&redis, QUEUE, "w-1"));
}

/// A worker user made by an `rtq acl` line of revision 11 or earlier has no
/// `+smismember` (revision 12's complete calls read the owned set with
/// it): the library falls back to `SISMEMBER`, so such a worker keeps
/// serving, its slots counted right, with no refusal but that one.
#[tokio::test]
async fn a_worker_user_made_before_revision_12_serves_through_the_sismember_fallback() {
    let redis = RedisServer::start();
    load_library(&redis).await;
    let mut conn = redis.conn();
    let mut made = 0;
    for args in Role::Worker.rules() {
        let mut cmd = redis::cmd(&args[0]);
        for a in args[1..].iter().filter(|a| a.as_str() != "+smismember") {
            cmd.arg(a);
        }
        made += usize::from(args.iter().any(|a| a == "+smismember"));
        let () = cmd.query(&mut conn).unwrap();
    }
    assert_eq!(made, 1, "the documented worker line grants +smismember");
    let url = format!(
        "redis://{}:{PASSWORD}@127.0.0.1:{}/",
        Role::Worker.user(),
        redis.port()
    );
    reset_acl_log(&redis);
    let (seen, _rx) = seen_channel();
    let worker = RoleWorker::start(&redis, &url, WorkerConfig::new(QUEUE).slots(4), seen).await;
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue(QUEUE).unwrap();
    // More tasks than slots, at once: completes coalesce and take next tasks.
    let runs: Vec<_> = (0..40)
        .map(|i| q.run(TaskRequest::json(json!({ "i": i }))))
        .collect();
    for (i, out) in futures::future::join_all(runs)
        .await
        .into_iter()
        .enumerate()
    {
        let out = out.unwrap_or_else(|e| panic!("task {i}: {e}"));
        assert_eq!(out.result["worker"], worker.id.as_str());
    }
    let keys = QueueKeys::new(QUEUE).unwrap();
    let owned: Vec<String> = redis::cmd("SMEMBERS")
        .arg(keys.worker_tasks(&worker.id))
        .query(&mut conn)
        .unwrap();
    assert!(owned.is_empty(), "tasks left owned: {owned:?}");
    let free: Option<f64> = redis::cmd("ZSCORE")
        .arg(keys.free())
        .arg(&worker.id)
        .query(&mut conn)
        .unwrap();
    assert_eq!(free, Some(4.0), "every slot is free again");
    let refused = acl_refusals(&redis, &Role::Worker.user());
    assert!(!refused.is_empty(), "the fallback was not exercised");
    assert!(
        refused.iter().all(|r| r.contains("smismember")),
        "refused more than SMISMEMBER: {refused:#?}"
    );
    within(worker.stop()).await.unwrap();
}

#[tokio::test]
async fn the_read_only_console_reads_everything_and_redis_refuses_every_write() {
    let redis = RedisServer::start();
    let owner = Client::connect(&redis.url()).await.unwrap();
    let url = Role::Console.create(&redis);
    let (seen, mut rx) = seen_channel();
    let worker = TestWorker::start(&redis.url(), WorkerConfig::new(QUEUE).slots(2), seen).await;
    let q = owner.queue(QUEUE).unwrap();
    let owner_admin = Admin::new(&owner);
    within(q.run(TaskRequest::json(json!({"chunks": 3})).id("done-1")))
        .await
        .unwrap();
    q.submit(TaskRequest::json(json!({"hold": true})).id("held-1"))
        .await
        .unwrap();
    wait_started(&mut rx, "held-1").await;
    owner_admin.pause(QUEUE, true).await.unwrap();
    for id in ["wait-1", "wait-2"] {
        q.submit(TaskRequest::json(json!({})).id(id)).await.unwrap();
    }
    reset_acl_log(&redis);

    let console = Client::connect(&url).await.unwrap();
    let admin = Admin::new(&console);
    assert_eq!(admin.queues().await.unwrap(), [QUEUE]);
    let o = admin.overview(QUEUE).await.unwrap();
    assert_eq!(
        (o.paused, o.pending, o.running, o.workers_alive),
        (true, 2, 1, 1)
    );
    // Workers add their statistics with their heartbeats.
    eventually("the worker's statistics arrive", || {
        let admin = &admin;
        async move {
            let dash = admin.dashboard(6).await.unwrap();
            dash[0].1.buckets.iter().any(|b| b.get("done") == 1)
        }
    })
    .await;
    let dash = admin.dashboard(6).await.unwrap();
    assert_eq!(dash.len(), 1);
    assert_eq!((dash[0].0.pending, dash[0].0.running), (2, 1));
    let workers = admin.workers(QUEUE).await.unwrap();
    assert_eq!(workers.len(), 1);
    assert_eq!(workers[0].tasks, ["held-1"]);
    assert_eq!(workers[0].field("slots"), "2");
    let pending: Vec<String> = admin
        .pending(QUEUE, 0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(pending, ["wait-1", "wait-2"]);
    let recent = admin.recent(QUEUE, 0, 10).await.unwrap();
    assert_eq!(recent.len(), 1);
    assert_eq!(recent[0].id, "done-1");
    assert_eq!(admin.task(QUEUE, "done-1").await.unwrap().chunks, 3);
    assert_eq!(admin.running(QUEUE).await.unwrap()[0].id, "held-1");
    let tail = admin.tail(QUEUE, "done-1", 2).await.unwrap();
    assert_eq!(tail, [b"tok1 ".to_vec(), b"tok2 ".to_vec()]);
    assert_eq!(admin.stats(QUEUE, 6).await.unwrap().sum("sub"), 4);
    // Output pages through the no-writes function (FCALL_RO).
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys = QueueKeys::new(QUEUE).unwrap();
    let snap = functions::call(
        &mut conn,
        &keys,
        &Read {
            id: "done-1",
            from: 1,
        },
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        (snap.state, snap.chunk_count, snap.chunks.len()),
        (TaskState::Done, 3, 2)
    );
    assert_no_refusals(&redis, Role::Console);

    // Every write, through rtq and raw: refused by Redis.
    let cq = console.queue(QUEUE).unwrap();
    assert_denied(
        "submit",
        cq.submit(TaskRequest::json(json!({})).id("c-1")).await,
    );
    assert_denied("cancel", cq.cancel("wait-1", "no").await);
    assert_denied("admin cancel", admin.cancel(QUEUE, "held-1").await);
    assert_denied("requeue", admin.requeue(QUEUE, "done-1").await);
    assert_denied("set_priority", admin.set_priority(QUEUE, "wait-2", 9).await);
    assert_denied("pause", admin.pause(QUEUE, false).await);
    assert_denied("set_max_depth", admin.set_max_depth(QUEUE, 1).await);
    assert_denied("purge", admin.purge(QUEUE).await);
    reset_acl_log(&redis);
    assert!(admin.queue_exists(QUEUE).await.unwrap());
    assert!(!admin.queue_exists("no-such-queue").await.unwrap());
    // (A registration retry of the console's client may be refused in
    // the meantime; the existence check itself must not be.)
    let refused = acl_refusals(&redis, &Role::Console.user());
    assert!(
        !refused
            .iter()
            .any(|r| r.contains("sismember") || r.contains("hget")),
        "{refused:?}"
    );
    assert_denied("housekeeping", admin.housekeeping(QUEUE).await);
    assert_denied("delete_queue", admin.delete_queue(QUEUE, true).await);
    for args in [
        &["SET", "rtq:{gpu}:x", "1"][..],
        &["DEL", "rtq:{gpu}:t:done-1"],
        &["FCALL", "rtq2_housekeep", "1", "rtq:{gpu}:meta"],
        &["FCALL_RO", "rtq2_housekeep", "1", "rtq:{gpu}:meta"],
        &["FUNCTION", "LOAD", "REPLACE", "#!lua name=rtq2\n"],
        &["FUNCTION", "DELETE", "rtq2"],
    ] {
        assert_eq!(raw_error(&url, args).await, "NOPERM", "{args:?}");
    }
    // Nothing changed.
    let o = owner_admin.overview(QUEUE).await.unwrap();
    assert_eq!((o.paused, o.pending, o.running), (true, 2, 1));
    assert!(!task_exists(&redis, QUEUE, "c-1"));
    assert_eq!(q.status("done-1").await.unwrap().state, TaskState::Done);
    assert_eq!(q.status("wait-2").await.unwrap().priority, 0);
    worker.release.notify_one();
    worker.stop().await;
}

#[tokio::test]
async fn the_admin_role_loads_and_upgrades_the_library_and_runs_every_operator_action() {
    let redis = RedisServer::start();
    let url = Role::Admin.create(&redis);
    reset_acl_log(&redis);
    // A server without the library: connecting as the admin loads it.
    assert_eq!(library_revision(&redis), None);
    let client = Client::connect(&url).await.unwrap();
    assert_eq!(library_revision(&redis), Some(LIBRARY_REVISION));
    // A server with an older revision: the admin upgrades it.
    let () = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(older_library())
        .query(&mut redis.conn())
        .unwrap();
    assert_eq!(library_revision(&redis), Some(LIBRARY_REVISION - 1));
    Client::connect(&url).await.unwrap();
    assert_eq!(library_revision(&redis), Some(LIBRARY_REVISION));

    let admin = Admin::new(&client);
    let q = client.queue(QUEUE).unwrap();
    let (seen, mut rx) = seen_channel();
    let worker = RoleWorker::start(&redis, &url, WorkerConfig::new(QUEUE), seen).await;
    admin.pause(QUEUE, true).await.unwrap();
    for i in 0..3 {
        q.submit(TaskRequest::json(json!({})).id(format!("t{i}")))
            .await
            .unwrap();
    }
    assert_eq!(
        admin.set_priority(QUEUE, "t2", 5).await.unwrap(),
        TaskState::Queued
    );
    assert_eq!(admin.pending(QUEUE, 0, 1).await.unwrap()[0].id, "t2");
    admin.set_max_depth(QUEUE, 3).await.unwrap();
    assert!(matches!(
        q.submit(TaskRequest::json(json!({}))).await,
        Err(Error::QueueFull { .. })
    ));
    admin.set_max_depth(QUEUE, 0).await.unwrap();
    admin.pause(QUEUE, false).await.unwrap();
    for id in ["t2", "t0", "t1"] {
        within(q.wait(id, None)).await.unwrap();
    }
    assert_eq!(admin.requeue(QUEUE, "t0").await.unwrap(), TaskState::Done);
    assert_eq!(within(q.wait("t0", None)).await.unwrap().attempt, 2);
    q.submit(TaskRequest::json(json!({"hold": true})).id("held"))
        .await
        .unwrap();
    wait_started(&mut rx, "held").await;
    assert_eq!(
        admin.cancel(QUEUE, "held").await.unwrap(),
        TaskState::Running
    );
    admin.pause(QUEUE, true).await.unwrap();
    for i in 0..4 {
        q.submit(TaskRequest::json(json!({})).id(format!("p{i}")))
            .await
            .unwrap();
    }
    assert_eq!(admin.purge(QUEUE).await.unwrap(), 4);
    admin.housekeeping(QUEUE).await.unwrap();
    let stats = admin.stats(QUEUE, 6).await.unwrap();
    assert_eq!(stats.sum("cancelled"), 5);
    assert_eq!(admin.workers(QUEUE).await.unwrap().len(), 1);
    assert_eq!(admin.recent(QUEUE, 0, 100).await.unwrap().len(), 8);
    within(worker.stop()).await.unwrap();
    assert!(admin.queue_exists(QUEUE).await.unwrap());
    let gone = admin.delete_queue(QUEUE, true).await.unwrap();
    assert!(gone.keys > 0, "{gone:?}");
    assert!(!admin.queue_exists(QUEUE).await.unwrap());
    assert_eq!(admin.queues().await.unwrap(), Vec::<String>::new());
    assert_no_refusals(&redis, Role::Admin);
}

#[tokio::test]
async fn a_role_that_may_not_load_functions_needs_an_admin_to_load_the_library_and_runs_on_an_older_revision(
) {
    let redis = RedisServer::start();
    let client_url = Role::Client.create(&redis);
    let worker_url = Role::Worker.create(&redis);
    let console_url = Role::Console.create(&redis);

    let names_function_load = |r: Result<Client, Error>| match r {
        Err(Error::PermissionDenied(m)) => assert!(m.contains("function|load"), "{m}"),
        Err(other) => panic!("expected PermissionDenied, got {other}"),
        Ok(_) => panic!("connected without the library"),
    };
    // Missing library.
    names_function_load(Client::connect(&client_url).await);
    names_function_load(Client::connect(&console_url).await);
    assert!(matches!(
        Worker::connect(&worker_url, WorkerConfig::new(QUEUE)).await,
        Err(Error::PermissionDenied(_))
    ));
    // An older revision: these roles cannot upgrade it, and run on it
    // (with a warning) rather than not at all.
    let () = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg(older_library())
        .query(&mut redis.conn())
        .unwrap();
    Client::connect(&client_url).await.unwrap();
    Client::connect(&console_url).await.unwrap();
    assert_eq!(library_revision(&redis), Some(LIBRARY_REVISION - 1));
    // Once the admin (here the default user) loaded it, they connect.
    load_library(&redis).await;
    Client::connect(&client_url).await.unwrap();
    Client::connect(&console_url).await.unwrap();
    Worker::connect(&worker_url, WorkerConfig::new(QUEUE))
        .await
        .unwrap();
}
