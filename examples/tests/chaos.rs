//! The short chaos run in CI: real rtq-worker processes killed, stopped,
//! drained and restarted under load for 15 s against a private redis-server,
//! then every check of the chaos example must pass. The seed comes from the
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

#[test]
fn a_short_chaos_run_keeps_every_guarantee() {
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
        .args(["--duration", "15", "--seed", &seed.to_string()])
        .env("RTQ_WORKER_BIN", worker)
        .env("RTQ_CHAOS_LOG", "warn")
        .env_remove("RTQ_CHAOS_REDIS")
        .stdin(Stdio::null())
        .output()
        .expect("the chaos example runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "chaos run failed with {} (replay: scripts/chaos.sh --seed {seed} --duration 15)\n\
         --- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        out.status
    );
    assert!(stdout.contains("PASS duplicates = 0"), "{stdout}");
    println!("{stdout}");
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
    ] {
        assert!(help.contains(flag), "--help lacks {flag}: {help}");
    }
    // --help printed before anything else happened: no seed line, no run.
    assert!(!help.contains("chaos: seed"), "{help}");
}
