#!/usr/bin/env bash
# (h) Connection floods (issue 21, defects 1 and 2): a control plane on its
# embedded SQLite with DEVICES simulated agents streaming (outpost-fleet-sim,
# 1 sample/s each); then bench/flood.py holds up to N_GRPC idle TLS
# connections (handshake without a client certificate, no HTTP/2 preface) on
# the device port from GRPC_ADDRS (64) loopback addresses and N_REST half-sent
# request heads on the REST port from REST_ADDRS (6), reopening each one the
# server drops, for FLOOD_SECS. The per-address caps apply to loopback here
# (--connection-limits-on-loopback), with the listener caps given below.
# Reports the control plane's open files and RSS, a REST request's and a
# fresh enrollment's latency (before, during and after the flood), the
# flood's own counts, the connection metrics, and the simulator's summary
# (the streaming devices must see no disconnect).
#
#   bench/flood.sh [N_GRPC=12000] [N_REST=3000] [FLOOD_SECS=40] [DEVICES=50] [EXTRA control-plane flags…]
#   PROFILE=debug bench/flood.sh …   # the debug build (no release build on a small machine)
#   REST_ADDRS=16 bench/flood.sh …    # a REST flood from enough addresses to fill --rest-max-connections
set -euo pipefail
cd "$(dirname "$0")/.."
n_grpc=${1:-12000} n_rest=${2:-3000} flood_secs=${3:-40} devices=${4:-50}
grpc_addrs=${GRPC_ADDRS:-64} rest_addrs=${REST_ADDRS:-6}
shift $(( $# < 4 ? $# : 4 ))
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
profile=${PROFILE:-release}
if [ "$profile" = release ]; then
    cargo build --release --quiet -p outpost-agent -p outpost-control-plane
else
    cargo build --quiet -p outpost-agent -p outpost-control-plane
fi
bin=${CARGO_TARGET_DIR:-target}/$profile
work=$(mktemp -d /tmp/outpost-flood.XXXXXX); cp=""; sim=""
trap '[ -n "$sim" ] && kill $sim 2>/dev/null; [ -n "$cp" ] && kill $cp 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
mkdir -p "$work/cp"
"$bin/outpost-control-plane" workspace create bench --data-dir "$work/cp" >/dev/null
key=$("$bin/outpost-control-plane" api-key create --workspace bench --data-dir "$work/cp" | tail -n 1)
printf 'flood-bench-scrape-token-0123456789\n' > "$work/scrape"
OUTPOST_LOG=warn "$bin/outpost-control-plane" serve --data-dir "$work/cp" \
    --rest-listen 127.0.0.1:0 --grpc-listen 127.0.0.1:0 --metrics-token-file "$work/scrape" \
    --connection-limits-on-loopback --grpc-max-connections 8000 --rest-max-connections 2000 \
    "$@" > "$work/cp.out" 2> "$work/cp.err" &
cp=$!
for _ in $(seq 300); do grep -q "grpc listening" "$work/cp.out" 2>/dev/null && break; sleep 0.1; done
rest=$(sed -n 's/.*rest listening on //p' "$work/cp.out")
grpc=$(sed -n 's/.*grpc listening on https:\/\/[^:]*:\([0-9]*\).*/\1/p' "$work/cp.out")

fds() { ls "/proc/$cp/fd" | wc -l; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$cp/status"; }
rest_ms() { curl -s -o /dev/null -m 30 -w '%{http_code} %{time_total}' "$rest/healthz" | awk '{printf "%s in %.1f", $1, $2 * 1000}'; }
# Devices for the enrollments measured below, created before the flood
# (during it the REST port may be full: a distributed flood larger than
# --rest-max-connections is refused there too).
installs=()
for i in 1 2 3 4; do
    installs+=("$(curl -sf -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
        -d "{\"device_name\":\"legit$i\"}" "$rest/bench/devices/v2" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["installId"])')")
done
enroll_ms() { # $1: which device; enrolled by the real agent
    local dir t0 t1
    dir="$work/legit$1"; mkdir -p "$dir"
    t0=$(date +%s%N)
    if timeout 60 "$bin/outpost-agent" enroll --server "https://localhost:$grpc" --install-id "${installs[$1]}" \
        --ca-file "$work/cp/pki/ca.crt" --state-dir "$dir/state" >/dev/null 2>"$dir/err"; then
        t1=$(date +%s%N); echo $(( (t1 - t0) / 1000000 ))
    else
        echo "failed ($(tail -n 1 "$dir/err" | cut -c1-160))"
    fi
}
point() { # label, device
    printf '| %s | %s | %s | %s ms | %s ms |\n' "$1" "$(fds)" "$(rss_kib)" "$(rest_ms)" "$(enroll_ms "$2")"
}

OUTPOST_LOG=info "$bin/outpost-fleet-sim" --rest "$rest" --server "https://localhost:$grpc" \
    --ca-file "$work/cp/pki/ca.crt" --workspace bench --api-key "$key" \
    --devices "$devices" --rate 1 --duration "$((flood_secs + 120))s" --concurrency 16 \
    > "$work/sim.out" 2> "$work/sim.err" &
sim=$!
while ! grep -q streaming "$work/sim.err" 2>/dev/null; do
    kill -0 $sim 2>/dev/null || { cat "$work/sim.err" >&2; exit 1; }
    sleep 0.5
done
sleep 5
echo "| when | open files | RSS KiB | GET /healthz (status in time) | enroll (new device) |"
echo "|---|---|---|---|---|"
point "before the flood" 0
# One process per port (each is single-threaded).
python3 bench/flood.py "$grpc" "${rest##*:}" 0 "$n_rest" 1 "$rest_addrs" "$flood_secs" \
    > "$work/flood-rest.out" 2> "$work/flood-rest.err" &
flood_rest=$!
python3 bench/flood.py "$grpc" "${rest##*:}" "$n_grpc" 0 "$grpc_addrs" 1 "$flood_secs" \
    > "$work/flood.out" 2> "$work/flood.err" &
flood=$!
( # the control plane's peak open files and RSS while the flood runs
    pf=0; pr=0
    while kill -0 $flood 2>/dev/null || kill -0 $flood_rest 2>/dev/null; do
        f=$(fds); r=$(rss_kib); [ "$f" -gt "$pf" ] && pf=$f; [ "$r" -gt "$pr" ] && pr=$r
        echo "$pf $pr" > "$work/peak"; sleep 0.5
    done
) &
while ! grep -q ramped "$work/flood.err" 2>/dev/null || ! grep -q ramped "$work/flood-rest.err" 2>/dev/null; do
    kill -0 $flood 2>/dev/null || { cat "$work/flood.err" >&2; exit 1; }
    sleep 0.5
done
point "flood ramped" 1
sleep $((flood_secs / 3))
point "flood, $((flood_secs / 3)) s later" 2
wait $flood $flood_rest
sleep 12
point "12 s after the flood" 3
echo
echo "flood (gRPC): $(cat "$work/flood.out")"
echo "flood (REST): $(cat "$work/flood-rest.out")"
read -r peak_fds peak_rss < "$work/peak"
echo "control plane during the flood (peak, sampled every 0.5 s): open files $peak_fds, RSS $peak_rss KiB; nofile $(awk '/Max open files/ {print $4 "/" $5}' "/proc/$cp/limits")"
curl -s -H "Authorization: Bearer $(cat "$work/scrape")" "$rest/metrics" |
    grep -E '^outpost_(connection|connections|tls_handshakes|open_files)' | sed 's/^/    /'
wait $sim || true
echo "simulator: $(tail -n 1 "$work/sim.out")"
exit 0
