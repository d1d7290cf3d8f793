#!/usr/bin/env bash
# Runs examples/experiments/demo.toml for real: it freezes a worker process this script
# starts and fills a 64 MiB tmpfs this script mounts, then shows the host is back.
# Needs root (mount, and the agent's state directory). Touches nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."

demo=/tmp/chaos-demo
if [ -n "${CHAOS_AGENT_BIN:-}" ]; then      # a binary built already (the tests use this)
    agent=("$CHAOS_AGENT_BIN" --state-dir "$demo/state")
else
    echo "==> building chaos-agent (release)"
    cargo build --release --quiet -p chaos-agent
    agent=(target/release/chaos-agent --state-dir "$demo/state")
fi

worker=""
cleanup() {
    [ -n "$worker" ] && kill "$worker" 2>/dev/null || true
    # Whatever the run left (nothing, unless it was killed) is reverted before the tmpfs
    # goes; then everything this script made is removed, so no later run of demo.toml
    # can find an empty /tmp/chaos-demo/data on the root filesystem.
    local clean=yes
    [ -x "${agent[0]}" ] && { "${agent[@]}" recover >/dev/null 2>&1 || clean=no; }
    mountpoint -q "$demo/data" && umount "$demo/data" || true
    rmdir "$demo/data" 2>/dev/null || true
    if [ "$clean" = yes ]; then
        rm -rf "$demo/state"
        rmdir "$demo" 2>/dev/null || true
    else
        echo "==> the host is NOT clean: see ${agent[*]} status" >&2
    fi
}
trap cleanup EXIT

mkdir -p "$demo/data"
mountpoint -q "$demo/data" || mount -t tmpfs -o size=64m chaos-demo "$demo/data"
(exec -a chaos-demo-worker sleep 600) &
worker=$!
sleep 0.2

show() {
    printf '    worker %s state: %s\n' "$worker" "$(awk '{print $3}' "/proc/$worker/stat")"
    printf '    %s: %s\n' "$demo/data" "$(df -h --output=used,size,pcent "$demo/data" | tail -1 | tr -s ' ')"
}
echo "==> before"; show
echo "==> the plan (nothing is changed by --dry-run)"
"${agent[@]}" run --dry-run examples/experiments/demo.toml
echo
echo "==> running it (Ctrl-C aborts and reverts)"
( sleep 4; echo; echo "==> meanwhile, 4 s in:"; show; echo ) &
"${agent[@]}" run examples/experiments/demo.toml
echo
echo "==> after"; show
echo "==> journal"
"${agent[@]}" status
