//! How `rtq` fails to connect, through the real binary against real
//! redis-servers: TLS with the `--tls-*` flags, and a distinct exit code
//! and message for each class of failure (a script that retries
//! "unreachable" must not retry a wrong password forever).

use std::process::{Command, Output};

use rtq_testkit::{Options, Pki, RedisServer, TlsOptions};

fn rtq(redis: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rtq"))
        .arg("--redis")
        .arg(redis)
        .args(args)
        .env_remove("RTQ_TLS_CA")
        .env_remove("RTQ_TLS_CERT")
        .env_remove("RTQ_TLS_KEY")
        .output()
        .expect("rtq runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn path(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn stats_over_mutual_tls_with_the_tls_flags_and_a_wrong_ca_exits_5() {
    let pki = Pki::generate();
    let Some(redis) = RedisServer::start_tls(TlsOptions::from_pki(&pki, true)) else {
        return;
    };
    let (ca, cert, key) = (pki.ca(), pki.client_cert(), pki.client_key());
    let flags = [
        "--tls-ca",
        path(&ca),
        "--tls-cert",
        path(&cert),
        "--tls-key",
        path(&key),
    ];
    let ok = rtq(&redis.url(), &[&flags[..], &["stats", "--json"]].concat());
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert_eq!(
        String::from_utf8_lossy(&ok.stdout).trim(),
        r#"{"queues":[],"schema":1,"window_secs":60}"#
    );

    // The same through the environment.
    let env = Command::new(env!("CARGO_BIN_EXE_rtq"))
        .args(["stats", "--json"])
        .env("RTQ_REDIS_URL", redis.url())
        .env("RTQ_TLS_CA", &ca)
        .env("RTQ_TLS_CERT", &cert)
        .env("RTQ_TLS_KEY", &key)
        .output()
        .unwrap();
    assert!(env.status.success(), "{}", stderr(&env));

    let wrong_ca = pki.wrong_ca();
    let wrong = rtq(
        &redis.url(),
        &[
            "--tls-ca",
            path(&wrong_ca),
            "--tls-cert",
            path(&cert),
            "--tls-key",
            path(&key),
            "stats",
        ],
    );
    assert_eq!(wrong.status.code(), Some(5), "{}", stderr(&wrong));
    assert!(
        stderr(&wrong).contains("not signed by a trusted CA"),
        "{}",
        stderr(&wrong)
    );

    let no_cert = rtq(&redis.url(), &["--tls-ca", path(&ca), "stats"]);
    assert_eq!(no_cert.status.code(), Some(5), "{}", stderr(&no_cert));
    assert!(
        stderr(&no_cert).contains("client certificate"),
        "{}",
        stderr(&no_cert)
    );

    let half = rtq(&redis.url(), &["--tls-cert", path(&cert), "stats"]);
    assert_eq!(half.status.code(), Some(5), "{}", stderr(&half));
    assert!(
        stderr(&half).contains("needs its private key"),
        "{}",
        stderr(&half)
    );
}

#[test]
fn a_wrong_password_exits_4_and_never_prints_it() {
    let redis = RedisServer::start_with(Options {
        password: Some("right-pw".into()),
        ..Options::default()
    });
    let url = format!("redis://:WRONG-pw-123@127.0.0.1:{}/", redis.port());
    let o = rtq(&url, &["stats"]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("refused the credentials"),
        "{}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains("WRONG-pw-123"), "{}", stderr(&o));

    let none = rtq(&format!("redis://127.0.0.1:{}/", redis.port()), &["stats"]);
    assert_eq!(none.status.code(), Some(4), "{}", stderr(&none));
}

#[test]
fn a_user_the_acl_refuses_exits_6_naming_the_command() {
    let redis = RedisServer::start();
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "weak", "on", ">weak-pw", "~*", "-@all", "+ping"])
        .query(&mut redis.conn())
        .unwrap();
    let url = format!("redis://weak:weak-pw@127.0.0.1:{}/", redis.port());
    let o = rtq(&url, &["stats"]);
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    assert!(stderr(&o).contains("fcall_ro"), "{}", stderr(&o));
}

#[test]
fn a_closed_port_exits_3() {
    let port = {
        let redis = RedisServer::start();
        redis.port()
    };
    let o = rtq(&format!("redis://127.0.0.1:{port}/"), &["stats"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("cannot reach Redis"), "{}", stderr(&o));
}

#[test]
fn a_redis_url_that_does_not_parse_exits_2_without_its_password() {
    let o = rtq("redis://:TYPO-pw-7@127.0.0.1:63x79/", &["stats"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(!stderr(&o).contains("TYPO-pw-7"), "{}", stderr(&o));
}

#[test]
fn a_unix_socket_password_never_reaches_errors_or_help() {
    let o = rtq(
        "unix:///nonexistent/rtq.sock?pass=SOCK-SECRET-7",
        &["stats"],
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("pass=***"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("SOCK-SECRET-7"), "{}", stderr(&o));

    let help = Command::new(env!("CARGO_BIN_EXE_rtq"))
        .arg("--help")
        .env("RTQ_REDIS_URL", "redis://:HELP-SECRET-8@127.0.0.1:1/")
        .output()
        .unwrap();
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("RTQ_REDIS_URL"), "{text}");
    assert!(!text.contains("HELP-SECRET-8"), "{text}");
}

#[tokio::test]
async fn the_console_s_background_reader_connects_over_mutual_tls() {
    use rtq_console::{fetch, model::Fetched};
    let pki = Pki::generate();
    let Some(redis) = RedisServer::start_tls(TlsOptions::from_pki(&pki, true)) else {
        return;
    };
    let _: () = redis::cmd("SADD")
        .arg(rtq_core::keys::QUEUES)
        .arg("llm")
        .query(&mut redis.conn())
        .unwrap();
    let tls = rtq_core::TlsConfig::from_files(
        Some(&pki.ca()),
        Some(&pki.client_cert()),
        Some(&pki.client_key()),
    )
    .unwrap();
    let (_plan_tx, plan_rx) = tokio::sync::watch::channel(fetch::Plan::default());
    let (_action_tx, action_rx) = tokio::sync::mpsc::channel(4);
    let (data_tx, mut data_rx) = tokio::sync::mpsc::channel(64);
    let fetcher = tokio::spawn(fetch::run(
        redis.url(),
        rtq_core::ClientConfig::default().tls(tls),
        true,
        std::time::Duration::from_millis(100),
        plan_rx,
        action_rx,
        data_tx,
    ));
    let rows = loop {
        match tokio::time::timeout(std::time::Duration::from_secs(20), data_rx.recv()).await {
            Ok(Some(Fetched::Queues { rows, .. })) => break rows,
            Ok(Some(Fetched::Failed(e))) => panic!("the console could not read over TLS: {e}"),
            Ok(Some(_)) => continue,
            other => panic!("no data from the console's reader: {other:?}"),
        }
    };
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].overview.name, "llm");
    fetcher.abort();
}
