//! The gateway process: TLS termination, start-up refusals with clear
//! messages, `--help` without side effects, `hash-key`.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use rtq_testkit::{Pki, RedisCluster, RedisServer, TlsOptions};
use serde_json::{json, Value};
use support::{key_file, start_gateway, start_gateway_with_env, start_worker, wait_model};

fn gateway() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rtq-gateway"));
    cmd.env_remove("RTQ_REDIS_URL")
        .env_remove("RTQ_GATEWAY_API_KEYS")
        .env_remove("RTQ_TLS_CA")
        .env_remove("RTQ_TLS_CERT")
        .env_remove("RTQ_TLS_KEY")
        .stdin(Stdio::null());
    cmd
}

#[tokio::test]
async fn tls_is_terminated_with_the_given_certificate() {
    let pki = Pki::generate();
    let redis = RedisServer::start();
    let _worker = start_worker(
        &redis.url(),
        "m",
        &["--handler", "mock", "--mock-tokens", "3"],
    );
    let gw = start_gateway(
        &redis.url(),
        &[
            "--tls-cert",
            pki.server_cert().to_str().unwrap(),
            "--tls-key",
            pki.server_key().to_str().unwrap(),
        ],
    );
    assert!(gw.url.starts_with("https://"), "{}", gw.url);
    let ca = reqwest::Certificate::from_pem(&std::fs::read(pki.ca()).unwrap()).unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    wait_model(&http, &gw, "", "m").await;
    let v: Value = http
        .post(format!("{}/v1/chat/completions", gw.url))
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "tok0 tok1 tok2 ");
    // Plain HTTP on the TLS port is not served.
    let plain = gw.url.replace("https://", "http://");
    assert!(reqwest::get(format!("{plain}/healthz")).await.is_err());
}

#[test]
fn help_has_no_side_effects_and_redis_is_required() {
    let out = gateway().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--redis",
        "redis+cluster://",
        "--redis-tls-ca",
        "--redis-tls-cert",
        "--redis-tls-key",
        "--listen",
        "--api-keys",
        "--tls-cert",
        "--grace-secs",
        "RTQ_",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
    let out = gateway().output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--redis"));
}

/// Submits a task through the task API (the gateway runs without keys and
/// with --create-queues) and reads its state back.
async fn submit_and_read(gw: &support::Gateway, queue: &str) {
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/v1/queues/{queue}/tasks", gw.url))
        .json(&json!({"input": {"n": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        202,
        "{}\n{}",
        r.text().await.unwrap(),
        gw.proc.log()
    );
    let v: Value = r.json().await.unwrap();
    let id = v["id"].as_str().unwrap();
    let r = http
        .get(format!("{}/v1/queues/{queue}/tasks/{id}", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["state"], "queued", "{v}");
}

#[tokio::test]
async fn redis_over_mutual_tls_takes_the_client_certificate_from_the_redis_tls_flags() {
    let pki = Pki::generate();
    let Some(redis) = RedisServer::start_tls(TlsOptions::from_pki(&pki, true)) else {
        return;
    };
    let path = |p: std::path::PathBuf| p.to_str().unwrap().to_string();
    let (ca, cert, key) = (
        path(pki.ca()),
        path(pki.client_cert()),
        path(pki.client_key()),
    );
    // The worker's variables, read by the gateway too.
    let gw = start_gateway_with_env(
        &redis.url(),
        &["--create-queues"],
        &[
            ("RTQ_TLS_CA", &ca),
            ("RTQ_TLS_CERT", &cert),
            ("RTQ_TLS_KEY", &key),
        ],
    );
    submit_and_read(&gw, "mtls").await;
    drop(gw);
    // The flags; the gateway's own --tls-cert/--tls-key (HTTPS) are not
    // Redis's.
    let gw = start_gateway(
        &redis.url(),
        &[
            "--create-queues",
            "--redis-tls-ca",
            &ca,
            "--redis-tls-cert",
            &cert,
            "--redis-tls-key",
            &key,
        ],
    );
    assert!(gw.url.starts_with("http://"), "{}", gw.url);
    submit_and_read(&gw, "mtls").await;
    drop(gw);
    // Without a client certificate the server refuses, and the gateway
    // says what is missing.
    let out = gateway()
        .args(["--redis", &redis.url(), "--listen", "127.0.0.1:0"])
        .args(["--redis-tls-ca", &ca])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("client certificate"), "{stderr}");
    // A certificate without its key is a usage error.
    let out = gateway()
        .args(["--redis", &redis.url(), "--listen", "127.0.0.1:0"])
        .args(["--redis-tls-cert", &cert])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--redis-tls-key"), "{stderr}");
}

#[tokio::test]
async fn a_redis_cluster_url_serves_completions_and_waits() {
    let cluster = RedisCluster::start_with(3, 0, None);
    let url = cluster.url();
    let _worker = start_worker(&url, "m", &["--handler", "mock", "--mock-tokens", "3"]);
    let gw = start_gateway(&url, &[]);
    let http = reqwest::Client::new();
    wait_model(&http, &gw, "", "m").await;
    let v: Value = http
        .post(format!("{}/v1/chat/completions", gw.url))
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"], "tok0 tok1 tok2 ",
        "{v}"
    );
    let r = http
        .post(format!("{}/v1/queues/m/tasks?wait=true", gw.url))
        .json(&json!({"input": {"max_tokens": 2}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["state"], "done", "{v}");
}

#[test]
fn bad_configuration_is_refused_with_a_message_naming_the_problem() {
    let redis = RedisServer::start();
    let bad_keys = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bad_keys.path(), "sha256:1234 queues=*\n").unwrap();
    let missing = "/nonexistent/keys";
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--redis".into(), "redis://:hunter2@127.0.0.1:1".into()],
            "cannot connect to Redis",
        ),
        (
            vec![
                "--redis".into(),
                redis.url(),
                "--api-keys".into(),
                missing.into(),
            ],
            "cannot read the API key file",
        ),
        (
            vec![
                "--redis".into(),
                redis.url(),
                "--api-keys".into(),
                bad_keys.path().to_str().unwrap().into(),
            ],
            "64 hex digits",
        ),
        (
            vec![
                "--redis".into(),
                redis.url(),
                "--tls-cert".into(),
                missing.into(),
                "--tls-key".into(),
                missing.into(),
            ],
            "TLS certificate",
        ),
    ];
    for (args, needle) in cases {
        let out = gateway()
            .args(&args)
            .args(["--listen", "127.0.0.1:0"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("hunter2"), "password printed: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn hash_key_prints_a_key_file_line_for_the_key_on_stdin() {
    let mut child = gateway()
        .args(["hash-key", "--queues", "a,b"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let line = String::from_utf8_lossy(&out.stdout);
    let expected = format!(
        "sha256:{} queues=a,b\n",
        rtq_gateway::auth::hash_key("s3cret")
    );
    assert_eq!(line, expected);
    // The line works as a key file.
    let file = key_file(&["s3cret queues=a,b"]);
    assert_eq!(std::fs::read_to_string(file.path()).unwrap(), expected);
    // --queues that would print a line the gateway refuses (or reads
    // otherwise) is refused, and nothing is printed.
    for bad in ["", ",", "a b", "a#b", "a;b"] {
        let mut child = gateway()
            .args(["hash-key", "--queues", bad])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let _ = child.stdin.take().unwrap().write_all(b"s3cret\n");
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad:?} accepted");
        assert!(out.stdout.is_empty(), "{bad:?} printed a line");
        assert!(stderr.contains("--queues"), "{bad:?}: {stderr}");
    }
}

#[test]
fn slow_bodies_get_408_and_slow_headers_are_cut_off() {
    use std::io::Read;
    let redis = RedisServer::start();
    let gw = start_gateway(
        &redis.url(),
        &["--body-timeout-secs", "1", "--header-timeout-secs", "1"],
    );
    let addr = gw.url.trim_start_matches("http://").to_string();
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    conn.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"mo",
    )
    .unwrap();
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");

    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
    assert!(started.elapsed() < std::time::Duration::from_secs(8));
    assert!(!String::from_utf8_lossy(&answer).contains("200 OK"));
}

#[test]
fn the_body_timeout_is_a_total_deadline_not_an_idle_one() {
    use std::io::Read;
    use std::time::{Duration, Instant};
    let redis = RedisServer::start();
    let gw = start_gateway(&redis.url(), &["--body-timeout-secs", "1"]);
    let addr = gw.url.trim_start_matches("http://").to_string();
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    conn.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n",
    )
    .unwrap();
    // A byte every 200 ms (never idle for a second), for up to 6 s.
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while started.elapsed() < Duration::from_secs(6) {
        if conn.write_all(b" ").is_err() {
            break;
        }
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Err(_) => {} // nothing yet (read timeout)
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = started.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "after {took:?}: {answer:?}"
    );
    assert!(took < Duration::from_secs(3), "408 only after {took:?}");
}

#[test]
fn an_oversized_content_length_is_refused_before_the_body_is_read() {
    use std::io::Read;
    let redis = RedisServer::start();
    let gw = start_gateway(&redis.url(), &["--max-body-bytes", "2048"]);
    let addr = gw.url.trim_start_matches("http://").to_string();
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    // The head alone: no byte of the body is ever sent.
    conn.write_all(
        b"POST /v1/queues/q/tasks HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n",
    )
    .unwrap();
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    assert!(answer.contains("payload_too_large"), "{answer}");
    assert!(answer.contains("5000000"), "{answer}");
}
