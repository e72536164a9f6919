//! The daemon's main loop: Docker events, resolver answers, control requests, signals and
//! DNS refresh timers all feed one [`Reconciler`].
//!
//! Start order: control socket (and the metrics endpoint, when configured), Docker connection,
//! event subscription, then a full sync (so no start is missed between the list and the
//! subscription), then ready. When the event stream ends (dockerd restarted), reconnect with
//! backoff and sync again. Every [`SAMPLE_EVERY`] the kernel counters of every table are read
//! into the metrics; the packets the tables log arrive from per-container NFLOG readers.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::control::{self, ControlRequest, Request, Response};
use crate::docker::{DockerClient, DockerError, Event, EventAction};
use crate::metrics::{self, Metrics, MetricsError, ServerLimits};
use crate::policy::Config;
use crate::reconciler::{NflogBatch, Reconciler};

/// How often the kernel counters of every table are read (metrics, anomaly summaries).
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);

type EventStream = Pin<Box<dyn Stream<Item = Result<Event, DockerError>> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Control(#[from] control::ControlError),
    #[error("signal handler: {0}")]
    Signal(#[source] std::io::Error),
    #[error("{0}")]
    Metrics(#[from] MetricsError),
}

/// Runs until SIGTERM/SIGINT. `config` was validated by the caller.
pub async fn run(config_path: PathBuf, config: Config) -> Result<(), DaemonError> {
    let profiles = config.load_profiles();
    for e in profiles.errors() {
        tracing::warn!(error = %e, "profile error: containers using this profile are quarantined");
    }
    let listener = control::bind(&config.control.socket, &config.control.group)?;
    let (control_tx, mut control_rx) = mpsc::channel::<ControlRequest>(64);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(control::serve(listener, control_tx, async {
        let _ = stop_rx.await;
    }));

    let metrics = Arc::new(Metrics::new());
    let (metrics_stop_tx, metrics_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let metrics_server = match config.metrics.listen {
        Some(addr) => {
            let listener = metrics::bind(addr).await?;
            tracing::info!(listen = %addr, "metrics endpoint: GET /metrics");
            Some(tokio::spawn(metrics::serve(
                listener,
                metrics.clone(),
                ServerLimits::default(),
                async {
                    let _ = metrics_stop_rx.await;
                },
            )))
        }
        None => None,
    };

    let (resolve_tx, mut resolve_rx) = mpsc::channel(256);
    // Packets the tables logged; the kernel rate-limits them per rule, so the queue is short.
    let (nflog_tx, mut nflog_rx) = mpsc::channel::<NflogBatch>(1024);
    let docker_socket = config.docker.socket.to_string_lossy().into_owned();
    let socket_path = config.control.socket.clone();
    let mut rec = Reconciler::new(
        config_path,
        config,
        profiles,
        resolve_tx,
        nflog_tx,
        metrics.clone(),
    );
    let mut sample_tick = tokio::time::interval(SAMPLE_EVERY);
    sample_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?;
    let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Signal)?;

    let mut events: Option<EventStream> = None;
    let mut backoff = Duration::from_millis(200);
    let mut reconnect_at = tokio::time::Instant::now();
    let mut ready = false;

    loop {
        let refresh_at = rec
            .next_refresh()
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => { let _ = rec.reload(); }
            _ = tokio::time::sleep_until(reconnect_at), if events.is_none() => {
                match DockerClient::connect(&docker_socket).await {
                    Ok(docker) => {
                        // Subscribe first, then list: a container started in between is seen twice, never missed.
                        events = Some(Box::pin(docker.events()));
                        rec.set_docker(Some(docker));
                        tracing::info!(socket = %docker_socket, "connected to Docker; syncing");
                        rec.sync("sync").await;
                        backoff = Duration::from_millis(200);
                        if !ready {
                            ready = true;
                            notify_ready();
                            tracing::info!(control = %socket_path.display(), "egressd ready");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "Docker unreachable");
                        reconnect_at = tokio::time::Instant::now() + backoff;
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                }
            }
            ev = next_event(&mut events), if events.is_some() => {
                match ev {
                    Some(Ok(ev)) => match ev.action {
                        EventAction::Start => rec.on_start(&ev.id, ev.at).await,
                        EventAction::Die => rec.on_stop(&ev.id, false),
                        EventAction::Destroy => rec.on_stop(&ev.id, true),
                        EventAction::Create => rec.on_create(&ev.id, &ev.attributes),
                    },
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "Docker event stream failed; reconnecting");
                        events = None;
                        rec.set_docker(None);
                        reconnect_at = tokio::time::Instant::now() + backoff;
                    }
                    None => {
                        tracing::warn!("Docker event stream ended (dockerd restarted?); reconnecting");
                        events = None;
                        rec.set_docker(None);
                        reconnect_at = tokio::time::Instant::now() + backoff;
                    }
                }
            }
            Some((domain, result)) = resolve_rx.recv() => rec.on_resolved(domain, result),
            Some((id, got)) = nflog_rx.recv() => rec.on_nflog(&id, got),
            _ = sample_tick.tick() => rec.sample(),
            _ = tokio::time::sleep_until(refresh_at) => rec.start_due_queries(),
            Some(req) = control_rx.recv() => {
                let resp = match req.request {
                    Request::Status { container } => match rec.status(container.as_deref()) {
                        Ok(s) => Response { ok: true, status: Some(s), ..Default::default() },
                        Err(e) => Response::error(e),
                    },
                    Request::Explain { container, dest } => match rec.explain(&container, &dest) {
                        Ok(e) => Response { ok: true, explanation: Some(e), ..Default::default() },
                        Err(e) => Response::error(e),
                    },
                    Request::Reload => match rec.reload() {
                        Ok(m) => Response { ok: true, message: Some(m), ..Default::default() },
                        Err(e) => Response::error(format!("reload rejected, old config stays in force:\n{e}")),
                    },
                    // Only root (runc runs the hook as root) may have a table written on demand.
                    Request::Enforce { .. } if req.peer_uid != Some(0) => {
                        Response::error("enforce requests are accepted from root only")
                    }
                    Request::Enforce { id, pid, bundle } => {
                        match rec.on_hook(crate::oci::State { id, pid, bundle }).await {
                            Ok(m) => Response { ok: true, message: Some(m), ..Default::default() },
                            Err(e) => Response::error(e),
                        }
                    }
                };
                let _ = req.reply.send(resp);
            }
        }
    }
    tracing::info!("shutting down; tables stay in place and keep containers confined");
    let _ = stop_tx.send(());
    let _ = server.await;
    let _ = metrics_stop_tx.send(());
    if let Some(m) = metrics_server {
        let _ = m.await;
    }
    let _ = std::fs::remove_file(&socket_path);
    Ok(())
}

async fn next_event(events: &mut Option<EventStream>) -> Option<Result<Event, DockerError>> {
    match events {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// Tells systemd (Type=notify) that the first sync is done. A no-op outside systemd.
fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(_) => return,
    };
    let path = PathBuf::from(path);
    let result = if let Some(abstract_name) = path.to_str().and_then(|p| p.strip_prefix('@')) {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())
            .and_then(|addr| sock.send_to_addr(b"READY=1", &addr))
    } else {
        sock.send_to(b"READY=1", &path)
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}
