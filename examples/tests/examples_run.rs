//! Runs the examples as users would, against a private redis-server: the
//! worker example serves while each client example runs to completion.

use std::process::{Command, Stdio};

use rtq_testkit::{target_dir, RedisServer};

fn example(name: &str) -> std::path::PathBuf {
    let path = target_dir().join("examples").join(name);
    assert!(path.exists(), "{} not built", path.display());
    path
}

#[test]
fn every_client_example_runs_against_the_worker_example() {
    let redis = RedisServer::start();
    let mut worker = Command::new(example("worker"))
        .env("RTQ_REDIS_URL", redis.url())
        .env("RTQ_QUEUE", "examples")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("worker example starts");
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
        .arg(worker.id().to_string())
        .status();
    let status = worker.wait().unwrap();
    assert!(status.success(), "worker exited with {status}");
}
