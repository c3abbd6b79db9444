#!/usr/bin/env bash
# Load + fault drill against a release build, loopback only, bounded in time:
#   1. a seeded backend (`s3edge-testbed backend`, 2,000 recordings of 256 KiB) and the gateway
#      (256 MiB cache, admin on loopback);
#   2. a warm-up, then the RSS baseline;
#   3. CONNS (10,000) concurrent keep-alive connections of mixed hits, misses and ranges
#      (wrk + mixed.lua) for DURATION seconds, while the backend is killed (SIGKILL) at
#      KILL_AT seconds and started again DOWN_FOR seconds later;
#   4. the report: wrk's latency distribution and socket errors, the gateway's answers by
#      status and cache result, upstream errors by kind, cut responses, and RSS baseline,
#      peak and after the load (with and without the cache's contents).
#
# Usage: bash benches/load/load_fault.sh   (env: CONNS DURATION KILL_AT DOWN_FOR PORT_BASE)
set -euo pipefail

CONNS=${CONNS:-10000}
DURATION=${DURATION:-120}
KILL_AT=${KILL_AT:-40}
DOWN_FOR=${DOWN_FOR:-20}
PORT_BASE=${PORT_BASE:-19100}
backend_port=$((PORT_BASE + 1))
gateway_port=$((PORT_BASE + 80))
admin_port=$((PORT_BASE + 90))

root=$(cd "$(dirname "$0")/../.." && pwd)
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
(cd "$root" && cargo build --release --quiet --workspace)
bin="$root/target/release/s3edge"
testbed="$root/target/release/s3edge-testbed"
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
# 10,000 client sockets plus as many on the gateway's side.
ulimit -n "$(ulimit -Hn)"

wait_port() {
  for _ in $(seq 1 300); do
    (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on port $1" >&2
  exit 1
}

start_backend() {
  "$testbed" --log-format json backend --listen "127.0.0.1:$backend_port" --data "$work/data" \
    --seed 2000 --object-size 256KiB >>"$work/backend.log" 2>&1 &
  backend_pid=$!
  pids+=("$backend_pid")
  # Seeding happens after the port opens: wait for the line logged once it is done.
  for _ in $(seq 1 1200); do
    [ "$(grep -c 'backend listening' "$work/backend.log" 2>/dev/null)" -ge "$1" ] && return 0
    sleep 0.1
  done
  echo "the backend did not come up" >&2
  exit 1
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

cat >"$work/s3edge.toml" <<EOF
[server]
http = ["127.0.0.1:$gateway_port"]
shutdown_grace = "5s"

[limits]
max_connections = 20000
header_read_timeout = "30s"
keep_alive_idle = "120s"

[timeouts]
connect = "1s"
response_head = "5s"
body_idle = "5s"

[circuit]
failures = 5
open_for = "1s"
max_open_for = "5s"

[cache]
capacity = "256MiB"
ttl = "20s"

[admin]
listen = "127.0.0.1:$admin_port"

[regions.eu1]
hosts = ["eu1-addpipe.s3.eu-central-1.amazonaws.com"]
endpoint = "http://127.0.0.1:$backend_port"
bucket = "eu1-addpipe"
signing_region = "eu-central-1"
addressing = "path"
provider = "aws"
credentials = { access_key_id = "LOADKEY", secret_access_key = "load-secret" }
EOF

echo "== seeding the backend (2,000 x 256 KiB)"
start_backend 1
RUST_LOG=warn "$bin" --log-format json serve --config "$work/s3edge.toml" >"$work/gateway.log" 2>&1 &
gateway_pid=$!
pids+=("$gateway_pid")
wait_port "$gateway_port"
rss_start=$(rss_kib "$gateway_pid")

echo "== warm-up: 100 connections, 15 s"
wrk -c 100 -t 2 -d 15s -s "$root/benches/load/mixed.lua" "http://127.0.0.1:$gateway_port/" >"$work/warm.txt"
sleep 5
rss_baseline=$(rss_kib "$gateway_pid")

echo "== load: $CONNS connections for ${DURATION}s; backend killed at ${KILL_AT}s for ${DOWN_FOR}s"
wrk -c "$CONNS" -t 2 -d "${DURATION}s" --timeout 10s --latency \
  -s "$root/benches/load/mixed.lua" "http://127.0.0.1:$gateway_port/" >"$work/load.txt" 2>&1 &
wrk_pid=$!
rss_peak=$rss_baseline
conns_peak=0
for second in $(seq 1 "$DURATION"); do
  sleep 1
  rss=$(rss_kib "$gateway_pid")
  ((rss > rss_peak)) && rss_peak=$rss
  if ((second == KILL_AT)); then
    echo "   t=${second}s: kill -9 backend"
    kill -9 "$backend_pid"
  fi
  if ((second == KILL_AT + DOWN_FOR)); then
    start_backend 2
    echo "   t=${second}s: backend restarted"

  fi
  if ((second % 10 == 0)); then
    open=$(curl -s "http://127.0.0.1:$admin_port/metrics" | awk '/^s3edge_open_connections / {print $2}')
    ((open > conns_peak)) && conns_peak=$open
    echo "   t=${second}s: rss ${rss} KiB, open connections ${open}"
  fi
done
wait "$wrk_pid" || true
sleep 10
rss_after=$(rss_kib "$gateway_pid")
curl -s "http://127.0.0.1:$admin_port/metrics" >"$work/metrics.txt"
# Empty the cache to see what the load itself left behind.
curl -s -X DELETE "http://127.0.0.1:$admin_port/cache/eu1/loadtest0000" >/dev/null
sleep 5
rss_after_purge=$(rss_kib "$gateway_pid")
cache_after_purge=$(curl -s "http://127.0.0.1:$admin_port/metrics" | awk '/^s3edge_cache_bytes / {print $2}')
# The same load again: RSS should come back to the same peak, not climb (no leak).
if [ "${SECOND_ROUND:-1}" = 1 ]; then
  wrk -c "$CONNS" -t 2 -d "$((DURATION / 2))s" --timeout 10s \
    -s "$root/benches/load/mixed.lua" "http://127.0.0.1:$gateway_port/" >"$work/load2.txt" 2>&1 || true
  sleep 10
  rss_second_round=$(rss_kib "$gateway_pid")
fi

echo
echo "== wrk (load phase)"
sed -n '/Latency Distribution/,$p;/Thread Stats/,/Latency Distribution/p' "$work/load.txt" | awk '!seen[$0]++'
echo
echo "== gateway answers by status and cache result (whole run)"
grep '^s3edge_requests_total' "$work/metrics.txt" | sed 's/s3edge_requests_total//' | sort
echo
echo "== upstream errors by kind, retries, cut responses"
grep -E '^s3edge_(upstream_errors_total|upstream_retries_total|responses_cut_total)' "$work/metrics.txt" || echo "(none)"
echo
echo "== memory (KiB)"
echo "rss at start            $rss_start"
echo "rss baseline (warm)     $rss_baseline"
echo "rss peak under load     $rss_peak"
echo "rss 10 s after load     $rss_after"
echo "rss after cache purge   $rss_after_purge (cache bytes now ${cache_after_purge})"
echo "rss after a 2nd round   ${rss_second_round:-skipped} (half as long, backend up)"
echo "peak open connections   $conns_peak"
echo "cache bytes at the end  $(awk '/^s3edge_cache_bytes / {print $2}' "$work/metrics.txt")"
echo
echo "== gateway warnings and errors (first 5 distinct messages)"
grep -o '"message":"[^"]*"' "$work/gateway.log" | sort | uniq -c | sort -rn | head -5
