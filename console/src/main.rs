//! `rtq`: parse the command line, then the console or a scriptable command.

use clap::{CommandFactory, Parser};
use rtq_console::{cli, ui, Cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Cli::parse();
    if let Some(Command::Acl { role, queue, user }) = &args.command {
        // Offline: prints the rules, talks to no Redis.
        match rtq_core::acl::setuser((*role).into(), queue.as_deref(), user.as_deref()) {
            Ok(line) => println!("{line}"),
            Err(e) => Cli::command()
                .error(clap::error::ErrorKind::ValueValidation, e.to_string())
                .exit(),
        }
        return Ok(());
    }
    if let Some(Command::Keygen { file }) = &args.command {
        std::process::exit(cli::keygen(file));
    }
    let Some(redis) = args.redis.clone() else {
        Cli::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "no Redis given: pass --redis <URL> or set RTQ_REDIS_URL (rtq never guesses a server)",
            )
            .exit()
    };
    let config = match args.client_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("rtq: {e}");
            std::process::exit(cli::exit_code(&e));
        }
    };
    match args.command.clone() {
        None | Some(Command::Ui) => ui::run(&args, &redis, config).await,
        Some(command) => {
            std::process::exit(cli::run(&redis, config, args.read_only, command).await)
        }
    }
}
