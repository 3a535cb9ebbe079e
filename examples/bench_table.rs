//! The reference design's published table, re-run with rtq over a simulated
//! network: every rtq process reaches Redis through a proxy that delays each
//! direction by rtt/2. Same rows: 1 client + 1 worker and 2 + 2; each client
//! sends 100 requests one after another; input 1000 chars; output 1000
//! chars, 10 chunks x 100 chars, or 20 chunks x 50 chars; zero inference
//! time. Real Client and Worker code (a zero-work Rust handler), nothing
//! special-cased. Several runs; medians, with min/max of the per-run means.
//!
//! Run: `cargo run --release -p rtq-examples --example bench_table -- --redis URL --rtt-ms 18 --runs 3 --requests 100`
//! (host and port of the URL are used; the proxy goes in front).
//!
//! With `--reference` each row also runs our implementation of the
//! reference design ([`rtq_examples::reference_design`]: plain Redis
//! commands, one per step) through the same proxy, interleaved run by run,
//! and prints one side-by-side table (`scripts/bench-reference.sh`).

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use rtq_core::{
    async_trait, Client, Handler, HandlerError, StreamEvent, TaskContext, TaskRequest, Worker,
    WorkerConfig,
};
use rtq_examples::reference_design::{serve, RefClient};
use rtq_examples::{delay_proxy, RedisArgs};
use serde_json::{json, Value};

/// The reference design's published table, re-run with rtq behind a proxy
/// that simulates the network round trip.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    redis: RedisArgs,
    /// Simulated round trip in ms (half each way).
    #[arg(long, env = "RTQ_BENCH_RTT_MS", default_value_t = 18)]
    rtt_ms: u64,
    /// Runs per row; the table shows medians.
    #[arg(long, env = "RTQ_BENCH_RUNS", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=1000))]
    runs: u64,
    /// Requests per client, one after another.
    #[arg(long, env = "RTQ_BENCH_REQUESTS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    requests: u64,
    /// Also run the reference design (our implementation) through the same
    /// proxy and print one side-by-side table.
    #[arg(long, env = "RTQ_BENCH_REFERENCE")]
    reference: bool,
    /// Run rtq on stream queues (protocol v3, one band) instead of v2
    /// queues.
    #[arg(long, env = "RTQ_BENCH_STREAM_QUEUE")]
    stream_queue: bool,
}

struct Zero;

#[async_trait]
impl Handler for Zero {
    async fn handle(&self, task: TaskContext) -> Result<Value, HandlerError> {
        let input = task.input().cloned().unwrap_or_default();
        let chunks = input["chunks"].as_u64().unwrap_or(0);
        let size = input["size"].as_u64().unwrap_or(0) as usize;
        for _ in 0..chunks {
            task.send("c".repeat(size)).await?;
        }
        if chunks == 0 {
            return Ok(json!({ "text": "r".repeat(1000) }));
        }
        Ok(json!({ "chunks": chunks }))
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// One run of one row: per-request latencies and first-chunk times (ms).
async fn run_row(
    url: &str,
    queue: &str,
    pairs: usize,
    (chunks, size): (u64, u64),
    requests: usize,
    stream_queue: bool,
) -> anyhow::Result<(Vec<f64>, Vec<f64>, f64)> {
    if stream_queue {
        Client::connect(url)
            .await?
            .queue(queue)?
            .create_stream(1, 0)
            .await?;
    }
    let mut stops = Vec::new();
    for _ in 0..pairs {
        let worker = Worker::connect(url, WorkerConfig::new(queue).slots(1)).await?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(worker.run(Arc::new(Zero), async {
            let _ = rx.await;
        }));
        stops.push(tx);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut clients = Vec::new();
    for _ in 0..pairs {
        let c = Client::connect(url).await?;
        let q = c.queue(queue)?;
        // Warm the reply reader and the scripts.
        q.run(TaskRequest::json(json!({"warm": true}))).await?;
        clients.push((c, q));
    }
    let input = json!({ "prompt": "p".repeat(1000), "chunks": chunks, "size": size });
    let started = Instant::now();
    let mut handles = Vec::new();
    for (_, q) in &clients {
        let q = q.clone();
        let input = input.clone();
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut first = Vec::new();
            for _ in 0..requests {
                let t = Instant::now();
                if chunks == 0 {
                    q.run(TaskRequest::json(input.clone())).await?;
                } else {
                    let mut s = q.stream(TaskRequest::json(input.clone())).await?;
                    let mut got_first = false;
                    while let Some(ev) = s.next().await {
                        if let (StreamEvent::Chunk(_), false) = (ev?, got_first) {
                            got_first = true;
                            first.push(t.elapsed().as_secs_f64() * 1000.0);
                        }
                    }
                }
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            Ok::<_, rtq_core::Error>((lat, first))
        }));
    }
    let mut lat = Vec::new();
    let mut first = Vec::new();
    for h in handles {
        let (l, f) = h.await??;
        lat.extend(l);
        first.extend(f);
    }
    let duration = started.elapsed().as_secs_f64();
    for s in stops {
        let _ = s.send(());
    }
    Ok((lat, first, duration))
}

/// One run of one row with the reference design: `pairs` servers and
/// `pairs` clients; per-request latencies, first-chunk times (ms), duration.
async fn run_reference_row(
    url: &str,
    pairs: usize,
    chunks: u64,
    size: u64,
    requests: usize,
) -> anyhow::Result<(Vec<f64>, Vec<f64>, f64)> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut servers = Vec::new();
    for i in 0..pairs {
        let (url, stop) = (url.to_string(), stop_rx.clone());
        servers.push(tokio::spawn(async move {
            serve(&url, &format!("server-{i}"), stop).await
        }));
    }
    let mut clients = Vec::new();
    for i in 0..pairs {
        let mut c = RefClient::connect(url, &format!("client-{i}-{}", std::process::id())).await?;
        c.request(&json!({"warm": true})).await?;
        clients.push(c);
    }
    let input = json!({ "prompt": "p".repeat(1000), "chunks": chunks, "size": size });
    let started = Instant::now();
    let mut handles = Vec::new();
    for mut c in clients {
        let input = input.clone();
        handles.push(tokio::spawn(async move {
            let (mut lat, mut first) = (Vec::new(), Vec::new());
            for _ in 0..requests {
                let t = Instant::now();
                if chunks == 0 {
                    c.request(&input).await?;
                } else {
                    let mut got_first = false;
                    c.stream(&input, |_| {
                        if !got_first {
                            got_first = true;
                            first.push(t.elapsed().as_secs_f64() * 1000.0);
                        }
                    })
                    .await?;
                }
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            Ok::<_, anyhow::Error>((lat, first))
        }));
    }
    let (mut lat, mut first) = (Vec::new(), Vec::new());
    for h in handles {
        let (l, f) = h.await??;
        lat.extend(l);
        first.extend(f);
    }
    let duration = started.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);
    for s in servers {
        s.await??;
    }
    Ok((lat, first, duration))
}

/// Per-run means, per-run durations, all latencies, all first-chunk times.
type Pooled = (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>);

/// Pooled figures of one row over its runs.
struct Row {
    avg: f64,
    p99: f64,
    first_p50: Option<f64>,
    per_min: f64,
}

fn summarize(
    avgs: &mut [f64],
    durs: &mut [f64],
    all: &mut [f64],
    firsts: &mut [f64],
    n: usize,
) -> Row {
    all.sort_by(|a, b| a.total_cmp(b));
    firsts.sort_by(|a, b| a.total_cmp(b));
    let dur = median(durs);
    Row {
        avg: median(avgs),
        p99: pct(all, 0.99),
        first_p50: (!firsts.is_empty()).then(|| pct(firsts, 0.5)),
        per_min: n as f64 / dur * 60.0,
    }
}

/// The side-by-side table: rtq and the reference design, run by run.
async fn side_by_side(
    via: &str,
    rtt_ms: u64,
    runs: usize,
    requests: usize,
    stream_queue: bool,
) -> anyhow::Result<()> {
    println!("| setup | output | rtq avg ms | rtq p99 | rtq first chunk p50 | rtq avg in RTTs | reference avg ms | reference p99 | reference first chunk p50 | reference avg in RTTs | rtq req/min | reference req/min | rtq speed-up |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let rtt = rtt_ms.max(1) as f64;
    for pairs in [1usize, 2] {
        for (label, chunks, size) in [
            ("1000 chars", 0u64, 0u64),
            ("10 x 100 chunks", 10, 100),
            ("20 x 50 chunks", 20, 50),
        ] {
            let mut acc: [Pooled; 2] = Default::default();
            for run in 0..runs {
                let queue = format!("side-{pairs}-{chunks}-{run}-{}", std::process::id());
                let rtq =
                    run_row(via, &queue, pairs, (chunks, size), requests, stream_queue).await?;
                let reference = run_reference_row(via, pairs, chunks, size, requests).await?;
                for (a, (lat, first, dur)) in acc.iter_mut().zip([rtq, reference]) {
                    a.0.push(lat.iter().sum::<f64>() / lat.len() as f64);
                    a.1.push(dur);
                    a.2.extend(lat);
                    a.3.extend(first);
                }
            }
            let n = requests * pairs;
            let [r, d] = acc.map(|(mut avgs, mut durs, mut all, mut firsts)| {
                summarize(&mut avgs, &mut durs, &mut all, &mut firsts, n)
            });
            let first = |row: &Row| row.first_p50.map_or("-".to_string(), |f| format!("{f:.1}"));
            println!(
                "| {pairs} client(s) + {pairs} worker(s) | {label} | {:.1} | {:.1} | {} | {:.2} | {:.1} | {:.1} | {} | {:.2} | {:.0} | {:.0} | {:.1}x |",
                r.avg, r.p99, first(&r), r.avg / rtt, d.avg, d.p99, first(&d), d.avg / rtt, r.per_min, d.per_min, d.avg / r.avg,
            );
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let url = args.redis.url::<Args>();
    let (rtt_ms, runs, requests) = (args.rtt_ms, args.runs as usize, args.requests as usize);
    let parsed = url::Url::parse(&url)?;
    let target: SocketAddr = (
        parsed.host_str().unwrap_or("127.0.0.1"),
        parsed.port().unwrap_or(6379),
    )
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| anyhow::anyhow!("cannot resolve {url}"))?;
    let proxy = delay_proxy::start(target, Duration::from_millis(rtt_ms)).await?;
    let mut via = parsed.clone();
    via.set_host(Some("127.0.0.1"))?;
    via.set_port(Some(proxy.port()))
        .map_err(|_| anyhow::anyhow!("bad port"))?;
    let via = via.to_string();

    // The proxy's own cost: PING through it minus the configured RTT.
    let mut conn = redis::Client::open(via.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let mut pings = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        pings.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let ping = median(&mut pings);
    println!("rtt {rtt_ms} ms (proxy {via} -> {target}); PING via proxy median {ping:.2} ms = rtt + {:.2} ms overhead; {runs} runs x {requests} requests per client", ping - rtt_ms as f64);
    println!();
    if args.reference {
        return side_by_side(&via, rtt_ms, runs, requests, args.stream_queue).await;
    }
    println!("| setup | output | requests | duration s | avg ms | p50 | p95 | p99 | first chunk p50 | req/min | avg in RTTs |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for pairs in [1usize, 2] {
        for (label, chunks, size) in [
            ("1000 chars", 0u64, 0u64),
            ("10 x 100 chunks", 10, 100),
            ("20 x 50 chunks", 20, 50),
        ] {
            let (mut avgs, mut durs, mut all, mut firsts) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for run in 0..runs {
                let queue = format!("table-{pairs}-{chunks}-{run}-{}", std::process::id());
                let (lat, first, dur) = run_row(
                    &via,
                    &queue,
                    pairs,
                    (chunks, size),
                    requests,
                    args.stream_queue,
                )
                .await?;
                avgs.push(lat.iter().sum::<f64>() / lat.len() as f64);
                durs.push(dur);
                all.extend(lat);
                firsts.extend(first);
            }
            all.sort_by(|a, b| a.total_cmp(b));
            firsts.sort_by(|a, b| a.total_cmp(b));
            let (lo, hi) = (
                avgs.iter().cloned().fold(f64::MAX, f64::min),
                avgs.iter().cloned().fold(0.0, f64::max),
            );
            let avg = median(&mut avgs);
            let dur = median(&mut durs);
            let n = requests * pairs;
            println!(
                "| {pairs} client(s) + {pairs} worker(s) | {label} | {n} | {dur:.2} | {avg:.1} (runs {lo:.1}-{hi:.1}) | {:.1} | {:.1} | {:.1} | {} | {:.0} | {:.2} |",
                pct(&all, 0.5),
                pct(&all, 0.95),
                pct(&all, 0.99),
                if firsts.is_empty() { "-".to_string() } else { format!("{:.1}", pct(&firsts, 0.5)) },
                n as f64 / dur * 60.0,
                avg / rtt_ms.max(1) as f64,
            );
        }
    }
    Ok(())
}
