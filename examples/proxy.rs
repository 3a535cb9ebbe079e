//! The delay proxy on its own, to put any rtq process (rtq-worker, the
//! console, your client) behind a simulated network:
//!
//! `cargo run --release -p rtq-examples --example proxy -- --to 127.0.0.1:6379 --rtt-ms 18`
//!
//! then point the process at the printed `redis://` URL. `--to` is
//! required: the proxy forwards to no Redis it was not given.

use std::net::ToSocketAddrs;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

/// A TCP proxy that delays every byte by half the round trip each way, in
/// front of a Redis server.
#[derive(Parser)]
struct Args {
    /// The Redis server to forward to, as host:port (required).
    #[arg(long, env = "RTQ_PROXY_TO", value_name = "HOST:PORT")]
    to: String,
    /// Simulated round trip in ms (half each way).
    #[arg(long, env = "RTQ_PROXY_RTT_MS", default_value_t = 18)]
    rtt_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Args { to, rtt_ms: rtt } = Args::parse();
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
