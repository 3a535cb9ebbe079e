//! A streaming client: prints tokens as the worker produces them.
//!
//! Run: `cargo run -p rtq-examples --example streaming`

use std::io::Write;
use std::time::Duration;

use futures::StreamExt;
use rtq_core::{Client, StreamEvent, TaskRequest};
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let client = Client::connect(&rtq_examples::redis_url()).await?;
    let queue = client.queue(&rtq_examples::queue())?;
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
