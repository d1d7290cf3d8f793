#!/usr/bin/env python3
"""QEMU harness for the chaos-agent VM suite (python3 stdlib only). See docs/testing.md.

Library (what a scenario calls):   vm = Vm("suite"); vm.up(); vm.exec("cmd") -> (code, out, err)
  up · exec / sh / check · copy · reset (hard) · wait · save / restore (snapshot) · down ·
  collect_logs(dir) (serial console + guest journal of this boot and the previous one)

Command line (by hand; one VM per VM_NAME, default "dev"):
  vm.py up                 boot a throw-away VM (qcow2 overlay on the cached base image)
  vm.py exec [-i] CMD...   run CMD with /bin/sh -c in the guest; stdout/stderr/exit code
                           passed through (-i: feed our stdin to it)
  vm.py copy SRC DST       copy a host file into the guest (keeps the mode bits, syncs)
  vm.py reset              hard reset (QMP system_reset = reset button), wait until ready
  vm.py save [TAG]         snapshot RAM+disk into the overlay (default tag "clean")
  vm.py restore [TAG]      back to that snapshot, fix the guest clock
  vm.py wait [BOOT_ID]     wait until ready (and, given the old boot id, rebooted)
  vm.py logs DIR           write serial.log, journal-this-boot.txt, journal-previous-boot.txt
  vm.py log                print the serial console
  vm.py down [--keep]      stop the VM and delete its overlay (--keep: keep the run dir)
  vm.py guests             print the guests an image can be built of (bookworm bullseye)
  vm.py image-dir [GUEST]  print where the image of GUEST (default $CHAOS_VM_GUEST, else
                           bookworm) for this build-image.sh is (or would be)

Commands run through qemu-guest-agent over virtio-serial, not the network, so a scenario can
break guest networking (tc/nft) without losing control of the VM. Networking is slirp with
restrict=on: the guest reaches its gateway 10.0.2.2 and nothing else.

Env: CHAOS_VM_CACHE (default /var/tmp/chaos-agent-vm: images/<key>/ and run/<name>/),
     CHAOS_VM_GUEST (bookworm | bullseye, default bookworm: which cached image to boot),
     CHAOS_VM_IMAGE (an image dir; default the cached one of the guest for the hash of
     build-image.sh),
     VM_NAME, VM_ACCEL (tcg|kvm, default tcg), VM_MEM (MiB, 1024), VM_CPUS (2),
     VM_TIMEOUT (s, default 300: boot/reset/command deadline), VM_KARGS, VM_CPU.
"""
import base64
import gzip
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.environ.get("CHAOS_VM_CACHE", "/var/tmp/chaos-agent-vm")
TIMEOUT = float(os.environ.get("VM_TIMEOUT", "300"))

# mitigations=off / tsc=reliable: a big win under TCG (no emulated HPET reads, no return
# thunks); this is a throw-away test VM.
KARGS = "console=ttyS0 root=/dev/vda ro quiet mitigations=off tsc=reliable"

ACCEL = {
    # For a host with real VT-x/AMD-V. (/dev/kvm on the project's machine is nested PVM: a
    # stock kernel crawls there, so the default is TCG.)
    "kvm": ["-enable-kvm", "-cpu", "host,-arch-capabilities"],
    # qemu64 boots ~1.5x faster than "max" under TCG (fewer emulated features)
    "tcg": ["-accel", "tcg,thread=multi", "-cpu", "qemu64"],
}


class VmError(Exception):
    """The VM did not do what was asked (boot, command, snapshot, ...)."""


# The Debian suites build-image.sh can build a guest of (docs/testing.md: what each proves).
GUESTS = ("bookworm", "bullseye")


def guest():
    """The guest this process works with: $CHAOS_VM_GUEST, default bookworm."""
    g = os.environ.get("CHAOS_VM_GUEST") or "bookworm"
    if g not in GUESTS:
        raise VmError(f"unknown guest {g!r} (CHAOS_VM_GUEST): one of {', '.join(GUESTS)}")
    return g


def image_key(suite=None):
    """Cache key of a guest's image: the suite and a hash of its recipe (build-image.sh and
    the suite, its only inputs), so the images of every guest are cached side by side."""
    suite = suite or guest()
    with open(os.path.join(HERE, "build-image.sh"), "rb") as f:
        recipe = f.read()
    digest = hashlib.sha256(recipe + b"\0" + suite.encode()).hexdigest()[:16]
    return f"{suite}-{digest}"


def image_dir(suite=None):
    return os.environ.get("CHAOS_VM_IMAGE") or os.path.join(CACHE, "images", image_key(suite))


# ------------------------------------------------------------------ QMP / guest agent
def _connect(path, timeout):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    return s


class _Qga:
    """qemu-guest-agent client (JSON lines over the virtio-serial chardev)."""

    def __init__(self, path, timeout=10):
        self.s = _connect(path, timeout)
        self.buf = b""
        # guest-sync-delimited: the agent answers 0xFF then the reply; anything before the
        # 0xFF (stale replies, e.g. from before a reset or a snapshot restore) is dropped.
        sync_id = random.randrange(1, 2**31)
        self._send("guest-sync-delimited", id=sync_id)
        while True:
            chunk = self._recv()
            if b"\xff" in chunk:
                self.buf = chunk.rsplit(b"\xff", 1)[1]
                break
        while self._reply() != sync_id:
            pass

    def _recv(self):
        data = self.s.recv(65536)
        if not data:
            raise ConnectionError("guest agent closed the connection")
        return data

    def _send(self, cmd, **args):
        self.s.sendall(json.dumps({"execute": cmd, "arguments": args}).encode() + b"\n")

    def _reply(self):
        while b"\n" not in self.buf:
            self.buf += self._recv()
        line, self.buf = self.buf.split(b"\n", 1)
        msg = json.loads(line)
        if "error" in msg:
            raise VmError(f"guest agent: {msg['error']}")
        return msg["return"]

    def call(self, cmd, **args):
        self._send(cmd, **args)
        return self._reply()

    def close(self):
        self.s.close()


class Vm:
    """One throw-away VM: a qcow2 overlay over the cached image, state in run/<name>/."""

    def __init__(self, name=None, image=None, suite=None):
        self.name = name or os.environ.get("VM_NAME", "dev")
        self.image = image or image_dir(suite)
        self.run = os.path.join(CACHE, "run", self.name)
        self.qga_sock = os.path.join(self.run, "qga.sock")
        self.qmp_sock = os.path.join(self.run, "qmp.sock")
        self.pidfile = os.path.join(self.run, "qemu.pid")
        self.serial = os.path.join(self.run, "serial.log")

    # ---------------------------------------------------------------- plumbing
    def qmp(self, cmd, **args):
        """One QMP command on a fresh connection; returns its 'return' value."""
        with _connect(self.qmp_sock, 60) as s:
            f = s.makefile("rwb")
            json.loads(f.readline())  # greeting
            for req in ({"execute": "qmp_capabilities"}, {"execute": cmd, "arguments": args}):
                f.write(json.dumps(req).encode() + b"\n")
                f.flush()
                while True:
                    line = f.readline()
                    if not line:
                        raise VmError(f"QMP {cmd}: connection closed")
                    msg = json.loads(line)
                    if "event" in msg:
                        continue
                    if "error" in msg:
                        raise VmError(f"QMP {cmd}: {msg['error']}")
                    break
            return msg.get("return")

    def hmp(self, command_line):
        out = self.qmp("human-monitor-command", **{"command-line": command_line})
        if out and out.strip():
            raise VmError(f"{command_line}: {out.strip()}")

    def _agent(self, deadline):
        while True:
            try:
                return _Qga(self.qga_sock)
            except (OSError, ConnectionError, ValueError, VmError) as e:
                if time.time() > deadline:
                    raise VmError(f"guest agent not answering: {e}") from e
                time.sleep(0.5)

    def pid(self):
        try:
            with open(self.pidfile) as f:
                p = int(f.read())
            os.kill(p, 0)
            return p
        except (OSError, ValueError):
            return None

    # ---------------------------------------------------------------- the API
    def exec(self, cmd, stdin=b"", timeout=None, _a=None):
        """Run cmd with /bin/sh -c in the guest; returns (exit code, stdout str, stderr str).

        Never start a daemon with it: guest-exec reports "exited" only once the command's
        stdout and stderr close (use systemd-run or systemctl)."""
        a = _a or self._agent(time.time() + 30)
        try:
            args = {"path": "/bin/sh", "arg": ["-c", cmd], "capture-output": True}
            if stdin:
                args["input-data"] = base64.b64encode(stdin).decode()
            gpid = a.call("guest-exec", **args)["pid"]
            end = time.time() + (timeout or TIMEOUT)
            while True:
                st = a.call("guest-exec-status", pid=gpid)
                if st["exited"]:
                    break
                if time.time() > end:
                    raise VmError(f"timeout ({timeout or TIMEOUT:.0f}s) waiting for guest command: {cmd}")
                time.sleep(0.05)
        finally:
            if _a is None:
                a.close()
        out = base64.b64decode(st.get("out-data", "")).decode(errors="replace")
        err = base64.b64decode(st.get("err-data", "")).decode(errors="replace")
        return st.get("exitcode", 128 + st.get("signal", 0)), out, err

    def check(self, cmd, timeout=None):
        """Run cmd; raise VmError (with its output) unless it exits 0; return stdout."""
        code, out, err = self.exec(cmd, timeout=timeout)
        if code != 0:
            raise VmError(f"guest command failed (exit {code}): {cmd}\n{out}{err}".rstrip())
        return out

    def sh(self, cmd, timeout=None):
        """stdout of cmd, stripped (exit code ignored)."""
        return self.exec(cmd, timeout=timeout)[1].strip()

    def copy(self, src, dst):
        """Copy a host file to dst in the guest, keeping its mode bits; fsync'd. Files over
        1 MiB travel gzip'd (binaries: a third of the size; the guest agent's base64 under TCG
        is the slow part)."""
        with open(src, "rb") as f:
            data = f.read()
        mode = os.stat(src).st_mode & 0o7777
        q = "'" + dst.replace("'", "'\\''") + "'"
        packed = len(data) > (1 << 20)
        if packed:
            data = gzip.compress(data, compresslevel=1)
        tmp = "'" + (dst + ".gz.part").replace("'", "'\\''") + "'" if packed else q
        a = self._agent(time.time() + 30)
        try:
            chunk = 4 << 20  # keep guest-agent messages small
            for i in range(0, max(len(data), 1), chunk):
                code, _, err = self.exec(f"cat {'>' if i == 0 else '>>'} {tmp}",
                                         stdin=data[i:i + chunk], _a=a)
                if code:
                    raise VmError(f"copy {src} -> {dst}: {err}")
            if packed:
                code, _, err = self.exec(f"gzip -dc {tmp} > {q} && rm -f {tmp}", _a=a)
                if code:
                    raise VmError(f"copy {src} -> {dst}: {err}")
            code, _, err = self.exec(f"chmod {mode:o} {q} && sync {q}", _a=a)
            if code:
                raise VmError(f"copy {src} -> {dst}: {err}")
        finally:
            a.close()

    def write(self, dst, text, mode=0o644):
        """Write text to dst in the guest (fsync'd)."""
        q = "'" + dst.replace("'", "'\\''") + "'"
        code, _, err = self.exec(f"mkdir -p \"$(dirname {q})\" && cat > {q} && chmod {mode:o} {q} && sync {q}",
                                 stdin=text.encode())
        if code:
            raise VmError(f"write {dst}: {err}")

    def boot_id(self):
        return self.sh("cat /proc/sys/kernel/random/boot_id")

    def clock_skew(self):
        """(guest wall clock - host wall clock, error bound), in seconds: qemu-guest-agent's
        guest-get-time (the guest's CLOCK_REALTIME, no process started), bracketed by two
        host readings; the bound is half the round trip."""
        a = self._agent(time.time() + 30)
        try:
            t0 = time.time()
            ns = a.call("guest-get-time")
            t1 = time.time()
        finally:
            a.close()
        return ns / 1e9 - (t0 + t1) / 2, (t1 - t0) / 2

    def wait(self, old_boot_id=None, timeout=None):
        """Until the guest agent answers, the boot id differs from old_boot_id (if given) and
        systemd finished starting up ("running" or "degraded"). Returns the state."""
        deadline = time.time() + (timeout or TIMEOUT)
        while True:
            if time.time() > deadline:
                raise VmError(f"guest not ready within {timeout or TIMEOUT:.0f}s")
            try:
                a = self._agent(deadline)
            except VmError:
                if not self.pid():
                    raise VmError("qemu exited; see the serial log") from None
                raise
            try:
                if old_boot_id and self.exec("cat /proc/sys/kernel/random/boot_id",
                                             _a=a)[1].strip() == old_boot_id:
                    time.sleep(0.5)
                    continue
                _, out, _ = self.exec("systemctl is-system-running --wait", _a=a,
                                      timeout=max(deadline - time.time(), 1))
                state = out.strip()
                if state in ("running", "degraded"):
                    return state
                raise VmError(f"guest system state: {state}")
            except (OSError, ConnectionError) as e:  # a reset raced us
                if time.time() > deadline:
                    raise VmError(str(e)) from e
                time.sleep(0.5)
            finally:
                a.close()

    def up(self):
        """Boot a fresh VM from the base image; returns when systemd is up."""
        if self.pid():
            raise VmError(f"VM {self.name} already running (pid {self.pid()}); vm.py down first")
        for f in ("rootfs.ext4", "vmlinuz", "initrd.img"):
            if not os.path.exists(os.path.join(self.image, f)):
                raise VmError(f"no image in {self.image} (tests/vm/run.sh builds it)")
        shutil.rmtree(self.run, ignore_errors=True)
        os.makedirs(self.run)
        overlay = os.path.join(self.run, "disk.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
                        "-b", os.path.join(self.image, "rootfs.ext4"), overlay], check=True)
        accel = os.environ.get("VM_ACCEL", "tcg")
        accel_args = ACCEL[accel] + (["-cpu", os.environ["VM_CPU"]] if "VM_CPU" in os.environ else [])
        qemu = ["qemu-system-x86_64", "-name", f"chaos-vm-{self.name}", *accel_args,
                "-smp", os.environ.get("VM_CPUS", "2"), "-m", os.environ.get("VM_MEM", "1024"),
                "-nodefaults", "-no-user-config", "-display", "none",
                "-kernel", os.path.join(self.image, "vmlinuz"),
                "-initrd", os.path.join(self.image, "initrd.img"),
                "-append", KARGS + " " + os.environ.get("VM_KARGS", ""),
                "-drive", f"file={overlay},if=virtio,format=qcow2",
                # user-mode network with no route out (restrict=on); no host port forwarded
                "-nic", "user,model=virtio-net-pci,restrict=on",
                "-device", "virtio-rng-pci",
                "-chardev", f"socket,id=qga0,path={self.qga_sock},server=on,wait=off",
                "-device", "virtio-serial-pci",
                "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
                "-qmp", f"unix:{self.qmp_sock},server=on,wait=off",
                "-chardev", f"file,id=ser0,path={self.serial}",
                "-serial", "chardev:ser0",
                "-daemonize", "-pidfile", self.pidfile]
        subprocess.run(qemu, check=True)
        return self.wait()

    def reset(self):
        """Hard reset (the reset button: no shutdown, unsynced writes may be lost); returns
        once the new boot is up."""
        old = self.boot_id()
        self.qmp("system_reset")
        return self.wait(old)

    def save(self, tag="clean"):
        """Snapshot RAM + disk of the running VM into its overlay."""
        self.hmp(f"savevm {tag}")

    def restore(self, tag="clean"):
        """Back to a snapshot: a booted, ready VM in ~1-2 s. Fixes the guest clock, which
        otherwise resumes from when the snapshot was taken."""
        self.hmp(f"loadvm {tag}")
        a = self._agent(time.time() + 60)
        try:
            a.call("guest-set-time", time=time.time_ns())
        finally:
            a.close()

    def down(self, keep=False):
        """Stop qemu (QMP quit, SIGKILL if it lingers) and delete the overlay."""
        p = self.pid()
        if p:
            try:
                self.qmp("quit")
            except (OSError, VmError):
                pass
            for _ in range(50):
                if not self.pid():
                    break
                time.sleep(0.1)
            else:
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
        if not keep:
            shutil.rmtree(self.run, ignore_errors=True)

    def collect_logs(self, dest):
        """Serial console and guest journal (this boot, previous boot) into dest/."""
        os.makedirs(dest, exist_ok=True)
        if os.path.exists(self.serial):
            shutil.copy(self.serial, os.path.join(dest, "serial.log"))
        for fname, cmd in (("journal-this-boot.txt", "journalctl -b 0 --no-pager -o short-precise"),
                           ("journal-previous-boot.txt", "journalctl -b -1 --no-pager -o short-precise"),
                           ("chaos-agent-status.json", "chaos-agent status --json"),
                           # the output of the experiments the suite's agent-main ran
                           ("agent-runs.txt", "for f in /run/chaos-vm/run-*.jsonl; do "
                                              "[ -e \"$f\" ] && echo \"== $f\" && tail -n 40 \"$f\"; done"),
                           ("units.txt", "systemctl list-units --all --no-pager; "
                                         "systemctl status chaos-agent --no-pager -l")):
            try:
                code, out, err = self.exec(cmd, timeout=60)
                text = out + err
            except (VmError, OSError) as e:
                text = f"(could not collect: {e})\n"
            with open(os.path.join(dest, fname), "w") as f:
                f.write(text)
        return dest


# ------------------------------------------------------------------ command line
def main(argv):
    if not argv or argv[0] not in ("up", "exec", "copy", "reset", "save", "restore", "wait",
                                   "down", "log", "logs", "image-dir", "guests"):
        sys.exit(__doc__)
    cmd, args = argv[0], argv[1:]
    if cmd == "guests":
        print(" ".join(GUESTS))
        return 0
    if cmd == "image-dir":
        if args and args[0] not in GUESTS:
            sys.exit(f"vm: unknown guest {args[0]!r}: one of {', '.join(GUESTS)}")
        try:
            print(image_dir(args[0] if args else None))
        except VmError as e:
            sys.exit(f"vm: {e}")
        return 0
    vm = Vm()
    t0 = time.time()
    try:
        if cmd == "up":
            state = vm.up()
            print(f"vm {vm.name} up (pid {vm.pid()}): {state} after {time.time() - t0:.1f}s")
        elif cmd == "exec":
            stdin = b""
            if args[:1] == ["-i"]:
                args, stdin = args[1:], sys.stdin.buffer.read()
            if not args:
                sys.exit("vm: exec needs a command")
            code, out, err = vm.exec(" ".join(args), stdin=stdin)
            sys.stdout.write(out)
            sys.stderr.write(err)
            return code
        elif cmd == "copy":
            if len(args) != 2:
                sys.exit("vm: usage: copy SRC DST")
            vm.copy(*args)
        elif cmd == "reset":
            state = vm.reset()
            print(f"vm {vm.name} reset: {state} after {time.time() - t0:.1f}s")
        elif cmd == "save":
            vm.save(*args[:1])
        elif cmd == "restore":
            vm.restore(*args[:1])
            print(f"vm {vm.name} restored in {time.time() - t0:.1f}s")
        elif cmd == "wait":
            state = vm.wait(args[0] if args else None)
            print(f"vm {vm.name}: {state} after {time.time() - t0:.1f}s")
        elif cmd == "down":
            vm.down(keep="--keep" in args)
        elif cmd == "log":
            with open(vm.serial, errors="replace") as f:
                sys.stdout.write(f.read())
        elif cmd == "logs":
            if len(args) != 1:
                sys.exit("vm: usage: logs DIR")
            print(vm.collect_logs(args[0]))
    except VmError as e:
        sys.exit(f"vm: {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
