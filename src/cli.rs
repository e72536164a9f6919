//! The command line: every verb and its arguments (clap). `main.rs` parses and dispatches;
//! `egressd generate-assets` renders the same definition as man pages and shell completions,
//! so the packaged documentation cannot drift from the binary.

use clap::{CommandFactory, Parser, Subcommand};

use crate::commands;

/// `egressd runtime [--config PATH] [--] RUNC-ARGS...` is the OCI runtime shim that Docker runs
/// in place of runc: its arguments are runc's, so `main` hands it over before clap sees them.
pub const RUNTIME_VERB: &str = "runtime";

#[derive(Parser, Debug)]
#[command(
    name = "egressd",
    version,
    about = "Default-deny egress firewall for Docker containers",
    long_about = "Default-deny egress firewall for Docker containers.\n\n\
        Every container labelled egressd.enable=true gets one nftables table, inet egressd, \
        in its own network namespace: it may reach the hosts its labels and profiles allow, \
        and nothing else.",
    after_long_help = "Files: /etc/egressd/config.toml (config), /usr/share/egressd/profiles and \
        /etc/egressd/profiles (profiles, later directories override earlier ones), \
        /run/egressd/egressd.sock (control socket). Documentation: /usr/share/doc/egressd."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Validate the config, the profiles and (optionally) a set of labels; print the policy.
    CheckConfig(commands::check_config::CheckConfigArgs),
    /// Run the daemon: watch Docker and confine every opted-in container.
    Run(commands::run::RunArgs),
    /// Show what is enforced, per container.
    Status(commands::status::StatusArgs),
    /// Check running containers against hardening practices for AI-agent containers
    /// (exit 1 on high-severity findings, 2 when the audit cannot run).
    Audit(commands::audit::AuditArgs),
    /// Whether a destination is allowed for a container right now, and why.
    Explain(commands::status::ExplainArgs),
    /// Re-read config and profiles and re-apply them (a bad config is rejected).
    Reload(commands::status::ReloadArgs),
    /// Delete egressd's tables: the named containers, or every namespace with --all. This
    /// OPENS their egress; the daemon must be stopped first.
    Release(commands::release::ReleaseArgs),
    /// Register the runtime shim in dockerd's daemon.json (merged, with a backup).
    InstallRuntime(commands::install_runtime::InstallRuntimeArgs),
    /// OCI prestart hook (run by runc for labelled containers; reads the state on stdin).
    #[command(hide = true)]
    Hook(commands::hook::HookArgs),
    /// Write the man pages and shell completions into a directory (used by packaging).
    #[command(hide = true)]
    GenerateAssets(commands::generate_assets::GenerateAssetsArgs),
}

/// The clap definition of the whole command line.
pub fn command() -> clap::Command {
    Cli::command()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definition_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn release_needs_a_target() {
        assert!(Cli::try_parse_from(["egressd", "release"]).is_err());
        assert!(Cli::try_parse_from(["egressd", "release", "--all", "agent"]).is_err());
        assert!(Cli::try_parse_from(["egressd", "release", "--all"]).is_ok());
        assert!(Cli::try_parse_from(["egressd", "release", "a", "b"]).is_ok());
        assert!(Cli::try_parse_from(["egressd", "release", "--netns", "/run/netns/x"]).is_ok());
    }
}
