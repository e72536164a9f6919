//! The profiles and example config shipped in the repository are valid.

use std::collections::BTreeMap;
use std::path::PathBuf;

use egressd::policy::{Config, Host, ProfileSet, RuleOptions, compile};

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[test]
fn shipped_profiles_are_valid_and_complete() {
    let set = ProfileSet::load_dirs(&[repo("profiles")], &RuleOptions::default());
    let errors: Vec<String> = set.errors().iter().map(ToString::to_string).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    assert!(set.missing_dirs().is_empty());
    let names: Vec<&str> = set.names().collect();
    for expected in [
        "anthropic",
        "crates-io",
        "gemini",
        "github",
        "huggingface",
        "mistral",
        "npm",
        "openai",
        "pypi",
    ] {
        assert!(
            names.contains(&expected),
            "missing profile {expected}: {names:?}"
        );
    }
    for p in set.iter() {
        assert!(!p.description.is_empty(), "{} has no description", p.name);
        assert!(!p.rules.is_empty(), "{} has no rules", p.name);
        // Shipped profiles must work in resolve mode: exact names, no wildcards.
        for r in &p.rules {
            assert!(
                matches!(r.host, Host::Domain(_)),
                "{}: {:?}",
                p.name,
                r.host
            );
        }
    }
    let github = set.get("github").unwrap();
    let line: Vec<String> = github.rules.iter().map(ToString::to_string).collect();
    assert!(
        line.contains(&"github.com 22,443/tcp  (from profile github)".to_string()),
        "{line:#?}"
    );
}

#[test]
fn shipped_profiles_cite_their_documentation() {
    for entry in std::fs::read_dir(repo("profiles")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.lines()
                .any(|l| l.starts_with('#') && l.contains("https://")),
            "{} has no documentation URL comment",
            path.display()
        );
    }
}

#[test]
fn example_config_is_the_default() {
    let cfg = Config::load(&repo("config/config.toml")).unwrap();
    assert_eq!(cfg, Config::default());
}

#[test]
fn shipped_profiles_compile_from_labels() {
    let cfg = Config::default();
    let set = ProfileSet::load_dirs(&[repo("profiles")], &cfg.rule_options());
    let labels: BTreeMap<String, String> = [
        ("egressd.enable", "true"),
        ("egressd.profiles", "openai,pypi"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let policy = compile(&labels, &cfg, &set).unwrap();
    assert!(!policy.is_quarantined(), "{policy}");
    assert_eq!(policy.profiles, vec!["openai", "pypi"]);
    assert_eq!(policy.rules.len(), 3);
}

#[test]
fn check_config_accepts_the_shipped_files() {
    use egressd::commands::check_config::{CheckConfigArgs, check};
    let args = CheckConfigArgs {
        config: Some(repo("config/config.toml")),
        profiles_dirs: vec![repo("profiles")],
        labels: vec![
            ("egressd.enable".into(), "true".into()),
            ("egressd.profiles".into(), "openai".into()),
            (
                "egressd.allow".into(),
                "10.0.0.0/8:5432,[fd00::/8]:53/udp".into(),
            ),
        ],
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let ok = check(&args, &mut out, &mut err);
    let (out, err) = (
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    );
    assert!(ok, "{out}\n{err}");
    assert_eq!(err, "");
    assert!(out.contains("profiles: 9 valid"), "{out}");
    assert!(
        out.contains(
            "  rules:\n    api.openai.com 443/tcp  (from profile openai)\n    10.0.0.0/8 5432/tcp  (from label egressd.allow)\n    fd00::/8 53/udp  (from label egressd.allow)\n"
        ),
        "{out}"
    );
}

/// The labels of docs/examples/docker-compose.yml compile, with the shipped profiles, to a
/// policy that is not quarantined and allows the sibling by its service name.
#[test]
fn compose_example_labels_compile() {
    let text = std::fs::read_to_string(repo("docs/examples/docker-compose.yml")).unwrap();
    let labels: BTreeMap<String, String> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("egressd."))
        .filter_map(|l| {
            let (k, v) = l.split_once(": ")?;
            Some((k.to_string(), v.trim_matches('"').to_string()))
        })
        .collect();
    assert_eq!(
        labels.keys().collect::<Vec<_>>(),
        [
            "egressd.allow",
            "egressd.enable",
            "egressd.limit",
            "egressd.profiles"
        ]
    );
    let cfg = Config::default();
    let set = ProfileSet::load_dirs(&[repo("profiles")], &cfg.rule_options());
    let policy = compile(&labels, &cfg, &set).unwrap();
    assert!(!policy.is_quarantined(), "{policy}");
    let rules: Vec<String> = policy.rules.iter().map(ToString::to_string).collect();
    assert!(
        rules.contains(&"qdrant 6333/tcp  (from label egressd.allow)".to_string()),
        "{rules:#?}"
    );
}
