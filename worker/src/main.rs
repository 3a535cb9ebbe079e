//! `rtq-worker`: parse the configuration, set up logging, run.

use clap::{CommandFactory, Parser};

#[tokio::main]
async fn main() {
    let config = rtq_worker::Config::parse();
    if let Err(message) = config.validate() {
        rtq_worker::Config::command()
            .error(clap::error::ErrorKind::MissingRequiredArgument, message)
            .exit();
    }
    rtq_worker::init_logging(&config);
    if let Err(err) = rtq_worker::run(config).await {
        // `{:#}` prints the context chain on one line; every URL in it is
        // redacted where it was formatted.
        eprintln!("rtq-worker: {err:#}");
        std::process::exit(rtq_worker::exit_code(&err));
    }
}
