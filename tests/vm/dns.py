"""VM scenario `dns`: dns.spoof and dns.error on a real distribution's /etc/hosts and
/etc/resolv.conf: `chaos-agent run` with getent during and after, then a hard reset with the
faults applied by chaos-agent.service (reverted by the recovery at boot) while
/etc/resolv.conf is a symlink to a stub file (put back as the same symlink).

Registered into suite.py's scenario list on import (suite.py imports this module).
"""
import json
import time

from suite import Fail, expect, experiment_toml, log, poll, scenario

RUN_STATE = "/var/lib/chaos-dns-run"
RUN_UNIT = "chaos-dns-run"
EVENTS = "/run/chaos-dns-run.jsonl"
SAVED = "/root/resolv.conf.before-dns-scenario"
STUB = "/var/lib/chaos-dns-stub/resolv.conf"
RESOLV = "nameserver 10.0.2.3\noptions rotate timeout:1 attempts:1\n"


def dns_faults():
    return [{"kind": "dns.spoof", "duration": "10m", "names": ["api.chaos.test"],
             "addresses": ["10.1.2.3"]},
            {"kind": "dns.error", "duration": "10m", "names": ["blocked.chaos.test", "*.bad.chaos.test"]}]


def state(g):
    """Bytes (sha256), mode and owner of both files, and what /etc/resolv.conf links to."""
    return g.vm.sh("sha256sum /etc/hosts /etc/resolv.conf; stat -c '%n %a %U %G %F' /etc/hosts "
                   "/etc/resolv.conf; readlink /etc/resolv.conf; true")


def getent(g, name):
    """The first address `getent hosts name` gives, or None (exit 2: does not resolve)."""
    code, out, err = g.vm.exec(f"getent hosts {name}")
    if code == 2:
        return None
    expect(code == 0, f"getent hosts {name}: exit {code} {err}")
    return out.split()[0]


def assert_in_effect(g, context):
    expect(getent(g, "api.chaos.test") == "10.1.2.3", f"{context}: api.chaos.test is not spoofed")
    t0 = time.time()
    expect(getent(g, "blocked.chaos.test") is None, f"{context}: blocked.chaos.test resolves")
    expect(getent(g, "x.bad.chaos.test") is None, f"{context}: x.bad.chaos.test resolves")
    took = time.time() - t0
    resolv = g.vm.sh("cat /etc/resolv.conf")
    [ns] = [line.split()[1] for line in resolv.splitlines()
            if line.startswith("nameserver ") and "# chaos-agent " in line]
    listening = g.vm.sh(f"ss -Hulpn src {ns}:53")
    expect("chaos-agent" in listening, f"{context}: nothing of the agent's on {ns}:53: {listening!r}")
    expect("#chaos-agent " in resolv and "options timeout:1 attempts:1 # chaos-agent " in resolv,
           f"{context}: options rotate not taken out:\n{resolv}")
    log(f"{context}: spoofed, NXDOMAIN from {ns}:53 ({took:.2f}s for two lookups)")


@scenario
def sc_dns(g):
    """dns.spoof + dns.error: in effect during `chaos-agent run`, files byte-identical after;
    a hard reset with them applied by the service is reverted at boot, a symlinked
    /etc/resolv.conf coming back as the same symlink."""
    if not {"dns.spoof", "dns.error"} <= g.kinds:
        raise Fail(f"dns.spoof/dns.error not registered: {sorted(g.kinds)}")
    had = g.vm.exec("test -e /etc/resolv.conf || test -L /etc/resolv.conf")[0] == 0
    if had:
        g.vm.check(f"cp -a /etc/resolv.conf {SAVED}")
    try:
        g.vm.check("rm -f /etc/resolv.conf")
        g.vm.write("/etc/resolv.conf", RESOLV)
        run_and_revert(g)
        hard_reset_with_a_symlink(g)
    finally:
        g.vm.exec(f"systemctl stop {RUN_UNIT}; rm -f /etc/resolv.conf")
        if had:
            g.vm.check(f"mv {SAVED} /etc/resolv.conf")
        g.vm.exec(f"rm -rf {RUN_STATE} /var/lib/chaos-dns-stub")


def run_and_revert(g):
    before = state(g)
    g.vm.write("/root/dns.toml", experiment_toml("dns", dns_faults()))
    g.vm.check(f"rm -f {EVENTS}; systemd-run --quiet --unit={RUN_UNIT} "
               f"--property=StandardOutput=file:{EVENTS} /usr/local/bin/chaos-agent "
               f"--state-dir {RUN_STATE} run --json /root/dns.toml")

    def holding():
        events = [json.loads(line) for line in g.vm.sh(f"cat {EVENTS}").splitlines()
                  if line.startswith("{")]
        kinds = {e.get("kind") for e in events if e.get("event") == "fault" and e.get("state") == "holding"}
        failed = [e for e in events if e.get("event") == "run-finished"]
        if failed:
            raise Fail(f"the run ended before both faults held: {failed[-1]}")
        return kinds >= {"dns.spoof", "dns.error"}
    poll("both DNS faults to hold", holding, 60)
    assert_in_effect(g, "during chaos-agent run")
    g.vm.check(f"systemctl stop {RUN_UNIT}", timeout=120)
    after = state(g)
    expect(after == before, f"after the run's revert:\n{after}\nbefore:\n{before}")
    expect(getent(g, "api.chaos.test") != "10.1.2.3", "api.chaos.test still spoofed after the run")
    log("run reverted on SIGTERM: both files byte-identical, same mode and owner")


def hard_reset_with_a_symlink(g):
    g.vm.write(STUB, RESOLV)
    g.vm.check(f"ln -sfn {STUB} /etc/resolv.conf")
    before = state(g)
    stub = g.vm.sh(f"sha256sum {STUB}")
    ids = g.queue("dns-reset", dns_faults())
    g.wait_records(ids, 2, {"applied"})
    expect(g.vm.exec("test -L /etc/resolv.conf")[0] != 0,
           "/etc/resolv.conf is still a symlink during dns.error")
    assert_in_effect(g, "applied by chaos-agent.service")
    g.vm.check("sync")
    t0 = time.time()
    g.vm.reset()
    log(f"hard reset -> ready in {time.time() - t0:.1f}s")
    pid = g.wait_agent_running()
    at_start = [r for r in g.start_snapshot(pid) if r["fault_id"] not in ids]
    expect(len(at_start) == 2, f"agent saw {len(at_start)} records at start")
    g.assert_all_reverted(at_start, "at the agent's start after boot")
    after = state(g)
    expect(after == before, f"after the recovery at boot:\n{after}\nbefore:\n{before}")
    expect(g.vm.sh("readlink /etc/resolv.conf") == STUB, "/etc/resolv.conf is not the symlink again")
    expect(g.vm.sh(f"sha256sum {STUB}") == stub, "the stub file was written")
    log("hard reset: the recovery at boot put /etc/hosts back and /etc/resolv.conf back as a symlink")

