//! Which names one container may resolve, and what their addresses then allow: the proxy's
//! view of a [`ContainerPolicy`]. Pure: built once per policy and swapped in whole, so every
//! query reads one consistent snapshot without locks.
//!
//! A query is answered by [`decide`]: forward it (and to where), or refuse it. Nothing else
//! reaches an upstream: a name the policy does not allow is refused inside the container's
//! namespace, which is what stops DNS tunnelling.

use std::collections::HashMap;
use std::net::IpAddr;

use hickory_proto::op::{Message, MessageType, OpCode};
use hickory_proto::rr::{DNSClass, Name, RecordType};
use ipnetwork::IpNetwork;

use crate::policy::{ContainerPolicy, Host, Mode, PortRange, Proto, RuleSource};

/// What an address of an allowed name may be reached on: one rule's protocol and ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub proto: Proto,
    pub ports: Vec<PortRange>,
    /// The rule's host as written (`api.openai.com`, `*.example.com`) and where it came from,
    /// for `status` and the logs.
    pub rule: String,
    pub source: RuleSource,
}

/// The allowlist of one container.
#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    pub mode: Mode,
    /// Invalid policy: every query is refused (report mode included).
    pub quarantined: bool,
    /// Exact names, lower case, no trailing dot.
    exact: HashMap<String, Vec<Grant>>,
    /// Wildcard bases: `*.example.com` is stored as `example.com` and matches names strictly
    /// below it.
    below: HashMap<String, Vec<Grant>>,
    /// Internal addresses answers may point at: the container's CIDR rules plus the config's
    /// `dns.rebind_allow`.
    rebind_ok: Vec<IpNetwork>,
}

impl Allowlist {
    /// The allowlist of a compiled policy; `rebind_allow` comes from the config.
    pub fn from_policy(policy: &ContainerPolicy, rebind_allow: &[IpNetwork]) -> Self {
        let mut a = Allowlist {
            mode: policy.mode,
            quarantined: policy.is_quarantined(),
            rebind_ok: rebind_allow.to_vec(),
            ..Default::default()
        };
        if a.quarantined {
            return a;
        }
        for rule in &policy.rules {
            let grant = || Grant {
                proto: rule.proto,
                ports: rule.ports.clone(),
                rule: rule.host.to_string(),
                source: rule.source.clone(),
            };
            match &rule.host {
                Host::Domain(d) => a.exact.entry(d.clone()).or_default().push(grant()),
                Host::Wildcard(d) => a.below.entry(d.clone()).or_default().push(grant()),
                Host::Net(n) => a.rebind_ok.push(*n),
            }
        }
        a
    }

    /// The grants that allow `name` (lower case, no trailing dot): its exact rules plus every
    /// wildcard whose base is a proper suffix of it. Empty: not allowed.
    pub fn grants(&self, name: &str) -> Vec<&Grant> {
        let mut out: Vec<&Grant> = self.exact.get(name).into_iter().flatten().collect();
        let mut rest = name;
        while let Some((_, parent)) = rest.split_once('.') {
            if let Some(g) = self.below.get(parent) {
                out.extend(g);
            }
            rest = parent;
        }
        out
    }

    /// Whether an internal address in an answer is allowed anyway (covered by a CIDR rule or
    /// the config's allowlist).
    pub fn rebind_allowed(&self, ip: IpAddr) -> bool {
        self.rebind_ok.iter().any(|n| n.contains(ip))
    }

    /// Number of exact names and wildcards, for logs.
    pub fn len(&self) -> usize {
        self.exact.len() + self.below.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where an allowed query goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// egressd's upstream resolvers (config `dns.upstreams`), asked from the host.
    Upstream,
    /// Docker's embedded resolver (127.0.0.11), asked from inside the container's namespace:
    /// single-label names of sibling containers and compose services.
    Embedded,
}

/// Why a query is not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The policy does not allow the name (the answer is REFUSED or NXDOMAIN, per config).
    NotAllowed,
    /// The container is quarantined.
    Quarantined,
    /// Not a standard query (NOTIMP).
    NotImplemented,
    /// Zero or several questions, or a response sent as a query (FORMERR).
    Malformed,
    /// Zone transfers and non-IN classes (REFUSED).
    Forbidden,
}

impl Refusal {
    /// In words, for logs and events.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::NotAllowed => "name not allowed",
            Refusal::Quarantined => "container quarantined",
            Refusal::NotImplemented => "not a standard query",
            Refusal::Malformed => "malformed query",
            Refusal::Forbidden => "forbidden query (zone transfer, class, or a forwarding loop)",
        }
    }
}

/// The decision for one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<'a> {
    Forward {
        route: Route,
        /// The normalized name (lower case, no trailing dot).
        name: String,
        /// What its addresses allow. Empty only in report mode (`would_refuse`).
        grants: Vec<&'a Grant>,
        /// Report mode: the name is not allowed; it is forwarded and logged, not refused.
        would_refuse: bool,
    },
    Refuse {
        /// The normalized name, when there was one question.
        name: Option<String>,
        why: Refusal,
    },
}

/// Lower case, no trailing dot: the spelling the policy uses.
pub fn normalize(name: &Name) -> String {
    let s = name.to_lowercase().to_ascii();
    match s.strip_suffix('.') {
        Some(t) => t.to_string(),
        None => s,
    }
}

/// Decides what happens to a query. `embedded`: the container's resolver is Docker's
/// embedded one (user-defined networks), so single-label names go there.
pub fn decide<'a>(allow: &'a Allowlist, query: &Message, embedded: bool) -> Decision<'a> {
    if query.message_type() != MessageType::Query {
        return Decision::Refuse {
            name: None,
            why: Refusal::Malformed,
        };
    }
    if query.op_code() != OpCode::Query {
        return Decision::Refuse {
            name: None,
            why: Refusal::NotImplemented,
        };
    }
    let [q] = query.queries() else {
        return Decision::Refuse {
            name: None,
            why: Refusal::Malformed,
        };
    };
    let name = normalize(q.name());
    if matches!(
        q.query_type(),
        RecordType::AXFR | RecordType::IXFR | RecordType::ANY
    ) || q.query_class() != DNSClass::IN
    {
        return Decision::Refuse {
            name: Some(name),
            why: Refusal::Forbidden,
        };
    }
    if allow.quarantined {
        return Decision::Refuse {
            name: Some(name),
            why: Refusal::Quarantined,
        };
    }
    let grants = allow.grants(&name);
    let would_refuse = grants.is_empty();
    if would_refuse && allow.mode == Mode::Enforce {
        return Decision::Refuse {
            name: Some(name),
            why: Refusal::NotAllowed,
        };
    }
    let route = if embedded && !name.contains('.') && !name.is_empty() {
        Route::Embedded
    } else {
        Route::Upstream
    };
    Decision::Forward {
        route,
        name,
        grants,
        would_refuse,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Rule;
    use hickory_proto::op::Query;

    fn rule(host: Host, port: u16) -> Rule {
        Rule {
            host,
            ports: vec![PortRange::single(port)],
            proto: Proto::Tcp,
            source: RuleSource::Label("egressd.allow".into()),
        }
    }

    fn allowlist(mode: Mode) -> Allowlist {
        let policy = ContainerPolicy {
            mode,
            rules: vec![
                rule(Host::Domain("api.openai.com".into()), 443),
                rule(Host::Wildcard("allowed.test".into()), 443),
                rule(Host::Wildcard("b.allowed.test".into()), 8443),
                rule(Host::Domain("db".into()), 5432),
                rule(Host::Net("10.20.0.0/16".parse().unwrap()), 443),
            ],
            ..Default::default()
        };
        Allowlist::from_policy(&policy, &["192.168.7.0/24".parse().unwrap()])
    }

    fn query(name: &str, qtype: RecordType) -> Message {
        let mut m = Message::new();
        m.set_id(7)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        m
    }

    fn forwarded(d: &Decision) -> Option<(Route, Vec<u16>)> {
        match d {
            Decision::Forward { route, grants, .. } => {
                Some((*route, grants.iter().map(|g| g.ports[0].first).collect()))
            }
            Decision::Refuse { .. } => None,
        }
    }

    #[test]
    fn exact_names_match_case_insensitively_with_or_without_the_root() {
        let a = allowlist(Mode::Enforce);
        for n in ["api.openai.com", "API.OpenAI.com.", "api.openai.com."] {
            let d = decide(&a, &query(n, RecordType::A), false);
            assert_eq!(forwarded(&d), Some((Route::Upstream, vec![443])), "{n}");
        }
        for n in ["openai.com", "x.api.openai.com", "api.openai.com.evil.test"] {
            let d = decide(&a, &query(n, RecordType::A), false);
            assert_eq!(
                d,
                Decision::Refuse {
                    name: Some(n.to_string()),
                    why: Refusal::NotAllowed
                },
                "{n}"
            );
        }
    }

    #[test]
    fn wildcards_match_strictly_below_their_base_at_any_depth() {
        let a = allowlist(Mode::Enforce);
        let ports = |n: &str| forwarded(&decide(&a, &query(n, RecordType::AAAA), false));
        assert_eq!(ports("a.allowed.test"), Some((Route::Upstream, vec![443])));
        assert_eq!(
            ports("x.y.allowed.test"),
            Some((Route::Upstream, vec![443]))
        );
        // Below both wildcards: both grants.
        assert_eq!(
            ports("c.b.allowed.test"),
            Some((Route::Upstream, vec![8443, 443]))
        );
        // b.allowed.test itself is only below *.allowed.test.
        assert_eq!(ports("b.allowed.test"), Some((Route::Upstream, vec![443])));
        assert_eq!(ports("allowed.test"), None);
        assert_eq!(ports("a.allowed.test.evil.test"), None);
        assert_eq!(ports("aallowed.test"), None);
    }

    #[test]
    fn single_label_names_go_to_the_embedded_resolver_when_there_is_one() {
        let a = allowlist(Mode::Enforce);
        let d = decide(&a, &query("db", RecordType::A), true);
        assert_eq!(forwarded(&d), Some((Route::Embedded, vec![5432])));
        let d = decide(&a, &query("db", RecordType::A), false);
        assert_eq!(forwarded(&d), Some((Route::Upstream, vec![5432])));
        // Dotted names never go to the embedded resolver (it would forward them on).
        let d = decide(&a, &query("api.openai.com", RecordType::A), true);
        assert_eq!(forwarded(&d), Some((Route::Upstream, vec![443])));
        let d = decide(&a, &query("cache", RecordType::A), true);
        assert!(forwarded(&d).is_none(), "sibling not in the policy");
    }

    #[test]
    fn report_mode_forwards_what_it_would_refuse_and_says_so() {
        let a = allowlist(Mode::Report);
        match decide(&a, &query("exfil.evil.test", RecordType::TXT), false) {
            Decision::Forward {
                would_refuse,
                grants,
                ..
            } => assert!(would_refuse && grants.is_empty()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn quarantine_transfers_classes_and_odd_messages_are_refused() {
        let mut q = allowlist(Mode::Report);
        q.quarantined = true;
        let d = decide(&q, &query("api.openai.com", RecordType::A), false);
        assert!(matches!(
            d,
            Decision::Refuse {
                why: Refusal::Quarantined,
                ..
            }
        ));
        let a = allowlist(Mode::Enforce);
        for t in [RecordType::AXFR, RecordType::ANY] {
            let d = decide(&a, &query("api.openai.com", t), false);
            assert!(
                matches!(
                    d,
                    Decision::Refuse {
                        why: Refusal::Forbidden,
                        ..
                    }
                ),
                "{t}"
            );
        }
        let mut chaos = query("api.openai.com", RecordType::TXT);
        chaos.queries_mut()[0].set_query_class(DNSClass::CH);
        assert!(matches!(
            decide(&a, &chaos, false),
            Decision::Refuse {
                why: Refusal::Forbidden,
                ..
            }
        ));
        let mut two = query("api.openai.com", RecordType::A);
        two.add_query(Query::query(
            Name::from_ascii("evil.test").unwrap(),
            RecordType::A,
        ));
        assert!(matches!(
            decide(&a, &two, false),
            Decision::Refuse {
                why: Refusal::Malformed,
                ..
            }
        ));
        let mut resp = query("api.openai.com", RecordType::A);
        resp.set_message_type(MessageType::Response);
        assert!(matches!(
            decide(&a, &resp, false),
            Decision::Refuse {
                why: Refusal::Malformed,
                ..
            }
        ));
        let mut update = query("api.openai.com", RecordType::A);
        update.set_op_code(OpCode::Update);
        assert!(matches!(
            decide(&a, &update, false),
            Decision::Refuse {
                why: Refusal::NotImplemented,
                ..
            }
        ));
    }

    #[test]
    fn cidr_rules_and_the_config_allowlist_exempt_internal_answers() {
        let a = allowlist(Mode::Enforce);
        assert!(a.rebind_allowed("10.20.3.4".parse().unwrap()));
        assert!(a.rebind_allowed("192.168.7.9".parse().unwrap()));
        assert!(!a.rebind_allowed("10.21.0.1".parse().unwrap()));
        assert!(!a.rebind_allowed("169.254.169.254".parse().unwrap()));
    }
}
