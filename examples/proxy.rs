//! The delay proxy on its own, to put any rtq process (rtq-worker, the
//! console, your client) behind a simulated network:
//!
//! `cargo run --release -p rtq-examples --example proxy -- --to 127.0.0.1:6379 --rtt-ms 18`
//!
//! then point the process at the printed `redis://` URL.

use std::net::ToSocketAddrs;
use std::time::Duration;

use anyhow::Context;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let to = rtq_examples::flag("to").unwrap_or_else(|| "127.0.0.1:6379".into());
    let rtt: u64 = rtq_examples::flag("rtt-ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or(18);
    let target = to
        .to_socket_addrs()?
        .next()
        .with_context(|| format!("cannot resolve {to}"))?;
    let addr = rtq_examples::delay_proxy::start(target, Duration::from_millis(rtt)).await?;
    println!(
        "redis://{addr}/  ->  {target}, RTT +{rtt} ms ({} ms each way); Ctrl-C stops",
        rtt as f64 / 2.0
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}
