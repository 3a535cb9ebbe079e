//! Load benchmark over the real Client and Worker code (zero-work handler):
//! throughput, latency percentiles, and Redis commands and CPU per task from
//! INFO deltas. Prints one line per run.
//!
//! Run: `cargo run --release -p rtq-examples --example bench -- --redis URL <clients> <slots> <tasks> <chunks>`
//! (or `$RTQ_REDIS_URL`; use a private server: it reads INFO deltas).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use rtq_core::{
    async_trait, Client, Handler, HandlerError, TaskContext, TaskRequest, Worker, WorkerConfig,
};
use rtq_examples::RedisArgs;
use serde_json::{json, Value};

/// Load benchmark over the real Client and Worker (zero-work handler):
/// throughput, latency percentiles, Redis commands and CPU per task.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    redis: RedisArgs,
    /// Concurrent clients.
    #[arg(default_value_t = 50)]
    clients: usize,
    /// Worker slots.
    #[arg(default_value_t = 50)]
    slots: usize,
    /// Tasks in total.
    #[arg(default_value_t = 20_000)]
    tasks: usize,
    /// Chunks streamed per task (0 = request/response).
    #[arg(default_value_t = 0)]
    chunks: usize,
}

struct Zero;

#[async_trait]
impl Handler for Zero {
    async fn handle(&self, task: TaskContext) -> Result<Value, HandlerError> {
        let chunks = task.input().and_then(|i| i["chunks"].as_u64()).unwrap_or(0);
        let size = task
            .input()
            .and_then(|i| i["chunk_size"].as_u64())
            .unwrap_or(100) as usize;
        for _ in 0..chunks {
            task.send("x".repeat(size)).await?;
        }
        Ok(json!({ "text": "y".repeat(1000) }))
    }
}

fn info(conn: &mut redis::Connection) -> (u64, f64) {
    let stats: String = redis::cmd("INFO").arg("commandstats").query(conn).unwrap();
    let calls = stats
        .lines()
        .filter_map(|l| l.split("calls=").nth(1))
        .filter_map(|r| r.split(',').next()?.parse::<u64>().ok())
        .sum();
    let cpu: String = redis::cmd("INFO").arg("cpu").query(conn).unwrap();
    let map: HashMap<&str, f64> = cpu
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter_map(|(k, v)| Some((k, v.trim().parse().ok()?)))
        .collect();
    (calls, map["used_cpu_sys"] + map["used_cpu_user"])
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let url = args.redis.url::<Args>();
    let (clients, slots, tasks, chunks) = (args.clients, args.slots, args.tasks, args.chunks);
    let queue = format!("bench{}", std::process::id());

    let worker = Worker::connect(&url, WorkerConfig::new(&queue).slots(slots)).await?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let wh = tokio::spawn(worker.run(Arc::new(Zero), async {
        let _ = stop_rx.await;
    }));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let client = Client::connect(&url).await?;
    let q = client.queue(&queue)?;
    let input = json!({ "prompt": "p".repeat(1000), "chunks": chunks, "chunk_size": 100 });
    // Warm up.
    for _ in 0..100 {
        q.run(TaskRequest::json(input.clone())).await?;
    }
    let mut conn = redis::Client::open(url.as_str())?.get_connection()?;
    let (calls0, cpu0) = info(&mut conn);
    let started = Instant::now();
    let per_client = tasks / clients;
    let mut handles = Vec::new();
    for _ in 0..clients {
        let q = q.clone();
        let input = input.clone();
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_client);
            for _ in 0..per_client {
                let t = Instant::now();
                if chunks == 0 {
                    q.run(TaskRequest::json(input.clone())).await.unwrap();
                } else {
                    let mut s = q.stream(TaskRequest::json(input.clone())).await.unwrap();
                    while let Some(item) = s.next().await {
                        item.unwrap();
                    }
                }
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for h in handles {
        lat.extend(h.await?);
    }
    let elapsed = started.elapsed();
    let (calls1, cpu1) = info(&mut conn);
    lat.sort();
    let n = lat.len();
    let pct = |p: f64| lat[((n as f64 * p) as usize).min(n - 1)].as_secs_f64() * 1000.0;
    println!(
        "clients={clients} slots={slots} chunks={chunks} tasks={n} tasks/s={:.0} p50={:.2}ms p99={:.2}ms redis_cmds/task={:.1} redis_cpu_us/task={:.1}",
        n as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        (calls1 - calls0) as f64 / n as f64,
        (cpu1 - cpu0) * 1e6 / n as f64,
    );
    let _ = stop_tx.send(());
    let _ = wh.await;
    Ok(())
}
