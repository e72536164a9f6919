//! Firewall: the `inet egressd` table inside one network namespace.
//!
//! [`Ruleset`] is the table as a value (pure). [`NsFirewall`] programs it: build one batch
//! (`program`), send it with every ACK checked (`nl`), read it back (`verify`). It touches no
//! other table in the namespace.

pub mod elems;
pub mod netns;
pub mod nl;
mod program;
pub mod ruleset;

use std::ffi::CString;
use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

pub use elems::{CountedElem, ElementCounter};
pub use netns::Netns;
pub use ruleset::{
    AddrElem, ChainRule, DnsRedirect, LogSettings, NetElem, PROXY_SOCKET_MARK, ProxyPorts,
    ResolvedAddr, Ruleset, SetName, TABLE_NAME,
};

use nl::NfSocket;

/// Errors of the firewall engine. Each names the namespace, and what the kernel refused.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("{netns}: cannot open a netfilter socket there: {source}")]
    Open {
        netns: String,
        #[source]
        source: io::Error,
    },
    #[error("{netns}: table inet {TABLE_NAME}: kernel refused {what}: {source}{}",
        .kernel_msg.as_ref().map(|m| format!(" ({m})")).unwrap_or_default())]
    Kernel {
        netns: String,
        what: String,
        kernel_msg: Option<String>,
        #[source]
        source: io::Error,
    },
    #[error("{netns}: table inet {TABLE_NAME}: reading it back failed: {source}")]
    Dump {
        netns: String,
        #[source]
        source: io::Error,
    },
    #[error("{netns}: table inet {TABLE_NAME} differs from the ruleset that was applied: {diff}")]
    Mismatch { netns: String, diff: String },
}

/// Packet and byte counts of the table's named counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub allowed_packets: u64,
    pub allowed_bytes: u64,
    pub denied_packets: u64,
    pub denied_bytes: u64,
    /// Packets rejected (or, in report mode, only counted) because a budget ran out; zero
    /// when the table has no budget.
    pub limited_packets: u64,
    pub limited_bytes: u64,
}

/// A handle on the `inet egressd` table of one network namespace: a netfilter socket opened
/// inside it. Cheap to keep; every operation is one netlink transaction.
pub struct NsFirewall {
    sock: NfSocket,
    name: String,
}

impl NsFirewall {
    /// Opens a netfilter socket inside `netns`.
    pub fn open(netns: &Netns) -> Result<Self, FirewallError> {
        let name = netns.to_string();
        let sock = netns
            .run(NfSocket::open)
            .map_err(|source| FirewallError::Open {
                netns: name.clone(),
                source,
            })?;
        set_recv_timeout(&sock, Duration::from_secs(10)).map_err(|source| FirewallError::Open {
            netns: name.clone(),
            source,
        })?;
        Ok(NsFirewall { sock, name })
    }

    /// Creates or atomically replaces the table with `ruleset`, in one transaction: either the
    /// whole new table is in place, or the old one (if any) still is.
    pub fn apply(&self, ruleset: &Ruleset) -> Result<(), FirewallError> {
        let (batch, what) = program::replace_table(ruleset);
        self.send(batch, &what)
    }

    /// Adds resolved elements, or sets the new timeout of those already present. One
    /// transaction. Kernels before 6.10 ignore the timeout of an element that exists, so
    /// there every element is added, deleted and added again in the same transaction.
    pub fn add_addrs(&self, elems: &[AddrElem]) -> Result<(), FirewallError> {
        self.add_addrs_with(elems, !kernel_updates_element_timeouts())
    }

    /// [`NsFirewall::add_addrs`] with the re-add strategy chosen by the caller (tests run
    /// both on one kernel).
    pub fn add_addrs_with(&self, elems: &[AddrElem], readd: bool) -> Result<(), FirewallError> {
        if elems.is_empty() {
            return Ok(());
        }
        let (batch, what) = program::add_addrs(elems, readd);
        self.send(batch, &what)
    }

    /// Removes resolved elements, present or not, in one transaction.
    pub fn remove_addrs(&self, elems: &[AddrElem]) -> Result<(), FirewallError> {
        if elems.is_empty() {
            return Ok(());
        }
        let (batch, what) = program::remove_addrs(elems);
        self.send(batch, &what)
    }

    /// Deletes the table; not an error when it does not exist.
    pub fn delete_table(&self) -> Result<(), FirewallError> {
        let (batch, what) = program::delete_table();
        self.send(batch, &what)
    }

    /// Whether the namespace has an `inet egressd` table.
    pub fn table_exists(&self) -> Result<bool, FirewallError> {
        Ok(!self.dump()?.chains.is_empty())
    }

    /// Reads the named counters back.
    pub fn counters(&self) -> Result<Counters, FirewallError> {
        let dump = self.dump()?;
        let mut c = Counters::default();
        for (name, packets, bytes) in dump.counters {
            match name.as_str() {
                "allowed" => (c.allowed_packets, c.allowed_bytes) = (packets, bytes),
                "denied" => (c.denied_packets, c.denied_bytes) = (packets, bytes),
                "limited" => (c.limited_packets, c.limited_bytes) = (packets, bytes),
                _ => {}
            }
        }
        Ok(c)
    }

    /// Reads the table back and compares chains, sets, rule count, counters and the number of
    /// static elements with `ruleset`. Resolved elements are not counted: they expire on
    /// their own in the kernel.
    pub fn verify(&self, ruleset: &Ruleset) -> Result<(), FirewallError> {
        let dump = self.dump()?;
        let mut diff = Vec::new();
        let mut got_chains: Vec<&str> = dump.chains.iter().map(String::as_str).collect();
        got_chains.sort_unstable();
        let mut want_chains = ruleset.chain_names();
        want_chains.sort_unstable();
        if got_chains != want_chains {
            diff.push(format!("chains {got_chains:?}, want {want_chains:?}"));
        }
        for (chain, want_rules) in [
            (ruleset::CHAIN_NAME, ruleset.chain().len()),
            (ruleset::DNS_CHAIN_NAME, ruleset.dns_chain().len()),
            (ruleset::BUDGET_CHAIN_NAME, ruleset.budget_chain().len()),
        ] {
            let got_rules = dump
                .rules
                .iter()
                .find(|(c, _)| c == chain)
                .map(|(_, n)| *n)
                .unwrap_or(0);
            if got_rules != want_rules {
                diff.push(format!(
                    "{got_rules} rules in chain {chain}, want {want_rules}"
                ));
            }
        }
        let mut counters: Vec<&str> = dump.counters.iter().map(|(n, _, _)| n.as_str()).collect();
        counters.sort_unstable();
        let mut want_counters = ruleset.counter_names();
        want_counters.sort_unstable();
        if counters != want_counters {
            diff.push(format!("counters {counters:?}, want {want_counters:?}"));
        }
        for set in SetName::ALL {
            let spec = program::set_spec(set);
            match dump.sets.iter().find(|(n, _, _)| n == set.as_str()) {
                None => diff.push(format!("set {} is missing", set.as_str())),
                Some((_, flags, key_len)) => {
                    if *flags & spec.flags != spec.flags || *key_len != spec.key_len {
                        diff.push(format!(
                            "set {}: flags {flags:#x} key length {key_len}, want flags {:#x} key length {}",
                            set.as_str(),
                            spec.flags,
                            spec.key_len
                        ));
                    }
                }
            }
            if set.is_interval() {
                let want = ruleset.nets_in(set).len();
                let got = self.count_elems(set)?;
                // The kernel stores an interval element as one element (concatenated ranges).
                if got != want {
                    diff.push(format!("set {}: {got} elements, want {want}", set.as_str()));
                }
            }
        }
        if diff.is_empty() {
            Ok(())
        } else {
            Err(FirewallError::Mismatch {
                netns: self.name.clone(),
                diff: diff.join("; "),
            })
        }
    }

    /// Whether the table's sets let `addr`, `proto`, `port` through: a lookup of the one
    /// element in the resolved set and the static set of its family, asked of the kernel.
    pub fn holds(
        &self,
        addr: std::net::IpAddr,
        proto: crate::policy::Proto,
        port: u16,
    ) -> Result<bool, FirewallError> {
        let table = CString::new(TABLE_NAME).unwrap_or_default();
        let key = ruleset::addr_key(addr, proto, port);
        for set in [
            SetName::for_addr(addr, false),
            SetName::for_addr(addr, true),
        ] {
            let name = CString::new(set.as_str()).unwrap_or_default();
            let elem = nl::Elem {
                key: key.clone(),
                key_end: set.is_interval().then(|| key.clone()),
                timeout_ms: None,
            };
            let req = nl::get_set_elem_request(&table, program::FAMILY, &name, &elem, 6);
            match self.sock.dump(&req) {
                Ok(msgs) if !msgs.is_empty() => return Ok(true),
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(source) => {
                    return Err(FirewallError::Dump {
                        netns: self.name.clone(),
                        source,
                    });
                }
            }
        }
        Ok(false)
    }

    /// Every element of the four sets with its own counter: the allowed packets and bytes per
    /// destination since the element was added (or the table was last replaced). Re-adding
    /// an element that exists (a refresh) keeps its counter. Reads each set's dump to the end.
    pub fn element_counters(&self) -> Result<Vec<ElementCounter>, FirewallError> {
        let table = CString::new(TABLE_NAME).unwrap_or_default();
        let mut out = Vec::new();
        for (seq, set) in (10..).zip(SetName::ALL) {
            let name = CString::new(set.as_str()).unwrap_or_default();
            let request = nl::dump_set_elems_request(&table, program::FAMILY, &name, seq);
            let msgs = self
                .sock
                .dump(&request)
                .map_err(|source| FirewallError::Dump {
                    netns: self.name.clone(),
                    source,
                })?;
            for msg in msgs {
                out.extend(elems::parse_dump_message(set, &msg));
            }
        }
        Ok(out)
    }

    /// Number of elements in one set, as the kernel reports them.
    pub fn count_elems(&self, set: SetName) -> Result<usize, FirewallError> {
        let table = CString::new(TABLE_NAME).unwrap_or_default();
        let name = CString::new(set.as_str()).unwrap_or_default();
        nl::count_set_elems(&self.sock, &table, program::FAMILY, &name).map_err(|source| {
            FirewallError::Dump {
                netns: self.name.clone(),
                source,
            }
        })
    }

    fn dump(&self) -> Result<nl::TableDump, FirewallError> {
        nl::dump_table(&self.sock, TABLE_NAME, program::FAMILY).map_err(|source| {
            FirewallError::Dump {
                netns: self.name.clone(),
                source,
            }
        })
    }

    fn send(&self, batch: nftnl::FinalizedBatch, what: &[String]) -> Result<(), FirewallError> {
        self.sock
            .send_batch(&batch, what)
            .map_err(|e| FirewallError::Kernel {
                netns: self.name.clone(),
                what: e.what,
                kernel_msg: e.kernel_msg,
                source: e.source,
            })
    }
}

/// Whether the running kernel updates the timeout of a set element that is added again
/// (Linux 6.10 and later). Read once from `uname`; an unreadable version counts as old (the
/// re-add path works everywhere).
pub fn kernel_updates_element_timeouts() -> bool {
    static NEW_ENOUGH: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *NEW_ENOUGH.get_or_init(|| {
        nix::sys::utsname::uname()
            .ok()
            .and_then(|u| parse_kernel_version(&u.release().to_string_lossy()))
            .is_some_and(|v| v >= (6, 10))
    })
}

/// `6.18.44-fc-v1147` → (6, 18).
pub fn parse_kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

fn set_recv_timeout(sock: &NfSocket, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: passes a pointer to a local timeval of the declared size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions() {
        assert_eq!(parse_kernel_version("6.18.44-fc-v1147"), Some((6, 18)));
        assert_eq!(parse_kernel_version("6.1.0-28-amd64"), Some((6, 1)));
        assert_eq!(parse_kernel_version("5.10"), Some((5, 10)));
        assert_eq!(parse_kernel_version("garbage"), None);
    }
}
