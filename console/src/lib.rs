//! `rtq`: the operations console for rtq queues, and the scriptable admin
//! CLI in the same binary.
//!
//! Layout: `cli` (scriptable commands), `model` (what a view shows),
//! `fetch` (background reads: the only code that touches the network),
//! `state` (app state and its update from keys and data; no I/O),
//! `keymap` (bindings, also the source of the help screen), `render`
//! (state -> frame, one module per view), `ui` (terminal setup and the
//! event loop).

pub mod cli;
pub mod failures;
pub mod fetch;
pub mod health;
pub mod keymap;
pub mod model;
pub mod render;
pub mod state;
pub mod ui;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// rtq: watch and steer rtq queues. Without a command, opens the console.
#[derive(Clone, Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// Redis URL, e.g. redis://:password@host:6379/0 (required; the
    /// password is never shown).
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
    /// Disable every action (requeue, cancel, pause, purge, ...) and the
    /// console's own housekeeping: nothing is written (a Redis user with
    /// the read-only console role is enough).
    #[arg(long, global = true, env = "RTQ_READ_ONLY")]
    pub read_only: bool,
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
/// (unknown task, full queue, task failed), 2 usage error, 3 Redis
/// unreachable, 4 authentication failed, 5 TLS failed, 6 permission denied.
#[derive(Clone, Debug, Subcommand)]
pub enum Command {
    /// Open the console (the default).
    Ui,
    /// Queue statistics for monitors and autoscalers.
    Stats {
        /// Only this queue (default: all).
        queue: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
        /// Window in seconds for rates and latency percentiles.
        #[arg(long, default_value_t = 60)]
        window_secs: u64,
    },
    /// Workers of a queue with their heartbeat.
    Workers {
        /// Queue.
        queue: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Tasks of a queue: pending, running or recent.
    Tasks {
        /// Queue.
        queue: String,
        /// Which tasks.
        #[arg(long, value_enum, default_value = "pending")]
        state: TaskList,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Submit a task; print its result (or its chunks as they arrive).
    Submit {
        /// Queue.
        queue: String,
        /// Input JSON.
        input: String,
        /// Print chunks as they arrive.
        #[arg(long)]
        stream: bool,
        /// Priority [-1000, 1000].
        #[arg(long, default_value_t = 0)]
        priority: i16,
        /// Deadline in seconds (0 = none).
        #[arg(long, default_value_t = 0)]
        timeout_secs: u64,
        /// Return the id at once instead of waiting.
        #[arg(long)]
        no_wait: bool,
    },
    /// Put a task back in its queue.
    Requeue {
        /// Queue.
        queue: String,
        /// Task id.
        id: String,
    },
    /// Cancel a task.
    Cancel {
        /// Queue.
        queue: String,
        /// Task id.
        id: String,
    },
    /// Stop handing out tasks of a queue.
    Pause {
        /// Queue.
        queue: String,
    },
    /// Resume a paused queue.
    Resume {
        /// Queue.
        queue: String,
    },
    /// Set a queue's maximum depth (0 = unlimited).
    MaxDepth {
        /// Queue.
        queue: String,
        /// Maximum pending tasks.
        depth: u64,
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
        #[arg(long)]
        queue: Option<String>,
        /// User name (default rtq-<role>[-<queue>]).
        #[arg(long)]
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
        queue: String,
        /// Required: the queue name again, to confirm.
        #[arg(long)]
        confirm: String,
    },
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
