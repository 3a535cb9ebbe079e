//! How rtq's cost grows (issue 11): tasks/s and Redis CPU per task against
//! the number of tasks in flight and the payload size; the registry and
//! console cost against the number of queues; heartbeat and housekeeping
//! cost against the number of idle workers; client memory and Redis
//! connections against the number of open waits. Real Client, Worker and
//! Admin code throughout (zero-work handler). Prints markdown tables and
//! writes one small SVG plot per curve.
//!
//! Run: `cargo run --release -p rtq-examples --example bench_curves -- --redis URL --flush --svg-dir docs/bench`
//! against a private server (`scripts/bench-curves.sh` starts one, pinned).
//! `--quick` runs every curve at a tiny size (the smoke test).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use rtq_core::admin::Admin;
use rtq_core::{Client, TaskRequest, Worker, WorkerConfig};
use rtq_examples::bench_util::{
    info_conn, median, rss_kb, run_load, svg_plot, Load, RedisSnapshot, Series, ZeroWork,
};
use rtq_examples::RedisArgs;
use serde_json::json;

/// One cost curve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Curve {
    /// Tasks in flight: 1, 10, 50, 200, 1000 (idle and busy path).
    Inflight,
    /// Input and result size: 1 KB, 64 KB, 1 MB.
    Payload,
    /// Queues: 1, 100, 10,000 (registry listing and dashboard).
    Queues,
    /// Idle workers: 10, 100, 1,000 (heartbeat and housekeeping per second).
    Workers,
    /// Open waits: 100, 1,000, 10,000 (client RSS, Redis connections).
    Waits,
}

/// Cost curves of rtq: markdown tables and SVG plots.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    redis: RedisArgs,
    /// Curves to run (default: all).
    #[arg(long, env = "RTQ_BENCH_CURVES", value_enum, value_delimiter = ',')]
    curve: Vec<Curve>,
    /// Tiny sizes (seconds in total): for the smoke test, not for figures.
    #[arg(long, env = "RTQ_BENCH_QUICK")]
    quick: bool,
    /// FLUSHALL and FUNCTION FLUSH before every point. Only for a private
    /// Redis: it deletes everything in it.
    #[arg(long, env = "RTQ_BENCH_FLUSH")]
    flush: bool,
    /// Directory to write one SVG plot per curve into (none if unset).
    #[arg(long, env = "RTQ_BENCH_SVG_DIR", value_name = "DIR")]
    svg_dir: Option<PathBuf>,
    /// Seconds each idle-worker and open-wait point is observed.
    #[arg(long, env = "RTQ_BENCH_WINDOW_S", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=600))]
    window_s: u64,
    /// Internal: run one open-waits point in this (fresh) process.
    #[arg(long, hide = true, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    waits_point: Option<u64>,
}

struct Ctx {
    url: String,
    quick: bool,
    flush: bool,
    svg_dir: Option<PathBuf>,
    window: Duration,
    conn: redis::aio::MultiplexedConnection,
    /// Redis CPU ms/s with nothing connected but these snapshots.
    idle_ms_per_s: Option<f64>,
}

impl Ctx {
    /// Redis CPU ms per second of Redis alone (its own timers and the
    /// snapshots), measured once over the window.
    async fn idle_ms_per_s(&mut self) -> anyhow::Result<f64> {
        if let Some(v) = self.idle_ms_per_s {
            return Ok(v);
        }
        self.flush().await?;
        let before = self.snapshot().await?;
        tokio::time::sleep(self.window).await;
        let d = self.snapshot().await?.since(&before);
        let v = d.cpu_s * 1000.0 / self.window.as_secs_f64();
        self.idle_ms_per_s = Some(v);
        Ok(v)
    }

    /// Redis CPU ms of one pair of back-to-back snapshots (median of 5),
    /// to take off a measured interval.
    async fn snapshot_cost_ms(&mut self) -> anyhow::Result<f64> {
        let mut v = Vec::new();
        for _ in 0..5 {
            let a = self.snapshot().await?;
            v.push(self.snapshot().await?.since(&a).cpu_s * 1000.0);
        }
        Ok(median(&v))
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        if self.flush {
            let _: () = redis::pipe()
                .cmd("FLUSHALL")
                .ignore()
                .cmd("FUNCTION")
                .arg("FLUSH")
                .ignore()
                .query_async(&mut self.conn)
                .await?;
        }
        Ok(())
    }

    async fn snapshot(&mut self) -> anyhow::Result<RedisSnapshot> {
        RedisSnapshot::take(&mut self.conn).await
    }

    fn plot(
        &self,
        file: &str,
        title: &str,
        x: &str,
        y: &str,
        series: &[Series],
    ) -> anyhow::Result<()> {
        if let Some(dir) = &self.svg_dir {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let path = dir.join(file);
            std::fs::write(&path, svg_plot(title, x, y, true, series))
                .with_context(|| format!("writing {}", path.display()))?;
            println!("\nPlot: `{}`", path.display());
        }
        Ok(())
    }
}

fn queue_name(tag: &str) -> String {
    format!("curve-{tag}-{}", std::process::id())
}

async fn inflight(ctx: &mut Ctx) -> anyhow::Result<()> {
    println!("\n#### Tasks in flight (1000-char input and result; idle path: slots = in flight; busy path: slots = in flight / 5)\n");
    println!("| in flight | idle tasks/s | idle p50 / p99 ms | idle Redis cmds/task | idle Redis CPU/task | busy slots | busy tasks/s | busy p50 / p99 ms | busy Redis cmds/task | busy Redis CPU/task |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let points: &[usize] = if ctx.quick {
        &[1, 10, 50]
    } else {
        &[1, 10, 50, 200, 1000]
    };
    let mut series = [(Vec::new(), Vec::new()), (Vec::new(), Vec::new())];
    for &n in points {
        let tasks = if ctx.quick {
            (n * 2).max(20)
        } else {
            (n * 20).max(5000)
        };
        let mut row = Vec::new();
        for (i, slots) in [n.min(1024), (n / 5).max(1)].into_iter().enumerate() {
            ctx.flush().await?;
            let mut load = Load::new(n, slots, tasks, 0);
            load.warmup = if ctx.quick { 2 } else { 100 };
            let r = run_load(
                &ctx.url,
                &queue_name(&format!("inflight{n}-{slots}")),
                &load,
            )
            .await?;
            series[i].0.push((n as f64, r.rate()));
            series[i].1.push((n as f64, r.cpu_us_per_task()));
            row.push((slots, r));
        }
        let (i, bs, b) = (&row[0].1, row[1].0, &row[1].1);
        println!(
            "| {n} | {:.0} | {:.2} / {:.2} | {:.1} | {:.1} us | {bs} | {:.0} | {:.2} / {:.2} | {:.1} | {:.1} us |",
            i.rate(), i.pct(0.5), i.pct(0.99), i.cmds_per_task(), i.cpu_us_per_task(),
            b.rate(), b.pct(0.5), b.pct(0.99), b.cmds_per_task(), b.cpu_us_per_task(),
        );
    }
    let [(it, ic), (bt, bc)] = series;
    ctx.plot(
        "inflight-throughput.svg",
        "rtq tasks/s against tasks in flight",
        "tasks in flight (log)",
        "tasks/s",
        &[
            Series {
                name: "idle path".into(),
                points: it,
            },
            Series {
                name: "busy path".into(),
                points: bt,
            },
        ],
    )?;
    ctx.plot(
        "inflight-redis-cpu.svg",
        "Redis CPU per task against tasks in flight",
        "tasks in flight (log)",
        "Redis CPU us/task",
        &[
            Series {
                name: "idle path".into(),
                points: ic,
            },
            Series {
                name: "busy path".into(),
                points: bc,
            },
        ],
    )
}

async fn payload(ctx: &mut Ctx) -> anyhow::Result<()> {
    println!("\n#### Payload size (input and result each this size; 50 in flight, 10 slots)\n");
    println!("| payload | tasks | tasks/s | MB/s (in + out) | p50 / p99 ms | Redis cmds/task | Redis CPU/task | Redis CPU per KB |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    let points: &[(usize, &str, usize)] = &[
        (1_000, "1 KB", 5000),
        (64_000, "64 KB", 2000),
        (1_000_000, "1 MB", 200),
    ];
    let mut cpu = Vec::new();
    for &(size, label, tasks) in points {
        ctx.flush().await?;
        let tasks = if ctx.quick { 10 } else { tasks };
        let mut load = Load::new(50.min(tasks), 10, tasks, 0);
        load.payload = size;
        load.result_size = size;
        load.warmup = if ctx.quick { 1 } else { 20 };
        let r = run_load(&ctx.url, &queue_name(&format!("payload{size}")), &load).await?;
        cpu.push((size as f64, r.cpu_us_per_task()));
        println!(
            "| {label} | {} | {:.0} | {:.1} | {:.2} / {:.2} | {:.1} | {:.1} us | {:.2} us |",
            r.tasks,
            r.rate(),
            r.rate() * 2.0 * size as f64 / 1e6,
            r.pct(0.5),
            r.pct(0.99),
            r.cmds_per_task(),
            r.cpu_us_per_task(),
            r.cpu_us_per_task() / (2.0 * size as f64 / 1000.0),
        );
    }
    ctx.plot(
        "payload-redis-cpu.svg",
        "Redis CPU per task against payload size",
        "input and result bytes (log)",
        "Redis CPU us/task",
        &[Series {
            name: "busy path".into(),
            points: cpu,
        }],
    )
}

async fn queues(ctx: &mut Ctx) -> anyhow::Result<()> {
    println!("\n#### Number of queues (each with one pending task; `Admin::queues` lists the registry, `Admin::dashboard(30)` is what the console polls every refresh, 1 s by default)\n");
    println!("| queues | `queues()` ms | `dashboard(30)` ms | dashboard Redis cmds | dashboard Redis CPU ms | hot path tasks/s (one queue, 50 in flight, 10 slots) | hot path Redis CPU/task |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let points: &[usize] = if ctx.quick {
        &[1, 10, 100]
    } else {
        &[1, 100, 10_000]
    };
    let mut dash = Vec::new();
    let info_ms = ctx.snapshot_cost_ms().await?;
    for &n in points {
        ctx.flush().await?;
        let client = Client::connect(&ctx.url).await?;
        let admin = Admin::new(&client);
        let names: Vec<String> = (0..n).map(|i| format!("{}-{i}", queue_name("q"))).collect();
        for batch in names.chunks(500) {
            let subs = batch.iter().map(|name| {
                let admin = admin.clone();
                let q = client.queue(name);
                async move {
                    admin.register_queue(name).await?;
                    q?.submit(TaskRequest::json(json!({"x": 1}))).await?;
                    Ok::<_, anyhow::Error>(())
                }
            });
            for r in futures::future::join_all(subs).await {
                r?;
            }
        }
        let reps = if ctx.quick { 1 } else { 5 };
        let (mut list_ms, mut dash_ms, mut cmds, mut cpu) = (vec![], vec![], vec![], vec![]);
        for _ in 0..reps {
            let t = Instant::now();
            let listed = admin.queues().await?;
            list_ms.push(t.elapsed().as_secs_f64() * 1000.0);
            anyhow::ensure!(
                listed.len() >= n,
                "registry lists {} of {n} queues",
                listed.len()
            );
            let before = ctx.snapshot().await?;
            let t = Instant::now();
            let rows = admin.dashboard(30).await?;
            dash_ms.push(t.elapsed().as_secs_f64() * 1000.0);
            let d = ctx.snapshot().await?.since(&before);
            anyhow::ensure!(
                rows.len() >= n,
                "dashboard shows {} of {n} queues",
                rows.len()
            );
            // Minus the INFO of the second snapshot.
            cmds.push(d.calls().saturating_sub(4) as f64);
            cpu.push((d.cpu_s * 1000.0 - info_ms).max(0.0));
        }
        let tasks = if ctx.quick { 20 } else { 5000 };
        let mut load = Load::new(50.min(tasks), 10, tasks, 0);
        load.warmup = if ctx.quick { 1 } else { 100 };
        let r = run_load(&ctx.url, &format!("{}-0", queue_name("q")), &load).await?;
        let dm = median(&dash_ms);
        dash.push((n as f64, dm));
        println!(
            "| {n} | {:.2} | {dm:.2} | {:.0} | {:.2} | {:.0} | {:.1} us |",
            median(&list_ms),
            median(&cmds),
            median(&cpu),
            r.rate(),
            r.cpu_us_per_task(),
        );
    }
    ctx.plot(
        "queues-dashboard.svg",
        "Console dashboard time against number of queues",
        "queues (log)",
        "dashboard(30) ms",
        &[Series {
            name: "dashboard".into(),
            points: dash,
        }],
    )
}

async fn workers(ctx: &mut Ctx) -> anyhow::Result<()> {
    println!("\n#### Idle workers (1 slot each, default lease 5 s: heartbeat every 1 s, housekeeping with it; observed for {} s)\n", ctx.window.as_secs());
    let idle = ctx.idle_ms_per_s().await?;
    println!("Redis alone (no client): {idle:.2} ms of CPU per second; the per-heartbeat column takes it off.\n");
    println!("| idle workers | Redis CPU ms/s | Redis CPU per worker-heartbeat | Redis cmds/s | Redis connections | client RSS MB (all workers) |");
    println!("| --- | --- | --- | --- | --- | --- |");
    let points: &[usize] = if ctx.quick {
        &[2, 10]
    } else {
        &[10, 100, 1000]
    };
    let mut cpu = Vec::new();
    for &n in points {
        ctx.flush().await?;
        let queue = queue_name("workers");
        let clients0 = ctx.snapshot().await?.connected_clients;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut handles = Vec::new();
        for i in 0..n {
            let worker = Worker::connect(
                &ctx.url,
                WorkerConfig::new(&queue).worker_id(format!("idle-{i}")),
            )
            .await
            .with_context(|| format!("starting idle worker {i}"))?;
            let mut stop = stop_rx.clone();
            handles.push(tokio::spawn(worker.run(Arc::new(ZeroWork), async move {
                let _ = stop.wait_for(|s| *s).await;
            })));
        }
        // Let every worker register and settle into its heartbeat period.
        tokio::time::sleep(if ctx.quick {
            Duration::from_millis(300)
        } else {
            Duration::from_secs(2)
        })
        .await;
        let before = ctx.snapshot().await?;
        let rss = rss_kb();
        tokio::time::sleep(ctx.window).await;
        let after = ctx.snapshot().await?;
        let d = after.since(&before);
        let secs = ctx.window.as_secs_f64();
        let per_s = d.cpu_s * 1000.0 / secs;
        cpu.push((n as f64, per_s));
        println!(
            "| {n} | {per_s:.2} | {:.1} us | {:.0} | {} | {:.1} |",
            (per_s - idle).max(0.0) * 1000.0 / n as f64,
            (d.calls().saturating_sub(4)) as f64 / secs,
            after.connected_clients.saturating_sub(clients0),
            rss as f64 / 1024.0,
        );
        let _ = stop_tx.send(true);
        for h in handles {
            h.await??;
        }
    }
    ctx.plot(
        "workers-redis-cpu.svg",
        "Redis CPU per second against idle workers",
        "idle workers (log)",
        "Redis CPU ms/s",
        &[Series {
            name: "heartbeat + housekeeping".into(),
            points: cpu,
        }],
    )
}

async fn waits(ctx: &mut Ctx) -> anyhow::Result<()> {
    println!("\n#### Open waits (`run` on a paused queue, each in its own tokio task, one client in a fresh process per point; observed for {} s)\n", ctx.window.as_secs());
    let idle = ctx.idle_ms_per_s().await?;
    println!("Redis alone (no client): {idle:.2} ms of CPU per second.\n");
    println!("| open waits | client RSS added | per wait | Redis connections added | Redis memory added | Redis CPU ms/s while waiting |");
    println!("| --- | --- | --- | --- | --- | --- |");
    let points: &[usize] = if ctx.quick {
        &[10, 100]
    } else {
        &[100, 1000, 10_000]
    };
    let mut rss_series = Vec::new();
    for &n in points {
        ctx.flush().await?;
        // A fresh process per point: memory freed by earlier curves (or
        // points) would be reused and hide what the waits cost.
        let out = std::process::Command::new(std::env::current_exe()?)
            .args(["--waits-point", &n.to_string()])
            .args(["--window-s", &ctx.window.as_secs().to_string()])
            .env("RTQ_REDIS_URL", &ctx.url)
            .output()
            .context("running the open-waits point")?;
        anyhow::ensure!(
            out.status.success(),
            "open-waits point {n} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        let row = lines.next().unwrap_or_default();
        let added_kb: f64 = lines.next().and_then(|l| l.parse().ok()).unwrap_or(0.0);
        println!("{row}");
        rss_series.push((n as f64, added_kb / 1024.0));
    }
    ctx.plot(
        "waits-client-rss.svg",
        "Client RSS against open waits",
        "open waits (log)",
        "client RSS added, MB",
        &[Series {
            name: "run() waits".into(),
            points: rss_series,
        }],
    )
}

/// One open-waits point, in its own process: prints the table row, then
/// the RSS added in kB.
async fn waits_point(url: &str, n: usize, window: Duration) -> anyhow::Result<()> {
    let mut conn = info_conn(url).await?;
    let client = Client::connect(url).await?;
    let admin = Admin::new(&client);
    let queue = queue_name("waits");
    admin.pause(&queue, true).await?;
    let q = client.queue(&queue)?;
    let before = RedisSnapshot::take(&mut conn).await?;
    let rss0 = rss_kb();
    let mut waits = Vec::new();
    for _ in 0..n {
        let q = q.clone();
        waits.push(tokio::spawn(async move {
            q.run(TaskRequest::json(json!({"x": 1}))).await
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while admin.overview(&queue).await?.pending < n as u64 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{n} waits not all submitted after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rss1 = rss_kb();
    let during = RedisSnapshot::take(&mut conn).await?;
    tokio::time::sleep(window).await;
    let later = RedisSnapshot::take(&mut conn).await?;
    let added_kb = rss1.saturating_sub(rss0);
    println!(
        "| {n} | {:.1} MB | {:.1} kB | {} | {:.1} MB | {:.2} |",
        added_kb as f64 / 1024.0,
        added_kb as f64 / n as f64,
        during
            .connected_clients
            .saturating_sub(before.connected_clients),
        during.used_memory.saturating_sub(before.used_memory) as f64 / 1e6,
        later.since(&during).cpu_s * 1000.0 / window.as_secs_f64(),
    );
    println!("{added_kb}");
    admin.purge(&queue).await?;
    for w in waits {
        let _ = w.await;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let url = args.redis.url::<Args>();
    let curves = if args.curve.is_empty() {
        vec![
            Curve::Inflight,
            Curve::Payload,
            Curve::Queues,
            Curve::Workers,
            Curve::Waits,
        ]
    } else {
        args.curve.clone()
    };
    if let Some(n) = args.waits_point {
        return waits_point(&url, n as usize, Duration::from_secs(args.window_s)).await;
    }
    let conn = info_conn(&url).await?;
    let mut ctx = Ctx {
        url,
        quick: args.quick,
        flush: args.flush,
        svg_dir: args.svg_dir,
        window: Duration::from_secs(if args.quick { 1 } else { args.window_s }),
        conn,
        idle_ms_per_s: None,
    };
    for curve in curves {
        match curve {
            Curve::Inflight => inflight(&mut ctx).await?,
            Curve::Payload => payload(&mut ctx).await?,
            Curve::Queues => queues(&mut ctx).await?,
            Curve::Workers => workers(&mut ctx).await?,
            Curve::Waits => waits(&mut ctx).await?,
        }
    }
    Ok(())
}
