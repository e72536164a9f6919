//! `egressd install-runtime`: registers the runtime shim (`egressd runtime`) in dockerd's
//! `daemon.json`, merging with what is there and keeping a backup; `--remove` takes it out.
//! dockerd reads `runtimes` again on SIGHUP (`systemctl reload docker`), no restart needed.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::{Map, Value, json};

#[derive(clap::Args, Debug)]
pub struct InstallRuntimeArgs {
    /// Runtime name: `docker run --runtime NAME`.
    #[arg(long, default_value = "egressd")]
    pub name: String,
    /// dockerd's config file.
    #[arg(long, value_name = "PATH", default_value = "/etc/docker/daemon.json")]
    pub daemon_json: PathBuf,
    /// egressd config the shim and hook read (socket, runc path, label prefix).
    #[arg(long, value_name = "PATH", default_value = crate::policy::config::DEFAULT_PATH)]
    pub config: PathBuf,
    /// The egressd binary; default: this one.
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
    /// Also make it the default runtime of every container (`default-runtime`).
    #[arg(long)]
    pub default: bool,
    /// Remove the entry (and `default-runtime` if it names it) instead.
    #[arg(long)]
    pub remove: bool,
}

/// dockerd's built-in runtime.
const STOCK_RUNTIME: &str = "runc";

/// The new `daemon.json` content (pure). `None` when nothing changes.
pub fn merged(
    current: Option<&str>,
    name: &str,
    binary: &Path,
    config: &Path,
    make_default: bool,
    remove: bool,
) -> Result<Option<Value>, String> {
    let mut doc = match current.map(str::trim) {
        None | Some("") => Value::Object(Map::new()),
        Some(text) => serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?,
    };
    let before = doc.clone();
    let obj = doc.as_object_mut().ok_or("not a JSON object")?;
    if remove {
        // dockerd's reload (SIGHUP) only applies the keys present in the file: without a
        // `runtimes` key it keeps the runtimes it has, and without `default-runtime` it keeps
        // the default it has. So an emptied `runtimes` stays as `{}`, and a default that named
        // the shim becomes runc (dockerd's own default) rather than disappearing.
        if let Some(rt) = obj.get_mut("runtimes").and_then(Value::as_object_mut) {
            rt.remove(name);
        }
        if obj.get("default-runtime").and_then(Value::as_str) == Some(name) {
            obj.insert("default-runtime".into(), json!(STOCK_RUNTIME));
        }
    } else {
        let runtimes = obj
            .entry("runtimes")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .ok_or("\"runtimes\" is not an object")?;
        runtimes.insert(
            name.to_string(),
            json!({"path": binary, "runtimeArgs": ["runtime", "--config", config]}),
        );
        if make_default {
            obj.insert("default-runtime".into(), json!(name));
        }
    }
    Ok((doc != before).then_some(doc))
}

pub fn run(args: &InstallRuntimeArgs) -> ExitCode {
    match install(args) {
        Ok(msg) => {
            println!("{msg}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "egressd install-runtime: {}: {e}",
                args.daemon_json.display()
            );
            ExitCode::FAILURE
        }
    }
}

fn install(args: &InstallRuntimeArgs) -> Result<String, String> {
    let binary = match &args.binary {
        Some(b) => b.clone(),
        None => std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?,
    };
    let current = match std::fs::read_to_string(&args.daemon_json) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e.to_string()),
    };
    let Some(doc) = merged(
        current.as_deref(),
        &args.name,
        &binary,
        &args.config,
        args.default,
        args.remove,
    )?
    else {
        return Ok(format!(
            "{}: already up to date",
            args.daemon_json.display()
        ));
    };
    if let Some(dir) = args.daemon_json.parent() {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    if let Some(old) = &current {
        let backup = args.daemon_json.with_extension("json.egressd-backup");
        std::fs::write(&backup, old).map_err(|e| format!("backup {}: {e}", backup.display()))?;
    }
    let mut body = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
    body.push('\n');
    let tmp = args.daemon_json.with_extension("json.egressd-tmp");
    std::fs::write(&tmp, body).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, &args.daemon_json).map_err(|e| e.to_string())?;
    let what = if args.remove { "removed" } else { "registered" };
    Ok(format!(
        "{}: runtime \"{}\" {what}{}. Apply with: systemctl reload docker (or kill -HUP $(pidof dockerd))",
        args.daemon_json.display(),
        args.name,
        if current.is_some() {
            " (previous file kept as daemon.json.egressd-backup)"
        } else {
            ""
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(current: Option<&str>, default: bool, remove: bool) -> Result<Option<Value>, String> {
        merged(
            current,
            "egressd",
            Path::new("/usr/bin/egressd"),
            Path::new("/etc/egressd/config.toml"),
            default,
            remove,
        )
    }

    #[test]
    fn merges_with_what_is_there() {
        let doc = m(
            Some(
                r#"{"log-driver": "journald", "runtimes": {"gvisor": {"path": "/usr/bin/runsc"}}}"#,
            ),
            false,
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(doc["log-driver"], "journald");
        assert_eq!(doc["runtimes"]["gvisor"]["path"], "/usr/bin/runsc");
        assert_eq!(doc["runtimes"]["egressd"]["path"], "/usr/bin/egressd");
        assert_eq!(
            doc["runtimes"]["egressd"]["runtimeArgs"],
            json!(["runtime", "--config", "/etc/egressd/config.toml"])
        );
        assert!(doc.get("default-runtime").is_none());
        // Idempotent: the same again changes nothing.
        assert_eq!(m(Some(&doc.to_string()), false, false).unwrap(), None);
    }

    #[test]
    fn default_runtime_and_removal() {
        let doc = m(None, true, false).unwrap().unwrap();
        assert_eq!(doc["default-runtime"], "egressd");
        // Keys stay, so that dockerd's reload applies them: no runtimes, runc as the default.
        let removed = m(Some(&doc.to_string()), false, true).unwrap().unwrap();
        assert_eq!(removed, json!({"runtimes": {}, "default-runtime": "runc"}));
        assert_eq!(m(Some(&removed.to_string()), false, true).unwrap(), None);
        // Removal leaves other runtimes and another default runtime alone.
        let other = r#"{"default-runtime": "gvisor", "runtimes": {"egressd": {"path": "/x"}, "gvisor": {"path": "/y"}}}"#;
        assert_eq!(
            m(Some(other), false, true).unwrap().unwrap(),
            json!({"default-runtime": "gvisor", "runtimes": {"gvisor": {"path": "/y"}}})
        );
        assert_eq!(m(Some("{}"), false, true).unwrap(), None);
    }

    #[test]
    fn refuses_what_it_cannot_merge() {
        assert!(
            m(Some("{nope"), false, false)
                .unwrap_err()
                .contains("not valid JSON")
        );
        assert!(m(Some("[]"), false, false).is_err());
        assert!(m(Some(r#"{"runtimes": 3}"#), false, false).is_err());
    }
}
