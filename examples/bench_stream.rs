//! Paced streaming benchmark: what per-token delivery costs Redis.
//!
//! A real model emits tokens at a pace (tens to hundreds per second per
//! stream), so the worker cannot coalesce them the way it coalesces a
//! zero-work handler's burst. This runs `--streams` concurrent streamed
//! tasks in a closed loop for `--secs`, each handler sending `--chunks`
//! chunks `--interval-ms` apart (each chunk carries its send time), once
//! per worker granularity given in `--max-delay-ms` (how long the worker
//! may hold chunks to write them together: `Granularity { min_bytes:
//! 64 KiB, max_delay }`; 0 = the default, write at once). Prints, per granularity: tasks/s, chunks/s, Redis CPU per
//! chunk and per task, Redis commands per chunk, how late chunks reach
//! the client (send to receive, p50/p99), and the CPU time this process
//! (the client and the worker) spent per chunk.
//!
//! Run: `cargo run --release -p rtq-examples --example bench_stream -- --redis URL
//! [--streams 200] [--chunks 50] [--interval-ms 20] [--max-delay-ms 0,10,50]`
//! (or `$RTQ_REDIS_URL`; use a private server: it reads INFO deltas).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use futures::StreamExt;
use rtq_core::worker::Granularity;
use rtq_core::{
    async_trait, Client, Handler, HandlerError, StreamEvent, TaskContext, TaskRequest, Worker,
    WorkerConfig,
};
use rtq_examples::bench_util::{info_conn, percentile, process_cpu_s, RedisSnapshot};
use rtq_examples::RedisArgs;
use serde_json::{json, Value};

/// Paced streaming: Redis CPU per chunk and chunk delivery delay per
/// worker granularity.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    redis: RedisArgs,
    /// Concurrent streamed tasks (and worker slots).
    #[arg(long, env = "RTQ_BENCH_STREAMS", default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=1024))]
    streams: u64,
    /// Chunks per task.
    #[arg(long, env = "RTQ_BENCH_CHUNKS", default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    chunks: u64,
    /// Time between two chunks of a task (ms): 20 ms is 50 tokens/s.
    #[arg(long, env = "RTQ_BENCH_INTERVAL_MS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    interval_ms: u64,
    /// Bytes per chunk (a token is a few bytes).
    #[arg(long, env = "RTQ_BENCH_CHUNK_BYTES", default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    chunk_bytes: u64,
    /// Worker granularities to measure: how long the worker may hold
    /// chunks (ms), comma separated; 0 writes each at once.
    #[arg(
        long,
        env = "RTQ_BENCH_MAX_DELAY_MS",
        value_delimiter = ',',
        default_value = "0,10,50"
    )]
    max_delay_ms: Vec<u64>,
    /// Measured seconds per granularity (after 2 s of warm-up).
    #[arg(long, env = "RTQ_BENCH_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    secs: u64,
}

/// Sends `chunks` chunks `interval_ms` apart, each starting with its send
/// time in microseconds since the epoch.
struct Paced;

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[async_trait]
impl Handler for Paced {
    async fn handle(&self, task: TaskContext) -> Result<Value, HandlerError> {
        let field = |name: &str| task.input().and_then(|i| i[name].as_u64()).unwrap_or(0);
        let (chunks, interval, bytes) = (field("chunks"), field("interval_ms"), field("bytes"));
        let mut tick = tokio::time::interval(Duration::from_millis(interval.max(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for _ in 0..chunks {
            if interval > 0 {
                tick.tick().await;
            }
            let stamp = format!("{:020}", now_us());
            let pad = (bytes as usize).saturating_sub(stamp.len());
            task.send(format!("{stamp}{}", "t".repeat(pad))).await?;
        }
        Ok(json!({ "chunks": chunks }))
    }
}

/// What one granularity's run measured.
struct Run {
    max_delay_ms: u64,
    tasks: u64,
    chunks: u64,
    secs: f64,
    delay_ms: Vec<f64>,
    cpu_s: f64,
    /// CPU time of this process (the client and the worker) in the window.
    load_cpu_s: f64,
    calls: u64,
    fcalls: u64,
}

async fn run(args: &Args, url: &str, max_delay_ms: u64) -> anyhow::Result<Run> {
    let queue = format!("bench-stream{}-{max_delay_ms}", std::process::id());
    // Holding chunks needs a byte floor too (the worker writes at once
    // without one); 64 KiB is never reached by tokens, so the delay decides.
    let granularity = if max_delay_ms == 0 {
        Granularity::default()
    } else {
        Granularity {
            min_bytes: 64 * 1024,
            max_delay: Duration::from_millis(max_delay_ms),
            ..Granularity::default()
        }
    };
    let worker = Worker::connect(
        url,
        WorkerConfig::new(&queue)
            .slots(args.streams as usize)
            .granularity(granularity),
    )
    .await
    .context("starting the worker")?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let wh = tokio::spawn(worker.run(Arc::new(Paced), async {
        let _ = stop_rx.await;
    }));
    let client = Client::connect(url)
        .await
        .context("connecting the client")?;
    let q = client.queue(&queue)?;
    let input = json!({
        "chunks": args.chunks,
        "interval_ms": args.interval_ms,
        "bytes": args.chunk_bytes,
    });
    let warmup_end = Instant::now() + Duration::from_secs(2);
    let end = warmup_end + Duration::from_secs(args.secs);
    let mut conn = info_conn(url).await?;
    // Each loop measures only tasks it started inside the window.
    let mut loops = Vec::new();
    for _ in 0..args.streams {
        let q = q.clone();
        let input = input.clone();
        loops.push(tokio::spawn(async move {
            let (mut tasks, mut chunks, mut delays) = (0u64, 0u64, Vec::new());
            while Instant::now() < end {
                let measured = Instant::now() >= warmup_end;
                let mut s = q.stream(TaskRequest::json(input.clone())).await?;
                while let Some(item) = s.next().await {
                    if let StreamEvent::Chunk(c) = item? {
                        let sent: Option<u64> =
                            std::str::from_utf8(&c.data[..20.min(c.data.len())])
                                .ok()
                                .and_then(|s| s.parse().ok());
                        if let (true, Some(sent)) = (measured, sent) {
                            delays.push(now_us().saturating_sub(sent) as f64 / 1000.0);
                            chunks += 1;
                        }
                    }
                }
                if measured {
                    tasks += 1;
                }
            }
            Ok::<_, anyhow::Error>((tasks, chunks, delays))
        }));
    }
    tokio::time::sleep_until(warmup_end.into()).await;
    let before = RedisSnapshot::take(&mut conn).await?;
    let load_before = process_cpu_s();
    let started = Instant::now();
    tokio::time::sleep_until(end.into()).await;
    let load_cpu_s = process_cpu_s() - load_before;
    let after = RedisSnapshot::take(&mut conn).await?;
    let secs = started.elapsed().as_secs_f64();
    let (mut tasks, mut chunks, mut delay_ms) = (0, 0, Vec::new());
    for l in loops {
        let (t, c, d) = l.await??;
        tasks += t;
        chunks += c;
        delay_ms.extend(d);
    }
    let _ = stop_tx.send(());
    let _ = wh.await;
    delay_ms.sort_by(f64::total_cmp);
    let delta = after.since(&before);
    let fcalls = delta.commands.get("fcall").map(|c| c.calls).unwrap_or(0);
    Ok(Run {
        max_delay_ms,
        tasks,
        chunks,
        secs,
        delay_ms,
        cpu_s: delta.cpu_s,
        load_cpu_s,
        calls: delta.calls(),
        fcalls,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let url = args.redis.url::<Args>();
    println!(
        "streams={} chunks/task={} interval={} ms chunk={} B, {} s per granularity",
        args.streams, args.chunks, args.interval_ms, args.chunk_bytes, args.secs
    );
    println!("| max delay | tasks/s | chunks/s | Redis CPU/chunk | Redis CPU/task | Redis cmds/chunk | FCALLs/chunk | delivery p50 / p99 | Redis CPU share | client + worker CPU/chunk |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for &d in &args.max_delay_ms {
        let r = run(&args, &url, d).await?;
        // The window counts chunks of tasks started in it, Redis work of
        // every task running in it: both rates are per window second.
        let per_chunk = |v: f64| v / r.chunks.max(1) as f64;
        println!(
            "| {} ms | {:.0} | {:.0} | {:.2} us | {:.1} us | {:.2} | {:.2} | {:.2} / {:.2} ms | {:.0} % | {:.2} us |",
            r.max_delay_ms,
            r.tasks as f64 / r.secs,
            r.chunks as f64 / r.secs,
            per_chunk(r.cpu_s * 1e6),
            r.cpu_s * 1e6 / r.tasks.max(1) as f64,
            per_chunk(r.calls as f64),
            per_chunk(r.fcalls as f64),
            percentile(&r.delay_ms, 0.5),
            percentile(&r.delay_ms, 0.99),
            r.cpu_s / r.secs * 100.0,
            per_chunk(r.load_cpu_s * 1e6),
        );
    }
    Ok(())
}
