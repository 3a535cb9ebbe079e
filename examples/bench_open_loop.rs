//! Fixed-rate (open-loop) latency: first the maximum throughput with a
//! closed loop (`--clients` request loops), then requests sent on a fixed
//! schedule at 25, 50, 75 and 90 % of it. Each latency is measured from
//! the request's scheduled send time, not from when it was actually sent,
//! so a stall delays every request scheduled during it and shows in the
//! percentiles (no coordinated omission). Real Client and Worker code
//! (zero-work handler, 1000-char input and result). At every rate the same
//! schedule also sends pairs of PINGs (two round trips to Redis, no worker):
//! the machine's own floor at that rate, which on a VM with sleeping idle
//! cores is far above a busy loop's.
//!
//! Run: `cargo run --release -p rtq-examples --example bench_open_loop -- --redis URL`
//! against a private server (`scripts/bench-open-loop.sh` starts one, pinned).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use redis::aio::MultiplexedConnection;
use rtq_core::{Client, TaskRequest, Worker, WorkerConfig};
use rtq_examples::bench_util::{info_conn, percentile, run_load, task_input, Load, ZeroWork};
use rtq_examples::RedisArgs;
use tokio::io::AsyncReadExt;

/// Open-loop latency at fixed fractions of the measured maximum
/// throughput.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    redis: RedisArgs,
    /// Worker slots (one worker).
    #[arg(long, env = "RTQ_BENCH_SLOTS", default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=1024))]
    slots: u64,
    /// Request loops of the closed-loop maximum run.
    #[arg(long, env = "RTQ_BENCH_CLIENTS", default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    clients: u64,
    /// Tasks of the closed-loop maximum run.
    #[arg(long, env = "RTQ_BENCH_MAX_TASKS", default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    max_tasks: u64,
    /// Seconds per rate.
    #[arg(long, env = "RTQ_BENCH_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    seconds: u64,
    /// Rates as percentages of the maximum.
    #[arg(long, env = "RTQ_BENCH_RATES", value_delimiter = ',', default_value = "25,50,75,90", value_parser = clap::value_parser!(u64).range(1..=200))]
    rates: Vec<u64>,
    /// Skip the maximum run and use this rate (tasks/s) as 100 %.
    #[arg(long, env = "RTQ_BENCH_MAX_RATE")]
    max_rate: Option<f64>,
    /// Run the fixed-rate phase's worker in a process of its own (as in
    /// production) instead of in the client's process and runtime.
    #[arg(long, env = "RTQ_BENCH_WORKER_PROCESS")]
    worker_process: bool,
    /// Internal: serve this queue as the worker process of
    /// `--worker-process` until killed.
    #[arg(long, hide = true)]
    serve_worker: Option<String>,
}

/// One zero-work worker of `slots` slots on `queue`, connected.
async fn connect_worker(url: &str, queue: &str, slots: usize) -> anyhow::Result<Worker> {
    Worker::connect(url, WorkerConfig::new(queue).slots(slots))
        .await
        .context("starting the worker")
}

/// Serves `queue` with one zero-work worker of `slots` slots until its
/// standard input ends: the parent closes it when done, and so does the
/// kernel when the parent dies (Ctrl-C), so no worker outlives its run.
async fn serve_worker(url: &str, queue: &str, slots: usize) -> anyhow::Result<()> {
    let worker = connect_worker(url, queue, slots).await?;
    let parent_gone = async {
        let mut stdin = tokio::io::stdin();
        let mut byte = [0u8; 1];
        while matches!(stdin.read(&mut byte).await, Ok(n) if n > 0) {}
    };
    worker.run(Arc::new(ZeroWork), parent_gone).await?;
    Ok(())
}

/// Latencies of one fixed-rate run.
struct Run {
    from_schedule: Vec<f64>,
    from_send: Vec<f64>,
    failed: usize,
    late_sends: usize,
    secs: f64,
}

/// Sends `n` requests at `rate` per second on a fixed schedule. A
/// dedicated thread keeps the schedule (thread sleeps are accurate to tens
/// of microseconds; tokio's timer rounds to milliseconds) and spawns each
/// request (a future made by `request`, true when it succeeded) onto the
/// runtime at its due time.
async fn fixed_rate<F, Fut>(rate: f64, n: usize, request: F) -> anyhow::Result<Run>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    let handle = tokio::runtime::Handle::current();
    let started = Instant::now();
    let (handles, late_sends) = tokio::task::spawn_blocking(move || {
        let start = Instant::now() + Duration::from_millis(20);
        let mut handles = Vec::with_capacity(n);
        let mut late = 0;
        for i in 0..n {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            } else if now - due > Duration::from_millis(1) {
                late += 1;
            }
            let request = request();
            handles.push(handle.spawn(async move {
                let sent = Instant::now();
                let ok = request.await;
                let end = Instant::now();
                (
                    ok,
                    end.duration_since(due).as_secs_f64() * 1000.0,
                    end.duration_since(sent).as_secs_f64() * 1000.0,
                )
            }));
        }
        (handles, late)
    })
    .await?;
    let (mut from_schedule, mut from_send, mut failed) = (Vec::new(), Vec::new(), 0);
    for h in handles {
        let (ok, s, d) = h.await?;
        if ok {
            from_schedule.push(s);
            from_send.push(d);
        } else {
            failed += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    from_schedule.sort_by(f64::total_cmp);
    from_send.sort_by(f64::total_cmp);
    Ok(Run {
        from_schedule,
        from_send,
        failed,
        late_sends,
        secs,
    })
}

/// Runs `work`, or fails as soon as the worker process (if any) exits:
/// without a worker the requests would wait forever.
async fn unless_worker_exits<T>(
    child: &mut Option<tokio::process::Child>,
    work: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let Some(child) = child else {
        return work.await;
    };
    tokio::select! {
        result = work => result,
        status = child.wait() => match status {
            Ok(status) => anyhow::bail!("the worker process exited early ({status})"),
            Err(e) => anyhow::bail!("the worker process is gone: {e}"),
        },
    }
}

/// The machine's own floor at a rate: two PINGs one after the other (two
/// round trips to Redis, no queue, no worker) on the same schedule. On a
/// VM whose idle cores sleep, waking them costs far more per round trip at
/// low rates than on a busy core; this separates that cost from rtq's.
async fn ping_pair(conn: &MultiplexedConnection) -> bool {
    let mut conn = conn.clone();
    for _ in 0..2 {
        if redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .is_err()
        {
            return false;
        }
    }
    true
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let url = args.redis.url::<Args>();
    let slots = args.slots as usize;
    if let Some(queue) = &args.serve_worker {
        return serve_worker(&url, queue, slots).await;
    }
    let queue = format!("openloop{}", std::process::id());
    let max = match args.max_rate {
        Some(r) if r.is_finite() && r > 0.0 => r,
        Some(r) => anyhow::bail!("--max-rate must be a positive number of tasks/s, got {r}"),
        None => {
            let load = Load::new(args.clients as usize, slots, args.max_tasks as usize, 0);
            let r = run_load(&url, &format!("{queue}-max"), &load).await?;
            println!(
                "maximum (closed loop, {} in flight, {slots} slots, {} tasks): {:.0} tasks/s, p50 {:.2} ms, p99 {:.2} ms",
                load.clients,
                r.tasks,
                r.rate(),
                r.pct(0.5),
                r.pct(0.99)
            );
            r.rate()
        }
    };

    // The worker: a child process, or a task of this runtime.
    let mut child = None;
    // The child's stdin, held apart: tokio's `Child::wait` closes a stdin
    // it still holds, and a closed stdin stops the worker.
    let mut worker_stdin = None;
    let mut in_process = None;
    if args.worker_process {
        let mut process = tokio::process::Command::new(std::env::current_exe()?)
            // The URL goes by environment: a password never shows in `ps`.
            .env("RTQ_REDIS_URL", &url)
            .args(["--slots", &slots.to_string(), "--serve-worker", &queue])
            .stdin(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting the worker process")?;
        worker_stdin = process.stdin.take();
        child = Some(process);
    } else {
        let worker = connect_worker(&url, &queue, slots).await?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let wh = tokio::spawn(worker.run(Arc::new(ZeroWork), async {
            let _ = stop_rx.await;
        }));
        in_process = Some((stop_tx, wh));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let client = Client::connect(&url).await?;
    let q = client.queue(&queue)?;
    let ping = info_conn(&url).await?;
    // Warm up.
    unless_worker_exits(&mut child, async {
        for _ in 0..100 {
            q.run(TaskRequest::json(task_input(1000, 0, 1000))).await?;
        }
        Ok(())
    })
    .await?;
    println!();
    println!("| rate | of max | requests | achieved/s | p50 ms | p99 ms | p99.9 ms | max ms | p99 from actual send | sends > 1 ms late | failed | 2 x PING p50 / p99 ms |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for pct in &args.rates {
        let rate = max * *pct as f64 / 100.0;
        let n = ((rate * args.seconds as f64) as usize).max(1);
        let (q, input) = (q.clone(), task_input(1000, 0, 1000));
        let r = unless_worker_exits(
            &mut child,
            fixed_rate(rate, n, move || {
                let (q, input) = (q.clone(), input.clone());
                async move { q.run(TaskRequest::json(input)).await.is_ok() }
            }),
        )
        .await?;
        let pings = ping.clone();
        let floor = fixed_rate(rate, n, move || {
            let pings = pings.clone();
            async move { ping_pair(&pings).await }
        })
        .await?;
        let l = &r.from_schedule;
        println!(
            "| {rate:.0}/s | {pct} % | {n} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {:.2} / {:.2} |",
            l.len() as f64 / r.secs,
            percentile(l, 0.5),
            percentile(l, 0.99),
            percentile(l, 0.999),
            l.last().copied().unwrap_or(0.0),
            percentile(&r.from_send, 0.99),
            r.late_sends,
            r.failed,
            percentile(&floor.from_schedule, 0.5),
            percentile(&floor.from_schedule, 0.99),
        );
    }
    if let Some((stop_tx, wh)) = in_process {
        let _ = stop_tx.send(());
        let _ = wh.await;
    }
    if let Some(mut child) = child {
        drop(worker_stdin);
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }
    Ok(())
}
