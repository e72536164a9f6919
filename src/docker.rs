//! Docker watcher: the only module that talks to the Docker API (bollard).
//!
//! It turns Docker's answers into [`ContainerInfo`], plain data the reconciler decides on.
//! Requests have timeouts; the event stream does not (a timeout on it ends it silently).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::Docker;
use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::{
    EventsOptionsBuilder, InspectContainerOptions, ListContainersOptionsBuilder,
    StopContainerOptionsBuilder,
};
use futures_util::{Stream, StreamExt};

/// Seconds a single Docker API request may take.
const REQUEST_TIMEOUT_SECS: u64 = 10;

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot connect to Docker at {socket}: {source}")]
    Connect {
        socket: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("Docker API {what}: {source}")]
    Api {
        what: String,
        #[source]
        source: bollard::errors::Error,
    },
}

/// What egressd needs to know about one container.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerInfo {
    pub id: String,
    /// Without the leading `/`.
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub running: bool,
    /// Host PID of the container's init process (0 when not running).
    pub pid: u32,
    /// `HostConfig.NetworkMode`: `default`, `bridge`, `host`, `none`, `container:ID`, or a network name.
    pub network_mode: String,
    pub privileged: bool,
    /// `HostConfig.CapAdd`, upper-cased, without any `CAP_` prefix.
    pub cap_add: Vec<String>,
    /// `HostConfig.Dns`: DNS servers given with `--dns`.
    pub dns: Vec<IpAddr>,
    /// Host path of the file Docker mounts at the container's `/etc/resolv.conf`.
    pub resolv_conf: Option<PathBuf>,
}

impl ContainerInfo {
    pub fn short_id(&self) -> &str {
        self.id.get(..12).unwrap_or(&self.id)
    }

    /// The container whose network namespace this one joins (`--network container:X`).
    pub fn joined_container(&self) -> Option<&str> {
        self.network_mode.strip_prefix("container:")
    }
}

/// Converts Docker's inspect answer (pure; unit-tested).
pub fn container_info(r: &ContainerInspectResponse) -> ContainerInfo {
    let config = r.config.as_ref();
    let host = r.host_config.as_ref();
    let state = r.state.as_ref();
    ContainerInfo {
        id: r.id.clone().unwrap_or_default(),
        name: r
            .name
            .clone()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string(),
        labels: config
            .and_then(|c| c.labels.clone())
            .unwrap_or_default()
            .into_iter()
            .collect(),
        running: state.and_then(|s| s.running).unwrap_or(false),
        pid: state
            .and_then(|s| s.pid)
            .and_then(|p| u32::try_from(p).ok())
            .unwrap_or(0),
        network_mode: host
            .and_then(|h| h.network_mode.clone())
            .unwrap_or_else(|| "default".into()),
        privileged: host.and_then(|h| h.privileged).unwrap_or(false),
        cap_add: host
            .and_then(|h| h.cap_add.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|c| {
                let c = c.to_ascii_uppercase();
                c.strip_prefix("CAP_").map(str::to_string).unwrap_or(c)
            })
            .collect(),
        dns: host
            .and_then(|h| h.dns.clone())
            .unwrap_or_default()
            .iter()
            .filter_map(|d| d.parse().ok())
            .collect(),
        resolv_conf: r
            .resolv_conf_path
            .as_deref()
            .filter(|p| !p.is_empty())
            .map(PathBuf::from),
    }
}

/// A container lifecycle event that matters to egressd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub action: EventAction,
    pub id: String,
    /// The labels Docker attached to the event (`Actor.Attributes`).
    pub attributes: BTreeMap<String, String>,
    /// When dockerd emitted the event (`timeNano`), by the host's clock.
    pub at: Option<SystemTime>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventAction {
    Create,
    Start,
    Die,
    Destroy,
}

/// A connected, version-negotiated Docker client.
#[derive(Clone)]
pub struct DockerClient {
    api: Docker,
    /// Same connection settings, no request timeout: for the event stream only.
    events_api: Docker,
}

impl DockerClient {
    /// Connects to the Unix socket and negotiates the API version, so Debian 12's Engine 20.10
    /// (API 1.41) and current releases both work.
    pub async fn connect(socket: &str) -> Result<Self, DockerError> {
        let err = |source| DockerError::Connect {
            socket: socket.to_string(),
            source,
        };
        let api =
            Docker::connect_with_unix(socket, REQUEST_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
                .map_err(err)?
                .negotiate_version()
                .await
                .map_err(err)?;
        api.ping().await.map_err(err)?;
        // Ten years: in effect no timeout on the long-lived event stream.
        let events_api = api
            .clone()
            .with_timeout(Duration::from_secs(10 * 365 * 86400));
        Ok(DockerClient { api, events_api })
    }

    /// IDs of all running containers.
    pub async fn running_ids(&self) -> Result<Vec<String>, DockerError> {
        let opts = ListContainersOptionsBuilder::default().all(false).build();
        let list = self
            .api
            .list_containers(Some(opts))
            .await
            .map_err(|source| DockerError::Api {
                what: "list containers".into(),
                source,
            })?;
        Ok(list.into_iter().filter_map(|c| c.id).collect())
    }

    /// Inspects one container; `Ok(None)` when it no longer exists.
    pub async fn inspect(&self, id: &str) -> Result<Option<ContainerInfo>, DockerError> {
        Ok(self
            .inspect_response(id)
            .await?
            .as_ref()
            .map(container_info))
    }

    /// Docker's whole inspect answer (for `egressd audit`); `Ok(None)` when the container no
    /// longer exists. It holds the container's environment: never log it.
    pub async fn inspect_response(
        &self,
        id: &str,
    ) -> Result<Option<ContainerInspectResponse>, DockerError> {
        match self
            .api
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
        {
            Ok(r) => Ok(Some(r)),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(source) => Err(DockerError::Api {
                what: format!("inspect container {id}"),
                source,
            }),
        }
    }

    /// Stops a container at once (SIGTERM, then SIGKILL after `grace_secs`).
    pub async fn stop(&self, id: &str, grace_secs: i32) -> Result<(), DockerError> {
        let opts = StopContainerOptionsBuilder::default().t(grace_secs).build();
        match self.api.stop_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            // 304: already stopped.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(source) => Err(DockerError::Api {
                what: format!("stop container {id}"),
                source,
            }),
        }
    }

    /// Container create/start/die/destroy events. The stream ends when dockerd goes away.
    pub fn events(&self) -> impl Stream<Item = Result<Event, DockerError>> + Send + 'static {
        let mut filters = HashMap::new();
        filters.insert("type", vec!["container"]);
        filters.insert("event", vec!["create", "start", "die", "destroy"]);
        let opts = EventsOptionsBuilder::default().filters(&filters).build();
        self.events_api
            .events(Some(opts))
            .filter_map(|m| async move {
                match m {
                    Err(source) => Some(Err(DockerError::Api {
                        what: "event stream".into(),
                        source,
                    })),
                    Ok(m) => {
                        let action = match m.action.as_deref()? {
                            "create" => EventAction::Create,
                            "start" => EventAction::Start,
                            "die" => EventAction::Die,
                            "destroy" => EventAction::Destroy,
                            _ => return None,
                        };
                        let at = m
                            .time_nano
                            .and_then(|n| u64::try_from(n).ok())
                            .map(|n| UNIX_EPOCH + Duration::from_nanos(n));
                        let actor = m.actor?;
                        Some(Ok(Event {
                            at,
                            action,
                            id: actor.id?,
                            attributes: actor.attributes.unwrap_or_default().into_iter().collect(),
                        }))
                    }
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{ContainerConfig, ContainerState, HostConfig};

    #[test]
    fn inspect_answer_becomes_container_info() {
        let r = ContainerInspectResponse {
            id: Some("0123456789abcdef0123".into()),
            name: Some("/agent".into()),
            config: Some(ContainerConfig {
                labels: Some(HashMap::from([(
                    "egressd.enable".to_string(),
                    "true".to_string(),
                )])),
                ..Default::default()
            }),
            state: Some(ContainerState {
                running: Some(true),
                pid: Some(4242),
                ..Default::default()
            }),
            host_config: Some(HostConfig {
                network_mode: Some("container:abc".into()),
                privileged: Some(false),
                cap_add: Some(vec!["net_admin".into(), "CAP_SYS_ADMIN".into()]),
                dns: Some(vec!["10.0.0.53".into(), "not an ip".into()]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let i = container_info(&r);
        assert_eq!(i.name, "agent");
        assert_eq!(i.short_id(), "0123456789ab");
        assert_eq!(i.pid, 4242);
        assert!(i.running);
        assert_eq!(i.labels["egressd.enable"], "true");
        assert_eq!(i.cap_add, vec!["NET_ADMIN", "SYS_ADMIN"]);
        assert_eq!(i.joined_container(), Some("abc"));
        assert_eq!(i.dns, vec!["10.0.0.53".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn missing_fields_default_to_not_running() {
        let i = container_info(&ContainerInspectResponse::default());
        assert!(!i.running);
        assert_eq!(i.pid, 0);
        assert_eq!(i.network_mode, "default");
    }
}
