//! The chaos run: real `rtq-worker` processes (mock handler) under load are
//! killed with -9, stopped for longer than their lease, drained with
//! SIGTERM, restarted under the same id and joined by new ids, optionally
//! while Redis itself is killed and restarted from its AOF; then the run
//! checks the protocol's guarantees against Redis and the client's
//! outcomes, and exits non-zero naming every check that failed.
//!
//! Run it with `scripts/chaos.sh` (`--long` for 10 minutes); TESTING.md
//! describes the figures and BENCHMARKS.md keeps them.
//!
//! # Layout
//! - `chaos/fleet.rs`: worker processes under fixed ids, their drop guards,
//!   the signals, and the final sweep for strays.
//! - `chaos/load.rs`: the client load (`run()`/`stream()`, deadlines,
//!   planned failures) and the ledger of outcomes.
//! - `chaos/observe.rs`: what is sampled during the chaos: capacity, the
//!   `ended` stream, recovery after kill -9.
//! - `chaos/verify.rs`: the checks after the settle.
//! - `chaos/report.rs`: the summary (a Markdown table) and the verdict.
//! - this file: arguments, the seeded generator, and the phases: start,
//!   chaos, settle, verify.

#[path = "chaos/fleet.rs"]
mod fleet;
#[path = "chaos/load.rs"]
mod load;
#[path = "chaos/observe.rs"]
mod observe;
#[path = "chaos/report.rs"]
mod report;
#[path = "chaos/verify.rs"]
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, Parser};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use rtq_core::keys::QueueKeys;
use rtq_core::{redact_url, Client};
use rtq_testkit::RedisServer;
use tokio_util::sync::CancellationToken;

use fleet::{Fleet, Launch, Phase, Profile};
use load::{Ledger, LoadSettings};
use observe::Observations;
use report::{Faults, Setup};

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
struct Args {
    /// Use this Redis instead of a private one. Its data is left in place
    /// (queue chaos-<tag>); never a production server.
    #[arg(
        long,
        env = "RTQ_CHAOS_REDIS",
        value_name = "URL",
        hide_env_values = true
    )]
    redis: Option<String>,
    /// The private Redis keeps an append-only file (fsync always), so it can
    /// be killed and restarted without losing data (see --redis-restarts).
    #[arg(long, env = "RTQ_CHAOS_AOF")]
    aof: bool,
    /// kill -9 and restart the private Redis this many times during the
    /// chaos, evenly spaced. Needs --aof and no --redis.
    #[arg(long, env = "RTQ_CHAOS_REDIS_RESTARTS", default_value_t = 0)]
    redis_restarts: u32,
    /// Worker processes at the start (and at least this many after the
    /// chaos).
    #[arg(long, env = "RTQ_CHAOS_WORKERS", default_value_t = 4)]
    workers: usize,
    /// Worker processes alive at once at most (new ids are added up to it).
    #[arg(long, env = "RTQ_CHAOS_MAX_WORKERS")]
    max_workers: Option<usize>,
    /// The rtq-worker binary. Default: next to this example's directory
    /// (target/<profile>/rtq-worker).
    #[arg(long, env = "RTQ_WORKER_BIN", value_name = "PATH")]
    worker_bin: Option<PathBuf>,
    /// Seconds of chaos (the load runs during them; the settle follows).
    #[arg(long, env = "RTQ_CHAOS_DURATION", default_value_t = 60)]
    duration: u64,
    /// Seed of every random choice (task plans, faults, victims, timing).
    /// Default: from the clock; printed either way.
    #[arg(long, env = "RTQ_CHAOS_SEED")]
    seed: Option<u64>,
    /// Tasks submitted per second.
    #[arg(long, env = "RTQ_CHAOS_RATE", default_value_t = 50.0)]
    rate: f64,
    /// Tasks open at once at most; the load waits above it.
    #[arg(long, env = "RTQ_CHAOS_MAX_IN_FLIGHT", default_value_t = 64)]
    max_in_flight: usize,
    /// Worker lease in ms (short, so lost workers are noticed quickly).
    #[arg(long, env = "RTQ_CHAOS_LEASE_MS", default_value_t = 1000)]
    lease_ms: u64,
    /// Shortest pause between two faults, in ms.
    #[arg(long, env = "RTQ_CHAOS_FAULT_MIN_MS", default_value_t = 500)]
    fault_min_ms: u64,
    /// Longest pause between two faults, in ms.
    #[arg(long, env = "RTQ_CHAOS_FAULT_MAX_MS", default_value_t = 2500)]
    fault_max_ms: u64,
    /// Seconds the settle may take at most: every task must have its
    /// outcome by then (a bound against hangs, not a timing assertion).
    #[arg(long, env = "RTQ_CHAOS_SETTLE_SECS", default_value_t = 180)]
    settle_secs: u64,
    /// Directory for the workers' logs. Default: a new directory under the
    /// system temp dir, removed after a passing run.
    #[arg(long, env = "RTQ_CHAOS_LOG_DIR", value_name = "DIR")]
    log_dir: Option<PathBuf>,
    /// Keep the log directory even when every check passed.
    #[arg(long, env = "RTQ_CHAOS_KEEP_LOGS")]
    keep_logs: bool,
    /// Log filter of the workers (RTQ_LOG of each rtq-worker).
    #[arg(long, env = "RTQ_CHAOS_WORKER_LOG", default_value = "info")]
    worker_log: String,
    /// Log filter of this program (tracing EnvFilter syntax).
    #[arg(long, env = "RTQ_CHAOS_LOG", default_value = "info,rtq_core=warn")]
    log: String,
}

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

fn main() -> ExitCode {
    let args = Args::parse();
    if args.redis_restarts > 0 && (!args.aof || args.redis.is_some()) {
        Args::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--redis-restarts needs --aof and the private Redis (no --redis): without an \
                 append-only file a restart loses every task",
            )
            .exit();
    }
    if args.workers == 0 || args.fault_min_ms > args.fault_max_ms || args.rate <= 0.0 {
        Args::command()
            .error(
                clap::error::ErrorKind::ValueValidation,
                "--workers must be at least 1, --rate above 0, and --fault-min-ms at most \
                 --fault-max-ms",
            )
            .exit();
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chaos: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    println!("chaos: seed {seed} (repeat with --seed {seed})");
    let result = runtime.block_on(run(args, seed));
    runtime.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("chaos: the run could not be completed (seed {seed}): {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The rtq-worker binary: `--worker-bin`, else `target/<profile>/rtq-worker`
/// next to this example (`target/<profile>/examples/chaos`).
fn worker_bin(args: &Args) -> Result<PathBuf> {
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

/// A connection for the observer and the checks, with short timeouts so a
/// Redis restart never hangs them.
async fn raw_connection(url: &str) -> Result<ConnectionManager> {
    let client = redis::Client::open(url).context("parsing the Redis URL")?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(5)))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_with_config(client, config)
        .await
        .with_context(|| format!("connecting to {}", redact_url(url)))
}

/// Everything the phases share.
struct Run {
    args: Args,
    rng: Rng,
    fleet: Fleet,
    profiles: Arc<Mutex<Vec<Profile>>>,
    obs: observe::SharedObs,
    faults: Faults,
    fleet_problems: Vec<String>,
    redis: Option<Arc<Mutex<RedisServer>>>,
    conn: ConnectionManager,
    keys: QueueKeys,
    started: Instant,
    rng_seed: u64,
    redis_label: String,
}

async fn run(args: Args, seed: u64) -> Result<bool> {
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    let tag = format!("{:x}{:x}", seed & 0xffff_ffff, std::process::id());
    let queue_name = format!("chaos-{tag}");
    let log_dir = args
        .log_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("rtq-chaos-{tag}")));
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    let bin = worker_bin(&args)?;
    let (redis, url, redis_label) = match &args.redis {
        Some(url) => (None, url.clone(), format!("Redis {}", redact_url(url))),
        None => {
            let aof = args.aof;
            let server = tokio::task::spawn_blocking(move || {
                RedisServer::start_with(rtq_testkit::Options {
                    appendonly: aof,
                    ..Default::default()
                })
            })
            .await
            .context("starting a private redis-server")?;
            let url = server.url();
            let label = format!(
                "private Redis {}{}",
                if aof {
                    "with AOF (fsync always)"
                } else {
                    "without persistence"
                },
                if args.redis_restarts > 0 {
                    format!(", killed and restarted {} times", args.redis_restarts)
                } else {
                    String::new()
                }
            );
            (Some(Arc::new(Mutex::new(server))), url, label)
        }
    };
    println!(
        "chaos: queue {queue_name}, {redis_label}, worker {}, logs in {}",
        bin.display(),
        log_dir.display()
    );
    let client = Client::connect(&url)
        .await
        .with_context(|| format!("connecting to {}", redact_url(&url)))?;
    let queue = client.queue(&queue_name)?;
    let keys = queue.keys().clone();
    let conn = raw_connection(&url).await?;
    let mut fleet = Fleet::new(Launch {
        bin,
        redis_url: url.clone(),
        queue: queue_name.clone(),
        lease_ms: args.lease_ms,
        grace_secs: 1,
        log_filter: args.worker_log.clone(),
        log_dir: log_dir.clone(),
        run_tag: tag.clone(),
    });
    for i in 0..args.workers {
        fleet.add(profile(&mut rng, i));
    }
    let mut state = Run {
        profiles: Arc::new(Mutex::new(fleet.profiles())),
        fleet,
        rng: rng.fork(),
        obs: Arc::new(Mutex::new(Observations::default())),
        faults: Faults::default(),
        fleet_problems: Vec::new(),
        redis,
        conn,
        keys,
        started,
        rng_seed: seed,
        redis_label,
        args,
    };
    let outcome = state.phases(queue, &tag).await;
    // Every exit path: processes killed and reaped, strays swept.
    state.fleet.kill_all();
    let strays = fleet::sweep_strays(&tag);
    let passed = match outcome {
        Ok(summary) => {
            let (text, mut passed) = summary;
            print!("{text}");
            if strays > 0 {
                println!("FAIL no rtq-worker of this run survives: {strays} found by the sweep");
                passed = false;
            }
            passed
        }
        Err(e) => return Err(e),
    };
    drop(client);
    if passed && !state.args.keep_logs && state.args.log_dir.is_none() {
        let _ = std::fs::remove_dir_all(&log_dir);
    } else {
        println!("chaos: worker logs kept in {}", log_dir.display());
    }
    println!(
        "chaos: {} (seed {seed})",
        if passed { "PASSED" } else { "FAILED" }
    );
    Ok(passed)
}

/// A worker id's fixed settings: 1-4 slots, mock pacing so a task of 2-44
/// tokens takes about 50-500 ms.
fn profile(rng: &mut Rng, i: usize) -> Profile {
    Profile {
        id: format!("w{i}"),
        slots: 1 + rng.below(4) as u32,
        latency_ms: 30 + rng.below(31),
        tokens_per_sec: 90 + rng.below(21),
    }
}

/// Which fault comes next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Kill,
    Stop,
    Term,
    RestartSame,
    StartNew,
}

impl Run {
    /// Start, chaos, settle, verify; returns the summary and whether every
    /// check passed.
    async fn phases(&mut self, queue: rtq_core::Queue, tag: &str) -> Result<(String, bool)> {
        for i in 0..self.fleet.members.len() {
            self.fleet.start(i)?;
        }
        self.wait_registered(self.args.workers).await?;
        let stop_observer = CancellationToken::new();
        let observer = tokio::spawn(observe::observe(
            self.conn.clone(),
            self.keys.clone(),
            Arc::clone(&self.profiles),
            Arc::clone(&self.obs),
            self.started,
            stop_observer.clone(),
        ));
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let stop_load = CancellationToken::new();
        let abandon = CancellationToken::new();
        let load = tokio::spawn(load::generate(
            queue,
            LoadSettings {
                rate: self.args.rate,
                max_in_flight: self.args.max_in_flight,
                id_prefix: format!("t{tag}"),
            },
            self.rng.fork(),
            Arc::clone(&ledger),
            stop_load.clone(),
            abandon.clone(),
        ));
        let chaos_started = Instant::now();
        let chaos = self.chaos().await;
        stop_load.cancel();
        let _ = load.await;
        tracing::info!(
            elapsed_s = chaos_started.elapsed().as_secs(),
            "chaos over; settling"
        );
        let settled = match chaos {
            Ok(()) => self.settle(&ledger).await,
            Err(e) => Err(e),
        };
        abandon.cancel();
        stop_observer.cancel();
        let _ = observer.await;
        settled?;
        self.verify(&ledger).await
    }

    /// Waits (bounded) until `n` workers are registered.
    async fn wait_registered(&mut self, n: usize) -> Result<()> {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let live: usize = redis::cmd("ZCARD")
                .arg(self.keys.workers())
                .query_async(&mut self.conn)
                .await
                .unwrap_or(0);
            if live >= n {
                return Ok(());
            }
            self.check_exits();
            if Instant::now() > until {
                bail!("only {live} of {n} workers registered within 30 s (see their logs)");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Records workers that exited by themselves; a drain is expected to
    /// end with status 0 within the grace plus a margin.
    fn check_exits(&mut self) {
        for exit in self.fleet.reap_exits() {
            if exit.drained {
                let took = exit.drain_time.unwrap_or_default();
                self.faults.drains.push(took);
                tracing::info!(worker = %exit.id, took_ms = took.as_millis() as u64, status = %exit.status, "drained");
                if !exit.status.success() {
                    self.fleet_problems.push(format!(
                        "worker {} drained with {} after SIGTERM",
                        exit.id, exit.status
                    ));
                }
            } else {
                tracing::error!(worker = %exit.id, status = %exit.status, "worker exited by itself");
                self.fleet_problems.push(format!(
                    "worker {} exited by itself with {}",
                    exit.id, exit.status
                ));
            }
        }
        // A drain is bounded: grace (1 s) + cancel grace (1 s) + a margin.
        let hung: Vec<usize> = self.fleet.in_phase(
            |p| matches!(p, Phase::Draining(since) if since.elapsed() > Duration::from_secs(15)),
        );
        for i in hung {
            let id = self.fleet.members[i].profile.id.clone();
            self.fleet_problems
                .push(format!("worker {id} still draining 15 s after SIGTERM"));
            self.fleet.kill9(i);
        }
    }

    /// The chaos window: a fault at random intervals, SIGCONTs when due,
    /// Redis restarts evenly spaced.
    async fn chaos(&mut self) -> Result<()> {
        let window = Duration::from_secs(self.args.duration);
        let start = Instant::now();
        let restarts = u64::from(self.args.redis_restarts);
        let redis_due: Vec<Instant> = (1..=restarts)
            .map(|k| start + window.mul_f64(k as f64 / (restarts + 1) as f64))
            .collect();
        let mut redis_done = 0usize;
        let mut next = start + self.pause();
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        while start.elapsed() < window {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(25)) => {}
                _ = &mut ctrl_c => bail!("interrupted (Ctrl-C)"),
            }
            let now = Instant::now();
            for i in self.fleet.resume_due(now, false)? {
                tracing::info!(worker = %self.fleet.members[i].profile.id, "SIGCONT");
            }
            self.check_exits();
            if redis_due.get(redis_done).is_some_and(|due| *due <= now) {
                redis_done += 1;
                self.restart_redis().await?;
                next = Instant::now() + self.pause();
                continue;
            }
            if now >= next {
                self.inject()?;
                next = Instant::now() + self.pause();
            }
        }
        Ok(())
    }

    fn pause(&mut self) -> Duration {
        let (lo, hi) = (self.args.fault_min_ms, self.args.fault_max_ms);
        Duration::from_millis(lo + self.rng.below(hi - lo + 1))
    }

    /// Picks and does one fault. Destructive faults keep at least half the
    /// starting workers up; below that, workers are brought back first.
    fn inject(&mut self) -> Result<()> {
        let up = self.fleet.up();
        let down: Vec<usize> = self
            .fleet
            .down()
            .into_iter()
            .filter(|&i| self.fleet.members[i].starts > 0)
            .collect();
        let max_alive = self.args.max_workers.unwrap_or(self.args.workers + 2);
        let floor = self.args.workers.div_ceil(2).max(1);
        let mut choices: Vec<(Fault, u64)> = Vec::new();
        if up.len() > floor {
            choices.extend([(Fault::Kill, 4), (Fault::Stop, 2), (Fault::Term, 2)]);
        }
        if !down.is_empty() {
            choices.push((Fault::RestartSame, 3));
        }
        if self.fleet.alive() < max_alive {
            choices.push((Fault::StartNew, 1));
        }
        let total: u64 = choices.iter().map(|(_, w)| w).sum();
        if total == 0 {
            return Ok(());
        }
        let mut pick = self.rng.below(total);
        let fault = choices
            .iter()
            .find(|(_, w)| {
                if pick < *w {
                    true
                } else {
                    pick -= w;
                    false
                }
            })
            .map(|(f, _)| *f)
            .unwrap_or(Fault::StartNew);
        let at = self.started.elapsed().as_secs_f64();
        match fault {
            Fault::Kill => {
                let i = up[self.rng.below(up.len() as u64) as usize];
                let id = self.fleet.members[i].profile.id.clone();
                self.fleet.kill9(i);
                self.obs.lock().unwrap().killed(&id);
                self.faults.kills += 1;
                tracing::info!(at, worker = %id, "kill -9");
            }
            Fault::Stop => {
                let i = up[self.rng.below(up.len() as u64) as usize];
                let lease = self.fleet.lease_ms();
                let hold = Duration::from_millis(lease + lease / 2 + self.rng.below(lease * 3 / 2));
                self.fleet.stop(i, Instant::now() + hold)?;
                self.faults.stops += 1;
                tracing::info!(at, worker = %self.fleet.members[i].profile.id, hold_ms = hold.as_millis() as u64, "SIGSTOP");
            }
            Fault::Term => {
                let i = up[self.rng.below(up.len() as u64) as usize];
                self.fleet.term(i)?;
                self.faults.terms += 1;
                tracing::info!(at, worker = %self.fleet.members[i].profile.id, "SIGTERM");
            }
            Fault::RestartSame => {
                let i = down[self.rng.below(down.len() as u64) as usize];
                let id = self.fleet.members[i].profile.id.clone();
                self.obs.lock().unwrap().restarting(&id);
                self.fleet.start(i)?;
                self.faults.restarts_same_id += 1;
                tracing::info!(at, worker = %id, "restart under the same id");
            }
            Fault::StartNew => {
                let n = self.fleet.members.len();
                let p = profile(&mut self.rng, n);
                let i = self.fleet.add(p);
                *self.profiles.lock().unwrap() = self.fleet.profiles();
                self.fleet.start(i)?;
                self.faults.new_ids += 1;
                tracing::info!(at, worker = %self.fleet.members[i].profile.id, slots = self.fleet.members[i].profile.slots, "start under a new id");
            }
        }
        Ok(())
    }

    /// kill -9 of the private Redis and a restart on the same port from its
    /// AOF (blocking until it answers).
    async fn restart_redis(&mut self) -> Result<()> {
        let Some(server) = self.redis.clone() else {
            return Ok(());
        };
        tracing::info!(
            at = self.started.elapsed().as_secs_f64(),
            "Redis kill -9 and restart"
        );
        tokio::task::spawn_blocking(move || server.lock().unwrap().restart())
            .await
            .context("restarting redis-server")?;
        self.faults.redis_restarts += 1;
        Ok(())
    }

    /// After the chaos: resume stopped workers, let drains finish, bring at
    /// least `--workers` back up, and wait (bounded) for every outcome and
    /// for the workers' capacity to come back.
    async fn settle(&mut self, ledger: &load::SharedLedger) -> Result<()> {
        self.fleet.resume_due(Instant::now(), true)?;
        let until = Instant::now() + Duration::from_secs(self.args.settle_secs);
        while !self
            .fleet
            .in_phase(|p| matches!(p, Phase::Draining(_)))
            .is_empty()
        {
            self.check_exits();
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let mut down = self.fleet.down();
        while self.fleet.up().len() < self.args.workers {
            let i = match down.pop() {
                Some(i) => i,
                None => {
                    let n = self.fleet.members.len();
                    let p = profile(&mut self.rng, n);
                    let i = self.fleet.add(p);
                    *self.profiles.lock().unwrap() = self.fleet.profiles();
                    i
                }
            };
            let id = self.fleet.members[i].profile.id.clone();
            self.obs.lock().unwrap().restarting(&id);
            self.fleet.start(i)?;
            tracing::info!(worker = %id, "started for the settle");
        }
        loop {
            self.check_exits();
            let open = ledger.lock().unwrap().in_flight;
            if open == 0 {
                break;
            }
            if Instant::now() > until {
                tracing::error!(open, "settle bound reached with tasks still open");
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Waits (bounded) until every worker with a process has all its slots
    /// free and owns nothing, and every worker without one owns nothing and
    /// offers nothing; returns those that did not get there.
    async fn capacity_at_rest(&mut self) -> Result<Vec<(String, i64, i64, i64)>> {
        let profiles = self.fleet.profiles();
        let lease = Duration::from_millis(self.args.lease_ms);
        let until = Instant::now() + Duration::from_secs(5) + lease * 5;
        loop {
            let snap = observe::capacity_snapshot(&mut self.conn, &self.keys, &profiles).await;
            let bad: Vec<(String, i64, i64, i64)> = match snap {
                Ok(snap) => snap
                    .into_iter()
                    .zip(&self.fleet.members)
                    .filter(|(v, m)| {
                        if m.phase == Phase::Up {
                            !(v.free == v.slots && v.owned == 0)
                        } else {
                            v.free != 0 || v.owned != 0
                        }
                    })
                    .map(|(v, _)| (v.worker, v.free, v.owned, v.slots))
                    .collect(),
                Err(e) => vec![(format!("(snapshot failed: {e})"), 0, 0, 0)],
            };
            if bad.is_empty() || Instant::now() > until {
                return Ok(bad);
            }
            self.check_exits();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Reads Redis and runs every check; returns the summary and whether
    /// every check passed.
    async fn verify(&mut self, ledger: &load::SharedLedger) -> Result<(String, bool)> {
        let at_rest = self.capacity_at_rest().await?;
        self.check_exits();
        observe::read_endings(&mut self.conn, &self.keys, &self.obs)
            .await
            .context("reading the ended stream")?;
        let endings_added = observe::endings_added(&mut self.conn, &self.keys)
            .await
            .context("XINFO STREAM of the ended stream")?;
        let ids = ledger.lock().unwrap().order.clone();
        let hashes = verify::read_tasks(&mut self.conn, &self.keys, &ids)
            .await
            .context("reading the task hashes")?;
        let known: std::collections::HashSet<String> = ids.into_iter().collect();
        let leftovers =
            verify::leftovers(&mut self.conn, &self.keys, &self.fleet.profiles(), &known)
                .await
                .context("reading the queue's structures")?;
        let ledger = ledger.lock().unwrap();
        let obs = self.obs.lock().unwrap();
        let (mut checks, audit) = verify::verdict(&verify::Evidence {
            ledger: &ledger,
            hashes: &hashes,
            obs: &obs,
            endings_added,
            leftovers: &leftovers,
            at_rest: &at_rest,
            fleet_problems: &self.fleet_problems,
        });
        verify::check_free_handouts(&mut checks, &audit, self.faults.total());
        let setup = Setup {
            seed: self.rng_seed,
            duration: Duration::from_secs(self.args.duration),
            workers: self.args.workers,
            slots: self
                .fleet
                .members
                .iter()
                .take(self.args.workers)
                .map(|m| m.profile.slots)
                .collect(),
            lease_ms: self.args.lease_ms,
            rate: self.args.rate,
            max_in_flight: self.args.max_in_flight,
            redis: self.redis_label.clone(),
            wall: self.started.elapsed(),
        };
        let text = report::render(&setup, &self.faults, &ledger, &obs, &audit, &checks);
        Ok((text, checks.iter().all(verify::Check::passed)))
    }
}
