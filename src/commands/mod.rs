//! One file per CLI verb; `main.rs` only dispatches.

pub mod audit;
pub mod check_config;
pub mod generate_assets;
pub mod hook;
pub mod install_runtime;
pub mod release;
pub mod run;
pub mod runtime;
pub mod status;
