//! Per-element counters against the real kernel: every element of the four sets counts the
//! allowed packets and bytes to its destination, and `NsFirewall::element_counters` reads them
//! back. Real traffic in throwaway namespaces (`egobs-*`). Needs root.

mod common;

fn ruleset() -> Ruleset {
    Ruleset::empty(LogSettings::default())
}

use common::{addr_elem as addr, net_elem as net};

use std::io::{Read, Write};
use std::net::IpAddr;
use std::time::Duration;

use common::Pair;
use egressd::firewall::{CountedElem, ElementCounter, LogSettings, NsFirewall, Ruleset, SetName};
use egressd::policy::Proto;

fn resolved(ip: IpAddr, proto: Proto, port: u16) -> CountedElem {
    CountedElem::Resolved {
        addr: ip,
        proto,
        port,
    }
}

/// The counter of one element; fails the test when the element is not in the kernel.
fn counter_of(all: &[ElementCounter], elem: CountedElem) -> (u64, u64) {
    let found: Vec<&ElementCounter> = all.iter().filter(|c| c.elem == elem).collect();
    assert_eq!(found.len(), 1, "{elem:?} in {all:?}");
    (found[0].packets, found[0].bytes)
}

/// Sends `total` bytes on one connection in 16 KiB chunks and reads each echo back. Returns
/// the open connection: closing it would send FINs and ACKs that move the counter later.
fn stream(pair: &Pair, ip: IpAddr, port: u16, total: usize) -> std::net::TcpStream {
    let mut s = pair.connect(ip, port).expect("connect");
    let chunk = vec![7u8; 16 * 1024];
    let mut back = vec![0u8; chunk.len()];
    let mut sent = 0;
    while sent < total {
        s.write_all(&chunk).expect("write");
        s.read_exact(&mut back).expect("read echo");
        sent += chunk.len();
    }
    s
}

#[test]
fn real_traffic_moves_the_counter_of_its_destinations_element_only() {
    let pair = Pair::with_prefix("egobs-");
    pair.tcp_echo(443);
    pair.udp_echo(5353);
    let t = pair.t;
    let fw = NsFirewall::open(&pair.client).unwrap();
    let mut rs = ruleset();
    rs.addrs.push(addr(pair.v4(1), Proto::Tcp, 443, 300));
    rs.addrs.push(addr(pair.v4(3), Proto::Tcp, 443, 300));
    rs.addrs.push(addr(pair.v6(1), Proto::Tcp, 443, 300));
    let udp_net = net(&format!("10.{t}.0.0/24"), Proto::Udp, 5353, 5353);
    let v6_net = net(&format!("fd00:{t}::/64"), Proto::Tcp, 8000, 8100);
    rs.nets.push(udp_net);
    rs.nets.push(v6_net);
    fw.apply(&rs).unwrap();
    fw.verify(&rs).unwrap();

    let before = fw.element_counters().unwrap();
    assert_eq!(before.len(), 5, "{before:?}");
    assert!(
        before.iter().all(|c| c.packets == 0 && c.bytes == 0),
        "{before:?}"
    );
    let sets: Vec<SetName> = before.iter().map(|c| c.set).collect();
    for set in SetName::ALL {
        assert!(sets.contains(&set), "{set:?} in {sets:?}");
    }

    // 256 KiB on one connection: every packet of the flow counts, not only the first (the
    // approved-flow rules look the destination up before accepting).
    let _open = stream(&pair, pair.v4(1), 443, 256 * 1024);
    let after = fw.element_counters().unwrap();
    let (p, b) = counter_of(&after, resolved(pair.v4(1), Proto::Tcp, 443));
    assert!(b >= 256 * 1024, "all bytes counted: {p} packets {b} bytes");
    assert!(p >= 5, "more than the handshake: {p} packets");
    assert_eq!(
        counter_of(&after, resolved(pair.v4(3), Proto::Tcp, 443)),
        (0, 0)
    );
    assert_eq!(
        counter_of(&after, resolved(pair.v6(1), Proto::Tcp, 443)),
        (0, 0)
    );
    assert_eq!(counter_of(&after, CountedElem::Static(udp_net)), (0, 0));

    // One UDP datagram of 4 bytes to a CIDR element: 1 packet, 20 + 8 + 4 bytes.
    pair.udp_roundtrip(pair.v4(3), 5353).unwrap();
    let after = fw.element_counters().unwrap();
    assert_eq!(counter_of(&after, CountedElem::Static(udp_net)), (1, 32));
    assert_eq!(
        counter_of(&after, resolved(pair.v4(3), Proto::Tcp, 443)),
        (0, 0)
    );

    // IPv6 goes to the dom6 element.
    pair.tcp_roundtrip(pair.v6(1), 443).unwrap();
    let after = fw.element_counters().unwrap();
    let (p6, b6) = counter_of(&after, resolved(pair.v6(1), Proto::Tcp, 443));
    assert!(p6 >= 3 && b6 > 0, "{p6} {b6}");
    assert_eq!(counter_of(&after, CountedElem::Static(v6_net)), (0, 0));
    // The named counter `allowed` counts the first packet of each allowed flow.
    assert_eq!(fw.counters().unwrap().allowed_packets, 3);
}

#[test]
fn refreshing_an_element_keeps_its_counter_and_a_new_element_starts_at_zero() {
    let pair = Pair::with_prefix("egobs-");
    pair.tcp_echo(443);
    let a = pair.v4(1);
    let fw = NsFirewall::open(&pair.client).unwrap();
    let mut rs = ruleset();
    rs.addrs.push(addr(a, Proto::Tcp, 443, 300));
    fw.apply(&rs).unwrap();
    let first = stream(&pair, a, 443, 64 * 1024);
    let (p1, b1) = counter_of(
        &fw.element_counters().unwrap(),
        resolved(a, Proto::Tcp, 443),
    );
    assert!(b1 >= 64 * 1024);

    // Re-adding the element (a TTL refresh) is no error and does not reset its counter.
    fw.add_addrs(&[addr(a, Proto::Tcp, 443, 900)])
        .expect("re-add an existing element");
    fw.add_addrs(&[addr(pair.v4(3), Proto::Tcp, 443, 900)])
        .expect("add a new element");
    let all = fw.element_counters().unwrap();
    assert_eq!(counter_of(&all, resolved(a, Proto::Tcp, 443)), (p1, b1));
    assert_eq!(
        counter_of(&all, resolved(pair.v4(3), Proto::Tcp, 443)),
        (0, 0)
    );

    // More traffic adds to the same counter.
    let second = stream(&pair, a, 443, 64 * 1024);
    let (_, b2) = counter_of(
        &fw.element_counters().unwrap(),
        resolved(a, Proto::Tcp, 443),
    );
    assert!(b2 >= b1 + 64 * 1024, "{b1} then {b2}");

    // A removed element is gone from the read-back.
    fw.remove_addrs(&[addr(pair.v4(3), Proto::Tcp, 443, 1)])
        .unwrap();
    let all = fw.element_counters().unwrap();
    assert!(
        !all.iter()
            .any(|c| c.elem == resolved(pair.v4(3), Proto::Tcp, 443)),
        "{all:?}"
    );

    // Replacing the table starts every counter again (documented in docs/rules.md). The
    // closed connections' last ACKs and FINs may still land in the new counter.
    drop((first, second));
    fw.apply(&rs).unwrap();
    let (_, b3) = counter_of(
        &fw.element_counters().unwrap(),
        resolved(a, Proto::Tcp, 443),
    );
    assert!(b3 < 1000, "counter restarted: {b3} after {b2}");
}

#[test]
fn a_flow_whose_element_expired_keeps_working_unattributed() {
    let pair = Pair::with_prefix("egobs-");
    pair.tcp_echo(443);
    let a = pair.v4(1);
    let fw = NsFirewall::open(&pair.client).unwrap();
    let mut rs = ruleset();
    rs.addrs.push(addr(a, Proto::Tcp, 443, 2));
    fw.apply(&rs).unwrap();
    let mut live = pair.connect(a, 443).unwrap();
    common::echo(&mut live).unwrap();
    assert!(common::wait_until(Duration::from_secs(10), || {
        fw.element_counters().unwrap().is_empty()
    }));
    // The approved-flow fallback rule still carries it.
    common::echo(&mut live).expect("flow outlives its element");
}

#[test]
fn fifty_thousand_counted_elements_read_back() {
    let pair = Pair::with_prefix("egobs-");
    let fw = NsFirewall::open(&pair.client).unwrap();
    let mut rs = ruleset();
    for i in 0..50_000u32 {
        let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a80_0000 + i)); // 10.128.0.0/9, unrouted
        rs.addrs.push(addr(ip, Proto::Tcp, 443, 600));
    }
    rs.normalize();
    fw.apply(&rs).unwrap();
    let all = fw.element_counters().expect("dump to the end");
    assert_eq!(all.len(), 50_000);
    assert!(all.iter().all(|c| c.set == SetName::Dom4 && c.packets == 0));
}
