//! TLS to Redis (`rediss://`): a real redis-server serving TLS only, with
//! certificates the test makes (rtq-testkit's `Pki`). Skips, loudly, only
//! when the machine's redis-server was built without TLS.

use std::sync::Arc;
use std::time::Duration;

use rtq_core::{
    async_trait, Client, ClientConfig, ConnectionProblem, Error, Handler, HandlerError,
    TaskContext, TaskRequest, TlsConfig, Worker, WorkerConfig,
};
use rtq_testkit::tls::Pki;
use rtq_testkit::{RedisServer, TlsOptions};
use serde_json::json;

struct Echo;

#[async_trait]
impl Handler for Echo {
    async fn handle(&self, task: TaskContext) -> Result<serde_json::Value, HandlerError> {
        task.send("over tls").await?;
        Ok(json!({"echo": task.input().cloned().unwrap_or_default()}))
    }
}

fn tls(pki: &Pki, client_cert: bool) -> TlsConfig {
    let cert = pki.client_cert();
    let key = pki.client_key();
    TlsConfig::from_files(
        Some(&pki.ca()),
        client_cert.then_some(cert.as_path()),
        client_cert.then_some(key.as_path()),
    )
    .unwrap()
}

/// Runs one task through a worker and a client that both use `tls`.
async fn round_trip(url: &str, tls: TlsConfig) {
    let worker = Worker::connect(url, WorkerConfig::new("tls").tls(tls.clone()))
        .await
        .expect("the worker connects over TLS");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(Arc::new(Echo), async {
        let _ = stopped.await;
    }));
    let client = Client::connect_with(url, ClientConfig::default().tls(tls))
        .await
        .expect("the client connects over TLS");
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        client
            .queue("tls")
            .unwrap()
            .run(TaskRequest::json(json!({"n": 7}))),
    )
    .await
    .expect("the task ends")
    .expect("the task succeeds");
    assert_eq!(out.result, json!({"echo": {"n": 7}}));
    let _ = stop.send(());
    running.await.unwrap().unwrap();
}

fn tls_error(err: Error) -> String {
    assert_eq!(
        err.connection_problem(),
        Some(ConnectionProblem::Tls),
        "expected a TLS failure, got: {err}"
    );
    err.to_string()
}

#[tokio::test]
async fn a_client_and_a_worker_run_a_task_over_tls_with_a_private_ca() {
    let pki = Pki::generate();
    let Some(redis) = RedisServer::start_tls(TlsOptions::from_pki(&pki, false)) else {
        return;
    };
    assert!(redis.url().starts_with("rediss://"));
    round_trip(&redis.url(), tls(&pki, false)).await;
}

#[tokio::test]
async fn a_server_that_requires_client_certificates_serves_those_that_present_one() {
    let pki = Pki::generate();
    let Some(redis) = RedisServer::start_tls(TlsOptions::from_pki(&pki, true)) else {
        return;
    };
    round_trip(&redis.url(), tls(&pki, true)).await;

    let err = Client::connect_with(&redis.url(), ClientConfig::default().tls(tls(&pki, false)))
        .await
        .err()
        .expect("a client without a certificate is refused");
    let msg = tls_error(err);
    assert!(msg.contains("client certificate"), "{msg}");
    let err = Worker::connect(&redis.url(), WorkerConfig::new("tls").tls(tls(&pki, false)))
        .await
        .err()
        .expect("a worker without a certificate is refused");
    tls_error(err);
}

#[tokio::test]
async fn a_wrong_ca_or_the_system_roots_reject_the_server_with_a_clear_error() {
    let pki = Pki::generate();
    let Some(redis) = RedisServer::start_tls(TlsOptions::from_pki(&pki, false)) else {
        return;
    };
    let wrong = TlsConfig::from_files(Some(&pki.wrong_ca()), None, None).unwrap();
    let err = Client::connect_with(&redis.url(), ClientConfig::default().tls(wrong))
        .await
        .err()
        .expect("a server signed by another CA is refused");
    let msg = tls_error(err);
    assert!(msg.contains("not signed by a trusted CA"), "{msg}");
    assert!(msg.contains("--tls-ca"), "{msg}");
    assert!(msg.contains("rediss://127.0.0.1:"), "{msg}");

    // No CA given: the system roots do not know the test CA either.
    let err = Client::connect(&redis.url())
        .await
        .err()
        .expect("a private CA is not in the system roots");
    assert!(tls_error(err).contains("not signed by a trusted CA"));
}

#[tokio::test]
async fn tls_settings_that_cannot_work_are_refused_before_connecting() {
    let pki = Pki::generate();
    let redis = RedisServer::start();
    let ca = TlsConfig::from_files(Some(&pki.ca()), None, None).unwrap();
    let err = Client::connect_with(&redis.url(), ClientConfig::default().tls(ca))
        .await
        .err()
        .expect("TLS settings on a redis:// URL are refused");
    assert!(matches!(err, Error::TlsSetup(_)), "{err}");
    assert!(err.to_string().contains("not a rediss:// URL"), "{err}");

    let cert = pki.client_cert();
    let err = TlsConfig::from_files(None, Some(&cert), None).unwrap_err();
    assert!(err.to_string().contains("needs its private key"), "{err}");
    let err = TlsConfig::from_files(Some(&pki.dir().join("missing.pem")), None, None).unwrap_err();
    assert!(err.to_string().contains("missing.pem"), "{err}");

    let garbage = TlsConfig::default().ca_pem(b"not a certificate".to_vec());
    let err = Client::connect_with(
        "rediss://127.0.0.1:1/",
        ClientConfig::default().tls(garbage),
    )
    .await
    .err()
    .expect("a CA that is not PEM is refused");
    assert!(matches!(err, Error::TlsSetup(_)), "{err}");
    assert!(err.to_string().contains("no certificate"), "{err}");
}

#[tokio::test]
async fn there_is_no_insecure_mode() {
    let pki = Pki::generate();
    let Some(redis) = RedisServer::start_tls(TlsOptions::from_pki(&pki, false)) else {
        return;
    };
    let url = format!("{}#insecure", redis.url());
    let err = Client::connect(&url)
        .await
        .err()
        .expect("rediss://...#insecure is refused");
    assert_eq!(
        err.connection_problem(),
        Some(ConnectionProblem::Tls),
        "{err}"
    );
}
