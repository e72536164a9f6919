//! `fake_dns`: a small authoritative-style DNS server for egressd's tests and demo. It answers
//! only from a records file and never forwards anything, so a test that points egressd at it
//! can never make a real DNS query.
//!
//! ```text
//! fake_dns --listen 127.0.0.1:5300 [--listen [::1]:5300] --records FILE [--log FILE]
//! ```
//!
//! Records file, one record a line, `#` starts a comment:
//!
//! ```text
//! NAME A|AAAA|CNAME VALUE [TTL]       # TTL defaults to 30
//! NAME ROTATE A 10.1.2.0/24 [TTL]     # each query gets the next address: 10.1.2.1, .2, ...
//! NAME ROTATE A 10.1.2.20-23 [TTL]    # the same over .20, .21, .22, .23, .20, ...
//! ZONE SOA MINIMUM [TTL]              # negative answers under ZONE carry this SOA
//! ```
//!
//! The file is re-read when its mtime, size or inode changes (checked on every query), so a
//! test changes answers by writing a temporary file and renaming it over the old one.
//!
//! Answers: A/AAAA (and any other type) follow CNAMEs of the file, putting the chain in the
//! answer section; an unknown name is NXDOMAIN; AA is set. UDP answers larger than the client's
//! buffer (512, or its EDNS size) are sent truncated, so clients retry over TCP. Malformed
//! packets are ignored.
//!
//! Stdout: one `listening ADDR` line per bound address (port 0 picks a free port, the same for
//! UDP and TCP), then `ready`. With `--log FILE`, one line per query is appended and flushed:
//! `unix_ms QTYPE NAME`.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

#[derive(Parser, Debug)]
#[command(about = "Fake authoritative DNS server for egressd tests (never forwards)")]
struct Args {
    /// Address to serve on, UDP and TCP (repeatable). Port 0 picks a free port.
    #[arg(long, required = true)]
    listen: Vec<SocketAddr>,
    /// Records file (re-read when it changes).
    #[arg(long)]
    records: PathBuf,
    /// Append `unix_ms QTYPE NAME` for each query here.
    #[arg(long)]
    log: Option<PathBuf>,
}

const DEFAULT_TTL: u32 = 30;
/// Longest CNAME chain followed (loops end here too).
const MAX_CHAIN: usize = 10;
/// How long an idle TCP client is kept.
const TCP_IDLE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
enum Data {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Cname(String),
    /// The first three octets, and the first and last host number to hand out.
    Rotate([u8; 3], u8, u8),
}

#[derive(Debug, Clone)]
struct Rec {
    data: Data,
    ttl: u32,
}

#[derive(Debug, Clone, Default)]
struct Zone {
    names: HashMap<String, Vec<Rec>>,
    /// (zone, minimum, ttl)
    soas: Vec<(String, u32, u32)>,
}

fn norm(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

fn parse_zone(text: &str, path: &Path) -> Zone {
    let mut zone = Zone::default();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("");
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.is_empty() {
            continue;
        }
        match parse_line(&words) {
            Ok(Parsed::Rec(name, rec)) => zone.names.entry(name).or_default().push(rec),
            Ok(Parsed::Soa(name, minimum, ttl)) => zone.soas.push((name, minimum, ttl)),
            Err(why) => eprintln!("{}:{}: {why}: skipped", path.display(), i + 1),
        }
    }
    zone
}

enum Parsed {
    Rec(String, Rec),
    Soa(String, u32, u32),
}

fn parse_ttl(word: Option<&&str>, default: u32) -> Result<u32, String> {
    match word {
        None => Ok(default),
        Some(w) => w.parse().map_err(|_| format!("bad TTL {w:?}")),
    }
}

fn parse_line(words: &[&str]) -> Result<Parsed, String> {
    let [name, kind, rest @ ..] = words else {
        return Err("expected NAME TYPE VALUE [TTL]".into());
    };
    let name = norm(name);
    let kind = kind.to_ascii_uppercase();
    let too_many = |n: usize| {
        if rest.len() > n {
            Err(format!("unexpected {:?}", rest[n]))
        } else {
            Ok(())
        }
    };
    match (kind.as_str(), rest) {
        ("A", [value, ..]) => {
            too_many(2)?;
            let ip = value.parse().map_err(|_| format!("bad IPv4 {value:?}"))?;
            let ttl = parse_ttl(rest.get(1), DEFAULT_TTL)?;
            Ok(Parsed::Rec(
                name,
                Rec {
                    data: Data::A(ip),
                    ttl,
                },
            ))
        }
        ("AAAA", [value, ..]) => {
            too_many(2)?;
            let ip = value.parse().map_err(|_| format!("bad IPv6 {value:?}"))?;
            let ttl = parse_ttl(rest.get(1), DEFAULT_TTL)?;
            let data = Data::Aaaa(ip);
            Ok(Parsed::Rec(name, Rec { data, ttl }))
        }
        ("CNAME", [value, ..]) => {
            too_many(2)?;
            let ttl = parse_ttl(rest.get(1), DEFAULT_TTL)?;
            let data = Data::Cname(norm(value));
            Ok(Parsed::Rec(name, Rec { data, ttl }))
        }
        ("ROTATE", [family, prefix, ..]) => {
            too_many(3)?;
            if !family.eq_ignore_ascii_case("A") {
                return Err("ROTATE supports only A".into());
            }
            let (net, first, last) = match prefix.strip_suffix("/24") {
                Some(net) => (net.to_string(), 1, 254),
                None => {
                    let (start, end) = prefix.split_once('-').ok_or_else(|| {
                        format!("ROTATE wants a /24 or A.B.C.X-Y, not {prefix:?}")
                    })?;
                    let ip: Ipv4Addr =
                        start.parse().map_err(|_| format!("bad range {prefix:?}"))?;
                    let last: u8 = end.parse().map_err(|_| format!("bad range {prefix:?}"))?;
                    let first = ip.octets()[3];
                    if last < first {
                        return Err(format!("bad range {prefix:?}"));
                    }
                    (start.to_string(), first, last)
                }
            };
            let ip: Ipv4Addr = net.parse().map_err(|_| format!("bad prefix {prefix:?}"))?;
            let [a, b, c, _] = ip.octets();
            let ttl = parse_ttl(rest.get(2), DEFAULT_TTL)?;
            let data = Data::Rotate([a, b, c], first, last);
            Ok(Parsed::Rec(name, Rec { data, ttl }))
        }
        ("SOA", [minimum, ..]) => {
            too_many(2)?;
            let minimum: u32 = minimum
                .parse()
                .map_err(|_| format!("bad SOA minimum {minimum:?}"))?;
            let ttl = parse_ttl(rest.get(1), minimum)?;
            Ok(Parsed::Soa(name, minimum, ttl))
        }
        _ => Err(format!("unknown or incomplete record type {kind:?}")),
    }
}

/// What identifies one version of the records file.
type Stamp = (Option<SystemTime>, u64, u64);

struct State {
    records: PathBuf,
    stamp: Option<Stamp>,
    zone: Zone,
    /// Next index per ROTATE name; survives reloads.
    rotate: HashMap<String, u32>,
    log: Option<File>,
}

impl State {
    fn stamp(path: &Path) -> io::Result<Stamp> {
        let m = std::fs::metadata(path)?;
        Ok((m.modified().ok(), m.len(), m.ino()))
    }

    fn reload_if_changed(&mut self) {
        let Ok(stamp) = Self::stamp(&self.records) else {
            return; // Mid-rename or gone: keep what we have.
        };
        if self.stamp == Some(stamp) {
            return;
        }
        match std::fs::read_to_string(&self.records) {
            Ok(text) => {
                self.zone = parse_zone(&text, &self.records);
                self.stamp = Some(stamp);
            }
            Err(e) => eprintln!("{}: {e}", self.records.display()),
        }
    }

    fn log(&mut self, qtype: RecordType, name: &str) {
        let Some(file) = self.log.as_mut() else {
            return;
        };
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let line = format!("{ms} {qtype} {name}\n");
        if let Err(e) = file.write_all(line.as_bytes()).and_then(|()| file.flush()) {
            eprintln!("query log: {e}");
        }
    }
}

type Shared = Arc<Mutex<State>>;

fn lock(state: &Shared) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn name_of(s: &str) -> Option<Name> {
    let mut n = Name::from_ascii(s).ok()?;
    n.set_fqdn(true);
    Some(n)
}

/// Builds the answer and authority sections and the response code for one question.
fn answer(
    state: &mut State,
    qname: &str,
    qtype: RecordType,
) -> (ResponseCode, Vec<Record>, Vec<Record>) {
    let mut answers = Vec::new();
    let mut current = qname.to_string();
    let mut exists = false;
    for _ in 0..MAX_CHAIN {
        let Some(recs) = state.zone.names.get(&current).cloned() else {
            exists = false;
            break;
        };
        exists = true;
        let Some(owner) = name_of(&current) else {
            break;
        };
        let cname = recs.iter().find_map(|r| match &r.data {
            Data::Cname(t) => Some((t.clone(), r.ttl)),
            _ => None,
        });
        if let Some((target, ttl)) = cname {
            let Some(target_name) = name_of(&target) else {
                break;
            };
            answers.push(Record::from_rdata(
                owner,
                ttl,
                RData::CNAME(CNAME(target_name)),
            ));
            if qtype == RecordType::CNAME {
                break;
            }
            current = target;
            continue;
        }
        for rec in &recs {
            let data = match (&rec.data, qtype) {
                (Data::A(ip), RecordType::A) => RData::A(A(*ip)),
                (Data::Aaaa(ip), RecordType::AAAA) => RData::AAAA(AAAA(*ip)),
                (Data::Rotate([a, b, c], first, last), RecordType::A) => {
                    let n = state.rotate.entry(current.clone()).or_insert(0);
                    let span = u64::from(*last - *first) + 1;
                    let host = (*n as u64 % span) as u8 + *first;
                    *n = n.wrapping_add(1);
                    RData::A(A(Ipv4Addr::new(*a, *b, *c, host)))
                }
                _ => continue,
            };
            answers.push(Record::from_rdata(owner.clone(), rec.ttl, data));
        }
        break;
    }
    let rcode = if exists {
        ResponseCode::NoError
    } else {
        ResponseCode::NXDomain
    };
    let has_data = answers.iter().any(|r| r.record_type() == qtype);
    let mut authority = Vec::new();
    if !has_data {
        // The SOA of the longest zone that contains the name the chain ended at.
        let soa = state
            .zone
            .soas
            .iter()
            .filter(|(z, _, _)| current == *z || current.ends_with(&format!(".{z}")))
            .max_by_key(|(z, _, _)| z.len());
        if let Some((z, minimum, ttl)) = soa {
            if let (Some(owner), Some(mname), Some(rname)) = (
                name_of(z),
                name_of(&format!("ns.{z}")),
                name_of(&format!("hostmaster.{z}")),
            ) {
                let data = SOA::new(mname, rname, 1, 3600, 600, 86_400, *minimum);
                authority.push(Record::from_rdata(owner, *ttl, RData::SOA(data)));
            }
        }
    }
    (rcode, answers, authority)
}

/// Answers one request. `None` for anything that is not a well-formed single-question query
/// (ignored, never an error). Over UDP (`udp`), an answer larger than the client's buffer is
/// sent truncated.
fn handle(state: &Shared, packet: &[u8], udp: bool) -> Option<Vec<u8>> {
    let request = Message::from_vec(packet).ok()?;
    if request.message_type() != MessageType::Query
        || request.op_code() != OpCode::Query
        || request.queries().len() != 1
    {
        return None;
    }
    let query = request.queries().first()?;
    let qname = norm(&query.name().to_ascii());
    let qtype = query.query_type();

    let (rcode, answers, authority) = {
        let mut st = lock(state);
        st.reload_if_changed();
        st.log(qtype, &qname);
        answer(&mut st, &qname, qtype)
    };

    let mut response = Message::new();
    response
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_authoritative(true)
        .set_recursion_desired(request.recursion_desired())
        .set_recursion_available(true)
        .set_response_code(rcode)
        .add_query(query.clone())
        .add_answers(answers)
        .add_name_servers(authority);
    let mut limit = 512usize;
    if let Some(edns) = request.extensions() {
        limit = limit.max(usize::from(edns.max_payload()));
        let mut ours = Edns::new();
        ours.set_max_payload(1232);
        response.set_edns(ours);
    }
    let bytes = response.to_vec().ok()?;
    if udp && bytes.len() > limit {
        return response.truncate().to_vec().ok();
    }
    Some(bytes)
}

async fn serve_udp(socket: UdpSocket, state: Shared) {
    let mut buf = vec![0u8; 65_535];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let Some(packet) = buf.get(..n) else { continue };
        if let Some(reply) = handle(&state, packet, true) {
            let _ = socket.send_to(&reply, peer).await;
        }
    }
}

async fn serve_tcp(listener: TcpListener, state: Shared) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(tcp_client(stream, state.clone()));
    }
}

async fn tcp_client(mut stream: TcpStream, state: Shared) {
    loop {
        let Ok(Ok(len)) = tokio::time::timeout(TCP_IDLE, stream.read_u16()).await else {
            return;
        };
        let mut packet = vec![0u8; usize::from(len)];
        if !matches!(
            tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut packet)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let Some(reply) = handle(&state, &packet, false) else {
            continue;
        };
        let Ok(n) = u16::try_from(reply.len()) else {
            continue;
        };
        let mut framed = n.to_be_bytes().to_vec();
        framed.extend_from_slice(&reply);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

/// Binds UDP and TCP on the same address; with port 0, UDP picks the port and TCP follows
/// (retrying if that port happens to be taken for TCP).
async fn bind_pair(addr: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    let mut last = None;
    for _ in 0..20 {
        let udp = UdpSocket::bind(addr).await?;
        let bound = udp.local_addr()?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if addr.port() == 0 => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free port")))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    if let Err(e) = run(args).await {
        eprintln!("fake_dns: {e}");
        std::process::exit(2);
    }
}

async fn run(args: Args) -> io::Result<()> {
    let text = std::fs::read_to_string(&args.records)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", args.records.display())))?;
    let log = match &args.log {
        Some(path) => Some(OpenOptions::new().create(true).append(true).open(path)?),
        None => None,
    };
    let state = Arc::new(Mutex::new(State {
        stamp: State::stamp(&args.records).ok(),
        zone: parse_zone(&text, &args.records),
        records: args.records,
        rotate: HashMap::new(),
        log,
    }));

    let mut out = io::stdout().lock();
    for addr in args.listen {
        let (udp, tcp) = bind_pair(addr)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("bind {addr}: {e}")))?;
        writeln!(out, "listening {}", udp.local_addr()?)?;
        tokio::spawn(serve_udp(udp, state.clone()));
        tokio::spawn(serve_tcp(tcp, state.clone()));
    }
    writeln!(out, "ready")?;
    out.flush()?;
    drop(out);
    std::future::pending::<()>().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_records() {
        let z = parse_zone(
            "a.test A 10.0.0.1\nB.test. AAAA ::1 5\nc CNAME a.test 7\nr ROTATE A 10.1.2.0/24\n\
             test SOA 45 90\nbad A nope\n",
            Path::new("x"),
        );
        assert_eq!(z.names.len(), 4);
        assert_eq!(z.names["b.test"][0].ttl, 5);
        assert_eq!(z.soas, vec![("test".to_string(), 45, 90)]);
    }
}
