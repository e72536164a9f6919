//! Policy: labels, profiles and config become one validated [`ContainerPolicy`].
//!
//! Pure code: no I/O except [`ProfileSet::load_dirs`] / [`Config::load`], which only read files.
//! Invalid input never compiles to allow-all: it compiles to a quarantine policy (no rules)
//! plus the errors that explain it.
//!
//! Layout (wire types stay private to each module; what leaves it is validated):
//! - [`domain`]: RFC 1123 names and `*.` wildcards.
//! - [`rule`]: the `HOST[:PORTS][/PROTO]` grammar and the inline rule list.
//! - [`profile`]: `NAME.toml` profile files → [`ProfileSet`].
//! - [`config`]: `/etc/egressd/config.toml` → [`Config`].
//! - [`limit`]: the budget grammar of the `limit` label (`conn:60/minute,bytes:50MB/hour`).
//! - [`labels`]: container labels + config + profiles → [`ContainerPolicy`] ([`compile`]).
//! - [`error`]: file errors that name `path:line:column` and the token.
//! - `display`: human output (`Display` for the types below).

use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

pub mod config;
mod display;
pub mod domain;
pub mod error;
pub mod labels;
pub mod limit;
pub mod profile;
pub mod rule;

pub use config::Config;
pub use display::Ports;
pub use error::{ConfigErrors, FileError, FileErrors};
pub use labels::compile;
pub use limit::Limits;
pub use profile::{Profile, ProfileSet};
pub use rule::RuleOptions;

/// Enforce (reject what is not allowed) or report (log what would be rejected, reject nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Mode {
    #[default]
    Enforce,
    Report,
}

/// Transport protocol of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Proto {
    #[default]
    Tcp,
    Udp,
}

impl Proto {
    /// IANA protocol number (the value nftables' `meta l4proto` compares with).
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }
}

/// An inclusive, ordered port range; a single port has `first == last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// A range of one port.
    pub fn single(port: u16) -> Self {
        PortRange {
            first: port,
            last: port,
        }
    }
}

/// What a rule allows to be reached.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Host {
    /// An exact, lower-case, validated domain name without trailing dot (`api.openai.com`).
    Domain(String),
    /// `*.example.com`: any name strictly below `example.com` (stored without the `*.`).
    Wildcard(String),
    /// An address (as /32 or /128) or a CIDR.
    Net(IpNetwork),
}

/// Where a rule came from, for `status`, `explain` and error messages.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RuleSource {
    /// An inline rule from the label with this full key (`egressd.allow`).
    Label(String),
    /// A rule from a profile.
    Profile(String),
}

/// One validated allow rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    pub host: Host,
    pub ports: Vec<PortRange>,
    pub proto: Proto,
    pub source: RuleSource,
}

/// The compiled policy of one opted-in container.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerPolicy {
    pub mode: Mode,
    /// How allowed names become addresses: the DNS proxy, or egressd's own resolution.
    pub dns: config::DnsMode,
    /// Profile names from the `profiles` label, in label order.
    pub profiles: Vec<String>,
    /// Allow rules; always empty when `errors` is not.
    pub rules: Vec<Rule>,
    /// Why this container is quarantined (deny all). Empty means the policy is valid.
    pub errors: Vec<String>,
    /// Budgets from the `limit` label, enforced by the kernel; empty when none is given.
    pub limits: Limits,
}

impl ContainerPolicy {
    /// A deny-all policy that records why.
    pub fn quarantine(errors: Vec<String>) -> Self {
        ContainerPolicy {
            errors,
            ..Default::default()
        }
    }

    pub fn is_quarantined(&self) -> bool {
        !self.errors.is_empty()
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Domain(d) => write!(f, "{d}"),
            Host::Wildcard(d) => write!(f, "*.{d}"),
            Host::Net(n) if n.prefix() == max_prefix(n.ip()) => write!(f, "{}", n.ip()),
            Host::Net(n) => write!(f, "{n}"),
        }
    }
}

fn max_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}
