#!/usr/bin/env bash
# Bytes per stored sample / log line and single-writer insert rates, on SQLite
# and (with OUTPOST_BENCH_DATABASE_URL=postgres://…/postgres) PostgreSQL.
# Usage: bench/storage.sh [N]   (default 100000)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p outpost-control-plane --example storage_size
echo "# $(date -u +%F) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
OUTPOST_LOG=warn ${CARGO_TARGET_DIR:-target}/release/examples/storage_size "${1:-100000}"
