//! A steady mix of traffic for the demo: streaming and non-streaming
//! requests, some with deadlines and higher priorities, from several
//! concurrent clients, until Ctrl-C.
//!
//! Run: `cargo run -p rtq-examples --example loadgen -- --redis URL [clients] [tasks_per_sec]`

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
    tokio::signal::ctrl_c().await?;
    Ok(())
}
