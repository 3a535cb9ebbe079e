//! Load benchmark over the real Client and Worker code (zero-work handler):
//! throughput, latency percentiles, and Redis commands and CPU per task from
//! INFO deltas. Prints one line per run; `--breakdown` adds a markdown
//! table of where Redis time went (calls and usec per task per command,
//! from `INFO commandstats`).
//!
//! Run: `cargo run --release -p rtq-examples --example bench -- --redis URL <clients> <slots> <tasks> <chunks> [--breakdown]`
//! (or `$RTQ_REDIS_URL`; use a private server: it reads INFO deltas).
//! `scripts/bench-compare.sh` runs it next to BullMQ.

use clap::Parser;
use rtq_examples::bench_util::{run_load, Load};
use rtq_examples::RedisArgs;

/// Load benchmark over the real Client and Worker (zero-work handler):
/// throughput, latency percentiles, Redis commands and CPU per task.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    redis: RedisArgs,
    /// Concurrent clients (tasks in flight).
    #[arg(default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    clients: u64,
    /// Worker slots (1..=1024).
    #[arg(default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=1024))]
    slots: u64,
    /// Tasks in total.
    #[arg(default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    tasks: u64,
    /// Chunks streamed per task (0 = request/response).
    #[arg(default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    chunks: u64,
    /// Also print calls/task and usec/task per Redis command (INFO
    /// commandstats), as a markdown table.
    #[arg(long, env = "RTQ_BENCH_BREAKDOWN")]
    breakdown: bool,
    /// Input and result size in characters.
    #[arg(long, env = "RTQ_BENCH_PAYLOAD", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    payload: u64,
    /// Tasks run one at a time before measuring.
    #[arg(long, env = "RTQ_BENCH_WARMUP", default_value_t = 100)]
    warmup: usize,
    /// Run on a stream queue (protocol v3, one band) instead of a v2
    /// queue; the line's peer is then `rtq-stream`.
    #[arg(long, env = "RTQ_BENCH_STREAM_QUEUE")]
    stream_queue: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let url = args.redis.url::<Args>();
    let mut load = Load::new(
        args.clients as usize,
        args.slots as usize,
        args.tasks as usize,
        args.chunks as usize,
    );
    load.payload = args.payload as usize;
    load.result_size = args.payload as usize;
    load.warmup = args.warmup;
    load.stream_queue = args.stream_queue;
    let queue = format!("bench{}", std::process::id());
    let r = run_load(&url, &queue, &load).await?;
    println!(
        "peer={} clients={} slots={} chunks={} tasks={} tasks/s={:.0} p50={:.2}ms p99={:.2}ms redis_cmds/task={:.1} redis_cpu_us/task={:.1} load_cpu_us/task={:.1}",
        if load.stream_queue { "rtq-stream" } else { "rtq" },
        load.clients,
        load.slots,
        load.chunks,
        r.tasks,
        r.rate(),
        r.pct(0.50),
        r.pct(0.99),
        r.cmds_per_task(),
        r.cpu_us_per_task(),
        r.load_cpu_us_per_task(),
    );
    if args.breakdown {
        println!();
        print!("{}", r.redis.breakdown(r.tasks as f64, "task"));
    }
    Ok(())
}
