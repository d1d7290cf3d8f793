//! What runs in the forked stressor before its work: async-signal-safe code only (raw
//! system calls on memory prepared before the fork, no allocation, no locks), see the
//! parent module's docs for the steps.

use std::sync::atomic::Ordering;

use super::{
    Prepared, PARENT, STEP_AFFINITY, STEP_CGROUP, STEP_OK, STEP_OOM, STEP_PDEATHSIG, STEP_PREPARE,
    STEP_STDIO,
};

pub(super) fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Write all of `buf` to `fd` (async-signal-safe).
fn write_all_raw(fd: i32, buf: &[u8]) -> std::result::Result<(), i32> {
    let mut off = 0;
    while off < buf.len() {
        // SAFETY: the pointer and length describe the unwritten tail of `buf`.
        let n = unsafe { libc::write(fd, buf[off..].as_ptr().cast(), buf.len() - off) };
        if n < 0 {
            let e = errno();
            if e == libc::EINTR {
                continue;
            }
            return Err(e);
        }
        off += n as usize;
    }
    Ok(())
}

/// Write `data` to the file `path` (async-signal-safe).
fn write_file_raw(path: &std::ffi::CStr, data: &[u8]) -> std::result::Result<(), i32> {
    // SAFETY: path is NUL-terminated.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(errno());
    }
    let r = write_all_raw(fd, data);
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    r
}

fn report(fd: i32, step: u8, index: u8, err: i32) {
    let e = err.to_le_bytes();
    let _ = write_all_raw(fd, &[step, index, 0, 0, e[0], e[1], e[2], e[3]]);
}

/// Report a failed setup step and exit.
unsafe fn fail(fd: i32, step: u8, index: u8, err: i32) -> ! {
    report(fd, step, index, err);
    libc::_exit(127)
}

/// Close every descriptor above 2 except `keep` (async-signal-safe: raw system calls on the
/// stack only).
///
/// `close_range(2)` is Linux 5.9+; before that (ENOSYS, or EPERM from a seccomp profile that
/// does not know it) the descriptors listed in `/proc/self/fd` are closed one by one, and
/// without `/proc` every number below the hard `RLIMIT_NOFILE` (at most 2^20).
unsafe fn close_fds_except(keep: i32) {
    let ranges = [(3u32, keep as u32 - 1), (keep as u32 + 1, u32::MAX)];
    let mut done = true;
    for (lo, hi) in ranges {
        if lo <= hi && libc::syscall(libc::SYS_close_range, lo, hi, 0) != 0 {
            done = false;
            break;
        }
    }
    if done || close_listed_fds(keep) {
        return;
    }
    let mut rl: libc::rlimit = std::mem::zeroed();
    let limit = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 {
        rl.rlim_max.clamp(65536, 1 << 20)
    } else {
        1 << 20
    };
    for fd in 3..limit as i32 {
        if fd != keep {
            libc::close(fd);
        }
    }
}

/// Close the descriptors above 2 listed in `/proc/self/fd`, except `keep`, reading the
/// directory with raw `getdents64(2)` into a stack buffer (as glibc's `closefrom` fallback
/// does: rescan from the start until a pass closes nothing). `false` when `/proc` cannot be
/// read (then nothing is known to be closed).
unsafe fn close_listed_fds(keep: i32) -> bool {
    let dir = libc::open(
        c"/proc/self/fd".as_ptr(),
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
    );
    if dir < 0 {
        return false;
    }
    let mut buf = [0u8; 2048];
    loop {
        let mut closed = false;
        loop {
            let n = libc::syscall(libc::SYS_getdents64, dir, buf.as_mut_ptr(), buf.len());
            if n < 0 {
                libc::close(dir);
                return false;
            }
            if n == 0 {
                break;
            }
            let n = n as usize;
            let mut off = 0;
            // struct linux_dirent64: d_ino u64, d_off i64, d_reclen u16, d_type u8, d_name.
            while off + 19 <= n {
                let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
                if reclen == 0 || off + reclen > n {
                    break;
                }
                let mut fd: i64 = 0;
                let mut digits = 0;
                for &c in &buf[off + 19..off + reclen] {
                    if !c.is_ascii_digit() || fd > i32::MAX as i64 {
                        break;
                    }
                    fd = fd * 10 + (c - b'0') as i64;
                    digits += 1;
                }
                let is_name_end = buf.get(off + 19 + digits) == Some(&0);
                if digits > 0 && is_name_end && fd > 2 {
                    let fd = fd as i32;
                    if fd != keep && fd != dir {
                        libc::close(fd);
                        closed = true;
                    }
                }
                off += reclen;
            }
        }
        if !closed {
            break;
        }
        libc::lseek(dir, 0, libc::SEEK_SET);
    }
    libc::close(dir);
    true
}

/// The child's setup, then its work. Never returns.
pub(super) unsafe fn child_main(p: &Prepared, w: i32, r: i32) -> ! {
    libc::close(r);
    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
        fail(w, STEP_PDEATHSIG, 0, errno());
    }
    if libc::getppid() != p.parent {
        // The agent died between fork and prctl: its death signal will never come.
        libc::_exit(1);
    }
    PARENT.store(p.parent, Ordering::Relaxed);
    libc::setpgid(0, 0);
    let mut set: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut set);
    libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    for sig in 1..=64 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
    libc::prctl(libc::PR_SET_NAME, p.name.as_ptr(), 0, 0, 0);
    // Keep the status pipe clear of 0..=2 before stdio is replaced.
    let w = if w <= 2 {
        libc::fcntl(w, libc::F_DUPFD_CLOEXEC, 3)
    } else {
        w
    };
    let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
    if null < 0 {
        fail(w, STEP_STDIO, 0, errno());
    }
    for fd in 0..3 {
        if null != fd {
            libc::dup2(null, fd);
        }
    }
    // Closes `null` too when it is above 2.
    close_fds_except(w);
    if let Err(e) = write_file_raw(c"/proc/self/oom_score_adj", b"1000") {
        fail(w, STEP_OOM, 0, e);
    }
    for (i, procs) in p.procs.iter().enumerate() {
        if let Err(e) = write_file_raw(procs, b"0") {
            fail(w, STEP_CGROUP, i as u8, e);
        }
    }
    if let Some(set) = &p.cpuset {
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) != 0 {
            fail(w, STEP_AFFINITY, 0, errno());
        }
    }
    if let Err(e) = p.work.prepare() {
        fail(w, STEP_PREPARE, 0, e);
    }
    report(w, STEP_OK, 0, 0);
    libc::close(w);
    let code = p.work.run();
    libc::_exit(code)
}
