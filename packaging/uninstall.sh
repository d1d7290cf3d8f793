#!/bin/sh
# Remove the chaos-agent service from this machine (as root), leaving the host clean:
#   packaging/uninstall.sh [--force] [--purge] [--state-dir DIR]
#
#   1. Stops the service: on SIGTERM the daemon aborts any experiment and reverts every fault
#      (bounded by the unit's TimeoutStopSec).
#   2. Runs `chaos-agent recover`, which reverts whatever is still journaled in the state
#      directory. If the host is not clean afterwards (a revert needs a person), it stops
#      here, removes nothing (the service stays stopped but enabled, so recovery still runs
#      at boot), and exits 3: see `chaos-agent status`, undo what it lists,
#      `chaos-agent forget FAULT_ID`, and run this again. --force goes on anyway (after
#      printing `chaos-agent status`, so the manual undo commands are not lost).
#   3. Disables the service and removes the binary, the unit and the installed documentation.
#
#   --purge        also removes /etc/chaos-agent (configuration, CA certificate, registration
#                  key), the unit's drop-ins (/etc/systemd/system/chaos-agent.service.d) and the
#                  state directory (journal, identity, token, outbox)
#   --force        go on when the host is not clean or cannot be checked
#   --state-dir D  the state directory, if `[agent] state_dir` changed it
#                  (default /var/lib/chaos-agent)
#
# Exit status: 0 removed, host clean (or --force); 1 error; 2 bad arguments; 3 the host is
# not clean (nothing removed); 4 another chaos-agent holds the state directory (nothing
# removed).
set -eu

unit=chaos-agent.service
bin=/usr/local/bin/chaos-agent
etc=/etc/chaos-agent
state=/var/lib/chaos-agent
force=no
purge=no

usage() {
    sed -n '2,/^set -eu/p' "$0" | sed -e '/^set -eu/d' -e 's/^# \{0,1\}//'
}

while [ $# -gt 0 ]; do
    case $1 in
    --force) force=yes ;;
    --purge) purge=yes ;;
    --state-dir)
        [ $# -ge 2 ] || { echo "uninstall.sh: --state-dir needs a directory" >&2; exit 2; }
        state=$2
        shift
        ;;
    --state-dir=*) state=${1#--state-dir=} ;;
    -h | --help)
        usage
        exit 0
        ;;
    *)
        echo "uninstall.sh: unknown argument: $1 (see --help)" >&2
        exit 2
        ;;
    esac
    shift
done

case $state in
/*) ;;
*)
    echo "uninstall.sh: --state-dir must be an absolute path" >&2
    exit 2
    ;;
esac
[ "$(id -u)" -eq 0 ] || { echo "uninstall.sh: run as root" >&2; exit 1; }
# --purge deletes the state directory: only one that chaos-agent made (its journal/ or lock).
if [ "$purge" = yes ] && [ -e "$state" ] && [ ! -d "$state/journal" ] && [ ! -e "$state/lock" ]; then
    echo "uninstall.sh: $state does not look like a chaos-agent state directory (no journal/ or lock); not purging it" >&2
    exit 2
fi

have_systemd=no
[ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1 && have_systemd=yes

# 1. Stop: the daemon reverts on SIGTERM. `systemctl stop` waits until it has exited.
if [ "$have_systemd" = yes ] && [ -f "/etc/systemd/system/$unit" ]; then
    echo "stopping $unit (the daemon reverts every fault it holds)…"
    systemctl stop "$unit" || echo "uninstall.sh: stopping $unit failed; recovery follows" >&2
fi

# 2. Recover, and refuse to go on if the host is not clean.
refuse() { # exit status, message
    if [ "$force" = yes ]; then
        echo "uninstall.sh: $2; going on (--force)" >&2
        if [ -x "$bin" ] && [ -d "$state" ]; then
            echo "What the journal still holds (undo it by hand):" >&2
            "$bin" status --state-dir "$state" >&2 || true
        fi
        return 0
    fi
    echo "uninstall.sh: $2; nothing was removed (--force removes anyway)" >&2
    if [ "$have_systemd" = yes ] && [ -f "/etc/systemd/system/$unit" ]; then
        echo "$unit is stopped but still enabled (its recovery runs at boot); to run it again: systemctl start chaos-agent" >&2
    fi
    exit "$1"
}

if [ -x "$bin" ]; then
    if [ -d "$state" ]; then
        rc=0
        "$bin" recover --state-dir "$state" || rc=$?
        case $rc in
        0) echo "recovery: the host is clean" ;;
        3) refuse 3 "THE HOST IS NOT CLEAN: a revert needs a person (see: chaos-agent status --state-dir $state)" ;;
        4) refuse 4 "another chaos-agent holds $state (a run in progress?); wait for it or stop it, then run this again" ;;
        *) refuse 3 "chaos-agent recover failed (exit $rc): the host may not be clean" ;;
        esac
    else
        echo "no state directory $state: nothing to recover"
    fi
elif [ -d "$state/journal" ]; then
    refuse 3 "$bin is missing, so the journal in $state cannot be recovered: the host may not be clean"
fi

# 3. Remove.
if [ "$have_systemd" = yes ] && [ -f "/etc/systemd/system/$unit" ]; then
    systemctl disable "$unit" 2>/dev/null || true
fi
removed=
for f in "$bin" "/etc/systemd/system/$unit"; do
    if [ -e "$f" ]; then
        rm -f "$f"
        removed="$removed $f"
    fi
done
rm -rf /usr/local/share/doc/chaos-agent
kept=
for d in "$etc" "/etc/systemd/system/$unit.d" "$state"; do
    [ -e "$d" ] || continue
    if [ "$purge" = yes ]; then
        rm -rf "$d"
        removed="$removed $d"
    else
        kept="$kept $d"
    fi
done
echo "removed:${removed:- nothing (not installed)}"
[ -z "$kept" ] || echo "kept:$kept (--purge removes them)"
if [ "$have_systemd" = yes ]; then
    systemctl daemon-reload
    systemctl reset-failed "$unit" 2>/dev/null || true
fi
