//! What egressd reads from, and adds to, an OCI bundle at container start (the runtime shim
//! and its prestart hook; see docs/runtime.md). Pure functions over the parsed JSON, plus two
//! small file readers.
//!
//! Facts verified with Docker 20.10 (Debian 12): the bundle's `config.json` carries no labels,
//! but its `/etc/hostname` and `/etc/resolv.conf` mounts come from the container's directory
//! under Docker's data root (`/var/lib/docker/containers/ID/`), where `config.v2.json` (name,
//! labels) and `hostconfig.json` (network mode, privileged, added capabilities, `--dns`) are
//! already written when `runc create` runs.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Value, json};

use crate::docker::ContainerInfo;

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not valid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {what}")]
    Shape { path: PathBuf, what: String },
}

/// The state runc writes to a hook's stdin.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct State {
    pub id: String,
    #[serde(default)]
    pub pid: u32,
    pub bundle: PathBuf,
}

/// The network namespace the spec asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetNs {
    /// A new namespace of its own.
    New,
    /// An existing namespace (`--network container:X`), by path.
    Joined(PathBuf),
    /// No network namespace entry: the host's (`--network host`).
    Host,
}

/// The enforcement-relevant facts of a bundle's `config.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecFacts {
    pub netns: NetNs,
    /// Union of the bounding, effective, permitted, inheritable and ambient sets, `CAP_*`.
    pub caps: BTreeSet<String>,
    /// Docker's directory for this container (parent of the `/etc/hostname` mount source).
    pub container_dir: Option<PathBuf>,
    /// Host path of the file mounted at `/etc/resolv.conf`.
    pub resolv_conf: Option<PathBuf>,
}

/// Capabilities with which the workload could change or flush its own namespace's rules.
pub const DANGEROUS_SPEC_CAPS: [&str; 2] = ["CAP_NET_ADMIN", "CAP_SYS_ADMIN"];

pub fn spec_facts(spec: &Value) -> SpecFacts {
    let netns = match spec["linux"]["namespaces"].as_array() {
        Some(list) => match list.iter().find(|n| n["type"] == "network") {
            None => NetNs::Host,
            Some(n) => match n["path"].as_str() {
                Some(p) if !p.is_empty() => NetNs::Joined(PathBuf::from(p)),
                _ => NetNs::New,
            },
        },
        None => NetNs::Host,
    };
    let mut caps = BTreeSet::new();
    if let Some(sets) = spec["process"]["capabilities"].as_object() {
        for list in sets.values().filter_map(Value::as_array) {
            caps.extend(list.iter().filter_map(Value::as_str).map(str::to_string));
        }
    }
    let mount_source = |dest: &str| {
        spec["mounts"].as_array().and_then(|ms| {
            ms.iter()
                .find(|m| m["destination"] == dest)
                .and_then(|m| m["source"].as_str())
                .map(PathBuf::from)
        })
    };
    SpecFacts {
        netns,
        caps,
        container_dir: mount_source("/etc/hostname")
            .and_then(|p| p.parent().map(Path::to_path_buf)),
        resolv_conf: mount_source("/etc/resolv.conf"),
    }
}

/// Why a container with these spec facts cannot be confined, if it cannot. A joined
/// namespace is decided by the daemon (it knows whether the owner is managed).
pub fn spec_unenforceable(facts: &SpecFacts) -> Option<String> {
    if facts.netns == NetNs::Host {
        return Some("has no network namespace of its own (--network host)".into());
    }
    let bad: Vec<&str> = DANGEROUS_SPEC_CAPS
        .iter()
        .copied()
        .filter(|c| facts.caps.contains(*c))
        .collect();
    if !bad.is_empty() {
        return Some(format!(
            "holds {} (--cap-add or --privileged) and could flush its own rules",
            bad.join(", ")
        ));
    }
    None
}

/// The runc subcommand (`create`, `start`, `delete`, …) and its index: the first argument that
/// is neither a global flag nor a global flag's value.
pub fn runc_subcommand(args: &[OsString]) -> Option<(usize, &str)> {
    // runc's global flags that take a separate value.
    const WITH_VALUE: [&str; 4] = ["--root", "--log", "--log-format", "--criu"];
    let mut i = 0;
    while i < args.len() {
        let a = args[i].to_str()?;
        if WITH_VALUE.contains(&a) {
            i += 2;
        } else if a.starts_with('-') {
            i += 1;
        } else {
            return Some((i, a));
        }
    }
    None
}

/// The bundle directory of a `create`/`run` command (the arguments after the subcommand):
/// `--bundle DIR`, `-b DIR`, `--bundle=DIR`, or the current directory.
pub fn bundle_arg(after: &[OsString]) -> PathBuf {
    let mut it = after.iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--bundle" || s == "-b" {
            if let Some(v) = it.next() {
                return PathBuf::from(v);
            }
        } else if let Some(v) = s.strip_prefix("--bundle=") {
            return PathBuf::from(v);
        }
    }
    PathBuf::from(".")
}

/// The prestart hook entry that runs `BINARY hook --socket S --timeout T`. runc kills it after
/// `timeout + 2` seconds should it hang anyway.
pub fn hook_entry(binary: &Path, socket: &Path, timeout_secs: u64) -> Value {
    json!({
        "path": binary,
        "args": ["egressd", "hook", "--socket", socket, "--timeout", timeout_secs.to_string()],
        "timeout": timeout_secs + 2,
    })
}

/// Appends `hook` to `hooks.prestart`, after the hooks already there (Docker's network setup
/// runs first). Idempotent: an egressd hook already present is replaced, not doubled.
pub fn add_prestart_hook(spec: &mut Value, hook: Value) -> Result<(), String> {
    let obj = spec
        .as_object_mut()
        .ok_or("config.json is not a JSON object")?;
    let hooks = obj
        .entry("hooks")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or("config.json: \"hooks\" is not an object")?;
    let prestart = hooks
        .entry("prestart")
        .or_insert_with(|| json!([]))
        .as_array_mut()
        .ok_or("config.json: \"hooks.prestart\" is not an array")?;
    prestart.retain(|h| !is_egressd_hook(h));
    prestart.push(hook);
    Ok(())
}

fn is_egressd_hook(h: &Value) -> bool {
    h["args"][0] == "egressd" && h["args"][1] == "hook"
}

/// Name and labels from Docker's `config.v2.json`.
pub fn parse_config_v2(text: &str) -> Result<(String, BTreeMap<String, String>), String> {
    let v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let name = v["Name"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches('/')
        .to_string();
    let labels = match &v["Config"]["Labels"] {
        Value::Null => BTreeMap::new(),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
            .collect(),
        _ => return Err("Config.Labels is not an object".into()),
    };
    Ok((name, labels))
}

/// `HostConfig` fields from Docker's `hostconfig.json`, into `info`.
pub fn apply_hostconfig(text: &str, info: &mut ContainerInfo) -> Result<(), String> {
    let v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    info.network_mode = v["NetworkMode"].as_str().unwrap_or("default").to_string();
    info.privileged = v["Privileged"].as_bool().unwrap_or(false);
    info.cap_add = v["CapAdd"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(Value::as_str)
                .map(|c| {
                    let c = c.to_ascii_uppercase();
                    c.strip_prefix("CAP_").map(str::to_string).unwrap_or(c)
                })
                .collect()
        })
        .unwrap_or_default();
    info.dns = v["Dns"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(Value::as_str)
                .filter_map(|s| s.parse::<IpAddr>().ok())
                .collect()
        })
        .unwrap_or_default();
    Ok(())
}

/// A container's name and labels, as Docker's `config.v2.json` has them.
pub type NameAndLabels = (String, BTreeMap<String, String>);

/// Where runc keeps the state of Docker's containers: under dockerd's own containerd, and
/// under a system containerd.
pub const RUNC_STATE_ROOTS: [&str; 2] =
    ["/run/docker/runtime-runc/moby", "/run/containerd/runc/moby"];

/// The OCI state of running container `id` from runc's state file (its init pid and bundle),
/// when it is where Docker's runc keeps it. `None` otherwise (the caller asks Docker).
pub fn runtime_state(id: &str) -> Option<State> {
    runtime_state_in(&RUNC_STATE_ROOTS.map(Path::new), id)
}

/// [`runtime_state`] under the given runc state roots.
pub fn runtime_state_in(roots: &[&Path], id: &str) -> Option<State> {
    // A container id is hex; anything else must not become a path.
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    roots.iter().find_map(|root| {
        let v = read_json(&Path::new(root).join(id).join("state.json")).ok()?;
        let pid = u32::try_from(v["init_process_pid"].as_u64()?).ok()?;
        let bundle = v["config"]["labels"]
            .as_array()?
            .iter()
            .filter_map(Value::as_str)
            .find_map(|l| l.strip_prefix("bundle="))?;
        Some(State {
            id: id.to_string(),
            pid,
            bundle: PathBuf::from(bundle),
        })
    })
}

/// What Docker's files say about a container that runs or is about to: its OCI state, the
/// enforcement facts of its bundle, and (from Docker's directory for it) its name and labels
/// and its host config. Read without the Docker API, which the prestart hook must not call
/// and which answers slowly while dockerd starts a burst of containers.
#[derive(Debug)]
pub struct Bundle {
    pub state: State,
    pub facts: SpecFacts,
    /// `config.v2.json`: name and labels (`None`: the bundle names no Docker directory).
    pub config_v2: Option<Result<NameAndLabels, OciError>>,
    /// `hostconfig.json`, as text.
    pub hostconfig: Option<Result<String, OciError>>,
}

impl Bundle {
    pub fn read(state: State) -> Result<Bundle, OciError> {
        let spec = read_json(&state.bundle.join("config.json"))?;
        let facts = spec_facts(&spec);
        let config_v2 = facts.container_dir.as_deref().map(read_config_v2);
        let hostconfig = facts.container_dir.as_deref().map(|dir| {
            let path = dir.join("hostconfig.json");
            std::fs::read_to_string(&path).map_err(|source| OciError::Io { path, source })
        });
        Ok(Bundle {
            state,
            facts,
            config_v2,
            hostconfig,
        })
    }
}

pub fn read_json(path: &Path) -> Result<Value, OciError> {
    let text = std::fs::read_to_string(path).map_err(|source| OciError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| OciError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a container's name and labels from `DIR/config.v2.json`.
pub fn read_config_v2(dir: &Path) -> Result<(String, BTreeMap<String, String>), OciError> {
    let path = dir.join("config.v2.json");
    let text = std::fs::read_to_string(&path).map_err(|source| OciError::Io {
        path: path.clone(),
        source,
    })?;
    parse_config_v2(&text).map_err(|what| OciError::Shape { path, what })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_state_reads_runcs_state_file_and_refuses_odd_ids() {
        let dir = tempfile::tempdir().unwrap();
        let (empty, root) = (dir.path().join("none"), dir.path().join("moby"));
        let id = "0123456789abcdef";
        std::fs::create_dir_all(root.join(id)).unwrap();
        // Trimmed from /run/docker/runtime-runc/moby/ID/state.json (runc 1.1, Docker 20.10).
        std::fs::write(
            root.join(id).join("state.json"),
            r#"{"id":"0123456789abcdef","init_process_pid":4242,"config":{"labels":["bundle=/run/docker/containerd/daemon/io.containerd.runtime.v2.task/moby/0123456789abcdef"]}}"#,
        )
        .unwrap();
        let roots = [empty.as_path(), root.as_path()];
        let s = runtime_state_in(&roots, id).unwrap();
        assert_eq!(s.pid, 4242);
        assert_eq!(
            s.bundle,
            Path::new(
                "/run/docker/containerd/daemon/io.containerd.runtime.v2.task/moby/0123456789abcdef"
            )
        );
        assert_eq!(runtime_state_in(&roots, "fedcba"), None, "not there");
        assert_eq!(runtime_state_in(&roots, "../moby/0123456789abcdef"), None);
        assert_eq!(runtime_state_in(&roots, ""), None);
    }

    /// Trimmed from a real bundle written by Docker 20.10 for
    /// `docker run --cap-add NET_ADMIN --label egressd.enable=true`.
    fn docker_spec() -> Value {
        json!({
            "ociVersion": "1.0.2-dev",
            "process": {"capabilities": {
                "bounding": ["CAP_CHOWN", "CAP_NET_RAW", "CAP_NET_ADMIN"],
                "effective": ["CAP_CHOWN", "CAP_NET_RAW", "CAP_NET_ADMIN"]}},
            "hooks": {"prestart": [{"path": "/proc/2411/exe", "args": ["libnetwork-setkey", "-exec-root=/var/run/docker", "45d9", "3e53"]}]},
            "mounts": [
                {"destination": "/etc/resolv.conf", "type": "bind", "source": "/var/lib/docker/containers/45d9/resolv.conf"},
                {"destination": "/etc/hostname", "type": "bind", "source": "/var/lib/docker/containers/45d9/hostname"}],
            "linux": {"namespaces": [{"type": "mount"}, {"type": "network"}, {"type": "uts"}, {"type": "pid"}]}
        })
    }

    #[test]
    fn facts_of_a_docker_bundle() {
        let f = spec_facts(&docker_spec());
        assert_eq!(f.netns, NetNs::New);
        assert!(f.caps.contains("CAP_NET_ADMIN"));
        assert_eq!(
            f.container_dir.as_deref(),
            Some(Path::new("/var/lib/docker/containers/45d9"))
        );
        assert_eq!(
            f.resolv_conf.as_deref(),
            Some(Path::new("/var/lib/docker/containers/45d9/resolv.conf"))
        );
        assert_eq!(
            spec_unenforceable(&f).as_deref(),
            Some("holds CAP_NET_ADMIN (--cap-add or --privileged) and could flush its own rules")
        );
    }

    #[test]
    fn network_namespace_kinds() {
        let mut s = docker_spec();
        s["process"]["capabilities"] = json!({"bounding": ["CAP_CHOWN"]});
        assert_eq!(spec_unenforceable(&spec_facts(&s)), None);
        s["linux"]["namespaces"] = json!([{"type": "network", "path": "/proc/77/ns/net"}]);
        assert_eq!(
            spec_facts(&s).netns,
            NetNs::Joined("/proc/77/ns/net".into())
        );
        assert_eq!(spec_unenforceable(&spec_facts(&s)), None);
        s["linux"]["namespaces"] = json!([{"type": "mount"}]);
        assert_eq!(spec_facts(&s).netns, NetNs::Host);
        assert!(
            spec_unenforceable(&spec_facts(&s))
                .unwrap()
                .contains("--network host")
        );
        s["linux"] = json!({});
        assert_eq!(spec_facts(&s).netns, NetNs::Host, "no namespaces at all");
    }

    #[test]
    fn privileged_spec_is_unenforceable() {
        // `--privileged` cannot start on the development machine (runc cannot apply every
        // capability there), so this path is tested here: a privileged spec holds them all.
        let mut s = docker_spec();
        s["process"]["capabilities"] =
            json!({"bounding": ["CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_BPF"]});
        let why = spec_unenforceable(&spec_facts(&s)).unwrap();
        assert!(why.contains("CAP_NET_ADMIN, CAP_SYS_ADMIN"), "{why}");
    }

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn subcommand_and_bundle() {
        let args = os(&[
            "--root",
            "/var/run/docker/runtime-runc/moby",
            "--log",
            "/x/log.json",
            "--log-format",
            "json",
            "--systemd-cgroup",
            "create",
            "--bundle",
            "/b/45d9",
            "--pid-file",
            "/b/45d9/init.pid",
            "45d9",
        ]);
        let (i, cmd) = runc_subcommand(&args).unwrap();
        assert_eq!((i, cmd), (7, "create"));
        assert_eq!(bundle_arg(&args[i + 1..]), PathBuf::from("/b/45d9"));
        assert_eq!(bundle_arg(&os(&["-b", "/c"])), PathBuf::from("/c"));
        assert_eq!(bundle_arg(&os(&["--bundle=/d", "id"])), PathBuf::from("/d"));
        assert_eq!(bundle_arg(&os(&["id"])), PathBuf::from("."));
        assert_eq!(
            runc_subcommand(&os(&["--root", "/r", "delete", "--force", "x"])),
            Some((2, "delete"))
        );
        assert_eq!(runc_subcommand(&os(&["--version"])), None);
        assert_eq!(runc_subcommand(&os(&["features"])), Some((0, "features")));
    }

    #[test]
    fn hook_is_appended_after_dockers_and_never_doubled() {
        let mut s = docker_spec();
        let hook = hook_entry(Path::new("/usr/bin/egressd"), Path::new("/run/e.sock"), 10);
        add_prestart_hook(&mut s, hook.clone()).unwrap();
        add_prestart_hook(&mut s, hook).unwrap();
        let pre = s["hooks"]["prestart"].as_array().unwrap();
        assert_eq!(pre.len(), 2);
        assert_eq!(pre[0]["args"][0], "libnetwork-setkey");
        assert_eq!(pre[1]["path"], "/usr/bin/egressd");
        assert_eq!(pre[1]["args"][1], "hook");
        assert_eq!(pre[1]["args"][3], "/run/e.sock");
        assert_eq!(pre[1]["timeout"], 12);

        let mut bare = json!({"ociVersion": "1.0.2"});
        add_prestart_hook(&mut bare, json!({"path": "/x"})).unwrap();
        assert_eq!(bare["hooks"]["prestart"][0]["path"], "/x");
        assert!(add_prestart_hook(&mut json!([]), json!({})).is_err());
        assert!(add_prestart_hook(&mut json!({"hooks": []}), json!({})).is_err());
    }

    #[test]
    fn docker_container_files() {
        let (name, labels) = parse_config_v2(
            r#"{"Name": "/agent", "Config": {"Labels": {"egressd.enable": "true", "x": "y"}}}"#,
        )
        .unwrap();
        assert_eq!(name, "agent");
        assert_eq!(
            labels.get("egressd.enable").map(String::as_str),
            Some("true")
        );
        let (_, none) = parse_config_v2(r#"{"Name": "/a", "Config": {"Labels": null}}"#).unwrap();
        assert!(none.is_empty());
        assert!(parse_config_v2("{").is_err());
        assert!(parse_config_v2(r#"{"Config": {"Labels": [1]}}"#).is_err());

        let mut info = ContainerInfo::default();
        apply_hostconfig(
            r#"{"NetworkMode": "container:abc", "Privileged": false, "CapAdd": ["net_admin", "CAP_SYS_TIME"], "Dns": ["10.0.0.2", "bogus"]}"#,
            &mut info,
        )
        .unwrap();
        assert_eq!(info.network_mode, "container:abc");
        assert_eq!(info.cap_add, vec!["NET_ADMIN", "SYS_TIME"]);
        assert_eq!(info.dns, vec!["10.0.0.2".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn hook_state_from_runc() {
        let s: State = serde_json::from_str(
            r#"{"ociVersion":"1.0.2","id":"45d9","status":"created","pid":4242,"bundle":"/b/45d9","annotations":{}}"#,
        )
        .unwrap();
        assert_eq!(s.id, "45d9");
        assert_eq!(s.pid, 4242);
        assert_eq!(s.bundle, PathBuf::from("/b/45d9"));
    }
}
