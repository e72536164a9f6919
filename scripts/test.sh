#!/usr/bin/env bash
# Runs every egressd test on a fresh Debian 12 machine, as root: installs what is missing
# (Rust build deps, libnftnl/libmnl, nftables, iproute2, docker.io, busybox-static), starts
# dockerd if needed, checks formatting and lints, then runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/setup.sh

require_root
ensure_packages
ensure_dockerd

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy --all-targets -- -D warnings"
cargo clippy --quiet --all-targets -- -D warnings

if cargo nextest --version >/dev/null 2>&1; then
  log "cargo nextest run"
  cargo nextest run --no-fail-fast "$@"
else
  log "cargo test (cargo-nextest not installed)"
  cargo test --no-fail-fast "$@"
fi
