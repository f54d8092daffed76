#!/usr/bin/env bash
# Records the NVML reader on a box with an NVIDIA GPU (docs/gpu.md, "Recorded on
# real hardware"): nvidia-smi for comparison, `outpost-agent gpus [--json]`, the
# real-NVML unit test, an end-to-end run (a control plane and an agent sampling
# every second while PyTorch loads the GPU for 12 s, then the device, its raw
# telemetry, the 1h view and /metrics through the REST API), and the agent's
# RSS and CPU with NVML off and on.
#
# Usage: bench/gpu-record.sh BIN_DIR [OUT_FILE]
#   BIN_DIR holds outpost-agent and outpost-control-plane (release builds) and
#   agent-tests, the agent's unit-test binary
#   (`cargo test -p outpost-agent --lib --no-run` prints its path).
# Needs curl and python3; the load step needs PyTorch with CUDA (skipped without).
set -u
D=$(cd "${1:?usage: bench/gpu-record.sh BIN_DIR [OUT_FILE]}" && pwd)
exec > >(tee "${2:-gpu-record.txt}") 2>&1
cd /tmp
W=$(mktemp -d /tmp/outpost-gpu.XXXXXX)
REST=127.0.0.1:18080   # fixed ports: a GPU box of its own, nothing else listening
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$W"' EXIT

echo "## uname / driver"; uname -a; nvidia-smi -L
nvidia-smi --query-gpu=name,uuid,memory.total,memory.used,utilization.gpu,temperature.gpu,power.draw,power.limit,enforced.power.limit,clocks.gr,clocks.max.gr --format=csv
echo "## outpost-agent gpus"; time "$D/outpost-agent" gpus
echo "## outpost-agent gpus --json"; "$D/outpost-agent" gpus --json
echo "## real NVML unit test"
OUTPOST_TEST_REQUIRE_NVML=1 timeout 60 "$D/agent-tests" gpu_nvml_real --nocapture; echo "rc=$?"

echo "## end to end"
"$D/outpost-control-plane" serve --data-dir "$W/cp" --rest-listen $REST --grpc-listen 127.0.0.1:18443 >"$W/cp.out" 2>"$W/cp.log" &
pids+=($!)
for _ in $(seq 100); do curl -fsS http://$REST/healthz >/dev/null 2>&1 && break; sleep 0.1; done
"$D/outpost-control-plane" workspace create gpu --data-dir "$W/cp" >/dev/null
KEY=$("$D/outpost-control-plane" api-key create --workspace gpu --data-dir "$W/cp" | tail -n 1)
H="Authorization: Bearer $KEY"
created=$(curl -fsS -X POST http://$REST/gpu/devices/v2 -H "$H" -H 'Content-Type: application/json' \
    -d '{"device_name":"gpu-box","device_type":"edge"}')
iid=$(printf '%s' "$created" | sed -n 's/.*"installId":"\([^"]*\)".*/\1/p')
"$D/outpost-agent" enroll --server https://localhost:18443 --install-id "$iid" --ca-file "$W/cp/pki/ca.crt" --state-dir "$W/agent"
DEV=$(sed -n 's/.*"device_id": *"\([^"]*\)".*/\1/p' "$W/agent/identity.json")
"$D/outpost-agent" run --state-dir "$W/agent" --interval 1s 2>"$W/agent.log" &
agent=$!; pids+=($agent)
sleep 5
python3 - <<'PY' &
import time
try:
    import torch
except ImportError:
    raise SystemExit("no PyTorch: no load")
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16); b = torch.randn_like(a)
t = time.time()
while time.time() - t < 12:
    for _ in range(50): c = a @ b
    torch.cuda.synchronize()
PY
load=$!; pids+=($load)
sleep 8; nvidia-smi --query-gpu=utilization.gpu,memory.used,power.draw,clocks.gr,temperature.gpu --format=csv
wait $load; sleep 4
echo "## agent RSS/CPU (kB, cpu time)"; ps -o rss=,vsz=,time= -p $agent
echo "## device"; curl -fsS -H "$H" http://$REST/gpu/devices/v2/$DEV; echo
echo "## telemetry/raw (newest 25 samples' gpus)"
curl -fsS -H "$H" "http://$REST/gpu/devices/v2/$DEV/telemetry/raw?limit=25" \
    | python3 -c 'import json,sys; [print(s["seq"], s["timestamp"], json.dumps(s["gpus"])) for s in json.load(sys.stdin)["data"]]'
echo "## telemetry?time_period=1h"; curl -fsS -H "$H" "http://$REST/gpu/devices/v2/$DEV/telemetry?time_period=1h"; echo
echo "## /metrics gpu lines"; curl -fsS -H "$H" http://$REST/metrics | grep -E 'outpost_device_(gpu_|info)'
echo "## agent log"; tail -20 "$W/agent.log"
kill $agent; wait $agent 2>/dev/null

for mode in off default; do
    if [ $mode = off ]; then export OUTPOST_NVML_LIBRARY=off; else unset OUTPOST_NVML_LIBRARY; fi
    "$D/outpost-agent" run --state-dir "$W/agent" --interval 1s 2>"$W/agent-$mode.log" &
    p=$!; pids+=($p); sleep 30
    echo "## NVML $mode: smaps_rollup after 30 s at 1 sample/s"
    grep -E "^(Rss|Pss|Pss_Anon|Pss_File|Anonymous|Private_Dirty)" /proc/$p/smaps_rollup
    echo "utime stime (ticks): $(awk '{print $14, $15}' /proc/$p/stat)  threads: $(ls /proc/$p/task | wc -l)"
    echo "top mappings by Rss (kB):"
    awk '/^[0-9a-f]+-[0-9a-f]+ /{name=$6; if(name=="")name="[anon]"} /^Rss:/{r[name]+=$2}
         END{for(n in r) if(r[n]>=256) print r[n], n}' /proc/$p/smaps | sort -rn | head -12
    kill $p; wait $p 2>/dev/null
done
