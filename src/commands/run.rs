//! `egressd run`: the daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::policy::Config;
use crate::policy::config::{DEFAULT_PATH, LogFormat};

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Config file. Without this flag /etc/egressd/config.toml is read if it exists, and the
    /// built-in defaults are used if it does not; a file given here must exist.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

/// Loads the config the way `check-config` does.
pub fn load_config(explicit: Option<&PathBuf>) -> Result<(PathBuf, Config), String> {
    match explicit {
        Some(p) => Config::load(p)
            .map(|c| (p.clone(), c))
            .map_err(|e| e.to_string()),
        None => {
            let p = PathBuf::from(DEFAULT_PATH);
            Config::load_optional(&p)
                .map(|c| (p, c.unwrap_or_default()))
                .map_err(|e| e.to_string())
        }
    }
}

/// The Docker client logs every API answer in full at debug level: inspect answers hold the
/// containers' environment, secrets included. Its log level is capped, whatever `EGRESSD_LOG`
/// asks for.
const BOLLARD_MAX_LEVEL: &str = "bollard=info";

fn log_filter(spec: Option<&str>) -> tracing_subscriber::EnvFilter {
    let filter = spec
        .and_then(|s| tracing_subscriber::EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    match BOLLARD_MAX_LEVEL.parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    }
}

fn init_logging(format: LogFormat) {
    let filter = log_filter(std::env::var("EGRESSD_LOG").ok().as_deref());
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

pub fn run(args: &RunArgs) -> ExitCode {
    let (path, config) = match load_config(args.config.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("egressd: invalid config, not starting:\n{e}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("egressd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crate::daemon::run(path, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "egressd stopped");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_client_debug_output_is_never_enabled() {
        for spec in [
            None,
            Some("debug"),
            Some("trace"),
            Some("bollard=trace"),
            Some("bad["),
        ] {
            let f = log_filter(spec).to_string();
            assert!(f.contains("bollard=info"), "{spec:?}: {f}");
        }
    }
}
