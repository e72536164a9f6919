//! The `egressd` binary: parses arguments and dispatches to `egressd::commands`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "egressd",
    version,
    about = "Default-deny egress firewall for Docker containers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the config, the profiles and (optionally) a set of labels; print the policy.
    CheckConfig(egressd::commands::check_config::CheckConfigArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig(args) => egressd::commands::check_config::run(&args),
    }
}
