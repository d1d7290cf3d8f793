"""VM scenarios `time-offset` and `time-hard-reset`: time.offset shifts the guest's wall clock
with systemd-timesyncd stopped, and the true time and timesyncd come back after the agent's
revert, after kill -9 (the restart's recovery) and after a hard reset (from the RTC).

The guest's clock is measured against the host's (qemu-guest-agent guest-get-time, the
guest's CLOCK_REALTIME, bracketed by two host readings), never from log text. The host's
clock is never touched.

Registered into suite.py's scenario list on import (suite.py imports this module).
"""
import re
import time

from suite import Fail, expect, log, poll, scenario

TIMESYNCD = "systemd-timesyncd"
HOUR = 3600.0


def offset(spec):
    return {"kind": "time.offset", "duration": "10m", "offset": spec}


def skew(g):
    """Guest clock minus host clock in seconds: the reading of three with the tightest bound."""
    value, bound = min((g.vm.clock_skew() for _ in range(3)), key=lambda r: r[1])
    expect(bound < 1.0, f"guest-get-time took {2 * bound:.2f}s: no usable clock reading")
    return value


def expect_skew(g, want, tol, context):
    s = skew(g)
    expect(abs(s - want) <= tol, f"{context}: the guest clock is {s:+.2f}s off the host's, "
                                 f"want {want:+.0f}s (within {tol}s)")
    log(f"{context}: guest clock {s:+.2f}s")
    return s


def timesyncd(g):
    return g.unit(TIMESYNCD, "ActiveState")


def rtc_skew(g):
    """The guest RTC minus the host clock, in seconds (1 s resolution)."""
    return int(g.vm.sh("cat /sys/class/rtc/rtc0/since_epoch")) - time.time()


def preflight(g):
    if "time.offset" not in g.kinds:
        raise Fail(f"time.offset not registered: {sorted(g.kinds)}")
    expect(timesyncd(g) == "active", f"{TIMESYNCD} is {timesyncd(g)!r} in the clean guest "
                                     "(tests/vm/build-image.sh installs it)")
    expect_skew(g, 0, 2, "before any fault")


def shifted(g, before, want, context):
    """The fault is applied: the clock runs `want` seconds off, timesyncd is stopped, the RTC
    still has the true time."""
    g.wait_records(before, 1, {"applied"})
    expect_skew(g, want, 5, context)
    expect(timesyncd(g) == "inactive", f"{context}: {TIMESYNCD} is {timesyncd(g)!r}")
    r = rtc_skew(g)
    expect(abs(r) < 5, f"{context}: the RTC is {r:+.0f}s off the host: the shift reached it")


@scenario
def sc_time_offset(g):
    """time.offset +1h (with the clock moved 10 more minutes by someone else during it) and
    -1h: during, the clock is off by the offset and timesyncd is stopped; after the agent's
    revert the clock is right (from the anchor: "clock minus offset" would leave the 10
    minutes) and timesyncd runs again, but only if it ran before; kill -9 of the agent
    holding the fault: the restart's recovery puts the time and timesyncd back."""
    preflight(g)

    # 1. +1h, timesyncd active; someone else moves the clock by +10 min during the fault
    before = g.queue("clock-ahead", [offset("+1h")])
    shifted(g, before, HOUR, "+1h")
    g.vm.check("date -s \"@$(( $(date +%s) + 600 ))\" >/dev/null")
    expect_skew(g, HOUR + 600, 5, "+1h, then moved by +10min by someone else")

    def moved():  # the held fault looks every 5 s and journals what it saw
        [r] = g.new_records(before)
        return r["receipt"].get("moved_by_others_ns")
    seen = poll("the journal to record the move by someone else", moved, 30)
    expect(abs(seen / 1e9 - 600) < 5, f"recorded move {seen / 1e9:+.1f}s, want about +600s")
    g.end_run()
    g.assert_all_reverted(g.wait_records(before, 1, {"reverted", "needs-manual"}),
                          "after the agent's revert of +1h")
    expect_skew(g, 0, 2, "after the revert of +1h")
    poll(f"{TIMESYNCD} to run again", lambda: timesyncd(g) == "active", 30)

    # 2. -1h with timesyncd stopped before: it stays stopped
    g.vm.check(f"systemctl stop {TIMESYNCD}")
    before = g.queue("clock-behind", [offset("-1h")])
    g.wait_records(before, 1, {"applied"})
    expect_skew(g, -HOUR, 5, "-1h (timesyncd stopped before)")
    g.end_run()
    g.assert_all_reverted(g.wait_records(before, 1, {"reverted", "needs-manual"}),
                          "after the agent's revert of -1h")
    expect_skew(g, 0, 2, "after the revert of -1h")
    expect(timesyncd(g) == "inactive",
           f"{TIMESYNCD} was stopped before the fault but is {timesyncd(g)!r} after it")
    g.vm.check(f"systemctl start {TIMESYNCD}")

    # 3. kill -9 of the agent holding +1h: ExecStartPre (chaos-agent recover) reverts it
    before = g.queue("clock-kill9", [offset("+1h")])
    shifted(g, before, HOUR, "+1h before kill -9")
    old = g.main_pid()
    g.vm.check(f"kill -9 {old}")
    new = g.wait_agent_running(not_pid=old)
    at_start = [r for r in g.start_snapshot(new) if r["fault_id"] not in before]
    expect(len(at_start) == 1, f"the new main process saw {len(at_start)} records")
    g.assert_all_reverted(at_start, "at the new main process's start (recovery after kill -9)")
    expect_skew(g, 0, 2, "after kill -9 and the recovery")
    expect(timesyncd(g) == "active", f"{TIMESYNCD} after the recovery: {timesyncd(g)!r}")


@scenario
def sc_time_hard_reset(g):
    """time.offset +1h, then a hard reset: the guest boots with the RTC's time (the fault
    never wrote the RTC), the boot-time recovery (ExecStartPre) finds a receipt of another
    boot, checks the clock against the RTC and starts timesyncd; the record is reverted.
    Then the same with the agent disabled over the reset and the clock set 2 h wrong after
    the boot: starting the agent, its recovery sets the clock from the RTC."""
    preflight(g)
    before = g.queue("clock-reset", [offset("+1h")])
    shifted(g, before, HOUR, "+1h before the hard reset")
    g.vm.check("sync")
    g.vm.reset()
    pid = g.wait_agent_running()
    pre = g.unit("chaos-agent", "ExecStartPre")
    expect(re.search(r"code=exited ; status=0(/SUCCESS)? ", pre),
           f"recovery at boot did not exit 0: {pre}")
    at_start = [r for r in g.start_snapshot(pid) if r["fault_id"] not in before]
    expect(len(at_start) == 1, f"the agent saw {len(at_start)} records at start")
    g.assert_all_reverted(at_start, "at the agent's start after the hard reset")
    expect_skew(g, 0, 3, "after the hard reset")  # the RTC has 1 s resolution
    poll(f"{TIMESYNCD} to run after the boot", lambda: timesyncd(g) == "active", 60)

    # 2. The RTC path itself: a boot whose clock did not come from the RTC. The agent is
    # disabled before the reset, so nothing recovers at boot; then the clock is set 2 h wrong
    # and timesyncd stopped by hand, and starting the agent runs the recovery (ExecStartPre):
    # the receipt is of another boot, so it sets the clock from the RTC and starts timesyncd.
    before = g.queue("clock-reset-rtc", [offset("+1h")])
    shifted(g, before, HOUR, "+1h before the second hard reset")
    g.vm.check("systemctl disable --quiet chaos-agent && sync")
    g.vm.reset()
    expect(g.unit("chaos-agent", "ActiveState") == "inactive", "the disabled agent started")
    g.vm.check(f"systemctl stop {TIMESYNCD} && date -s \"@$(( $(date +%s) + 7200 ))\" >/dev/null")
    expect_skew(g, 2 * HOUR, 5, "a boot with a clock 2 h wrong, timesyncd stopped")
    g.vm.check("systemctl enable --quiet --now chaos-agent")
    pid = g.wait_agent_running()
    at_start = [r for r in g.start_snapshot(pid) if r["fault_id"] not in before]
    expect(len(at_start) == 1, f"the agent saw {len(at_start)} records at start")
    g.assert_all_reverted(at_start, "after the recovery of a receipt of the previous boot")
    expect_skew(g, 0, 3, "after the recovery set the clock from the RTC")
    expect(timesyncd(g) == "active", f"{TIMESYNCD} after the recovery: {timesyncd(g)!r}")
