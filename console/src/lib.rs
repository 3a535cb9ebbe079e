//! `rtq`: the operations console for rtq queues, and the scriptable admin
//! CLI in the same binary.
//!
//! Layout: `cli` (scriptable commands), `model` (what a view shows),
//! `fetch` (background reads: the only code that touches the network),
//! `state` (app state and its update from keys and data; no I/O),
//! `keymap` (bindings, also the source of the help screen), `filter`
//! (the row filter's words), `sort` (sorting lists by column), `lost`
//! ("Redis lost its data"), `health` (a queue's state word and colour,
//! with the thresholds), `failures` (recent failures grouped by reason),
//! `render`
//! (state -> frame, one module per view), `ui` (terminal setup and the
//! event loop).

pub mod cli;
pub mod failures;
pub mod fetch;
pub mod filter;
pub mod health;
pub mod keymap;
pub mod lost;
pub mod model;
pub mod render;
pub mod sort;
pub mod state;
pub mod ui;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// The exit codes, shown after `--help` and in the manual page.
const EXIT_CODES: &str = "Exit codes: 0 success; 1 the operation failed (unknown queue or task, \
no live worker, full queue, task failed); 2 usage error (bad flag, name or value, --confirm \
mismatch, no terminal for the console); 3 Redis unreachable (retry later); 4 authentication \
failed; 5 TLS failed; 6 permission denied (ACL).";

/// rtq: watch and steer rtq queues. Without a command, opens the console.
// No `Debug`: `redis` may carry a password, which a derived `Debug` would
// print whole.
#[derive(Clone, Parser)]
#[command(name = "rtq", version, about, after_help = EXIT_CODES)]
pub struct Cli {
    /// Redis URL, e.g. redis://:password@host:6379/0, or for a Redis
    /// Cluster redis+cluster://:password@host1:6379,host2:6379 (required;
    /// the password is never shown).
    #[arg(long, global = true, env = "RTQ_REDIS_URL", hide_env_values = true)]
    pub redis: Option<String>,
    /// CA certificate(s), PEM, that signed the Redis server's certificate
    /// (rediss:// URLs); default: the system's roots.
    #[arg(long, global = true, env = "RTQ_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate, PEM, for a Redis that requires one (mutual TLS);
    /// needs --tls-key.
    #[arg(long, global = true, env = "RTQ_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// Private key, PEM, of --tls-cert.
    #[arg(long, global = true, env = "RTQ_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Sign every submitted task with this ed25519 key (PKCS#8 PEM, as
    /// `rtq keygen` writes it), for workers started with --verify-key.
    #[arg(long, global = true, env = "RTQ_SIGN_KEY", value_name = "FILE")]
    pub sign_key: Option<PathBuf>,
    /// Console refresh period in ms.
    #[arg(long, global = true, env = "RTQ_REFRESH_MS", default_value_t = 1000)]
    pub refresh_ms: u64,
    /// Disable every action (submit, requeue, cancel, pause, purge, queue
    /// delete, ...) and the console's own housekeeping: nothing is written
    /// (a Redis user with the read-only console role is enough).
    #[arg(long, global = true, env = "RTQ_READ_ONLY")]
    pub read_only: bool,
    /// Print JSON instead of text (every command; the shapes, each with
    /// `"schema": 1`, are in the README). Errors stay text on stderr.
    #[arg(long, global = true, env = "RTQ_JSON")]
    pub json: bool,
    /// What to do; the console if absent.
    #[command(subcommand)]
    pub command: Option<Command>,
}

impl Cli {
    /// The client settings of the global flags: TLS and the signing key.
    ///
    /// # Errors
    /// [`rtq_core::Error::TlsSetup`] (see [`Cli::tls`]), or
    /// [`rtq_core::Error::InvalidInput`] for an unreadable or unusable
    /// `--sign-key`.
    pub fn client_config(&self) -> Result<rtq_core::ClientConfig, rtq_core::Error> {
        let mut config = rtq_core::ClientConfig::default().tls(self.tls()?);
        if let Some(path) = &self.sign_key {
            let pem = std::fs::read(path).map_err(|e| {
                rtq_core::Error::InvalidInput(format!(
                    "cannot read --sign-key {}: {e}",
                    path.display()
                ))
            })?;
            config = config.signing_key(rtq_core::signing::SigningKey::from_pkcs8_pem(&pem)?);
        }
        Ok(config)
    }

    /// The TLS settings of `--tls-ca`, `--tls-cert` and `--tls-key`.
    ///
    /// # Errors
    /// [`rtq_core::Error::TlsSetup`] for an unreadable file or a
    /// certificate without its key.
    pub fn tls(&self) -> Result<rtq_core::TlsConfig, rtq_core::Error> {
        rtq_core::TlsConfig::from_files(
            self.tls_ca.as_deref(),
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
        )
    }
}

/// Scriptable commands. Exit codes: 0 success, 1 the operation failed
/// (unknown queue or task, full queue, task failed), 2 usage error (a bad
/// flag, name or value), 3 Redis unreachable, 4 authentication failed, 5
/// TLS failed, 6 permission denied.
#[derive(Clone, Debug, Subcommand)]
pub enum Command {
    /// Open the console (the default; needs a terminal).
    Ui,
    /// Queue statistics for monitors and autoscalers.
    Stats {
        /// Only this queue (default: all).
        #[arg(value_parser = queue_name)]
        queue: Option<String>,
        /// Window in seconds for rates and latency percentiles (10..=3600).
        #[arg(long, env = "RTQ_WINDOW_SECS", default_value_t = 60,
              value_parser = clap::value_parser!(u64).range(10..=3600))]
        window_secs: u64,
    },
    /// Workers of a queue with their heartbeat.
    Workers {
        /// Queue.
        #[arg(value_parser = queue_name)]
        queue: String,
        /// Workers that died or left in the last 10 minutes instead (when
        /// and why), newest first.
        #[arg(long, env = "RTQ_DEPARTED")]
        departed: bool,
    },
    /// The queue's recent events, newest first: failures, retries,
    /// requeues, cancels, lost attempts, lost and departed workers,
    /// operator actions (about the last 1000 are kept; a plain done is
    /// not an event).
    Events {
        /// Queue.
        #[arg(value_parser = queue_name)]
        queue: String,
        /// At most this many (1..=1000).
        #[arg(long, env = "RTQ_LIMIT", default_value_t = 50,
              value_parser = clap::value_parser!(u64).range(1..=1000))]
        limit: u64,
    },
    /// Tasks of a queue: pending, running or recent.
    Tasks {
        /// Queue.
        #[arg(value_parser = queue_name)]
        queue: String,
        /// Which tasks.
        #[arg(long, env = "RTQ_TASK_STATE", value_enum, default_value = "pending")]
        state: TaskList,
        /// At most this many (1..=10000).
        #[arg(long, env = "RTQ_LIMIT", default_value_t = 50,
              value_parser = clap::value_parser!(u64).range(1..=10_000))]
        limit: u64,
    },
    /// One task: state, attempts, result or error; --follow streams its
    /// output until it ends.
    Task {
        /// Queue.
        #[arg(value_parser = queue_name)]
        queue: String,
        /// Task id.
        #[arg(value_parser = task_id)]
        id: String,
        /// Print its output (from the first chunk of the current attempt)
        /// as it arrives, then its result; exit 1 if it fails.
        #[arg(long, env = "RTQ_FOLLOW")]
        follow: bool,
    },
    /// Submit a task; print its result (or its chunks as they arrive).
    ///
    /// Refuses a queue that does not exist (a typo would create one)
    /// unless --create. A queue without a live worker is reported at once
    /// on stderr; the task is then not created (exit 1) unless
    /// --wait-for-workers, --timeout-secs or --no-wait says how long to
    /// wait for one.
    Submit(Box<SubmitArgs>),
    /// Put a task back in its queue.
    Requeue {
        /// Queue.
        #[arg(value_parser = queue_name)]
        queue: String,
        /// Task id.
        #[arg(value_parser = task_id)]
        id: String,
    },
    /// Cancel a task.
    Cancel {
        /// Queue.
        #[arg(value_parser = queue_name)]
        queue: String,
        /// Task id.
        #[arg(value_parser = task_id)]
        id: String,
    },
    /// Stop handing out tasks of a queue.
    Pause {
        /// Queue.
        #[arg(value_parser = queue_name)]
        queue: String,
        /// Create the queue if it does not exist (to pause it before its
        /// workers start). Deliberately no environment variable: creating
        /// a queue must be asked for on the command line.
        #[arg(long)]
        create: bool,
    },
    /// Resume a paused queue.
    Resume {
        /// Queue.
        #[arg(value_parser = queue_name)]
        queue: String,
    },
    /// Set a queue's maximum depth (0 = unlimited, at most 2^40).
    MaxDepth {
        /// Queue.
        #[arg(value_parser = queue_name)]
        queue: String,
        /// Maximum pending tasks.
        #[arg(value_parser = clap::value_parser!(u64).range(0..=1u64 << 40))]
        depth: u64,
        /// Create the queue if it does not exist (no environment variable,
        /// as for pause).
        #[arg(long)]
        create: bool,
    },
    /// Print the `ACL SETUSER` line of a least-privilege Redis user for a
    /// role (needs no Redis).
    ///
    /// Replace `<password>` with the password (or `#<sha256 hex>`), then
    /// run the line as an admin, e.g. with redis-cli.
    Acl {
        /// The role.
        #[arg(value_enum)]
        role: AclRole,
        /// The queue (required for client and worker; the console and the
        /// admin are fleet-wide).
        #[arg(long, env = "RTQ_ACL_QUEUE", value_parser = queue_name)]
        queue: Option<String>,
        /// User name (default `rtq-<role>[-<queue>]`).
        #[arg(long, env = "RTQ_ACL_USER")]
        user: Option<String>,
    },
    /// Make an ed25519 key for signed tasks (needs no Redis).
    ///
    /// Writes the private key (PKCS#8 PEM, owner-only) to FILE and prints
    /// the verify key to give workers (--verify-key).
    Keygen {
        /// Where to write the private key (must not exist).
        file: PathBuf,
    },
    /// Cancel every pending task of a queue.
    Purge {
        /// Queue.
        #[arg(value_parser = queue_name)]
        queue: String,
        /// Required: the queue name again, to confirm (deliberately no
        /// environment variable).
        #[arg(long)]
        confirm: String,
    },
    /// Queue administration: delete a queue.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Print a shell completion script (needs no Redis), e.g.
    /// `rtq completions bash > /etc/bash_completion.d/rtq`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page, roff (needs no Redis), e.g.
    /// `rtq man > /usr/local/share/man/man1/rtq.1`.
    Man,
}

/// The arguments of `rtq submit`.
#[derive(Clone, Debug, clap::Args)]
pub struct SubmitArgs {
    /// Queue.
    #[arg(value_parser = queue_name)]
    pub queue: String,
    /// Input JSON: the text itself, `-` to read it from stdin, or `@FILE`
    /// to read it from a file.
    pub input: String,
    /// Print chunks as they arrive.
    #[arg(long, env = "RTQ_STREAM")]
    pub stream: bool,
    /// Priority [-1000, 1000]; higher runs first.
    #[arg(long, env = "RTQ_PRIORITY", default_value_t = 0,
          value_parser = clap::value_parser!(i16).range(-1000..=1000),
          allow_negative_numbers = true)]
    pub priority: i16,
    /// Deadline in seconds (0 = none, at most 30 days): the task ends as
    /// timed out if it has not finished by then, also when no worker ever
    /// takes it.
    #[arg(long, alias = "timeout", env = "RTQ_TIMEOUT_SECS", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=MAX_SECS))]
    pub timeout_secs: u64,
    /// Return the id at once instead of waiting.
    #[arg(long, env = "RTQ_NO_WAIT")]
    pub no_wait: bool,
    /// Wait for a worker without limit when the queue has none.
    #[arg(long, env = "RTQ_WAIT_FOR_WORKERS")]
    pub wait_for_workers: bool,
    /// Create the queue if it does not exist (no environment variable, as
    /// for pause).
    #[arg(long)]
    pub create: bool,
    /// A label KEY=VALUE (repeatable; the environment variable takes a
    /// comma-separated list).
    #[arg(long = "label", value_name = "KEY=VALUE", env = "RTQ_LABELS",
          value_delimiter = ',', value_parser = label)]
    pub labels: Vec<(String, String)>,
    /// Task id (an idempotency key); default: a new time-ordered id.
    #[arg(long, env = "RTQ_TASK_ID", value_parser = task_id)]
    pub id: Option<String>,
    /// Attempts allowed (1..=1000).
    #[arg(long, env = "RTQ_MAX_ATTEMPTS", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_attempts: u32,
    /// Seconds the result stays readable after the task ends (1 s ..= 30
    /// days).
    #[arg(long, env = "RTQ_RETENTION_SECS", default_value_t = 3600,
          value_parser = clap::value_parser!(u64).range(1..=MAX_SECS))]
    pub retention_secs: u64,
}

/// `rtq queue ...`.
#[derive(Clone, Debug, Subcommand)]
pub enum QueueCommand {
    /// Delete a queue: all its keys and its registry entry.
    ///
    /// Refuses a queue with pending or running tasks or live workers
    /// unless --force (its tasks are then lost; stop its workers first,
    /// or their next heartbeat re-creates the queue).
    Delete {
        /// Queue.
        #[arg(value_parser = queue_name)]
        queue: String,
        /// Required: the queue name again, to confirm (deliberately no
        /// environment variable).
        #[arg(long)]
        confirm: String,
        /// Delete it even with tasks or live workers (no environment
        /// variable either).
        #[arg(long)]
        force: bool,
    },
}

/// Longest timeout or retention rtq accepts: 30 days, in seconds.
const MAX_SECS: u64 = 30 * 24 * 3600;

/// Clap parser of a queue name (a bad one is a usage error, exit 2).
fn queue_name(s: &str) -> Result<String, String> {
    rtq_core::keys::validate_queue_name(s)
        .map(|()| s.to_string())
        .map_err(|e| e.to_string())
}

/// Clap parser of a task id.
fn task_id(s: &str) -> Result<String, String> {
    rtq_core::keys::validate_id(s, "task id")
        .map(|()| s.to_string())
        .map_err(|e| e.to_string())
}

/// Clap parser of a `KEY=VALUE` label.
fn label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// A role for `rtq acl`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AclRole {
    /// Submit, wait, stream and cancel on one queue.
    Client,
    /// Serve one queue.
    Worker,
    /// Read every queue, write nothing (`rtq --read-only`).
    Console,
    /// Everything; loads the functions library.
    Admin,
}

impl From<AclRole> for rtq_core::acl::Role {
    fn from(r: AclRole) -> Self {
        match r {
            AclRole::Client => Self::Client,
            AclRole::Worker => Self::Worker,
            AclRole::Console => Self::Console,
            AclRole::Admin => Self::Admin,
        }
    }
}

/// Which task list `rtq tasks` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TaskList {
    /// Waiting, in hand-out order.
    Pending,
    /// Owned by workers.
    Running,
    /// Recently ended, newest first.
    Recent,
}
