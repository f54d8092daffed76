#!/usr/bin/env bash
# Telemetry history reads from the rollup tiers (issue 18): one device with
# 30 days at 10 s and one at 1 s on SQLite and (with
# OUTPOST_BENCH_DATABASE_URL=postgres://…/postgres) PostgreSQL; the 30d and 7d
# views' median read time, bytes per device-month, single-writer ingest rate,
# and how long raw retention's longest delete batch held the writer.
# Usage: bench/history.sh [READS]   (default 21)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p outpost-control-plane --example history
echo "# $(date -u +%F) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
OUTPOST_LOG=warn ${CARGO_TARGET_DIR:-target}/release/examples/history "${1:-21}"
