//! Secrets never leave the process. A Redis password, upstream URL
//! credentials (userinfo and an `api_key` query), an API key and a
//! header-file value are planted; an upstream echoes every credential it
//! receives in its error body, another is unreachable. Then every output
//! channel is searched for them: the workers' stdout and stderr (logs at
//! debug), every value of every Redis key, the client's errors, the probe
//! endpoints, and `--help` with the variables set.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::post;
use axum::Router;
use rtq_core::{Client, TaskRequest};
use rtq_testkit::{Options, RedisServer};
use serde_json::json;
use support::*;

const REDIS_PW: &str = "redis-SECRET-pw1";
const URL_PW: &str = "URL-SECRET-2";
const API_KEY: &str = "KEY-SECRET-3";
const QUERY_KEY: &str = "QUERY-SECRET-4";
const HEADER_VALUE: &str = "HDR-SECRET-5";
/// What HTTP basic authentication makes of `apiuser:URL-SECRET-2`.
const BASIC: &str = "YXBpdXNlcjpVUkwtU0VDUkVULTI=";
const SECRETS: [&str; 6] = [REDIS_PW, URL_PW, API_KEY, QUERY_KEY, HEADER_VALUE, BASIC];

/// Answers 401 quoting every credential it got: a careless gateway.
async fn echoing_upstream() -> String {
    let app = Router::new().route(
        "/generate",
        post(|uri: Uri, headers: HeaderMap| async move {
            let h = |n: &str| {
                headers
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string()
            };
            (
                StatusCode::UNAUTHORIZED,
                format!(
                    "denied: uri={uri} authorization={} x-gw={}",
                    h("authorization"),
                    h("x-gw")
                ),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("127.0.0.1:{}", addr.port())
}

fn find_secrets(channel: &str, text: &str) {
    for secret in SECRETS {
        assert!(
            !text.contains(secret),
            "{channel} leaks the planted secret {secret:?}:\n{text}"
        );
    }
}

/// Every value of every key, as text.
fn everything_in(redis: &RedisServer) -> String {
    let mut conn = redis.conn();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
    assert!(!keys.is_empty());
    let mut all = String::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE").arg(&key).query(&mut conn).unwrap();
        let value: redis::Value = match kind.as_str() {
            "string" => redis::cmd("GET").arg(&key).query(&mut conn),
            "hash" => redis::cmd("HGETALL").arg(&key).query(&mut conn),
            "list" => redis::cmd("LRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query(&mut conn),
            "set" => redis::cmd("SMEMBERS").arg(&key).query(&mut conn),
            "zset" => redis::cmd("ZRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query(&mut conn),
            "stream" => redis::cmd("XRANGE")
                .arg(&key)
                .arg("-")
                .arg("+")
                .query(&mut conn),
            other => panic!("unexpected type {other} of {key}"),
        }
        .unwrap();
        all.push_str(&format!("{key} => {value:?}\n"));
    }
    all
}

struct Spawned {
    guard: ChildGuard,
    log: std::path::PathBuf,
    probe: String,
}

/// A worker of queue `name`; `with_key` sends the API key (which the
/// worker refuses next to a URL password: both are `Authorization`).
fn worker(
    dir: &std::path::Path,
    name: &str,
    redis_url: &str,
    upstream: &str,
    with_key: bool,
) -> Spawned {
    let headers = dir.join("headers");
    std::fs::write(&headers, format!("X-Gw: {HEADER_VALUE}\n")).unwrap();
    let log = dir.join(format!("{name}.log"));
    let out = std::fs::File::create(&log).unwrap();
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rtq-worker"));
    cmd.args(["--queue", name, "--handler", "http", "--grace-secs", "0"])
        .args(["--probe-addr", &format!("127.0.0.1:{port}")])
        .args(["--upstream-header-file", headers.to_str().unwrap()])
        // An unreachable upstream fails the task at once (not held, not
        // handed back), so its reason reaches the client.
        .args(["--upstream-hold-secs", "0", "--upstream-down", "retry"])
        .env("RTQ_REDIS_URL", redis_url)
        .env("RTQ_UPSTREAM_URL", upstream)
        .env("RTQ_LOG", "info,rtq_worker=trace,rtq_core=trace")
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out));
    if with_key {
        cmd.env("RTQ_UPSTREAM_API_KEY", API_KEY);
    } else {
        cmd.env_remove("RTQ_UPSTREAM_API_KEY");
    }
    Spawned {
        guard: ChildGuard::spawn(&mut cmd),
        log,
        probe: format!("http://127.0.0.1:{port}"),
    }
}

async fn probes(probe: &str) -> String {
    let http = reqwest::Client::new();
    let mut all = String::new();
    for path in ["/healthz", "/readyz", "/metrics"] {
        if let Ok(r) = http.get(format!("{probe}{path}")).send().await {
            all.push_str(&r.text().await.unwrap_or_default());
        }
    }
    all
}

#[tokio::test]
async fn planted_secrets_appear_in_no_output_channel() {
    let redis = RedisServer::start_with(Options {
        password: Some(REDIS_PW.into()),
        ..Options::default()
    });
    assert!(redis.url().contains(REDIS_PW));
    let dir = tempfile::tempdir().unwrap();
    let live = echoing_upstream().await;
    let closed = format!("127.0.0.1:{}", free_port());
    let upstream =
        |host: &str| format!("http://apiuser:{URL_PW}@{host}/generate?api_key={QUERY_KEY}&model=m");
    let keyed = format!("http://{live}/generate?api_key={QUERY_KEY}&model=m");
    // The echo quotes the API key back, the basic one the URL's
    // credentials (as basic authentication).
    let echo = worker(dir.path(), "echo", &redis.url(), &keyed, true);
    let basic = worker(dir.path(), "basic", &redis.url(), &upstream(&live), false);
    let down = worker(dir.path(), "down", &redis.url(), &upstream(&closed), false);

    let client = Client::connect(&redis.url()).await.unwrap();
    let mut errors = String::new();
    for queue in ["echo", "basic", "down"] {
        let q = client.queue(queue).unwrap();
        let err = tokio::time::timeout(
            Duration::from_secs(30),
            q.run(TaskRequest::json(json!({"prompt": "hi"})).max_attempts(1)),
        )
        .await
        .expect("the task ends")
        .expect_err("the upstream refuses or is unreachable");
        errors.push_str(&format!("{err}\n{err:?}\n"));
    }
    assert!(errors.contains("401"), "{errors}");
    assert!(
        errors.contains("authorization=Bearer ***") && errors.contains("authorization=Basic ***"),
        "{errors}"
    );
    assert!(errors.contains("apiuser:***@"), "{errors}");
    find_secrets("the client's errors", &errors);

    let http = reqwest::Client::new();
    let probe = down.probe.clone();
    eventually("the unreachable upstream's worker is not ready", move || {
        let (http, probe) = (http.clone(), probe.clone());
        Box::pin(async move {
            matches!(http.get(format!("{probe}/readyz")).send().await, Ok(r) if r.status() == 503)
        })
    })
    .await;
    let served = format!(
        "{}{}{}",
        probes(&echo.probe).await,
        probes(&basic.probe).await,
        probes(&down.probe).await
    );
    assert!(served.contains("upstream down"), "{served}");
    find_secrets("the probe endpoints", &served);

    // The echo worker's heartbeat carries the upstream's (echoing) answer
    // as its last_error.
    eventually("a heartbeat carries the failure as last_error", || {
        let stored = everything_in(&redis);
        Box::pin(async move {
            stored.contains("last_error") && stored.matches("denied: uri=").count() >= 2
        })
    })
    .await;
    let stored = everything_in(&redis);
    assert!(stored.contains("last_error"), "{stored}");
    find_secrets("Redis", &stored);

    let logs: Vec<_> = [echo, basic, down]
        .into_iter()
        .map(|mut w| {
            w.guard.signal(nix::sys::signal::Signal::SIGTERM);
            w.guard.wait_exit();
            std::fs::read_to_string(&w.log).unwrap()
        })
        .collect();
    let logs = logs.join("\n");
    assert!(logs.contains("connected"), "{logs}");
    find_secrets("the workers' stdout/stderr", &logs);

    let help = Command::new(env!("CARGO_BIN_EXE_rtq-worker"))
        .arg("--help")
        .env("RTQ_REDIS_URL", redis.url())
        .env("RTQ_UPSTREAM_URL", upstream(&live))
        .env("RTQ_HEALTH_URL", upstream(&live))
        .env("RTQ_UPSTREAM_API_KEY", API_KEY)
        .output()
        .unwrap();
    assert!(help.status.success());
    let help = format!(
        "{}{}",
        String::from_utf8_lossy(&help.stdout),
        String::from_utf8_lossy(&help.stderr)
    );
    assert!(help.contains("RTQ_UPSTREAM_API_KEY"), "{help}");
    find_secrets("rtq-worker --help", &help);
}
