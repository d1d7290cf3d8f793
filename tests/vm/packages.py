"""The `packages` VM scenario: the .deb installed, upgraded while a fault is active, removed
(also refused while the host is not clean) and purged, against chaos-control in the guest.

Imported by suite.py, which registers `scenario_for(suite)`. Needs two .deb files of the same
binaries with different versions (scripts/release.sh --bin-dir DIR --formats deb --version V):

  CHAOS_VM_DEB           the version installed first
  CHAOS_VM_DEB_UPGRADE   a higher version, installed over it mid-run

Without them the scenario is skipped. Every assertion is on guest state: dpkg's database,
files and their modes, unit properties, the agent's journal, chaos-control's view of runs.
"""
import os
import re
import time

PKG_BIN = "/usr/bin/chaos-agent"
PKG_UNIT = "/lib/systemd/system/chaos-agent.service"
# What a purge must leave nowhere (the suite's own files are elsewhere: /usr/local, /run).
PKG_PATHS = ["/etc/chaos-agent", "/var/lib/chaos-agent", PKG_BIN, PKG_UNIT,
             "/usr/share/doc/chaos-agent", "/etc/systemd/system/chaos-agent.service.d"]


def deb_version(path):
    """The version in a file name chaos-agent_<version>_amd64.deb."""
    m = re.fullmatch(r"chaos-agent_(.+)_amd64\.deb", os.path.basename(path))
    if not m:
        raise ValueError(f"{path}: not named chaos-agent_<version>_amd64.deb")
    return m.group(1)


def scenario_for(s):
    """The scenario function, using suite.py's helpers (module `s`)."""
    expect, log, poll = s.expect, s.log, s.poll

    def dpkg(g, args, timeout=400):
        code, out, err = g.vm.exec(f"DEBIAN_FRONTEND=noninteractive dpkg {args} 2>&1", timeout=timeout)
        return code, out + err

    def pkg_status(g):
        return g.vm.sh("dpkg-query -W -f '${Status} ${Version}' chaos-agent 2>/dev/null")

    def mode(g, path):
        return g.vm.sh(f"stat -c '%a %U:%G' {path}")

    def sc_packages(g):
        """The .deb: install (not started without a configuration), configure, a run holding
        faults, upgrade mid-run (the old agent reverts and reports before its files are
        replaced; the new one starts on the old journal), a removal refused while a revert
        needs a person, the removal, the purge."""
        deb1, deb2 = os.environ.get("CHAOS_VM_DEB"), os.environ.get("CHAOS_VM_DEB_UPGRADE")
        if not (deb1 and deb2):
            raise s.Skip("no packages (CHAOS_VM_DEB, CHAOS_VM_DEB_UPGRADE; scripts/release.sh --formats deb)")
        v1, v2 = deb_version(deb1), deb_version(deb2)
        code, _, _ = g.vm.exec(f"dpkg --compare-versions {v2} gt {v1}")
        expect(code == 0, f"CHAOS_VM_DEB_UPGRADE {v2} is not newer than CHAOS_VM_DEB {v1}")
        vm = g.vm
        # the host as before any installation: no suite agent, no unit shadowing the package's
        vm.check("""set -e
            systemctl disable --now chaos-agent.service
            rm -rf /etc/systemd/system/chaos-agent.service /etc/systemd/system/chaos-agent.service.d \
                   /usr/local/bin/chaos-agent /var/lib/chaos-agent /etc/chaos-agent
            systemctl daemon-reload
            systemctl reset-failed chaos-agent.service 2>/dev/null || true""", timeout=300)
        vm.copy(deb1, "/root/v1.deb")
        vm.copy(deb2, "/root/v2.deb")

        # ---- install, no configuration: enabled, not started, next steps printed
        t0 = time.time()
        code, out = dpkg(g, "-i /root/v1.deb")
        expect(code == 0, f"dpkg -i v1: exit {code}\n{out}")
        log(f"dpkg -i {v1} (no configuration): {time.time() - t0:.1f}s")
        expect(pkg_status(g) == f"install ok installed {v1}", f"dpkg status: {pkg_status(g)}")
        expect("there is no configuration yet" in out, f"no next steps printed:\n{out}")
        expect(g.unit("chaos-agent", "UnitFileState") == "enabled", "not enabled by the install")
        expect(g.unit("chaos-agent", "ActiveState") == "inactive", "started without a configuration")
        expect(g.unit("chaos-agent", "FragmentPath") == PKG_UNIT, g.unit("chaos-agent", "FragmentPath"))
        for path, want in ((PKG_BIN, "755 root:root"), (PKG_UNIT, "644 root:root"),
                           ("/etc/chaos-agent/config.d", "700 root:root"),
                           ("/var/lib/chaos-agent", "700 root:root"),
                           ("/etc/chaos-agent/agent.toml.sample", "644 root:root")):
            expect(mode(g, path) == want, f"{path}: {mode(g, path)}, want {want}")

        # ---- configure it against chaos-control in the guest; a run holding two faults
        g.use_daemon(agent_bin=PKG_BIN)
        rid = g.submit("upgrade", s.daemon_faults())
        g.wait_run_records(rid, 2, {"applied"})
        expect(g.worker_state() == "T" and len(g.fill_files()) == 1,
               f"faults not in effect: worker {g.worker_state()!r}, fill {g.fill_files()}")
        old = g.main_pid()

        # ---- upgrade mid-run
        t0 = time.time()
        code, out = dpkg(g, "-i /root/v2.deb")
        expect(code == 0, f"dpkg -i v2: exit {code}\n{out}")
        log(f"dpkg -i {v2} over {v1} with 2 faults held: {time.time() - t0:.1f}s")
        expect(pkg_status(g) == f"install ok installed {v2}", f"dpkg status: {pkg_status(g)}")
        new = g.wait_agent_running(not_pid=old)
        g.assert_daemon_up("after the upgrade", "idle")
        s.exec_start_pre_ok(g)
        recs = g.run_records(rid)
        expect(len(recs) == 2, f"records of run {rid}: {recs}")
        g.assert_all_reverted(recs, "after the upgrade")
        # reverted by the OLD agent: no later than dpkg put the new binary in place (the
        # rename that installs it sets its ctime)
        replaced = int(vm.sh(f"stat -c %Z {PKG_BIN}"))
        late = [r["fault_id"] for r in recs if r["updated_at"] > replaced]
        expect(not late, f"{late} reverted after the new binary was installed at {replaced}")
        expect(g.worker_state() in ("S", "R") and g.fill_files() == [],
               f"host not clean: worker {g.worker_state()!r}, fill {g.fill_files()}")
        # the old daemon reported before it exited (SIGTERM: "stopping")
        g.assert_run_aborted(rid, "stopping", 2, timeout=30)
        log(f"upgrade: run {rid} reverted by the old agent and reported; new main process {new}")

        # ---- remove while a revert needs a person: refused, the agent runs again
        rid = g.submit("remove", s.daemon_faults()[1:])
        g.wait_run_records(rid, 1, {"applied"})
        [fill] = g.fill_files()
        path = f"{s.FILL_DIR}/{fill}"
        vm.check(f"chattr +i {path}")
        try:
            code, out = dpkg(g, "-r chaos-agent")
            expect(code != 0, f"dpkg -r succeeded with an immutable fill file:\n{out}")
            log("dpkg -r refused:\n      " + "\n      ".join(out.strip().splitlines()[-14:]))
            expect("THE HOST IS NOT CLEAN" in out and path in out,
                   f"the refusal does not say what is left:\n{out}")
            # (dpkg keeps the wish "deinstall"; the package is still installed)
            expect(pkg_status(g).endswith(f" ok installed {v2}"), f"after the refusal: {pkg_status(g)}")
            g.wait_agent_running()
            log("dpkg -r refused while a revert needs a person; the agent runs again")
        finally:
            vm.exec(f"chattr -i {path}")

        # ---- remove: stops (reverts), recovers, disables; only conffiles and state left
        code, out = dpkg(g, "-r chaos-agent")
        expect(code == 0, f"dpkg -r: exit {code}\n{out}")
        expect(pkg_status(g).startswith("deinstall ok config-files"), f"after dpkg -r: {pkg_status(g)}")
        expect(g.fill_files() == [] and g.worker_state() in ("S", "R"),
               f"host not clean after dpkg -r: fill {g.fill_files()}, worker {g.worker_state()!r}")
        expect(vm.sh("pgrep -x chaos-agent") == "", "a chaos-agent process is left")
        expect(g.unit("chaos-agent", "LoadState") == "not-found", "the unit is still loaded")
        expect(vm.sh("find /etc/systemd -name 'chaos-agent*'") == "", "enable symlinks left")
        left = vm.sh(f"ls -d {' '.join(PKG_PATHS)} 2>/dev/null").split()
        expect(left == ["/etc/chaos-agent", "/var/lib/chaos-agent"], f"after dpkg -r: {left}")
        # dpkg still knows the conffile, and the directories it shipped that are not empty
        listed = set(vm.sh("dpkg -L chaos-agent").split())
        expect(listed == {"/etc", "/etc/chaos-agent", "/etc/chaos-agent/agent.toml.sample",
                          "/etc/chaos-agent/config.d"}, f"dpkg -L after -r: {sorted(listed)}")
        expect(vm.sh("ls /etc/chaos-agent/config.d") == "20-control.toml", "configuration lost")

        # ---- purge: nothing left
        code, out = dpkg(g, "--purge chaos-agent")
        expect(code == 0, f"dpkg --purge: exit {code}\n{out}")
        expect(pkg_status(g) == "", f"after --purge: {pkg_status(g)}")
        code, _, _ = vm.exec("dpkg -L chaos-agent")
        expect(code != 0, "dpkg -L still knows chaos-agent")
        left = vm.sh(f"ls -d {' '.join(PKG_PATHS)} 2>/dev/null")
        expect(left == "", f"left after the purge: {left}")
        stray = vm.sh("find /etc /var/lib /usr/bin /lib/systemd /usr/share/doc -name '*chaos-agent*'")
        expect(stray == "", f"left after the purge: {stray}")
        log("dpkg -r: host clean, conffile and state kept; dpkg --purge: nothing left")

    return sc_packages
