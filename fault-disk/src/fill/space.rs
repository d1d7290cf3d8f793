//! The space half of `disk.fill`: the fill file `<dir>/.chaos-agent-fill-<fault id>`, its
//! blocks taken with one `fallocate(2)`, checked and measured.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind as IoKind;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use fault_core::host::fs::sync_dir;
use fault_core::{Bytes, Context, Error, ErrorKind, Observation, Result};

use super::{parent, DiskFill, DiskFillReceipt};
use crate::files::{self, drifted, FileId};
use crate::mounts;
use crate::statfs::{bytes_to_fill, round_up, Amount, FsStats};

/// `lstat`, mapping "nothing there" (`ENOENT`, or `ENOTDIR` when the directory itself was
/// replaced) to `None`.
pub(super) fn lstat(path: &Path) -> std::io::Result<Option<std::fs::Metadata>> {
    match std::fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == IoKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR) => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// A name for what sits at a path, for messages.
pub(super) fn type_name(m: &std::fs::Metadata) -> &'static str {
    let t = m.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symlink"
    } else if t.is_file() {
        "a regular file"
    } else if t.is_fifo() {
        "a fifo"
    } else if t.is_socket() {
        "a socket"
    } else {
        "a device node"
    }
}

/// Refusal to touch something at the fill path that is not a file we created.
pub(super) fn not_ours(file: &Path, m: &std::fs::Metadata, doing: &str) -> Error {
    drifted(format!(
        "refusing to {doing} {}: it is {}, not the regular file disk.fill creates",
        file.display(),
        type_name(m)
    ))
}

/// Refusal to touch a regular file at the fill path whose identity is not the recorded one.
pub(super) fn replaced(file: &Path, want: FileId, doing: &str) -> Error {
    let have = files::id_of(file).map_or_else(|| "gone".to_string(), |h| h.to_string());
    drifted(format!(
        "refusing to {doing} {}: it is not the file disk.fill created ({have}, the receipt \
         recorded {want}); someone replaced it",
        file.display()
    ))
}

/// Whether the file at `path` is the recorded one (or none was recorded).
pub(super) fn is_recorded(path: &Path, want: Option<FileId>) -> bool {
    want.is_none_or(|w| files::id_of(path).is_some_and(|h| w.is(&h)))
}

/// Bytes the file has allocated (`st_blocks` is in 512-byte units).
pub(super) fn allocated(m: &std::fs::Metadata) -> u64 {
    m.blocks().saturating_mul(512)
}

/// A df-style "N.N% used" of the filesystem holding `dir`, or why it is unknown.
pub(super) fn usage(dir: &Path) -> String {
    match FsStats::of_path(dir) {
        Ok(s) => format!(
            "{} is {:.1}% used, {} available",
            dir.display(),
            s.used_percent(),
            Bytes(s.avail()).human()
        ),
        Err(e) => format!("usage of {} unknown: {e}", dir.display()),
    }
}

/// `fallocate(fd, 0, 0, len)`, retried on `EINTR`.
pub(super) fn fallocate(file: &File, len: u64) -> std::io::Result<()> {
    let len =
        libc::off_t::try_from(len).map_err(|_| std::io::Error::from_raw_os_error(libc::EFBIG))?;
    loop {
        // SAFETY: the fd is open for writing for the duration of the call.
        if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// The one line of [`DiskFill::touches`], computed in the receipt's mount namespace
/// (`ns` names it when it is not the caller's).
pub(super) fn touch_line(r: &DiskFillReceipt, ns: &str) -> String {
    let want = Bytes(r.bytes).human();
    let s = match FsStats::of_path(&r.dir) {
        Ok(s) => s,
        Err(e) => {
            return format!(
                "fill {want} on the filesystem of {} (device {}): usage unknown ({e})",
                r.dir.display(),
                files::dev_name(r.device)
            )
        }
    };
    let ms = mounts::mounts();
    let m = mounts::mount_of(&ms, &r.dir, r.device);
    let label = m.map_or_else(
        || {
            format!(
                "the filesystem of {} (device {})",
                r.dir.display(),
                files::dev_name(r.device)
            )
        },
        mounts::Mount::label,
    );
    let place = match m {
        Some(m) if m.mount_point != r.dir => format!(" in {}", r.dir.display()),
        _ => String::new(),
    };
    // A fill file already there (this fault's, once injected) is counted as not there.
    let mine = match lstat(&r.file) {
        Ok(Some(meta)) if meta.file_type().is_file() && is_recorded(&r.file, r.inode) => {
            allocated(&meta)
        }
        _ => 0,
    };
    let used = s.used().saturating_sub(mine);
    let avail = s.avail().saturating_add(mine);
    let need = round_up(r.bytes, s.frsize);
    let total = used.saturating_add(avail);
    let after = if total == 0 {
        100.0
    } else {
        (used.saturating_add(need)).min(total) as f64 * 100.0 / total as f64
    };
    format!(
        "fill {want} of {} {label}{place}{ns}: {} used after the fill, {} left",
        Bytes(s.size()).human(),
        files::percent(after),
        Bytes(avail.saturating_sub(need)).human()
    )
}

impl DiskFill {
    /// Open the fill file: create it, or reopen one an earlier `inject` of this receipt
    /// left (it carries our fault id, and the recorded identity when there is one). Returns
    /// the file and whether it was created now.
    pub(super) fn open_fill(receipt: &DiskFillReceipt) -> Result<(File, bool)> {
        let file = &receipt.file;
        let created = OpenOptions::new()
            .write(true)
            .create_new(true) // O_CREAT | O_EXCL: never follows a symlink
            .mode(0o600)
            .open(file); // std adds O_CLOEXEC
        match created {
            Ok(f) => return Ok((f, true)),
            Err(e) if e.kind() == IoKind::AlreadyExists => {}
            Err(e) => {
                return Err(Error::io(format!("creating {}", file.display()), e));
            }
        }
        let meta = std::fs::symlink_metadata(file)
            .map_err(|e| Error::io(format!("inspecting {}", file.display()), e))?;
        if !meta.file_type().is_file() {
            return Err(not_ours(file, &meta, "fill"));
        }
        if let Some(want) = receipt.inode.filter(|_| !is_recorded(file, receipt.inode)) {
            return Err(replaced(file, want, "fill"));
        }
        let f = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(file)
            .map_err(|e| Error::io(format!("reopening {}", file.display()), e))?;
        let now = FileId::of_fd(f.as_raw_fd());
        let same = now.is_some_and(|n| {
            (n.dev, n.ino) == (meta.dev(), meta.ino()) && receipt.inode.is_none_or(|w| w.is(&n))
        });
        if !same {
            return Err(drifted(format!(
                "{} was replaced while being reopened",
                file.display()
            )));
        }
        Ok((f, false))
    }

    /// Allocate and make durable; the caller unlinks on error.
    pub(super) fn allocate(
        &self,
        cx: &Context,
        receipt: &DiskFillReceipt,
        f: &File,
        fresh: bool,
    ) -> Result<()> {
        let dir = &self.spec.path;
        let bytes = receipt.bytes;
        let meta = f
            .metadata()
            .map_err(|e| Error::io(format!("inspecting {}", receipt.file.display()), e))?;
        if !fresh && meta.len() >= bytes && allocated(&meta) >= bytes {
            return Ok(()); // an earlier inject of this receipt finished
        }
        // The reserve and the guard were checked at plan; check them again just before
        // taking the space, in case the filesystem filled up since. Not on a retry: our own
        // partial file would count against them.
        if fresh {
            let s = FsStats::of_file(f)
                .map_err(|e| Error::io(format!("statvfs {}", dir.display()), e))?;
            if self.spec.reserve.is_some() {
                bytes_to_fill(
                    &s,
                    Amount::Size(bytes),
                    self.reserve(),
                    &dir.display().to_string(),
                )
                .map_err(|m| Error::new(ErrorKind::Unsupported, m))?;
            }
            self.guard(cx, &receipt.dir, receipt.device, &s, bytes)?;
        }
        fallocate(f, bytes).map_err(|e| match e.raw_os_error() {
            Some(libc::ENOSPC) => Error::io(
                format!(
                    "not enough space on {}: allocating {} failed",
                    dir.display(),
                    Bytes(bytes).human()
                ),
                e,
            ),
            Some(libc::EOPNOTSUPP) => Error::new(
                ErrorKind::Unsupported,
                format!(
                    "the filesystem of {} does not support fallocate(2): {e}",
                    dir.display()
                ),
            ),
            _ => Error::io(
                format!(
                    "fallocate {} of {}",
                    Bytes(bytes).human(),
                    receipt.file.display()
                ),
                e,
            ),
        })?;
        f.sync_all()
            .map_err(|e| Error::io(format!("fsync {}", receipt.file.display()), e))?;
        sync_dir(&receipt.dir).map_err(|e| Error::io(format!("fsync {}", receipt.dir.display()), e))
    }
}

/// `verify` in the receipt's mount namespace.
pub(super) fn verify_file(receipt: &DiskFillReceipt) -> Result<Observation> {
    let file = &receipt.file;
    let dir = parent(file);
    let meta = lstat(file).map_err(|e| Error::io(format!("inspecting {}", file.display()), e))?;
    let Some(meta) = meta else {
        return Ok(Observation::clean(format!(
            "no fill file {}; {}",
            file.display(),
            usage(dir)
        )));
    };
    if !meta.file_type().is_file() {
        return Err(not_ours(file, &meta, "verify"));
    }
    if let Some(want) = receipt.inode.filter(|_| !is_recorded(file, receipt.inode)) {
        return Err(replaced(file, want, "verify"));
    }
    let want = Bytes(receipt.bytes).human();
    let have = meta.len().min(allocated(&meta));
    if have >= receipt.bytes {
        Ok(Observation::in_effect(format!(
            "{} holds {want} (device {}); {}",
            file.display(),
            files::dev_name(receipt.device),
            usage(dir)
        )))
    } else {
        Ok(Observation::partial(format!(
            "{} holds {} ({} allocated) of {want}; {}",
            file.display(),
            Bytes(meta.len()).human(),
            Bytes(allocated(&meta)).human(),
            usage(dir)
        )))
    }
}
