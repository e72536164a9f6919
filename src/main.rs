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
    /// Check running containers against hardening practices for AI-agent containers
    /// (exit 1 on high-severity findings, 2 when the audit cannot run).
    Audit(egressd::commands::audit::AuditArgs),
    /// Re-read config and profiles and re-apply them (a bad config is rejected).
    Reload(egressd::commands::status::ReloadArgs),
    /// Register the runtime shim in dockerd's daemon.json (merged, with a backup).
    InstallRuntime(egressd::commands::install_runtime::InstallRuntimeArgs),
    /// OCI prestart hook (run by runc for labelled containers; reads the state on stdin).
    #[command(hide = true)]
    Hook(egressd::commands::hook::HookArgs),
}

/// `egressd runtime [--config PATH] [--] RUNC-ARGS...` is the OCI runtime shim that Docker runs
/// in place of runc: its arguments are runc's, so it bypasses clap.
const RUNTIME_VERB: &str = "runtime";

fn main() -> ExitCode {
    let mut args = std::env::args_os();
    let _argv0 = args.next();
    if args.next().is_some_and(|a| a == RUNTIME_VERB) {
        return egressd::commands::runtime::main(args.collect());
    }
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig(args) => egressd::commands::check_config::run(&args),
        Command::Run(args) => egressd::commands::run::run(&args),
        Command::Status(args) => egressd::commands::status::status(&args),
        Command::Audit(args) => egressd::commands::audit::run(&args),
        Command::Reload(args) => egressd::commands::status::reload(&args),
        Command::InstallRuntime(args) => egressd::commands::install_runtime::run(&args),
        Command::Hook(args) => egressd::commands::hook::run(&args),
    }
}
