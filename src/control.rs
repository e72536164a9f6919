//! Control socket: a Unix socket (mode 0660, group from config) speaking one JSON request line
//! and one JSON response line per connection. The server hands each request to the reconciler
//! and writes its answer; the client is what `egressd status` and `egressd reload` use.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::status::StatusReport;

/// Longest a client may take to send its request line.
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait.
const MAX_CONNECTIONS: usize = 32;
/// Largest request line accepted.
const MAX_REQUEST: usize = 64 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// All managed containers, or the one whose name or id (prefix) matches.
    Status { container: Option<String> },
    /// Re-read config and profiles and re-apply them everywhere.
    Reload,
    /// Whether `dest` (`HOST[:PORT][/PROTO]`) is allowed for `container` now, and why.
    Explain { container: String, dest: String },
    /// From the OCI prestart hook: confine container `id` (process `pid`, bundle `bundle`)
    /// now, before its process starts. Accepted from root only.
    Enforce {
        id: String,
        pid: u32,
        bundle: PathBuf,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<StatusReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explanation: Option<crate::explain::Explanation>,
}

impl Response {
    pub fn error(msg: impl Into<String>) -> Self {
        Response {
            ok: false,
            error: Some(msg.into()),
            ..Default::default()
        }
    }
}

/// A request from a client, with the channel for its answer.
pub struct ControlRequest {
    pub request: Request,
    /// The client's uid (`SO_PEERCRED`), when the kernel told it.
    pub peer_uid: Option<u32>,
    pub reply: oneshot::Sender<Response>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("control socket {path}: bad answer from the daemon: {source}")]
    Decode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Binds the socket: makes its directory, replaces a stale socket file, sets mode 0660 and the
/// group (when it exists; otherwise the socket stays root-only and a warning is logged).
pub fn bind(path: &Path, group: &str) -> Result<UnixListener, ControlError> {
    let io_err = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err)?;
    }
    if path.exists() {
        // A socket nobody answers on is left over from a crash; one that answers is a live daemon.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io_err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "another egressd is listening there",
            )));
        }
        std::fs::remove_file(path).map_err(io_err)?;
    }
    let listener = UnixListener::bind(path).map_err(io_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(io_err)?;
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => {
            nix::unistd::chown(path, None, Some(g.gid)).map_err(|e| io_err(e.into()))?;
        }
        _ => tracing::warn!(
            socket = %path.display(),
            group,
            "control socket group does not exist; only root can use the socket"
        ),
    }
    Ok(listener)
}

/// Serves clients until `shutdown` resolves, passing each request to `requests`.
pub async fn serve(
    listener: UnixListener,
    requests: mpsc::Sender<ControlRequest>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let conn = tokio::select! {
            _ = &mut shutdown => return,
            c = listener.accept() => c,
        };
        let Ok((stream, _)) = conn else { continue };
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let requests = requests.clone();
        let peer_uid = stream.peer_cred().ok().map(|c| c.uid());
        tokio::spawn(async move {
            let _permit = permit;
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader = tokio::io::BufReader::new(read).take(MAX_REQUEST as u64);
            let response =
                match tokio::time::timeout(IDLE_TIMEOUT, reader.read_line(&mut line)).await {
                    Err(_) => Response::error("timed out waiting for the request"),
                    Ok(Err(e)) => Response::error(format!("reading the request: {e}")),
                    Ok(Ok(_)) => match serde_json::from_str::<Request>(line.trim()) {
                        Err(e) => Response::error(format!("bad request: {e}")),
                        Ok(request) => {
                            let (tx, rx) = oneshot::channel();
                            if requests
                                .send(ControlRequest {
                                    request,
                                    peer_uid,
                                    reply: tx,
                                })
                                .await
                                .is_err()
                            {
                                Response::error("the daemon is shutting down")
                            } else {
                                rx.await.unwrap_or_else(|_| {
                                    Response::error("the daemon dropped the request")
                                })
                            }
                        }
                    },
                };
            let mut body =
                serde_json::to_vec(&response).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
            body.push(b'\n');
            let _ = write.write_all(&body).await;
        });
    }
}

use tokio::io::AsyncReadExt as _;

/// Sends one request and reads the answer (blocking; for the CLI).
pub fn request(path: &Path, req: &Request, timeout: Duration) -> Result<Response, ControlError> {
    let io_err = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(io_err)?;
    stream.set_read_timeout(Some(timeout)).map_err(io_err)?;
    stream.set_write_timeout(Some(timeout)).map_err(io_err)?;
    let mut line = serde_json::to_vec(req).map_err(|source| ControlError::Decode {
        path: path.to_path_buf(),
        source,
    })?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io_err)?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(io_err)?;
    serde_json::from_str(answer.trim()).map_err(|source| ControlError::Decode {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_a_stable_wire_form() {
        let j = serde_json::to_string(&Request::Status {
            container: Some("agent".into()),
        })
        .unwrap();
        assert_eq!(j, r#"{"cmd":"status","container":"agent"}"#);
        assert_eq!(
            serde_json::to_string(&Request::Reload).unwrap(),
            r#"{"cmd":"reload"}"#
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"flush-everything"}"#).is_err());
    }

    #[tokio::test]
    async fn server_answers_and_rejects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = bind(&path, "no-such-group-egressd-test").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        let (tx, mut rx) = mpsc::channel::<ControlRequest>(4);
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, tx, async {
            let _ = stop_rx.await;
        }));
        tokio::spawn(async move {
            while let Some(r) = rx.recv().await {
                let _ = r.reply.send(Response {
                    ok: true,
                    message: Some(format!("{:?}", r.request)),
                    ..Default::default()
                });
            }
        });
        let p = path.clone();
        let ok = tokio::task::spawn_blocking(move || {
            request(&p, &Request::Reload, Duration::from_secs(5))
        })
        .await
        .unwrap()
        .unwrap();
        assert!(ok.ok);
        assert_eq!(ok.message.as_deref(), Some("Reload"));
        let p = path.clone();
        let bad = tokio::task::spawn_blocking(move || {
            let mut s = std::os::unix::net::UnixStream::connect(&p).unwrap();
            s.write_all(b"not json\n").unwrap();
            let mut a = String::new();
            BufReader::new(s).read_line(&mut a).unwrap();
            a
        })
        .await
        .unwrap();
        assert!(bad.contains("bad request"), "{bad}");
        // A second daemon cannot take over a live socket.
        assert!(bind(&path, "x").is_err());
        let _ = stop_tx.send(());
        server.await.unwrap();
    }
}
