//! Budgets (`egressd.limit`) enforced by the kernel, checked with real traffic in throwaway
//! namespaces (`egobs-*`): new connections beyond the connection budget are rejected, bytes
//! beyond the byte budget are cut, even towards allowed hosts. Needs root.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use common::{Pair, echo};
use egressd::firewall::{AddrElem, LogSettings, NetElem, NsFirewall, Ruleset};
use egressd::policy::limit::parse_limits;
use egressd::policy::{Mode, PortRange, Proto};

fn ruleset(limits: &str) -> Ruleset {
    Ruleset {
        limits: parse_limits(limits).expect("valid limits"),
        ..Ruleset::empty(LogSettings::default())
    }
}

fn addr(ip: IpAddr, proto: Proto, port: u16) -> AddrElem {
    common::addr_elem(ip, proto, port, 300)
}

fn refused(r: std::io::Result<impl Sized>) -> bool {
    matches!(
        r.map(|_| ()).map_err(|e| e.kind()),
        Err(ErrorKind::ConnectionRefused)
    )
}

/// A UDP "query" from a fresh socket (a new flow each time) to `ip:53`, echoed by the server.
fn udp_query(pair: &Pair, ip: IpAddr) -> std::io::Result<()> {
    pair.udp_roundtrip(ip, 53)
}

#[test]
fn connections_beyond_the_budget_are_rejected_and_dns_does_not_count() {
    let pair = Pair::with_prefix("egobs-");
    pair.tcp_echo(443);
    pair.udp_echo(53);
    let t = pair.t;
    let fw = NsFirewall::open(&pair.client).unwrap();
    let mut rs = ruleset("conn:5/minute");
    rs.addrs.push(addr(pair.v4(1), Proto::Tcp, 443));
    rs.nets.push(NetElem {
        net: format!("10.{t}.0.0/24").parse().unwrap(),
        proto: Proto::Udp,
        ports: PortRange::single(53),
    });
    fw.apply(&rs).unwrap();
    fw.verify(&rs).unwrap();

    // DNS: each query is a new flow, and none of them uses up the budget.
    for _ in 0..12 {
        udp_query(&pair, pair.v4(1)).expect("DNS is not counted against conn");
    }
    // Five new connections fit (burst = budget), the sixth is rejected at once.
    let mut open = Vec::new();
    for i in 0..5 {
        let mut s = pair
            .connect(pair.v4(1), 443)
            .unwrap_or_else(|e| panic!("connection {} within the budget: {e}", i + 1));
        echo(&mut s).unwrap();
        open.push(s);
    }
    assert!(
        refused(pair.connect(pair.v4(1), 443)),
        "the sixth connection is over the budget"
    );
    // Connections opened within the budget are not new any more: they keep working.
    for s in &mut open {
        echo(s).expect("established connection unaffected");
    }
    let c = fw.counters().unwrap();
    assert!(c.limited_packets >= 1, "{c:?}");
    assert_eq!(
        c.denied_packets, 0,
        "rejected by the budget, not the policy: {c:?}"
    );
}

/// Sends 16 KiB chunks and reads each echo back until the connection fails; returns how many
/// bytes made the round trip.
fn stream_until_cut(s: &mut TcpStream, limit: usize) -> usize {
    let chunk = vec![1u8; 16 * 1024];
    let mut back = vec![0u8; chunk.len()];
    let mut done = 0;
    while done < limit {
        if s.write_all(&chunk).is_err() || s.read_exact(&mut back).is_err() {
            break;
        }
        done += chunk.len();
    }
    done
}

#[test]
fn bytes_beyond_the_budget_are_cut_but_loopback_is_free() {
    let pair = Pair::with_prefix("egobs-");
    pair.tcp_echo(443);
    let fw = NsFirewall::open(&pair.client).unwrap();
    let mut rs = ruleset("bytes:1MB/hour");
    rs.addrs.push(addr(pair.v4(1), Proto::Tcp, 443));
    fw.apply(&rs).unwrap();
    fw.verify(&rs).unwrap();

    // One allowed connection streams until the kernel cuts it: about 1 MB leaves (payload
    // plus headers and ACKs), then the next packet is rejected with a TCP reset.
    let mut s = pair.connect(pair.v4(1), 443).unwrap();
    let moved = stream_until_cut(&mut s, 4_000_000);
    assert!(
        (800_000..=1_000_000).contains(&moved),
        "cut after about 1 MB, moved {moved}"
    );
    let err = s
        .write_all(&[0u8; 1024])
        .and_then(|_| s.read(&mut [0u8; 1]).map(|_| ()));
    assert!(err.is_err(), "the cut connection stays dead");

    // The budget refills at 1 MB/hour (277 bytes/second): a new connection may get through
    // the handshake, but not 64 KiB.
    match pair.connect(pair.v4(1), 443) {
        Ok(mut s2) => assert!(
            stream_until_cut(&mut s2, 64 * 1024) < 64 * 1024,
            "the budget is spent"
        ),
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}"),
    }
    let c = fw.counters().unwrap();
    assert!(c.limited_packets >= 1, "{c:?}");

    // Loopback does not count: 4 MB to a listener inside the namespace still works.
    let l = pair
        .client
        .run(|| TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = l.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut n = 0;
        while n < 4_000_000 {
            match c.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
        n
    });
    let mut lo = pair.connect("127.0.0.1".parse().unwrap(), port).unwrap();
    let data = vec![2u8; 4_000_000];
    lo.write_all(&data).expect("loopback is not budgeted");
    drop(lo);
    assert_eq!(server.join().unwrap(), 4_000_000);
}

#[test]
fn udp_beyond_the_byte_budget_is_rejected() {
    let pair = Pair::with_prefix("egobs-");
    pair.udp_echo(5353);
    let fw = NsFirewall::open(&pair.client).unwrap();
    let mut rs = ruleset("bytes:256kB/day");
    rs.addrs.push(addr(pair.v4(1), Proto::Udp, 5353));
    fw.apply(&rs).unwrap();
    let target = SocketAddr::new(pair.v4(1), 5353);
    let (ok, errors) = pair
        .client
        .run(move || {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.connect(target)?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            let payload = [3u8; 1000];
            let mut buf = [0u8; 1500];
            let (mut ok, mut errors) = (0usize, 0usize);
            for _ in 0..400 {
                match s.send(&payload).and_then(|_| s.recv(&mut buf)) {
                    Ok(_) => ok += 1,
                    Err(_) => errors += 1,
                }
            }
            Ok((ok, errors))
        })
        .unwrap();
    // 256 kB at 1028 bytes per datagram: about 249 pass, then ICMP admin-prohibited errors.
    assert!(
        (230..=250).contains(&ok),
        "{ok} datagrams passed, {errors} refused"
    );
    assert!(errors >= 100, "{errors}");
    let c = fw.counters().unwrap();
    assert!(
        c.limited_packets >= 50,
        "{c:?} after {ok} ok, {errors} refused"
    );
}

#[test]
fn report_mode_counts_over_budget_traffic_but_rejects_nothing() {
    let pair = Pair::with_prefix("egobs-");
    pair.tcp_echo(443);
    let fw = NsFirewall::open(&pair.client).unwrap();
    let mut rs = ruleset("conn:2/minute");
    rs.mode = Mode::Report;
    rs.addrs.push(addr(pair.v4(1), Proto::Tcp, 443));
    fw.apply(&rs).unwrap();
    fw.verify(&rs).unwrap();
    for _ in 0..5 {
        pair.tcp_roundtrip(pair.v4(1), 443)
            .expect("report mode rejects nothing");
    }
    let c = fw.counters().unwrap();
    assert!(c.limited_packets >= 3, "{c:?}");
}

#[test]
fn a_quarantine_has_no_budget_chain() {
    let pair = Pair::with_prefix("egobs-");
    let fw = NsFirewall::open(&pair.client).unwrap();
    let mut q = ruleset("conn:5/minute,bytes:1MB/hour");
    q.quarantined = true;
    assert!(q.budget_chain().is_empty());
    fw.apply(&q).unwrap();
    fw.verify(&q).unwrap();
    assert!(
        !pair
            .nft(&["list", "table", "inet", "egressd"])
            .contains("budget")
    );
}

#[test]
fn the_text_form_of_a_budgeted_table_loads_into_nft_and_reads_back_the_same() {
    let pair = Pair::with_prefix("egobs-");
    let mut rs = ruleset("conn:60/minute,bytes:50MB/hour");
    rs.addrs.push(addr(pair.v4(1), Proto::Tcp, 443));
    pair.nft_file(&rs.to_string());
    let fw = NsFirewall::open(&pair.client).unwrap();
    fw.verify(&rs)
        .expect("text and netlink give the same table");
    let listed = pair.nft(&["list", "chain", "inet", "egressd", "output"]);
    assert!(
        listed.contains("limit rate over 13888 bytes/second burst 49986112 bytes jump budget"),
        "{listed}"
    );
    assert!(
        listed.contains(
            "ct state new th dport != 53 limit rate over 60/minute burst 60 packets jump budget"
        ),
        "{listed}"
    );
}
