//! Test topology: two throwaway network namespaces joined by a veth pair. Nothing here touches
//! the host's own namespace or sends a packet outside the two namespaces.
//!
//! ```text
//!   client netns                       server netns
//!   veth c: 10.T.0.2/24, fd00:T::2/64   veth s: 10.T.0.1/24, 10.T.0.3/24, fd00:T::1/64, fd00:T::3/64
//!   (the egress table goes here)        (TCP and UDP listeners)
//! ```
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use egressd::firewall::{AddrElem, NetElem, Netns};
use egressd::policy::{PortRange, Proto};

pub mod fake_dns;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs a command and fails the test with its output when it fails.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub struct Pair {
    pub client_name: String,
    pub server_name: String,
    pub client: Netns,
    pub server: Netns,
    /// Index used in the addresses (10.T.0.x).
    pub t: u32,
}

impl Pair {
    pub fn new() -> Pair {
        Pair::with_prefix("egt")
    }

    /// A pair whose namespaces are named `{prefix}{id}c` and `{prefix}{id}s`, so that the
    /// namespaces of one test suite can be told apart (and cleaned up) by name.
    pub fn with_prefix(prefix: &str) -> Pair {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        // Distinct per process and per pair, so tests can run in parallel.
        let id = (std::process::id() % 100_000) * 16 + n;
        let t = 1 + (id % 250);
        let client_name = format!("{prefix}{id}c");
        let server_name = format!("{prefix}{id}s");
        let _ = Command::new("ip")
            .args(["netns", "del", &client_name])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &server_name])
            .output();
        sh(&["ip", "netns", "add", &client_name]);
        sh(&["ip", "netns", "add", &server_name]);
        let vc = format!("ve{id}c");
        let vs = format!("ve{id}s");
        sh(&[
            "ip",
            "link",
            "add",
            &vc,
            "netns",
            &client_name,
            "type",
            "veth",
            "peer",
            "name",
            &vs,
            "netns",
            &server_name,
        ]);
        let c = |args: &[&str]| {
            let mut v = vec!["ip", "-n", &client_name];
            v.extend_from_slice(args);
            sh(&v);
        };
        let s = |args: &[&str]| {
            let mut v = vec!["ip", "-n", &server_name];
            v.extend_from_slice(args);
            sh(&v);
        };
        c(&["link", "set", "lo", "up"]);
        s(&["link", "set", "lo", "up"]);
        c(&["addr", "add", &format!("10.{t}.0.2/24"), "dev", &vc]);
        c(&[
            "addr",
            "add",
            &format!("fd00:{t}::2/64"),
            "dev",
            &vc,
            "nodad",
        ]);
        s(&["addr", "add", &format!("10.{t}.0.1/24"), "dev", &vs]);
        s(&["addr", "add", &format!("10.{t}.0.3/24"), "dev", &vs]);
        s(&[
            "addr",
            "add",
            &format!("fd00:{t}::1/64"),
            "dev",
            &vs,
            "nodad",
        ]);
        s(&[
            "addr",
            "add",
            &format!("fd00:{t}::3/64"),
            "dev",
            &vs,
            "nodad",
        ]);
        c(&["link", "set", &vc, "up"]);
        s(&["link", "set", &vs, "up"]);
        Pair {
            client: Netns::named(&client_name),
            server: Netns::named(&server_name),
            client_name,
            server_name,
            t,
        }
    }

    /// Server address number `host` (1 or 3), IPv4.
    pub fn v4(&self, host: u8) -> IpAddr {
        format!("10.{}.0.{host}", self.t).parse().unwrap()
    }

    /// Server address number `host` (1 or 3), IPv6.
    pub fn v6(&self, host: u8) -> IpAddr {
        format!("fd00:{}::{host}", self.t).parse().unwrap()
    }

    /// A TCP echo server on every server address at `port`, for the life of the test.
    pub fn tcp_echo(&self, port: u16) {
        let listeners = self
            .server
            .run(move || {
                let a = TcpListener::bind(SocketAddr::new("0.0.0.0".parse().unwrap(), port))?;
                let b = TcpListener::from(bind_v6_only(libc::SOCK_STREAM, port)?);
                Ok(vec![a, b])
            })
            .expect("bind TCP listeners in server netns");
        for l in listeners {
            std::thread::spawn(move || {
                for conn in l.incoming() {
                    let Ok(mut conn) = conn else { continue };
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 1024];
                        while let Ok(n) = conn.read(&mut buf) {
                            if n == 0 || conn.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    });
                }
            });
        }
    }

    /// A UDP echo server on every server address at `port`. One socket per address, so each
    /// answer leaves from the address the client sent to.
    pub fn udp_echo(&self, port: u16) {
        let addrs = [self.v4(1), self.v4(3), self.v6(1), self.v6(3)];
        let socks = self
            .server
            .run(move || {
                addrs
                    .iter()
                    .map(|a| UdpSocket::bind(SocketAddr::new(*a, port)))
                    .collect::<io::Result<Vec<_>>>()
            })
            .expect("bind UDP sockets in server netns");
        for s in socks {
            std::thread::spawn(move || {
                let mut buf = [0u8; 1500];
                while let Ok((n, from)) = s.recv_from(&mut buf) {
                    let _ = s.send_to(&buf[..n], from);
                }
            });
        }
    }

    /// Opens a TCP connection from the client netns.
    pub fn connect(&self, addr: IpAddr, port: u16) -> io::Result<TcpStream> {
        self.client.run(move || {
            let s =
                TcpStream::connect_timeout(&SocketAddr::new(addr, port), Duration::from_secs(3))?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            Ok(s)
        })
    }

    /// Connects, sends a line and reads the echo: the whole round trip must work.
    pub fn tcp_roundtrip(&self, addr: IpAddr, port: u16) -> io::Result<()> {
        let mut s = self.connect(addr, port)?;
        echo(&mut s)
    }

    /// Sends a UDP datagram from the client netns and waits for the echo.
    pub fn udp_roundtrip(&self, addr: IpAddr, port: u16) -> io::Result<()> {
        self.client.run(move || {
            let bind: SocketAddr = if addr.is_ipv6() {
                "[::]:0".parse().unwrap()
            } else {
                "0.0.0.0:0".parse().unwrap()
            };
            let s = UdpSocket::bind(bind)?;
            s.connect(SocketAddr::new(addr, port))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.send(b"ping")?;
            let mut buf = [0u8; 16];
            let n = s.recv(&mut buf)?;
            if &buf[..n] == b"ping" {
                Ok(())
            } else {
                Err(io::Error::other("wrong echo"))
            }
        })
    }

    /// `nft ARGS` inside the client netns.
    pub fn nft(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "netns", "exec", &self.client_name, "nft"];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// Loads an nft script inside the client netns.
    pub fn nft_file(&self, text: &str) {
        let path = std::env::temp_dir().join(format!("{}.nft", self.client_name));
        std::fs::write(&path, text).unwrap();
        self.nft(&["-f", path.to_str().unwrap()]);
        let _ = std::fs::remove_file(path);
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.client_name])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.server_name])
            .output();
    }
}

/// Binds `[::]:port` with IPV6_V6ONLY, so it does not clash with the IPv4 socket on the port.
fn bind_v6_only(ty: libc::c_int, port: u16) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let fd = unsafe { libc::socket(libc::AF_INET6, ty | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    sa.sin6_family = libc::AF_INET6 as u16;
    sa.sin6_port = port.to_be();
    let ok = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            (&one as *const libc::c_int).cast(),
            4,
        ) == 0
            && libc::bind(
                owned.as_raw_fd(),
                (&sa as *const libc::sockaddr_in6).cast(),
                std::mem::size_of::<libc::sockaddr_in6>() as u32,
            ) == 0
            && (ty != libc::SOCK_STREAM || libc::listen(fd, 128) == 0)
    };
    if ok {
        Ok(owned)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Writes a line on an open connection and reads the echo back.
pub fn echo(s: &mut TcpStream) -> io::Result<()> {
    s.write_all(b"hello\n")?;
    let mut buf = [0u8; 6];
    s.read_exact(&mut buf)?;
    if &buf == b"hello\n" {
        Ok(())
    } else {
        Err(io::Error::other("wrong echo"))
    }
}

/// Polls `f` every 100 ms until it returns true, for at most `max`. Returns whether it did.
pub fn wait_until(max: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + max;
    loop {
        if f() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A resolved element allowed for `secs` seconds.
pub fn addr_elem(ip: IpAddr, proto: Proto, port: u16, secs: u64) -> AddrElem {
    AddrElem {
        addr: ip,
        proto,
        port,
        timeout: Duration::from_secs(secs),
    }
}

/// A static element: `cidr`, a protocol and the ports `first..=last`.
pub fn net_elem(cidr: &str, proto: Proto, first: u16, last: u16) -> NetElem {
    NetElem {
        net: cidr.parse().unwrap(),
        proto,
        ports: PortRange { first, last },
    }
}
