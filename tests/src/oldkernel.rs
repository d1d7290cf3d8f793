//! An old kernel on this host, for tests: a seccomp filter that answers `ENOSYS` to every
//! x86_64 system call newer than a chosen kernel (Linux 4.4 by default), exactly as that
//! kernel would, and allows everything else. Nothing is killed and nothing else is denied,
//! so a program under it runs as it would on the old kernel, fallbacks included.
//!
//! ```no_run
//! use chaos_tests::oldkernel::{restrict, Kernel};
//! let mut cmd = std::process::Command::new("/path/to/chaos-agent");
//! restrict(&mut cmd, Kernel::V4_4).expect("x86_64 only");
//! let out = cmd.arg("doctor").output().unwrap();
//! ```
//!
//! The filter is installed in the child between `fork` and `exec` (`PR_SET_NO_NEW_PRIVS`,
//! then `PR_SET_SECCOMP`), is inherited by everything the program starts, and cannot be
//! removed. `/proc/<pid>/status` shows `Seccomp: 2` for such a process ([`seccomp_mode`]).
//! The `enosys-exec` binary of this crate does the same for a command line:
//! `enosys-exec [--kernel 4.4] -- PROGRAM ARGS...`.
//!
//! What it simulates: the system call table only. Everything else is this host's kernel
//! (cgroup files such as `cgroup.kill`, netlink attributes, nftables expressions, `/proc`
//! fields); those differences are handled and documented separately (docs/platforms.md).
//!
//! The filter, in classic BPF: a call of another architecture (i386 through `int 0x80`)
//! is allowed untouched; an x32 call (bit 30 of the number) gets `ENOSYS`, as on kernels
//! built without x32; a number in [`SYSCALLS`] added after the chosen kernel, or above
//! every number listed there, gets `ENOSYS`; anything else is allowed.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// A kernel version, major and minor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Kernel(pub u32, pub u32);

impl Kernel {
    /// CentOS 7 / RHEL 7 (upstream 3.10; Red Hat backports are not simulated).
    pub const V3_10: Kernel = Kernel(3, 10);
    /// Ubuntu 16.04.
    pub const V4_4: Kernel = Kernel(4, 4);
    /// Ubuntu 18.04.
    pub const V4_15: Kernel = Kernel(4, 15);
    /// RHEL 8 / Rocky 8 (upstream 4.18).
    pub const V4_18: Kernel = Kernel(4, 18);
    /// Debian 10.
    pub const V4_19: Kernel = Kernel(4, 19);

    /// Parse `4.4`, `4.19`, ... (the oldest supported is 3.10).
    pub fn parse(s: &str) -> Option<Kernel> {
        let (a, b) = s.split_once('.')?;
        let k = Kernel(a.parse().ok()?, b.parse().ok()?);
        (k >= Kernel::V3_10).then_some(k)
    }
}

impl std::fmt::Display for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

/// Every x86_64 system call added after Linux 3.10: number (`syscall_64.tbl`), name, and
/// the release that added it.
pub const SYSCALLS: &[(u32, &str, Kernel)] = &[
    (314, "sched_setattr", Kernel(3, 14)),
    (315, "sched_getattr", Kernel(3, 14)),
    (316, "renameat2", Kernel(3, 15)),
    (317, "seccomp", Kernel(3, 17)),
    (318, "getrandom", Kernel(3, 17)),
    (319, "memfd_create", Kernel(3, 17)),
    (320, "kexec_file_load", Kernel(3, 17)),
    (321, "bpf", Kernel(3, 18)),
    (322, "execveat", Kernel(3, 19)),
    (323, "userfaultfd", Kernel(4, 3)),
    (324, "membarrier", Kernel(4, 3)),
    (325, "mlock2", Kernel(4, 4)),
    (326, "copy_file_range", Kernel(4, 5)),
    (327, "preadv2", Kernel(4, 6)),
    (328, "pwritev2", Kernel(4, 6)),
    (329, "pkey_mprotect", Kernel(4, 9)),
    (330, "pkey_alloc", Kernel(4, 9)),
    (331, "pkey_free", Kernel(4, 9)),
    (332, "statx", Kernel(4, 11)),
    (333, "io_pgetevents", Kernel(4, 18)),
    (334, "rseq", Kernel(4, 18)),
    (424, "pidfd_send_signal", Kernel(5, 1)),
    (425, "io_uring_setup", Kernel(5, 1)),
    (426, "io_uring_enter", Kernel(5, 1)),
    (427, "io_uring_register", Kernel(5, 1)),
    (428, "open_tree", Kernel(5, 2)),
    (429, "move_mount", Kernel(5, 2)),
    (430, "fsopen", Kernel(5, 2)),
    (431, "fsconfig", Kernel(5, 2)),
    (432, "fsmount", Kernel(5, 2)),
    (433, "fspick", Kernel(5, 2)),
    (434, "pidfd_open", Kernel(5, 3)),
    (435, "clone3", Kernel(5, 3)),
    (436, "close_range", Kernel(5, 9)),
    (437, "openat2", Kernel(5, 6)),
    (438, "pidfd_getfd", Kernel(5, 6)),
    (439, "faccessat2", Kernel(5, 8)),
    (440, "process_madvise", Kernel(5, 10)),
    (441, "epoll_pwait2", Kernel(5, 11)),
    (442, "mount_setattr", Kernel(5, 12)),
    (443, "quotactl_fd", Kernel(5, 14)),
    (444, "landlock_create_ruleset", Kernel(5, 13)),
    (445, "landlock_add_rule", Kernel(5, 13)),
    (446, "landlock_restrict_self", Kernel(5, 13)),
    (447, "memfd_secret", Kernel(5, 14)),
    (448, "process_mrelease", Kernel(5, 15)),
    (449, "futex_waitv", Kernel(5, 16)),
    (450, "set_mempolicy_home_node", Kernel(5, 17)),
    (451, "cachestat", Kernel(6, 5)),
    (452, "fchmodat2", Kernel(6, 6)),
    (453, "map_shadow_stack", Kernel(6, 6)),
    (454, "futex_wake", Kernel(6, 7)),
    (455, "futex_wait", Kernel(6, 7)),
    (456, "futex_requeue", Kernel(6, 7)),
    (457, "statmount", Kernel(6, 8)),
    (458, "listmount", Kernel(6, 8)),
    (459, "lsm_get_self_attr", Kernel(6, 8)),
    (460, "lsm_set_self_attr", Kernel(6, 8)),
    (461, "lsm_list_modules", Kernel(6, 8)),
    (462, "mseal", Kernel(6, 10)),
    (463, "setxattrat", Kernel(6, 13)),
    (464, "getxattrat", Kernel(6, 13)),
    (465, "listxattrat", Kernel(6, 13)),
    (466, "removexattrat", Kernel(6, 13)),
    (467, "open_tree_attr", Kernel(6, 15)),
    (468, "file_getattr", Kernel(6, 17)),
    (469, "file_setattr", Kernel(6, 17)),
];

/// The system calls [`restrict`] answers with `ENOSYS` for `kernel`: those of [`SYSCALLS`]
/// added after it (numbers above the table's last are refused too).
pub fn missing(kernel: Kernel) -> Vec<(u32, &'static str)> {
    SYSCALLS
        .iter()
        .filter(|(_, _, since)| *since > kernel)
        .map(|(nr, name, _)| (*nr, *name))
        .collect()
}

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_MODE_FILTER: libc::c_ulong = 2;
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_JGE_K: u16 = 0x35;
const BPF_JSET_K: u16 = 0x45;
const BPF_RET_K: u16 = 0x06;
/// `offsetof(struct seccomp_data, nr)` and `arch`.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The classic BPF program for `kernel` (see the module docs).
pub fn filter(kernel: Kernel) -> Vec<libc::sock_filter> {
    let missing = missing(kernel);
    let above = SYSCALLS.iter().map(|s| s.0).max().unwrap_or(0) + 1;
    let mut p = vec![
        insn(BPF_LD_W_ABS, 0, 0, DATA_ARCH),
        insn(BPF_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        insn(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
        insn(BPF_LD_W_ABS, 0, 0, DATA_NR),
    ];
    // Each jump below lands on the final ENOSYS return; jump offsets are 8 bits, and the
    // table is far shorter than 255 entries.
    let checks = 1 + missing.len() + 1;
    assert!(checks < 255, "too many system calls for 8-bit jumps");
    let to_enosys = |i: usize| (checks - i) as u8; // i: index among the checks
    p.push(insn(BPF_JSET_K, to_enosys(0), 0, X32_SYSCALL_BIT));
    for (i, (nr, _)) in missing.iter().enumerate() {
        p.push(insn(BPF_JEQ_K, to_enosys(i + 1), 0, *nr));
    }
    p.push(insn(BPF_JGE_K, to_enosys(checks - 1), 0, above));
    p.push(insn(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW));
    p.push(insn(
        BPF_RET_K,
        0,
        0,
        SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
    ));
    p
}

/// Why [`restrict`] cannot simulate an old kernel here.
#[derive(Debug)]
pub struct Unsupported(pub String);

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Make `cmd` run as on `kernel`: the filter is installed in the child right before `exec`.
/// Only the x86_64 system call table is known; other targets get `Err`.
pub fn restrict(cmd: &mut Command, kernel: Kernel) -> Result<(), Unsupported> {
    if !cfg!(target_arch = "x86_64") {
        return Err(Unsupported(format!(
            "the old-kernel filter knows only the x86_64 system call table, not {}",
            std::env::consts::ARCH
        )));
    }
    let prog = filter(kernel);
    // SAFETY: the closure runs between fork and exec and makes only two prctl(2) calls on
    // memory prepared before the fork (no allocation, no locks).
    unsafe {
        cmd.pre_exec(move || {
            let fprog = libc::sock_fprog {
                len: prog.len() as libc::c_ushort,
                filter: prog.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    SECCOMP_MODE_FILTER,
                    &fprog as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// The `Seccomp:` mode of process `pid` (0 none, 1 strict, 2 filter), from
/// `/proc/<pid>/status`; `None` when the process is gone.
pub fn seccomp_mode(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_sorted_by_number_and_has_no_duplicates() {
        for w in SYSCALLS.windows(2) {
            assert!(w[0].0 < w[1].0, "{:?} then {:?}", w[0], w[1]);
        }
    }

    #[test]
    fn linux_4_4_lacks_everything_from_copy_file_range_on() {
        let m = missing(Kernel::V4_4);
        assert_eq!(m.first(), Some(&(326, "copy_file_range")));
        assert!(m.iter().all(|(nr, _)| *nr >= 326));
        assert!(m.contains(&(434, "pidfd_open")));
        assert!(!missing(Kernel(5, 9)).contains(&(436, "close_range")));
        assert!(missing(Kernel(5, 8)).contains(&(436, "close_range")));
        assert_eq!(missing(Kernel(3, 10)).len(), SYSCALLS.len());
    }

    #[test]
    fn every_jump_lands_on_the_enosys_return() {
        let p = filter(Kernel::V4_4);
        let last = p.len() - 1;
        assert_eq!(p[last].k, SECCOMP_RET_ERRNO | libc::ENOSYS as u32);
        for (i, ins) in p.iter().enumerate().skip(4) {
            if ins.code != BPF_RET_K {
                assert_eq!(i + 1 + ins.jt as usize, last, "insn {i}");
                assert_eq!(ins.jf, 0);
            }
        }
    }

    #[test]
    fn parses_versions() {
        assert_eq!(Kernel::parse("4.4"), Some(Kernel::V4_4));
        assert_eq!(Kernel::parse("4.19"), Some(Kernel::V4_19));
        assert_eq!(Kernel::parse("2.6"), None);
        assert_eq!(Kernel::parse("4"), None);
        assert!(Kernel::V4_15 > Kernel::V4_4);
    }
}
