#!/usr/bin/env bash
# Runs every fuzz target (fuzz/, cargo-fuzz on the nightly toolchain) for
# SECONDS each, starting from the committed seeds (fuzz/seeds/TARGET) and
# the corpus it grew before (fuzz/corpus/TARGET, not committed). A crash
# stops the script with the target's name; the input is left under
# fuzz/artifacts/TARGET/ (reproduce: cargo +nightly fuzz run TARGET FILE).
#
#   bash scripts/fuzz.sh 600            # by hand: 10 minutes each, optimized, AddressSanitizer
#   bash scripts/fuzz.sh 20 --dev -s none   # CI: a short run, a quicker build
#
# Extra arguments go to `cargo fuzz build/run` (default -O; e.g. --dev, -s none).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-60}
shift || true
[ $# -gt 0 ] || set -- -O
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install cargo-fuzz --locked --quiet
fi
cargo +nightly fuzz build "$@"
for target in $(cargo +nightly fuzz list); do
    mkdir -p "corpus/$target"
    echo "fuzzing $target for ${secs}s"
    # -rss_limit_mb: a runaway allocation is a finding too.
    if ! cargo +nightly fuzz run "$@" "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        >"/tmp/outpost-fuzz-$target.log" 2>&1; then
        tail -40 "/tmp/outpost-fuzz-$target.log" >&2
        echo "fuzz target $target failed: see fuzz/artifacts/$target/" >&2
        exit 1
    fi
    grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "/tmp/outpost-fuzz-$target.log" | sed "s/^/  $target /"
done
