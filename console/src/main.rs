//! `rtq`: parse the command line, then the console or a scriptable command.

use clap::Parser;
use rtq_console::{cli, ui, Cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Cli::parse();
    match args.command.clone() {
        None | Some(Command::Ui) => ui::run(&args).await,
        Some(command) => std::process::exit(cli::run(&args.redis, args.read_only, command).await),
    }
}
