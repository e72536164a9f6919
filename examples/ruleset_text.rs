//! Prints an `inet egressd` table in `nft -f` syntax, for benchmarks that load it with `nft`.
//!
//! ```text
//! cargo run --release --example ruleset_text -- N ADDR:PORT [ADDR:PORT...]
//! ```
//!
//! The table holds N filler elements (resolved addresses `10.100.0.0 + i`, tcp port 443, with
//! timeouts, in set `dom4`) plus, for each `ADDR:PORT` (`10.1.2.3:5201`, `[fd00::1]:5201`),
//! one tcp and one udp element, so that a benchmark flow to it is allowed through a lookup in a
//! set of N + 2 elements. The filler addresses only live in the set: nothing is sent to them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use egressd::firewall::{AddrElem, LogSettings, Ruleset};
use egressd::policy::Proto;

/// Filler element `i`: 10.100.0.0 + i, tcp 443, a timeout between 1 and 2 hours.
fn filler(i: u32) -> AddrElem {
    AddrElem {
        addr: IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 0)) + i)),
        proto: Proto::Tcp,
        port: 443,
        timeout: Duration::from_secs(3600 + u64::from(i % 3600)),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: ruleset_text N ADDR:PORT [ADDR:PORT...]";
    let Some(n) = args.first().and_then(|a| a.parse::<u32>().ok()) else {
        eprintln!("{usage}");
        return ExitCode::from(2);
    };
    if n > 1 << 20 {
        eprintln!("N must be at most {}", 1 << 20);
        return ExitCode::from(2);
    }
    let mut allowed = Vec::new();
    for a in &args[1..] {
        match a.parse::<SocketAddr>() {
            Ok(sa) => allowed.push(sa),
            Err(e) => {
                eprintln!("{a}: not ADDR:PORT ({e})\n{usage}");
                return ExitCode::from(2);
            }
        }
    }
    let mut rs = Ruleset {
        addrs: (0..n).map(filler).collect(),
        ..Ruleset::empty(LogSettings::default())
    };
    for sa in allowed {
        for proto in [Proto::Tcp, Proto::Udp] {
            rs.addrs.push(AddrElem {
                addr: sa.ip(),
                proto,
                port: sa.port(),
                timeout: Duration::from_secs(3 * 3600),
            });
        }
    }
    rs.normalize();
    print!("{rs}");
    ExitCode::SUCCESS
}
