//! Regression for a worker race the chaos run found (fixed: the slot pool
//! holds such a delivery for the completing slot).
//!
//! `rtq2_complete` with `want_next` and nothing queued gives the slot back
//! in Redis (`ZINCRBY free +1`) before the worker's slot pool releases it:
//! the pool frees the slot only once the complete's reply has been read. A
//! submit landing in between is handed to this worker, its `T` message
//! arrives on the inbox connection, the pool is still full, and the worker
//! hands the delivery back (`rtq2_release handback`), which also sets its
//! `free` to 0 until the next heartbeat. The task is handed out twice (one
//! hand-out using no attempt) and waits up to a heartbeat period (lease/5,
//! 1 s by default) although the worker is idle.
//!
//! The window is normally a fraction of a millisecond; here a proxy between
//! the worker and Redis holds the replies on the connection that sent
//! `rtq2_complete` for a while, which makes the race certain.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rtq_core::{
    async_trait, Client, Handler, HandlerError, TaskContext, TaskRequest, Worker, WorkerConfig,
};
use rtq_testkit::RedisServer;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long replies are held after a connection sent `rtq2_complete`.
const HOLD: Duration = Duration::from_millis(300);

/// A TCP proxy to Redis that holds the server's replies on a connection for
/// [`HOLD`] after that connection sent an `rtq2_complete` call.
async fn holding_proxy(redis_port: u16) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = TcpStream::connect(("127.0.0.1", redis_port)).await.unwrap();
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let hold: Arc<Mutex<Option<Instant>>> = Arc::default();
            let hold_up = Arc::clone(&hold);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = cr.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    if buf[..n].windows(13).any(|w| w == b"rtq2_complete") {
                        *hold_up.lock().unwrap() = Some(Instant::now() + HOLD);
                    }
                    if sw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = sr.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let until = hold.lock().unwrap().take();
                    if let Some(until) = until {
                        tokio::time::sleep_until(until.into()).await;
                    }
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

/// Returns at once: the task takes no time.
struct Instantly;

#[async_trait]
impl Handler for Instantly {
    async fn handle(&self, _task: TaskContext) -> Result<Value, HandlerError> {
        Ok(json!({"ok": true}))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_submitted_as_a_slot_frees_is_handed_out_once() {
    let redis = RedisServer::start();
    let proxy = holding_proxy(redis.port()).await;
    let queue_name = "race";
    let worker = Worker::connect(
        &format!("redis://127.0.0.1:{proxy}/"),
        WorkerConfig::new(queue_name).slots(1).worker_id("w1"),
    )
    .await
    .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(Arc::new(Instantly), async {
        let _ = stop_rx.await;
    }));
    let client = Client::connect(&redis.url()).await.unwrap();
    let queue = client.queue(queue_name).unwrap();
    let mut conn = redis.conn();
    // Wait until the worker offers its slot.
    let until = Instant::now() + Duration::from_secs(10);
    while redis::cmd("ZSCORE")
        .arg(queue.keys().free())
        .arg("w1")
        .query::<Option<f64>>(&mut conn)
        .unwrap()
        .is_none()
    {
        assert!(Instant::now() < until, "the worker never offered its slot");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut handed_out_twice = Vec::new();
    for round in 0..3 {
        // A runs; the client learns its result from the reply stream while
        // the worker still waits for its complete's reply (held).
        let a = format!("a{round}");
        queue
            .run(TaskRequest::json(json!({})).id(a.clone()))
            .await
            .unwrap();
        // B arrives in that window: Redis counts the slot free already.
        let b = format!("b{round}");
        let submitted = queue
            .submit(TaskRequest::json(json!({})).id(b.clone()))
            .await
            .unwrap();
        let started = Instant::now();
        queue.wait(&b, Some(Duration::from_secs(10))).await.unwrap();
        let att: u64 = redis::cmd("HGET")
            .arg(queue.keys().task(&b))
            .arg("att")
            .query(&mut conn)
            .unwrap();
        println!(
            "round {round}: B {:?} at submit, handed out {att} times, done after {} ms",
            submitted.state,
            started.elapsed().as_millis()
        );
        if att != 1 {
            handed_out_twice.push((b, att));
        }
        // Let the held reply through before the next round.
        tokio::time::sleep(HOLD * 2).await;
    }
    let _ = stop_tx.send(());
    let _ = running.await;
    assert!(
        handed_out_twice.is_empty(),
        "tasks handed to a worker whose only slot Redis already counted free, refused by its \
         pool and handed back: {handed_out_twice:?}"
    );
}
