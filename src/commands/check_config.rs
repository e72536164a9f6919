//! `egressd check-config`: validate the config, every profile, and optionally a label set.
//!
//! Exit 0 when everything is valid; 1 with every error on stderr otherwise (a label set that
//! compiles to a quarantine counts as an error). Results go to stdout.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use crate::policy::config::{self, Config};
use crate::policy::labels::{self, compile};
use crate::policy::{Ports, ProfileSet};

/// Arguments of `egressd check-config`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CheckConfigArgs {
    /// Config file. Without this flag /etc/egressd/config.toml is read if it exists, and the
    /// built-in defaults are used if it does not; a file given here must exist.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Profile directory (repeatable, later ones override earlier ones). Replaces
    /// `profile_dirs` from the config.
    #[arg(long = "profiles-dir", value_name = "DIR")]
    pub profiles_dirs: Vec<PathBuf>,

    /// A container label, KEY=VALUE (repeatable). When given, the labels are compiled with
    /// the config and profiles and the resulting policy is printed.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// Runs the command, printing to stdout and stderr.
pub fn run(args: &CheckConfigArgs) -> ExitCode {
    let stdout = io::stdout();
    let stderr = io::stderr();
    let ok = check(args, &mut stdout.lock(), &mut stderr.lock());
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The command's work with injectable output; returns whether everything was valid.
/// Write errors on `out`/`err` are ignored (there is nowhere left to report them).
pub fn check(args: &CheckConfigArgs, out: &mut dyn Write, err: &mut dyn Write) -> bool {
    let mut errors: Vec<String> = Vec::new();

    // Config.
    let (path, explicit) = match &args.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(config::DEFAULT_PATH), false),
    };
    let loaded = if explicit {
        Config::load(&path).map(Some)
    } else {
        Config::load_optional(&path)
    };
    let mut cfg = match loaded {
        Ok(Some(cfg)) => {
            let _ = writeln!(out, "config {}: ok", path.display());
            cfg
        }
        Ok(None) => {
            let _ = writeln!(
                out,
                "config {}: not found; using the built-in defaults",
                path.display()
            );
            Config::default()
        }
        Err(es) => {
            errors.extend(es.iter().map(ToString::to_string));
            let _ = writeln!(
                out,
                "config {}: INVALID; checking the rest with the built-in defaults",
                path.display()
            );
            Config::default()
        }
    };
    if !args.profiles_dirs.is_empty() {
        cfg.profile_dirs = args.profiles_dirs.clone();
    }

    // Profiles.
    let profiles = ProfileSet::load_dirs(&cfg.profile_dirs, &cfg.rule_options());
    for dir in profiles.missing_dirs() {
        let _ = writeln!(
            out,
            "note: profile directory {} does not exist",
            dir.display()
        );
    }
    errors.extend(profiles.errors().iter().map(ToString::to_string));
    let dirs: Vec<String> = cfg
        .profile_dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect();
    let _ = writeln!(
        out,
        "profiles: {} valid (from {})",
        profiles.len(),
        if dirs.is_empty() {
            "no directories".to_string()
        } else {
            dirs.join(", ")
        }
    );
    let width = profiles.names().map(str::len).max().unwrap_or(0);
    for p in profiles.iter() {
        let _ = writeln!(
            out,
            "  {:width$}  {} rule(s)  {}  [{}]",
            p.name,
            p.rules.len(),
            p.description,
            p.path.display()
        );
    }

    // Labels.
    if !args.labels.is_empty() {
        let mut map = BTreeMap::new();
        for (k, v) in &args.labels {
            if map.insert(k.clone(), v.clone()).is_some() {
                errors.push(format!("--label {k}: given more than once"));
            }
        }
        let _ = writeln!(out, "labels:");
        match compile(&map, &cfg, &profiles) {
            None => {
                let _ = writeln!(
                    out,
                    "  not managed: {}.enable is not \"true\", so egressd leaves this container alone",
                    cfg.label_prefix
                );
                let stray = labels::stray_labels(&map, &cfg);
                if !stray.is_empty() {
                    let _ = writeln!(
                        err,
                        "warning: {} set without {}.enable=true; these labels have no effect",
                        stray.join(", "),
                        cfg.label_prefix
                    );
                }
            }
            Some(policy) => {
                for line in policy.to_string().lines() {
                    let _ = writeln!(out, "  {line}");
                }
                errors.extend(policy.errors.iter().cloned());
                for rule in &policy.rules {
                    // Wildcards need DNS-aware enforcement: in resolve mode there is no
                    // name to resolve. Say so rather than surprise the admin.
                    if matches!(rule.host, crate::policy::Host::Wildcard(_))
                        && cfg.dns.mode == config::DnsMode::Resolve
                    {
                        let _ = writeln!(
                            err,
                            "warning: {} {}/{}: wildcard rules only match in dns.mode = \"proxy\"",
                            rule.host,
                            Ports(&rule.ports),
                            rule.proto
                        );
                    }
                }
            }
        }
    }

    for e in &errors {
        let _ = writeln!(err, "error: {e}");
    }
    if errors.is_empty() {
        let _ = writeln!(out, "all valid");
        true
    } else {
        let _ = writeln!(err, "{} error(s)", errors.len());
        false
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;

    use super::*;

    fn run_check(args: &CheckConfigArgs) -> (bool, String, String) {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let ok = check(args, &mut out, &mut err);
        (
            ok,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, text).unwrap();
        p
    }

    fn label(k: &str, v: &str) -> (String, String) {
        (k.into(), v.into())
    }

    #[test]
    fn valid_setup_with_labels() {
        let dir = tempfile::tempdir().unwrap();
        let profiles = dir.path().join("profiles");
        fs::create_dir(&profiles).unwrap();
        write(
            &profiles,
            "openai.toml",
            "description = \"OpenAI API\"\n[[allow]]\nhost = \"api.openai.com\"\n",
        );
        let cfg = write(dir.path(), "config.toml", "log_format = \"json\"\n");
        let args = CheckConfigArgs {
            config: Some(cfg),
            profiles_dirs: vec![profiles],
            labels: vec![
                label("egressd.enable", "true"),
                label("egressd.profiles", "openai"),
                label("egressd.allow", "10.0.0.0/8:5432"),
            ],
        };
        let (ok, out, err) = run_check(&args);
        assert!(ok, "{out}\n{err}");
        assert_eq!(err, "");
        assert!(out.contains("profiles: 1 valid"), "{out}");
        assert!(out.contains("  openai  1 rule(s)  OpenAI API"), "{out}");
        assert!(
            out.contains("    api.openai.com 443/tcp  (from profile openai)"),
            "{out}"
        );
        assert!(
            out.contains("    10.0.0.0/8 5432/tcp  (from label egressd.allow)"),
            "{out}"
        );
        assert!(out.ends_with("all valid\n"), "{out}");
    }

    #[test]
    fn every_error_is_listed() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = write(dir.path(), "config.toml", "default_mode = \"audit\"\n");
        let profiles = dir.path().join("profiles");
        fs::create_dir(&profiles).unwrap();
        write(&profiles, "a.toml", "[[allow]]\nhost = \"a..com\"\n");
        write(&profiles, "b.toml", "[[allow]]\nhots = \"b.com\"\n");
        let args = CheckConfigArgs {
            config: Some(cfg.clone()),
            profiles_dirs: vec![profiles],
            labels: vec![
                label("egressd.enable", "true"),
                label("egressd.profiles", "a"),
            ],
        };
        let (ok, out, err) = run_check(&args);
        assert!(!ok);
        assert!(out.contains("INVALID"), "{out}");
        assert!(out.contains("QUARANTINED"), "{out}");
        let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
        assert_eq!(errors.len(), 4, "{err}");
        assert!(
            errors[0].contains(&format!("{}:1:16: \"audit\"", cfg.display())),
            "{err}"
        );
        assert!(errors[1].contains("a.toml:2:8: \"a..com\""), "{err}");
        assert!(
            errors[2].contains("b.toml:2:1: \"hots\": unknown field"),
            "{err}"
        );
        assert!(
            errors[3].contains("label egressd.profiles, column 1: \"a\": profile a is invalid"),
            "{err}"
        );
        assert!(err.ends_with("4 error(s)\n"), "{err}");
    }

    #[test]
    fn explicit_missing_config_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let args = CheckConfigArgs {
            config: Some(dir.path().join("nope.toml")),
            profiles_dirs: vec![dir.path().to_path_buf()],
            labels: vec![],
        };
        let (ok, _, err) = run_check(&args);
        assert!(!ok);
        assert!(err.contains("nope.toml: cannot read config"), "{err}");
    }

    #[test]
    fn not_managed_labels_warn() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = write(dir.path(), "config.toml", "");
        let args = CheckConfigArgs {
            config: Some(cfg),
            profiles_dirs: vec![dir.path().join("missing")],
            labels: vec![label("egressd.allow", "a.com")],
        };
        let (ok, out, err) = run_check(&args);
        assert!(ok, "{err}");
        assert!(out.contains("note: profile directory"), "{out}");
        assert!(out.contains("not managed"), "{out}");
        assert!(
            err.contains("warning: egressd.allow set without egressd.enable=true"),
            "{err}"
        );
    }

    #[test]
    fn duplicate_label_flag_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = write(dir.path(), "config.toml", "");
        let args = CheckConfigArgs {
            config: Some(cfg),
            profiles_dirs: vec![dir.path().to_path_buf()],
            labels: vec![
                label("egressd.enable", "true"),
                label("egressd.enable", "true"),
            ],
        };
        let (ok, _, err) = run_check(&args);
        assert!(!ok);
        assert!(
            err.contains("--label egressd.enable: given more than once"),
            "{err}"
        );
    }

    #[test]
    fn label_flag_parser() {
        assert_eq!(parse_label("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert_eq!(parse_label("a=").unwrap(), ("a".into(), "".into()));
        assert!(parse_label("a").is_err());
        assert!(parse_label("=b").is_err());
    }

    #[test]
    fn clap_parses_flags() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: CheckConfigArgs,
        }
        let cli = Cli::try_parse_from([
            "egressd",
            "--config",
            "/c.toml",
            "--profiles-dir",
            "/a",
            "--profiles-dir",
            "/b",
            "--label",
            "egressd.enable=true",
            "--label",
            "egressd.allow=a.com:80,443",
        ])
        .unwrap();
        assert_eq!(cli.args.config, Some(PathBuf::from("/c.toml")));
        assert_eq!(
            cli.args.profiles_dirs,
            vec![PathBuf::from("/a"), PathBuf::from("/b")]
        );
        assert_eq!(cli.args.labels[1], label("egressd.allow", "a.com:80,443"));
    }
}
