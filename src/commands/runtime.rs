//! `egressd runtime [--config PATH] [--] RUNC-ARGS...`: the OCI runtime shim Docker runs in
//! place of runc (registered by `egressd install-runtime`). For `create` (and `run`) of a
//! container labelled `PREFIX.enable`, it appends egressd's prestart hook (`egressd hook`) to
//! the bundle's `config.json`; then it execs the real runc with the arguments untouched. Every
//! other command (`start`, `exec`, `kill`, `delete`, `state`, `features`…) goes straight to
//! runc. Unlabelled containers are never touched, so egressd being down never blocks them.
//!
//! It runs on every container start, so it does little: read the config, at most two small
//! JSON files, and exec. See docs/runtime.md.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use crate::oci;
use crate::policy::Config;

/// Entry point; `args` are the arguments after `runtime`.
pub fn main(args: Vec<OsString>) -> ExitCode {
    let (config_path, runc_args) = split_own_args(args);
    let config = match super::run::load_config(config_path.as_ref()) {
        Ok((_, c)) => c,
        Err(e) => {
            // Still hand the command to runc (with the default runc path) so that running
            // containers can be managed; a labelled container still gets the hook (below),
            // which fails closed if the daemon is not there.
            eprintln!("egressd runtime: invalid config, using defaults: {e}");
            Config::default()
        }
    };
    if let Some((i, cmd)) = oci::runc_subcommand(&runc_args)
        && (cmd == "create" || cmd == "run")
    {
        let bundle = oci::bundle_arg(&runc_args[i + 1..]);
        if let Err(e) = prepare_bundle(&bundle, &config) {
            let msg = format!("egressd runtime: {e}; the container is not created");
            report(&runc_args, &msg);
            return ExitCode::FAILURE;
        }
    }
    let err = Command::new(&config.runtime.runc)
        .arg0("runc")
        .args(&runc_args)
        .exec();
    let msg = format!(
        "egressd runtime: cannot run {}: {err} (set runtime.runc in the config)",
        config.runtime.runc.display()
    );
    report(&runc_args, &msg);
    ExitCode::from(127)
}

/// `[--config PATH] [--] REST...`
fn split_own_args(mut args: Vec<OsString>) -> (Option<PathBuf>, Vec<OsString>) {
    let mut config = None;
    let mut start = 0;
    if args.first().is_some_and(|a| a == "--config") && args.len() >= 2 {
        config = Some(PathBuf::from(&args[1]));
        start = 2;
    }
    if args.get(start).is_some_and(|a| a == "--") {
        start += 1;
    }
    (config, args.split_off(start))
}

/// Adds the hook to a labelled container's bundle. Unlabelled Docker containers are left
/// alone. When the labels cannot be read, the hook is added: the daemon then decides, and
/// refuses when it cannot tell either (fail closed).
fn prepare_bundle(bundle: &Path, config: &Config) -> Result<(), String> {
    let path = bundle.join("config.json");
    let mut spec = oci::read_json(&path).map_err(|e| e.to_string())?;
    let facts = oci::spec_facts(&spec);
    if let Some(dir) = &facts.container_dir
        && let Ok((_, labels)) = oci::read_config_v2(dir)
    {
        let key = format!("{}.enable", config.label_prefix);
        // Any value but "false" (the daemon quarantines values it does not understand).
        if labels.get(&key).is_none_or(|v| v == "false") {
            return Ok(());
        }
    }
    let exe = std::env::current_exe()
        .map_err(|e| format!("cannot find egressd's own binary for the hook: {e}"))?;
    let hook = oci::hook_entry(
        &exe,
        &config.control.socket,
        config.runtime.hook_timeout.as_secs(),
    );
    oci::add_prestart_hook(&mut spec, hook).map_err(|e| format!("{}: {e}", path.display()))?;
    write_atomically(&path, &spec)
}

fn write_atomically(path: &Path, spec: &serde_json::Value) -> Result<(), String> {
    let err = |e: std::io::Error| format!("{}: {e}", path.display());
    let body = serde_json::to_vec(spec).map_err(|e| format!("{}: {e}", path.display()))?;
    let mode = std::fs::metadata(path).map_err(err)?.permissions().mode();
    let tmp = path.with_extension("json.egressd-tmp");
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(&body).map_err(err)?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(err)
}

/// Prints an error for the admin: on stderr, and into runc's `--log` file in runc's JSON
/// format, which is where containerd looks for the reason of a failed runtime call.
fn report(runc_args: &[OsString], msg: &str) {
    eprintln!("{msg}");
    let mut log = None;
    let mut json = false;
    let mut it = runc_args.iter();
    while let Some(a) = it.next() {
        if a == "--log" {
            log = it.next().map(PathBuf::from);
        } else if a == "--log-format" {
            json = it.next().is_some_and(|v| v == "json");
        }
    }
    if let Some(log) = log
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
    {
        let line = if json {
            serde_json::json!({"level": "error", "msg": msg}).to_string()
        } else {
            msg.to_string()
        };
        let _ = writeln!(f, "{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn own_arguments_are_split_off() {
        let (c, rest) = split_own_args(os(&["--config", "/e/c.toml", "--root", "/r", "create"]));
        assert_eq!(c, Some(PathBuf::from("/e/c.toml")));
        assert_eq!(rest, os(&["--root", "/r", "create"]));
        let (c, rest) = split_own_args(os(&["--", "--root", "/r", "start", "x"]));
        assert_eq!(c, None);
        assert_eq!(rest, os(&["--root", "/r", "start", "x"]));
        let (c, rest) = split_own_args(os(&["--version"]));
        assert_eq!((c, rest), (None, os(&["--version"])));
    }
}
