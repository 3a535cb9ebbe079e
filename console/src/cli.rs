//! The scriptable commands: stable output, JSON where asked, and exit codes
//! a script can rely on (0 ok, 1 operation failed, 2 usage error, 3 Redis
//! unreachable, 4 authentication failed, 5 TLS failed, 6 permission denied).

use std::io::Write;
use std::time::Duration;

use futures::StreamExt;
use rtq_core::admin::{Admin, QueueOverview, QueueStats};
use rtq_core::{Client, ClientConfig, Error, StreamEvent, TaskInfo, TaskRequest};
use serde_json::{json, Value};

use crate::{Command, TaskList};

/// Exit code: the operation failed.
pub const EXIT_FAILED: i32 = 1;
/// Exit code: Redis could not be reached (retrying later may help).
pub const EXIT_UNREACHABLE: i32 = 3;
/// Exit code: Redis refused the user or password.
pub const EXIT_AUTH_FAILED: i32 = 4;
/// Exit code: the TLS handshake failed or the TLS settings are unusable.
pub const EXIT_TLS_FAILED: i32 = 5;
/// Exit code: the Redis user lacks a permission (ACL).
pub const EXIT_PERMISSION_DENIED: i32 = 6;

/// The exit code for an error: one of the connection classes, or
/// [`EXIT_FAILED`].
pub fn exit_code(e: &Error) -> i32 {
    e.connection_problem()
        .map_or(EXIT_FAILED, rtq_core::ConnectionProblem::exit_code)
}

/// Runs one command; returns the process exit code. Errors go to stderr.
pub async fn run(redis: &str, config: ClientConfig, read_only: bool, command: Command) -> i32 {
    let client = match Client::connect_with(redis, config).await {
        Ok(c) => c,
        Err(e) => {
            report(&e);
            return exit_code(&e);
        }
    };
    let mutating = matches!(
        command,
        Command::Requeue { .. }
            | Command::Cancel { .. }
            | Command::Pause { .. }
            | Command::Resume { .. }
            | Command::MaxDepth { .. }
            | Command::Purge { .. }
    );
    if read_only && mutating {
        eprintln!("rtq: --read-only forbids this command");
        return EXIT_FAILED;
    }
    match execute(&client, command).await {
        Ok(()) => 0,
        Err(e) => {
            report(&e);
            exit_code(&e)
        }
    }
}

/// `text` made safe for a terminal: every control character (ESC, BEL,
/// CR, the C1 range, DEL, ...) is shown escaped (`\x1b`), so text from
/// Redis or an upstream (a worker's host name, a failure reason, a
/// streamed chunk) cannot move the cursor, clear the screen or retitle the
/// terminal. Newlines and tabs stay when `multiline`.
pub fn printable(text: &str, multiline: bool) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() && !(multiline && matches!(c, '\n' | '\t'));
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            let n = u32::from(c);
            if n <= 0xff {
                out.push_str(&format!("\\x{n:02x}"));
            } else {
                out.push_str(&format!("\\u{{{n:x}}}"));
            }
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Prints an error line on stderr, control characters escaped.
fn report(e: &impl std::fmt::Display) {
    eprintln!("rtq: {}", printable(&e.to_string(), true));
}

/// `rtq keygen FILE`: writes a new signing key (owner-only, never over an
/// existing file) and prints its verify key. Returns the exit code.
pub fn keygen(file: &std::path::Path) -> i32 {
    use std::os::unix::fs::OpenOptionsExt;
    let (key, pem) = match rtq_core::signing::SigningKey::generate_pem() {
        Ok(k) => k,
        Err(e) => {
            report(&e);
            return EXIT_FAILED;
        }
    };
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .and_then(|mut f| f.write_all(pem.as_bytes()));
    if let Err(e) = written {
        report(&format!("cannot write {}: {e}", file.display()));
        return EXIT_FAILED;
    }
    println!("{}", key.verify_key().to_hex());
    0
}

/// The JSON form of a queue's overview and statistics.
pub fn stats_json(o: &QueueOverview, s: &QueueStats) -> Value {
    let p = |p: &rtq_core::admin::Percentiles| json!({"p50_ms": p.p50, "p95_ms": p.p95, "p99_ms": p.p99, "count": p.count});
    json!({
        "queue": o.name,
        "paused": o.paused,
        "pending": o.pending,
        "running": o.running,
        "workers_alive": o.workers_alive,
        "idle_slots": o.idle_slots,
        "max_depth": o.max_depth,
        "head_wait_ms": o.head_wait_ms,
        "error": o.error,
        "window_secs": s.window_secs,
        "submitted_per_sec": s.rate("sub"),
        "done_per_sec": s.rate("done"),
        "failed_per_sec": s.rate("failed"),
        "expired": s.sum("expired"),
        "cancelled": s.sum("cancelled"),
        "worker_lost": s.sum("lost"),
        "rejected_full": s.sum("full"),
        "wait": p(&s.wait),
        "first_chunk": p(&s.first_chunk),
        "total": p(&s.total),
    })
}

fn ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.0}ms")).unwrap_or_else(|| "-".into())
}

fn task_json(t: &TaskInfo) -> Value {
    json!({
        "id": t.id, "state": t.state.as_str(), "priority": t.priority, "attempt": t.attempt,
        "worker": t.worker, "submitted_ms": t.submitted_ms, "deadline_ms": t.deadline_ms,
        "started_ms": t.started_ms, "finished_ms": t.finished_ms, "chunks": t.chunks, "bytes": t.bytes,
        "error": match &t.outcome { Some(rtq_core::Outcome::Ended { message, .. }) => Value::String(message.clone()), _ => Value::Null },
    })
}

async fn execute(client: &Client, command: Command) -> Result<(), Error> {
    let admin = Admin::new(client);
    let mut out = std::io::stdout().lock();
    match command {
        Command::Ui => unreachable!("the console is started by main"),
        Command::Acl { .. } | Command::Keygen { .. } => {
            unreachable!("rtq acl and rtq keygen are answered by main, offline")
        }
        Command::Stats {
            queue,
            json,
            window_secs,
        } => {
            let buckets = (window_secs.max(10) / 10) as usize;
            let rows: Vec<_> = admin
                .dashboard(buckets)
                .await?
                .into_iter()
                .filter(|(o, _)| queue.as_ref().is_none_or(|q| &o.name == q))
                .collect();
            if let (Some(q), true) = (&queue, rows.is_empty()) {
                return Err(Error::InvalidInput(format!("no queue named {q:?}")));
            }
            if json {
                let v: Vec<Value> = rows.iter().map(|(o, s)| stats_json(o, s)).collect();
                let _ = writeln!(out, "{}", Value::Array(v));
            } else {
                let _ = writeln!(
                    out,
                    "{:<20} {:>7} {:>8} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8}",
                    "QUEUE",
                    "STATE",
                    "PENDING",
                    "RUNNING",
                    "WORKERS",
                    "DONE/S",
                    "FAIL/S",
                    "WAIT99",
                    "TOTAL99"
                );
                for (o, s) in &rows {
                    if let Some(error) = &o.error {
                        let _ = writeln!(
                            out,
                            "{:<20} {:>7} {:>8} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8}",
                            printable(&o.name, false),
                            "error",
                            "-",
                            "-",
                            "-",
                            "-",
                            "-",
                            "-",
                            "-"
                        );
                        report(error);
                        continue;
                    }
                    let _ = writeln!(
                        out,
                        "{:<20} {:>7} {:>8} {:>7} {:>8} {:>8.1} {:>8.1} {:>8} {:>8}",
                        printable(&o.name, false),
                        if o.paused { "paused" } else { "running" },
                        o.pending,
                        o.running,
                        o.workers_alive,
                        s.rate("done"),
                        s.rate("failed"),
                        ms(s.wait.p99),
                        ms(s.total.p99)
                    );
                }
            }
        }
        Command::Workers { queue, json } => {
            let now = admin.overview(&queue).await?.now_ms;
            let workers = admin.workers(&queue).await?;
            if json {
                let v: Vec<Value> = workers
                    .iter()
                    .map(|w| json!({"id": w.id, "alive": w.lease_until_ms.is_some_and(|l| l > now), "heartbeat_age_ms": w.heartbeat_age_ms(now), "fields": w.fields, "tasks": w.tasks}))
                    .collect();
                let _ = writeln!(out, "{}", Value::Array(v));
            } else {
                let _ = writeln!(
                    out,
                    "{:<32} {:<16} {:<8} {:>6} {:>8} {:>8} {:>8}",
                    "WORKER", "HOST", "STATE", "BUSY", "DONE", "FAILED", "HB AGE"
                );
                for w in &workers {
                    let _ = writeln!(
                        out,
                        "{:<32} {:<16} {:<8} {:>6} {:>8} {:>8} {:>7}s",
                        printable(&w.id, false),
                        printable(w.field("host"), false),
                        printable(w.field("state"), false),
                        printable(&format!("{}/{}", w.field("busy"), w.field("slots")), false),
                        printable(w.field("done"), false),
                        printable(w.field("failed"), false),
                        w.heartbeat_age_ms(now)
                            .map(|a| format!("{:.1}", a as f64 / 1000.0))
                            .unwrap_or_default()
                    );
                }
            }
        }
        Command::Tasks {
            queue,
            state,
            limit,
            json,
        } => {
            let tasks = match state {
                TaskList::Pending => admin.pending(&queue, 0, limit).await?,
                TaskList::Running => admin
                    .running(&queue)
                    .await?
                    .into_iter()
                    .take(limit)
                    .collect(),
                TaskList::Recent => admin.recent(&queue, 0, limit).await?,
            };
            if json {
                let v: Vec<Value> = tasks.iter().map(task_json).collect();
                let _ = writeln!(out, "{}", Value::Array(v));
            } else {
                for t in &tasks {
                    let _ = writeln!(
                        out,
                        "{}\t{}\t{}\t{}",
                        printable(&t.id, false),
                        t.state,
                        t.priority,
                        printable(&t.worker, false)
                    );
                }
            }
        }
        Command::Submit {
            queue,
            input,
            stream,
            priority,
            timeout_secs,
            no_wait,
        } => {
            let q = client.queue(&queue)?;
            let mut req = TaskRequest::parse(&input)?.priority(priority);
            if timeout_secs > 0 {
                req = req.timeout(Duration::from_secs(timeout_secs));
            }
            if no_wait {
                let sub = q.submit(req).await?;
                let _ = writeln!(out, "{}", sub.id);
            } else if stream {
                let mut s = q.stream(req).await?;
                while let Some(ev) = s.next().await {
                    match ev? {
                        StreamEvent::Chunk(c) => {
                            let text = String::from_utf8_lossy(&c.data);
                            let _ = out.write_all(printable(&text, true).as_bytes());
                            let _ = out.flush();
                        }
                        StreamEvent::Restarted { reason, .. } => {
                            eprintln!("\n[restarted: {}]", printable(&reason, true))
                        }
                        StreamEvent::Done(o) => {
                            let _ = writeln!(out, "\n{}", o.result);
                        }
                    }
                }
            } else {
                let o = q.run(req).await?;
                let _ = writeln!(out, "{}", o.result);
            }
        }
        Command::Requeue { queue, id } => {
            let prev = admin.requeue(&queue, &id).await?;
            let _ = writeln!(out, "requeued {id} (was {prev})");
        }
        Command::Cancel { queue, id } => {
            let prev = admin.cancel(&queue, &id).await?;
            let _ = writeln!(out, "cancelled {id} (was {prev})");
        }
        Command::Pause { queue } => {
            admin.pause(&queue, true).await?;
            let _ = writeln!(out, "paused {queue}");
        }
        Command::Resume { queue } => {
            let n = admin.pause(&queue, false).await?;
            let _ = writeln!(out, "resumed {queue} ({n} tasks dispatched)");
        }
        Command::MaxDepth { queue, depth } => {
            admin.set_max_depth(&queue, depth).await?;
            let _ = writeln!(out, "max depth of {queue} is {depth}");
        }
        Command::Purge { queue, confirm } => {
            if confirm != queue {
                return Err(Error::InvalidInput(format!(
                    "--confirm must repeat the queue name {queue:?}"
                )));
            }
            let n = admin.purge(&queue).await?;
            let _ = writeln!(out, "purged {n} pending tasks from {queue}");
        }
    }
    Ok(())
}
