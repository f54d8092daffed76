#!/usr/bin/env bash
# Builds the agent release tarball for this machine's architecture:
#   dist/outpost-agent-<version>-<arch>.tar.gz
#     outpost-agent            the binary, built with the size-optimised `agent` profile
#     install.sh               systemd installer (docs/install.md)
#     outpost-agent.service    the unit install.sh installs
# For another architecture pass TARGET (e.g. aarch64-unknown-linux-gnu) with
# its Rust std and a linker installed (docs/install.md).
#   --into DIR   also copy the tarball into DIR: a control plane's
#                --agent-dist (default DATA_DIR/dist) serves it to install.sh
set -euo pipefail
into=""
while [ $# -gt 0 ]; do
    case "$1" in
        --into) [ $# -ge 2 ] || { echo "release.sh: --into needs a directory" >&2; exit 2; }; into=$2; shift 2 ;;
        -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "release.sh: unknown option $1 (--into DIR)" >&2; exit 2 ;;
    esac
done
# --into is relative to where the script was run, not the repository.
case "$into" in ""|/*) ;; *) into="$PWD/$into" ;; esac
cd "$(dirname "$0")/.."
TARGET=${TARGET:-}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
if [ -n "$TARGET" ]; then
    cargo build --profile agent --locked -p outpost-agent --bin outpost-agent --target "$TARGET"
    bin="target/$TARGET/agent/outpost-agent"
    arch=${TARGET%%-*}
else
    cargo build --profile agent --locked -p outpost-agent --bin outpost-agent
    bin=target/agent/outpost-agent
    arch=$(uname -m)
fi
name="outpost-agent-$version-$arch"
out="dist/$name"
rm -rf "$out" && mkdir -p "$out"
cp "$bin" "$out/outpost-agent"
strip "$out/outpost-agent" 2>/dev/null || true
cp systemd/install.sh systemd/outpost-agent.service "$out/"
tar -C dist -czf "dist/$name.tar.gz" "$name"
ls -l "dist/$name.tar.gz" "$out/outpost-agent"
if [ -n "$into" ]; then
    mkdir -p "$into"
    # Temp name then rename: a control plane scanning DIR never lists half a file.
    cp "dist/$name.tar.gz" "$into/.$name.tar.gz.tmp"
    mv -f "$into/.$name.tar.gz.tmp" "$into/$name.tar.gz"
    echo "release.sh: $into/$name.tar.gz"
fi
