//! Container labels → [`ContainerPolicy`].
//!
//! | label (prefix from config) | value |
//! |---|---|
//! | `egressd.enable` | `true` opts in; `false` or no label: not managed; anything else quarantines |
//! | `egressd.profiles` | comma-separated profile names |
//! | `egressd.allow` | comma-separated inline rules (see [`super::rule`]) |
//! | `egressd.mode` | `enforce` or `report`; default from `default_mode` in the config |
//! | `egressd.dns` | `proxy` or `resolve`; default from `dns.mode` in the config |
//! | `egressd.limit` | budgets enforced by the kernel (see [`super::limit`]) |
//!
//! Any error (bad value, unknown profile, unknown `egressd.*` label, inline rules when the
//! config forbids them) gives [`ContainerPolicy::quarantine`]: no rules, every error listed.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use super::config::{Config, DnsMode};
use super::limit::{Limits, parse_limits};
use super::profile::{Lookup, ProfileSet, is_valid_name};
use super::rule::{merge_duplicates, parse_rule_list, split_tokens};
use super::{ContainerPolicy, Mode, RuleSource};

/// Label suffixes egressd reads, after `PREFIX.`.
pub const ENABLE: &str = "enable";
pub const PROFILES: &str = "profiles";
pub const ALLOW: &str = "allow";
pub const MODE: &str = "mode";
pub const DNS: &str = "dns";
pub const LIMIT: &str = "limit";
/// All known suffixes, in the order they are documented.
pub const KNOWN: [&str; 6] = [ENABLE, PROFILES, ALLOW, MODE, DNS, LIMIT];

/// One problem with a label. `Display` gives the strings stored in
/// [`ContainerPolicy::errors`], e.g.
/// `label egressd.allow, column 12: "api.openai.com:0": port 0 is out of range 1-65535`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelError {
    /// Full label key (`egressd.allow`).
    pub key: String,
    /// 1-based column (in characters) and token in the label value, when the error is about
    /// part of the value.
    pub at: Option<(usize, String)>,
    pub message: String,
}

impl fmt::Display for LabelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.at {
            Some((column, token)) => write!(
                f,
                "label {}, column {column}: {token:?}: {}",
                self.key, self.message
            ),
            None => write!(f, "label {}: {}", self.key, self.message),
        }
    }
}

/// Compiles a container's labels. `None`: the container is not managed (no `PREFIX.enable`
/// label, or `PREFIX.enable=false`). Otherwise the policy, or a quarantine with every error.
pub fn compile(
    labels: &BTreeMap<String, String>,
    config: &Config,
    profiles: &ProfileSet,
) -> Option<ContainerPolicy> {
    let prefix = format!("{}.", config.label_prefix);
    let key = |suffix: &str| format!("{prefix}{suffix}");
    let mut errors: Vec<LabelError> = Vec::new();

    match labels.get(&key(ENABLE)).map(String::as_str) {
        None | Some("false") => return None,
        Some("true") => {}
        Some(other) => errors.push(LabelError {
            key: key(ENABLE),
            at: Some((1, other.to_string())),
            message: "must be \"true\" (manage this container) or \"false\" (leave it alone)"
                .into(),
        }),
    }

    let mut mode = config.default_mode;
    let mut dns = config.dns.mode;
    let mut profile_names: Vec<String> = Vec::new();
    let mut rules = Vec::new();
    let mut inline = Vec::new();
    let mut limits = Limits::default();

    for (full_key, value) in labels {
        let Some(suffix) = full_key.strip_prefix(&prefix) else {
            continue;
        };
        match suffix {
            ENABLE => {}
            MODE => {
                let (column, token) = single_token(value);
                match token {
                    "enforce" => mode = Mode::Enforce,
                    "report" => mode = Mode::Report,
                    _ => errors.push(LabelError {
                        key: full_key.clone(),
                        at: Some((column, token.to_string())),
                        message: "must be \"enforce\" or \"report\"".into(),
                    }),
                }
            }
            DNS => {
                let (column, token) = single_token(value);
                match token {
                    "proxy" => dns = DnsMode::Proxy,
                    "resolve" => dns = DnsMode::Resolve,
                    _ => errors.push(LabelError {
                        key: full_key.clone(),
                        at: Some((column, token.to_string())),
                        message: "must be \"proxy\" (egressd answers the container's DNS) or \"resolve\" (egressd resolves the allowed names itself)".into(),
                    }),
                }
            }
            PROFILES => {
                let mut seen = HashSet::new();
                for (column, name) in split_tokens(value) {
                    let mut err = |message: String| {
                        errors.push(LabelError {
                            key: full_key.clone(),
                            at: Some((column, name.to_string())),
                            message,
                        })
                    };
                    if name.is_empty() {
                        err("empty profile name (two commas in a row, or a leading or trailing comma)".into());
                        continue;
                    }
                    if !is_valid_name(name) {
                        err("not a valid profile name ([a-z0-9][a-z0-9_-]*)".into());
                        continue;
                    }
                    if !seen.insert(name) {
                        continue;
                    }
                    match profiles.lookup(name) {
                        Lookup::Found(p) => {
                            profile_names.push(name.to_string());
                            rules.extend(p.rules.iter().cloned());
                        }
                        Lookup::Broken(path) => err(format!(
                            "profile {name} is invalid (see the errors for {}; `egressd check-config` lists them)",
                            path.display()
                        )),
                        Lookup::Unavailable(dir) => err(format!(
                            "profiles are unavailable because profile directory {} could not be read",
                            dir.display()
                        )),
                        Lookup::Unknown => err(unknown_profile(profiles)),
                    }
                }
            }
            ALLOW => {
                if !config.allow_inline_rules {
                    errors.push(LabelError {
                        key: full_key.clone(),
                        at: None,
                        message: "inline rules are forbidden on this host (allow_inline_rules = false in the config); use profiles".into(),
                    });
                    continue;
                }
                let source = RuleSource::Label(full_key.clone());
                match parse_rule_list(value, &source, &config.rule_options()) {
                    Ok(r) => inline.extend(r),
                    Err(token_errors) => {
                        errors.extend(token_errors.into_iter().map(|e| LabelError {
                            key: full_key.clone(),
                            at: Some((e.column, e.token)),
                            message: e.error.to_string(),
                        }))
                    }
                }
            }
            LIMIT => match parse_limits(value) {
                Ok(l) => limits = l,
                Err(token_errors) => errors.extend(token_errors.into_iter().map(|e| LabelError {
                    key: full_key.clone(),
                    at: Some((e.column, e.token)),
                    message: e.error.to_string(),
                })),
            },
            unknown => errors.push(LabelError {
                key: full_key.clone(),
                at: None,
                message: unknown_label(&prefix, unknown),
            }),
        }
    }

    if !errors.is_empty() {
        return Some(ContainerPolicy::quarantine(
            errors.iter().map(ToString::to_string).collect(),
        ));
    }
    rules.extend(inline);
    Some(ContainerPolicy {
        mode,
        dns,
        profiles: profile_names,
        rules: merge_duplicates(rules),
        errors: Vec::new(),
        limits,
    })
}

/// Labels with the egressd prefix on a container that is not opted in (no `PREFIX.enable`):
/// most likely a forgotten `PREFIX.enable=true`. Worth a warning; the container is not
/// managed either way.
pub fn stray_labels(labels: &BTreeMap<String, String>, config: &Config) -> Vec<String> {
    let prefix = format!("{}.", config.label_prefix);
    if labels.contains_key(&format!("{prefix}{ENABLE}")) {
        return Vec::new();
    }
    labels
        .keys()
        .filter(|k| k.starts_with(&prefix))
        .cloned()
        .collect()
}

/// A value that is one token: trimmed, with the column of its first character.
fn single_token(value: &str) -> (usize, &str) {
    let lead = value.len() - value.trim_start().len();
    (value[..lead].chars().count() + 1, value.trim())
}

fn unknown_profile(profiles: &ProfileSet) -> String {
    const SHOW: usize = 20;
    let names: Vec<&str> = profiles.names().collect();
    if names.is_empty() {
        return "no such profile (no profiles are installed)".into();
    }
    let mut list = names
        .iter()
        .take(SHOW)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOW {
        list.push_str(", ...");
    }
    format!("no such profile (known: {list})")
}

fn unknown_label(prefix: &str, suffix: &str) -> String {
    let known: Vec<String> = KNOWN.iter().map(|k| format!("{prefix}{k}")).collect();
    let closest = KNOWN
        .iter()
        .map(|k| (edit_distance(k, suffix), k))
        .min()
        .filter(|(d, _)| *d <= 2);
    match closest {
        Some((_, k)) => format!(
            "unknown label (did you mean {prefix}{k}?); known labels are {}",
            known.join(", ")
        ),
        None => format!("unknown label; known labels are {}", known.join(", ")),
    }
}

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::policy::{Host, PortRange, Profile, Proto, Rule};

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn profile(name: &str, hosts: &[&str]) -> Profile {
        Profile {
            name: name.into(),
            description: String::new(),
            rules: hosts
                .iter()
                .map(|h| Rule {
                    host: Host::Domain(h.to_string()),
                    ports: vec![PortRange::single(443)],
                    proto: Proto::Tcp,
                    source: RuleSource::Profile(name.into()),
                })
                .collect(),
            path: PathBuf::from(format!("/p/{name}.toml")),
        }
    }

    fn profiles() -> ProfileSet {
        ProfileSet::from_profiles([
            profile("openai", &["api.openai.com"]),
            profile("pypi", &["pypi.org", "files.pythonhosted.org"]),
        ])
    }

    fn run(pairs: &[(&str, &str)]) -> Option<ContainerPolicy> {
        compile(&labels(pairs), &Config::default(), &profiles())
    }

    fn errors_of(pairs: &[(&str, &str)]) -> Vec<String> {
        let p = run(pairs).expect("managed");
        assert!(p.is_quarantined(), "{p:?}");
        assert!(p.rules.is_empty(), "a quarantine has no rules");
        assert!(p.profiles.is_empty());
        p.errors
    }

    #[test]
    fn not_managed() {
        assert_eq!(run(&[]), None);
        assert_eq!(run(&[("other.label", "x")]), None);
        assert_eq!(
            run(&[("egressd.enable", "false"), ("egressd.allow", "a.com")]),
            None
        );
        // Without enable, other egressd labels do not opt in (stray_labels reports them).
        let l = labels(&[("egressd.allow", "a.com")]);
        assert_eq!(compile(&l, &Config::default(), &profiles()), None);
        assert_eq!(stray_labels(&l, &Config::default()), vec!["egressd.allow"]);
        assert!(
            stray_labels(&labels(&[("egressd.enable", "false")]), &Config::default()).is_empty()
        );
    }

    #[test]
    fn enabled_without_rules_is_empty_policy() {
        let p = run(&[("egressd.enable", "true")]).unwrap();
        assert_eq!(p, ContainerPolicy::default());
        assert!(!p.is_quarantined());
    }

    #[test]
    fn enable_garbage_quarantines() {
        assert_eq!(
            errors_of(&[("egressd.enable", "yes"), ("egressd.profiles", "openai")]),
            vec![
                "label egressd.enable, column 1: \"yes\": must be \"true\" (manage this container) or \"false\" (leave it alone)"
            ]
        );
        assert_eq!(errors_of(&[("egressd.enable", "True")]).len(), 1);
    }

    #[test]
    fn profiles_and_inline_rules() {
        let p = run(&[
            ("egressd.enable", "true"),
            ("egressd.profiles", "pypi, openai,pypi"),
            ("egressd.allow", "api.openai.com,10.0.0.5:5432"),
            ("egressd.mode", "report"),
        ])
        .unwrap();
        assert_eq!(p.mode, Mode::Report);
        assert_eq!(p.profiles, vec!["pypi", "openai"]);
        let summary: Vec<(String, RuleSource)> = p
            .rules
            .iter()
            .map(|r| (r.host.to_string(), r.source.clone()))
            .collect();
        // Duplicate api.openai.com:443 from the label merged into the profile's rule.
        assert_eq!(
            summary,
            vec![
                ("pypi.org".into(), RuleSource::Profile("pypi".into())),
                (
                    "files.pythonhosted.org".into(),
                    RuleSource::Profile("pypi".into())
                ),
                (
                    "api.openai.com".into(),
                    RuleSource::Profile("openai".into())
                ),
                ("10.0.0.5".into(), RuleSource::Label("egressd.allow".into())),
            ]
        );
    }

    #[test]
    fn default_mode_from_config() {
        let cfg = Config {
            default_mode: Mode::Report,
            ..Config::default()
        };
        let p = compile(&labels(&[("egressd.enable", "true")]), &cfg, &profiles()).unwrap();
        assert_eq!(p.mode, Mode::Report);
    }

    #[test]
    fn dns_label_overrides_the_config_and_bad_values_quarantine() {
        let mut cfg = Config::default();
        cfg.dns.mode = DnsMode::Resolve;
        let p = compile(&labels(&[("egressd.enable", "true")]), &cfg, &profiles()).unwrap();
        assert_eq!(p.dns, DnsMode::Resolve);
        let p = compile(
            &labels(&[("egressd.enable", "true"), ("egressd.dns", "proxy")]),
            &cfg,
            &profiles(),
        )
        .unwrap();
        assert_eq!(p.dns, DnsMode::Proxy);
        cfg.dns.mode = DnsMode::Proxy;
        let p = compile(
            &labels(&[("egressd.enable", "true"), ("egressd.dns", "resolve")]),
            &cfg,
            &profiles(),
        )
        .unwrap();
        assert_eq!(p.dns, DnsMode::Resolve);
        let errs = errors_of(&[("egressd.enable", "true"), ("egressd.dns", "tunnel")]);
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].starts_with("label egressd.dns, column 1: \"tunnel\": must be \"proxy\""),
            "{errs:?}"
        );
    }

    #[test]
    fn bad_mode_quarantines() {
        assert_eq!(
            errors_of(&[("egressd.enable", "true"), ("egressd.mode", " audit")]),
            vec!["label egressd.mode, column 2: \"audit\": must be \"enforce\" or \"report\""]
        );
    }

    #[test]
    fn unknown_profile_quarantines() {
        assert_eq!(
            errors_of(&[
                ("egressd.enable", "true"),
                ("egressd.profiles", "openai,pypy")
            ]),
            vec![
                "label egressd.profiles, column 8: \"pypy\": no such profile (known: openai, pypi)"
            ]
        );
        let errs = errors_of(&[
            ("egressd.enable", "true"),
            ("egressd.profiles", "openai,,Bad"),
        ]);
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].starts_with("label egressd.profiles, column 8: \"\": empty profile name"));
        assert!(
            errs[1]
                .starts_with("label egressd.profiles, column 9: \"Bad\": not a valid profile name")
        );
    }

    #[test]
    fn unknown_label_key_quarantines() {
        assert_eq!(
            errors_of(&[("egressd.enable", "true"), ("egressd.allows", "a.com")]),
            vec![
                "label egressd.allows: unknown label (did you mean egressd.allow?); known labels are egressd.enable, egressd.profiles, egressd.allow, egressd.mode, egressd.dns, egressd.limit"
            ]
        );
        let errs = errors_of(&[("egressd.enable", "true"), ("egressd.foo", "")]);
        assert!(
            errs[0].starts_with("label egressd.foo: unknown label; known"),
            "{errs:?}"
        );
    }

    #[test]
    fn inline_rules_forbidden_by_config_quarantines() {
        let cfg = Config {
            allow_inline_rules: false,
            ..Config::default()
        };
        let p = compile(
            &labels(&[
                ("egressd.enable", "true"),
                ("egressd.profiles", "openai"),
                ("egressd.allow", "a.com"),
            ]),
            &cfg,
            &profiles(),
        )
        .unwrap();
        assert!(p.rules.is_empty());
        assert_eq!(
            p.errors,
            vec![
                "label egressd.allow: inline rules are forbidden on this host (allow_inline_rules = false in the config); use profiles"
            ]
        );
    }

    #[test]
    fn rule_errors_name_key_column_and_token() {
        assert_eq!(
            errors_of(&[
                ("egressd.enable", "true"),
                ("egressd.allow", "pypi.org,a.com,api.openai.com:0"),
            ]),
            vec![
                "label egressd.allow, column 16: \"api.openai.com:0\": port 0 is out of range 1-65535"
            ]
        );
    }

    #[test]
    fn broad_cidr_label_follows_config() {
        let l = labels(&[("egressd.enable", "true"), ("egressd.allow", "0.0.0.0/0")]);
        let p = compile(&l, &Config::default(), &profiles()).unwrap();
        assert!(p.is_quarantined());
        let cfg = Config {
            allow_broad_cidrs: true,
            ..Config::default()
        };
        let p = compile(&l, &cfg, &profiles()).unwrap();
        assert!(!p.is_quarantined());
        assert_eq!(p.rules.len(), 1);
    }

    #[test]
    fn all_errors_collected() {
        let errs = errors_of(&[
            ("egressd.enable", "1"),
            ("egressd.allow", "a..com"),
            ("egressd.mode", "x"),
            ("egressd.profiles", "nope"),
            ("egressd.typo", "x"),
        ]);
        assert_eq!(errs.len(), 5, "{errs:?}");
    }

    #[test]
    fn custom_prefix() {
        let cfg = Config {
            label_prefix: "com.example.fw".into(),
            ..Config::default()
        };
        let l = labels(&[
            ("com.example.fw.enable", "true"),
            ("com.example.fw.allow", "a.com"),
            ("egressd.enable", "garbage"),
        ]);
        let p = compile(&l, &cfg, &profiles()).unwrap();
        assert!(!p.is_quarantined(), "{p:?}");
        assert_eq!(
            p.rules[0].source,
            RuleSource::Label("com.example.fw.allow".into())
        );
    }

    #[test]
    fn broken_and_unavailable_profiles_quarantine() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bad.toml"), "[[allow]]\nhost = \"*\"\n").unwrap();
        let set = ProfileSet::load_dirs(&[dir.path()], &Default::default());
        let l = labels(&[("egressd.enable", "true"), ("egressd.profiles", "bad")]);
        let p = compile(&l, &Config::default(), &set).unwrap();
        assert!(p.errors[0].contains("profile bad is invalid"), "{p:?}");

        // A profile dir that is a file cannot be listed: profiles fail closed.
        let file = dir.path().join("bad.toml");
        let set = ProfileSet::load_dirs(&[file.as_path()], &Default::default());
        assert_eq!(set.errors().len(), 1);
        let p = compile(&l, &Config::default(), &set).unwrap();
        assert!(p.errors[0].contains("profiles are unavailable"), "{p:?}");
    }

    #[test]
    fn limit_label_sets_budgets_and_bad_budgets_quarantine() {
        let p = run(&[
            ("egressd.enable", "true"),
            ("egressd.profiles", "openai"),
            ("egressd.limit", "conn:60/minute,bytes:50MB/hour"),
        ])
        .unwrap();
        assert!(!p.is_quarantined(), "{p:?}");
        assert_eq!(p.limits.to_string(), "conn:60/minute,bytes:50MB/hour");
        assert_eq!(p.rules.len(), 1);
        assert_eq!(
            errors_of(&[
                ("egressd.enable", "true"),
                ("egressd.profiles", "openai"),
                ("egressd.limit", "conn:60/minute, bytes:50MB/week"),
            ]),
            vec![
                "label egressd.limit, column 17: \"bytes:50MB/week\": unknown period \"week\"; use second, minute, hour or day"
            ]
        );
        // A misspelt key is caught as an unknown label, like any other.
        let errs = errors_of(&[
            ("egressd.enable", "true"),
            ("egressd.limits", "conn:1/second"),
        ]);
        assert!(errs[0].contains("did you mean egressd.limit?"), "{errs:?}");
    }

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("allow", "allows"), 1);
        assert_eq!(edit_distance("profiles", "profile"), 1);
        assert_eq!(edit_distance("mode", "mdoe"), 2);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
