//! `rtq-gateway`: parse the configuration, set up logging, run.

use clap::{CommandFactory, Parser};
use rtq_gateway::{Command, Config};

#[tokio::main]
async fn main() {
    let config = Config::parse();
    if let Some(Command::HashKey { queues }) = &config.command {
        if let Err(err) = rtq_gateway::hash_key_command(queues) {
            eprintln!("rtq-gateway: {err:#}");
            std::process::exit(2);
        }
        return;
    }
    if let Err(message) = config.validate() {
        Config::command()
            .error(clap::error::ErrorKind::MissingRequiredArgument, message)
            .exit();
    }
    rtq_gateway::init_logging(&config);
    if let Err(err) = rtq_gateway::run(config).await {
        // `{:#}` prints the context chain on one line; URLs in it are
        // redacted where they were formatted.
        eprintln!("rtq-gateway: {err:#}");
        std::process::exit(1);
    }
}
