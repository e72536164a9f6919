//! End-to-end for `egressd audit`: the real binary, a real dockerd, the real daemon and one real
//! container per check, each a well-hardened baseline with exactly one misconfiguration.
//!
//! The test makes (and removes, also on failure) an `--internal` Docker network, a FROM-scratch
//! busybox image, the containers (all `sleep`, none sends a packet) and a daemon with its own
//! label prefix (`egressd-audit`) and control socket, so daemons of other test runs on the same
//! dockerd leave these containers alone and this daemon leaves theirs alone. Sensitive mounts
//! use harmless host paths, read-only: `/etc`, and files the test creates.
//!
//! Not run for real, and covered by the unit tests of `src/audit/checks.rs` instead:
//! - `--privileged`: runc on this machine cannot apply every capability, so a privileged
//!   container never starts, and the audit only looks at running containers;
//! - `--network host`: test containers stay on `--internal` networks the test creates;
//! - the daemon states `error` and "not tracked", and an unreadable netns (needs non-root).
//!
//! AppArmor is not enabled in this kernel: Docker still records and starts
//! `--security-opt apparmor=unconfined`, so that check (which reads `SecurityOpt`) runs for
//! real; the `AppArmorProfile: unconfined` form hosts with AppArmor report is unit-tested.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use egressd::audit::AuditReport;
use egressd::firewall::{Netns, NsFirewall};
use egressd::status::{State, StatusReport};
use rand::Rng;

const IMAGE: &str = "egressd-audit-busybox";
/// Every container and network the test makes carries this label (cleanup finds them by it).
const LABEL: &str = "egressd-audit";
/// The label prefix of this test's config and daemon.
const PREFIX: &str = "egressd-audit";
/// Name prefix of the containers.
const NAME: &str = "egressd-audit-";

/// Runs a command and returns its output (stdout and stderr apart).
fn run(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A docker command that must succeed; retried while dockerd is unreachable (another test on
/// this machine restarts it now and then). Returns stdout, trimmed.
fn docker(args: &[&str]) -> String {
    let mut full = vec!["docker"];
    full.extend_from_slice(args);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = run(&full);
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        let t = text(&out);
        let unreachable =
            t.contains("Cannot connect to the Docker daemon") || t.contains("connection refused");
        assert!(
            unreachable && Instant::now() < deadline,
            "{full:?} failed: {t}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn wait(max: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + max;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn random_alnum(n: usize) -> String {
    rand::rng()
        .sample_iter(&rand::distr::Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

/// Removes every container and network of this test (leftovers of an earlier run included).
/// Best effort, and never panics: it also runs from `Drop`.
fn cleanup() {
    let filter = format!("label={LABEL}");
    let list = |args: &[&str]| -> Vec<String> {
        let out = run(args);
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let ids = list(&["docker", "ps", "-aq", "--filter", &filter]);
    if !ids.is_empty() {
        let mut args = vec!["docker", "rm", "-f"];
        args.extend(ids.iter().map(String::as_str));
        let _ = run(&args);
    }
    for n in list(&["docker", "network", "ls", "-q", "--filter", &filter]) {
        let _ = run(&["docker", "network", "rm", &n]);
    }
}

fn build_image(dir: &Path) {
    let ctx = dir.join("image");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::copy("/bin/busybox", ctx.join("busybox")).expect("busybox-static installed");
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nCMD [\"sh\"]\n",
    )
    .unwrap();
    docker(&["build", "-q", "-t", IMAGE, ctx.to_str().unwrap()]);
}

/// The test's network, temp dir and daemon; all removed on drop.
struct Fixture {
    net: String,
    dir: PathBuf,
    daemon: Option<Child>,
}

impl Fixture {
    fn new() -> Fixture {
        cleanup();
        let dir = std::env::temp_dir().join(format!("egressd-audit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut fx = Fixture {
            net: String::new(),
            dir,
            daemon: None,
        };
        build_image(&fx.dir);
        // A free /24 for the internal network (other tests use 10.231.x and 10.199.x).
        for i in 0..20 {
            let n = 10 + (std::process::id() + i) % 200;
            let net = format!("{NAME}net-{n}");
            let out = run(&[
                "docker",
                "network",
                "create",
                "--internal",
                "--subnet",
                &format!("10.234.{n}.0/24"),
                "--label",
                LABEL,
                &net,
            ]);
            if out.status.success() {
                fx.net = net;
                break;
            }
        }
        assert!(!fx.net.is_empty(), "no free subnet for the test network");
        std::fs::write(fx.dir.join("docker.sock"), "not a socket\n").unwrap();
        std::fs::create_dir_all(fx.dir.join(".ssh")).unwrap();
        let profiles = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
        // Loopback as the only upstream: no container here has a domain rule, and if one did
        // the query would still go nowhere.
        std::fs::write(
            fx.config(),
            format!(
                "label_prefix = \"{PREFIX}\"\nprofile_dirs = [\"{}\"]\non_unenforceable = \"warn\"\n[dns]\nupstreams = [\"127.0.0.1:53\"]\n[control]\nsocket = \"{}\"\n",
                profiles.display(),
                fx.socket().display()
            ),
        )
        .unwrap();
        fx.start_daemon();
        fx
    }

    fn config(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("egressd.sock")
    }

    fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    fn start_daemon(&mut self) {
        let log = std::fs::File::create(self.dir.join("daemon.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_egressd"))
            .args(["run", "--config", self.config().to_str().unwrap()])
            // Debug logging on purpose: no secret may reach the log even then.
            .env("EGRESSD_LOG", "debug")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemon = Some(child);
        assert!(
            wait(Duration::from_secs(20), || self.status().is_some()),
            "daemon did not become ready:\n{}",
            self.daemon_log()
        );
    }

    fn stop_daemon(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
    }

    fn status(&self) -> Option<StatusReport> {
        let out = run(&[
            env!("CARGO_BIN_EXE_egressd"),
            "status",
            "--json",
            "--socket",
            self.socket().to_str().unwrap(),
        ]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// `egressd audit --config ... ARGS`, with every log switch turned up.
    fn audit(&self, args: &[&str]) -> Output {
        let config = self.config();
        let mut full = vec![
            env!("CARGO_BIN_EXE_egressd"),
            "audit",
            "--config",
            config.to_str().unwrap(),
        ];
        full.extend_from_slice(args);
        Command::new(full[0])
            .args(&full[1..])
            .env("EGRESSD_LOG", "trace")
            .env("RUST_LOG", "trace")
            .output()
            .unwrap()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stop_daemon();
        if std::env::var_os("EGRESSD_AUDIT_KEEP").is_none() {
            cleanup();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// One container: the hardened baseline minus `without`, plus `with`, and what the audit must
/// report about it (check, severity, subject), nothing more and nothing less.
struct Case {
    name: String,
    without: &'static [&'static str],
    with: Vec<String>,
    expect: Vec<(&'static str, &'static str, Option<String>)>,
}

/// The hardened baseline, keyed so a case can leave one part out.
fn baseline() -> Vec<(&'static str, Vec<String>)> {
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        ("user", v(&["--user", "1000:1000"])),
        ("read-only", v(&["--read-only"])),
        ("cap-drop", v(&["--cap-drop", "ALL"])),
        ("memory", v(&["--memory", "64m"])),
        ("cpus", v(&["--cpus", "0.5"])),
        ("pids", v(&["--pids-limit", "64"])),
        ("nnp", v(&["--security-opt", "no-new-privileges"])),
        (
            "enable",
            vec!["--label".into(), format!("{PREFIX}.enable=true")],
        ),
    ]
}

fn case(
    name: &str,
    without: &'static [&'static str],
    with: &[String],
    expect: &[(&'static str, &'static str, Option<String>)],
) -> Case {
    Case {
        name: format!("{NAME}{name}"),
        without,
        with: with.to_vec(),
        expect: expect.to_vec(),
    }
}

fn s(a: &str) -> String {
    a.to_string()
}

fn start(fx: &Fixture, c: &Case) -> std::thread::JoinHandle<String> {
    let mut args: Vec<String> = vec![
        s("run"),
        s("-d"),
        s("--name"),
        c.name.clone(),
        s("--label"),
        s(LABEL),
        s("--network"),
        fx.net.clone(),
    ];
    for (key, part) in baseline() {
        if !c.without.contains(&key) {
            args.extend(part);
        }
    }
    args.extend(c.with.iter().cloned());
    args.extend([s(IMAGE), s("sleep"), s("3600")]);
    std::thread::spawn(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        docker(&refs)
    })
}

fn pid_of(name: &str) -> u32 {
    docker(&["inspect", "-f", "{{.State.Pid}}", name])
        .parse()
        .unwrap_or_else(|e| panic!("pid of {name}: {e}"))
}

#[test]
fn audit_finds_each_misconfiguration_and_never_prints_secrets() {
    let mut fx = Fixture::new();
    let key = format!("sk-proj-{}7", random_alnum(40));
    let token = format!("ghp_{}", random_alnum(36));
    let tmp = fx.dir.display().to_string();
    let dock = format!("{tmp}/docker.sock");
    let ssh = format!("{tmp}/.ssh");
    let hi = "high";
    let med = "medium";
    let low = "low";

    let cases = vec![
        case("hardened", &[], &[], &[]),
        case("root", &["user"], &[], &[("runs-as-root", med, None)]),
        case(
            "writable",
            &["read-only"],
            &[],
            &[("writable-rootfs", low, None)],
        ),
        case(
            "netadmin",
            &[],
            &[s("--cap-add"), s("NET_ADMIN")],
            &[
                ("cap-add", hi, Some(s("NET_ADMIN"))),
                ("egress-unenforceable", hi, None),
            ],
        ),
        case(
            "nomemory",
            &["memory"],
            &[],
            &[("no-memory-limit", med, None)],
        ),
        case("nocpu", &["cpus"], &[], &[("no-cpu-limit", low, None)]),
        case("nopids", &["pids"], &[], &[("no-pids-limit", med, None)]),
        case("nonnp", &["nnp"], &[], &[("no-new-privileges", low, None)]),
        case(
            "seccomp",
            &[],
            &[s("--security-opt"), s("seccomp=unconfined")],
            &[("seccomp-unconfined", med, None)],
        ),
        case(
            "apparmor",
            &[],
            &[s("--security-opt"), s("apparmor=unconfined")],
            &[("apparmor-unconfined", med, None)],
        ),
        case(
            "hostpid",
            &[],
            &[s("--pid"), s("host")],
            &[("host-pid", hi, None)],
        ),
        case(
            "hostipc",
            &[],
            &[s("--ipc"), s("host")],
            &[("host-ipc", med, None)],
        ),
        case(
            "dockersock",
            &[],
            &[s("-v"), format!("{dock}:/var/run/docker.sock:ro")],
            &[("docker-socket", hi, Some(dock.clone()))],
        ),
        case(
            "mounts",
            &[],
            &[
                s("-v"),
                s("/etc:/host/etc:ro"),
                s("--mount"),
                format!("type=bind,src={ssh},dst=/host/ssh,readonly"),
            ],
            &[
                ("sensitive-mount", med, Some(s("/etc"))),
                ("sensitive-mount", med, Some(ssh.clone())),
            ],
        ),
        // Its table is deleted behind the daemon's back below.
        case("notable", &[], &[], &[("egress-unconfined", hi, None)]),
        case(
            "report",
            &[],
            &[s("--label"), format!("{PREFIX}.mode=report")],
            &[("egress-report-mode", hi, None)],
        ),
        case(
            "quarantined",
            &[],
            &[s("--label"), format!("{PREFIX}.profiles=no-such-profile")],
            &[("egress-quarantined", med, None)],
        ),
        case(
            "unlabelled",
            &["enable"],
            &[],
            &[("egress-unconfined", med, None)],
        ),
        case(
            "secrets",
            &[],
            &[
                s("-e"),
                format!("OPENAI_API_KEY={key}"),
                s("-e"),
                format!("X={token}"),
                s("-e"),
                s("TOKENIZERS_PARALLELISM=false"),
            ],
            &[
                ("secret-env", hi, Some(s("OPENAI_API_KEY"))),
                ("secret-env", hi, Some(s("X"))),
            ],
        ),
    ];

    let t = Instant::now();
    let handles: Vec<_> = cases.iter().map(|c| start(&fx, c)).collect();
    for h in handles {
        h.join().expect("docker run");
    }
    eprintln!(
        "{} containers started in {:.1}s",
        cases.len(),
        t.elapsed().as_secs_f64()
    );

    // The daemon has decided on every opted-in container.
    let want_state: BTreeMap<String, State> = [
        ("notable", State::Enforced),
        ("report", State::Report),
        ("quarantined", State::Quarantined),
        ("netadmin", State::Unenforceable),
        ("hardened", State::Enforced),
    ]
    .into_iter()
    .map(|(n, s)| (format!("{NAME}{n}"), s))
    .collect();
    let labelled: Vec<&str> = cases
        .iter()
        .filter(|c| !c.without.contains(&"enable"))
        .map(|c| c.name.as_str())
        .collect();
    assert!(
        wait(Duration::from_secs(30), || {
            let Some(st) = fx.status() else { return false };
            labelled.iter().all(|n| {
                st.containers
                    .iter()
                    .any(|c| c.name == *n && want_state.get(*n).is_none_or(|want| c.state == *want))
            })
        }),
        "the daemon did not take every container in hand: {:?}\n{}",
        fx.status(),
        fx.daemon_log()
    );

    // Remove one table from outside: the daemon still says enforced, the kernel says otherwise.
    let notable = format!("{NAME}notable");
    let fw = NsFirewall::open(&Netns::of_pid(pid_of(&notable))).expect("open netns");
    assert!(fw.table_exists().unwrap(), "the daemon wrote its table");
    fw.delete_table().unwrap();
    assert!(!fw.table_exists().unwrap());

    // One JSON run over everything.
    let t = Instant::now();
    let out = fx.audit(&["--json", "--all"]);
    eprintln!("audit --json --all took {:.1}s", t.elapsed().as_secs_f64());
    let json_out = text(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "high findings exist: exit 1\n{json_out}"
    );
    let report: AuditReport = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("JSON report: {e}\n{json_out}"));
    assert_eq!(report.version, egressd::audit::AUDIT_VERSION);
    assert_eq!(report.label_prefix, PREFIX);
    assert!(report.daemon.answering, "{:?}", report.daemon);

    let mut failures = Vec::new();
    for c in &cases {
        let Some(got) = report.containers.iter().find(|r| r.name == c.name) else {
            failures.push(format!("{}: not in the report", c.name));
            continue;
        };
        let mut got: Vec<(String, String, Option<String>)> = got
            .findings
            .iter()
            .map(|f| {
                (
                    f.check.as_str().to_string(),
                    f.severity.as_str().to_string(),
                    f.subject.clone(),
                )
            })
            .collect();
        let mut want: Vec<(String, String, Option<String>)> = c
            .expect
            .iter()
            .map(|(ch, sev, sub)| (ch.to_string(), sev.to_string(), sub.clone()))
            .collect();
        got.sort();
        want.sort();
        if got != want {
            failures.push(format!("{}:\n   want {want:?}\n   got  {got:?}", c.name));
        }
    }
    assert!(
        failures.is_empty(),
        "findings differ:\n{}\n\nfull report:\n{json_out}",
        failures.join("\n")
    );
    let unlabelled = report
        .containers
        .iter()
        .find(|r| r.name == format!("{NAME}unlabelled"))
        .unwrap();
    assert!(!unlabelled.opted_in);

    // The human form, default scope: opted-in containers only.
    let human = fx.audit(&[]);
    let human_out = text(&human);
    assert_eq!(human.status.code(), Some(1), "{human_out}");
    let secrets_id = docker(&["inspect", "-f", "{{.Id}}", &format!("{NAME}secrets")]);
    for needle in [
        format!("{NAME}secrets ({})", &secrets_id[..12]),
        s("HIGH    secret-env            environment variable OPENAI_API_KEY"),
        s(
            "environment variable X looks like a secret: its value is shaped like a GitHub token (ghp_…).",
        ),
        format!("{NAME}hardened ("),
        s("summary: "),
    ] {
        assert!(
            human_out.contains(&needle),
            "missing {needle:?} in\n{human_out}"
        );
    }
    assert!(
        !human_out.contains(&format!("{NAME}unlabelled")),
        "an unlabelled container is audited only with --all:\n{human_out}"
    );

    // No secret value anywhere: audit output (both forms), stderr, the daemon's debug log.
    let inspect = docker(&["inspect", &format!("{NAME}secrets")]);
    assert!(
        inspect.contains(&key) && inspect.contains(&token),
        "the secrets really are in the container's config"
    );
    let log = fx.daemon_log();
    assert!(log.contains("DEBUG"), "the daemon logged at debug level");
    for (what, haystack) in [
        ("audit --json --all", &json_out),
        ("audit", &human_out),
        ("daemon log", &log),
    ] {
        for secret in [key.as_str(), token.as_str(), &key[8..], &token[4..]] {
            assert!(
                !haystack.contains(secret),
                "a secret value appears in the {what} output"
            );
        }
    }

    // A well-hardened container on its own: no findings, exit 0.
    let alone = fx.audit(&["--json", &format!("{NAME}hardened")]);
    assert_eq!(alone.status.code(), Some(0), "{}", text(&alone));
    let alone: AuditReport = serde_json::from_slice(&alone.stdout).unwrap();
    assert_eq!(alone.containers.len(), 1);
    assert!(alone.containers[0].findings.is_empty());
    assert_eq!(alone.summary.clean, 1);

    // Daemon down: the kernel tables, the labels and the settings still tell the story.
    fx.stop_daemon();
    let out = fx.audit(&["--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let down: AuditReport = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!down.daemon.answering);
    let checks_of = |name: &str| -> Vec<&'static str> {
        down.containers
            .iter()
            .find(|r| r.name == format!("{NAME}{name}"))
            .unwrap_or_else(|| panic!("{name} in the report"))
            .findings
            .iter()
            .map(|f| f.check.as_str())
            .collect()
    };
    assert_eq!(checks_of("hardened"), Vec::<&str>::new());
    assert_eq!(checks_of("notable"), ["egress-unconfined"]);
    assert_eq!(checks_of("report"), ["egress-report-mode"]);
    assert_eq!(checks_of("netadmin"), ["cap-add", "egress-unenforceable"]);
    // The quarantine table denies everything; only the daemon knows the policy is broken.
    assert_eq!(checks_of("quarantined"), Vec::<&str>::new());

    // A name that matches no running container is an operational error.
    let none = fx.audit(&[&format!("{NAME}no-such-container")]);
    assert_eq!(none.status.code(), Some(2), "{}", text(&none));
    assert!(text(&none).contains("no running container matches"));
}

/// Docker unreachable: exit 2 and a clear message (no container needed).
#[test]
fn docker_unreachable_exits_2() {
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
    let out = run(&[
        env!("CARGO_BIN_EXE_egressd"),
        "audit",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("egressd audit: cannot connect to Docker at") && err.contains("docker.sock"),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "no report on an operational error");
}
