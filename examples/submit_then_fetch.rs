//! Asynchronous use: submit now, get the id, and fetch the result later -
//! here with a second client, as another process would.
//!
//! Run: `cargo run -p rtq-examples --example submit_then_fetch -- --redis redis://127.0.0.1:6379/`

use std::time::Duration;

use clap::Parser;
use rtq_core::{Client, TaskRequest};
use rtq_examples::{QueueArgs, RedisArgs};
use serde_json::json;

/// Submits a task, then fetches its status, result and chunks by id from a
/// second client.
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
    let url = args.redis.url::<Args>();
    let submitter = Client::connect(&url).await?;
    let queue = submitter.queue(&args.queue.queue)?;
    let submitted = queue
        .submit(
            TaskRequest::json(json!({ "prompt": "fetch me later" }))
                .retention(Duration::from_secs(600)),
        )
        .await?;
    println!("submitted {} ({})", submitted.id, submitted.state);

    // Later, anywhere: another client fetches by id.
    let fetcher = Client::connect(&url).await?;
    let queue = fetcher.queue(&args.queue.queue)?;
    let info = queue.status(&submitted.id).await?;
    println!("status now: {}", info.state);
    let out = queue
        .wait(&submitted.id, Some(Duration::from_secs(10)))
        .await?;
    println!("result: {}", out.result);
    let (_, text) = queue.follow(&submitted.id, 0).await?.collect_text().await?;
    println!("its chunks: {text}");
    Ok(())
}
