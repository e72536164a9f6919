//! NFLOG: the packets the `inet egressd` table logs (denied, would-be-denied, over budget),
//! read from inside the container's network namespace.
//!
//! NFLOG groups belong to a network namespace, so the socket is opened on a thread that
//! entered the container's namespace ([`Netns::run`]) and stays bound there after the thread
//! is gone. It binds the configured group (`nflog_group`), asks for the first
//! [`COPY_RANGE`] bytes of each packet (the IP and transport headers, never the payload of an
//! agent's traffic) and is read without blocking, from tokio through [`NflogReader`]
//! (`AsyncFd`) or directly through [`NflogSocket::recv`].
//!
//! Parsing ([`parse_datagram`]) is pure and total: any byte string gives events and a count of
//! malformed messages, never a panic.
//!
//! [`EventLimiter`] and [`Limiters`] turn the events into log lines at a bounded rate per
//! container, counting what they suppress.

use std::collections::HashMap;
use std::hash::Hash;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::firewall::Netns;
use crate::firewall::nl::NlIter;
use crate::firewall::ruleset::{
    LOG_PREFIX_ANOMALY_CONN, LOG_PREFIX_ANOMALY_FLOW, LOG_PREFIX_DENY, LOG_PREFIX_LIMIT,
    LOG_PREFIX_LIMIT_REPORT, LOG_PREFIX_REPORT,
};

/// Bytes of each logged packet the kernel copies: enough for an IPv4 header with options or an
/// IPv6 header with a few extension headers, plus the ports.
pub const COPY_RANGE: u32 = 128;
/// How long the kernel may hold logged packets before it sends them, in 1/100 s.
const FLUSH_TIMEOUT_CS: u32 = 10;
/// How many packets the kernel batches into one datagram at most.
const QUEUE_THRESHOLD: u32 = 32;
/// Receive buffer of the socket; overruns are reported, not fatal.
const RCVBUF: libc::c_int = 1 << 20;

// <linux/netfilter/nfnetlink.h>, <linux/netfilter/nfnetlink_log.h>
const NFNL_SUBSYS_ULOG: u16 = 4;
const NFULNL_MSG_PACKET: u16 = 0;
const NFULNL_MSG_CONFIG: u16 = 1;
const NFULA_CFG_CMD: u16 = 1;
const NFULA_CFG_MODE: u16 = 2;
const NFULA_CFG_TIMEOUT: u16 = 4;
const NFULA_CFG_QTHRESH: u16 = 5;
const NFULNL_CFG_CMD_BIND: u8 = 1;
const NFULNL_COPY_PACKET: u8 = 2;
const NFULA_PACKET_HDR: u16 = 1;
const NFULA_MARK: u16 = 2;
const NFULA_TIMESTAMP: u16 = 3;
const NFULA_IFINDEX_OUTDEV: u16 = 5;
const NFULA_PAYLOAD: u16 = 9;
const NFULA_PREFIX: u16 = 10;
const NFULA_UID: u16 = 11;
const NFULA_GID: u16 = 14;

/// Errors of the NFLOG reader. Each names the namespace and the group.
#[derive(Debug, thiserror::Error)]
pub enum NflogError {
    #[error("{netns}: cannot open an NFLOG socket there: {source}")]
    Open {
        netns: String,
        #[source]
        source: io::Error,
    },
    #[error("{netns}: NFLOG group {group}: {what}: {source}{}",
        match .source.raw_os_error() {
            Some(libc::EBUSY) => " (another socket in this namespace is bound to the group)",
            Some(libc::EPERM) => " (another socket in this namespace is bound to the group, or CAP_NET_ADMIN is missing)",
            _ => "",
        })]
    Config {
        netns: String,
        group: u16,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{netns}: NFLOG group {group}: receive failed: {source}")]
    Recv {
        netns: String,
        group: u16,
        #[source]
        source: io::Error,
    },
    /// One message that could not be parsed (never fatal; see [`Received::malformed`]).
    #[error("malformed NFLOG message: {0}")]
    Malformed(&'static str),
}

/// Which rule logged the packet, from its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogKind {
    /// `egressd-deny `: denied by the policy.
    Deny,
    /// `egressd-report `: report mode, would have been denied.
    Report,
    /// `egressd-limit `: rejected because a budget ran out.
    Limit,
    /// `egressd-limit-report `: over a budget in report mode (not rejected).
    LimitReport,
    /// `egressd-anomaly-conn `: new connections beyond `[anomaly] new_connections_per_minute`
    /// (a warning; not rejected).
    AnomalyConn,
    /// `egressd-anomaly-flow `: a flow that sent more than `[anomaly] bytes_per_flow`
    /// (logged once per flow; not rejected).
    AnomalyFlow,
    /// Any other prefix (not one of egressd's rules).
    Other,
}

impl LogKind {
    pub fn from_prefix(prefix: &str) -> LogKind {
        match prefix {
            LOG_PREFIX_DENY => LogKind::Deny,
            LOG_PREFIX_REPORT => LogKind::Report,
            LOG_PREFIX_LIMIT => LogKind::Limit,
            LOG_PREFIX_LIMIT_REPORT => LogKind::LimitReport,
            LOG_PREFIX_ANOMALY_CONN => LogKind::AnomalyConn,
            LOG_PREFIX_ANOMALY_FLOW => LogKind::AnomalyFlow,
            _ => LogKind::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LogKind::Deny => "deny",
            LogKind::Report => "report",
            LogKind::Limit => "limit",
            LogKind::LimitReport => "limit-report",
            LogKind::AnomalyConn => "anomaly-conn",
            LogKind::AnomalyFlow => "anomaly-flow",
            LogKind::Other => "other",
        }
    }
}

/// One logged packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NflogEvent {
    pub kind: LogKind,
    /// The log prefix as the rule wrote it (`"egressd-deny "`).
    pub prefix: String,
    /// The NFLOG group it arrived on.
    pub group: u16,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IANA protocol number of the transport header (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6).
    pub proto: u8,
    /// Ports, for TCP, UDP, UDP-Lite and SCTP (not for later fragments).
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    /// The packet's length from its IP header (bytes on the wire, without link layer).
    pub length: u32,
    /// The kernel's timestamp of the packet, when it sent one. It does not for packets logged
    /// in the output hook (egressd's chain), so callers should fall back to the time of
    /// receipt.
    pub timestamp: Option<SystemTime>,
    /// Owner of the sending socket, when the kernel knew it.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mark: Option<u32>,
    /// Output interface index.
    pub outdev: Option<u32>,
}

impl NflogEvent {
    pub fn family(&self) -> &'static str {
        if self.dst.is_ipv6() { "ipv6" } else { "ipv4" }
    }

    /// `tcp`, `udp`, `icmp`, `icmpv6`, or the number.
    pub fn proto_name(&self) -> String {
        match self.proto {
            1 => "icmp".into(),
            6 => "tcp".into(),
            17 => "udp".into(),
            58 => "icmpv6".into(),
            132 => "sctp".into(),
            136 => "udplite".into(),
            n => n.to_string(),
        }
    }
}

/// What one read from the socket gave.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Received {
    pub events: Vec<NflogEvent>,
    /// Messages that could not be parsed (skipped).
    pub malformed: usize,
    /// The socket's receive queue overflowed: the kernel dropped log messages.
    pub overrun: bool,
}

/// Parses one datagram from an NFLOG socket: any number of netlink messages. Messages that
/// are not packets (ACKs) are ignored; packets that cannot be parsed are counted.
pub fn parse_datagram(buf: &[u8]) -> Received {
    let mut out = Received::default();
    for msg in NlIter::new(buf) {
        if msg.ty != (NFNL_SUBSYS_ULOG << 8 | NFULNL_MSG_PACKET) {
            continue;
        }
        match parse_packet(msg.payload) {
            Ok(e) => out.events.push(e),
            Err(_) => out.malformed += 1,
        }
    }
    out
}

/// Parses the payload of one `NFULNL_MSG_PACKET` message (after the netlink header).
pub fn parse_packet(payload: &[u8]) -> Result<NflogEvent, NflogError> {
    let nfgen = payload
        .get(..4)
        .ok_or(NflogError::Malformed("shorter than nfgenmsg"))?;
    let group = u16::from_be_bytes([nfgen[2], nfgen[3]]);
    let mut prefix = None;
    let mut packet = None;
    let mut timestamp = None;
    let (mut uid, mut gid, mut mark, mut outdev) = (None, None, None, None);
    for (ty, data) in attrs(&payload[4..]) {
        match ty {
            NFULA_PREFIX => {
                let s = data.split(|b| *b == 0).next().unwrap_or(data);
                prefix = Some(String::from_utf8_lossy(s).into_owned());
            }
            NFULA_PAYLOAD => packet = Some(data),
            NFULA_TIMESTAMP => timestamp = parse_timestamp(data),
            NFULA_UID => uid = be32(data),
            NFULA_GID => gid = be32(data),
            NFULA_MARK => mark = be32(data),
            NFULA_IFINDEX_OUTDEV => outdev = be32(data),
            NFULA_PACKET_HDR => {}
            _ => {}
        }
    }
    let packet = packet.ok_or(NflogError::Malformed("no packet payload"))?;
    let ip = parse_ip(packet)?;
    let prefix = prefix.unwrap_or_default();
    Ok(NflogEvent {
        kind: LogKind::from_prefix(&prefix),
        prefix,
        group,
        src: ip.src,
        dst: ip.dst,
        proto: ip.proto,
        sport: ip.ports.map(|p| p.0),
        dport: ip.ports.map(|p| p.1),
        length: ip.length,
        timestamp,
        uid,
        gid,
        mark,
        outdev,
    })
}

fn be32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

/// `struct nfulnl_msg_packet_timestamp { __be64 sec; __be64 usec; }`
fn parse_timestamp(b: &[u8]) -> Option<SystemTime> {
    let sec = u64::from_be_bytes(b.get(..8)?.try_into().ok()?);
    let usec = u64::from_be_bytes(b.get(8..16)?.try_into().ok()?);
    let d = Duration::from_secs(sec).checked_add(Duration::from_micros(usec.min(999_999)))?;
    SystemTime::UNIX_EPOCH.checked_add(d)
}

/// Netlink attributes: `(type, payload)`, flag bits cleared; stops at the first malformed one.
fn attrs(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([rest[0], rest[1]]));
        let ty = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        if len < 4 || len > rest.len() {
            return None;
        }
        let data = &rest[4..len];
        rest = &rest[((len + 3) & !3).min(rest.len())..];
        Some((ty, data))
    })
}

struct IpSummary {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    ports: Option<(u16, u16)>,
    length: u32,
}

/// Protocols whose first four transport bytes are the source and destination ports.
fn has_ports(proto: u8) -> bool {
    matches!(proto, 6 | 17 | 132 | 136)
}

fn ports_at(packet: &[u8], off: usize, proto: u8) -> Option<(u16, u16)> {
    if !has_ports(proto) {
        return None;
    }
    let p = packet.get(off..off + 4)?;
    Some((
        u16::from_be_bytes([p[0], p[1]]),
        u16::from_be_bytes([p[2], p[3]]),
    ))
}

/// The addresses, transport protocol and ports of an IPv4 or IPv6 packet (the first
/// [`COPY_RANGE`] bytes of it).
fn parse_ip(p: &[u8]) -> Result<IpSummary, NflogError> {
    let first = *p.first().ok_or(NflogError::Malformed("empty packet"))?;
    match first >> 4 {
        4 => {
            let h = p
                .get(..20)
                .ok_or(NflogError::Malformed("truncated IPv4 header"))?;
            let ihl = usize::from(h[0] & 0x0f) * 4;
            if ihl < 20 {
                return Err(NflogError::Malformed("IPv4 header length below 20"));
            }
            let proto = h[9];
            let later_fragment = u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0;
            let src = Ipv4Addr::new(h[12], h[13], h[14], h[15]);
            let dst = Ipv4Addr::new(h[16], h[17], h[18], h[19]);
            Ok(IpSummary {
                src: src.into(),
                dst: dst.into(),
                proto,
                ports: if later_fragment {
                    None
                } else {
                    ports_at(p, ihl, proto)
                },
                length: u32::from(u16::from_be_bytes([h[2], h[3]])),
            })
        }
        6 => {
            let h = p
                .get(..40)
                .ok_or(NflogError::Malformed("truncated IPv6 header"))?;
            let mut src = [0u8; 16];
            let mut dst = [0u8; 16];
            src.copy_from_slice(&h[8..24]);
            dst.copy_from_slice(&h[24..40]);
            let length = 40 + u32::from(u16::from_be_bytes([h[4], h[5]]));
            let (proto, off) = ipv6_transport(p, h[6]);
            Ok(IpSummary {
                src: Ipv6Addr::from(src).into(),
                dst: Ipv6Addr::from(dst).into(),
                proto,
                ports: off.and_then(|o| ports_at(p, o, proto)),
                length,
            })
        }
        _ => Err(NflogError::Malformed("not an IPv4 or IPv6 packet")),
    }
}

/// Walks the IPv6 extension headers from `next` at offset 40: the transport protocol and its
/// offset (`None` when it lies beyond the copied bytes, or in a later fragment).
fn ipv6_transport(p: &[u8], mut next: u8) -> (u8, Option<usize>) {
    let mut off = 40;
    for _ in 0..8 {
        let len = match next {
            // hop-by-hop, routing, destination options: (len + 1) * 8
            0 | 43 | 60 => match p.get(off..off + 2) {
                Some(h) => (usize::from(h[1]) + 1) * 8,
                None => return (next, None),
            },
            // fragment: 8 bytes; ports only in the first fragment
            44 => match p.get(off..off + 8) {
                Some(h) if u16::from_be_bytes([h[2], h[3]]) & 0xfff8 != 0 => return (h[0], None),
                Some(_) => 8,
                None => return (next, None),
            },
            // authentication header: (len + 2) * 4
            51 => match p.get(off..off + 2) {
                Some(h) => (usize::from(h[1]) + 2) * 4,
                None => return (next, None),
            },
            _ => return (next, Some(off)),
        };
        next = p[off];
        off += len;
    }
    (next, None)
}

/// An NFLOG socket bound to one group inside one network namespace. Non-blocking.
#[derive(Debug)]
pub struct NflogSocket {
    fd: OwnedFd,
    group: u16,
    netns: String,
    buf: Vec<u8>,
}

impl AsRawFd for NflogSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl NflogSocket {
    /// Opens a socket inside `netns`, binds `group` and sets copy-packet mode with
    /// [`COPY_RANGE`]. Blocks briefly (a thread enters the namespace; the kernel acknowledges
    /// the configuration): from async code, call it from `spawn_blocking`.
    pub fn open(netns: &Netns, group: u16) -> Result<Self, NflogError> {
        let name = netns.to_string();
        let fd = netns.run(open_socket).map_err(|source| NflogError::Open {
            netns: name.clone(),
            source,
        })?;
        let config_err = |what, source| NflogError::Config {
            netns: name.clone(),
            group,
            what,
            source,
        };
        let mut bind = config_header(group, 1);
        put_attr(&mut bind, NFULA_CFG_CMD, &[NFULNL_CFG_CMD_BIND]);
        request(&fd, &bind).map_err(|e| config_err("bind", e))?;
        let mut mode = config_header(group, 2);
        let mut m = COPY_RANGE.to_be_bytes().to_vec();
        m.extend_from_slice(&[NFULNL_COPY_PACKET, 0]);
        put_attr(&mut mode, NFULA_CFG_MODE, &m);
        put_attr(
            &mut mode,
            NFULA_CFG_TIMEOUT,
            &FLUSH_TIMEOUT_CS.to_be_bytes(),
        );
        put_attr(&mut mode, NFULA_CFG_QTHRESH, &QUEUE_THRESHOLD.to_be_bytes());
        request(&fd, &mode).map_err(|e| config_err("set copy mode", e))?;
        set_nonblocking(&fd).map_err(|e| config_err("set non-blocking", e))?;
        Ok(NflogSocket {
            fd,
            group,
            netns: name,
            buf: vec![0u8; 64 * 1024],
        })
    }

    pub fn group(&self) -> u16 {
        self.group
    }

    /// Reads one datagram without blocking. `WouldBlock` when nothing is queued.
    pub fn recv(&mut self) -> io::Result<Received> {
        // SAFETY: receives into a buffer of the given length that we own.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                self.buf.as_mut_ptr().cast(),
                self.buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOBUFS) {
                return Ok(Received {
                    overrun: true,
                    ..Received::default()
                });
            }
            return Err(e);
        }
        Ok(parse_datagram(&self.buf[..n as usize]))
    }
}

/// An [`NflogSocket`] driven by tokio: waiting for packets never blocks a worker.
pub struct NflogReader {
    inner: AsyncFd<NflogSocket>,
}

impl NflogReader {
    /// Registers the socket with the current tokio runtime.
    pub fn new(sock: NflogSocket) -> Result<Self, NflogError> {
        let (netns, group) = (sock.netns.clone(), sock.group);
        // SAFETY: `NflogSocket` owns its descriptor (an `OwnedFd` it never replaces), so the
        // descriptor stays open and the same for the whole life of the `AsyncFd`.
        let inner =
            unsafe { AsyncFd::register_with_interest(sock, Interest::READABLE) }.map_err(|e| {
                NflogError::Recv {
                    netns,
                    group,
                    source: io::Error::from(e),
                }
            })?;
        Ok(NflogReader { inner })
    }

    /// Waits for the next datagram and parses it. An overrun is reported in the result; the
    /// reader goes on.
    pub async fn recv(&mut self) -> Result<Received, NflogError> {
        let (netns, group) = (
            self.inner.get_ref().netns.clone(),
            self.inner.get_ref().group,
        );
        let error = |source| NflogError::Recv {
            netns: netns.clone(),
            group,
            source,
        };
        loop {
            let mut guard = self.inner.readable_mut().await.map_err(error)?;
            match guard.try_io(|s| s.get_mut().recv()) {
                Ok(Ok(r)) => return Ok(r),
                Ok(Err(e)) => return Err(error(e)),
                Err(_would_block) => continue,
            }
        }
    }

    pub fn get_ref(&self) -> &NflogSocket {
        self.inner.get_ref()
    }
}

fn open_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket calls on a descriptor we own; the address is a local struct.
    unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_NETFILTER,
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_nl = std::mem::zeroed();
        addr.nl_family = libc::AF_NETLINK as u16;
        if libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        ) < 0
        {
            return Err(io::Error::last_os_error());
        }
        setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &RCVBUF)
            .or_else(|_| setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &RCVBUF))?;
        // Only for the configuration exchange; the socket is non-blocking afterwards.
        let tv = libc::timeval {
            tv_sec: 2,
            tv_usec: 0,
        };
        setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)?;
        Ok(fd)
    }
}

fn setsockopt<T>(fd: &OwnedFd, level: libc::c_int, opt: libc::c_int, val: &T) -> io::Result<()> {
    // SAFETY: passes a pointer to a value of the declared size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (val as *const T).cast(),
            std::mem::size_of::<T>() as u32,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A config request: netlink header (length fixed up in [`request`]) and nfgenmsg with the
/// group in `res_id`.
fn config_header(group: u16, seq: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(64);
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&(NFNL_SUBSYS_ULOG << 8 | NFULNL_MSG_CONFIG).to_ne_bytes());
    m.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
    m.extend_from_slice(&[libc::AF_UNSPEC as u8, 0]); // family, NFNETLINK_V0
    m.extend_from_slice(&group.to_be_bytes());
    m
}

fn put_attr(m: &mut Vec<u8>, ty: u16, data: &[u8]) {
    m.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(data);
    while m.len() % 4 != 0 {
        m.push(0);
    }
}

/// Sends one request and waits for its ACK.
fn request(fd: &OwnedFd, msg: &[u8]) -> io::Result<()> {
    let mut msg = msg.to_vec();
    let len = msg.len() as u32;
    msg[..4].copy_from_slice(&len.to_ne_bytes());
    let seq = u32::from_ne_bytes([msg[8], msg[9], msg[10], msg[11]]);
    // SAFETY: sends from and receives into buffers we own, with their lengths.
    let sent = unsafe { libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 8192];
    loop {
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        for m in NlIter::new(&buf[..n as usize]) {
            if m.ty == libc::NLMSG_ERROR as u16 && m.seq == seq {
                let code = m
                    .payload
                    .get(..4)
                    .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                    .unwrap_or(-libc::EPROTO);
                return if code == 0 {
                    Ok(())
                } else {
                    Err(io::Error::from_raw_os_error(-code))
                };
            }
        }
    }
}

// ---- turning events into log lines at a bounded rate ----

/// What to do with one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Log it. `suppressed` events were dropped since the last one that was logged: say so.
    Emit { suppressed: u64 },
    /// Drop it (counted; reported with the next emitted event or by [`EventLimiter::take_suppressed`]).
    Suppress,
}

/// A token bucket for log events: `per_second` events per second, bursts of `burst`. Pure
/// arithmetic on the `Instant`s it is given, as the kernel's `limit` does it: credit in
/// nanoseconds, one event costs `1 s / per_second`.
#[derive(Debug, Clone)]
pub struct EventLimiter {
    cost: u128,
    max_credit: u128,
    credit: u128,
    last: Option<Instant>,
    suppressed: u64,
}

impl EventLimiter {
    /// `per_second` and `burst` of at least 1 (0 is taken as 1).
    pub fn new(per_second: u32, burst: u32) -> Self {
        let cost = 1_000_000_000u128 / u128::from(per_second.max(1));
        let max_credit = cost * u128::from(burst.max(1));
        EventLimiter {
            cost,
            max_credit,
            credit: max_credit,
            last: None,
            suppressed: 0,
        }
    }

    /// Decides about one event at `now`.
    pub fn check(&mut self, now: Instant) -> Decision {
        if let Some(last) = self.last {
            let elapsed = now.saturating_duration_since(last).as_nanos();
            self.credit = (self.credit + elapsed).min(self.max_credit);
        }
        self.last = Some(now);
        if self.credit >= self.cost {
            self.credit -= self.cost;
            Decision::Emit {
                suppressed: std::mem::take(&mut self.suppressed),
            }
        } else {
            self.suppressed += 1;
            Decision::Suppress
        }
    }

    /// Events suppressed since the last emitted one, for a periodic summary; resets the count.
    pub fn take_suppressed(&mut self) -> u64 {
        std::mem::take(&mut self.suppressed)
    }
}

/// One [`EventLimiter`] per key (container). Keys are created on first use; remove them when
/// the container is gone.
#[derive(Debug, Clone)]
pub struct Limiters<K> {
    per_second: u32,
    burst: u32,
    map: HashMap<K, EventLimiter>,
}

impl<K: Eq + Hash + Clone> Limiters<K> {
    pub fn new(per_second: u32, burst: u32) -> Self {
        Limiters {
            per_second,
            burst,
            map: HashMap::new(),
        }
    }

    pub fn check(&mut self, key: &K, now: Instant) -> Decision {
        let (r, b) = (self.per_second, self.burst);
        self.map
            .entry(key.clone())
            .or_insert_with(|| EventLimiter::new(r, b))
            .check(now)
    }

    /// Forgets a key (its pending suppressed count is returned, for a last summary).
    pub fn remove(&mut self, key: &K) -> u64 {
        self.map
            .remove(key)
            .map(|mut l| l.take_suppressed())
            .unwrap_or(0)
    }

    /// Keys with suppressed events and how many, resetting the counts: the periodic
    /// "N suppressed" summary.
    pub fn take_suppressed(&mut self) -> Vec<(K, u64)> {
        self.map
            .iter_mut()
            .filter_map(|(k, l)| {
                let n = l.take_suppressed();
                (n > 0).then(|| (k.clone(), n))
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One datagram as kernel 6.18 sent it for the netns test's denied packets (three packet
    /// messages, then NLMSG_DONE): TCP SYN 10.11.0.2 -> 10.11.0.1:8443, TCP SYN fd00:11::2 ->
    /// fd00:11::3:8443, UDP 10.11.0.2 -> 10.11.0.3:5354 with payload "ping".
    const CAPTURED: &str = concat!(
        "8800000000040000000000000000000002001092080001000800030012000a00656772657373642d64656e7920000000",
        "080005000000000208000b000000000008000e0000000000400009004500003c226840004006043c0a0b00020a0b0001",
        "e4b420fbd1001d6f00000000a002faf014470000020405b40402080a6180747f000000000103030a9c00000000040000",
        "00000000000000000a0010920800010086dd030012000a00656772657373642d64656e79200000000800050000000002",
        "08000b000000000008000e0000000000540009006008647a00280640fd000011000000000000000000000002fd000011",
        "000000000000000000000003e53820fb0a8cd1a200000000a002fd20fa560000020405a00402080adb44f63000000000",
        "0103030a6c00000000040000000000000000000002001092080001000800030012000a00656772657373642d64656e79",
        "20000000080005000000000208000b000000000008000e00000000002400090045000020d7e7400040114ecb0a0b0002",
        "0a0b00038d0814ea000c143870696e671400000003000000000000000000000000001092",
    );

    /// Builds an NFLOG packet message the way the kernel does (attributes in its order).
    fn packet_msg(prefix: &str, group: u16, ip: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&(NFNL_SUBSYS_ULOG << 8).to_ne_bytes());
        m.extend_from_slice(&[0u8; 10]);
        m.extend_from_slice(&[2, 0]);
        m.extend_from_slice(&group.to_be_bytes());
        put_attr(&mut m, NFULA_PACKET_HDR, &[0x08, 0x00, 3, 0]);
        put_attr(&mut m, NFULA_IFINDEX_OUTDEV, &7u32.to_be_bytes());
        let mut p = prefix.as_bytes().to_vec();
        p.push(0);
        put_attr(&mut m, NFULA_PREFIX, &p);
        put_attr(&mut m, NFULA_UID, &1000u32.to_be_bytes());
        put_attr(&mut m, NFULA_PAYLOAD, ip);
        let len = m.len() as u32;
        m[..4].copy_from_slice(&len.to_ne_bytes());
        m
    }

    fn ipv4_tcp_syn() -> Vec<u8> {
        let mut p = vec![
            0x45, 0, 0, 60, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 10, 7, 0, 2, 10, 7, 0, 1,
        ];
        p.extend_from_slice(&[0xc3, 0x50, 0x20, 0xfb]); // 50000 -> 8443
        p.extend_from_slice(&[0u8; 36]);
        p
    }

    #[test]
    fn a_denied_ipv4_tcp_packet() {
        let msg = packet_msg("egressd-deny ", 100, &ipv4_tcp_syn());
        let r = parse_datagram(&msg);
        assert_eq!(r.malformed, 0);
        assert_eq!(r.events.len(), 1);
        let e = &r.events[0];
        assert_eq!(e.kind, LogKind::Deny);
        assert_eq!(e.prefix, "egressd-deny ");
        assert_eq!(e.group, 100);
        assert_eq!(e.src, "10.7.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(e.dst, "10.7.0.1".parse::<IpAddr>().unwrap());
        assert_eq!((e.proto, e.sport, e.dport), (6, Some(50000), Some(8443)));
        assert_eq!(e.length, 60);
        assert_eq!(e.uid, Some(1000));
        assert_eq!(e.outdev, Some(7));
        assert_eq!(e.timestamp, None);
        assert_eq!(e.family(), "ipv4");
        assert_eq!(e.proto_name(), "tcp");
    }

    #[test]
    fn ipv6_udp_behind_extension_headers_and_fragments() {
        let mut p = vec![0x60, 0, 0, 0, 0, 16, 0, 64]; // next header: hop-by-hop
        p.extend_from_slice(&"fd00:7::2".parse::<Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(&"fd00:7::1".parse::<Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(&[60, 0, 1, 4, 0, 0, 0, 0]); // hop-by-hop, 8 bytes, next: dest opts
        p.extend_from_slice(&[17, 0, 1, 4, 0, 0, 0, 0]); // dest opts, next: UDP
        p.extend_from_slice(&[0x30, 0x39, 0x00, 0x35, 0, 12, 0, 0]); // 12345 -> 53
        let e = parse_packet(&packet_msg("egressd-report ", 5, &p)[16..]).unwrap();
        assert_eq!(e.kind, LogKind::Report);
        assert_eq!(e.dst, "fd00:7::1".parse::<IpAddr>().unwrap());
        assert_eq!((e.proto, e.sport, e.dport), (17, Some(12345), Some(53)));
        assert_eq!(e.length, 56);
        assert_eq!(e.family(), "ipv6");

        // A later fragment: protocol known, ports not.
        let mut f = p[..40].to_vec();
        f[6] = 44;
        f.extend_from_slice(&[17, 0, 0x00, 0x08, 0, 0, 0, 1]); // offset 1 (x8)
        f.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        let e = parse_packet(&packet_msg("egressd-limit ", 5, &f)[16..]).unwrap();
        assert_eq!((e.kind, e.proto, e.dport), (LogKind::Limit, 17, None));
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn a_datagram_captured_from_the_kernel() {
        let r = parse_datagram(&unhex(CAPTURED));
        assert_eq!((r.malformed, r.overrun), (0, false));
        let got: Vec<(LogKind, String, String, u8, Option<u16>, u32)> = r
            .events
            .iter()
            .map(|e| {
                (
                    e.kind,
                    e.src.to_string(),
                    e.dst.to_string(),
                    e.proto,
                    e.dport,
                    e.length,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    LogKind::Deny,
                    "10.11.0.2".into(),
                    "10.11.0.1".into(),
                    6,
                    Some(8443),
                    60
                ),
                (
                    LogKind::Deny,
                    "fd00:11::2".into(),
                    "fd00:11::3".into(),
                    6,
                    Some(8443),
                    80
                ),
                (
                    LogKind::Deny,
                    "10.11.0.2".into(),
                    "10.11.0.3".into(),
                    17,
                    Some(5354),
                    32
                ),
            ]
        );
        for e in &r.events {
            assert_eq!(e.group, 4242);
            assert_eq!(e.prefix, "egressd-deny ");
            assert_eq!((e.uid, e.gid), (Some(0), Some(0)));
            assert_eq!(e.outdev, Some(2));
            assert_eq!(e.timestamp, None, "no timestamp in the output hook");
        }
        // Every truncation of it parses without panicking.
        let raw = unhex(CAPTURED);
        for n in 0..raw.len() {
            let r = parse_datagram(&raw[..n]);
            assert!(r.events.len() <= 3);
        }
    }

    #[test]
    fn kinds_from_prefixes() {
        assert_eq!(LogKind::from_prefix("egressd-deny "), LogKind::Deny);
        assert_eq!(LogKind::from_prefix("egressd-report "), LogKind::Report);
        assert_eq!(LogKind::from_prefix("egressd-limit "), LogKind::Limit);
        assert_eq!(
            LogKind::from_prefix("egressd-limit-report "),
            LogKind::LimitReport
        );
        assert_eq!(LogKind::from_prefix("egressd-deny"), LogKind::Other);
        assert_eq!(LogKind::from_prefix(""), LogKind::Other);
    }

    #[test]
    fn icmp_has_no_ports_and_ipv4_options_are_skipped() {
        let mut p = vec![
            0x46, 0, 0, 32, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 0, 2, 10, 0, 0, 9, 1, 1, 1, 1,
        ];
        p.extend_from_slice(&[8, 0, 0, 0, 0, 1, 0, 1]);
        let e = parse_packet(&packet_msg("egressd-deny ", 1, &p)[16..]).unwrap();
        assert_eq!((e.proto, e.sport, e.dport), (1, None, None));
        assert_eq!(e.proto_name(), "icmp");
        // UDP after a 24-byte header (options): ports read at the right offset.
        let mut u = p[..24].to_vec();
        u[9] = 17;
        u.extend_from_slice(&[0, 80, 1, 187, 0, 8, 0, 0]);
        let e = parse_packet(&packet_msg("egressd-deny ", 1, &u)[16..]).unwrap();
        assert_eq!((e.sport, e.dport), (Some(80), Some(443)));
    }

    #[test]
    fn malformed_input_never_panics_and_is_counted() {
        // Not IP, no payload, truncated headers.
        let bad = [
            packet_msg("egressd-deny ", 1, &[0x55; 30]),
            packet_msg("egressd-deny ", 1, &[0x45; 10]),
            packet_msg("egressd-deny ", 1, &[0x60; 20]),
            packet_msg("egressd-deny ", 1, &[0x41; 24]), // IHL 4: too short
        ];
        for m in &bad {
            assert_eq!(parse_datagram(m).malformed, 1);
        }
        let mut no_payload = packet_msg("x", 1, &[]);
        no_payload.truncate(no_payload.len() - 4);
        let _ = parse_datagram(&no_payload);
        // Every truncation and every flipped byte of a valid datagram of two messages.
        let mut two = packet_msg("egressd-deny ", 100, &ipv4_tcp_syn());
        two.extend(packet_msg("egressd-limit ", 100, &ipv4_tcp_syn()));
        assert_eq!(parse_datagram(&two).events.len(), 2);
        for n in 0..two.len() {
            let _ = parse_datagram(&two[..n]);
            for x in [0xff, 0x80, 0x01] {
                let mut flipped = two.clone();
                flipped[n] ^= x;
                let _ = parse_datagram(&flipped);
            }
        }
        assert_eq!(parse_datagram(&[]), Received::default());
    }

    #[test]
    fn limiter_allows_a_burst_then_the_rate_and_counts_what_it_drops() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut l = EventLimiter::new(2, 3);
        for _ in 0..3 {
            assert_eq!(l.check(t0), Decision::Emit { suppressed: 0 });
        }
        for _ in 0..10 {
            assert_eq!(l.check(t0), Decision::Suppress);
        }
        // 2 per second: after 499 ms still nothing, at 500 ms one, reporting the 11 dropped.
        assert_eq!(l.check(ms(499)), Decision::Suppress);
        assert_eq!(l.check(ms(500)), Decision::Emit { suppressed: 11 });
        assert_eq!(l.check(ms(500)), Decision::Suppress);
        assert_eq!(l.take_suppressed(), 1);
        assert_eq!(l.take_suppressed(), 0);
        // A long pause refills to the burst, not beyond.
        let later = ms(60_000);
        for _ in 0..3 {
            assert!(matches!(l.check(later), Decision::Emit { .. }));
        }
        assert_eq!(l.check(later), Decision::Suppress);
        // Time going backwards (another clock) gives no credit and does not panic.
        assert_eq!(l.check(t0), Decision::Suppress);
    }

    #[test]
    fn limiters_are_per_key_and_summaries_reset() {
        let t0 = Instant::now();
        let mut ls: Limiters<String> = Limiters::new(1, 1);
        let (a, b) = ("a".to_string(), "b".to_string());
        assert!(matches!(ls.check(&a, t0), Decision::Emit { .. }));
        assert_eq!(ls.check(&a, t0), Decision::Suppress);
        assert_eq!(ls.check(&a, t0), Decision::Suppress);
        assert!(
            matches!(ls.check(&b, t0), Decision::Emit { .. }),
            "b has its own bucket"
        );
        assert_eq!(ls.take_suppressed(), vec![(a.clone(), 2)]);
        assert!(ls.take_suppressed().is_empty());
        assert_eq!(ls.check(&b, t0), Decision::Suppress);
        assert_eq!(ls.remove(&b), 1);
        assert_eq!(ls.len(), 1);
        assert_eq!(ls.remove(&b), 0);
    }
}
