//! The `exec` handler: one long-lived child process (say `python infer.py`
//! holding a model in memory) serves many tasks at once over JSON lines.
//!
//! # Protocol
//! Worker -> child (stdin), one JSON object per line:
//! - `{"type":"task","id":"...","attempt":1,"input":{...},"input_ref":null,"labels":{}}`
//! - `{"type":"cancel","id":"...","attempt":1}` - stop that attempt
//!   (cancelled, expired, requeued, or the worker is shutting down). It is
//!   sent the moment the stop reaches the worker, even if the child has
//!   said nothing about the task yet.
//!
//! Child -> worker (stdout), one JSON object per line, tagged with the id
//! *and* the attempt of its task line:
//! - `{"id":"...","attempt":1,"chunk":"text"}` - a piece of output (any number)
//! - `{"id":"...","attempt":1,"result":{...}}` - the attempt's result (ends it)
//! - `{"id":"...","attempt":1,"error":"why","retryable":false}` - the
//!   attempt failed (ends it)
//!
//! Why the attempt: when an attempt is stopped (an operator requeued the
//! task, or the worker was taken for lost), the next attempt of the same
//! task may start on this worker while the child is still winding the old
//! one down. Lines are routed by `(id, attempt)`; a line whose pair names
//! no attempt running here (the old attempt's last words, or a line
//! without `attempt`) is logged and ignored, as are lines that are not
//! JSON. Stderr is logged.
//!
//! # Lifecycle
//! The child runs as `sh -c <command>` in a process group of its own. The
//! worker takes no tasks until the child has started, nor while it is down.
//! If it exits, what is left of its group is stopped, its unfinished tasks
//! fail as retryable (so they are requeued while attempts remain), and it
//! is restarted with backoff. On restart and on shutdown the whole group
//! gets SIGTERM, then SIGKILL after [`TERM_GRACE`]: `sh` does not always
//! exec its last command, and stopping only `sh` would orphan the model
//! process together with the GPU memory it holds.
//!
//! # Layout
//! - this file: the handler, the child's lifecycle, routing by attempt;
//! - `lines`: reading the child's stdout in lines capped in length, and
//!   rate-limited logging of its stderr and unroutable lines;
//! - `reaper`: processes the child detached with `setsid`, adopted by the
//!   worker (child subreaper) and stopped with the group.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use rtq_core::{async_trait, Handler, HandlerError, TaskContext};
use serde_json::{json, Value};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{run_until_stopped, Serve};
use crate::upstream::UpstreamState;

mod lines;
mod reaper;

use lines::{attempt_of_prefix, CappedLines, Line, LogLimit};

/// How long the child's process group has between SIGTERM and SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(3);
/// First restart delay; it doubles after each quick exit.
const MIN_BACKOFF: Duration = Duration::from_millis(250);
/// Longest restart delay.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A child that ran this long was healthy: the next restart is quick.
const HEALTHY_RUN: Duration = Duration::from_secs(10);
/// How often a stopping process group is checked for survivors.
const GROUP_POLL: Duration = Duration::from_millis(20);
/// How long output still buffered in the pipes is read after the child's
/// group is gone (a result printed just before exiting still counts).
const DRAIN_LIMIT: Duration = Duration::from_secs(1);
/// Longest part of an unusable child line quoted in the log.
const QUOTE_LIMIT: usize = 200;
/// Events of one attempt waiting to be forwarded. While an attempt's queue
/// is full the worker stops reading the child's stdout (backpressure), so
/// a child producing faster than Redis takes its output is slowed down
/// rather than buffered without bound.
const EVENTS_PER_ATTEMPT: usize = 16;
/// Log lines per second from the child's stderr (and about its stdout
/// lines that cannot be used); the rest are counted and reported.
const LOG_LINES_PER_SEC: u32 = 20;

/// One attempt of one task: what child lines are routed by.
type AttemptKey = (String, u64);

/// What the child said about one attempt.
#[derive(Debug, PartialEq)]
enum ChildEvent {
    Chunk(String),
    Result(Value),
    Error { message: String, retryable: bool },
    Died(String),
}

/// Why a child line cannot be routed.
#[derive(Debug, PartialEq, Eq)]
enum BadLine {
    NotJson,
    NoId,
    NoAttempt,
    NoPayload,
}

impl BadLine {
    fn describe(&self) -> &'static str {
        match self {
            BadLine::NotJson => "not a JSON object",
            BadLine::NoId => "no string \"id\"",
            BadLine::NoAttempt => "no numeric \"attempt\" (copy it from the task line)",
            BadLine::NoPayload => "neither \"chunk\", \"result\" nor \"error\"",
        }
    }
}

/// A JSON value as text: strings as they are, anything else as JSON.
fn text_of(v: &Value) -> String {
    v.as_str()
        .map(String::from)
        .unwrap_or_else(|| v.to_string())
}

/// Decodes one stdout line of the child.
fn parse_line(line: &str) -> Result<(AttemptKey, ChildEvent), BadLine> {
    let v: Value = serde_json::from_str(line).map_err(|_| BadLine::NotJson)?;
    if !v.is_object() {
        return Err(BadLine::NotJson);
    }
    let id = v["id"].as_str().ok_or(BadLine::NoId)?.to_string();
    let attempt = v["attempt"].as_u64().ok_or(BadLine::NoAttempt)?;
    let event = if let Some(result) = v.get("result") {
        ChildEvent::Result(result.clone())
    } else if let Some(err) = v.get("error") {
        ChildEvent::Error {
            message: text_of(err),
            retryable: v["retryable"].as_bool().unwrap_or(false),
        }
    } else if let Some(chunk) = v.get("chunk") {
        ChildEvent::Chunk(text_of(chunk))
    } else {
        return Err(BadLine::NoPayload);
    };
    Ok(((id, attempt), event))
}

/// The state shared by the handler and the supervisor.
struct ExecShared {
    /// Longest line read from the child; a longer one fails the attempt
    /// its start names, or is dropped (logged), so a runaway child cannot
    /// make the worker buffer without bound.
    max_line: usize,
    /// Lines for the running child's stdin; `None` while it is down.
    stdin: Mutex<Option<mpsc::UnboundedSender<String>>>,
    /// The attempts running here, and where their events go (bounded:
    /// see [`EVENTS_PER_ATTEMPT`]).
    pending: Mutex<HashMap<AttemptKey, mpsc::Sender<ChildEvent>>>,
    /// Limits the log lines about stdout lines that cannot be routed.
    unroutable: Mutex<LogLimit>,
}

impl ExecShared {
    fn write(&self, line: String) -> bool {
        match self.stdin.lock().ok().and_then(|s| s.clone()) {
            Some(tx) => tx.send(line).is_ok(),
            None => false,
        }
    }

    /// Logs a problem with a child line, at most [`LOG_LINES_PER_SEC`]
    /// a second.
    fn complain(&self, log: impl FnOnce(u64)) {
        let admitted = self
            .unroutable
            .lock()
            .ok()
            .and_then(|mut l| l.admit(Instant::now()));
        if let Some(suppressed) = admitted {
            log(suppressed);
        }
    }

    /// Where the events of `key` go, if it runs here.
    fn sender(&self, key: &AttemptKey) -> Option<mpsc::Sender<ChildEvent>> {
        self.pending.lock().ok().and_then(|p| p.get(key).cloned())
    }

    /// Passes a child line to its attempt; waits while the attempt's
    /// queue is full (see [`EVENTS_PER_ATTEMPT`]).
    async fn route(&self, line: Line) {
        let line = match line {
            Line::Text(line) => line,
            Line::TooLong { prefix } => return self.too_long(&prefix).await,
        };
        let ((id, attempt), event) = match parse_line(&line) {
            Ok(parsed) => parsed,
            Err(problem) => {
                let quoted =
                    crate::secrets::scrub(&line.chars().take(QUOTE_LIMIT).collect::<String>());
                self.complain(|suppressed| {
                    tracing::warn!(line = %quoted, problem = problem.describe(), suppressed, "ignoring a line of the exec child")
                });
                return;
            }
        };
        let key = (id, attempt);
        match self.sender(&key) {
            Some(tx) => {
                let _ = tx.send(event).await;
            }
            None => self.complain(|suppressed| {
                tracing::info!(
                    task_id = %key.0,
                    attempt,
                    suppressed,
                    "ignoring a line of the exec child for an attempt not running here (ended or stopped)"
                )
            }),
        }
    }

    /// A line over `max_line`: fails the attempt its start names, so the
    /// attempt does not wait for a result that was dropped (forever,
    /// without a deadline); otherwise it is only logged.
    async fn too_long(&self, prefix: &str) {
        let why = format!(
            "the exec child wrote a line over the {}-byte line limit (--max-line-bytes) for this attempt; \
             the line was dropped, so the attempt's output is incomplete",
            self.max_line
        );
        if let Some(tx) = attempt_of_prefix(prefix).and_then(|key| self.sender(&key)) {
            let _ = tx
                .send(ChildEvent::Error {
                    message: why,
                    retryable: false,
                })
                .await;
            return;
        }
        let max_line = self.max_line;
        self.complain(|suppressed| {
            tracing::warn!(
                max_line,
                suppressed,
                "the exec child wrote a line over the line limit (--max-line-bytes) that names no attempt running here; dropped"
            )
        });
    }

    /// Ends every attempt: the child is gone. An attempt whose queue is
    /// full still ends: its channel closes with the sender dropped here.
    fn fail_all(&self, why: &str) {
        if let Ok(mut pending) = self.pending.lock() {
            for (_, tx) in pending.drain() {
                let _ = tx.try_send(ChildEvent::Died(why.to_string()));
            }
        }
    }
}

/// Runs tasks through a supervised child process.
pub struct ExecHandler {
    shared: Arc<ExecShared>,
}

impl ExecHandler {
    /// Starts the child (`sh -c command`, in a process group of its own)
    /// and its supervisor, which reports the child's state to `upstream`
    /// (build it with `UpstreamState::awaiting_child` so no task is taken
    /// before the child runs) and restarts it until `stop` fires.
    ///
    /// The returned handle completes once, after `stop`, the child's whole
    /// process group is gone (at most [`TERM_GRACE`] plus a moment); await
    /// it before the process exits.
    ///
    /// A line the child writes longer than `max_line` bytes fails the
    /// attempt its start names (or, naming none, is dropped with a
    /// warning).
    ///
    /// The worker process becomes a child subreaper (Linux): a process the
    /// child leaves behind in a session of its own (`setsid`), out of reach
    /// of the group's signals, is adopted by the worker when its parent
    /// dies and stopped with the group.
    pub fn start(
        command: String,
        upstream: Arc<UpstreamState>,
        stop: CancellationToken,
        max_line: usize,
    ) -> (Self, JoinHandle<()>) {
        let shared = Arc::new(ExecShared {
            max_line: max_line.max(1),
            stdin: Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
            unroutable: Mutex::new(LogLimit::new(LOG_LINES_PER_SEC, Duration::from_secs(1))),
        });
        reaper::become_subreaper();
        let supervisor = tokio::spawn(supervise(Arc::clone(&shared), command, upstream, stop));
        (Self { shared }, supervisor)
    }
}

/// The child: `sh -c command`, leader of its own process group.
struct ChildGroup {
    child: Child,
    pgid: Pid,
}

impl ChildGroup {
    fn spawn(command: &str) -> std::io::Result<Self> {
        let child = Command::new("sh")
            .arg("-c")
            .arg(command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            // A backstop if the supervisor itself is dropped: `sh` at least.
            .kill_on_drop(true)
            .spawn()?;
        let pid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| std::io::Error::other("the child has no pid"))?;
        Ok(Self {
            child,
            pgid: Pid::from_raw(pid),
        })
    }

    fn signal(&self, signal: Signal) {
        match killpg(self.pgid, signal) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => {
                tracing::warn!(pgid = %self.pgid, ?signal, error = %e, "cannot signal the exec child's process group")
            }
        }
    }

    /// Stops the whole group: SIGTERM, then SIGKILL for whatever is still
    /// alive after [`TERM_GRACE`]. Returns how the leader (`sh`) ended.
    async fn terminate(&mut self) -> String {
        self.signal(Signal::SIGTERM);
        let pgid = self.pgid;
        let child = &mut self.child;
        let ended = tokio::time::timeout(TERM_GRACE, async move {
            let status = child.wait().await;
            while group_has_live_members(pgid) {
                tokio::time::sleep(GROUP_POLL).await;
            }
            status
        })
        .await;
        let status = match ended {
            Ok(status) => status,
            Err(_) => {
                tracing::warn!(pgid = %pgid, "exec child's process group outlived SIGTERM; sending SIGKILL");
                self.signal(Signal::SIGKILL);
                self.child.wait().await
            }
        };
        status
            .map(|s| s.to_string())
            .unwrap_or_else(|e| e.to_string())
    }
}

/// True while a process of group `pgid` is alive. Zombies do not count:
/// an orphan whose new parent never reaps it (a container's init may not)
/// has stopped all the same.
fn group_has_live_members(pgid: Pid) -> bool {
    if killpg(pgid, None) == Err(Errno::ESRCH) {
        return false;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return true;
    };
    entries.flatten().any(|entry| {
        let is_pid = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
        is_pid
            && std::fs::read_to_string(entry.path().join("stat"))
                .ok()
                .and_then(|stat| state_and_group(&stat))
                .is_some_and(|(state, group)| group == pgid.as_raw() && !matches!(state, 'Z' | 'X'))
    })
}

/// The state letter and process group of a `/proc/<pid>/stat` line:
/// `pid (comm) state ppid pgrp ...`, where comm may hold spaces and `)`.
fn state_and_group(stat: &str) -> Option<(char, i32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let group = fields.next()?.parse().ok()?;
    Some((state, group))
}

/// Keeps a child running until `stop`; see the module docs.
async fn supervise(
    shared: Arc<ExecShared>,
    command: String,
    upstream: Arc<UpstreamState>,
    stop: CancellationToken,
) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let started = Instant::now();
        let why = match ChildGroup::spawn(&command) {
            Err(e) => format!("cannot start exec child `{command}`: {e}"),
            Ok(group) => run_child(&shared, group, &command, &upstream, &stop).await,
        };
        shared.fail_all(&why);
        if stop.is_cancelled() {
            return;
        }
        upstream.child_stopped(&why);
        let delay = if started.elapsed() > HEALTHY_RUN {
            MIN_BACKOFF
        } else {
            backoff
        };
        backoff = (delay * 2).min(MAX_BACKOFF);
        tracing::error!(reason = %why, restart_in_ms = delay.as_millis() as u64, "exec child is gone; restarting");
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Runs one child until it exits, closes its stdout, or `stop` fires; then
/// stops its whole process group. Returns why it ended.
async fn run_child(
    shared: &ExecShared,
    mut group: ChildGroup,
    command: &str,
    upstream: &UpstreamState,
    stop: &CancellationToken,
) -> String {
    let child = &mut group.child;
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        group.terminate().await;
        return format!("exec child `{command}` has no pipes");
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    if let Ok(mut s) = shared.stdin.lock() {
        *s = Some(tx);
    }
    tracing::info!(pid = %group.pgid, %command, "exec child started");
    upstream.child_started();
    let writer = tokio::spawn(async move {
        while let Some(mut line) = rx.recv().await {
            line.push('\n');
            if stdin.write_all(line.as_bytes()).await.is_err() || stdin.flush().await.is_err() {
                break;
            }
        }
    });
    let max_line = shared.max_line;
    let mut logger = tokio::spawn(async move {
        let mut lines = CappedLines::new(BufReader::new(stderr), max_line);
        let mut limit = LogLimit::new(LOG_LINES_PER_SEC, Duration::from_secs(1));
        while let Ok(Some(line)) = lines.next().await {
            let Some(suppressed) = limit.admit(Instant::now()) else {
                continue;
            };
            if suppressed > 0 {
                tracing::warn!(target: "exec_child", suppressed, "(stderr lines not logged: over {LOG_LINES_PER_SEC} a second)");
            }
            match line {
                Line::Text(line) => {
                    tracing::warn!(target: "exec_child", "{}", crate::secrets::scrub(&line))
                }
                Line::TooLong { .. } => {
                    tracing::warn!(target: "exec_child", max_line, "(a stderr line over the limit, dropped)")
                }
            }
        }
        let suppressed = limit.take_suppressed();
        if suppressed > 0 {
            tracing::warn!(target: "exec_child", suppressed, "(stderr lines not logged: over {LOG_LINES_PER_SEC} a second)");
        }
    });
    let mut lines = CappedLines::new(BufReader::new(stdout), max_line);
    let mut stopping = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                stopping = true;
                break;
            }
            _ = group.child.wait() => break,
            line = lines.next() => match line {
                // While the attempt's queue is full, reading waits; a stop
                // still ends it.
                Ok(Some(line)) => tokio::select! {
                    () = shared.route(line) => {}
                    _ = stop.cancelled() => {
                        stopping = true;
                        break;
                    }
                },
                Ok(None) | Err(_) => break,
            }
        }
    }
    // No new tasks from here on: intake off, stdin closed (the writer ends
    // once its queue is written).
    upstream.child_stopped(if stopping {
        "shutting down"
    } else {
        "exec child exited"
    });
    if let Ok(mut s) = shared.stdin.lock() {
        *s = None;
    }
    let status = group.terminate().await;
    // What the child left behind outside its group (adopted as orphans).
    reaper::stop_adopted(TERM_GRACE).await;
    writer.abort();
    drain(shared, &mut lines).await;
    if tokio::time::timeout(DRAIN_LIMIT, &mut logger)
        .await
        .is_err()
    {
        logger.abort();
    }
    if stopping {
        tracing::info!(%status, "exec child stopped");
        "the worker is shutting down".to_string()
    } else {
        format!("exec child `{command}` exited ({status})")
    }
}

/// Routes what the child wrote before it ended.
async fn drain(shared: &ExecShared, lines: &mut CappedLines<BufReader<ChildStdout>>) {
    let _ = tokio::time::timeout(DRAIN_LIMIT, async {
        while let Ok(Some(line)) = lines.next().await {
            shared.route(line).await;
        }
    })
    .await;
}

/// One attempt registered for the child's lines; unregisters it on drop
/// and, unless the attempt ended, tells the child to stop it.
struct Registration<'a> {
    shared: &'a ExecShared,
    key: AttemptKey,
    ended: bool,
}

impl<'a> Registration<'a> {
    fn new(shared: &'a ExecShared, key: AttemptKey, tx: mpsc::Sender<ChildEvent>) -> Self {
        if let Ok(mut p) = shared.pending.lock() {
            p.insert(key.clone(), tx);
        }
        Self {
            shared,
            key,
            ended: false,
        }
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if let Ok(mut p) = self.shared.pending.lock() {
            p.remove(&self.key);
        }
        if !self.ended {
            let (id, attempt) = &self.key;
            self.shared
                .write(json!({ "type": "cancel", "id": id, "attempt": attempt }).to_string());
        }
    }
}

/// One attempt; dropping it mid-way sends the child the cancel line.
#[async_trait]
impl Serve for ExecHandler {
    async fn serve(&self, task: &TaskContext) -> Result<Value, HandlerError> {
        let (tx, mut rx) = mpsc::channel(EVENTS_PER_ATTEMPT);
        let mut reg = Registration::new(&self.shared, (task.id().to_string(), task.attempt()), tx);
        let line = json!({
            "type": "task",
            "id": task.id(),
            "attempt": task.attempt(),
            "input": task.input(),
            "input_ref": task.input_ref(),
            "labels": task.labels(),
        });
        if !self.shared.write(line.to_string()) {
            // Nothing reached the child (it is down or restarting, and
            // intake is off meanwhile): give the task back unstarted for a
            // node whose child runs, without using an attempt.
            reg.ended = true;
            return Err(HandlerError::not_started("exec child is not running"));
        }
        while let Some(event) = rx.recv().await {
            let ending = match event {
                ChildEvent::Chunk(c) => {
                    task.send(c).await?;
                    continue;
                }
                ChildEvent::Result(v) => Ok(v),
                ChildEvent::Error { message, retryable } => Err(if retryable {
                    HandlerError::retryable(message)
                } else {
                    HandlerError::fatal(message)
                }),
                ChildEvent::Died(why) => Err(HandlerError::retryable(why)),
            };
            reg.ended = true;
            return ending;
        }
        reg.ended = true;
        Err(HandlerError::retryable("exec child went away"))
    }
}

#[async_trait]
impl Handler for ExecHandler {
    async fn handle(&self, task: TaskContext) -> Result<Value, HandlerError> {
        run_until_stopped(&task, self.serve(&task))
            .await
            .into_result()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, attempt: u64) -> AttemptKey {
        (id.to_string(), attempt)
    }

    #[test]
    fn child_lines_are_routed_by_id_and_attempt() {
        assert_eq!(
            parse_line(r#"{"id":"t1","attempt":2,"chunk":"hi"}"#),
            Ok((key("t1", 2), ChildEvent::Chunk("hi".into())))
        );
        assert_eq!(
            parse_line(r#"{"id":"t1","attempt":1,"result":{"n":1}}"#),
            Ok((key("t1", 1), ChildEvent::Result(json!({"n": 1}))))
        );
        assert_eq!(
            parse_line(r#"{"id":"t1","attempt":3,"error":"oom","retryable":true}"#),
            Ok((
                key("t1", 3),
                ChildEvent::Error {
                    message: "oom".into(),
                    retryable: true
                }
            ))
        );
        assert_eq!(
            parse_line(r#"{"id":"t1","attempt":1,"chunk":{"tok":1}}"#),
            Ok((key("t1", 1), ChildEvent::Chunk(r#"{"tok":1}"#.into())))
        );
    }

    #[test]
    fn child_lines_without_id_attempt_or_payload_are_rejected() {
        assert_eq!(parse_line("loading model..."), Err(BadLine::NotJson));
        assert_eq!(parse_line("[1,2]"), Err(BadLine::NotJson));
        assert_eq!(
            parse_line(r#"{"attempt":1,"chunk":"x"}"#),
            Err(BadLine::NoId)
        );
        assert_eq!(
            parse_line(r#"{"id":"t1","chunk":"x"}"#),
            Err(BadLine::NoAttempt)
        );
        assert_eq!(
            parse_line(r#"{"id":"t1","attempt":"1","chunk":"x"}"#),
            Err(BadLine::NoAttempt)
        );
        assert_eq!(
            parse_line(r#"{"id":"t1","attempt":1}"#),
            Err(BadLine::NoPayload)
        );
    }

    fn shared() -> ExecShared {
        ExecShared {
            max_line: 1 << 20,
            stdin: Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
            unroutable: Mutex::new(LogLimit::new(LOG_LINES_PER_SEC, Duration::from_secs(1))),
        }
    }

    #[tokio::test]
    async fn an_over_long_line_fails_the_attempt_its_start_names() {
        let shared = shared();
        let (tx, mut rx) = mpsc::channel(EVENTS_PER_ATTEMPT);
        let _reg = Registration::new(&shared, key("t1", 2), tx);
        let too_long = |p: &str| Line::TooLong { prefix: p.into() };
        shared
            .route(too_long(r#"{"id":"t1","attempt":1,"result":"rrr"#))
            .await;
        shared.route(too_long("zzzzzz")).await;
        assert!(rx.try_recv().is_err(), "attempt 1 is not running here");
        shared
            .route(too_long(r#"{"id":"t1","attempt":2,"result":"rrr"#))
            .await;
        match rx.try_recv() {
            Ok(ChildEvent::Error {
                message,
                retryable: false,
            }) => {
                assert!(message.contains("--max-line-bytes"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn reading_the_child_waits_while_an_attempts_queue_is_full() {
        let shared = shared();
        let (tx, mut rx) = mpsc::channel(EVENTS_PER_ATTEMPT);
        let _reg = Registration::new(&shared, key("t1", 1), tx);
        let chunk = || Line::Text(r#"{"id":"t1","attempt":1,"chunk":"x"}"#.to_string());
        for _ in 0..EVENTS_PER_ATTEMPT {
            shared.route(chunk()).await;
        }
        let mut next = Box::pin(shared.route(chunk()));
        let waited = tokio::time::timeout(Duration::from_millis(100), &mut next).await;
        assert!(waited.is_err(), "a full queue took one more event");
        assert!(rx.recv().await.is_some());
        tokio::time::timeout(Duration::from_secs(5), next)
            .await
            .expect("routing resumes once there is room");
    }

    #[tokio::test]
    async fn a_line_for_an_attempt_not_running_here_reaches_no_one() {
        let shared = shared();
        let (tx, mut rx) = mpsc::channel(EVENTS_PER_ATTEMPT);
        let _reg = Registration::new(&shared, key("t1", 2), tx);
        let text = |t: &str| Line::Text(t.to_string());
        shared
            .route(text(r#"{"id":"t1","attempt":1,"result":{"old":true}}"#))
            .await;
        shared
            .route(text(r#"{"id":"t1","chunk":"no attempt"}"#))
            .await;
        assert!(rx.try_recv().is_err());
        shared
            .route(text(r#"{"id":"t1","attempt":2,"result":{"new":true}}"#))
            .await;
        assert_eq!(
            rx.try_recv().ok(),
            Some(ChildEvent::Result(json!({"new": true})))
        );
    }

    #[test]
    fn proc_stat_lines_give_state_and_group() {
        assert_eq!(
            state_and_group("4242 (python3) S 1 4240 4240 0 -1 4194560"),
            Some(('S', 4240))
        );
        assert_eq!(
            state_and_group("77 (odd) name (x)) Z 1 70 70 0"),
            Some(('Z', 70))
        );
        assert_eq!(state_and_group("garbage"), None);
    }
}
