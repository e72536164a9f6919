#!/usr/bin/env bash
# Installs egressd on Debian 12 / Ubuntu (as root), from this checkout or from a built package.
# Idempotent: run it again to upgrade. docs/operations.md describes every file.
#
#   scripts/install.sh                     build the release binary here, install it
#   scripts/install.sh --binary PATH       install a binary built elsewhere (same checkout)
#   scripts/install.sh --deb PATH          install a package built by scripts/build-deb.sh
#   options: --with-runtime   also register the runtime shim in /etc/docker/daemon.json
#            --no-start       enable the service but do not start it
#
# From a checkout it installs:
#   /usr/bin/egressd
#   /etc/egressd/config.toml          only if missing, or if it is still the previous default;
#                                     an edited one is kept and the new default goes beside it
#                                     as config.toml.new
#   /etc/egressd/profiles/            the admin's profiles (override the shipped ones by name)
#   /usr/share/egressd/profiles/      the shipped profiles (replaced on upgrade)
#   /usr/share/egressd/config.toml    the shipped default config, for reference
#   /etc/systemd/system/egressd.service
#   man pages, shell completions, /usr/share/doc/egressd
#   the `egressd` group (it owns the control socket)
# and records them in /usr/share/egressd/install-manifest for scripts/uninstall.sh.
# When systemd is not PID 1 (containers, chroots), the systemctl steps are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/setup.sh

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

BINARY=""
DEB=""
WITH_RUNTIME=0
START=1
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) [ $# -ge 2 ] || usage; BINARY=$2; shift 2 ;;
    --deb) [ $# -ge 2 ] || usage; DEB=$2; shift 2 ;;
    --with-runtime) WITH_RUNTIME=1; shift ;;
    --no-start) START=0; shift ;;
    -h|--help) usage ;;
    *) log "unknown argument: $1"; usage ;;
  esac
done
if [ -n "$BINARY" ] && [ -n "$DEB" ]; then
  log "--binary and --deb exclude each other"; exit 2
fi

require_root

BIN=/usr/bin/egressd
ETC=/etc/egressd
SHARE=/usr/share/egressd
DOC=/usr/share/doc/egressd
UNIT=/etc/systemd/system/egressd.service
MANIFEST=$SHARE/install-manifest
GROUP=egressd
# Runtime libraries of the binary (libnftnl >= 1.2, libmnl).
RUNTIME_DEBS=(libnftnl11 libmnl0)

package_installed() {
  dpkg-query -W -f='${Status}' egressd 2>/dev/null | grep -q 'install ok installed'
}

# --- Docker -----------------------------------------------------------------------------------
if ! command -v dockerd >/dev/null 2>&1; then
  log "note: Docker is not installed (apt-get install docker.io); egressd.service requires it"
fi

if [ -n "$DEB" ]; then
  # --- from the Debian package ----------------------------------------------------------------
  [ -f "$DEB" ] || { log "--deb $DEB: no such file"; exit 2; }
  if [ -f "$MANIFEST" ]; then
    log "egressd is installed from a checkout (see $MANIFEST): run scripts/uninstall.sh first"
    log "(it keeps /etc/egressd; the package then keeps your config and puts its own beside it)"
    exit 1
  fi
  log "installing the package $DEB"
  # confold: an edited /etc/egressd/config.toml is kept, the new one lands in .dpkg-dist.
  if ! dpkg --force-confdef --force-confold -i "$DEB"; then
    log "dpkg could not configure it; fetching missing dependencies with apt-get -f install"
    DEBIAN_FRONTEND=noninteractive apt-get install -f -y -qq --no-install-recommends
  fi
  package_installed || { log "the package is not installed: see dpkg's messages above"; exit 1; }
else
  # --- from this checkout ---------------------------------------------------------------------
  if package_installed; then
    log "egressd is installed as a Debian package: upgrade it with scripts/install.sh --deb PATH"
    log "(or remove it first: scripts/uninstall.sh)"
    exit 1
  fi
  ensure_debs "${RUNTIME_DEBS[@]}"
  if [ -z "$BINARY" ]; then
    ensure_debs build-essential pkg-config libnftnl-dev libmnl-dev
    ensure_cargo
    log "building the release binary (cargo build --release --locked)"
    cargo build --release --locked --quiet --bin egressd
    BINARY=${CARGO_TARGET_DIR:-target}/release/egressd
  fi
  [ -x "$BINARY" ] || { log "--binary $BINARY: not an executable file"; exit 2; }
  "$BINARY" --version >/dev/null || { log "$BINARY does not run on this machine"; exit 1; }

  # Directories this install creates are recorded, so uninstall removes exactly those; those
  # recorded by an earlier install are kept in the list.
  declare -a FILES=() DIRS=()
  if [ -f "$MANIFEST" ]; then
    while read -r kind path; do
      [ "$kind" = d ] && DIRS+=("$path")
    done < "$MANIFEST"
  fi
  mkdirs() {
    local d
    for d in "$@"; do
      if [ ! -d "$d" ]; then
        mkdir -p "$d"
        DIRS+=("$d")
      fi
    done
  }
  # put SRC DEST MODE: installs a file atomically (a running daemon keeps its old binary).
  put() {
    install -m "$3" "$1" "$2.egressd-new"
    mv -f "$2.egressd-new" "$2"
    FILES+=("$2")
  }

  mkdirs "$SHARE" "$SHARE/profiles" "$DOC" "$DOC/examples" \
    /usr/share/man/man1 /usr/share/bash-completion/completions \
    /usr/share/zsh/vendor-completions /usr/share/fish/vendor_completions.d
  # The admin's directories: never recorded, uninstall leaves them (--purge removes them).
  mkdir -p "$ETC/profiles"

  log "installing $BIN ($("$BINARY" --version))"
  put "$BINARY" "$BIN" 0755

  # Shipped profiles: the directory is egressd's, so it is replaced as a whole.
  find "$SHARE/profiles" -maxdepth 1 -name '*.toml' -delete
  for p in profiles/*.toml; do
    put "$p" "$SHARE/profiles/$(basename "$p")" 0644
  done

  # The config: never overwrite an edited one.
  if [ ! -e "$ETC/config.toml" ]; then
    install -m 0644 config/config.toml "$ETC/config.toml"
    log "installed the default config $ETC/config.toml"
  elif cmp -s "$ETC/config.toml" config/config.toml; then
    rm -f "$ETC/config.toml.new"
  elif [ -f "$SHARE/config.toml" ] && cmp -s "$ETC/config.toml" "$SHARE/config.toml"; then
    install -m 0644 config/config.toml "$ETC/config.toml"
    rm -f "$ETC/config.toml.new"
    log "updated $ETC/config.toml to the new default (it had not been edited)"
  else
    install -m 0644 config/config.toml "$ETC/config.toml.new"
    log "kept your edited $ETC/config.toml; the new default is $ETC/config.toml.new"
    log "  compare them: diff -u $ETC/config.toml $ETC/config.toml.new"
  fi
  put config/config.toml "$SHARE/config.toml" 0644

  # Man pages and completions, generated by the binary from its own command line.
  ASSETS=$(mktemp -d)
  trap 'rm -rf "$ASSETS"' EXIT
  "$BIN" generate-assets "$ASSETS" >/dev/null
  # Pages of verbs that no longer exist go too.
  find /usr/share/man/man1 -maxdepth 1 \( -name 'egressd.1.gz' -o -name 'egressd-*.1.gz' \) -delete
  for page in "$ASSETS"/man/*.1; do
    gzip -9n < "$page" > "$ASSETS/page.gz"
    put "$ASSETS/page.gz" "/usr/share/man/man1/$(basename "$page").gz" 0644
  done
  put "$ASSETS/completions/egressd.bash" /usr/share/bash-completion/completions/egressd 0644
  put "$ASSETS/completions/_egressd" /usr/share/zsh/vendor-completions/_egressd 0644
  put "$ASSETS/completions/egressd.fish" /usr/share/fish/vendor_completions.d/egressd.fish 0644

  put README.md "$DOC/README.md" 0644
  for d in docs/*.md; do
    put "$d" "$DOC/$(basename "$d")" 0644
  done
  put docs/examples/docker-compose.yml "$DOC/examples/docker-compose.yml" 0644

  put packaging/systemd/egressd.service "$UNIT" 0644

  if ! getent group "$GROUP" >/dev/null; then
    groupadd --system "$GROUP"
    log "created the group $GROUP: its members may use egressd status (the control socket)"
  fi

  {
    echo "# written by scripts/install.sh; read by scripts/uninstall.sh"
    printf 'f %s\n' "${FILES[@]}" "$MANIFEST"
    if [ "${#DIRS[@]}" -gt 0 ]; then printf 'd %s\n' "${DIRS[@]}" | awk '!seen[$0]++'; fi
  } > "$MANIFEST.egressd-new"
  mv -f "$MANIFEST.egressd-new" "$MANIFEST"

  # --- systemd ---
  if systemd_running; then
    systemctl daemon-reload
    systemctl enable --quiet egressd.service
  fi
fi

log "checking the installed config: egressd check-config"
if ! "$BIN" check-config >/dev/null; then
  "$BIN" check-config >&2 || true
  log "the config is invalid: the daemon would not start. Fix $ETC/config.toml, then run this again"
  exit 1
fi

if [ "$WITH_RUNTIME" = 1 ]; then
  log "registering the runtime shim: egressd install-runtime"
  "$BIN" install-runtime
  reload_dockerd
fi

if [ -n "$DEB" ]; then
  : # the package's maintainer scripts enabled and (re)started the service under systemd
elif systemd_running; then
  if systemctl is-active --quiet egressd.service; then
    log "restarting egressd (tables are replaced atomically: containers stay confined)"
    systemctl restart egressd.service
  elif [ "$START" = 1 ]; then
    log "starting egressd"
    systemctl start egressd.service
  fi
fi
if ! systemd_running; then
  log "systemd is not PID 1 here ($(ps -o comm= -p 1)): skipped systemctl daemon-reload, enable and start"
  log "  start the daemon some other way: $BIN run"
fi
log "egressd is installed: $($BIN --version)"
