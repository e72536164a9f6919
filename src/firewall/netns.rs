//! Running a short piece of code inside another network namespace.
//!
//! `setns(CLONE_NEWNET)` changes only the calling thread, so it is done on a dedicated OS thread
//! that exits afterwards: never on a tokio worker, whose next task would run in the wrong
//! namespace. Sockets created there stay bound to that namespace after the thread is gone.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
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

/// Directories where network namespaces are kept open by a bind mount, with no process
/// needed: Docker's sandboxes and `ip netns add`. (`/var/run` is `/run` on Debian; both
/// spellings are walked, and duplicates drop out by inode.)
pub const NAMED_NETNS_DIRS: [&str; 3] =
    ["/var/run/docker/netns", "/run/docker/netns", "/run/netns"];

/// A network namespace found on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundNetns {
    pub netns: Netns,
    /// The namespace's identity: device and inode of its nsfs file.
    pub id: (u64, u64),
    /// Where it was found, for people: `pid 4242 (sleep)` or `/run/netns/NAME`.
    pub seen_as: String,
}

/// Every network namespace of the host that egressd can reach: the bind-mounted ones
/// ([`NAMED_NETNS_DIRS`]) first, then those of every process (`/proc/PID/ns/net`), each
/// namespace once. Processes that exit while the list is made are skipped; only an unreadable
/// `/proc` is an error.
pub fn list_all() -> io::Result<Vec<FoundNetns>> {
    let mut candidates = Vec::new();
    for dir in NAMED_NETNS_DIRS {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths {
            // Docker leaves files behind whose bind mount is gone (and unmounts before it
            // unlinks): only a file on nsfs is a namespace.
            if !is_namespace(&path) {
                continue;
            }
            if let Ok(m) = std::fs::metadata(&path) {
                let seen_as = path.display().to_string();
                candidates.push((Netns::new(path), (m.dev(), m.ino()), seen_as));
            }
        }
    }
    let proc_entries = std::fs::read_dir("/proc")
        .map_err(|e| io::Error::new(e.kind(), format!("read /proc: {e}")))?;
    let mut pids: Vec<u32> = proc_entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    for pid in pids {
        let netns = Netns::of_pid(pid);
        if let Ok(m) = std::fs::metadata(netns.path()) {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            candidates.push((
                netns,
                (m.dev(), m.ino()),
                format!("pid {pid} ({})", comm.trim()),
            ));
        }
    }
    Ok(dedup(candidates))
}

/// Whether `path` is a namespace (a file on nsfs: a bind mount or `/proc/PID/ns/*`), not a
/// plain file left where a namespace was mounted.
pub fn is_namespace(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

/// Keeps the first entry of each namespace identity, in order.
pub fn dedup(candidates: Vec<(Netns, (u64, u64), String)>) -> Vec<FoundNetns> {
    let mut seen = HashSet::new();
    candidates
        .into_iter()
        .filter(|(_, id, _)| seen.insert(*id))
        .map(|(netns, id, seen_as)| FoundNetns { netns, id, seen_as })
        .collect()
}

trait MapContext {
    fn map_context(self, ctx: String) -> io::Error;
}

impl MapContext for io::Error {
    fn map_context(self, ctx: String) -> io::Error {
        io::Error::new(self.kind(), format!("{ctx}: {self}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_keeps_the_first_name_of_each_namespace() {
        let c = |p: &str, ino: u64| (Netns::new(p), (4, ino), p.to_string());
        let found = dedup(vec![
            c("/run/docker/netns/abc", 10),
            c("/var/run/docker/netns/abc", 10),
            c("/proc/1/ns/net", 1),
            c("/proc/77/ns/net", 10),
            c("/proc/78/ns/net", 11),
            c("/proc/2/ns/net", 1),
        ]);
        let paths: Vec<&Path> = found.iter().map(|f| f.netns.path()).collect();
        assert_eq!(
            paths,
            [
                Path::new("/run/docker/netns/abc"),
                Path::new("/proc/1/ns/net"),
                Path::new("/proc/78/ns/net")
            ]
        );
    }

    #[test]
    fn only_nsfs_files_are_namespaces() {
        assert!(is_namespace(Path::new("/proc/self/ns/net")));
        let dir = tempfile::tempdir().unwrap();
        let stale = dir.path().join("0a1a7e8d44c5");
        std::fs::write(&stale, "").unwrap();
        assert!(!is_namespace(&stale));
        assert!(!is_namespace(&dir.path().join("missing")));
    }

    #[test]
    fn the_own_namespace_is_listed() {
        let own = std::fs::metadata("/proc/self/ns/net").unwrap();
        let all = list_all().unwrap();
        assert!(
            all.iter().any(|f| f.id == (own.dev(), own.ino())),
            "{all:?}"
        );
        let mut ids: Vec<_> = all.iter().map(|f| f.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), all.len(), "each namespace once");
    }
}
