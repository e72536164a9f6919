#!/usr/bin/env bash
# Removes egressd (as root), however it was installed: by scripts/install.sh (the files in
# /usr/share/egressd/install-manifest) or as the Debian package (dpkg --remove / --purge).
#
#   scripts/uninstall.sh [--release] [--purge]
#
# It never opens a container silently. By default the `inet egressd` tables stay in the
# containers' network namespaces: running containers stay confined (default deny, with the
# addresses they had) until they stop; it says how many. --release deletes those tables
# first (`egressd release --all`): their egress is then open.
#
# Left behind without --purge: /etc/egressd (config, config.toml.new, the admin's profiles),
# the `egressd` group, /etc/docker/daemon.json.egressd-backup, and the journal. --purge
# removes the first three too. docs/operations.md has the full list.
#
# It refuses, changing nothing, while a daemon runs outside systemd, or while a running
# container uses the runtime shim (Docker needs the binary to stop such a container).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/setup.sh

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

RELEASE=0
PURGE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --release) RELEASE=1; shift ;;
    --purge) PURGE=1; shift ;;
    -h|--help) usage ;;
    *) log "unknown argument: $1"; usage ;;
  esac
done
require_root

BIN=/usr/bin/egressd
ETC=/etc/egressd
SHARE=/usr/share/egressd
UNIT=/etc/systemd/system/egressd.service
MANIFEST=$SHARE/install-manifest
GROUP=egressd
DAEMON_JSON=/etc/docker/daemon.json
RUN_DIR=/run/egressd

status=$(dpkg-query -W -f='${Status}' egressd 2>/dev/null || true)
if [[ "$status" == *" installed" || "$status" == *" half-configured" || "$status" == *" unpacked" ]]; then
  KIND=package
elif [ -f "$MANIFEST" ]; then
  KIND=script
elif [[ "$status" == *" config-files" ]]; then
  KIND=package-config
else
  KIND=none
fi
log "egressd installed: $KIND"

# --- checks first: nothing changes when one fails ----------------------------------------------
service_active() { systemd_running && systemctl is-active --quiet egressd.service 2>/dev/null; }
if [ -x "$BIN" ] && ! service_active && "$BIN" status >/dev/null 2>&1; then
  log "an egressd daemon answers on its control socket but is not the systemd service:"
  log "stop it first (it would put the tables back), then run this again"
  exit 1
fi
runtime_registered() { [ -f "$DAEMON_JSON" ] && grep -q "\"$BIN\"" "$DAEMON_JSON"; }
if runtime_registered && command -v docker >/dev/null 2>&1; then
  users=$(docker ps -q 2>/dev/null | xargs -r docker inspect -f '{{.Name}} {{.HostConfig.Runtime}}' 2>/dev/null |
    awk '$2 == "egressd" {sub("^/", "", $1); print $1}' | tr '\n' ' ' || true)
  if [ -n "$users" ]; then
    log "running containers use the egressd runtime shim: $users"
    log "Docker runs $BIN to stop or exec into them; stop them (or recreate them with --runtime runc) first"
    exit 1
  fi
fi

# --- stop the daemon (tables stay: that is what stopping does) ---------------------------------
if systemd_running && [ "$KIND" != none ]; then
  if service_active; then
    log "stopping egressd.service"
    systemctl stop egressd.service
  fi
  systemctl disable --quiet egressd.service 2>/dev/null || true
elif ! systemd_running; then
  log "systemd is not PID 1 here ($(ps -o comm= -p 1)): skipped systemctl stop and disable"
fi

# --- the runtime shim --------------------------------------------------------------------------
if runtime_registered && [ -x "$BIN" ]; then
  log "removing the runtime shim from $DAEMON_JSON"
  "$BIN" install-runtime --remove
  reload_dockerd
fi

# --- the tables --------------------------------------------------------------------------------
if [ -x "$BIN" ]; then
  if [ "$RELEASE" = 1 ]; then
    log "releasing every container: egressd release --all (their egress is open afterwards)"
    if ! "$BIN" release --all; then
      log "some tables could not be deleted (see above); nothing was removed. Run this again"
      exit 1
    fi
  else
    tables=$("$BIN" release --all --dry-run 2>/dev/null | grep -c '^would release' || true)
    if [ "$tables" -gt 0 ]; then
      log "$tables network namespace(s) keep their inet egressd table: those containers stay"
      log "  confined (default deny, the addresses they had) until they stop. To open them:"
      log "  scripts/uninstall.sh --release before uninstalling, or afterwards in each one:"
      log "  nsenter -t PID -n nft delete table inet egressd"
    fi
  fi
fi

# --- the files ---------------------------------------------------------------------------------
case "$KIND" in
  package|package-config)
    if [ "$PURGE" = 1 ]; then
      log "dpkg --purge egressd"
      dpkg --purge egressd
    elif [ "$KIND" = package ]; then
      log "dpkg --remove egressd"
      dpkg --remove egressd
    fi
    ;;
  script)
    log "removing the files listed in $MANIFEST"
    mapfile -t files < <(awk '$1 == "f" {print $2}' "$MANIFEST")
    mapfile -t dirs < <(awk '$1 == "d" {print $2}' "$MANIFEST" | sort -r)
    rm -f "${files[@]}"
    for d in "${dirs[@]}"; do
      rmdir --ignore-fail-on-non-empty "$d" 2>/dev/null || true
    done
    if systemd_running; then
      systemctl daemon-reload
    fi
    ;;
esac
# Left by a daemon that ran outside systemd (systemd removes its RuntimeDirectory itself).
rm -rf "$RUN_DIR"

if [ "$PURGE" = 1 ]; then
  rm -rf "$ETC"
  rm -f "$DAEMON_JSON.egressd-backup"
  if getent group "$GROUP" >/dev/null; then
    groupdel "$GROUP"
  fi
  log "purged: $ETC, the $GROUP group and $DAEMON_JSON.egressd-backup are gone"
else
  left=()
  [ -e "$ETC" ] && left+=("$ETC")
  getent group "$GROUP" >/dev/null && left+=("group $GROUP")
  [ -e "$DAEMON_JSON.egressd-backup" ] && left+=("$DAEMON_JSON.egressd-backup")
  if [ "${#left[@]}" -gt 0 ]; then
    log "kept: ${left[*]} (scripts/uninstall.sh --purge removes them)"
  fi
fi
log "egressd is uninstalled; its journal stays (journalctl -u egressd)"
