#!/usr/bin/env bash
# Simulated agents long-polling one chaos-control server over TLS on 127.0.0.1.
# Usage: scripts/bench-control.sh [--agents 1000,10000] [--runs 200]
# Results: a markdown table on stdout (see docs/benchmarks.md, "Control plane").
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p chaos-control --bins
target_dir="${CARGO_TARGET_DIR:-target}"
exec "$target_dir/release/chaos-control-bench" "$@"
