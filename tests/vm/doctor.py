"""VM scenario `doctor`: `chaos-agent doctor` on a real distribution under systemd, where every
kind the guest's kernel and init support must be offered, and what is missing must be said.

Registered into suite.py's scenario list on import (suite.py imports this module).
"""
import json

from suite import expect, log, scenario


@scenario
def sc_doctor(g):
    """doctor --json and the human report: the guest's facts (static binary, systemd, cgroup
    layout, pidfd, cgroup.kill by kernel version) and each kind's verdict."""
    code, out, err = g.vm.exec("chaos-agent doctor --json")
    expect(code == 0, f"doctor --json exited {code}: {err}")
    v = json.loads(out)
    host = v["host"]
    kernel = tuple(int(x) for x in host["kernel"].split(".")[:2])
    log(f"{g.suite}: kernel {host['kernel']}, cgroups {host['cgroups']['layout']}, "
        f"libc {host['libc']}, counts {v['counts']}")
    expect("static" in host["libc"], f"the guest runs a static binary: {host['libc']}")
    expect(host["pidfd_open"] is True, "pidfd_open on Linux >= 5.3")
    expect(host["cgroup_kill"] is (kernel >= (5, 14)), f"cgroup.kill on {host['kernel']}")
    if g.suite == "bullseye":
        expect(host["cgroups"]["layout"] == "v2-only", f"bullseye is cgroup v2 only: {host['cgroups']}")
    kinds = {k["kind"]: k for k in v["kinds"]}
    expect(set(kinds) == g.kinds, f"doctor's kinds {sorted(kinds)} != faults {sorted(g.kinds)}")
    # The guests boot Debian's kernel with its modules (sch_netem among them) and systemd:
    # nothing is unavailable.
    bad = {n: k["reasons"] for n, k in kinds.items() if k["level"] == "unavailable"}
    expect(not bad, f"unavailable in the {g.suite} guest: {bad}")
    for name in ("process.stop", "process.kill", "service.stop", "network.latency"):
        expect(kinds[name]["level"] == "available", f"{name}: {kinds[name]}")
    # Stressors: degraded exactly for what this guest lacks. cgroup.kill is Linux 5.14+. The
    # memory controller: doctor runs in qemu-guest-agent's cgroup, which (like a service
    # without Delegate=yes) has no `memory` in its cgroup.subtree_control on cgroup v2.
    for name in ("cpu.stress", "memory.stress"):
        reasons = json.dumps(kinds[name]["reasons"])
        lacks = []
        if kernel < (5, 14):
            lacks.append("cgroup.kill")
        if name == "memory.stress" and not host["memory_controller"]:
            lacks.append("memory controller")
        want = "degraded" if lacks else "available"
        expect(kinds[name]["level"] == want, f"{name} on {host['kernel']}: {kinds[name]}")
        for what in lacks:
            expect(what in reasons, f"{name}: no reason names the missing {what}: {reasons}")
    # the human report says the same, one line per kind
    text = g.vm.check("chaos-agent doctor")
    for name, k in kinds.items():
        expect(any(line.split()[:2] == [name, k["level"]] for line in text.splitlines()),
               f"no '{name} {k['level']}' line in:\n{text}")
