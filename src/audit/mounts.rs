//! Bind mounts of the Docker socket and of sensitive host paths.
//!
//! Paths are compared lexically (the host's files are not looked at): `..` and `.` are
//! resolved, `/var/run` is taken to be `/run` (a symlink on every current distribution). Only
//! bind mounts are checked: a named volume's source is Docker's own storage directory, not a
//! host path the user chose.

use std::path::Path;

use super::{Check, Finding, Mount, Severity};

/// File names of container runtime API sockets: whoever reaches one is root on the host.
const RUNTIME_SOCKETS: [&str; 4] = ["docker.sock", "containerd.sock", "podman.sock", "crio.sock"];

/// A host directory whose contents are sensitive, with the severity of a read-only mount
/// (a writable one is always high).
struct Sensitive {
    path: &'static str,
    what: &'static str,
    read_only: Severity,
}

const SENSITIVE: [Sensitive; 9] = [
    Sensitive {
        path: "/etc",
        what: "the host's configuration (password hashes, keys, sudoers)",
        read_only: Severity::Medium,
    },
    Sensitive {
        path: "/root",
        what: "root's home directory (keys, credentials, shell history)",
        read_only: Severity::Medium,
    },
    Sensitive {
        path: "/home",
        what: "the users' home directories (keys, credentials, shell history)",
        read_only: Severity::Medium,
    },
    Sensitive {
        path: "/proc",
        what: "the host's /proc (every process, kernel settings)",
        read_only: Severity::Medium,
    },
    Sensitive {
        path: "/sys",
        what: "the host's /sys (kernel and device settings)",
        read_only: Severity::Medium,
    },
    Sensitive {
        path: "/dev",
        what: "the host's devices",
        read_only: Severity::Medium,
    },
    Sensitive {
        // A read-only mount of a directory of sockets still lets it connect to them.
        path: "/run",
        what: "the host's runtime sockets and state (/run, /var/run)",
        read_only: Severity::High,
    },
    Sensitive {
        path: "/var/lib/docker",
        what: "Docker's state (every container's filesystem and config)",
        read_only: Severity::Medium,
    },
    Sensitive {
        path: "/boot",
        what: "the host's kernel and boot loader",
        read_only: Severity::Medium,
    },
];

/// Directories that hold credentials, found anywhere in a path (`/home/u/.ssh`, `/srv/.aws`).
const CREDENTIAL_DIRS: [&[&str]; 7] = [
    &[".ssh"],
    &[".gnupg"],
    &[".aws"],
    &[".azure"],
    &[".kube"],
    &[".docker"],
    &[".config", "gcloud"],
];

/// Files and directories under `/etc` that are commonly mounted read-only and hold nothing
/// secret (time zone, CA certificates, name resolution).
const ETC_HARMLESS_READ_ONLY: [&str; 7] = [
    "/etc/localtime",
    "/etc/timezone",
    "/etc/ssl/certs",
    "/etc/ca-certificates",
    "/etc/pki/ca-trust",
    "/etc/hosts",
    "/etc/resolv.conf",
];

/// A path as normalized components: `//var/run/./x/../docker.sock` → `["run", "docker.sock"]`.
fn components(path: &str) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            p => out.push(p),
        }
    }
    if out.len() >= 2 && out[0] == "var" && out[1] == "run" {
        out.remove(0);
    }
    out
}

fn display(c: &[&str]) -> String {
    format!("/{}", c.join("/"))
}

/// What a mount of `src` exposes of the container runtime's API, if anything.
fn runtime_socket(src: &[&str], docker_socket: &[&str]) -> Option<String> {
    if src == docker_socket {
        return Some("the Docker socket".into());
    }
    if let Some(name) = src.last().filter(|n| RUNTIME_SOCKETS.contains(n)) {
        return Some(format!("a container runtime socket ({name})"));
    }
    if docker_socket.starts_with(src) {
        return Some(format!(
            "a directory that contains the Docker socket {}",
            display(docker_socket)
        ));
    }
    None
}

/// What sensitive host data a mount of `src` exposes, and the severity of a read-only mount.
fn sensitive(src: &[&str]) -> Option<(String, Severity)> {
    if src.is_empty() {
        return Some(("the host's root filesystem".into(), Severity::High));
    }
    for s in &SENSITIVE {
        let root = components(s.path);
        // `/home` itself and a whole user's home; a project directory below it is normal.
        let hit = if s.path == "/home" {
            src.starts_with(&root) && src.len() <= root.len() + 1
        } else {
            src.starts_with(&root)
        };
        if hit {
            return Some((s.what.to_string(), s.read_only));
        }
        // A parent of a sensitive directory (`/var` holds `/var/lib/docker`).
        if root.starts_with(src) {
            return Some((
                format!("a directory that contains {} ({})", s.path, s.what),
                s.read_only,
            ));
        }
    }
    for dir in CREDENTIAL_DIRS {
        if src.windows(dir.len()).any(|w| w == dir) {
            return Some((
                format!("a credentials directory ({})", dir.join("/")),
                Severity::Medium,
            ));
        }
    }
    None
}

/// Every bind mount of a runtime socket or of sensitive host data.
pub(super) fn check(mounts: &[Mount], docker_socket: &Path) -> Vec<Finding> {
    let socket_path = docker_socket.to_string_lossy();
    let socket = components(&socket_path);
    let mut out = Vec::new();
    for m in mounts.iter().filter(|m| m.kind == "bind") {
        let src = components(&m.source);
        let access = if m.writable {
            "read-write"
        } else {
            "read-only"
        };
        if let Some(what) = runtime_socket(&src, &socket) {
            out.push(
                Finding::new(
                    Check::DockerSocket,
                    Severity::High,
                    format!(
                        "bind-mounts {what}: {} at {}, {access}; whoever reaches it controls Docker, i.e. is root on the host; read-only does not help, a socket is connected to, not written",
                        m.source, m.destination
                    ),
                    "remove the mount; if it must use Docker, give it a filtering API proxy that allows only the calls it needs",
                )
                .about(m.source.clone()),
            );
        }
        let harmless = !m.writable
            && ETC_HARMLESS_READ_ONLY
                .iter()
                .any(|h| src.starts_with(&components(h)));
        if harmless {
            continue;
        }
        if let Some((what, read_only)) = sensitive(&src) {
            let severity = if m.writable {
                Severity::High
            } else {
                read_only
            };
            let fix = if m.writable {
                "remove the mount, or mount only the file or directory it needs, read-only (:ro)"
            } else {
                "remove the mount, or mount only the file or directory it needs"
            };
            out.push(
                Finding::new(
                    Check::SensitiveMount,
                    severity,
                    format!(
                        "bind-mounts {what}: {} at {}, {access}",
                        m.source, m.destination
                    ),
                    fix,
                )
                .about(m.source.clone()),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(source: &str, writable: bool) -> Mount {
        Mount {
            kind: "bind".into(),
            source: source.into(),
            destination: "/mnt".into(),
            writable,
        }
    }

    fn found(source: &str, writable: bool) -> Vec<(Check, Severity)> {
        check(&[bind(source, writable)], Path::new("/var/run/docker.sock"))
            .iter()
            .map(|f| (f.check, f.severity))
            .collect()
    }

    #[test]
    fn path_normalization() {
        assert_eq!(
            components("//var/run/./x/../docker.sock"),
            vec!["run", "docker.sock"]
        );
        assert_eq!(components("/"), Vec::<&str>::new());
        assert_eq!(components("/var/runner"), vec!["var", "runner"]);
    }

    #[test]
    fn docker_socket_even_read_only() {
        for src in [
            "/var/run/docker.sock",
            "/run/docker.sock",
            "/run/user/1000/docker.sock",
            "/tmp/x/docker.sock",
            "/run/containerd/containerd.sock",
        ] {
            for rw in [false, true] {
                let f = found(src, rw);
                assert!(
                    f.contains(&(Check::DockerSocket, Severity::High)),
                    "{src} rw={rw}: {f:?}"
                );
            }
        }
        // A socket at a custom path, mounted under another name.
        let f = check(&[bind("/srv/dock.api", false)], Path::new("/srv/dock.api"));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].check, Check::DockerSocket);
        assert_eq!(f[0].subject.as_deref(), Some("/srv/dock.api"));
        assert!(
            f[0].message.contains("the Docker socket: /srv/dock.api"),
            "{f:?}"
        );
        assert!(found("/srv/dock.api", false).is_empty());
    }

    #[test]
    fn directories_holding_the_socket() {
        // `/run` holds it: the socket finding plus the sensitive directory, high even read-only.
        assert_eq!(
            found("/var/run", false),
            vec![
                (Check::DockerSocket, Severity::High),
                (Check::SensitiveMount, Severity::High)
            ]
        );
        assert_eq!(
            found("/", false),
            vec![
                (Check::DockerSocket, Severity::High),
                (Check::SensitiveMount, Severity::High)
            ]
        );
    }

    #[test]
    fn sensitive_paths_read_only_is_lower() {
        for src in [
            "/etc",
            "/root",
            "/root/.config",
            "/home",
            "/home/alice",
            "/proc",
            "/sys/fs/cgroup",
            "/dev",
            "/var/lib/docker",
            "/var/lib/docker/volumes",
            "/var/lib",
            "/var",
            "/boot",
            "/etc/shadow",
            "/home/alice/.ssh",
            "/srv/deploy/.ssh/id_ed25519",
            "/home/alice/work/.aws",
            "/home/alice/.config/gcloud",
        ] {
            assert_eq!(
                found(src, true),
                vec![(Check::SensitiveMount, Severity::High)],
                "{src} read-write"
            );
            assert_eq!(
                found(src, false),
                vec![(Check::SensitiveMount, Severity::Medium)],
                "{src} read-only"
            );
        }
    }

    #[test]
    fn ordinary_mounts_are_fine() {
        for src in [
            "/home/alice/project",
            "/srv/data",
            "/tmp/work",
            "/var/log/app",
            "/opt/models",
            "/etc-backup",
            "/var/runner",
            "/home/alice/.sshfs-notes",
        ] {
            assert!(found(src, true).is_empty(), "{src}");
        }
        // Harmless /etc files, read-only only.
        for src in ["/etc/localtime", "/etc/ssl/certs", "/etc/resolv.conf"] {
            assert!(found(src, false).is_empty(), "{src}");
            assert_eq!(
                found(src, true),
                vec![(Check::SensitiveMount, Severity::High)]
            );
        }
        // Volumes and tmpfs are not host paths the user chose.
        let volume = Mount {
            kind: "volume".into(),
            source: "/var/lib/docker/volumes/v/_data".into(),
            destination: "/data".into(),
            writable: true,
        };
        assert!(check(&[volume], Path::new("/var/run/docker.sock")).is_empty());
    }

    #[test]
    fn message_names_both_paths() {
        let f = check(&[bind("/etc", false)], Path::new("/var/run/docker.sock"));
        assert_eq!(f[0].subject.as_deref(), Some("/etc"));
        assert!(f[0].message.contains(": /etc at /mnt, read-only"), "{f:?}");
    }
}
