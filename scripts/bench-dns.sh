#!/usr/bin/env bash
# DNS proxy benchmark (root, Debian 12): latency added over the upstream, and queries per
# second side by side with dnsmasq --nftset, all on loopback in throwaway namespaces.
# See benches/dns.rs; docs/benchmarks.md keeps the figures.
#
#   sudo scripts/bench-dns.sh            # BENCH_SECS=8 BENCH_ROUNDS=3 by default
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/setup.sh

require_root
ensure_packages
for p in dnsperf dnsmasq-base; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || {
    log "installing $p"; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$p" >/dev/null; }
done
cargo build --release --quiet --example fake_dns
exec cargo bench --quiet --bench dns
