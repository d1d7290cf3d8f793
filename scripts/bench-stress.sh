#!/usr/bin/env bash
# Benchmark of the stress faults (issue 5): requested vs achieved CPU load of cpu.stress
# and of stress-ng --cpu-load at 10/30/50/70/90%, memory requested vs resident
# (memory.stress vs stress-ng --vm), and the supervising process's own CPU, in one run.
# Needs root (the stressors' cgroups); installs stress-ng when missing. Takes ~2 minutes
# and loads every CPU. Results and method: docs/benchmarks.md ("Stress faults: cpu.stress
# and memory.stress vs stress-ng").
#
#   scripts/bench-stress.sh                 # 6 s measurement windows
#   BENCH_WINDOW_S=10 scripts/bench-stress.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v stress-ng >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "==> installing stress-ng"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends stress-ng >/dev/null
    else
        echo "==> stress-ng missing: only cpu.stress will be measured"
    fi
fi
[ "$(id -u)" = 0 ] || echo "==> not root: the benchmark will print SKIPPED"

exec cargo bench -p fault-cpu --bench accuracy
