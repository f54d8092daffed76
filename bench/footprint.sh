#!/usr/bin/env bash
# (e) Agent footprint, side by side with what users run today, in one run:
#   - outpost-agent (the `agent` profile, as released), sampling every 10 s and shipping to a
#     local control plane over mTLS (the real path: spool, acks, fsync);
#   - Debian's prometheus-node-exporter (default collectors), scraped every
#     10 s by curl;
#   - collectd (cpu, memory, df, interface, load, disk at Interval 10, the csv
#     writer as its output).
# After a warm-up it measures, over DURATION seconds, each process's CPU
# seconds (utime+stime) and at the end its RSS, PSS (smaps_rollup) and peak
# RSS (VmHWM). Prints one JSON line and a Markdown table.
#
#   bench/footprint.sh [DURATION_SECS=600] [WARMUP_SECS=30]
# Needs: prometheus-node-exporter, collectd-core (apt), curl, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-600} warmup=${2:-30}
for tool in prometheus-node-exporter collectd curl python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt install prometheus-node-exporter collectd-core curl)" >&2; exit 1; }
done
# The agent as it ships (scripts/release.sh: the `agent` profile).
cargo build --release --quiet -p outpost-control-plane
cargo build --profile agent --quiet -p outpost-agent --bin outpost-agent
bin=${CARGO_TARGET_DIR:-target}/release
agent_bin=${CARGO_TARGET_DIR:-target}/agent/outpost-agent
work=$(mktemp -d /tmp/outpost-footprint.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# The control plane the agent ships to (its cost is not measured here).
mkdir -p "$work/cp"  # admin commands refuse a missing data directory (a typo must not start a new one)
"$bin/outpost-control-plane" workspace create bench --data-dir "$work/cp" >/dev/null
key=$("$bin/outpost-control-plane" api-key create --workspace bench --data-dir "$work/cp" | tail -n 1)
OUTPOST_LOG=warn "$bin/outpost-control-plane" serve --data-dir "$work/cp" \
    --rest-listen 127.0.0.1:0 --grpc-listen 127.0.0.1:0 > "$work/cp.out" &
pids+=($!)
for _ in $(seq 100); do grep -q "grpc listening" "$work/cp.out" 2>/dev/null && break; sleep 0.1; done
rest=$(sed -n 's/.*rest listening on //p' "$work/cp.out")
grpc=$(sed -n 's/.*grpc listening on https:\/\/[^:]*:\([0-9]*\).*/\1/p' "$work/cp.out")
install=$(curl -sf -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
    -d '{"device_name":"footprint"}' "$rest/bench/devices/v2" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["installId"])')
"$agent_bin" enroll --server "https://localhost:$grpc" --install-id "$install" \
    --ca-file "$work/cp/pki/ca.crt" --state-dir "$work/agent" >/dev/null
OUTPOST_LOG=warn "$agent_bin" run --interval 10s --state-dir "$work/agent" 2>"$work/agent.err" &
agent=$!; pids+=($agent)

# node_exporter on a free port, scraped every 10 s.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
prometheus-node-exporter --web.listen-address="127.0.0.1:$port" 2>"$work/ne.err" &
ne=$!; pids+=($ne)
( while sleep 10; do curl -sf "http://127.0.0.1:$port/metrics" >/dev/null || true; done ) &
pids+=($!)

# collectd with the plugins the issue names, writing CSV.
mkdir -p "$work/collectd"
cat > "$work/collectd.conf" <<EOF
Interval 10
BaseDir "$work/collectd"
PIDFile "$work/collectd/collectd.pid"
PluginDir "/usr/lib/collectd"
TypesDB "/usr/share/collectd/types.db"
LoadPlugin cpu
LoadPlugin memory
LoadPlugin df
LoadPlugin interface
LoadPlugin load
LoadPlugin disk
LoadPlugin csv
<Plugin csv>
  DataDir "$work/collectd/csv"
</Plugin>
EOF
collectd -f -C "$work/collectd.conf" 2>"$work/collectd.err" &
cd_pid=$!; pids+=($cd_pid)

sleep "$warmup"
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
for p in $agent $ne $cd_pid; do kill -0 "$p" || { echo "process $p died; see $work" >&2; exit 1; }; done
a0=$(ticks $agent); n0=$(ticks $ne); c0=$(ticks $cd_pid)
sleep "$duration"
a1=$(ticks $agent); n1=$(ticks $ne); c1=$(ticks $cd_pid)
mem() { # rss pss hwm (KiB)
    echo "$(awk '/^Rss:/ {print $2}' "/proc/$1/smaps_rollup") $(awk '/^Pss:/ {print $2}' "/proc/$1/smaps_rollup") $(awk '/VmHWM/ {print $2}' "/proc/$1/status")"
}
read -r ar ap ah <<<"$(mem $agent)"; read -r nr np nh <<<"$(mem $ne)"; read -r cr cpss ch <<<"$(mem $cd_pid)"
strip -o "$work/outpost-agent.stripped" "$agent_bin"
size=$(stat -c %s "$work/outpost-agent.stripped")
acked=$("$agent_bin" status --json --state-dir "$work/agent" |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print(json.dumps(d.get("telemetry", d).get("acked_seq", None)))' 2>/dev/null || echo null)
hz=$(getconf CLK_TCK)
python3 - "$duration" "$hz" "$size" "$acked" \
    "$a0" "$a1" "$ar" "$ap" "$ah" "$n0" "$n1" "$nr" "$np" "$nh" "$c0" "$c1" "$cr" "$cpss" "$ch" <<'PY'
import json, sys
dur, hz, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
acked = sys.argv[4]
v = [int(x) for x in sys.argv[5:]]
def proc(t0, t1, rss, pss, hwm):
    return {"cpu_seconds": round((t1 - t0) / hz, 2), "rss_kib": rss, "pss_kib": pss, "peak_rss_kib": hwm}
r = {"duration_secs": dur, "agent_stripped_bytes": size, "agent_acked_seq": acked,
     "outpost_agent": proc(*v[0:5]), "node_exporter": proc(*v[5:10]), "collectd": proc(*v[10:15])}
a, c = r["outpost_agent"], r["collectd"]
r["agent_vs_collectd"] = {
    "rss_ratio": round(a["rss_kib"] / c["rss_kib"], 2),
    "pss_ratio": round(a["pss_kib"] / c["pss_kib"], 2),
    "cpu_ratio": round(a["cpu_seconds"] / c["cpu_seconds"], 2) if c["cpu_seconds"] else None,
}
print(json.dumps(r))
print()
print("| process | CPU s | RSS KiB | PSS KiB | peak RSS KiB |")
print("|---|---|---|---|---|")
for name in ("outpost_agent", "node_exporter", "collectd"):
    p = r[name]
    print(f"| {name} | {p['cpu_seconds']} | {p['rss_kib']} | {p['pss_kib']} | {p['peak_rss_kib']} |")
PY
