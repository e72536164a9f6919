//! What the proxy does to an upstream's answer before the container sees it (pure):
//!
//! - follows the CNAME chain from the question, and keeps only the records on it;
//! - strips addresses that point inside (loopback, RFC 1918, CGNAT, link-local and the
//!   metadata service at 169.254.169.254, ULA, unspecified, multicast), unless a CIDR rule of
//!   the container or the config's `dns.rebind_allow` covers them: the rebinding guard;
//! - keeps at most `max_addrs` addresses;
//! - lowers TTLs above `max_ttl`, so the container never caches an answer longer than the
//!   kernel keeps its addresses allowed;
//! - drops address records outside the answer chain (authority, additional): a stub resolver
//!   could use them, and nothing checked them.
//!
//! The addresses that remain are what the proxy puts in the container's sets before it
//! releases the answer.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::op::Message;
use hickory_proto::rr::{Name, RData, Record, RecordType};

use super::allow::Allowlist;

/// Longest CNAME chain followed.
pub const MAX_CHAIN: usize = 16;

/// Why an address was stripped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Internal {
    Loopback,
    Private,
    SharedCgnat,
    LinkLocal,
    UniqueLocal,
    Unspecified,
    Multicast,
    Reserved,
}

impl Internal {
    pub fn as_str(self) -> &'static str {
        match self {
            Internal::Loopback => "loopback",
            Internal::Private => "private (RFC 1918)",
            Internal::SharedCgnat => "shared (CGNAT, RFC 6598)",
            Internal::LinkLocal => "link-local (cloud metadata)",
            Internal::UniqueLocal => "unique local (ULA)",
            Internal::Unspecified => "unspecified",
            Internal::Multicast => "multicast",
            Internal::Reserved => "reserved",
        }
    }

    /// Addresses of containers on Docker networks are private or unique-local; the others
    /// are never a sibling container.
    fn can_be_sibling(self) -> bool {
        matches!(
            self,
            Internal::Private | Internal::SharedCgnat | Internal::UniqueLocal
        )
    }
}

/// The kind of internal address `ip` is, if it is one. IPv4-mapped, IPv4-compatible and
/// NAT64 (64:ff9b::/96) IPv6 addresses are judged by the IPv4 address inside.
pub fn internal_kind(ip: IpAddr) -> Option<Internal> {
    match ip {
        IpAddr::V4(a) => v4_kind(a),
        IpAddr::V6(a) => v6_kind(a),
    }
}

fn v4_kind(a: Ipv4Addr) -> Option<Internal> {
    let o = a.octets();
    if a.is_loopback() {
        Some(Internal::Loopback)
    } else if a.is_private() {
        Some(Internal::Private)
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some(Internal::SharedCgnat)
    } else if a.is_link_local() {
        Some(Internal::LinkLocal)
    } else if o[0] == 0 {
        Some(Internal::Unspecified)
    } else if a.is_multicast() {
        Some(Internal::Multicast)
    } else if o[0] >= 240 {
        Some(Internal::Reserved)
    } else {
        None
    }
}

fn v6_kind(a: Ipv6Addr) -> Option<Internal> {
    let s = a.segments();
    if let Some(v4) = a.to_ipv4_mapped() {
        return v4_kind(v4);
    }
    if s[..6] == [0; 6] && !(s[6] == 0 && s[7] <= 1) {
        // IPv4-compatible (deprecated), ::a.b.c.d
        return v4_kind(Ipv4Addr::new(
            (s[6] >> 8) as u8,
            s[6] as u8,
            (s[7] >> 8) as u8,
            s[7] as u8,
        ));
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return v4_kind(Ipv4Addr::new(
            (s[6] >> 8) as u8,
            s[6] as u8,
            (s[7] >> 8) as u8,
            s[7] as u8,
        ));
    }
    if a.is_loopback() {
        Some(Internal::Loopback)
    } else if a.is_unspecified() {
        Some(Internal::Unspecified)
    } else if (s[0] & 0xfe00) == 0xfc00 {
        Some(Internal::UniqueLocal)
    } else if (s[0] & 0xffc0) == 0xfe80 || (s[0] & 0xffc0) == 0xfec0 {
        Some(Internal::LinkLocal)
    } else if a.is_multicast() {
        Some(Internal::Multicast)
    } else {
        None
    }
}

/// How to filter one answer.
#[derive(Debug, Clone, Copy)]
pub struct FilterSettings<'a> {
    pub allow: &'a Allowlist,
    /// The answer came from Docker's embedded resolver (sibling container names): private
    /// and unique-local addresses are what it answers, so they pass; loopback, link-local
    /// and the rest are still stripped.
    pub from_embedded: bool,
    /// Report mode: strip nothing (the caller logs what would have been stripped).
    pub report_only: bool,
    pub max_addrs: usize,
    /// TTLs above this are lowered to it.
    pub max_ttl: u32,
}

/// What filtering found and changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filtered {
    /// Addresses left in the answer, each with the TTL the container will see (the lowest
    /// TTL along the CNAME chain and the record).
    pub addrs: Vec<(IpAddr, u32)>,
    /// Addresses stripped (or, in report mode, that would have been) by the rebinding guard.
    pub stripped: Vec<(IpAddr, Internal)>,
    /// Addresses dropped because the answer had more than `max_addrs`.
    pub capped: usize,
    /// The message was changed and must be re-encoded.
    pub modified: bool,
}

/// Filters `reply` (the answer to a question for `qname`) in place.
pub fn filter_reply(reply: &mut Message, qname: &Name, s: &FilterSettings) -> Filtered {
    let mut out = Filtered::default();
    // The chain: qname, then each CNAME target, as long as the answer section has a link.
    let mut chain: Vec<Name> = vec![qname.clone()];
    let mut chain_ttl = u32::MAX;
    while chain.len() <= MAX_CHAIN {
        let Some(last) = chain.last() else { break };
        let next = reply.answers().iter().find_map(|r| match r.data() {
            RData::CNAME(t) if r.name().eq_ignore_root(last) => Some((t.0.clone(), r.ttl())),
            _ => None,
        });
        match next {
            Some((target, ttl)) if !chain.iter().any(|n| n.eq_ignore_root(&target)) => {
                chain_ttl = chain_ttl.min(ttl);
                chain.push(target);
            }
            _ => break,
        }
    }
    let on_chain = |r: &Record| chain.iter().any(|n| r.name().eq_ignore_root(n));

    let answers = reply.take_answers();
    let before = answers.len();
    let mut kept = Vec::with_capacity(before);
    for mut r in answers {
        if !on_chain(&r) {
            out.modified = true;
            continue;
        }
        if r.ttl() > s.max_ttl {
            r.set_ttl(s.max_ttl);
            out.modified = true;
        }
        let addr = match r.data() {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        };
        if let Some(ip) = addr {
            if let Some(kind) = internal_kind(ip) {
                let exempt =
                    s.allow.rebind_allowed(ip) || (s.from_embedded && kind.can_be_sibling());
                if !exempt {
                    out.stripped.push((ip, kind));
                    if !s.report_only {
                        out.modified = true;
                        continue;
                    }
                }
            }
            if out.addrs.iter().any(|(a, _)| *a == ip) {
                kept.push(r);
                continue;
            }
            if out.addrs.len() >= s.max_addrs {
                out.capped += 1;
                out.modified = true;
                continue;
            }
            out.addrs.push((ip, r.ttl().min(chain_ttl)));
        }
        kept.push(r);
    }
    reply.insert_answers(kept);
    let not_addr = |r: &Record| !matches!(r.record_type(), RecordType::A | RecordType::AAAA);
    let n = reply.name_servers().len();
    reply.name_servers_mut().retain(not_addr);
    out.modified |= reply.name_servers().len() != n;
    let n = reply.additionals().len();
    reply.additionals_mut().retain(not_addr);
    out.modified |= reply.additionals().len() != n;
    // The header's record counts are recomputed when the message is encoded.
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{ContainerPolicy, Host, PortRange, Proto, Rule, RuleSource};
    use hickory_proto::op::{MessageType, Query};
    use hickory_proto::rr::rdata::{A, AAAA, CNAME, SOA};

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn a(owner: &str, ip: &str, ttl: u32) -> Record {
        let ip: IpAddr = ip.parse().unwrap();
        let data = match ip {
            IpAddr::V4(v) => RData::A(A(v)),
            IpAddr::V6(v) => RData::AAAA(AAAA(v)),
        };
        Record::from_rdata(name(owner), ttl, data)
    }

    fn cname(owner: &str, target: &str, ttl: u32) -> Record {
        Record::from_rdata(name(owner), ttl, RData::CNAME(CNAME(name(target))))
    }

    fn reply(q: &str, answers: Vec<Record>) -> Message {
        let mut m = Message::new();
        m.set_message_type(MessageType::Response)
            .add_query(Query::query(name(q), RecordType::A))
            .add_answers(answers);
        m
    }

    fn allow(nets: &[&str]) -> Allowlist {
        let policy = ContainerPolicy {
            rules: nets
                .iter()
                .map(|n| Rule {
                    host: Host::Net(n.parse().unwrap()),
                    ports: vec![PortRange::single(443)],
                    proto: Proto::Tcp,
                    source: RuleSource::Label("egressd.allow".into()),
                })
                .collect(),
            ..Default::default()
        };
        Allowlist::from_policy(&policy, &[])
    }

    fn settings(allow: &Allowlist) -> FilterSettings<'_> {
        FilterSettings {
            allow,
            from_embedded: false,
            report_only: false,
            max_addrs: 32,
            max_ttl: 3600,
        }
    }

    fn ips(f: &Filtered) -> Vec<String> {
        f.addrs.iter().map(|(a, _)| a.to_string()).collect()
    }

    #[test]
    fn cname_chain_is_followed_and_its_lowest_ttl_counts() {
        let al = allow(&[]);
        let mut m = reply(
            "api.example.com",
            vec![
                cname("api.example.com", "edge.cdn.test", 300),
                cname("edge.cdn.test", "e1.cdn.test", 20),
                a("e1.cdn.test", "203.0.113.7", 60),
                a("e1.cdn.test", "203.0.113.8", 10),
                // Not on the chain: dropped.
                a("other.test", "198.51.100.1", 60),
            ],
        );
        let f = filter_reply(&mut m, &name("api.example.com."), &settings(&al));
        assert_eq!(
            f.addrs,
            vec![
                ("203.0.113.7".parse().unwrap(), 20),
                ("203.0.113.8".parse().unwrap(), 10)
            ]
        );
        assert!(f.modified);
        assert_eq!(m.answers().len(), 4);
        let wire = Message::from_vec(&m.to_vec().unwrap()).unwrap();
        assert_eq!(wire.header().answer_count(), 4);
        assert_eq!(wire.answers().len(), 4);
    }

    #[test]
    fn cname_loops_end_the_chain() {
        let al = allow(&[]);
        let mut m = reply(
            "a.test",
            vec![
                cname("a.test", "b.test", 60),
                cname("b.test", "a.test", 60),
                a("b.test", "203.0.113.1", 60),
            ],
        );
        let f = filter_reply(&mut m, &name("a.test"), &settings(&al));
        assert_eq!(ips(&f), vec!["203.0.113.1"]);
    }

    #[test]
    fn rebinding_guard_strips_internal_addresses_unless_allowed() {
        let al = allow(&["10.20.0.0/16"]);
        let mut m = reply(
            "api.example.com",
            vec![
                a("api.example.com", "169.254.169.254", 60),
                a("api.example.com", "127.0.0.1", 60),
                a("api.example.com", "10.1.2.3", 60),
                a("api.example.com", "10.20.1.1", 60),
                a("api.example.com", "100.64.0.1", 60),
                a("api.example.com", "0.0.0.0", 60),
                a("api.example.com", "::ffff:192.168.1.1", 60),
                a("api.example.com", "fd00::1", 60),
                a("api.example.com", "fe80::1", 60),
                a("api.example.com", "::1", 60),
                a("api.example.com", "64:ff9b::a9fe:a9fe", 60),
                a("api.example.com", "203.0.113.9", 60),
                a("api.example.com", "2001:db8::9", 60),
            ],
        );
        let f = filter_reply(&mut m, &name("api.example.com"), &settings(&al));
        assert_eq!(ips(&f), vec!["10.20.1.1", "203.0.113.9", "2001:db8::9"]);
        assert_eq!(f.stripped.len(), 10);
        assert_eq!(
            f.stripped[0],
            ("169.254.169.254".parse().unwrap(), Internal::LinkLocal)
        );
        assert_eq!(m.answers().len(), 3);
    }

    #[test]
    fn report_mode_strips_nothing_but_reports() {
        let al = allow(&[]);
        let mut s = settings(&al);
        s.report_only = true;
        let mut m = reply(
            "x.test",
            vec![a("x.test", "10.0.0.1", 60), a("x.test", "203.0.113.1", 60)],
        );
        let f = filter_reply(&mut m, &name("x.test"), &s);
        assert_eq!(ips(&f), vec!["10.0.0.1", "203.0.113.1"]);
        assert_eq!(f.stripped.len(), 1);
        assert!(!f.modified);
    }

    #[test]
    fn embedded_resolver_answers_may_be_private_but_not_loopback_or_metadata() {
        let al = allow(&[]);
        let mut s = settings(&al);
        s.from_embedded = true;
        let mut m = reply(
            "db",
            vec![
                a("db", "172.18.0.5", 600),
                a("db", "127.0.0.1", 600),
                a("db", "169.254.169.254", 600),
            ],
        );
        let f = filter_reply(&mut m, &name("db"), &s);
        assert_eq!(ips(&f), vec!["172.18.0.5"]);
    }

    #[test]
    fn addresses_are_capped_and_ttls_lowered() {
        let al = allow(&[]);
        let mut s = settings(&al);
        s.max_addrs = 2;
        s.max_ttl = 100;
        let mut m = reply(
            "x.test",
            (1..=5)
                .map(|i| a("x.test", &format!("203.0.113.{i}"), 86_400))
                .collect(),
        );
        let f = filter_reply(&mut m, &name("x.test"), &s);
        assert_eq!(ips(&f), vec!["203.0.113.1", "203.0.113.2"]);
        assert_eq!(f.capped, 3);
        assert!(f.addrs.iter().all(|(_, t)| *t == 100));
        assert!(m.answers().iter().all(|r| r.ttl() == 100));
        assert_eq!(m.answers().len(), 2);
    }

    #[test]
    fn address_records_outside_the_answer_chain_are_dropped_soa_kept() {
        let al = allow(&[]);
        let mut m = reply("x.test", vec![]);
        m.add_additional(a("ns.x.test", "198.51.100.53", 60));
        m.add_name_server(Record::from_rdata(
            name("x.test"),
            60,
            RData::SOA(SOA::new(name("ns.x.test"), name("h.x.test"), 1, 2, 3, 4, 5)),
        ));
        let f = filter_reply(&mut m, &name("x.test"), &settings(&al));
        assert!(f.addrs.is_empty());
        assert!(f.modified);
        assert!(m.additionals().is_empty());
        assert_eq!(m.name_servers().len(), 1);
    }

    #[test]
    fn unmodified_answers_stay_unmodified() {
        let al = allow(&[]);
        let mut m = reply("x.test", vec![a("x.test", "203.0.113.1", 60)]);
        let f = filter_reply(&mut m, &name("x.test"), &settings(&al));
        assert!(!f.modified);
        assert_eq!(ips(&f), vec!["203.0.113.1"]);
    }

    #[test]
    fn internal_kinds() {
        let k = |s: &str| internal_kind(s.parse().unwrap());
        assert_eq!(k("8.8.8.8"), None);
        assert_eq!(k("100.63.255.255"), None);
        assert_eq!(k("100.128.0.1"), None);
        assert_eq!(k("172.32.0.1"), None);
        assert_eq!(k("2606:4700::1"), None);
        assert_eq!(k("::"), Some(Internal::Unspecified));
        assert_eq!(k("::2.2.2.2"), None);
        assert_eq!(k("::10.0.0.1"), Some(Internal::Private));
        assert_eq!(k("224.0.0.1"), Some(Internal::Multicast));
        assert_eq!(k("255.255.255.255"), Some(Internal::Reserved));
        assert_eq!(k("fec0::1"), Some(Internal::LinkLocal));
        assert_eq!(k("ff02::1"), Some(Internal::Multicast));
    }
}
