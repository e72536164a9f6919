//! `proxy` DNS mode: egressd answers every DNS query a managed container sends.
//!
//! The table's `dns` NAT chain sends UDP and TCP port 53, to any address, to this proxy's
//! listeners on the container's own loopback. For each query the proxy:
//! 1. decides ([`allow::decide`]): a name the policy does not allow is refused on the spot
//!    and never reaches an upstream (no DNS tunnelling);
//! 2. forwards an allowed name: single-label names (sibling containers) to Docker's embedded
//!    resolver inside the namespace, everything else to egressd's upstreams from the host;
//! 3. filters the answer ([`answer::filter_reply`]): CNAME chain, rebinding guard, cap;
//! 4. puts the addresses in the container's sets, with timeout TTL + grace, and only then
//!    releases the answer: the address the agent connects to is always allowed, however
//!    often a CDN rotates them.
//!
//! Any failure on the way (upstream timeout, a kernel error) gives SERVFAIL, never an answer
//! whose addresses are not in the sets.
//!
//! Layout: [`allow`] and [`answer`] are pure; [`learned`] is pure bookkeeping; [`tunnel`]
//! (pure) flags query patterns that look like DNS tunnelling; [`exchange`] talks to servers;
//! this file holds the per-container proxy and its listeners.

pub mod allow;
pub mod answer;
pub mod exchange;
pub mod learned;
pub mod tunnel;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::events::{Event, EventKind, Recent};
use crate::firewall::{
    AddrElem, DnsRedirect, FirewallError, Netns, NsFirewall, PROXY_SOCKET_MARK, ProxyPorts,
};
use crate::policy::Mode;
use crate::policy::config::{Config, RefuseWith};
use allow::{Allowlist, Decision, Refusal, Route};
use answer::{FilterSettings, filter_reply};
use exchange::{ExchangeError, Forwarder, MAX_MESSAGE, UdpExchange, Verdict};
use learned::{Learned, Lifetimes};
use tunnel::TunnelDetector;

/// Docker's embedded resolver, inside a container's namespace.
pub const DOCKER_DNS: SocketAddr =
    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 11)), 53);
/// UDP queries of one container handled at once; more are dropped (the client retries).
const MAX_UDP_IN_FLIGHT: usize = 256;
/// TCP connections of one container served at once.
const MAX_TCP_CONNECTIONS: usize = 32;
/// A TCP client that sends nothing for this long is disconnected.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Refusals logged per container: a burst, then one per this interval, with a count of the
/// ones not logged.
const LOG_BURST: u32 = 20;
const LOG_EVERY: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{netns}: cannot open the DNS proxy's sockets there: {source}")]
    Sockets {
        netns: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Firewall(#[from] FirewallError),
}

/// Settings every container's proxy shares (from the config; replaced on reload).
#[derive(Debug, Clone)]
pub struct Settings {
    pub refuse_with: RefuseWith,
    pub max_addrs: usize,
    pub max_ttl: u32,
    pub life: Lifetimes,
}

impl Settings {
    pub fn from_config(c: &Config) -> Self {
        Settings {
            refuse_with: c.dns.refuse_with,
            max_addrs: c.dns.max_addrs_per_name,
            max_ttl: u32::try_from(c.dns.max_ttl.as_secs()).unwrap_or(u32::MAX),
            life: Lifetimes {
                min_ttl: c.dns.min_ttl,
                grace: c.dns.grace,
            },
        }
    }
}

/// What every container's proxy shares: settings and the upstream forwarder.
pub struct Shared {
    pub settings: ArcSwap<Settings>,
    pub forwarder: ArcSwap<Forwarder>,
}

impl Shared {
    /// Must run inside the tokio runtime (the forwarder opens its sockets).
    pub fn new(config: &Config, upstreams: &[SocketAddr]) -> io::Result<Self> {
        Ok(Shared {
            settings: ArcSwap::from_pointee(Settings::from_config(config)),
            forwarder: ArcSwap::from_pointee(Forwarder::new(
                upstreams,
                config.dns.upstream_timeout,
            )?),
        })
    }
}

/// Counters of one container's proxy.
#[derive(Debug, Default)]
pub struct Stats {
    pub queries: AtomicU64,
    pub forwarded: AtomicU64,
    pub refused: AtomicU64,
    pub servfail: AtomicU64,
    pub stripped: AtomicU64,
    pub capped: AtomicU64,
}

/// A snapshot of [`Stats`] for `status` and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    pub queries: u64,
    pub forwarded: u64,
    pub refused: u64,
    pub servfail: u64,
    pub stripped: u64,
    pub capped: u64,
}

/// (name, address, a duration: time left, or time since it expired).
pub type NamedAddr = (String, IpAddr, Duration);

/// One name a container resolved through the proxy, for `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedName {
    pub name: String,
    pub queries: u64,
    pub last_query_secs_ago: u64,
    /// (address, seconds it stays allowed)
    pub addrs: Vec<(IpAddr, u64)>,
}

/// Rate limit for refusal and warning logs of one container.
#[derive(Debug)]
struct LogLimit {
    tokens: u32,
    last: Instant,
    suppressed: u64,
}

impl LogLimit {
    fn new() -> Self {
        LogLimit {
            tokens: LOG_BURST,
            last: Instant::now(),
            suppressed: 0,
        }
    }

    /// `Some(suppressed since the last logged one)` when this event may be logged.
    fn allow(&mut self, now: Instant) -> Option<u64> {
        let refill = (now.saturating_duration_since(self.last).as_millis()
            / LOG_EVERY.as_millis().max(1)) as u32;
        if refill > 0 {
            self.tokens = (self.tokens + refill).min(LOG_BURST);
            self.last = now;
        }
        if self.tokens == 0 {
            self.suppressed += 1;
            return None;
        }
        self.tokens -= 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// The proxy of one container: listeners in its namespace, its allowlist, and what it let
/// through. Dropping it stops the listeners (the table's redirect then leads nowhere: DNS
/// fails closed until a new proxy is in place).
pub struct ContainerProxy {
    pub container: String,
    pub short_id: String,
    allow: ArcSwap<Allowlist>,
    shared: Arc<Shared>,
    /// What it let through, and its own netfilter socket in the container's namespace (the
    /// reconciler has another). One lock: the serialization point with table replaces.
    state: Mutex<State>,
    embedded: Option<UdpExchange>,
    /// (name, type) of queries out to the embedded resolver: the same query coming back from
    /// the namespace (the embedded resolver forwarding it on) is refused, so no loop.
    embedded_in_flight: Mutex<HashMap<(String, RecordType), usize>>,
    redirect: DnsRedirect,
    pub stats: Stats,
    log_limit: Mutex<LogLimit>,
    /// The last DNS events (refusals that were logged, tunnelling warnings) for `status`.
    recent: Mutex<Recent>,
    /// Watches every queried name for tunnelling-like patterns (a warning, not a verdict).
    tunnel: Mutex<TunnelDetector>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for ContainerProxy {
    fn drop(&mut self) {
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
    }
}

struct State {
    learned: Learned,
    fw: NsFirewall,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The sockets of one proxy, made inside the container's namespace.
struct NsSockets {
    udp4: std::net::UdpSocket,
    tcp4: std::net::TcpListener,
    v6: Option<(std::net::UdpSocket, std::net::TcpListener)>,
    embedded: Option<std::net::UdpSocket>,
}

fn set_mark(fd: &impl AsRawFd, mark: u32) -> io::Result<()> {
    // SAFETY: setsockopt with a pointer to a local u32 of the declared size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MARK,
            (&mark as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn open_sockets(embedded: bool) -> io::Result<NsSockets> {
    let udp4 = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let tcp4 = std::net::TcpListener::bind("127.0.0.1:0")?;
    // IPv6 may be disabled in the namespace: then there is no IPv6 redirect, and IPv6 DNS
    // is rejected by the output chain.
    let v6 = match (
        std::net::UdpSocket::bind("[::1]:0"),
        std::net::TcpListener::bind("[::1]:0"),
    ) {
        (Ok(u), Ok(t)) => Some((u, t)),
        _ => None,
    };
    let embedded = if embedded {
        let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
        set_mark(&s, PROXY_SOCKET_MARK)?;
        s.connect(DOCKER_DNS)?;
        Some(s)
    } else {
        None
    };
    Ok(NsSockets {
        udp4,
        tcp4,
        v6,
        embedded,
    })
}

fn ports(u: &std::net::UdpSocket, t: &std::net::TcpListener) -> io::Result<ProxyPorts> {
    Ok(ProxyPorts {
        udp: u.local_addr()?.port(),
        tcp: t.local_addr()?.port(),
    })
}

impl ContainerProxy {
    /// Opens the listeners inside `netns` and starts serving. `embedded`: the container
    /// resolves through Docker's embedded resolver (127.0.0.11 in its resolv.conf). Returns
    /// the proxy and the redirect its table needs. Must run inside the tokio runtime.
    pub fn start(
        netns: &Netns,
        container: &str,
        short_id: &str,
        allow: Allowlist,
        embedded: bool,
        shared: Arc<Shared>,
    ) -> Result<Arc<ContainerProxy>, ProxyError> {
        let sock_err = |source| ProxyError::Sockets {
            netns: netns.to_string(),
            source,
        };
        let socks = netns
            .run(move || open_sockets(embedded))
            .map_err(sock_err)?;
        let redirect = DnsRedirect {
            v4: Some(ports(&socks.udp4, &socks.tcp4).map_err(sock_err)?),
            v6: match &socks.v6 {
                Some((u, t)) => Some(ports(u, t).map_err(sock_err)?),
                None => None,
            },
        };
        let fw = NsFirewall::open(netns)?;
        let embedded = match socks.embedded {
            Some(s) => Some(UdpExchange::new(s, DOCKER_DNS).map_err(sock_err)?),
            None => None,
        };
        let proxy = Arc::new(ContainerProxy {
            container: container.to_string(),
            short_id: short_id.to_string(),
            allow: ArcSwap::from_pointee(allow),
            shared,
            state: Mutex::new(State {
                learned: Learned::default(),
                fw,
            }),
            embedded,
            embedded_in_flight: Mutex::new(HashMap::new()),
            redirect,
            stats: Stats::default(),
            log_limit: Mutex::new(LogLimit::new()),
            recent: Mutex::new(Recent::default()),
            tunnel: Mutex::new(TunnelDetector::default()),
            tasks: Mutex::new(Vec::new()),
        });
        let mut tasks = Vec::new();
        let mut udp = vec![socks.udp4];
        let mut tcp = vec![socks.tcp4];
        if let Some((u, t)) = socks.v6 {
            udp.push(u);
            tcp.push(t);
        }
        for u in udp {
            u.set_nonblocking(true).map_err(sock_err)?;
            let u = UdpSocket::from_std(u).map_err(sock_err)?;
            // The task holds a weak reference: dropping the proxy ends it.
            tasks.push(tokio::spawn(serve_udp(Arc::downgrade(&proxy), u)));
        }
        for t in tcp {
            t.set_nonblocking(true).map_err(sock_err)?;
            let t = TcpListener::from_std(t).map_err(sock_err)?;
            tasks.push(tokio::spawn(serve_tcp(Arc::downgrade(&proxy), t)));
        }
        *lock(&proxy.tasks) = tasks;
        Ok(proxy)
    }

    /// Where the table's DNS chain must send this container's queries.
    pub fn redirect(&self) -> DnsRedirect {
        self.redirect
    }

    /// The settings and forwarder this proxy shares with the others.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn has_embedded(&self) -> bool {
        self.embedded.is_some()
    }

    /// Swaps in a new allowlist (reload). Names it no longer allows are refused from now on;
    /// their addresses leave the kernel when the caller rebuilds the table.
    pub fn set_allowlist(&self, allow: Allowlist) {
        self.allow.store(Arc::new(allow));
    }

    /// Writes the table with `apply`, giving it every element the proxy has let through and
    /// the current allowlist still allows, while no query can add one: the table and the
    /// proxy's record of it stay the same.
    pub fn with_elements<T>(&self, apply: impl FnOnce(Vec<AddrElem>) -> T) -> T {
        let allow = self.allow.load();
        let mut state = lock(&self.state);
        let elems = state.learned.rebuild(&allow, Instant::now());
        apply(elems)
    }

    pub fn stats(&self) -> StatsSnapshot {
        let s = &self.stats;
        StatsSnapshot {
            queries: s.queries.load(Ordering::Relaxed),
            forwarded: s.forwarded.load(Ordering::Relaxed),
            refused: s.refused.load(Ordering::Relaxed),
            servfail: s.servfail.load(Ordering::Relaxed),
            stripped: s.stripped.load(Ordering::Relaxed),
            capped: s.capped.load(Ordering::Relaxed),
        }
    }

    /// The names resolved through this proxy that still have live addresses.
    pub fn resolved(&self) -> Vec<ResolvedName> {
        let now = Instant::now();
        let mut state = lock(&self.state);
        state.learned.prune(now);
        state
            .learned
            .names(now)
            .into_iter()
            .map(|(name, e, live)| ResolvedName {
                name,
                queries: e.queries,
                last_query_secs_ago: now.saturating_duration_since(e.last_query).as_secs(),
                addrs: live.into_iter().map(|(a, d)| (a, d.as_secs())).collect(),
            })
            .collect()
    }

    /// (name, address, time left) of every live address, and (name, address, how long ago)
    /// of those that expired lately: for `explain`.
    pub fn addresses(&self) -> (Vec<NamedAddr>, Vec<NamedAddr>) {
        let now = Instant::now();
        let mut state = lock(&self.state);
        state.learned.prune(now);
        let live = state
            .learned
            .names(now)
            .into_iter()
            .flat_map(|(n, _, addrs)| addrs.into_iter().map(move |(a, left)| (n.clone(), a, left)))
            .collect();
        (live, state.learned.expired(now))
    }

    /// The names `addr` was last answered for (for denial events and `explain`).
    pub fn names_of(&self, addr: IpAddr) -> Vec<String> {
        lock(&self.state).learned.names_of(addr, Instant::now())
    }

    fn log_allowed(&self) -> Option<u64> {
        lock(&self.log_limit).allow(Instant::now())
    }

    /// The last DNS events of this container (oldest first).
    pub fn recent_events(&self) -> Recent {
        lock(&self.recent).clone()
    }

    /// Feeds a queried name to the tunnelling detector; a suspicion is logged (warn) and kept
    /// as an event. At most one per parent domain, reason and minute, so no rate limit.
    fn watch(&self, name: &str) {
        let found = lock(&self.tunnel).observe(name, Instant::now().into_std());
        let Some(s) = found else { return };
        let window = lock(&self.tunnel).settings().window;
        let detail = s.describe(window);
        tracing::warn!(container = %self.container, id = %self.short_id, parent = %s.parent(),
            name = %name, event = "dns-tunnel", "{detail}");
        lock(&self.recent).push(Event::dns(
            EventKind::DnsTunnel,
            s.parent(),
            detail,
            std::time::SystemTime::now(),
        ));
    }

    /// Answers one query (raw bytes); `None` means no answer at all (not even a header).
    pub async fn handle(&self, query: &[u8], client: SocketAddr, tcp: bool) -> Option<Vec<u8>> {
        self.stats.queries.fetch_add(1, Ordering::Relaxed);
        let msg = match Message::from_vec(query) {
            Ok(m) => m,
            Err(_) => {
                // Garbage: a FORMERR if there is at least a header to answer.
                return formerr(query);
            }
        };
        let allow = self.allow.load_full();
        let decision = allow::decide(&allow, &msg, self.embedded.is_some());
        let (route, name, would_refuse) = match decision {
            Decision::Refuse { name, why } => {
                if let Some(n) = name.as_deref() {
                    self.watch(n);
                }
                return Some(self.refuse(&msg, name.as_deref(), why));
            }
            Decision::Forward {
                route,
                name,
                would_refuse,
                ..
            } => (route, name, would_refuse),
        };
        self.watch(&name);
        let Some(q) = msg.queries().first().cloned() else {
            return Some(self.refuse(&msg, None, Refusal::Malformed));
        };
        let qtype = q.query_type();
        // A query for a name that is out to the embedded resolver, coming from the
        // namespace's own address (not loopback): the embedded resolver forwarding it on.
        if route == Route::Upstream
            && !client.ip().is_loopback()
            && lock(&self.embedded_in_flight).contains_key(&(name.clone(), qtype))
        {
            return Some(self.refuse(&msg, Some(&name), Refusal::Forbidden));
        }
        if would_refuse {
            if let Some(suppressed) = self.log_allowed() {
                tracing::info!(container = %self.container, id = %self.short_id, name = %name,
                    qtype = %qtype, suppressed, "report mode: DNS query would be refused; forwarded");
            }
        }
        self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        let reply = match self.forward(route, &name, &msg, query, tcp).await {
            Ok(r) => r,
            Err(e) => {
                self.stats.servfail.fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) = self.log_allowed() {
                    tracing::warn!(container = %self.container, id = %self.short_id, name = %name,
                        error = %e, suppressed, "DNS forward failed; answering SERVFAIL");
                }
                return Some(error_reply(&msg, ResponseCode::ServFail));
            }
        };
        Some(
            self.release(&allow, &msg, q.name(), &name, route, reply)
                .await,
        )
    }

    async fn forward(
        &self,
        route: Route,
        name: &str,
        msg: &Message,
        raw: &[u8],
        tcp: bool,
    ) -> Result<Vec<u8>, ExchangeError> {
        let q = msg.queries().first();
        let accept = |reply: &[u8]| judge(q, reply);
        match (route, &self.embedded) {
            (Route::Embedded, Some(ex)) => {
                let key = (
                    name.to_string(),
                    q.map_or(RecordType::A, |q| q.query_type()),
                );
                *lock(&self.embedded_in_flight)
                    .entry(key.clone())
                    .or_insert(0) += 1;
                let timeout = self.shared.forwarder.load().timeout();
                let r = ex.ask(raw, timeout).await;
                {
                    let mut inflight = lock(&self.embedded_in_flight);
                    if let Some(n) = inflight.get_mut(&key) {
                        *n -= 1;
                        if *n == 0 {
                            inflight.remove(&key);
                        }
                    }
                }
                let reply = r?;
                match accept(&reply) {
                    Verdict::Bogus => Err(ExchangeError::Io {
                        server: DOCKER_DNS,
                        source: io::Error::new(
                            io::ErrorKind::InvalidData,
                            "reply does not answer the question",
                        ),
                    }),
                    _ => Ok(reply),
                }
            }
            _ => {
                let fwd = self.shared.forwarder.load_full();
                fwd.ask(raw, tcp, accept).await
            }
        }
    }

    /// Filters the reply, writes its addresses to the sets, and only then returns it.
    async fn release(
        &self,
        allow: &Allowlist,
        query: &Message,
        qname: &Name,
        name: &str,
        route: Route,
        raw: Vec<u8>,
    ) -> Vec<u8> {
        let settings = self.shared.settings.load();
        let mut reply = match Message::from_vec(&raw) {
            Ok(m) => m,
            Err(_) => {
                self.stats.servfail.fetch_add(1, Ordering::Relaxed);
                return error_reply(query, ResponseCode::ServFail);
            }
        };
        let filtered = filter_reply(
            &mut reply,
            qname,
            &FilterSettings {
                allow,
                from_embedded: route == Route::Embedded,
                report_only: allow.mode == Mode::Report,
                max_addrs: settings.max_addrs,
                max_ttl: settings.max_ttl,
            },
        );
        if !filtered.stripped.is_empty() {
            self.stats
                .stripped
                .fetch_add(filtered.stripped.len() as u64, Ordering::Relaxed);
            if let Some(suppressed) = self.log_allowed() {
                let list: Vec<String> = filtered
                    .stripped
                    .iter()
                    .map(|(a, k)| format!("{a} ({})", k.as_str()))
                    .collect();
                tracing::warn!(container = %self.container, id = %self.short_id, name = %name,
                    stripped = ?list, report_only = allow.mode == Mode::Report, suppressed,
                    "DNS answer points inside (rebinding guard)");
            }
        }
        if filtered.capped > 0 {
            self.stats.capped.fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = self.log_allowed() {
                tracing::warn!(container = %self.container, id = %self.short_id, name = %name,
                    kept = filtered.addrs.len(), dropped = filtered.capped, suppressed,
                    "DNS answer has more addresses than dns.max_addrs_per_name; the rest were dropped");
            }
        }
        if !filtered.addrs.is_empty() {
            if let Err(e) = self.insert(allow, name, &filtered.addrs, settings.life) {
                self.stats.servfail.fetch_add(1, Ordering::Relaxed);
                tracing::error!(container = %self.container, id = %self.short_id, name = %name,
                    error = %e, "adding answered addresses to the sets failed; answering SERVFAIL");
                return error_reply(query, ResponseCode::ServFail);
            }
        } else {
            lock(&self.state).learned.touch(name, Instant::now());
        }
        let mut out = if filtered.modified {
            match reply.to_vec() {
                Ok(v) => v,
                Err(_) => return error_reply(query, ResponseCode::ServFail),
            }
        } else {
            raw
        };
        if out.len() >= 2 {
            out[..2].copy_from_slice(&query.id().to_be_bytes());
        }
        out
    }

    /// Writes the elements of an answer (under the lock that table replaces take too).
    fn insert(
        &self,
        allow: &Allowlist,
        name: &str,
        addrs: &[(IpAddr, u32)],
        life: Lifetimes,
    ) -> Result<(), FirewallError> {
        let now = Instant::now();
        let mut state = lock(&self.state);
        let plan = state.learned.plan(allow, name, addrs, life, now);
        state.fw.add_addrs(&plan)?;
        state.learned.commit(name, addrs, &plan, life, now);
        Ok(())
    }

    fn refuse(&self, msg: &Message, name: Option<&str>, why: Refusal) -> Vec<u8> {
        let code = match why {
            Refusal::NotAllowed | Refusal::Quarantined => {
                match self.shared.settings.load().refuse_with {
                    RefuseWith::Refused => ResponseCode::Refused,
                    RefuseWith::NxDomain => ResponseCode::NXDomain,
                }
            }
            Refusal::NotImplemented => ResponseCode::NotImp,
            Refusal::Malformed => ResponseCode::FormErr,
            Refusal::Forbidden => ResponseCode::Refused,
        };
        self.stats.refused.fetch_add(1, Ordering::Relaxed);
        let name = name.unwrap_or("-");
        match self.log_allowed() {
            Some(suppressed) => {
                let qtype = msg
                    .queries()
                    .first()
                    .map(|q| q.query_type().to_string())
                    .unwrap_or_default();
                tracing::info!(container = %self.container, id = %self.short_id,
                    name = %name, qtype = %qtype, reason = why.as_str(), suppressed,
                    event = "dns-refused", "DNS query refused");
                lock(&self.recent).push(Event::dns(
                    EventKind::DnsRefused,
                    name,
                    format!("{} ({qtype})", why.as_str()),
                    std::time::SystemTime::now(),
                ));
            }
            None => lock(&self.recent).add_suppressed(1),
        }
        error_reply(msg, code)
    }
}

/// Judges an upstream reply to question `q`.
fn judge(q: Option<&hickory_proto::op::Query>, reply: &[u8]) -> Verdict {
    let Ok(m) = Message::from_vec(reply) else {
        return Verdict::Bogus;
    };
    let same = match (q, m.queries()) {
        (Some(q), [r]) => {
            r.name().eq_ignore_root(q.name())
                && r.query_type() == q.query_type()
                && r.query_class() == q.query_class()
        }
        _ => false,
    };
    if m.message_type() != MessageType::Response || !same {
        return Verdict::Bogus;
    }
    match m.response_code() {
        ResponseCode::ServFail | ResponseCode::Refused => Verdict::TryNext,
        _ => Verdict::Good,
    }
}

/// A reply with no records: the query's id, question and RD bit, and `code`.
pub fn error_reply(query: &Message, code: ResponseCode) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .set_response_code(code);
    if let Some(q) = query.queries().first() {
        m.add_query(q.clone());
    }
    m.to_vec().unwrap_or_else(|_| header_only(query.id(), code))
}

/// FORMERR for bytes that do not parse, if they hold at least a header.
fn formerr(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.len() < 12 || raw[2] & 0x80 != 0 {
        // Too short to answer, or a response: never answer responses (no reflection loops).
        return None;
    }
    Some(header_only(
        u16::from_be_bytes([raw[0], raw[1]]),
        ResponseCode::FormErr,
    ))
}

fn header_only(id: u16, code: ResponseCode) -> Vec<u8> {
    let mut h = vec![0u8; 12];
    h[..2].copy_from_slice(&id.to_be_bytes());
    h[2] = 0x80; // QR
    h[3] = 0x80 | (u16::from(code) as u8 & 0x0f); // RA, RCODE
    h
}

async fn serve_udp(proxy: std::sync::Weak<ContainerProxy>, sock: UdpSocket) {
    let sock = Arc::new(sock);
    let limit = Arc::new(Semaphore::new(MAX_UDP_IN_FLIGHT));
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(_) => continue,
        };
        let Some(p) = proxy.upgrade() else { return };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            continue; // overloaded: drop, the client retries
        };
        let Some(query) = buf.get(..n).map(<[u8]>::to_vec) else {
            continue;
        };
        let sock = sock.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Some(reply) = p.handle(&query, from, false).await {
                let _ = sock.send_to(&reply, from).await;
            }
        });
    }
}

async fn serve_tcp(proxy: std::sync::Weak<ContainerProxy>, listener: TcpListener) {
    let limit = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        let Ok((stream, from)) = listener.accept().await else {
            continue;
        };
        let Some(p) = proxy.upgrade() else { return };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            continue; // too many connections: this one is closed at once
        };
        tokio::spawn(async move {
            let _permit = permit;
            serve_tcp_client(p, stream, from).await;
        });
    }
}

async fn serve_tcp_client(p: Arc<ContainerProxy>, mut stream: TcpStream, from: SocketAddr) {
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, stream.read_u16()).await {
            Ok(Ok(n)) => usize::from(n),
            _ => return,
        };
        let mut query = vec![0u8; len];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut query)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let Some(reply) = p.handle(&query, from, true).await else {
            return;
        };
        let Ok(n) = u16::try_from(reply.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&n.to_be_bytes());
        framed.extend_from_slice(&reply);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{OpCode, Query};

    #[test]
    fn error_replies_echo_the_question_and_formerr_needs_a_header() {
        let mut q = Message::new();
        q.set_id(0x1234)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true)
            .add_query(Query::query(
                Name::from_ascii("evil.test").unwrap(),
                RecordType::TXT,
            ));
        let r = Message::from_vec(&error_reply(&q, ResponseCode::Refused)).unwrap();
        assert_eq!(r.id(), 0x1234);
        assert_eq!(r.response_code(), ResponseCode::Refused);
        assert!(r.queries()[0].name().eq_ignore_root(q.queries()[0].name()));
        assert_eq!(r.queries()[0].query_type(), RecordType::TXT);
        assert!(r.answers().is_empty());
        assert_eq!(formerr(&[1, 2, 3]), None);
        let f = formerr(&[0xab, 0xcd, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xff]).unwrap();
        let m = Message::from_vec(&f).unwrap();
        assert_eq!((m.id(), m.response_code()), (0xabcd, ResponseCode::FormErr));
        // A response is never answered.
        assert_eq!(formerr(&[0, 1, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0]), None);
    }

    #[tokio::test(start_paused = true)]
    async fn log_limit_allows_a_burst_then_counts_what_it_drops() {
        let mut l = LogLimit::new();
        let now = Instant::now();
        for _ in 0..LOG_BURST {
            assert_eq!(l.allow(now), Some(0));
        }
        assert_eq!(l.allow(now), None);
        assert_eq!(l.allow(now), None);
        assert_eq!(l.allow(now + LOG_EVERY), Some(2));
    }
}

/// The proxy's message path without sockets, for the fuzz target (`fuzz/`) and the
/// hostile-input test: `data` is split into a query and an upstream reply, and both go
/// through everything the proxy does to bytes (parse, decide, filter, judge, encode). It must
/// never panic, whatever the bytes.
#[doc(hidden)]
pub fn message_path(data: &[u8]) -> usize {
    use crate::policy::{ContainerPolicy, Host, PortRange, Proto, Rule, RuleSource};
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let (query, reply) = data.split_at(split);
    let policy = ContainerPolicy {
        rules: vec![
            Rule {
                host: Host::Domain("api.example.com".into()),
                ports: vec![PortRange::single(443)],
                proto: Proto::Tcp,
                source: RuleSource::Label("egressd.allow".into()),
            },
            Rule {
                host: Host::Wildcard("example.org".into()),
                ports: vec![PortRange {
                    first: 8000,
                    last: 8003,
                }],
                proto: Proto::Udp,
                source: RuleSource::Label("egressd.allow".into()),
            },
        ],
        ..Default::default()
    };
    let allow = Allowlist::from_policy(
        &policy,
        &["10.0.0.0/8".parse().unwrap_or_else(|_| {
            ipnetwork::IpNetwork::V4(ipnetwork::Ipv4Network::from(std::net::Ipv4Addr::LOCALHOST))
        })],
    );
    let mut out = formerr(query).map_or(0, |v| v.len());
    let Ok(q) = Message::from_vec(query) else {
        return out;
    };
    match allow::decide(&allow, &q, true) {
        Decision::Refuse { .. } => out += error_reply(&q, ResponseCode::Refused).len(),
        Decision::Forward { name, .. } => {
            let _ = judge(q.queries().first(), reply);
            let Some(qn) = q.queries().first().map(|x| x.name().clone()) else {
                return out;
            };
            if let Ok(mut r) = Message::from_vec(reply) {
                for from_embedded in [false, true] {
                    let f = filter_reply(
                        &mut r,
                        &qn,
                        &FilterSettings {
                            allow: &allow,
                            from_embedded,
                            report_only: false,
                            max_addrs: 4,
                            max_ttl: 300,
                        },
                    );
                    let learned = Learned::default();
                    let life = Lifetimes {
                        min_ttl: Duration::from_secs(5),
                        grace: Duration::from_secs(60),
                    };
                    out += learned
                        .plan(&allow, &name, &f.addrs, life, Instant::now())
                        .len();
                    out += r.to_vec().map_or(0, |v| v.len());
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod hostile_input {
    use super::*;
    use hickory_proto::op::{OpCode, Query};
    use hickory_proto::rr::rdata::{A, CNAME};
    use hickory_proto::rr::{RData, Record};
    use rand::{Rng, SeedableRng};

    fn seeds() -> Vec<Vec<u8>> {
        let name = |s: &str| Name::from_ascii(s).unwrap();
        let mut q = Message::new();
        q.set_id(1)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .add_query(Query::query(name("api.example.com"), RecordType::A));
        let qb = q.to_vec().unwrap();
        let mut r = q.clone();
        r.set_message_type(MessageType::Response)
            .add_answer(Record::from_rdata(
                name("api.example.com"),
                60,
                RData::CNAME(CNAME(name("x.cdn.test"))),
            ))
            .add_answer(Record::from_rdata(
                name("x.cdn.test"),
                30,
                RData::A(A("203.0.113.5".parse().unwrap())),
            ));
        let rb = r.to_vec().unwrap();
        let mut both = vec![qb.len() as u8];
        both.extend_from_slice(&qb);
        both.extend_from_slice(&rb);
        vec![both]
    }

    /// Deterministic mutations of a real query + answer (bit flips, truncation, byte
    /// splices, compression pointers): the message path never panics. The cargo-fuzz target
    /// in fuzz/ runs the same function for as long as one likes.
    #[tokio::test(start_paused = true)]
    async fn mutated_messages_never_panic() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed_d115);
        let seeds = seeds();
        assert!(message_path(&seeds[0]) > 0, "the seed takes the whole path");
        for _ in 0..30_000 {
            let mut m = seeds[0].clone();
            for _ in 0..rng.random_range(1..8) {
                let i = rng.random_range(0..m.len());
                match rng.random_range(0..5) {
                    0 => m[i] ^= 1 << rng.random_range(0..8),
                    1 => m.truncate(i.max(1)),
                    2 => m[i] = 0xc0, // compression pointer
                    3 => {
                        let b: u8 = rng.random();
                        m.insert(i, b);
                    }
                    _ => m[i] = rng.random(),
                }
            }
            let _ = message_path(&m);
        }
        for len in 0..64 {
            let garbage: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            let _ = message_path(&garbage);
        }
    }
}
