//! The `fake_dns` example server, started by a test on loopback (host namespace) with a
//! free port and killed when dropped. It answers only from its records file and never
//! forwards, so no test ever reaches a real resolver.
//!
//! `fake_dns` is an example, and cargo gives tests no `CARGO_BIN_EXE_` path for examples.
//! `cargo test` and `cargo nextest run` build examples before running tests, into
//! `target/<profile>/examples/`, and test binaries live in `target/<profile>/deps/`; so the
//! server is found from `std::env::current_exe()`. With `cargo test --test NAME` cargo does
//! not build examples: run `cargo build --example fake_dns` first.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub fn fake_dns_path() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/resolver-HASH -> target/<profile>/examples/fake_dns
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary is in target/<profile>/deps");
    let path = profile_dir.join("examples").join("fake_dns");
    assert!(
        path.exists(),
        "{} is missing: run plain `cargo test` (which builds examples) or \
         `cargo build --example fake_dns` first",
        path.display()
    );
    path
}

/// A running `fake_dns` on 127.0.0.1 with a free port, killed on drop.
pub struct FakeDns {
    child: Child,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl FakeDns {
    pub fn start(records: &str) -> FakeDns {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("records"), records).expect("write records");
        let mut child = Command::new(fake_dns_path())
            .args(["--listen", "127.0.0.1:0", "--records"])
            .arg(dir.path().join("records"))
            .arg("--log")
            .arg(dir.path().join("log"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn fake_dns");
        let stdout = child.stdout.take().expect("stdout");
        let mut addr = None;
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("read fake_dns stdout");
            if let Some(a) = line.strip_prefix("listening ") {
                addr = Some(a.parse().expect("listening address"));
            } else if line == "ready" {
                break;
            }
        }
        FakeDns {
            child,
            addr: addr.expect("fake_dns said where it listens before ready"),
            dir,
        }
    }

    /// Atomic rewrite (temp file + rename), as a test or the demo would do it.
    pub fn set_records(&self, records: &str) {
        let tmp = self.dir.path().join("records.tmp");
        std::fs::write(&tmp, records).expect("write records");
        std::fs::rename(&tmp, self.dir.path().join("records")).expect("rename records");
    }

    /// `(unix_ms, qtype, name)` of each query the server received.
    pub fn log(&self) -> Vec<(u128, String, String)> {
        let text = std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default();
        text.lines()
            .map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                assert_eq!(f.len(), 3, "log line {l:?}");
                (
                    f[0].parse().expect("unix ms"),
                    f[1].to_string(),
                    f[2].to_string(),
                )
            })
            .collect()
    }

    pub fn asked(&self) -> Vec<(String, String)> {
        self.log().into_iter().map(|(_, t, n)| (t, n)).collect()
    }
}

impl Drop for FakeDns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
