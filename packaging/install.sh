#!/bin/sh
# Install the chaos-agent daemon as a systemd service on this machine (as root):
#   packaging/install.sh [path/to/chaos-agent]     default: target/release/chaos-agent
#
# Installs:
#   /usr/local/bin/chaos-agent                      the binary
#   /etc/systemd/system/chaos-agent.service         the unit (packaging/chaos-agent.service)
#   /etc/chaos-agent/                 (0755)        configuration directory
#   /etc/chaos-agent/agent.toml.sample              every key, documented (replaced on update)
#   /etc/chaos-agent/config.d/        (0700)        drop-ins, e.g. 20-control.toml
#   /var/lib/chaos-agent/             (0700)        state (systemd 235+ also creates it)
#   /usr/local/share/doc/chaos-agent/README.md      the unit's Documentation=
# An existing agent.toml or config.d/ file is never touched.
#
# Then, only if a configuration exists (agent.toml or config.d/*.toml), enables and starts
# the service (restarts it if it was running, so the new binary is used: that aborts and
# reverts an experiment in progress). Otherwise it prints what to do next.
#
# Exit status: 0 installed (and started when configured), 1 error.
set -eu
cd "$(dirname "$0")/.."

etc=/etc/chaos-agent
unit=chaos-agent.service

die() {
    echo "install.sh: $*" >&2
    exit 1
}

bin=${1:-${CARGO_TARGET_DIR:-target}/release/chaos-agent}
[ "$(id -u)" -eq 0 ] || die "run as root (it installs to /usr/local/bin, /etc and /var/lib)"
[ -x "$bin" ] || die "$bin not found; run: cargo build --release -p chaos-agent"
[ -d /run/systemd/system ] || die "systemd is not the init system here; run \`chaos-agent recover\` at boot by other means"
"$bin" --version >/dev/null 2>&1 || die "$bin does not run on this machine"
# The unit's main process is `chaos-agent daemon`: a build without it would never start.
"$bin" daemon --help >/dev/null 2>&1 ||
    die "$bin has no \`daemon\` command, which the unit runs; install a build that has it"

install -m 0755 "$bin" /usr/local/bin/chaos-agent
install -m 0644 packaging/chaos-agent.service "/etc/systemd/system/$unit"
install -d -m 0755 "$etc"
install -m 0644 packaging/agent.toml.sample "$etc/agent.toml.sample"
[ -d "$etc/config.d" ] || install -d -m 0700 "$etc/config.d"
[ -d /var/lib/chaos-agent ] || install -d -m 0700 /var/lib/chaos-agent
install -d -m 0755 /usr/local/share/doc/chaos-agent
install -m 0644 README.md /usr/local/share/doc/chaos-agent/README.md
systemctl daemon-reload
echo "installed /usr/local/bin/chaos-agent ($(/usr/local/bin/chaos-agent --version)) and $unit"

configured=no
[ -f "$etc/agent.toml" ] && configured=yes
for f in "$etc"/config.d/*.toml; do
    [ -f "$f" ] && configured=yes
done

if [ "$configured" = no ]; then
    . packaging/next-steps.sh
    chaos_agent_next_steps "$etc" "installed but not started" "systemctl enable --now chaos-agent"
    exit 0
fi

if systemctl is-active --quiet "$unit"; then
    echo "restarting $unit (an experiment in progress is aborted and reverted)"
    systemctl enable "$unit"
    systemctl restart "$unit" || {
        systemctl --no-pager status "$unit" || true
        die "$unit did not restart; see: journalctl -u chaos-agent"
    }
else
    systemctl enable "$unit"
    systemctl reset-failed "$unit" 2>/dev/null || true
    systemctl start "$unit" || {
        systemctl --no-pager status "$unit" || true
        die "$unit did not start; see: journalctl -u chaos-agent"
    }
fi
systemctl --no-pager status "$unit" || true
