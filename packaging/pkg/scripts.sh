# Shared body of the chaos-agent package's maintainer scripts (deb: preinst, postinst,
# prerm, postrm; rpm: %pre, %post, %preun, %postun). scripts/release.sh pastes this file into
# each of them, followed by one line `pkg_event EVENT` that names what is happening; the
# deb and rpm entry points map their own arguments to these events (packaging/pkg/deb-*,
# packaging/pkg/rpm-*). POSIX sh: Debian's /bin/sh is dash, CentOS's is bash.
#
# Events and what they do:
#   pre-upgrade      before the new files replace the old ones: stop the running agent (its
#                    SIGTERM handler aborts a run, reverts every fault and reports), so the
#                    old binary reverts what the old binary applied.
#   post-install     first install: create /var/lib/chaos-agent (0700; systemd 235+ would, 219
#                    does not), enable the unit, start it only if a configuration exists
#                    (without one the daemon exits 2 and the unit would sit failed); else
#                    print what to do next.
#   post-upgrade     the same, and start the new agent if it was running before (or is
#                    enabled and configured): its ExecStartPre `chaos-agent recover` and the
#                    daemon read the old journal.
#   pre-remove       stop the agent (it reverts), run `chaos-agent recover` to be sure, and
#                    REFUSE to go on (exit 1, the package stays installed, the agent is
#                    started again if it ran) when the host is not clean or cannot be checked:
#                    removing the binary would leave the journal with no tool to read it and
#                    no recovery at boot. CHAOS_AGENT_REMOVE_ANYWAY=1 goes on (after printing
#                    what is left), and marks the state directory so that purge keeps it.
#                    Then disable the unit.
#   post-remove      forget the removed unit (daemon-reload, a leftover wants/ symlink).
#   purge            (deb only) delete /etc/chaos-agent, the unit's drop-ins and
#                    /var/lib/chaos-agent, unless a forced removal left faults on the host:
#                    then the state directory (the journal of what is left) is kept.
#   abort-upgrade    (deb) a failed upgrade put the old files back: start it again if it ran.
#   abort-remove     (deb) a removal was refused: nothing to do (pre-remove restarted it).
#
# Where systemd is not running (a container, a chroot, an image build) every systemctl
# action that needs it is skipped with a note; enabling still works (systemctl edits
# symlinks offline).

unit=chaos-agent.service
bin=/usr/bin/chaos-agent
etc=/etc/chaos-agent
state=/var/lib/chaos-agent
# Written by pre-upgrade when the agent was running, read by post-upgrade.
was_active=/run/chaos-agent.pkg-was-active
# Written by a forced pre-remove: purge keeps the state directory.
not_clean=$state/REMOVED-WITH-FAULTS-LEFT
# Written by pre-remove: a later install of the package (dpkg calls it an upgrade from the
# removed version whose configuration files were kept) enables the unit again.
removed=$state/.removed-by-package

say() { echo "chaos-agent: $*"; }
warn() { echo "chaos-agent: $*" >&2; }
have_systemctl() { command -v systemctl >/dev/null 2>&1; }
systemd_running() { [ -d /run/systemd/system ] && have_systemctl; }

configured() {
    [ -f "$etc/agent.toml" ] && return 0
    for f in "$etc"/config.d/*.toml; do
        [ -f "$f" ] && return 0
    done
    return 1
}

make_dirs() {
    [ -d "$state" ] || install -d -m 0700 "$state"
    [ -d "$etc/config.d" ] || install -d -m 0700 "$etc/config.d"
}

stop_agent() { # why
    if ! systemd_running; then
        say "systemd is not running here: no service to stop"
        return 0
    fi
    # active, reloading, or activating (e.g. waiting to restart): stop it; the daemon, if it
    # runs, reverts every fault it holds before it exits.
    st=$(systemctl is-active "$unit" 2>/dev/null || true)
    case $st in
    active | reloading | activating | deactivating) ;;
    *) return 0 ;;
    esac
    # (deactivating: someone is stopping it already; it is not started again afterwards)
    if [ "$st" != deactivating ]; then
        : >"$was_active" 2>/dev/null || true
    fi
    say "stopping $unit ($1; the daemon reverts every fault it holds)"
    systemctl stop "$unit" ||
        warn "stopping $unit failed; the next start's recovery (ExecStartPre) reverts what is left"
}

start_agent() {
    # Debian's policy-rc.d (e.g. in images that must not start services): 101 = forbidden.
    # (deb-systemd-invoke would honour it too, but starts only enabled units: an agent that
    # was started by hand, not enabled, would not come back after an upgrade.)
    if [ -x /usr/sbin/policy-rc.d ]; then
        prc=0
        /usr/sbin/policy-rc.d "$unit" start || prc=$?
        if [ "$prc" = 101 ]; then
            say "policy-rc.d forbids starting $unit: not started"
            return 0
        fi
    fi
    systemctl start "$unit"
}

next_steps() { # (chaos_agent_next_steps: packaging/next-steps.sh, put in front by release.sh)
    chaos_agent_next_steps "$etc" "installed and enabled, but not started" "systemctl start chaos-agent"
}

post_install() { # install | upgrade
    make_dirs
    rm -f "$not_clean"
    enable=no
    if [ "$1" = install ] || [ -e "$removed" ]; then
        enable=yes
    fi
    rm -f "$removed"
    if ! have_systemctl; then
        warn "systemctl not found: run \`chaos-agent recover\` at boot and \`chaos-agent daemon\` by other means"
        rm -f "$was_active"
        return 0
    fi
    if systemd_running; then
        systemctl daemon-reload || warn "systemctl daemon-reload failed"
    fi
    if [ "$enable" = yes ]; then
        systemctl enable "$unit" || warn "systemctl enable $unit failed"
    fi
    start=no
    if [ "$1" = upgrade ] && [ -e "$was_active" ]; then
        start=yes
    elif systemctl is-enabled --quiet "$unit" 2>/dev/null && configured; then
        start=yes
    fi
    rm -f "$was_active"
    if ! systemd_running; then
        say "systemd is not running here: $unit is not started (it starts at the next boot when enabled and configured)"
        return 0
    fi
    if [ "$start" = yes ] && configured; then
        say "starting $unit (its recovery runs first)"
        systemctl reset-failed "$unit" >/dev/null 2>&1 || true
        if ! start_agent; then
            warn "$unit did not start; see: systemctl status chaos-agent; journalctl -u chaos-agent"
        fi
    elif ! configured; then
        next_steps
    else
        say "$unit is not enabled; not started (systemctl enable --now chaos-agent)"
    fi
}

refuse_remove() { # message
    cat >&2 <<EOT

!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
!! chaos-agent: $1
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
EOT
    if [ -x "$bin" ] && [ -d "$state" ]; then
        echo "What the journal holds (\`chaos-agent status\`):" >&2
        "$bin" status >&2 || true
    fi
    if [ "${CHAOS_AGENT_REMOVE_ANYWAY:-}" = 1 ]; then
        warn "CHAOS_AGENT_REMOVE_ANYWAY=1: removing anyway. Undo what is listed above by hand."
        warn "$state is kept, also by a purge (delete it yourself once the host is clean)."
        if [ -d "$state" ]; then
            { echo "chaos-agent was removed with CHAOS_AGENT_REMOVE_ANYWAY=1 on $(date -u +%Y-%m-%dT%H:%M:%SZ): $1"
              "$bin" status 2>&1 || true; } >"$not_clean" 2>/dev/null || true
        fi
        return 0
    fi
    cat >&2 <<EOT
The package is NOT removed: without chaos-agent nothing could read the journal or revert at
boot. Next:
  chaos-agent status                  what is left on the host, with the commands to undo it
  (undo it by hand), then:
  chaos-agent forget FAULT_ID         for each fault you undid
  chaos-agent recover                 must say the host is clean; then remove the package again
To remove it anyway, leaving those faults on the host:
  CHAOS_AGENT_REMOVE_ANYWAY=1 apt-get remove chaos-agent     (or: ... rpm -e chaos-agent)
EOT
    if [ -e "$was_active" ] && systemd_running; then
        say "starting $unit again (it was running)"
        start_agent || warn "$unit did not start again"
    fi
    rm -f "$was_active"
    exit 1
}

pre_remove() {
    stop_agent "removing the package"
    if [ ! -x "$bin" ]; then
        [ -d "$state/journal" ] &&
            refuse_remove "$bin is missing: the journal in $state cannot be recovered; the host may not be clean"
    elif [ -d "$state" ]; then
        rc=0
        "$bin" recover || rc=$?
        case $rc in
        0) say "recovery: the host is clean" ;;
        3) refuse_remove "THE HOST IS NOT CLEAN: a revert needs a person (chaos-agent recover exited 3)" ;;
        4) refuse_remove "another chaos-agent holds $state (a run in progress?): the host cannot be checked (chaos-agent recover exited 4)" ;;
        *) refuse_remove "chaos-agent recover failed (exit $rc): the host may not be clean" ;;
        esac
    else
        say "no state directory $state: nothing to recover"
    fi
    rm -f "$was_active"
    if have_systemctl; then
        systemctl disable "$unit" >/dev/null 2>&1 || true
    fi
    if [ -d "$state" ]; then
        : >"$removed" 2>/dev/null || true
    fi
}

post_remove() {
    # The unit file is gone: a wants/ link systemctl could not remove would dangle.
    for l in /etc/systemd/system/*.wants/"$unit"; do
        if [ -L "$l" ] && [ ! -e "$l" ]; then
            rm -f "$l"
        fi
    done
    if systemd_running; then
        systemctl daemon-reload || true
        systemctl reset-failed "$unit" >/dev/null 2>&1 || true
    fi
}

purge() {
    rm -rf "$etc" "/etc/systemd/system/$unit.d"
    if [ -e "$not_clean" ]; then
        warn "KEEPING $state: chaos-agent was removed with faults left on the host (see $not_clean)"
    else
        rm -rf "$state"
        say "purged $etc and $state"
    fi
    rm -f "$was_active"
}

pkg_event() {
    case $1 in
    pre-install) ;;
    pre-upgrade) stop_agent "upgrading the package" ;;
    post-install) post_install install ;;
    post-upgrade) post_install upgrade ;;
    pre-remove) pre_remove ;;
    post-remove) post_remove ;;
    purge) post_remove; purge ;;
    # a failed upgrade put the old files back: start it again if it ran
    abort-upgrade) post_install upgrade ;;
    abort-remove) ;;
    *)
        warn "unknown package event: $1"
        exit 1
        ;;
    esac
}
