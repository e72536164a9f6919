//! `egressd audit [CONTAINER...] [--json] [--all]`: hardening audit of running containers.
//!
//! The I/O half of [`crate::audit`]: asks the daemon for its status (when its control socket
//! answers), lists and inspects containers through the Docker API, reads the kernel for an
//! `inet egressd` table in each container's network namespace, then prints the report.
//!
//! Exit status: 0 no high-severity finding, 1 at least one (a CI gate), 2 the audit could not
//! run (invalid config, Docker unreachable, a named container not running).
//!
//! Nothing is logged: no tracing subscriber is installed, so the Docker client's debug output
//! (which holds the containers' environment, secrets included) goes nowhere.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bollard::models::ContainerInspectResponse;

use crate::audit::{
    self, AuditReport, ContainerFacts, ContainerReport, Context, Daemon, DaemonSummary, Egress,
    Scope, Table, report,
};
use crate::control::{self, Request};
use crate::docker::{DockerClient, DockerError};
use crate::firewall::{Netns, NsFirewall};
use crate::status::StatusReport;

/// Exit status when at least one high-severity finding exists.
const EXIT_HIGH: u8 = 1;
/// Exit status when the audit could not run.
const EXIT_ERROR: u8 = 2;
/// How long the daemon may take to answer the status request.
const DAEMON_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(clap::Args, Debug, Clone, Default)]
pub struct AuditArgs {
    /// Containers to audit, by name or id (prefix), whether or not they opted in. Default:
    /// every running container that opted in (`PREFIX.enable`), or every one with --all.
    #[arg(value_name = "CONTAINER")]
    pub containers: Vec<String>,
    /// Audit every running container, not only the opted-in ones.
    #[arg(long)]
    pub all: bool,
    /// Print the JSON report (stable for scripts; versioned like `status --json`).
    #[arg(long)]
    pub json: bool,
    /// Config file (Docker socket, label prefix, control socket). Without this flag
    /// /etc/egressd/config.toml is read if it exists, and the defaults are used if it does not.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Control socket; default: `control.socket` from the config.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

/// Why the audit could not run (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("invalid config:\n{0}")]
    Config(String),
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("{0}")]
    Docker(#[from] DockerError),
    #[error("no running container matches {0:?}")]
    NoSuchContainer(String),
    #[error("container {name:?} matches {count} running containers; give more of the name or id")]
    Ambiguous { name: String, count: usize },
    #[error("cannot encode the report as JSON: {0}")]
    Json(#[source] serde_json::Error),
}

pub fn run(args: &AuditArgs) -> ExitCode {
    let result = collect(args).and_then(|report| {
        let text = if args.json {
            serde_json::to_string_pretty(&report)
                .map(|j| j + "\n")
                .map_err(AuditError::Json)?
        } else {
            report::render(&report)
        };
        Ok((report, text))
    });
    match result {
        Ok((report, text)) => {
            print!("{text}");
            if report.has_high() {
                ExitCode::from(EXIT_HIGH)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("egressd audit: {e}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// Gathers every fact and runs the checks.
pub fn collect(args: &AuditArgs) -> Result<AuditReport, AuditError> {
    let (_, config) = super::run::load_config(args.config.as_ref()).map_err(AuditError::Config)?;
    let ctx = Context::from_config(&config);
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(|| config.control.socket.clone());
    let (daemon_summary, status) = daemon_status(&socket);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AuditError::Runtime)?;
    let docker_socket = config.docker.socket.to_string_lossy().into_owned();
    let inspected = runtime.block_on(inspect_running(&docker_socket))?;

    let scope = if !args.containers.is_empty() {
        Scope::Named
    } else if args.all {
        Scope::All
    } else {
        Scope::OptedIn
    };
    let facts: Vec<ContainerFacts> = inspected.iter().map(ContainerFacts::from_inspect).collect();
    let selected = select(&facts, scope, &args.containers, &ctx.label_prefix)?;

    let containers = selected
        .into_iter()
        .map(|c| {
            let egress = Egress {
                table: table_of(c),
                daemon: daemon_view(status.as_ref(), &c.info.id),
            };
            ContainerReport::new(
                &c.info.id,
                &c.info.name,
                audit::opted_in(&c.info.labels, &ctx.label_prefix),
                audit::audit(c, &egress, &ctx),
            )
        })
        .collect();
    Ok(AuditReport::new(
        scope,
        &ctx.label_prefix,
        daemon_summary,
        containers,
    ))
}

/// Asks the daemon for the status of every container it manages.
fn daemon_status(socket: &std::path::Path) -> (DaemonSummary, Option<StatusReport>) {
    let summary = |answering, error| DaemonSummary {
        socket: socket.display().to_string(),
        answering,
        error,
    };
    match control::request(socket, &Request::Status { container: None }, DAEMON_TIMEOUT) {
        Ok(resp) if resp.ok => match resp.status {
            Some(s) => (summary(true, None), Some(s)),
            None => (
                summary(false, Some("the daemon sent no status".into())),
                None,
            ),
        },
        Ok(resp) => (summary(false, resp.error), None),
        Err(e) => (summary(false, Some(e.to_string())), None),
    }
}

/// Inspects every running container.
async fn inspect_running(docker_socket: &str) -> Result<Vec<ContainerInspectResponse>, AuditError> {
    let docker = DockerClient::connect(docker_socket).await?;
    let mut out = Vec::new();
    for id in docker.running_ids().await? {
        // Gone since the listing: nothing to audit.
        if let Some(r) = docker.inspect_response(&id).await?
            && r.state.as_ref().and_then(|s| s.running).unwrap_or(false)
        {
            out.push(r);
        }
    }
    Ok(out)
}

/// The containers in scope. A name on the command line matches a container's name exactly,
/// or a prefix of its id.
fn select<'a>(
    facts: &'a [ContainerFacts],
    scope: Scope,
    names: &[String],
    prefix: &str,
) -> Result<Vec<&'a ContainerFacts>, AuditError> {
    match scope {
        Scope::OptedIn => Ok(facts
            .iter()
            .filter(|c| audit::opted_in(&c.info.labels, prefix))
            .collect()),
        Scope::All => Ok(facts.iter().collect()),
        Scope::Named => {
            // Keyed by id so a container named twice is audited once.
            let mut picked: BTreeMap<&str, &ContainerFacts> = BTreeMap::new();
            for name in names {
                let wanted = name.trim_start_matches('/');
                let by_name: Vec<&ContainerFacts> =
                    facts.iter().filter(|c| c.info.name == wanted).collect();
                let hits = if by_name.is_empty() {
                    facts
                        .iter()
                        .filter(|c| !wanted.is_empty() && c.info.id.starts_with(wanted))
                        .collect()
                } else {
                    by_name
                };
                match hits.as_slice() {
                    [] => return Err(AuditError::NoSuchContainer(name.clone())),
                    [one] => {
                        picked.insert(&one.info.id, one);
                    }
                    many => {
                        return Err(AuditError::Ambiguous {
                            name: name.clone(),
                            count: many.len(),
                        });
                    }
                }
            }
            Ok(picked.into_values().collect())
        }
    }
}

/// Reads the kernel: is there an `inet egressd` table in the container's netns?
fn table_of(c: &ContainerFacts) -> Table {
    if c.info.network_mode == "host" {
        return Table::NotChecked;
    }
    if c.info.pid == 0 {
        return Table::Unreadable("Docker reports no process for it".into());
    }
    match NsFirewall::open(&Netns::of_pid(c.info.pid)).and_then(|fw| fw.table_exists()) {
        Ok(true) => Table::Present,
        Ok(false) => Table::Absent,
        Err(e) => Table::Unreadable(e.to_string()),
    }
}

/// What the daemon's status says about container `id`.
fn daemon_view(status: Option<&StatusReport>, id: &str) -> Daemon {
    let Some(status) = status else {
        return Daemon::Unreachable;
    };
    match status.containers.iter().find(|s| s.id == id) {
        None => Daemon::Untracked,
        Some(s) => Daemon::Tracked {
            state: s.state,
            reasons: s.errors.iter().chain(&s.last_error).cloned().collect(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::ContainerInfo;
    use crate::status::{ContainerStatus, STATUS_VERSION, State};

    fn facts(id: &str, name: &str, opted_in: bool) -> ContainerFacts {
        let mut info = ContainerInfo {
            id: id.into(),
            name: name.into(),
            ..Default::default()
        };
        if opted_in {
            info.labels.insert("egressd.enable".into(), "true".into());
        }
        ContainerFacts {
            info,
            ..Default::default()
        }
    }

    fn names(v: &[&ContainerFacts]) -> Vec<String> {
        v.iter().map(|c| c.info.name.clone()).collect()
    }

    #[test]
    fn selection_by_scope() {
        let all = [
            facts("aaaa1111", "agent", true),
            facts("bbbb2222", "db", false),
            facts("aaab3333", "web", false),
        ];
        let s = |scope, n: &[&str]| {
            let n: Vec<String> = n.iter().map(|s| s.to_string()).collect();
            select(&all, scope, &n, "egressd")
        };
        assert_eq!(names(&s(Scope::OptedIn, &[]).unwrap()), ["agent"]);
        assert_eq!(names(&s(Scope::All, &[]).unwrap()).len(), 3);
        assert_eq!(names(&s(Scope::Named, &["db", "/db"]).unwrap()), ["db"]);
        assert_eq!(names(&s(Scope::Named, &["bbbb"]).unwrap()), ["db"]);
        assert!(matches!(
            s(Scope::Named, &["nope"]),
            Err(AuditError::NoSuchContainer(_))
        ));
        assert!(matches!(
            s(Scope::Named, &["aaa"]),
            Err(AuditError::Ambiguous { count: 2, .. })
        ));
        assert!(matches!(
            s(Scope::Named, &[""]),
            Err(AuditError::NoSuchContainer(_))
        ));
    }

    #[test]
    fn daemon_view_from_status() {
        assert_eq!(daemon_view(None, "x"), Daemon::Unreachable);
        let status = StatusReport {
            version: STATUS_VERSION,
            dns_mode: "resolve".into(),
            docker_connected: true,
            containers: vec![ContainerStatus {
                id: "abc".into(),
                name: "agent".into(),
                state: State::Error,
                profiles: vec![],
                enforced_by: "event".into(),
                event_to_table_us: None,
                shared_with: None,
                hosts: vec![],
                allowed_packets: 0,
                denied_packets: 0,
                denied_bytes: 0,
                limited_packets: 0,
                errors: vec!["e1".into()],
                last_error: Some("e2".into()),
                dns_mode: "resolve".into(),
                resolved: vec![],
                dns: None,
                events: vec![],
                events_suppressed: 0,
                events_error: None,
            }],
        };
        assert_eq!(daemon_view(Some(&status), "zzz"), Daemon::Untracked);
        assert_eq!(
            daemon_view(Some(&status), "abc"),
            Daemon::Tracked {
                state: State::Error,
                reasons: vec!["e1".into(), "e2".into()]
            }
        );
    }

    #[test]
    fn host_network_and_missing_pid_are_not_read() {
        let mut c = facts("a", "a", true);
        c.info.network_mode = "host".into();
        assert_eq!(table_of(&c), Table::NotChecked);
        let c = facts("a", "a", true);
        assert!(matches!(table_of(&c), Table::Unreadable(_)));
    }

    #[test]
    fn unreachable_daemon_is_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let (summary, status) = daemon_status(&dir.path().join("none.sock"));
        assert!(!summary.answering);
        assert!(summary.error.is_some());
        assert!(status.is_none());
    }

    #[test]
    fn clap_parses_flags_and_names() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: AuditArgs,
        }
        let cli =
            Cli::try_parse_from(["audit", "--json", "--all", "--config", "/c.toml", "a", "b"])
                .unwrap();
        assert!(cli.args.json && cli.args.all);
        assert_eq!(cli.args.config, Some(PathBuf::from("/c.toml")));
        assert_eq!(cli.args.containers, vec!["a", "b"]);
    }

    #[test]
    fn docker_unreachable_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.toml");
        std::fs::write(
            &cfg,
            format!(
                "[docker]\nsocket = \"{}\"\n[control]\nsocket = \"{}\"\n",
                dir.path().join("docker.sock").display(),
                dir.path().join("egressd.sock").display()
            ),
        )
        .unwrap();
        let err = collect(&AuditArgs {
            config: Some(cfg),
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(err, AuditError::Docker(_)), "{err:?}");
        assert!(
            err.to_string().contains("cannot connect to Docker"),
            "{err}"
        );
    }
}
