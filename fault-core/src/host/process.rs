//! Process identity that survives PID reuse, and signals that cannot hit the wrong process.
//!
//! A [`ProcessId`] is `(pid, start time in clock ticks since boot, boot id)`. Before we signal,
//! we open a pidfd for the pid, then re-read the start time: if it still matches, the pidfd
//! refers to the process we recorded and `pidfd_send_signal` cannot reach a newcomer that
//! took its number.
//!
//! **Older kernels.** Without pidfds (Linux < 5.3: CentOS 7, Ubuntu 16.04/18.04, RHEL 8's
//! 4.18, Debian 10's 4.19; or a container seccomp profile that refuses the call) the start
//! time is re-read immediately before `kill(2)`. The guarantee is then weaker: a signal
//! could reach a newcomer only if our process exited, and its pid was reused by a process
//! started in the same clock tick (10 ms), within the microseconds between that read and
//! the `kill`.

use serde::{Deserialize, Serialize};

use crate::{Error, ErrorKind, Result};

/// Fields of `/proc/<pid>/stat` that faults care about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    /// Process id.
    pub pid: i32,
    /// `comm`: the executable name, cut by the kernel to 15 bytes.
    pub comm: String,
    /// State letter: `R`, `S`, `D`, `T` (stopped), `t` (traced), `Z`, `X`, `I`.
    pub state: char,
    /// Parent pid.
    pub ppid: i32,
    /// Start time in clock ticks after boot.
    pub start_ticks: u64,
}

impl Stat {
    /// Parse the content of `/proc/<pid>/stat`. `comm` may hold spaces and parentheses, so
    /// the fields after it are found from the last `)`.
    pub fn parse(text: &str) -> Option<Stat> {
        let open = text.find('(')?;
        let close = text.rfind(')')?;
        let pid = text[..open].trim().parse().ok()?;
        let comm = text.get(open + 1..close)?.to_string();
        let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
        // rest[0] = state (field 3), rest[1] = ppid (4), rest[19] = starttime (22)
        let state = rest.first()?.chars().next()?;
        let ppid = rest.get(1)?.parse().ok()?;
        let start_ticks = rest.get(19)?.parse().ok()?;
        Some(Stat {
            pid,
            comm,
            state,
            ppid,
            start_ticks,
        })
    }

    /// Read `/proc/<pid>/stat`; `None` when the process does not exist.
    ///
    /// `comm` is whatever bytes the process chose (`prctl(PR_SET_NAME)`), not necessarily
    /// UTF-8: it is read lossily, so such a process is still seen, and still recognised by
    /// its start time, rather than taken for gone.
    pub fn read(pid: i32) -> Option<Stat> {
        let bytes = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
        Stat::parse(&String::from_utf8_lossy(&bytes))
    }

    /// Whether the process is stopped by a signal (state `T`).
    pub fn is_stopped(&self) -> bool {
        self.state == 'T'
    }
}

/// A process, identified so that a reused PID (or a reboot) is never mistaken for it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessId {
    /// The pid at the time it was recorded.
    pub pid: i32,
    /// Start time in clock ticks after boot (`/proc/<pid>/stat` field 22).
    pub start_ticks: u64,
    /// The boot it lived in ([`super::boot_id`]).
    pub boot_id: String,
}

impl ProcessId {
    /// Identify the live process `pid` now.
    pub fn of(pid: i32) -> Result<ProcessId> {
        let stat = Stat::read(pid)
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no process with pid {pid}")))?;
        Ok(ProcessId {
            pid,
            start_ticks: stat.start_ticks,
            boot_id: super::boot_id(),
        })
    }

    /// The current stat of this very process, or `None` when it has exited (or the pid now
    /// belongs to someone else, or the machine rebooted since).
    pub fn stat(&self) -> Option<Stat> {
        if self.boot_id != super::boot_id() {
            return None;
        }
        Stat::read(self.pid).filter(|s| s.start_ticks == self.start_ticks)
    }

    /// Whether this very process is still alive (zombies count as gone).
    pub fn is_alive(&self) -> bool {
        self.stat()
            .is_some_and(|s| s.state != 'Z' && s.state != 'X')
    }

    /// Send `signal` to this very process. Returns `Ok(false)` when it no longer exists (which
    /// callers treat as "already done"), `Ok(true)` when the signal was delivered.
    ///
    /// With pidfds (Linux 5.3+) a process that took over the pid is never signalled. Without
    /// them ([`pidfd_unavailable`]) the start time is re-read immediately before `kill(2)`:
    /// the pid would have to be freed and reused in the microseconds between that read and
    /// the signal, by a process started within the same clock tick as ours.
    pub fn signal(&self, signal: i32) -> Result<bool> {
        if self.stat().is_none() {
            return Ok(false);
        }
        match pidfd_open(self.pid) {
            Ok(fd) => {
                // The pidfd pins the process that had the pid when it was opened; check that
                // it is still ours before using it.
                let ours = self.stat().is_some();
                let result = if ours {
                    pidfd_send_signal(fd, signal)
                } else {
                    Ok(())
                };
                // SAFETY: fd was returned by pidfd_open and is closed once.
                unsafe { libc::close(fd) };
                match result {
                    Ok(()) if ours => Ok(true),
                    Ok(()) => Ok(false),
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(false),
                    // pidfd_open without pidfd_send_signal: only a seccomp profile does that.
                    Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => self.kill_checked(signal),
                    Err(e) => Err(Error::io(format!("signal {signal} to pid {}", self.pid), e)),
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(false),
            Err(e) if pidfd_unavailable(&e) => self.kill_checked(signal),
            Err(e) => Err(Error::io(format!("pidfd_open({})", self.pid), e)),
        }
    }

    /// `kill(2)` right after checking the start time once more (no pidfd to pin it).
    fn kill_checked(&self, signal: i32) -> Result<bool> {
        if self.stat().is_none() {
            return Ok(false);
        }
        // SAFETY: kill has no memory preconditions.
        if unsafe { libc::kill(self.pid, signal) } == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ESRCH) {
            Ok(false)
        } else {
            Err(Error::io(format!("signal {signal} to pid {}", self.pid), e))
        }
    }
}

/// Whether an error of `pidfd_open(2)` means this kernel offers no pidfds: `ENOSYS` before
/// Linux 5.3, and `EPERM` from container seccomp profiles that predate the call (the kernel
/// itself never answers `EPERM` to `pidfd_open`).
pub fn pidfd_unavailable(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EPERM))
}

fn pidfd_open(pid: i32) -> std::io::Result<i32> {
    // SAFETY: pidfd_open takes a pid and flags; no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(fd as i32)
    }
}

fn pidfd_send_signal(fd: i32, signal: i32) -> std::io::Result<()> {
    // SAFETY: a null siginfo is allowed; fd is a valid pidfd.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd,
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The command line of `pid` as its arguments (empty for kernel threads and zombies).
pub fn cmdline(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Every pid in `/proc`, ascending.
pub fn all_pids() -> Vec<i32> {
    let mut pids: Vec<i32> = std::fs::read_dir("/proc")
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    pids.sort_unstable();
    pids
}

/// The pids of this process and all its ancestors up to PID 1. Faults never target these:
/// stopping or killing the agent, or the shell/unit that runs it, would end the run without
/// a revert.
pub fn self_and_ancestors() -> Vec<i32> {
    let mut out = Vec::new();
    let mut pid = std::process::id() as i32;
    while pid > 0 && !out.contains(&pid) {
        out.push(pid);
        pid = Stat::read(pid).map(|s| s.ppid).unwrap_or(0);
    }
    out
}

/// Whether `pid` is a kernel thread (kthreadd or one of its children): those have no
/// user-space command line and must never be signalled.
pub fn is_kernel_thread(stat: &Stat) -> bool {
    stat.pid == 2 || stat.ppid == 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_comm() {
        let line = "4242 (my (odd) prog) T 17 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 100 18446744073709551615";
        let s = Stat::parse(line).unwrap();
        assert_eq!(s.pid, 4242);
        assert_eq!(s.comm, "my (odd) prog");
        assert_eq!(s.state, 'T');
        assert_eq!(s.ppid, 17);
        assert_eq!(s.start_ticks, 98765);
        assert!(s.is_stopped());
    }

    #[test]
    fn rejects_garbage() {
        assert!(Stat::parse("").is_none());
        assert!(Stat::parse("12 (x) R").is_none());
    }

    #[test]
    fn identifies_self() {
        let me = ProcessId::of(std::process::id() as i32).unwrap();
        assert!(me.is_alive());
        let mut other_boot = me.clone();
        other_boot.boot_id = "another-boot".into();
        assert!(
            !other_boot.is_alive(),
            "a record from another boot never matches"
        );
        let mut reused = me.clone();
        reused.start_ticks += 1;
        assert!(!reused.is_alive(), "a reused pid never matches");
        assert!(!reused.signal(0).unwrap());
        assert!(me.signal(0).unwrap());
        assert!(!reused.kill_checked(0).unwrap(), "the fallback checks too");
        assert!(me.kill_checked(0).unwrap());
    }

    #[test]
    fn a_process_whose_comm_is_not_utf8_is_still_seen() {
        use std::io::Write;
        use std::process::{Command, Stdio};
        // The shell writes its own comm (a redirect opened by the shell itself), then waits
        // on stdin; /proc shows the new name once the write is done.
        let mut child = Command::new("sh")
            .args(["-c", r"printf '\377x' > /proc/$$/comm; read line"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("spawn sh");
        let pid = child.id() as i32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read(format!("/proc/{pid}/comm")).ok().as_deref() != Some(b"\xffx\n") {
            assert!(std::time::Instant::now() < deadline, "comm never changed");
            std::thread::yield_now();
        }
        let stat = Stat::read(pid);
        let id = ProcessId::of(pid);
        let _ = child.stdin.take().expect("stdin").write_all(b"\n");
        let _ = child.wait();
        let stat = stat.expect("a non-UTF-8 comm does not hide the process");
        assert_eq!(stat.comm, "\u{fffd}x");
        assert_eq!(id.expect("identified").start_ticks, stat.start_ticks);
    }

    #[test]
    fn ancestors_include_self() {
        let a = self_and_ancestors();
        assert_eq!(a[0], std::process::id() as i32);
    }
}
