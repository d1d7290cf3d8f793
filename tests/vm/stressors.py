"""VM scenario `stressors`: cpu.stress and memory.stress under a real systemd, in the fault's
cgroup under chaos-agent.service, reverted by the agent and by the recovery after kill -9.

Registered into suite.py's scenario list on import (suite.py imports this module).
"""
import json
import time

from suite import Fail, expect, log, poll, scenario

STRAY = "chaos-stray"  # a process the agent never recorded, put into a fault's cgroup


def stressor_faults():
    return [{"kind": "cpu.stress", "duration": "10m", "workers": 2, "load": 30},
            {"kind": "memory.stress", "duration": "10m", "size": "48MiB", "reserve": "64MiB"}]


def procs(g, comm):
    """pid -> cgroup path (cgroup2) of the processes named comm."""
    out = g.vm.sh(f"for p in $(pgrep -x {comm}); do echo $p $(sed -n 's/^0:://p' /proc/$p/cgroup); done")
    return {int(p): cg for p, cg in (line.split(" ", 1) for line in out.splitlines() if " " in line)}


def fault_cgroups(g):
    """The fault cgroups (chaos-agent-*) anywhere under chaos-agent.service."""
    unit = g.vm.sh("systemctl show -p ControlGroup --value chaos-agent")
    return g.vm.sh(f"find /sys/fs/cgroup{unit} -mindepth 1 -type d -name 'chaos-agent-*'").split()


def assert_stressors_held(g, records):
    """Two CPU workers and one memory stressor, each in its fault's cgroup; the memory held."""
    ids = {r["kind"]: r["fault_id"] for r in records}
    cpu, mem = procs(g, "chaos-cpu"), procs(g, "chaos-memory")
    expect(len(cpu) == 2 and len(mem) == 1, f"stressors: chaos-cpu {cpu}, chaos-memory {mem}")
    for pids, kind in ((cpu, "cpu.stress"), (mem, "memory.stress")):
        for pid, cg in pids.items():
            expect(cg.endswith(f"/chaos-agent.service/chaos-agent-{ids[kind]}"),
                   f"{kind} worker {pid} is in cgroup {cg}, not its fault's")
    [mem_pid] = mem
    rss = poll("the memory stressor to hold its 48 MiB",
               lambda: (lambda kb: kb if kb >= 46 * 1024 else None)(
                   int(g.vm.sh(f"awk '/^VmRSS/ {{print $2}}' /proc/{mem_pid}/status") or 0)), 30)
    return ids, rss


def run_report(g, pid):
    """The report of the experiment main process `pid` ran (its run-finished event)."""
    out = g.vm.sh(f"cat /run/chaos-vm/run-{pid}.jsonl")
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    done = [e["report"] for e in events if e.get("event") == "run-finished"]
    expect(done, f"no run-finished event from pid {pid}:\n{out[-3000:]}")
    return done[-1]


def assert_stressors_gone(g, context):
    for comm in ("chaos-cpu", "chaos-memory", STRAY):
        left = procs(g, comm)
        expect(not left, f"{context}: {comm} still running: {left}")
    expect(fault_cgroups(g) == [], f"{context}: fault cgroups left: {fault_cgroups(g)}")


@scenario
def sc_stressors(g):
    """Stressors in fault cgroups: a revert kills the workers and a process the agent never
    recorded in the fault's cgroup (cgroup.kill, or per pid on Linux < 5.14), and removes
    the cgroups; after kill -9 systemd and the recovery leave nothing behind."""
    if not {"cpu.stress", "memory.stress"} <= g.kinds:
        raise Fail(f"cpu.stress/memory.stress not registered: {sorted(g.kinds)}")
    kernel = g.vm.sh("uname -r")
    has_kill = g.vm.exec("test -e /sys/fs/cgroup/cgroup.kill || "
                         "test -e \"/sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup)/cgroup.kill\"")[0] == 0
    log(f"kernel {kernel}: cgroup.kill {'present' if has_kill else 'absent (per-pid fallback)'}")

    # 1. revert by the agent, with a stray process in the CPU fault's cgroup
    before = g.queue("stress", stressor_faults())
    recs = g.wait_records(before, 2, {"applied"})
    ids, rss = assert_stressors_held(g, recs)
    unit_cg = g.vm.sh("systemctl show -p ControlGroup --value chaos-agent")
    cg = f"/sys/fs/cgroup{unit_cg}/chaos-agent-{ids['cpu.stress']}"
    g.vm.check(f"""set -e
        cp /bin/sleep /usr/local/bin/{STRAY}
        systemd-run --quiet --unit={STRAY} /usr/local/bin/{STRAY} infinity
        p=$(systemctl show -p MainPID --value {STRAY})
        echo $p > {cg}/cgroup.procs
        grep -qx $p {cg}/cgroup.procs""")
    log(f"held: 2 CPU workers, memory stressor at {rss // 1024} MiB; {STRAY} moved into {cg}")
    pid = poll("the main process that runs the experiment", g.run_pid, 30)
    t0 = time.time()
    g.end_run()
    g.assert_all_reverted(g.wait_records(before, 2, {"reverted", "needs-manual"}),
                          "after the agent's revert")
    # reverted by the agent itself on SIGTERM, not left to systemd and the next recovery
    report = run_report(g, pid)
    for f in (f for st in report["steps"] for f in st["faults"]):
        expect(f["revert"] == "reverted",
               f"the agent's own revert of {f['kind']}: {f['revert']} ({f.get('error')})")
    log(f"reverted by the agent in {time.time() - t0:.1f}s (then recovery, idle main)")
    assert_stressors_gone(g, "after the agent's revert")

    # 2. kill -9 of the agent holding them: systemd (KillMode=mixed) and the workers' parent
    # death signal end them; the restart's recovery removes the cgroups
    before = g.queue("stress-kill9", stressor_faults())
    recs = g.wait_records(before, 2, {"applied"})
    assert_stressors_held(g, recs)
    old = g.main_pid()
    g.vm.check(f"kill -9 {old}")
    new = g.wait_agent_running(not_pid=old)
    at_start = [r for r in g.start_snapshot(new) if r["fault_id"] not in before]
    expect(len(at_start) == 2, f"the new main process saw {len(at_start)} records")
    g.assert_all_reverted(at_start, "at the new main process's start")
    assert_stressors_gone(g, "after kill -9 and the recovery")
