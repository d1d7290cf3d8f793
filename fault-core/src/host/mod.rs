//! Small, audited helpers for touching the host: process identity and signals
//! ([`process`]), durable file writes ([`fs`]), and machine facts ([`boot_id`]).
//!
//! Everything here uses system calls directly (through `libc`); nothing runs a shell.
//!
//! # Old kernels
//!
//! Everything works from Linux 3.10 on. The calls newer than 4.4 have fallbacks, taken on
//! `ENOSYS`: `pidfd_open`/`pidfd_send_signal` (5.3; also on `EPERM` from container seccomp
//! profiles) fall back to re-checking the process's start time, or its cgroup membership,
//! immediately before `kill(2)`, a weaker guarantee described in [`process`];
//! `close_range` (5.9) to closing what `/proc/self/fd` lists ([`stressor`]); `cgroup.kill`
//! (5.14) to killing one by one ([`cgroup`]); `getrandom` (3.17) to `/dev/urandom`.
//! docs/platforms.md lists what is degraded per distribution.

pub mod cgroup;
pub mod fs;
pub mod ns;
pub mod probe;
pub mod process;
pub mod shell;
pub mod stressor;
pub mod systemctl;

/// The kernel's boot id (`/proc/sys/kernel/random/boot_id`), which changes on every boot.
/// Receipts record it so that a revert after a reboot knows that non-persistent state
/// (processes, qdiscs) is already gone and must not be matched by number.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

/// Whether the current process runs with effective uid 0.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Random lower-case hex of `n` bytes from the kernel's CSPRNG (`getrandom(2)`, or
/// `/dev/urandom` on kernels before 3.17).
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    let mut filled = 0;
    while filled < n {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let r = unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), n - filled, 0) };
        if r > 0 {
            filled += r as usize;
        } else if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            // getrandom(2) is Linux 3.17+ (ENOSYS on CentOS 7's 3.10 before its backport):
            // read /dev/urandom instead, and only without it fall back to time.
            use std::io::Read;
            if std::fs::File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut buf[filled..]))
                .is_ok()
            {
                break;
            }
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            for (i, b) in buf.iter_mut().enumerate().skip(filled) {
                *b = (t >> ((i % 16) * 8)) as u8 ^ (std::process::id() as u8);
            }
            break;
        }
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Seconds since the Unix epoch, for journal timestamps.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
