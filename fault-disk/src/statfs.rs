//! `statvfs(3)` and the pure arithmetic that turns a `size` or `percent` request into the
//! number of bytes to allocate.
//!
//! Percentages are computed the way `df` shows them: `used / (used + available)`, where
//! `used = (f_blocks - f_bfree) * f_frsize` and `available = f_bavail * f_frsize` (what an
//! unprivileged user may still allocate). Blocks reserved for root (ext4's reserved
//! blocks) count in neither, so a filesystem at "100%" still has them; root without
//! `CAP_SYS_RESOURCE` cannot use them either.

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use fault_core::Bytes;

/// A filesystem's space, from `statvfs(3)`, in the units the kernel reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FsStats {
    /// Fragment size (`f_frsize`): the unit of the block counts. Never 0.
    pub(crate) frsize: u64,
    /// Total blocks (`f_blocks`).
    pub(crate) blocks: u64,
    /// Free blocks, including those reserved for root (`f_bfree`).
    pub(crate) bfree: u64,
    /// Blocks an unprivileged user may still allocate (`f_bavail`).
    pub(crate) bavail: u64,
    /// Whether the filesystem is mounted read-only (`ST_RDONLY`).
    pub(crate) read_only: bool,
    /// Total inodes (`f_files`); 0 on filesystems without an inode limit (btrfs).
    pub(crate) files: u64,
    /// Free inodes (`f_ffree`).
    pub(crate) ffree: u64,
    /// Inodes an unprivileged user may still take (`f_favail`).
    pub(crate) favail: u64,
}

impl FsStats {
    /// `statvfs(path)`.
    pub(crate) fn of_path(path: &Path) -> std::io::Result<FsStats> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: zeroed is a valid statvfs (plain integers).
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out pointer.
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(FsStats::from_raw(&st))
    }

    /// `fstatvfs(fd)`.
    pub(crate) fn of_file(file: &std::fs::File) -> std::io::Result<FsStats> {
        // SAFETY: zeroed is a valid statvfs (plain integers).
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: the fd is open for the duration of the call and `st` a valid out pointer.
        if unsafe { libc::fstatvfs(file.as_raw_fd(), &mut st) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(FsStats::from_raw(&st))
    }

    #[allow(clippy::unnecessary_cast)] // the field types differ between libc targets
    fn from_raw(st: &libc::statvfs) -> FsStats {
        FsStats {
            frsize: (st.f_frsize as u64).max(1),
            blocks: st.f_blocks as u64,
            bfree: st.f_bfree as u64,
            bavail: st.f_bavail as u64,
            read_only: st.f_flag & libc::ST_RDONLY != 0,
            files: st.f_files as u64,
            ffree: st.f_ffree as u64,
            favail: st.f_favail as u64,
        }
    }

    /// The filesystem's size (`f_blocks`), as `df` shows it.
    pub(crate) fn size(&self) -> u64 {
        self.blocks.saturating_mul(self.frsize)
    }

    /// Bytes in use, as `df` counts them.
    pub(crate) fn used(&self) -> u64 {
        self.blocks
            .saturating_sub(self.bfree)
            .saturating_mul(self.frsize)
    }

    /// Bytes an unprivileged user may still allocate.
    pub(crate) fn avail(&self) -> u64 {
        self.bavail.saturating_mul(self.frsize)
    }

    /// Percentage used as `df` shows it (unrounded): `used / (used + avail) * 100`.
    pub(crate) fn used_percent(&self) -> f64 {
        let total = self.used() as f64 + self.avail() as f64;
        if total == 0.0 {
            return 100.0;
        }
        self.used() as f64 * 100.0 / total
    }
}

/// What the spec asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Amount {
    /// This many bytes.
    Size(u64),
    /// Until the filesystem is this percent used (0 < p <= 100).
    Percent(f64),
}

/// Round `n` up to a multiple of `unit` (`unit` > 0), saturating.
pub(crate) fn round_up(n: u64, unit: u64) -> u64 {
    match n % unit {
        0 => n,
        r => n.saturating_add(unit - r),
    }
}

/// The safe reserve of a filesystem of `size` bytes that holds a protected path (the root
/// filesystem, the agent's state directory): 5% of it, at least 1 GiB (what a host needs to
/// keep logging, updating packages and writing the agent's journal), but at most a quarter
/// of it, so that a small filesystem can still be filled to 75%. A `disk.fill` that would
/// leave less available is refused unless its spec sets `allow_protected_filesystem`.
///
/// | size | reserve |
/// |---|---|
/// | 64 MiB | 16 MiB |
/// | 4 GiB | 1 GiB |
/// | 100 GiB | 5 GiB |
/// | 2 TiB | 102.4 GiB |
pub(crate) fn protected_reserve(size: u64) -> u64 {
    (size / 20).max(1 << 30).min(size / 4)
}

/// How many bytes to allocate on a filesystem in state `fs` to satisfy `amount`, keeping at
/// least `reserve` bytes available. `path` only names the filesystem in messages.
///
/// Refuses, naming the numbers, instead of ever filling less than asked: when the
/// filesystem is already at or beyond the requested percentage, when the request exceeds
/// what is available, or when it would leave less than `reserve` available.
pub(crate) fn bytes_to_fill(
    fs: &FsStats,
    amount: Amount,
    reserve: u64,
    path: &str,
) -> Result<u64, String> {
    let used = fs.used();
    let avail = fs.avail();
    let (bytes, what) = match amount {
        Amount::Size(n) => (n, format!("requested {}", Bytes(n).human())),
        Amount::Percent(p) => {
            let total = used.saturating_add(avail);
            if total == 0 {
                return Err(format!(
                    "the filesystem of {path} reports no usable space (0 blocks)"
                ));
            }
            // The smallest used byte count whose df percentage reaches `p`.
            let target = ((p / 100.0) * total as f64).ceil().min(total as f64) as u64;
            if target <= used {
                return Err(format!(
                    "{path} is already {:.1}% used (requested {p}%)",
                    fs.used_percent()
                ));
            }
            // A whole number of blocks: used and avail are, so this stays <= avail.
            let n = round_up(target - used, fs.frsize).min(avail);
            (
                n,
                format!("filling {path} to {p}% needs {}", Bytes(n).human()),
            )
        }
    };
    // The filesystem allocates whole blocks.
    let need = round_up(bytes, fs.frsize);
    if need > avail {
        let mut msg = format!(
            "{what} but only {} is available on {path}",
            Bytes(avail).human()
        );
        if reserve > 0 {
            msg.push_str(&format!(" (reserve {})", Bytes(reserve).human()));
        }
        return Err(msg);
    }
    if avail - need < reserve {
        return Err(format!(
            "{what} but only {} of the {} available on {path} may be used (reserve {})",
            Bytes(avail.saturating_sub(reserve)).human(),
            Bytes(avail).human(),
            Bytes(reserve).human()
        ));
    }
    Ok(bytes)
}

/// The checks every spec `path` gets before it becomes a fault: non-empty, absolute, no NUL.
pub(crate) fn check_spec_path(path: &std::path::Path) -> fault_core::Result<()> {
    let shown = path.display();
    if path.as_os_str().is_empty() {
        return Err(fault_core::Error::invalid(
            "path is empty: name an existing directory",
        ));
    }
    if !path.is_absolute() {
        return Err(fault_core::Error::invalid(format!(
            "path \"{shown}\" is relative: write it as an absolute path"
        )));
    }
    if path.as_os_str().as_encoded_bytes().contains(&0) {
        return Err(fault_core::Error::invalid(format!(
            "path \"{shown}\" contains a NUL byte"
        )));
    }
    Ok(())
}

/// Plan-time checks of a spec's directory, shared by the disk faults: it exists, is a
/// directory, its filesystem is writable and mounted read-write, and we may create files in
/// it. Returns the directory with symlinks resolved (so revert finds its files even if a
/// link changes later), its filesystem's numbers and its device (`st_dev`).
pub(crate) fn writable_dir(
    path: &std::path::Path,
) -> fault_core::Result<(std::path::PathBuf, FsStats, u64)> {
    use fault_core::{Error, ErrorKind};
    use std::os::unix::fs::MetadataExt;
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::new(ErrorKind::NotFound, format!("{shown} does not exist"))
        } else {
            Error::io(format!("inspecting {shown}"), e)
        }
    })?;
    if !meta.is_dir() {
        return Err(Error::invalid(format!("{shown} is not a directory")));
    }
    let dir =
        std::fs::canonicalize(path).map_err(|e| Error::io(format!("resolving {shown}"), e))?;
    let stats = FsStats::of_path(&dir).map_err(|e| Error::io(format!("statvfs {shown}"), e))?;
    if stats.read_only {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!("the filesystem of {shown} is mounted read-only"),
        ));
    }
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::invalid(format!("{shown} contains a NUL byte")))?;
    // SAFETY: `c` is a valid NUL-terminated path.
    let r = unsafe {
        libc::faccessat(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::W_OK | libc::X_OK,
            libc::AT_EACCESS,
        )
    };
    if r != 0 {
        return Err(Error::last_os(format!("cannot create files in {shown}")));
    }
    Ok((dir, stats, meta.dev()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// A filesystem of `total` MiB, `used` MiB used, `reserved` MiB reserved for root, 4 KiB
    /// blocks.
    fn fs(total: u64, used: u64, reserved: u64) -> FsStats {
        let b = |mib: u64| mib * MIB / 4096;
        FsStats {
            frsize: 4096,
            blocks: b(total),
            bfree: b(total - used),
            bavail: b(total - used - reserved),
            read_only: false,
            files: 0,
            ffree: 0,
            favail: 0,
        }
    }

    #[test]
    fn protected_reserve_table() {
        const GIB: u64 = 1 << 30;
        assert_eq!(protected_reserve(64 * MIB), 16 * MIB);
        assert_eq!(protected_reserve(4 * GIB), GIB);
        assert_eq!(protected_reserve(10 * GIB), GIB);
        assert_eq!(protected_reserve(100 * GIB), 5 * GIB);
        assert_eq!(protected_reserve(2048 * GIB), 2048 * GIB / 20);
        assert_eq!(protected_reserve(0), 0);
        assert_eq!(protected_reserve(u64::MAX), u64::MAX / 20);
    }

    #[test]
    fn df_percent_excludes_reserved_blocks() {
        let f = fs(100, 45, 10);
        assert_eq!(f.used(), 45 * MIB);
        assert_eq!(f.avail(), 45 * MIB);
        assert!((f.used_percent() - 50.0).abs() < 1e-9);
        assert_eq!(fs(100, 0, 0).used_percent(), 0.0);
        // Nothing usable at all counts as full.
        let empty = FsStats {
            frsize: 4096,
            blocks: 0,
            bfree: 0,
            bavail: 0,
            read_only: false,
            files: 0,
            ffree: 0,
            favail: 0,
        };
        assert_eq!(empty.used_percent(), 100.0);
    }

    #[test]
    fn size_is_taken_as_asked() {
        assert_eq!(
            bytes_to_fill(&fs(100, 10, 0), Amount::Size(20 * MIB), 0, "/srv"),
            Ok(20 * MIB)
        );
        // Not a block multiple: the file has the asked length.
        assert_eq!(
            bytes_to_fill(&fs(100, 10, 0), Amount::Size(1000), 0, "/srv"),
            Ok(1000)
        );
        // Exactly everything available.
        assert_eq!(
            bytes_to_fill(&fs(100, 10, 0), Amount::Size(90 * MIB), 0, "/srv"),
            Ok(90 * MIB)
        );
    }

    #[test]
    fn size_larger_than_available_is_refused_with_numbers() {
        let e = bytes_to_fill(&fs(100, 10, 5), Amount::Size(90 * MIB), 0, "/srv").unwrap_err();
        assert_eq!(
            e,
            "requested 90.0 MiB but only 85.0 MiB is available on /srv"
        );
        // One byte over after rounding to whole blocks.
        let e = bytes_to_fill(&fs(100, 10, 0), Amount::Size(90 * MIB + 1), 0, "/srv");
        assert!(e.is_err());
        let e = bytes_to_fill(&fs(100, 10, 0), Amount::Size(200 * MIB), MIB, "/srv").unwrap_err();
        assert!(e.ends_with("(reserve 1.0 MiB)"), "{e}");
    }

    #[test]
    fn reserve_is_respected() {
        let f = fs(100, 10, 0); // 90 MiB available
        assert_eq!(
            bytes_to_fill(&f, Amount::Size(80 * MIB), 10 * MIB, "/srv"),
            Ok(80 * MIB)
        );
        assert!(bytes_to_fill(&f, Amount::Size(80 * MIB + 1), 10 * MIB, "/srv").is_err());
        let e = bytes_to_fill(&f, Amount::Size(85 * MIB), 10 * MIB, "/srv").unwrap_err();
        assert_eq!(
            e,
            "requested 85.0 MiB but only 80.0 MiB of the 90.0 MiB available on /srv may be used \
             (reserve 10.0 MiB)"
        );
        let e = bytes_to_fill(&f, Amount::Percent(95.0), 10 * MIB, "/srv").unwrap_err();
        assert!(
            e.starts_with("filling /srv to 95% needs 85.0 MiB but only"),
            "{e}"
        );
    }

    #[test]
    fn percent_fills_to_df_percentage() {
        // 100 MiB, 20 used, 10 reserved: df total = 90 MiB; 50% of it = 45 MiB used.
        let f = fs(100, 20, 10);
        let n = bytes_to_fill(&f, Amount::Percent(50.0), 0, "/srv").unwrap();
        assert_eq!(n, 25 * MIB);
        let after = FsStats {
            bfree: f.bfree - n / 4096,
            bavail: f.bavail - n / 4096,
            ..f
        };
        assert!((after.used_percent() - 50.0).abs() < 1e-9);
        // 100% takes everything available.
        assert_eq!(
            bytes_to_fill(&f, Amount::Percent(100.0), 0, "/srv"),
            Ok(70 * MIB)
        );
    }

    #[test]
    fn percent_rounds_up_to_whole_blocks() {
        let f = FsStats {
            frsize: 4096,
            blocks: 1000,
            bfree: 1000,
            bavail: 1000,
            read_only: false,
            files: 0,
            ffree: 0,
            favail: 0,
        };
        // 33.3% of 1000 blocks = 333 blocks exactly; 33.35% -> 333.5 -> 334 blocks.
        assert_eq!(
            bytes_to_fill(&f, Amount::Percent(33.35), 0, "/x"),
            Ok(334 * 4096)
        );
        assert_eq!(bytes_to_fill(&f, Amount::Percent(0.01), 0, "/x"), Ok(4096));
    }

    #[test]
    fn percent_already_reached_is_refused() {
        let f = fs(100, 93, 0);
        let e = bytes_to_fill(&f, Amount::Percent(90.0), 0, "/srv").unwrap_err();
        assert_eq!(e, "/srv is already 93.0% used (requested 90%)");
        // Exactly at the target: nothing to fill, refused too.
        let e = bytes_to_fill(&fs(100, 50, 0), Amount::Percent(50.0), 0, "/srv").unwrap_err();
        assert!(e.contains("already 50.0% used"), "{e}");
        // A full filesystem.
        let e = bytes_to_fill(&fs(100, 100, 0), Amount::Percent(100.0), 0, "/srv").unwrap_err();
        assert!(e.contains("already 100.0% used"), "{e}");
    }

    #[test]
    fn no_usable_space_is_refused() {
        let f = FsStats {
            frsize: 4096,
            blocks: 0,
            bfree: 0,
            bavail: 0,
            read_only: false,
            files: 0,
            ffree: 0,
            favail: 0,
        };
        let e = bytes_to_fill(&f, Amount::Percent(50.0), 0, "/p").unwrap_err();
        assert!(e.contains("no usable space"), "{e}");
        assert!(bytes_to_fill(&f, Amount::Size(1), 0, "/p").is_err());
    }

    #[test]
    fn huge_numbers_do_not_overflow() {
        // 4 EiB in 4 KiB blocks: still fits u64 bytes.
        let f = FsStats {
            frsize: 4096,
            blocks: 1 << 50,
            bfree: 1 << 49,
            bavail: 1 << 48,
            read_only: false,
            files: 0,
            ffree: 0,
            favail: 0,
        };
        assert!(bytes_to_fill(&f, Amount::Size(u64::MAX), 0, "/p").is_err());
        assert!(bytes_to_fill(&f, Amount::Size(1 << 40), u64::MAX, "/p").is_err());
        assert_eq!(
            bytes_to_fill(&f, Amount::Percent(100.0), 0, "/p"),
            Ok(f.avail())
        );
        // Counts whose byte totals overflow saturate instead of panicking.
        let absurd = FsStats {
            blocks: u64::MAX,
            bfree: 0,
            bavail: u64::MAX,
            ..f
        };
        let _ = bytes_to_fill(&absurd, Amount::Percent(50.0), 0, "/p");
        assert_eq!(round_up(u64::MAX, 4096), u64::MAX);
    }
}
