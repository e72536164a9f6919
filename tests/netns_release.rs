//! `egressd release` against the real kernel: a table programmed by the engine in a throwaway
//! namespace, found by `release --all --dry-run`, deleted by `release --netns`, and the
//! namespace's traffic checked before and after with real TCP connections. Needs root.
//!
//! Only `--dry-run` is used with `--all` here: the other tests run in parallel with tables in
//! their own namespaces, which a real `--all` would delete. `scripts/test-packaging.sh` runs
//! the real `--all` (through `uninstall.sh --release`) once nothing else runs.

mod common;

use std::path::Path;
use std::process::Command;

use common::Pair;
use egressd::firewall::{LogSettings, NsFirewall, Ruleset};

/// Runs `egressd release ARGS` with an empty config and a control socket nobody listens on
/// (so a daemon running on this machine does not make it refuse); returns success and stdout.
fn release(dir: &Path, args: &[&str]) -> (bool, String) {
    let config = dir.join("config.toml");
    std::fs::write(&config, "").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_egressd"))
        .arg("release")
        .args(args)
        .args(["--config", config.to_str().unwrap()])
        .args(["--socket", dir.join("none.sock").to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "egressd release {args:?}:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), stdout)
}

#[test]
fn release_deletes_the_table_and_the_namespace_is_open_again() {
    let dir = tempfile::tempdir().unwrap();
    let pair = Pair::with_prefix("egrel");
    pair.tcp_echo(443);
    let server = pair.v4(1);
    pair.tcp_roundtrip(server, 443)
        .expect("baseline: no table yet");

    let fw = NsFirewall::open(&pair.client).unwrap();
    fw.apply(&Ruleset::quarantine(LogSettings::default()))
        .unwrap();
    assert!(
        pair.connect(server, 443).is_err(),
        "the quarantine table denies"
    );

    // --all --dry-run finds the namespace (no process in it: by its bind mount) and only looks.
    let (ok, out) = release(dir.path(), &["--all", "--dry-run"]);
    assert!(ok, "{out}");
    let line = out
        .lines()
        .find(|l| l.contains(&format!("run/netns/{} ", pair.client_name)))
        .unwrap_or_else(|| panic!("client netns not listed:\n{out}"));
    assert!(line.starts_with("would release"), "{line}");
    assert!(
        !out.contains(&format!("run/netns/{} ", pair.server_name)),
        "the server namespace has no table:\n{out}"
    );
    assert!(fw.table_exists().unwrap(), "a dry run deletes nothing");
    assert!(pair.connect(server, 443).is_err(), "still denied");

    // Released by path: the table is gone and traffic flows again.
    let client_path = pair.client.path().to_str().unwrap().to_string();
    let (ok, out) = release(dir.path(), &["--netns", &client_path]);
    assert!(ok, "{out}");
    assert!(out.starts_with("released"), "{out}");
    assert!(out.contains("1 table(s) deleted"), "{out}");
    assert!(!fw.table_exists().unwrap(), "table gone");
    pair.tcp_roundtrip(server, 443)
        .expect("open after the release");

    // Again: nothing to do, not an error.
    let (ok, out) = release(dir.path(), &["--netns", &client_path]);
    assert!(ok, "{out}");
    assert!(
        out.contains("0 table(s) deleted, 1 namespace(s) without one, 0 error(s)"),
        "{out}"
    );
}

#[test]
fn release_refuses_bad_targets_before_changing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _) = release(dir.path(), &["--netns", "/run/netns/egressd-no-such-ns"]);
    assert!(!ok);
    // No target at all is a usage error.
    let out = Command::new(env!("CARGO_BIN_EXE_egressd"))
        .arg("release")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--all"),
        "usage names the choices"
    );
}
