//! What `egressd status` shows: the JSON wire format of the control socket (stable for
//! scripts: fields are only ever added) and its human rendering. Pure.

use std::fmt::Write as _;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

pub use crate::dnsproxy::{ResolvedName, StatsSnapshot as DnsStats};
pub use crate::events::Event;

/// Events shown by `egressd status CONTAINER`: the last ones of each source (the table's log,
/// the DNS proxy), newest last.
pub const STATUS_EVENTS: usize = 10;

/// Version of the JSON layout; bumped only on an incompatible change.
pub const STATUS_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatusReport {
    pub version: u32,
    /// `resolve` or `proxy`.
    pub dns_mode: String,
    /// Whether the daemon is connected to Docker right now.
    pub docker_connected: bool,
    pub containers: Vec<ContainerStatus>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// The table is in place and enforces the policy.
    Enforced,
    /// The table is in place in report mode: nothing is denied, would-be denials are logged.
    Report,
    /// The labels or profiles are invalid: all egress is denied.
    Quarantined,
    /// egressd cannot confine this container (host network, privileged, NET_ADMIN…).
    Unenforceable,
    /// Programming the table failed; egressd tried to quarantine it (see `last_error`).
    Error,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Enforced => "enforced",
            State::Report => "report",
            State::Quarantined => "quarantined",
            State::Unenforceable => "unenforceable",
            State::Error => "error",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContainerStatus {
    pub id: String,
    pub name: String,
    pub state: State,
    pub profiles: Vec<String>,
    /// How the table got there: `hook` (the runtime shim's prestart hook, before the process
    /// started), `event`, `sync` (daemon start or Docker reconnect), `reload`.
    pub enforced_by: String,
    /// Microseconds from Docker's start event to the table being in place, when the table was
    /// written for that event (absent after a sync or for a container sharing another's table).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_to_table_us: Option<u64>,
    /// `--network container:X`: the container whose table confines this one.
    pub shared_with: Option<String>,
    pub hosts: Vec<HostStatus>,
    /// New allowed flows (the kernel's `allowed` counter counts the first packet of each).
    pub allowed_packets: u64,
    pub denied_packets: u64,
    #[serde(default)]
    pub denied_bytes: u64,
    /// Packets over a budget (`limit` label).
    #[serde(default)]
    pub limited_packets: u64,
    /// Why the container is quarantined, unenforceable or in error.
    pub errors: Vec<String>,
    pub last_error: Option<String>,
    /// `proxy` or `resolve`; empty when there is no table (unenforceable).
    #[serde(default)]
    pub dns_mode: String,
    /// Proxy mode: the names the container resolved that still have allowed addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resolved: Vec<ResolvedName>,
    /// Proxy mode: the container's DNS query counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsStats>,
    /// The last events (denied packets with their attribution, budget and anomaly warnings,
    /// refused DNS queries), oldest first. Only in the status of one container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<Event>,
    /// Events not logged (nor kept) because of the per-container rate limit.
    #[serde(default)]
    pub events_suppressed: u64,
    /// Why egressd cannot read the container's denied-packet log, if it cannot (enforcement
    /// does not depend on it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostStatus {
    /// `api.openai.com`, `*.example.com`, `10.0.0.0/8`, `dns 10.0.0.2`.
    pub host: String,
    /// `443`, `80,443`, `8000-8100`.
    pub ports: String,
    pub proto: String,
    /// `profile openai`, `label egressd.allow`, `container DNS`.
    pub source: String,
    /// Current addresses of a domain (empty for a CIDR, or when not resolved yet).
    pub addrs: Vec<AddrStatus>,
    /// Allowed packets and bytes sent to this host (all its addresses and ports), counted by
    /// the kernel per set element, since egressd first saw the container.
    #[serde(default)]
    pub packets: u64,
    #[serde(default)]
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AddrStatus {
    pub addr: IpAddr,
    /// Seconds until the kernel removes the address from the set.
    pub expires_in_secs: u64,
}

/// The human form: one block per container, readable at a glance.
pub fn render(report: &StatusReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "dns mode: {}   docker: {}   containers: {}",
        report.dns_mode,
        if report.docker_connected {
            "connected"
        } else {
            "DISCONNECTED"
        },
        report.containers.len()
    );
    for c in &report.containers {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{} ({})  {}",
            c.name,
            c.id.get(..12).unwrap_or(&c.id),
            c.state.as_str().to_uppercase()
        );
        if !c.profiles.is_empty() {
            let _ = writeln!(out, "  profiles: {}", c.profiles.join(", "));
        }
        if let Some(s) = &c.shared_with {
            let _ = writeln!(out, "  shares the network namespace (and table) of {s}");
        }
        let latency = match c.event_to_table_us {
            Some(us) => format!(" ({:.1} ms after start)", us as f64 / 1e3),
            None if c.enforced_by == "hook" => " (before the process started)".into(),
            None => String::new(),
        };
        let limited = if c.limited_packets > 0 {
            format!("   over budget: {} pkts", c.limited_packets)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "  via: {}{}   allowed flows: {}   denied: {} pkts{}",
            c.enforced_by, latency, c.allowed_packets, c.denied_packets, limited
        );
        for e in &c.errors {
            let _ = writeln!(out, "  ! {e}");
        }
        if let Some(e) = &c.last_error {
            let _ = writeln!(out, "  last error: {e}");
        }
        if let Some(d) = &c.dns {
            let _ = writeln!(
                out,
                "  dns: {}   queries: {}   forwarded: {}   refused: {}   servfail: {}   stripped: {}   capped: {}",
                c.dns_mode, d.queries, d.forwarded, d.refused, d.servfail, d.stripped, d.capped
            );
        }
        for h in &c.hosts {
            let addrs = if h.addrs.is_empty() {
                String::new()
            } else {
                let list: Vec<String> = h
                    .addrs
                    .iter()
                    .map(|a| format!("{} ({}s)", a.addr, a.expires_in_secs))
                    .collect();
                format!("  -> {}", list.join(", "))
            };
            let traffic = if h.packets > 0 {
                format!("   sent {} pkts, {}", h.packets, human_bytes(h.bytes))
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "  {:<32} {}/{}  [{}]{}{}",
                h.host, h.ports, h.proto, h.source, addrs, traffic
            );
        }
        if !c.resolved.is_empty() {
            let _ = writeln!(out, "  resolved by the container:");
            for r in &c.resolved {
                let list: Vec<String> = r
                    .addrs
                    .iter()
                    .map(|(a, secs)| format!("{a} ({secs}s)"))
                    .collect();
                let _ = writeln!(
                    out,
                    "    {:<30} -> {}   ({} queries, last {}s ago)",
                    r.name,
                    list.join(", "),
                    r.queries,
                    r.last_query_secs_ago
                );
            }
        }
        if let Some(e) = &c.events_error {
            let _ = writeln!(out, "  events: unavailable: {e}");
        }
        if !c.events.is_empty() {
            let _ = writeln!(
                out,
                "  recent events ({} shown, {} suppressed by the rate limit):",
                c.events.len(),
                c.events_suppressed
            );
            let newest = c.events.last().map_or(0, |e| e.at_ms);
            for e in &c.events {
                let ago = newest.saturating_sub(e.at_ms) as f64 / 1e3;
                let _ = writeln!(out, "    -{ago:>6.1}s  {}", e.summary());
            }
        }
    }
    out
}

/// `1.2 kB`, `3.4 MB`: decimal units, as `limit` labels use them.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i < UNITS.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StatusReport {
        StatusReport {
            version: STATUS_VERSION,
            dns_mode: "resolve".into(),
            docker_connected: true,
            containers: vec![ContainerStatus {
                id: "0123456789abcdef".into(),
                name: "agent".into(),
                state: State::Enforced,
                profiles: vec!["openai".into()],
                enforced_by: "event".into(),
                event_to_table_us: Some(3500),
                shared_with: None,
                hosts: vec![HostStatus {
                    host: "api.openai.com".into(),
                    ports: "443".into(),
                    proto: "tcp".into(),
                    source: "profile openai".into(),
                    addrs: vec![AddrStatus {
                        addr: "192.0.2.1".parse().unwrap(),
                        expires_in_secs: 42,
                    }],
                    packets: 12,
                    bytes: 3400,
                }],
                allowed_packets: 3,
                denied_packets: 7,
                denied_bytes: 420,
                limited_packets: 0,
                errors: vec![],
                last_error: None,
                dns_mode: "proxy".into(),
                resolved: vec![ResolvedName {
                    name: "api.openai.com".into(),
                    queries: 4,
                    last_query_secs_ago: 2,
                    addrs: vec![("192.0.2.1".parse().unwrap(), 88)],
                }],
                dns: Some(DnsStats {
                    queries: 9,
                    forwarded: 4,
                    refused: 5,
                    ..Default::default()
                }),
                events: vec![
                    Event {
                        at_ms: 1_000,
                        kind: crate::events::EventKind::Deny,
                        dst: Some("192.0.2.1".parse().unwrap()),
                        port: Some(8443),
                        proto: Some("tcp".into()),
                        domains: vec!["api.openai.com".into()],
                        name: None,
                        detail: None,
                    },
                    Event::dns(
                        crate::events::EventKind::DnsRefused,
                        "x.evil.test",
                        "name not allowed".into(),
                        std::time::UNIX_EPOCH + std::time::Duration::from_millis(3_500),
                    ),
                ],
                events_suppressed: 4,
                events_error: None,
            }],
        }
    }

    #[test]
    fn json_round_trips_and_uses_lowercase_states() {
        let r = sample();
        let j = serde_json::to_string(&r).unwrap();
        assert!(j.contains("\"state\":\"enforced\""), "{j}");
        let back: StatusReport = serde_json::from_str(&j).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn human_output_shows_the_essentials() {
        let text = render(&sample());
        for needle in [
            "agent (0123456789ab)  ENFORCED",
            "profiles: openai",
            "denied: 7 pkts",
            "allowed flows: 3",
            "sent 12 pkts, 3.4 kB",
            "recent events (2 shown, 4 suppressed by the rate limit):",
            "-   2.5s  deny tcp 192.0.2.1:8443 (api.openai.com)",
            "-   0.0s  dns-refused x.evil.test: name not allowed",
            "api.openai.com",
            "192.0.2.1 (42s)",
            "refused: 5",
            "resolved by the container:",
            "192.0.2.1 (88s)   (4 queries, last 2s ago)",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }
}
