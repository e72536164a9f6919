//! Secrets in environment variables, by name (`*_KEY`, `*_TOKEN`, `*SECRET*`, `*PASSWORD*`)
//! or by the shape of the value (`sk-…`, `ghp_…`, `AKIA…`). A finding names the variable and
//! the pattern, never the value: anyone with access to the Docker API can read the environment
//! (`docker inspect`), so the audit must not repeat it into CI logs.

use super::{Check, EnvVar, Finding, Severity};

/// The shape of a well-known credential: a prefix, then at least `min` characters from
/// `charset`.
struct Shape {
    prefix: &'static str,
    label: &'static str,
    min: usize,
    charset: fn(u8) -> bool,
    /// Also require a digit in the body (rules out hyphenated words after `sk-`).
    needs_digit: bool,
}

fn alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

fn alnum_underscore(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn alnum_dash_underscore(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

fn upper_digit(b: u8) -> bool {
    b.is_ascii_uppercase() || b.is_ascii_digit()
}

/// Checked in order: `sk-ant-` before `sk-`.
const SHAPES: [Shape; 15] = [
    Shape {
        prefix: "sk-ant-",
        label: "an Anthropic API key (sk-ant-…)",
        min: 20,
        charset: alnum_dash_underscore,
        needs_digit: false,
    },
    Shape {
        prefix: "sk-",
        label: "an OpenAI-style API key (sk-…)",
        min: 20,
        charset: alnum_dash_underscore,
        needs_digit: true,
    },
    Shape {
        prefix: "github_pat_",
        label: "a GitHub fine-grained token (github_pat_…)",
        min: 20,
        charset: alnum_underscore,
        needs_digit: false,
    },
    Shape {
        prefix: "ghp_",
        label: "a GitHub token (ghp_…)",
        min: 30,
        charset: alnum,
        needs_digit: false,
    },
    Shape {
        prefix: "gho_",
        label: "a GitHub OAuth token (gho_…)",
        min: 30,
        charset: alnum,
        needs_digit: false,
    },
    Shape {
        prefix: "ghu_",
        label: "a GitHub token (ghu_…)",
        min: 30,
        charset: alnum,
        needs_digit: false,
    },
    Shape {
        prefix: "ghs_",
        label: "a GitHub token (ghs_…)",
        min: 30,
        charset: alnum,
        needs_digit: false,
    },
    Shape {
        prefix: "AKIA",
        label: "an AWS access key id (AKIA…)",
        min: 16,
        charset: upper_digit,
        needs_digit: false,
    },
    Shape {
        prefix: "ASIA",
        label: "an AWS temporary access key id (ASIA…)",
        min: 16,
        charset: upper_digit,
        needs_digit: false,
    },
    Shape {
        prefix: "xoxb-",
        label: "a Slack bot token (xoxb-…)",
        min: 10,
        charset: alnum_dash_underscore,
        needs_digit: true,
    },
    Shape {
        prefix: "xoxp-",
        label: "a Slack user token (xoxp-…)",
        min: 10,
        charset: alnum_dash_underscore,
        needs_digit: true,
    },
    Shape {
        prefix: "xapp-",
        label: "a Slack app token (xapp-…)",
        min: 10,
        charset: alnum_dash_underscore,
        needs_digit: true,
    },
    Shape {
        prefix: "hf_",
        label: "a Hugging Face token (hf_…)",
        min: 30,
        charset: alnum,
        needs_digit: false,
    },
    Shape {
        prefix: "AIza",
        label: "a Google API key (AIza…)",
        min: 35,
        charset: alnum_dash_underscore,
        needs_digit: false,
    },
    Shape {
        prefix: "glpat-",
        label: "a GitLab token (glpat-…)",
        min: 20,
        charset: alnum_dash_underscore,
        needs_digit: false,
    },
];

/// Whether `value` contains a credential of this shape, starting at a word boundary.
fn has_shape(value: &str, shape: &Shape) -> bool {
    let bytes = value.as_bytes();
    value.match_indices(shape.prefix).any(|(at, _)| {
        let boundary = at == 0 || !bytes[at - 1].is_ascii_alphanumeric();
        let body: Vec<u8> = bytes[at + shape.prefix.len()..]
            .iter()
            .copied()
            .take_while(|b| (shape.charset)(*b))
            .collect();
        boundary
            && body.len() >= shape.min
            && (!shape.needs_digit || body.iter().any(u8::is_ascii_digit))
    })
}

/// A URL with a password in it: `postgres://user:pw@db/x`.
fn has_url_password(value: &str) -> bool {
    value.match_indices("://").any(|(at, _)| {
        let rest = &value[at + 3..];
        let authority = rest.split(['/', '?', '#', ' ']).next().unwrap_or_default();
        authority
            .rsplit_once('@')
            .and_then(|(userinfo, _)| userinfo.split_once(':'))
            .is_some_and(|(_, password)| !password.is_empty())
    })
}

/// What the value looks like, if it looks like a credential.
pub(super) fn value_pattern(value: &str) -> Option<&'static str> {
    if let Some(s) = SHAPES.iter().find(|s| has_shape(value, s)) {
        return Some(s.label);
    }
    if value.contains("-----BEGIN") && value.contains("PRIVATE KEY") {
        return Some("a PEM private key");
    }
    if has_url_password(value) {
        return Some("a URL with a password in it");
    }
    None
}

/// Which secret-like name pattern the variable's name matches. Names are split into words at
/// `_`, `-` and `.`, so `KEYBOARD_LAYOUT`, `MONKEY`, `TOKENIZERS_PARALLELISM` and `MAX_TOKENS`
/// do not match, and `*_FILE`/`*_PATH` (a pointer to a secret, the recommended way) do not
/// either.
pub(super) fn name_pattern(name: &str) -> Option<&'static str> {
    let upper = name.to_ascii_uppercase();
    let words: Vec<&str> = upper
        .split(['_', '-', '.'])
        .filter(|w| !w.is_empty())
        .collect();
    let last = *words.last()?;
    if matches!(last, "FILE" | "PATH" | "DIR" | "FILENAME") {
        return None;
    }
    if words.iter().any(|w| {
        w.contains("PASSWORD") || w.contains("PASSWD") || matches!(*w, "PASS" | "PASSPHRASE")
    }) {
        return Some("*PASSWORD*");
    }
    if words
        .iter()
        .any(|w| w.contains("SECRET") && !w.starts_with("SECRETAR"))
    {
        return Some("*SECRET*");
    }
    if last == "TOKEN" || matches!(last, "ACCESSTOKEN" | "APITOKEN" | "AUTHTOKEN") {
        return Some("*_TOKEN");
    }
    if last == "KEY" || matches!(last, "APIKEY" | "ACCESSKEY" | "PRIVATEKEY" | "AUTHKEY") {
        // Public keys and key fingerprints are not secrets (`GPG_KEY` in the official Python
        // images is the release signing key's fingerprint).
        let public = words
            .iter()
            .any(|w| matches!(*w, "PUBLIC" | "PUB" | "GPG" | "PGP"));
        return (!public).then_some("*_KEY");
    }
    if words.iter().any(|w| w.starts_with("CREDENTIAL")) {
        return Some("*CREDENTIAL*");
    }
    None
}

/// Values that cannot be a secret themselves, for name-only matches: nothing, a flag, or a
/// path to a file (the secret is elsewhere).
fn inert(value: &str) -> bool {
    let v = value.trim();
    v.is_empty()
        || v.starts_with('/')
        || matches!(
            v.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off"
        )
}

/// One finding per variable that looks like it holds a secret.
pub(super) fn check(env: &[EnvVar]) -> Vec<Finding> {
    let mut out = Vec::new();
    for var in env {
        let by_value = value_pattern(var.value());
        let by_name = name_pattern(&var.name).filter(|_| !inert(var.value()));
        let (severity, why) = match (by_name, by_value) {
            (None, None) => continue,
            (Some(n), None) => (Severity::Medium, format!("its name matches {n}")),
            (None, Some(v)) => (Severity::High, format!("its value is shaped like {v}")),
            (Some(n), Some(v)) => (
                Severity::High,
                format!("its name matches {n} and its value is shaped like {v}"),
            ),
        };
        out.push(
            Finding::new(
                Check::SecretEnv,
                severity,
                format!(
                    "environment variable {} looks like a secret: {why}. docker inspect shows it to anyone with Docker API access, and every process in the container inherits it",
                    var.name
                ),
                "pass it as a file (a Docker secret, or a read-only bind of a 0400 file named by a *_FILE variable), or keep it outside the container behind a proxy that adds it to requests",
            )
            .about(var.name.clone()),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn var(name: &str, value: &str) -> EnvVar {
        EnvVar::parse(&format!("{name}={value}"))
    }

    /// Random-looking bodies (fixed, so the tests are reproducible).
    const BODY: &str = "Q3x9TzK2mW7vB1nR8cY4pL6dF0hJ5sG";

    #[test]
    fn secret_names() {
        for (name, pattern) in [
            ("OPENAI_API_KEY", "*_KEY"),
            ("anthropic_api_key", "*_KEY"),
            ("KEY", "*_KEY"),
            ("OPENAI_APIKEY", "*_KEY"),
            ("SSH_PRIVATE_KEY", "*_KEY"),
            ("HF_TOKEN", "*_TOKEN"),
            ("github-token", "*_TOKEN"),
            ("SLACK_AUTHTOKEN", "*_TOKEN"),
            ("AWS_SECRET_ACCESS_KEY", "*SECRET*"),
            ("CLIENT_SECRET", "*SECRET*"),
            ("clientSecret", "*SECRET*"),
            ("DB_PASSWORD", "*PASSWORD*"),
            ("MYSQL_ROOT_PASSWD", "*PASSWORD*"),
            ("REDIS_PASS", "*PASSWORD*"),
            ("PASSWORD", "*PASSWORD*"),
            ("GOOGLE_CREDENTIALS", "*CREDENTIAL*"),
        ] {
            assert_eq!(name_pattern(name), Some(pattern), "{name}");
        }
    }

    #[test]
    fn innocent_names() {
        for name in [
            "KEYBOARD",
            "KEYBOARD_LAYOUT",
            "MONKEY",
            "KEY_BINDINGS",
            "TOKENIZERS_PARALLELISM",
            "MAX_TOKENS",
            "MAX_NEW_TOKENS",
            "AWS_ACCESS_KEY_ID",
            "GPG_KEY",
            "SSH_PUBLIC_KEY",
            "POSTGRES_PASSWORD_FILE",
            "OPENAI_API_KEY_FILE",
            "GOOGLE_APPLICATION_CREDENTIALS_PATH",
            "SECRETARY_NAME",
            "BYPASS_CACHE",
            "PATH",
            "PWD",
            "HOME",
            "_",
            "",
        ] {
            assert_eq!(name_pattern(name), None, "{name}");
        }
    }

    #[test]
    fn key_shaped_values() {
        for (value, label) in [
            (format!("sk-proj-{BODY}"), "an OpenAI-style API key (sk-…)"),
            (format!("sk-{BODY}"), "an OpenAI-style API key (sk-…)"),
            (
                format!("sk-ant-api03-{BODY}"),
                "an Anthropic API key (sk-ant-…)",
            ),
            (format!("ghp_{BODY}abcdef"), "a GitHub token (ghp_…)"),
            (
                format!("github_pat_11AB_{BODY}"),
                "a GitHub fine-grained token (github_pat_…)",
            ),
            (
                "AKIAIOSFODNN7EXAMPLE".to_string(),
                "an AWS access key id (AKIA…)",
            ),
            (
                "xoxb-123456789012-abcdefABCDEF".to_string(),
                "a Slack bot token (xoxb-…)",
            ),
            (format!("hf_{BODY}"), "a Hugging Face token (hf_…)"),
            (format!("AIza{BODY}abcd"), "a Google API key (AIza…)"),
            (
                format!("Bearer sk-{BODY}"),
                "an OpenAI-style API key (sk-…)",
            ),
            (
                "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n-----END OPENSSH PRIVATE KEY-----"
                    .to_string(),
                "a PEM private key",
            ),
            (
                "postgres://app:hunter2@db:5432/app".to_string(),
                "a URL with a password in it",
            ),
        ] {
            assert_eq!(value_pattern(&value), Some(label), "{value}");
        }
    }

    #[test]
    fn ordinary_values() {
        for value in [
            "",
            "sk-learn",
            "task-runner-for-the-nightly-build-jobs",
            "sk-short1",
            "mask-0123456789012345678901234",
            "ghp_short",
            "AKIAshort",
            "https://api.openai.com/v1",
            "http://user@proxy:3128",
            "/run/secrets/openai",
            "en_US.UTF-8",
            "4096",
        ] {
            assert_eq!(value_pattern(value), None, "{value}");
        }
    }

    #[test]
    fn findings_name_the_variable_never_the_value() {
        let secret = format!("sk-proj-{BODY}");
        let gh = format!("ghp_{BODY}xyz");
        let env = vec![
            var("OPENAI_API_KEY", &secret),
            var("X", &gh),
            var("DB_PASSWORD", "hunter2hunter2"),
            var("POSTGRES_PASSWORD_FILE", "/run/secrets/db"),
            var("API_TOKEN", ""),
            var("USE_TOKEN", "true"),
            var("TOKENIZERS_PARALLELISM", "false"),
            var("GPG_KEY", "A035C8C19219BA821ECEA86B64E628F8D684696D"),
            var("PATH", "/usr/bin:/bin"),
        ];
        let f = check(&env);
        let got: Vec<(&str, Severity)> = f
            .iter()
            .map(|f| (f.subject.as_deref().unwrap_or_default(), f.severity))
            .collect();
        assert_eq!(
            got,
            vec![
                ("OPENAI_API_KEY", Severity::High),
                ("X", Severity::High),
                ("DB_PASSWORD", Severity::Medium),
            ]
        );
        assert!(
            f[0].message.contains("*_KEY") && f[0].message.contains("sk-…"),
            "{f:?}"
        );
        assert!(f[1].message.contains("ghp_…"), "{f:?}");
        let all = format!("{f:?}{}", serde_json::to_string(&f).unwrap());
        for value in [secret.as_str(), gh.as_str(), BODY, "hunter2"] {
            assert!(!all.contains(value), "a secret value leaked: {all}");
        }
    }
}
