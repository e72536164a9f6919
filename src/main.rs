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
    /// Run the daemon: watch Docker and confine every opted-in container.
    Run(egressd::commands::run::RunArgs),
    /// Show what is enforced, per container.
    Status(egressd::commands::status::StatusArgs),
    /// Re-read config and profiles and re-apply them (a bad config is rejected).
    Reload(egressd::commands::status::ReloadArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig(args) => egressd::commands::check_config::run(&args),
        Command::Run(args) => egressd::commands::run::run(&args),
        Command::Status(args) => egressd::commands::status::status(&args),
        Command::Reload(args) => egressd::commands::status::reload(&args),
    }
}
