#!/usr/bin/env bash
# (d) Reconnect storm: DEVICES simulated agents (outpost-fleet-sim
# --reconnect: the agent's jittered backoff, unacked samples resent) hold
# mTLS sessions to a release control plane on its embedded SQLite; after
# they have streamed for a while the control plane is restarted (SIGTERM,
# then started again on the same ports and data). Reports the simulator's
# summary plus how long the control plane was down and how long until every
# device was back, and whether any connection failed for another reason
# than "refused" while it was down.
#
#   bench/storm.sh [DEVICES=10000] [RATE_HZ=0.1] [CONCURRENCY=256]
set -euo pipefail
cd "$(dirname "$0")/.."
devices=${1:-10000} rate=${2:-0.1} conc=${3:-256}
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release --quiet -p outpost-agent -p outpost-control-plane
bin=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d /tmp/outpost-storm.XXXXXX); cp=""
trap '[ -n "$cp" ] && kill $cp 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
mkdir -p "$work/cp"  # admin commands refuse a missing data directory (a typo must not start a new one)
"$bin/outpost-control-plane" workspace create bench --data-dir "$work/cp" >/dev/null
key=$("$bin/outpost-control-plane" api-key create --workspace bench --data-dir "$work/cp" | tail -n 1)
start_cp() { # $1 rest addr, $2 grpc addr
    OUTPOST_LOG=warn "$bin/outpost-control-plane" serve --data-dir "$work/cp" \
        --rest-listen "$1" --grpc-listen "$2" > "$work/cp.out" 2>>"$work/cp.err" &
    cp=$!
    for _ in $(seq 300); do grep -q "grpc listening" "$work/cp.out" 2>/dev/null && return 0; sleep 0.05; done
    echo "control plane did not start; see $work/cp.err" >&2; exit 1
}
start_cp 127.0.0.1:0 127.0.0.1:0
rest=$(sed -n 's/.*rest listening on //p' "$work/cp.out")
grpc=$(sed -n 's/.*grpc listening on https:\/\/[^:]*:\([0-9]*\).*/\1/p' "$work/cp.out")

# Long enough for: the fleet to stream 20 s, the restart, and 60 s to come back.
OUTPOST_LOG=info "$bin/outpost-fleet-sim" --rest "$rest" --server "https://localhost:$grpc" \
    --ca-file "$work/cp/pki/ca.crt" --workspace bench --api-key "$key" \
    --devices "$devices" --rate "$rate" --duration 100s --concurrency "$conc" --reconnect \
    > "$work/sim.out" 2> "$work/sim.err" &
sim=$!
while ! grep -q streaming "$work/sim.err" 2>/dev/null; do
    kill -0 $sim 2>/dev/null || { cat "$work/sim.err" >&2; exit 1; }
    sleep 0.5
done
sleep 20
rss_before=$(awk '/VmRSS/ {print $2}' "/proc/$cp/status")
t_stop=$(date +%s.%N)
kill -TERM $cp; wait $cp 2>/dev/null || true
t_down=$(date +%s.%N)
start_cp "${rest#http://}" "127.0.0.1:$grpc"
t_up=$(date +%s.%N)
wait $sim
python3 - "$work/sim.out" "$t_stop" "$t_down" "$t_up" "$rss_before" <<'PY'
import json, sys
s = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
t_stop, t_down, t_up = (float(x) for x in sys.argv[2:5])
s.update({
    "cp_stop_secs": round(t_down - t_stop, 3),
    "cp_down_secs": round(t_up - t_stop, 3),
    "cp_rss_before_restart_kib": int(sys.argv[5]),
    "all_back_after_up_secs": round(s["all_back_secs"] - (t_up - t_stop), 3) if s.get("all_back_secs") is not None else None,
    # When links came back / attempts were refused, after the new process
    # was up ([p50, p90, p99, max]; negative: before it was up).
    "back_spread_after_up_secs": [round(x - (t_up - t_stop), 3) for x in s.get("back_spread_secs", [])],
    "refused_spread_after_up_secs": [round(x - (t_up - t_stop), 3) for x in s.get("refused_spread_secs", [])],
})
print(json.dumps(s))
PY
