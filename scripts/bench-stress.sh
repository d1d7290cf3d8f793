#!/usr/bin/env bash
# Benchmark of the stress faults (issues 5 and 12): requested vs achieved CPU load of
# cpu.stress and of stress-ng --cpu-load at 10/30/50/70/90%, with one worker and with one
# per CPU, as the host reports it (/proc/stat, what top/vmstat/sar/node_exporter read) and
# as the workers receive it (/proc/<pid>/schedstat); then memory.stress vs stress-ng --vm
# as `free` shows it (MemAvailable), resident and in the cgroup; in one run. Needs root
# (cgroups); installs stress-ng when missing. Takes ~7 minutes and loads every CPU. Results
# and method: docs/benchmarks.md ("Stress faults: cpu.stress and memory.stress vs
# stress-ng").
#
#   scripts/bench-stress.sh                       # 3 s warm-up, 10 s windows
#   BENCH_WINDOW_S=20 scripts/bench-stress.sh
#   BENCH_LEVELS=30,50,70 BENCH_SKIP_MEMORY=1 scripts/bench-stress.sh
#   BENCH_NICE=-10 scripts/bench-stress.sh        # both tools' workers at nice -10
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
