//! `rtq-worker`: parse the configuration, set up logging, run.

use clap::{CommandFactory, Parser};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = rtq_worker::Config::parse();
    if let Err(message) = config.validate() {
        rtq_worker::Config::command()
            .error(clap::error::ErrorKind::MissingRequiredArgument, message)
            .exit();
    }
    rtq_worker::init_logging(&config);
    rtq_worker::run(config).await
}
