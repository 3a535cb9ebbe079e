//! A steady mix of traffic for the demo: streaming and non-streaming
//! requests, some with deadlines and higher priorities, from several
//! concurrent clients, until Ctrl-C. The steady load waits for its
//! answers (closed loop), so it never builds a backlog; bursts
//! (`--burst-size`) submit many tasks at once without waiting, more than
//! the workers can take, so pending work, the depth chart and the
//! warning colours show.
//!
//! Run: `cargo run -p rtq-examples --example loadgen -- --redis URL [clients] [tasks_per_sec]
//! [--burst-size N --burst-first-secs S --burst-every-secs S]`

use std::time::Duration;

use clap::Parser;
use futures::StreamExt;
use rtq_core::{Client, TaskRequest};
use rtq_examples::{QueueArgs, RedisArgs};
use serde_json::json;

/// A steady mix of streaming and non-streaming demo traffic until Ctrl-C.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    queue: QueueArgs,
    /// Concurrent clients.
    #[arg(default_value_t = 4)]
    clients: u64,
    /// Tasks per second, all clients together.
    #[arg(default_value_t = 10.0)]
    tasks_per_sec: f64,
    /// Tasks submitted at once per burst, without waiting for them
    /// (0 = no bursts).
    #[arg(long, env = "RTQ_BURST_SIZE", default_value_t = 0)]
    burst_size: u64,
    /// Seconds before the first burst.
    #[arg(long, env = "RTQ_BURST_FIRST_SECS", default_value_t = 10)]
    burst_first_secs: u64,
    /// Seconds between bursts (0 = only the first).
    #[arg(long, env = "RTQ_BURST_EVERY_SECS", default_value_t = 60)]
    burst_every_secs: u64,
}

/// Submits `size` tasks at once (fire and forget): a backlog the workers
/// drain over the next seconds.
async fn burst(q: &rtq_core::Queue, size: u64, n: u64) {
    let submits = (0..size).map(|i| {
        let req = TaskRequest::json(json!({"prompt": "burst", "max_tokens": 20 + i % 40}))
            .label("client", "burst")
            .label("burst", n.to_string());
        q.submit(req)
    });
    let results = futures::future::join_all(submits).await;
    let failed = results.iter().filter(|r| r.is_err()).count();
    eprintln!("burst {n}: {size} tasks submitted, {failed} refused");
}

/// A small deterministic generator (no dependency needed for a demo).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (clients, per_sec) = (args.clients, args.tasks_per_sec);
    let client = Client::connect(&args.redis.url::<Args>()).await?;
    let queue = client.queue(&args.queue.queue)?;
    let pause = Duration::from_secs_f64(clients as f64 / per_sec.max(0.1));
    for c in 0..clients {
        let q = queue.clone();
        tokio::spawn(async move {
            let mut rng = Lcg(c + 1);
            loop {
                let tokens = 10 + rng.below(60);
                let mut req = TaskRequest::json(json!({"prompt": "demo", "max_tokens": tokens}))
                    .priority(if rng.below(10) == 0 { 5 } else { 0 })
                    .label("client", format!("demo-{c}"));
                if rng.below(3) == 0 {
                    req = req.timeout(Duration::from_secs(8));
                }
                let result = if rng.below(2) == 0 {
                    match q.stream(req).await {
                        Ok(mut s) => {
                            let mut last = Ok(());
                            while let Some(ev) = s.next().await {
                                if let Err(e) = ev {
                                    last = Err(e);
                                }
                            }
                            last
                        }
                        Err(e) => Err(e),
                    }
                } else {
                    q.run(req).await.map(|_| ())
                };
                if let Err(e) = result {
                    if e.is_connection_lost() {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                tokio::time::sleep(pause).await;
            }
        });
    }
    if args.burst_size > 0 {
        let q = queue.clone();
        let (size, first, every) = (
            args.burst_size,
            args.burst_first_secs,
            args.burst_every_secs,
        );
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(first)).await;
            for n in 1.. {
                burst(&q, size, n).await;
                if every == 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(every)).await;
            }
        });
    }
    tokio::signal::ctrl_c().await?;
    Ok(())
}
