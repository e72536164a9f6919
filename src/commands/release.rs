//! `egressd release (--all | CONTAINER... | --netns PATH...) [--dry-run]`: deletes egressd's
//! `inet egressd` table from network namespaces, which **opens** their egress. It exists for
//! uninstalling (`scripts/uninstall.sh --release`) and for an admin who wants a container out
//! of egressd's hands without restarting it; nothing else in egressd ever deletes a table of a
//! running container.
//!
//! - `--all`: every network namespace of the host ([`netns::list_all`]: Docker's and
//!   `ip netns` bind mounts, and `/proc/*/ns/net`, each namespace once);
//! - `CONTAINER...`: the namespace of each running container (name or id, through Docker);
//! - `--netns PATH...`: namespaces given by path (`/run/netns/NAME`, `/proc/PID/ns/net`).
//!
//! It refuses while the daemon answers on its control socket: the daemon would put the tables
//! back at its next sync, so the result would be neither confined nor released. Other tables
//! in each namespace are not touched. Exit status: 0 done, 1 some namespace failed (every
//! failure is reported, the others are still released), 2 it could not run.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::docker::DockerClient;
use crate::firewall::netns::{self, Netns};
use crate::firewall::{FirewallError, NsFirewall, TABLE_NAME};

/// Exit status when the command could not run at all.
const EXIT_ERROR: u8 = 2;

#[derive(clap::Args, Debug, Default)]
#[command(group(
    clap::ArgGroup::new("target")
        .required(true)
        .multiple(true)
        .args(["containers", "all", "netns"])
))]
pub struct ReleaseArgs {
    /// Running containers to release, by name or id.
    #[arg(value_name = "CONTAINER")]
    pub containers: Vec<String>,
    /// Every network namespace on the host that has an `inet egressd` table.
    #[arg(long, conflicts_with_all = ["containers", "netns"])]
    pub all: bool,
    /// A network namespace by path (repeatable): `/run/netns/NAME`, `/proc/PID/ns/net`.
    #[arg(long, value_name = "PATH")]
    pub netns: Vec<PathBuf>,
    /// Only list the namespaces that have a table; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Config file (control socket, Docker socket). Without this flag
    /// /etc/egressd/config.toml is read if it exists, and the defaults are used if it does not.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Control socket; default: `control.socket` from the config.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

/// One namespace to look at.
#[derive(Debug, Clone)]
pub struct Target {
    pub netns: Netns,
    /// What it is, for people: `container agent (3e61…)`, `pid 42 (sleep)`.
    pub what: String,
}

/// What happened in one namespace.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The table was there and is gone now.
    Released,
    /// Dry run: the table is there.
    WouldRelease,
    /// No `inet egressd` table in it.
    NoTable,
    /// The namespace disappeared while we looked (its last process exited).
    Gone,
}

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("{0}")]
    Firewall(#[from] FirewallError),
    #[error("{netns}: table inet {TABLE_NAME} is still there after it was deleted")]
    StillThere { netns: String },
}

/// Deletes the table in `netns` (or, with `dry_run`, only looks), and checks that it is gone.
pub fn release_netns(netns: &Netns, dry_run: bool) -> Result<Outcome, ReleaseError> {
    let fw = match NsFirewall::open(netns) {
        Ok(fw) => fw,
        // The process exited, or the bind mount went (Docker unmounts a sandbox before it
        // removes the file) since the namespace was listed.
        Err(FirewallError::Open { .. }) if !netns::is_namespace(netns.path()) => {
            return Ok(Outcome::Gone);
        }
        Err(e) => return Err(e.into()),
    };
    if !fw.table_exists()? {
        return Ok(Outcome::NoTable);
    }
    if dry_run {
        return Ok(Outcome::WouldRelease);
    }
    fw.delete_table()?;
    if fw.table_exists()? {
        return Err(ReleaseError::StillThere {
            netns: netns.to_string(),
        });
    }
    Ok(Outcome::Released)
}

pub fn run(args: &ReleaseArgs) -> ExitCode {
    match targets(args) {
        Ok(targets) => {
            let (text, failed) = release_all(&targets, args.dry_run);
            print!("{text}");
            if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("egressd release: {e}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// Releases every target; returns the report and whether any failed.
fn release_all(targets: &[Target], dry_run: bool) -> (String, bool) {
    let mut text = String::new();
    let (mut released, mut without, mut errors) = (0, 0, 0);
    for t in targets {
        match release_netns(&t.netns, dry_run) {
            Ok(Outcome::Released) => {
                released += 1;
                text += &format!(
                    "released      {} [{}]: table inet {TABLE_NAME} deleted, its egress is open\n",
                    t.netns, t.what
                );
            }
            Ok(Outcome::WouldRelease) => {
                released += 1;
                text += &format!(
                    "would release {} [{}]: has table inet {TABLE_NAME}\n",
                    t.netns, t.what
                );
            }
            Ok(Outcome::NoTable | Outcome::Gone) => without += 1,
            Err(e) => {
                errors += 1;
                text += &format!("FAILED        {} [{}]: {e}\n", t.netns, t.what);
            }
        }
    }
    text += &format!(
        "egressd release{}: {released} table(s) {}, {without} namespace(s) without one, {errors} error(s)\n",
        if dry_run { " --dry-run" } else { "" },
        if dry_run { "to delete" } else { "deleted" },
    );
    (text, errors > 0)
}

/// The namespaces the arguments name. Errors here stop the command before anything changes.
fn targets(args: &ReleaseArgs) -> Result<Vec<Target>, String> {
    let (_, config) = super::run::load_config(args.config.as_ref())?;
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(|| config.control.socket.clone());
    if !args.dry_run && std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        return Err(format!(
            "the daemon is running (it answers on {}): stop it first (systemctl stop egressd), \
             or it puts the tables back at its next sync",
            socket.display()
        ));
    }
    if args.all {
        return netns::list_all()
            .map(|all| {
                all.into_iter()
                    .map(|f| Target {
                        netns: f.netns,
                        what: f.seen_as,
                    })
                    .collect()
            })
            .map_err(|e| format!("cannot list the network namespaces: {e}"));
    }
    let mut out: Vec<Target> = args
        .netns
        .iter()
        .map(|p| {
            if !p.exists() {
                Err(format!("--netns {}: no such file", p.display()))
            } else if !netns::is_namespace(p) {
                Err(format!(
                    "--netns {}: not a namespace (not on nsfs)",
                    p.display()
                ))
            } else {
                Ok(Target {
                    netns: Netns::new(p),
                    what: "given by path".into(),
                })
            }
        })
        .collect::<Result<_, _>>()?;
    if !args.containers.is_empty() {
        let docker_socket = config.docker.socket.to_string_lossy().into_owned();
        out.extend(container_targets(&docker_socket, &args.containers)?);
    }
    Ok(out)
}

/// The network namespace of each named container, through Docker.
fn container_targets(docker_socket: &str, names: &[String]) -> Result<Vec<Target>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async {
        let docker = DockerClient::connect(docker_socket)
            .await
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for name in names {
            let info = docker
                .inspect(name)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("no container {name:?}"))?;
            let what = format!("container {} ({})", info.name, info.short_id());
            if info.network_mode == "host" {
                return Err(format!(
                    "{what} uses the host's network namespace: egressd never confines it, there is nothing to release"
                ));
            }
            if !info.running || info.pid == 0 {
                return Err(format!(
                    "{what} is not running: its network namespace (and table) went with it"
                ));
            }
            out.push(Target {
                netns: Netns::of_pid(info.pid),
                what,
            });
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_left_where_a_namespace_was_is_gone_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let stale = dir.path().join("0a1a7e8d44c5");
        std::fs::write(&stale, "").unwrap();
        assert_eq!(
            release_netns(&Netns::new(&stale), false).unwrap(),
            Outcome::Gone
        );
    }

    #[test]
    fn a_missing_namespace_is_gone_not_an_error() {
        let netns = Netns::new("/proc/4294967295/ns/net");
        assert_eq!(release_netns(&netns, false).unwrap(), Outcome::Gone);
        let (text, failed) = release_all(
            &[Target {
                netns,
                what: "test".into(),
            }],
            false,
        );
        assert!(!failed);
        assert!(
            text.ends_with("0 table(s) deleted, 1 namespace(s) without one, 0 error(s)\n"),
            "{text}"
        );
    }

    #[test]
    fn refuses_while_the_daemon_answers() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("egressd.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let cfg = dir.path().join("config.toml");
        std::fs::write(&cfg, "").unwrap();
        let args = ReleaseArgs {
            all: true,
            config: Some(cfg.clone()),
            socket: Some(sock.clone()),
            ..Default::default()
        };
        let err = targets(&args).unwrap_err();
        assert!(err.contains("the daemon is running"), "{err}");
        // A dry run only looks, so it may run next to the daemon.
        let dry = ReleaseArgs {
            dry_run: true,
            ..args
        };
        assert!(targets(&dry).is_ok());
    }

    #[test]
    fn a_missing_path_is_an_error_before_anything_changes() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.toml");
        std::fs::write(&cfg, "").unwrap();
        let err = targets(&ReleaseArgs {
            netns: vec![dir.path().join("nope")],
            config: Some(cfg),
            socket: Some(dir.path().join("none.sock")),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.contains("--netns") && err.contains("nope"), "{err}");
        std::fs::write(dir.path().join("plain"), "").unwrap();
        let err = targets(&ReleaseArgs {
            netns: vec![dir.path().join("plain")],
            config: Some(dir.path().join("config.toml")),
            socket: Some(dir.path().join("none.sock")),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.contains("not a namespace"), "{err}");
    }
}
