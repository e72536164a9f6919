//! Talking to the servers the proxy forwards to.
//!
//! [`UdpExchange`] shares one connected UDP socket among many queries: each goes out with a
//! fresh random id, and one reader task hands every reply to the query waiting for that id.
//! That is a socket per server instead of a socket per query, which is what makes the proxy
//! fast. The caller still checks that the reply answers its question.
//!
//! [`Forwarder`] is egressd's upstream side: a few exchanges per configured upstream (so
//! replies come back to several random ports), tried in order, each with a timeout, with a
//! TCP retry for truncated answers to TCP clients.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Sockets per upstream server.
const SOCKETS_PER_UPSTREAM: usize = 4;
/// Largest DNS message.
pub const MAX_MESSAGE: usize = 65_535;

#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("{server}: no answer within {after:?}")]
    Timeout { server: SocketAddr, after: Duration },
    #[error("{server}: {source}")]
    Io {
        server: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("{server}: too many queries in flight")]
    Busy { server: SocketAddr },
    #[error("no upstream DNS server is configured")]
    NoUpstream,
}

type Pending = Arc<Mutex<HashMap<u16, oneshot::Sender<Vec<u8>>>>>;

/// One connected UDP socket to one server, multiplexed by DNS id.
pub struct UdpExchange {
    sock: Arc<UdpSocket>,
    server: SocketAddr,
    pending: Pending,
    reader: JoinHandle<()>,
}

impl Drop for UdpExchange {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl UdpExchange {
    /// Takes a socket already connected to `server` (it may live in another namespace) and
    /// starts its reader. Must run inside the tokio runtime.
    pub fn new(sock: std::net::UdpSocket, server: SocketAddr) -> io::Result<Self> {
        sock.set_nonblocking(true)?;
        let sock = Arc::new(UdpSocket::from_std(sock)?);
        let pending: Pending = Arc::default();
        let reader = tokio::spawn(read_replies(sock.clone(), pending.clone()));
        Ok(UdpExchange {
            sock,
            server,
            pending,
            reader,
        })
    }

    /// A socket in this (the daemon's) namespace, connected to `server`.
    pub fn connect(server: SocketAddr) -> io::Result<Self> {
        let local: SocketAddr = match server {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let sock = std::net::UdpSocket::bind(local)?;
        sock.connect(server)?;
        UdpExchange::new(sock, server)
    }

    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// Sends `query` (its id is replaced) and waits up to `timeout` for the reply with the
    /// same id. The reply keeps that id; the caller restores its own.
    pub async fn ask(&self, query: &[u8], timeout: Duration) -> Result<Vec<u8>, ExchangeError> {
        let server = self.server;
        if query.len() < 12 {
            return Err(ExchangeError::Io {
                server,
                source: io::Error::new(io::ErrorKind::InvalidInput, "query shorter than a header"),
            });
        }
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut p = lock(&self.pending);
            if p.len() > 60_000 {
                return Err(ExchangeError::Busy { server });
            }
            let mut id: u16 = rand::random();
            while p.contains_key(&id) {
                id = rand::random();
            }
            p.insert(id, tx);
            id
        };
        let _cleanup = Forget {
            pending: &self.pending,
            id,
        };
        let mut out = query.to_vec();
        out[..2].copy_from_slice(&id.to_be_bytes());
        self.sock
            .send(&out)
            .await
            .map_err(|source| ExchangeError::Io { server, source })?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(ExchangeError::Io {
                server,
                source: io::Error::other("reply reader stopped"),
            }),
            Err(_) => Err(ExchangeError::Timeout {
                server,
                after: timeout,
            }),
        }
    }
}

/// Removes a pending id when its query is done or abandoned.
struct Forget<'a> {
    pending: &'a Pending,
    id: u16,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        lock(self.pending).remove(&self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the map inconsistent (single inserts and
    // removes), so a poisoned lock is used as it is.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn read_replies(sock: Arc<UdpSocket>, pending: Pending) {
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let n = match sock.recv(&mut buf).await {
            Ok(n) => n,
            // ICMP port unreachable on a connected socket: the waiting query times out or
            // moves to the next server; the socket stays usable.
            Err(_) => continue,
        };
        let Some(data) = buf.get(..n) else { continue };
        if n < 12 {
            continue;
        }
        let id = u16::from_be_bytes([data[0], data[1]]);
        let waiter = lock(&pending).remove(&id);
        if let Some(tx) = waiter {
            let _ = tx.send(data.to_vec());
        }
    }
}

/// One DNS exchange over TCP (RFC 1035 4.2.2: each message prefixed by its length).
pub async fn tcp_ask(
    server: SocketAddr,
    query: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, ExchangeError> {
    let io_err = |source| ExchangeError::Io { server, source };
    let run = async {
        let len = u16::try_from(query.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "query too long"))?;
        let mut stream = TcpStream::connect(server).await?;
        let mut framed = Vec::with_capacity(query.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(query);
        stream.write_all(&framed).await?;
        let n = stream.read_u16().await?;
        let mut reply = vec![0u8; usize::from(n)];
        stream.read_exact(&mut reply).await?;
        Ok::<_, io::Error>(reply)
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(r) => r.map_err(io_err),
        Err(_) => Err(ExchangeError::Timeout {
            server,
            after: timeout,
        }),
    }
}

/// egressd's upstream resolvers, asked from the daemon's own namespace.
pub struct Forwarder {
    upstreams: Vec<(SocketAddr, Vec<UdpExchange>)>,
    next: AtomicUsize,
    timeout: Duration,
    /// Messages sent upstream (UDP and TCP), for tests and benchmarks.
    sent: AtomicUsize,
}

impl Forwarder {
    /// Opens the sockets. Must run inside the tokio runtime.
    pub fn new(upstreams: &[SocketAddr], timeout: Duration) -> io::Result<Self> {
        let mut out = Vec::new();
        for &u in upstreams {
            let socks = (0..SOCKETS_PER_UPSTREAM)
                .map(|_| UdpExchange::connect(u))
                .collect::<io::Result<Vec<_>>>()?;
            out.push((u, socks));
        }
        Ok(Forwarder {
            upstreams: out,
            next: AtomicUsize::new(0),
            timeout,
            sent: AtomicUsize::new(0),
        })
    }

    pub fn upstreams(&self) -> Vec<SocketAddr> {
        self.upstreams.iter().map(|(u, _)| *u).collect()
    }

    /// How long one upstream may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn messages_sent(&self) -> usize {
        self.sent.load(Ordering::Relaxed)
    }

    /// Asks each upstream in turn until one answers. `accept` judges a reply (it matches the
    /// question, and is not SERVFAIL or REFUSED); a rejected reply moves on to the next
    /// upstream, and is returned only if no later one does better.
    pub async fn ask(
        &self,
        query: &[u8],
        tcp: bool,
        accept: impl Fn(&[u8]) -> Verdict,
    ) -> Result<Vec<u8>, ExchangeError> {
        let mut last_err = ExchangeError::NoUpstream;
        let mut fallback = None;
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        for (server, socks) in &self.upstreams {
            let Some(ex) = socks.get(i % socks.len().max(1)) else {
                continue;
            };
            self.sent.fetch_add(1, Ordering::Relaxed);
            let mut reply = match ex.ask(query, self.timeout).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(upstream = %server, error = %e, "upstream query failed");
                    last_err = e;
                    continue;
                }
            };
            if tcp && is_truncated(&reply) {
                self.sent.fetch_add(1, Ordering::Relaxed);
                match tcp_ask(*server, query, self.timeout).await {
                    Ok(r) => reply = r,
                    Err(e) => {
                        last_err = e;
                        continue;
                    }
                }
            }
            match accept(&reply) {
                Verdict::Good => return Ok(reply),
                Verdict::TryNext => fallback = Some(reply),
                Verdict::Bogus => {
                    last_err = ExchangeError::Io {
                        server: *server,
                        source: io::Error::new(
                            io::ErrorKind::InvalidData,
                            "reply does not answer the question",
                        ),
                    }
                }
            }
        }
        fallback.ok_or(last_err)
    }
}

/// What the caller thinks of a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Use it.
    Good,
    /// A valid answer, but another upstream may do better (SERVFAIL, REFUSED).
    TryNext,
    /// Not an answer to our question.
    Bogus,
}

/// The TC bit of a raw message.
pub fn is_truncated(msg: &[u8]) -> bool {
    msg.get(2).is_some_and(|b| b & 0x02 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn many_queries_share_one_socket_and_get_their_own_replies() {
        // A server that answers each datagram with its own bytes, late for odd ids, so
        // replies arrive out of order.
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            let mut held = Vec::new();
            while let Ok((n, from)) = server.recv_from(&mut buf) {
                let msg = buf[..n].to_vec();
                if msg[0] % 2 == 1 && held.len() < 4 {
                    held.push((msg, from));
                    continue;
                }
                let _ = server.send_to(&msg, from);
                for (m, f) in held.drain(..) {
                    let _ = server.send_to(&m, f);
                }
            }
        });
        let ex = Arc::new(UdpExchange::connect(addr).unwrap());
        let mut tasks = Vec::new();
        for i in 0..50u8 {
            let ex = ex.clone();
            tasks.push(tokio::spawn(async move {
                let mut q = vec![0u8; 12];
                q.push(i);
                let r = ex.ask(&q, Duration::from_secs(2)).await;
                (i, r)
            }));
        }
        let mut answered = 0;
        for t in tasks {
            let (i, r) = t.await.unwrap();
            if let Ok(r) = r {
                assert_eq!(r[12], i, "a reply reached the query it answers");
                answered += 1;
            }
        }
        assert!(answered >= 46, "{answered} of 50 answered");
        assert!(lock(&ex.pending).is_empty(), "nothing left pending");
    }

    #[tokio::test]
    async fn a_silent_server_times_out_and_leaves_nothing_pending() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let ex = UdpExchange::connect(server.local_addr().unwrap()).unwrap();
        let r = ex.ask(&[0u8; 12], Duration::from_millis(100)).await;
        assert!(matches!(r, Err(ExchangeError::Timeout { .. })), "{r:?}");
        assert!(lock(&ex.pending).is_empty());
    }
}
