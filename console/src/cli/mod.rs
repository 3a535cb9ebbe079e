//! The scriptable commands: stable output, JSON where asked (`--json`, see
//! [`json`](mod@json)), and exit codes a script can rely on (0 ok, 1 operation
//! failed, 2 usage error, 3 Redis unreachable, 4 authentication failed, 5
//! TLS failed, 6 permission denied).
//!
//! # Layout
//! - this file: exit codes, [`CliError`], [`run`] and the actions.
//! - `reads`: `rtq stats`, `rtq workers`, `rtq tasks`.
//! - [`json`](mod@json): the `--json` shapes and their schema version.
//! - `submit`: `rtq submit` (input from text, stdin or a file; the checks
//!   for an unknown queue and for a queue without workers).
//! - `task`: `rtq task` (one task, `--follow` streams it).
//! - `offline`: the commands that need no Redis (acl, keygen,
//!   completions, man).

pub mod json;
mod offline;
mod reads;
mod submit;
mod task;

use std::fmt;
use std::io::Write;

use rtq_core::admin::Admin;
use rtq_core::{Client, ClientConfig, Error};
use serde_json::{json, Value};

use crate::{Command, QueueCommand};

pub use offline::{acl, completions, keygen, man};

/// Exit code: the operation failed.
pub const EXIT_FAILED: i32 = 1;
/// Exit code: a usage error (a missing or malformed flag, a bad name, a
/// value out of range, a `--confirm` that does not match, no terminal for
/// the console).
pub const EXIT_USAGE: i32 = 2;
/// Exit code: Redis could not be reached (retrying later may help).
pub const EXIT_UNREACHABLE: i32 = 3;
/// Exit code: Redis refused the user or password.
pub const EXIT_AUTH_FAILED: i32 = 4;
/// Exit code: the TLS handshake failed or the TLS settings are unusable.
pub const EXIT_TLS_FAILED: i32 = 5;
/// Exit code: the Redis user lacks a permission (ACL).
pub const EXIT_PERMISSION_DENIED: i32 = 6;

/// The exit code for an error of rtq-core: one of the connection classes,
/// [`EXIT_USAGE`] for a name that breaks the key layout or a `--redis` URL
/// that does not parse, or [`EXIT_FAILED`].
pub fn exit_code(e: &Error) -> i32 {
    if matches!(e, Error::InvalidName { .. } | Error::InvalidUrl { .. }) {
        return EXIT_USAGE;
    }
    e.connection_problem()
        .map_or(EXIT_FAILED, rtq_core::ConnectionProblem::exit_code)
}

/// Why a command failed, and so its exit code.
#[derive(Debug)]
pub enum CliError {
    /// The command line asks for something that cannot be (exit 2).
    Usage(String),
    /// The operation failed (exit 1): an unknown queue, no live worker.
    Failed(String),
    /// An error of rtq-core; [`exit_code`] picks the code.
    Rtq(Error),
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => EXIT_USAGE,
            CliError::Failed(_) => EXIT_FAILED,
            CliError::Rtq(e) => exit_code(e),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(m) | CliError::Failed(m) => f.write_str(m),
            CliError::Rtq(e) => e.fmt(f),
        }
    }
}

impl From<Error> for CliError {
    fn from(e: Error) -> Self {
        CliError::Rtq(e)
    }
}

/// What every command gets: the connection, and how to print.
pub(crate) struct Ctx {
    client: Client,
    admin: Admin,
    json: bool,
}

impl Ctx {
    /// Prints a line on stdout (a closed pipe is not an error worth a
    /// message: the reader went away).
    fn line(&self, text: impl fmt::Display) {
        print_line(text);
    }

    /// Prints a JSON document (with the schema version) on one line.
    fn doc(&self, value: Value) {
        self.line(json::document(value));
    }

    /// Prints `value` as JSON with `--json`, else `text`.
    fn out(&self, value: Value, text: impl fmt::Display) {
        if self.json {
            self.doc(value);
        } else {
            self.line(text);
        }
    }

    /// Fails with exit 1 unless `queue` exists; the message lists known
    /// queues and, for commands that can create one, names `--create`.
    async fn known(&self, queue: &str, can_create: bool) -> Result<(), CliError> {
        if self.admin.queue_exists(queue).await? {
            return Ok(());
        }
        let names = self.admin.queues().await.unwrap_or_default();
        let known = if names.is_empty() {
            "there are no queues".to_string()
        } else {
            let mut list: Vec<&str> = names.iter().map(String::as_str).take(10).collect();
            if names.len() > 10 {
                list.push("...");
            }
            format!("known queues: {}", list.join(", "))
        };
        let create = if can_create {
            "; pass --create to create it"
        } else {
            ""
        };
        Err(CliError::Failed(format!(
            "no queue named {:?} ({known}){create}",
            printable(queue, false)
        )))
    }
}

/// Runs one command that needs Redis; returns the process exit code.
/// Errors go to stderr.
pub async fn run(
    redis: &str,
    config: ClientConfig,
    read_only: bool,
    json: bool,
    command: Command,
) -> i32 {
    let mutating = matches!(
        command,
        Command::Requeue { .. }
            | Command::Cancel { .. }
            | Command::Pause { .. }
            | Command::Resume { .. }
            | Command::MaxDepth { .. }
            | Command::Purge { .. }
            | Command::Queue(_)
            | Command::Submit(_)
    );
    if read_only && mutating {
        note("--read-only forbids this command");
        return EXIT_FAILED;
    }
    if let Err(e) = check_usage(&command) {
        report(&e);
        return e.exit_code();
    }
    let request = match &command {
        Command::Submit(a) => match submit::request(a) {
            Ok(r) => Some(r),
            Err(e) => {
                report(&e);
                return e.exit_code();
            }
        },
        _ => None,
    };
    let client = match Client::connect_with(redis, config).await {
        Ok(c) => c,
        Err(e) => {
            report(&e);
            return exit_code(&e);
        }
    };
    let ctx = Ctx {
        admin: Admin::new(&client),
        client,
        json,
    };
    match execute(&ctx, command, request).await {
        Ok(()) => 0,
        Err(e) => {
            report(&e);
            e.exit_code()
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
pub fn report(e: &impl fmt::Display) {
    note(&printable(&e.to_string(), true));
}

/// Prints `rtq: <text>` on stderr. Unlike `eprintln!` it does not panic
/// (exit 101) when stderr is closed: the message is lost, the exit code
/// still tells.
pub fn note(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "rtq: {text}");
}

/// Prints a line on stdout, ignoring a closed pipe (`rtq ... | head`).
pub(crate) fn print_line(text: impl fmt::Display) {
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

/// Runs `command`; `request` is the task of a submit, built before
/// connecting.
async fn execute(
    ctx: &Ctx,
    command: Command,
    request: Option<rtq_core::TaskRequest>,
) -> Result<(), CliError> {
    let admin = &ctx.admin;
    match command {
        Command::Ui
        | Command::Acl { .. }
        | Command::Keygen { .. }
        | Command::Completions { .. }
        | Command::Man => {
            unreachable!("the console and the offline commands are run by main")
        }
        Command::Stats { queue, window_secs } => reads::stats(ctx, queue, window_secs).await?,
        Command::Workers { queue, departed } => reads::workers(ctx, &queue, departed).await?,
        Command::Events { queue, limit } => reads::events(ctx, &queue, limit as usize).await?,
        Command::Tasks {
            queue,
            state,
            limit,
        } => reads::tasks(ctx, &queue, state, limit as usize).await?,
        Command::Task { queue, id, follow } => task::run(ctx, &queue, &id, follow).await?,
        Command::Submit(args) => {
            let request = match request {
                Some(r) => r,
                None => submit::request(&args)?,
            };
            submit::run(ctx, *args, request).await?
        }
        Command::Requeue { queue, id } => {
            ctx.known(&queue, false).await?;
            let prev = admin.requeue(&queue, &id).await?;
            ctx.out(
                json!({"queue": queue, "id": id, "action": "requeued", "previous": prev.as_str()}),
                format!("requeued {id} (was {prev})"),
            );
        }
        Command::Cancel { queue, id } => {
            ctx.known(&queue, false).await?;
            let prev = admin.cancel(&queue, &id).await?;
            ctx.out(
                json!({"queue": queue, "id": id, "action": "cancelled", "previous": prev.as_str()}),
                format!("cancelled {id} (was {prev})"),
            );
        }
        Command::Pause { queue, create } => {
            ctx.known(&queue, true)
                .await
                .or_else(|e| ok_if(create, e))?;
            admin.pause(&queue, true).await?;
            ctx.out(
                json!({"queue": queue, "paused": true}),
                format!("paused {queue}"),
            );
        }
        Command::Resume { queue } => {
            ctx.known(&queue, false).await?;
            let n = admin.pause(&queue, false).await?;
            ctx.out(
                json!({"queue": queue, "paused": false, "dispatched": n}),
                format!("resumed {queue} ({n} tasks dispatched)"),
            );
        }
        Command::MaxDepth {
            queue,
            depth,
            create,
        } => {
            ctx.known(&queue, true)
                .await
                .or_else(|e| ok_if(create, e))?;
            admin.set_max_depth(&queue, depth).await?;
            ctx.out(
                json!({"queue": queue, "max_depth": if depth == 0 { Value::Null } else { depth.into() }}),
                format!("max depth of {queue} is {depth}"),
            );
        }
        Command::Purge { queue, .. } => {
            ctx.known(&queue, false).await?;
            let n = admin.purge(&queue).await?;
            ctx.out(
                json!({"queue": queue, "purged": n}),
                format!("purged {n} pending tasks from {queue}"),
            );
        }
        Command::Queue(QueueCommand::Delete { queue, force, .. }) => {
            ctx.known(&queue, false).await?;
            let d = admin
                .delete_queue(&queue, force)
                .await
                .map_err(|e| match e {
                    Error::QueueInUse { .. } => {
                        CliError::Failed(format!("{e} (--force deletes it anyway)"))
                    }
                    e => e.into(),
                })?;
            ctx.out(
                json!({"queue": d.queue, "deleted": true, "keys": d.keys, "pending": d.pending, "running": d.running, "workers": d.workers}),
                format!(
                    "deleted queue {queue} ({} keys; {} pending and {} running tasks, {} live workers)",
                    d.keys, d.pending, d.running, d.workers
                ),
            );
        }
    }
    Ok(())
}

/// `Ok` if `allowed` (a `--create`), else the error.
fn ok_if(allowed: bool, e: CliError) -> Result<(), CliError> {
    match e {
        CliError::Failed(_) if allowed => Ok(()),
        e => Err(e),
    }
}

/// Usage errors that need no Redis, found before connecting (so that they
/// exit 2 whatever the state of Redis): a `--confirm` that does not repeat
/// the queue name. `main` reports them as clap errors; [`run`] checks
/// again for other callers.
///
/// # Errors
/// [`CliError::Usage`] naming the mismatch.
pub fn check_usage(command: &Command) -> Result<(), CliError> {
    match command {
        Command::Purge { queue, confirm }
        | Command::Queue(QueueCommand::Delete { queue, confirm, .. }) => confirmed(queue, confirm),
        _ => Ok(()),
    }
}

/// A usage error unless `--confirm` repeats the queue name.
fn confirmed(queue: &str, confirm: &str) -> Result<(), CliError> {
    if confirm == queue {
        Ok(())
    } else {
        Err(CliError::Usage(format!(
            "--confirm must repeat the queue name {queue:?} (got {:?})",
            printable(confirm, false)
        )))
    }
}
