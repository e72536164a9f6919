//! One file per CLI verb; `main.rs` only dispatches.

pub mod check_config;
pub mod run;
pub mod status;
