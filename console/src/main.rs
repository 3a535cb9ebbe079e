//! `rtq`: parse the command line, then the console or a scriptable command.

use std::io::IsTerminal;

use clap::{CommandFactory, Parser};
use rtq_console::{cli, ui, Cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Cli::parse();
    // Offline commands: they talk to no Redis.
    match &args.command {
        Some(Command::Acl { role, queue, user }) => std::process::exit(cli::acl(
            *role,
            queue.as_deref(),
            user.as_deref(),
            args.json,
        )),
        Some(Command::Keygen { file }) => std::process::exit(cli::keygen(file, args.json)),
        Some(Command::Completions { shell }) => std::process::exit(cli::completions(*shell)),
        Some(Command::Man) => std::process::exit(cli::man()),
        _ => {}
    }
    let console = matches!(args.command, None | Some(Command::Ui));
    if console && !(std::io::stdout().is_terminal() && std::io::stdin().is_terminal()) {
        usage(
            clap::error::ErrorKind::InvalidValue,
            "the console needs a terminal (stdin and stdout); in a script or a pipe use a command, such as `rtq stats --json` (see `rtq --help`)",
        )
    }
    let Some(redis) = args.redis.clone() else {
        usage(
            clap::error::ErrorKind::MissingRequiredArgument,
            "no Redis given: pass --redis <URL> or set RTQ_REDIS_URL (rtq never guesses a server)",
        )
    };
    // A URL that does not parse is a usage error, not "unreachable" (the
    // message names no password: the URL is redacted).
    if let Err(e) = rtq_core::validate_redis_url(&redis) {
        usage(
            clap::error::ErrorKind::InvalidValue,
            &format!(
                "--redis {} is not a Redis URL: {e}",
                rtq_core::redact_url(&redis)
            ),
        )
    }
    if let Some(command) = &args.command {
        if let Err(e) = cli::check_usage(command) {
            usage(clap::error::ErrorKind::ValueValidation, &e.to_string())
        }
    }
    let config = match args.client_config() {
        Ok(config) => config,
        Err(e) => {
            cli::report(&e);
            std::process::exit(cli::exit_code(&e));
        }
    };
    match args.command.clone() {
        None | Some(Command::Ui) => ui::run(&args, &redis, config).await,
        Some(command) => {
            std::process::exit(cli::run(&redis, config, args.read_only, args.json, command).await)
        }
    }
}

/// Exits 2 with a clap-styled usage error.
fn usage(kind: clap::error::ErrorKind, message: &str) -> ! {
    Cli::command().error(kind, message).exit()
}
