//! Turns a [`Ruleset`] into one nf_tables netlink batch. Each message gets a description
//! (`add set dom4`) so a kernel error names what it refused.

use std::ffi::CString;

use nftnl::{
    Batch, Chain, ChainType, FinalizedBatch, Hook, MsgType, Policy, ProtoFamily, Rule, Table,
};

use super::nl::{self, Elem, Expr, REG_1, REG_2, REG32_00, SetSpec};
use super::ruleset::{
    self, APPROVED_MARK, AddrElem, BudgetRule, ChainRule, DnsRule, PROXY_SOCKET_MARK, Ruleset,
    SetName, TABLE_NAME, addr_key, net_key_range,
};
use crate::policy::Proto;

pub const FAMILY: u16 = libc::NFPROTO_INET as u16;

// nft datatype ids, for `nft list` to print keys.
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;
const TYPE_INET_PROTO: u32 = 12;
const TYPE_INET_SERVICE: u32 = 13;
const KEY4: u32 = nl::concat_type(&[TYPE_IPADDR, TYPE_INET_PROTO, TYPE_INET_SERVICE]);
const KEY6: u32 = nl::concat_type(&[TYPE_IP6ADDR, TYPE_INET_PROTO, TYPE_INET_SERVICE]);

const NFT_SET_INTERVAL: u32 = libc::NFT_SET_INTERVAL as u32;
const NFT_SET_TIMEOUT: u32 = libc::NFT_SET_TIMEOUT as u32;

// Header bases and offsets for payload loads.
const NETWORK: u32 = libc::NFT_PAYLOAD_NETWORK_HEADER as u32;
const TRANSPORT: u32 = libc::NFT_PAYLOAD_TRANSPORT_HEADER as u32;

/// How each set stores its keys. Keys are `daddr . l4proto . dport`, each field padded to a
/// 32-bit register: 12 bytes for IPv4, 24 for IPv6.
pub fn set_spec(set: SetName) -> SetSpec {
    let (key_type, key_len, fields): (u32, u32, &'static [u8]) = if set.is_v6() {
        (KEY6, 24, &[16, 1, 2])
    } else {
        (KEY4, 12, &[4, 1, 2])
    };
    if set.is_interval() {
        SetSpec {
            key_type,
            key_len,
            flags: NFT_SET_INTERVAL | nl::NFT_SET_CONCAT,
            concat_fields: fields,
        }
    } else {
        SetSpec {
            key_type,
            key_len,
            flags: NFT_SET_TIMEOUT,
            concat_fields: &[],
        }
    }
}

/// Stable set ids within one batch (lookups refer to sets by name and id).
fn set_id(set: SetName) -> u32 {
    match set {
        SetName::Dom4 => 1,
        SetName::Net4 => 2,
        SetName::Dom6 => 3,
        SetName::Net6 => 4,
    }
}

fn cstr(s: &str) -> CString {
    // Only called with the fixed names of this module, which contain no NUL.
    CString::new(s).unwrap_or_default()
}

fn table() -> Table {
    Table::new(cstr(TABLE_NAME), ProtoFamily::Inet)
}

fn new_set(set: SetName) -> nl::Set {
    nl::Set::new(
        &cstr(TABLE_NAME),
        FAMILY,
        &cstr(set.as_str()),
        set_id(set),
        &set_spec(set),
    )
}

/// Records the description of each message added to the batch.
struct Builder {
    batch: Batch,
    what: Vec<String>,
}

impl Builder {
    fn new() -> Self {
        Builder {
            batch: Batch::new(),
            what: Vec::new(),
        }
    }

    fn add<T: nftnl::NlMsg>(&mut self, msg: &T, ty: MsgType, what: String) {
        self.batch.add(msg, ty);
        self.what.push(what);
    }

    fn elems(&mut self, set: &nl::Set, ty: MsgType, what: &str) {
        let n = set.write_elems(&mut self.batch, ty);
        for i in 0..n {
            self.what.push(format!("{what} (message {})", i + 1));
        }
    }

    fn finish(self) -> (FinalizedBatch, Vec<String>) {
        (self.batch.finalize(), self.what)
    }
}

/// add table; delete table; add table and everything in it. One transaction: the delete
/// cannot fail (the table was just added), and no packet ever sees a half-built table.
pub fn replace_table(rs: &Ruleset) -> (FinalizedBatch, Vec<String>) {
    let mut b = Builder::new();
    let table = table();
    b.add(&table, MsgType::Add, "add table".into());
    b.add(&table, MsgType::Del, "delete old table".into());
    b.add(&table, MsgType::Add, "add table".into());

    for name in rs.counter_names() {
        let c = nl::Counter::new(&cstr(TABLE_NAME), FAMILY, &cstr(name));
        b.add(&c, MsgType::Add, format!("add counter {name}"));
    }

    for set in SetName::ALL {
        let mut s = new_set(set);
        // Per-element counters: allowed packets and bytes per destination (element_counters).
        s.count_elements();
        b.add(&s, MsgType::Add, format!("add set {}", set.as_str()));
        let mut any = false;
        if set.is_interval() {
            for e in rs.nets_in(set) {
                let (key, end) = net_key_range(&e);
                s.add_elem(&Elem {
                    key,
                    key_end: Some(end),
                    timeout_ms: None,
                });
                any = true;
            }
        } else {
            for e in rs.addrs_in(set) {
                s.add_elem(&addr_elem(e));
                any = true;
            }
        }
        if any {
            b.elems(
                &s,
                MsgType::Add,
                &format!("add elements to set {}", set.as_str()),
            );
        }
    }

    let dns_rules = rs.dns_chain();
    if !dns_rules.is_empty() {
        let mut dns = Chain::new(cstr(ruleset::DNS_CHAIN_NAME), &table);
        dns.set_hook(Hook::Out, ruleset::DNS_CHAIN_PRIORITY);
        dns.set_type(ChainType::Nat);
        dns.set_policy(Policy::Accept);
        b.add(&dns, MsgType::Add, "add chain dns".into());
        for (i, dr) in dns_rules.into_iter().enumerate() {
            let mut rule = Rule::new(&dns);
            for e in dns_rule_exprs(dr) {
                rule.add_expr(&e);
            }
            b.add(
                &rule,
                MsgType::Add,
                format!("add dns rule {} ({dr})", i + 1),
            );
        }
    }

    // The budget chain before the output chain: its rules jump to it by name.
    let budget_rules = rs.budget_chain();
    if !budget_rules.is_empty() {
        let budget = Chain::new(cstr(ruleset::BUDGET_CHAIN_NAME), &table);
        b.add(&budget, MsgType::Add, "add chain budget".into());
        for (i, br) in budget_rules.into_iter().enumerate() {
            let mut rule = Rule::new(&budget);
            for e in budget_rule_exprs(rs, br) {
                rule.add_expr(&e);
            }
            b.add(
                &rule,
                MsgType::Add,
                format!("add budget rule {} ({br})", i + 1),
            );
        }
    }

    let mut chain = Chain::new(cstr(ruleset::CHAIN_NAME), &table);
    chain.set_hook(Hook::Out, 0);
    chain.set_type(ChainType::Filter);
    chain.set_policy(Policy::Drop);
    b.add(&chain, MsgType::Add, "add chain output".into());

    for (i, cr) in rs.chain().into_iter().enumerate() {
        let mut rule = Rule::new(&chain);
        for e in rule_exprs(rs, cr) {
            rule.add_expr(&e);
        }
        b.add(&rule, MsgType::Add, format!("add rule {} ({cr})", i + 1));
    }
    b.finish()
}

/// add table; delete table: removes it whether it existed or not.
pub fn delete_table() -> (FinalizedBatch, Vec<String>) {
    let mut b = Builder::new();
    let table = table();
    b.add(&table, MsgType::Add, "add table".into());
    b.add(&table, MsgType::Del, "delete table".into());
    b.finish()
}

fn addr_elem(e: &AddrElem) -> Elem {
    Elem {
        key: addr_key(e.addr, e.proto, e.port),
        key_end: None,
        timeout_ms: Some(
            u64::try_from(e.timeout.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
        ),
    }
}

fn sets_of(elems: &[AddrElem]) -> Vec<(SetName, nl::Set)> {
    [SetName::Dom4, SetName::Dom6]
        .into_iter()
        .filter_map(|name| {
            let mut set = new_set(name);
            let mut any = false;
            for e in elems
                .iter()
                .filter(|e| SetName::for_addr(e.addr, false) == name)
            {
                set.add_elem(&addr_elem(e));
                any = true;
            }
            any.then_some((name, set))
        })
        .collect()
}

/// NEWSETELEM without NLM_F_EXCL for each element: adds, or refreshes the timeout (kernel
/// 6.10+). With `readd`, each element is added, deleted and added again in the one
/// transaction, which sets the new timeout on any kernel (older ones keep the first timeout
/// of an element that exists); no packet sees the element missing.
pub fn add_addrs(elems: &[AddrElem], readd: bool) -> (FinalizedBatch, Vec<String>) {
    let mut b = Builder::new();
    for (name, set) in sets_of(elems) {
        let what = format!("add elements to set {}", name.as_str());
        b.elems(&set, MsgType::Add, &what);
        if readd {
            b.elems(
                &set,
                MsgType::Del,
                &format!("delete elements from set {}", name.as_str()),
            );
            b.elems(&set, MsgType::Add, &what);
        }
    }
    b.finish()
}

/// Add-then-delete in one transaction, so deleting an element that is not there (expired,
/// or never added) is not an error.
pub fn remove_addrs(elems: &[AddrElem]) -> (FinalizedBatch, Vec<String>) {
    let mut b = Builder::new();
    for (name, set) in sets_of(elems) {
        b.elems(
            &set,
            MsgType::Add,
            &format!("add elements to set {}", name.as_str()),
        );
        b.elems(
            &set,
            MsgType::Del,
            &format!("delete elements from set {}", name.as_str()),
        );
    }
    b.finish()
}

/// The expressions of one DNS NAT rule (the comment above each arm is the `nft` syntax).
fn dns_rule_exprs(rule: DnsRule) -> Vec<Expr> {
    match rule {
        // meta mark MARK return
        DnsRule::ReturnProxy => vec![
            Expr::meta(libc::NFT_META_MARK as u32, REG_1),
            Expr::cmp_eq(REG_1, &PROXY_SOCKET_MARK.to_ne_bytes()),
            Expr::verdict(libc::NFT_RETURN),
        ],
        // meta nfproto F meta l4proto P th dport 53 dnat ip[6] to LOOPBACK:PORT
        DnsRule::Redirect { v6, proto, port } => {
            let (nfproto, addr): (i32, Vec<u8>) = if v6 {
                (
                    libc::NFPROTO_IPV6,
                    std::net::Ipv6Addr::LOCALHOST.octets().to_vec(),
                )
            } else {
                (
                    libc::NFPROTO_IPV4,
                    std::net::Ipv4Addr::LOCALHOST.octets().to_vec(),
                )
            };
            vec![
                Expr::meta(libc::NFT_META_NFPROTO as u32, REG_1),
                Expr::cmp_eq(REG_1, &[nfproto as u8]),
                Expr::meta(libc::NFT_META_L4PROTO as u32, REG_1),
                Expr::cmp_eq(REG_1, &[proto.number()]),
                Expr::payload(TRANSPORT, 2, 2, REG_1),
                Expr::cmp_eq(REG_1, &53u16.to_be_bytes()),
                Expr::immediate_data(REG_1, &addr),
                Expr::immediate_data(REG_2, &port.to_be_bytes()),
                Expr::dnat(nfproto, REG_1, REG_2),
            ]
        }
    }
}

/// The expressions of one chain rule. The comment above each arm is the rule in `nft` syntax.
fn rule_exprs(rs: &Ruleset, rule: ChainRule) -> Vec<Expr> {
    let accept = Expr::verdict(libc::NF_ACCEPT);
    match rule {
        // oifname "lo" accept
        ChainRule::AcceptLoopback => {
            let mut name = [0u8; 16];
            name[..2].copy_from_slice(b"lo");
            vec![
                Expr::meta(libc::NFT_META_OIFNAME as u32, REG_1),
                Expr::cmp_eq(REG_1, &name),
                accept,
            ]
        }
        // ct mark & MARK == MARK meta nfproto F ip[6] daddr . meta l4proto . th dport @SET accept
        ChainRule::AcceptApprovedIn(set) => {
            let mut e = vec![
                Expr::ct_load(libc::NFT_CT_MARK as u32, REG_1),
                Expr::bitwise(REG_1, APPROVED_MARK, 0),
                Expr::cmp_eq(REG_1, &APPROVED_MARK.to_ne_bytes()),
            ];
            e.extend(set_key_lookup(set));
            e.push(accept);
            e
        }
        // ct mark & MARK == MARK accept
        ChainRule::AcceptApproved => vec![
            Expr::ct_load(libc::NFT_CT_MARK as u32, REG_1),
            Expr::bitwise(REG_1, APPROVED_MARK, 0),
            Expr::cmp_eq(REG_1, &APPROVED_MARK.to_ne_bytes()),
            accept,
        ],
        // meta nfproto F ip[6] daddr LOOPBACK ct status & dnat == dnat accept
        ChainRule::AcceptRedirected { v6 } => {
            let (nfproto, off, addr): (i32, u32, Vec<u8>) = if v6 {
                (
                    libc::NFPROTO_IPV6,
                    24,
                    std::net::Ipv6Addr::LOCALHOST.octets().to_vec(),
                )
            } else {
                (
                    libc::NFPROTO_IPV4,
                    16,
                    std::net::Ipv4Addr::LOCALHOST.octets().to_vec(),
                )
            };
            const IPS_DST_NAT: u32 = 1 << 5;
            vec![
                Expr::meta(libc::NFT_META_NFPROTO as u32, REG_1),
                Expr::cmp_eq(REG_1, &[nfproto as u8]),
                Expr::payload(NETWORK, off, addr.len() as u32, REG_1),
                Expr::cmp_eq(REG_1, &addr),
                Expr::ct_load(libc::NFT_CT_STATUS as u32, REG_1),
                Expr::bitwise(REG_1, IPS_DST_NAT, 0),
                Expr::cmp_eq(REG_1, &IPS_DST_NAT.to_ne_bytes()),
                accept,
            ]
        }
        // ct direction reply accept
        ChainRule::AcceptReplies => vec![
            Expr::ct_load(libc::NFT_CT_DIRECTION as u32, REG_1),
            Expr::cmp_eq(REG_1, &[1]), // IP_CT_DIR_REPLY
            accept,
        ],
        // icmpv6 type TYPE accept  (meta nfproto ipv6 meta l4proto ipv6-icmp @th,0,8 TYPE)
        ChainRule::AcceptIcmpv6(ty) => vec![
            Expr::meta(libc::NFT_META_NFPROTO as u32, REG_1),
            Expr::cmp_eq(REG_1, &[libc::NFPROTO_IPV6 as u8]),
            Expr::meta(libc::NFT_META_L4PROTO as u32, REG_1),
            Expr::cmp_eq(REG_1, &[libc::IPPROTO_ICMPV6 as u8]),
            Expr::payload(TRANSPORT, 0, 1, REG_1),
            Expr::cmp_eq(REG_1, &[ty]),
            accept,
        ],
        // meta nfproto F; ip[6] daddr . meta l4proto . th dport @SET
        //   ct mark set ct mark | MARK counter name "allowed" accept
        ChainRule::AllowSet(set) => {
            let (nfproto, daddr_off, daddr_len, proto_reg) = if set.is_v6() {
                (libc::NFPROTO_IPV6, 24, 16, REG32_00 + 4)
            } else {
                (libc::NFPROTO_IPV4, 16, 4, REG32_00 + 1)
            };
            vec![
                Expr::meta(libc::NFT_META_NFPROTO as u32, REG_1),
                Expr::cmp_eq(REG_1, &[nfproto as u8]),
                Expr::payload(NETWORK, daddr_off, daddr_len, REG32_00),
                Expr::meta(libc::NFT_META_L4PROTO as u32, proto_reg),
                Expr::payload(TRANSPORT, 2, 2, proto_reg + 1),
                Expr::lookup(&cstr(set.as_str()), set_id(set), REG32_00),
                Expr::ct_load(libc::NFT_CT_MARK as u32, REG_1),
                Expr::bitwise(REG_1, !APPROVED_MARK, APPROVED_MARK),
                Expr::ct_store(libc::NFT_CT_MARK as u32, REG_1),
                Expr::counter_ref(&cstr("allowed")),
                accept,
            ]
        }
        // limit rate R/second burst B packets log prefix P group G
        ChainRule::Log => rate_limited_log(rs, rs.log_prefix()),
        // meta l4proto tcp counter name "denied" reject with tcp reset
        ChainRule::RejectTcp => count_and_reset_tcp("denied"),
        // counter name "denied" reject with icmpx admin-prohibited
        ChainRule::RejectOther => count_and_reject_icmpx("denied"),
        // counter name "denied" accept   (report mode)
        ChainRule::CountAndAccept => vec![Expr::counter_ref(&cstr("denied")), accept],
        // oifname != "lo" limit rate over RATE bytes/second burst BURST bytes jump budget
        ChainRule::BudgetBytes { rate, burst } => vec![
            Expr::meta(libc::NFT_META_OIFNAME as u32, REG_1),
            Expr::cmp_neq(REG_1, &ifname("lo")),
            Expr::limit_over_bytes(rate, burst),
            Expr::jump(&cstr(ruleset::BUDGET_CHAIN_NAME)),
        ],
        // ct state new th dport != 53 limit rate over N/PERIOD burst N packets jump budget
        ChainRule::BudgetConn { count, per } => {
            let mut e = new_flow_not_dns();
            e.push(Expr::limit_over_packets(
                u64::from(count),
                per.seconds(),
                count,
            ));
            e.push(Expr::jump(&cstr(ruleset::BUDGET_CHAIN_NAME)));
            e
        }
        // ct state new th dport != 53 limit rate over N/minute burst N packets
        //   limit rate 1/second burst 1 packets log prefix "egressd-anomaly-conn " group G
        ChainRule::AnomalyConn { per_minute } => {
            let mut e = new_flow_not_dns();
            e.push(Expr::limit_over_packets(
                u64::from(per_minute),
                60,
                per_minute,
            ));
            e.push(Expr::limit_per_second(1, 1));
            e.push(Expr::log_group(
                rs.log.group,
                &cstr(ruleset::LOG_PREFIX_ANOMALY_CONN),
            ));
            e
        }
        // ct original bytes > N ct mark & FLAG == 0 limit rate R/second burst B packets
        //   ct mark set ct mark | FLAG log prefix "egressd-anomaly-flow " group G
        // (The kernel turns on conntrack accounting in the namespace when it loads a rule
        // that reads `ct bytes`.)
        ChainRule::AnomalyFlowBytes { bytes } => vec![
            Expr::ct_load_original(libc::NFT_CT_BYTES as u32, REG_1),
            Expr::hton64(REG_1),
            Expr::cmp_gt(REG_1, &bytes.to_be_bytes()),
            Expr::ct_load(libc::NFT_CT_MARK as u32, REG_1),
            Expr::bitwise(REG_1, ruleset::FLOW_LOGGED_MARK, 0),
            Expr::cmp_eq(REG_1, &0u32.to_ne_bytes()),
            Expr::limit_per_second(u64::from(rs.log.rate_per_second), rs.log.burst),
            Expr::ct_load(libc::NFT_CT_MARK as u32, REG_1),
            Expr::bitwise(REG_1, !ruleset::FLOW_LOGGED_MARK, ruleset::FLOW_LOGGED_MARK),
            Expr::ct_store(libc::NFT_CT_MARK as u32, REG_1),
            Expr::log_group(rs.log.group, &cstr(ruleset::LOG_PREFIX_ANOMALY_FLOW)),
        ],
    }
}

/// `ct state new th dport != 53`: the first packet of a flow that is not DNS (budgets and
/// the connection-rate warning count these).
fn new_flow_not_dns() -> Vec<Expr> {
    const CT_STATE_NEW: u32 = 1 << 3; // NF_CT_STATE_BIT(IP_CT_NEW)
    vec![
        Expr::ct_load(libc::NFT_CT_STATE as u32, REG_1),
        Expr::bitwise(REG_1, CT_STATE_NEW, 0),
        Expr::cmp_neq(REG_1, &0u32.to_ne_bytes()),
        Expr::payload(TRANSPORT, 2, 2, REG_1),
        Expr::cmp_neq(REG_1, &ruleset::DNS_PORT.to_be_bytes()),
    ]
}

/// `meta nfproto F; ip[6] daddr . meta l4proto . th dport @SET`: the family check first, so
/// the address is loaded from the right offset (the same key as `AllowSet`).
fn set_key_lookup(set: SetName) -> Vec<Expr> {
    let (nfproto, daddr_off, daddr_len, proto_reg) = if set.is_v6() {
        (libc::NFPROTO_IPV6, 24, 16, REG32_00 + 4)
    } else {
        (libc::NFPROTO_IPV4, 16, 4, REG32_00 + 1)
    };
    vec![
        Expr::meta(libc::NFT_META_NFPROTO as u32, REG_1),
        Expr::cmp_eq(REG_1, &[nfproto as u8]),
        Expr::payload(NETWORK, daddr_off, daddr_len, REG32_00),
        Expr::meta(libc::NFT_META_L4PROTO as u32, proto_reg),
        Expr::payload(TRANSPORT, 2, 2, proto_reg + 1),
        Expr::lookup(&cstr(set.as_str()), set_id(set), REG32_00),
    ]
}

/// An interface name as `meta oifname` loads it: NUL-padded to IFNAMSIZ.
fn ifname(name: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    let n = name.len().min(15);
    out[..n].copy_from_slice(&name.as_bytes()[..n]);
    out
}

/// `limit rate R/second burst B packets log prefix PREFIX group G` (the ruleset's log settings).
fn rate_limited_log(rs: &Ruleset, prefix: &str) -> Vec<Expr> {
    vec![
        Expr::limit_per_second(u64::from(rs.log.rate_per_second), rs.log.burst),
        Expr::log_group(rs.log.group, &cstr(prefix)),
    ]
}

/// `meta l4proto tcp counter name COUNTER reject with tcp reset`
fn count_and_reset_tcp(counter: &str) -> Vec<Expr> {
    vec![
        Expr::meta(libc::NFT_META_L4PROTO as u32, REG_1),
        Expr::cmp_eq(REG_1, &[Proto::Tcp.number()]),
        Expr::counter_ref(&cstr(counter)),
        Expr::reject_tcp_reset(),
    ]
}

/// `counter name COUNTER reject with icmpx admin-prohibited`
fn count_and_reject_icmpx(counter: &str) -> Vec<Expr> {
    vec![
        Expr::counter_ref(&cstr(counter)),
        Expr::reject_icmpx_admin(),
    ]
}

/// The expressions of one rule of the budget chain (the comment above each arm is the
/// `nft` syntax).
fn budget_rule_exprs(rs: &Ruleset, rule: BudgetRule) -> Vec<Expr> {
    match rule {
        // limit rate R/second burst B packets log prefix "egressd-limit " group G
        BudgetRule::Log => rate_limited_log(rs, rs.limit_log_prefix()),
        // meta l4proto tcp counter name "limited" reject with tcp reset
        BudgetRule::RejectTcp => count_and_reset_tcp("limited"),
        // counter name "limited" reject with icmpx admin-prohibited
        BudgetRule::RejectOther => count_and_reject_icmpx("limited"),
        // counter name "limited" return   (report mode)
        BudgetRule::CountAndReturn => vec![
            Expr::counter_ref(&cstr("limited")),
            Expr::verdict(libc::NFT_RETURN),
        ],
    }
}
