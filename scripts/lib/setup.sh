# Shared setup for egressd's scripts on Debian 12 (sourced, not run). Idempotent: installs only
# what is missing and starts dockerd only when it is not answering.

# Debian packages the build, the tests, the demo and the benchmarks need.
EGRESSD_PACKAGES=(
  build-essential pkg-config libnftnl-dev libmnl-dev
  nftables iproute2 iptables iperf3
  docker.io busybox-static
  ca-certificates procps
)

# Extra packages of the packaging tests (scripts/test-packaging.sh): `vagrant validate`, the
# system-call trace of the capability-limited smoke run, and `man` for `systemd-analyze verify`.
EGRESSD_PACKAGING_PACKAGES=(vagrant strace man-db)

log() { printf '[egressd] %s\n' "$*" >&2; }

require_root() {
  if [ "$(id -u)" -ne 0 ]; then
    log "run this as root: it creates network namespaces, nftables tables and Docker containers"
    exit 1
  fi
}

# ensure_debs PKG...: installs those of the Debian packages that are missing.
ensure_debs() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# Whether systemd is the init system here (PID 1), so that systemctl can be used.
systemd_running() {
  [ -d /run/systemd/system ]
}

# Makes dockerd re-read daemon.json (runtimes): `systemctl reload docker` under systemd, or
# SIGHUP to the pid in dockerd's pid file.
reload_dockerd() {
  if systemd_running && systemctl is-active --quiet docker 2>/dev/null; then
    systemctl reload docker
  elif [ -s /var/run/docker.pid ] && kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
    kill -HUP "$(cat /var/run/docker.pid)"
  else
    log "dockerd is not running: it reads /etc/docker/daemon.json when it starts"
  fi
}

ensure_packages() {
  ensure_debs "${EGRESSD_PACKAGES[@]}"
  ensure_cargo
}

ensure_cargo() {
  if ! command -v cargo >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
      export PATH="$HOME/.cargo/bin:$PATH"
    else
      log "cargo not found: install a Rust toolchain (rustup) first"
      exit 1
    fi
  fi
}

# Starts dockerd in the background when `docker info` does not answer, and waits for it.
ensure_dockerd() {
  if docker info >/dev/null 2>&1; then
    return 0
  fi
  log "starting dockerd (log: /var/log/egressd-dockerd.log)"
  # A pid file left by a dockerd that was killed blocks the next start.
  if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
    rm -f /var/run/docker.pid
  fi
  setsid nohup dockerd >/var/log/egressd-dockerd.log 2>&1 < /dev/null &
  for _ in $(seq 1 120); do
    docker info >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  log "dockerd did not come up; last lines of its log:"
  tail -n 30 /var/log/egressd-dockerd.log >&2
  exit 1
}
