//! Running a short piece of code inside another network namespace.
//!
//! `setns(CLONE_NEWNET)` changes only the calling thread, so it is done on a dedicated OS thread
//! that exits afterwards: never on a tokio worker, whose next task would run in the wrong
//! namespace. Sockets created there stay bound to that namespace after the thread is gone.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};

/// A network namespace, named by a path: `/proc/PID/ns/net` or `/var/run/netns/NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Netns {
    path: PathBuf,
}

impl Netns {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Netns { path: path.into() }
    }

    /// The namespace of process `pid`.
    pub fn of_pid(pid: u32) -> Self {
        Netns::new(format!("/proc/{pid}/ns/net"))
    }

    /// A namespace made with `ip netns add NAME`.
    pub fn named(name: &str) -> Self {
        Netns::new(format!("/var/run/netns/{name}"))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on a fresh thread that has entered this namespace, and returns its result.
    pub fn run<T, F>(&self, f: F) -> io::Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> io::Result<T> + Send + 'static,
    {
        let file = File::open(&self.path)
            .map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", self.path.display())))?;
        let path = self.path.clone();
        let handle = std::thread::Builder::new()
            .name("egressd-netns".into())
            .spawn(move || {
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| {
                    io::Error::from_raw_os_error(e as i32)
                        .map_context(format!("setns {}", path.display()))
                })?;
                f()
            })?;
        handle
            .join()
            .map_err(|_| io::Error::other("netns thread panicked"))?
    }
}

impl std::fmt::Display for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "netns {}", self.path.display())
    }
}

trait MapContext {
    fn map_context(self, ctx: String) -> io::Error;
}

impl MapContext for io::Error {
    fn map_context(self, ctx: String) -> io::Error {
        io::Error::new(self.kind(), format!("{ctx}: {self}"))
    }
}
