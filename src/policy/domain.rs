//! Domain names (RFC 1123 host names) and wildcard domains.
//!
//! Accepted: ASCII letters, digits and hyphens; labels of 1 to 63 characters that neither
//! start nor end with a hyphen; at most 253 characters in total; a last label that is not
//! all digits. One trailing dot is removed and the name is lower-cased. Internationalized
//! names must be written in punycode (`xn--...`). A wildcard is only a leading `*.` followed
//! by at least two labels (`*.example.com`; `*.com` is refused).

use super::Host;

/// Longest accepted name, without the trailing dot (RFC 1035 section 2.3.4).
pub const MAX_NAME_LEN: usize = 253;
/// Longest accepted label.
pub const MAX_LABEL_LEN: usize = 63;
/// Fewest labels after `*.` in a wildcard (`*.com` would open a whole top-level domain).
pub const MIN_WILDCARD_LABELS: usize = 2;

/// Why a host name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("empty domain name")]
    Empty,
    #[error(
        "non-ASCII domain name; write internationalized names in punycode (xn--...), e.g. as printed by `idn2`"
    )]
    NonAscii,
    #[error("domain name is {len} characters long; the limit is {MAX_NAME_LEN}")]
    TooLong { len: usize },
    #[error("empty label (two dots in a row, or a leading dot)")]
    EmptyLabel,
    #[error("label \"{label}\" is {len} characters long; the limit is {MAX_LABEL_LEN}")]
    LabelTooLong { label: String, len: usize },
    #[error("label \"{label}\" contains {ch:?}; only letters, digits and hyphens are allowed")]
    BadChar { label: String, ch: char },
    #[error("label \"{label}\" starts or ends with a hyphen")]
    Hyphen { label: String },
    #[error(
        "the last label \"{label}\" is all digits, so this is neither a domain name nor a valid IP address"
    )]
    NumericLastLabel { label: String },
    #[error(
        "a bare \"*\" would allow every name; list the domains, or use a wildcard such as *.example.com"
    )]
    BareWildcard,
    #[error("a wildcard is only allowed as a leading \"*.\" (as in *.example.com)")]
    MisplacedWildcard,
    #[error(
        "\"*.{base}\" would allow a whole top-level domain; a wildcard needs at least {MIN_WILDCARD_LABELS} labels after \"*.\""
    )]
    WildcardTooBroad { base: String },
}

/// Validates a domain name and returns it lower-cased without a trailing dot.
pub fn parse_domain(name: &str) -> Result<String, DomainError> {
    if name.is_empty() {
        return Err(DomainError::Empty);
    }
    if !name.is_ascii() {
        return Err(DomainError::NonAscii);
    }
    if name.contains('*') {
        return Err(DomainError::MisplacedWildcard);
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Err(DomainError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(DomainError::TooLong { len: name.len() });
    }
    let mut last = "";
    for label in name.split('.') {
        check_label(label)?;
        last = label;
    }
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(DomainError::NumericLastLabel {
            label: last.to_string(),
        });
    }
    Ok(name.to_ascii_lowercase())
}

/// Parses `example.com` as [`Host::Domain`] and `*.example.com` as [`Host::Wildcard`].
pub fn parse_domain_or_wildcard(name: &str) -> Result<Host, DomainError> {
    if name == "*" || name == "*." {
        return Err(DomainError::BareWildcard);
    }
    match name.strip_prefix("*.") {
        Some(base) => {
            if base.contains('*') {
                return Err(DomainError::MisplacedWildcard);
            }
            let base = parse_domain(base)?;
            if base.split('.').count() < MIN_WILDCARD_LABELS {
                return Err(DomainError::WildcardTooBroad { base });
            }
            Ok(Host::Wildcard(base))
        }
        None => parse_domain(name).map(Host::Domain),
    }
}

fn check_label(label: &str) -> Result<(), DomainError> {
    if label.is_empty() {
        return Err(DomainError::EmptyLabel);
    }
    if label.len() > MAX_LABEL_LEN {
        return Err(DomainError::LabelTooLong {
            label: label.to_string(),
            len: label.len(),
        });
    }
    if let Some(ch) = label
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        return Err(DomainError::BadChar {
            label: label.to_string(),
            ch,
        });
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(DomainError::Hyphen {
            label: label.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name_of_len(len: usize) -> String {
        // Labels of 63 characters separated by dots, then filled up to `len`.
        let mut s = String::new();
        while s.len() < len {
            if !s.is_empty() {
                s.push('.');
            }
            let room = (len - s.len()).min(63);
            s.push_str(&"a".repeat(room));
        }
        assert_eq!(s.len(), len);
        s
    }

    #[test]
    fn accepts_and_normalizes() {
        assert_eq!(parse_domain("api.openai.com").unwrap(), "api.openai.com");
        assert_eq!(parse_domain("API.OpenAI.com.").unwrap(), "api.openai.com");
        assert_eq!(parse_domain("a-b.c0.example").unwrap(), "a-b.c0.example");
        assert_eq!(parse_domain("vectordb").unwrap(), "vectordb");
        assert_eq!(parse_domain("1.2.3.example").unwrap(), "1.2.3.example");
    }

    #[test]
    fn label_63_ok_64_refused() {
        let ok = format!("{}.com", "a".repeat(63));
        assert!(parse_domain(&ok).is_ok());
        let bad = format!("{}.com", "a".repeat(64));
        assert_eq!(
            parse_domain(&bad),
            Err(DomainError::LabelTooLong {
                label: "a".repeat(64),
                len: 64
            })
        );
    }

    #[test]
    fn name_253_ok_254_refused() {
        assert!(parse_domain(&name_of_len(253)).is_ok());
        // A trailing dot does not count.
        assert!(parse_domain(&format!("{}.", name_of_len(253))).is_ok());
        assert_eq!(
            parse_domain(&name_of_len(254)),
            Err(DomainError::TooLong { len: 254 })
        );
    }

    #[test]
    fn punycode_ok_unicode_refused() {
        assert_eq!(
            parse_domain("xn--bcher-kva.example").unwrap(),
            "xn--bcher-kva.example"
        );
        let err = parse_domain("bücher.example").unwrap_err();
        assert_eq!(err, DomainError::NonAscii);
        assert!(err.to_string().contains("punycode"));
    }

    #[test]
    fn bad_names() {
        assert_eq!(parse_domain(""), Err(DomainError::Empty));
        assert_eq!(parse_domain("."), Err(DomainError::Empty));
        assert_eq!(parse_domain("a..com"), Err(DomainError::EmptyLabel));
        assert_eq!(parse_domain(".a.com"), Err(DomainError::EmptyLabel));
        assert_eq!(parse_domain("a.com.."), Err(DomainError::EmptyLabel));
        assert!(matches!(
            parse_domain("-a.com"),
            Err(DomainError::Hyphen { .. })
        ));
        assert!(matches!(
            parse_domain("a-.com"),
            Err(DomainError::Hyphen { .. })
        ));
        assert_eq!(
            parse_domain("a_b.com"),
            Err(DomainError::BadChar {
                label: "a_b".into(),
                ch: '_'
            })
        );
        assert!(matches!(
            parse_domain("a b.com"),
            Err(DomainError::BadChar { ch: ' ', .. })
        ));
        assert_eq!(
            parse_domain("256.1.1.1"),
            Err(DomainError::NumericLastLabel { label: "1".into() })
        );
        assert!(matches!(
            parse_domain("example.123"),
            Err(DomainError::NumericLastLabel { .. })
        ));
    }

    #[test]
    fn wildcards() {
        assert_eq!(
            parse_domain_or_wildcard("*.Example.com").unwrap(),
            Host::Wildcard("example.com".into())
        );
        assert_eq!(
            parse_domain_or_wildcard("example.com").unwrap(),
            Host::Domain("example.com".into())
        );
        assert_eq!(
            parse_domain_or_wildcard("*"),
            Err(DomainError::BareWildcard)
        );
        assert_eq!(
            parse_domain_or_wildcard("a.*.com"),
            Err(DomainError::MisplacedWildcard)
        );
        assert_eq!(
            parse_domain_or_wildcard("*foo.com"),
            Err(DomainError::MisplacedWildcard)
        );
        assert_eq!(
            parse_domain_or_wildcard("**.com"),
            Err(DomainError::MisplacedWildcard)
        );
        assert_eq!(
            parse_domain_or_wildcard("*.*.example.com"),
            Err(DomainError::MisplacedWildcard)
        );
        assert_eq!(
            parse_domain_or_wildcard("*.com"),
            Err(DomainError::WildcardTooBroad { base: "com".into() })
        );
        assert!(parse_domain_or_wildcard("*.co.uk").is_ok());
    }
}
