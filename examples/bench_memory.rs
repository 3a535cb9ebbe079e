//! Memory figures: Redis memory per queued task (1000-char input), client
//! RSS for 10,000 concurrent waits and for 1,000 concurrent streams (all on
//! a paused queue, so they really wait), and the number of Redis
//! connections the client holds meanwhile.
//!
//! Run: `cargo run --release -p rtq-examples --example bench_memory -- --redis URL`
//! against a private server (or `$RTQ_REDIS_URL`).

use std::time::Duration;

use clap::Parser;
use futures::StreamExt;
use rtq_core::admin::Admin;
use rtq_core::{Client, TaskRequest};
use rtq_examples::RedisArgs;
use serde_json::json;

/// Memory figures: Redis memory per queued task, client RSS for 10,000
/// waits and 1,000 streams.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    redis: RedisArgs,
}

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn info_field(conn: &mut redis::Connection, section: &str, field: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg(section).query(conn).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:"))?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = Args::parse().redis.url::<Args>();
    let mut conn = redis::Client::open(url.as_str())?.get_connection()?;
    let client = Client::connect(&url).await?;
    let admin = Admin::new(&client);

    // Redis memory per queued task.
    let q = client.queue("mem-queued")?;
    admin.pause("mem-queued", true).await?;
    let input = json!({ "prompt": "p".repeat(1000) });
    q.submit(TaskRequest::json(input.clone())).await?;
    let before = info_field(&mut conn, "memory", "used_memory");
    let n = 10_000;
    for chunk in 0..(n / 500) {
        let subs = (0..500)
            .map(|i| q.submit(TaskRequest::json(input.clone()).id(format!("m{chunk}-{i}"))));
        for r in futures::future::join_all(subs).await {
            r?;
        }
    }
    let after = info_field(&mut conn, "memory", "used_memory");
    println!(
        "Redis memory per queued task (1000-char input): {} bytes",
        (after - before) / n as u64
    );
    admin.purge("mem-queued").await?;

    // Client memory for 10,000 concurrent waits.
    let q = client.queue("mem-waits")?;
    admin.pause("mem-waits", true).await?;
    let clients_before = info_field(&mut conn, "clients", "connected_clients");
    let rss0 = rss_kb();
    let mut waits = Vec::new();
    for _ in 0..10_000 {
        let q = q.clone();
        waits.push(tokio::spawn(async move {
            q.run(TaskRequest::json(json!({"x": 1}))).await
        }));
    }
    while admin.overview("mem-waits").await?.pending < 10_000 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rss1 = rss_kb();
    let clients_during = info_field(&mut conn, "clients", "connected_clients");
    println!(
        "client: 10,000 concurrent waits add {} kB RSS ({:.1} kB each); Redis connections of this process: +{} during the waits",
        rss1.saturating_sub(rss0),
        rss1.saturating_sub(rss0) as f64 / 10_000.0,
        clients_during.saturating_sub(clients_before)
    );
    admin.purge("mem-waits").await?;
    for w in waits {
        let _ = w.await;
    }

    // Client memory for 1,000 concurrent streams.
    let q = client.queue("mem-streams")?;
    admin.pause("mem-streams", true).await?;
    let rss0 = rss_kb();
    let mut streams = Vec::new();
    for _ in 0..1_000 {
        streams.push(q.stream(TaskRequest::json(json!({"x": 1}))).await?);
    }
    let rss1 = rss_kb();
    println!(
        "client: 1,000 concurrent streams add {} kB RSS ({:.1} kB each)",
        rss1.saturating_sub(rss0),
        rss1.saturating_sub(rss0) as f64 / 1_000.0
    );
    admin.purge("mem-streams").await?;
    for mut s in streams {
        let _ = s.next().await;
    }
    Ok(())
}
