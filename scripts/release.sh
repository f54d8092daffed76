#!/usr/bin/env bash
# Builds the agent release tarball for this machine's architecture:
#   dist/outpost-agent-<version>-<arch>.tar.gz
#     outpost-agent            the binary, built with the size-optimised `agent` profile
#     install.sh               systemd installer (docs/install.md)
#     outpost-agent.service    the unit install.sh installs
# For another architecture pass TARGET (e.g. aarch64-unknown-linux-gnu) with
# its Rust std and a linker installed (docs/install.md).
set -euo pipefail
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
