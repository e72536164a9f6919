//! Human-readable output, used by `egressd check-config` and `status`.
//!
//! ```text
//! mode: enforce
//! profiles: openai, pypi
//! rules:
//!   api.openai.com 443/tcp  (from profile openai)
//!   10.0.0.0/8 53,8000-8100/udp  (from label egressd.allow)
//! ```

use std::fmt;

use super::config::DnsMode;
use super::{ContainerPolicy, Mode, PortRange, Proto, Rule, RuleSource};

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Enforce => "enforce",
            Mode::Report => "report",
        })
    }
}

/// `443` or `8000-8100`.
impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// A port list as written in rules: `80,443,8000-8100`.
pub struct Ports<'a>(pub &'a [PortRange]);

impl fmt::Display for Ports<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// `profile openai` or `label egressd.allow`.
impl fmt::Display for RuleSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleSource::Label(key) => write!(f, "label {key}"),
            RuleSource::Profile(name) => write!(f, "profile {name}"),
        }
    }
}

/// `api.openai.com 443/tcp  (from profile openai)`.
impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}/{}  (from {})",
            self.host,
            Ports(&self.ports),
            self.proto,
            self.source
        )
    }
}

/// Several lines: mode, profiles and one line per rule; or the quarantine reasons.
impl fmt::Display for ContainerPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_quarantined() {
            writeln!(f, "QUARANTINED: all egress is denied, because:")?;
            for e in &self.errors {
                writeln!(f, "  - {e}")?;
            }
            return Ok(());
        }
        match self.mode {
            Mode::Enforce => writeln!(f, "mode: enforce")?,
            Mode::Report => writeln!(
                f,
                "mode: report (what would be denied is logged; nothing is denied)"
            )?,
        }
        match self.dns {
            DnsMode::Proxy => writeln!(
                f,
                "dns: proxy (egressd answers the container's DNS; only allowed names resolve)"
            )?,
            DnsMode::Resolve => writeln!(
                f,
                "dns: resolve (egressd resolves the allowed names; wildcards match nothing)"
            )?,
        }
        if self.profiles.is_empty() {
            writeln!(f, "profiles: none")?;
        } else {
            writeln!(f, "profiles: {}", self.profiles.join(", "))?;
        }
        if self.rules.is_empty() {
            writeln!(f, "rules: none (only DNS to egressd is allowed)")?;
        } else {
            writeln!(f, "rules:")?;
            for r in &self.rules {
                writeln!(f, "  {r}")?;
            }
        }
        if !self.limits.is_empty() {
            match self.mode {
                Mode::Enforce => writeln!(f, "limits: {} (enforced by the kernel)", self.limits)?,
                Mode::Report => writeln!(f, "limits: {} (report mode: logged only)", self.limits)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Host;

    #[test]
    fn policy_display() {
        let p = ContainerPolicy {
            mode: Mode::Enforce,
            dns: DnsMode::Resolve,
            profiles: vec!["openai".into()],
            rules: vec![
                Rule {
                    host: Host::Domain("api.openai.com".into()),
                    ports: vec![PortRange::single(443)],
                    proto: Proto::Tcp,
                    source: RuleSource::Profile("openai".into()),
                },
                Rule {
                    host: Host::Net("10.0.0.0/8".parse().unwrap()),
                    ports: vec![
                        PortRange::single(53),
                        PortRange {
                            first: 8000,
                            last: 8100,
                        },
                    ],
                    proto: Proto::Udp,
                    source: RuleSource::Label("egressd.allow".into()),
                },
                Rule {
                    host: Host::Wildcard("example.com".into()),
                    ports: vec![PortRange::single(443)],
                    proto: Proto::Tcp,
                    source: RuleSource::Label("egressd.allow".into()),
                },
            ],
            errors: vec![],
            limits: Default::default(),
        };
        assert_eq!(
            p.to_string(),
            "mode: enforce\n\
             dns: resolve (egressd resolves the allowed names; wildcards match nothing)\n\
             profiles: openai\n\
             rules:\n  \
             api.openai.com 443/tcp  (from profile openai)\n  \
             10.0.0.0/8 53,8000-8100/udp  (from label egressd.allow)\n  \
             *.example.com 443/tcp  (from label egressd.allow)\n"
        );
    }

    #[test]
    fn empty_and_report() {
        let p = ContainerPolicy {
            mode: Mode::Report,
            ..Default::default()
        };
        assert_eq!(
            p.to_string(),
            "mode: report (what would be denied is logged; nothing is denied)\ndns: proxy (egressd answers the container's DNS; only allowed names resolve)\nprofiles: none\nrules: none (only DNS to egressd is allowed)\n"
        );
    }

    #[test]
    fn limits_display() {
        let mut p = ContainerPolicy {
            limits: crate::policy::limit::parse_limits("bytes:2MiB/day,conn:5/second").unwrap(),
            ..Default::default()
        };
        assert!(
            p.to_string()
                .ends_with("limits: conn:5/second,bytes:2MiB/day (enforced by the kernel)\n"),
            "{p}"
        );
        p.mode = Mode::Report;
        assert!(
            p.to_string().ends_with("(report mode: logged only)\n"),
            "{p}"
        );
    }

    #[test]
    fn quarantine_display() {
        let p =
            ContainerPolicy::quarantine(vec!["label egressd.mode, column 1: \"x\": bad".into()]);
        assert_eq!(
            p.to_string(),
            "QUARANTINED: all egress is denied, because:\n  - label egressd.mode, column 1: \"x\": bad\n"
        );
    }
}
