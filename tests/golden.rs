//! Golden tests: labels + shipped profiles + resolved addresses → the `nft` text of the table.
//! Each case is a folder in tests/golden/ with `labels` (KEY=VALUE lines), `resolved`
//! (NAME ADDRESS SECONDS lines), optionally `config` (TOML), and `expected.nft`. No kernel,
//! no Docker.
//! Run with EGRESSD_BLESS=1 to rewrite `expected.nft` after a deliberate change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use egressd::firewall::{LogSettings, ResolvedAddr, Ruleset};
use egressd::policy::{self, Config};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn render(case: &Path) -> String {
    // An optional `config` file (TOML) in the case; the shipped profiles either way.
    let config_path = case.join("config");
    let base = match std::fs::read_to_string(&config_path) {
        Ok(text) => Config::parse(&config_path, &text).expect("valid config"),
        Err(_) => Config::default(),
    };
    let config = Config {
        profile_dirs: vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles")],
        ..base
    };
    let profiles = config.load_profiles();
    assert!(profiles.errors().is_empty(), "shipped profiles are valid");
    let labels: BTreeMap<String, String> = std::fs::read_to_string(case.join("labels"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (k, v) = l.split_once('=').expect("KEY=VALUE");
            (k.to_string(), v.to_string())
        })
        .collect();
    let mut resolved: BTreeMap<String, Vec<ResolvedAddr>> = BTreeMap::new();
    for line in std::fs::read_to_string(case.join("resolved"))
        .unwrap()
        .lines()
    {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 3 {
            continue;
        }
        resolved
            .entry(f[0].to_string())
            .or_default()
            .push(ResolvedAddr {
                addr: f[1].parse().unwrap(),
                timeout: Duration::from_secs(f[2].parse().unwrap()),
            });
    }
    let policy = policy::compile(&labels, &config, &profiles).expect("opted in");
    let mut rs = Ruleset::from_policy(&policy, &resolved, LogSettings::default());
    // As the daemon does: the config's warn-only thresholds (not in a quarantine).
    rs.anomaly = config.anomaly.clone();
    let mut out = String::new();
    if policy.is_quarantined() {
        for e in &policy.errors {
            out.push_str(&format!("# quarantined: {e}\n"));
        }
    }
    out.push_str(&rs.to_string());
    out
}

#[test]
fn golden_cases() {
    let bless = std::env::var_os("EGRESSD_BLESS").is_some();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(root())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(cases.len() >= 4, "golden cases found: {cases:?}");
    let mut failures = Vec::new();
    for case in cases {
        let got = render(&case);
        let path = case.join("expected.nft");
        if bless {
            std::fs::write(&path, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        if got != want {
            let mut diff = String::new();
            for (i, (g, w)) in got
                .lines()
                .zip(want.lines().chain(std::iter::repeat("")))
                .enumerate()
            {
                if g != w {
                    diff.push_str(&format!(
                        "  line {}:\n    want: {w}\n    got:  {g}\n",
                        i + 1
                    ));
                }
            }
            failures.push(format!("{}:\n{diff}", case.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "golden mismatches (EGRESSD_BLESS=1 to accept):\n{}",
        failures.join("\n")
    );
}
