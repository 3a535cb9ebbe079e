//! A worker with a Rust handler: "generates" one token per word of the
//! prompt, streaming them, and returns a summary. Stops on Ctrl-C, handing
//! back unfinished tasks.
//!
//! Run: `cargo run -p rtq-examples --example worker -- --redis redis://127.0.0.1:6379/`

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use rtq_core::{async_trait, Handler, HandlerError, TaskContext, Worker, WorkerConfig};
use rtq_examples::{QueueArgs, RedisArgs};
use serde_json::{json, Value};

/// A worker with a Rust handler that streams the prompt's words in upper
/// case; Ctrl-C stops it.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    queue: QueueArgs,
}

struct WordStreamer;

#[async_trait]
impl Handler for WordStreamer {
    async fn handle(&self, task: TaskContext) -> Result<Value, HandlerError> {
        let prompt = task
            .input()
            .and_then(|i| i["prompt"].as_str())
            .ok_or_else(|| HandlerError::fatal("input needs a \"prompt\" string"))?
            .to_string();
        let delay = task
            .input()
            .and_then(|i| i["delay_ms"].as_u64())
            .unwrap_or(0);
        let mut tokens = 0;
        for word in prompt.split_whitespace() {
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            // `?` returns as soon as the task is cancelled or expires.
            task.send(format!("{} ", word.to_uppercase())).await?;
            tokens += 1;
        }
        Ok(json!({ "tokens": tokens, "model": "uppercase-1" }))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let url = args.redis.url::<Args>();
    tracing_subscriber::fmt().with_env_filter("info").init();
    let config = WorkerConfig::new(&args.queue.queue)
        .slots(4)
        .label("gpu", "none")
        .handler_name("example-words");
    let worker = Worker::connect(&url, config)
        .await
        .context("starting the worker")?;
    println!(
        "worker {} serving queue {}; Ctrl-C to stop",
        worker.id(),
        args.queue.queue
    );
    worker
        .run(Arc::new(WordStreamer), async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
