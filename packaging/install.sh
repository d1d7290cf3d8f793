#!/bin/sh
# Install chaos-agent as a systemd service on this machine (as root):
#   packaging/install.sh [path/to/chaos-agent]     default: target/release/chaos-agent
# Copies the binary to /usr/local/bin and the unit to /etc/systemd/system, then enables and
# starts it (its ExecStartPre reverts whatever an earlier run left behind).
set -eu
cd "$(dirname "$0")/.."
bin=${1:-${CARGO_TARGET_DIR:-target}/release/chaos-agent}
[ -x "$bin" ] || { echo "install.sh: $bin not found; run: cargo build --release -p chaos-agent" >&2; exit 1; }
[ -d /run/systemd/system ] || { echo "install.sh: systemd is not the init system here" >&2; exit 1; }
install -m 0755 "$bin" /usr/local/bin/chaos-agent
install -m 0644 packaging/chaos-agent.service /etc/systemd/system/chaos-agent.service
systemctl daemon-reload
systemctl enable --now chaos-agent.service
systemctl --no-pager status chaos-agent.service
