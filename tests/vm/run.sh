#!/usr/bin/env bash
# The VM stage of the test suite (scripts/test.sh runs it after cargo test):
#
#   tests/vm/run.sh [SCENARIO | GUEST/SCENARIO ...]
#
# No argument: every scenario on every guest. SCENARIO: that scenario on every guest;
# GUEST/SCENARIO (e.g. bullseye/kill9): on that guest only. Names: suite.py --list.
# CHAOS_VM_GUESTS (default "bookworm bullseye") picks the guests, in the order they run.
#
# 1. QEMU, qemu-img, mmdebstrap: installed with apt-get when missing (as root).
# 2. The guest images: reused from $CHAOS_VM_CACHE/images/<guest>-<hash of build-image.sh and
#    the guest>, else built; every guest's current image is kept, older recipes are deleted.
# 3. The binaries every guest gets, static x86_64-unknown-linux-musl debug builds (failpoints:
#    CHAOS_AGENT_CRASH_AT): chaos-agent, chaos-control (the daemon scenarios' control plane)
#    and fault-network's privileged test binary. The rustup target and musl-tools are
#    installed when missing (as root).
# 4. suite.py once per guest, one after the other (each boots one VM, snapshots it, runs each
#    scenario from the snapshot). Results are named GUEST/SCENARIO.
#
# Policy: in CI (CI=true) anything that prevents the VM suite from running FAILS the stage.
# Elsewhere, a machine without QEMU or the musl toolchain (and without root to install them)
# SKIPS with the reason. The last line is always one "vm: N passed, M failed[, K skipped]"
# over every guest. See docs/testing.md.
set -euo pipefail

# Everything is in main, so bash has parsed the whole file before running any of it: editing
# this script while a run is under way cannot change what that run does.
main() {
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
export CHAOS_VM_CACHE=${CHAOS_VM_CACHE:-/var/tmp/chaos-agent-vm}
export CHAOS_VM_GUESTS=${CHAOS_VM_GUESTS:-bookworm bullseye}
in_ci=false; [ "${CI:-}" = true ] && in_ci=true
MUSL=x86_64-unknown-linux-musl

command -v python3 >/dev/null || { nplan=0; give_up "python3 is not installed"; }
# what runs: GUEST/SCENARIO lines (suite.py checks the names and the guests)
plan=$(python3 "$HERE/suite.py" --plan "$@") || { echo "vm: 0 passed, 1 failed"; exit 1; }
nplan=$(grep -c . <<<"$plan" || true)
mapfile -t guests < <(cut -d/ -f1 <<<"$plan" | awk 'NF && !seen[$0]++')
[ "${CHAOS_VM_SKIP:-}" = 1 ] && give_up "CHAOS_VM_SKIP=1"

# ---- 1. tools (the image builders only when an image must be built)
need_tools() {
    local missing=() g
    command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
    command -v qemu-img >/dev/null || missing+=(qemu-utils)
    for g in "${guests[@]}"; do
        [ -f "$(python3 "$HERE/vm.py" image-dir "$g")/rootfs.ext4" ] && continue
        command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
        PATH=$PATH:/sbin:/usr/sbin command -v mkfs.ext4 >/dev/null || missing+=(e2fsprogs)
        break
    done
    command -v musl-gcc >/dev/null || missing+=(musl-tools)
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
# the Rust standard library for the musl target (rustup, as root: the toolchain is root's)
musl_std() { compgen -G "$(rustc --print target-libdir --target "$MUSL" 2>/dev/null)/libstd-*.rlib" >/dev/null; }
if ! musl_std; then
    if [ "$(id -u)" = 0 ] && command -v rustup >/dev/null; then
        echo "==> vm: rustup target add $MUSL"
        rustup target add "$MUSL" >/tmp/chaos-vm-rustup.log 2>&1 ||
            { tail -20 /tmp/chaos-vm-rustup.log; give_up "rustup target add $MUSL failed"; }
    fi
    musl_std || give_up "no Rust standard library for $MUSL (needs root and rustup: rustup target add $MUSL)"
fi

# ---- 2. images (cached by guest and the hash of build-image.sh)
mkdir -p "$CHAOS_VM_CACHE/images"
for g in "${guests[@]}"; do
    image=$(python3 "$HERE/vm.py" image-dir "$g")
    if [ -f "$image/rootfs.ext4" ]; then
        echo "==> vm: reusing the $g image $image"
        continue
    fi
    [ "$(id -u)" = 0 ] || give_up "no cached $g image in $image and building one needs root"
    exec 9>"$CHAOS_VM_CACHE/images/.lock"
    flock 9  # one build at a time; a concurrent run waits for it, then reuses it
    if [ ! -f "$image/rootfs.ext4" ]; then
        echo "==> vm: building the $g image $(basename "$image") (about 1-2 min)"
        tmp="$image.tmp.$$"
        rm -rf "$tmp"
        "$HERE/build-image.sh" "$tmp" "$g" > "$CHAOS_VM_CACHE/images/build-$g.log" 2>&1 ||
            { tail -30 "$CHAOS_VM_CACHE/images/build-$g.log"; rm -rf "$tmp"; give_up "building the $g image failed"; }
        tail -1 "$CHAOS_VM_CACHE/images/build-$g.log"
        # drop images of older recipes (every guest's current image stays), then publish
        # this one atomically
        keep=("$(basename "$tmp")")
        for k in $(python3 "$HERE/vm.py" guests); do
            keep+=("$(basename "$(CHAOS_VM_IMAGE='' python3 "$HERE/vm.py" image-dir "$k")")")
        done
        for d in "$CHAOS_VM_CACHE/images"/*/; do
            d=$(basename "$d")
            printf '%s\n' "${keep[@]}" | grep -qxF -- "$d" || rm -rf "${CHAOS_VM_CACHE:?}/images/$d"
        done
        mv "$tmp" "$image"
    fi
    exec 9>&-
done

# ---- 3. binaries for the guests: static musl, the same for every guest
cd "$REPO"
TARGET=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
export CC_x86_64_unknown_linux_musl=${CC_x86_64_unknown_linux_musl:-musl-gcc}
echo "==> vm: cargo build --target $MUSL -p chaos-agent -p chaos-control (debug: failpoints on)"
cargo build --quiet --target "$MUSL" -p chaos-agent --bin chaos-agent -p chaos-control --bin chaos-control ||
    build_failed "chaos-agent or chaos-control does not build for $MUSL"
export CHAOS_VM_AGENT="$TARGET/$MUSL/debug/chaos-agent"
export CHAOS_VM_CONTROL="$TARGET/$MUSL/debug/chaos-control"
if cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; sys.exit(all(p["name"] != "fault-network" for p in json.load(sys.stdin)["packages"]))'; then
    echo "==> vm: cargo test --target $MUSL -p fault-network --features privileged-tests --no-run"
    if exe=$(cargo test --quiet --target "$MUSL" -p fault-network --features privileged-tests --no-run --message-format=json 2>/tmp/chaos-vm-fnet.log |
             python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "privileged":
        print(m["executable"])') && [ -n "$exe" ]; then
        export CHAOS_VM_NETWORK_TESTS=$exe
    else
        $in_ci && { cat /tmp/chaos-vm-fnet.log; build_failed "fault-network's privileged tests do not build"; }
        export CHAOS_VM_NETWORK_TESTS_WHY="fault-network's privileged tests do not build (see /tmp/chaos-vm-fnet.log)"
    fi
else
    export CHAOS_VM_NETWORK_TESTS_WHY="fault-network is not a workspace member yet"
fi
# static: no program interpreter, no shared library (glibc 2.31 runs what glibc 2.36 built
# only if it never loads glibc)
for b in "$CHAOS_VM_AGENT" "$CHAOS_VM_CONTROL" ${CHAOS_VM_NETWORK_TESTS:+"$CHAOS_VM_NETWORK_TESTS"}; do
    if readelf -lW "$b" | grep -q 'Requesting program interpreter' || readelf -dW "$b" | grep -q '(NEEDED)'; then
        build_failed "$b is not a static binary: $(readelf -dW "$b" | grep '(NEEDED)' | tr -s ' ' | tr '\n' ';')"
    fi
done

# The packages scenario's two .deb files: these same static binaries packaged by
# scripts/release.sh (--bin-dir: no second build), the second with a higher version.
pkgs=$CHAOS_VM_CACHE/tmp/pkgs-$$
if grep -q '/packages$' <<<"$plan"; then
    v=$("$CHAOS_VM_AGENT" --version | awk '{print $2}')
    echo "==> vm: scripts/release.sh --bin-dir ... --formats deb (versions $v and $v+vmupgrade)"
    mkdir -p "$CHAOS_VM_CACHE/tmp"
    if scripts/release.sh --bin-dir "$TARGET/$MUSL/debug" --formats deb --out "$pkgs/v1" >/tmp/chaos-vm-pkg.log 2>&1 &&
       scripts/release.sh --bin-dir "$TARGET/$MUSL/debug" --formats deb --version "$v+vmupgrade" --out "$pkgs/v2" >>/tmp/chaos-vm-pkg.log 2>&1; then
        export CHAOS_VM_DEB=$pkgs/v1/chaos-agent_${v}_amd64.deb
        export CHAOS_VM_DEB_UPGRADE=$pkgs/v2/chaos-agent_${v}+vmupgrade_amd64.deb
    else
        tail -30 /tmp/chaos-vm-pkg.log
        build_failed "scripts/release.sh could not package the static binaries (see /tmp/chaos-vm-pkg.log)"
    fi
fi

# ---- 4. the scenarios: one guest after the other (2 cores, TCG), one VM each
results=$(mktemp)
vm_name=""
trap '[ -z "$vm_name" ] || VM_NAME=$vm_name python3 "$HERE/vm.py" down >/dev/null 2>&1 || true; rm -rf "$results" "$pkgs"' EXIT
export CHAOS_VM_RESULTS=$results
# one budget for the scenarios of every guest
deadline=$(($(date +%s) + ${CHAOS_VM_STAGE_TIMEOUT:-1500}))
for g in "${guests[@]}"; do
    mapfile -t names < <(grep "^$g/" <<<"$plan" | cut -d/ -f2)
    left=$((deadline - $(date +%s)))
    if [ "$left" -le 0 ]; then
        echo "vm: $g: not run, CHAOS_VM_STAGE_TIMEOUT (${CHAOS_VM_STAGE_TIMEOUT:-1500} s) used up"
        continue
    fi
    vm_name="suite-$$-$g"
    echo "==> vm: $g: scenarios (boot once, snapshot, restore per scenario)"
    CHAOS_VM_GUEST=$g VM_NAME=$vm_name timeout --signal=TERM "$left" \
        python3 "$HERE/suite.py" "${names[@]}" || true
    VM_NAME=$vm_name python3 "$HERE/vm.py" down >/dev/null 2>&1 || true
    vm_name=""
done
passed=$(grep -c ' PASS$' "$results" || true)
skipped=$(grep -c ' SKIP$' "$results" || true)
# a scenario without a result (timeout, crash of the runner) failed
failed=$((nplan - passed - skipped))
echo "vm: $passed passed, $failed failed$([ "$skipped" = 0 ] || echo ", $skipped skipped")"
[ "$failed" = 0 ]
}

give_up() {  # reason
    if $in_ci; then
        echo "vm: FAILED: $1 (CI=true: the VM suite must run in CI)"
        echo "vm: 0 passed, $nplan failed"
        exit 1
    fi
    echo "SKIPPED VM suite: $1"
    echo "vm: 0 passed, 0 failed, $nplan skipped"
    exit 0
}

build_failed() {  # reason: the code does not build, which is a failure anywhere
    echo "vm: FAILED: $1"
    echo "vm: 0 passed, $nplan failed"
    exit 1
}

main "$@"
exit $?
