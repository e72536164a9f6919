//! `resolve` mode: one shared cache of what each allowed domain resolves to, and the upstream
//! DNS client that feeds it.
//!
//! # Why one cache for every container
//! The design promises "one query per domain for all containers that allow it": a hundred
//! containers that allow `api.openai.com` must cost the upstream one query per refresh, not a
//! hundred. So the cache is keyed by domain only; which container gets which domain is the
//! daemon's business (it fans an answer out to the sets of every container that allows it).
//!
//! # Layout
//! - [`Cache`]: pure bookkeeping with no I/O. Every method takes `now` (a
//!   [`tokio::time::Instant`]), so the TTL arithmetic is tested with tokio's paused clock
//!   instead of sleeps.
//! - [`Resolver`]: the I/O. It asks the configured upstreams for A and AAAA over UDP (TCP when
//!   the answer is truncated) and turns the reply into an [`Answer`].
//! - [`parse_resolv_conf`]: the host's nameservers, for when the config names no upstream.
//!
//! # Fail closed
//! A domain that has never been answered has no address, so it opens nothing. A failed refresh
//! never extends anything: last-known addresses keep the expiry they already had and then age
//! out, exactly like the per-element timeouts in the kernel sets.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hickory_proto::ProtoError;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::Instant;

use crate::firewall::ResolvedAddr;

/// A query handed out by [`Cache::take_due`] that has not been reported back (with
/// [`Cache::on_answer`] or [`Cache::on_failure`]) after this long is taken as lost and becomes
/// due again. [`Resolver::resolve`] always returns well before it (see
/// [`ResolverConfig::deadline`]), so this only matters if the caller drops a task.
pub const IN_FLIGHT_LIMIT: Duration = Duration::from_secs(60);

/// A sensible [`TtlSettings::failure_retry`] when the config has none.
pub const DEFAULT_FAILURE_RETRY: Duration = Duration::from_secs(5);

/// How long answers are trusted, and how long their addresses stay allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TtlSettings {
    /// Answers with a shorter TTL are refreshed after this long instead (protects the upstream
    /// from TTL-0 answers).
    pub min_ttl: Duration,
    /// Answers with a longer TTL are refreshed after this long instead (a changed address is
    /// noticed within this bound).
    pub max_ttl: Duration,
    /// How long an address stays allowed after its (clamped) TTL ran out, so live connections
    /// and clients with slightly stale caches are not cut at the exact second of a refresh.
    pub grace: Duration,
    /// Delay before a failed refresh is tried again. It is capped at `min_ttl` so a failing
    /// domain is retried at least as often as the busiest healthy one, while its last-known
    /// addresses (which live at least `min_ttl + grace`) are still there.
    pub failure_retry: Duration,
}

impl TtlSettings {
    /// `ttl` bounded by `[min_ttl, max_ttl]`. Written with `max`/`min` rather than
    /// `Duration::clamp`, which panics when `min_ttl > max_ttl`; the config rejects that, but a
    /// daemon must not panic on it either (`max_ttl` wins).
    fn clamp(&self, ttl: Duration) -> Duration {
        ttl.max(self.min_ttl).min(self.max_ttl)
    }

    fn retry_delay(&self) -> Duration {
        self.failure_retry.min(self.min_ttl)
    }
}

/// What an upstream said about one domain: the union of its A and AAAA addresses, and how
/// long that may be trusted. A TTL of zero means "unknown"; the cache raises it to `min_ttl`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub addrs: Vec<IpAddr>,
    pub ttl: Duration,
}

/// Lower-case, without the trailing dot: the one spelling the cache (and the policy) use.
pub fn normalize_domain(domain: &str) -> String {
    domain
        .strip_suffix('.')
        .unwrap_or(domain)
        .to_ascii_lowercase()
}

/// One wanted domain.
#[derive(Debug, Clone)]
struct Entry {
    /// Each address ever answered and not yet expired, with the instant it stops being
    /// allowed. Kept per address (not per answer) so an address that drops out of the answer
    /// ages out on its own schedule instead of being cut at once.
    addrs: BTreeMap<IpAddr, Instant>,
    /// When the next query is due (now, for a domain never asked).
    next_refresh: Instant,
    /// Set while a query handed out by `take_due` has not been reported back, so the daemon's
    /// loop does not ask again for the same name meanwhile.
    in_flight_since: Option<Instant>,
    /// Why the last query failed; cleared by the next answer. Shown by `status`.
    last_error: Option<String>,
    /// When the last answer arrived, for `status`.
    last_answer: Option<Instant>,
    /// Queries handed out for this domain since it became wanted (the benchmark's measure).
    queries: u64,
    /// Addresses that aged out lately, with when (for `explain`); bounded.
    expired: BTreeMap<IpAddr, Instant>,
}

/// Expired addresses remembered per domain, and for how long.
const MAX_EXPIRED: usize = 64;
const KEEP_EXPIRED: Duration = Duration::from_secs(3600);

impl Entry {
    fn new(now: Instant) -> Self {
        Entry {
            addrs: BTreeMap::new(),
            next_refresh: now,
            in_flight_since: None,
            last_error: None,
            last_answer: None,
            queries: 0,
            expired: BTreeMap::new(),
        }
    }

    fn due_at(&self) -> Instant {
        match self.in_flight_since {
            Some(since) => since + IN_FLIGHT_LIMIT,
            None => self.next_refresh,
        }
    }

    fn prune(&mut self, now: Instant) {
        for (addr, expiry) in self.addrs.iter().filter(|(_, e)| **e <= now) {
            self.expired.insert(*addr, *expiry);
        }
        self.addrs.retain(|_, expiry| *expiry > now);
        self.expired.retain(|a, at| {
            now.saturating_duration_since(*at) < KEEP_EXPIRED && !self.addrs.contains_key(a)
        });
        while self.expired.len() > MAX_EXPIRED {
            let oldest = self
                .expired
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(a, _)| *a);
            match oldest {
                Some(a) => self.expired.remove(&a),
                None => break,
            };
        }
    }

    fn live(&self, now: Instant) -> impl Iterator<Item = ResolvedAddr> + '_ {
        self.addrs
            .iter()
            .filter(move |(_, expiry)| **expiry > now)
            .map(move |(addr, expiry)| ResolvedAddr {
                addr: *addr,
                timeout: *expiry - now,
            })
    }
}

/// The shared resolve-mode cache. Pure: it never does I/O and never reads the clock.
///
/// The daemon's loop, in short:
/// 1. `want(all domains of all managed containers)` whenever containers come or go;
/// 2. `take_due(now)` and resolve each returned name (e.g. with [`Resolver::resolve`]);
/// 3. report each result with `on_answer` (add the returned addresses to the kernel sets of
///    every container that allows the domain) or `on_failure`;
/// 4. sleep until `next_due()` or the next result or container change.
#[derive(Debug, Clone)]
pub struct Cache {
    settings: TtlSettings,
    entries: BTreeMap<String, Entry>,
    /// Queries handed out over the cache's life, dropped domains included.
    total_queries: u64,
}

impl Cache {
    pub fn new(settings: TtlSettings) -> Self {
        Cache {
            settings,
            entries: BTreeMap::new(),
            total_queries: 0,
        }
    }

    pub fn settings(&self) -> TtlSettings {
        self.settings
    }

    /// Sets the full set of domains any container needs now. New ones are due at once; ones no
    /// longer wanted are forgotten (their kernel elements still age out by their own timeout,
    /// and no container references them any more). Names are normalized.
    pub fn want(&mut self, domains: impl IntoIterator<Item = String>, now: Instant) {
        let wanted: BTreeSet<String> = domains.into_iter().map(|d| normalize_domain(&d)).collect();
        self.entries.retain(|d, _| wanted.contains(d));
        for domain in wanted {
            self.entries
                .entry(domain)
                .or_insert_with(|| Entry::new(now));
        }
    }

    /// The domains currently wanted, sorted.
    pub fn domains(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Domains whose refresh is due at `now` and that have no query in flight (or whose query
    /// has been in flight longer than [`IN_FLIGHT_LIMIT`]). Does not change anything: use
    /// [`Cache::take_due`] to actually start queries.
    pub fn due(&self, now: Instant) -> Vec<String> {
        self.entries
            .iter()
            .filter(|(_, e)| e.due_at() <= now)
            .map(|(d, _)| d.clone())
            .collect()
    }

    /// Like [`Cache::due`], and marks each returned domain as in flight (counting one upstream
    /// query for it), so it is not returned again until it is answered, fails, or is lost.
    /// Also drops expired addresses.
    pub fn take_due(&mut self, now: Instant) -> Vec<String> {
        let mut out = Vec::new();
        for (domain, entry) in &mut self.entries {
            entry.prune(now);
            if entry.due_at() <= now {
                entry.in_flight_since = Some(now);
                entry.queries += 1;
                self.total_queries += 1;
                out.push(domain.clone());
            }
        }
        out
    }

    /// When the next domain becomes due (possibly in the past), or `None` if nothing is wanted.
    pub fn next_due(&self) -> Option<Instant> {
        self.entries.values().map(Entry::due_at).min()
    }

    /// Records an answer for `domain` received at `now`. The next refresh is at
    /// `now + clamp(ttl)`; each answered address is allowed until at least
    /// `now + clamp(ttl) + grace` (an expiry is only ever pushed out, never pulled in).
    /// Addresses of earlier answers that are missing now keep their old expiry.
    ///
    /// Returns the addresses of this answer with their remaining timeouts, for the caller to
    /// add to the kernel sets. An answer for a domain that is no longer wanted is ignored and
    /// returns nothing, so a late answer cannot open a dropped domain.
    pub fn on_answer(&mut self, domain: &str, answer: &Answer, now: Instant) -> Vec<ResolvedAddr> {
        let Some(entry) = self.entries.get_mut(&normalize_domain(domain)) else {
            return Vec::new();
        };
        let ttl = self.settings.clamp(answer.ttl);
        let expiry = now + ttl + self.settings.grace;
        entry.in_flight_since = None;
        entry.last_error = None;
        entry.last_answer = Some(now);
        entry.next_refresh = now + ttl;
        entry.prune(now);
        let answered: BTreeSet<IpAddr> = answer.addrs.iter().copied().collect();
        answered
            .into_iter()
            .map(|addr| {
                let e = entry.addrs.entry(addr).or_insert(expiry);
                *e = (*e).max(expiry);
                ResolvedAddr {
                    addr,
                    timeout: *e - now,
                }
            })
            .collect()
    }

    /// Records a failed query. Last-known addresses stay until their own expiry (never
    /// extended) and nothing new is allowed; the domain is retried after
    /// `min(failure_retry, min_ttl)`.
    pub fn on_failure(&mut self, domain: &str, error: &dyn std::fmt::Display, now: Instant) {
        let Some(entry) = self.entries.get_mut(&normalize_domain(domain)) else {
            return;
        };
        entry.in_flight_since = None;
        entry.last_error = Some(error.to_string());
        entry.next_refresh = now + self.settings.retry_delay();
        entry.prune(now);
    }

    /// Addresses of `domain` that expired within the last hour and were not answered again,
    /// with how long ago (for `explain`). Prunes first.
    pub fn expired(&mut self, domain: &str, now: Instant) -> Vec<(IpAddr, Duration)> {
        let Some(e) = self.entries.get_mut(&normalize_domain(domain)) else {
            return Vec::new();
        };
        e.prune(now);
        e.expired
            .iter()
            .map(|(a, at)| (*a, now.saturating_duration_since(*at)))
            .collect()
    }

    /// Whether `addr` is an address of `domain` now, or was one lately (expired within the
    /// last hour): attribution of denied packets and of per-element counters.
    pub fn answered(&self, domain: &str, addr: IpAddr, now: Instant) -> bool {
        self.entries
            .get(&normalize_domain(domain))
            .is_some_and(|e| {
                e.live(now).any(|a| a.addr == addr) || e.expired.iter().any(|(a, _)| *a == addr)
            })
    }

    /// Why the last query for `domain` failed, if it did.
    pub fn last_error(&self, domain: &str) -> Option<String> {
        self.entries
            .get(&normalize_domain(domain))
            .and_then(|e| e.last_error.clone())
    }

    /// The addresses of `domain` still allowed at `now`, with their remaining timeouts, sorted
    /// by address. Empty for an unknown domain (closed, not open).
    pub fn current(&self, domain: &str, now: Instant) -> Vec<ResolvedAddr> {
        self.entries
            .get(&normalize_domain(domain))
            .map(|e| e.live(now).collect())
            .unwrap_or_default()
    }

    /// [`Cache::current`] for every wanted domain, in the shape
    /// [`crate::firewall::Ruleset::from_policy`] takes. Domains with no live address are left
    /// out.
    pub fn resolved_map(&self, now: Instant) -> BTreeMap<String, Vec<ResolvedAddr>> {
        self.entries
            .iter()
            .map(|(d, e)| (d.clone(), e.live(now).collect::<Vec<_>>()))
            .filter(|(_, addrs)| !addrs.is_empty())
            .collect()
    }

    /// Queries handed out for `domain` since it became wanted (0 if it is not wanted).
    pub fn queries(&self, domain: &str) -> u64 {
        self.entries
            .get(&normalize_domain(domain))
            .map_or(0, |e| e.queries)
    }

    /// Queries handed out over the cache's life.
    pub fn total_queries(&self) -> u64 {
        self.total_queries
    }

    /// Drops expired addresses of every domain (the other `&mut` methods prune the domains
    /// they touch; this is for a periodic sweep).
    pub fn prune(&mut self, now: Instant) {
        for entry in self.entries.values_mut() {
            entry.prune(now);
        }
    }

    /// Per-domain state for `egressd status`, sorted by domain.
    pub fn snapshot(&self, now: Instant) -> Vec<DomainStatus> {
        self.entries
            .iter()
            .map(|(domain, e)| DomainStatus {
                domain: domain.clone(),
                addrs: e
                    .live(now)
                    .map(|ra| AddrStatus {
                        addr: ra.addr,
                        remaining_secs: ceil_secs(ra.timeout),
                    })
                    .collect(),
                last_error: e.last_error.clone(),
                next_refresh_secs: ceil_secs(e.due_at().saturating_duration_since(now)),
                in_flight: e.in_flight_since.is_some(),
                last_answer_secs_ago: e
                    .last_answer
                    .map(|t| now.saturating_duration_since(t).as_secs()),
                queries: e.queries,
            })
            .collect()
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// One domain in [`Cache::snapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DomainStatus {
    pub domain: String,
    /// Addresses still allowed, sorted.
    pub addrs: Vec<AddrStatus>,
    /// Why the last query failed, if it did (cleared by the next answer).
    pub last_error: Option<String>,
    /// Seconds until the next query (0: due now).
    pub next_refresh_secs: u64,
    /// A query is out and not answered yet.
    pub in_flight: bool,
    /// Seconds since the last answer; `None` if never answered.
    pub last_answer_secs_ago: Option<u64>,
    /// Upstream queries for this domain since it became wanted.
    pub queries: u64,
}

/// One address in a [`DomainStatus`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AddrStatus {
    pub addr: IpAddr,
    /// Seconds until it is no longer allowed, rounded up.
    pub remaining_secs: u64,
}

// ---------------------------------------------------------------------------------------------
// I/O: the upstream client.
// ---------------------------------------------------------------------------------------------

/// Links of a CNAME chain followed before the answer is called malformed (loops included).
const MAX_CHAIN: usize = 16;

/// UDP payload size advertised with EDNS: the DNS flag day 2020 value, small enough not to
/// fragment on any path, large enough that most answers need no TCP retry.
const EDNS_PAYLOAD: u16 = 1232;

/// Errors of [`Resolver::resolve`]. Each names the domain and, where one was asked, the
/// upstream and the query type.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("{domain}: not a valid domain name: {source}")]
    InvalidName {
        domain: String,
        #[source]
        source: ProtoError,
    },
    #[error("{domain}: no upstream DNS server to ask")]
    NoUpstream { domain: String },
    #[error("{domain}: {qtype} query to {upstream} timed out after {after:?}")]
    Timeout {
        domain: String,
        upstream: SocketAddr,
        qtype: RecordType,
        after: Duration,
    },
    #[error("{domain}: {qtype} query to {upstream} over {transport}: {source}")]
    Io {
        domain: String,
        upstream: SocketAddr,
        qtype: RecordType,
        transport: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{domain}: {qtype} query to {upstream}: bad DNS message: {source}")]
    Proto {
        domain: String,
        upstream: SocketAddr,
        qtype: RecordType,
        #[source]
        source: ProtoError,
    },
    #[error("{domain}: {qtype} query to {upstream}: upstream answered {rcode}")]
    Rcode {
        domain: String,
        upstream: SocketAddr,
        qtype: RecordType,
        rcode: ResponseCode,
    },
    #[error(
        "{domain}: {qtype} query to {upstream}: CNAME chain loops or is longer than {MAX_CHAIN}"
    )]
    ChainTooLong {
        domain: String,
        upstream: SocketAddr,
        qtype: RecordType,
    },
    #[error("{domain}: no answer from any upstream within {after:?}")]
    Deadline { domain: String, after: Duration },
}

impl ResolveError {
    /// The domain that was being resolved.
    pub fn domain(&self) -> &str {
        match self {
            ResolveError::InvalidName { domain, .. }
            | ResolveError::NoUpstream { domain }
            | ResolveError::Timeout { domain, .. }
            | ResolveError::Io { domain, .. }
            | ResolveError::Proto { domain, .. }
            | ResolveError::Rcode { domain, .. }
            | ResolveError::ChainTooLong { domain, .. }
            | ResolveError::Deadline { domain, .. } => domain,
        }
    }

    /// The upstream that failed, when one was asked.
    pub fn upstream(&self) -> Option<SocketAddr> {
        match self {
            ResolveError::Timeout { upstream, .. }
            | ResolveError::Io { upstream, .. }
            | ResolveError::Proto { upstream, .. }
            | ResolveError::Rcode { upstream, .. }
            | ResolveError::ChainTooLong { upstream, .. } => Some(*upstream),
            _ => None,
        }
    }
}

/// How the [`Resolver`] asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverConfig {
    /// Recursive servers, tried in order: the next one is asked when one fails.
    pub upstreams: Vec<SocketAddr>,
    /// How long one query (one UDP exchange, or one TCP exchange after truncation) may take.
    pub attempt_timeout: Duration,
    /// Attempts per upstream when it times out (other failures move on at once).
    pub attempts: u32,
    /// Bound on one whole [`Resolver::resolve`] call. Kept below [`IN_FLIGHT_LIMIT`] so the
    /// cache never re-issues a query that is still running.
    pub deadline: Duration,
}

impl ResolverConfig {
    /// The defaults: 2 s per attempt, 2 attempts per upstream, 30 s in all.
    pub fn new(upstreams: Vec<SocketAddr>) -> Self {
        ResolverConfig {
            upstreams,
            attempt_timeout: Duration::from_secs(2),
            attempts: 2,
            deadline: IN_FLIGHT_LIMIT / 2,
        }
    }
}

/// The upstream DNS client of `resolve` mode.
///
/// Built on `hickory-proto` (messages only) over plain tokio sockets rather than on
/// `hickory-resolver`: we need the exact nameserver list, no cache of its own (ours decides
/// refreshes), the raw TTL of every record in the CNAME chain, the SOA minimum of negative
/// answers, and a count of what reached the upstream. The resolver crate hides or rewrites
/// each of those; building two messages and reading one back is less code than configuring
/// them away.
///
/// Each query uses a fresh socket on an ephemeral port, connected to the upstream (so only
/// its datagrams are read), and a random id; the reply must echo the id and the question.
#[derive(Debug)]
pub struct Resolver {
    config: ResolverConfig,
    /// DNS messages sent upstream (A and AAAA count separately, TCP retries too).
    sent: AtomicU64,
}

/// One query type's share of an [`Answer`].
#[derive(Debug, Default)]
struct TypeAnswer {
    addrs: Vec<IpAddr>,
    /// The minimum TTL of the records used (chain and addresses) when there are addresses;
    /// otherwise the negative-caching TTL from the SOA, if the upstream sent one.
    ttl: Option<u32>,
}

impl Resolver {
    /// A resolver with the default timeouts.
    pub fn new(upstreams: Vec<SocketAddr>) -> Self {
        Self::with_config(ResolverConfig::new(upstreams))
    }

    pub fn with_config(config: ResolverConfig) -> Self {
        Resolver {
            config,
            sent: AtomicU64::new(0),
        }
    }

    pub fn config(&self) -> &ResolverConfig {
        &self.config
    }

    /// DNS messages sent upstream so far.
    pub fn messages_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Asks for A and AAAA of `domain` (concurrently) and returns the union of the addresses.
    ///
    /// - TTL: the minimum TTL of the records used, i.e. the CNAME chain from `domain` and the
    ///   address records at its end. With no address at all (NXDOMAIN or no data), the
    ///   negative TTL from the SOA (`min(SOA ttl, SOA minimum)`) if present, else zero (which
    ///   the cache raises to `min_ttl`).
    /// - Failures: a timeout is retried on the same upstream up to `attempts` times; any other
    ///   failure (SERVFAIL, REFUSED, port unreachable, garbage) moves to the next upstream.
    ///   Only the query type that failed is asked again. When every upstream failed, the last
    ///   error is returned; each failure is also logged.
    pub async fn resolve(&self, domain: &str) -> Result<Answer, ResolveError> {
        let domain = normalize_domain(domain);
        match tokio::time::timeout(self.config.deadline, self.resolve_inner(&domain)).await {
            Ok(result) => result,
            Err(_) => Err(ResolveError::Deadline {
                domain,
                after: self.config.deadline,
            }),
        }
    }

    async fn resolve_inner(&self, domain: &str) -> Result<Answer, ResolveError> {
        let mut name = Name::from_ascii(domain).map_err(|source| ResolveError::InvalidName {
            domain: domain.to_string(),
            source,
        })?;
        // Absolute: never let anything append a search domain.
        name.set_fqdn(true);
        let mut v4: Option<TypeAnswer> = None;
        let mut v6: Option<TypeAnswer> = None;
        let mut last_err = None;
        for &upstream in &self.config.upstreams {
            for _ in 0..self.config.attempts.max(1) {
                let (need4, need6) = (v4.is_none(), v6.is_none());
                let (r4, r6) = tokio::join!(
                    async {
                        if need4 {
                            Some(self.query(&name, domain, upstream, RecordType::A).await)
                        } else {
                            None
                        }
                    },
                    async {
                        if need6 {
                            Some(self.query(&name, domain, upstream, RecordType::AAAA).await)
                        } else {
                            None
                        }
                    },
                );
                let mut retry_here = true;
                for (result, slot) in [(r4, &mut v4), (r6, &mut v6)] {
                    match result {
                        Some(Ok(answer)) => *slot = Some(answer),
                        Some(Err(err)) => {
                            tracing::warn!(%domain, %upstream, error = %err, "DNS query failed");
                            retry_here &= matches!(err, ResolveError::Timeout { .. });
                            last_err = Some(err);
                        }
                        None => {}
                    }
                }
                if let (Some(a), Some(b)) = (&v4, &v6) {
                    return Ok(merge(a, b));
                }
                if !retry_here {
                    break;
                }
            }
        }
        Err(last_err.unwrap_or_else(|| ResolveError::NoUpstream {
            domain: domain.to_string(),
        }))
    }

    /// One query of one type to one upstream: UDP, then TCP if the reply is truncated.
    async fn query(
        &self,
        name: &Name,
        domain: &str,
        upstream: SocketAddr,
        qtype: RecordType,
    ) -> Result<TypeAnswer, ResolveError> {
        let proto_err = |source| ResolveError::Proto {
            domain: domain.to_string(),
            upstream,
            qtype,
            source,
        };
        let io_err = |transport, source| ResolveError::Io {
            domain: domain.to_string(),
            upstream,
            qtype,
            transport,
            source,
        };
        let timeout_err = || ResolveError::Timeout {
            domain: domain.to_string(),
            upstream,
            qtype,
            after: self.config.attempt_timeout,
        };
        let id: u16 = rand::random();
        let request = build_query(id, name, qtype).to_vec().map_err(proto_err)?;

        self.sent.fetch_add(1, Ordering::Relaxed);
        let mut reply = tokio::time::timeout(
            self.config.attempt_timeout,
            udp_exchange(upstream, &request, id, name, qtype),
        )
        .await
        .map_err(|_| timeout_err())?
        .map_err(|e| io_err("udp", e))?;

        if reply.truncated() {
            self.sent.fetch_add(1, Ordering::Relaxed);
            let bytes = tokio::time::timeout(
                self.config.attempt_timeout,
                tcp_exchange(upstream, &request),
            )
            .await
            .map_err(|_| timeout_err())?
            .map_err(|e| io_err("tcp", e))?;
            reply = Message::from_vec(&bytes).map_err(proto_err)?;
            if !is_reply_to(&reply, id, name, qtype) {
                return Err(io_err(
                    "tcp",
                    io::Error::new(io::ErrorKind::InvalidData, "reply does not match the query"),
                ));
            }
        }

        match reply.response_code() {
            ResponseCode::NoError | ResponseCode::NXDomain => {}
            rcode => {
                return Err(ResolveError::Rcode {
                    domain: domain.to_string(),
                    upstream,
                    qtype,
                    rcode,
                });
            }
        }
        interpret(&reply, name, qtype).ok_or_else(|| ResolveError::ChainTooLong {
            domain: domain.to_string(),
            upstream,
            qtype,
        })
    }
}

fn build_query(id: u16, name: &Name, qtype: RecordType) -> Message {
    let mut msg = Message::new();
    msg.set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(name.clone(), qtype));
    let mut edns = Edns::new();
    edns.set_max_payload(EDNS_PAYLOAD);
    msg.set_edns(edns);
    msg
}

/// A reply is ours only if it echoes the id and the question (guards against stray or spoofed
/// datagrams on the same port).
fn is_reply_to(reply: &Message, id: u16, name: &Name, qtype: RecordType) -> bool {
    reply.id() == id
        && reply.message_type() == MessageType::Response
        && reply.queries().len() == 1
        && reply.queries()[0].query_type() == qtype
        && reply.queries()[0].name().eq_ignore_root(name)
}

/// Sends `request` and waits (without bound: the caller times out) for the matching reply,
/// skipping datagrams that do not parse or do not match.
async fn udp_exchange(
    upstream: SocketAddr,
    request: &[u8],
    id: u16,
    name: &Name,
    qtype: RecordType,
) -> io::Result<Message> {
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    socket.send(request).await?;
    let mut buf = vec![0u8; 65_535];
    loop {
        let n = socket.recv(&mut buf).await?;
        let Some(data) = buf.get(..n) else { continue };
        if let Ok(reply) = Message::from_vec(data) {
            if is_reply_to(&reply, id, name, qtype) {
                return Ok(reply);
            }
        }
    }
}

/// One DNS exchange over TCP (RFC 1035 4.2.2: each message prefixed by its 2-byte length).
async fn tcp_exchange(upstream: SocketAddr, request: &[u8]) -> io::Result<Vec<u8>> {
    let len = u16::try_from(request.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "query too long"))?;
    let mut stream = TcpStream::connect(upstream).await?;
    let mut framed = Vec::with_capacity(request.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(request);
    stream.write_all(&framed).await?;
    let n = stream.read_u16().await?;
    let mut reply = vec![0u8; usize::from(n)];
    stream.read_exact(&mut reply).await?;
    Ok(reply)
}

/// Reads the answer section: follows the CNAME chain from `qname` and takes the `qtype`
/// records owned by its end. `None` if the chain loops or is too long.
fn interpret(reply: &Message, qname: &Name, qtype: RecordType) -> Option<TypeAnswer> {
    let mut current = qname.clone();
    let mut chain_ttl: Option<u32> = None;
    let mut links = 0;
    while let Some(record) = reply
        .answers()
        .iter()
        .find(|r| r.record_type() == RecordType::CNAME && r.name().eq_ignore_root(&current))
    {
        links += 1;
        if links > MAX_CHAIN {
            return None;
        }
        let RData::CNAME(target) = record.data() else {
            return None;
        };
        chain_ttl = Some(chain_ttl.map_or(record.ttl(), |t| t.min(record.ttl())));
        current = target.0.clone();
    }

    let mut out = TypeAnswer::default();
    let mut ttl = chain_ttl;
    for record in reply.answers() {
        if !record.name().eq_ignore_root(&current) {
            continue;
        }
        let addr = match (qtype, record.data()) {
            (RecordType::A, RData::A(a)) => IpAddr::V4(a.0),
            (RecordType::AAAA, RData::AAAA(a)) => IpAddr::V6(a.0),
            _ => continue,
        };
        if !out.addrs.contains(&addr) {
            out.addrs.push(addr);
        }
        ttl = Some(ttl.map_or(record.ttl(), |t| t.min(record.ttl())));
    }
    if out.addrs.is_empty() {
        // RFC 2308 section 5: the negative TTL is the lesser of the SOA's own TTL and its
        // minimum field.
        out.ttl = reply
            .name_servers()
            .iter()
            .filter_map(|r| match r.data() {
                RData::SOA(soa) => Some(r.ttl().min(soa.minimum())),
                _ => None,
            })
            .min();
    } else {
        out.ttl = ttl;
    }
    Some(out)
}

/// A and AAAA together: TTL of the families that have addresses, else the negative TTL.
fn merge(v4: &TypeAnswer, v6: &TypeAnswer) -> Answer {
    let mut addrs = v4.addrs.clone();
    addrs.extend(v6.addrs.iter().copied());
    let with_addrs = [v4, v6].into_iter().filter(|t| !t.addrs.is_empty());
    let positive = with_addrs.filter_map(|t| t.ttl).min();
    let ttl = positive.or_else(|| [v4.ttl, v6.ttl].into_iter().flatten().min());
    Answer {
        addrs,
        ttl: Duration::from_secs(u64::from(ttl.unwrap_or(0))),
    }
}

/// The `nameserver` addresses of a resolv.conf text, port 53, in order. Lines that are not a
/// `nameserver` line with a plain IP address (comments, options, scoped IPv6 like
/// `fe80::1%eth0`, garbage) are skipped.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            if words.next() != Some("nameserver") {
                return None;
            }
            let addr: IpAddr = words.next()?.parse().ok()?;
            Some(SocketAddr::new(addr, 53))
        })
        .collect()
}

/// [`parse_resolv_conf`] of a file (normally `/etc/resolv.conf`).
pub fn read_resolv_conf(path: &Path) -> io::Result<Vec<SocketAddr>> {
    Ok(parse_resolv_conf(&std::fs::read_to_string(path)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> TtlSettings {
        TtlSettings {
            min_ttl: Duration::from_secs(30),
            max_ttl: Duration::from_secs(3600),
            grace: Duration::from_secs(60),
            failure_retry: Duration::from_secs(5),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn answer(addrs: &[&str], ttl: u64) -> Answer {
        Answer {
            addrs: addrs.iter().map(|a| ip(a)).collect(),
            ttl: Duration::from_secs(ttl),
        }
    }

    fn ra(addr: &str, secs: u64) -> ResolvedAddr {
        ResolvedAddr {
            addr: ip(addr),
            timeout: Duration::from_secs(secs),
        }
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn cache_with(domains: &[&str]) -> Cache {
        let mut c = Cache::new(settings());
        c.want(domains.iter().map(|d| d.to_string()), Instant::now());
        c
    }

    #[tokio::test(start_paused = true)]
    async fn new_domains_are_due_at_once_and_normalized() {
        let c = cache_with(&["API.Example.com.", "b.example"]);
        assert_eq!(c.due(Instant::now()), vec!["api.example.com", "b.example"]);
        assert_eq!(c.next_due(), Some(Instant::now()));
        assert!(c.current("api.example.com", Instant::now()).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_wanted_nothing_due() {
        let c = Cache::new(settings());
        assert_eq!(c.next_due(), None);
        assert!(c.due(Instant::now()).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn take_due_marks_in_flight_and_counts() {
        let mut c = cache_with(&["a.example"]);
        let now = Instant::now();
        assert_eq!(c.take_due(now), vec!["a.example"]);
        assert!(
            c.take_due(now).is_empty(),
            "in flight: not handed out twice"
        );
        assert!(c.due(now).is_empty());
        assert_eq!(c.queries("a.example"), 1);
        assert_eq!(c.next_due(), Some(now + IN_FLIGHT_LIMIT));
        // A lost query becomes due again.
        tokio::time::advance(IN_FLIGHT_LIMIT).await;
        assert_eq!(c.take_due(Instant::now()), vec!["a.example"]);
        assert_eq!(c.queries("a.example"), 2);
        assert_eq!(c.total_queries(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn ttl_is_clamped_for_refresh_and_expiry() {
        let mut c = cache_with(&["low.example", "high.example", "mid.example"]);
        let now = Instant::now();
        c.take_due(now);
        assert_eq!(
            c.on_answer("low.example", &answer(&["192.0.2.1"], 1), now),
            vec![ra("192.0.2.1", 30 + 60)]
        );
        assert_eq!(
            c.on_answer("high.example", &answer(&["192.0.2.2"], 86_400), now),
            vec![ra("192.0.2.2", 3600 + 60)]
        );
        assert_eq!(
            c.on_answer("mid.example", &answer(&["192.0.2.3"], 300), now),
            vec![ra("192.0.2.3", 300 + 60)]
        );
        assert_eq!(c.next_due(), Some(now + secs(30)));
        tokio::time::advance(secs(30)).await;
        assert_eq!(c.due(Instant::now()), vec!["low.example"]);
        tokio::time::advance(secs(270)).await;
        assert_eq!(c.due(Instant::now()), vec!["low.example", "mid.example"]);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_ttl_means_min_ttl() {
        let mut c = cache_with(&["a.example"]);
        let now = Instant::now();
        let got = c.on_answer("a.example", &answer(&["192.0.2.1"], 0), now);
        assert_eq!(got, vec![ra("192.0.2.1", 90)]);
    }

    #[tokio::test(start_paused = true)]
    async fn grace_keeps_address_after_ttl_then_it_expires() {
        let mut c = cache_with(&["a.example"]);
        let t0 = Instant::now();
        c.take_due(t0);
        c.on_answer("a.example", &answer(&["192.0.2.1", "2001:db8::1"], 100), t0);
        tokio::time::advance(secs(100)).await;
        // TTL ran out: refresh due, addresses still allowed for the grace.
        assert_eq!(c.due(Instant::now()), vec!["a.example"]);
        assert_eq!(
            c.current("a.example", Instant::now()),
            vec![ra("192.0.2.1", 60), ra("2001:db8::1", 60)]
        );
        tokio::time::advance(secs(59)).await;
        assert_eq!(c.current("a.example", Instant::now()).len(), 2);
        tokio::time::advance(secs(1)).await;
        assert!(c.current("a.example", Instant::now()).is_empty());
        assert!(c.resolved_map(Instant::now()).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_address_ages_out_and_seen_again_is_pushed_out() {
        let mut c = cache_with(&["a.example"]);
        let t0 = Instant::now();
        c.take_due(t0);
        c.on_answer("a.example", &answer(&["192.0.2.1", "192.0.2.2"], 100), t0);
        tokio::time::advance(secs(100)).await;
        let t1 = Instant::now();
        assert_eq!(c.take_due(t1), vec!["a.example"]);
        // .2 is gone from the answer, .3 is new, .1 is seen again.
        let got = c.on_answer("a.example", &answer(&["192.0.2.3", "192.0.2.1"], 100), t1);
        assert_eq!(got, vec![ra("192.0.2.1", 160), ra("192.0.2.3", 160)]);
        // .2 is not removed early: it keeps the 60 s it had left.
        assert_eq!(
            c.current("a.example", t1),
            vec![
                ra("192.0.2.1", 160),
                ra("192.0.2.2", 60),
                ra("192.0.2.3", 160)
            ]
        );
        tokio::time::advance(secs(60)).await;
        assert_eq!(
            c.current("a.example", Instant::now()),
            vec![ra("192.0.2.1", 100), ra("192.0.2.3", 100)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_is_never_pulled_in_by_a_shorter_ttl() {
        let mut c = cache_with(&["a.example"]);
        let t0 = Instant::now();
        c.on_answer("a.example", &answer(&["192.0.2.1"], 3000), t0);
        tokio::time::advance(secs(10)).await;
        let got = c.on_answer("a.example", &answer(&["192.0.2.1"], 30), Instant::now());
        assert_eq!(got, vec![ra("192.0.2.1", 3050)]);
        // ...but the refresh follows the new TTL.
        assert_eq!(c.next_due(), Some(Instant::now() + secs(30)));
    }

    #[tokio::test(start_paused = true)]
    async fn failure_keeps_last_known_until_expiry_then_nothing() {
        let mut c = cache_with(&["a.example"]);
        let t0 = Instant::now();
        c.take_due(t0);
        c.on_answer("a.example", &answer(&["192.0.2.1"], 100), t0);
        tokio::time::advance(secs(100)).await;
        let t1 = Instant::now();
        c.take_due(t1);
        c.on_failure("a.example", &"timed out", t1);
        // Not extended: 60 s of grace left, as before the failure.
        assert_eq!(c.current("a.example", t1), vec![ra("192.0.2.1", 60)]);
        assert_eq!(c.next_due(), Some(t1 + secs(5)));
        let snap = c.snapshot(t1);
        assert_eq!(snap[0].last_error.as_deref(), Some("timed out"));
        assert_eq!(snap[0].next_refresh_secs, 5);
        assert_eq!(snap[0].last_answer_secs_ago, Some(100));
        // Keep failing: the address expires on schedule and nothing replaces it.
        for _ in 0..12 {
            tokio::time::advance(secs(5)).await;
            let now = Instant::now();
            assert_eq!(c.take_due(now), vec!["a.example"]);
            c.on_failure("a.example", &"timed out", now);
        }
        assert!(c.current("a.example", Instant::now()).is_empty());
        assert!(c.snapshot(Instant::now())[0].addrs.is_empty());
        // An answer clears the error.
        c.on_answer("a.example", &answer(&["192.0.2.9"], 100), Instant::now());
        assert_eq!(c.snapshot(Instant::now())[0].last_error, None);
    }

    #[tokio::test(start_paused = true)]
    async fn failure_before_any_answer_opens_nothing() {
        let mut c = cache_with(&["a.example"]);
        let now = Instant::now();
        c.take_due(now);
        c.on_failure("a.example", &"SERVFAIL", now);
        assert!(c.current("a.example", now).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn failure_retry_is_capped_by_min_ttl() {
        let mut c = Cache::new(TtlSettings {
            failure_retry: secs(300),
            ..settings()
        });
        let now = Instant::now();
        c.want(["a.example".to_string()], now);
        c.take_due(now);
        c.on_failure("a.example", &"x", now);
        assert_eq!(c.next_due(), Some(now + secs(30)));
    }

    #[tokio::test(start_paused = true)]
    async fn want_drops_domains_and_late_answers_open_nothing() {
        let mut c = cache_with(&["a.example", "b.example"]);
        let now = Instant::now();
        assert_eq!(c.take_due(now).len(), 2);
        c.on_answer("a.example", &answer(&["192.0.2.1"], 100), now);
        c.want(["b.example".to_string(), "c.example".to_string()], now);
        assert_eq!(
            c.domains().collect::<Vec<_>>(),
            vec!["b.example", "c.example"]
        );
        assert!(c.current("a.example", now).is_empty());
        // b stays in flight (kept), c is new and due.
        assert_eq!(c.due(now), vec!["c.example"]);
        // A late answer for the dropped domain is ignored.
        assert!(
            c.on_answer("a.example", &answer(&["192.0.2.1"], 100), now)
                .is_empty()
        );
        assert!(c.current("a.example", now).is_empty());
        c.on_failure("a.example", &"late", now);
        assert_eq!(c.snapshot(now).len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn shared_domains_cost_one_query_per_refresh() {
        // 100 containers sharing 5 domains: the daemon passes the union.
        let domains: Vec<String> = (0..100)
            .flat_map(|_| (0..5).map(|d| format!("d{d}.example")))
            .collect();
        let mut c = Cache::new(settings());
        c.want(domains, Instant::now());
        for _round in 0..3 {
            let now = Instant::now();
            let due = c.take_due(now);
            assert_eq!(due.len(), 5);
            for d in &due {
                c.on_answer(d, &answer(&["192.0.2.1"], 30), now);
            }
            tokio::time::advance(secs(30)).await;
        }
        assert_eq!(c.total_queries(), 15);
        assert_eq!(c.queries("d3.example"), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn duplicate_addresses_in_an_answer_are_merged() {
        let mut c = cache_with(&["a.example"]);
        let got = c.on_answer(
            "a.example",
            &answer(&["192.0.2.1", "192.0.2.1"], 100),
            Instant::now(),
        );
        assert_eq!(got.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn snapshot_reports_remaining_seconds() {
        let mut c = cache_with(&["a.example"]);
        let t0 = Instant::now();
        c.take_due(t0);
        assert!(c.snapshot(t0)[0].in_flight);
        c.on_answer("a.example", &answer(&["192.0.2.1"], 100), t0);
        tokio::time::advance(Duration::from_millis(10_500)).await;
        let s = &c.snapshot(Instant::now())[0];
        assert_eq!(s.domain, "a.example");
        assert!(!s.in_flight);
        assert_eq!(
            s.addrs,
            vec![AddrStatus {
                addr: ip("192.0.2.1"),
                remaining_secs: 150
            }]
        );
        assert_eq!(s.next_refresh_secs, 90);
        assert_eq!(s.queries, 1);
    }

    #[test]
    fn min_ttl_above_max_ttl_does_not_panic() {
        let s = TtlSettings {
            min_ttl: secs(100),
            max_ttl: secs(10),
            ..settings()
        };
        assert_eq!(s.clamp(secs(50)), secs(10));
    }

    #[test]
    fn resolv_conf() {
        let text = "# generated\n\
                    search example.com\n\
                    nameserver 192.0.2.53\n\
                    nameserver   2001:db8::53  # v6\n\
                    nameserver fe80::1%eth0\n\
                    nameserver not-an-ip\n\
                    nameserver\n\
                    ;nameserver 192.0.2.99\n\
                    options edns0\n\
                    nameserver 127.0.0.53\n";
        assert_eq!(
            parse_resolv_conf(text),
            vec![
                "192.0.2.53:53".parse::<SocketAddr>().unwrap(),
                "[2001:db8::53]:53".parse().unwrap(),
                "127.0.0.53:53".parse().unwrap(),
            ]
        );
    }

    fn name(s: &str) -> Name {
        let mut n = Name::from_ascii(s).unwrap();
        n.set_fqdn(true);
        n
    }

    fn reply(answers: Vec<hickory_proto::rr::Record>) -> Message {
        let mut m = Message::new();
        m.set_message_type(MessageType::Response);
        m.add_answers(answers);
        m
    }

    fn cname(owner: &str, target: &str, ttl: u32) -> hickory_proto::rr::Record {
        hickory_proto::rr::Record::from_rdata(
            name(owner),
            ttl,
            RData::CNAME(hickory_proto::rr::rdata::CNAME(name(target))),
        )
    }

    fn a(owner: &str, addr: &str, ttl: u32) -> hickory_proto::rr::Record {
        hickory_proto::rr::Record::from_rdata(
            name(owner),
            ttl,
            RData::A(hickory_proto::rr::rdata::A(addr.parse().unwrap())),
        )
    }

    #[test]
    fn interpret_takes_only_the_end_of_the_chain() {
        let m = reply(vec![
            a("decoy.example", "192.0.2.66", 1),
            cname("WWW.example", "edge.example", 300),
            a("edge.example", "192.0.2.1", 100),
            a("www.example", "192.0.2.99", 1),
        ]);
        let got = interpret(&m, &name("www.example"), RecordType::A).unwrap();
        assert_eq!(got.addrs, vec![ip("192.0.2.1")]);
        assert_eq!(got.ttl, Some(100));
        // AAAA asked: the A records are not taken.
        let got = interpret(&m, &name("www.example"), RecordType::AAAA).unwrap();
        assert!(got.addrs.is_empty());
        assert_eq!(got.ttl, None);
    }

    #[test]
    fn interpret_rejects_cname_loops() {
        let m = reply(vec![
            cname("a.example", "b.example", 60),
            cname("b.example", "a.example", 60),
        ]);
        assert!(interpret(&m, &name("a.example"), RecordType::A).is_none());
    }

    #[test]
    fn interpret_negative_ttl_from_soa() {
        let mut m = reply(vec![]);
        m.set_response_code(ResponseCode::NXDomain);
        let soa = hickory_proto::rr::rdata::SOA::new(
            name("ns.example"),
            name("hostmaster.example"),
            1,
            3600,
            600,
            86_400,
            120,
        );
        m.add_name_server(hickory_proto::rr::Record::from_rdata(
            name("example"),
            90,
            RData::SOA(soa),
        ));
        let got = interpret(&m, &name("nope.example"), RecordType::A).unwrap();
        assert!(got.addrs.is_empty());
        assert_eq!(got.ttl, Some(90));
    }

    #[test]
    fn merge_ttls() {
        let with = |addrs: &[&str], ttl| TypeAnswer {
            addrs: addrs.iter().map(|a| ip(a)).collect(),
            ttl,
        };
        // Positive TTLs win over the negative one of the empty family.
        let a = merge(&with(&["192.0.2.1"], Some(300)), &with(&[], Some(5)));
        assert_eq!(a.ttl, secs(300));
        let a = merge(
            &with(&["192.0.2.1"], Some(300)),
            &with(&["2001:db8::1"], Some(20)),
        );
        assert_eq!(a.ttl, secs(20));
        assert_eq!(a.addrs.len(), 2);
        let a = merge(&with(&[], Some(40)), &with(&[], None));
        assert_eq!(a.ttl, secs(40));
        let a = merge(&with(&[], None), &with(&[], None));
        assert_eq!(a.ttl, Duration::ZERO);
    }
}
