#!/usr/bin/env bash
# Packaging and operations tests, as root (scripts/test.sh runs them after the Rust suite, so
# they never overlap the Docker end-to-end tests). One PASS or FAIL line per check; exit 1 when
# any check failed. The machine is left as it was found: everything installed is uninstalled
# and purged, /etc/docker/daemon.json is restored, the demo's containers are removed.
#
#  1. vagrant validate --ignore-provider (vagrant/Vagrantfile)
#  2. scripts/install.sh from the release binary: files, `egressd --version`, `check-config`
#     (profile override order), `systemd-analyze verify`, the unit's offline exposure score
#     (<= 3.0), the runtime shim in dockerd; run again: idempotent, an edited config is kept
#  3. the installed daemon with only the unit's capabilities (setpriv: bounding set and
#     SupplementaryGroups from the unit, no new privileges) runs scripts/demo.sh: real
#     containers on an --internal network, real packets; the allowed connection works, the
#     forbidden ones and DNS tunnelling fail, `status` and `explain` answer; every system
#     call it made is allowed by the unit's SystemCallFilter; without the group (no CAP_CHOWN)
#     it cannot give the control socket its group and says so
#  4. scripts/uninstall.sh: the confined containers keep their tables and stay confined;
#     only the documented files remain
#  5. reinstall, scripts/uninstall.sh --release --purge: the tables are gone (the forbidden
#     connection now goes through), nothing remains
#  6. the .deb (scripts/build-deb.sh): dpkg -i, the same checks, dpkg --remove (what remains),
#     dpkg --purge (nothing remains); then install.sh --deb and uninstall.sh --purge
#
# Traffic stays on this machine: the demo's --internal network, its fake API servers and fake
# DNS server.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/setup.sh

require_root
ensure_packages
ensure_debs "${EGRESSD_PACKAGING_PACKAGES[@]}"
ensure_dockerd

WORK=/tmp/egressd-pkgtest
DEMO=/tmp/egressd-demo
DAEMON_JSON=/etc/docker/daemon.json
REL_BIN=${CARGO_TARGET_DIR:-target}/release/egressd
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
FAILS=0
rm -rf "$WORK"
mkdir -p "$WORK"

pass() { printf 'PASS  %s\n' "$*"; }
fail() { printf 'FAIL  %s\n' "$*"; FAILS=$((FAILS + 1)); }
# check NAME CMD...: PASS when CMD succeeds.
check() {
  local name=$1
  shift
  if "$@" >"$WORK/check.out" 2>&1; then pass "$name"; else
    fail "$name"
    sed 's/^/      /' "$WORK/check.out" | tail -n 20
  fi
}
not() { ! "$@"; }
# exit_is N CMD...: CMD exits with status N.
exit_is() {
  local want=$1 rc=0
  shift
  "$@" || rc=$?
  echo "exit status $rc"
  [ "$rc" = "$want" ]
}
# must NAME CMD...: like check, but stops the run when CMD fails (later checks depend on it).
must() {
  local name=$1
  shift
  if "$@" >"$WORK/must.out" 2>&1; then pass "$name"; else
    fail "$name"
    sed 's/^/      /' "$WORK/must.out" | tail -n 40
    exit 1
  fi
}

# --- the machine as found, and how to get back to it -------------------------------------------
snapshot() {
  {
    find /usr/bin /usr/sbin /usr/share /usr/lib/systemd /etc /var/lib/systemd /var/lib/dpkg/info \
      -xdev 2>/dev/null |
      grep -v -e '^/etc/docker\(/\|$\)' -e '^/etc/\(passwd\|group\|shadow\|gshadow\)-$' || true
    { getent group egressd || true; } | cut -d: -f1 | sed "s/^/group /"
  } | sort
}
# leftovers BASELINE: what is there now that was not in BASELINE (one per line).
leftovers() { snapshot | comm -13 "$1" -; }
# same_as BASELINE: nothing added, nothing removed.
same_as() {
  local d
  d=$(snapshot | diff "$1" - || true)
  [ -z "$d" ] || { echo "differs from the machine as found:"; echo "$d"; return 1; }
}

snapshot > "$WORK/baseline"
if [ -e "$DAEMON_JSON" ]; then cp -p "$DAEMON_JSON" "$WORK/daemon.json.orig"; fi
if [ -e "$DAEMON_JSON.egressd-backup" ]; then cp -p "$DAEMON_JSON.egressd-backup" "$WORK/daemon.json.backup.orig"; fi

restore_daemon_json() {
  # `install-runtime --remove` leaves an emptied "runtimes": {} (dockerd's reload needs it):
  # the file is restored when that and formatting are all that differ. Anything else means
  # another test has its own entry in there now, and it stays.
  local now orig
  if [ -e "$DAEMON_JSON" ]; then
    now=$(tr -d ' \t\n' < "$DAEMON_JSON" | sed -e 's/"runtimes":{},\{0,1\}//' -e 's/,}$/}/')
    if [ -e "$WORK/daemon.json.orig" ]; then
      orig=$(tr -d ' \t\n' < "$WORK/daemon.json.orig")
      if [ "$now" = "$orig" ]; then cp -p "$WORK/daemon.json.orig" "$DAEMON_JSON"; fi
    elif [ "$now" = "{}" ]; then
      rm -f "$DAEMON_JSON"
    fi
  fi
  if [ -e "$WORK/daemon.json.backup.orig" ]; then
    cp -p "$WORK/daemon.json.backup.orig" "$DAEMON_JSON.egressd-backup"
  else
    rm -f "$DAEMON_JSON.egressd-backup"
  fi
}

cleanup() {
  set +e
  demo_daemon_stop
  scripts/demo.sh --cleanup >/dev/null 2>&1
  if dpkg-query -W -f='${Status}' egressd 2>/dev/null | grep -q 'installed\|config-files'; then
    [ -x /usr/bin/egressd ] && /usr/bin/egressd install-runtime --remove >/dev/null 2>&1 && reload_dockerd
    dpkg --purge egressd >/dev/null 2>&1
  fi
  if [ -f /usr/share/egressd/install-manifest ]; then
    scripts/uninstall.sh --purge >/dev/null 2>&1
  fi
  restore_daemon_json
}
trap cleanup EXIT

# The demo's daemon runs under strace (see below): the pid file names strace, the daemon is its
# child.
STRACE_PID=""
demo_daemon_pid() { [ -n "$STRACE_PID" ] && pgrep -P "$STRACE_PID" | head -n 1; }
demo_daemon_stop() {
  local pid
  pid=$(demo_daemon_pid || true)
  if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; fi
  if [ -n "$STRACE_PID" ]; then
    for _ in $(seq 100); do kill -0 "$STRACE_PID" 2>/dev/null || break; sleep 0.1; done
    # So that `demo.sh --cleanup` does not signal a pid that is no longer the daemon's.
    rm -f "$DEMO/egressd.pid"
  fi
  STRACE_PID=""
}

# --- build once: the release binary, the fake DNS server, the package --------------------------
log "building the release binary and the package (once)"
cargo build --release --locked --quiet --bin egressd --example fake_dns
must "build: scripts/build-deb.sh --no-build" scripts/build-deb.sh --no-build
DEB=$(ls -t "${CARGO_TARGET_DIR:-target}"/debian/egressd_"$VERSION"-*.deb | head -n 1)

# --- 1. Vagrant ------------------------------------------------------------------------------
check "vagrant: vagrant validate --ignore-provider" \
  bash -c 'cd vagrant && vagrant validate --ignore-provider'

# --- shared checks of an installed egressd -----------------------------------------------------
version_ok() { /usr/bin/egressd --version | grep -qx "egressd $VERSION"; }
check_config_ok() {
  /usr/bin/egressd check-config | tee "$WORK/check-config.out"
  grep -q 'profiles: 9 valid (from /usr/share/egressd/profiles, /etc/egressd/profiles)' "$WORK/check-config.out"
}
# An admin profile in /etc/egressd/profiles overrides the shipped one of the same name.
override_ok() {
  printf 'description = "admin override"\n[[allow]]\nhost = "api.openai.com"\n' > /etc/egressd/profiles/openai.toml
  local out
  out=$(/usr/bin/egressd check-config)
  rm -f /etc/egressd/profiles/openai.toml
  echo "$out"
  grep -q 'openai .*admin override  \[/etc/egressd/profiles/openai.toml\]' <<< "$out"
}
verify_ok() { systemd-analyze verify "$1"; }
SCORE_MAX=3.0
score_ok() {
  local out score
  out=$(systemd-analyze security --offline=true "$1" 2>&1)
  score=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' <<< "$out")
  echo "exposure $score (max $SCORE_MAX)"
  [ -n "$score" ] && awk -v s="$score" -v m="$SCORE_MAX" 'BEGIN { exit !(s <= m) }'
}
exposure() { systemd-analyze security --offline=true "$1" 2>&1 | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p'; }
installed_common() {
  local unit=$1
  check "$2: egressd --version is $VERSION" version_ok
  check "$2: egressd check-config (9 shipped profiles, both profile directories)" check_config_ok
  check "$2: a profile in /etc/egressd/profiles overrides the shipped one" override_ok
  check "$2: systemd-analyze verify $unit" verify_ok "$unit"
  check "$2: systemd-analyze security --offline=true: exposure $(exposure "$unit") <= $SCORE_MAX" score_ok "$unit"
  check "$2: group egressd exists" getent group egressd
  check "$2: man egressd finds the page" man -w egressd
  check "$2: bash completion installed" test -s /usr/share/bash-completion/completions/egressd
}
runtime_in_dockerd() {
  for _ in $(seq 50); do
    docker info --format '{{json .Runtimes}}' | grep -q '"egressd"' && return 0
    sleep 0.2
  done
  return 1
}
runtime_not_in_dockerd() {
  ! grep -q '"/usr/bin/egressd"' "$DAEMON_JSON" 2>/dev/null || return 1
  for _ in $(seq 50); do
    docker info --format '{{json .Runtimes}}' | grep -q '"egressd"' || return 0
    sleep 0.2
  done
  return 1
}
# expect_left BASELINE EXPECTED...: exactly these paths (and `group egressd`) are new.
expect_left() {
  local base=$1
  shift
  local got want
  got=$(leftovers "$base")
  want=$(printf '%s\n' "$@" | sort)
  echo "left behind:"
  echo "$got"
  [ "$got" = "$want" ]
}

# --- 2. install.sh ---------------------------------------------------------------------------
must "install.sh --binary $REL_BIN --with-runtime" scripts/install.sh --binary "$REL_BIN" --with-runtime
installed_common /etc/systemd/system/egressd.service "install.sh"
check "install.sh: the unit is the packaged one" cmp packaging/systemd/egressd.service /etc/systemd/system/egressd.service
check "install.sh: the runtime shim is registered and dockerd knows it" runtime_in_dockerd
check "install.sh: systemd not PID 1 is reported, not fatal" grep -q 'systemd is not PID 1' "$WORK/must.out"

echo '# edited by the admin' >> /etc/egressd/config.toml
cp /etc/egressd/config.toml "$WORK/config.edited"
must "install.sh again (idempotent)" scripts/install.sh --binary "$REL_BIN" --with-runtime
check "install.sh again: the edited config is kept" cmp "$WORK/config.edited" /etc/egressd/config.toml
check "install.sh again: the new default is beside it (config.toml.new) and it says so" \
  bash -c "cmp config/config.toml /etc/egressd/config.toml.new && grep -q 'config.toml.new' '$WORK/must.out'"

echo 'bogus_key = 1' >> /etc/egressd/config.toml
check "install.sh with an invalid edited config: stops before the restart, with the error" \
  bash -c "! scripts/install.sh --binary '$REL_BIN' > '$WORK/bad.out' 2>&1 && cat '$WORK/bad.out' && grep -q 'bogus_key' '$WORK/bad.out' && grep -q 'the config is invalid' '$WORK/bad.out'"
cp "$WORK/config.edited" /etc/egressd/config.toml

# --- 3. the installed daemon with only the unit's capabilities ---------------------------------
UNIT=/etc/systemd/system/egressd.service
unit_value() { sed -n "s/^$1=//p" "$UNIT" | tail -n 1; }
CAPS=$(unit_value CapabilityBoundingSet)
BOUNDING="-all$(for c in $CAPS; do c=${c#CAP_}; printf ',+%s' "${c,,}"; done)"
GROUP_ID=$(getent group "$(unit_value SupplementaryGroups)" | cut -d: -f3)
SETPRIV_CAPS=(setpriv --bounding-set "$BOUNDING" --inh-caps -all --ambient-caps -all --no-new-privs)
log "the unit's capabilities: $CAPS -> setpriv --bounding-set $BOUNDING --groups $GROUP_ID"

# The smoke run models the unit's privileges with setpriv: the bounding set, the
# supplementary group, no new privileges. A directive that changes them further would not be
# tested by it (SecureBits=noroot, for one, would leave the daemon without any capability).
modelled() {
  if grep -E '^(SecureBits|AmbientCapabilities=.|User=|Group=|DynamicUser=|PrivateUsers=|CapabilityBoundingSet=~)' "$UNIT"; then
    return 1
  fi
  [ "$(grep -c '^CapabilityBoundingSet=' "$UNIT")" = 1 ]
}
check "caps: the unit changes privileges only in ways the smoke run models" modelled

# Without the group, and without CAP_CHOWN, root cannot give the socket to the egressd group.
cat > "$WORK/nogroup.toml" <<EOF
[docker]
socket = "$WORK/no-docker.sock"
[control]
socket = "$WORK/ctl/egressd.sock"
group = "egressd"
EOF
nogroup_fails() {
  local rc=0
  timeout 10 "${SETPRIV_CAPS[@]}" --clear-groups /usr/bin/egressd run --config "$WORK/nogroup.toml" \
    > "$WORK/nogroup.out" 2>&1 || rc=$?
  cat "$WORK/nogroup.out"
  [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] &&
    grep -q "control socket $WORK/ctl/egressd.sock: Operation not permitted" "$WORK/nogroup.out"
}
check "caps: without SupplementaryGroups (no CAP_CHOWN) the daemon refuses to start, naming the socket" nogroup_fails

log "scripts/demo.sh with the installed binary under setpriv and strace"
set +e
EGRESSD_DEMO_KEEP=1 EGRESSD_BIN=/usr/bin/egressd \
  EGRESSD_DAEMON_WRAP="${SETPRIV_CAPS[*]} --groups $GROUP_ID strace -f -qq -c -o $WORK/syscalls.txt" \
  scripts/demo.sh > "$WORK/demo.out" 2>&1
demo_rc=$?
set -e
STRACE_PID=$(cat "$DEMO/egressd.pid" 2>/dev/null || true)
sed 's/^/      /' "$WORK/demo.out"
check "smoke: scripts/demo.sh ran" test "$demo_rc" = 0
attempt_is() { grep -Eq "^  $1 +-> $2 .* $3\$" "$WORK/demo.out"; }
check "smoke: agent-openai -> api.openai.com:443 ALLOWED" attempt_is agent-openai api.openai.com:443 ALLOWED
check "smoke: agent-openai -> api.openai.com:8443 DENIED" attempt_is agent-openai api.openai.com:8443 DENIED
check "smoke: agent-openai -> attacker.example:443 DENIED (dns REFUSED, then by address)" attempt_is agent-openai attacker.example:443 DENIED
check "smoke: agent-none -> api.openai.com:443 DENIED" attempt_is agent-none api.openai.com:443 DENIED
check "smoke: agent-none -> attacker.example:443 DENIED" attempt_is agent-none attacker.example:443 DENIED
check "smoke: DNS tunnelling: every query refused, none reached the upstream" \
  grep -Eq 'names refused inside the container: ([1-9][0-9]*) of \1; queries that reached the upstream DNS: 0$' "$WORK/demo.out"
check "smoke: /metrics answers (egressd_containers)" grep -q '^  egressd_containers' "$WORK/demo.out"
check "smoke: egressd status shows agent-openai ENFORCED" grep -Eq '^agent-openai \([0-9a-f]+\) +ENFORCED' "$WORK/demo.out"

DPID=$(demo_daemon_pid || true)
caps_are() {
  [ -n "$DPID" ] || { echo "no daemon process under strace pid $STRACE_PID"; return 1; }
  grep -E '^(CapBnd|CapEff|CapPrm|CapAmb|NoNewPrivs|Groups)' "/proc/$DPID/status"
  local want
  want=$(printf '%016x' $(( (1 << 12) | (1 << 21) | (1 << 19) )))
  grep -q "^CapBnd:	$want" "/proc/$DPID/status" &&
    grep -q "^CapEff:	$want" "/proc/$DPID/status" &&
    grep -q "^NoNewPrivs:	1" "/proc/$DPID/status" &&
    grep -Eq "^Groups:.*\b$GROUP_ID\b" "/proc/$DPID/status"
}
check "caps: the daemon ran with exactly CAP_NET_ADMIN CAP_SYS_ADMIN CAP_SYS_PTRACE, no new privileges, group egressd" caps_are
SOCK=$DEMO/egressd.sock
check "caps: egressd status answers" /usr/bin/egressd status --socket "$SOCK"
check "caps: a member of group egressd may use the socket" \
  setpriv --reuid nobody --regid nogroup --groups "$GROUP_ID" /usr/bin/egressd status --socket "$SOCK"
check "caps: a non-member may not" \
  not setpriv --reuid nobody --regid nogroup --clear-groups /usr/bin/egressd status --socket "$SOCK"
check "caps: egressd explain: api.openai.com:443 allowed (exit 0)" \
  exit_is 0 /usr/bin/egressd explain agent-openai api.openai.com:443 --socket "$SOCK"
check "caps: egressd explain: attacker.example:443 denied (exit 1)" \
  exit_is 1 /usr/bin/egressd explain agent-openai attacker.example:443 --socket "$SOCK"

# Every system call the daemon made must be allowed by the unit's SystemCallFilter (systemd
# cannot be used here to apply it: it is not PID 1).
demo_daemon_stop
expand_syscalls() { # GROUP-OR-NAME...: the system calls, groups expanded
  local x
  for x in "$@"; do
    if [[ "$x" == @* ]]; then
      systemd-analyze syscall-filter "$x" | awk 'NR > 1 && $1 !~ /^#/ && NF {print $1}' |
        while read -r y; do expand_syscalls "$y"; done
    else
      echo "$x"
    fi
  done
}
syscalls_allowed() {
  local allow deny used bad
  allow=$(grep '^SystemCallFilter=[^~]' "$UNIT" | sed 's/^SystemCallFilter=//' | tr ' ' '\n' | grep . | while read -r g; do expand_syscalls "$g"; done | sort -u)
  deny=$(grep '^SystemCallFilter=~' "$UNIT" | sed 's/^SystemCallFilter=~//' | tr ' ' '\n' | grep . | while read -r g; do expand_syscalls "$g"; done | sort -u)
  used=$(awk '$NF ~ /^[a-z_0-9]+$/ && $NF != "syscall" && $NF != "total" {print $NF}' "$WORK/syscalls.txt" | sort -u)
  echo "system calls made: $(wc -w <<< "$used")"
  [ -n "$used" ] || { echo "no strace summary"; cat "$WORK/syscalls.txt"; return 1; }
  bad=$(comm -23 <(echo "$used") <(comm -23 <(echo "$allow") <(echo "$deny")))
  [ -z "$bad" ] || { echo "not allowed by the unit: $bad"; return 1; }
}
check "seccomp: every system call of the smoke run is allowed by the unit's SystemCallFilter" syscalls_allowed

# --- 4. uninstall.sh: the containers stay confined ---------------------------------------------
pid_of() { docker inspect -f '{{.State.Pid}}' "$1"; }
has_table() { nsenter -t "$(pid_of "$1")" -n nft list table inet egressd >/dev/null 2>&1; }
# reaches CONTAINER: an HTTP answer from the forbidden server (attacker.example's fake, on the
# demo's --internal network).
reaches_forbidden() {
  docker exec "$1" sh -c "printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 2 10.199.0.66 443" 2>/dev/null | grep -q hello
}
must "uninstall.sh (default: tables stay)" scripts/uninstall.sh
says_kept() {
  local n
  n=$(sed -n 's/.*\] \([0-9]*\) network namespace(s) keep their inet egressd table.*/\1/p' "$WORK/must.out")
  cat "$WORK/must.out"
  [ -n "$n" ] && [ "$n" -ge 2 ]
}
check "uninstall.sh: says that the demo's 2 namespaces keep their table" says_kept
check "uninstall.sh: agent-openai keeps its table" has_table agent-openai
check "uninstall.sh: agent-none keeps its table" has_table agent-none
check "uninstall.sh: agent-openai still cannot reach the forbidden server" not reaches_forbidden agent-openai
check "uninstall.sh: the runtime shim is gone from daemon.json and dockerd" runtime_not_in_dockerd
check "uninstall.sh: only /etc/egressd and the group are left" expect_left "$WORK/baseline" \
  /etc/egressd /etc/egressd/config.toml /etc/egressd/config.toml.new /etc/egressd/profiles "group egressd"

# --- 5. reinstall, then uninstall --release --purge ---------------------------------------------
must "install.sh over the kept config" scripts/install.sh --binary "$REL_BIN"
check "install.sh over the kept config: still the edited one" cmp "$WORK/config.edited" /etc/egressd/config.toml
# `release --all` opens every namespace on the host: wait until the demo's are the only ones with
# a table (another test run on this machine may have its own for a while).
only_demo_tables() {
  local ours n
  ours=" $(stat -L -c %i "/proc/$(pid_of agent-openai)/ns/net") $(stat -L -c %i "/proc/$(pid_of agent-none)/ns/net") "
  for _ in $(seq 300); do
    n=0
    while read -r path; do
      [[ "$ours" == *" $(stat -L -c %i "$path" 2>/dev/null) "* ]] || n=$((n + 1))
    done < <(/usr/bin/egressd release --all --dry-run | sed -n 's/^would release netns \([^ ]*\) .*/\1/p')
    [ "$n" = 0 ] && return 0
    sleep 1
  done
  echo "other namespaces with an egressd table are still there"
  return 1
}
must "release: only the demo's namespaces have tables" only_demo_tables
must "uninstall.sh --release --purge" scripts/uninstall.sh --release --purge
check "uninstall.sh --release: agent-openai's table is gone" not has_table agent-openai
check "uninstall.sh --release: agent-none's table is gone" not has_table agent-none
check "uninstall.sh --release: agent-openai now reaches the server it was denied" reaches_forbidden agent-openai
check "uninstall.sh --purge: nothing is left" same_as "$WORK/baseline"
scripts/demo.sh --cleanup >/dev/null 2>&1 || true

# --- 6. the Debian package -------------------------------------------------------------------
log "the package: $DEB"
must "dpkg -i $(basename "$DEB")" dpkg -i "$DEB"
installed_common /lib/systemd/system/egressd.service "deb"
check "deb: /etc/egressd/config.toml is a conffile" \
  bash -c "dpkg-query -W -f='\${Conffiles}' egressd | grep -q '/etc/egressd/config.toml '"
check "deb: /etc/egressd/profiles exists" test -d /etc/egressd/profiles
check "deb: the unit is the packaged one" cmp packaging/systemd/egressd.service /lib/systemd/system/egressd.service
check "deb: depends on the runtime libraries and Docker" \
  bash -c "dpkg-query -W -f='\${Depends}' egressd | tee /dev/stderr | grep -q 'libnftnl11' && dpkg-query -W -f='\${Depends}' egressd | grep -q 'libmnl0' && dpkg-query -W -f='\${Depends}' egressd | grep -q 'docker.io | docker-ce'"
cp /etc/egressd/config.toml "$WORK/config.deb"
echo 'bogus_key = 1' >> /etc/egressd/config.toml
check "deb: an upgrade over an invalid edited config stops in postinst, before the restart" \
  bash -c "! dpkg -i '$DEB' > '$WORK/bad.out' 2>&1 && cat '$WORK/bad.out' && grep -q 'bogus_key' '$WORK/bad.out' && grep -q 'not valid for this version' '$WORK/bad.out'"
cp "$WORK/config.deb" /etc/egressd/config.toml
check "deb: dpkg --configure egressd finishes it once the config is fixed" dpkg --configure egressd
must "dpkg --remove egressd" dpkg --remove egressd
# dpkg keeps the conffile and the postrm (for the purge); deb-systemd-helper keeps the unit
# masked and remembers it was enabled, until the purge.
check "dpkg --remove: only the documented files are left" \
  expect_left "$WORK/baseline" /etc/egressd /etc/egressd/config.toml /etc/egressd/profiles "group egressd" \
  /etc/systemd/system/egressd.service /etc/systemd/system/multi-user.target.wants/egressd.service \
  /var/lib/dpkg/info/egressd.list /var/lib/dpkg/info/egressd.postrm \
  /var/lib/systemd/deb-systemd-helper-enabled/egressd.service.dsh-also \
  /var/lib/systemd/deb-systemd-helper-enabled/multi-user.target.wants/egressd.service \
  /var/lib/systemd/deb-systemd-helper-masked /var/lib/systemd/deb-systemd-helper-masked/egressd.service
must "dpkg --purge egressd" dpkg --purge egressd
check "dpkg --purge: nothing is left" same_as "$WORK/baseline"

must "install.sh --deb $(basename "$DEB") --with-runtime" scripts/install.sh --deb "$DEB" --with-runtime
check "install.sh --deb: egressd --version is $VERSION" version_ok
check "install.sh --deb: the runtime shim is registered and dockerd knows it" runtime_in_dockerd
must "uninstall.sh --purge (package)" scripts/uninstall.sh --purge
check "uninstall.sh --purge (package): the runtime shim is gone" runtime_not_in_dockerd
check "uninstall.sh --purge (package): nothing is left" same_as "$WORK/baseline"

restore_daemon_json
echo
if [ "$FAILS" -gt 0 ]; then
  echo "test-packaging: $FAILS check(s) FAILED"
  exit 1
fi
echo "test-packaging: all checks passed"
