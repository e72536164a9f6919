//! The DNS proxy (proxy mode) against querying the upstream directly and against dnsmasq
//! doing the same job (`--nftset`), on this machine, in throwaway network namespaces.
//!
//! ```text
//! sudo scripts/bench-dns.sh          # installs dnsperf and dnsmasq-base, builds, runs this
//! ```
//!
//! Topology (everything on loopback; no packet leaves the machine):
//! - namespace A: egressd's table (with the DNS redirect) and the proxy's listeners, as for a
//!   container; the proxy forwards from this process (the host namespace) to `fake_dns` on
//!   the host's 127.0.0.1.
//! - namespace B: a second `fake_dns` with the same records on 127.0.0.1:5300, and dnsmasq on
//!   127.0.0.1:53 forwarding to it with `cache-size=0` and `--nftset` into a timeout set
//!   (the nearest thing dnsmasq has to "allow the answer before it is used").
//!
//! Every queried name is allowed (`*.bench.test`) and answers one TEST-NET-3 address (it only
//! lives in a set; nothing connects to it), so each query takes the whole path: decide,
//! forward, filter, set element, answer.
//!
//! Measurements, alternated round by round:
//! 1. latency at light load: one query at a time from a client in the namespace, p50/p99,
//!    direct to the upstream (B) vs through the proxy (A) vs through dnsmasq (B);
//! 2. throughput: `dnsperf -l SECS -c 8 -q 256` against each.
//!
//! Prints the medians and the ratios. Without `--bench` (as under `cargo test --benches`) it
//! does nothing.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use egressd::dnsproxy::allow::Allowlist;
use egressd::dnsproxy::{ContainerProxy, Shared};
use egressd::firewall::{LogSettings, Netns, NsFirewall, Ruleset};
use egressd::policy::{self, Config, ProfileSet};

const NS_A: &str = "egb-dns-a";
const NS_B: &str = "egb-dns-b";
const NAMES: usize = 200;

struct Scratch {
    children: Vec<Child>,
    files: Vec<PathBuf>,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [NS_A, NS_B] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
    }
}

fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn examples_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/release/deps/dns-HASH -> target/release/examples
    exe.parent()
        .and_then(Path::parent)
        .map(|p| p.join("examples"))
        .expect("bench binary in target/<profile>/deps")
}

/// Starts fake_dns (optionally inside a namespace) and returns its address.
fn fake_dns(scratch: &mut Scratch, ns: Option<&str>, listen: &str, records: &Path) -> SocketAddr {
    let bin = examples_dir().join("fake_dns");
    assert!(
        bin.exists(),
        "{} missing: cargo build --release --example fake_dns",
        bin.display()
    );
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    let mut child = cmd
        .args(["--listen", listen, "--records"])
        .arg(records)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn fake_dns");
    let mut addr = None;
    let stdout = child.stdout.take().expect("stdout");
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("fake_dns stdout");
        if let Some(a) = line.strip_prefix("listening ") {
            addr = Some(a.parse().expect("address"));
        } else if line == "ready" {
            break;
        }
    }
    scratch.children.push(child);
    addr.expect("fake_dns listening")
}

fn query(id: u16, name: &str) -> Vec<u8> {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};
    let mut m = Message::new();
    m.set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(
            Name::from_ascii(name).expect("name"),
            RecordType::A,
        ));
    m.to_vec().expect("encode")
}

/// One query at a time from inside `ns`: the round-trip time of each.
fn latencies(ns: &str, server: SocketAddr, n: usize) -> Vec<Duration> {
    Netns::named(ns)
        .run(move || {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.connect(server)?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut buf = [0u8; 1500];
            let mut out = Vec::with_capacity(n);
            for i in 0..n {
                let q = query(i as u16, &format!("n{}.bench.test", i % NAMES));
                let t = Instant::now();
                s.send(&q)?;
                loop {
                    let got = s.recv(&mut buf)?;
                    if got >= 2 && buf[..2] == q[..2] {
                        break;
                    }
                }
                out.push(t.elapsed());
            }
            Ok(out)
        })
        .expect("latency client")
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `dnsperf` inside `ns` for `secs` seconds: queries per second.
fn dnsperf(ns: &str, server: SocketAddr, data: &Path, secs: u32) -> f64 {
    let out = run(&[
        "ip",
        "netns",
        "exec",
        ns,
        "dnsperf",
        "-s",
        &server.ip().to_string(),
        "-p",
        &server.port().to_string(),
        "-d",
        data.to_str().expect("utf-8 path"),
        "-l",
        &secs.to_string(),
        "-c",
        "8",
        "-q",
        "256",
        "-t",
        "2",
    ]);
    let qps = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Queries per second:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no qps in dnsperf output:\n{out}"));
    let lost = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Queries lost:"))
        .unwrap_or("?")
        .trim()
        .to_string();
    eprintln!("    dnsperf {ns} {server}: {qps:.0} qps, lost {lost}");
    qps
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() -> ExitCode {
    if !std::env::args().any(|a| a == "--bench") {
        return ExitCode::SUCCESS;
    }
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("dns bench: needs root (network namespaces, nftables)");
        return ExitCode::FAILURE;
    }
    for tool in ["dnsperf", "dnsmasq"] {
        if Command::new(tool).arg("--version").output().is_err() {
            eprintln!("dns bench: {tool} is missing (apt-get install dnsperf dnsmasq-base)");
            return ExitCode::FAILURE;
        }
    }
    let secs: u32 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut scratch = Scratch {
        children: Vec::new(),
        files: Vec::new(),
    };
    for ns in [NS_A, NS_B] {
        let _ = Command::new("ip").args(["netns", "del", ns]).output();
        run(&["ip", "netns", "add", ns]);
        run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }
    let dir = std::env::temp_dir();
    let records = dir.join("egb-dns-records");
    let data = dir.join("egb-dns-queries");
    let nft = dir.join("egb-dns-dnsmasq.nft");
    scratch
        .files
        .extend([records.clone(), data.clone(), nft.clone()]);
    let mut text = String::new();
    let mut queries = String::new();
    for i in 0..NAMES {
        text.push_str(&format!(
            "n{i}.bench.test A 203.0.113.{} 300\n",
            1 + i % 250
        ));
        queries.push_str(&format!("n{i}.bench.test A\n"));
    }
    std::fs::write(&records, text).expect("records");
    std::fs::write(&data, queries).expect("queries");

    // Upstreams: one on the host (for the proxy's forwarder), one in B (direct and dnsmasq).
    let host_up = fake_dns(&mut scratch, None, "127.0.0.1:0", &records);
    let b_up = fake_dns(&mut scratch, Some(NS_B), "127.0.0.1:5300", &records);

    // dnsmasq in B with an nft timeout set to put answers into.
    std::fs::write(
        &nft,
        "table inet dnsbench {\n\tset allowed4 {\n\t\ttype ipv4_addr\n\t\tflags timeout\n\t\ttimeout 1h\n\t}\n}\n",
    )
    .expect("nft file");
    run(&[
        "ip",
        "netns",
        "exec",
        NS_B,
        "nft",
        "-f",
        nft.to_str().expect("path"),
    ]);
    let dnsmasq = Command::new("ip")
        .args([
            "netns",
            "exec",
            NS_B,
            "dnsmasq",
            "--no-daemon",
            "--keep-in-foreground",
        ])
        .args([
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--server=127.0.0.1#5300",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--port=53",
            "--cache-size=0",
            "--nftset=/bench.test/4#inet#dnsbench#allowed4",
            "--pid-file=",
            "--user=root",
            "--log-facility=/dev/null",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dnsmasq");
    scratch.children.push(dnsmasq);
    let dnsmasq_addr: SocketAddr = "127.0.0.1:53".parse().expect("addr");

    // The proxy for namespace A, as the daemon runs it (2 tokio workers).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let config = Config::parse(
        Path::new("bench.toml"),
        "[dns]\nmode = \"proxy\"\nmin_ttl = 30\n",
    )
    .expect("config");
    let labels = [
        ("egressd.enable".to_string(), "true".to_string()),
        ("egressd.allow".to_string(), "*.bench.test".to_string()),
    ]
    .into_iter()
    .collect();
    let policy = policy::compile(&labels, &config, &ProfileSet::default()).expect("policy");
    let netns_a = Netns::named(NS_A);
    let (proxy, fw) = rt.block_on(async {
        let shared = Arc::new(Shared::new(&config, &[host_up]).expect("forwarder"));
        let allow = Allowlist::from_policy(&policy, &[]);
        let proxy =
            ContainerProxy::start(&netns_a, "bench", "bench", allow, false, shared).expect("proxy");
        let fw = NsFirewall::open(&netns_a).expect("fw");
        (proxy, fw)
    });
    let mut rs = Ruleset::from_policy(
        &policy,
        &std::collections::BTreeMap::new(),
        LogSettings::default(),
    );
    rs.dns_redirect = Some(proxy.redirect());
    fw.apply(&rs).expect("apply");
    // Any address's port 53 is redirected; 127.0.0.53 has a route in a bare namespace.
    let via_proxy: SocketAddr = "127.0.0.53:53".parse().expect("addr");

    // Warm-up: every name once through each path (fills dnsmasq's nft set and our sets).
    let _ = latencies(NS_A, via_proxy, NAMES);
    let _ = latencies(NS_B, dnsmasq_addr, NAMES);
    let _ = latencies(NS_B, b_up, NAMES);

    let n = 4000;
    let (mut direct, mut ours, mut theirs) = (Vec::new(), Vec::new(), Vec::new());
    let (mut q_direct, mut q_ours, mut q_theirs) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        eprintln!("round {}/{rounds}", round + 1);
        direct.extend(latencies(NS_B, b_up, n));
        ours.extend(latencies(NS_A, via_proxy, n));
        theirs.extend(latencies(NS_B, dnsmasq_addr, n));
        q_direct.push(dnsperf(NS_B, b_up, &data, secs));
        q_ours.push(dnsperf(NS_A, via_proxy, &data, secs));
        q_theirs.push(dnsperf(NS_B, dnsmasq_addr, &data, secs));
    }
    let st = proxy.stats();
    for v in [&mut direct, &mut ours, &mut theirs] {
        v.sort();
    }
    let (d50, d99) = (pct(&direct, 0.5), pct(&direct, 0.99));
    let (o50, o99) = (pct(&ours, 0.5), pct(&ours, 0.99));
    let (t50, t99) = (pct(&theirs, 0.5), pct(&theirs, 0.99));
    println!();
    println!(
        "latency, one query at a time ({} queries each):",
        direct.len()
    );
    println!("  {:<28} {:>9} {:>9}", "", "p50 µs", "p99 µs");
    println!(
        "  {:<28} {:>9.1} {:>9.1}",
        "direct to the upstream",
        us(d50),
        us(d99)
    );
    println!(
        "  {:<28} {:>9.1} {:>9.1}   added: p50 {:+.1} µs, p99 {:+.1} µs",
        "egressd proxy",
        us(o50),
        us(o99),
        us(o50) - us(d50),
        us(o99) - us(d99)
    );
    println!(
        "  {:<28} {:>9.1} {:>9.1}   added: p50 {:+.1} µs, p99 {:+.1} µs",
        "dnsmasq --nftset",
        us(t50),
        us(t99),
        us(t50) - us(d50),
        us(t99) - us(d99)
    );
    let (qd, qo, qt) = (median(q_direct), median(q_ours), median(q_theirs));
    println!();
    println!("throughput, dnsperf -c 8 -q 256, {secs} s, median of {rounds}:");
    println!("  direct to the upstream   {qd:>9.0} qps");
    println!("  egressd proxy            {qo:>9.0} qps");
    println!("  dnsmasq --nftset         {qt:>9.0} qps");
    println!("  egressd / dnsmasq        {:>9.2}x", qo / qt);
    println!();
    println!(
        "goals: added p50 latency < 60 µs: {}; qps >= 1.5x dnsmasq: {}",
        if us(o50) - us(d50) < 60.0 {
            "met"
        } else {
            "NOT met"
        },
        if qo / qt >= 1.5 { "met" } else { "NOT met" }
    );
    println!(
        "proxy counters: queries {} forwarded {} refused {} servfail {}",
        st.queries, st.forwarded, st.refused, st.servfail
    );
    drop(proxy);
    drop(rt);
    ExitCode::SUCCESS
}
