#!/usr/bin/env bash
# Runs every egressd test on a fresh Debian 12 machine, as root: installs what is missing
# (Rust build deps, libnftnl/libmnl, nftables, iproute2, docker.io, busybox-static), starts
# dockerd if needed, checks formatting and lints, then runs the whole suite, then the packaging
# tests (scripts/test-packaging.sh: install, package, unit hardening, uninstall).
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

status=0
if cargo nextest --version >/dev/null 2>&1; then
  log "cargo nextest run"
  cargo nextest run --no-fail-fast "$@" || status=1
else
  log "cargo test (cargo-nextest not installed)"
  cargo test --no-fail-fast "$@" || status=1
fi

# After the Rust suite, never beside it: it installs egressd system-wide, runs the demo's
# containers and deletes tables with `release --all`. EGRESSD_SKIP_PACKAGING=1 skips it.
if [ "${EGRESSD_SKIP_PACKAGING:-}" = 1 ]; then
  log "packaging tests skipped (EGRESSD_SKIP_PACKAGING=1)"
else
  log "packaging tests: scripts/test-packaging.sh"
  bash scripts/test-packaging.sh || status=1
fi
exit "$status"
