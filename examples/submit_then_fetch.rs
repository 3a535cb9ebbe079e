//! Asynchronous use: submit now, get the id, and fetch the result later -
//! here with a second client, as another process would.
//!
//! Run: `cargo run -p rtq-examples --example submit_then_fetch`

use std::time::Duration;

use rtq_core::{Client, TaskRequest};
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = rtq_examples::redis_url();
    let submitter = Client::connect(&url).await?;
    let queue = submitter.queue(&rtq_examples::queue())?;
    let submitted = queue
        .submit(
            TaskRequest::json(json!({ "prompt": "fetch me later" }))
                .retention(Duration::from_secs(600)),
        )
        .await?;
    println!("submitted {} ({})", submitted.id, submitted.state);

    // Later, anywhere: another client fetches by id.
    let fetcher = Client::connect(&url).await?;
    let queue = fetcher.queue(&rtq_examples::queue())?;
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
