//! The rtq-worker binary against Redis over TLS (`--tls-*` flags), and its
//! exit codes: 3 unreachable, 4 authentication failed, 5 TLS failed,
//! 6 permission denied, each with a message that says which.

mod support;

use std::process::{Command, Output, Stdio};

use rtq_core::{Client, ClientConfig, TaskRequest, TlsConfig};
use rtq_testkit::{Options, Pki, RedisServer, TlsOptions};
use serde_json::json;
use support::ChildGuard;

fn worker(url: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rtq-worker"));
    cmd.args(["--queue", "tls", "--probe-addr", "off", "--grace-secs", "0"])
        .args(args)
        .env("RTQ_REDIS_URL", url)
        .env("RTQ_LOG", "warn")
        .env_remove("RTQ_TLS_CA")
        .env_remove("RTQ_TLS_CERT")
        .env_remove("RTQ_TLS_KEY");
    cmd
}

fn fails(url: &str, args: &[&str]) -> (Option<i32>, String) {
    let out: Output = worker(url, args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn path(p: &std::path::Path) -> String {
    p.to_str().unwrap().to_string()
}

#[tokio::test]
async fn a_worker_serves_tasks_over_mutual_tls_and_a_wrong_ca_exits_5() {
    let pki = Pki::generate();
    let Some(redis) = RedisServer::start_tls(TlsOptions::from_pki(&pki, true)) else {
        return;
    };
    let (ca, cert, key) = (
        path(&pki.ca()),
        path(&pki.client_cert()),
        path(&pki.client_key()),
    );
    let _worker = ChildGuard::spawn(
        worker(&redis.url(), &[])
            .env("RTQ_TLS_CA", &ca)
            .env("RTQ_TLS_CERT", &cert)
            .env("RTQ_TLS_KEY", &key)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let tls = TlsConfig::from_files(
        Some(&pki.ca()),
        Some(&pki.client_cert()),
        Some(&pki.client_key()),
    )
    .unwrap();
    let client = Client::connect_with(&redis.url(), ClientConfig::default().tls(tls))
        .await
        .unwrap();
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        client
            .queue("tls")
            .unwrap()
            .run(TaskRequest::json(json!({"max_tokens": 3}))),
    )
    .await
    .expect("the task ends")
    .expect("the worker served it over TLS");
    assert_eq!(
        out.result["usage"]["completion_tokens"], 3,
        "{}",
        out.result
    );

    let wrong = path(&pki.wrong_ca());
    let (code, err) = fails(
        &redis.url(),
        &["--tls-ca", &wrong, "--tls-cert", &cert, "--tls-key", &key],
    );
    assert_eq!(code, Some(5), "{err}");
    assert!(err.contains("not signed by a trusted CA"), "{err}");
    let (code, err) = fails(&redis.url(), &["--tls-ca", &ca]);
    assert_eq!(code, Some(5), "{err}");
    assert!(err.contains("client certificate"), "{err}");
}

#[test]
fn wrong_password_acl_refusal_and_closed_port_have_exit_codes_of_their_own() {
    let redis = RedisServer::start_with(Options {
        password: Some("right-pw".into()),
        ..Options::default()
    });
    let (code, err) = fails(
        &format!("redis://:WRONG-pw-9@127.0.0.1:{}/", redis.port()),
        &[],
    );
    assert_eq!(code, Some(4), "{err}");
    assert!(err.contains("refused the credentials"), "{err}");
    assert!(!err.contains("WRONG-pw-9"), "{err}");

    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "weak", "on", ">weak-pw", "~*", "-@all", "+ping"])
        .query(&mut redis.conn())
        .unwrap();
    let (code, err) = fails(
        &format!("redis://weak:weak-pw@127.0.0.1:{}/", redis.port()),
        &[],
    );
    assert_eq!(code, Some(6), "{err}");
    assert!(err.contains("fcall_ro"), "{err}");

    let port = redis.port();
    drop(redis);
    let (code, err) = fails(&format!("redis://127.0.0.1:{port}/"), &[]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("cannot reach Redis"), "{err}");
}

#[test]
fn a_redis_url_that_does_not_parse_is_a_usage_error_without_its_password() {
    // A port that is not a number: a typo, not an outage (exit 2, not 3:
    // a supervisor must not retry it).
    let (code, err) = fails("redis://:TYPO-pw-7@127.0.0.1:63x79/", &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(!err.contains("TYPO-pw-7"), "{err}");
}
