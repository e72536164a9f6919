//! The upstream DNS client of `resolve` mode against the `fake_dns` example server, on loopback
//! only: no test here ever sends a packet to a real resolver.
//!
//! `fake_dns` is an example, and cargo gives tests no `CARGO_BIN_EXE_` path for examples. Plain
//! `cargo test` builds examples before running tests, into `target/<profile>/examples/`, and
//! this test binary lives in `target/<profile>/deps/`; so the server is found from
//! `std::env::current_exe()`. With `cargo test --test resolver` cargo does not build examples:
//! run `cargo build --example fake_dns` first.

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdpSocket};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::fake_dns::FakeDns;

use egressd::resolver::{Answer, Cache, ResolveError, Resolver, ResolverConfig, TtlSettings};
use tokio::net::UdpSocket;
use tokio::time::Instant;

fn ips(list: &[&str]) -> BTreeSet<IpAddr> {
    list.iter().map(|s| s.parse().expect("ip")).collect()
}

fn set(answer: &Answer) -> BTreeSet<IpAddr> {
    answer.addrs.iter().copied().collect()
}

fn fast(upstreams: Vec<SocketAddr>) -> Resolver {
    Resolver::with_config(ResolverConfig {
        attempt_timeout: Duration::from_millis(300),
        ..ResolverConfig::new(upstreams)
    })
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[tokio::test]
async fn a_and_aaaa_union_with_minimum_ttl() {
    let dns = FakeDns::start(
        "dual.test A 10.0.0.1 300\n\
         dual.test A 10.0.0.2 100\n\
         dual.test AAAA fd00::1 200\n",
    );
    let answer = Resolver::new(vec![dns.addr])
        .resolve("Dual.Test.")
        .await
        .unwrap();
    assert_eq!(set(&answer), ips(&["10.0.0.1", "10.0.0.2", "fd00::1"]));
    assert_eq!(answer.ttl, secs(100));
}

#[tokio::test]
async fn default_ttl_is_30() {
    let dns = FakeDns::start("plain.test A 10.0.0.1\n");
    let answer = Resolver::new(vec![dns.addr])
        .resolve("plain.test")
        .await
        .unwrap();
    assert_eq!(set(&answer), ips(&["10.0.0.1"]));
    assert_eq!(answer.ttl, secs(30));
}

#[tokio::test]
async fn cname_chain_is_followed_and_its_ttls_count() {
    let dns = FakeDns::start(
        "www.test CNAME edge.test 50\n\
         edge.test CNAME host.test 400\n\
         host.test A 10.0.0.3 300\n\
         host.test AAAA fd00::3 300\n\
         other.test A 10.9.9.9\n",
    );
    let answer = Resolver::new(vec![dns.addr])
        .resolve("www.test")
        .await
        .unwrap();
    assert_eq!(set(&answer), ips(&["10.0.0.3", "fd00::3"]));
    assert_eq!(answer.ttl, secs(50), "TTL is the minimum along the chain");
}

#[tokio::test]
async fn nxdomain_is_empty_with_soa_minimum_or_zero() {
    let dns = FakeDns::start("neg.test SOA 45 90\nreal.neg.test A 10.0.0.1\n");
    let resolver = Resolver::new(vec![dns.addr]);
    let answer = resolver.resolve("missing.neg.test").await.unwrap();
    assert!(answer.addrs.is_empty());
    assert_eq!(answer.ttl, secs(45), "min(SOA ttl, SOA minimum)");
    // No SOA: zero, which the cache raises to min_ttl.
    let answer = resolver.resolve("missing.elsewhere").await.unwrap();
    assert!(answer.addrs.is_empty());
    assert_eq!(answer.ttl, Duration::ZERO);
}

#[tokio::test]
async fn no_data_for_one_family_keeps_the_other() {
    let dns = FakeDns::start("v4only.test A 10.0.0.4 120\nv4only.test SOA 5\n");
    let answer = Resolver::new(vec![dns.addr])
        .resolve("v4only.test")
        .await
        .unwrap();
    assert_eq!(set(&answer), ips(&["10.0.0.4"]));
    assert_eq!(
        answer.ttl,
        secs(120),
        "the empty family's negative TTL does not count"
    );
}

#[tokio::test]
async fn answers_change_when_the_records_file_is_rewritten() {
    let dns = FakeDns::start("moving.test A 10.0.0.1\n");
    let resolver = Resolver::new(vec![dns.addr]);
    assert_eq!(
        set(&resolver.resolve("moving.test").await.unwrap()),
        ips(&["10.0.0.1"])
    );
    dns.set_records("moving.test A 10.0.0.2\nmoving.test AAAA fd00::2\n");
    assert_eq!(
        set(&resolver.resolve("moving.test").await.unwrap()),
        ips(&["10.0.0.2", "fd00::2"])
    );
}

#[tokio::test]
async fn rotation_hands_out_the_next_address_each_query() {
    let dns = FakeDns::start("cdn.test ROTATE A 10.1.2.0/24 30\n");
    let resolver = Resolver::new(vec![dns.addr]);
    let first = resolver.resolve("cdn.test").await.unwrap();
    let second = resolver.resolve("cdn.test").await.unwrap();
    assert_eq!(set(&first), ips(&["10.1.2.1"]));
    assert_eq!(set(&second), ips(&["10.1.2.2"]));
}

#[tokio::test]
async fn truncated_answer_is_retried_over_tcp() {
    let records: String = (1..=100)
        .map(|i| format!("big.test A 10.2.0.{i}\n"))
        .collect();
    let dns = FakeDns::start(&records);
    let resolver = Resolver::new(vec![dns.addr]);
    let answer = resolver.resolve("big.test").await.unwrap();
    assert_eq!(answer.addrs.len(), 100);
    // A over UDP (truncated), A over TCP, AAAA over UDP.
    assert_eq!(resolver.messages_sent(), 3);
    let a_queries = dns.asked().iter().filter(|(t, _)| t == "A").count();
    assert_eq!(a_queries, 2);
}

#[tokio::test]
async fn silent_upstream_times_out_naming_domain_and_upstream() {
    let dead = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    let started = std::time::Instant::now();
    let err = fast(vec![dead_addr])
        .resolve("dead.test")
        .await
        .unwrap_err();
    assert!(matches!(err, ResolveError::Timeout { .. }), "{err:?}");
    assert_eq!(err.domain(), "dead.test");
    assert_eq!(err.upstream(), Some(dead_addr));
    let msg = err.to_string();
    assert!(
        msg.contains("dead.test") && msg.contains(&dead_addr.to_string()),
        "{msg}"
    );
    // Two attempts of 300 ms, A and AAAA concurrently.
    assert!(started.elapsed() < Duration::from_secs(2));
    let mut buf = [0u8; 512];
    let mut received = 0;
    while dead.try_recv_from(&mut buf).is_ok() {
        received += 1;
    }
    assert_eq!(received, 4, "2 attempts x (A, AAAA)");
}

#[tokio::test]
async fn next_upstream_is_used_when_the_first_is_silent() {
    let dead = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let dns = FakeDns::start("next.test A 10.0.0.5\n");
    let resolver = fast(vec![dead.local_addr().unwrap(), dns.addr]);
    let answer = resolver.resolve("next.test").await.unwrap();
    assert_eq!(set(&answer), ips(&["10.0.0.5"]));
    let asked: BTreeSet<_> = dns.asked().into_iter().collect();
    assert_eq!(
        asked,
        [("A", "next.test"), ("AAAA", "next.test")]
            .into_iter()
            .map(|(t, n)| (t.to_string(), n.to_string()))
            .collect()
    );
}

#[tokio::test]
async fn refused_port_moves_on_at_once() {
    // A loopback port with nothing bound: ICMP port unreachable, seen as ECONNREFUSED.
    let closed = StdUdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dns = FakeDns::start("up.test A 10.0.0.6\n");
    let resolver = Resolver::with_config(ResolverConfig {
        attempt_timeout: Duration::from_secs(5),
        ..ResolverConfig::new(vec![closed, dns.addr])
    });
    let started = std::time::Instant::now();
    let answer = resolver.resolve("up.test").await.unwrap();
    assert_eq!(set(&answer), ips(&["10.0.0.6"]));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "no timeout was waited for"
    );
}

#[tokio::test]
async fn query_log_records_what_reached_the_upstream() {
    let dns = FakeDns::start("logged.test A 10.0.0.7\n");
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    Resolver::new(vec![dns.addr])
        .resolve("LOGGED.test.")
        .await
        .unwrap();
    let after = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let log = dns.log();
    assert_eq!(log.len(), 2);
    for (ms, _, name) in &log {
        assert!(
            (before..=after).contains(ms),
            "{ms} not in {before}..={after}"
        );
        assert_eq!(name, "logged.test");
    }
    let types: BTreeSet<&str> = log.iter().map(|(_, t, _)| t.as_str()).collect();
    assert_eq!(types, BTreeSet::from(["A", "AAAA"]));
}

#[tokio::test]
async fn fake_server_ignores_malformed_packets() {
    let dns = FakeDns::start("still.test A 10.0.0.8\n");
    let junk = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for packet in [&b""[..], b"\x00", b"garbage garbage garbage", &[0xff; 40]] {
        junk.send_to(packet, dns.addr).await.unwrap();
    }
    let answer = Resolver::new(vec![dns.addr])
        .resolve("still.test")
        .await
        .unwrap();
    assert_eq!(set(&answer), ips(&["10.0.0.8"]));
}

#[tokio::test]
async fn no_upstream_is_an_error_not_an_empty_answer() {
    let err = Resolver::new(vec![]).resolve("x.test").await.unwrap_err();
    assert!(matches!(err, ResolveError::NoUpstream { .. }), "{err:?}");
    assert_eq!(err.domain(), "x.test");
}

/// The daemon's loop in miniature: many containers want the same few domains, each refresh
/// costs one upstream resolution (A + AAAA) per domain.
#[tokio::test]
async fn cache_and_resolver_together_ask_once_per_domain() {
    let records: String = (0..5)
        .map(|d| format!("d{d}.test A 10.3.0.{}\n", d + 1))
        .collect();
    let dns = FakeDns::start(&records);
    let resolver = Resolver::new(vec![dns.addr]);
    let mut cache = Cache::new(TtlSettings {
        min_ttl: secs(30),
        max_ttl: secs(3600),
        grace: secs(60),
        failure_retry: secs(5),
    });
    let wanted = (0..100).flat_map(|_| (0..5).map(|d| format!("d{d}.test")));
    cache.want(wanted, Instant::now());
    let now = Instant::now();
    let due = cache.take_due(now);
    assert_eq!(due.len(), 5);
    for domain in &due {
        let answer = resolver.resolve(domain).await.unwrap();
        let added = cache.on_answer(domain, &answer, now);
        assert_eq!(added.len(), 1);
        assert_eq!(added[0].timeout, secs(90));
    }
    assert!(cache.take_due(now).is_empty());
    assert_eq!(cache.total_queries(), 5);
    assert_eq!(dns.log().len(), 10, "5 domains x (A, AAAA)");
    assert_eq!(resolver.messages_sent(), 10);
}
