//! The firewall engine against the real kernel: real nftables tables in throwaway network
//! namespaces, checked with real TCP and UDP traffic. Needs root.

mod common;

fn ruleset() -> Ruleset {
    Ruleset::empty(LogSettings::default())
}

use common::{addr_elem as addr, net_elem as net};

use std::io::ErrorKind;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{Pair, echo, wait_until};
use egressd::firewall::{LogSettings, NsFirewall, Ruleset, SetName};
use egressd::policy::{Mode, Proto};

fn refused(r: std::io::Result<impl Sized>) -> bool {
    matches!(
        r.map(|_| ()).map_err(|e| e.kind()),
        Err(ErrorKind::ConnectionRefused)
    )
}

fn open(pair: &Pair) -> NsFirewall {
    NsFirewall::open(&pair.client).expect("open firewall in client netns")
}

#[test]
fn allowed_address_and_port_connect_everything_else_is_rejected_fast() {
    let pair = Pair::new();
    pair.tcp_echo(443);
    pair.tcp_echo(8443);
    let (a1, a3) = (pair.v4(1), pair.v4(3));
    // Without a table everything is reachable: the topology works.
    pair.tcp_roundtrip(a1, 8443).expect("baseline before table");

    let fw = open(&pair);
    let mut rs = ruleset();
    rs.addrs.push(addr(a1, Proto::Tcp, 443, 300));
    fw.apply(&rs).expect("apply");
    fw.verify(&rs).expect("verify");

    pair.tcp_roundtrip(a1, 443).expect("allowed addr+port");
    // Rejected with a TCP reset (ConnectionRefused), not a 3 s connect timeout.
    assert!(refused(pair.connect(a1, 8443)), "same address, other port");
    assert!(
        refused(pair.connect(a3, 443)),
        "other address, allowed port"
    );
    let c = fw.counters().unwrap();
    assert!(c.denied_packets >= 2, "denied counter moved: {c:?}");
    assert!(c.allowed_packets >= 1, "allowed counter moved: {c:?}");
}

#[test]
fn ipv6_behaves_the_same_and_a_family_without_addresses_is_closed() {
    let pair = Pair::new();
    pair.tcp_echo(443);
    pair.tcp_echo(8443);
    let (b1, b3) = (pair.v6(1), pair.v6(3));
    pair.tcp_roundtrip(b1, 443).expect("baseline v6");

    let fw = open(&pair);
    let mut rs = ruleset();
    rs.addrs.push(addr(b1, Proto::Tcp, 443, 300));
    fw.apply(&rs).unwrap();
    // Neighbour discovery still works after the table: the allowed v6 flow connects.
    pair.tcp_roundtrip(b1, 443).expect("allowed v6");
    assert!(refused(pair.connect(b1, 8443)));
    assert!(refused(pair.connect(b3, 443)));
    // The policy has no IPv4 address: IPv4 is closed.
    assert!(refused(pair.connect(pair.v4(1), 443)));
}

#[test]
fn cidr_rules_with_port_ranges_work_for_both_families() {
    let pair = Pair::new();
    for p in [8000, 8100, 8101] {
        pair.tcp_echo(p);
    }
    let t = pair.t;
    let fw = open(&pair);
    let mut rs = ruleset();
    rs.nets
        .push(net(&format!("10.{t}.0.0/24"), Proto::Tcp, 8000, 8100));
    rs.nets
        .push(net(&format!("fd00:{t}::/64"), Proto::Tcp, 8000, 8000));
    // Overlapping rules (from several profiles or labels) must not make the kernel refuse the set.
    rs.nets
        .push(net(&format!("10.{t}.0.1/32"), Proto::Tcp, 8050, 8200));
    rs.nets
        .push(net(&format!("10.{t}.0.0/24"), Proto::Tcp, 8000, 8100));
    rs.nets
        .push(net(&format!("fd00:{t}::3/128"), Proto::Tcp, 8000, 8000));
    fw.apply(&rs).unwrap();
    fw.verify(&rs).unwrap();
    pair.tcp_roundtrip(pair.v4(1), 8000).unwrap();
    pair.tcp_roundtrip(pair.v4(3), 8100).unwrap();
    assert!(refused(pair.connect(pair.v4(3), 8101)));
    pair.tcp_roundtrip(pair.v4(1), 8101)
        .expect("the /32 rule widens the ports of one address");
    pair.tcp_roundtrip(pair.v6(3), 8000).unwrap();
    assert!(refused(pair.connect(pair.v6(1), 8100)));
}

#[test]
fn udp_rules_allow_only_their_port_and_reject_the_rest() {
    let pair = Pair::new();
    pair.udp_echo(5353);
    pair.udp_echo(5354);
    pair.tcp_echo(5353);
    let fw = open(&pair);
    let mut rs = ruleset();
    rs.addrs.push(addr(pair.v4(1), Proto::Udp, 5353, 300));
    rs.addrs.push(addr(pair.v6(1), Proto::Udp, 5353, 300));
    fw.apply(&rs).unwrap();
    pair.udp_roundtrip(pair.v4(1), 5353)
        .expect("allowed udp v4");
    pair.udp_roundtrip(pair.v6(1), 5353)
        .expect("allowed udp v6");
    // icmpx admin-prohibited reaches the socket as an error, not as silence.
    let e = pair.udp_roundtrip(pair.v4(1), 5354).unwrap_err();
    assert_ne!(
        e.kind(),
        ErrorKind::WouldBlock,
        "rejected, not timed out: {e}"
    );
    assert_ne!(
        e.kind(),
        ErrorKind::TimedOut,
        "rejected, not timed out: {e}"
    );
    // A UDP rule does not open TCP on the same port.
    assert!(refused(pair.connect(pair.v4(1), 5353)));
}

#[test]
fn expired_element_stops_new_connections_but_live_ones_continue() {
    let pair = Pair::new();
    pair.tcp_echo(443);
    let a = pair.v4(1);
    let fw = open(&pair);
    let mut rs = ruleset();
    rs.addrs.push(addr(a, Proto::Tcp, 443, 2));
    fw.apply(&rs).unwrap();
    let mut live = pair.connect(a, 443).expect("connect before expiry");
    echo(&mut live).unwrap();
    assert_eq!(fw.count_elems(SetName::Dom4).unwrap(), 1);
    // The kernel removes the element on its own after 2 s.
    assert!(
        wait_until(Duration::from_secs(10), || refused(pair.connect(a, 443))),
        "new connections must be rejected after the timeout"
    );
    assert_eq!(fw.count_elems(SetName::Dom4).unwrap(), 0);
    echo(&mut live).expect("connection opened before expiry keeps working");
}

#[test]
fn connection_opened_before_the_table_is_cut() {
    let pair = Pair::new();
    pair.tcp_echo(9000);
    pair.tcp_echo(443);
    let mut old = pair.connect(pair.v4(1), 9000).unwrap();
    echo(&mut old).unwrap();
    let fw = open(&pair);
    let mut rs = ruleset();
    rs.addrs.push(addr(pair.v4(1), Proto::Tcp, 443, 300));
    fw.apply(&rs).unwrap();
    assert!(
        echo(&mut old).is_err(),
        "pre-existing flow must not be grandfathered in"
    );
    pair.tcp_roundtrip(pair.v4(1), 443).unwrap();
}

#[test]
fn replacing_the_table_under_a_probe_loop_never_lets_a_forbidden_connection_through() {
    let pair = Arc::new(Pair::new());
    pair.tcp_echo(443);
    pair.tcp_echo(9999);
    let fw = open(&pair);
    let mut rs = ruleset();
    rs.addrs.push(addr(pair.v4(1), Proto::Tcp, 443, 300));
    fw.apply(&rs).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, tries) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    // The probe thread lives in the client netns and connects to a forbidden port in a loop.
    let probe = {
        let (stop, ok, tries) = (stop.clone(), ok.clone(), tries.clone());
        let target = std::net::SocketAddr::new(pair.v4(1), 9999);
        pair.client
            .run(move || {
                Ok(std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        tries.fetch_add(1, Ordering::Relaxed);
                        if std::net::TcpStream::connect_timeout(&target, Duration::from_millis(500))
                            .is_ok()
                        {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }))
            })
            .unwrap()
    };
    for i in 0..200u16 {
        let mut next = ruleset();
        next.addrs.push(addr(pair.v4(1), Proto::Tcp, 443, 300));
        next.addrs.push(addr(pair.v4(3), Proto::Tcp, 1000 + i, 300));
        next.nets.push(net("192.0.2.0/24", Proto::Tcp, 1, 65535));
        fw.apply(&next).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    // A thread spawned from the netns thread inherits its namespace; join it.
    probe.join().unwrap();
    assert!(tries.load(Ordering::Relaxed) > 10, "the probe ran");
    assert_eq!(
        ok.load(Ordering::Relaxed),
        0,
        "forbidden connections that got through"
    );
    pair.tcp_roundtrip(pair.v4(1), 443).unwrap();
}

#[test]
fn an_unrelated_nat_table_keeps_working_across_apply_and_delete() {
    let pair = Pair::new();
    pair.tcp_echo(8080);
    let t = pair.t;
    // Stands in for Docker's DNS NAT: rewrites 10.T.0.99:80 to the server's 8080, before filter.
    pair.nft_file(&format!(
        "table ip fakedocker {{\n chain output {{\n  type nat hook output priority -100; policy accept;\n  ip daddr 10.{t}.0.99 tcp dport 80 dnat to 10.{t}.0.1:8080\n }}\n}}\n"
    ));
    let vip: IpAddr = format!("10.{t}.0.99").parse().unwrap();
    pair.tcp_roundtrip(vip, 80)
        .expect("nat works without egressd");
    let fw = open(&pair);
    let mut rs = ruleset();
    rs.addrs.push(addr(pair.v4(1), Proto::Tcp, 8080, 300));
    fw.apply(&rs).unwrap();
    fw.apply(&rs).unwrap();
    pair.tcp_roundtrip(vip, 80)
        .expect("nat + egressd: the translated flow is allowed");
    assert!(
        pair.nft(&["list", "table", "ip", "fakedocker"])
            .contains("dnat to")
    );
    fw.delete_table().unwrap();
    fw.delete_table()
        .expect("deleting a missing table is not an error");
    assert!(!fw.table_exists().unwrap());
    assert!(pair.nft(&["list", "tables"]).contains("fakedocker"));
    pair.tcp_roundtrip(vip, 80).unwrap();
}

#[test]
fn fifty_thousand_elements_apply_in_one_batch() {
    let pair = Pair::new();
    pair.tcp_echo(443);
    let fw = open(&pair);
    let mut rs = ruleset();
    for i in 0..50_000u32 {
        let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a80_0000 + i)); // 10.128.0.0/9, unrouted
        rs.addrs.push(addr(ip, Proto::Tcp, 443, 600));
    }
    rs.addrs.push(addr(pair.v4(1), Proto::Tcp, 443, 600));
    for i in 0..200u32 {
        rs.nets.push(net(
            &format!("172.{}.{}.0/24", 16 + i / 256, i % 256),
            Proto::Tcp,
            443,
            443,
        ));
    }
    rs.normalize();
    fw.apply(&rs).expect("50k-element batch");
    assert_eq!(fw.count_elems(SetName::Dom4).unwrap(), 50_001);
    fw.verify(&rs).unwrap();
    pair.tcp_roundtrip(pair.v4(1), 443).unwrap();
    // And again: replacing a large table is one transaction too.
    fw.apply(&rs).expect("replace 50k-element table");
    assert_eq!(fw.count_elems(SetName::Dom4).unwrap(), 50_001);
}

#[test]
fn add_refreshes_and_remove_deletes_elements_present_or_not() {
    let pair = Pair::new();
    pair.tcp_echo(443);
    let a = pair.v4(1);
    let fw = open(&pair);
    fw.apply(&ruleset()).unwrap();
    assert!(refused(pair.connect(a, 443)));
    let e = addr(a, Proto::Tcp, 443, 3);
    fw.add_addrs(&[e]).unwrap();
    pair.tcp_roundtrip(a, 443).unwrap();
    // Adding again with a longer timeout is not an error (no EEXIST) and extends the element,
    // by the strategy this kernel needs; the re-add strategy (for kernels before 6.10) is
    // checked on a second element, whatever this kernel is.
    let b = pair.v4(3);
    fw.add_addrs_with(&[addr(b, Proto::Tcp, 443, 3)], true)
        .unwrap();
    fw.add_addrs(&[addr(a, Proto::Tcp, 443, 600)]).unwrap();
    fw.add_addrs_with(&[addr(b, Proto::Tcp, 443, 600)], true)
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    pair.tcp_roundtrip(a, 443).expect("timeout was refreshed");
    pair.tcp_roundtrip(b, 443)
        .expect("timeout was refreshed by re-adding");
    fw.remove_addrs(&[
        e,
        addr(b, Proto::Tcp, 443, 1),
        addr(pair.v4(2), Proto::Tcp, 443, 1),
    ])
    .expect("remove, one absent");
    assert!(refused(pair.connect(a, 443)));
    fw.remove_addrs(&[e])
        .expect("removing again is not an error");
}

#[test]
fn quarantine_denies_everything_but_loopback() {
    let pair = Pair::new();
    pair.tcp_echo(443);
    let fw = open(&pair);
    let mut rs = ruleset();
    rs.addrs.push(addr(pair.v4(1), Proto::Tcp, 443, 300));
    fw.apply(&rs).unwrap();
    let mut live = pair.connect(pair.v4(1), 443).unwrap();
    echo(&mut live).unwrap();
    let q = Ruleset::quarantine(LogSettings::default());
    fw.apply(&q).unwrap();
    fw.verify(&q).unwrap();
    assert!(refused(pair.connect(pair.v4(1), 443)));
    assert!(
        echo(&mut live).is_err(),
        "quarantine cuts approved flows too"
    );
    // Loopback still works inside the namespace.
    let l = pair
        .client
        .run(|| std::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = l.local_addr().unwrap().port();
    pair.connect("127.0.0.1".parse().unwrap(), port)
        .expect("loopback");
}

#[test]
fn report_mode_denies_nothing_but_counts_what_it_would_deny() {
    let pair = Pair::new();
    pair.tcp_echo(443);
    pair.tcp_echo(9000);
    let fw = open(&pair);
    let mut rs = ruleset();
    rs.mode = Mode::Report;
    rs.addrs.push(addr(pair.v4(1), Proto::Tcp, 443, 300));
    fw.apply(&rs).unwrap();
    pair.tcp_roundtrip(pair.v4(1), 9000)
        .expect("report mode lets it through");
    assert!(fw.counters().unwrap().denied_packets >= 1);
}

#[test]
fn verify_reports_a_table_changed_behind_our_back() {
    let pair = Pair::new();
    let fw = open(&pair);
    let mut rs = ruleset();
    rs.nets.push(net("10.9.0.0/16", Proto::Tcp, 443, 443));
    fw.apply(&rs).unwrap();
    fw.verify(&rs).unwrap();
    pair.nft(&["flush", "chain", "inet", "egressd", "output"]);
    let err = fw.verify(&rs).unwrap_err().to_string();
    assert!(err.contains("rules in chain output"), "{err}");
    assert!(
        err.contains("netns /var/run/netns/"),
        "error names the namespace: {err}"
    );
}

#[test]
fn errors_name_the_namespace() {
    let err = NsFirewall::open(&egressd::firewall::Netns::named(
        "egressd-test-does-not-exist",
    ))
    .err()
    .expect("missing netns");
    let msg = err.to_string();
    assert!(msg.contains("egressd-test-does-not-exist"), "{msg}");
}

#[test]
fn nft_json_shows_the_documented_structure() {
    let pair = Pair::new();
    let fw = open(&pair);
    let mut rs = ruleset();
    rs.addrs.push(addr(pair.v4(1), Proto::Tcp, 443, 300));
    rs.nets.push(net("10.9.0.0/16", Proto::Udp, 53, 53));
    fw.apply(&rs).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&pair.nft(&["-j", "list", "ruleset"])).expect("nft -j output");
    let items = json["nftables"].as_array().unwrap();
    let find = |kind: &str| -> Vec<&serde_json::Value> {
        items
            .iter()
            .filter_map(|i| i.get(kind))
            .filter(|o| o["table"] == "egressd" || o["name"] == "egressd")
            .collect()
    };
    let tables = find("table");
    assert_eq!(tables.len(), 1);
    assert_eq!(tables[0]["family"], "inet");
    let chains = find("chain");
    assert_eq!(chains.len(), 1);
    assert_eq!(chains[0]["name"], "output");
    assert_eq!(chains[0]["hook"], "output");
    assert_eq!(chains[0]["policy"], "drop");
    assert_eq!(chains[0]["type"], "filter");
    let sets = find("set");
    let names: Vec<&str> = sets.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 4, "{names:?}");
    for s in &sets {
        let ty: Vec<&str> = s["type"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        let addr_ty = if s["name"].as_str().unwrap().ends_with('6') {
            "ipv6_addr"
        } else {
            "ipv4_addr"
        };
        assert_eq!(ty, [addr_ty, "inet_proto", "inet_service"], "{s}");
        let flags: Vec<&str> = s["flags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        if s["name"].as_str().unwrap().starts_with("dom") {
            assert!(flags.contains(&"timeout"), "{s}");
        } else {
            assert!(flags.contains(&"interval"), "{s}");
        }
    }
    let dom4 = sets.iter().find(|s| s["name"] == "dom4").unwrap();
    assert_eq!(dom4["elem"].as_array().map(|a| a.len()), Some(1), "{dom4}");
    let rules = find("rule");
    assert_eq!(rules.len(), rs.chain().len());
    let counters = find("counter");
    assert_eq!(counters.len(), 2);
}

#[test]
fn display_output_is_accepted_by_nft_and_enforces_the_same() {
    let pair = Pair::new();
    pair.tcp_echo(443);
    pair.tcp_echo(8443);
    let mut rs = ruleset();
    rs.addrs.push(addr(pair.v4(1), Proto::Tcp, 443, 300));
    rs.nets.push(net("10.9.0.0/16", Proto::Udp, 53, 60));
    rs.nets.push(net("fd00:99::/64", Proto::Tcp, 443, 443));
    pair.nft_file(&rs.to_string());
    pair.tcp_roundtrip(pair.v4(1), 443).unwrap();
    assert!(refused(pair.connect(pair.v4(1), 8443)));
    // Loaded by text, read back by the engine: the same structure.
    let fw = open(&pair);
    fw.verify(&rs)
        .expect("text and netlink give the same table");
}

/// Proxy mode's NAT chain: UDP and TCP port 53 to *any* address (IPv4 and IPv6) lands on the
/// proxy's loopback listeners in the client namespace, and never on the server's port 53; the
/// proxy's own socket (SO_MARK) is not redirected and reaches the real server.
#[test]
fn dns_redirect_catches_udp_and_tcp_53_to_any_address_and_spares_the_proxy() {
    use egressd::firewall::{DnsRedirect, PROXY_SOCKET_MARK, ProxyPorts};
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, UdpSocket};
    use std::os::fd::AsRawFd;

    let pair = Pair::new();
    // A default route into the server namespace (which forwards nothing), so that a query to
    // an address outside both namespaces has a route and still goes nowhere.
    common::sh(&[
        "ip",
        "-n",
        &pair.client_name,
        "route",
        "add",
        "default",
        "via",
        &pair.v4(1).to_string(),
    ]);
    // The "real" DNS servers: echo servers on port 53 of the server namespace.
    pair.udp_echo(53);
    pair.tcp_echo(53);
    // The "proxy": loopback listeners inside the client namespace that answer "proxy".
    let (u4, t4, u6, t6) = pair
        .client
        .run(|| {
            Ok((
                UdpSocket::bind("127.0.0.1:0")?,
                TcpListener::bind("127.0.0.1:0")?,
                UdpSocket::bind("[::1]:0")?,
                TcpListener::bind("[::1]:0")?,
            ))
        })
        .expect("bind proxy listeners");
    let ports = |u: &UdpSocket, t: &TcpListener| ProxyPorts {
        udp: u.local_addr().unwrap().port(),
        tcp: t.local_addr().unwrap().port(),
    };
    let redirect = DnsRedirect {
        v4: Some(ports(&u4, &t4)),
        v6: Some(ports(&u6, &t6)),
    };
    for u in [u4, u6] {
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((_, from)) = u.recv_from(&mut buf) {
                let _ = u.send_to(b"proxy", from);
            }
        });
    }
    for t in [t4, t6] {
        std::thread::spawn(move || {
            for c in t.incoming() {
                let Ok(mut c) = c else { continue };
                let _ = c.write_all(b"proxy");
            }
        });
    }
    let fw = open(&pair);
    let mut rs = ruleset();
    // The server's port 53 is allowed, so only the redirect keeps queries away from it.
    rs.nets
        .push(net(&format!("10.{}.0.0/24", pair.t), Proto::Udp, 53, 53));
    rs.nets
        .push(net(&format!("10.{}.0.0/24", pair.t), Proto::Tcp, 53, 53));
    rs.dns_redirect = Some(redirect);
    fw.apply(&rs).expect("apply with DNS redirect");
    fw.verify(&rs).expect("verify");

    let udp_ask = |to: IpAddr, mark: bool| -> String {
        pair.client
            .run(move || {
                let s = UdpSocket::bind(if to.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" })?;
                if mark {
                    let m = PROXY_SOCKET_MARK;
                    // SAFETY: plain setsockopt with a u32 value.
                    let rc = unsafe {
                        libc::setsockopt(
                            s.as_raw_fd(),
                            libc::SOL_SOCKET,
                            libc::SO_MARK,
                            (&m as *const u32).cast(),
                            4,
                        )
                    };
                    assert_eq!(rc, 0, "SO_MARK");
                }
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                s.send_to(b"ping", SocketAddr::new(to, 53))?;
                let mut buf = [0u8; 16];
                let n = s.recv(&mut buf)?;
                Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
            })
            .unwrap_or_else(|e| format!("error: {e}"))
    };
    let tcp_ask = |to: IpAddr| -> String {
        pair.client
            .run(move || {
                let mut s = std::net::TcpStream::connect_timeout(
                    &SocketAddr::new(to, 53),
                    Duration::from_secs(2),
                )?;
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                let mut buf = [0u8; 16];
                let n = s.read(&mut buf)?;
                Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
            })
            .unwrap_or_else(|e| format!("error: {e}"))
    };
    for to in [
        pair.v4(1),
        pair.v4(3),
        pair.v6(1),
        "10.255.255.1".parse().unwrap(),
    ] {
        assert_eq!(udp_ask(to, false), "proxy", "udp to {to}:53");
    }
    for to in [pair.v4(1), pair.v6(3)] {
        assert_eq!(tcp_ask(to), "proxy", "tcp to {to}:53");
    }
    // The proxy's own (marked) socket goes to the real server.
    assert_eq!(
        udp_ask(pair.v4(1), true),
        "ping",
        "marked socket is not redirected"
    );

    // Without IPv6 listeners, IPv6 DNS is closed (rejected by the output chain), not open.
    let mut rs4 = rs.clone();
    rs4.dns_redirect = Some(DnsRedirect {
        v4: redirect.v4,
        v6: None,
    });
    fw.apply(&rs4).expect("apply v4-only redirect");
    fw.verify(&rs4).expect("verify");
    assert_eq!(udp_ask(pair.v4(1), false), "proxy");
    assert!(
        udp_ask(pair.v6(1), false).starts_with("error"),
        "v6 DNS closed"
    );
}
