//! Events an operator should see about one container: packets the table denied (or, in report
//! mode, would have denied), packets over a budget, anomaly warnings, refused DNS queries and
//! DNS tunnelling suspicions. Pure: the wire type `egressd status` shows, the conversion from
//! an NFLOG packet, and a bounded ring of the last ones.
//!
//! Every event that lands here was also logged (one structured log line each); both are rate
//! limited per container by the caller, which counts what it suppressed.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::nflog::{LogKind, NflogEvent};

/// Events kept per container (per source: the table's log, and the DNS proxy).
pub const RECENT_EVENTS: usize = 50;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// The table rejected a packet: no rule allows its destination.
    Deny,
    /// Report mode: the packet would have been rejected (it passed).
    Report,
    /// A budget (`limit` label) ran out: the packet was rejected.
    Limit,
    /// Over a budget in report mode (it passed).
    LimitReport,
    /// More new connections a minute than `[anomaly] new_connections_per_minute` (warning).
    AnomalyConn,
    /// One flow sent more than `[anomaly] bytes_per_flow` (warning, once per flow).
    AnomalyFlow,
    /// The DNS proxy refused a query (the name is not allowed).
    DnsRefused,
    /// The container's queries look like DNS tunnelling (warning).
    DnsTunnel,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Deny => "deny",
            EventKind::Report => "report",
            EventKind::Limit => "limit",
            EventKind::LimitReport => "limit-report",
            EventKind::AnomalyConn => "anomaly-conn",
            EventKind::AnomalyFlow => "anomaly-flow",
            EventKind::DnsRefused => "dns-refused",
            EventKind::DnsTunnel => "dns-tunnel",
        }
    }

    /// The kind of a logged packet; `None` for a prefix that is not egressd's.
    pub fn of_log(kind: LogKind) -> Option<EventKind> {
        Some(match kind {
            LogKind::Deny => EventKind::Deny,
            LogKind::Report => EventKind::Report,
            LogKind::Limit => EventKind::Limit,
            LogKind::LimitReport => EventKind::LimitReport,
            LogKind::AnomalyConn => EventKind::AnomalyConn,
            LogKind::AnomalyFlow => EventKind::AnomalyFlow,
            LogKind::Other => return None,
        })
    }

    /// Whether it is an anomaly (logged at warn level, and counted as such).
    pub fn is_anomaly(self) -> bool {
        matches!(
            self,
            EventKind::Limit
                | EventKind::LimitReport
                | EventKind::AnomalyConn
                | EventKind::AnomalyFlow
                | EventKind::DnsTunnel
        )
    }
}

/// One event, as `egressd status CONTAINER --json` shows it (fields are only ever added).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// When egressd received it: milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub kind: EventKind,
    /// Packet events: destination address, port (TCP/UDP) and protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<String>,
    /// Packet events: the names this container last resolved the destination address from
    /// (empty when it never did: an address literal, or a name it was refused).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<String>,
    /// DNS events: the name queried (refusal) or the parent domain (tunnelling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Anything else worth saying, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Event {
    /// An event for a logged packet, attributed to `domains`. `None` for a packet another
    /// rule (not egressd's) logged to the group.
    pub fn from_packet(p: &NflogEvent, domains: Vec<String>, at: SystemTime) -> Option<Event> {
        Some(Event {
            at_ms: unix_ms(at),
            kind: EventKind::of_log(p.kind)?,
            dst: Some(p.dst),
            port: p.dport,
            proto: Some(p.proto_name()),
            domains,
            name: None,
            detail: None,
        })
    }

    /// A DNS event (refusal or tunnelling suspicion).
    pub fn dns(kind: EventKind, name: &str, detail: String, at: SystemTime) -> Event {
        Event {
            at_ms: unix_ms(at),
            kind,
            dst: None,
            port: None,
            proto: None,
            domains: Vec::new(),
            name: Some(name.to_string()),
            detail: Some(detail),
        }
    }

    /// One line for `egressd status`: `deny  tcp 10.0.0.5:8443 (api.openai.com)`.
    pub fn summary(&self) -> String {
        let mut s = self.kind.as_str().to_string();
        if let Some(dst) = self.dst {
            let proto = self.proto.as_deref().unwrap_or("?");
            match self.port {
                Some(p) if dst.is_ipv6() => s.push_str(&format!(" {proto} [{dst}]:{p}")),
                Some(p) => s.push_str(&format!(" {proto} {dst}:{p}")),
                None => s.push_str(&format!(" {proto} {dst}")),
            }
            if !self.domains.is_empty() {
                s.push_str(&format!(" ({})", self.domains.join(", ")));
            }
        }
        if let Some(n) = &self.name {
            s.push_str(&format!(" {n}"));
        }
        if let Some(d) = &self.detail {
            s.push_str(&format!(": {d}"));
        }
        s
    }
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The last events of one container: at most `cap` ordinary ones (denials, refusals) and, apart
/// from them so that a flood of those cannot push them out, at most [`RECENT_ANOMALIES`]
/// anomalies (budgets, thresholds, tunnelling). Also how many events the caller's rate limit
/// suppressed since the container was first seen.
#[derive(Debug, Clone)]
pub struct Recent {
    cap: usize,
    events: VecDeque<Event>,
    anomalies: VecDeque<Event>,
    suppressed: u64,
}

/// Anomaly events kept per container and source.
pub const RECENT_ANOMALIES: usize = 10;

impl Default for Recent {
    fn default() -> Self {
        Recent::new(RECENT_EVENTS)
    }
}

impl Recent {
    pub fn new(cap: usize) -> Self {
        Recent {
            cap: cap.max(1),
            events: VecDeque::new(),
            anomalies: VecDeque::new(),
            suppressed: 0,
        }
    }

    /// Keeps `e`, dropping the oldest event of its kind (ordinary or anomaly) when full.
    pub fn push(&mut self, e: Event) {
        let (ring, cap) = if e.kind.is_anomaly() {
            (&mut self.anomalies, RECENT_ANOMALIES.min(self.cap))
        } else {
            (&mut self.events, self.cap)
        };
        if ring.len() == cap {
            ring.pop_front();
        }
        ring.push_back(e);
    }

    /// Counts events that were not logged (nor kept) because of the rate limit.
    pub fn add_suppressed(&mut self, n: u64) {
        self.suppressed = self.suppressed.saturating_add(n);
    }

    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }

    /// The last `n` ordinary events and every anomaly kept, oldest first.
    pub fn last(&self, n: usize) -> Vec<Event> {
        let mut out: Vec<Event> = self
            .events
            .iter()
            .skip(self.events.len().saturating_sub(n))
            .chain(self.anomalies.iter())
            .cloned()
            .collect();
        out.sort_by_key(|e| e.at_ms);
        out
    }

    pub fn len(&self) -> usize {
        self.events.len() + self.anomalies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// [`Recent::last`] of several rings together, oldest first: a flood of one source (DNS
/// refusals) does not hide the other (denied packets), and no flood hides an anomaly.
pub fn merge_last(rings: &[&Recent], per_ring: usize) -> Vec<Event> {
    let mut all: Vec<Event> = rings.iter().flat_map(|r| r.last(per_ring)).collect();
    all.sort_by_key(|e| e.at_ms);
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn packet(kind: LogKind, dst: &str, port: u16) -> NflogEvent {
        NflogEvent {
            kind,
            prefix: String::new(),
            group: 100,
            src: "172.17.0.2".parse().unwrap(),
            dst: dst.parse().unwrap(),
            proto: 6,
            sport: Some(40000),
            dport: Some(port),
            length: 60,
            timestamp: None,
            uid: None,
            gid: None,
            mark: None,
            outdev: None,
        }
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn packet_events_carry_destination_and_attribution() {
        let e = Event::from_packet(
            &packet(LogKind::Deny, "10.199.0.10", 8443),
            vec!["api.openai.com".into()],
            at(1),
        )
        .unwrap();
        assert_eq!(e.kind, EventKind::Deny);
        assert_eq!(e.at_ms, 1000);
        assert_eq!(e.summary(), "deny tcp 10.199.0.10:8443 (api.openai.com)");
        let v6 =
            Event::from_packet(&packet(LogKind::Limit, "fd00::1", 443), vec![], at(1)).unwrap();
        assert_eq!(v6.summary(), "limit tcp [fd00::1]:443");
        assert!(v6.kind.is_anomaly());
        assert!(!EventKind::Deny.is_anomaly());
        assert_eq!(
            Event::from_packet(&packet(LogKind::Other, "10.0.0.1", 1), vec![], at(1)),
            None,
            "a foreign prefix is not an egressd event"
        );
        let d = Event::dns(
            EventKind::DnsRefused,
            "x.evil.test",
            "not allowed".into(),
            at(2),
        );
        assert_eq!(d.summary(), "dns-refused x.evil.test: not allowed");
    }

    #[test]
    fn a_flood_of_ordinary_events_does_not_push_out_an_anomaly() {
        let mut r = Recent::new(5);
        r.push(Event::dns(
            EventKind::DnsTunnel,
            "evil.test",
            String::new(),
            at(1),
        ));
        for i in 0..1000 {
            r.push(Event::dns(
                EventKind::DnsRefused,
                "x.evil.test",
                String::new(),
                at(2 + i),
            ));
        }
        let last = r.last(2);
        assert_eq!(last.len(), 3);
        assert_eq!(last[0].kind, EventKind::DnsTunnel);
        // Anomalies have a ring of their own, bounded too.
        for i in 0..100 {
            r.push(Event::dns(
                EventKind::DnsTunnel,
                "t",
                String::new(),
                at(5000 + i),
            ));
        }
        assert_eq!(r.len(), 5 + 5);
    }

    #[test]
    fn json_uses_kebab_case_kinds_and_omits_empty_fields() {
        let e = Event::dns(EventKind::DnsTunnel, "evil.test", "many".into(), at(3));
        let j = serde_json::to_string(&e).unwrap();
        assert!(j.contains("\"kind\":\"dns-tunnel\""), "{j}");
        assert!(!j.contains("dst"), "{j}");
        let back: Event = serde_json::from_str(&j).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn the_ring_keeps_the_last_events_and_counts_suppressed_ones() {
        let mut r = Recent::new(3);
        for i in 0..5 {
            r.push(Event::dns(
                EventKind::DnsRefused,
                &format!("n{i}"),
                String::new(),
                at(i),
            ));
        }
        r.add_suppressed(7);
        r.add_suppressed(2);
        let names =
            |v: Vec<Event>| -> Vec<String> { v.into_iter().map(|e| e.name.unwrap()).collect() };
        assert_eq!(names(r.last(10)), ["n2", "n3", "n4"]);
        assert_eq!(names(r.last(1)), ["n4"]);
        assert_eq!(r.suppressed(), 9);
        assert_eq!(r.len(), 3);

        let mut other = Recent::new(3);
        other.push(Event::dns(EventKind::DnsTunnel, "t", String::new(), at(0)));
        other.push(Event::dns(EventKind::DnsTunnel, "u", String::new(), at(3)));
        let merged = merge_last(&[&r, &other], 2);
        let order: Vec<_> = merged.iter().map(|e| e.name.clone().unwrap()).collect();
        assert_eq!(order, ["t", "n3", "u", "n4"]);
    }
}
