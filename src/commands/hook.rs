//! `egressd hook`: the OCI prestart hook the runtime shim adds to labelled containers. runc
//! runs it (as root) after Docker configured the container's network and before the
//! container's process starts, with the OCI state on stdin. It asks the daemon to put the
//! table in place and exits 0 only once it is there; any failure (daemon down, invalid or
//! unenforceable settings, timeout) exits 1 with the reason on stderr, and runc then does not
//! start the container. See docs/runtime.md.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::control::{self, Request};
use crate::oci;

#[derive(clap::Args, Debug)]
pub struct HookArgs {
    /// The daemon's control socket.
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    /// Seconds to wait for the daemon's answer.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub timeout: u64,
}

/// Largest OCI state accepted on stdin.
const MAX_STATE: u64 = 1 << 20;

pub fn run(args: &HookArgs) -> ExitCode {
    let mut input = String::new();
    if let Err(e) = std::io::stdin().take(MAX_STATE).read_to_string(&mut input) {
        eprintln!("egressd hook: reading the OCI state from stdin: {e}");
        return ExitCode::FAILURE;
    }
    let state: oci::State = match serde_json::from_str(&input) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("egressd hook: the OCI state on stdin is not valid: {e}");
            return ExitCode::FAILURE;
        }
    };
    let short = state.id.get(..12).unwrap_or(&state.id).to_string();
    let req = Request::Enforce {
        id: state.id,
        pid: state.pid,
        bundle: state.bundle,
    };
    let timeout = Duration::from_secs(args.timeout.clamp(1, 60));
    match control::request(&args.socket, &req, timeout) {
        Ok(resp) if resp.ok => ExitCode::SUCCESS,
        Ok(resp) => {
            eprintln!(
                "egressd: {}",
                resp.error
                    .as_deref()
                    .unwrap_or("the daemon refused without a reason")
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!(
                "egressd: container {short} is labelled for egressd, but the daemon did not confine it ({e}); \
                 it is not started, so it cannot run unconfined. Start egressd, or run the container without the egressd runtime."
            );
            ExitCode::FAILURE
        }
    }
}
