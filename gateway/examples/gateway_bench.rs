//! Gateway benchmark: latency the gateway adds over a direct library call,
//! requests/s per gateway CPU-second, memory per open stream, and open
//! streams against the Redis connections they cost. Prints one block.
//!
//! Starts its own redis-server (rtq-testkit), an in-process worker with a
//! zero-work handler (`max_tokens` chunks, `delay_ms` apart), and the
//! release `rtq-gateway` binary as a child (its CPU time and RSS come
//! from /proc).
//!
//! Run: `cargo build --release -p rtq-gateway && cargo run --release -p
//! rtq-gateway --example gateway_bench -- [--requests 3000] [--streams 2000]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use rtq_core::{
    async_trait, Client, Handler, HandlerError, TaskContext, TaskRequest, Worker, WorkerConfig,
};
use serde_json::{json, Value};

/// Gateway benchmark.
#[derive(Parser)]
struct Args {
    /// Sequential requests per latency series.
    #[arg(long, default_value_t = 3000)]
    requests: usize,
    /// Concurrent callers in the throughput run.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Seconds of the throughput run.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Streams held open at once in the memory run.
    #[arg(long, default_value_t = 2000)]
    streams: usize,
}

/// Sends `max_tokens` chunks, `delay_ms` apart.
struct Tokens;

#[async_trait]
impl Handler for Tokens {
    async fn handle(&self, task: TaskContext) -> Result<Value, HandlerError> {
        let input = task.input().cloned().unwrap_or(Value::Null);
        let n = input["max_tokens"].as_u64().unwrap_or(1);
        let delay = Duration::from_millis(input["delay_ms"].as_u64().unwrap_or(0));
        for i in 0..n {
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            task.send(format!("t{i} ")).await?;
        }
        Ok(json!({"finish_reason": "stop"}))
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Milliseconds of `n` sequential calls of `f` (after a warm-up), sorted.
async fn series<F, Fut>(n: usize, mut f: F) -> Vec<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..n / 10 {
        f().await;
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f().await;
        out.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    out.sort_by(|a, b| a.total_cmp(b));
    out
}

/// (CPU seconds, RSS KiB) of a process.
fn proc_usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = 100.0; // USER_HZ on Linux
    let cpu = fields
        .get(11)
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (cpu / ticks, rss)
}

fn redis_clients(redis: &rtq_testkit::RedisServer) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("clients")
        .query(&mut redis.conn())
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let redis = rtq_testkit::RedisServer::start();
    let url = redis.url();
    // Workers of at most 1000 slots each (rtq's limit is 1024), enough
    // for every stream and caller at once.
    let mut slots = args.streams + args.clients + 8;
    let stop = tokio_util::sync::CancellationToken::new();
    let mut workers = Vec::new();
    while slots > 0 {
        let n = slots.min(1000);
        slots -= n;
        let worker = Worker::connect(&url, WorkerConfig::new("bench").slots(n)).await?;
        let stop = stop.clone();
        workers.push(tokio::spawn(
            worker.run(Arc::new(Tokens), async move { stop.cancelled().await }),
        ));
    }

    let bin = std::env::current_exe()?
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("rtq-gateway"))
        .expect("target dir");
    anyhow::ensure!(
        bin.exists(),
        "{} not built: cargo build --release -p rtq-gateway",
        bin.display()
    );
    let mut gw = std::process::Command::new(&bin)
        .args(["--redis", &url, "--listen", "127.0.0.1:0", "--log", "warn"])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(gw.stdout.take().expect("stdout")),
        &mut line,
    )?;
    let base = line
        .trim()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_string();
    let pid = gw.id();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(usize::MAX)
        .build()?;
    // Wait for the worker to be listed.
    for _ in 0..200 {
        let v: Value = http
            .get(format!("{base}/v1/models"))
            .send()
            .await?
            .json()
            .await?;
        if v["data"].as_array().is_some_and(|d| !d.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 1. Latency: direct library call vs the same task through the gateway.
    let client = Client::connect(&url).await?;
    let queue = client.queue("bench")?;
    let direct = series(args.requests, || {
        let q = queue.clone();
        async move {
            q.run(TaskRequest::json(json!({"max_tokens": 1})))
                .await
                .expect("direct run");
        }
    })
    .await;
    let task_api = series(args.requests, || {
        let http = http.clone();
        let u = format!("{base}/v1/queues/bench/tasks?wait=true");
        async move {
            let r = http
                .post(u)
                .json(&json!({"input": {"max_tokens": 1}}))
                .send()
                .await
                .expect("task api");
            assert!(r.status().is_success());
            r.bytes().await.expect("body");
        }
    })
    .await;
    let chat = series(args.requests, || {
        let http = http.clone();
        let u = format!("{base}/v1/chat/completions");
        async move {
            let r = http
                .post(u)
                .json(&json!({"model": "bench", "max_tokens": 1,
                              "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .expect("chat");
            assert!(r.status().is_success());
            r.bytes().await.expect("body");
        }
    })
    .await;
    println!("latency, sequential, {} requests each (ms):", args.requests);
    for (name, s) in [
        ("direct Queue::run", &direct),
        ("gateway POST tasks?wait=true", &task_api),
        ("gateway chat completion", &chat),
    ] {
        println!(
            "  {name:30} p50 {:.3}  p90 {:.3}  p99 {:.3}",
            pct(s, 0.5),
            pct(s, 0.9),
            pct(s, 0.99)
        );
    }
    println!(
        "  added by the gateway at p50: task API {:.3} ms, chat {:.3} ms",
        pct(&task_api, 0.5) - pct(&direct, 0.5),
        pct(&chat, 0.5) - pct(&direct, 0.5)
    );

    // 2. Throughput per gateway CPU-second.
    let (cpu0, _) = proc_usage(pid);
    let end = Instant::now() + Duration::from_secs(args.seconds);
    let t0 = Instant::now();
    let callers: Vec<_> = (0..args.clients)
        .map(|_| {
            let http = http.clone();
            let u = format!("{base}/v1/chat/completions");
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < end {
                    let r = http
                        .post(&u)
                        .json(&json!({"model": "bench", "max_tokens": 1,
                                      "messages": [{"role": "user", "content": "hi"}]}))
                        .send()
                        .await
                        .expect("chat");
                    if r.status().is_success() {
                        n += 1;
                    }
                    r.bytes().await.expect("body");
                }
                n
            })
        })
        .collect();
    let mut done = 0;
    for c in callers {
        done += c.await?;
    }
    let wall = t0.elapsed().as_secs_f64();
    let (cpu1, _) = proc_usage(pid);
    let cpu = (cpu1 - cpu0).max(0.01);
    println!(
        "throughput: {} callers, {done} chat completions in {wall:.1} s = {:.0}/s; gateway CPU {cpu:.2} s = {:.0} requests per gateway CPU-second",
        args.clients,
        done as f64 / wall,
        done as f64 / cpu
    );

    // 3. Open streams: memory and Redis connections.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, rss0) = proc_usage(pid);
    let clients0 = redis_clients(&redis);
    let mut open = Vec::with_capacity(args.streams);
    let t0 = Instant::now();
    for chunk in (0..args.streams).collect::<Vec<_>>().chunks(200) {
        let batch = futures::future::join_all(chunk.iter().map(|_| {
            let http = http.clone();
            let u = format!("{base}/v1/chat/completions");
            async move {
                let r = http
                    .post(u)
                    .json(
                        &json!({"model": "bench", "max_tokens": 600, "delay_ms": 1000,
                                  "stream": true,
                                  "messages": [{"role": "user", "content": "hi"}]}),
                    )
                    .send()
                    .await
                    .expect("stream");
                assert!(r.status().is_success());
                let mut body = r.bytes_stream();
                body.next().await;
                body
            }
        }))
        .await;
        open.extend(batch);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, rss1) = proc_usage(pid);
    let clients1 = redis_clients(&redis);
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let gauge = metrics
        .lines()
        .find(|l| l.starts_with("rtq_gateway_open_streams "))
        .unwrap_or("?");
    println!(
        "streams: {} open in {:.1} s ({gauge}); gateway RSS {} -> {} KiB = {:.1} KiB per open stream; Redis connections {clients0} -> {clients1}",
        open.len(),
        t0.elapsed().as_secs_f64(),
        rss0,
        rss1,
        (rss1.saturating_sub(rss0)) as f64 / open.len().max(1) as f64,
    );
    drop(open);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = gw.kill();
    let _ = gw.wait();
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), futures::future::join_all(workers)).await;
    Ok(())
}
