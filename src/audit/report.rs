//! What `egressd audit` prints: the JSON wire format (versioned like `status`: fields are only
//! ever added; `version` is bumped on an incompatible change) and the human rendering. Pure.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::{Finding, Severity};

/// Version of the JSON layout.
pub const AUDIT_VERSION: u32 = 1;

/// Which containers were audited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// Running containers that opted in (`PREFIX.enable`), the default.
    OptedIn,
    /// Every running container (`--all`).
    All,
    /// The containers named on the command line.
    Named,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditReport {
    pub version: u32,
    pub scope: Scope,
    /// The label prefix from the config (`egressd`).
    pub label_prefix: String,
    pub daemon: DaemonSummary,
    /// Sorted by name.
    pub containers: Vec<ContainerReport>,
    pub summary: Summary,
}

/// Whether the daemon's control socket answered (its states refine the egress checks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonSummary {
    pub socket: String,
    pub answering: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerReport {
    pub id: String,
    pub short_id: String,
    pub name: String,
    /// Whether it has opted in to egressd (`PREFIX.enable`).
    pub opted_in: bool,
    /// Most severe first.
    pub findings: Vec<Finding>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Summary {
    pub containers: usize,
    /// Containers without any finding.
    pub clean: usize,
    pub findings: usize,
    pub high: usize,
    pub medium: usize,
    pub low: usize,
}

impl AuditReport {
    /// Builds the report: sorts the containers by name and counts the findings.
    pub fn new(
        scope: Scope,
        label_prefix: &str,
        daemon: DaemonSummary,
        mut containers: Vec<ContainerReport>,
    ) -> Self {
        containers.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        let mut summary = Summary {
            containers: containers.len(),
            ..Summary::default()
        };
        for c in &containers {
            if c.findings.is_empty() {
                summary.clean += 1;
            }
            for f in &c.findings {
                summary.findings += 1;
                match f.severity {
                    Severity::High => summary.high += 1,
                    Severity::Medium => summary.medium += 1,
                    Severity::Low => summary.low += 1,
                }
            }
        }
        AuditReport {
            version: AUDIT_VERSION,
            scope,
            label_prefix: label_prefix.to_string(),
            daemon,
            containers,
            summary,
        }
    }

    /// High-severity findings make `egressd audit` exit 1 (a CI gate).
    pub fn has_high(&self) -> bool {
        self.summary.high > 0
    }
}

impl ContainerReport {
    pub fn new(id: &str, name: &str, opted_in: bool, findings: Vec<Finding>) -> Self {
        ContainerReport {
            id: id.to_string(),
            short_id: id.get(..12).unwrap_or(id).to_string(),
            name: name.to_string(),
            opted_in,
            findings,
        }
    }
}

/// The human form: a header, one block per container, a summary line.
pub fn render(report: &AuditReport) -> String {
    let mut out = String::new();
    let scope = match report.scope {
        Scope::OptedIn => format!(
            "running containers opted in with {}.enable",
            report.label_prefix
        ),
        Scope::All => "all running containers".to_string(),
        Scope::Named => "the named containers".to_string(),
    };
    let _ = writeln!(out, "egressd audit: {scope}");
    if report.daemon.answering {
        let _ = writeln!(out, "daemon: answering on {}", report.daemon.socket);
    } else {
        let _ = writeln!(
            out,
            "daemon: not answering on {} ({}); egress checked from the kernel tables only",
            report.daemon.socket,
            report.daemon.error.as_deref().unwrap_or("no answer")
        );
    }
    for c in &report.containers {
        let _ = writeln!(out);
        let tag = if c.opted_in { "" } else { "  [not opted in]" };
        if c.findings.is_empty() {
            let _ = writeln!(out, "{} ({}){tag}  no findings", c.name, c.short_id);
            continue;
        }
        let _ = writeln!(out, "{} ({}){tag}", c.name, c.short_id);
        for f in &c.findings {
            let _ = writeln!(
                out,
                "  {:<6}  {:<20}  {}",
                f.severity.as_str().to_uppercase(),
                f.check.as_str(),
                f.message
            );
            let _ = writeln!(out, "  {:<6}  {:<20}  fix: {}", "", "", f.fix);
        }
    }
    let s = &report.summary;
    let _ = writeln!(out);
    if s.containers == 0 {
        let _ = writeln!(out, "summary: no containers to audit");
    } else {
        let _ = writeln!(
            out,
            "summary: {} container(s), {} finding(s): {} high, {} medium, {} low; {} container(s) clean{}",
            s.containers,
            s.findings,
            s.high,
            s.medium,
            s.low,
            s.clean,
            if s.high > 0 {
                " (high findings: exit status 1)"
            } else {
                ""
            }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Check;

    fn finding(check: Check, severity: Severity) -> Finding {
        Finding {
            check,
            severity,
            subject: None,
            message: format!("{check} message"),
            fix: format!("{check} fix"),
        }
    }

    fn sample() -> AuditReport {
        AuditReport::new(
            Scope::OptedIn,
            "egressd",
            DaemonSummary {
                socket: "/run/egressd/egressd.sock".into(),
                answering: true,
                error: None,
            },
            vec![
                ContainerReport::new(
                    "fedcba9876543210fedcba",
                    "zeta",
                    true,
                    vec![
                        finding(Check::Privileged, Severity::High),
                        finding(Check::RunsAsRoot, Severity::Medium),
                        finding(Check::NoCpuLimit, Severity::Low),
                    ],
                ),
                ContainerReport::new("0123456789abcdef0123", "alpha", true, vec![]),
            ],
        )
    }

    #[test]
    fn summary_counts_and_sorts() {
        let r = sample();
        assert_eq!(r.containers[0].name, "alpha");
        assert_eq!(r.containers[0].short_id, "0123456789ab");
        assert_eq!(
            r.summary,
            Summary {
                containers: 2,
                clean: 1,
                findings: 3,
                high: 1,
                medium: 1,
                low: 1
            }
        );
        assert!(r.has_high());
        let calm = AuditReport::new(
            Scope::All,
            "egressd",
            r.daemon.clone(),
            vec![ContainerReport::new(
                "ab",
                "a",
                false,
                vec![finding(Check::NoCpuLimit, Severity::Low)],
            )],
        );
        assert!(!calm.has_high());
    }

    #[test]
    fn json_is_versioned_and_round_trips() {
        let r = sample();
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["version"], 1);
        assert_eq!(j["scope"], "opted-in");
        assert_eq!(j["containers"][1]["findings"][0]["check"], "privileged");
        assert_eq!(j["containers"][1]["findings"][0]["severity"], "high");
        assert!(j["containers"][1]["findings"][0].get("subject").is_none());
        assert_eq!(j["summary"]["high"], 1);
        let back: AuditReport = serde_json::from_value(j).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn human_output_shows_name_id_severity_fix_and_summary() {
        let text = render(&sample());
        for needle in [
            "egressd audit: running containers opted in with egressd.enable",
            "daemon: answering on /run/egressd/egressd.sock",
            "alpha (0123456789ab)  no findings",
            "zeta (fedcba987654)\n",
            "  HIGH    privileged            privileged message",
            "fix: privileged fix",
            "  LOW     no-cpu-limit",
            "summary: 2 container(s), 3 finding(s): 1 high, 1 medium, 1 low; 1 container(s) clean (high findings: exit status 1)",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }

    #[test]
    fn human_output_without_daemon_or_containers() {
        let r = AuditReport::new(
            Scope::All,
            "egressd",
            DaemonSummary {
                socket: "/run/egressd/egressd.sock".into(),
                answering: false,
                error: Some("connection refused".into()),
            },
            vec![],
        );
        let text = render(&r);
        assert!(
            text.contains("not answering on /run/egressd/egressd.sock (connection refused)"),
            "{text}"
        );
        assert!(text.contains("summary: no containers to audit"), "{text}");
    }
}
