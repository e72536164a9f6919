//! Prometheus metrics and the `GET /metrics` endpoint (`[metrics] listen` in the config).
//!
//! The kernel holds the packet and byte counters (the table's named counters and one counter
//! per set element), so those metrics are not incremented here: the daemon reads the kernel
//! and *sets* a [`ContainerSample`] per container, and a custom collector encodes the latest
//! samples as constant counters on every scrape. Removing a container removes all its label
//! sets, so thousands of container cycles leave nothing behind. Counters egressd itself
//! produces (DNS proxy verdicts, resolve errors) live in the same snapshot store; the apply
//! latency is a `prometheus-client` histogram. Everything is encoded by `prometheus-client`'s
//! OpenMetrics text encoder.
//!
//! Kernel counters restart at zero when a table is replaced, and element counters vanish when
//! their element expires. [`Monotonic`] and [`HostTotals`] turn such readings into the
//! monotonic totals Prometheus expects.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `egressd_containers` | gauge | `state` |
//! | `egressd_denied_packets_total`, `egressd_denied_bytes_total` | counter | `container` |
//! | `egressd_limited_packets_total` | counter | `container` |
//! | `egressd_allowed_packets_total`, `egressd_allowed_bytes_total` | counter | `container`, `host` |
//! | `egressd_dns_queries_total` | counter | `container`, `verdict` |
//! | `egressd_resolve_errors_total` | counter | `domain` |
//! | `egressd_apply_duration_seconds` | histogram | |

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::firewall::{CountedElem, Counters};

/// Errors of the metrics module.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics endpoint: cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("metrics endpoint: encoding the metrics failed")]
    Encode(#[source] fmt::Error),
}

/// The state of a managed container, as `egressd status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ContainerState {
    Enforced,
    Report,
    Quarantined,
    Unenforceable,
    Error,
}

impl ContainerState {
    pub const ALL: [ContainerState; 5] = [
        ContainerState::Enforced,
        ContainerState::Report,
        ContainerState::Quarantined,
        ContainerState::Unenforceable,
        ContainerState::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ContainerState::Enforced => "enforced",
            ContainerState::Report => "report",
            ContainerState::Quarantined => "quarantined",
            ContainerState::Unenforceable => "unenforceable",
            ContainerState::Error => "error",
        }
    }
}

/// What the DNS proxy did with one query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DnsVerdict {
    /// Allowed name: forwarded upstream and answered.
    Forwarded,
    /// Name not allowed: REFUSED, never sent upstream.
    Refused,
    /// Answer dropped (rebinding guard) or query dropped.
    Dropped,
    /// Upstream failure or timeout.
    Failed,
}

impl DnsVerdict {
    pub const ALL: [DnsVerdict; 4] = [
        DnsVerdict::Forwarded,
        DnsVerdict::Refused,
        DnsVerdict::Dropped,
        DnsVerdict::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DnsVerdict::Forwarded => "forwarded",
            DnsVerdict::Refused => "refused",
            DnsVerdict::Dropped => "dropped",
            DnsVerdict::Failed => "failed",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Allowed traffic to one host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostTraffic {
    pub packets: u64,
    pub bytes: u64,
}

/// The kernel-side numbers of one container, already monotonic (see [`Monotonic`] and
/// [`HostTotals`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSample {
    pub state: ContainerState,
    pub denied_packets: u64,
    pub denied_bytes: u64,
    /// Packets over a budget (`limit` label).
    pub limited_packets: u64,
    /// Allowed traffic per allowed host (domain, address or CIDR as the policy names it).
    pub hosts: BTreeMap<String, HostTraffic>,
}

impl ContainerSample {
    pub fn new(state: ContainerState) -> Self {
        ContainerSample {
            state,
            denied_packets: 0,
            denied_bytes: 0,
            limited_packets: 0,
            hosts: BTreeMap::new(),
        }
    }
}

/// Everything the collector encodes besides the histogram. Bounded: one entry per live
/// container and per domain in some policy.
#[derive(Debug, Default)]
struct Store {
    containers: BTreeMap<String, ContainerSample>,
    dns: BTreeMap<String, [u64; 4]>,
    resolve_errors: BTreeMap<String, u64>,
}

/// The daemon's metrics. Cheap to share (`Arc`); every method takes `&self`.
pub struct Metrics {
    registry: Registry,
    apply_duration: Histogram,
    store: Arc<Mutex<Store>>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn lock(store: &Mutex<Store>) -> MutexGuard<'_, Store> {
    // A panic while holding the lock leaves plain data behind; keep serving it.
    store.lock().unwrap_or_else(|e| e.into_inner())
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        // 100 µs to about 3.3 s: a table with 50,000 elements applies in about a second.
        let apply_duration = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register_with_unit(
            "egressd_apply_duration",
            "Time to write one container's table (one netlink transaction)",
            Unit::Seconds,
            apply_duration.clone(),
        );
        let store = Arc::new(Mutex::new(Store::default()));
        registry.register_collector(Box::new(StoreCollector {
            store: store.clone(),
        }));
        Metrics {
            registry,
            apply_duration,
            store,
        }
    }

    /// Sets the kernel numbers of one container (replacing the previous sample).
    pub fn set_container(&self, name: &str, sample: ContainerSample) {
        lock(&self.store)
            .containers
            .insert(name.to_string(), sample);
    }

    /// Removes every label set of a container that is gone.
    pub fn remove_container(&self, name: &str) {
        let mut s = lock(&self.store);
        s.containers.remove(name);
        s.dns.remove(name);
    }

    /// Keeps only the containers for which `keep` is true (after a resync).
    pub fn retain_containers(&self, keep: impl Fn(&str) -> bool) {
        let mut s = lock(&self.store);
        s.containers.retain(|k, _| keep(k));
        s.dns.retain(|k, _| keep(k));
    }

    /// Counts one DNS query the proxy handled for `container`.
    pub fn inc_dns_query(&self, container: &str, verdict: DnsVerdict) {
        let mut s = lock(&self.store);
        let counts = s.dns.entry(container.to_string()).or_default();
        counts[verdict.index()] = counts[verdict.index()].saturating_add(1);
    }

    /// Sets the DNS query counts of `container` from its proxy's counters (`[u64; 4]` in the
    /// order of [`DnsVerdict::ALL`]), replacing what was there.
    pub fn set_dns_queries(&self, container: &str, counts: [u64; 4]) {
        lock(&self.store).dns.insert(container.to_string(), counts);
    }

    /// Counts one failed resolution of `domain` (resolve mode).
    pub fn inc_resolve_error(&self, domain: &str) {
        let mut s = lock(&self.store);
        let n = s.resolve_errors.entry(domain.to_string()).or_default();
        *n = n.saturating_add(1);
    }

    /// Keeps only the domains for which `keep` is true (those some policy still names).
    pub fn retain_domains(&self, keep: impl Fn(&str) -> bool) {
        lock(&self.store).resolve_errors.retain(|k, _| keep(k));
    }

    /// Records how long one table write took.
    pub fn observe_apply(&self, took: Duration) {
        self.apply_duration.observe(took.as_secs_f64());
    }

    /// Number of containers with a sample (for tests and status).
    pub fn container_count(&self) -> usize {
        lock(&self.store).containers.len()
    }

    /// The OpenMetrics text exposition (ends with `# EOF`).
    pub fn encode(&self) -> Result<String, MetricsError> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .map_err(MetricsError::Encode)?;
        Ok(out)
    }
}

/// Encodes the store on every scrape.
#[derive(Debug)]
struct StoreCollector {
    store: Arc<Mutex<Store>>,
}

/// Writes one family of constant counters.
fn counters<'a, L: prometheus_client::encoding::EncodeLabelSet + 'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: impl Iterator<Item = (L, u64)>,
) -> Result<(), fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, unit, MetricType::Counter)?;
    for (labels, value) in samples {
        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for StoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let s = lock(&self.store);
        {
            let mut family = encoder.encode_descriptor(
                "egressd_containers",
                "Managed containers by state.",
                None,
                MetricType::Gauge,
            )?;
            for state in ContainerState::ALL {
                let n = s.containers.values().filter(|c| c.state == state).count();
                let labels = [("state", state.as_str())];
                ConstGauge::new(n as i64).encode(family.encode_family(&labels)?)?;
            }
        }
        let per_container = |f: fn(&ContainerSample) -> u64| {
            s.containers
                .iter()
                .map(move |(name, c)| ([("container", name.as_str())], f(c)))
        };
        counters(
            &mut encoder,
            "egressd_denied_packets",
            "Packets the policy denied (or would have, in report mode), counted by the kernel.",
            None,
            per_container(|c| c.denied_packets),
        )?;
        counters(
            &mut encoder,
            "egressd_denied",
            "Bytes the policy denied (or would have, in report mode), counted by the kernel.",
            Some(&Unit::Bytes),
            per_container(|c| c.denied_bytes),
        )?;
        counters(
            &mut encoder,
            "egressd_limited_packets",
            "Packets over a budget (egressd.limit), counted by the kernel.",
            None,
            per_container(|c| c.limited_packets),
        )?;
        let per_host = |f: fn(&HostTraffic) -> u64| {
            s.containers.iter().flat_map(move |(name, c)| {
                c.hosts.iter().map(move |(host, t)| {
                    (
                        [("container", name.as_str()), ("host", host.as_str())],
                        f(t),
                    )
                })
            })
        };
        counters(
            &mut encoder,
            "egressd_allowed_packets",
            "Allowed packets per allowed host, counted by the kernel per set element.",
            None,
            per_host(|t| t.packets),
        )?;
        counters(
            &mut encoder,
            "egressd_allowed",
            "Allowed bytes per allowed host, counted by the kernel per set element.",
            Some(&Unit::Bytes),
            per_host(|t| t.bytes),
        )?;
        counters(
            &mut encoder,
            "egressd_dns_queries",
            "DNS queries the proxy handled, by verdict.",
            None,
            s.dns.iter().flat_map(|(name, counts)| {
                DnsVerdict::ALL.into_iter().map(move |v| {
                    (
                        [("container", name.as_str()), ("verdict", v.as_str())],
                        counts[v.index()],
                    )
                })
            }),
        )?;
        counters(
            &mut encoder,
            "egressd_resolve_errors",
            "Failed resolutions of an allowed domain (resolve mode).",
            None,
            s.resolve_errors
                .iter()
                .map(|(d, n)| ([("domain", d.as_str())], *n)),
        )?;
        Ok(())
    }
}

// ---- kernel readings → monotonic totals ----

/// A kernel counter made monotonic across table replacements (which restart it at zero).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Monotonic {
    last: u64,
    base: u64,
}

impl Monotonic {
    /// Takes a reading of the kernel counter and returns the total. A reading below the last
    /// one means the counter restarted.
    pub fn update(&mut self, raw: u64) -> u64 {
        if raw < self.last {
            self.base = self.base.saturating_add(self.last);
        }
        self.last = raw;
        self.total()
    }

    pub fn total(&self) -> u64 {
        self.base.saturating_add(self.last)
    }

    /// Call right after a last [`update`](Self::update) and before replacing the table: the
    /// new table's counter then counts from zero on top of the total so far.
    pub fn table_replaced(&mut self) {
        self.base = self.total();
        self.last = 0;
    }
}

/// Per-host totals from per-element counter readings of one container. The total of a host
/// grows by what each of its elements counted since the last reading; an element that
/// disappears (expired) keeps what was already added, one that restarts (table replaced,
/// or expired and added again) counts from zero. Memory: one entry per live element and per
/// host; [`retain_hosts`](Self::retain_hosts) drops hosts no longer in the policy.
#[derive(Debug, Clone)]
pub struct HostTotals<K> {
    last: BTreeMap<K, (u64, u64)>,
    totals: BTreeMap<String, HostTraffic>,
}

impl<K> Default for HostTotals<K> {
    fn default() -> Self {
        HostTotals {
            last: BTreeMap::new(),
            totals: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Clone> HostTotals<K> {
    /// One full reading of every element: `(element key, host it belongs to, packets, bytes)`.
    /// Returns the totals per host.
    pub fn update(
        &mut self,
        readings: impl IntoIterator<Item = (K, String, u64, u64)>,
    ) -> &BTreeMap<String, HostTraffic> {
        let mut next = BTreeMap::new();
        for (key, host, packets, bytes) in readings {
            let (lp, lb) = self.last.get(&key).copied().unwrap_or((0, 0));
            let delta = |now: u64, before: u64| if now >= before { now - before } else { now };
            let t = self.totals.entry(host).or_default();
            t.packets = t.packets.saturating_add(delta(packets, lp));
            t.bytes = t.bytes.saturating_add(delta(bytes, lb));
            next.insert(key, (packets, bytes));
        }
        self.last = next;
        &self.totals
    }

    /// Call after a last [`update`](Self::update) and before replacing the table: every
    /// element of the new table counts from zero.
    pub fn table_replaced(&mut self) {
        self.last.clear();
    }

    pub fn totals(&self) -> &BTreeMap<String, HostTraffic> {
        &self.totals
    }

    /// Drops the totals of hosts for which `keep` is false.
    pub fn retain_hosts(&mut self, keep: impl Fn(&str) -> bool) {
        self.totals.retain(|h, _| keep(h));
    }
}

/// The kernel counters of one container, made monotonic: the table's named counters and its
/// per-element counters summed per allowed host. The daemon reads the kernel on a timer and
/// before it replaces the table ([`TrafficTotals::table_replaced`]).
#[derive(Debug, Clone, Default)]
pub struct TrafficTotals {
    /// New allowed flows (the `allowed` counter counts the first packet of each).
    pub allowed_flows: Monotonic,
    pub denied_packets: Monotonic,
    pub denied_bytes: Monotonic,
    pub limited_packets: Monotonic,
    pub hosts: HostTotals<CountedElem>,
}

impl TrafficTotals {
    /// One reading: the named counters, and each element with the host it belongs to.
    pub fn update(
        &mut self,
        counters: &Counters,
        elements: impl IntoIterator<Item = (CountedElem, String, u64, u64)>,
    ) {
        self.allowed_flows.update(counters.allowed_packets);
        self.denied_packets.update(counters.denied_packets);
        self.denied_bytes.update(counters.denied_bytes);
        self.limited_packets.update(counters.limited_packets);
        self.hosts.update(elements);
    }

    /// Call after a last [`update`](Self::update), before the table is written again.
    pub fn table_replaced(&mut self) {
        self.allowed_flows.table_replaced();
        self.denied_packets.table_replaced();
        self.denied_bytes.table_replaced();
        self.limited_packets.table_replaced();
        self.hosts.table_replaced();
    }

    /// The sample the metrics endpoint shows.
    pub fn sample(&self, state: ContainerState) -> ContainerSample {
        ContainerSample {
            state,
            denied_packets: self.denied_packets.total(),
            denied_bytes: self.denied_bytes.total(),
            limited_packets: self.limited_packets.total(),
            hosts: self.hosts.totals().clone(),
        }
    }
}

/// The DNS proxy's counters as metric verdicts, in the order of [`DnsVerdict::ALL`]:
/// forwarded and answered; refused; dropped (no answer at all: garbage without a header);
/// failed (SERVFAIL: upstream failure or timeout, or an answer that could not be processed).
pub fn dns_verdicts(s: &crate::dnsproxy::StatsSnapshot) -> [u64; 4] {
    let answered = s.forwarded.saturating_sub(s.servfail);
    let dropped = s
        .queries
        .saturating_sub(s.forwarded)
        .saturating_sub(s.refused);
    [answered, s.refused, dropped, s.servfail]
}

// ---- the HTTP endpoint ----

/// Bounds of the `/metrics` server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Connections served at once; more are closed at once.
    pub max_connections: usize,
    /// Time a client has to send its request headers.
    pub read_timeout: Duration,
    /// Time a client has to take the response.
    pub write_timeout: Duration,
    /// Largest request (line and headers) accepted; larger gets 431.
    pub max_request_bytes: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 16,
            read_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            max_request_bytes: 8 * 1024,
        }
    }
}

/// Binds the endpoint's listener (`[metrics] listen`).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })
}

/// Serves `GET /metrics` (and `HEAD`) on `listener` until `shutdown` completes, then waits for
/// the connections in flight (each is bounded by the timeouts) and returns. One request per
/// connection (`Connection: close`); 404 for other paths, 405 for other methods.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        while tasks.try_join_next().is_some() {}
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        tracing::debug!(%peer, "metrics: connection limit reached, closing");
                        drop(stream);
                        continue;
                    };
                    let metrics = metrics.clone();
                    tasks.spawn(async move {
                        handle(stream, &metrics, limits).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    // Out of descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    let grace = limits.read_timeout + limits.write_timeout;
    if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tasks.abort_all();
    }
}

/// A parsed request, or the status to answer it with.
enum Request {
    Metrics { head: bool },
    NotFound,
    BadMethod,
}

async fn handle(mut stream: TcpStream, metrics: &Metrics, limits: ServerLimits) {
    let request = match tokio::time::timeout(
        limits.read_timeout,
        read_request(&mut stream, limits.max_request_bytes),
    )
    .await
    {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(Some(status))) => Err(status),
        // The client went away, or took too long: nothing to answer.
        Ok(Err(None)) | Err(_) => return,
    };
    let response = match request {
        Ok(Request::Metrics { head }) => match metrics.encode() {
            Ok(body) => response(
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                &body,
                head,
            ),
            Err(e) => {
                tracing::warn!(error = %e, "metrics: encoding failed");
                response(
                    "500 Internal Server Error",
                    "text/plain",
                    "encoding failed\n",
                    head,
                )
            }
        },
        Ok(Request::NotFound) => response("404 Not Found", "text/plain", "not found\n", false),
        Ok(Request::BadMethod) => response(
            "405 Method Not Allowed",
            "text/plain",
            "only GET and HEAD\n",
            false,
        ),
        Err(status) => response(status, "text/plain", "bad request\n", false),
    };
    let _ = tokio::time::timeout(limits.write_timeout, async {
        stream.write_all(&response).await?;
        stream.shutdown().await
    })
    .await;
}

/// Reads until the end of the headers. `Err(Some(status))`: answer with that status;
/// `Err(None)`: the connection ended first.
async fn read_request(stream: &mut TcpStream, max: usize) -> Result<Request, Option<&'static str>> {
    let mut buf = vec![0u8; max];
    let mut len = 0;
    loop {
        if len == max {
            return Err(Some("431 Request Header Fields Too Large"));
        }
        let n = stream.read(&mut buf[len..]).await.map_err(|_| None)?;
        if n == 0 {
            return Err(None);
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => {
                let path = req.path.unwrap_or("");
                let path = path.split('?').next().unwrap_or(path);
                return Ok(match (req.method.unwrap_or(""), path) {
                    ("GET", "/metrics") => Request::Metrics { head: false },
                    ("HEAD", "/metrics") => Request::Metrics { head: true },
                    (_, "/metrics") => Request::BadMethod,
                    _ => Request::NotFound,
                });
            }
            Ok(httparse::Status::Partial) => continue,
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Some("431 Request Header Fields Too Large"));
            }
            Err(_) => return Err(Some("400 Bad Request")),
        }
    }
}

fn response(status: &str, content_type: &str, body: &str, head: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status.starts_with("405") {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if !head {
        bytes.extend_from_slice(body.as_bytes());
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(state: ContainerState) -> ContainerSample {
        ContainerSample::new(state)
    }

    /// `name{labels} value` lines of the exposition, for assertions.
    fn samples(text: &str) -> BTreeMap<String, String> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| l.rsplit_once(' '))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn set_values_are_encoded_with_their_labels() {
        let m = Metrics::new();
        let mut a = sample(ContainerState::Enforced);
        a.denied_packets = 7;
        a.denied_bytes = 420;
        a.limited_packets = 2;
        a.hosts.insert(
            "api.openai.com".into(),
            HostTraffic {
                packets: 12,
                bytes: 3400,
            },
        );
        m.set_container("agent-a", a);
        m.set_container("agent-b", sample(ContainerState::Quarantined));
        m.inc_dns_query("agent-a", DnsVerdict::Refused);
        m.inc_dns_query("agent-a", DnsVerdict::Refused);
        m.inc_resolve_error("pypi.org");
        m.observe_apply(Duration::from_millis(3));
        let text = m.encode().unwrap();
        let s = samples(&text);
        let get = |k: &str| s.get(k).map(String::as_str);
        assert_eq!(get("egressd_containers{state=\"enforced\"}"), Some("1"));
        assert_eq!(get("egressd_containers{state=\"quarantined\"}"), Some("1"));
        assert_eq!(get("egressd_containers{state=\"error\"}"), Some("0"));
        assert_eq!(
            get("egressd_denied_packets_total{container=\"agent-a\"}"),
            Some("7")
        );
        assert_eq!(
            get("egressd_denied_bytes_total{container=\"agent-a\"}"),
            Some("420")
        );
        assert_eq!(
            get("egressd_limited_packets_total{container=\"agent-a\"}"),
            Some("2")
        );
        assert_eq!(
            get("egressd_allowed_bytes_total{container=\"agent-a\",host=\"api.openai.com\"}"),
            Some("3400")
        );
        assert_eq!(
            get("egressd_allowed_packets_total{container=\"agent-a\",host=\"api.openai.com\"}"),
            Some("12")
        );
        assert_eq!(
            get("egressd_dns_queries_total{container=\"agent-a\",verdict=\"refused\"}"),
            Some("2")
        );
        assert_eq!(
            get("egressd_dns_queries_total{container=\"agent-a\",verdict=\"forwarded\"}"),
            Some("0")
        );
        assert_eq!(
            get("egressd_resolve_errors_total{domain=\"pypi.org\"}"),
            Some("1")
        );
        assert_eq!(get("egressd_apply_duration_seconds_count"), Some("1"));
        assert!(
            text.contains("# TYPE egressd_allowed_bytes counter"),
            "{text}"
        );
        assert!(
            text.contains("# UNIT egressd_apply_duration_seconds seconds"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new();
        m.set_container("we\"ird\\name\n", sample(ContainerState::Error));
        let text = m.encode().unwrap();
        assert!(
            text.contains("egressd_denied_packets_total{container=\"we\\\"ird\\\\name\\n\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn thousands_of_container_cycles_leave_nothing_behind() {
        let m = Metrics::new();
        let baseline = m.encode().unwrap().len();
        for i in 0..5000 {
            let name = format!("c{i}");
            let mut s = sample(ContainerState::Enforced);
            s.hosts
                .insert(format!("h{i}.example"), HostTraffic::default());
            m.set_container(&name, s);
            m.inc_dns_query(&name, DnsVerdict::Forwarded);
            m.remove_container(&name);
        }
        m.set_container("keep", sample(ContainerState::Report));
        m.set_container("drop", sample(ContainerState::Report));
        m.inc_dns_query("drop", DnsVerdict::Failed);
        m.retain_containers(|n| n == "keep");
        m.inc_resolve_error("gone.example");
        m.retain_domains(|_| false);
        assert_eq!(m.container_count(), 1);
        let text = m.encode().unwrap();
        assert!(!text.contains("drop"), "{text}");
        assert!(!text.contains("gone.example"), "{text}");
        // What is left: the one container's lines (and the report gauge of 1).
        assert!(text.len() < baseline + 400, "{} vs {baseline}", text.len());
    }

    #[test]
    fn monotonic_survives_restarts_of_the_kernel_counter() {
        let mut c = Monotonic::default();
        assert_eq!(c.update(10), 10);
        assert_eq!(c.update(25), 25);
        // The table was replaced without warning: the counter restarted.
        assert_eq!(c.update(4), 29);
        // The daemon replaced the table and said so after its last reading.
        assert_eq!(c.update(9), 34);
        c.table_replaced();
        assert_eq!(c.total(), 34);
        assert_eq!(c.update(20), 54);
        assert_eq!(c.update(20), 54);
    }

    #[test]
    fn host_totals_follow_elements_that_come_and_go() {
        let mut h: HostTotals<&str> = HostTotals::default();
        let t = |h: &HostTotals<&str>, host: &str| h.totals().get(host).copied();
        h.update([
            ("a1", "a.example".to_string(), 2, 200),
            ("a2", "a.example".to_string(), 1, 100),
            ("n", "10.0.0.0/8".to_string(), 5, 500),
        ]);
        assert_eq!(
            t(&h, "a.example"),
            Some(HostTraffic {
                packets: 3,
                bytes: 300
            })
        );
        // a2 expired (gone from the reading): what it counted stays; a1 grew.
        h.update([
            ("a1", "a.example".to_string(), 4, 450),
            ("n", "10.0.0.0/8".to_string(), 5, 500),
        ]);
        assert_eq!(
            t(&h, "a.example"),
            Some(HostTraffic {
                packets: 5,
                bytes: 550
            })
        );
        assert_eq!(t(&h, "10.0.0.0/8").map(|x| x.bytes), Some(500));
        // a2 came back (a new element counts from zero); a1 restarted without notice.
        h.update([
            ("a1", "a.example".to_string(), 1, 50),
            ("a2", "a.example".to_string(), 1, 60),
        ]);
        assert_eq!(t(&h, "a.example").map(|x| x.bytes), Some(660));
        // The address moved to another domain: its growth goes to the new host.
        h.update([("a1", "b.example".to_string(), 2, 80)]);
        assert_eq!(t(&h, "b.example").map(|x| x.bytes), Some(30));
        assert_eq!(t(&h, "a.example").map(|x| x.bytes), Some(660));
        // The daemon replaced the table after a last reading.
        h.table_replaced();
        h.update([("a1", "b.example".to_string(), 5, 90)]);
        assert_eq!(t(&h, "b.example").map(|x| x.bytes), Some(120));
        h.retain_hosts(|host| host != "10.0.0.0/8");
        assert_eq!(t(&h, "10.0.0.0/8"), None);
    }
}
