#!/usr/bin/env bash
# /metrics at fleet scale: a release control plane (embedded SQLite) with
# DEVICES simulated agents streaming (outpost-fleet-sim); once every device
# has sent samples, SCRAPES scrapes with the scrape token, plain and gzip
# (as Prometheus asks), timed by curl. Prints one JSON line: the latency
# percentiles of each kind, the body sizes, the control plane's CPU per
# scrape, and the refresh interval used.
#
#   bench/metrics.sh [DEVICES=10000] [SCRAPES=30] [REFRESH=10s]
#   bench/metrics.sh 3000 20 0s     # no cache: every scrape reads the store
set -euo pipefail
cd "$(dirname "$0")/.."
devices=${1:-10000} scrapes=${2:-30} refresh=${3:-10s}
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release --quiet -p outpost-agent -p outpost-control-plane
bin=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d /tmp/outpost-metrics.XXXXXX); cp=""; sim=""
trap '[ -n "$sim" ] && kill $sim 2>/dev/null; [ -n "$cp" ] && kill $cp 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
mkdir -p "$work/cp"
"$bin/outpost-control-plane" workspace create bench --data-dir "$work/cp" >/dev/null
key=$("$bin/outpost-control-plane" api-key create --workspace bench --data-dir "$work/cp" | tail -n 1)
token=scrape-token-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
echo "$token" > "$work/token"
OUTPOST_LOG=warn "$bin/outpost-control-plane" serve --data-dir "$work/cp" \
    --rest-listen 127.0.0.1:0 --grpc-listen 127.0.0.1:0 \
    --metrics-token-file "$work/token" --metrics-refresh "$refresh" > "$work/cp.out" &
cp=$!
for _ in $(seq 100); do grep -q "grpc listening" "$work/cp.out" 2>/dev/null && break; sleep 0.1; done
rest=$(sed -n 's/.*rest listening on //p' "$work/cp.out")
grpc=$(sed -n 's/.*grpc listening on https:\/\/[^:]*:\([0-9]*\).*/\1/p' "$work/cp.out")
OUTPOST_LOG=info "$bin/outpost-fleet-sim" --rest "$rest" --server "https://localhost:$grpc" \
    --ca-file "$work/cp/pki/ca.crt" --workspace bench --api-key "$key" \
    --devices "$devices" --rate 0.1 --duration 600s --concurrency 256 \
    > "$work/sim.out" 2> "$work/sim.err" &
sim=$!
while ! grep -q streaming "$work/sim.err" 2>/dev/null; do
    kill -0 $sim 2>/dev/null || { cat "$work/sim.err" >&2; exit 1; }
    sleep 0.5
done
# At 0.1 Hz every device has sent a sample within 10 s; 15 s to be sure.
sleep 15
cpu_ticks() { awk '{print $14 + $15}' "/proc/$cp/stat"; }
scrape() { # $1: extra curl args; prints time_total size
    curl -s -o /dev/null -w '%{time_total} %{size_download}\n' \
        -H "Authorization: Bearer $token" $1 "$rest/metrics"
}
scrape "" > /dev/null  # the first scrape of a scope waits for its first render
# The control plane's CPU without scrapes (ingest, background renders), to
# subtract from the scraping window's.
b0=$(cpu_ticks); w0=$(date +%s.%N); sleep 10; b1=$(cpu_ticks); w1=$(date +%s.%N)
t0=$(cpu_ticks); s0=$(date +%s.%N)
for _ in $(seq "$scrapes"); do scrape "" >> "$work/plain"; sleep 0.2; done
for _ in $(seq "$scrapes"); do scrape "-H Accept-Encoding:gzip" >> "$work/gzip"; sleep 0.2; done
t1=$(cpu_ticks); s1=$(date +%s.%N)
up=$(curl -s -H "Authorization: Bearer $token" "$rest/metrics" | grep -c '^outpost_device_up{' || true)
python3 - "$work/plain" "$work/gzip" "$t0" "$t1" "$(getconf CLK_TCK)" "$devices" "$up" "$refresh" "$scrapes" "$b0" "$b1" "$w0" "$w1" "$s0" "$s1" <<'PY'
import json, statistics, sys
def load(p):
    rows = [l.split() for l in open(p) if l.strip()]
    t = sorted(float(r[0]) * 1000 for r in rows)
    return t, int(rows[-1][1])
def pct(t, q):
    return round(t[min(len(t) - 1, int(q * len(t)))], 1)
plain, plain_bytes = load(sys.argv[1])
gz, gz_bytes = load(sys.argv[2])
t0, t1, hz, devices, up = (int(x) for x in sys.argv[3:8])
scrapes = int(sys.argv[9])
b0, b1 = int(sys.argv[10]), int(sys.argv[11])
w0, w1, s0, s1 = (float(x) for x in sys.argv[12:16])
baseline_per_s = (b1 - b0) / (w1 - w0)
scrape_ticks = (t1 - t0) - baseline_per_s * (s1 - s0)
print(json.dumps({
    "devices": devices, "devices_exported": up, "metrics_refresh": sys.argv[8],
    "plain_ms": {"p50": pct(plain, 0.5), "p90": pct(plain, 0.9), "max": round(plain[-1], 1)},
    "gzip_ms": {"p50": pct(gz, 0.5), "p90": pct(gz, 0.9), "max": round(gz[-1], 1)},
    "plain_bytes": plain_bytes, "gzip_bytes": gz_bytes,
    # The scraping window's CPU less the same time's without scrapes.
    "cp_cpu_ms_per_scrape": round(max(scrape_ticks, 0) / hz * 1000 / (2 * scrapes), 1),
    "cp_cpu_percent_without_scrapes": round(baseline_per_s / hz * 100, 1),
}))
PY
