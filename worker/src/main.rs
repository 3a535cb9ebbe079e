//! `rtq-worker`: parse the configuration, set up logging, run.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = rtq_worker::Config::parse();
    rtq_worker::init_logging(&config);
    rtq_worker::run(config).await
}
