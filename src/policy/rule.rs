//! The rule grammar: `HOST[:PORTS][/PROTO]`, and the inline rule list of the `allow` label.
//!
//! ```text
//! list   = token *( "," token )            ; whitespace around tokens is trimmed
//! token  = rule / ports-continuation
//! rule   = host [ ":" port-or-range ] [ "/" proto ]
//!        / "[" ipv6 [ "/" prefix ] "]" [ ":" port-or-range ] [ "/" proto ]
//!        / ipv6 [ "/" prefix ] [ "/" proto ]        ; unbracketed IPv6: no port part
//! ports-continuation = port-or-range [ "/" proto ]  ; adds ports to the previous rule
//! port-or-range = port / port "-" port             ; 1-65535, first <= last
//! proto  = "tcp" / "udp"                           ; default tcp
//! ```
//!
//! See `docs/policy.md` for the reasons behind each restriction.

use std::collections::HashSet;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::domain::{DomainError, parse_domain_or_wildcard};
use super::{Host, PortRange, Proto, Rule, RuleSource};

/// The port a rule gets when it names none.
pub const DEFAULT_PORT: u16 = 443;
/// Most ports a domain or wildcard rule may cover: the firewall adds one set element per
/// resolved address, protocol and port.
pub const MAX_DOMAIN_RULE_PORTS: u32 = 1024;
/// IPv4 networks with a shorter prefix than this are "broad" (refused unless
/// `allow_broad_cidrs = true`).
pub const MIN_V4_PREFIX: u8 = 8;
/// IPv6 networks with a shorter prefix than this are "broad" (`fd00::/8`, all locally
/// assigned unique local addresses, is still accepted).
pub const MIN_V6_PREFIX: u8 = 8;

/// Settings from the config that change what a rule may say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuleOptions {
    /// Accept CIDRs shorter than [`MIN_V4_PREFIX`] / [`MIN_V6_PREFIX`] (including `/0`).
    pub allow_broad_cidrs: bool,
}

/// Why a rule, host, port or protocol was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("empty rule (two commas in a row, or a leading or trailing comma)")]
    Empty,
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error("\"{0}\" is not a valid IP address")]
    BadAddress(String),
    #[error(
        "\"{0}\" is not a valid IPv6 address (an IPv6 address with a port must be bracketed, as in [2001:db8::1]:443; a host name cannot contain \":\")"
    )]
    BadIpv6(String),
    #[error("brackets are only for IPv6 addresses, and \"{0}\" is not one")]
    BracketsNotIpv6(String),
    #[error("\"[\" is not closed by \"]\"")]
    UnclosedBracket,
    #[error("unexpected \"{0}\" after \"]\"; expected \":PORT\" or \"/PROTO\"")]
    AfterBracket(String),
    #[error("prefix length \"{prefix}\" is not a number from 0 to {max}")]
    BadPrefix { prefix: String, max: u8 },
    #[error("host bits are set in {given}; did you mean {suggested}?")]
    HostBitsSet { given: String, suggested: String },
    #[error(
        "{net} is broader than /{min}; such networks need allow_broad_cidrs = true in the config"
    )]
    BroadCidr { net: String, min: u8 },
    #[error("{0} is the unspecified address, not a destination")]
    Unspecified(String),
    #[error("nothing after \"/\"; expected a prefix length or a protocol (tcp or udp)")]
    TrailingSlash,
    #[error("unknown protocol \"{0}\"; use tcp or udp")]
    BadProto(String),
    #[error("empty port after \":\"")]
    EmptyPort,
    #[error("\"{0}\" is not a port number (1-65535)")]
    NotAPort(String),
    #[error("port {0} is out of range 1-65535")]
    PortOutOfRange(String),
    #[error("port range {first}-{last} is reversed; write {last}-{first}")]
    ReversedRange { first: u16, last: u16 },
    #[error(
        "this rule covers {count} ports; a domain rule may cover at most {MAX_DOMAIN_RULE_PORTS} (the firewall adds one set element per port for each resolved address); use fewer or narrower ranges"
    )]
    TooManyPorts { count: u32 },
    #[error("a port list needs a rule before it (write HOST:PORTS)")]
    OrphanPorts,
    #[error(
        "this port continues a rule that names no port, so it is unclear whether the default 443 is meant too; write the first port after the host (HOST:PORT,PORT)"
    )]
    ContinuationWithoutPort,
    #[error(
        "ports follow a \"/PROTO\"; put the protocol after the last port of the rule (HOST:PORT,PORT/udp)"
    )]
    PortsAfterProto,
}

/// A [`RuleError`] located in a comma-separated label value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenError {
    /// 1-based column (in characters) where `token` starts in the label value.
    pub column: usize,
    /// The comma-separated token, trimmed.
    pub token: String,
    pub error: RuleError,
}

/// Splits a comma-separated label value into trimmed tokens with their 1-based columns.
/// An empty value is one empty token.
pub fn split_tokens(value: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = 0;
    for piece in value.split(',') {
        let lead = piece.len() - piece.trim_start().len();
        let column = value[..start + lead].chars().count() + 1;
        out.push((column, piece.trim()));
        start += piece.len() + 1;
    }
    out
}

/// A rule whose port list may still grow.
struct Pending {
    column: usize,
    token: String,
    /// `None` when the head token had an error (the rule is dropped, and later
    /// continuation tokens are only checked for their own syntax).
    host: Option<Host>,
    ports: Vec<PortRange>,
    explicit_port: bool,
    proto: Proto,
    proto_given: bool,
}

/// Parses the value of the inline `allow` label. Returns every error, each with its column.
/// Duplicate rules are merged.
pub fn parse_rule_list(
    value: &str,
    source: &RuleSource,
    opts: &RuleOptions,
) -> Result<Vec<Rule>, Vec<TokenError>> {
    let mut rules = Vec::new();
    let mut errors = Vec::new();
    let mut pending: Option<Pending> = None;

    for (column, token) in split_tokens(value) {
        let at = |error: RuleError| TokenError {
            column,
            token: token.to_string(),
            error,
        };
        if token.is_empty() {
            errors.push(at(RuleError::Empty));
            continue;
        }
        if is_port_continuation(token) {
            let parsed = split_proto(token)
                .and_then(|(ports, proto)| parse_port_range(ports).map(|range| (range, proto)));
            let Some(p) = pending.as_mut() else {
                errors.push(at(RuleError::OrphanPorts));
                continue;
            };
            match parsed {
                Err(e) => {
                    errors.push(at(e));
                    p.host = None;
                }
                Ok(_) if p.host.is_none() => {}
                Ok(_) if !p.explicit_port => {
                    errors.push(at(RuleError::ContinuationWithoutPort));
                    p.host = None;
                }
                Ok(_) if p.proto_given => {
                    errors.push(at(RuleError::PortsAfterProto));
                    p.host = None;
                }
                Ok((range, proto)) => {
                    p.ports.push(range);
                    if let Some(proto) = proto {
                        p.proto = proto;
                        p.proto_given = true;
                    }
                }
            }
            continue;
        }

        if let Some(p) = pending.take() {
            finish(p, source, &mut rules, &mut errors);
        }
        let mut head_errors = Vec::new();
        let (host, port, proto, explicit_port) = match parse_head(token, opts) {
            Ok(parts) => parts,
            Err(es) => {
                head_errors = es;
                (None, None, None, true)
            }
        };
        let failed = !head_errors.is_empty();
        errors.extend(head_errors.into_iter().map(at));
        pending = Some(Pending {
            column,
            token: token.to_string(),
            host: if failed { None } else { host },
            ports: port.into_iter().collect(),
            explicit_port,
            proto: proto.unwrap_or_default(),
            proto_given: proto.is_some(),
        });
    }
    if let Some(p) = pending.take() {
        finish(p, source, &mut rules, &mut errors);
    }
    if errors.is_empty() {
        Ok(merge_duplicates(rules))
    } else {
        Err(errors)
    }
}

fn finish(p: Pending, source: &RuleSource, rules: &mut Vec<Rule>, errors: &mut Vec<TokenError>) {
    let Some(host) = p.host else { return };
    let ports = if p.ports.is_empty() {
        vec![PortRange::single(DEFAULT_PORT)]
    } else {
        normalize_ports(p.ports)
    };
    if let Err(error) = check_port_count(&host, &ports) {
        errors.push(TokenError {
            column: p.column,
            token: p.token,
            error,
        });
        return;
    }
    rules.push(Rule {
        host,
        ports,
        proto: p.proto,
        source: source.clone(),
    });
}

/// `443`, `8000-8100`, `443/udp`: a token that only adds ports to the previous rule.
fn is_port_continuation(token: &str) -> bool {
    let ports = match token.rsplit_once('/') {
        Some((ports, proto)) if proto.bytes().all(|b| b.is_ascii_alphabetic()) => ports,
        Some(_) => return false,
        None => token,
    };
    ports.as_bytes().first().is_some_and(u8::is_ascii_digit)
        && ports.bytes().all(|b| b.is_ascii_digit() || b == b'-')
}

/// Splits a `/tcp` or `/udp` suffix off. A suffix of letters after the last `/` is a
/// protocol; digits are a CIDR prefix length and stay.
fn split_proto(token: &str) -> Result<(&str, Option<Proto>), RuleError> {
    match token.rsplit_once('/') {
        Some((_, "")) => Err(RuleError::TrailingSlash),
        Some((rest, suffix)) if suffix.bytes().all(|b| b.is_ascii_alphabetic()) => {
            Ok((rest, Some(parse_proto(suffix)?)))
        }
        _ => Ok((token, None)),
    }
}

/// Parses one rule token: host, optional port or range, optional protocol, and whether a
/// port was written. Collects an error for each part that is wrong.
#[allow(clippy::type_complexity)]
fn parse_head(
    token: &str,
    opts: &RuleOptions,
) -> Result<(Option<Host>, Option<PortRange>, Option<Proto>, bool), Vec<RuleError>> {
    let (rest, proto) = split_proto(token).map_err(|e| vec![e])?;
    let (host_text, port_text) = split_host_port(rest).map_err(|e| vec![e])?;
    let host = parse_host(host_text, opts);
    let port = port_text.map(|p| {
        if p.is_empty() {
            Err(RuleError::EmptyPort)
        } else {
            parse_port_range(p)
        }
    });
    let mut errors = Vec::new();
    let host = host.map_err(|e| errors.push(e)).ok();
    let explicit_port = port.is_some();
    let port = match port {
        Some(Ok(p)) => Some(p),
        Some(Err(e)) => {
            errors.push(e);
            None
        }
        None => None,
    };
    if errors.is_empty() {
        Ok((host, port, proto, explicit_port))
    } else {
        Err(errors)
    }
}

/// Splits `HOST[:PORT]`, where HOST may be `[IPv6]` or `[IPv6/prefix]`, and an unbracketed
/// IPv6 address (two or more colons) has no port part.
fn split_host_port(s: &str) -> Result<(&str, Option<&str>), RuleError> {
    if let Some(inner_and_rest) = s.strip_prefix('[') {
        let Some(close) = inner_and_rest.find(']') else {
            return Err(RuleError::UnclosedBracket);
        };
        let host = &s[..close + 2];
        let after = &inner_and_rest[close + 1..];
        return match after {
            "" => Ok((host, None)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((host, Some(port))),
                None => Err(RuleError::AfterBracket(after.to_string())),
            },
        };
    }
    if s.matches(':').count() >= 2 {
        return Ok((s, None));
    }
    match s.split_once(':') {
        Some((host, port)) => Ok((host, Some(port))),
        None => Ok((s, None)),
    }
}

/// Parses a HOST: a domain, `*.domain`, an IPv4 or IPv6 address (optionally in brackets),
/// or a CIDR.
pub fn parse_host(s: &str, opts: &RuleOptions) -> Result<Host, RuleError> {
    if let Some(inner) = s.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or(RuleError::UnclosedBracket)?;
        let addr = inner.split_once('/').map_or(inner, |(a, _)| a);
        if !addr.parse::<IpAddr>().is_ok_and(|a| a.is_ipv6()) {
            return Err(RuleError::BracketsNotIpv6(inner.to_string()));
        }
        return parse_host(inner, opts);
    }
    if s.contains('/') {
        return parse_cidr(s, opts);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        if ip.is_unspecified() {
            return Err(RuleError::Unspecified(ip.to_string()));
        }
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        return IpNetwork::new(ip, prefix)
            .map(Host::Net)
            .map_err(|_| RuleError::BadAddress(s.to_string()));
    }
    if s.contains(':') {
        return Err(RuleError::BadIpv6(s.to_string()));
    }
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(RuleError::BadAddress(s.to_string()));
    }
    Ok(parse_domain_or_wildcard(s)?)
}

fn parse_cidr(s: &str, opts: &RuleOptions) -> Result<Host, RuleError> {
    let (addr, prefix_text) = s
        .split_once('/')
        .ok_or(RuleError::BadAddress(s.to_string()))?;
    let ip: IpAddr = addr.parse().map_err(|_| {
        if addr.contains(':') {
            RuleError::BadIpv6(addr.to_string())
        } else {
            RuleError::BadAddress(addr.to_string())
        }
    })?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let bad_prefix = || RuleError::BadPrefix {
        prefix: prefix_text.to_string(),
        max,
    };
    if prefix_text.is_empty() || !prefix_text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad_prefix());
    }
    let prefix: u8 = prefix_text.parse().map_err(|_| bad_prefix())?;
    let net = IpNetwork::new(ip, prefix).map_err(|_| bad_prefix())?;
    if net.network() != ip {
        return Err(RuleError::HostBitsSet {
            given: s.to_string(),
            suggested: format!("{}/{}", net.network(), prefix),
        });
    }
    if prefix == max && ip.is_unspecified() {
        return Err(RuleError::Unspecified(s.to_string()));
    }
    let min = if ip.is_ipv4() {
        MIN_V4_PREFIX
    } else {
        MIN_V6_PREFIX
    };
    if prefix < min && !opts.allow_broad_cidrs {
        return Err(RuleError::BroadCidr {
            net: net.to_string(),
            min,
        });
    }
    Ok(Host::Net(net))
}

/// Parses `tcp` or `udp` (lower case).
pub fn parse_proto(s: &str) -> Result<Proto, RuleError> {
    match s {
        "tcp" => Ok(Proto::Tcp),
        "udp" => Ok(Proto::Udp),
        _ => Err(RuleError::BadProto(s.to_string())),
    }
}

/// Parses a port number, 1-65535.
pub fn parse_port(s: &str) -> Result<u16, RuleError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RuleError::NotAPort(s.to_string()));
    }
    match s.parse::<u32>() {
        Ok(n @ 1..=65535) => Ok(n as u16),
        _ => Err(RuleError::PortOutOfRange(s.to_string())),
    }
}

/// Parses `443` or `8000-8100`.
pub fn parse_port_range(s: &str) -> Result<PortRange, RuleError> {
    match s.split_once('-') {
        Some((first, last)) => {
            let first = parse_port(first)?;
            let last = parse_port(last)?;
            if first > last {
                return Err(RuleError::ReversedRange { first, last });
            }
            Ok(PortRange { first, last })
        }
        None => parse_port(s).map(PortRange::single),
    }
}

/// Sorts ranges and merges overlapping or adjacent ones.
pub fn normalize_ports(mut ports: Vec<PortRange>) -> Vec<PortRange> {
    ports.sort();
    let mut out: Vec<PortRange> = Vec::with_capacity(ports.len());
    for r in ports {
        match out.last_mut() {
            Some(prev) if u32::from(r.first) <= u32::from(prev.last) + 1 => {
                prev.last = prev.last.max(r.last);
            }
            _ => out.push(r),
        }
    }
    out
}

/// How many ports the ranges cover (ranges must not overlap; see [`normalize_ports`]).
pub fn port_count(ports: &[PortRange]) -> u32 {
    ports
        .iter()
        .map(|r| u32::from(r.last) - u32::from(r.first) + 1)
        .sum()
}

/// Refuses a domain or wildcard rule that covers more than [`MAX_DOMAIN_RULE_PORTS`] ports.
pub fn check_port_count(host: &Host, ports: &[PortRange]) -> Result<(), RuleError> {
    let count = port_count(ports);
    match host {
        Host::Domain(_) | Host::Wildcard(_) if count > MAX_DOMAIN_RULE_PORTS => {
            Err(RuleError::TooManyPorts { count })
        }
        _ => Ok(()),
    }
}

/// Drops rules equal in host, ports and protocol to an earlier one (whatever their source):
/// the first one, and its source, is kept.
pub fn merge_duplicates(rules: Vec<Rule>) -> Vec<Rule> {
    let mut seen = HashSet::new();
    rules
        .into_iter()
        .filter(|r| seen.insert((r.host.clone(), r.ports.clone(), r.proto)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: RuleOptions = RuleOptions {
        allow_broad_cidrs: false,
    };

    fn src() -> RuleSource {
        RuleSource::Label("egressd.allow".into())
    }

    fn parse(v: &str) -> Result<Vec<Rule>, Vec<TokenError>> {
        parse_rule_list(v, &src(), &STRICT)
    }

    fn one_error(v: &str) -> TokenError {
        let errs = parse(v).expect_err(v);
        assert_eq!(errs.len(), 1, "{v}: {errs:?}");
        errs.into_iter().next().unwrap()
    }

    fn pr(first: u16, last: u16) -> PortRange {
        PortRange { first, last }
    }

    fn net(s: &str) -> Host {
        Host::Net(s.parse().unwrap())
    }

    fn rule(host: Host, ports: Vec<PortRange>, proto: Proto) -> Rule {
        Rule {
            host,
            ports,
            proto,
            source: src(),
        }
    }

    #[test]
    fn domain_defaults_to_443_tcp() {
        assert_eq!(
            parse("api.openai.com").unwrap(),
            vec![rule(
                Host::Domain("api.openai.com".into()),
                vec![pr(443, 443)],
                Proto::Tcp
            )]
        );
    }

    #[test]
    fn port_range_and_proto() {
        assert_eq!(
            parse("a.example:8000-8100/udp").unwrap(),
            vec![rule(
                Host::Domain("a.example".into()),
                vec![pr(8000, 8100)],
                Proto::Udp
            )]
        );
        assert_eq!(parse("a.example/udp").unwrap()[0].ports, vec![pr(443, 443)]);
    }

    #[test]
    fn port_continuation() {
        let rules = parse("a.com:80,443,b.com").unwrap();
        assert_eq!(
            rules,
            vec![
                rule(
                    Host::Domain("a.com".into()),
                    vec![pr(80, 80), pr(443, 443)],
                    Proto::Tcp
                ),
                rule(Host::Domain("b.com".into()), vec![pr(443, 443)], Proto::Tcp),
            ]
        );
        // Ranges continue too, adjacent ranges merge, and a final /udp applies to the rule.
        let rules = parse("a.com:53, 8000-8100 ,8101/udp").unwrap();
        assert_eq!(
            rules,
            vec![rule(
                Host::Domain("a.com".into()),
                vec![pr(53, 53), pr(8000, 8101)],
                Proto::Udp
            )]
        );
    }

    #[test]
    fn continuation_errors() {
        let e = one_error("443,a.com");
        assert_eq!((e.column, e.token.as_str()), (1, "443"));
        assert_eq!(e.error, RuleError::OrphanPorts);

        let e = one_error("a.com,8080");
        assert_eq!((e.column, e.token.as_str()), (7, "8080"));
        assert_eq!(e.error, RuleError::ContinuationWithoutPort);

        let e = one_error("a.com:80/udp,443");
        assert_eq!(e.error, RuleError::PortsAfterProto);

        // After a bad head, continuation tokens are not reported as orphans.
        let e = one_error("a..com:80,443");
        assert_eq!(e.error, RuleError::Domain(DomainError::EmptyLabel));
        // ... but their own syntax still is.
        let errs = parse("a..com:80,0").unwrap_err();
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[1].error, RuleError::PortOutOfRange("0".into()));
        assert_eq!(errs[1].column, 11);
    }

    #[test]
    fn columns_and_tokens() {
        let e = one_error("pypi.org, api.openai.com:0");
        assert_eq!(e.column, 11);
        assert_eq!(e.token, "api.openai.com:0");
        assert_eq!(e.error.to_string(), "port 0 is out of range 1-65535");
        // Columns count characters, not bytes.
        let errs = parse("bücher.de:1,x.com:0").unwrap_err();
        assert_eq!((errs[0].column, errs[0].token.as_str()), (1, "bücher.de:1"));
        assert_eq!((errs[1].column, errs[1].token.as_str()), (13, "x.com:0"));
    }

    #[test]
    fn empty_tokens_refused() {
        for v in ["", " ", "a.com,", ",a.com", "a.com,,b.com", "a.com, ,b.com"] {
            let errs = parse(v).expect_err(v);
            assert!(errs.iter().any(|e| e.error == RuleError::Empty), "{v}");
        }
        assert_eq!(one_error("a.com,,b.com").column, 7);
    }

    #[test]
    fn whitespace_trimmed() {
        assert_eq!(parse("  a.com:80 ,\tb.com ").unwrap().len(), 2);
    }

    #[test]
    fn ports_bad() {
        assert_eq!(
            one_error("a.com:0").error,
            RuleError::PortOutOfRange("0".into())
        );
        assert_eq!(
            one_error("a.com:65536").error,
            RuleError::PortOutOfRange("65536".into())
        );
        assert_eq!(
            one_error("a.com:99999999999").error,
            RuleError::PortOutOfRange("99999999999".into())
        );
        assert_eq!(
            one_error("a.com:9000-8000").error,
            RuleError::ReversedRange {
                first: 9000,
                last: 8000
            }
        );
        assert_eq!(one_error("a.com:").error, RuleError::EmptyPort);
        assert_eq!(
            one_error("a.com:http").error,
            RuleError::NotAPort("http".into())
        );
        assert_eq!(one_error("a.com:80-").error, RuleError::NotAPort("".into()));
        assert!(parse("a.com:65535,1").is_ok());
        assert_eq!(
            parse("a.com:8000-8000").unwrap()[0].ports,
            vec![pr(8000, 8000)]
        );
    }

    #[test]
    fn proto_bad() {
        assert_eq!(
            one_error("a.com:53/sctp").error,
            RuleError::BadProto("sctp".into())
        );
        assert_eq!(
            one_error("a.com/TCP").error,
            RuleError::BadProto("TCP".into())
        );
        assert_eq!(one_error("a.com/").error, RuleError::TrailingSlash);
    }

    #[test]
    fn ipv4_and_cidr() {
        assert_eq!(parse("10.1.2.3:5432").unwrap()[0].host, net("10.1.2.3/32"));
        assert_eq!(
            parse("10.0.0.0/8").unwrap(),
            vec![rule(net("10.0.0.0/8"), vec![pr(443, 443)], Proto::Tcp)]
        );
        assert_eq!(
            one_error("256.1.1.1").error,
            RuleError::BadAddress("256.1.1.1".into())
        );
        assert_eq!(
            one_error("10.0.0/8").error,
            RuleError::BadAddress("10.0.0".into())
        );
        assert_eq!(
            one_error("10.0.0.0/33").error,
            RuleError::BadPrefix {
                prefix: "33".into(),
                max: 32
            }
        );
        assert_eq!(
            one_error("0.0.0.0").error,
            RuleError::Unspecified("0.0.0.0".into())
        );
        assert_eq!(one_error("::").error, RuleError::Unspecified("::".into()));
    }

    #[test]
    fn cidr_vs_proto_suffix() {
        assert_eq!(
            parse("10.0.0.0/8/udp").unwrap(),
            vec![rule(net("10.0.0.0/8"), vec![pr(443, 443)], Proto::Udp)]
        );
        assert_eq!(
            parse("10.0.0.0/8:53/udp").unwrap(),
            vec![rule(net("10.0.0.0/8"), vec![pr(53, 53)], Proto::Udp)]
        );
        assert_eq!(
            parse("192.168.1.0/24:53/udp,5353/udp").unwrap_err()[0].error,
            RuleError::PortsAfterProto
        );
        assert_eq!(
            parse("10.0.0.0/8:53,5353/udp").unwrap(),
            vec![rule(
                net("10.0.0.0/8"),
                vec![pr(53, 53), pr(5353, 5353)],
                Proto::Udp
            )]
        );
        assert_eq!(
            parse("[fd00::/8]:443").unwrap(),
            vec![rule(net("fd00::/8"), vec![pr(443, 443)], Proto::Tcp)]
        );
        assert_eq!(
            parse("fd00::/8/udp").unwrap(),
            vec![rule(net("fd00::/8"), vec![pr(443, 443)], Proto::Udp)]
        );
    }

    #[test]
    fn host_bits_set_has_hint() {
        let e = one_error("10.0.0.1/8");
        assert_eq!(
            e.error,
            RuleError::HostBitsSet {
                given: "10.0.0.1/8".into(),
                suggested: "10.0.0.0/8".into()
            }
        );
        assert!(e.error.to_string().contains("did you mean 10.0.0.0/8?"));
        assert!(matches!(
            one_error("[fd00::1/8]").error,
            RuleError::HostBitsSet { .. }
        ));
    }

    #[test]
    fn broad_cidrs_need_config() {
        for v in [
            "0.0.0.0/0",
            "::/0",
            "0.0.0.0/1",
            "128.0.0.0/7",
            "2000::/3",
            "fc00::/7",
        ] {
            assert!(
                matches!(one_error(v).error, RuleError::BroadCidr { .. }),
                "{v}"
            );
            let broad = RuleOptions {
                allow_broad_cidrs: true,
            };
            assert!(parse_rule_list(v, &src(), &broad).is_ok(), "{v}");
        }
        assert!(parse("10.0.0.0/8").is_ok());
        assert!(parse("fd00::/8").is_ok());
        assert_eq!(
            one_error("0.0.0.0/0").error.to_string(),
            "0.0.0.0/0 is broader than /8; such networks need allow_broad_cidrs = true in the config"
        );
    }

    #[test]
    fn ipv6_bracketed_with_port() {
        assert_eq!(
            parse("[2001:db8::1]:443,8443").unwrap(),
            vec![rule(
                net("2001:db8::1/128"),
                vec![pr(443, 443), pr(8443, 8443)],
                Proto::Tcp
            )]
        );
        assert_eq!(parse("[2001:db8::1]/udp").unwrap()[0].proto, Proto::Udp);
        assert_eq!(parse("[2001:db8::1]").unwrap()[0].ports, vec![pr(443, 443)]);
    }

    #[test]
    fn ipv6_unbracketed_has_no_port() {
        assert_eq!(
            parse("2001:db8::1").unwrap(),
            vec![rule(net("2001:db8::1/128"), vec![pr(443, 443)], Proto::Tcp)]
        );
        // "2001:db8::1:443" is a valid IPv6 address, not address + port.
        assert_eq!(
            parse("2001:db8::1:443").unwrap()[0].host,
            net("2001:db8::1:443/128")
        );
        assert!(matches!(
            one_error("2001:db8:::443").error,
            RuleError::BadIpv6(_)
        ));
    }

    #[test]
    fn bracket_errors() {
        assert_eq!(
            one_error("[10.0.0.1]:443").error,
            RuleError::BracketsNotIpv6("10.0.0.1".into())
        );
        assert_eq!(one_error("[::1:443").error, RuleError::UnclosedBracket);
        assert_eq!(
            one_error("[::1]443").error,
            RuleError::AfterBracket("443".into())
        );
        assert_eq!(
            one_error("[a.com]:443").error,
            RuleError::BracketsNotIpv6("a.com".into())
        );
    }

    #[test]
    fn wildcard_rules() {
        assert_eq!(
            parse("*.example.com:443").unwrap()[0].host,
            Host::Wildcard("example.com".into())
        );
        assert_eq!(
            one_error("*").error,
            RuleError::Domain(DomainError::BareWildcard)
        );
        assert_eq!(
            one_error("*:443").error,
            RuleError::Domain(DomainError::BareWildcard)
        );
        assert_eq!(
            one_error("a.*.com").error,
            RuleError::Domain(DomainError::MisplacedWildcard)
        );
    }

    #[test]
    fn non_ascii_domain_says_punycode() {
        let e = one_error("bücher.example");
        assert!(e.error.to_string().contains("punycode"), "{}", e.error);
    }

    #[test]
    fn domain_port_limit() {
        assert!(parse("a.com:1-1024").is_ok());
        let e = one_error("a.com:1-1025");
        assert_eq!(e.error, RuleError::TooManyPorts { count: 1025 });
        assert!(e.error.to_string().contains("at most 1024"));
        // Summed over the continuation; overlaps count once.
        assert!(parse("a.com:1-1000,500-1024").is_ok());
        let e = one_error("a.com:1-1000,2000-2100");
        assert_eq!((e.column, e.token.as_str()), (1, "a.com:1-1000"));
        assert!(parse("*.a.com:1-2000").is_err());
        // Addresses and networks are not limited (the firewall uses interval sets).
        assert!(parse("10.0.0.0/8:1-65535").is_ok());
    }

    #[test]
    fn duplicates_merged() {
        assert_eq!(parse("a.com,A.com,a.com.:443").unwrap().len(), 1);
        assert_eq!(parse("a.com:80,443,a.com:443,80").unwrap().len(), 1);
        // Different protocol or ports: kept.
        assert_eq!(parse("a.com,a.com/udp,a.com:80").unwrap().len(), 3);
    }

    #[test]
    fn several_errors_all_reported() {
        let errs = parse("a.com:0,b..com,c.com/icmp").unwrap_err();
        let cols: Vec<_> = errs.iter().map(|e| e.column).collect();
        assert_eq!(cols, vec![1, 9, 16]);
    }

    #[test]
    fn normalize() {
        assert_eq!(
            normalize_ports(vec![pr(443, 443), pr(80, 80), pr(81, 90), pr(85, 86)]),
            vec![pr(80, 90), pr(443, 443)]
        );
        assert_eq!(
            normalize_ports(vec![pr(65535, 65535), pr(1, 65535)]),
            vec![pr(1, 65535)]
        );
    }
}
