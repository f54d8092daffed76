#!/usr/bin/env bash
# (g) Artifact delivery: DEVICES simulated agents (outpost-fleet-sim
# --fetch-artifact) enrolled and connected to a release control plane on its
# embedded SQLite, then all of them download one SIZE_MB artifact at once
# over their mTLS links (FetchArtifact; refusals while the control plane
# sheds downloads are retried with backoff, resuming from the bytes already
# received). Reports the simulator's summary plus the control plane's peak
# RSS (VmHWM) and its RSS before the downloads.
#
#   bench/artifacts.sh [DEVICES=1000] [SIZE_MB=50] [CONCURRENCY=256] [EXTRA control-plane flags…]
set -euo pipefail
cd "$(dirname "$0")/.."
devices=${1:-1000} size_mb=${2:-50} conc=${3:-256}
shift $(( $# < 3 ? $# : 3 ))
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release --quiet -p outpost-agent -p outpost-control-plane -p outpostctl
bin=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d /tmp/outpost-artifacts.XXXXXX); cp=""
trap '[ -n "$cp" ] && kill $cp 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
mkdir -p "$work/cp"  # admin commands refuse a missing data directory (a typo must not start a new one)
"$bin/outpost-control-plane" workspace create bench --data-dir "$work/cp" >/dev/null
key=$("$bin/outpost-control-plane" api-key create --workspace bench --data-dir "$work/cp" | tail -n 1)
pub=$("$bin/outpostctl" artifact keygen --out "$work/publisher.pem" | tail -n 1)
"$bin/outpost-control-plane" publisher-key add --workspace bench "$pub" --data-dir "$work/cp" >/dev/null
OUTPOST_LOG=warn "$bin/outpost-control-plane" serve --data-dir "$work/cp" \
    --rest-listen 127.0.0.1:0 --grpc-listen 127.0.0.1:0 "$@" > "$work/cp.out" 2> "$work/cp.err" &
cp=$!
for _ in $(seq 300); do grep -q "grpc listening" "$work/cp.out" 2>/dev/null && break; sleep 0.05; done
rest=$(sed -n 's/.*rest listening on //p' "$work/cp.out")
grpc=$(sed -n 's/.*grpc listening on https:\/\/[^:]*:\([0-9]*\).*/\1/p' "$work/cp.out")
[ -n "$grpc" ] || { echo "control plane did not start; see $work/cp.err" >&2; cat "$work/cp.err" >&2; exit 1; }

mkdir -p "$work/model"
head -c "$((size_mb * 1048576))" /dev/urandom > "$work/model/weights.bin"
OUTPOST_URL=$rest OUTPOST_API_KEY=$key OUTPOST_WORKSPACE=bench \
    "$bin/outpostctl" artifact publish --name model --version 1 --sign-key "$work/publisher.pem" \
    "$work/model" | tail -n 1 >/dev/null
rss_before=$(awk '/VmRSS/ {print $2}' "/proc/$cp/status")

OUTPOST_LOG=warn "$bin/outpost-fleet-sim" --rest "$rest" --server "https://localhost:$grpc" \
    --ca-file "$work/cp/pki/ca.crt" --workspace bench --api-key "$key" \
    --devices "$devices" --concurrency "$conc" --fetch-artifact model@1 \
    > "$work/sim.out" 2> "$work/sim.err" || { cat "$work/sim.err" >&2; exit 1; }
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$cp/status")
python3 - "$work/sim.out" "$rss_before" "$hwm" "$size_mb" <<'PY'
import json, sys
s = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
s.update({
    "artifact_mib": int(sys.argv[4]),
    "cp_rss_before_kib": int(sys.argv[2]),
    "cp_peak_rss_kib": int(sys.argv[3]),
})
print(json.dumps(s))
PY
