//! Per-element counters: every element of `dom4`/`dom6`/`net4`/`net6` carries its own
//! `counter` (the sets are declared with one), so the kernel counts allowed packets and bytes
//! per destination. This module reads them back: a GETSETELEM dump per set, parsed here from
//! the raw netlink attributes (pure, so it is tested on captured buffers).
//!
//! Layout of one dump message (kernel `nf_tables_fill_setelem`):
//! ```text
//! nlmsghdr, nfgenmsg
//! NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET
//! NFTA_SET_ELEM_LIST_ELEMENTS { NFTA_LIST_ELEM {
//!     NFTA_SET_ELEM_KEY { NFTA_DATA_VALUE }, [NFTA_SET_ELEM_KEY_END { NFTA_DATA_VALUE }],
//!     NFTA_SET_ELEM_EXPR { NFTA_EXPR_NAME "counter", NFTA_EXPR_DATA { BYTES, PACKETS } }
//!       (or NFTA_SET_ELEM_EXPRESSIONS { NFTA_LIST_ELEM { ...the same... } })
//!     ... timeout, expiration, flags ...
//! } ... }
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

use super::ruleset::{NetElem, SetName};
use crate::policy::{PortRange, Proto};

// Attribute numbers from <linux/netfilter/nf_tables.h>.
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_EXPR: u16 = 7;
const NFTA_SET_ELEM_KEY_END: u16 = 10;
const NFTA_SET_ELEM_EXPRESSIONS: u16 = 11;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_COUNTER_BYTES: u16 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;

/// What one counted element allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CountedElem {
    /// A resolved element of `dom4`/`dom6`: one address, protocol and port.
    Resolved {
        addr: IpAddr,
        proto: Proto,
        port: u16,
    },
    /// A static element of `net4`/`net6`: a network, protocol and port range.
    Static(NetElem),
}

impl CountedElem {
    /// The (first) destination address.
    pub fn addr(&self) -> IpAddr {
        match self {
            CountedElem::Resolved { addr, .. } => *addr,
            CountedElem::Static(n) => n.net.network(),
        }
    }
}

/// One set element and the traffic its counter saw since the element was added (or the
/// table was last replaced).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElementCounter {
    pub set: SetName,
    pub elem: CountedElem,
    pub packets: u64,
    pub bytes: u64,
}

/// Netlink attributes in a buffer: `(type, payload)`, with the nested and byte-order flag
/// bits cleared. Stops at the first malformed attribute.
struct Attrs<'a> {
    buf: &'a [u8],
}

impl<'a> Iterator for Attrs<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<(u16, &'a [u8])> {
        let b = self.buf;
        if b.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
        let ty = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            self.buf = &[];
            return None;
        }
        let payload = &b[4..len];
        let aligned = (len + 3) & !3;
        self.buf = &b[aligned.min(b.len())..];
        Some((ty, payload))
    }
}

pub(crate) fn attrs(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    Attrs { buf }
}

fn find(buf: &[u8], ty: u16) -> Option<&[u8]> {
    attrs(buf).find(|(t, _)| *t == ty).map(|(_, p)| p)
}

fn be64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(..8)?.try_into().ok()?))
}

/// Parses one GETSETELEM dump message (netlink header included) of `set`. Elements whose key
/// is not one egressd writes (another protocol, a wrong length) or that carry no counter are
/// skipped: they are not egressd's, and `verify` reports a tampered table.
pub fn parse_dump_message(set: SetName, msg: &[u8]) -> Vec<ElementCounter> {
    // nlmsghdr (16 bytes) + nfgenmsg (4 bytes)
    let Some(body) = msg.get(20..) else {
        return Vec::new();
    };
    let Some(list) = find(body, NFTA_SET_ELEM_LIST_ELEMENTS) else {
        return Vec::new();
    };
    attrs(list)
        .filter(|(t, _)| *t == NFTA_LIST_ELEM)
        .filter_map(|(_, elem)| parse_elem(set, elem))
        .collect()
}

fn parse_elem(set: SetName, elem: &[u8]) -> Option<ElementCounter> {
    let key = find(find(elem, NFTA_SET_ELEM_KEY)?, NFTA_DATA_VALUE)?;
    let key_end = find(elem, NFTA_SET_ELEM_KEY_END).and_then(|k| find(k, NFTA_DATA_VALUE));
    let (packets, bytes) = elem_counter(elem)?;
    let (addr, proto, port) = decode_key(set, key)?;
    let counted = if set.is_interval() {
        let (last_addr, last_proto, last_port) = decode_key(set, key_end?)?;
        if last_proto != proto || last_port < port {
            return None;
        }
        CountedElem::Static(NetElem {
            net: range_to_net(addr, last_addr)?,
            proto,
            ports: PortRange {
                first: port,
                last: last_port,
            },
        })
    } else {
        CountedElem::Resolved { addr, proto, port }
    };
    Some(ElementCounter {
        set,
        elem: counted,
        packets,
        bytes,
    })
}

/// The counter expression of an element: in `NFTA_SET_ELEM_EXPR` when the set has one
/// expression, in `NFTA_SET_ELEM_EXPRESSIONS` when it has several.
fn elem_counter(elem: &[u8]) -> Option<(u64, u64)> {
    let single = find(elem, NFTA_SET_ELEM_EXPR).into_iter();
    let listed = find(elem, NFTA_SET_ELEM_EXPRESSIONS)
        .into_iter()
        .flat_map(|l| {
            attrs(l)
                .filter(|(t, _)| *t == NFTA_LIST_ELEM)
                .map(|(_, e)| e)
        });
    single.chain(listed).find_map(|expr| {
        let name = find(expr, NFTA_EXPR_NAME)?;
        if name.split(|c| *c == 0).next()? != b"counter" {
            return None;
        }
        let data = find(expr, NFTA_EXPR_DATA)?;
        Some((
            be64(find(data, NFTA_COUNTER_PACKETS)?)?,
            be64(find(data, NFTA_COUNTER_BYTES)?)?,
        ))
    })
}

/// A key as `ruleset::addr_key` lays it out: address, protocol padded to 4 bytes, port in
/// network order padded to 4 bytes.
fn decode_key(set: SetName, key: &[u8]) -> Option<(IpAddr, Proto, u16)> {
    let alen = if set.is_v6() { 16 } else { 4 };
    if key.len() != alen + 8 {
        return None;
    }
    let addr = if set.is_v6() {
        let a: [u8; 16] = key[..16].try_into().ok()?;
        IpAddr::V6(Ipv6Addr::from(a))
    } else {
        let a: [u8; 4] = key[..4].try_into().ok()?;
        IpAddr::V4(Ipv4Addr::from(a))
    };
    let proto = match key[alen] {
        6 => Proto::Tcp,
        17 => Proto::Udp,
        _ => return None,
    };
    let port = u16::from_be_bytes([key[alen + 4], key[alen + 5]]);
    Some((addr, proto, port))
}

/// The CIDR whose first and last addresses are `first` and `last`, if there is one.
fn range_to_net(first: IpAddr, last: IpAddr) -> Option<IpNetwork> {
    let (a, b, bits) = match (first, last) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u128::from(u32::from(a)), u128::from(u32::from(b)), 32),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
        _ => return None,
    };
    let host = a ^ b;
    // host must be a block of low one-bits, and `a` must have those bits clear.
    if host & host.wrapping_add(1) != 0 || a & host != 0 || b & host != host {
        return None;
    }
    let prefix = bits - (128 - host.leading_zeros()) as u8;
    IpNetwork::new(first, prefix).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::ruleset::{addr_key, net_key_range};

    /// GETSETELEM dump messages as kernel 6.18 sent them in the netns test (T = 125):
    /// dom4 with 10.125.0.1 . tcp . 443 (138 packets, 269328 bytes) and 10.125.0.3 . tcp . 443
    /// (unused), dom6 with fd00:125::1 . tcp . 443 (5 packets, 374 bytes), net6 with
    /// fd00:125::/64 . tcp . 8000-8100 (unused).
    const DOM4: &str = concat!(
        "e80000000c0a02000a00000092030000010000020c000100656772657373640009000200646f6d3400000000bc000300",
        "5c00010014000100100001000a7d00010600000001bb00002c0007000c000100636f756e746572001c0002000c000100",
        "0000000000041c100c000200000000000000008a0c00040000000000000493e00c0005000000000000048e045c000100",
        "14000100100001000a7d00030600000001bb00002c0007000c000100636f756e746572001c0002000c00010000000000",
        "000000000c00020000000000000000000c00040000000000000493e00c0005000000000000048e04",
    );
    const DOM6: &str = concat!(
        "980000000c0a02000c00000092030000010000020c000100656772657373640009000200646f6d36000000006c000300",
        "68000100200001001c000100fd0001250000000000000000000000010600000001bb00002c0007000c000100636f756e",
        "746572001c0002000c00010000000000000001760c00020000000000000000050c00040000000000000493e00c000500",
        "0000000000048e04",
    );
    const NET6: &str = concat!(
        "a00000000c0a02000d00000092030000010000020c0001006567726573736400090002006e6574360000000074000300",
        "70000100200001001c000100fd000125000000000000000000000000060000001f40000020000a001c000100fd000125",
        "00000000ffffffffffffffff060000001fa400002c0007000c000100636f756e746572001c0002000c00010000000000",
        "000000000c0002000000000000000000",
    );

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn dump_messages_captured_from_the_kernel() {
        let r = |a: &str, port| CountedElem::Resolved {
            addr: a.parse().unwrap(),
            proto: Proto::Tcp,
            port,
        };
        let got = parse_dump_message(SetName::Dom4, &unhex(DOM4));
        let summary: Vec<(CountedElem, u64, u64)> =
            got.iter().map(|c| (c.elem, c.packets, c.bytes)).collect();
        assert_eq!(
            summary,
            vec![
                (r("10.125.0.1", 443), 138, 269_328),
                (r("10.125.0.3", 443), 0, 0),
            ]
        );
        let got = parse_dump_message(SetName::Dom6, &unhex(DOM6));
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].elem, got[0].packets, got[0].bytes),
            (r("fd00:125::1", 443), 5, 374)
        );
        let got = parse_dump_message(SetName::Net6, &unhex(NET6));
        assert_eq!(
            got.iter().map(|c| c.elem).collect::<Vec<_>>(),
            vec![CountedElem::Static(NetElem {
                net: "fd00:125::/64".parse().unwrap(),
                proto: Proto::Tcp,
                ports: PortRange {
                    first: 8000,
                    last: 8100,
                },
            })]
        );
        // The set name in the message is not checked: the caller asked for the set.
        assert!(
            parse_dump_message(SetName::Dom6, &unhex(DOM4)).is_empty(),
            "v4 keys in a v6 set"
        );
    }

    /// Builds a netlink attribute.
    fn attr(ty: u16, payload: &[u8]) -> Vec<u8> {
        let len = 4 + payload.len();
        let mut v = Vec::new();
        v.extend_from_slice(&(len as u16).to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(payload);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    fn nest(ty: u16, parts: &[Vec<u8>]) -> Vec<u8> {
        attr(ty | 0x8000, &parts.concat())
    }

    fn counter_expr(packets: u64, bytes: u64) -> Vec<u8> {
        [
            attr(NFTA_EXPR_NAME, b"counter\0"),
            nest(
                NFTA_EXPR_DATA,
                &[
                    attr(NFTA_COUNTER_BYTES, &bytes.to_be_bytes()),
                    attr(NFTA_COUNTER_PACKETS, &packets.to_be_bytes()),
                ],
            ),
        ]
        .concat()
    }

    fn message(elems: &[Vec<u8>]) -> Vec<u8> {
        let mut body = vec![2u8, 0, 0, 0]; // nfgenmsg
        body.extend(attr(1, b"egressd\0"));
        body.extend(attr(2, b"dom4\0"));
        body.extend(nest(NFTA_SET_ELEM_LIST_ELEMENTS, elems));
        let mut msg = Vec::new();
        msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&[0u8; 12]);
        msg.extend(body);
        msg
    }

    #[test]
    fn resolved_and_static_elements_with_their_counters() {
        let a: IpAddr = "192.0.2.7".parse().unwrap();
        let dom = nest(
            NFTA_LIST_ELEM,
            &[
                nest(
                    NFTA_SET_ELEM_KEY,
                    &[attr(NFTA_DATA_VALUE, &addr_key(a, Proto::Tcp, 443))],
                ),
                attr(4, &300_000u64.to_be_bytes()), // timeout, ignored
                nest(NFTA_SET_ELEM_EXPR, &[counter_expr(3, 180)]),
            ],
        );
        let got = parse_dump_message(SetName::Dom4, &message(&[dom]));
        assert_eq!(
            got,
            vec![ElementCounter {
                set: SetName::Dom4,
                elem: CountedElem::Resolved {
                    addr: a,
                    proto: Proto::Tcp,
                    port: 443
                },
                packets: 3,
                bytes: 180,
            }]
        );

        let net = NetElem {
            net: "fd00:5::/64".parse().unwrap(),
            proto: Proto::Udp,
            ports: PortRange {
                first: 53,
                last: 60,
            },
        };
        let (k, e) = net_key_range(&net);
        let elem = nest(
            NFTA_LIST_ELEM,
            &[
                nest(NFTA_SET_ELEM_KEY, &[attr(NFTA_DATA_VALUE, &k)]),
                nest(NFTA_SET_ELEM_KEY_END, &[attr(NFTA_DATA_VALUE, &e)]),
                // Several expressions: the counter is found in the list.
                nest(
                    NFTA_SET_ELEM_EXPRESSIONS,
                    &[nest(NFTA_LIST_ELEM, &[counter_expr(9, 900)])],
                ),
            ],
        );
        let got = parse_dump_message(SetName::Net6, &message(&[elem]));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].elem, CountedElem::Static(net));
        assert_eq!((got[0].packets, got[0].bytes), (9, 900));
    }

    #[test]
    fn foreign_or_broken_elements_are_skipped_and_nothing_panics() {
        let a: IpAddr = "192.0.2.7".parse().unwrap();
        let mut key = addr_key(a, Proto::Tcp, 443);
        key[4] = 1; // ICMP: not a key egressd writes
        let foreign = nest(
            NFTA_LIST_ELEM,
            &[
                nest(NFTA_SET_ELEM_KEY, &[attr(NFTA_DATA_VALUE, &key)]),
                nest(NFTA_SET_ELEM_EXPR, &[counter_expr(1, 1)]),
            ],
        );
        let no_counter = nest(
            NFTA_LIST_ELEM,
            &[nest(
                NFTA_SET_ELEM_KEY,
                &[attr(NFTA_DATA_VALUE, &addr_key(a, Proto::Udp, 53))],
            )],
        );
        let msg = message(&[foreign, no_counter]);
        assert!(parse_dump_message(SetName::Dom4, &msg).is_empty());
        // Every truncation of a valid message parses without panicking.
        let good = message(&[nest(
            NFTA_LIST_ELEM,
            &[
                nest(
                    NFTA_SET_ELEM_KEY,
                    &[attr(NFTA_DATA_VALUE, &addr_key(a, Proto::Tcp, 443))],
                ),
                nest(NFTA_SET_ELEM_EXPR, &[counter_expr(1, 60)]),
            ],
        )]);
        assert_eq!(parse_dump_message(SetName::Dom4, &good).len(), 1);
        for n in 0..good.len() {
            let _ = parse_dump_message(SetName::Dom4, &good[..n]);
            let mut flipped = good.clone();
            flipped[n] ^= 0xff;
            let _ = parse_dump_message(SetName::Dom4, &flipped);
        }
    }

    #[test]
    fn ranges_become_cidrs_only_when_they_are_one() {
        let r = |a: &str, b: &str| range_to_net(a.parse().unwrap(), b.parse().unwrap());
        assert_eq!(
            r("10.0.0.0", "10.255.255.255"),
            Some("10.0.0.0/8".parse().unwrap())
        );
        assert_eq!(
            r("10.1.2.3", "10.1.2.3"),
            Some("10.1.2.3/32".parse().unwrap())
        );
        assert_eq!(
            r("0.0.0.0", "255.255.255.255"),
            Some("0.0.0.0/0".parse().unwrap())
        );
        assert_eq!(
            r("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
            Some("::/0".parse().unwrap())
        );
        assert_eq!(
            r("fd00::", "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
            Some("fd00::/8".parse().unwrap())
        );
        assert_eq!(r("10.0.0.1", "10.0.0.2"), None);
        assert_eq!(r("10.0.0.0", "10.0.0.2"), None);
        assert_eq!(r("10.0.0.0", "::1"), None);
    }
}
