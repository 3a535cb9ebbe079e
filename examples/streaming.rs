//! A streaming client: prints tokens as the worker produces them.
//!
//! Run: `cargo run -p rtq-examples --example streaming -- --redis redis://127.0.0.1:6379/`

use std::io::Write;
use std::time::Duration;

use clap::Parser;
use futures::StreamExt;
use rtq_core::{Client, StreamEvent, TaskRequest};
use rtq_examples::{QueueArgs, RedisArgs};
use serde_json::json;

/// Submits a prompt and prints the tokens as the worker produces them.
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
    let prompt = "streaming tokens arrive one by one as the model produces them";
    let mut stream = queue
        .stream(
            TaskRequest::json(json!({ "prompt": prompt, "delay_ms": 60 }))
                .timeout(Duration::from_secs(30)),
        )
        .await?;
    while let Some(event) = stream.next().await {
        match event? {
            StreamEvent::Chunk(chunk) => {
                print!("{}", chunk.text());
                std::io::stdout().flush()?;
            }
            StreamEvent::Restarted { reason, .. } => println!("\n[restarted: {reason}]"),
            StreamEvent::Done(out) => println!("\n[done: {}]", out.result),
        }
    }
    Ok(())
}
