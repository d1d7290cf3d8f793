//! The protected-filesystem guard of `disk.fill`: a filesystem holding one of
//! [`Context::protected_paths`] keeps a safe reserve of space and of inodes unless the spec
//! sets `allow_protected_filesystem`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use fault_core::{Bytes, Context, Error, ErrorKind, Result};

use super::{inodes, DiskFill};
use crate::mounts;
use crate::statfs::{protected_reserve, round_up, FsStats};

/// The device of `path`, or of its nearest existing ancestor (a state directory not made
/// yet will be made there), with the path that was found.
fn device_of_nearest(path: &Path) -> Option<(PathBuf, u64)> {
    let mut p = path;
    loop {
        if let Ok(m) = std::fs::metadata(p) {
            let shown = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
            return Some((shown, m.dev()));
        }
        p = p.parent()?;
    }
}

impl DiskFill {
    /// The protected paths (of [`Context::protected_paths`]) on the filesystem of `dir`.
    pub(super) fn protected_here(cx: &Context, dir: &Path, device: u64) -> Vec<String> {
        let ms = mounts::mounts();
        let mut held: Vec<String> = Vec::new();
        for p in &cx.protected_paths {
            if let Some((shown, dev)) = device_of_nearest(p) {
                if mounts::same_filesystem(&ms, dir, device, &shown, dev) {
                    held.push(shown.display().to_string());
                }
            }
        }
        held.dedup();
        held
    }

    /// Refuse an inode fill that would leave a filesystem holding a protected path with
    /// fewer free inodes than its safe reserve (5% of its inodes, at least 10,000, at most a
    /// quarter of them), unless the spec allows it. `need` is the inodes still to take.
    pub(super) fn guard_inodes(
        &self,
        cx: &Context,
        dir: &Path,
        device: u64,
        stats: &FsStats,
        need: u64,
    ) -> Result<()> {
        if self.spec.allow_protected_filesystem {
            return Ok(());
        }
        let reserve = inodes::protected_inode_reserve(stats.files);
        let left = stats.favail.saturating_sub(need);
        if left >= reserve {
            return Ok(());
        }
        let held = DiskFill::protected_here(cx, dir, device);
        if held.is_empty() {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "refusing to exhaust the inodes of {}: it holds protected path{} {} and taking \
                 {need} inodes would leave {left} free of {}, below its safe reserve of \
                 {reserve} (5% of its inodes, at least 10000, at most a quarter of them); set \
                 allow_protected_filesystem = true in this fault to fill it anyway",
                mounts::label(dir, device),
                if held.len() == 1 { "" } else { "s" },
                held.join(", "),
                stats.files
            ),
        ))
    }

    /// Refuse a fill that would leave a filesystem holding a protected path with less than
    /// its safe reserve, unless the spec allows it. `stats` are the filesystem's numbers
    /// now; `need` the bytes still to allocate.
    pub(super) fn guard(
        &self,
        cx: &Context,
        dir: &Path,
        device: u64,
        stats: &FsStats,
        need: u64,
    ) -> Result<()> {
        if self.spec.allow_protected_filesystem {
            return Ok(());
        }
        let held = DiskFill::protected_here(cx, dir, device);
        if held.is_empty() {
            return Ok(());
        }
        let size = stats.size();
        let reserve = protected_reserve(size);
        let need = round_up(need, stats.frsize);
        let left = stats.avail().saturating_sub(need);
        if left >= reserve {
            return Ok(());
        }
        let label = mounts::label(dir, device);
        let h = |n: u64| Bytes(n).human();
        Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "refusing to fill {label}: it holds protected path{} {} and filling {} would \
                 leave {} available of {}, below its safe reserve of {} (5% of the filesystem, \
                 at least 1 GiB, at most a quarter of it); set allow_protected_filesystem = \
                 true in this fault to fill it anyway",
                if held.len() == 1 { "" } else { "s" },
                held.join(", "),
                h(need),
                h(left),
                h(size),
                h(reserve)
            ),
        ))
    }
}
