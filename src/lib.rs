//! egressd: a default-deny egress firewall for Docker containers.
//!
//! # Layout
//! - [`policy`]: labels, profiles and config → a validated [`policy::ContainerPolicy`] (pure).
//! - [`firewall`]: the `inet egressd` table: a pure [`firewall::Ruleset`] value, and the
//!   netlink engine that programs it inside a network namespace.
//! - [`resolver`]: resolve mode's shared DNS cache (TTL arithmetic) and upstream queries.
//! - [`dnsproxy`]: proxy mode: answers each container's DNS, inserts before it releases.
//! - [`docker`]: the Docker API (bollard): containers, events.
//! - [`reconciler`]: desired state vs the tables in the kernel; one task owns all state.
//! - [`daemon`]: the main loop (events, resolver answers, control requests, signals).
//! - [`events`]: denied packets, anomalies and DNS refusals an operator sees (pure).
//! - [`explain`]: why a destination is allowed or denied for a container (pure).
//! - [`control`]: the JSON control socket; [`status`]: what `egressd status` shows.
//! - [`audit`]: hardening checks of running containers (pure): inspect facts → findings.
//! - [`nflog`]: the packets the table logs (denied, over budget), read inside each netns.
//! - [`metrics`]: Prometheus metrics (kernel counters as snapshots) and the `/metrics` server.
//! - [`cli`]: the command line (clap), shared by `main.rs` and the man pages/completions.
//! - [`commands`]: one file per CLI verb; `main.rs` only dispatches.

pub mod audit;
pub mod cli;
pub mod commands;
pub mod control;
pub mod daemon;
pub mod dnsproxy;
pub mod docker;
pub mod events;
pub mod explain;
pub mod firewall;
pub mod metrics;
pub mod nflog;
pub mod oci;
pub mod policy;
pub mod reconciler;
pub mod resolver;
pub mod status;
