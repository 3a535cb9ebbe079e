//! The chaos run (`examples/chaos.rs`, `scripts/chaos.sh`): real
//! `rtq-worker` processes (mock handler) under load are killed with -9,
//! stopped for longer than their lease, drained with SIGTERM, restarted
//! under the same id and joined by new ids, optionally while Redis itself is
//! killed and restarted from its AOF; then the protocol's guarantees are
//! checked against Redis and the client's outcomes. TESTING.md describes
//! the run and BENCHMARKS.md keeps its figures.
//!
//! # Layout
//! - [`fleet`]: worker processes under fixed ids, their drop guards, the
//!   signals, and the final sweep for strays.
//! - [`load`]: the client load (`run()`/`stream()`, deadlines, planned
//!   failures) and the ledger of outcomes.
//! - [`observe`]: what is sampled during the chaos: capacity, the `ended`
//!   stream, recovery after kill -9.
//! - [`verify`]: the checks after the settle (an `exact`, v2 queue).
//! - [`observe_stream`], [`verify_stream`]: the same for a `stream` queue
//!   (protocol v3, `--stream-queue`).
//! - [`report`]: the summary (a Markdown table) and the verdict.
//! - `phases`: start, chaos, settle, verify.
//! - this file: the arguments, the seeded generator, [`run`].

pub mod fleet;
pub mod load;
pub mod observe;
pub mod observe_stream;
mod phases;
pub mod report;
pub mod verify;
pub mod verify_stream;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Parser;

/// rtq chaos run: N rtq-worker processes (mock handler) under load are
/// killed (-9), stopped past their lease, drained (SIGTERM), restarted under
/// the same id and joined by new ids for --duration seconds; then every
/// submitted task must have exactly one outcome, nothing may be lost, stuck
/// or duplicated, no task may use more attempts than allowed, and no worker
/// may ever hold more than its slots. Prints a Markdown summary; exits 1
/// naming each failed check, 2 if the run itself could not be done.
///
/// Without --redis it starts a private redis-server (never an existing one).
#[derive(Debug, Parser)]
#[command(name = "chaos", args_override_self = true)]
pub struct Args {
    /// Use this Redis instead of a private one. Its data is left in place
    /// (queue chaos-<tag>); never a production server.
    #[arg(
        long,
        env = "RTQ_CHAOS_REDIS",
        value_name = "URL",
        hide_env_values = true
    )]
    pub redis: Option<String>,
    /// The private Redis keeps an append-only file (fsync always), so it can
    /// be killed and restarted without losing data (see --redis-restarts).
    #[arg(long, env = "RTQ_CHAOS_AOF")]
    pub aof: bool,
    /// kill -9 and restart the private Redis this many times during the
    /// chaos, evenly spaced. Needs --aof and no --redis.
    #[arg(long, env = "RTQ_CHAOS_REDIS_RESTARTS", default_value_t = 0)]
    pub redis_restarts: u32,
    /// Worker processes at the start (and at least this many after the
    /// chaos).
    #[arg(long, env = "RTQ_CHAOS_WORKERS", default_value_t = 4)]
    pub workers: usize,
    /// Worker processes alive at once at most (new ids are added up to it).
    #[arg(long, env = "RTQ_CHAOS_MAX_WORKERS")]
    pub max_workers: Option<usize>,
    /// The rtq-worker binary. Default: next to this example's directory
    /// (target/<profile>/rtq-worker).
    #[arg(long, env = "RTQ_WORKER_BIN", value_name = "PATH")]
    pub worker_bin: Option<PathBuf>,
    /// Seconds of chaos (the load runs during them; the settle follows).
    #[arg(long, env = "RTQ_CHAOS_DURATION", default_value_t = 60)]
    pub duration: u64,
    /// Seed of every random choice (task plans, faults, victims, timing).
    /// Default: from the clock; printed either way.
    #[arg(long, env = "RTQ_CHAOS_SEED")]
    pub seed: Option<u64>,
    /// Tasks submitted per second.
    #[arg(long, env = "RTQ_CHAOS_RATE", default_value_t = 50.0)]
    pub rate: f64,
    /// Tasks open at once at most; the load waits above it.
    #[arg(long, env = "RTQ_CHAOS_MAX_IN_FLIGHT", default_value_t = 64)]
    pub max_in_flight: usize,
    /// Worker lease in ms (short, so lost workers are noticed quickly).
    #[arg(long, env = "RTQ_CHAOS_LEASE_MS", default_value_t = 1000)]
    pub lease_ms: u64,
    /// Shortest pause between two faults, in ms.
    #[arg(long, env = "RTQ_CHAOS_FAULT_MIN_MS", default_value_t = 500)]
    pub fault_min_ms: u64,
    /// Longest pause between two faults, in ms.
    #[arg(long, env = "RTQ_CHAOS_FAULT_MAX_MS", default_value_t = 2500)]
    pub fault_max_ms: u64,
    /// Seconds the settle may take at most: every task must have its
    /// outcome by then (a bound against hangs, not a timing assertion).
    #[arg(long, env = "RTQ_CHAOS_SETTLE_SECS", default_value_t = 180)]
    pub settle_secs: u64,
    /// Directory for the workers' logs. Default: a new directory under the
    /// system temp dir, removed after a passing run.
    #[arg(long, env = "RTQ_CHAOS_LOG_DIR", value_name = "DIR")]
    pub log_dir: Option<PathBuf>,
    /// Keep the log directory even when every check passed.
    #[arg(long, env = "RTQ_CHAOS_KEEP_LOGS")]
    pub keep_logs: bool,
    /// Log filter of the workers (RTQ_LOG of each rtq-worker).
    #[arg(long, env = "RTQ_CHAOS_WORKER_LOG", default_value = "info")]
    pub worker_log: String,
    /// Log filter of this program (tracing EnvFilter syntax).
    #[arg(long, env = "RTQ_CHAOS_LOG", default_value = "info,rtq_core=warn")]
    pub log: String,
    /// Make the chaos queue a stream queue (protocol v3,
    /// docs/PROTOCOL-V3.md) with [`STREAM_BANDS`] priority bands before any
    /// worker starts, and verify it with the stream checks.
    #[arg(long, env = "RTQ_CHAOS_STREAM_QUEUE")]
    pub stream_queue: bool,
}

/// Priority bands of the stream queue of `--stream-queue` (two, so the load's
/// priorities land in both and strict priority between bands is exercised).
pub const STREAM_BANDS: u8 = 2;

/// A small seeded generator (splitmix64): the run needs reproducible
/// choices, not cryptographic quality.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// An independent generator derived from this one.
    pub fn fork(&mut self) -> Self {
        Self(self.next_u64())
    }
}

/// The Redis of a run.
pub struct Target {
    /// Its URL, for the workers, the client and the checks.
    pub url: String,
    /// How the summary names it.
    pub label: String,
    /// kill -9 and restart it on the same port from its AOF, blocking until
    /// it answers; `None` when it cannot be restarted (a given Redis).
    pub restart: Option<Restart>,
}

/// Restarts the private Redis (runs on a blocking thread).
pub type Restart = Arc<dyn Fn() -> Result<()> + Send + Sync>;

/// The rtq-worker binary: `--worker-bin`, else `target/<profile>/rtq-worker`
/// next to this example (`target/<profile>/examples/chaos`).
pub fn worker_bin(args: &Args) -> Result<PathBuf> {
    if let Some(bin) = &args.worker_bin {
        return Ok(bin.clone());
    }
    let exe = std::env::current_exe().context("locating this executable")?;
    let bin = exe
        .parent()
        .and_then(|examples| examples.parent())
        .map(|profile| profile.join("rtq-worker"))
        .context("this executable has no parent directory")?;
    if !bin.exists() {
        bail!(
            "{} not found: build it (cargo build -p rtq-worker, or scripts/chaos.sh) or pass \
             --worker-bin / RTQ_WORKER_BIN",
            bin.display()
        );
    }
    Ok(bin)
}

/// Runs the chaos against `target` with `seed`; returns whether every
/// check passed (the summary is printed).
///
/// # Errors
/// When the run itself cannot be done (no worker binary, Redis unreachable,
/// workers that never register); check failures are not errors.
pub async fn run(args: Args, seed: u64, target: Target) -> Result<bool> {
    phases::run(args, seed, target).await
}
