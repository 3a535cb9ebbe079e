//! Signed tasks through the real rtq-worker binary: with `--verify-key` it
//! runs tasks signed by that key and fails, unrun, unsigned ones and ones
//! signed by another key.

mod support;

use std::time::Duration;

use rtq_core::signing::SigningKey;
use rtq_core::{Client, ClientConfig, Error, TaskRequest};
use rtq_testkit::RedisServer;
use serde_json::json;
use support::*;

async fn run(client: &Client) -> Result<serde_json::Value, Error> {
    tokio::time::timeout(
        Duration::from_secs(30),
        client
            .queue("signed")
            .unwrap()
            .run(TaskRequest::json(json!({"max_tokens": 2})).max_attempts(1)),
    )
    .await
    .expect("the task ends")
    .map(|o| o.result)
}

#[tokio::test]
async fn a_worker_with_a_verify_key_runs_only_tasks_signed_by_it() {
    let redis = RedisServer::start();
    let (key, _) = SigningKey::generate().unwrap();
    let verify = key.verify_key().to_hex();
    let _worker = start_worker(&redis, &["--queue", "signed", "--verify-key", &verify]);

    let signer = Client::connect_with(&redis.url(), ClientConfig::default().signing_key(key))
        .await
        .unwrap();
    let out = run(&signer).await.expect("a signed task runs");
    assert_eq!(out["usage"]["completion_tokens"], 2, "{out}");

    let plain = Client::connect(&redis.url()).await.unwrap();
    let err = run(&plain).await.expect_err("an unsigned task is refused");
    assert!(err.to_string().contains("not signed"), "{err}");

    let (stranger, _) = SigningKey::generate().unwrap();
    let forger = Client::connect_with(&redis.url(), ClientConfig::default().signing_key(stranger))
        .await
        .unwrap();
    let err = run(&forger)
        .await
        .expect_err("a task signed by another key is refused");
    assert!(err.to_string().contains("does not verify"), "{err}");
}

#[test]
fn a_verify_key_that_is_not_64_hex_digits_is_refused_at_start() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rtq-worker"))
        .args(["--redis", "redis://127.0.0.1:1/", "--probe-addr", "off"])
        .args(["--verify-key", "not-a-key"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("64 hex digits"), "{err}");
}
