#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, unit tests, and (as root) the
# privileged tests against the real kernel plus the end-to-end tests of chaos-agent; then the
# VM suite (tests/vm/run.sh): kill -9, hard resets, netem and services under a real systemd.
# Installs the few system tools the tests use when they are missing (needs root for that).
set -euo pipefail
cd "$(dirname "$0")/.."

# command -> Debian package
# (rpmbuild, dpkg-deb, musl-gcc, readelf: the package test, tests/tests/packaging.rs, builds
# and reads back the .deb and .rpm of the static musl binaries)
declare -A tools=([ip]=iproute2 [mkfs.ext4]=e2fsprogs [nft]=nftables [ping]=iputils-ping
    [rpmbuild]=rpm [dpkg-deb]=dpkg [musl-gcc]=musl-tools [readelf]=binutils)
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
# PostgreSQL for chaos-control's store tests (control-plane/tests/postgres.rs): they start a
# private cluster of their own (initdb + postgres on a free port, removed at exit), so only the
# binaries are needed. Debian puts them in /usr/lib/postgresql/N/bin, off PATH.
if ! command -v initdb >/dev/null 2>&1 && ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null &&
    ! compgen -G '/usr/pgsql-*/bin/initdb' >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "==> installing postgresql"
        # Without Debian's default cluster: the package would create "main" and start it on
        # port 5432. Its postinst asks pg_createcluster's configuration, which reads this
        # directory (what the official postgres Docker image does too).
        mkdir -p /etc/postgresql-common/createcluster.d
        echo 'create_main_cluster = false' >/etc/postgresql-common/createcluster.d/no-main-cluster.conf
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    else
        echo "==> PostgreSQL not found: the PostgreSQL store tests will skip"
    fi
fi
[ "$(id -u)" = 0 ] || echo "==> not root: privileged and end-to-end tests will print SKIPPED"
# The shipped binaries are static musl builds: the package test and the VM suite build them.
musl=x86_64-unknown-linux-musl
if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx "$musl"; then
    echo "==> rustup target add $musl"
    rustup target add "$musl" >/dev/null 2>&1 || echo "==> rustup target add $musl failed: the package test will skip"
fi

# The last line is always one summary of everything: "summary: ok | ..." or
# "summary: FAILED (what) | ...". fmt and clippy stop the run early; a failing cargo test does
# not: every test binary runs (--no-fail-fast), then the VM suite. Exit status 1 if anything
# failed.
early_fail() {  # what
    echo "summary: FAILED ($1) | cargo tests and VM suite not run"
    exit 1
}
echo "==> cargo fmt --check"
cargo fmt --all -- --check || early_fail "cargo fmt --check"
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --all-features --quiet -- -D warnings || early_fail "cargo clippy"

failed=()
log=$(mktemp)
vm_log=$(mktemp)
trap 'rm -f "$log" "$vm_log"' EXIT

echo "==> cargo test"
cargo_rc=0
cargo test --workspace --all-features --no-fail-fast 2>&1 | tee "$log" || cargo_rc=$?
# Summed over every test binary and the doc-tests (cargo's own last line is only the last one's).
cargo_line=$(awk '/^test result:/ { p += $4; f += $6; i += $8 }
    END { printf "cargo tests: %d passed, %d failed, %d ignored", p, f, i }' "$log")
if [ "$cargo_rc" != 0 ]; then
    failed+=("cargo test")
    # cargo lists the targets that failed, also those that crashed (no "test result" line);
    # none listed: something did not build. (The backquotes are cargo's, not the shell's.)
    # shellcheck disable=SC2016
    targets=$(awk '/^error: [0-9]+ targets? failed:$/ { on = 1; next }
        on && /^ +`.*`$/ { gsub(/^ +`|`$/, ""); t = t (t == "" ? "" : "; ") $0 }
        END { print t }' "$log")
    if [ -n "$targets" ]; then
        cargo_line+=" (failed targets: $targets)"
    else
        cargo_line+=" (cargo test exited $cargo_rc, no failed targets listed: a build error?)"
    fi
fi
echo "$cargo_line"

echo "==> VM suite (tests/vm/run.sh: a QEMU guest with systemd; see docs/testing.md)"
vm_rc=0
tests/vm/run.sh 2>&1 | tee "$vm_log" || vm_rc=$?
vm_line=$(grep -E '^vm: [0-9]+ passed' "$vm_log" | tail -n 1 || true)
[ -n "$vm_line" ] || vm_line="vm: no result (tests/vm/run.sh exited $vm_rc)"
[ "$vm_rc" = 0 ] || failed+=("VM suite")

if [ ${#failed[@]} -eq 0 ]; then
    echo "summary: ok | $cargo_line | $vm_line"
else
    what=$(printf '%s, ' "${failed[@]}")
    echo "summary: FAILED (${what%, }) | $cargo_line | $vm_line"
    exit 1
fi
