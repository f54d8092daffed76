#!/usr/bin/env bash
# Two agent builds side by side against one local control plane, each
# sampling every second: CPU ticks (user, system) and RSS of each after
# SECONDS. For build-setting comparisons (e.g. opt-level "s" vs "z"), where a
# 10 s interval gives too few CPU ticks to tell apart.
#
#   bench/agent-ab.sh AGENT_BIN_A AGENT_BIN_B [SECONDS=180]
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: bench/agent-ab.sh AGENT_BIN_A AGENT_BIN_B [SECONDS]" >&2; exit 2; }
bins=("$1" "$2") duration=${3:-180}
for b in "${bins[@]}"; do [ -x "$b" ] || { echo "not an executable: $b" >&2; exit 2; }; done
cargo build --release --quiet -p outpost-control-plane
cp_bin=${CARGO_TARGET_DIR:-target}/release/outpost-control-plane
work=$(mktemp -d /tmp/outpost-ab.XXXXXX); pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
mkdir -p "$work/cp"  # admin commands refuse a missing data directory (a typo must not start a new one)
"$cp_bin" workspace create bench --data-dir "$work/cp" >/dev/null
key=$("$cp_bin" api-key create --workspace bench --data-dir "$work/cp" | tail -n 1)
OUTPOST_LOG=warn "$cp_bin" serve --data-dir "$work/cp" \
    --rest-listen 127.0.0.1:0 --grpc-listen 127.0.0.1:0 > "$work/cp.out" &
pids+=($!)
for _ in $(seq 100); do grep -q "grpc listening" "$work/cp.out" 2>/dev/null && break; sleep 0.1; done
rest=$(sed -n 's/.*rest listening on //p' "$work/cp.out")
grpc=$(sed -n 's/.*grpc listening on https:\/\/[^:]*:\([0-9]*\).*/\1/p' "$work/cp.out")
agents=()
for i in 0 1; do
    install=$(curl -sf -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
        -d "{\"device_name\":\"ab$i\"}" "$rest/bench/devices/v2" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["installId"])')
    "${bins[$i]}" enroll --server "https://localhost:$grpc" --install-id "$install" \
        --ca-file "$work/cp/pki/ca.crt" --state-dir "$work/agent$i" >/dev/null
    OUTPOST_LOG=warn "${bins[$i]}" run --interval 1s --state-dir "$work/agent$i" 2>"$work/agent$i.err" &
    agents+=($!); pids+=($!)
done
sleep 10
ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }
read -r u0a s0a <<<"$(ticks "${agents[0]}")"; read -r u0b s0b <<<"$(ticks "${agents[1]}")"
sleep "$duration"
read -r u1a s1a <<<"$(ticks "${agents[0]}")"; read -r u1b s1b <<<"$(ticks "${agents[1]}")"
rss() { awk '/^Rss:/ {print $2}' "/proc/$1/smaps_rollup"; }
echo "| build | user ticks | system ticks | RSS KiB |"
echo "|---|---|---|---|"
echo "| ${bins[0]} | $((u1a - u0a)) | $((s1a - s0a)) | $(rss "${agents[0]}") |"
echo "| ${bins[1]} | $((u1b - u0b)) | $((s1b - s0b)) | $(rss "${agents[1]}") |"
echo "(${duration} s at one sample per second; $(getconf CLK_TCK) ticks per second)"
