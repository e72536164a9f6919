//! Sequential TCP connection rate: the per-flow cost of an egress filter.
//!
//! ```text
//! connrate serve ADDR:PORT              # accepts, writes one byte, closes; forever
//! connrate client ADDR:PORT SECONDS     # connect, read to EOF, close; again until SECONDS pass
//! ```
//!
//! The client prints one JSON line:
//! `{"connections":N,"failures":F,"seconds":S,"per_second":R}`.
//!
//! Every connection is a new conntrack flow, so its first packet (the SYN) goes through the
//! whole output chain of the client's netns; the rest of the flow takes the conntrack shortcut
//! where the chain has one. The server closes first, so the client's ports never sit in
//! TIME_WAIT and can be reused at once. Run both ends inside throwaway network namespaces.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let _ = conn.write_all(b"x");
    }
    Ok(())
}

fn client(addr: SocketAddr, seconds: f64) -> std::io::Result<()> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut buf = [0u8; 8];
    let mut last_error = None;
    while Instant::now() < deadline {
        let done = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut got = 0;
            loop {
                match s.read(&mut buf)? {
                    0 => break,
                    n => got += n,
                }
            }
            if got == 1 {
                Ok(())
            } else {
                Err(std::io::Error::other(format!("read {got} bytes, want 1")))
            }
        });
        match done {
            Ok(()) => ok += 1,
            Err(e) => {
                failed += 1;
                last_error = Some(e);
                // A filter that rejects everything must not turn into a busy loop.
                if failed > 100 {
                    break;
                }
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{{\"connections\":{ok},\"failures\":{failed},\"seconds\":{secs:.3},\"per_second\":{:.1}}}",
        ok as f64 / secs
    );
    if let Some(e) = last_error {
        eprintln!("connrate: last failure: {e}");
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: connrate serve ADDR:PORT | connrate client ADDR:PORT SECONDS";
    let addr = args.get(1).and_then(|a| a.parse::<SocketAddr>().ok());
    let result = match (args.first().map(String::as_str), addr, args.get(2)) {
        (Some("serve"), Some(addr), None) => serve(addr),
        (Some("client"), Some(addr), Some(secs)) => match secs.parse::<f64>() {
            Ok(s) if s > 0.0 => client(addr, s),
            _ => Err(std::io::Error::other(usage)),
        },
        _ => Err(std::io::Error::other(usage)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("connrate: {e}");
            ExitCode::FAILURE
        }
    }
}
