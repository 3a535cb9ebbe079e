//! `rtq keygen` and `rtq --sign-key`: the key it writes signs tasks a
//! worker holding the printed verify key accepts.

use std::process::Command;
use std::sync::Arc;

use rtq_core::signing::VerifyKey;
use rtq_core::{async_trait, Handler, HandlerError, TaskContext, Worker, WorkerConfig};
use rtq_testkit::RedisServer;
use serde_json::{json, Value};

struct Ok1;

#[async_trait]
impl Handler for Ok1 {
    async fn handle(&self, _task: TaskContext) -> Result<Value, HandlerError> {
        Ok(json!({"ran": true}))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn keygen_writes_a_key_whose_signed_tasks_a_verifying_worker_runs() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sign.pem");
    let out = Command::new(env!("CARGO_BIN_EXE_rtq"))
        .arg("keygen")
        .arg(&file)
        .env_remove("RTQ_REDIS_URL")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let verify = VerifyKey::from_hex(&String::from_utf8_lossy(&out.stdout)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "the private key is owner-only: {mode:o}");
    let again = Command::new(env!("CARGO_BIN_EXE_rtq"))
        .arg("keygen")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1), "never overwrites a key");

    let redis = RedisServer::start();
    let worker = Worker::connect(&redis.url(), WorkerConfig::new("s").verify_key(verify))
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(Arc::new(Ok1), async {
        let _ = stopped.await;
    }));
    let url = redis.url();
    let key = file.clone();
    let (signed, unsigned) = tokio::task::spawn_blocking(move || {
        let submit = |extra: &[&std::ffi::OsStr]| {
            Command::new(env!("CARGO_BIN_EXE_rtq"))
                .arg("--redis")
                .arg(&url)
                .args(extra)
                .args(["submit", "s", "{}", "--timeout-secs", "30"])
                .env_remove("RTQ_SIGN_KEY")
                .output()
                .unwrap()
        };
        (
            submit(&["--sign-key".as_ref(), key.as_os_str()]),
            submit(&[]),
        )
    })
    .await
    .unwrap();
    assert!(signed.status.success(), "{signed:?}");
    assert!(String::from_utf8_lossy(&signed.stdout).contains("\"ran\":true"));
    assert_eq!(unsigned.status.code(), Some(1), "{unsigned:?}");
    assert!(String::from_utf8_lossy(&unsigned.stderr).contains("not signed"));
    let _ = stop.send(());
    running.await.unwrap().unwrap();
}
