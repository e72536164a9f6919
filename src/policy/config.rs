//! The daemon config, `/etc/egressd/config.toml`.
//!
//! Every key is optional; [`Config::default`] is the documented default, and the shipped
//! `config/config.toml` spells all of them out. Unknown keys are errors, and every error
//! names `file:line:column` and the offending token.

use std::fs;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnetwork::IpNetwork;
use serde::Deserialize;
use toml::Spanned;

use super::Mode;
use super::error::{ConfigErrors, FileError};
use super::limit::parse_size;
use super::profile::ProfileSet;
use super::rule::RuleOptions;

/// Where the daemon and `check-config` look when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/egressd/config.toml";
/// Port used for a DNS upstream written without one.
pub const DNS_PORT: u16 = 53;
/// Upper bound for `min_ttl`, `max_ttl` and `grace`, in seconds (one day).
pub const MAX_TTL_SECS: i64 = 86_400;

/// What to do with a container egressd cannot confine (`--network host`, `--privileged`,
/// `CAP_NET_ADMIN`/`CAP_SYS_ADMIN`/`ALL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnUnenforceable {
    /// Stop the container and log why.
    #[default]
    Stop,
    /// Only log a warning.
    Warn,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// How allowed domain names become addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DnsMode {
    /// egressd resolves each allowed domain itself and refreshes by TTL.
    Resolve,
    /// egressd answers the container's DNS queries (DNS-aware enforcement): the default.
    #[default]
    Proxy,
}

/// What the DNS proxy answers for a name the policy does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RefuseWith {
    /// RCODE 5: the resolver refuses (stub resolvers try no further server for the name).
    #[default]
    Refused,
    /// RCODE 3: the name does not exist.
    NxDomain,
}

/// The validated config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Labels are `PREFIX.enable`, `PREFIX.profiles`, `PREFIX.allow`, `PREFIX.mode`.
    pub label_prefix: String,
    /// Profile directories, in override order: a later one wins for the same name.
    pub profile_dirs: Vec<PathBuf>,
    /// When false, a `PREFIX.allow` label quarantines the container.
    pub allow_inline_rules: bool,
    /// Accept CIDRs broader than /8 (a prefix shorter than 8), including /0.
    pub allow_broad_cidrs: bool,
    /// Mode of containers without a `PREFIX.mode` label.
    pub default_mode: Mode,
    pub on_unenforceable: OnUnenforceable,
    pub log_format: LogFormat,
    /// NFLOG group that denied packets are logged to.
    pub nflog_group: u16,
    pub dns: DnsConfig,
    pub docker: DockerConfig,
    pub control: ControlConfig,
    pub runtime: RuntimeConfig,
    pub metrics: MetricsConfig,
    pub anomaly: AnomalyConfig,
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MetricsConfig {
    /// Where `GET /metrics` is served; `None` (absent or `""`): no endpoint.
    pub listen: Option<SocketAddr>,
}

/// `[anomaly]`: thresholds that only warn (one log event per container and episode); budgets
/// that reject are the `limit` label. `None`: no warning.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AnomalyConfig {
    /// Warn when a container opens more new connections than this in one minute.
    pub new_connections_per_minute: Option<u32>,
    /// Warn when one flow sends more bytes than this.
    pub bytes_per_flow: Option<u64>,
}

/// `[dns]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    pub mode: DnsMode,
    /// Upstream servers; empty means the nameservers of the host's `/etc/resolv.conf`.
    pub upstreams: Vec<SocketAddr>,
    /// Answers with a shorter TTL are re-resolved after this long instead.
    pub min_ttl: Duration,
    /// Answers with a longer TTL are re-resolved after this long instead.
    pub max_ttl: Duration,
    /// How long an address stays allowed after its TTL ran out (lets live connections and
    /// clients with slightly stale caches finish).
    pub grace: Duration,
    /// Proxy mode: the answer to names the policy does not allow.
    pub refuse_with: RefuseWith,
    /// Proxy mode: internal addresses (loopback, RFC 1918, CGNAT, link-local, ULA) that
    /// answers may point at anyway (the rebinding guard strips all others, unless a CIDR
    /// rule of the container covers them).
    pub rebind_allow: Vec<IpNetwork>,
    /// Proxy mode: addresses kept per answer; the rest are dropped (and a warning shown).
    pub max_addrs_per_name: usize,
    /// How long one upstream may take to answer before the next is asked; when all fail the
    /// proxy answers SERVFAIL.
    pub upstream_timeout: Duration,
}

/// Bounds of `dns.max_addrs_per_name`.
pub const MAX_ADDRS_PER_NAME: i64 = 1024;

/// `[docker]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerConfig {
    /// Docker Engine API socket.
    pub socket: PathBuf,
}

/// `[control]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlConfig {
    /// Control socket (JSON), created with mode 0660.
    pub socket: PathBuf,
    /// Group that owns the control socket.
    pub group: String,
}

/// `[runtime]`: the OCI runtime shim (`egressd runtime`) and its prestart hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// The real runc the shim hands every command to.
    pub runc: PathBuf,
    /// How long the prestart hook waits for the daemon before failing the start.
    pub hook_timeout: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            runc: "/usr/sbin/runc".into(),
            hook_timeout: Duration::from_secs(10),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            label_prefix: "egressd".into(),
            profile_dirs: vec![
                "/usr/share/egressd/profiles".into(),
                "/etc/egressd/profiles".into(),
            ],
            allow_inline_rules: true,
            allow_broad_cidrs: false,
            default_mode: Mode::Enforce,
            on_unenforceable: OnUnenforceable::Stop,
            log_format: LogFormat::Text,
            nflog_group: 100,
            dns: DnsConfig::default(),
            docker: DockerConfig::default(),
            control: ControlConfig::default(),
            runtime: RuntimeConfig::default(),
            metrics: MetricsConfig::default(),
            anomaly: AnomalyConfig::default(),
        }
    }
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            mode: DnsMode::Proxy,
            upstreams: Vec::new(),
            min_ttl: Duration::from_secs(30),
            max_ttl: Duration::from_secs(3600),
            grace: Duration::from_secs(60),
            refuse_with: RefuseWith::Refused,
            rebind_allow: Vec::new(),
            max_addrs_per_name: 32,
            upstream_timeout: Duration::from_secs(2),
        }
    }
}

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig {
            socket: "/var/run/docker.sock".into(),
        }
    }
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            socket: "/run/egressd/egressd.sock".into(),
            group: "egressd".into(),
        }
    }
}

// ---- wire types ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    label_prefix: Option<Spanned<String>>,
    profile_dirs: Option<Vec<Spanned<String>>>,
    allow_inline_rules: Option<bool>,
    allow_broad_cidrs: Option<bool>,
    default_mode: Option<Spanned<String>>,
    on_unenforceable: Option<Spanned<String>>,
    log_format: Option<Spanned<String>>,
    nflog_group: Option<Spanned<i64>>,
    dns: Option<RawDns>,
    docker: Option<RawDocker>,
    control: Option<RawControl>,
    runtime: Option<RawRuntime>,
    metrics: Option<RawMetrics>,
    anomaly: Option<RawAnomaly>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAnomaly {
    new_connections_per_minute: Option<Spanned<i64>>,
    bytes_per_flow: Option<Spanned<IntOrString>>,
}

/// A number, or a string with a unit (`"100MB"`).
#[derive(Deserialize)]
#[serde(untagged)]
enum IntOrString {
    Int(i64),
    Str(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRuntime {
    runc: Option<Spanned<String>>,
    hook_timeout: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDns {
    mode: Option<Spanned<String>>,
    upstreams: Option<Vec<Spanned<String>>>,
    min_ttl: Option<Spanned<i64>>,
    max_ttl: Option<Spanned<i64>>,
    grace: Option<Spanned<i64>>,
    refuse_with: Option<Spanned<String>>,
    rebind_allow: Option<Vec<Spanned<String>>>,
    max_addrs_per_name: Option<Spanned<i64>>,
    upstream_timeout: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDocker {
    socket: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawControl {
    socket: Option<Spanned<String>>,
    group: Option<Spanned<String>>,
}

/// Collects errors while validating one file.
struct Check<'a> {
    path: &'a Path,
    src: &'a str,
    errors: Vec<FileError>,
}

impl Check<'_> {
    fn err(&mut self, span: Range<usize>, token: &str, message: impl Into<String>) {
        self.errors.push(FileError::at_token(
            self.path, self.src, span, token, message,
        ));
    }

    /// One of the listed strings.
    fn choice<T: Copy>(
        &mut self,
        key: &str,
        v: &Spanned<String>,
        choices: &[(&str, T)],
    ) -> Option<T> {
        if let Some((_, t)) = choices.iter().find(|(s, _)| s == v.get_ref()) {
            return Some(*t);
        }
        let list: Vec<String> = choices.iter().map(|(s, _)| format!("\"{s}\"")).collect();
        self.err(
            v.span(),
            v.get_ref(),
            format!("{key} must be {}", list.join(" or ")),
        );
        None
    }

    fn absolute_path(&mut self, key: &str, v: &Spanned<String>) -> Option<PathBuf> {
        let p = PathBuf::from(v.get_ref());
        if p.is_absolute() {
            Some(p)
        } else {
            self.err(
                v.span(),
                v.get_ref(),
                format!("{key} must be an absolute path"),
            );
            None
        }
    }

    fn seconds(&mut self, key: &str, v: &Spanned<i64>, min: i64) -> Option<Duration> {
        let n = *v.get_ref();
        if (min..=MAX_TTL_SECS).contains(&n) {
            Some(Duration::from_secs(n.unsigned_abs()))
        } else {
            self.err(
                v.span(),
                &n.to_string(),
                format!("{key} must be from {min} to {MAX_TTL_SECS} seconds"),
            );
            None
        }
    }
}

/// Parses `IP` or `IP:PORT` (`[IPv6]:PORT`); the port defaults to 53.
pub fn parse_upstream(s: &str) -> Option<SocketAddr> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return (sa.port() != 0).then_some(sa);
    }
    s.parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, DNS_PORT))
}

/// Parses an address (as a host network) or a CIDR whose host bits are zero.
pub fn parse_net(s: &str) -> Option<IpNetwork> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return IpNetwork::new(ip, if ip.is_ipv4() { 32 } else { 128 }).ok();
    }
    let net: IpNetwork = s.parse().ok()?;
    (net.network() == net.ip()).then_some(net)
}

/// Whether `s` can be a label prefix: `[a-z0-9]`, then `[a-z0-9.-]`, ending in `[a-z0-9]`,
/// without `..` (Docker's recommendation for label keys).
pub fn is_valid_label_prefix(s: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = s.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(&f), Some(&l)) if alnum(f) && alnum(l) => {}
        _ => return false,
    }
    !s.contains("..") && bytes.iter().all(|&b| alnum(b) || b == b'.' || b == b'-')
}

impl Config {
    /// Reads and validates `path`. A missing file is an error; see [`Config::load_optional`].
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let src = fs::read_to_string(path).map_err(|source| {
            ConfigErrors::from(vec![FileError::Io {
                path: path.to_path_buf(),
                action: "cannot read config",
                source,
            }])
        })?;
        Config::parse(path, &src)
    }

    /// Like [`Config::load`], but a file that does not exist gives `Ok(None)` (the caller
    /// then uses [`Config::default`]). Meant for the default path only: a path the user gave
    /// explicitly must exist.
    pub fn load_optional(path: &Path) -> Result<Option<Config>, ConfigErrors> {
        match fs::read_to_string(path) {
            Ok(src) => Config::parse(path, &src).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ConfigErrors::from(vec![FileError::Io {
                path: path.to_path_buf(),
                action: "cannot read config",
                source,
            }])),
        }
    }

    /// Validates the text of a config file; `path` is only used in error messages. Pure.
    pub fn parse(path: &Path, src: &str) -> Result<Config, ConfigErrors> {
        let (_, syntax) = toml::de::DeTable::parse_recoverable(src);
        if !syntax.is_empty() {
            return Err(syntax
                .iter()
                .map(|e| FileError::from_toml(path, src, e))
                .collect::<Vec<_>>()
                .into());
        }
        let raw: RawConfig = toml::from_str(src)
            .map_err(|e| ConfigErrors::from(vec![FileError::from_toml(path, src, &e)]))?;
        let mut c = Check {
            path,
            src,
            errors: Vec::new(),
        };
        let mut cfg = Config::default();

        if let Some(v) = &raw.label_prefix {
            if is_valid_label_prefix(v.get_ref()) {
                cfg.label_prefix = v.get_ref().clone();
            } else {
                c.err(
                    v.span(),
                    v.get_ref(),
                    "label_prefix must be lower-case letters, digits, \".\" and \"-\", starting and ending with a letter or digit",
                );
            }
        }
        if let Some(dirs) = &raw.profile_dirs {
            cfg.profile_dirs = dirs
                .iter()
                .filter_map(|d| c.absolute_path("profile_dirs entries", d))
                .collect();
        }
        if let Some(b) = raw.allow_inline_rules {
            cfg.allow_inline_rules = b;
        }
        if let Some(b) = raw.allow_broad_cidrs {
            cfg.allow_broad_cidrs = b;
        }
        if let Some(v) = &raw.default_mode {
            if let Some(m) = c.choice(
                "default_mode",
                v,
                &[("enforce", Mode::Enforce), ("report", Mode::Report)],
            ) {
                cfg.default_mode = m;
            }
        }
        if let Some(v) = &raw.on_unenforceable {
            if let Some(m) = c.choice(
                "on_unenforceable",
                v,
                &[
                    ("stop", OnUnenforceable::Stop),
                    ("warn", OnUnenforceable::Warn),
                ],
            ) {
                cfg.on_unenforceable = m;
            }
        }
        if let Some(v) = &raw.log_format {
            if let Some(m) = c.choice(
                "log_format",
                v,
                &[("text", LogFormat::Text), ("json", LogFormat::Json)],
            ) {
                cfg.log_format = m;
            }
        }
        if let Some(v) = &raw.nflog_group {
            match u16::try_from(*v.get_ref()) {
                Ok(g) => cfg.nflog_group = g,
                Err(_) => c.err(
                    v.span(),
                    &v.get_ref().to_string(),
                    "nflog_group must be from 0 to 65535",
                ),
            }
        }

        if let Some(dns) = &raw.dns {
            if let Some(v) = &dns.mode {
                if let Some(m) = c.choice(
                    "dns.mode",
                    v,
                    &[("resolve", DnsMode::Resolve), ("proxy", DnsMode::Proxy)],
                ) {
                    cfg.dns.mode = m;
                }
            }
            if let Some(ups) = &dns.upstreams {
                cfg.dns.upstreams = ups
                    .iter()
                    .filter_map(|u| {
                        let parsed = parse_upstream(u.get_ref());
                        if parsed.is_none() {
                            c.err(
                                u.span(),
                                u.get_ref(),
                                "dns.upstreams entries must be \"IP\" or \"IP:PORT\" (\"[IPv6]:PORT\"), port 1-65535; host names are not accepted",
                            );
                        }
                        parsed
                    })
                    .collect();
            }
            let min = dns
                .min_ttl
                .as_ref()
                .and_then(|v| c.seconds("dns.min_ttl", v, 1));
            let max = dns
                .max_ttl
                .as_ref()
                .and_then(|v| c.seconds("dns.max_ttl", v, 1));
            if let Some(v) = &dns.grace {
                if let Some(g) = c.seconds("dns.grace", v, 0) {
                    cfg.dns.grace = g;
                }
            }
            if let Some(v) = &dns.refuse_with {
                if let Some(r) = c.choice(
                    "dns.refuse_with",
                    v,
                    &[
                        ("refused", RefuseWith::Refused),
                        ("nxdomain", RefuseWith::NxDomain),
                    ],
                ) {
                    cfg.dns.refuse_with = r;
                }
            }
            if let Some(list) = &dns.rebind_allow {
                cfg.dns.rebind_allow = list
                    .iter()
                    .filter_map(|v| {
                        let parsed = parse_net(v.get_ref());
                        if parsed.is_none() {
                            c.err(
                                v.span(),
                                v.get_ref(),
                                "dns.rebind_allow entries must be an address or a CIDR with no host bits set (\"10.20.0.0/16\", \"fd00::/8\")",
                            );
                        }
                        parsed
                    })
                    .collect();
            }
            if let Some(v) = &dns.max_addrs_per_name {
                let n = *v.get_ref();
                if (1..=MAX_ADDRS_PER_NAME).contains(&n) {
                    cfg.dns.max_addrs_per_name = n.unsigned_abs() as usize;
                } else {
                    c.err(
                        v.span(),
                        &n.to_string(),
                        format!("dns.max_addrs_per_name must be from 1 to {MAX_ADDRS_PER_NAME}"),
                    );
                }
            }
            if let Some(v) = &dns.upstream_timeout {
                let n = *v.get_ref();
                if (1..=30).contains(&n) {
                    cfg.dns.upstream_timeout = Duration::from_secs(n.unsigned_abs());
                } else {
                    c.err(
                        v.span(),
                        &n.to_string(),
                        "dns.upstream_timeout must be from 1 to 30 seconds",
                    );
                }
            }
            let eff_min = min.unwrap_or(cfg.dns.min_ttl);
            let eff_max = max.unwrap_or(cfg.dns.max_ttl);
            // Only compare values that are valid (an invalid one was reported already).
            let both_valid =
                dns.min_ttl.is_none() == min.is_none() && dns.max_ttl.is_none() == max.is_none();
            // Point at the key the admin wrote; if both, at min_ttl. With neither written
            // the defaults apply, and they are ordered.
            let conflict = match (&dns.min_ttl, &dns.max_ttl) {
                _ if !both_valid || eff_min <= eff_max => None,
                (Some(v), Some(_)) => Some((v, format!("dns.max_ttl is {}", eff_max.as_secs()))),
                (Some(v), None) => Some((
                    v,
                    format!("the default dns.max_ttl is {}", eff_max.as_secs()),
                )),
                (None, Some(v)) => Some((
                    v,
                    format!("the default dns.min_ttl is {}", eff_min.as_secs()),
                )),
                (None, None) => None,
            };
            match conflict {
                Some((v, other)) => c.err(
                    v.span(),
                    &v.get_ref().to_string(),
                    format!("dns.min_ttl must not be greater than dns.max_ttl ({other})"),
                ),
                None => {
                    cfg.dns.min_ttl = eff_min;
                    cfg.dns.max_ttl = eff_max;
                }
            }
        }

        if let Some(docker) = &raw.docker {
            if let Some(v) = &docker.socket {
                if let Some(p) = c.absolute_path("docker.socket", v) {
                    cfg.docker.socket = p;
                }
            }
        }
        if let Some(control) = &raw.control {
            if let Some(v) = &control.socket {
                if let Some(p) = c.absolute_path("control.socket", v) {
                    cfg.control.socket = p;
                }
            }
            if let Some(v) = &control.group {
                let g = v.get_ref();
                let ok = !g.is_empty()
                    && !g.starts_with('-')
                    && g.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_.-$".contains(&b));
                if ok {
                    cfg.control.group = g.clone();
                } else {
                    c.err(
                        v.span(),
                        g,
                        "control.group must be a group name (letters, digits, \"_\", \".\", \"-\")",
                    );
                }
            }
        }
        if let Some(rt) = &raw.runtime {
            if let Some(v) = &rt.runc {
                if let Some(p) = c.absolute_path("runtime.runc", v) {
                    cfg.runtime.runc = p;
                }
            }
            if let Some(v) = &rt.hook_timeout {
                let n = *v.get_ref();
                if (1..=60).contains(&n) {
                    cfg.runtime.hook_timeout = Duration::from_secs(n.unsigned_abs());
                } else {
                    c.err(
                        v.span(),
                        &n.to_string(),
                        "runtime.hook_timeout must be from 1 to 60 seconds",
                    );
                }
            }
        }

        if let Some(m) = &raw.metrics {
            if let Some(v) = &m.listen {
                let text = v.get_ref();
                match text.parse::<SocketAddr>() {
                    _ if text.is_empty() => cfg.metrics.listen = None,
                    Ok(sa) if sa.port() != 0 => cfg.metrics.listen = Some(sa),
                    _ => c.err(
                        v.span(),
                        text,
                        "metrics.listen must be \"IP:PORT\" (\"[IPv6]:PORT\"), port 1-65535, or \"\" for no endpoint; host names are not accepted",
                    ),
                }
            }
        }
        if let Some(a) = &raw.anomaly {
            if let Some(v) = &a.new_connections_per_minute {
                match u32::try_from(*v.get_ref()) {
                    Ok(n) if n >= 1 => cfg.anomaly.new_connections_per_minute = Some(n),
                    _ => c.err(
                        v.span(),
                        &v.get_ref().to_string(),
                        "anomaly.new_connections_per_minute must be from 1 to 4294967295 (omit the key for no warning)",
                    ),
                }
            }
            if let Some(v) = &a.bytes_per_flow {
                let (token, parsed) = match v.get_ref() {
                    IntOrString::Int(n) => (n.to_string(), u64::try_from(*n).ok()),
                    IntOrString::Str(t) => (t.clone(), parse_size(t).ok()),
                };
                match parsed {
                    Some(n) if n >= 1 => cfg.anomaly.bytes_per_flow = Some(n),
                    _ => c.err(
                        v.span(),
                        &token,
                        "anomaly.bytes_per_flow must be a positive number of bytes, or a string with a unit: \"100MB\" (B, kB, KB, MB, GB, KiB, MiB, GiB)",
                    ),
                }
            }
        }

        if c.errors.is_empty() {
            Ok(cfg)
        } else {
            c.errors.sort_by_key(FileError::position);
            Err(c.errors.into())
        }
    }

    /// The rule settings that come from this config.
    pub fn rule_options(&self) -> RuleOptions {
        RuleOptions {
            allow_broad_cidrs: self.allow_broad_cidrs,
        }
    }

    /// Loads the profiles from [`Config::profile_dirs`] with this config's rule settings.
    pub fn load_profiles(&self) -> ProfileSet {
        ProfileSet::load_dirs(&self.profile_dirs, &self.rule_options())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(src: &str) -> Result<Config, Vec<String>> {
        Config::parse(Path::new("/etc/egressd/config.toml"), src)
            .map_err(|es| es.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn empty_file_is_default() {
        assert_eq!(parse("").unwrap(), Config::default());
        assert_eq!(
            parse("[dns]\n[docker]\n[control]\n").unwrap(),
            Config::default()
        );
    }

    #[test]
    fn dns_proxy_keys() {
        let cfg = parse(
            "[dns]\nrefuse_with = \"nxdomain\"\nrebind_allow = [\"10.20.0.0/16\", \"fd00::1\"]\nmax_addrs_per_name = 8\nupstream_timeout = 1\n",
        )
        .unwrap();
        assert_eq!(cfg.dns.refuse_with, RefuseWith::NxDomain);
        assert_eq!(
            cfg.dns.rebind_allow,
            vec![
                "10.20.0.0/16".parse::<IpNetwork>().unwrap(),
                "fd00::1/128".parse::<IpNetwork>().unwrap()
            ]
        );
        assert_eq!(cfg.dns.max_addrs_per_name, 8);
        assert_eq!(cfg.dns.upstream_timeout, Duration::from_secs(1));
        let errs = parse(
            "[dns]\nrefuse_with = \"drop\"\nrebind_allow = [\"10.20.0.1/16\", \"x\"]\nmax_addrs_per_name = 0\nupstream_timeout = 31\n",
        )
        .unwrap_err();
        assert_eq!(errs.len(), 5, "{errs:#?}");
        assert!(errs[0].starts_with("/etc/egressd/config.toml:2:15: \"drop\": dns.refuse_with must be \"refused\" or \"nxdomain\""), "{}", errs[0]);
        assert!(
            errs[1]
                .starts_with("/etc/egressd/config.toml:3:17: \"10.20.0.1/16\": dns.rebind_allow"),
            "{}",
            errs[1]
        );
        assert!(errs[2].contains(":3:33: \"x\""), "{}", errs[2]);
        assert!(
            errs[3].contains(":4:22: \"0\": dns.max_addrs_per_name must be from 1 to 1024"),
            "{}",
            errs[3]
        );
        assert!(
            errs[4].contains(":5:20: \"31\": dns.upstream_timeout"),
            "{}",
            errs[4]
        );
    }

    #[test]
    fn runtime_keys() {
        let cfg = parse("[runtime]\nrunc = \"/usr/bin/runc\"\nhook_timeout = 3\n").unwrap();
        assert_eq!(cfg.runtime.runc, PathBuf::from("/usr/bin/runc"));
        assert_eq!(cfg.runtime.hook_timeout, Duration::from_secs(3));
        let errs = parse("[runtime]\nrunc = \"runc\"\nhook_timeout = 0\n").unwrap_err();
        assert_eq!(
            errs,
            vec![
                "/etc/egressd/config.toml:2:8: \"runc\": runtime.runc must be an absolute path",
                "/etc/egressd/config.toml:3:16: \"0\": runtime.hook_timeout must be from 1 to 60 seconds",
            ]
        );
    }

    #[test]
    fn all_keys() {
        let cfg = parse(
            r#"
label_prefix = "com.example.fw"
profile_dirs = ["/opt/profiles"]
allow_inline_rules = false
allow_broad_cidrs = true
default_mode = "report"
on_unenforceable = "warn"
log_format = "json"
nflog_group = 0
[dns]
mode = "proxy"
upstreams = ["192.0.2.53", "192.0.2.54:5353", "2001:db8::53", "[2001:db8::54]:5353"]
min_ttl = 1
max_ttl = 1
grace = 0
[docker]
socket = "/run/docker.sock"
[control]
socket = "/run/x.sock"
group = "wheel"
"#,
        )
        .unwrap();
        assert_eq!(cfg.label_prefix, "com.example.fw");
        assert_eq!(cfg.profile_dirs, vec![PathBuf::from("/opt/profiles")]);
        assert!(!cfg.allow_inline_rules);
        assert!(cfg.allow_broad_cidrs);
        assert_eq!(cfg.default_mode, Mode::Report);
        assert_eq!(cfg.on_unenforceable, OnUnenforceable::Warn);
        assert_eq!(cfg.log_format, LogFormat::Json);
        assert_eq!(cfg.nflog_group, 0);
        assert_eq!(cfg.dns.mode, DnsMode::Proxy);
        assert_eq!(
            cfg.dns.upstreams,
            vec![
                "192.0.2.53:53".parse().unwrap(),
                "192.0.2.54:5353".parse().unwrap(),
                "[2001:db8::53]:53".parse().unwrap(),
                "[2001:db8::54]:5353".parse().unwrap(),
            ]
        );
        assert_eq!(cfg.dns.min_ttl, Duration::from_secs(1));
        assert_eq!(cfg.dns.max_ttl, Duration::from_secs(1));
        assert_eq!(cfg.dns.grace, Duration::ZERO);
        assert_eq!(cfg.docker.socket, PathBuf::from("/run/docker.sock"));
        assert_eq!(cfg.control.socket, PathBuf::from("/run/x.sock"));
        assert_eq!(cfg.control.group, "wheel");
        assert!(cfg.rule_options().allow_broad_cidrs);
    }

    #[test]
    fn unknown_keys_refused_with_position() {
        assert_eq!(
            parse("label_prefx = \"x\"\n").unwrap_err()[0]
                .split(", expected")
                .next()
                .unwrap(),
            "/etc/egressd/config.toml:1:1: \"label_prefx\": unknown field `label_prefx`"
        );
        let errs = parse("[dns]\nmin_ttl = 5\nmax-ttl = 9\n").unwrap_err();
        assert!(
            errs[0].starts_with("/etc/egressd/config.toml:3:1: \"max-ttl\": unknown field"),
            "{errs:?}"
        );
        let errs = parse("[dnss]\n").unwrap_err();
        assert!(errs[0].contains("unknown field `dnss`"), "{errs:?}");
    }

    #[test]
    fn syntax_errors_have_position() {
        let errs = parse("a = \n").unwrap_err();
        assert!(
            errs[0].starts_with("/etc/egressd/config.toml:1:"),
            "{errs:?}"
        );
        let errs = parse("allow_inline_rules = true\nnflog_group = \"x\n").unwrap_err();
        assert!(
            errs[0].starts_with("/etc/egressd/config.toml:2:"),
            "{errs:?}"
        );
    }

    #[test]
    fn wrong_type_has_position() {
        let errs = parse("allow_inline_rules = \"yes\"\n").unwrap_err();
        assert!(
            errs[0].starts_with("/etc/egressd/config.toml:1:22: \"\\\"yes\\\"\": invalid type"),
            "{errs:?}"
        );
    }

    #[test]
    fn enum_values_name_the_token() {
        let errs = parse(
            "default_mode = \"enforcing\"\non_unenforceable = \"kill\"\nlog_format = \"xml\"\n[dns]\nmode = \"tunnel\"\n",
        )
        .unwrap_err();
        assert_eq!(
            errs,
            vec![
                "/etc/egressd/config.toml:1:16: \"enforcing\": default_mode must be \"enforce\" or \"report\"",
                "/etc/egressd/config.toml:2:20: \"kill\": on_unenforceable must be \"stop\" or \"warn\"",
                "/etc/egressd/config.toml:3:14: \"xml\": log_format must be \"text\" or \"json\"",
                "/etc/egressd/config.toml:5:8: \"tunnel\": dns.mode must be \"resolve\" or \"proxy\"",
            ]
        );
    }

    #[test]
    fn ttl_rules() {
        let errs = parse("[dns]\nmin_ttl = 0\n").unwrap_err();
        assert_eq!(
            errs,
            vec![
                "/etc/egressd/config.toml:2:11: \"0\": dns.min_ttl must be from 1 to 86400 seconds"
            ]
        );
        let errs = parse("[dns]\nmin_ttl = 600\nmax_ttl = 60\n").unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].starts_with("/etc/egressd/config.toml:2:11: \"600\": dns.min_ttl must not be greater than dns.max_ttl"),
            "{errs:?}"
        );
        // Against a default.
        let errs = parse("[dns]\nmax_ttl = 10\n").unwrap_err();
        assert!(
            errs[0].contains("the default dns.min_ttl is 30"),
            "{errs:?}"
        );
        let errs = parse("[dns]\nmin_ttl = 4000\n").unwrap_err();
        assert!(
            errs[0].contains("the default dns.max_ttl is 3600"),
            "{errs:?}"
        );
        assert!(parse("[dns]\nmin_ttl = 60\nmax_ttl = 60\n").is_ok());
        assert!(parse("[dns]\ngrace = -1\n").is_err());
        assert!(parse("[dns]\nmax_ttl = 86401\n").is_err());
    }

    #[test]
    fn upstreams() {
        let errs =
            parse("[dns]\nupstreams = [\"1.1.1.1\", \"dns.google\", \"10.0.0.1:0\", \"::1:53\"]\n")
                .unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].starts_with(
            "/etc/egressd/config.toml:2:25: \"dns.google\": dns.upstreams entries must be"
        ));
        assert!(errs[1].starts_with("/etc/egressd/config.toml:2:39: \"10.0.0.1:0\""));
        // "::1:53" is the IPv6 address ::1:53, port 53.
        let cfg = parse("[dns]\nupstreams = [\"::1:53\"]\n").unwrap();
        assert_eq!(cfg.dns.upstreams, vec!["[::1:53]:53".parse().unwrap()]);
    }

    #[test]
    fn nflog_group_range() {
        assert_eq!(parse("nflog_group = 65535\n").unwrap().nflog_group, 65535);
        let errs = parse("nflog_group = 65536\n").unwrap_err();
        assert_eq!(
            errs,
            vec!["/etc/egressd/config.toml:1:15: \"65536\": nflog_group must be from 0 to 65535"]
        );
        assert!(parse("nflog_group = -1\n").is_err());
    }

    #[test]
    fn paths_and_names() {
        let errs = parse(
            "label_prefix = \"Egress\"\nprofile_dirs = [\"/ok\", \"relative/dir\"]\n[docker]\nsocket = \"docker.sock\"\n[control]\ngroup = \"\"\n",
        )
        .unwrap_err();
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(
            errs[0].starts_with("/etc/egressd/config.toml:1:16: \"Egress\": label_prefix must be")
        );
        assert!(errs[1].starts_with("/etc/egressd/config.toml:2:24: \"relative/dir\": profile_dirs entries must be an absolute path"));
        assert!(errs[2].starts_with(
            "/etc/egressd/config.toml:4:10: \"docker.sock\": docker.socket must be an absolute path"
        ));
        assert!(errs[3].starts_with("/etc/egressd/config.toml:6:9: control.group must be"));
        for ok in ["egressd", "com.example.egressd", "a", "x-1"] {
            assert!(is_valid_label_prefix(ok), "{ok}");
        }
        for bad in ["", ".a", "a.", "a..b", "A", "a_b", "a b"] {
            assert!(!is_valid_label_prefix(bad), "{bad}");
        }
    }

    #[test]
    fn metrics_listen() {
        assert_eq!(parse("").unwrap().metrics.listen, None);
        assert_eq!(
            parse("[metrics]\nlisten = \"\"\n").unwrap().metrics.listen,
            None
        );
        assert_eq!(
            parse("[metrics]\nlisten = \"127.0.0.1:9464\"\n")
                .unwrap()
                .metrics
                .listen,
            Some("127.0.0.1:9464".parse().unwrap())
        );
        assert_eq!(
            parse("[metrics]\nlisten = \"[::1]:9464\"\n")
                .unwrap()
                .metrics
                .listen,
            Some("[::1]:9464".parse().unwrap())
        );
        let errs = parse("[metrics]\nlisten = \"localhost:9464\"\n").unwrap_err();
        assert_eq!(
            errs,
            vec![
                "/etc/egressd/config.toml:2:10: \"localhost:9464\": metrics.listen must be \"IP:PORT\" (\"[IPv6]:PORT\"), port 1-65535, or \"\" for no endpoint; host names are not accepted"
            ]
        );
        for bad in [
            "127.0.0.1",
            "127.0.0.1:0",
            "127.0.0.1:65536",
            " 127.0.0.1:9464",
        ] {
            assert!(
                parse(&format!("[metrics]\nlisten = \"{bad}\"\n")).is_err(),
                "{bad:?}"
            );
        }
        let errs = parse("[metrics]\nport = 9464\n").unwrap_err();
        assert!(errs[0].contains("unknown field `port`"), "{errs:?}");
    }

    #[test]
    fn anomaly_thresholds() {
        let cfg =
            parse("[anomaly]\nnew_connections_per_minute = 120\nbytes_per_flow = \"100MB\"\n")
                .unwrap();
        assert_eq!(cfg.anomaly.new_connections_per_minute, Some(120));
        assert_eq!(cfg.anomaly.bytes_per_flow, Some(100_000_000));
        let cfg = parse("[anomaly]\nbytes_per_flow = 5000\n").unwrap();
        assert_eq!(cfg.anomaly.bytes_per_flow, Some(5000));
        assert_eq!(cfg.anomaly.new_connections_per_minute, None);
        assert_eq!(parse("").unwrap().anomaly, AnomalyConfig::default());
        let errs =
            parse("[anomaly]\nnew_connections_per_minute = 0\nbytes_per_flow = \"100 MB\"\n")
                .unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs[0].starts_with(
                "/etc/egressd/config.toml:2:30: \"0\": anomaly.new_connections_per_minute must be"
            ),
            "{errs:?}"
        );
        assert!(
            errs[1].starts_with(
                "/etc/egressd/config.toml:3:18: \"100 MB\": anomaly.bytes_per_flow must be"
            ),
            "{errs:?}"
        );
        assert!(parse("[anomaly]\nbytes_per_flow = -1\n").is_err());
        assert!(parse("[anomaly]\nbytes_per_flow = true\n").is_err());
        assert!(parse("[anomaly]\nnew_connections_per_minute = 4294967296\n").is_err());
    }

    #[test]
    fn load_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        assert!(Config::load_optional(&path).unwrap().is_none());
        let errs = Config::load(&path).unwrap_err();
        assert!(errs.to_string().contains("cannot read config"), "{errs}");
        fs::write(&path, "nflog_group = 7\n").unwrap();
        assert_eq!(Config::load(&path).unwrap().nflog_group, 7);
        assert_eq!(
            Config::load_optional(&path).unwrap().unwrap().nflog_group,
            7
        );
    }
}
