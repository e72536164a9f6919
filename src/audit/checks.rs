//! The checks on the container's own settings and on its egress confinement. Each function
//! looks at one practice and returns its findings (none when the practice is followed).
//! Mounts are in `mounts.rs`, environment secrets in `secrets.rs`.

use super::{Check, ContainerFacts, Context, Daemon, Egress, Finding, Severity, Table, opted_in};
use crate::policy::{Mode, labels};
use crate::reconciler::unenforceable_reason;
use crate::status::State;

/// Capabilities that give a container root-equivalent power over the host or its own
/// firewall, with the reason. The daemon's [`crate::reconciler::DANGEROUS_CAPS`] (the ones that let it flush
/// its own rules) are among them.
const HIGH_CAPS: [(&str, &str); 8] = [
    ("ALL", "every capability"),
    ("NET_ADMIN", "it can change or flush its own firewall rules"),
    (
        "SYS_ADMIN",
        "mounts, namespaces and more: close to root on the host, and it can flush its own firewall rules",
    ),
    ("SYS_MODULE", "it can load kernel modules"),
    ("SYS_RAWIO", "raw access to devices and kernel memory"),
    ("SYS_PTRACE", "it can trace processes and read their memory"),
    (
        "DAC_READ_SEARCH",
        "it can open host files by handle (a known container escape)",
    ),
    ("BPF", "it can load BPF programs into the kernel"),
];

/// Docker's default capability set: adding one back (after `--cap-drop ALL`) grants nothing
/// a default container lacks.
const DOCKER_DEFAULT_CAPS: [&str; 14] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "NET_RAW",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// `--privileged`.
pub fn privileged(c: &ContainerFacts) -> Option<Finding> {
    c.info.privileged.then(|| {
        Finding::new(
            Check::Privileged,
            Severity::High,
            "privileged (--privileged): every capability, every host device, no seccomp or AppArmor; root in it is root on the host, and it can flush its own egress rules",
            "remove --privileged; add only the capabilities it needs with --cap-add, if any",
        )
    })
}

/// `--network host`, `--pid host`, `--ipc host`.
pub fn namespaces(c: &ContainerFacts) -> Vec<Finding> {
    let mut out = Vec::new();
    if c.info.network_mode == "host" {
        out.push(Finding::new(
            Check::HostNetwork,
            Severity::High,
            "uses the host's network namespace (--network host): egressd cannot confine its egress, and it reaches every service listening on the host",
            "give it its own network (the default bridge or a user-defined network) instead of --network host",
        ));
    }
    if c.pid_mode == "host" {
        out.push(Finding::new(
            Check::HostPid,
            Severity::High,
            "uses the host's PID namespace (--pid host): it sees every process on the host, their command lines and, as root, can signal them",
            "remove --pid host",
        ));
    }
    if c.ipc_mode == "host" {
        out.push(Finding::new(
            Check::HostIpc,
            Severity::Medium,
            "uses the host's IPC namespace (--ipc host): it can read and write the host's shared memory and semaphores",
            "remove --ipc host",
        ));
    }
    out
}

/// `--cap-add`: one finding per added capability.
pub fn capabilities(c: &ContainerFacts) -> Vec<Finding> {
    let mut caps = c.info.cap_add.clone();
    caps.sort_unstable();
    caps.dedup();
    caps.iter()
        .map(|cap| {
            let (severity, why) = if let Some((_, why)) = HIGH_CAPS.iter().find(|(n, _)| n == cap) {
                (Severity::High, why.to_string())
            } else if DOCKER_DEFAULT_CAPS.contains(&cap.as_str()) {
                (
                    Severity::Low,
                    "part of Docker's default set; fine if it needs it".to_string(),
                )
            } else {
                (
                    Severity::Medium,
                    "not in Docker's default set: more kernel attack surface".to_string(),
                )
            };
            let fix = if severity == Severity::Low {
                "keep it only if the workload needs it (--cap-drop ALL, then add back the few it uses)"
            } else {
                "remove --cap-add; start from --cap-drop ALL and add back only what the workload needs"
            };
            Finding::new(
                Check::CapAdd,
                severity,
                format!("capability {cap} added (--cap-add {cap}): {why}"),
                fix,
            )
            .about(cap.clone())
        })
        .collect()
}

/// The value of a `--security-opt` key (`key=value` or `key:value`), `Some("")` when the key is
/// given without a value.
fn security_opt<'a>(c: &'a ContainerFacts, key: &str) -> Option<&'a str> {
    c.security_opt.iter().find_map(|o| {
        let (k, v) = match o.find(['=', ':']) {
            Some(i) => (&o[..i], &o[i + 1..]),
            None => (o.as_str(), ""),
        };
        (k == key).then_some(v)
    })
}

/// `--security-opt seccomp=unconfined`. (A privileged container has no seccomp either; the
/// privileged finding says so.)
pub fn seccomp(c: &ContainerFacts) -> Option<Finding> {
    (!c.info.privileged && security_opt(c, "seccomp") == Some("unconfined")).then(|| {
        Finding::new(
            Check::SeccompUnconfined,
            Severity::Medium,
            "seccomp is off (--security-opt seccomp=unconfined): every system call is open to it, including the ones container escapes use",
            "remove seccomp=unconfined; if one syscall is missing, use a custom profile that adds only it",
        )
    })
}

/// `--security-opt apparmor=unconfined`, or Docker reports the profile `unconfined`.
pub fn apparmor(c: &ContainerFacts) -> Option<Finding> {
    let unconfined =
        security_opt(c, "apparmor") == Some("unconfined") || c.apparmor_profile == "unconfined";
    (!c.info.privileged && unconfined).then(|| {
        Finding::new(
            Check::ApparmorUnconfined,
            Severity::Medium,
            "AppArmor is off (apparmor=unconfined): no mandatory access control on its files, mounts and signals",
            "remove --security-opt apparmor=unconfined (Docker's default profile docker-default applies)",
        )
    })
}

/// No `--user` and no `USER` in the image, or uid 0 / `root`.
pub fn user(c: &ContainerFacts) -> Option<Finding> {
    let user = c.user.trim();
    let name = user.split(':').next().unwrap_or_default();
    let message = if name.is_empty() {
        "runs as root: no USER in the image and no --user".to_string()
    } else if name == "root" || name.parse::<u32>() == Ok(0) {
        format!("runs as root (user {user})")
    } else {
        return None;
    };
    Some(Finding::new(
        Check::RunsAsRoot,
        Severity::Medium,
        message,
        "run it as an unprivileged user: --user 1000:1000, or USER in the Dockerfile",
    ))
}

/// `--security-opt no-new-privileges` not given (or `:false`).
pub fn no_new_privileges(c: &ContainerFacts) -> Option<Finding> {
    let set = matches!(security_opt(c, "no-new-privileges"), Some("" | "true"));
    (!set).then(|| {
        Finding::new(
            Check::NoNewPrivileges,
            Severity::Low,
            "no-new-privileges is not set: a setuid or file-capability binary in it can raise its privileges",
            "--security-opt no-new-privileges",
        )
    })
}

/// No `--read-only`.
pub fn rootfs(c: &ContainerFacts) -> Option<Finding> {
    (!c.read_only_rootfs).then(|| {
        Finding::new(
            Check::WritableRootfs,
            Severity::Low,
            "the root filesystem is writable: a compromised agent can change its own tools and code",
            "--read-only, with --tmpfs /tmp (or a volume) for the paths it must write",
        )
    })
}

/// No memory, CPU or pids limit: one finding for each.
pub fn limits(c: &ContainerFacts) -> Vec<Finding> {
    let mut out = Vec::new();
    if c.memory <= 0 {
        out.push(Finding::new(
            Check::NoMemoryLimit,
            Severity::Medium,
            "no memory limit: it can take all of the host's memory",
            "--memory 2g (sized for the workload)",
        ));
    }
    if c.nano_cpus <= 0 && c.cpu_quota <= 0 && c.cpuset_cpus.trim().is_empty() {
        out.push(Finding::new(
            Check::NoCpuLimit,
            Severity::Low,
            "no CPU limit: it can take every CPU of the host",
            "--cpus 2 (sized for the workload)",
        ));
    }
    if c.pids_limit <= 0 {
        out.push(Finding::new(
            Check::NoPidsLimit,
            Severity::Medium,
            "no pids limit: a fork bomb in it exhausts the host's process table",
            "--pids-limit 256",
        ));
    }
    out
}

/// The mode an opted-in container runs in by its labels and the config (what the daemon would
/// compute; used only when the daemon does not answer).
fn label_mode(c: &ContainerFacts, ctx: &Context) -> Mode {
    match c
        .info
        .labels
        .get(&format!("{}.{}", ctx.label_prefix, labels::MODE))
    {
        Some(v) if v == "report" => Mode::Report,
        Some(_) => Mode::Enforce,
        None => ctx.default_mode,
    }
}

fn reasons_suffix(reasons: &[String]) -> String {
    if reasons.is_empty() {
        String::new()
    } else {
        format!(": {}", reasons.join("; "))
    }
}

/// Egress confinement, from the kernel (the table) and the daemon (its state).
pub fn egress(c: &ContainerFacts, egress: &Egress, ctx: &Context) -> Vec<Finding> {
    // The host's netns is not the container's; the host-network finding covers it.
    if c.info.network_mode == "host" || egress.table == Table::NotChecked {
        return Vec::new();
    }
    let managed = opted_in(&c.info.labels, &ctx.label_prefix);
    let enable = format!("{}.{}", ctx.label_prefix, labels::ENABLE);
    let mut out = Vec::new();

    // Confined only on paper: the daemon gave up on it, or its settings let it flush its table.
    const FIX: &str = "remove --privileged and --cap-add NET_ADMIN/SYS_ADMIN/ALL; with on_unenforceable = \"stop\" egressd stops such containers";
    if let Daemon::Tracked {
        state: State::Unenforceable,
        reasons,
    } = &egress.daemon
    {
        out.push(Finding::new(
            Check::EgressUnenforceable,
            Severity::High,
            format!(
                "egressd reports it unenforceable{}: its egress is not filtered",
                reasons_suffix(reasons)
            ),
            FIX,
        ));
        return out;
    }
    if let Some(reason) = unenforceable_reason(&c.info) {
        let message = match &egress.table {
            Table::Present => {
                format!("it has an inet egressd table, but it {reason}")
            }
            _ if managed => {
                format!("opted in, but egressd cannot confine it: it {reason}")
            }
            _ => String::new(),
        };
        if !message.is_empty() {
            out.push(Finding::new(
                Check::EgressUnenforceable,
                Severity::High,
                message,
                FIX,
            ));
            return out;
        }
    }

    match &egress.table {
        Table::Unreadable(e) => out.push(Finding::new(
            Check::EgressUnverified,
            Severity::Medium,
            format!(
                "its network namespace could not be read, so its egress confinement is unknown: {e}"
            ),
            "run egressd audit as root",
        )),
        Table::Absent if managed => {
            let why = match &egress.daemon {
                Daemon::Unreachable => {
                    " (the egressd daemon does not answer on its control socket)".to_string()
                }
                Daemon::Untracked => " (the egressd daemon does not track it)".to_string(),
                Daemon::Tracked { state, .. } => format!(
                    " (the egressd daemon reports it {}: the table was removed behind its back)",
                    state.as_str()
                ),
            };
            out.push(Finding::new(
                Check::EgressUnconfined,
                Severity::High,
                format!(
                    "opted in ({enable}) but its network namespace has no inet egressd table: its egress is not filtered{why}"
                ),
                "make sure egressd runs (systemctl status egressd), then `egressd reload` or restart the container; check `egressd status NAME`",
            ));
        }
        Table::Absent => out.push(Finding::new(
            Check::EgressUnconfined,
            Severity::Medium,
            "not opted in to egressd: its egress is unrestricted",
            &format!(
                "label it {enable}=true and allow only what it needs ({0}.profiles, {0}.allow)",
                ctx.label_prefix
            ),
        )),
        Table::Present | Table::NotChecked => {}
    }

    let table_present = egress.table == Table::Present;
    match &egress.daemon {
        Daemon::Tracked { state, reasons } => match state {
            State::Report if table_present => out.push(report_mode(ctx)),
            State::Quarantined => out.push(Finding::new(
                Check::EgressQuarantined,
                Severity::Medium,
                format!(
                    "quarantined: all its egress is denied because its egress policy is broken{}",
                    reasons_suffix(reasons)
                ),
                "fix the labels or profiles (egressd check-config --label ...), see egressd status NAME",
            )),
            State::Error => out.push(Finding::new(
                Check::EgressError,
                Severity::Medium,
                format!(
                    "egressd could not program its table{}",
                    reasons_suffix(reasons)
                ),
                "see egressd status NAME and the daemon's log",
            )),
            State::Enforced | State::Report | State::Unenforceable => {}
        },
        Daemon::Untracked if managed && table_present => out.push(Finding::new(
            Check::EgressUntracked,
            Severity::Low,
            "it has an inet egressd table but the daemon does not track it: the table is not kept up to date (resolved addresses expire and access closes)",
            "egressd reload, or restart the container; check the daemon's label_prefix",
        )),
        Daemon::Unreachable
            if managed && table_present && label_mode(c, ctx) == Mode::Report =>
        {
            out.push(report_mode(ctx))
        }
        Daemon::Untracked | Daemon::Unreachable => {}
    }
    out
}

fn report_mode(ctx: &Context) -> Finding {
    Finding::new(
        Check::EgressReportMode,
        Severity::High,
        "report mode: nothing is denied, would-be denials are only logged",
        &format!(
            "remove the {}.mode=report label (or set default_mode = \"enforce\") once the policy is right",
            ctx.label_prefix
        ),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::docker::ContainerInfo;
    use crate::reconciler::DANGEROUS_CAPS;

    /// A container that follows every practice these checks look at.
    fn hardened() -> ContainerFacts {
        ContainerFacts {
            info: ContainerInfo {
                id: "0123456789abcdef".into(),
                name: "agent".into(),
                labels: BTreeMap::from([("egressd.enable".into(), "true".into())]),
                network_mode: "bridge".into(),
                ..Default::default()
            },
            user: "1000:1000".into(),
            read_only_rootfs: true,
            memory: 64 << 20,
            nano_cpus: 500_000_000,
            pids_limit: 64,
            security_opt: vec!["no-new-privileges".into()],
            ipc_mode: "private".into(),
            ..Default::default()
        }
    }

    fn confined() -> Egress {
        Egress {
            table: Table::Present,
            daemon: Daemon::Tracked {
                state: State::Enforced,
                reasons: vec![],
            },
        }
    }

    fn checks_of(f: &[Finding]) -> Vec<(Check, Severity)> {
        f.iter().map(|f| (f.check, f.severity)).collect()
    }

    #[test]
    fn hardened_container_has_no_findings() {
        assert_eq!(
            super::super::audit(&hardened(), &confined(), &Context::default()),
            vec![]
        );
    }

    #[test]
    fn privileged_is_high() {
        assert_eq!(privileged(&hardened()), None);
        let mut c = hardened();
        c.info.privileged = true;
        let f = privileged(&c).unwrap();
        assert_eq!((f.check, f.severity), (Check::Privileged, Severity::High));
        // It is unenforceable too: even with a table, it can flush it.
        let e = egress(&c, &confined(), &Context::default());
        assert_eq!(
            checks_of(&e),
            vec![(Check::EgressUnenforceable, Severity::High)]
        );
        assert!(e[0].message.contains("privileged"), "{e:?}");
        // Seccomp and AppArmor are off with it, but the privileged finding already says so.
        c.security_opt.push("seccomp=unconfined".into());
        c.apparmor_profile = "unconfined".into();
        assert_eq!(seccomp(&c), None);
        assert_eq!(apparmor(&c), None);
    }

    #[test]
    fn host_namespaces() {
        assert!(namespaces(&hardened()).is_empty());
        let mut c = hardened();
        c.info.network_mode = "host".into();
        c.pid_mode = "host".into();
        c.ipc_mode = "host".into();
        assert_eq!(
            checks_of(&namespaces(&c)),
            vec![
                (Check::HostNetwork, Severity::High),
                (Check::HostPid, Severity::High),
                (Check::HostIpc, Severity::Medium),
            ]
        );
        // Sharing another container's namespaces is not the host's.
        let mut c = hardened();
        c.pid_mode = "container:abc".into();
        c.ipc_mode = "shareable".into();
        c.info.network_mode = "container:abc".into();
        assert!(namespaces(&c).is_empty());
    }

    #[test]
    fn added_capabilities_by_severity() {
        assert!(capabilities(&hardened()).is_empty());
        let mut c = hardened();
        c.info.cap_add = vec![
            "NET_ADMIN".into(),
            "SYS_ADMIN".into(),
            "ALL".into(),
            "NET_BIND_SERVICE".into(),
            "SYS_NICE".into(),
            "NET_ADMIN".into(),
        ];
        let f = capabilities(&c);
        let got: Vec<(Option<&str>, Severity)> = f
            .iter()
            .map(|f| (f.subject.as_deref(), f.severity))
            .collect();
        assert_eq!(
            got,
            vec![
                (Some("ALL"), Severity::High),
                (Some("NET_ADMIN"), Severity::High),
                (Some("NET_BIND_SERVICE"), Severity::Low),
                (Some("SYS_ADMIN"), Severity::High),
                (Some("SYS_NICE"), Severity::Medium),
            ]
        );
        assert!(f.iter().all(|f| f.check == Check::CapAdd));
        // Every capability the daemon treats as unenforceable is high here.
        for cap in DANGEROUS_CAPS {
            assert!(HIGH_CAPS.iter().any(|(n, _)| *n == cap), "{cap}");
        }
    }

    #[test]
    fn seccomp_unconfined() {
        assert_eq!(seccomp(&hardened()), None);
        let mut c = hardened();
        c.security_opt
            .push("seccomp=/etc/docker/custom.json".into());
        assert_eq!(seccomp(&c), None);
        for opt in ["seccomp=unconfined", "seccomp:unconfined"] {
            let mut c = hardened();
            c.security_opt.push(opt.into());
            let f = seccomp(&c).unwrap();
            assert_eq!(
                (f.check, f.severity),
                (Check::SeccompUnconfined, Severity::Medium)
            );
        }
    }

    /// This machine's kernel has no AppArmor, so Docker reports an empty profile; on hosts
    /// with AppArmor it reports `unconfined` for `--security-opt apparmor=unconfined`. Both
    /// paths are covered here; the Docker test exercises the `SecurityOpt` one for real.
    #[test]
    fn apparmor_unconfined() {
        assert_eq!(apparmor(&hardened()), None);
        let mut c = hardened();
        c.apparmor_profile = "docker-default".into();
        assert_eq!(apparmor(&c), None);
        let mut c = hardened();
        c.apparmor_profile = "unconfined".into();
        assert_eq!(apparmor(&c).unwrap().check, Check::ApparmorUnconfined);
        for opt in ["apparmor=unconfined", "apparmor:unconfined"] {
            let mut c = hardened();
            c.security_opt.push(opt.into());
            let f = apparmor(&c).unwrap();
            assert_eq!(
                (f.check, f.severity),
                (Check::ApparmorUnconfined, Severity::Medium)
            );
        }
    }

    #[test]
    fn root_user() {
        assert_eq!(user(&hardened()), None);
        for u in ["1000", "agent", "nobody:nogroup", "1000:0"] {
            let mut c = hardened();
            c.user = u.into();
            assert_eq!(user(&c), None, "{u}");
        }
        for u in ["", "0", "root", "0:0", "root:wheel", "00"] {
            let mut c = hardened();
            c.user = u.into();
            let f = user(&c).unwrap_or_else(|| panic!("{u:?} is root"));
            assert_eq!((f.check, f.severity), (Check::RunsAsRoot, Severity::Medium));
        }
    }

    #[test]
    fn no_new_privileges_forms() {
        for opt in [
            "no-new-privileges",
            "no-new-privileges:true",
            "no-new-privileges=true",
        ] {
            let mut c = hardened();
            c.security_opt = vec![opt.into()];
            assert_eq!(no_new_privileges(&c), None, "{opt}");
        }
        for opts in [vec![], vec!["no-new-privileges:false".to_string()]] {
            let mut c = hardened();
            c.security_opt = opts;
            let f = no_new_privileges(&c).unwrap();
            assert_eq!(
                (f.check, f.severity),
                (Check::NoNewPrivileges, Severity::Low)
            );
        }
    }

    #[test]
    fn writable_rootfs() {
        assert_eq!(rootfs(&hardened()), None);
        let mut c = hardened();
        c.read_only_rootfs = false;
        let f = rootfs(&c).unwrap();
        assert_eq!(
            (f.check, f.severity),
            (Check::WritableRootfs, Severity::Low)
        );
    }

    #[test]
    fn each_limit_separately() {
        assert!(limits(&hardened()).is_empty());
        let mut c = hardened();
        c.memory = 0;
        assert_eq!(
            checks_of(&limits(&c)),
            vec![(Check::NoMemoryLimit, Severity::Medium)]
        );
        let mut c = hardened();
        c.nano_cpus = 0;
        assert_eq!(
            checks_of(&limits(&c)),
            vec![(Check::NoCpuLimit, Severity::Low)]
        );
        // --cpu-quota and --cpuset-cpus are limits too.
        c.cpu_quota = 50_000;
        assert!(limits(&c).is_empty());
        c.cpu_quota = 0;
        c.cpuset_cpus = "0".into();
        assert!(limits(&c).is_empty());
        let mut c = hardened();
        for unlimited in [0, -1] {
            c.pids_limit = unlimited;
            assert_eq!(
                checks_of(&limits(&c)),
                vec![(Check::NoPidsLimit, Severity::Medium)]
            );
        }
        let c = ContainerFacts::default();
        assert_eq!(limits(&c).len(), 3);
    }

    fn egress_of(c: &ContainerFacts, table: Table, daemon: Daemon) -> Vec<(Check, Severity)> {
        checks_of(&egress(c, &Egress { table, daemon }, &Context::default()))
    }

    fn tracked(state: State) -> Daemon {
        Daemon::Tracked {
            state,
            reasons: vec!["label egressd.profiles, column 1: \"nope\": unknown profile".into()],
        }
    }

    #[test]
    fn egress_confined_is_clean() {
        let c = hardened();
        assert!(egress_of(&c, Table::Present, tracked(State::Enforced)).is_empty());
        // The kernel is what counts: without the daemon, a present table is confinement.
        assert!(egress_of(&c, Table::Present, Daemon::Unreachable).is_empty());
    }

    #[test]
    fn egress_missing_table() {
        let c = hardened();
        for daemon in [
            Daemon::Unreachable,
            Daemon::Untracked,
            tracked(State::Enforced),
        ] {
            let f = egress(
                &c,
                &Egress {
                    table: Table::Absent,
                    daemon: daemon.clone(),
                },
                &Context::default(),
            );
            assert_eq!(
                checks_of(&f),
                vec![(Check::EgressUnconfined, Severity::High)],
                "{daemon:?}"
            );
        }
        let f = egress(
            &c,
            &Egress {
                table: Table::Absent,
                daemon: tracked(State::Enforced),
            },
            &Context::default(),
        );
        assert!(f[0].message.contains("removed behind its back"), "{f:?}");
        // Not opted in: unrestricted, but nobody promised otherwise.
        let mut plain = hardened();
        plain.info.labels.clear();
        assert_eq!(
            egress_of(&plain, Table::Absent, Daemon::Untracked),
            vec![(Check::EgressUnconfined, Severity::Medium)]
        );
        // It shares the netns of a confined container: the table is there.
        assert!(egress_of(&plain, Table::Present, Daemon::Untracked).is_empty());
    }

    #[test]
    fn egress_daemon_states() {
        let c = hardened();
        assert_eq!(
            egress_of(&c, Table::Present, tracked(State::Report)),
            vec![(Check::EgressReportMode, Severity::High)]
        );
        let q = egress(
            &c,
            &Egress {
                table: Table::Present,
                daemon: tracked(State::Quarantined),
            },
            &Context::default(),
        );
        assert_eq!(
            checks_of(&q),
            vec![(Check::EgressQuarantined, Severity::Medium)]
        );
        assert!(q[0].message.contains("unknown profile"), "{q:?}");
        assert_eq!(
            egress_of(&c, Table::Absent, tracked(State::Unenforceable)),
            vec![(Check::EgressUnenforceable, Severity::High)]
        );
        assert_eq!(
            egress_of(&c, Table::Present, tracked(State::Error)),
            vec![(Check::EgressError, Severity::Medium)]
        );
        assert_eq!(
            egress_of(&c, Table::Absent, tracked(State::Error)),
            vec![
                (Check::EgressUnconfined, Severity::High),
                (Check::EgressError, Severity::Medium)
            ]
        );
        assert_eq!(
            egress_of(&c, Table::Present, Daemon::Untracked),
            vec![(Check::EgressUntracked, Severity::Low)]
        );
    }

    #[test]
    fn egress_report_mode_without_the_daemon_comes_from_labels_and_config() {
        let mut c = hardened();
        c.info.labels.insert("egressd.mode".into(), "report".into());
        assert_eq!(
            egress_of(&c, Table::Present, Daemon::Unreachable),
            vec![(Check::EgressReportMode, Severity::High)]
        );
        let c = hardened();
        let ctx = Context {
            default_mode: Mode::Report,
            ..Context::default()
        };
        let f = egress(
            &c,
            &Egress {
                table: Table::Present,
                daemon: Daemon::Unreachable,
            },
            &ctx,
        );
        assert_eq!(
            checks_of(&f),
            vec![(Check::EgressReportMode, Severity::High)]
        );
    }

    #[test]
    fn egress_bypassable_table() {
        let mut c = hardened();
        c.info.cap_add = vec!["NET_ADMIN".into()];
        let f = egress(&c, &confined(), &Context::default());
        assert_eq!(
            checks_of(&f),
            vec![(Check::EgressUnenforceable, Severity::High)]
        );
        assert!(f[0].message.contains("NET_ADMIN"), "{f:?}");
        // Without a table and without the daemon: the settings alone say why.
        let f = egress(
            &c,
            &Egress {
                table: Table::Absent,
                daemon: Daemon::Unreachable,
            },
            &Context::default(),
        );
        assert_eq!(
            checks_of(&f),
            vec![(Check::EgressUnenforceable, Severity::High)]
        );
        assert!(f[0].message.contains("cannot confine"), "{f:?}");
        // Not opted in and no table: simply unconfined (the capability finding is high).
        c.info.labels.clear();
        assert_eq!(
            egress_of(&c, Table::Absent, Daemon::Untracked),
            vec![(Check::EgressUnconfined, Severity::Medium)]
        );
    }

    #[test]
    fn egress_unreadable_or_host_network() {
        let c = hardened();
        assert_eq!(
            egress_of(
                &c,
                Table::Unreadable("permission denied".into()),
                Daemon::Unreachable
            ),
            vec![(Check::EgressUnverified, Severity::Medium)]
        );
        let mut c = hardened();
        c.info.network_mode = "host".into();
        assert!(egress_of(&c, Table::Absent, Daemon::Unreachable).is_empty());
        assert!(egress_of(&hardened(), Table::NotChecked, Daemon::Unreachable).is_empty());
    }

    #[test]
    fn egress_uses_the_configured_label_prefix() {
        let c = hardened(); // labelled egressd.enable=true
        let ctx = Context {
            label_prefix: "acme".into(),
            ..Context::default()
        };
        let f = egress(
            &c,
            &Egress {
                table: Table::Absent,
                daemon: Daemon::Untracked,
            },
            &ctx,
        );
        assert_eq!(
            checks_of(&f),
            vec![(Check::EgressUnconfined, Severity::Medium)]
        );
        assert!(f[0].fix.contains("acme.enable=true"), "{f:?}");
    }
}
