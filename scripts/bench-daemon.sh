#!/usr/bin/env bash
# Daemon benchmarks on a real Docker host (root, Debian 12). Everything stays on this machine:
# an --internal Docker network, a sink container on it, and a fake DNS server (fake_dns) on
# the network's gateway address. Records go to stdout; docs/benchmarks.md keeps the figures.
#
#   sudo scripts/bench-daemon.sh
#
# 1. start -> table: 50 labelled containers started at once (parallel `docker run -d`); for each,
#    the daemon's own measurement from Docker's start event (`timeNano`) to the table being in
#    place (`event_to_table_us` in `egressd status --json`). p50 / p99 / max.
# 2. leak window: 20 starts of a container whose entrypoint, from its first instruction, loops
#    connecting to a forbidden target (the sink, an httpd on the internal network). Counts the
#    connections that got an answer before the table was in place. Event-driven enforcement
#    has this window by construction; the OCI runtime shim (issue 6) closes it.
# 3. RSS: the daemon's VmRSS with no containers (baseline), then with 100 managed containers.
# 4. DNS: 100 containers sharing 5 domains whose fake answers have TTL 3 s (min_ttl = 1);
#    the fake server's query log is cut into refresh rounds (bursts separated by > 1 s) and the
#    queries of each round counted. One query per domain and record type (A, AAAA) is 10 a
#    round: 5 domains.
# 1-4 run in resolve mode (the mode whose refreshes 4 measures); then
# 5. RSS again after `egressd reload` into proxy mode: 100 containers, each with its proxy.
# 6. `docker run -d` -> running, median and p95 of 20 starts, with the default runc and with
#    the runtime shim (`--runtime egressd-bench`, registered in daemon.json for the run), and
#    the leak count of test 2 through the shim.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/setup.sh

NET=egressd-bench
SUBNET=10.198.0
WORK=/tmp/egressd-bench-daemon
IMAGE=egressd-bench-busybox
BURST=${BURST:-50}
STARTS=${STARTS:-20}
MANY=${MANY:-100}

cleanup() {
  set +e
  if [ -n "${BIN:-}" ] && [ -x "$BIN" ] && grep -q egressd-bench /etc/docker/daemon.json 2>/dev/null; then
    "$BIN" install-runtime --name egressd-bench --remove >/dev/null 2>&1 && kill -HUP "$(cat /var/run/docker.pid)" 2>/dev/null
  fi
  [ -f "$WORK/egressd.pid" ] && kill "$(cat "$WORK/egressd.pid")" 2>/dev/null
  [ -f "$WORK/dns.pid" ] && kill "$(cat "$WORK/dns.pid")" 2>/dev/null
  ids=$(docker ps -aq --filter label=egressd-bench=1)
  [ -n "$ids" ] && docker rm -f $ids >/dev/null 2>&1
  docker network rm "$NET" >/dev/null 2>&1
  true
}

require_root
ensure_packages
command -v jq >/dev/null || { apt-get install -y -qq jq >/dev/null; }
ensure_dockerd
cleanup
trap cleanup EXIT
rm -rf "$WORK" && mkdir -p "$WORK"

log "building egressd and fake_dns (release)"
cargo build --release --quiet --bin egressd --example fake_dns
BIN=$PWD/target/release/egressd
cp /bin/busybox "$WORK/busybox"
printf 'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\nCMD ["sh"]\n' > "$WORK/Dockerfile"
docker build -q -t "$IMAGE" "$WORK" >/dev/null
docker network create --internal --subnet "$SUBNET.0/24" "$NET" >/dev/null
docker run -d --label egressd-bench=1 --name egressd-bench-sink --network "$NET" --ip "$SUBNET.66" \
  "$IMAGE" sh -c 'mkdir /www && echo hello > /www/index.html && httpd -f -p 9000 -h /www' >/dev/null

{
  for d in 1 2 3 4 5; do echo "d$d.bench.test A $SUBNET.1$d 3"; done
  echo "bench.test SOA 3 3"
} > "$WORK/records"
target/release/examples/fake_dns --listen "$SUBNET.1:53" --records "$WORK/records" \
  --log "$WORK/dns.log" > "$WORK/dns.out" &
echo $! > "$WORK/dns.pid"
for _ in $(seq 50); do grep -q ready "$WORK/dns.out" 2>/dev/null && break; sleep 0.1; done

cat > "$WORK/config.toml" <<EOF
profile_dirs = ["$PWD/profiles"]
[dns]
mode = "resolve"
upstreams = ["$SUBNET.1:53"]
min_ttl = 1
grace = 5
[control]
socket = "$WORK/egressd.sock"
EOF
"$BIN" run --config "$WORK/config.toml" > "$WORK/egressd.log" 2>&1 &
PID=$!
echo $PID > "$WORK/egressd.pid"
for _ in $(seq 100); do "$BIN" status --socket "$WORK/egressd.sock" >/dev/null 2>&1 && break; sleep 0.1; done
status_json() { "$BIN" status --json --socket "$WORK/egressd.sock"; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$PID/status"; }
# wait_enforced N: until N containers are enforced (60 s at most).
wait_enforced() {
  local n=0
  for _ in $(seq 600); do
    n=$(status_json | jq '[.containers[] | select(.state == "enforced")] | length')
    [ "$n" -ge "$1" ] && return 0
    sleep 0.1
  done
  log "only $n of $1 containers enforced"; exit 1
}
sleep 1
RSS0=$(rss_kb)

echo "egressd daemon benchmark: $(date -u '+%F %T UTC'), kernel $(uname -r), $(nproc) CPUs, Docker $(docker version -f '{{.Server.Version}}')"
echo

# --- 1. start -> table ---------------------------------------------------------------------------
ALLOW=egressd.allow=d1.bench.test:443,d2.bench.test:443,d3.bench.test:443,d4.bench.test:443,d5.bench.test:443
# (`wait` on the docker pids only: the daemon and the fake DNS are children too.)
pids=()
for i in $(seq "$BURST"); do
  docker run -d --label egressd-bench=1 --label egressd.enable=true --label "$ALLOW" \
    --network "$NET" --dns "$SUBNET.1" --name "egb-burst-$i" "$IMAGE" sleep 3600 >/dev/null &
  pids+=($!)
done
wait "${pids[@]}"
wait_enforced "$BURST"
status_json | jq '[.containers[] | select(.event_to_table_us != null) | .event_to_table_us / 1000] | sort' > "$WORK/lat.json"
echo "1. start event -> table in place, burst of $BURST containers started at once (ms):"
jq -r '"   n=\(length)  p50 \(.[(length*0.50|floor)] * 100 | round / 100)  p90 \(.[((length*0.90)|ceil) - 1] * 100 | round / 100)  p99 \(.[((length*0.99)|ceil) - 1] * 100 | round / 100)  max \(.[-1] * 100 | round / 100)  min \(.[0] * 100 | round / 100)  over 10 ms: \(map(select(. > 10)) | length)"' "$WORK/lat.json"
# A single start on an idle daemon, for reference (20 sequential starts).
for i in $(seq 20); do
  docker run -d --label egressd-bench=1 --label egressd.enable=true --label "$ALLOW" \
    --network "$NET" --dns "$SUBNET.1" --name "egb-seq-$i" "$IMAGE" sleep 3600 >/dev/null
  sleep 0.2
done
wait_enforced $((BURST + 20))
status_json | jq '[.containers[] | select(.name | startswith("egb-seq-")) | .event_to_table_us / 1000] | sort' > "$WORK/lat-seq.json"
jq -r '"   one at a time (20 sequential starts): p50 \(.[10] * 100 | round / 100)  max \(.[-1] * 100 | round / 100)"' "$WORK/lat-seq.json"

# --- 2. leak window --------------------------------------------------------------------------------
# The entrypoint's first command is the probe loop: 100 attempts, each an HTTP GET to the sink
# (not allowed), printing LEAK when the sink answered.
probe='i=0; while [ $i -lt 100 ]; do printf "GET / HTTP/1.0\r\n\r\n" | nc -w 1 '"$SUBNET"'.66 9000 2>/dev/null | grep -q hello && echo LEAK; i=$((i+1)); done; echo DONE; sleep 3600'
leaks=0; leaky_starts=0
for i in $(seq "$STARTS"); do
  docker run -d --label egressd-bench=1 --label egressd.enable=true --label "$ALLOW" \
    --network "$NET" --dns "$SUBNET.1" --name "egb-leak-$i" "$IMAGE" sh -c "$probe" >/dev/null
  for _ in $(seq 100); do docker logs "egb-leak-$i" 2>/dev/null | grep -q DONE && break; sleep 0.1; done
  n=$(docker logs "egb-leak-$i" 2>/dev/null | grep -c LEAK || true)
  leaks=$((leaks + n)); [ "$n" -gt 0 ] && leaky_starts=$((leaky_starts + 1))
done
echo
echo "2. leak window: $leaks forbidden connections succeeded over $STARTS starts ($leaky_starts of $STARTS starts leaked)"

# --- 3. RSS with MANY containers -----------------------------------------------------------------
have=$(status_json | jq '.containers | length')
pids=()
for i in $(seq $((have + 1)) "$MANY"); do
  docker run -d --label egressd-bench=1 --label egressd.enable=true --label "$ALLOW" \
    --network "$NET" --dns "$SUBNET.1" --name "egb-many-$i" "$IMAGE" sleep 3600 >/dev/null &
  pids+=($!)
  if [ "${#pids[@]}" -ge 25 ]; then wait "${pids[@]}"; pids=(); fi
done
[ "${#pids[@]}" -eq 0 ] || wait "${pids[@]}"
wait_enforced "$MANY"
sleep 1
RSS=$(rss_kb)
echo
echo "3. daemon RSS: $((RSS0 / 1024)).$(((RSS0 % 1024) * 10 / 1024)) MiB with no containers, $((RSS / 1024)).$(((RSS % 1024) * 10 / 1024)) MiB with $(status_json | jq '.containers | length') managed containers (ratio $(awk -v a="$RSS" -v b="$RSS0" 'BEGIN {printf "%.2f", a / b}'))"

# --- 4. upstream queries per refresh ---------------------------------------------------------------
: > "$WORK/dns.log"
sleep 12
echo
echo "4. upstream DNS queries per refresh round, $(status_json | jq '.containers | length') containers sharing 5 domains (TTL 3 s):"
awk 'NR > 1 && $1 - last > 1000 { print n, names; n = 0; delete seen; names = "" }
     { n++; if (!seen[$3]++) names = names " " $3; last = $1 }
     END { print n, names }' "$WORK/dns.log" | sed 's/^/   queries /'
rounds=$(awk 'NR > 1 && $1 - last > 1000 { r++ } { last = $1 } END { print r + 1 }' "$WORK/dns.log")
total=$(wc -l < "$WORK/dns.log")
echo "   $total queries in $rounds rounds: $(awk -v t="$total" -v r="$rounds" 'BEGIN {printf "%.1f", t / r}') per round (5 domains x A+AAAA = 10)"

# --- 5. RSS in proxy mode --------------------------------------------------------------------------
sed -i 's/^mode = "resolve"/mode = "proxy"\nrebind_allow = ["'"$SUBNET"'.0\/24"]/' "$WORK/config.toml"
"$BIN" reload --socket "$WORK/egressd.sock" >/dev/null
for _ in $(seq 100); do
  n=$(status_json | jq '[.containers[] | select(.dns_mode == "proxy")] | length')
  [ "$n" -ge "$MANY" ] && break; sleep 0.1
done
sleep 1
RSSP=$(rss_kb)
echo
echo "5. daemon RSS in proxy mode: $((RSSP / 1024)).$(((RSSP % 1024) * 10 / 1024)) MiB with $n containers, each with its own DNS proxy"

# --- 6. docker run latency with and without the runtime shim ---------------------------------------
docker rm -f $(docker ps -aq --filter label=egressd-bench=1 --filter name=egb-) >/dev/null 2>&1 || true
"$BIN" install-runtime --name egressd-bench --config "$WORK/config.toml" >/dev/null
kill -HUP "$(cat /var/run/docker.pid)"
for _ in $(seq 50); do docker info --format '{{json .Runtimes}}' | grep -q egressd-bench && break; sleep 0.1; done
# run_ms RUNTIME NAME: milliseconds of one `docker run -d` (it returns once the container runs).
run_ms() {
  local t0 t1
  t0=$(date +%s%N)
  docker run -d --runtime "$1" --label egressd-bench=1 --label egressd.enable=true --label "$ALLOW" \
    --network "$NET" --dns "$SUBNET.1" --name "$2" "$IMAGE" sleep 3600 >/dev/null
  t1=$(date +%s%N)
  echo $(( (t1 - t0) / 1000 ))
}
: > "$WORK/run-runc"; : > "$WORK/run-shim"
for i in $(seq 20); do
  run_ms runc "egb-runc-$i" >> "$WORK/run-runc"
  run_ms egressd-bench "egb-shim-$i" >> "$WORK/run-shim"
done
stats() { sort -n "$1" | awk '{a[NR] = $1} END {printf "median %.1f ms  p95 %.1f ms", a[int((NR + 1) / 2)] / 1000, a[int(NR * 0.95 + 0.999)] / 1000}'; }
med() { sort -n "$1" | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
echo
echo "6. docker run -d -> running, 20 starts each (alternating):"
echo "   runc (event-driven enforcement): $(stats "$WORK/run-runc")"
echo "   egressd runtime shim:            $(stats "$WORK/run-shim")"
echo "   added by the shim at the median: $(awk -v a="$(med "$WORK/run-shim")" -v b="$(med "$WORK/run-runc")" 'BEGIN {printf "%.1f ms", (a - b) / 1000}')"
leaks=0; leaky_starts=0
for i in $(seq "$STARTS"); do
  docker run -d --runtime egressd-bench --label egressd-bench=1 --label egressd.enable=true --label "$ALLOW" \
    --network "$NET" --dns "$SUBNET.1" --name "egb-shimleak-$i" "$IMAGE" sh -c "$probe" >/dev/null
  for _ in $(seq 100); do docker logs "egb-shimleak-$i" 2>/dev/null | grep -q DONE && break; sleep 0.1; done
  n=$(docker logs "egb-shimleak-$i" 2>/dev/null | grep -c LEAK || true)
  leaks=$((leaks + n)); [ "$n" -gt 0 ] && leaky_starts=$((leaky_starts + 1))
done
echo "   leak window through the shim: $leaks forbidden connections succeeded over $STARTS starts ($leaky_starts leaked)"
