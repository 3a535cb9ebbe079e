//! `rtq`: parse the command line, then the console or a scriptable command.

use clap::{CommandFactory, Parser};
use rtq_console::{cli, ui, Cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Cli::parse();
    let Some(redis) = args.redis.clone() else {
        Cli::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "no Redis given: pass --redis <URL> or set RTQ_REDIS_URL (rtq never guesses a server)",
            )
            .exit()
    };
    let tls = match args.tls() {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("rtq: {e}");
            std::process::exit(cli::exit_code(&e));
        }
    };
    let config = rtq_core::ClientConfig::default().tls(tls);
    match args.command.clone() {
        None | Some(Command::Ui) => ui::run(&args, &redis, config).await,
        Some(command) => {
            std::process::exit(cli::run(&redis, config, args.read_only, command).await)
        }
    }
}
