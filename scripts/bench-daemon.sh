#!/usr/bin/env bash
# Benchmark of `chaos-agent daemon` against a real `chaos-control serve`, in a private network
# namespace: abort latency (vs. a poller with a fixed 5 s interval, measured in the same
# run), lease expiry after the control plane is SIGKILLed, and the idle daemon's RSS, CPU
# and network over 60 s. Needs root; installs iproute2, nftables and procps when missing.
# Takes about 2 minutes. Results and method: docs/benchmarks.md ("Daemon: abort latency,
# lease expiry, idle cost").
#
#   scripts/bench-daemon.sh
#   BENCH_ABORT_RUNS=100 BENCH_IDLE_SECS=120 scripts/bench-daemon.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# command -> Debian package
declare -A tools=([ip]=iproute2 [nft]=nftables [ps]=procps)
missing=()
for cmd in "${!tools[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${tools[$cmd]}")
done
if [ ${#missing[@]} -gt 0 ]; then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "==> installing ${missing[*]}"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "==> missing ${missing[*]}: the benchmark will skip"
    fi
fi
[ "$(id -u)" = 0 ] || echo "==> not root: the benchmark will print SKIPPED"

# The benchmark runs these binaries as they are (release profile, as packaged).
cargo build --release -p chaos-agent -p chaos-control
exec cargo bench -p chaos-tests --bench daemon
