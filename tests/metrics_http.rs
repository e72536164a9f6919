//! The `/metrics` endpoint over real TCP on 127.0.0.1 (port 0), its limits, and the path from
//! real kernel counters (a throwaway `egobs-*` namespace pair) to a scraped value.

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use egressd::firewall::{AddrElem, CountedElem, LogSettings, NsFirewall, Ruleset};
use egressd::metrics::{
    self, ContainerSample, ContainerState, DnsVerdict, HostTotals, HostTraffic, Metrics, Monotonic,
    ServerLimits,
};
use egressd::policy::Proto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

async fn start(m: Arc<Metrics>, limits: ServerLimits) -> Server {
    let listener = metrics::bind("127.0.0.1:0".parse().unwrap())
        .await
        .expect("bind port 0");
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(metrics::serve(listener, m, limits, async {
        let _ = rx.await;
    }));
    Server {
        addr,
        stop: Some(tx),
        task,
    }
}

/// Sends `request` as is and reads the whole response (the server closes the connection).
async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("response within 5 s")
        .unwrap();
    String::from_utf8(out).unwrap()
}

async fn get(addr: SocketAddr, path: &str) -> String {
    raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nAccept: */*\r\n\r\n").as_bytes(),
    )
    .await
}

/// One sample line of the text exposition.
#[derive(Debug, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A small parser for the OpenMetrics text format: `# HELP/TYPE/UNIT` lines, samples
/// `name{k="v",...} value`, and `# EOF` last. Fails on anything else.
fn parse_exposition(body: &str) -> Vec<Sample> {
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "ends with # EOF");
    let mut out = Vec::new();
    for line in &lines[..lines.len() - 1] {
        if let Some(rest) = line.strip_prefix("# ") {
            let kind = rest.split(' ').next().unwrap();
            assert!(["HELP", "TYPE", "UNIT"].contains(&kind), "{line}");
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("series value");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {line}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let inner = rest.strip_suffix('}').expect("closing brace");
                let mut labels = BTreeMap::new();
                let mut rest = inner;
                while !rest.is_empty() {
                    let (k, v) = rest.split_once("=\"").expect("k=\"v\"");
                    let mut val = String::new();
                    let mut chars = v.char_indices();
                    let end = loop {
                        match chars.next().expect("closing quote") {
                            (i, '"') => break i,
                            (_, '\\') => match chars.next().unwrap().1 {
                                'n' => val.push('\n'),
                                c => val.push(c),
                            },
                            (_, c) => val.push(c),
                        }
                    };
                    labels.insert(k.to_string(), val);
                    rest = v[end + 1..].strip_prefix(',').unwrap_or(&v[end + 1..]);
                }
                (name.to_string(), labels)
            }
        };
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{name}"
        );
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    samples
        .iter()
        .find(|s| s.name == name && s.labels == want)
        .map(|s| s.value)
}

fn split(response: &str) -> (&str, &str) {
    response.split_once("\r\n\r\n").expect("headers, then body")
}

#[tokio::test]
async fn a_scrape_returns_the_values_that_were_set() {
    let m = Arc::new(Metrics::new());
    let mut a = ContainerSample::new(ContainerState::Enforced);
    a.denied_packets = 3;
    a.hosts.insert(
        "api.openai.com".into(),
        HostTraffic {
            packets: 10,
            bytes: 123_456,
        },
    );
    m.set_container("agent-openai", a);
    m.set_container(
        "agent-none",
        ContainerSample::new(ContainerState::Quarantined),
    );
    m.inc_dns_query("agent-openai", DnsVerdict::Forwarded);
    m.inc_resolve_error("files.pythonhosted.org");
    m.observe_apply(Duration::from_micros(1500));
    m.observe_apply(Duration::from_millis(40));
    let server = start(m.clone(), ServerLimits::default()).await;

    let resp = get(server.addr, "/metrics").await;
    let (head, body) = split(&resp);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("Content-Type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{head}"
    );
    assert!(
        head.contains(&format!("Content-Length: {}", body.len())),
        "{head}"
    );
    let s = parse_exposition(body);
    assert_eq!(
        value(&s, "egressd_containers", &[("state", "enforced")]),
        Some(1.0)
    );
    assert_eq!(
        value(&s, "egressd_containers", &[("state", "quarantined")]),
        Some(1.0)
    );
    assert_eq!(
        value(&s, "egressd_containers", &[("state", "report")]),
        Some(0.0)
    );
    assert_eq!(
        value(
            &s,
            "egressd_denied_packets_total",
            &[("container", "agent-openai")]
        ),
        Some(3.0)
    );
    assert_eq!(
        value(
            &s,
            "egressd_allowed_bytes_total",
            &[("container", "agent-openai"), ("host", "api.openai.com")]
        ),
        Some(123_456.0)
    );
    assert_eq!(
        value(
            &s,
            "egressd_dns_queries_total",
            &[("container", "agent-openai"), ("verdict", "forwarded")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &s,
            "egressd_resolve_errors_total",
            &[("domain", "files.pythonhosted.org")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&s, "egressd_apply_duration_seconds_count", &[]),
        Some(2.0)
    );
    assert_eq!(
        value(
            &s,
            "egressd_apply_duration_seconds_bucket",
            &[("le", "0.0016")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &s,
            "egressd_apply_duration_seconds_bucket",
            &[("le", "+Inf")]
        ),
        Some(2.0)
    );

    // A container that is gone is gone from the next scrape; a query string is ignored.
    m.remove_container("agent-openai");
    let s = parse_exposition(split(&get(server.addr, "/metrics?x=1").await).1);
    assert!(
        s.iter()
            .all(|x| x.labels.get("container").map(String::as_str) != Some("agent-openai"))
    );
    assert_eq!(
        value(&s, "egressd_containers", &[("state", "enforced")]),
        Some(0.0)
    );
}

#[tokio::test]
async fn other_paths_methods_and_bad_requests_get_their_status() {
    let server = start(Arc::new(Metrics::new()), ServerLimits::default()).await;
    let r = get(server.addr, "/").await;
    assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"), "{r}");
    let r = get(server.addr, "/metricsx").await;
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    let r = raw(
        server.addr,
        b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{r}");
    assert!(r.contains("Allow: GET, HEAD\r\n"), "{r}");
    let r = raw(server.addr, b"HEAD /metrics HTTP/1.0\r\n\r\n").await;
    let (head, body) = split(&r);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.is_empty(), "HEAD has no body");
    assert!(!head.contains("Content-Length: 0"), "{head}");
    let r = raw(server.addr, b"\x16\x03\x01garbage\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{r}");
    let mut big = b"GET /metrics HTTP/1.1\r\nX-Fill: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 20_000));
    big.extend_from_slice(b"\r\n\r\n");
    let r = raw(server.addr, &big).await;
    assert!(r.starts_with("HTTP/1.1 431"), "{r}");
}

/// Whether the server closes `s` within `within` (read returns end of file or an error).
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(within, s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test]
async fn idle_clients_time_out_and_connections_beyond_the_cap_are_closed() {
    let limits = ServerLimits {
        max_connections: 2,
        read_timeout: Duration::from_millis(300),
        write_timeout: Duration::from_millis(300),
        max_request_bytes: 1024,
    };
    let server = start(Arc::new(Metrics::new()), limits).await;
    let start_at = Instant::now();
    let mut idle1 = TcpStream::connect(server.addr).await.unwrap();
    let mut idle2 = TcpStream::connect(server.addr).await.unwrap();
    // Give the server time to take both.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut third = TcpStream::connect(server.addr).await.unwrap();
    assert!(
        closed_within(&mut third, Duration::from_millis(200)).await,
        "over the cap: closed at once"
    );
    // A slow client that sends half a request is cut at the read timeout, like idle ones.
    idle1.write_all(b"GET /metr").await.unwrap();
    assert!(closed_within(&mut idle1, Duration::from_secs(2)).await);
    assert!(closed_within(&mut idle2, Duration::from_secs(2)).await);
    let waited = start_at.elapsed();
    assert!(waited >= Duration::from_millis(250), "{waited:?}");
    // Free again.
    let r = get(server.addr, "/metrics").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let mut server = start(Arc::new(Metrics::new()), ServerLimits::default()).await;
    assert!(
        get(server.addr, "/metrics")
            .await
            .starts_with("HTTP/1.1 200")
    );
    let _ = server.stop.take().unwrap().send(());
    tokio::time::timeout(Duration::from_secs(2), &mut server.task)
        .await
        .expect("serve returns after shutdown")
        .unwrap();
    assert!(
        TcpStream::connect(server.addr).await.is_err(),
        "listener closed"
    );
}

#[tokio::test]
async fn kernel_counters_read_back_from_a_real_table_end_up_in_a_scrape() {
    let pair = common::Pair::with_prefix("egobs-");
    pair.tcp_echo(443);
    pair.tcp_echo(8443);
    let fw = NsFirewall::open(&pair.client).unwrap();
    let rs = Ruleset {
        addrs: vec![AddrElem {
            addr: pair.v4(1),
            proto: Proto::Tcp,
            port: 443,
            timeout: Duration::from_secs(300),
        }],
        ..Ruleset::empty(LogSettings::default())
    };
    fw.apply(&rs).unwrap();
    // Real traffic: 20 round trips allowed, two connections denied.
    {
        let mut s = pair.connect(pair.v4(1), 443).unwrap();
        for _ in 0..20 {
            common::echo(&mut s).unwrap();
        }
    }
    assert!(pair.connect(pair.v4(1), 8443).is_err());
    assert!(pair.connect(pair.v4(3), 443).is_err());

    // What the daemon does on each refresh: read the kernel, map addresses to hosts, set.
    let domain_of = |ip: IpAddr| {
        if ip == pair.v4(1) {
            "api.example.com".to_string()
        } else {
            ip.to_string()
        }
    };
    let mut hosts: HostTotals<CountedElem> = HostTotals::default();
    let mut denied = Monotonic::default();
    let m = Arc::new(Metrics::new());
    let read = |hosts: &mut HostTotals<CountedElem>, denied: &mut Monotonic| {
        let elems = fw.element_counters().unwrap();
        let totals = hosts
            .update(
                elems
                    .iter()
                    .map(|c| (c.elem, domain_of(c.elem.addr()), c.packets, c.bytes)),
            )
            .clone();
        let mut sample = ContainerSample::new(ContainerState::Enforced);
        sample.denied_packets = denied.update(fw.counters().unwrap().denied_packets);
        sample.hosts = totals;
        sample
    };
    m.set_container("agent", read(&mut hosts, &mut denied));
    let server = start(m.clone(), ServerLimits::default()).await;
    let s = parse_exposition(split(&get(server.addr, "/metrics").await).1);
    let bytes = value(
        &s,
        "egressd_allowed_bytes_total",
        &[("container", "agent"), ("host", "api.example.com")],
    )
    .expect("host series");
    // 20 x 6 bytes of payload plus headers, the handshake and the close.
    assert!(bytes >= 20.0 * (6.0 + 52.0), "{bytes}");
    assert_eq!(
        value(
            &s,
            "egressd_denied_packets_total",
            &[("container", "agent")]
        ),
        Some(2.0)
    );

    // The table is replaced (counters restart): the totals do not go down.
    hosts.table_replaced();
    denied.table_replaced();
    fw.apply(&rs).unwrap();
    assert!(pair.connect(pair.v4(3), 443).is_err());
    m.set_container("agent", read(&mut hosts, &mut denied));
    let s = parse_exposition(split(&get(server.addr, "/metrics").await).1);
    assert_eq!(
        value(
            &s,
            "egressd_denied_packets_total",
            &[("container", "agent")]
        ),
        Some(3.0)
    );
    let again = value(
        &s,
        "egressd_allowed_bytes_total",
        &[("container", "agent"), ("host", "api.example.com")],
    )
    .unwrap();
    assert!(again >= bytes, "{again} after {bytes}");
}
