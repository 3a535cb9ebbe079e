//! A non-streaming client: submit and wait for the whole result, with a
//! deadline. Every way the wait can fail is reported with its reason.
//!
//! Run: `cargo run -p rtq-examples --example request_response`

use std::time::{Duration, Instant};

use anyhow::Context;
use rtq_core::{Client, Error, TaskRequest};
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let client = Client::connect(&rtq_examples::redis_url()).await?;
    let queue = client.queue(&rtq_examples::queue())?;
    for prompt in ["the quick brown fox", "jumps over the lazy dog"] {
        let started = Instant::now();
        let request = TaskRequest::json(json!({ "prompt": prompt }))
            .timeout(Duration::from_secs(10))
            .label("example", "request_response");
        match queue.run(request).await {
            Ok(out) => println!("{prompt:?} -> {} in {:?}", out.result, started.elapsed()),
            Err(Error::TimedOut { phase, .. }) => {
                anyhow::bail!("timed out {phase} - is a worker running? (cargo run -p rtq-examples --example worker)")
            }
            Err(e) => return Err(e).context("request failed"),
        }
    }
    Ok(())
}
