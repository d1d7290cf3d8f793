#!/usr/bin/env bash
# The VM stage of the test suite (scripts/test.sh runs it after cargo test):
#
#   tests/vm/run.sh [SCENARIO...]      all scenarios, or only the named ones (suite.py --list)
#
# 1. QEMU, qemu-img, mmdebstrap: installed with apt-get when missing (as root).
# 2. The guest image: reused from $CHAOS_VM_CACHE/images/<hash of build-image.sh>, else built.
# 3. The debug chaos-agent (failpoints: CHAOS_AGENT_CRASH_AT), chaos-control (the daemon
#    scenarios' control plane) and fault-network's privileged test binary are built for the
#    guest (same glibc as the host: both are Debian bookworm).
# 4. suite.py boots one VM, snapshots it, runs each scenario from the snapshot.
#
# Policy: in CI (CI=true) anything that prevents the VM suite from running FAILS the stage.
# Elsewhere, a machine without QEMU (and without root to install it) SKIPS with the reason.
# The last line is always "vm: N passed, M failed[, K skipped]". See docs/testing.md.
set -euo pipefail

# Everything is in main, so bash has parsed the whole file before running any of it: editing
# this script while a run is under way cannot change what that run does.
main() {
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
export CHAOS_VM_CACHE=${CHAOS_VM_CACHE:-/var/tmp/chaos-agent-vm}
in_ci=false; [ "${CI:-}" = true ] && in_ci=true

nscen() { python3 "$HERE/suite.py" --list | wc -l; }
give_up() {  # reason
    if $in_ci; then
        echo "vm: FAILED: $1 (CI=true: the VM suite must run in CI)"
        echo "vm: 0 passed, $(nscen) failed"
        exit 1
    fi
    echo "SKIPPED VM suite: $1"
    echo "vm: 0 passed, 0 failed, $(nscen) skipped"
    exit 0
}

command -v python3 >/dev/null || give_up "python3 is not installed"
[ "${CHAOS_VM_SKIP:-}" = 1 ] && give_up "CHAOS_VM_SKIP=1"

# ---- 1. tools (the image builders only when the image must be built)
IMAGE=$(python3 "$HERE/vm.py" image-dir)
need_tools() {
    local missing=()
    command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
    command -v qemu-img >/dev/null || missing+=(qemu-utils)
    if [ ! -f "$IMAGE/rootfs.ext4" ]; then
        command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
        PATH=$PATH:/sbin:/usr/sbin command -v mkfs.ext4 >/dev/null || missing+=(e2fsprogs)
    fi
    echo "${missing[@]:-}"
}
missing=$(need_tools)
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "==> vm: installing $missing"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        # shellcheck disable=SC2086
        if ! apt-get install -y -qq --no-install-recommends $missing qemu-utils >/tmp/chaos-vm-apt.log 2>&1; then
            # A newer qemu-utils (e.g. from backports) Breaks the distribution's
            # qemu-system-common: install the matching pair from the distribution.
            v=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
            # shellcheck disable=SC2086
            apt-get install -y -qq --no-install-recommends --allow-downgrades \
                $missing "qemu-system-x86=$v" "qemu-utils=$v" >>/tmp/chaos-vm-apt.log 2>&1 ||
                { tail -20 /tmp/chaos-vm-apt.log; give_up "apt-get could not install $missing"; }
        fi
        missing=$(need_tools)
    fi
    [ -z "$missing" ] || give_up "missing $missing (needs root to apt-get install it)"
fi

# ---- 2. image (cached by the hash of build-image.sh)
if [ ! -f "$IMAGE/rootfs.ext4" ]; then
    [ "$(id -u)" = 0 ] || give_up "no cached guest image in $IMAGE and building one needs root"
    mkdir -p "$CHAOS_VM_CACHE/images"
    exec 9>"$CHAOS_VM_CACHE/images/.lock"
    flock 9  # one build at a time; a concurrent run waits for it, then reuses it
    if [ ! -f "$IMAGE/rootfs.ext4" ]; then
        echo "==> vm: building the guest image $(basename "$IMAGE") (about 1-2 min)"
        tmp="$IMAGE.tmp.$$"
        rm -rf "$tmp"
        "$HERE/build-image.sh" "$tmp" > "$CHAOS_VM_CACHE/images/build.log" 2>&1 ||
            { tail -30 "$CHAOS_VM_CACHE/images/build.log"; rm -rf "$tmp"; give_up "building the guest image failed"; }
        tail -1 "$CHAOS_VM_CACHE/images/build.log"
        # drop images of older recipes, then publish this one atomically
        find "$CHAOS_VM_CACHE/images" -mindepth 1 -maxdepth 1 -type d ! -name "$(basename "$tmp")" -exec rm -rf {} +
        mv "$tmp" "$IMAGE"
    fi
    exec 9>&-
else
    echo "==> vm: reusing the guest image $IMAGE"
fi

# ---- 3. binaries for the guest
cd "$REPO"
TARGET=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
echo "==> vm: cargo build -p chaos-agent (debug: failpoints on)"
cargo build --quiet -p chaos-agent --bin chaos-agent
export CHAOS_VM_AGENT="$TARGET/debug/chaos-agent"
# the daemon scenarios' control plane, served inside the guest
echo "==> vm: cargo build -p chaos-control"
cargo build --quiet -p chaos-control --bin chaos-control
export CHAOS_VM_CONTROL="$TARGET/debug/chaos-control"
if cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; sys.exit(all(p["name"] != "fault-network" for p in json.load(sys.stdin)["packages"]))'; then
    echo "==> vm: cargo test -p fault-network --features privileged-tests --no-run"
    if exe=$(cargo test --quiet -p fault-network --features privileged-tests --no-run --message-format=json 2>/tmp/chaos-vm-fnet.log |
             python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "privileged":
        print(m["executable"])') && [ -n "$exe" ]; then
        export CHAOS_VM_NETWORK_TESTS=$exe
    else
        $in_ci && { cat /tmp/chaos-vm-fnet.log; echo "vm: FAILED: fault-network's privileged tests do not build"; echo "vm: 0 passed, $(nscen) failed"; exit 1; }
        export CHAOS_VM_NETWORK_TESTS_WHY="fault-network's privileged tests do not build (see /tmp/chaos-vm-fnet.log)"
    fi
else
    export CHAOS_VM_NETWORK_TESTS_WHY="fault-network is not a workspace member yet"
fi

# ---- 4. the scenarios (one VM; taken down on any exit)
export VM_NAME="suite-$$"
trap 'python3 "$HERE/vm.py" down >/dev/null 2>&1 || true' EXIT
echo "==> vm: scenarios (boot once, snapshot, restore per scenario)"
timeout --signal=TERM "${CHAOS_VM_STAGE_TIMEOUT:-1500}" python3 "$HERE/suite.py" "$@"
}

main "$@"
exit $?
