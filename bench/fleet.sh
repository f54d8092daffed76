#!/usr/bin/env bash
# A control plane (release build, embedded SQLite) and outpost-fleet-sim on
# this machine. Prints the simulator's JSON summary plus the control plane's
# RSS and CPU use while the fleet streamed.
#
#   bench/fleet.sh DEVICES RATE_HZ DURATION [CONCURRENCY] [BATCH]
#   bench/fleet.sh 1000 0.1 60s        # (a) connected-device cost
#   bench/fleet.sh 200 100 30s         # (b) sustained ingest
#   bench/fleet.sh 5000 0.1 5s 256     # (c) enrollment rate
#   bench/fleet.sh 100 1000 20s 64 50  # (b) with 50 samples per request
#
# CP_BIN=path serves with another control-plane binary (an A/B against an
# older build; the simulator and admin commands stay this tree's, so both
# builds must have the same database migrations). BIN_DIR=dir takes every
# binary from dir instead and builds nothing.
# PERF_OUT=file records the control plane with `perf record -g` for 10 s once
# the fleet streams (`perf report -i file --no-children` to read it).
set -euo pipefail
# Paths given relative to where the script was started from.
if [ -n "${BIN_DIR:-}" ]; then BIN_DIR=$(realpath "$BIN_DIR"); fi
if [ -n "${PERF_OUT:-}" ]; then PERF_OUT=$(realpath -m "$PERF_OUT"); fi
cd "$(dirname "$0")/.."
devices=${1:-100} rate=${2:-1} duration=${3:-20s} conc=${4:-64} batch=${5:-1}
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ -n "${BIN_DIR:-}" ]; then
    bin=$BIN_DIR    # every binary from there, nothing built (an A/B across migrations)
else
    cargo build --release --quiet --workspace --bins
    bin=${CARGO_TARGET_DIR:-target}/release
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/outpost-bench.XXXXXX"); cp=""
trap '[ -n "$cp" ] && kill $cp 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
mkdir -p "$work/cp"  # admin commands refuse a missing data directory (a typo must not start a new one)
"$bin/outpost-control-plane" workspace create bench --data-dir "$work/cp" >/dev/null
key=$("$bin/outpost-control-plane" api-key create --workspace bench --data-dir "$work/cp" | tail -n 1)
OUTPOST_LOG=warn "${CP_BIN:-$bin/outpost-control-plane}" serve --data-dir "$work/cp" \
    --rest-listen 127.0.0.1:0 --grpc-listen 127.0.0.1:0 > "$work/cp.out" &
cp=$!
for _ in $(seq 100); do grep -q "grpc listening" "$work/cp.out" 2>/dev/null && break; sleep 0.1; done
rest=$(sed -n 's/.*rest listening on //p' "$work/cp.out")
grpc=$(sed -n 's/.*grpc listening on https:\/\/[^:]*:\([0-9]*\).*/\1/p' "$work/cp.out")
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$cp/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$cp/stat"; }
# Bytes it dirtied in files (WAL, checkpoints); 0 where the kernel does not
# count them (a tmpfs /tmp counts nothing: run with TMPDIR on a disk).
written() { local w; w=$(awk '/^write_bytes/ {print $2}' "/proc/$cp/io" 2>/dev/null || true); echo "${w:-0}"; }
# Waits for the simulator's log to say $1; fails once the simulator has ended.
sim_says() {
    until grep -q "$1" "$work/sim.err" 2>/dev/null; do
        [ -e "$work/sim.done" ] && return 1
        sleep 0.02
    done
}
base_rss=$(rss_kib)
# The control plane's CPU during enrollment alone (the simulator logs when
# it starts enrolling and when every device is enrolled).
(
    sim_says enrolling || exit 0
    e0=$(cpu_ticks)
    sim_says connecting || exit 0
    echo "$e0 $(cpu_ticks)" > "$work/enroll.ticks"
) &
# Sample the control plane while the fleet streams (after enrollment).
(
    sim_says streaming || exit 0
    t0=$(cpu_ticks); s0=$(date +%s.%N); peak=0; w0=$(written)
    while kill -0 $cp 2>/dev/null && [ ! -s "$work/sim.out" ]; do
        r=$(rss_kib); [ "$r" -gt "$peak" ] && peak=$r
        t1=$(cpu_ticks); s1=$(date +%s.%N)
        echo "$peak $t0 $t1 $s0 $s1 $w0 $(written)" > "$work/cp.sample"
        sleep 1
    done
) &
if [ -n "${PERF_OUT:-}" ]; then
    (
        sim_says streaming || exit 0
        sleep 2
        perf record -q -g -p "$cp" -o "$PERF_OUT" -- sleep 10 >"$work/perf.err" 2>&1 ||
            echo "perf record failed: $(tail -n 3 "$work/perf.err")" >&2
    ) &
fi
OUTPOST_LOG=info "$bin/outpost-fleet-sim" --rest "$rest" --server "https://localhost:$grpc" \
    --ca-file "$work/cp/pki/ca.crt" --workspace bench --api-key "$key" \
    --devices "$devices" --rate "$rate" --duration "$duration" --concurrency "$conc" --batch "$batch" \
    > "$work/sim.out" 2> "$work/sim.err" || sim_rc=$?
touch "$work/sim.done"
if [ "${sim_rc:-0}" != 0 ]; then
    echo "the simulator failed (exit ${sim_rc}):" >&2
    tail -n 5 "$work/sim.err" >&2
    exit "$sim_rc"
fi
sleep 1.2
read -r peak t0 t1 s0 s1 w0 w1 < "$work/cp.sample"
read -r e0 e1 < "$work/enroll.ticks"
hz=$(getconf CLK_TCK)
python3 - "$work/sim.out" "$peak" "$base_rss" "$t0" "$t1" "$s0" "$s1" "$hz" "$e0" "$e1" "$w0" "$w1" <<'PY'
import json, sys
summary = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
peak, base, t0, t1 = (int(x) for x in sys.argv[2:6])
s0, s1, hz = float(sys.argv[6]), float(sys.argv[7]), int(sys.argv[8])
e0, e1 = int(sys.argv[9]), int(sys.argv[10])
w0, w1 = int(sys.argv[11]), int(sys.argv[12])
cpu = (t1 - t0) / hz / max(s1 - s0, 1e-9) * 100
summary.update({
    "cp_rss_base_kib": base, "cp_rss_peak_kib": peak,
    "cp_rss_per_device_kib": round((peak - base) / max(summary["devices"], 1), 1),
    "cp_cpu_percent_streaming": round(cpu, 1),
    # What the store writes per sample acked while streaming (WAL frames,
    # checkpoints): the pages each commit dirties.
    "cp_written_bytes_per_sample": round((w1 - w0) / max(s1 - s0, 1e-9) / max(summary["acked_per_sec"], 1)),
    # Control-plane CPU per enrollment (TLS handshake, CSR check, signing,
    # store), whatever the simulator beside it costs.
    "cp_cpu_ms_per_enrollment": round((e1 - e0) / hz * 1000 / max(summary["devices"], 1), 3),
})
print(json.dumps(summary))
PY
