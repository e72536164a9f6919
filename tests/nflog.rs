//! The NFLOG reader against the real kernel: a real `inet egressd` table in a throwaway
//! namespace pair (`egobs-*`), real packets, and the events they produce. Needs root.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::Pair;
use egressd::firewall::{AddrElem, LogSettings, NsFirewall, Ruleset};
use egressd::nflog::{LogKind, NflogError, NflogEvent, NflogReader, NflogSocket};
use egressd::policy::config::AnomalyConfig;
use egressd::policy::limit::parse_limits;
use egressd::policy::{Mode, Proto};

const GROUP: u16 = 4242;

fn ruleset() -> Ruleset {
    Ruleset::empty(LogSettings {
        group: GROUP,
        ..LogSettings::default()
    })
}

fn addr(ip: IpAddr, proto: Proto, port: u16) -> AddrElem {
    common::addr_elem(ip, proto, port, 300)
}

fn reader(pair: &Pair) -> NflogReader {
    let sock = NflogSocket::open(&pair.client, GROUP).expect("open NFLOG in client netns");
    assert_eq!(sock.group(), GROUP);
    NflogReader::new(sock).expect("register with tokio")
}

/// Reads events until none arrives for `quiet` (the kernel flushes every 100 ms).
async fn drain(r: &mut NflogReader, quiet: Duration) -> (Vec<NflogEvent>, usize) {
    let mut events = Vec::new();
    let mut malformed = 0;
    while let Ok(got) = tokio::time::timeout(quiet, r.recv()).await {
        let got = got.expect("receive");
        assert!(!got.overrun, "receive queue overflowed");
        malformed += got.malformed;
        events.extend(got.events);
    }
    (events, malformed)
}

/// Sends `count` UDP datagrams from the client namespace (no answer expected).
fn udp_send(pair: &Pair, to: SocketAddr, count: usize) {
    pair.client
        .run(move || {
            let bind: SocketAddr = if to.is_ipv6() {
                "[::]:0".parse().unwrap()
            } else {
                "0.0.0.0:0".parse().unwrap()
            };
            let s = UdpSocket::bind(bind)?;
            for _ in 0..count {
                // A datagram the output chain rejects fails with EPERM here: ignore it.
                let _ = s.send_to(b"ping", to);
            }
            Ok(())
        })
        .unwrap();
}

#[tokio::test]
async fn denied_tcp_and_udp_are_logged_with_their_destination_and_allowed_traffic_is_not() {
    let pair = Pair::with_prefix("egobs-");
    pair.tcp_echo(443);
    pair.tcp_echo(8443);
    pair.udp_echo(5353);
    pair.udp_echo(5354);
    let fw = NsFirewall::open(&pair.client).unwrap();
    let mut rs = ruleset();
    rs.addrs.push(addr(pair.v4(1), Proto::Tcp, 443));
    rs.addrs.push(addr(pair.v4(1), Proto::Udp, 5353));
    rs.addrs.push(addr(pair.v6(1), Proto::Tcp, 443));
    fw.apply(&rs).unwrap();
    let mut r = reader(&pair);

    // Allowed traffic: no events.
    pair.tcp_roundtrip(pair.v4(1), 443).unwrap();
    pair.udp_roundtrip(pair.v4(1), 5353).unwrap();
    pair.tcp_roundtrip(pair.v6(1), 443).unwrap();
    let (quiet, _) = drain(&mut r, Duration::from_millis(500)).await;
    assert!(quiet.is_empty(), "allowed traffic logged: {quiet:?}");

    // Denied: a TCP connect (v4 and v6) and a UDP datagram.
    assert!(pair.connect(pair.v4(1), 8443).is_err());
    assert!(pair.connect(pair.v6(3), 8443).is_err());
    udp_send(&pair, SocketAddr::new(pair.v4(3), 5354), 1);
    let (events, malformed) = drain(&mut r, Duration::from_millis(700)).await;
    assert_eq!(malformed, 0);
    let mut got: Vec<(LogKind, IpAddr, IpAddr, u8, Option<u16>)> = events
        .iter()
        .map(|e| (e.kind, e.src, e.dst, e.proto, e.dport))
        .collect();
    got.sort_by_key(|g| (g.3, g.2));
    let client4: IpAddr = format!("10.{}.0.2", pair.t).parse().unwrap();
    let client6: IpAddr = format!("fd00:{}::2", pair.t).parse().unwrap();
    assert_eq!(
        got,
        vec![
            (LogKind::Deny, client4, pair.v4(1), 6, Some(8443)),
            (LogKind::Deny, client6, pair.v6(3), 6, Some(8443)),
            (LogKind::Deny, client4, pair.v4(3), 17, Some(5354)),
        ]
    );
    for e in &events {
        assert_eq!(e.prefix, "egressd-deny ");
        assert_eq!(e.group, GROUP);
        assert!(e.sport.is_some() && e.length > 0, "{e:?}");
        assert!(e.outdev.is_some(), "{e:?}");
    }
}

#[tokio::test]
async fn the_rules_rate_limit_suppresses_a_flood() {
    let pair = Pair::with_prefix("egobs-");
    let fw = NsFirewall::open(&pair.client).unwrap();
    fw.apply(&ruleset()).unwrap();
    let mut r = reader(&pair);
    let start = Instant::now();
    udp_send(&pair, SocketAddr::new(pair.v4(1), 9999), 500);
    let elapsed = start.elapsed().as_secs_f64();
    let (events, _) = drain(&mut r, Duration::from_millis(700)).await;
    // limit rate 10/second burst 5 packets: the burst, plus what refilled while sending.
    let max = 5 + (10.0 * elapsed).ceil() as usize + 1;
    assert!(
        (5..=max).contains(&events.len()),
        "{} events for 500 denied packets in {elapsed:.3}s (max {max})",
        events.len()
    );
    assert!(events.iter().all(|e| e.dport == Some(9999)));
    // The kernel counted every packet, logged or not.
    assert_eq!(fw.counters().unwrap().denied_packets, 500);
}

#[tokio::test]
async fn over_budget_and_report_mode_have_their_own_prefixes() {
    let pair = Pair::with_prefix("egobs-");
    pair.tcp_echo(443);
    pair.tcp_echo(8080);
    let fw = NsFirewall::open(&pair.client).unwrap();
    let mut rs = ruleset();
    rs.limits = parse_limits("conn:1/minute").unwrap();
    rs.addrs.push(addr(pair.v4(1), Proto::Tcp, 443));
    fw.apply(&rs).unwrap();
    let mut r = reader(&pair);
    pair.tcp_roundtrip(pair.v4(1), 443).unwrap();
    assert!(pair.connect(pair.v4(1), 443).is_err(), "over the budget");
    let (events, _) = drain(&mut r, Duration::from_millis(700)).await;
    let kinds: Vec<(LogKind, Option<u16>)> = events.iter().map(|e| (e.kind, e.dport)).collect();
    assert_eq!(kinds, vec![(LogKind::Limit, Some(443))]);
    assert_eq!(events[0].prefix, "egressd-limit ");

    // Report mode: what would be denied is logged as such, and passes.
    rs.mode = Mode::Report;
    rs.limits = Default::default();
    fw.apply(&rs).unwrap();
    pair.tcp_roundtrip(pair.v4(1), 8080).unwrap();
    let (events, _) = drain(&mut r, Duration::from_millis(700)).await;
    assert!(!events.is_empty());
    assert!(
        events
            .iter()
            .all(|e| e.kind == LogKind::Report && e.dport == Some(8080)),
        "{events:?}"
    );
}

#[tokio::test]
async fn anomaly_thresholds_warn_once_per_big_flow_and_on_a_connection_burst_and_reject_nothing() {
    let pair = Pair::with_prefix("egobs-");
    pair.tcp_echo(443);
    let fw = NsFirewall::open(&pair.client).unwrap();
    let mut rs = ruleset();
    rs.anomaly = AnomalyConfig {
        new_connections_per_minute: Some(3),
        bytes_per_flow: Some(20_000),
    };
    rs.addrs.push(addr(pair.v4(1), Proto::Tcp, 443));
    fw.apply(&rs).unwrap();
    fw.verify(&rs).unwrap();
    let mut r = reader(&pair);

    // A small flow: no warning.
    pair.tcp_roundtrip(pair.v4(1), 443).unwrap();
    let (events, _) = drain(&mut r, Duration::from_millis(500)).await;
    assert!(events.is_empty(), "small flow logged: {events:?}");

    // One flow sends 100 kB (five times the threshold): one warning for it, and every byte
    // comes back (the rule has no verdict).
    let mut s = pair.connect(pair.v4(1), 443).unwrap();
    let chunk = [7u8; 2000];
    let mut back = [0u8; 2000];
    for _ in 0..50 {
        s.write_all(&chunk).unwrap();
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, chunk);
    }
    drop(s);
    let (events, _) = drain(&mut r, Duration::from_millis(700)).await;
    let kinds: Vec<(LogKind, Option<u16>)> = events.iter().map(|e| (e.kind, e.dport)).collect();
    assert_eq!(kinds, vec![(LogKind::AnomalyFlow, Some(443))], "{events:?}");
    assert_eq!(events[0].prefix, "egressd-anomaly-flow ");
    assert_eq!(events[0].dst, pair.v4(1));

    // Eight new connections in a burst (two were made above; the threshold is 3 a minute):
    // every one works, and the burst is reported.
    for i in 0..8 {
        pair.tcp_roundtrip(pair.v4(1), 443)
            .unwrap_or_else(|e| panic!("connection {i} over the warning threshold failed: {e}"));
    }
    let (events, _) = drain(&mut r, Duration::from_millis(700)).await;
    assert!(!events.is_empty(), "no warning for 10 connections a minute");
    assert!(
        events
            .iter()
            .all(|e| e.kind == LogKind::AnomalyConn && e.dport == Some(443)),
        "{events:?}"
    );
    // The kernel rate-limits the warning itself: one a second.
    assert!(events.len() <= 3, "{} warnings", events.len());
    let c = fw.counters().unwrap();
    assert_eq!(c.denied_packets, 0, "a warning threshold rejected traffic");
    assert_eq!(c.allowed_packets, 10);
}

#[test]
fn the_anomaly_rules_written_by_netlink_list_as_their_text_form_does() {
    let mut rs = ruleset();
    rs.anomaly = AnomalyConfig {
        new_connections_per_minute: Some(120),
        bytes_per_flow: Some(100_000_000),
    };
    let by_engine = Pair::with_prefix("egobs-");
    NsFirewall::open(&by_engine.client)
        .unwrap()
        .apply(&rs)
        .unwrap();
    let by_text = Pair::with_prefix("egobs-");
    by_text.nft_file(&rs.to_string());
    let list = |p: &Pair| p.nft(&["list", "chain", "inet", "egressd", "output"]);
    let (a, b) = (list(&by_engine), list(&by_text));
    assert_eq!(a, b);
    assert!(a.contains("ct original bytes > 100000000"), "{a}");
    assert!(a.contains("log prefix \"egressd-anomaly-conn \""), "{a}");
}

#[test]
fn a_second_reader_on_the_same_group_and_namespace_is_refused_with_a_reason() {
    let pair = Pair::with_prefix("egobs-");
    let first = NflogSocket::open(&pair.client, GROUP).unwrap();
    let err = NflogSocket::open(&pair.client, GROUP).unwrap_err();
    assert!(matches!(err, NflogError::Config { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("NFLOG group 4242"), "{msg}");
    assert!(msg.contains("another socket in this namespace"), "{msg}");
    assert!(msg.contains("egobs-"), "names the namespace: {msg}");
    // Another namespace has its own groups; closing the first frees the group.
    let other = Pair::with_prefix("egobs-");
    NflogSocket::open(&other.client, GROUP).expect("groups are per namespace");
    drop(first);
    NflogSocket::open(&pair.client, GROUP).expect("free again after close");
}
