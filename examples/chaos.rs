//! The chaos run: real `rtq-worker` processes under load are killed,
//! stopped, drained and restarted, then the protocol's guarantees are
//! checked against Redis (see `rtq_examples::chaos`, TESTING.md).
//!
//! Run: `scripts/chaos.sh` (short), `scripts/chaos.sh --long` (10 minutes),
//! or `cargo run -p rtq-examples --example chaos -- --help`.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{CommandFactory, Parser};
use rtq_core::redact_url;
use rtq_examples::chaos::{self, Args, Target};
use rtq_testkit::RedisServer;

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
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    println!("chaos: seed {seed} (repeat with --seed {seed})");
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
    // The private Redis lives (and is killed on drop) in this scope.
    let mut server = None;
    let target = match &args.redis {
        Some(url) => Ok(Target {
            url: url.clone(),
            label: format!("Redis {}", redact_url(url)),
            restart: None,
        }),
        None => private_redis(&args).map(|(s, target)| {
            server = Some(s);
            target
        }),
    };
    let result = match target {
        Ok(target) => runtime.block_on(chaos::run(args, seed, target)),
        Err(e) => Err(e),
    };
    runtime.shutdown_timeout(Duration::from_secs(2));
    drop(server);
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("chaos: the run could not be completed (seed {seed}): {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Starts the private redis-server (with AOF if asked) and describes it.
fn private_redis(args: &Args) -> anyhow::Result<(Arc<Mutex<RedisServer>>, Target)> {
    let aof = args.aof;
    let server = std::panic::catch_unwind(|| {
        RedisServer::start_with(rtq_testkit::Options {
            appendonly: aof,
            ..Default::default()
        })
    })
    .ok()
    .context("starting a private redis-server (is redis-server installed?)")?;
    let url = server.url();
    let server = Arc::new(Mutex::new(server));
    let handle = Arc::clone(&server);
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
    let restart: chaos::Restart = Arc::new(move || {
        let mut server = handle.lock().unwrap_or_else(|p| p.into_inner());
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| server.restart()))
            .ok()
            .context("redis-server did not come back after its restart")
    });
    Ok((
        server,
        Target {
            url,
            label,
            restart: aof.then_some(restart),
        },
    ))
}
