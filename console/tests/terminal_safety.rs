//! Text from Redis and upstreams reaches a terminal through `rtq`: a
//! worker's host name, a failure reason and streamed chunks carrying
//! escape sequences (set the title, clear the screen) are printed with
//! their control characters escaped, never raw.

use std::process::{Command, Output};
use std::sync::Arc;

use rtq_core::{async_trait, Handler, HandlerError, TaskContext, Worker, WorkerConfig};
use rtq_testkit::RedisServer;
use serde_json::{json, Value};

const EVIL: &str = "\u{1b}]0;TITLE-HIJACK\u{7}\u{1b}[2J\u{9b}31m";

/// Sends `say` as a chunk, then fails with `fail` if given.
struct Parrot;

#[async_trait]
impl Handler for Parrot {
    async fn handle(&self, task: TaskContext) -> Result<Value, HandlerError> {
        let input = task.input().cloned().unwrap_or_default();
        if let Some(say) = input["say"].as_str() {
            task.send(format!("{say}\nline two")).await?;
        }
        match input["fail"].as_str() {
            Some(why) => Err(HandlerError::fatal(why)),
            None => Ok(json!({"ok": true})),
        }
    }
}

fn rtq(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rtq"))
        .arg("--redis")
        .arg(url)
        .args(args)
        .output()
        .unwrap()
}

fn assert_no_control(what: &str, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    assert!(
        !text
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t'),
        "{what} carries raw control characters: {text:?}"
    );
    assert!(
        text.contains("\\x1b]0;TITLE-HIJACK\\x07"),
        "{what} should show them escaped: {text:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn host_names_failure_reasons_and_chunks_are_printed_with_control_characters_escaped() {
    let redis = RedisServer::start();
    let mut config = WorkerConfig::new("tty").worker_id("w1");
    config.host = format!("evil{EVIL}");
    let worker = Worker::connect(&redis.url(), config).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(Arc::new(Parrot), async {
        let _ = stopped.await;
    }));
    let url = redis.url();
    let (workers, failed, streamed) = tokio::task::spawn_blocking(move || {
        let workers = rtq(&url, &["workers", "tty"]);
        let input = json!({"fail": format!("model said {EVIL}")}).to_string();
        let failed = rtq(&url, &["submit", "tty", &input]);
        let input = json!({"say": EVIL}).to_string();
        let streamed = rtq(&url, &["submit", "tty", "--stream", &input]);
        (workers, failed, streamed)
    })
    .await
    .unwrap();
    assert!(workers.status.success(), "{workers:?}");
    assert_no_control("rtq workers", &workers.stdout);
    assert_eq!(failed.status.code(), Some(1), "{failed:?}");
    assert_no_control("a failure reason", &failed.stderr);
    assert!(streamed.status.success(), "{streamed:?}");
    assert_no_control("a streamed chunk", &streamed.stdout);
    assert!(
        String::from_utf8_lossy(&streamed.stdout).contains("\nline two"),
        "newlines in chunks stay"
    );
    let _ = stop.send(());
    running.await.unwrap().unwrap();
}
