//! Apply latency of the firewall engine against `nft`, in a throwaway network namespace.
//!
//! ```text
//! sudo cargo bench --bench apply
//! ```
//!
//! Cases: atomic replace of the whole `inet egressd` table holding 1, 1,000 and 10,000 resolved
//! elements (with timeouts), and adding one element to a table of 1,000. Each case alternates
//! three methods, iteration by iteration:
//!
//! - `egressd`: `NsFirewall::apply` / `add_addrs` on a netfilter socket opened once in the netns
//!   (what the daemon does);
//! - `ip netns exec`: `ip netns exec NS nft -f FILE` (FILE = `table inet egressd` +
//!   `delete table inet egressd` + the table, the same atomic replace), or
//!   `ip netns exec NS nft add element ...`: what an operator or a shell-out daemon runs;
//! - `nft in netns`: the same `nft` command spawned from a thread already inside the netns,
//!   which leaves out the cost of `ip netns exec` (a second exec and a mount namespace).
//!
//! Spawning `nft` is part of the cost of the `nft` approach and is counted on purpose: it is
//! the comparison an operator faces. Without `--bench` (as under `cargo test --benches`) it
//! runs each case twice as a smoke test, and skips when not root.
//!
//! Only the namespace it creates is touched, and no packet is sent. The namespace is deleted
//! at the end, also when a case panics.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use egressd::firewall::{AddrElem, LogSettings, Netns, NsFirewall, Ruleset, SetName};
use egressd::policy::Proto;

/// The namespace and the temporary files; removed on drop (also while unwinding).
struct Scratch {
    name: String,
    files: Vec<PathBuf>,
}

impl Scratch {
    fn new() -> Scratch {
        let name = format!("egb-apply-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(&["ip", "netns", "add", &name]);
        run(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Scratch {
            name,
            files: Vec::new(),
        }
    }

    fn file(&mut self, tag: &str, text: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("{}-{tag}.nft", self.name));
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        self.files.push(path.clone());
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// Runs a command to completion; panics with its output when it fails.
fn run(args: &[&str]) {
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
}

fn owned(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// Time of one `ip netns exec NS ARGS...` run.
fn time_ip_netns_exec(ns: &str, args: &[String]) -> Duration {
    let mut full = vec!["ip".to_string(), "netns".into(), "exec".into(), ns.into()];
    full.extend_from_slice(args);
    let refs: Vec<&str> = full.iter().map(String::as_str).collect();
    let t = Instant::now();
    run(&refs);
    t.elapsed()
}

/// Time of one `ARGS...` run spawned from a thread already inside the netns (the thread's
/// setup is not timed).
fn time_in_netns(netns: &Netns, args: &[String]) -> Duration {
    let args = args.to_vec();
    netns
        .run(move || {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let t = Instant::now();
            run(&refs);
            Ok(t.elapsed())
        })
        .expect("run in netns")
}

/// Resolved element `i`: 10.100.0.0 + i, tcp 443, a timeout between 1 and 2 hours. The
/// addresses only live in the set; nothing is sent to them.
fn elem(i: u32) -> AddrElem {
    AddrElem {
        addr: IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 0)) + i)),
        proto: Proto::Tcp,
        port: 443,
        timeout: Duration::from_secs(3600 + u64::from(i % 3600)),
    }
}

fn ruleset(n: u32) -> Ruleset {
    let mut rs = Ruleset {
        addrs: (0..n).map(elem).collect(),
        ..Ruleset::empty(LogSettings::default())
    };
    rs.normalize();
    rs
}

/// `nft -f` input equivalent to `NsFirewall::apply`: one transaction that creates the table if
/// needed, deletes it and adds the new one.
fn replace_script(rs: &Ruleset) -> String {
    format!("table inet egressd\ndelete table inet egressd\n{rs}")
}

#[derive(Default)]
struct Samples(Vec<Duration>);

impl Samples {
    fn sorted(&self) -> Vec<Duration> {
        let mut v = self.0.clone();
        v.sort_unstable();
        v
    }
    fn median(&self) -> Duration {
        let v = self.sorted();
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2
        }
    }
    fn p90(&self) -> Duration {
        let v = self.sorted();
        let idx = (v.len() * 9).div_ceil(10).saturating_sub(1);
        v[idx]
    }
}

fn ms(d: Duration) -> String {
    let m = d.as_secs_f64() * 1e3;
    if m < 1.0 {
        format!("{m:.3}")
    } else if m < 100.0 {
        format!("{m:.2}")
    } else {
        format!("{m:.0}")
    }
}

struct CaseResult {
    name: String,
    iters: usize,
    egressd: Samples,
    ip_exec: Samples,
    in_netns: Samples,
}

impl CaseResult {
    fn ratio_ip_exec(&self) -> f64 {
        self.ip_exec.median().as_secs_f64() / self.egressd.median().as_secs_f64()
    }
    fn ratio_in_netns(&self) -> f64 {
        self.in_netns.median().as_secs_f64() / self.egressd.median().as_secs_f64()
    }
}

/// Atomic replace of a table of `n` elements, `iters` times, methods alternating.
fn bench_apply(
    scratch: &mut Scratch,
    netns: &Netns,
    fw: &NsFirewall,
    n: u32,
    iters: usize,
) -> CaseResult {
    let rs = ruleset(n);
    let path = scratch.file(&format!("apply{n}"), &replace_script(&rs));
    let nft = owned(&["nft", "-f", path.to_str().expect("utf-8 temp path")]);
    let ns = scratch.name.clone();
    let mut r = CaseResult {
        name: format!(
            "replace table, {n} element{}",
            if n == 1 { "" } else { "s" }
        ),
        iters,
        egressd: Samples::default(),
        ip_exec: Samples::default(),
        in_netns: Samples::default(),
    };
    let check = |who: &str| {
        let got = fw.count_elems(SetName::Dom4).expect("count elements");
        assert_eq!(
            got, n as usize,
            "{who}: dom4 holds {got} elements, want {n}"
        );
    };
    // Warm-up (page cache, nft's caches), and a check that both methods load the same table.
    fw.apply(&rs).expect("apply");
    check("egressd");
    time_ip_netns_exec(&ns, &nft);
    check("nft -f");
    fw.verify(&rs)
        .expect("the table nft loaded verifies against the ruleset");
    for i in 0..iters {
        // Rotate the order too, so no method always runs right after the same other one.
        for k in 0..3 {
            match (i + k) % 3 {
                0 => {
                    let t = Instant::now();
                    fw.apply(&rs).expect("apply");
                    r.egressd.0.push(t.elapsed());
                }
                1 => r.ip_exec.0.push(time_ip_netns_exec(&ns, &nft)),
                _ => r.in_netns.0.push(time_in_netns(netns, &nft)),
            }
        }
    }
    check("last run");
    r
}

/// Adding one new element to a table of `base` elements, `iters` times, methods alternating.
fn bench_add_one(
    scratch: &mut Scratch,
    netns: &Netns,
    fw: &NsFirewall,
    base: u32,
    iters: usize,
) -> CaseResult {
    fw.apply(&ruleset(base)).expect("apply base table");
    let ns = scratch.name.clone();
    let mut r = CaseResult {
        name: format!("add 1 element (table of {base})"),
        iters,
        egressd: Samples::default(),
        ip_exec: Samples::default(),
        in_netns: Samples::default(),
    };
    let mut next = base;
    let mut fresh = || {
        let e = elem(next);
        next += 1;
        e
    };
    let nft_add = |e: AddrElem| {
        owned(&[
            "nft",
            "add",
            "element",
            "inet",
            "egressd",
            "dom4",
            &format!("{{ {} . tcp . {} timeout 60s }}", e.addr, e.port),
        ])
    };
    for i in 0..iters {
        for k in 0..3 {
            let e = fresh();
            match (i + k) % 3 {
                0 => {
                    let t = Instant::now();
                    fw.add_addrs(&[e]).expect("add_addrs");
                    r.egressd.0.push(t.elapsed());
                }
                1 => r.ip_exec.0.push(time_ip_netns_exec(&ns, &nft_add(e))),
                _ => r.in_netns.0.push(time_in_netns(netns, &nft_add(e))),
            }
        }
    }
    let got = fw.count_elems(SetName::Dom4).expect("count elements");
    let want = next as usize;
    assert_eq!(
        got, want,
        "after the adds dom4 holds {got} elements, want {want}"
    );
    r
}

fn print_table(results: &[CaseResult]) {
    println!();
    println!(
        "{:<34} {:>5}  {:>17}  {:>17}  {:>7}  {:>17}  {:>7}",
        "case", "iters", "egressd med/p90", "ip netns exec nft", "ratio", "nft (in netns)", "ratio"
    );
    println!(
        "{:<34} {:>5}  {:>17}  {:>17}  {:>7}  {:>17}  {:>7}",
        "", "", "ms", "med/p90 ms", "", "med/p90 ms", ""
    );
    for r in results {
        println!(
            "{:<34} {:>5}  {:>17}  {:>17}  {:>6.1}x  {:>17}  {:>6.1}x",
            r.name,
            r.iters,
            format!("{} / {}", ms(r.egressd.median()), ms(r.egressd.p90())),
            format!("{} / {}", ms(r.ip_exec.median()), ms(r.ip_exec.p90())),
            r.ratio_ip_exec(),
            format!("{} / {}", ms(r.in_netns.median()), ms(r.in_netns.p90())),
            r.ratio_in_netns(),
        );
    }
    println!();
    println!("ratio = nft median / egressd median. The nft figures include spawning the nft");
    println!("process (and, in the first column, `ip netns exec`): that is the real cost of");
    println!("driving nftables through the nft CLI, which is what an operator compares against.");
}

fn command_output(args: &[&str]) -> String {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|e| format!("({e})"))
}

fn main() -> ExitCode {
    let full = std::env::args().any(|a| a == "--bench");
    if !nix::unistd::geteuid().is_root() {
        eprintln!("benches/apply: needs root (network namespaces and nftables)");
        return if full {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        };
    }
    // (elements, iterations) for the replace cases; iterations for the single add.
    let (apply_cases, add_iters): (&[(u32, usize)], usize) = if full {
        (&[(1, 200), (1000, 100), (10_000, 30)], 200)
    } else {
        (&[(1, 2), (1000, 2)], 2)
    };

    println!(
        "egressd apply benchmark: kernel {}, {}, {} CPUs",
        command_output(&["uname", "-r"]),
        command_output(&["nft", "--version"]),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let started = Instant::now();
    let mut scratch = Scratch::new();
    let netns = Netns::named(&scratch.name);
    println!("throwaway netns: {}", scratch.name);
    let fw = NsFirewall::open(&netns).expect("open netfilter socket in the netns");

    let mut opens = Samples::default();
    for _ in 0..if full { 50 } else { 2 } {
        let t = Instant::now();
        let f = NsFirewall::open(&netns).expect("open");
        opens.0.push(t.elapsed());
        drop(f);
    }

    let mut results = Vec::new();
    for &(n, iters) in apply_cases {
        let r = bench_apply(&mut scratch, &netns, &fw, n, iters);
        eprintln!(
            "  {}: egressd {} ms, nft {} ms",
            r.name,
            ms(r.egressd.median()),
            ms(r.ip_exec.median())
        );
        results.push(r);
    }
    let r = bench_add_one(&mut scratch, &netns, &fw, 1000, add_iters);
    results.push(r);
    fw.delete_table().expect("delete table");

    print_table(&results);
    println!(
        "NsFirewall::open (thread + setns + netlink socket): median {} ms, p90 {} ms",
        ms(opens.median()),
        ms(opens.p90())
    );
    if let Some(r) = results
        .iter()
        .find(|r| r.name == "replace table, 1000 elements")
    {
        let (a, b) = (r.ratio_ip_exec(), r.ratio_in_netns());
        let met = |x: f64| if x >= 5.0 { "met" } else { "NOT met" };
        println!(
            "goal: >= 5x faster than `nft -f` at 1,000 elements: {:.1}x vs `ip netns exec nft -f` ({}), {:.1}x vs `nft -f` alone ({})",
            a,
            met(a),
            b,
            met(b)
        );
    }
    println!("total time {:.1} s", started.elapsed().as_secs_f64());
    ExitCode::SUCCESS
}
