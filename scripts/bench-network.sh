#!/usr/bin/env bash
# Benchmark of the network faults (issue 3): inject+revert of network.rate and
# network.blackhole through fault-network (netlink) versus the tc/nft command-line tools,
# inside a throwaway network namespace. Needs root; installs iproute2 and nftables when
# missing. Results and method: docs/benchmarks.md ("Network faults: netlink vs tc/nft CLI").
#
#   scripts/bench-network.sh                     # 20 warm-up + 200 measured iterations
#   BENCH_ITERS=500 BENCH_WARMUP=50 scripts/bench-network.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# command -> Debian package
declare -A tools=([ip]=iproute2 [tc]=iproute2 [nft]=nftables)
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

exec cargo bench -p fault-network --bench netlink_vs_cli
