#!/usr/bin/env bash
# Outpost quick start: a control plane on its embedded defaults (SQLite, a
# fresh CA) with an agent on this machine enrolled against it, streaming
# live telemetry. Ctrl-C stops both; run it again to pick up where it was.
#
#   OUTPOST_DEMO_DIR   where data, state and logs go   [./demo-data]
#   OUTPOST_DEMO_REST  operator REST address            [127.0.0.1:8080]
#   OUTPOST_DEMO_GRPC  device gRPC address              [127.0.0.1:8443]
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=${OUTPOST_DEMO_DIR:-./demo-data}
REST=${OUTPOST_DEMO_REST:-127.0.0.1:8080}
GRPC=${OUTPOST_DEMO_GRPC:-127.0.0.1:8443}
WS=demo
BIN=${CARGO_TARGET_DIR:-target}/debug

echo "==> building (first time: a few minutes)"
cargo build --quiet --workspace --bins

mkdir -p "$DIR"
DATA="$DIR/control-plane"
STATE="$DIR/agent"
KEYFILE="$DIR/api-key"

# The agent just built, as a release tarball in the control plane's download
# directory: create-device answers then carry the one-line install command
# (curl … /install.sh | sudo sh -s -- …) for other boxes of this machine's arch.
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
name="outpost-agent-$version-$(uname -m)"
stage="$DIR/.release/$name"
mkdir -p "$stage"
(umask 077; mkdir -p "$DATA/dist")
cp "$BIN/outpost-agent" systemd/install.sh systemd/outpost-agent.service "$stage/"
tar -C "$DIR/.release" -czf "$DATA/dist/.$name.tar.gz.tmp" "$name"
mv -f "$DATA/dist/.$name.tar.gz.tmp" "$DATA/dist/$name.tar.gz"
rm -rf "$DIR/.release"

pids=()
cleanup() {
    trap - INT TERM EXIT
    echo
    echo "==> stopping"
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup INT TERM EXIT

"$BIN/outpost-control-plane" serve --data-dir "$DATA" --rest-listen "$REST" --grpc-listen "$GRPC" \
    --public-rest-url "http://$REST" \
    >"$DIR/control-plane.out" 2>"$DIR/control-plane.log" &
pids+=($!)

for _ in $(seq 1 100); do
    curl -fsS "http://$REST/healthz" >/dev/null 2>&1 && break
    if ! kill -0 "${pids[0]}" 2>/dev/null; then
        echo "the control plane did not start:" >&2
        tail -n 5 "$DIR/control-plane.log" >&2
        exit 1
    fi
    sleep 0.1
done

# Administration needs the data directory `serve` has created.
if [ ! -s "$KEYFILE" ]; then
    "$BIN/outpost-control-plane" workspace create "$WS" --data-dir "$DATA" >/dev/null
    (umask 077; "$BIN/outpost-control-plane" api-key create --workspace "$WS" --data-dir "$DATA" | tail -n 1 > "$KEYFILE")
fi
KEY=$(cat "$KEYFILE")

if [ ! -f "$STATE/identity.json" ]; then
    echo "==> creating a device and enrolling this machine"
    created=$(curl -fsS -X POST "http://$REST/$WS/devices/v2" -H "Authorization: Bearer $KEY" \
        -H 'Content-Type: application/json' -d "{\"device_name\":\"$(hostname)\",\"device_type\":\"edge\"}")
    install_id=$(printf '%s' "$created" | sed -n 's/.*"installId":"\([^"]*\)".*/\1/p')
    "$BIN/outpost-agent" enroll --server "https://localhost:${GRPC##*:}" --install-id "$install_id" \
        --ca-file "$DATA/pki/ca.crt" --state-dir "$STATE"
fi
DEVICE=$(sed -n 's/.*"device_id": *"\([^"]*\)".*/\1/p' "$STATE/identity.json")

"$BIN/outpost-agent" run --state-dir "$STATE" --interval 2s 2>"$DIR/agent.log" &
pids+=($!)

cat <<INFO

Outpost is running.
  dashboard    http://$REST/           (sign in: workspace $WS and the API key below)
  REST API     http://$REST            (log: $DIR/control-plane.log)
  device gRPC  https://$GRPC  (mTLS)   (agent log: $DIR/agent.log)
  workspace    $WS
  API key      $KEY
  device       $DEVICE (this machine, a sample every 2 s)

Try:
  curl -s -H "Authorization: Bearer $KEY" http://$REST/$WS/devices/v2
  curl -s -H "Authorization: Bearer $KEY" http://$REST/$WS/devices/v2/$DEVICE
  curl -s -H "Authorization: Bearer $KEY" "http://$REST/$WS/devices/v2/$DEVICE/telemetry/raw?limit=3"
  curl -sN -H "Authorization: Bearer $KEY" http://$REST/$WS/devices/v2/$DEVICE/telemetry/stream
  curl -s -H "Authorization: Bearer $KEY" http://$REST/metrics
  OUTPOST_URL=http://$REST OUTPOST_WORKSPACE=$WS OUTPOST_API_KEY=$KEY $BIN/outpostctl watch
  $BIN/outpost-agent status --state-dir $STATE

Ctrl-C stops both.
INFO
wait
