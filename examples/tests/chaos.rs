//! The short chaos runs in CI: real rtq-worker processes killed, stopped,
//! drained and restarted under load against a private redis-server, for 15 s
//! on an exact (v2) queue and 10 s on a stream (v3) queue
//! (`--stream-queue`), then every check of the chaos example must pass. The
//! two runs take turns (a lock), never overlap. The seed comes from the
//! clock and is printed, so a failure can be replayed with
//! `scripts/chaos.sh --seed <seed>`.
//!
//! Nothing here is timed beyond generous bounds: the example's own settle
//! bound (180 s) and its capacity-at-rest bound (several leases).
//!
//! The binaries must be current: `scripts/test.sh` (`cargo test
//! --workspace`) and `cargo test -p rtq-examples` build the example, and
//! the workspace build includes `rtq-worker`; `cargo test --test chaos`
//! alone rebuilds neither.

use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use rtq_testkit::target_dir;

fn built(path: std::path::PathBuf, how: &str) -> std::path::PathBuf {
    assert!(
        path.exists(),
        "{} not built: {how} (scripts/test.sh builds it with the workspace)",
        path.display()
    );
    path
}

/// One chaos run at a time: each starts its own fleet and Redis, and the
/// machine has few cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs the chaos example with `args` and a seed from the clock; panics
/// with its output unless every check passed; returns its stdout.
fn chaos_run(args: &[&str]) -> String {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let chaos = built(
        target_dir().join("examples").join("chaos"),
        "cargo build -p rtq-examples --example chaos",
    );
    let worker = built(target_dir().join("rtq-worker"), "cargo build -p rtq-worker");
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    println!("chaos seed {seed}");
    let out = Command::new(chaos)
        .args(args)
        .args(["--seed", &seed.to_string()])
        .env("RTQ_WORKER_BIN", worker)
        .env("RTQ_CHAOS_LOG", "warn")
        .env_remove("RTQ_CHAOS_REDIS")
        .env_remove("RTQ_CHAOS_STREAM_QUEUE")
        .stdin(Stdio::null())
        .output()
        .expect("the chaos example runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "chaos run failed with {} (replay: scripts/chaos.sh --seed {seed} {})\n\
         --- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        out.status,
        args.join(" ")
    );
    println!("{stdout}");
    stdout.into_owned()
}

#[test]
fn a_short_chaos_run_keeps_every_guarantee() {
    let stdout = chaos_run(&["--duration", "15"]);
    assert!(stdout.contains("PASS duplicates = 0"), "{stdout}");
}

#[test]
fn a_short_chaos_run_on_a_stream_queue_keeps_every_guarantee() {
    let stdout = chaos_run(&["--duration", "10", "--stream-queue"]);
    assert!(stdout.contains("stream queue, 2 bands"), "{stdout}");
    for check in [
        "PASS duplicates = 0",
        "PASS every task has an ending in Redis",
        "PASS queue empty at the end",
    ] {
        assert!(stdout.contains(check), "{check}: {stdout}");
    }
}

#[test]
fn the_chaos_help_has_no_side_effects() {
    let chaos = built(
        target_dir().join("examples").join("chaos"),
        "cargo build -p rtq-examples --example chaos",
    );
    let out = Command::new(chaos)
        .arg("--help")
        .env_remove("RTQ_CHAOS_REDIS")
        .output()
        .expect("the chaos example runs");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    for flag in [
        "RTQ_CHAOS_REDIS",
        "RTQ_CHAOS_SEED",
        "RTQ_WORKER_BIN",
        "--duration",
        "--stream-queue",
        "RTQ_CHAOS_STREAM_QUEUE",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}: {help}");
    }
    // --help printed before anything else happened: no seed line, no run.
    assert!(!help.contains("chaos: seed"), "{help}");
}
