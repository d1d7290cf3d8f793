#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, unit tests, and (as root) the
# privileged tests against the real kernel plus the end-to-end tests of chaos-agent; then the
# VM suite (tests/vm/run.sh): kill -9, hard resets, netem and services under a real systemd.
# Installs the few system tools the tests use when they are missing (needs root for that).
set -euo pipefail
cd "$(dirname "$0")/.."

# command -> Debian package
declare -A tools=([ip]=iproute2 [mkfs.ext4]=e2fsprogs [nft]=nftables [ping]=iputils-ping)
missing=()
for cmd in "${!tools[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${tools[$cmd]}")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "==> installing ${missing[*]}"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "==> missing ${missing[*]}: tests that need them will skip"
    fi
fi
[ "$(id -u)" = 0 ] || echo "==> not root: privileged and end-to-end tests will print SKIPPED"

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --all-features --quiet -- -D warnings
echo "==> cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --all-features 2>&1 | tee "$log"
# One closing line for the whole cargo run (its own last line is often an empty doc-test).
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "cargo tests: %d passed, %d failed, %d skipped\n", p, f, i }' "$log"
echo "==> VM suite (tests/vm/run.sh: a QEMU guest with systemd; see docs/testing.md)"
tests/vm/run.sh
