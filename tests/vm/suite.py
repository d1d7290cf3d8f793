#!/usr/bin/env python3
"""The VM scenarios: chaos-agent under a real systemd, kill -9, hard resets, netem.

  suite.py [SCENARIO...]        on the guest $CHAOS_VM_GUEST (default bookworm): all
                                scenarios, or only the named ones (NAME or GUEST/NAME)
  suite.py --list               the scenario names
  suite.py --plan [SEL...]      what tests/vm/run.sh runs: GUEST/NAME lines; SEL is NAME (on
                                every guest of $CHAOS_VM_GUESTS) or GUEST/NAME

Normally started by tests/vm/run.sh, once per guest, which installs QEMU, builds or reuses
the images and builds the agent; see docs/testing.md. The VM boots once, the agent and its
unit are installed, a snapshot "clean" is taken, and every scenario starts from that snapshot.
A scenario is a function decorated with @scenario (registered in file order); it gets a Guest
(g.vm: the Vm, g.suite: bookworm or bullseye, g.kinds: the registered fault kinds) and raises
Fail, Skip or VmError, or returns (passed). Another module can register more: import suite
and decorate.
Every assertion is on guest state (journal records, process states, files, units, qdiscs,
ping measurements, chaos-control's view of runs), never on log text. The daemon-* scenarios
swap the suite's drop-in for the packaged unit as it is, with chaos-control in the guest.
On a failure the serial console and the guest journals (this boot and the previous one)
are saved under $CHAOS_VM_ARTIFACTS.

Env: CHAOS_VM_GUEST (bookworm | bullseye), CHAOS_VM_RESULTS (a file: one line "GUEST/NAME
PASS|FAIL|SKIP" is appended per scenario, for run.sh's sum over the guests),
CHAOS_VM_AGENT (host path of a debug chaos-agent, required; static musl for bullseye), CHAOS_VM_ARTIFACTS
(default $CHAOS_VM_CACHE/artifacts), CHAOS_VM_NETWORK_TESTS (host path of fault-network's
privileged test binary; the network-kernel-tests scenario skips without it), CHAOS_VM_CONTROL
(host path of chaos-control; the daemon-* scenarios skip without it), CHAOS_VM_DEB and
CHAOS_VM_DEB_UPGRADE (two .deb files of increasing versions; the packages scenario skips
without them, see tests/vm/packages.py).
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from vm import CACHE, GUESTS, Vm, VmError, guest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(HERE))
ARTIFACTS = os.environ.get("CHAOS_VM_ARTIFACTS", os.path.join(CACHE, "artifacts"))
FILL_DIR = "/var/lib/chaos-fill"
NIC, GATEWAY = "ens2", "10.0.2.2"
# the daemon scenarios: chaos-control in the guest, on 127.0.0.1, and the agent it knows
CONTROL_PORT, CONTROL_DIR, AGENT = 8443, "/var/lib/chaos-control", "vm-agent"
CUT_TABLE = "chaos_vm_cut"  # the nft table that cuts the agent off its control plane


class Skip(Exception):
    """The scenario cannot run here; the reason is printed."""


class Fail(AssertionError):
    pass


def expect(cond, msg):
    if not cond:
        raise Fail(msg)


def log(msg):
    print(f"    {msg}", flush=True)


def poll(what, fn, timeout=120, every=0.5):
    """fn() until it returns something truthy; Fail after timeout (a deadline, not a sleep)."""
    end, last = time.time() + timeout, None
    while True:
        last = fn()
        if last:
            return last
        if time.time() > end:
            raise Fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        time.sleep(every)


def experiment_toml(name, faults):
    """An experiment file: one step named like the experiment, with these faults (dicts)."""
    doc = f'name = "{name}"\n[[steps]]\nname = "{name}"\n'
    for f in faults:
        doc += "  [[steps.faults]]\n" + "".join(f"  {k} = {json.dumps(v)}\n" for k, v in f.items())
    return doc


class Guest:
    """Scenario helpers over a Vm: the agent's journal, its unit, the test's victims."""

    def __init__(self, vm, suite="bookworm"):
        self.vm = vm
        self.suite = suite  # the guest's Debian suite: bookworm | bullseye
        self.kinds = set()

    # --------------------------------------------------------------- the agent
    def records(self):
        return json.loads(self.vm.sh("chaos-agent status --json") or "[]")

    def ids(self):
        return {r["fault_id"] for r in self.records()}

    def new_records(self, before):
        return [r for r in self.records() if r["fault_id"] not in before]

    def wait_records(self, before, n, states, timeout=180):
        """The n records created since `before`, once all are in one of `states`."""
        def ready():
            rs = self.new_records(before)
            return rs if len(rs) == n and all(r["state"] in states for r in rs) else None
        return poll(f"{n} journal record(s) in state {states}", ready, timeout)

    def unit(self, unit, prop):
        return self.vm.sh(f"systemctl show -p {prop} --value {unit}")

    def main_pid(self):
        return int(self.unit("chaos-agent", "MainPID") or 0)

    def wait_agent_running(self, not_pid=None, timeout=120):
        """chaos-agent.service active with a main process (other than not_pid)."""
        def ok():
            pid = self.main_pid()
            return pid if (pid and pid != not_pid
                           and self.unit("chaos-agent", "ActiveState") == "active") else None
        return poll("chaos-agent.service to be active with a new main process", ok, timeout)

    def start_snapshot(self, pid):
        """The journal as main process `pid` found it when it started (see guest/agent-main)."""
        text = poll(f"start-{pid}.json", lambda: self.vm.sh(f"cat /run/chaos-vm/start-{pid}.json"), 30)
        return json.loads(text)

    def idle_main(self):
        """The pid of chaos-agent.service's main process if it is an idle one, else 0. Idle:
        guest/agent-main has exec'd `sleep`, so it has already looked for a queued experiment,
        and it never exits by itself (no Restart= pending)."""
        return int(self.vm.sh("p=$(systemctl show -p MainPID --value chaos-agent); "
                              "[ \"$(cat /proc/$p/comm 2>/dev/null)\" = sleep ] && echo $p") or 0)

    def queue(self, name, faults, crash_at=None):
        """Queue an experiment for chaos-agent.service's next main process and restart the
        unit (ExecStartPre recovery, then the main process runs it). Returns the fault ids
        that existed before, for new_records().

        The next main process must be the one this restart starts, so first wait until the
        current one is idle. A main process that runs (or is finishing) an experiment exits
        when the run ends, and Restart=always starts another one a second later: that one
        would take the queued experiment, and the restart here would stop it, maybe before it
        journaled anything."""
        poll("chaos-agent.service's main process to be idle (no run, no restart pending)",
             self.idle_main, 120)
        before = self.ids()
        doc = experiment_toml(name, faults)
        self.vm.check("rm -f /run/chaos-vm/running-*.toml /run/chaos-vm/crash-at")
        if crash_at:  # before queued.toml: whoever takes the experiment sees its crash point
            self.vm.write("/run/chaos-vm/crash-at", crash_at)
        self.vm.write("/run/chaos-vm/queued.toml", doc)
        self.vm.check("systemctl restart chaos-agent")
        return before

    def run_pid(self):
        """The pid of the main process that took the queued experiment (0: none yet)."""
        name = self.vm.sh("ls /run/chaos-vm/ | grep '^running-'")
        return int(name[len("running-"):-len(".toml")]) if name else 0

    def end_run(self):
        """Stop the running experiment the way an operator would: restart the unit (SIGTERM:
        the agent reverts everything, then ExecStartPre recovery, then an idle main)."""
        self.vm.check("systemctl restart chaos-agent", timeout=240)

    def assert_all_reverted(self, records, context):
        for r in records:
            expect(r["state"] == "reverted",
                   f"{context}: {r.get('kind')} {r.get('fault_id')} is {r['state']} "
                   f"(last_error: {r.get('last_error')}; {r.get('error', '')})")

    # --------------------------------------------------------------- the daemon
    def cc(self, args, timeout=None):
        """`chaos-control ARGS --json` in the guest (the admin token of its state dir)."""
        return json.loads(self.vm.check(f"chaos-control {args} --json", timeout=timeout))

    def use_daemon(self, agent_bin="/usr/local/bin/chaos-agent"):
        """Switch chaos-agent.service to the packaged unit as it is (`chaos-agent daemon`,
        Type=notify): drop the suite's drop-in, start a real control plane in the guest,
        add the agent, configure it in config.d, restart the unit and wait until the agent
        has registered and says it is idle. `agent_bin`: where the unit runs the agent from
        (the .deb installs /usr/bin/chaos-agent)."""
        if not os.environ.get("CHAOS_VM_CONTROL"):
            raise Skip("no chaos-control binary (CHAOS_VM_CONTROL; tests/vm/run.sh builds it)")
        vm, t0 = self.vm, time.time()
        # chaos-control.service is a real unit, enabled: it is back after a hard reset
        vm.check(f"""set -e
            rm -f /etc/systemd/system/chaos-agent.service.d/50-vm-test.conf
            chaos-control init --name localhost --port {CONTROL_PORT} >/dev/null
            systemctl daemon-reload
            systemctl enable --now chaos-control.service""")
        poll("chaos-control to answer", lambda: vm.exec("chaos-control agents list")[0] == 0, 60)
        key = self.cc(f"agents add {AGENT}")["registration_key"]
        fp = json.loads(vm.sh(f"cat {CONTROL_DIR}/init.json"))["ca_sha256"]
        vm.check(f"install -d -m 0700 /etc/chaos-agent/config.d && "
                 f"install -m 0644 {CONTROL_DIR}/ca.pem /etc/chaos-agent/ca.pem")
        vm.write("/etc/chaos-agent/config.d/20-control.toml",
                 f'[control_plane]\nurl = "https://localhost:{CONTROL_PORT}"\n'
                 f'ca_file = "/etc/chaos-agent/ca.pem"\nca_sha256 = "{fp}"\n'
                 f'registration_key = "{key}"\n', mode=0o600)
        # Type=notify: `systemctl restart` returns once the daemon sent READY=1
        vm.check("systemctl restart chaos-agent", timeout=240)
        drop_ins = self.unit("chaos-agent", "DropInPaths")
        expect(drop_ins == "", f"chaos-agent.service still has drop-ins: {drop_ins}")
        expect(f"argv[]={agent_bin} daemon " in self.unit("chaos-agent", "ExecStart"),
               f"not the daemon: {self.unit('chaos-agent', 'ExecStart')}")
        poll(f"agent {AGENT} to register",
             lambda: self.cc(f"agents show {AGENT}")["state"] == "active", 60)
        self.assert_daemon_up("after the first start", "idle")
        log(f"daemon registered with chaos-control, idle: {time.time() - t0:.1f}s")

    def show(self):
        """systemctl show of chaos-agent.service: the properties the daemon scenarios check."""
        out = self.vm.sh("systemctl show -p Type,NotifyAccess,ActiveState,SubState,StatusText,"
                         "MainPID,NRestarts,Result,ExecMainCode,ExecMainStatus chaos-agent")
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def assert_daemon_up(self, context, status):
        """Active and running under Type=notify (so it sent READY=1), with STATUS= `status`
        (waited for: the daemon updates it within 100 ms of a change)."""
        def ok():
            p = self.show()
            return p if p.get("StatusText") == status else None
        p = poll(f"{context}: StatusText {status!r}", ok, 30)
        for k, want in (("Type", "notify"), ("NotifyAccess", "main"), ("ActiveState", "active"),
                        ("SubState", "running")):
            expect(p[k] == want, f"{context}: {k}={p[k]}, want {want}")
        return p

    def submit(self, name, faults, lease=None):
        """chaos-control run: the experiment for the agent; returns the run id."""
        self.vm.write("/root/run.toml", experiment_toml(name, faults))
        out = self.cc(f"run /root/run.toml --agent {AGENT}" + (f" --lease {lease}" if lease else ""))
        return out["runs"][0]["run_id"]

    def run_records(self, rid):
        """`chaos-agent status --json` entries of run `rid`'s faults (ids `<run>-<step>-<n>`):
        journal records, and any other entry for them (not-in-journal, corrupt), which never
        passes as applied or reverted. Such an entry is printed: status saw something odd."""
        rs = [r for r in self.records() if r.get("fault_id", "").startswith(f"{rid}-")
              or "fault_id" not in r]
        for r in rs:
            if "run_id" not in r:
                log(f"(chaos-agent status --json listed {json.dumps(r)})")
        return rs

    def wait_run_records(self, rid, n, states, timeout=120):
        def ready():
            rs = self.run_records(rid)
            return rs if len(rs) == n and all(r["state"] in states for r in rs) else None
        return poll(f"{n} journal record(s) of run {rid} in state {states}", ready, timeout)

    def run_detail(self, rid):
        return self.cc(f"runs show {rid}")

    def assert_run_aborted(self, rid, why, n_faults, timeout=60):
        """The control plane has the run's result: aborted, the reason containing `why`,
        every fault reverted (in the result and in the run's fault states), and every log
        line (seq 1..n, no gap, as many as the run says it holds)."""
        d = poll(f"the result of run {rid} at the control plane",
                 lambda: (lambda d: d if d.get("result") else None)(self.run_detail(rid)), timeout)
        r = d["result"]
        expect(d["state"] == "aborted" and r["outcome"] == "aborted",
               f"run {rid}: state {d['state']}, outcome {r['outcome']}, want aborted")
        expect(why in (r.get("abort_reason") or ""),
               f"run {rid}: abort_reason {r.get('abort_reason')!r} does not mention {why!r}")
        faults = [f for st in r["steps"] for f in st["faults"]]
        expect(len(faults) == n_faults, f"run {rid}: {len(faults)} faults in the result")
        for f in faults:
            expect(f["revert"] == "reverted",
                   f"run {rid}: {f['fault_id']} {f['kind']} revert {f['revert']} ({f.get('error')})")
        states = {f["fault_id"]: f["state"] for f in d["faults"]}
        expect(len(states) == n_faults and set(states.values()) == {"reverted"},
               f"run {rid}: fault states at the control plane {states}, want all reverted")
        lines = [json.loads(x) for x in self.vm.check(f"chaos-control runs logs {rid} --json").splitlines()]
        seqs = [x["seq"] for x in lines]
        expect(seqs == list(range(1, len(seqs) + 1)) and len(seqs) == d["log_lines"],
               f"run {rid}: log seqs {seqs} (run holds {d['log_lines']} lines)")
        return d

    # --------------------------------------------------------------- victims
    def worker_state(self):
        """State letter of the chaos-worker process (S, R, T) or None when gone."""
        return self.vm.sh("ps -C chaos-worker -o stat= | head -c1") or None

    def fill_files(self):
        return self.vm.sh(f"ls -A {FILL_DIR}").split()

    def qdiscs(self, dev):
        return self.vm.sh(f"tc qdisc show dev {dev}")


# ------------------------------------------------------------------ measurements
def ping(g, dest, count=10, interval=0.2, extra=""):
    """ping from the guest; returns dict(sent, received, loss, dups, rtts, seqs)."""
    wait = 2 + count * interval * 3
    _, out, _ = g.vm.exec(f"ping -n -c {count} -i {interval} -W 2 -w {int(wait) + 5} {extra} {dest}",
                          timeout=wait + 60)
    rtts = [float(x) for x in re.findall(r"time=([\d.]+) ms", out)]
    seqs = [int(x) for x in re.findall(r"icmp_seq=(\d+)", out)]
    m = re.search(r"(\d+) packets transmitted, (\d+) received(?:, \+(\d+) duplicates)?", out)
    expect(m, f"no ping summary in: {out}")
    sent, recv = int(m.group(1)), int(m.group(2))
    return {"sent": sent, "received": recv, "loss": 100.0 * (sent - recv) / max(sent, 1),
            "dups": int(m.group(3) or 0), "rtts": rtts, "seqs": seqs,
            "avg": sum(rtts) / len(rtts) if rtts else None}


def inversions(seqs):
    """How many replies arrived after a reply with a higher sequence number."""
    n, high = 0, -1
    for s in seqs:
        if s < high:
            n += 1
        high = max(high, s)
    return n


def silent_after_fresh_arp(g, rounds=16):
    """Under a corruption fault: `rounds` times, make the guest resolve the gateway again
    (flush its neighbour entry), then ping every 20 ms until 16 replies came or 3 s passed.
    Returns how many rounds got no reply at all. Each echo request is corrupted with
    p = 0.5, and a round sends at least 16 before it can end empty, so an unpoisoned round
    is silent with p < 2^-16; a round whose ARP taught slirp a wrong MAC for the guest is
    silent for sure (slirp sends the replies there). ping's exit status is no measure: with
    both -c and -w it fails whenever fewer than 16 replies came by the deadline, which a
    slow guest at 50% corruption sometimes sees (CI did once, with a 1 s deadline)."""
    out = g.vm.sh(f"n=0; for i in $(seq {rounds}); do ip neigh flush dev {NIC}; "
                  f"case \"$(ping -n -q -c16 -i0.02 -w3 {GATEWAY})\" in "
                  f"*' 0 received'*) n=$((n+1));; esac; done; echo $n",
                  timeout=rounds * 5 + 30)
    return int(out.split()[-1])


def poisoned_arp_check(g):
    silent = silent_after_fresh_arp(g)
    expect(silent == 0, f"{silent} of 16 fresh ARP exchanges under corruption left the gateway "
                        "sending the guest's replies elsewhere: ARP was corrupted")
    return "16 fresh ARP exchanges, each followed by replies from the gateway"


def netem_faults():
    """(title, fault, measure(g) -> value, expect_during(value), expect_after(value), unit,
    also_during(g) -> str or None)."""
    def rtt(dest):
        return lambda g: ping(g, dest, count=6, interval=0.2)["avg"] or 0.0

    def loss(dest):
        return lambda g: ping(g, dest, count=40, interval=0.05)["loss"]

    return [
        # on lo both the echo and the reply pass the delayed egress: RTT += 2 x delay
        ("latency 100ms on lo", {"kind": "network.latency", "interface": "lo", "delay": "100ms"},
         rtt("127.0.0.1"), lambda v: 180 <= v <= 1500, lambda v: v < 60, "avg rtt ms"),
        ("latency 150ms on ens2", {"kind": "network.latency", "interface": NIC, "delay": "150ms"},
         rtt(GATEWAY), lambda v: 135 <= v <= 1500, lambda v: v < 100, "avg rtt ms"),
        ("loss 50% on lo", {"kind": "network.loss", "interface": "lo", "percent": 50},
         loss("127.0.0.1"), lambda v: 30 <= v < 100, lambda v: v == 0, "loss %"),
        # slirp drops packets whose checksum a flipped bit broke: corruption shows as loss.
        # ARP has no checksum: before corruption spared ARP, about 1 fresh ARP in 10 under
        # it taught slirp a wrong MAC for the guest, which outlived the revert (CI once
        # saw 100% loss after it). So: 16 fresh ARPs, none may leave the guest unreachable.
        ("corruption 50% on ens2", {"kind": "network.corruption", "interface": NIC, "percent": 50},
         loss(GATEWAY), lambda v: 15 <= v <= 100, lambda v: v == 0, "loss %",
         poisoned_arp_check),
        ("duplication 50% on lo", {"kind": "network.duplication", "interface": "lo", "percent": 50},
         lambda g: ping(g, "127.0.0.1", count=20, interval=0.1)["dups"],
         lambda v: v >= 3, lambda v: v == 0, "duplicate replies"),
        # 50% go at once, the rest wait 300ms: later pings overtake earlier ones
        ("reorder 50% on ens2", {"kind": "network.reorder", "interface": NIC, "percent": 50,
                                  "delay": "300ms"},
         lambda g: inversions(ping(g, GATEWAY, count=30, interval=0.05)["seqs"]),
         lambda v: v >= 2, lambda v: v == 0, "out-of-order replies"),
    ]


# ------------------------------------------------------------------ scenarios
SCENARIOS = []

# Scenarios that run on these guests only when no guest is named (GUEST/NAME still runs one
# anywhere): what they prove does not depend on the guest's kernel or systemd beyond what
# the other scenarios cover there, and CI must stay under 30 minutes. time-hard-reset (two
# hard resets, ~70 s): the RTC and the boot-time recovery are the same code on both guests,
# and time-offset (kill -9 included) runs on both. dns (~35 s): plain file edits and a
# loopback responder, nothing kernel-specific; its e2e tests run on the host in CI too.
# hard-reset (~30 s): the CLI's boot-time recovery; on bullseye daemon-hard-reset resets the
# guest mid-run too, with the daemon's recovery ordered by the unit on systemd 247.
# daemon-sigkill (~25 s), daemon-cp-cut (~40 s), needs-manual (~10 s): the agent's own logic
# (restart, lease, what a person must undo), the same on both guests; the unit's directives
# are checked against systemd 219 by the package test, and kill9 still runs on both.
BOOKWORM = {"bookworm"}
ONLY_ON = {"time-hard-reset": BOOKWORM, "dns": BOOKWORM, "hard-reset": BOOKWORM,
           "daemon-sigkill": BOOKWORM, "daemon-cp-cut": BOOKWORM, "needs-manual": BOOKWORM}


def scenario(fn):
    SCENARIOS.append((fn.__name__.replace("sc_", "").replace("_", "-"), fn))
    return fn


def standard_faults(g):
    """Scenario 2 and 3's faults: a stopped process, a disk fill, a stopped service, and
    netem latency on lo when network.latency is registered."""
    faults = [
        {"kind": "process.stop", "duration": "10m", "name": "chaos-worker"},
        {"kind": "disk.fill", "duration": "10m", "path": FILL_DIR, "size": "64MiB"},
        {"kind": "service.stop", "duration": "10m", "unit": "chaos-victim"},
    ]
    if "network.latency" in g.kinds:
        faults.append({"kind": "network.latency", "duration": "10m", "interface": "lo",
                       "delay": "100ms"})
    else:
        log("SKIPPED netem part: network.latency not registered yet")
    return faults


def assert_faults_in_effect(g, netem):
    expect(g.worker_state() == "T", f"worker state {g.worker_state()!r}, want T (stopped)")
    expect(len(g.fill_files()) == 1, f"fill files: {g.fill_files()}")
    expect(g.unit("chaos-victim", "ActiveState") == "inactive",
           f"chaos-victim is {g.unit('chaos-victim', 'ActiveState')}, want inactive")
    if netem:
        expect("netem" in g.qdiscs("lo"), f"no netem on lo: {g.qdiscs('lo')}")


@scenario
def sc_netem(g):
    """1. netem on lo and on the NIC: each fault shown by a measurement, gone after revert."""
    if "network.latency" not in g.kinds:
        raise Skip("network.latency not registered yet")
    for title, fault, measure, during_ok, after_ok, unit, *also in netem_faults():
        if fault["kind"] not in g.kinds:
            log(f"SKIPPED {title}: {fault['kind']} not registered")
            continue
        dev = fault["interface"]
        qdisc_before = g.qdiscs(dev)
        before_v = measure(g)
        expect(after_ok(before_v), f"{title}: before the fault {unit} = {before_v}")
        ids = g.queue(title.split()[0], [dict(fault, duration="10m")])
        g.wait_records(ids, 1, {"applied"})
        expect(g.qdiscs(dev) != qdisc_before, f"{title}: qdisc of {dev} unchanged")
        during = measure(g)
        expect(during_ok(during), f"{title}: during the fault {unit} = {during}")
        for extra in also:
            log(f"{title}: during the fault, {extra(g)}")
        g.end_run()
        [rec] = g.wait_records(ids, 1, {"reverted"})
        expect(g.qdiscs(dev) == qdisc_before,
               f"{title}: qdisc of {dev} after revert:\n{g.qdiscs(dev)}\nbefore:\n{qdisc_before}")
        after = measure(g)
        expect(after_ok(after), f"{title}: after revert {unit} = {after}")
        log(f"{title}: {unit} {before_v:.1f} -> {during:.1f} -> {after:.1f}")


@scenario
def sc_kill9(g):
    """2. kill -9 of the agent holding faults: systemd restarts it, and its ExecStartPre
    recovery reverts everything before the new main process runs."""
    faults = standard_faults(g)
    netem = len(faults) == 4
    lo_before = g.qdiscs("lo")
    ids = g.queue("kill9", faults)
    g.wait_records(ids, len(faults), {"applied"})
    assert_faults_in_effect(g, netem)
    old = g.main_pid()
    restarts = int(g.unit("chaos-agent", "NRestarts"))
    g.vm.check(f"kill -9 {old}")
    new = g.wait_agent_running(not_pid=old)
    # the journal as the new main process found it: recovery had already reverted everything
    at_start = [r for r in g.start_snapshot(new) if r["fault_id"] not in ids]
    expect(len(at_start) == len(faults), f"new process saw {len(at_start)} records")
    g.assert_all_reverted(at_start, "at the new main process's start")
    expect(int(g.unit("chaos-agent", "NRestarts")) == restarts + 1, "systemd did not restart it")
    poll("worker running again", lambda: g.worker_state() in ("S", "R"), 30)
    expect(g.fill_files() == [], f"fill files left: {g.fill_files()}")
    expect(g.unit("chaos-victim", "ActiveState") == "active", "chaos-victim not started again")
    expect(g.qdiscs("lo") == lo_before, f"qdisc on lo left: {g.qdiscs('lo')}")
    g.assert_all_reverted(g.new_records(ids), "journal")


@scenario
def sc_hard_reset(g):
    """3. Hard reset with the faults active: at boot the recovery reverts what persists (fill
    file, stopped service), finds the rest gone (process, qdisc), and the agent starts clean."""
    faults = standard_faults(g)
    netem = len(faults) == 4
    ids = g.queue("reset", faults)
    g.wait_records(ids, len(faults), {"applied"})
    assert_faults_in_effect(g, netem)
    fill = g.fill_files()[0]
    # what a fault held for a few seconds has: its fill file on disk (ext4 commits every 5s)
    g.vm.check("sync")
    t0 = time.time()
    g.vm.reset()
    log(f"hard reset -> ready in {time.time() - t0:.1f}s")
    pid = g.wait_agent_running()
    expect(g.unit("chaos-agent", "NRestarts") == "0", "agent restarted after boot: not a clean start")
    expect(re.search(r"code=exited ; status=0(/SUCCESS)? ", g.unit("chaos-agent", "ExecStartPre")),
           f"recovery at boot did not exit 0: {g.unit('chaos-agent', 'ExecStartPre')}")
    at_start = [r for r in g.start_snapshot(pid) if r["fault_id"] not in ids]
    expect(len(at_start) == len(faults), f"agent saw {len(at_start)} records at start")
    g.assert_all_reverted(at_start, "at the agent's start after boot")
    expect(g.fill_files() == [], f"fill file {fill} survived the recovery: {g.fill_files()}")
    expect(g.unit("chaos-victim", "ActiveState") == "active",
           "chaos-victim (not enabled) was not started again by the recovery")
    expect(g.worker_state() is None, "the worker of the previous boot is back?")
    expect("netem" not in g.qdiscs("lo"), f"netem after boot: {g.qdiscs('lo')}")
    prev = g.vm.sh("journalctl -b -1 -q -n 1 -o cat --no-pager")
    expect(prev != "", "no journal of the previous boot")


@scenario
def sc_needs_manual(g):
    """4. A revert that cannot succeed (fill file made immutable): needs-manual with an
    actionable message, and the agent keeps running (also across a restart)."""
    ids = g.queue("manual", [{"kind": "disk.fill", "duration": "10m", "path": FILL_DIR,
                              "size": "16MiB"}])
    g.wait_records(ids, 1, {"applied"})
    [fill] = g.fill_files()
    path = f"{FILL_DIR}/{fill}"
    g.vm.check(f"chattr +i {path}")
    try:
        g.end_run()
        [rec] = g.wait_records(ids, 1, {"needs-manual"})
        expect(any(path in line for line in rec["manual_undo"]),
               f"manual_undo does not name {path}: {rec['manual_undo']}")
        expect("Operation not permitted" in (rec.get("last_error") or ""),
               f"last_error does not say why: {rec.get('last_error')}")
        expect("chattr -i" in (rec.get("last_error") or "")
               and any("chattr -i" in line for line in rec["manual_undo"]),
               f"neither says how to clear the immutable flag: {rec}")
        expect(g.fill_files() == [fill], "the immutable file is gone?")
        pid = g.wait_agent_running()
        code, out, _ = g.vm.exec("chaos-agent status")
        expect(code == 3, f"status exit {code}, want 3 (host not clean)")
        expect(path in out, "`chaos-agent status` does not show what to undo")
        # the agent keeps running: even a restart (whose recovery fails again) brings it back
        g.vm.check("systemctl restart chaos-agent")
        pid2 = g.wait_agent_running(not_pid=pid)
        [seen] = [r for r in g.start_snapshot(pid2) if r["fault_id"] not in ids]
        expect(seen["state"] == "needs-manual", f"after restart the record is {seen['state']}")
    finally:
        g.vm.exec(f"chattr -i {path}")
    # a person follows the message: the file can go now; recover confirms the host is clean
    code, out, err = g.vm.exec("chaos-agent recover")
    expect(code == 0, f"recover after chattr -i: exit {code}\n{out}{err}")
    g.assert_all_reverted(g.new_records(ids), "after manual fix")
    expect(g.fill_files() == [], "fill file left")


@scenario
def sc_services(g):
    """5. service.stop / service.restart against a real unit, a crash mid-fault, refusals."""
    victim = "chaos-victim.service"
    inv = g.unit(victim, "InvocationID")
    # service.stop: stopped while held, started again by the revert
    ids = g.queue("svc-stop", [{"kind": "service.stop", "duration": "10m", "unit": "chaos-victim"}])
    g.wait_records(ids, 1, {"applied"})
    expect(g.unit(victim, "ActiveState") == "inactive", "service.stop: victim still running")
    g.end_run()
    g.wait_records(ids, 1, {"reverted"})
    expect(g.unit(victim, "ActiveState") == "active", "service.stop revert: victim not active")
    inv2 = g.unit(victim, "InvocationID")
    expect(inv2 != inv, "service.stop revert: victim was not started anew")
    # service.restart: a new invocation, active. This run ends by itself after 2 s: its main
    # process exits and Restart=always starts an idle one (the next queue() waits for it).
    ids = g.queue("svc-restart", [{"kind": "service.restart", "duration": "2s", "unit": victim}])
    g.wait_records(ids, 1, {"reverted"})
    expect(g.unit(victim, "ActiveState") == "active", "service.restart: victim not active")
    inv3 = g.unit(victim, "InvocationID")
    expect(inv3 != inv2, "service.restart: same invocation, not restarted")
    # crash mid-fault: the agent SIGKILLs itself right after stopping the service, before
    # journaling it applied; the restart's recovery starts the service again
    for point in ("after-inject", "after-journal-applied"):
        ids = g.queue(f"svc-crash-{point}",
                      [{"kind": "service.stop", "duration": "10m", "unit": "chaos-victim"}],
                      crash_at=point)
        crashed = poll("the main process that runs the experiment", g.run_pid, 30)
        new = g.wait_agent_running(not_pid=crashed)
        # it crashed and systemd restarted it (queue's `systemctl restart` set the count to 0)
        expect(g.unit("chaos-agent", "NRestarts") == "1",
               f"crash at {point}: NRestarts={g.unit('chaos-agent', 'NRestarts')}, want 1 "
               f"(main process {crashed} did not crash, or another one took the experiment)")
        [seen] = [r for r in g.start_snapshot(new) if r["fault_id"] not in ids]
        expect(seen["state"] == "reverted",
               f"crash at {point}: the restarted agent found the record {seen['state']}")
        expect(g.unit(victim, "ActiveState") == "active", f"crash at {point}: victim not active")
    # refusals, each before anything changes
    inv4 = g.unit(victim, "InvocationID")
    for unit, why in (("chaos-agent", "the agent's own unit"),
                      ("qemu-guest-agent", "contains the agent"),  # the exec'd agent runs there
                      ("no-such-unit", "no such unit")):
        g.vm.write("/tmp/refuse.toml", f'name = "r"\n[[steps]]\nname = "r"\n  [[steps.faults]]\n'
                                       f'  kind = "service.stop"\n  duration = "5s"\n  unit = "{unit}"\n')
        code, out, err = g.vm.exec("chaos-agent run /tmp/refuse.toml")
        expect(code in (1, 2), f"service.stop {unit}: exit {code}, want refused\n{out}{err}")
        expect(why in out + err, f"service.stop {unit}: reason {why!r} not given:\n{out}{err}")
    expect(g.unit("qemu-guest-agent", "ActiveState") == "active", "qemu-guest-agent touched")
    expect(g.unit(victim, "InvocationID") == inv4, "a refused fault touched the victim")


def daemon_faults():
    """The daemon scenarios' faults: the worker stopped, a fill file on the root filesystem
    (a persistent directory: only a revert removes it, a reboot does not)."""
    return [{"kind": "process.stop", "duration": "10m", "name": "chaos-worker"},
            {"kind": "disk.fill", "duration": "10m", "path": FILL_DIR, "size": "32MiB",
             "allow_protected_filesystem": True}]


def exec_start_pre_ok(g):
    """The last ExecStartPre (`chaos-agent recover`) exited 0."""
    pre = g.unit("chaos-agent", "ExecStartPre")
    expect(re.search(r"code=exited ; status=0(/SUCCESS)? ", pre), f"recovery did not exit 0: {pre}")


@scenario
def sc_daemon_sigkill(g):
    """The packaged unit running `chaos-agent daemon` against a real chaos-control: SIGKILL
    mid-run, then `systemctl stop` mid-run."""
    g.use_daemon()
    rid = g.submit("sigkill", daemon_faults())
    ids = {r["fault_id"] for r in g.wait_run_records(rid, 2, {"applied"})}
    expect(g.worker_state() == "T" and len(g.fill_files()) == 1,
           f"faults not in effect: worker {g.worker_state()!r}, fill {g.fill_files()}")
    g.assert_daemon_up("holding the faults", f"running {rid}")
    old, restarts = g.main_pid(), int(g.unit("chaos-agent", "NRestarts"))
    t0 = time.time()
    g.vm.check("systemctl kill --kill-who=main --signal=KILL chaos-agent")
    # active again means READY=1, which the daemon sends only after its own recovery
    new = g.wait_agent_running(not_pid=old)
    log(f"SIGKILL -> a new daemon READY in {time.time() - t0:.1f}s")
    p = g.assert_daemon_up("after the restart", "idle")
    expect(int(p["NRestarts"]) == restarts + 1, f"NRestarts {p['NRestarts']}, want {restarts + 1}")
    exec_start_pre_ok(g)
    # reverted by ExecStartPre: before the new main process (which polls) even started
    started = int(g.vm.sh(f"date -d \"$(systemctl show -p ExecMainStartTimestamp --value chaos-agent)\" +%s"))
    recs = g.run_records(rid)
    expect({r.get("fault_id") for r in recs} == ids, f"records {recs}")
    g.assert_all_reverted(recs, "after the restart")
    late = [r["fault_id"] for r in recs if r["updated_at"] > started]
    expect(not late, f"{late} reverted after the daemon (pid {new}) started at {started}")
    poll("the worker to run again", lambda: g.worker_state() in ("S", "R"), 30)
    expect(g.fill_files() == [], f"fill files left: {g.fill_files()}")
    g.assert_run_aborted(rid, "agent restarted", 2)
    log(f"run {rid}: aborted (agent restarted) at the control plane "
        f"{time.time() - t0:.1f}s after the SIGKILL")

    # `systemctl stop` mid-run: the daemon reverts, reports and exits 0 within the stop timeout
    rid = g.submit("stop", daemon_faults()[:1])
    g.wait_run_records(rid, 1, {"applied"})
    expect(g.worker_state() == "T", f"worker {g.worker_state()!r}, want T (stopped)")
    code, out, err = g.vm.exec("t=$(date +%s%N); systemctl stop chaos-agent; "
                               "echo $? $(( ($(date +%s%N) - t) / 1000000 ))", timeout=300)
    rc, ms = out.split()
    timeout_stop = g.unit("chaos-agent", "TimeoutStopUSec")
    log(f"systemctl stop mid-run: {ms} ms (TimeoutStopSec {timeout_stop})")
    p = g.show()
    expect(rc == "0" and p["ActiveState"] == "inactive" and p["Result"] == "success"
           and p["ExecMainCode"] == "1" and p["ExecMainStatus"] == "0",
           f"stop: systemctl exit {rc}, unit {p}; want inactive, success, exited 0")
    expect(g.worker_state() in ("S", "R"), f"worker {g.worker_state()!r} after stop")
    g.assert_all_reverted(g.run_records(rid), "after stop")
    # already at the control plane: the daemon flushed its outbox before it exited
    g.assert_run_aborted(rid, "stopping", 1, timeout=0)


@scenario
def sc_daemon_hard_reset(g):
    """The daemon holding faults, then a hard reset: the unit's recovery at boot, the daemon
    starts, and chaos-control (an enabled unit) hears that the run was aborted."""
    g.use_daemon()
    rid = g.submit("reset", daemon_faults())
    g.wait_run_records(rid, 2, {"applied"})
    fill = g.fill_files()
    expect(g.worker_state() == "T" and len(fill) == 1,
           f"faults not in effect: worker {g.worker_state()!r}, fill {fill}")
    g.vm.check("sync")  # the fill file (and the daemon's run file) on disk
    t0 = time.time()
    g.vm.reset()
    log(f"hard reset -> ready in {time.time() - t0:.1f}s")
    g.wait_agent_running()
    p = g.assert_daemon_up("after boot", "idle")
    expect(p["NRestarts"] == "0", f"NRestarts {p['NRestarts']} after boot: not a clean start")
    exec_start_pre_ok(g)
    expect(g.unit("chaos-control", "ActiveState") == "active", "chaos-control not back after boot")
    expect(g.fill_files() == [], f"fill file {fill} survived the reboot's recovery: {g.fill_files()}")
    expect(g.worker_state() is None, "the worker of the previous boot is back?")
    g.assert_all_reverted(g.run_records(rid), "after boot")
    g.assert_run_aborted(rid, "agent restarted", 2)
    log(f"run {rid}: aborted (agent restarted) at the control plane {time.time() - t0:.1f}s after the reset")


@scenario
def sc_daemon_cp_cut(g):
    """A run with a 10 s lease; `systemctl reload` does not disturb it; then the control plane
    is cut off (nft drops its port on lo): the daemon reverts within the lease and says so in
    STATUS=, and once the link is back the result and every log line arrive."""
    lease = 10
    g.use_daemon()
    rid = g.submit("cut", daemon_faults(), lease=f"{lease}s")
    g.wait_run_records(rid, 2, {"applied"})
    held_since = time.time()
    g.assert_daemon_up("holding the faults", f"running {rid}")
    # reload mid-run: the configuration is re-read, the run goes on
    pid, since = g.main_pid(), g.vm.sh("date +%s")
    g.vm.check("systemctl reload chaos-agent")
    # (a log line as a sync point only: what is checked below is state)
    poll("the daemon to re-read its configuration",
         lambda: "configuration re-read" in g.vm.sh(f"journalctl _PID={pid} --since @{since} -o cat"), 30)
    d = g.run_detail(rid)
    expect(d["state"] == "running" and not d.get("result"), f"after reload the run is {d['state']}")
    expect(g.main_pid() == pid, "reload replaced the main process")
    expect(g.worker_state() == "T" and len(g.fill_files()) == 1, "a fault ended at the reload")
    g.assert_daemon_up("after the reload", f"running {rid}")

    # a healthy link keeps the run past its lease: the daemon polls at least every lease/3,
    # also the poll already in flight when the run started
    def past_lease():
        expect(g.worker_state() == "T" and g.run_detail(rid)["state"] == "running",
               f"the run ended {time.time() - held_since:.1f}s into a {lease} s lease, "
               f"the link intact: {g.run_detail(rid).get('result')}")
        return time.time() > held_since + lease + 3
    poll(f"the run to outlive its lease ({lease} s + 3 s)", past_lease, lease + 30)
    # (chain "cp_cut": nftables 0.9.8 on bullseye takes "out" for a keyword)
    cut = (f"table inet {CUT_TABLE} {{\n chain cp_cut {{\n"
           f"  type filter hook output priority 0; policy accept;\n"
           f"  oifname \"lo\" tcp dport {CONTROL_PORT} drop\n"
           f"  oifname \"lo\" tcp sport {CONTROL_PORT} drop\n }}\n}}\n")
    deadline = lease + 20
    try:
        # in the guest: cut, then time until both faults are reverted (0.1 s resolution)
        code, out, err = g.vm.exec(
            f"""nft -f - || exit 2
            t=$(date +%s%N); end=$((t + {deadline} * 1000000000))
            while [ "$(ps -C chaos-worker -o stat= | head -c1)" = T ] || [ -n "$(ls -A {FILL_DIR})" ]; do
                [ "$(date +%s%N)" -gt "$end" ] && {{ echo timeout; exit 1; }}
                sleep 0.1
            done
            echo $(( ($(date +%s%N) - t) / 1000000 ))""", stdin=cut.encode(), timeout=deadline + 30)
        expect(code == 0, f"cut at {CONTROL_PORT}: faults not reverted within {deadline}s "
                          f"(exit {code}: {out}{err})")
        ms = int(out.split()[-1])
        log(f"control plane cut -> both faults reverted in {ms} ms (lease {lease} s)")
        expect(ms <= (lease + 5) * 1000, f"reverted {ms} ms after the cut: lease {lease} s + 5 s")
        t0 = time.time()
        poll("STATUS= to say the control plane is unreachable",
             lambda: "control plane unreachable" in g.show().get("StatusText", ""), 20)
        log(f"STATUS=: {g.show().get('StatusText')!r} ({time.time() - t0:.1f}s after the revert)")
        expect(g.worker_state() in ("S", "R"), f"worker {g.worker_state()!r} after the revert")
    finally:
        g.vm.exec(f"nft delete table inet {CUT_TABLE}")
    t0 = time.time()
    g.assert_run_aborted(rid, "lease", 2, timeout=90)
    log(f"link back -> result at the control plane in {time.time() - t0:.1f}s")
    g.assert_daemon_up("once the link is back", "idle")
    # the poll loop hung in a dropped long poll did not cost the daemon its watchdog
    expect(g.main_pid() == pid, f"the daemon was restarted during the cut (pid {pid} -> {g.main_pid()})")


@scenario
def sc_network_kernel_tests(g):
    """The privileged real-kernel tests of fault-network (netns + veth + netem), in the guest."""
    binary = os.environ.get("CHAOS_VM_NETWORK_TESTS")
    if not binary:
        raise Skip(os.environ.get("CHAOS_VM_NETWORK_TESTS_WHY", "fault-network is not in the workspace"))
    g.vm.copy(stripped(binary), "/root/fault-network-privileged")
    code, out, err = g.vm.exec("cd /root && ./fault-network-privileged --test-threads=1 2>&1",
                               timeout=600)
    summary = [line for line in out.splitlines() if line.startswith("test result")]
    log(summary[-1] if summary else out[-2000:])
    expect(code == 0, f"fault-network privileged tests failed (exit {code}):\n{out[-6000:]}{err}")


# ------------------------------------------------------------------ more scenarios
# Scenario modules next to this file register theirs with @scenario when imported (after the
# ones above, in import order). They import what they need from `suite`, which is this very
# module also when it runs as a script, so there is one SCENARIOS list.
sys.modules.setdefault("suite", sys.modules[__name__])
import stressors  # noqa: E402,F401
import doctor  # noqa: E402,F401
import timefault  # noqa: E402,F401
import dns  # noqa: E402,F401  (tests/vm/dns.py: dns.spoof and dns.error)

import packages  # noqa: E402  (tests/vm/packages.py: the .deb install/upgrade/remove/purge)

scenario(packages.scenario_for(sys.modules[__name__]))


# ------------------------------------------------------------------ suite
def stripped(path):
    """A copy of a binary without debug info (4x smaller: a faster copy into the guest)."""
    out = os.path.join(vm_tmp(), os.path.basename(path))
    if subprocess.run(["strip", "--strip-debug", "-o", out, path]).returncode != 0:
        return path
    return out


def vm_tmp():
    d = os.path.join(CACHE, "tmp", str(os.getpid()))
    os.makedirs(d, exist_ok=True)
    return d


def install(vm):
    """Put the agent, its packaged unit (+ the suite's drop-in) and the victims in the guest."""
    vm.copy(stripped(os.environ["CHAOS_VM_AGENT"]), "/usr/local/bin/chaos-agent")
    vm.copy(os.path.join(REPO, "packaging", "chaos-agent.service"),
            "/etc/systemd/system/chaos-agent.service")
    vm.check("mkdir -p /etc/systemd/system/chaos-agent.service.d /usr/local/lib/chaos-vm")
    vm.copy(os.path.join(HERE, "guest", "50-vm-test.conf"),
            "/etc/systemd/system/chaos-agent.service.d/50-vm-test.conf")
    vm.copy(os.path.join(HERE, "guest", "agent-main"), "/usr/local/lib/chaos-vm/agent-main")
    vm.copy(os.path.join(HERE, "guest", "chaos-victim.service"),
            "/etc/systemd/system/chaos-victim.service")
    if os.environ.get("CHAOS_VM_CONTROL"):  # the daemon scenarios' control plane (not started)
        vm.copy(stripped(os.environ["CHAOS_VM_CONTROL"]), "/usr/local/bin/chaos-control")
        vm.copy(os.path.join(HERE, "guest", "chaos-control.service"),
                "/etc/systemd/system/chaos-control.service")
    # mmdebstrap's /etc/hosts has no localhost, which the daemon's control plane URL names
    vm.check("grep -qw localhost /etc/hosts || echo '127.0.0.1 localhost' >> /etc/hosts")
    vm.check(f"""set -e
        cp /bin/sleep /usr/local/bin/chaos-worker
        mkdir -p {FILL_DIR}
        systemctl daemon-reload
        systemctl enable --now chaos-agent.service
        systemctl start chaos-victim.service
        systemd-run --quiet --unit=chaos-worker /usr/local/bin/chaos-worker infinity
        systemctl is-active chaos-agent.service chaos-victim.service chaos-worker.service
        sync""")


def plan(selection, guests):
    """[(guest, name)] that `selection` (NAME: on every guest of `guests`; GUEST/NAME: on
    that guest) selects, in guest order then scenario order; all of them when empty.
    Raises ValueError naming what is unknown."""
    names = [n for n, _ in SCENARIOS]
    bad = [g for g in guests if g not in GUESTS]
    if bad:
        raise ValueError(f"unknown guest(s) {bad} (CHAOS_VM_GUESTS); known: {list(GUESTS)}")
    if not guests:
        raise ValueError("no guest (CHAOS_VM_GUESTS is empty)")
    picked = set()
    for sel in selection:
        g, _, n = sel.rpartition("/")
        if (g and g not in GUESTS) or n not in names:
            raise ValueError(f"unknown scenario {sel!r}; known: {names}, each on a guest of "
                             f"{list(GUESTS)} as GUEST/NAME")
        picked |= {(g, n)} if g else {(x, n) for x in guests}
    order = list(guests) + [g for g in GUESTS if g not in guests]

    def by_default(g, n):
        return g in guests and g in ONLY_ON.get(n, {g})
    return [(g, n) for g in order for n in names
            if not selection and by_default(g, n) or (g, n) in picked]


def record(name, res):
    """Append this scenario's result for run.sh's sum over the guests."""
    if os.environ.get("CHAOS_VM_RESULTS"):
        with open(os.environ["CHAOS_VM_RESULTS"], "a") as f:
            f.write(f"{name} {res}\n")


def main(argv):
    if argv == ["--list"]:
        print("\n".join(n for n, _ in SCENARIOS))
        return 0
    try:
        if argv[:1] == ["--plan"]:
            guests = os.environ.get("CHAOS_VM_GUESTS", " ".join(GUESTS)).split()
            print("\n".join(f"{g}/{n}" for g, n in plan(argv[1:], guests)))
            return 0
        suite = guest()
        todo_names = [n for g, n in plan(argv, [suite]) if g == suite]
    except (ValueError, VmError) as e:
        sys.exit(f"vm: {e}")
    # SIGTERM (CI's timeout, run.sh's trap) unwinds like Ctrl-C, so the VM is taken down
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    todo = [(f"{suite}/{n}", f) for n, f in SCENARIOS if n in todo_names]
    vm = Vm(os.environ.get("VM_NAME", f"suite-{os.getpid()}"), suite=suite)
    g = Guest(vm, suite)
    results, t_suite = [], time.time()
    run_dir = os.path.join(ARTIFACTS, time.strftime("%Y%m%d-%H%M%S") + f"-{suite}")
    if os.path.isdir(ARTIFACTS):  # keep the logs of the last 10 runs
        for old in sorted(os.listdir(ARTIFACTS))[:-10]:
            shutil.rmtree(os.path.join(ARTIFACTS, old), ignore_errors=True)
    interrupted = False
    try:
        t0 = time.time()
        try:
            vm.up()
            print(f"vm: {suite}: booted in {time.time() - t0:.1f}s "
                  f"({vm.sh('uname -r')}, systemd {vm.sh('systemctl --version | head -n1').split()[1]})",
                  flush=True)
            t1 = time.time()
            install(vm)
            g.kinds = {k["kind"] for k in json.loads(vm.sh("chaos-agent faults --json"))}
            vm.save("clean")
            print(f"vm: {suite}: agent installed, snapshot 'clean' taken in {time.time() - t1:.1f}s", flush=True)
        except Exception as e:  # noqa: BLE001 - any setup failure fails every scenario loudly
            dest = vm.collect_logs(os.path.join(run_dir, "setup")) if vm.pid() else None
            print(f"vm: {suite}: FAILED to boot or set up the VM: {e}", flush=True)
            if dest:
                print(f"vm: {suite}: logs in {dest}", flush=True)
            for name, _ in todo:
                record(name, "FAIL")
            print(f"vm: {suite}: 0 passed, {len(todo)} failed")
            return 1
        for name, fn in todo:
            t0 = time.time()
            print(f"vm: {name} ...", flush=True)
            try:
                vm.restore("clean")
                fn(g)
                res = "PASS"
            except Skip as e:
                res = "SKIP"
                print(f"    SKIPPED {name}: {e}", flush=True)
            except (Fail, VmError, Exception) as e:  # noqa: BLE001
                res = "FAIL"
                detail = str(e) if isinstance(e, (Fail, VmError)) else traceback.format_exc()
                print(f"    FAIL: {detail}", flush=True)
                try:
                    dest = vm.collect_logs(os.path.join(run_dir, name.split("/")[-1]))
                    tail = vm.sh("journalctl -b 0 -u chaos-agent -n 25 --no-pager -o short-precise")
                    print("    last lines of the agent's unit journal:\n      "
                          + tail.replace("\n", "\n      "), flush=True)
                    print(f"    logs: {dest}", flush=True)
                except Exception as le:  # noqa: BLE001
                    print(f"    (could not collect logs: {le})", flush=True)
            results.append((name, res))
            record(name, res)
            print(f"vm: {name}: {res} in {time.time() - t0:.1f}s", flush=True)
    except (KeyboardInterrupt, SystemExit):
        interrupted = True
        print("vm: interrupted", flush=True)
    finally:
        vm.down()
        shutil.rmtree(vm_tmp(), ignore_errors=True)
    # (not "vm: N passed": that line is run.sh's, the sum over the guests)
    passed = sum(r == "PASS" for _, r in results)
    skipped = sum(r == "SKIP" for _, r in results)
    failed = len(todo) - passed - skipped  # an interrupted run's missing ones failed
    print(f"vm: {suite}: {passed} passed, {failed} failed"
          + (f", {skipped} skipped" if skipped else "") + f" in {time.time() - t_suite:.1f}s"
          + (" (interrupted)" if interrupted else ""))
    return 1 if failed or interrupted else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
