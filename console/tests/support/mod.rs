//! Console test support: a real redis-server seeded through the real write
//! path (rtq-core client and worker), and rendering to text.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use ratatui::backend::TestBackend;
use ratatui::Terminal;
use rtq_console::state::App;
use rtq_core::admin::Admin;
use rtq_core::{
    async_trait, Client, Handler, HandlerError, TaskContext, TaskRequest, Worker, WorkerConfig,
};
pub use rtq_testkit::RedisServer;
use serde_json::{json, Value};

/// Holds tasks with `"hold": true` until cancelled; fails `"fail"` ones;
/// streams `"chunks"` chunks otherwise.
struct Seeder;

#[async_trait]
impl Handler for Seeder {
    async fn handle(&self, task: TaskContext) -> Result<Value, HandlerError> {
        let input = task.input().cloned().unwrap_or_default();
        for i in 0..input["chunks"].as_u64().unwrap_or(0) {
            task.send(format!("word{i} ")).await?;
        }
        if input["hold"] == true {
            task.cancelled().await;
            return Err(HandlerError::fatal("stopped"));
        }
        if let Some(f) = input["fail"].as_str() {
            return Err(HandlerError::fatal(f));
        }
        Ok(json!({"ok": true}))
    }
}

/// A seeded queue "llm": worker gpu-1 (2 slots, gpu=A100) running two held
/// tasks (h1, h2), three done tasks, one failed task ("bad"), and - queue
/// paused - five pending tasks p0..p4 (p4 with priority 9).
pub struct Seeded {
    pub redis: RedisServer,
    pub client: Client,
    pub admin: Admin,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Seeded {
    pub async fn new() -> Seeded {
        let redis = RedisServer::start();
        let worker = Worker::connect(
            &redis.url(),
            WorkerConfig::new("llm")
                .slots(2)
                .worker_id("gpu-1")
                .label("gpu", "A100")
                // Workers add their statistics with their heartbeats.
                .heartbeat_every(Duration::from_millis(100)),
        )
        .await
        .unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(worker.run(Arc::new(Seeder), async {
            let _ = rx.await;
        }));
        let client = Client::connect(&redis.url()).await.unwrap();
        let admin = Admin::new(&client);
        let q = client.queue("llm").unwrap();
        for i in 0..3 {
            q.run(TaskRequest::json(json!({"chunks": 3})).id(format!("done{i}")))
                .await
                .unwrap();
        }
        let _ = q
            .run(
                TaskRequest::json(json!({"fail": "CUDA out of memory"}))
                    .id("bad")
                    .max_attempts(1),
            )
            .await;
        for id in ["h1", "h2"] {
            q.submit(
                TaskRequest::json(json!({"hold": true, "chunks": 2}))
                    .id(id)
                    .label("tenant", "acme"),
            )
            .await
            .unwrap();
        }
        // Wait until both held tasks have written their chunks.
        for _ in 0..200 {
            let running = admin.running("llm").await.unwrap();
            if running.len() == 2 && running.iter().all(|t| t.chunks == 2) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The worker adds them with its heartbeats (every 100 ms): under
        // load that can take seconds, and a test comparing reads must not
        // see them arrive in between.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let stats = admin.stats("llm", 6).await.unwrap();
            if stats.sum("done") == 3 && stats.sum("failed") == 1 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the seed's statistics never arrived"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        admin.pause("llm", true).await.unwrap();
        for i in 0..5 {
            q.submit(
                TaskRequest::json(json!({"prompt": format!("question {i}")}))
                    .id(format!("p{i}"))
                    .priority(if i == 4 { 9 } else { 0 })
                    .timeout(Duration::from_secs(600)),
            )
            .await
            .unwrap();
        }
        Seeded {
            redis,
            client,
            admin,
            stop: Some(tx),
        }
    }
}

impl Seeded {
    /// Stops the worker gpu-1 (it leaves: a departed worker).
    pub fn stop_worker(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for Seeded {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Waits (deadline 10 s) until `queue` is in the registry: a submit lists
/// its queue in the background.
pub async fn wait_listed(admin: &Admin, queue: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !admin.queues().await.unwrap().iter().any(|q| q == queue) {
        assert!(std::time::Instant::now() < deadline, "{queue} never listed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Renders the app into a `w`x`h` test terminal and returns its text.
pub fn render(app: &App, w: u16, h: u16) -> String {
    let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
    terminal
        .draw(|f| rtq_console::render::draw(f, app))
        .unwrap();
    let buffer = terminal.backend().buffer().clone();
    let mut out = String::new();
    for y in 0..h {
        for x in 0..w {
            out.push_str(buffer[(x, y)].symbol());
        }
        out.push('\n');
    }
    out
}
