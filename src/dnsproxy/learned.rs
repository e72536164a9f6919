//! What a container's proxy has let through: the names it resolved, their addresses and how
//! long each stays allowed, and the set elements last written to the kernel (pure
//! bookkeeping; every method takes `now`).
//!
//! The elements are derived from the names and the current allowlist, so a table rebuilt
//! after a reload keeps exactly the addresses of names the new policy still allows.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use tokio::time::Instant;

use super::allow::Allowlist;
use crate::firewall::AddrElem;
use crate::firewall::ruleset::expand_ports;
use crate::policy::Proto;

/// Names remembered per container; beyond this, expired names go first, then the least
/// recently asked.
pub const MAX_NAMES: usize = 4096;

type Key = (IpAddr, Proto, u16);

/// One resolved name.
#[derive(Debug, Clone)]
pub struct NameEntry {
    /// Each address answered and not yet expired, with when it stops being allowed.
    pub addrs: BTreeMap<IpAddr, Instant>,
    pub queries: u64,
    pub last_query: Instant,
}

/// A name, its entry, and its live addresses with their remaining time.
pub type NameView<'a> = (String, &'a NameEntry, Vec<(IpAddr, Duration)>);

#[derive(Debug, Default)]
pub struct Learned {
    names: HashMap<String, NameEntry>,
    /// Elements as last written to the kernel, with their expiry.
    elems: HashMap<Key, Instant>,
}

/// The TTL arithmetic of the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    /// An address lives at least this long (plus grace) in the kernel.
    pub min_ttl: Duration,
    pub grace: Duration,
}

impl Lifetimes {
    /// How long an address answered with `ttl` stays allowed.
    pub fn allowed_for(&self, ttl: u32) -> Duration {
        Duration::from_secs(u64::from(ttl)).max(self.min_ttl) + self.grace
    }
}

impl Learned {
    /// Records an answer for `name` and returns the elements to write: those the kernel does
    /// not have, or has with too little time left (it must outlive the container's cache of
    /// this answer, `ttl`, by at least half the grace). `grants` come from the allowlist.
    pub fn plan(
        &self,
        allow: &Allowlist,
        name: &str,
        addrs: &[(IpAddr, u32)],
        life: Lifetimes,
        now: Instant,
    ) -> Vec<AddrElem> {
        let mut out = Vec::new();
        for grant in allow.grants(name) {
            for &(addr, ttl) in addrs {
                let timeout = life.allowed_for(ttl);
                let needed = now + Duration::from_secs(u64::from(ttl)) + life.grace / 2;
                for port in expand_ports(&grant.ports) {
                    let key = (addr, grant.proto, port);
                    if self.elems.get(&key).is_some_and(|exp| *exp >= needed) {
                        continue;
                    }
                    out.push(AddrElem {
                        addr,
                        proto: grant.proto,
                        port,
                        timeout,
                    });
                }
            }
        }
        out.sort();
        out.dedup_by(|a, b| (a.addr, a.proto, a.port) == (b.addr, b.proto, b.port));
        out
    }

    /// Records that `written` reached the kernel and that `name` answered `addrs`.
    pub fn commit(
        &mut self,
        name: &str,
        addrs: &[(IpAddr, u32)],
        written: &[AddrElem],
        life: Lifetimes,
        now: Instant,
    ) {
        for e in written {
            let exp = now + e.timeout;
            let slot = self.elems.entry((e.addr, e.proto, e.port)).or_insert(exp);
            *slot = (*slot).max(exp);
        }
        if !self.names.contains_key(name) && self.names.len() >= MAX_NAMES {
            self.evict(now);
        }
        let entry = self.names.entry(name.to_string()).or_insert(NameEntry {
            addrs: BTreeMap::new(),
            queries: 0,
            last_query: now,
        });
        entry.queries += 1;
        entry.last_query = now;
        for &(addr, ttl) in addrs {
            let exp = now + life.allowed_for(ttl);
            let slot = entry.addrs.entry(addr).or_insert(exp);
            *slot = (*slot).max(exp);
        }
    }

    /// Counts a query for a name that got no address (refused names are not recorded).
    pub fn touch(&mut self, name: &str, now: Instant) {
        if let Some(e) = self.names.get_mut(name) {
            e.queries += 1;
            e.last_query = now;
        }
    }

    fn evict(&mut self, now: Instant) {
        self.prune(now);
        if self.names.len() < MAX_NAMES {
            return;
        }
        if let Some(oldest) = self
            .names
            .iter()
            .min_by_key(|(_, e)| e.last_query)
            .map(|(n, _)| n.clone())
        {
            self.names.remove(&oldest);
        }
    }

    /// Forgets expired addresses, names without any, and expired elements.
    pub fn prune(&mut self, now: Instant) {
        for e in self.names.values_mut() {
            e.addrs.retain(|_, exp| *exp > now);
        }
        self.names.retain(|_, e| !e.addrs.is_empty());
        self.elems.retain(|_, exp| *exp > now);
    }

    /// Every element the table must hold for the names the allowlist still allows, with
    /// their remaining time; and from now on, that is what the kernel holds (the caller
    /// writes them in the same table it applies, under the same lock).
    pub fn rebuild(&mut self, allow: &Allowlist, now: Instant) -> Vec<AddrElem> {
        self.prune(now);
        self.names.retain(|name, _| !allow.grants(name).is_empty());
        self.elems.clear();
        let mut out = Vec::new();
        for (name, entry) in &self.names {
            for grant in allow.grants(name) {
                for (&addr, &exp) in &entry.addrs {
                    for port in expand_ports(&grant.ports) {
                        let timeout = exp.saturating_duration_since(now);
                        out.push(AddrElem {
                            addr,
                            proto: grant.proto,
                            port,
                            timeout,
                        });
                    }
                }
            }
        }
        out.sort();
        out.dedup_by(|later, first| {
            (later.addr, later.proto, later.port) == (first.addr, first.proto, first.port)
        });
        for e in &out {
            let slot = self
                .elems
                .entry((e.addr, e.proto, e.port))
                .or_insert(now + e.timeout);
            *slot = (*slot).max(now + e.timeout);
        }
        out
    }

    /// The resolved names with their live addresses and remaining time, sorted by name.
    pub fn names(&self, now: Instant) -> Vec<NameView<'_>> {
        let mut out: Vec<_> = self
            .names
            .iter()
            .map(|(n, e)| {
                let live = e
                    .addrs
                    .iter()
                    .filter(|(_, exp)| **exp > now)
                    .map(|(a, exp)| (*a, *exp - now))
                    .collect();
                (n.clone(), e, live)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The names an address was answered for (newest first is not kept; sorted).
    pub fn names_of(&self, addr: IpAddr, now: Instant) -> Vec<String> {
        let mut out: Vec<String> = self
            .names
            .iter()
            .filter(|(_, e)| e.addrs.get(&addr).is_some_and(|exp| *exp > now))
            .map(|(n, _)| n.clone())
            .collect();
        out.sort();
        out
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{ContainerPolicy, Host, PortRange, Rule, RuleSource};

    fn allow(rules: &[(&str, &[u16])]) -> Allowlist {
        let policy = ContainerPolicy {
            rules: rules
                .iter()
                .map(|(h, ports)| Rule {
                    host: if let Some(base) = h.strip_prefix("*.") {
                        Host::Wildcard(base.into())
                    } else {
                        Host::Domain((*h).into())
                    },
                    ports: ports.iter().map(|p| PortRange::single(*p)).collect(),
                    proto: Proto::Tcp,
                    source: RuleSource::Label("egressd.allow".into()),
                })
                .collect(),
            ..Default::default()
        };
        Allowlist::from_policy(&policy, &[])
    }

    const LIFE: Lifetimes = Lifetimes {
        min_ttl: Duration::from_secs(5),
        grace: Duration::from_secs(60),
    };

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn new_addresses_are_written_then_skipped_while_fresh_then_refreshed() {
        let al = allow(&[("api.test", &[443, 8443])]);
        let mut l = Learned::default();
        let now = Instant::now();
        let addrs = [(ip("203.0.113.1"), 300)];
        let plan = l.plan(&al, "api.test", &addrs, LIFE, now);
        assert_eq!(plan.len(), 2, "one element per port");
        assert!(plan.iter().all(|e| e.timeout == Duration::from_secs(360)));
        l.commit("api.test", &addrs, &plan, LIFE, now);
        // The same answer 10 s later: the kernel element outlives the client's cache by more
        // than grace/2, so nothing is written.
        let later = now + Duration::from_secs(10);
        assert!(l.plan(&al, "api.test", &addrs, LIFE, later).is_empty());
        // 40 s later, 320 s remain but 300 + 30 are needed: refresh.
        let later = now + Duration::from_secs(40);
        assert_eq!(l.plan(&al, "api.test", &addrs, LIFE, later).len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn short_ttls_are_raised_to_min_ttl_plus_grace() {
        let al = allow(&[("api.test", &[443])]);
        let l = Learned::default();
        let plan = l.plan(
            &al,
            "api.test",
            &[(ip("203.0.113.1"), 0)],
            LIFE,
            Instant::now(),
        );
        assert_eq!(plan[0].timeout, Duration::from_secs(65));
    }

    #[tokio::test(start_paused = true)]
    async fn rebuild_keeps_only_names_the_policy_still_allows_with_remaining_time() {
        let mut l = Learned::default();
        let now = Instant::now();
        let old = allow(&[("a.test", &[443]), ("*.b.test", &[443])]);
        for (name, addr) in [("a.test", "203.0.113.1"), ("x.b.test", "203.0.113.2")] {
            let addrs = [(ip(addr), 100)];
            let plan = l.plan(&old, name, &addrs, LIFE, now);
            l.commit(name, &addrs, &plan, LIFE, now);
        }
        let new = allow(&[("a.test", &[443, 80])]);
        let later = now + Duration::from_secs(60);
        let elems = l.rebuild(&new, later);
        assert_eq!(elems.len(), 2);
        assert!(elems.iter().all(|e| e.addr == ip("203.0.113.1")));
        assert!(elems.iter().all(|e| e.timeout == Duration::from_secs(100)));
        assert_eq!(l.len(), 1, "x.b.test is no longer allowed");
        // After expiry the rebuild has nothing.
        assert!(l.rebuild(&new, now + Duration::from_secs(161)).is_empty());
        assert!(l.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn names_are_bounded() {
        let mut l = Learned::default();
        let now = Instant::now();
        for i in 0..(MAX_NAMES + 10) {
            let name = format!("n{i}.t");
            let addrs = [(ip("203.0.113.1"), 100)];
            l.commit(
                &name,
                &addrs,
                &[],
                LIFE,
                now + Duration::from_millis(i as u64),
            );
        }
        assert_eq!(l.len(), MAX_NAMES);
        assert_eq!(
            l.names_of(ip("203.0.113.1"), now).len(),
            MAX_NAMES,
            "the oldest names went"
        );
    }
}
