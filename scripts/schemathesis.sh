#!/usr/bin/env bash
# A bounded schemathesis run (every check) against the live OpenAPI document
# of a real control plane: once with a full workspace key, once with a
# read-only key. Fails on any server error, schema violation, undocumented
# status code or ignored credential.
#
#   scripts/schemathesis.sh                 # CI size (SCHEMATHESIS_MAX_EXAMPLES=10)
#   SCHEMATHESIS_MAX_EXAMPLES=300 scripts/schemathesis.sh   # longer, by hand
#
# Needs python3 (with venv) and curl; installs schemathesis into a virtual
# environment (SCHEMATHESIS_VENV, default ~/.cache/outpost/schemathesis-venv)
# when it is missing. Uses the debug binary (built here when missing or stale).
# Extra arguments go to `st run` (e.g. --seed 1 --include-operation-id listLogs).
set -euo pipefail
cd "$(dirname "$0")/.."

version="4.32.5"
max_examples="${SCHEMATHESIS_MAX_EXAMPLES:-10}"
workers="${SCHEMATHESIS_WORKERS:-1}"
venv="${SCHEMATHESIS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/outpost/schemathesis-venv}"
case "$venv" in /*) ;; *) venv="$PWD/$venv" ;; esac

if ! "$venv/bin/st" --version 2>/dev/null | grep -qF "$version"; then
    echo "installing schemathesis $version into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$version"
fi

cargo build -q --locked -p outpost-control-plane --bin outpost-control-plane
bin="${CARGO_TARGET_DIR:-target}/debug/outpost-control-plane"

tmp=$(mktemp -d /tmp/outpost-schemathesis.XXXXXX)
pid=""
cleanup() {
    if [ -n "$pid" ]; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

data="$tmp/data"
"$bin" serve --data-dir "$data" --rest-listen 127.0.0.1:0 --grpc-listen 127.0.0.1:0 \
    >"$tmp/serve.out" 2>"$tmp/serve.log" &
pid=$!
rest=""
for _ in $(seq 1 300); do
    rest=$(sed -n 's/^outpost-control-plane: rest listening on //p' "$tmp/serve.out")
    [ -n "$rest" ] && break
    kill -0 "$pid" 2>/dev/null || { cat "$tmp/serve.log" >&2; echo "the control plane exited" >&2; exit 1; }
    sleep 0.1
done
[ -n "$rest" ] || { echo "the control plane did not print its REST address" >&2; exit 1; }
echo "control plane at $rest (data in $data)"

"$bin" workspace create acme --data-dir "$data" >/dev/null
full=$("$bin" api-key create --workspace acme --data-dir "$data" 2>/dev/null | tail -n 1)
read_only=$("$bin" api-key create --workspace acme --scope device:read --data-dir "$data" 2>/dev/null | tail -n 1)
# A device for the {device_id} routes (the full-key run may delete it; later
# cases then get the documented 404).
device=$(curl -fsS -H "Authorization: Bearer $full" -H 'content-type: application/json' \
    -d '{"device_name":"schemathesis"}' "$rest/acme/devices/v2" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["deviceId"])')

# The key goes in the Authorization header only: the document offers
# `?api_key=` as the alternative, and a generated query key beside the header
# is two credentials (a 400 by design).
#
# Every check runs but positive_data_acceptance ("a request the schema
# admits must succeed"): some of what the server checks is beyond JSON
# Schema - opaque cursors it issued, Ed25519 signatures, artifacts and
# rollouts that must exist, the Kubernetes label grammar, time parameters
# that are RFC 3339 or unix seconds. negative_data_rejection (the server
# admits nothing the schema refuses) runs, as do the response checks.
#
# The live stream sends nothing but keep-alives for a device that never
# connected: one event read is enough to check its shape.
cat >"$tmp/schemathesis.toml" <<EOF
[generation]
with-security-parameters = false

[parameters]
"path.workspace" = "acme"
"path.device_id" = "$device"

[[operations]]
include-operation-id = "streamTelemetry"
max-stream-events = 1
request-timeout = 1
EOF

status=0
for who in read-only full; do
    if [ "$who" = full ]; then key="$full"; else key="$read_only"; fi
    echo "=== schemathesis with the $who key ($max_examples examples per operation)"
    # From the temp dir: schemathesis keeps its cache (.schemathesis/) in
    # the working directory.
    (cd "$tmp" && "$venv/bin/st" --config-file "$tmp/schemathesis.toml" run "$rest/openapi.json" \
        --checks all \
        --exclude-checks positive_data_acceptance \
        --max-examples "$max_examples" \
        --workers "$workers" \
        --header "Authorization: Bearer $key" \
        --request-timeout 30 \
        --no-color \
        "$@") || status=1
done
if [ "$status" != 0 ]; then
    echo "schemathesis found problems; the control plane's log is in /tmp/outpost-schemathesis-serve.log" >&2
    cp "$tmp/serve.log" /tmp/outpost-schemathesis-serve.log 2>/dev/null || true
fi
exit "$status"
