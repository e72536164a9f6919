//! `egressd status [CONTAINER] [--json]` and `egressd reload`: clients of the control socket.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::control::{self, Request};

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// A container name or id (prefix); all managed containers when omitted.
    pub container: Option<String>,
    /// Print the JSON answer (stable for scripts) instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Control socket; default: `control.socket` from the config.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Config file to read the socket path from.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct ExplainArgs {
    /// A container name or id (prefix).
    pub container: String,
    /// `HOST[:PORT][/PROTO]`: an address or a name, one port (default 443), tcp or udp.
    pub dest: String,
    /// Print the JSON answer.
    #[arg(long)]
    pub json: bool,
    /// Control socket; default: `control.socket` from the config.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Config file to read the socket path from.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct ReloadArgs {
    /// Control socket; default: `control.socket` from the config.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Config file to read the socket path from.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

fn socket_path(socket: &Option<PathBuf>, config: &Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(s) = socket {
        return Ok(s.clone());
    }
    super::run::load_config(config.as_ref()).map(|(_, c)| c.control.socket)
}

pub fn status(args: &StatusArgs) -> ExitCode {
    let path = match socket_path(&args.socket, &args.config) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("egressd status: {e}");
            return ExitCode::from(2);
        }
    };
    let req = Request::Status {
        container: args.container.clone(),
    };
    match control::request(&path, &req, Duration::from_secs(10)) {
        Ok(resp) if resp.ok => {
            let Some(report) = resp.status else {
                eprintln!("egressd status: the daemon sent no status");
                return ExitCode::FAILURE;
            };
            if args.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(j) => println!("{j}"),
                    Err(e) => {
                        eprintln!("egressd status: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", crate::status::render(&report));
            }
            ExitCode::SUCCESS
        }
        Ok(resp) => {
            eprintln!("egressd status: {}", resp.error.unwrap_or_default());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("egressd status: {e} (is `egressd run` running?)");
            ExitCode::FAILURE
        }
    }
}

pub fn reload(args: &ReloadArgs) -> ExitCode {
    let path = match socket_path(&args.socket, &args.config) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("egressd reload: {e}");
            return ExitCode::from(2);
        }
    };
    match control::request(&path, &Request::Reload, Duration::from_secs(60)) {
        Ok(resp) if resp.ok => {
            println!("{}", resp.message.unwrap_or_default());
            ExitCode::SUCCESS
        }
        Ok(resp) => {
            eprintln!("egressd reload: {}", resp.error.unwrap_or_default());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("egressd reload: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `egressd explain`: exit 0 when allowed (or not confined), 1 when denied, 2 on errors.
pub fn explain(args: &ExplainArgs) -> ExitCode {
    let path = match socket_path(&args.socket, &args.config) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("egressd explain: {e}");
            return ExitCode::from(2);
        }
    };
    let req = Request::Explain {
        container: args.container.clone(),
        dest: args.dest.clone(),
    };
    let e = match control::request(&path, &req, Duration::from_secs(10)) {
        Ok(resp) if resp.ok => match resp.explanation {
            Some(e) => e,
            None => {
                eprintln!("egressd explain: the daemon sent no explanation");
                return ExitCode::from(2);
            }
        },
        Ok(resp) => {
            eprintln!(
                "egressd explain: {}",
                resp.error.as_deref().unwrap_or("refused")
            );
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("egressd explain: {e} (is egressd running?)");
            return ExitCode::from(2);
        }
    };
    if args.json {
        match serde_json::to_string_pretty(&e) {
            Ok(j) => println!("{j}"),
            Err(err) => {
                eprintln!("egressd explain: {err}");
                return ExitCode::from(2);
            }
        }
    } else {
        println!("{} -> {}: {}", e.container, e.dest, e.verdict.as_str());
        for r in &e.reasons {
            println!("  - {r}");
        }
    }
    match e.verdict {
        crate::explain::Verdict::Denied | crate::explain::Verdict::WouldBeDenied => {
            ExitCode::from(1)
        }
        _ => ExitCode::SUCCESS,
    }
}
