//! `egressd explain CONTAINER DEST[:PORT][/PROTO]`: whether a destination is allowed right now,
//! and why. Pure: the daemon gathers the [`Facts`] of one container (its rules, the addresses
//! its names carry now, the ones that expired lately, the kernel's answer) and [`explain`]
//! turns them into a verdict and the reasons an operator needs when an agent reports a
//! blocked call.

use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::policy::rule::{RuleOptions, parse_rule_list};
use crate::policy::{ContainerPolicy, Host, Mode, Proto, Rule, RuleSource};
use crate::status::State;

/// What is asked about: an address or a name, one port, one protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dest {
    pub host: DestHost,
    pub port: u16,
    pub proto: Proto,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestHost {
    Ip(IpAddr),
    Name(String),
}

impl std::fmt::Display for Dest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let proto = match self.proto {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        };
        match &self.host {
            DestHost::Ip(IpAddr::V6(a)) => write!(f, "[{a}]:{}/{proto}", self.port),
            DestHost::Ip(a) => write!(f, "{a}:{}/{proto}", self.port),
            DestHost::Name(n) => write!(f, "{n}:{}/{proto}", self.port),
        }
    }
}

/// Parses `DEST[:PORT][/PROTO]` with the rule grammar (port 443 and tcp by default), where
/// DEST is one address or one name and PORT one port.
pub fn parse_dest(s: &str) -> Result<Dest, String> {
    let source = RuleSource::Label("explain".into());
    let opts = RuleOptions {
        allow_broad_cidrs: true,
    };
    let rules = parse_rule_list(s, &source, &opts).map_err(|errs| {
        errs.iter()
            .map(|e| format!("{:?}: {}", e.token, e.error))
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    let [rule] = rules.as_slice() else {
        return Err(format!("{s:?}: give one destination"));
    };
    let port = match rule.ports.as_slice() {
        [p] if p.first == p.last => p.first,
        _ => return Err(format!("{s:?}: give one port, not a range or a list")),
    };
    let host = match &rule.host {
        Host::Domain(d) => DestHost::Name(d.clone()),
        Host::Net(n) if n.prefix() == if n.is_ipv4() { 32 } else { 128 } => DestHost::Ip(n.ip()),
        Host::Net(_) => return Err(format!("{s:?}: give one address, not a network")),
        Host::Wildcard(_) => return Err(format!("{s:?}: give a name, not a wildcard")),
    };
    Ok(Dest {
        host,
        port,
        proto: rule.proto,
    })
}

/// Everything the daemon knows about one container that bears on a verdict.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    pub container: &'a str,
    pub state: State,
    /// `None`: no policy (unenforceable, or not managed).
    pub policy: Option<&'a ContainerPolicy>,
    /// Why it is quarantined, unenforceable or in error.
    pub errors: &'a [String],
    pub proxy_mode: bool,
    /// (name, address, time left) for every address a name of the policy carries now:
    /// what the container resolved (proxy mode) or egressd resolved (resolve mode).
    pub live: Vec<(String, IpAddr, Duration)>,
    /// (name, address, how long ago it expired) for addresses that aged out lately.
    pub expired: Vec<(String, IpAddr, Duration)>,
    /// Resolve mode: the DNS servers of the container's own DNS path (port 53 allowed).
    pub dns_servers: &'a [IpAddr],
    /// Whether the kernel's set holds the element (address, protocol, port), when asked.
    pub in_kernel: Option<bool>,
    /// Resolve mode: why resolving a name failed lately.
    pub resolve_errors: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Allowed,
    Denied,
    /// Report mode: nothing is denied, but this would be.
    WouldBeDenied,
    /// egressd does not confine this container.
    Unconfined,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allowed => "ALLOWED",
            Verdict::Denied => "DENIED",
            Verdict::WouldBeDenied => "ALLOWED (report mode; would be DENIED)",
            Verdict::Unconfined => "NOT CONFINED",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    pub container: String,
    pub dest: String,
    pub verdict: Verdict,
    pub reasons: Vec<String>,
}

fn rule_text(r: &Rule) -> String {
    format!(
        "{}:{}/{} (from {})",
        r.host,
        crate::policy::Ports(&r.ports),
        r.proto,
        r.source
    )
}

fn covers_port(r: &Rule, port: u16, proto: Proto) -> bool {
    r.proto == proto && r.ports.iter().any(|p| p.first <= port && port <= p.last)
}

/// Whether rule `r` names `name` (exactly, or as a wildcard it is strictly below).
fn rule_matches_name(r: &Rule, name: &str) -> bool {
    match &r.host {
        Host::Domain(d) => d == name,
        Host::Wildcard(base) => name
            .strip_suffix(base.as_str())
            .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        Host::Net(_) => false,
    }
}

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

/// The verdict for `dest` and the reasons, most important first.
pub fn explain(f: &Facts, dest: &Dest) -> Explanation {
    let mut reasons = Vec::new();
    let verdict = decide(f, dest, &mut reasons);
    let verdict = match (verdict, f.policy.map(|p| p.mode)) {
        (Verdict::Denied, Some(Mode::Report)) if f.state == State::Report => {
            reasons.push(
                "the container is in report mode: nothing is denied, the attempt is logged".into(),
            );
            Verdict::WouldBeDenied
        }
        (v, _) => v,
    };
    if let Some(k) = f.in_kernel {
        reasons.push(if k {
            "the kernel's set holds this address, protocol and port".into()
        } else {
            "the kernel's sets do not hold this address, protocol and port".into()
        });
    }
    Explanation {
        container: f.container.to_string(),
        dest: dest.to_string(),
        verdict,
        reasons,
    }
}

fn decide(f: &Facts, dest: &Dest, why: &mut Vec<String>) -> Verdict {
    match f.state {
        State::Unenforceable => {
            why.push(format!(
                "egressd cannot confine this container: {}",
                f.errors.join("; ")
            ));
            return Verdict::Unconfined;
        }
        State::Quarantined | State::Error => {
            why.push(format!(
                "the container is quarantined: all egress is denied, because: {}",
                f.errors.join("; ")
            ));
            return Verdict::Denied;
        }
        State::Enforced | State::Report => {}
    }
    let Some(policy) = f.policy else {
        why.push("egressd has no policy for this container".into());
        return Verdict::Unconfined;
    };
    if dest.port == 53 {
        match (&dest.host, f.proxy_mode) {
            (_, true) => {
                why.push(
                    "DNS on port 53 goes to egressd's DNS proxy whatever the address; only names the policy allows are answered"
                        .into(),
                );
                return Verdict::Allowed;
            }
            (DestHost::Ip(ip), false) if f.dns_servers.contains(ip) => {
                why.push(format!(
                    "{ip} is a DNS server of the container's own DNS path (resolve mode allows port 53 to it)"
                ));
                return Verdict::Allowed;
            }
            _ => {}
        }
    }
    match &dest.host {
        DestHost::Name(name) => explain_name(f, policy, name, dest, why),
        DestHost::Ip(ip) => explain_ip(f, policy, *ip, dest, why),
    }
}

fn explain_name(
    f: &Facts,
    policy: &ContainerPolicy,
    name: &str,
    dest: &Dest,
    why: &mut Vec<String>,
) -> Verdict {
    let named: Vec<&Rule> = policy
        .rules
        .iter()
        .filter(|r| rule_matches_name(r, name))
        .collect();
    if named.is_empty() {
        why.push(format!("no rule allows {name}"));
        if f.proxy_mode {
            why.push(format!(
                "the container's DNS queries for {name} are refused, so it gets no address to connect to"
            ));
        }
        return Verdict::Denied;
    }
    let fitting: Vec<&&Rule> = named
        .iter()
        .filter(|r| covers_port(r, dest.port, dest.proto))
        .collect();
    if fitting.is_empty() {
        let list: Vec<String> = named.iter().map(|r| rule_text(r)).collect();
        why.push(format!(
            "{name} is allowed, but not on {}/{}: its rules are {}",
            dest.port,
            dest.proto,
            list.join(", ")
        ));
        return Verdict::Denied;
    }
    why.push(format!(
        "{name} is allowed by rule {}",
        fitting
            .iter()
            .map(|r| rule_text(r))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let live: Vec<String> = f
        .live
        .iter()
        .filter(|(n, _, _)| n == name)
        .map(|(_, a, left)| format!("{a} (allowed for {} more)", secs(*left)))
        .collect();
    if !live.is_empty() {
        why.push(format!("its current addresses: {}", live.join(", ")));
        return Verdict::Allowed;
    }
    let expired: Vec<String> = f
        .expired
        .iter()
        .filter(|(n, _, _)| n == name)
        .map(|(_, a, ago)| format!("{a} (expired {} ago)", secs(*ago)))
        .collect();
    if !expired.is_empty() {
        why.push(format!(
            "no current address; these expired: {}",
            expired.join(", ")
        ));
    }
    if f.proxy_mode {
        why.push(format!(
            "no address is allowed now: the container has not looked {name} up (or its answer's TTL and grace ran out); its next lookup allows the answer"
        ));
    } else {
        match f.resolve_errors.iter().find(|(n, _)| n == name) {
            Some((_, e)) => why.push(format!("resolving it failed: {e}")),
            None => why.push("egressd has no address for it yet".into()),
        }
    }
    Verdict::Denied
}

fn explain_ip(
    f: &Facts,
    policy: &ContainerPolicy,
    ip: IpAddr,
    dest: &Dest,
    why: &mut Vec<String>,
) -> Verdict {
    // Static rules first: they allow the address whatever DNS says.
    if let Some(r) = policy.rules.iter().find(|r| {
        matches!(&r.host, Host::Net(n) if n.contains(ip)) && covers_port(r, dest.port, dest.proto)
    }) {
        why.push(format!("allowed by rule {}", rule_text(r)));
        return Verdict::Allowed;
    }
    let carriers: Vec<&(String, IpAddr, Duration)> =
        f.live.iter().filter(|(_, a, _)| *a == ip).collect();
    for (name, _, left) in &carriers {
        if let Some(r) = policy
            .rules
            .iter()
            .find(|r| rule_matches_name(r, name) && covers_port(r, dest.port, dest.proto))
        {
            why.push(format!(
                "{ip} is an address of {name}, allowed for {} more (TTL + grace), by rule {}",
                secs(*left),
                rule_text(r)
            ));
            return Verdict::Allowed;
        }
    }
    if let Some((name, _, _)) = carriers.first() {
        let rules: Vec<String> = policy
            .rules
            .iter()
            .filter(|r| rule_matches_name(r, name))
            .map(rule_text)
            .collect();
        why.push(format!(
            "{ip} is an address of {name}, but not on {}/{}: its rules are {}",
            dest.port,
            dest.proto,
            rules.join(", ")
        ));
        return Verdict::Denied;
    }
    if let Some(r) = policy
        .rules
        .iter()
        .find(|r| matches!(&r.host, Host::Net(n) if n.contains(ip)))
    {
        why.push(format!(
            "{ip} is in rule {}, but not on {}/{}",
            rule_text(r),
            dest.port,
            dest.proto
        ));
        return Verdict::Denied;
    }
    if let Some((name, _, ago)) = f.expired.iter().find(|(_, a, _)| *a == ip) {
        why.push(format!(
            "{ip} was an address of {name} until {} ago: its TTL and grace ran out (a new lookup allows it again if {name} still answers it)",
            secs(*ago)
        ));
        return Verdict::Denied;
    }
    why.push(format!(
        "no rule allows {ip}, and no allowed name currently resolves to it"
    ));
    Verdict::Denied
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PortRange;

    fn policy(rules: &[(&str, u16)]) -> ContainerPolicy {
        ContainerPolicy {
            rules: rules
                .iter()
                .map(|(h, p)| Rule {
                    host: if let Some(b) = h.strip_prefix("*.") {
                        Host::Wildcard(b.into())
                    } else if let Ok(n) = h.parse() {
                        Host::Net(n)
                    } else {
                        Host::Domain((*h).into())
                    },
                    ports: vec![PortRange::single(*p)],
                    proto: Proto::Tcp,
                    source: RuleSource::Profile("openai".into()),
                })
                .collect(),
            ..Default::default()
        }
    }

    fn facts<'a>(p: &'a ContainerPolicy) -> Facts<'a> {
        Facts {
            container: "agent",
            state: State::Enforced,
            policy: Some(p),
            errors: &[],
            proxy_mode: true,
            live: vec![(
                "api.openai.com".into(),
                "203.0.113.7".parse().unwrap(),
                Duration::from_secs(42),
            )],
            expired: vec![(
                "api.openai.com".into(),
                "203.0.113.9".parse().unwrap(),
                Duration::from_secs(5),
            )],
            dns_servers: &[],
            in_kernel: None,
            resolve_errors: vec![],
        }
    }

    fn d(s: &str) -> Dest {
        parse_dest(s).unwrap()
    }

    #[test]
    fn parse_destinations() {
        assert_eq!(
            d("api.openai.com"),
            Dest {
                host: DestHost::Name("api.openai.com".into()),
                port: 443,
                proto: Proto::Tcp
            }
        );
        assert_eq!(d("10.0.0.5:53/udp").to_string(), "10.0.0.5:53/udp");
        assert_eq!(
            d("[2001:db8::1]:8443").to_string(),
            "[2001:db8::1]:8443/tcp"
        );
        for bad in [
            "*.example.com",
            "10.0.0.0/8",
            "a.test:80-90",
            "a.test,b.test",
            "a.test:0",
        ] {
            assert!(parse_dest(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn allowed_name_and_its_current_address() {
        let p = policy(&[("api.openai.com", 443)]);
        let f = facts(&p);
        let e = explain(&f, &d("api.openai.com"));
        assert_eq!(e.verdict, Verdict::Allowed);
        assert!(
            e.reasons[0].contains("allowed by rule api.openai.com:443/tcp (from profile openai)")
        );
        assert!(
            e.reasons[1].contains("203.0.113.7 (allowed for 42s more)"),
            "{e:?}"
        );
        let e = explain(&f, &d("203.0.113.7"));
        assert_eq!(e.verdict, Verdict::Allowed);
        assert!(e.reasons[0].contains("address of api.openai.com, allowed for 42s more"));
        let e = explain(&f, &d("203.0.113.7:8443"));
        assert_eq!(e.verdict, Verdict::Denied);
        assert!(e.reasons[0].contains("but not on 8443/tcp"), "{e:?}");
    }

    #[test]
    fn expired_unlisted_and_unknown() {
        let p = policy(&[("api.openai.com", 443), ("10.20.0.0/16", 5432)]);
        let f = facts(&p);
        let e = explain(&f, &d("203.0.113.9"));
        assert_eq!(e.verdict, Verdict::Denied);
        assert!(
            e.reasons[0].contains("was an address of api.openai.com until 5s ago"),
            "{e:?}"
        );
        let e = explain(&f, &d("198.51.100.1"));
        assert_eq!(e.verdict, Verdict::Denied);
        assert!(e.reasons[0].contains("no rule allows 198.51.100.1"));
        let e = explain(&f, &d("evil.test"));
        assert_eq!(e.verdict, Verdict::Denied);
        assert!(e.reasons[1].contains("DNS queries for evil.test are refused"));
        let e = explain(&f, &d("10.20.1.1:5432"));
        assert_eq!(e.verdict, Verdict::Allowed);
        let e = explain(&f, &d("10.20.1.1:22"));
        assert_eq!(e.verdict, Verdict::Denied);
    }

    #[test]
    fn wildcards_quarantine_report_and_unconfined() {
        let p = policy(&[("*.example.com", 443)]);
        let mut f = facts(&p);
        f.live.clear();
        let e = explain(&f, &d("a.example.com"));
        assert_eq!(e.verdict, Verdict::Denied, "allowed, but not looked up yet");
        assert!(e.reasons[0].contains("allowed by rule *.example.com"));
        assert!(explain(&f, &d("example.com")).reasons[0].contains("no rule allows"));
        let errors = vec!["label egressd.allow, column 1: \"x\": bad".to_string()];
        f.state = State::Quarantined;
        f.errors = &errors;
        let e = explain(&f, &d("a.example.com"));
        assert_eq!(e.verdict, Verdict::Denied);
        assert!(e.reasons[0].contains("quarantined") && e.reasons[0].contains("column 1"));
        f.state = State::Unenforceable;
        assert_eq!(
            explain(&f, &d("a.example.com")).verdict,
            Verdict::Unconfined
        );
        let mut rp = policy(&[]);
        rp.mode = Mode::Report;
        let mut f = facts(&rp);
        f.state = State::Report;
        assert_eq!(explain(&f, &d("evil.test")).verdict, Verdict::WouldBeDenied);
    }

    #[test]
    fn dns_path() {
        let p = policy(&[]);
        let mut f = facts(&p);
        assert_eq!(
            explain(&f, &d("198.51.100.53:53/udp")).verdict,
            Verdict::Allowed
        );
        f.proxy_mode = false;
        let servers = ["10.0.0.2".parse().unwrap()];
        f.dns_servers = &servers;
        assert_eq!(explain(&f, &d("10.0.0.2:53/udp")).verdict, Verdict::Allowed);
        assert_eq!(explain(&f, &d("10.0.0.3:53/udp")).verdict, Verdict::Denied);
    }
}
