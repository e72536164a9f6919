//! `egressd audit`: hardening checks for the containers AI agents run in. Pure: no I/O.
//!
//! [`ContainerFacts`] is what one `docker inspect` answer says about a container, and
//! [`Egress`] is what the kernel (is there an `inet egressd` table in its netns?) and the
//! daemon (what state is it in?) say about its egress. [`audit`] turns both into
//! [`Finding`]s, one check at a time ([`checks`]); [`report`] holds the JSON wire format and
//! the human rendering. `commands::audit` gathers the facts and prints the report.
//!
//! Secret values seen in the environment stay in [`EnvVar`]: its `Debug` redacts them, and no
//! finding ever carries one (only the variable's name and the pattern that matched).
//!
//! Checks and severities are documented in `docs/audit.md`.

pub mod checks;
mod mounts;
pub mod report;
mod secrets;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use bollard::models::ContainerInspectResponse;
use serde::{Deserialize, Serialize};

use crate::docker::{ContainerInfo, container_info};
use crate::policy::{Config, Mode, labels};
use crate::status::State;

pub use report::{AUDIT_VERSION, AuditReport, ContainerReport, DaemonSummary, Scope, Summary};

/// How bad a finding is. `High` makes `egressd audit` exit 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Medium,
    High,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
        }
    }
}

/// What was checked. The kebab-case names are the `check` field of the JSON output: stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Check {
    Privileged,
    HostNetwork,
    HostPid,
    HostIpc,
    CapAdd,
    DockerSocket,
    SensitiveMount,
    EgressUnconfined,
    EgressUnenforceable,
    EgressReportMode,
    EgressQuarantined,
    EgressError,
    EgressUnverified,
    EgressUntracked,
    SecretEnv,
    SeccompUnconfined,
    ApparmorUnconfined,
    RunsAsRoot,
    NoNewPrivileges,
    WritableRootfs,
    NoMemoryLimit,
    NoCpuLimit,
    NoPidsLimit,
}

impl Check {
    pub const ALL: [Check; 23] = [
        Check::Privileged,
        Check::HostNetwork,
        Check::HostPid,
        Check::HostIpc,
        Check::CapAdd,
        Check::DockerSocket,
        Check::SensitiveMount,
        Check::EgressUnconfined,
        Check::EgressUnenforceable,
        Check::EgressReportMode,
        Check::EgressQuarantined,
        Check::EgressError,
        Check::EgressUnverified,
        Check::EgressUntracked,
        Check::SecretEnv,
        Check::SeccompUnconfined,
        Check::ApparmorUnconfined,
        Check::RunsAsRoot,
        Check::NoNewPrivileges,
        Check::WritableRootfs,
        Check::NoMemoryLimit,
        Check::NoCpuLimit,
        Check::NoPidsLimit,
    ];

    /// The same name as in the JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Check::Privileged => "privileged",
            Check::HostNetwork => "host-network",
            Check::HostPid => "host-pid",
            Check::HostIpc => "host-ipc",
            Check::CapAdd => "cap-add",
            Check::DockerSocket => "docker-socket",
            Check::SensitiveMount => "sensitive-mount",
            Check::EgressUnconfined => "egress-unconfined",
            Check::EgressUnenforceable => "egress-unenforceable",
            Check::EgressReportMode => "egress-report-mode",
            Check::EgressQuarantined => "egress-quarantined",
            Check::EgressError => "egress-error",
            Check::EgressUnverified => "egress-unverified",
            Check::EgressUntracked => "egress-untracked",
            Check::SecretEnv => "secret-env",
            Check::SeccompUnconfined => "seccomp-unconfined",
            Check::ApparmorUnconfined => "apparmor-unconfined",
            Check::RunsAsRoot => "runs-as-root",
            Check::NoNewPrivileges => "no-new-privileges",
            Check::WritableRootfs => "writable-rootfs",
            Check::NoMemoryLimit => "no-memory-limit",
            Check::NoCpuLimit => "no-cpu-limit",
            Check::NoPidsLimit => "no-pids-limit",
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem with one container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub check: Check,
    pub severity: Severity,
    /// What the finding is about, when a container can have several of the kind: the
    /// capability, the host path of a mount, the name of an environment variable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// What is wrong, in one sentence.
    pub message: String,
    /// How to fix it.
    pub fix: String,
}

impl Finding {
    fn new(check: Check, severity: Severity, message: impl Into<String>, fix: &str) -> Self {
        Finding {
            check,
            severity,
            subject: None,
            message: message.into(),
            fix: fix.to_string(),
        }
    }

    fn about(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }
}

/// One environment variable. The value is only ever matched against patterns: `Debug` does
/// not show it, and there is no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct EnvVar {
    pub name: String,
    value: String,
}

impl EnvVar {
    /// Parses Docker's `NAME=VALUE` form (a bare `NAME` has an empty value).
    pub fn parse(entry: &str) -> Self {
        let (name, value) = entry.split_once('=').unwrap_or((entry, ""));
        EnvVar {
            name: name.to_string(),
            value: value.to_string(),
        }
    }

    fn value(&self) -> &str {
        &self.value
    }
}

impl fmt::Debug for EnvVar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}=<redacted>", self.name)
    }
}

/// One mount, as `docker inspect` lists it under `Mounts`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Mount {
    /// `bind`, `volume`, `tmpfs`, `npipe`…
    pub kind: String,
    /// Host path of a bind mount (a volume's storage path for a volume).
    pub source: String,
    pub destination: String,
    pub writable: bool,
}

/// What one `docker inspect` answer says about a container's hardening.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerFacts {
    /// The fields the daemon decides on (id, name, labels, network mode, privileged, added
    /// capabilities), converted the same way, so the audit and the daemon agree on what is
    /// unenforceable.
    pub info: ContainerInfo,
    /// `Config.User` (image `USER` or `--user`): `""`, `"1000:1000"`, `"root"`…
    pub user: String,
    pub read_only_rootfs: bool,
    /// `HostConfig.Memory`, bytes; 0: no limit.
    pub memory: i64,
    /// `HostConfig.NanoCpus` (`--cpus`); 0: no limit.
    pub nano_cpus: i64,
    /// `HostConfig.CpuQuota` (`--cpu-quota`); 0 or less: no limit.
    pub cpu_quota: i64,
    /// `HostConfig.CpusetCpus` (`--cpuset-cpus`); empty: every CPU.
    pub cpuset_cpus: String,
    /// `HostConfig.PidsLimit`; 0 or less: no limit.
    pub pids_limit: i64,
    /// `HostConfig.SecurityOpt`: `no-new-privileges`, `seccomp=unconfined`…
    pub security_opt: Vec<String>,
    /// The AppArmor profile Docker applied (`docker-default`, `unconfined`; empty when the
    /// host has no AppArmor).
    pub apparmor_profile: String,
    /// `HostConfig.PidMode`: `""`, `host`, `container:ID`.
    pub pid_mode: String,
    /// `HostConfig.IpcMode`: `private`, `shareable`, `host`…
    pub ipc_mode: String,
    pub mounts: Vec<Mount>,
    /// `Config.Env`: the image's environment merged with `-e`/`--env-file`.
    pub env: Vec<EnvVar>,
}

impl ContainerFacts {
    /// Converts Docker's inspect answer (pure).
    pub fn from_inspect(r: &ContainerInspectResponse) -> Self {
        let config = r.config.as_ref();
        let host = r.host_config.as_ref();
        ContainerFacts {
            info: container_info(r),
            user: config.and_then(|c| c.user.clone()).unwrap_or_default(),
            read_only_rootfs: host.and_then(|h| h.readonly_rootfs).unwrap_or(false),
            memory: host.and_then(|h| h.memory).unwrap_or(0),
            nano_cpus: host.and_then(|h| h.nano_cpus).unwrap_or(0),
            cpu_quota: host.and_then(|h| h.cpu_quota).unwrap_or(0),
            cpuset_cpus: host.and_then(|h| h.cpuset_cpus.clone()).unwrap_or_default(),
            pids_limit: host.and_then(|h| h.pids_limit).unwrap_or(0),
            security_opt: host
                .and_then(|h| h.security_opt.clone())
                .unwrap_or_default(),
            apparmor_profile: r.app_armor_profile.clone().unwrap_or_default(),
            pid_mode: host.and_then(|h| h.pid_mode.clone()).unwrap_or_default(),
            ipc_mode: host.and_then(|h| h.ipc_mode.clone()).unwrap_or_default(),
            mounts: r
                .mounts
                .iter()
                .flatten()
                .map(|m| Mount {
                    kind: m.typ.clone().unwrap_or_default(),
                    source: m.source.clone().unwrap_or_default(),
                    destination: m.destination.clone().unwrap_or_default(),
                    writable: m.rw.unwrap_or(false),
                })
                .collect(),
            env: config
                .and_then(|c| c.env.as_ref())
                .into_iter()
                .flatten()
                .map(|e| EnvVar::parse(e))
                .collect(),
        }
    }
}

/// Whether the container has opted in, by the daemon's rule: a `PREFIX.enable` label that is
/// not `false` (`true` is managed; any other value is managed too, and quarantined).
pub fn opted_in(labels: &BTreeMap<String, String>, prefix: &str) -> bool {
    labels
        .get(&format!("{prefix}.{}", labels::ENABLE))
        .is_some_and(|v| v != "false")
}

/// What the kernel says: is there an `inet egressd` table in the container's netns?
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Table {
    Present,
    Absent,
    /// Not looked at: the container uses the host's network namespace.
    NotChecked,
    /// The netns could not be read (the error, e.g. not running as root).
    Unreadable(String),
}

/// What the daemon says about the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Daemon {
    /// The control socket did not answer.
    Unreachable,
    /// The daemon answered, and does not list this container.
    Untracked,
    /// The daemon's state for it, with the reasons it gives (errors, last error).
    Tracked { state: State, reasons: Vec<String> },
}

/// Everything known about a container's egress confinement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Egress {
    pub table: Table,
    pub daemon: Daemon,
}

/// The settings the checks need from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    pub label_prefix: String,
    /// Mode of opted-in containers without a `PREFIX.mode` label.
    pub default_mode: Mode,
    /// The Docker socket, so a bind mount of it is recognised under any name.
    pub docker_socket: PathBuf,
}

impl Context {
    pub fn from_config(config: &Config) -> Self {
        Context {
            label_prefix: config.label_prefix.clone(),
            default_mode: config.default_mode,
            docker_socket: config.docker.socket.clone(),
        }
    }
}

impl Default for Context {
    fn default() -> Self {
        Context::from_config(&Config::default())
    }
}

/// Every check on one container, most severe findings first.
pub fn audit(c: &ContainerFacts, egress: &Egress, ctx: &Context) -> Vec<Finding> {
    let mut findings = Vec::new();
    findings.extend(checks::privileged(c));
    findings.extend(checks::namespaces(c));
    findings.extend(checks::capabilities(c));
    findings.extend(mounts::check(&c.mounts, &ctx.docker_socket));
    findings.extend(checks::egress(c, egress, ctx));
    findings.extend(secrets::check(&c.env));
    findings.extend(checks::seccomp(c));
    findings.extend(checks::apparmor(c));
    findings.extend(checks::user(c));
    findings.extend(checks::no_new_privileges(c));
    findings.extend(checks::rootfs(c));
    findings.extend(checks::limits(c));
    // Stable order: by severity, then check, then subject.
    findings.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then(a.check.cmp(&b.check))
            .then(a.subject.cmp(&b.subject))
    });
    findings
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use bollard::models::{ContainerConfig, HostConfig, MountPoint};

    use super::*;

    #[test]
    fn check_names_in_json_match_as_str() {
        for c in Check::ALL {
            assert_eq!(
                serde_json::to_string(&c).unwrap(),
                format!("\"{}\"", c.as_str())
            );
        }
        let mut names: Vec<&str> = Check::ALL.iter().map(|c| c.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Check::ALL.len());
    }

    #[test]
    fn severities_order_and_serialize() {
        assert!(Severity::High > Severity::Medium && Severity::Medium > Severity::Low);
        assert_eq!(serde_json::to_string(&Severity::High).unwrap(), "\"high\"");
    }

    #[test]
    fn env_var_debug_hides_the_value() {
        let v = EnvVar::parse("OPENAI_API_KEY=sk-proj-abc123def456ghi789jkl012");
        assert_eq!(v.name, "OPENAI_API_KEY");
        let dbg = format!("{v:?}");
        assert_eq!(dbg, "OPENAI_API_KEY=<redacted>");
        assert!(!dbg.contains("abc123"));
        let facts = ContainerFacts {
            env: vec![v],
            ..Default::default()
        };
        assert!(!format!("{facts:?}").contains("abc123"));
        assert_eq!(EnvVar::parse("BARE").value(), "");
        assert_eq!(EnvVar::parse("A=b=c").value(), "b=c");
    }

    #[test]
    fn inspect_answer_becomes_facts() {
        let r = ContainerInspectResponse {
            id: Some("0123456789abcdef".into()),
            name: Some("/agent".into()),
            app_armor_profile: Some("unconfined".into()),
            config: Some(ContainerConfig {
                user: Some("1000:1000".into()),
                env: Some(vec!["A=1".into(), "PATH=/bin".into()]),
                labels: Some(HashMap::from([("egressd.enable".into(), "true".into())])),
                ..Default::default()
            }),
            host_config: Some(HostConfig {
                readonly_rootfs: Some(true),
                memory: Some(64 << 20),
                nano_cpus: Some(500_000_000),
                pids_limit: Some(64),
                security_opt: Some(vec!["no-new-privileges".into()]),
                pid_mode: Some("host".into()),
                ipc_mode: Some("private".into()),
                cap_add: Some(vec!["CAP_NET_ADMIN".into()]),
                ..Default::default()
            }),
            mounts: Some(vec![MountPoint {
                typ: Some("bind".into()),
                source: Some("/etc".into()),
                destination: Some("/host-etc".into()),
                rw: Some(false),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let f = ContainerFacts::from_inspect(&r);
        assert_eq!(f.info.name, "agent");
        assert_eq!(f.info.cap_add, vec!["NET_ADMIN"]);
        assert_eq!(f.user, "1000:1000");
        assert!(f.read_only_rootfs);
        assert_eq!(
            (f.memory, f.nano_cpus, f.pids_limit),
            (64 << 20, 500_000_000, 64)
        );
        assert_eq!(f.apparmor_profile, "unconfined");
        assert_eq!(f.pid_mode, "host");
        assert_eq!(
            f.mounts,
            vec![Mount {
                kind: "bind".into(),
                source: "/etc".into(),
                destination: "/host-etc".into(),
                writable: false,
            }]
        );
        assert_eq!(f.env.len(), 2);
        assert!(opted_in(&f.info.labels, "egressd"));
        assert!(!opted_in(&f.info.labels, "other"));
    }

    #[test]
    fn empty_inspect_answer_is_all_defaults() {
        let f = ContainerFacts::from_inspect(&ContainerInspectResponse::default());
        assert_eq!(f.user, "");
        assert!(!f.read_only_rootfs);
        assert!(f.mounts.is_empty() && f.env.is_empty());
    }

    #[test]
    fn opted_in_follows_the_daemon_rule() {
        let l = |v: &str| BTreeMap::from([("egressd.enable".to_string(), v.to_string())]);
        assert!(opted_in(&l("true"), "egressd"));
        // Garbage opts in too: the daemon quarantines such a container.
        assert!(opted_in(&l("yes"), "egressd"));
        assert!(!opted_in(&l("false"), "egressd"));
        assert!(!opted_in(&BTreeMap::new(), "egressd"));
    }

    #[test]
    fn audit_sorts_most_severe_first() {
        let c = ContainerFacts {
            info: ContainerInfo {
                privileged: true,
                ..Default::default()
            },
            ..Default::default()
        };
        let egress = Egress {
            table: Table::Absent,
            daemon: Daemon::Unreachable,
        };
        let f = audit(&c, &egress, &Context::default());
        let sev: Vec<Severity> = f.iter().map(|f| f.severity).collect();
        let mut sorted = sev.clone();
        sorted.sort_by(|a, b| b.cmp(a));
        assert_eq!(sev, sorted);
        assert_eq!(f[0].check, Check::Privileged);
    }
}
