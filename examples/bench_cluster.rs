//! N queues on one Redis against the same N queues spread over a 3-master
//! Redis Cluster, through the real Client and Worker (zero-work handler):
//! throughput, latency percentiles and Redis CPU per task (summed over
//! every node). Starts its own private servers (rtq-testkit): one node,
//! then a cluster of 3 masters (with `--replicas` replicas each), and
//! prints one line per setup and their ratio.
//!
//! Run: `cargo run --release -p rtq-examples --example bench_cluster -- [--queues 6] [--clients 16] [--slots 16] [--secs 10] [--replicas 1]`

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use rtq_core::keys::{cluster_slot, QueueKeys};
use rtq_core::{
    async_trait, Client, Handler, HandlerError, TaskContext, TaskRequest, Worker, WorkerConfig,
};
use rtq_testkit::{RedisCluster, RedisServer};
use serde_json::{json, Value};

/// N queues on one node against N queues over a 3-master cluster (private
/// servers it starts itself; it takes no Redis URL).
#[derive(Parser)]
struct Args {
    /// Queues (spread evenly over the cluster's masters).
    #[arg(long, default_value_t = 6)]
    queues: usize,
    /// Concurrent clients per queue (each runs request after request).
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Worker slots per queue (one worker per queue, all in this process).
    #[arg(long, default_value_t = 16)]
    slots: usize,
    /// Seconds measured per setup (after a 1 s warm-up).
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Replicas per cluster master.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
}

struct Zero;

#[async_trait]
impl Handler for Zero {
    async fn handle(&self, _task: TaskContext) -> Result<Value, HandlerError> {
        Ok(json!({ "text": "y".repeat(1000) }))
    }
}

/// Queue names spread round-robin over the thirds of the slot space.
fn spread_queues(n: usize) -> Vec<String> {
    let mut by_third: Vec<Vec<String>> = vec![Vec::new(); 3];
    let mut i = 0;
    while by_third.iter().map(Vec::len).sum::<usize>() < n {
        let name = format!("bench-{i}");
        i += 1;
        let third = usize::from(cluster_slot(&QueueKeys::new(&name).unwrap().meta())) * 3 / 16384;
        let want = n / 3 + usize::from(third < n % 3);
        if by_third[third].len() < want {
            by_third[third].push(name);
        }
    }
    by_third.into_iter().flatten().collect()
}

/// Redis CPU seconds (user + sys) of the given servers.
fn cpu(servers: &[&RedisServer]) -> f64 {
    servers
        .iter()
        .map(|s| {
            let text: String = redis::cmd("INFO")
                .arg("cpu")
                .query(&mut s.conn())
                .unwrap_or_default();
            text.lines()
                .filter_map(|l| l.split_once(':'))
                .filter(|(k, _)| *k == "used_cpu_sys" || *k == "used_cpu_user")
                .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
                .sum::<f64>()
        })
        .sum()
}

struct Outcome {
    tasks_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_us_per_task: f64,
}

async fn run(url: &str, servers: &[&RedisServer], args: &Args) -> anyhow::Result<Outcome> {
    let queues = spread_queues(args.queues);
    let mut stops = Vec::new();
    let mut runs = Vec::new();
    for q in &queues {
        let worker = Worker::connect(url, WorkerConfig::new(q).slots(args.slots)).await?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        runs.push(tokio::spawn(worker.run(Arc::new(Zero), async {
            let _ = rx.await;
        })));
        stops.push(tx);
    }
    let client = Client::connect(url).await?;
    let input = json!({ "prompt": "p".repeat(1000) });
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut loops = Vec::new();
    for q in &queues {
        for _ in 0..args.clients {
            let q = client.queue(q)?;
            let (input, measuring, stop) =
                (input.clone(), Arc::clone(&measuring), Arc::clone(&stop));
            loops.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                while !stop.load(Ordering::Acquire) {
                    let t = Instant::now();
                    q.run(TaskRequest::json(input.clone())).await?;
                    if measuring.load(Ordering::Acquire) {
                        lat.push(t.elapsed());
                    }
                }
                anyhow::Ok(lat)
            }));
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu0 = cpu(servers);
    measuring.store(true, Ordering::Release);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.secs)).await;
    measuring.store(false, Ordering::Release);
    let elapsed = started.elapsed();
    let cpu1 = cpu(servers);
    stop.store(true, Ordering::Release);
    let mut lat = Vec::new();
    for l in loops {
        lat.extend(l.await??);
    }
    for s in stops {
        let _ = s.send(());
    }
    for r in runs {
        r.await??;
    }
    lat.sort();
    let n = lat.len().max(1);
    let pct = |p: f64| lat[((n as f64 * p) as usize).min(n - 1)].as_secs_f64() * 1000.0;
    Ok(Outcome {
        tasks_per_sec: lat.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        cpu_us_per_task: (cpu1 - cpu0) * 1e6 / n as f64,
    })
}

fn print(setup: &str, o: &Outcome, args: &Args) {
    println!(
        "{setup}: queues={} clients/queue={} slots/queue={} tasks/s={:.0} p50={:.2}ms p99={:.2}ms redis_cpu_us/task={:.1}",
        args.queues, args.clients, args.slots, o.tasks_per_sec, o.p50_ms, o.p99_ms, o.cpu_us_per_task
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let single = RedisServer::start();
    let one = run(&single.url(), &[&single], &args).await?;
    print("1 node", &one, &args);
    drop(single);
    let cluster = RedisCluster::start_with(3, args.replicas, None);
    let nodes: Vec<&RedisServer> = (0..cluster.len()).map(|i| cluster.node(i)).collect();
    let spread = run(&cluster.url(), &nodes, &args).await?;
    print(
        &format!("cluster (3 masters, {} replicas each)", args.replicas),
        &spread,
        &args,
    );
    println!(
        "ratio cluster/1 node: tasks/s {:.2}, redis_cpu/task {:.2}",
        spread.tasks_per_sec / one.tasks_per_sec,
        spread.cpu_us_per_task / one.cpu_us_per_task
    );
    Ok(())
}
