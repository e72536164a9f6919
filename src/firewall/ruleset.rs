//! The `inet egressd` table as a plain value. No I/O: built from a policy plus resolved
//! addresses, printed in `nft` syntax by `Display` (golden tests, `nft -f` baseline), and turned
//! into one netlink batch by `firewall::program`.
//!
//! Layout (see docs/rules.md):
//! ```text
//! table inet egressd {
//!     counter allowed, counter denied (counter limited: only with budgets)
//!     set dom4/dom6: daddr . l4proto . dport, flags timeout   (resolved domains, TTL + grace)
//!     set net4/net6: daddr . l4proto . dport, flags interval  (static addresses and CIDRs)
//!         every set element has its own packet and byte counter (allowed traffic per host)
//!     chain budget (only with budgets): rate-limited NFLOG, count, reject
//!     chain output (hook output, priority filter, policy drop):
//!         byte budget (not loopback)      over budget: jump budget
//!         loopback                        accept
//!         approved flow (ct mark bit)     accept      -- live flows survive element expiry
//!         reply direction                 accept      -- answers to inbound connections
//!         ICMPv6 neighbour discovery      accept      -- IPv6 needs it to work at all
//!         connection budget (new flows)   over budget: jump budget
//!         lookup in dom4/net4/dom6/net6   mark flow, count, accept
//!         rate-limited NFLOG
//!         count, reject (tcp reset / icmpx admin-prohibited), or accept in report mode
//! }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use ipnetwork::IpNetwork;

use crate::policy::config::AnomalyConfig;
use crate::policy::limit::{Limits, Period};
use crate::policy::{ContainerPolicy, Host, Mode, PortRange, Proto};

/// The one table egressd owns in each container netns.
pub const TABLE_NAME: &str = "egressd";
/// The base chain.
pub const CHAIN_NAME: &str = "output";
/// The NAT chain that redirects the container's DNS to egressd's proxy (proxy mode only).
pub const DNS_CHAIN_NAME: &str = "dns";
/// Priority of the DNS NAT chain: before Docker's own output NAT (-100), which would otherwise
/// send queries for 127.0.0.11 to its embedded resolver first.
pub const DNS_CHAIN_PRIORITY: i32 = -150;
/// Socket mark (`SO_MARK`) of the proxy's own sockets inside the container's namespace: their
/// queries (to Docker's embedded resolver) are not redirected back to the proxy. Setting a
/// socket mark needs CAP_NET_ADMIN, which a confined container never has.
pub const PROXY_SOCKET_MARK: u32 = 0x6567_7264;
/// The conntrack mark bit egressd sets on flows it approved. Only flows carrying it are
/// accepted as established, so nothing opened before the table existed is grandfathered in.
pub const APPROVED_MARK: u32 = 0x0100_0000;
/// Largest number of ports one domain rule may expand to (one set element per port).
pub const MAX_DOMAIN_PORTS: usize = 1024;
/// Prefix of NFLOG messages for denied packets.
pub const LOG_PREFIX_DENY: &str = "egressd-deny ";
/// Prefix of NFLOG messages for packets report mode would have denied.
pub const LOG_PREFIX_REPORT: &str = "egressd-report ";
/// Prefix of NFLOG messages for packets rejected because a budget (`limit` label) ran out.
pub const LOG_PREFIX_LIMIT: &str = "egressd-limit ";
/// Prefix of NFLOG messages for packets over a budget in report mode (not rejected).
pub const LOG_PREFIX_LIMIT_REPORT: &str = "egressd-limit-report ";
/// Prefix of NFLOG messages for a container opening new connections faster than
/// `[anomaly] new_connections_per_minute` (a warning: nothing is rejected).
pub const LOG_PREFIX_ANOMALY_CONN: &str = "egressd-anomaly-conn ";
/// Prefix of NFLOG messages for a flow that sent more than `[anomaly] bytes_per_flow` (once
/// per flow; nothing is rejected).
pub const LOG_PREFIX_ANOMALY_FLOW: &str = "egressd-anomaly-flow ";
/// The conntrack mark bit set on a flow once it was logged for sending more than
/// `bytes_per_flow`, so each flow is logged once.
pub const FLOW_LOGGED_MARK: u32 = 0x0200_0000;
/// The regular chain that over-budget packets jump to (only when the table has budgets).
pub const BUDGET_CHAIN_NAME: &str = "budget";
/// DNS (port 53) does not count against the connection budget: every query is a new flow,
/// and Docker's embedded resolver forwards from inside the namespace.
pub const DNS_PORT: u16 = 53;

/// ICMPv6 link-local control types accepted in every table: router solicitation, neighbour
/// solicitation and advertisement (without them IPv6 stops working on the link), and MLDv2
/// listener reports (sent to ff02::16 with hop limit 1 whenever an interface comes up; denying
/// them only fills the deny log). None of them is routed beyond the link.
pub const ICMPV6_ND_TYPES: [(u8, &str); 4] = [
    (133, "nd-router-solicit"),
    (135, "nd-neighbor-solicit"),
    (136, "nd-neighbor-advert"),
    (143, "mld2-listener-report"),
];

/// The four sets of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetName {
    /// Resolved IPv4 addresses, with timeouts.
    Dom4,
    /// Resolved IPv6 addresses, with timeouts.
    Dom6,
    /// Static IPv4 addresses and CIDRs (interval set).
    Net4,
    /// Static IPv6 addresses and CIDRs (interval set).
    Net6,
}

impl SetName {
    pub const ALL: [SetName; 4] = [SetName::Dom4, SetName::Net4, SetName::Dom6, SetName::Net6];

    pub fn as_str(self) -> &'static str {
        match self {
            SetName::Dom4 => "dom4",
            SetName::Dom6 => "dom6",
            SetName::Net4 => "net4",
            SetName::Net6 => "net6",
        }
    }

    pub fn is_v6(self) -> bool {
        matches!(self, SetName::Dom6 | SetName::Net6)
    }

    pub fn is_interval(self) -> bool {
        matches!(self, SetName::Net4 | SetName::Net6)
    }

    /// The set a destination of this family goes into.
    pub fn for_addr(addr: IpAddr, interval: bool) -> SetName {
        match (addr.is_ipv6(), interval) {
            (false, false) => SetName::Dom4,
            (true, false) => SetName::Dom6,
            (false, true) => SetName::Net4,
            (true, true) => SetName::Net6,
        }
    }
}

/// A static element: a CIDR (or single address), a protocol and a port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NetElem {
    pub net: IpNetwork,
    pub proto: Proto,
    pub ports: PortRange,
}

/// A resolved element: one address, protocol and port, allowed until its timeout runs out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AddrElem {
    pub addr: IpAddr,
    pub proto: Proto,
    pub port: u16,
    pub timeout: Duration,
}

/// One address a domain resolved to, and how long it stays allowed (TTL + grace).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResolvedAddr {
    pub addr: IpAddr,
    pub timeout: Duration,
}

/// Rate-limited NFLOG settings for denied packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogSettings {
    pub group: u16,
    pub rate_per_second: u32,
    pub burst: u32,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            group: 100,
            rate_per_second: 10,
            burst: 5,
        }
    }
}

/// Local ports of one family's DNS proxy listeners inside the container's namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyPorts {
    pub udp: u16,
    pub tcp: u16,
}

/// Proxy mode: every DNS query (UDP and TCP port 53, to any address) is redirected to the
/// proxy's listeners on loopback. A family without listeners gets no redirect, so its DNS
/// falls through to the output chain and is rejected (closed, not open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DnsRedirect {
    /// Listeners on 127.0.0.1.
    pub v4: Option<ProxyPorts>,
    /// Listeners on ::1 (absent when IPv6 is disabled in the namespace).
    pub v6: Option<ProxyPorts>,
}

/// One rule of the DNS NAT chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsRule {
    /// `meta mark MARK return`: the proxy's own queries.
    ReturnProxy,
    /// `meta nfproto ipv4|ipv6 meta l4proto udp|tcp th dport 53 dnat ip|ip6 to LOOPBACK:PORT`
    Redirect { v6: bool, proto: Proto, port: u16 },
}

/// Everything that goes into one container's `inet egressd` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    pub mode: Mode,
    /// Deny everything but loopback and ICMPv6 neighbour discovery; ignore elements.
    pub quarantined: bool,
    pub log: LogSettings,
    /// Static elements (net4/net6).
    pub nets: Vec<NetElem>,
    /// Resolved elements (dom4/dom6).
    pub addrs: Vec<AddrElem>,
    /// Proxy mode: where the DNS NAT chain sends the container's queries.
    pub dns_redirect: Option<DnsRedirect>,
    /// Budgets (`limit` label), enforced in the kernel by the `budget` chain.
    pub limits: Limits,
    /// Warn-only thresholds (`[anomaly]` in the config): logged to NFLOG, never rejected.
    pub anomaly: AnomalyConfig,
}

/// One rule of the output chain. Both the `nft` text and the netlink expressions are
/// generated from this list, so the two cannot drift apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainRule {
    /// `oifname "lo" accept`
    AcceptLoopback,
    /// `ct mark & MARK == MARK accept`
    AcceptApproved,
    /// `ct mark & MARK == MARK <daddr> . meta l4proto . th dport @SET accept`: an approved flow
    /// whose destination is still in SET; the lookup counts the packet in that element.
    AcceptApprovedIn(SetName),
    /// `meta nfproto ipv4|ipv6 ip[6] daddr LOOPBACK ct status & dnat == dnat accept`: queries the
    /// DNS chain redirected to the proxy. Needed besides `oifname "lo"` because the output
    /// device a rule sees is the one routing chose before the redirect (eth0).
    AcceptRedirected { v6: bool },
    /// `ct direction reply accept`
    AcceptReplies,
    /// `icmpv6 type TYPE accept`
    AcceptIcmpv6(u8),
    /// `<daddr> . meta l4proto . th dport @SET ct mark set ct mark | MARK counter name "allowed" accept`
    AllowSet(SetName),
    /// `limit rate R/second burst B packets log prefix P group G`
    Log,
    /// `meta l4proto tcp counter name "denied" reject with tcp reset`
    RejectTcp,
    /// `counter name "denied" reject with icmpx admin-prohibited`
    RejectOther,
    /// Report mode: `counter name "denied" accept`
    CountAndAccept,
    /// `oifname != "lo" limit rate over RATE bytes/second burst BURST bytes jump budget`
    BudgetBytes { rate: u64, burst: u32 },
    /// `ct state new th dport != 53 limit rate over COUNT/PERIOD burst COUNT packets jump budget`
    BudgetConn { count: u32, per: Period },
    /// `ct state new th dport != 53 limit rate over N/minute burst N packets
    ///  limit rate 1/second burst 1 packets log prefix "egressd-anomaly-conn " group G`:
    /// no verdict, the packet goes on to the next rule.
    AnomalyConn { per_minute: u32 },
    /// `ct original bytes > N ct mark & FLAG == 0 limit rate R/second burst B packets
    ///  ct mark set ct mark | FLAG log prefix "egressd-anomaly-flow " group G`: logs each
    /// flow once when it has sent more than N bytes; no verdict.
    AnomalyFlowBytes { bytes: u64 },
}

/// One rule of the `budget` chain, which over-budget packets jump to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetRule {
    /// `limit rate R/second burst B packets log prefix "egressd-limit " group G`
    Log,
    /// `meta l4proto tcp counter name "limited" reject with tcp reset`
    RejectTcp,
    /// `counter name "limited" reject with icmpx admin-prohibited`
    RejectOther,
    /// Report mode: `counter name "limited" return` (the output chain goes on as usual).
    CountAndReturn,
}

impl Ruleset {
    /// An enforce-mode table with no elements yet: everything but loopback is rejected until
    /// elements are added. Tests and benchmarks start from it.
    pub fn empty(log: LogSettings) -> Self {
        Ruleset {
            quarantined: false,
            ..Ruleset::quarantine(log)
        }
    }

    /// A deny-all table.
    pub fn quarantine(log: LogSettings) -> Self {
        Ruleset {
            mode: Mode::Enforce,
            quarantined: true,
            log,
            nets: Vec::new(),
            addrs: Vec::new(),
            dns_redirect: None,
            limits: Limits::default(),
            anomaly: AnomalyConfig::default(),
        }
    }

    /// Builds the table for a compiled policy. `resolved` maps each exact domain of the policy
    /// to its current addresses; a domain with no entry contributes nothing (closed, not open).
    /// Wildcard rules only get addresses through the DNS proxy, so they add nothing here.
    pub fn from_policy(
        policy: &ContainerPolicy,
        resolved: &BTreeMap<String, Vec<ResolvedAddr>>,
        log: LogSettings,
    ) -> Self {
        if policy.is_quarantined() {
            return Ruleset::quarantine(log);
        }
        let mut nets = Vec::new();
        let mut addrs = Vec::new();
        for rule in &policy.rules {
            match &rule.host {
                Host::Net(net) => {
                    for ports in &rule.ports {
                        nets.push(NetElem {
                            net: *net,
                            proto: rule.proto,
                            ports: *ports,
                        });
                    }
                }
                Host::Domain(name) => {
                    let Some(found) = resolved.get(name) else {
                        continue;
                    };
                    for ra in found {
                        for port in expand_ports(&rule.ports) {
                            addrs.push(AddrElem {
                                addr: ra.addr,
                                proto: rule.proto,
                                port,
                                timeout: ra.timeout,
                            });
                        }
                    }
                }
                Host::Wildcard(_) => {}
            }
        }
        let mut rs = Ruleset {
            mode: policy.mode,
            quarantined: false,
            log,
            nets,
            addrs,
            dns_redirect: None,
            limits: policy.limits,
            anomaly: AnomalyConfig::default(),
        };
        rs.normalize();
        rs
    }

    /// Sorts and de-duplicates elements; for a resolved element present twice, the longest
    /// timeout wins. Applying the same policy twice gives the same value.
    pub fn normalize(&mut self) {
        self.nets = disjoint_nets(&self.nets);
        self.addrs.sort_by(|a, b| {
            (a.addr, a.proto, a.port, b.timeout).cmp(&(b.addr, b.proto, b.port, a.timeout))
        });
        self.addrs.dedup_by(|later, first| {
            (later.addr, later.proto, later.port) == (first.addr, first.proto, first.port)
        });
    }

    /// The output chain, in order.
    pub fn chain(&self) -> Vec<ChainRule> {
        // Approved flows first: after its first packet, every packet of an allowed connection
        // stops in the first rules (the hot path, measured in scripts/bench-datapath.sh).
        let mut rules = Vec::new();
        let budgets = self.budgets();
        // A warning about a big flow must see every packet of it, so it comes first; it has
        // no verdict (the packet goes on) and costs one conntrack compare per packet.
        if let Some(bytes) = self.anomaly.bytes_per_flow.filter(|_| !self.quarantined) {
            rules.push(ChainRule::AnomalyFlowBytes { bytes });
        }
        // A byte budget must see approved flows too, so it goes before them.
        if let Some(b) = budgets.bytes {
            let (rate, burst) = b.per_second();
            rules.push(ChainRule::BudgetBytes { rate, burst });
        }
        if !self.quarantined {
            // One lookup per set, so that the element of the destination counts every packet
            // of the flow (allowed traffic per host); then the flows whose element is gone.
            rules.extend(SetName::ALL.iter().map(|s| ChainRule::AcceptApprovedIn(*s)));
            rules.push(ChainRule::AcceptApproved);
        }
        rules.push(ChainRule::AcceptLoopback);
        if let Some(r) = self.dns_redirect.filter(|_| !self.quarantined) {
            if r.v4.is_some() {
                rules.push(ChainRule::AcceptRedirected { v6: false });
            }
            if r.v6.is_some() {
                rules.push(ChainRule::AcceptRedirected { v6: true });
            }
        }
        if !self.quarantined {
            rules.push(ChainRule::AcceptReplies);
        }
        rules.extend(
            ICMPV6_ND_TYPES
                .iter()
                .map(|(t, _)| ChainRule::AcceptIcmpv6(*t)),
        );
        // New flows are counted (warning first, then budget) before the policy decides.
        if let Some(per_minute) = self
            .anomaly
            .new_connections_per_minute
            .filter(|_| !self.quarantined)
        {
            rules.push(ChainRule::AnomalyConn { per_minute });
        }
        if let Some(c) = budgets.conn {
            rules.push(ChainRule::BudgetConn {
                count: c.count,
                per: c.per,
            });
        }
        if !self.quarantined {
            rules.extend(SetName::ALL.iter().map(|s| ChainRule::AllowSet(*s)));
        }
        rules.push(ChainRule::Log);
        if self.mode == Mode::Report && !self.quarantined {
            rules.push(ChainRule::CountAndAccept);
        } else {
            rules.push(ChainRule::RejectTcp);
            rules.push(ChainRule::RejectOther);
        }
        rules
    }

    /// The DNS NAT chain, in order; empty when there is no redirect (resolve mode) or the
    /// table is a quarantine (DNS is then rejected like everything else).
    pub fn dns_chain(&self) -> Vec<DnsRule> {
        let Some(r) = self.dns_redirect.filter(|_| !self.quarantined) else {
            return Vec::new();
        };
        let mut rules = vec![DnsRule::ReturnProxy];
        for (v6, ports) in [(false, r.v4), (true, r.v6)] {
            if let Some(p) = ports {
                rules.push(DnsRule::Redirect {
                    v6,
                    proto: Proto::Udp,
                    port: p.udp,
                });
                rules.push(DnsRule::Redirect {
                    v6,
                    proto: Proto::Tcp,
                    port: p.tcp,
                });
            }
        }
        rules
    }

    /// Names of the chains the table has, as the kernel lists them.
    pub fn chain_names(&self) -> Vec<&'static str> {
        let mut names = if self.dns_chain().is_empty() {
            vec![CHAIN_NAME]
        } else {
            vec![DNS_CHAIN_NAME, CHAIN_NAME]
        };
        if !self.budget_chain().is_empty() {
            names.push(BUDGET_CHAIN_NAME);
        }
        names
    }

    /// The budgets in force: none in a quarantine (everything is rejected anyway).
    pub fn budgets(&self) -> Limits {
        if self.quarantined {
            Limits::default()
        } else {
            self.limits
        }
    }

    /// The `budget` chain; empty (and not in the table) when there is no budget.
    pub fn budget_chain(&self) -> Vec<BudgetRule> {
        if self.budgets().is_empty() {
            Vec::new()
        } else if self.mode == Mode::Report {
            vec![BudgetRule::Log, BudgetRule::CountAndReturn]
        } else {
            vec![
                BudgetRule::Log,
                BudgetRule::RejectTcp,
                BudgetRule::RejectOther,
            ]
        }
    }

    /// Names of the table's counter objects: `limited` only when there is a budget.
    pub fn counter_names(&self) -> Vec<&'static str> {
        let mut names = vec!["allowed", "denied"];
        if !self.budget_chain().is_empty() {
            names.push("limited");
        }
        names
    }

    /// The NFLOG prefix of over-budget packets.
    pub fn limit_log_prefix(&self) -> &'static str {
        if self.mode == Mode::Report {
            LOG_PREFIX_LIMIT_REPORT
        } else {
            LOG_PREFIX_LIMIT
        }
    }

    /// Static elements of one set, made disjoint (see [`disjoint_nets`]) as the kernel needs.
    pub fn nets_in(&self, set: SetName) -> Vec<NetElem> {
        if self.quarantined {
            return Vec::new();
        }
        let mine: Vec<NetElem> = self
            .nets
            .iter()
            .filter(|e| SetName::for_addr(e.net.ip(), true) == set)
            .copied()
            .collect();
        disjoint_nets(&mine)
    }

    /// Resolved elements of one set.
    pub fn addrs_in(&self, set: SetName) -> impl Iterator<Item = &AddrElem> {
        let quarantined = self.quarantined;
        self.addrs
            .iter()
            .filter(move |e| !quarantined && SetName::for_addr(e.addr, false) == set)
    }

    pub fn log_prefix(&self) -> &'static str {
        if self.mode == Mode::Report && !self.quarantined {
            LOG_PREFIX_REPORT
        } else {
            LOG_PREFIX_DENY
        }
    }
}

/// Rewrites static elements so no two overlap: interval sets refuse overlapping elements, and
/// rules from several profiles and labels may overlap (nested CIDRs, shared ports). CIDRs are
/// either nested or disjoint, so it is enough to remove from each element the ports that an
/// enclosing (or equal, earlier) CIDR of the same protocol already allows. The set of allowed
/// (address, protocol, port) triples does not change.
pub fn disjoint_nets(nets: &[NetElem]) -> Vec<NetElem> {
    let mut sorted: Vec<NetElem> = nets.to_vec();
    // Wider CIDRs first, so every enclosing element is handled before the ones inside it.
    sorted.sort_by_key(|e| {
        (
            e.proto,
            e.net.is_ipv6(),
            e.net.prefix(),
            e.net.network(),
            e.ports,
        )
    });
    let mut out: Vec<NetElem> = Vec::new();
    for e in sorted {
        let mut remaining = vec![e.ports];
        for kept in out.iter().filter(|k| {
            k.proto == e.proto
                && k.net.is_ipv6() == e.net.is_ipv6()
                && k.net.prefix() <= e.net.prefix()
                && k.net.contains(e.net.network())
        }) {
            remaining = remaining
                .into_iter()
                .flat_map(|r| subtract(r, kept.ports))
                .collect();
        }
        out.extend(remaining.into_iter().map(|ports| NetElem { ports, ..e }));
    }
    out.sort();
    out
}

/// `a` minus `b`: zero, one or two ranges.
fn subtract(a: PortRange, b: PortRange) -> Vec<PortRange> {
    if b.last < a.first || b.first > a.last {
        return vec![a];
    }
    let mut out = Vec::new();
    if b.first > a.first {
        out.push(PortRange {
            first: a.first,
            last: b.first - 1,
        });
    }
    if b.last < a.last {
        out.push(PortRange {
            first: b.last + 1,
            last: a.last,
        });
    }
    out
}

/// Every port of the ranges, capped at [`MAX_DOMAIN_PORTS`] (policy validation refuses more).
pub fn expand_ports(ranges: &[PortRange]) -> impl Iterator<Item = u16> + '_ {
    ranges
        .iter()
        .flat_map(|r| r.first..=r.last)
        .take(MAX_DOMAIN_PORTS)
}

/// Key bytes of a resolved element, laid out as the kernel's registers hold them: the address,
/// the protocol number padded to 4 bytes, the port in network order padded to 4 bytes.
pub fn addr_key(addr: IpAddr, proto: Proto, port: u16) -> Vec<u8> {
    let mut key = ip_bytes(addr);
    key.extend_from_slice(&[proto.number(), 0, 0, 0]);
    let p = port.to_be_bytes();
    key.extend_from_slice(&[p[0], p[1], 0, 0]);
    key
}

/// First and last key of a static element (inclusive range).
pub fn net_key_range(e: &NetElem) -> (Vec<u8>, Vec<u8>) {
    let first = addr_key(e.net.network(), e.proto, e.ports.first);
    let last = addr_key(last_addr(e.net), e.proto, e.ports.last);
    (first, last)
}

fn ip_bytes(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn last_addr(net: IpNetwork) -> IpAddr {
    match net {
        IpNetwork::V4(n) => IpAddr::V4(n.broadcast()),
        IpNetwork::V6(n) => {
            let host_bits = 128 - u32::from(n.prefix());
            let mask = if host_bits == 128 {
                u128::MAX
            } else {
                (1u128 << host_bits) - 1
            };
            IpAddr::V6((u128::from(n.network()) | mask).into())
        }
    }
}

fn proto_name(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    }
}

fn fmt_net(net: &IpNetwork) -> String {
    let full = if net.is_ipv4() { 32 } else { 128 };
    if net.prefix() == full {
        net.ip().to_string()
    } else {
        format!("{}/{}", net.network(), net.prefix())
    }
}

fn fmt_ports(p: &PortRange) -> String {
    if p.first == p.last {
        p.first.to_string()
    } else {
        format!("{}-{}", p.first, p.last)
    }
}

impl fmt::Display for ChainRule {
    /// The rule in `nft` syntax (without the ruleset context it needs for log settings, which
    /// `Ruleset`'s `Display` fills in).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChainRule::AcceptLoopback => write!(f, "oifname \"lo\" accept"),
            ChainRule::AcceptApprovedIn(set) => {
                let daddr = if set.is_v6() { "ip6 daddr" } else { "ip daddr" };
                write!(
                    f,
                    "ct mark & {APPROVED_MARK:#010x} == {APPROVED_MARK:#010x} {daddr} . meta l4proto . th dport @{} accept",
                    set.as_str()
                )
            }
            ChainRule::AcceptApproved => write!(
                f,
                "ct mark & {APPROVED_MARK:#010x} == {APPROVED_MARK:#010x} accept"
            ),
            ChainRule::AcceptRedirected { v6: false } => write!(
                f,
                "meta nfproto ipv4 ip daddr 127.0.0.1 ct status & dnat == dnat accept"
            ),
            ChainRule::AcceptRedirected { v6: true } => write!(
                f,
                "meta nfproto ipv6 ip6 daddr ::1 ct status & dnat == dnat accept"
            ),
            ChainRule::AcceptReplies => write!(f, "ct direction reply accept"),
            ChainRule::AcceptIcmpv6(t) => {
                let name = ICMPV6_ND_TYPES
                    .iter()
                    .find(|(n, _)| n == t)
                    .map(|(_, s)| s.to_string())
                    .unwrap_or_else(|| t.to_string());
                write!(f, "icmpv6 type {name} accept")
            }
            ChainRule::AllowSet(set) => {
                let daddr = if set.is_v6() { "ip6 daddr" } else { "ip daddr" };
                write!(
                    f,
                    "{daddr} . meta l4proto . th dport @{} ct mark set ct mark | {APPROVED_MARK:#010x} counter name \"allowed\" accept",
                    set.as_str()
                )
            }
            ChainRule::Log => write!(f, "log"),
            ChainRule::RejectTcp => {
                write!(
                    f,
                    "meta l4proto tcp counter name \"denied\" reject with tcp reset"
                )
            }
            ChainRule::RejectOther => write!(
                f,
                "counter name \"denied\" reject with icmpx admin-prohibited"
            ),
            ChainRule::CountAndAccept => write!(f, "counter name \"denied\" accept"),
            ChainRule::BudgetBytes { rate, burst } => write!(
                f,
                "oifname != \"lo\" limit rate over {rate} bytes/second burst {burst} bytes jump {BUDGET_CHAIN_NAME}"
            ),
            ChainRule::BudgetConn { count, per } => write!(
                f,
                "ct state new th dport != {DNS_PORT} limit rate over {count}/{} burst {count} packets jump {BUDGET_CHAIN_NAME}",
                per.as_str()
            ),
            ChainRule::AnomalyConn { per_minute } => write!(
                f,
                "ct state new th dport != {DNS_PORT} limit rate over {per_minute}/minute burst {per_minute} packets limit rate 1/second burst 1 packets log prefix \"{LOG_PREFIX_ANOMALY_CONN}\""
            ),
            ChainRule::AnomalyFlowBytes { bytes } => write!(
                f,
                "ct original bytes > {bytes} ct mark & {FLOW_LOGGED_MARK:#010x} == 0x00000000 log prefix \"{LOG_PREFIX_ANOMALY_FLOW}\""
            ),
        }
    }
}

impl fmt::Display for BudgetRule {
    /// The rule in `nft` syntax (the log settings come from the ruleset; see `Ruleset`'s
    /// `Display`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BudgetRule::Log => write!(f, "log"),
            BudgetRule::RejectTcp => write!(
                f,
                "meta l4proto tcp counter name \"limited\" reject with tcp reset"
            ),
            BudgetRule::RejectOther => write!(
                f,
                "counter name \"limited\" reject with icmpx admin-prohibited"
            ),
            BudgetRule::CountAndReturn => write!(f, "counter name \"limited\" return"),
        }
    }
}

impl fmt::Display for DnsRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DnsRule::ReturnProxy => write!(f, "meta mark {PROXY_SOCKET_MARK:#010x} return"),
            DnsRule::Redirect { v6, proto, port } => {
                let (nfproto, fam, to) = if *v6 {
                    ("ipv6", "ip6", format!("[::1]:{port}"))
                } else {
                    ("ipv4", "ip", format!("127.0.0.1:{port}"))
                };
                write!(
                    f,
                    "meta nfproto {nfproto} meta l4proto {} th dport 53 dnat {fam} to {to}",
                    proto_name(*proto)
                )
            }
        }
    }
}

impl fmt::Display for Ruleset {
    /// The table in `nft -f` syntax.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "table inet {TABLE_NAME} {{")?;
        for name in self.counter_names() {
            writeln!(f, "\tcounter {name} {{\n\t}}")?;
        }
        for set in SetName::ALL {
            let addr_type = if set.is_v6() {
                "ipv6_addr"
            } else {
                "ipv4_addr"
            };
            writeln!(f, "\tset {} {{", set.as_str())?;
            writeln!(f, "\t\ttype {addr_type} . inet_proto . inet_service")?;
            let elems: Vec<String> = if set.is_interval() {
                writeln!(f, "\t\tflags interval")?;
                writeln!(f, "\t\tcounter")?;
                self.nets_in(set)
                    .iter()
                    .map(|e| {
                        format!(
                            "{} . {} . {}",
                            fmt_net(&e.net),
                            proto_name(e.proto),
                            fmt_ports(&e.ports)
                        )
                    })
                    .collect()
            } else {
                writeln!(f, "\t\tflags timeout")?;
                writeln!(f, "\t\tcounter")?;
                self.addrs_in(set)
                    .map(|e| {
                        format!(
                            "{} . {} . {} timeout {}ms",
                            e.addr,
                            proto_name(e.proto),
                            e.port,
                            e.timeout.as_millis().max(1)
                        )
                    })
                    .collect()
            };
            if !elems.is_empty() {
                writeln!(f, "\t\telements = {{ {} }}", elems.join(",\n\t\t\t     "))?;
            }
            writeln!(f, "\t}}")?;
        }
        let dns = self.dns_chain();
        if !dns.is_empty() {
            writeln!(f, "\tchain {DNS_CHAIN_NAME} {{")?;
            writeln!(
                f,
                "\t\ttype nat hook output priority {DNS_CHAIN_PRIORITY}; policy accept;"
            )?;
            for rule in dns {
                writeln!(f, "\t\t{rule}")?;
            }
            writeln!(f, "\t}}")?;
        }
        let budget = self.budget_chain();
        if !budget.is_empty() {
            writeln!(f, "\tchain {BUDGET_CHAIN_NAME} {{")?;
            for rule in budget {
                match rule {
                    BudgetRule::Log => writeln!(
                        f,
                        "\t\tlimit rate {}/second burst {} packets log prefix \"{}\" group {}",
                        self.log.rate_per_second,
                        self.log.burst,
                        self.limit_log_prefix(),
                        self.log.group
                    )?,
                    other => writeln!(f, "\t\t{other}")?,
                }
            }
            writeln!(f, "\t}}")?;
        }
        writeln!(f, "\tchain {CHAIN_NAME} {{")?;
        writeln!(
            f,
            "\t\ttype filter hook output priority filter; policy drop;"
        )?;
        for rule in self.chain() {
            match rule {
                ChainRule::Log => writeln!(
                    f,
                    "\t\tlimit rate {}/second burst {} packets log prefix \"{}\" group {}",
                    self.log.rate_per_second,
                    self.log.burst,
                    self.log_prefix(),
                    self.log.group
                )?,
                ChainRule::AnomalyConn { per_minute } => writeln!(
                    f,
                    "\t\tct state new th dport != {DNS_PORT} limit rate over {per_minute}/minute burst {per_minute} packets limit rate 1/second burst 1 packets log prefix \"{LOG_PREFIX_ANOMALY_CONN}\" group {}",
                    self.log.group
                )?,
                ChainRule::AnomalyFlowBytes { bytes } => writeln!(
                    f,
                    "\t\tct original bytes > {bytes} ct mark & {FLOW_LOGGED_MARK:#010x} == 0x00000000 limit rate {}/second burst {} packets ct mark set ct mark | {FLOW_LOGGED_MARK:#010x} log prefix \"{LOG_PREFIX_ANOMALY_FLOW}\" group {}",
                    self.log.rate_per_second, self.log.burst, self.log.group
                )?,
                other => writeln!(f, "\t\t{other}")?,
            }
        }
        writeln!(f, "\t}}")?;
        writeln!(f, "}}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Rule, RuleSource};

    fn rule(host: Host, ports: &[(u16, u16)], proto: Proto) -> Rule {
        Rule {
            host,
            ports: ports
                .iter()
                .map(|(a, b)| PortRange {
                    first: *a,
                    last: *b,
                })
                .collect(),
            proto,
            source: RuleSource::Label("egressd.allow".into()),
        }
    }

    #[test]
    fn keys_are_register_padded() {
        let k = addr_key("10.1.2.3".parse().unwrap(), Proto::Tcp, 443);
        assert_eq!(k, vec![10, 1, 2, 3, 6, 0, 0, 0, 0x01, 0xbb, 0, 0]);
        let k6 = addr_key("::1".parse().unwrap(), Proto::Udp, 53);
        assert_eq!(k6.len(), 24);
        assert_eq!(&k6[16..], &[17, 0, 0, 0, 0, 53, 0, 0]);
    }

    #[test]
    fn net_range_covers_the_cidr_and_ports() {
        let e = NetElem {
            net: "10.0.0.0/8".parse().unwrap(),
            proto: Proto::Tcp,
            ports: PortRange {
                first: 8000,
                last: 8100,
            },
        };
        let (a, b) = net_key_range(&e);
        assert_eq!(&a[..4], &[10, 0, 0, 0]);
        assert_eq!(&b[..4], &[10, 255, 255, 255]);
        assert_eq!(&a[8..10], &8000u16.to_be_bytes());
        assert_eq!(&b[8..10], &8100u16.to_be_bytes());
        let e6 = NetElem {
            net: "fd00::/8".parse().unwrap(),
            proto: Proto::Udp,
            ports: PortRange { first: 1, last: 1 },
        };
        let (a, b) = net_key_range(&e6);
        assert_eq!(a[0], 0xfd);
        assert_eq!(&b[1..16], &[0xff; 15]);
    }

    #[test]
    fn quarantine_has_no_allow_rules_and_no_elements() {
        let mut policy = ContainerPolicy::quarantine(vec!["bad label".into()]);
        policy.rules.push(rule(
            Host::Net("10.0.0.0/8".parse().unwrap()),
            &[(443, 443)],
            Proto::Tcp,
        ));
        let rs = Ruleset::from_policy(&policy, &BTreeMap::new(), LogSettings::default());
        assert!(rs.quarantined);
        assert!(rs.nets.is_empty() && rs.addrs.is_empty());
        let chain = rs.chain();
        assert!(!chain.iter().any(|r| matches!(
            r,
            ChainRule::AllowSet(_)
                | ChainRule::AcceptApproved
                | ChainRule::AcceptApprovedIn(_)
                | ChainRule::AcceptReplies
                | ChainRule::CountAndAccept
        )));
        assert_eq!(chain.last(), Some(&ChainRule::RejectOther));
    }

    #[test]
    fn report_mode_accepts_at_the_end_and_quarantine_overrides_it() {
        let policy = ContainerPolicy {
            mode: Mode::Report,
            ..Default::default()
        };
        let rs = Ruleset::from_policy(&policy, &BTreeMap::new(), LogSettings::default());
        assert_eq!(rs.chain().last(), Some(&ChainRule::CountAndAccept));
        let mut q = rs.clone();
        q.quarantined = true;
        assert_eq!(q.chain().last(), Some(&ChainRule::RejectOther));
    }

    #[test]
    fn domains_expand_per_address_and_port_and_unresolved_stay_closed() {
        let policy = ContainerPolicy {
            rules: vec![
                rule(
                    Host::Domain("api.example.com".into()),
                    &[(80, 80), (443, 443)],
                    Proto::Tcp,
                ),
                rule(
                    Host::Domain("unresolved.example.com".into()),
                    &[(443, 443)],
                    Proto::Tcp,
                ),
                rule(
                    Host::Wildcard("example.org".into()),
                    &[(443, 443)],
                    Proto::Tcp,
                ),
            ],
            ..Default::default()
        };
        let mut resolved = BTreeMap::new();
        resolved.insert(
            "api.example.com".to_string(),
            vec![
                ResolvedAddr {
                    addr: "192.0.2.1".parse().unwrap(),
                    timeout: Duration::from_secs(90),
                },
                ResolvedAddr {
                    addr: "2001:db8::1".parse().unwrap(),
                    timeout: Duration::from_secs(30),
                },
            ],
        );
        let rs = Ruleset::from_policy(&policy, &resolved, LogSettings::default());
        assert_eq!(rs.addrs.len(), 4);
        assert_eq!(rs.addrs_in(SetName::Dom4).count(), 2);
        assert_eq!(rs.addrs_in(SetName::Dom6).count(), 2);
        assert!(rs.nets.is_empty());
    }

    #[test]
    fn normalize_keeps_longest_timeout() {
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let mut rs = Ruleset::quarantine(LogSettings::default());
        rs.quarantined = false;
        rs.addrs = vec![
            AddrElem {
                addr: a,
                proto: Proto::Tcp,
                port: 443,
                timeout: Duration::from_secs(5),
            },
            AddrElem {
                addr: a,
                proto: Proto::Tcp,
                port: 443,
                timeout: Duration::from_secs(50),
            },
        ];
        rs.normalize();
        assert_eq!(rs.addrs.len(), 1);
        assert_eq!(rs.addrs[0].timeout, Duration::from_secs(50));
    }

    #[test]
    fn overlapping_static_elements_become_disjoint_without_changing_what_is_allowed() {
        let e = |net: &str, proto, a, b| NetElem {
            net: net.parse().unwrap(),
            proto,
            ports: PortRange { first: a, last: b },
        };
        let input = vec![
            e("10.1.0.0/16", Proto::Tcp, 80, 443),
            e("10.0.0.0/8", Proto::Tcp, 443, 443),
            e("10.0.0.0/8", Proto::Tcp, 443, 443),
            e("10.1.2.3/32", Proto::Tcp, 1, 65535),
            e("10.1.0.0/16", Proto::Udp, 53, 53),
            e("192.168.0.0/16", Proto::Tcp, 443, 443),
        ];
        let out = disjoint_nets(&input);
        // No two elements overlap in address, protocol and port.
        for (i, a) in out.iter().enumerate() {
            for b in &out[i + 1..] {
                let addr = a.net.contains(b.net.network()) || b.net.contains(a.net.network());
                let ports = a.ports.first <= b.ports.last && b.ports.first <= a.ports.last;
                assert!(
                    !(a.proto == b.proto && addr && ports),
                    "{a:?} overlaps {b:?}"
                );
            }
        }
        // Every probe is allowed by the output exactly when it is allowed by the input.
        let allows = |set: &[NetElem], ip: &str, proto, port| {
            let ip: IpAddr = ip.parse().unwrap();
            set.iter().any(|x| {
                x.proto == proto
                    && x.net.contains(ip)
                    && x.ports.first <= port
                    && port <= x.ports.last
            })
        };
        for ip in [
            "10.1.2.3",
            "10.1.9.9",
            "10.200.0.1",
            "192.168.1.1",
            "172.16.0.1",
        ] {
            for proto in [Proto::Tcp, Proto::Udp] {
                for port in [1, 53, 79, 80, 81, 442, 443, 444, 8080, 65535] {
                    assert_eq!(
                        allows(&input, ip, proto, port),
                        allows(&out, ip, proto, port),
                        "{ip} {proto:?} {port}"
                    );
                }
            }
        }
    }

    #[test]
    fn port_expansion_is_capped() {
        let r = [PortRange {
            first: 1,
            last: 65535,
        }];
        assert_eq!(expand_ports(&r).count(), MAX_DOMAIN_PORTS);
    }
}
