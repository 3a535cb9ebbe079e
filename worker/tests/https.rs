//! `https://` upstreams (rustls, a CA given with `--upstream-ca`) and
//! upstream authentication that is not in the URL: `RTQ_UPSTREAM_API_KEY`
//! (a bearer token) and `--upstream-header-file`.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rtq_core::{Client, Error, TaskRequest};
use rtq_testkit::{Pki, RedisServer};
use serde_json::json;
use support::*;

async fn run(q: &rtq_core::Queue) -> Result<serde_json::Value, Error> {
    tokio::time::timeout(
        Duration::from_secs(30),
        q.run(TaskRequest::json(json!({"x": 1})).max_attempts(1)),
    )
    .await
    .expect("the task ends")
    .map(|o| o.result)
}

#[tokio::test]
async fn an_https_upstream_with_a_private_ca_gets_the_api_key_and_the_header_file() {
    let pki = Pki::generate();
    let probes = Arc::new(AtomicUsize::new(0));
    let base = serve_https(auth_echo_app(Arc::clone(&probes)), &pki).await;
    let redis = RedisServer::start();
    let headers = pki.dir().join("headers");
    std::fs::write(&headers, "# gateway\n\nX-Api-Key: gw-key-42\n").unwrap();
    let url = format!("{base}/generate");
    let health = format!("{base}/health");
    let ca = pki.ca();
    let header_file = headers.to_str().unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_rtq-worker"));
    cmd.args([
        "--queue",
        "https",
        "--handler",
        "http",
        "--probe-addr",
        "off",
    ])
    .args(["--upstream-url", &url, "--health-url", &health])
    .args(["--upstream-ca", ca.to_str().unwrap()])
    .args(["--upstream-header-file", header_file, "--grace-secs", "0"])
    .env("RTQ_REDIS_URL", redis.url())
    .env("RTQ_UPSTREAM_API_KEY", "sk-test-key")
    .env("RTQ_LOG", "warn")
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    let _worker = ChildGuard::spawn(&mut cmd);
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("https").unwrap();
    let result = run(&q).await.expect("served over https");
    assert_eq!(result["authorization"], "Bearer sk-test-key", "{result}");
    assert_eq!(result["x-api-key"], "gw-key-42", "{result}");
    eventually("a health probe carried the key", || {
        let probes = Arc::clone(&probes);
        Box::pin(async move { probes.load(Ordering::SeqCst) > 0 })
    })
    .await;
}

#[tokio::test]
async fn an_https_upstream_signed_by_an_untrusted_ca_fails_the_task_with_a_certificate_error() {
    let pki = Pki::generate();
    let base = serve_https(auth_echo_app(Arc::new(AtomicUsize::new(0))), &pki).await;
    let redis = RedisServer::start();
    let url = format!("{base}/generate");
    let _worker = start_worker(
        &redis,
        &[
            "--queue",
            "untrusted",
            "--handler",
            "http",
            "--upstream-url",
            &url,
        ],
    );
    let client = Client::connect(&redis.url()).await.unwrap();
    let q = client.queue("untrusted").unwrap();
    let err = run(&q)
        .await
        .expect_err("the system roots do not know the test CA");
    let msg = err.to_string();
    assert!(msg.to_lowercase().contains("certificate"), "{msg}");
}

#[test]
fn an_upstream_url_that_is_not_http_or_https_is_refused_at_start() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rtq-worker"))
        .args(["--redis", "redis://127.0.0.1:1/", "--handler", "http"])
        .args([
            "--upstream-url",
            "ftp://model.internal/generate",
            "--probe-addr",
            "off",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("http:// or https://"), "{err}");
}
