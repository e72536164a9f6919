//! The `egressd` binary: parses arguments (`egressd::cli`) and dispatches to
//! `egressd::commands`.

use std::process::ExitCode;

use clap::Parser;
use egressd::cli::{Cli, Command, RUNTIME_VERB};
use egressd::commands;

fn main() -> ExitCode {
    let mut args = std::env::args_os();
    let _argv0 = args.next();
    if args.next().is_some_and(|a| a == RUNTIME_VERB) {
        return commands::runtime::main(args.collect());
    }
    match Cli::parse().command {
        Command::CheckConfig(args) => commands::check_config::run(&args),
        Command::Run(args) => commands::run::run(&args),
        Command::Status(args) => commands::status::status(&args),
        Command::Audit(args) => commands::audit::run(&args),
        Command::Reload(args) => commands::status::reload(&args),
        Command::Explain(args) => commands::status::explain(&args),
        Command::Release(args) => commands::release::run(&args),
        Command::InstallRuntime(args) => commands::install_runtime::run(&args),
        Command::Hook(args) => commands::hook::run(&args),
        Command::GenerateAssets(args) => commands::generate_assets::run(&args),
    }
}
