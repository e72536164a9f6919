//! egressd: a default-deny egress firewall for Docker containers.
//!
//! # Layout
//! - [`policy`]: labels, profiles and config → a validated [`policy::ContainerPolicy`] (pure).
//! - [`firewall`]: the `inet egressd` table: a pure [`firewall::Ruleset`] value, and the
//!   netlink engine that programs it inside a network namespace.
//! - [`commands`]: one file per CLI verb; `main.rs` only dispatches.

pub mod commands;
pub mod firewall;
pub mod policy;
