//! A non-streaming client: submit and wait for the whole result, with a
//! deadline. Every way the wait can fail is reported with its reason.
//!
//! Run: `cargo run -p rtq-examples --example request_response -- --redis redis://127.0.0.1:6379/`

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use rtq_core::{Client, Error, TaskRequest};
use rtq_examples::{QueueArgs, RedisArgs};
use serde_json::json;

/// Submits two prompts and waits for each whole result, with a deadline.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    queue: QueueArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = Client::connect(&args.redis.url::<Args>()).await?;
    let queue = client.queue(&args.queue.queue)?;
    for prompt in ["the quick brown fox", "jumps over the lazy dog"] {
        let started = Instant::now();
        let request = TaskRequest::json(json!({ "prompt": prompt }))
            .timeout(Duration::from_secs(10))
            .label("example", "request_response");
        match queue.run(request).await {
            Ok(out) => println!("{prompt:?} -> {} in {:?}", out.result, started.elapsed()),
            Err(Error::TimedOut { phase, .. }) => {
                anyhow::bail!("timed out {phase} - is a worker running? (cargo run -p rtq-examples --example worker -- --redis URL)")
            }
            Err(e) => return Err(e).context("request failed"),
        }
    }
    Ok(())
}
