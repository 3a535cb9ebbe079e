//! Runs the examples as users would, against a private redis-server: the
//! worker example serves while each client example runs to completion.
//! Without a Redis URL every example refuses to run, and `--help` needs
//! nothing.

use std::process::{Child, Command, Stdio};

use rtq_testkit::{target_dir, RedisServer};

fn example(name: &str) -> std::path::PathBuf {
    let path = target_dir().join("examples").join(name);
    assert!(path.exists(), "{} not built", path.display());
    path
}

/// A spawned example, killed and reaped on drop, so a failing assertion
/// never leaves it running.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

#[test]
fn every_client_example_runs_against_the_worker_example() {
    let redis = RedisServer::start();
    let mut worker = ChildGuard(
        Command::new(example("worker"))
            .env("RTQ_REDIS_URL", redis.url())
            .env("RTQ_QUEUE", "examples")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("worker example starts"),
    );
    for (name, expect) in [
        ("request_response", "\"tokens\":4"),
        ("streaming", "STREAMING TOKENS ARRIVE"),
        ("submit_then_fetch", "its chunks: FETCH ME LATER"),
    ] {
        let out = Command::new(example(name))
            .env("RTQ_REDIS_URL", redis.url())
            .env("RTQ_QUEUE", "examples")
            .output()
            .expect("client example runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name} failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(expect), "{name} printed: {stdout}");
    }
    // Ctrl-C: the worker drains and exits cleanly.
    let _ = Command::new("kill")
        .arg("-INT")
        .arg(worker.0.id().to_string())
        .status();
    let status = worker.0.wait().unwrap();
    assert!(status.success(), "worker exited with {status}");
}

const TAKING_A_REDIS_URL: [&str; 8] = [
    "worker",
    "request_response",
    "streaming",
    "submit_then_fetch",
    "loadgen",
    "bench",
    "bench_memory",
    "bench_table",
];

#[test]
fn without_a_redis_url_no_example_runs_and_help_needs_none() {
    for name in TAKING_A_REDIS_URL {
        let out = Command::new(example(name))
            .env_remove("RTQ_REDIS_URL")
            .stdin(Stdio::null())
            .output()
            .expect("example runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(
            err.contains("--redis") && err.contains("RTQ_REDIS_URL"),
            "{name}: {err}"
        );
        let help = Command::new(example(name))
            .arg("--help")
            .env_remove("RTQ_REDIS_URL")
            .output()
            .expect("example runs");
        assert!(help.status.success(), "{name} --help: {help:?}");
        assert!(
            String::from_utf8_lossy(&help.stdout).contains("RTQ_REDIS_URL"),
            "{name} --help"
        );
    }
    let out = Command::new(example("proxy"))
        .env_remove("RTQ_PROXY_TO")
        .output()
        .expect("proxy runs");
    assert_eq!(out.status.code(), Some(2), "proxy without --to: {out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--to"));
}
