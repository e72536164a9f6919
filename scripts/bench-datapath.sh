#!/usr/bin/env bash
# Datapath cost of egressd's table, against a Docker-like baseline and naive iptables rules.
#
#   sudo scripts/bench-datapath.sh [ROUNDS]        (default 3 rounds)
#
# Two throwaway network namespaces joined by a veth pair (10.211.0.0/24, fd00:211::/64; no
# packet leaves them). iperf3 -s and `connrate serve` run in the server netns; the filters under
# test go on the CLIENT netns's output path:
#
#   baseline     Docker-like nat table (dnat of 127.0.0.11:53), no filter
#   egressd      + egressd's `inet egressd` table, ELEMENTS resolved elements in dom4, the
#                  servers allowed (tcp+udp 5201, tcp 5202); text from `examples/ruleset_text`
#   iptables     + IPT_RULES linear `-A OUTPUT -d ADDR -p tcp --dport 443 -j ACCEPT` rules,
#                  then the accepts of the servers and a final REJECT (no conntrack shortcut)
#   iptables-ct  the same, with `-m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT` first
#
# Each round runs every case in turn (cases alternate; nothing runs in parallel):
#   UDP  iperf3 -u -l 64 -b 0 -t T: packets/s the receiver got (and the sender sent)
#   TCP  iperf3 -t T: Gbit/s received
#   conn `connrate client` for CONN_SECONDS: sequential new TCP connections per second
# and prints the medians. Environment: ELEMENTS (10000), IPT_RULES (1000), T (5),
# CONN_SECONDS (3), IPTABLES (iptables-nft; or iptables-legacy), CARGO_TARGET_DIR.
set -euo pipefail

ROUNDS=${1:-3}
ELEMENTS=${ELEMENTS:-10000}
IPT_RULES=${IPT_RULES:-1000}
T=${T:-5}
CONN_SECONDS=${CONN_SECONDS:-3}
IPTABLES=${IPTABLES:-iptables-nft}
read -r -a CASES <<<"${CASES:-baseline egressd iptables iptables-ct}"

REPO=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
CLIENT=egb-dp-c-$$
SERVER=egb-dp-s-$$
SRV4=10.211.0.1
CLI4=10.211.0.2
WORK=$(mktemp -d /tmp/egressd-bench.XXXXXX)
SERVER_PIDS=()

log() { printf '[bench] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

cleanup() {
  set +e
  for pid in "${SERVER_PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  # Anything else still running inside the two namespaces was started by this script.
  for ns in "$CLIENT" "$SERVER"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null; done
  done
  sleep 0.2
  ip netns del "$CLIENT" 2>/dev/null
  ip netns del "$SERVER" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ "$(id -u)" -eq 0 ] || die "run as root: it creates network namespaces and firewall tables"

# --- dependencies (Debian 12) ---------------------------------------------------------------
need=()
for pair in nft:nftables ip:iproute2 iperf3:iperf3 "$IPTABLES:iptables" jq:jq \
            pkg-config:pkg-config cc:build-essential; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
for p in libnftnl-dev libmnl-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if [ "${#need[@]}" -gt 0 ]; then
  log "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  [ -x "$HOME/.cargo/bin/cargo" ] || die "cargo not found: install a Rust toolchain (rustup) first"
  export PATH="$HOME/.cargo/bin:$PATH"
fi

log "building examples (release)"
(cd "$REPO" && cargo build --quiet --release --example ruleset_text --example connrate)
CONNRATE=$TARGET/release/examples/connrate
[ -x "$CONNRATE" ] || die "$CONNRATE not built"

# --- topology --------------------------------------------------------------------------------
log "namespaces $CLIENT (client) and $SERVER (server)"
ip netns add "$CLIENT"
ip netns add "$SERVER"
ip link add egbc$$ netns "$CLIENT" type veth peer name egbs$$ netns "$SERVER"
for ns in "$CLIENT" "$SERVER"; do ip -n "$ns" link set lo up; done
ip -n "$CLIENT" addr add $CLI4/24 dev egbc$$
ip -n "$CLIENT" addr add fd00:211::2/64 dev egbc$$ nodad
ip -n "$SERVER" addr add $SRV4/24 dev egbs$$
ip -n "$SERVER" addr add fd00:211::1/64 dev egbs$$ nodad
ip -n "$CLIENT" link set egbc$$ up
ip -n "$SERVER" link set egbs$$ up
ip netns exec "$CLIENT" sysctl -qw net.ipv4.ip_local_port_range="1024 65000"

cin() { ip netns exec "$CLIENT" "$@"; }

# Servers: iperf3 on CPU 1, clients on CPU 0 (with 2 CPUs, one each).
ip netns exec "$SERVER" iperf3 -s -B $SRV4 -p 5201 -A 1 >"$WORK/iperf3-server.log" 2>&1 &
SERVER_PIDS+=($!)
ip netns exec "$SERVER" "$CONNRATE" serve $SRV4:5202 >"$WORK/connrate-server.log" 2>&1 &
SERVER_PIDS+=($!)
sleep 0.5

# --- the tables --------------------------------------------------------------------------------
cat >"$WORK/nat.nft" <<'EOF'
table ip nat {
	chain output {
		type nat hook output priority -100; policy accept;
		ip daddr 127.0.0.11 udp dport 53 dnat to 127.0.0.11:5353
		ip daddr 127.0.0.11 tcp dport 53 dnat to 127.0.0.11:5354
	}
}
EOF

log "generating egressd's table with $ELEMENTS elements"
(cd "$REPO" && cargo run --quiet --release --example ruleset_text -- \
  "$ELEMENTS" $SRV4:5201 $SRV4:5202) >"$WORK/egressd.nft"

ipt_rules() { # $1 = 1 for the conntrack shortcut first
  echo '*filter'
  echo ':INPUT ACCEPT [0:0]'
  echo ':FORWARD ACCEPT [0:0]'
  echo ':OUTPUT ACCEPT [0:0]'
  echo '-A OUTPUT -o lo -j ACCEPT'
  [ "$1" = 1 ] && echo '-A OUTPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT'
  local i
  for ((i = 0; i < IPT_RULES; i++)); do
    echo "-A OUTPUT -d 10.100.$((i / 256)).$((i % 256))/32 -p tcp -m tcp --dport 443 -j ACCEPT"
  done
  echo "-A OUTPUT -d $SRV4/32 -p tcp -m tcp --dport 5201 -j ACCEPT"
  echo "-A OUTPUT -d $SRV4/32 -p udp -m udp --dport 5201 -j ACCEPT"
  echo "-A OUTPUT -d $SRV4/32 -p tcp -m tcp --dport 5202 -j ACCEPT"
  echo '-A OUTPUT -j REJECT'
  echo 'COMMIT'
}
ipt_rules 0 >"$WORK/iptables.rules"
ipt_rules 1 >"$WORK/iptables-ct.rules"

reset_client() {
  cin nft flush ruleset
  if [ "$IPTABLES" = iptables-legacy ]; then
    cin iptables-legacy -F
    cin iptables-legacy -X
  fi
  cin nft -f "$WORK/nat.nft"
}

setup_case() {
  reset_client
  case $1 in
    baseline) ;;
    egressd) cin nft -f "$WORK/egressd.nft" ;;
    iptables) cin "$IPTABLES-restore" <"$WORK/iptables.rules" ;;
    iptables-ct) cin "$IPTABLES-restore" <"$WORK/iptables-ct.rules" ;;
  esac
}

# Proves the filter of the case is in the path: a TCP connection to a port nobody allowed
# must be counted by that filter's reject. Prints the number of packets it rejected.
denied_count() {
  case $1 in
    egressd) cin nft list counter inet egressd denied | awk '/packets/ {print $2}' ;;
    iptables | iptables-ct)
      cin "$IPTABLES" -L OUTPUT -v -n -x | awk '$3 == "REJECT" {print $1}' ;;
  esac
}
check_filter() {
  [ "$1" = baseline ] && return 0
  local before after
  before=$(denied_count "$1")
  cin timeout 3 bash -c "exec 3<>/dev/tcp/$SRV4/5299" 2>/dev/null || true
  after=$(denied_count "$1")
  [ "${after:-0}" -gt "${before:-0}" ] || die "$1: the probe to an unallowed port was not rejected by the filter"
}

# --- runs ----------------------------------------------------------------------------------------
iperf_client() { # args...; retries once if the server was still busy with the previous run
  local out
  for _ in 1 2; do
    if out=$(cin iperf3 -c $SRV4 -p 5201 -A 0 -t "$T" --json "$@" 2>&1) \
      && [ "$(jq -r '.error // empty' <<<"$out")" = "" ]; then
      printf '%s' "$out"
      return 0
    fi
    sleep 1
  done
  die "iperf3 $* failed: $(jq -r '.error // empty' <<<"$out" 2>/dev/null || printf '%s' "$out")"
}

declare -A RX TX GBPS CPS
for c in "${CASES[@]}"; do RX[$c]=""; TX[$c]=""; GBPS[$c]=""; CPS[$c]=""; done

log "$(date -u '+%F %T UTC'), kernel $(uname -r), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
log "$ROUNDS rounds x ${#CASES[@]} cases x (UDP ${T}s, TCP ${T}s, connections ${CONN_SECONDS}s)"
for ((r = 1; r <= ROUNDS; r++)); do
  for c in "${CASES[@]}"; do
    setup_case "$c"
    check_filter "$c"
    sleep 0.3
    udp=$(iperf_client -u -l 64 -b 0)
    rx=$(jq -r '.end.sum_received | (.packets - .lost_packets) / .seconds | floor' <<<"$udp")
    tx=$(jq -r '.end.sum_sent | .packets / .seconds | floor' <<<"$udp")
    sleep 0.3
    tcp=$(iperf_client)
    gbps=$(jq -r '.end.sum_received.bits_per_second / 1e9 * 1000 | floor / 1000' <<<"$tcp")
    sleep 0.3
    conn=$(cin taskset -c 0 "$CONNRATE" client $SRV4:5202 "$CONN_SECONDS")
    [ "$(jq -r .failures <<<"$conn")" = 0 ] || die "$c: connections failed: $conn"
    cps=$(jq -r '.per_second | floor' <<<"$conn")
    check_filter "$c" # still in place after the runs
    RX[$c]+="$rx "; TX[$c]+="$tx "; GBPS[$c]+="$gbps "; CPS[$c]+="$cps "
    log "round $r $(printf '%-12s' "$c") udp rx $rx pps (tx $tx)  tcp $gbps Gbit/s  $cps conn/s"
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{v[NR]=$1} END {if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f%%", 100 * a / b}'; }

echo
echo "egressd datapath benchmark: $(date -u '+%F %T UTC'), kernel $(uname -r), $(nproc) CPUs"
echo "egressd table: $ELEMENTS elements + servers; iptables: $IPT_RULES rules ($("$IPTABLES" --version))"
echo "medians of $ROUNDS rounds; UDP = 64-byte payload, iperf3 -b 0, packets the receiver got"
printf '%-12s %11s %11s %8s %11s %8s %9s %8s\n' case "UDP rx pps" "UDP tx pps" "vs base" \
  "TCP Gbit/s" "vs base" "conn/s" "vs base"
b_rx=$(median <<<"${RX[baseline]}")
b_g=$(median <<<"${GBPS[baseline]}")
b_c=$(median <<<"${CPS[baseline]}")
for c in "${CASES[@]}"; do
  rx=$(median <<<"${RX[$c]}")
  tx=$(median <<<"${TX[$c]}")
  g=$(median <<<"${GBPS[$c]}")
  cps=$(median <<<"${CPS[$c]}")
  printf '%-12s %11.0f %11.0f %8s %11.3f %8s %9.0f %8s\n' "$c" "$rx" "$tx" "$(pct "$rx" "$b_rx")" \
    "$g" "$(pct "$g" "$b_g")" "$cps" "$(pct "$cps" "$b_c")"
done
echo
echo "samples (round by round):"
for c in "${CASES[@]}"; do
  echo "  $c: rx pps [${RX[$c]% }] tx pps [${TX[$c]% }] Gbit/s [${GBPS[$c]% }] conn/s [${CPS[$c]% }]"
done
e_rx=$(median <<<"${RX[egressd]}")
echo
awk -v e="$e_rx" -v b="$b_rx" 'BEGIN {
  d = 100 * (b - e) / b
  printf "goal: egressd within 5%% of baseline pps: %.1f%% %s -> %s\n", (d < 0 ? -d : d),
    (d < 0 ? "above" : "below"), (d <= 5 ? "met" : "NOT met")
}'
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine skews every figure)"
