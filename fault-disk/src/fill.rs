//! `disk.fill`: allocate space on a filesystem with one `fallocate(2)`'d file.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::ErrorKind as IoKind;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use fault_core::host::fs::sync_dir;
use fault_core::host::ns::NsId;
use fault_core::host::shell::join;
use fault_core::{
    Bytes, Context, Error, ErrorKind, Fault, KindInfo, Leftover, Observation, Param, Percent,
    Result,
};
use serde::{Deserialize, Serialize};

use crate::files::{self, drifted, in_mount_ns, FileId};
use crate::mounts;
use crate::statfs::{bytes_to_fill, protected_reserve, round_up, Amount, FsStats};

/// The kind string of [`DiskFill`].
pub const KIND: &str = "disk.fill";

/// Prefix of the fill file's name; the fault id follows it.
const FILE_PREFIX: &str = ".chaos-agent-fill-";

/// Longest file name most Linux filesystems accept (`NAME_MAX`).
const NAME_MAX: usize = 255;

/// Added to the error when unlinking a fill file fails with `EPERM`.
const IMMUTABLE_HINT: &str =
    "it is immutable or append-only: `lsattr` shows it, `chattr -i -a` clears it";

/// The parameters of a `disk.fill` fault, as written in an experiment.
///
/// Exactly one of [`size`](DiskFillSpec::size) and [`percent`](DiskFillSpec::percent) is
/// given.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DiskFillSpec {
    /// An existing directory, written as an absolute path. The fill file is created in it,
    /// so the filesystem holding it is the one filled.
    pub path: PathBuf,
    /// Allocate this many bytes (> 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Bytes>,
    /// Allocate until the filesystem is this percent used (> 0), as `df` shows it:
    /// used / (used + available to unprivileged users).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<Percent>,
    /// Refuse (at plan) when the fill would leave less than this available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserve: Option<Bytes>,
    /// Allow the fill to go below the safe reserve of a filesystem that holds one of
    /// [`Context::protected_paths`] (the root filesystem, the agent's state directory).
    /// Default `false`: such a fill is refused at plan. The safe reserve is 5% of the
    /// filesystem, at least 1 GiB, at most a quarter of it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_protected_filesystem: bool,
}

/// What [`DiskFill::plan`] resolved: everything `verify` and `revert` need.
///
/// Fields added after the first release are optional, so older journaled receipts still
/// read (and revert as they did: by name, in the caller's mount namespace).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct DiskFillReceipt {
    /// The directory whose filesystem is filled (canonical path).
    pub dir: PathBuf,
    /// The fill file, `<dir>/.chaos-agent-fill-<fault id>`. The fault id in its name is what
    /// makes it ours.
    pub file: PathBuf,
    /// Its length, and the space it allocates, in bytes.
    pub bytes: u64,
    /// The filesystem's device number (`st_dev` of `dir`) at plan time, for reports.
    pub device: u64,
    /// The mount namespace `dir` was resolved in: revert acts there (`dir` may name another
    /// filesystem, or nothing, elsewhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mnt_ns: Option<NsId>,
    /// The boot the receipt was planned in: a mount namespace does not outlive it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// The fill file's device and inode, recorded by `inject` once it created the file.
    /// Revert never unlinks a file at `file` with another identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inode: Option<FileId>,
}

/// Fill the filesystem holding a directory, by size or up to a percentage used.
///
/// # What changes on the host
///
/// One regular file, `<path>/.chaos-agent-fill-<fault id>` (mode 0600), whose blocks are
/// allocated with `fallocate(fd, 0, 0, bytes)`: no data is written, so filling is instant on
/// ext4, xfs, btrfs and tmpfs, but the space is really taken (`df` shows it, other writers
/// get `ENOSPC`). Filesystems without `fallocate` support are refused as unsupported.
///
/// # Guard
///
/// A filesystem holding one of [`Context::protected_paths`] (`/` and the agent's state
/// directory) keeps a safe reserve: 5% of its size, at least 1 GiB, at most a quarter of
/// it. A fill that would leave less available is refused at plan (and
/// again at inject), naming the filesystem and the numbers, unless the spec sets
/// `allow_protected_filesystem = true`.
///
/// # Revert
///
/// Unlinks the file and `fsync`s the directory; the space comes back at once. Only a
/// regular file at exactly that path is removed, and only if its device and inode are the
/// ones `inject` recorded; anything else found there (a directory, a symlink, another
/// file) is refused as drifted. The space stays allocated after the unlink while some
/// other process holds the file open; the fault itself closes its descriptor before
/// `inject` returns, so only a stranger (a backup tool, say) can do that.
///
/// Revert (and verify) act in the mount namespace the receipt was planned in, entering it
/// when the reverting process is elsewhere; when nothing visible refers to that namespace
/// any more in the same boot, revert fails and the manual undo is prefixed with
/// `nsenter --mount=…`.
///
/// # Persistence
///
/// The file and the directory are `fsync`ed after the allocation and after the unlink, so
/// after a crash or a reboot there is either the whole fill file or none. A failed
/// allocation (ext4 keeps a partial one on `ENOSPC`) is unlinked before `inject` returns.
///
/// # Privileges
///
/// Write access to the directory; no root needed. Even root gets no more than `f_bavail`:
/// ext4's reserved blocks need `CAP_SYS_RESOURCE`, and the sizing never counts on them.
/// Reverting from another mount namespace needs `CAP_SYS_ADMIN`.
#[derive(Debug, Clone)]
pub struct DiskFill {
    spec: DiskFillSpec,
    amount: Amount,
}

impl DiskFill {
    /// The validated spec.
    pub fn spec(&self) -> &DiskFillSpec {
        &self.spec
    }

    fn reserve(&self) -> u64 {
        self.spec.reserve.map_or(0, Bytes::get)
    }
}

/// The fill file's path for a fault id, refusing ids that would not make one plain name.
fn fill_file(dir: &Path, fault_id: &str) -> Result<PathBuf> {
    if fault_id.is_empty()
        || fault_id.contains(['/', '\0'])
        || fault_id == "."
        || fault_id == ".."
        || FILE_PREFIX.len() + fault_id.len() > NAME_MAX
    {
        return Err(Error::invalid(format!(
            "fault id {fault_id:?} cannot name a file: it must be 1 to {} bytes without '/'",
            NAME_MAX - FILE_PREFIX.len()
        )));
    }
    Ok(dir.join(format!("{FILE_PREFIX}{fault_id}")))
}

/// The directory of a receipt's file, for `fsync` and messages.
fn parent(file: &Path) -> &Path {
    file.parent().unwrap_or(Path::new("/"))
}

/// What revert checks of a receipt without knowing the fault id: `file` is a fill file
/// name (`.chaos-agent-fill-…`) directly in `dir`, an absolute plain path. (The engine also
/// checks the id itself with [`DiskFill::check_receipt`].)
fn check_shape(r: &DiskFillReceipt) -> Result<()> {
    let name = r.file.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let ok = files::is_plain_absolute(&r.file)
        && r.file.parent() == Some(r.dir.as_path())
        && name.len() > FILE_PREFIX.len()
        && name.starts_with(FILE_PREFIX);
    if ok {
        Ok(())
    } else {
        Err(drifted(format!(
            "refusing to touch {}: disk.fill only removes {FILE_PREFIX}<fault id> directly in \
             its directory {}",
            r.file.display(),
            r.dir.display()
        )))
    }
}

/// `lstat`, mapping "nothing there" (`ENOENT`, or `ENOTDIR` when the directory itself was
/// replaced) to `None`.
fn lstat(path: &Path) -> std::io::Result<Option<std::fs::Metadata>> {
    match std::fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == IoKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR) => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// A name for what sits at a path, for messages.
fn type_name(m: &std::fs::Metadata) -> &'static str {
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
fn not_ours(file: &Path, m: &std::fs::Metadata, doing: &str) -> Error {
    drifted(format!(
        "refusing to {doing} {}: it is {}, not the regular file disk.fill creates",
        file.display(),
        type_name(m)
    ))
}

/// Refusal to touch a regular file at the fill path whose identity is not the recorded one.
fn replaced(file: &Path, want: FileId, doing: &str) -> Error {
    let have = files::id_of(file).map_or_else(|| "gone".to_string(), |h| h.to_string());
    drifted(format!(
        "refusing to {doing} {}: it is not the file disk.fill created ({have}, the receipt \
         recorded {want}); someone replaced it",
        file.display()
    ))
}

/// Whether the file at `path` is the recorded one (or none was recorded).
fn is_recorded(path: &Path, want: Option<FileId>) -> bool {
    want.is_none_or(|w| files::id_of(path).is_some_and(|h| w.is(&h)))
}

/// Bytes the file has allocated (`st_blocks` is in 512-byte units).
fn allocated(m: &std::fs::Metadata) -> u64 {
    m.blocks().saturating_mul(512)
}

/// A df-style "N.N% used" of the filesystem holding `dir`, or why it is unknown.
fn usage(dir: &Path) -> String {
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
fn fallocate(file: &File, len: u64) -> std::io::Result<()> {
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

/// The one line of [`DiskFill::touches`], computed in the receipt's mount namespace
/// (`ns` names it when it is not the caller's).
fn touch_line(r: &DiskFillReceipt, ns: &str) -> String {
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
    fn open_fill(receipt: &DiskFillReceipt) -> Result<(File, bool)> {
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

    /// Refuse a fill that would leave a filesystem holding a protected path with less than
    /// its safe reserve, unless the spec allows it. `stats` are the filesystem's numbers
    /// now; `need` the bytes still to allocate.
    fn guard(
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
        let ms = mounts::mounts();
        let mut held: Vec<String> = Vec::new();
        for p in &cx.protected_paths {
            if let Some((shown, dev)) = device_of_nearest(p) {
                if mounts::same_filesystem(&ms, dir, device, &shown, dev) {
                    held.push(shown.display().to_string());
                }
            }
        }
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
        held.dedup();
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

    /// Allocate and make durable; the caller unlinks on error.
    fn allocate(
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

    /// `inject` in the receipt's mount namespace.
    fn inject_here(&self, cx: &Context, receipt: &mut DiskFillReceipt) -> Result<()> {
        check_shape(receipt)?;
        let (f, fresh) = DiskFill::open_fill(receipt)?;
        if receipt.inode.is_none() {
            receipt.inode =
                Some(FileId::of_fd(f.as_raw_fd()).ok_or_else(|| {
                    Error::last_os(format!("inspecting {}", receipt.file.display()))
                })?);
        }
        let result = self.allocate(cx, receipt, &f, fresh);
        drop(f); // close before unlinking: an open fd would keep the space allocated
        if let Err(e) = result {
            // Never leave a partial allocation (ext4 keeps one on ENOSPC).
            if let Err(u) = files::remove(&receipt.file, receipt.inode, KIND, IMMUTABLE_HINT) {
                return Err(e.context(format!(
                    "and removing the partial {} failed too ({u})",
                    receipt.file.display()
                )));
            }
            return Err(e);
        }
        Ok(())
    }
}

/// `verify` in the receipt's mount namespace.
fn verify_here(receipt: &DiskFillReceipt) -> Result<Observation> {
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

impl Fault for DiskFill {
    const KIND: &'static str = KIND;
    const FINDS_LEFTOVERS: bool = true;
    type Spec = DiskFillSpec;
    type Receipt = DiskFillReceipt;

    fn new(spec: DiskFillSpec) -> Result<DiskFill> {
        crate::statfs::check_spec_path(&spec.path)?;
        let amount =
            match (spec.size, spec.percent) {
                (Some(_), Some(_)) => {
                    return Err(Error::invalid(
                        "both size and percent are given: give exactly one",
                    ))
                }
                (None, None) => return Err(Error::invalid(
                    "neither size nor percent is given: give exactly one (e.g. size = \"1GiB\" \
                     or percent = 90)",
                )),
                (Some(Bytes(0)), None) => {
                    return Err(Error::invalid("size is 0: nothing would be filled"))
                }
                (Some(Bytes(n)), None) => Amount::Size(n),
                (None, Some(p)) if p.get() <= 0.0 => {
                    return Err(Error::invalid("percent is 0: nothing would be filled"))
                }
                (None, Some(p)) => Amount::Percent(p.get()),
            };
        Ok(DiskFill { spec, amount })
    }

    fn info() -> KindInfo {
        KindInfo {
            summary: "Fills the filesystem holding `path` by allocating one file, \
                      `<path>/.chaos-agent-fill-<fault id>`, with fallocate(2): `size` bytes, \
                      or enough to make the filesystem `percent` used as df shows it. Plan \
                      refuses (never fills less) when that does not fit, would leave less than \
                      `reserve`, or the filesystem is already that full; on a filesystem \
                      holding the root or the agent's state directory it also refuses to go \
                      below a safe reserve (5% of the filesystem, at least 1 GiB, at most a \
                      quarter of it) unless `allow_protected_filesystem` is set. Revert unlinks \
                      the file (only the one inject created, in the mount namespace it was \
                      created in), which returns the space at once (unless another process \
                      holds it open).",
            privileges: "write access to the directory (no root needed); root cannot use ext4 \
                         reserved blocks without CAP_SYS_RESOURCE; reverting from another \
                         mount namespace needs CAP_SYS_ADMIN",
            reversible: true,
            params: &[
                Param {
                    name: "path",
                    ty: "path",
                    default: None,
                    doc: "An existing directory (absolute path); its filesystem is filled.",
                },
                Param {
                    name: "size",
                    ty: "bytes",
                    default: None,
                    doc: "Bytes to allocate, e.g. \"2GiB\"; give this or percent.",
                },
                Param {
                    name: "percent",
                    ty: "percent",
                    default: None,
                    doc: "Fill until the filesystem is this % used (as df shows it); give this \
                          or size.",
                },
                Param {
                    name: "reserve",
                    ty: "bytes",
                    default: Some("0"),
                    doc: "Refuse when the fill would leave less than this available.",
                },
                Param {
                    name: "allow_protected_filesystem",
                    ty: "boolean",
                    default: Some("false"),
                    doc: "Allow filling the filesystem of / or of the agent's state directory \
                          below its safe reserve (5%, at least 1 GiB, at most a quarter of \
                          it); without it plan refuses such a fill.",
                },
            ],
            example: "kind = \"disk.fill\"\nduration = \"30s\"\npath = \"/var/tmp\"\npercent = 90",
        }
    }

    fn describe(&self) -> String {
        let mut s = match self.amount {
            Amount::Size(n) => format!(
                "allocate {} on the filesystem of {}",
                Bytes(n).human(),
                self.spec.path.display()
            ),
            Amount::Percent(p) => format!(
                "fill the filesystem of {} to {p}% used",
                self.spec.path.display()
            ),
        };
        if let Some(r) = self.spec.reserve {
            s.push_str(&format!(", keeping at least {} available", r.human()));
        }
        if self.spec.allow_protected_filesystem {
            s.push_str(", even below the safe reserve of a protected filesystem");
        }
        s
    }

    fn plan(&self, cx: &Context) -> Result<DiskFillReceipt> {
        let path = &self.spec.path;
        let shown = path.display().to_string();
        let (dir, stats, device) = crate::statfs::writable_dir(path)?;
        let file = fill_file(&dir, &cx.fault_id)?;
        let bytes = bytes_to_fill(&stats, self.amount, self.reserve(), &shown)
            .map_err(|m| Error::new(ErrorKind::Unsupported, m))?;
        self.guard(cx, &dir, device, &stats, bytes)?;
        Ok(DiskFillReceipt {
            dir,
            file,
            bytes,
            device,
            mnt_ns: files::current_mnt_ns(),
            boot_id: Some(cx.boot_id.clone()),
            inode: None,
        })
    }

    fn inject(&self, cx: &Context, receipt: &mut DiskFillReceipt) -> Result<()> {
        let ns = receipt.mnt_ns.clone();
        let boot = receipt.boot_id.clone();
        in_mount_ns(ns.as_ref(), boot.as_deref(), "the fill file", || {
            self.inject_here(cx, receipt)
        })
    }

    fn verify(receipt: &DiskFillReceipt) -> Result<Observation> {
        in_mount_ns(
            receipt.mnt_ns.as_ref(),
            receipt.boot_id.as_deref(),
            &format!("the fill file {}", receipt.file.display()),
            || verify_here(receipt),
        )
    }

    fn revert(receipt: &DiskFillReceipt) -> Result<()> {
        check_shape(receipt)?;
        in_mount_ns(
            receipt.mnt_ns.as_ref(),
            receipt.boot_id.as_deref(),
            &format!("the fill file {}", receipt.file.display()),
            || files::remove(&receipt.file, receipt.inode, KIND, IMMUTABLE_HINT).map(drop),
        )
    }

    fn manual_undo(receipt: &DiskFillReceipt) -> Vec<String> {
        let prefix = files::nsenter_prefix(receipt.mnt_ns.as_ref());
        let file = receipt.file.to_string_lossy();
        let cmd = |argv: &[&str]| {
            join(
                prefix
                    .iter()
                    .map(String::as_str)
                    .chain(argv.iter().copied()),
            )
        };
        vec![
            format!(
                "{}  # only if `lsattr` shows it immutable (i) or append-only (a)",
                cmd(&["chattr", "-i", "-a", "--", &file])
            ),
            cmd(&["rm", "-f", "--", &file]),
        ]
    }

    fn targets(receipt: &DiskFillReceipt) -> Vec<String> {
        vec![format!("path:{}", receipt.dir.display())]
    }

    fn touches(receipt: &DiskFillReceipt) -> Vec<String> {
        let ns = match &receipt.mnt_ns {
            Some(ns) if !ns.is_current() => format!(" (mount namespace {ns})"),
            _ => String::new(),
        };
        let line = in_mount_ns(
            receipt.mnt_ns.as_ref(),
            receipt.boot_id.as_deref(),
            "the fill file",
            || Ok(touch_line(receipt, &ns)),
        );
        vec![line.unwrap_or_else(|e| {
            format!(
                "fill {} on the filesystem of {} (device {}): {e}",
                Bytes(receipt.bytes).human(),
                receipt.dir.display(),
                files::dev_name(receipt.device)
            )
        })]
    }

    /// The fill file must be exactly `<dir>/.chaos-agent-fill-<fault id>`, `dir` an
    /// absolute plain path.
    fn check_receipt(fault_id: &str, receipt: &DiskFillReceipt) -> Result<()> {
        if !files::is_plain_absolute(&receipt.dir) {
            return Err(drifted(format!(
                "refusing disk.fill receipt of fault {fault_id:?}: its directory {} is not an \
                 absolute plain path",
                receipt.dir.display()
            )));
        }
        let want = fill_file(&receipt.dir, fault_id).map_err(|e| {
            drifted(format!(
                "refusing disk.fill receipt: fault id {fault_id:?} names no fill file ({e})"
            ))
        })?;
        if receipt.file != want {
            return Err(drifted(format!(
                "refusing disk.fill receipt of fault {fault_id:?}: it names {} but this fault \
                 only ever creates {}",
                receipt.file.display(),
                want.display()
            )));
        }
        Ok(())
    }

    /// Fill files named after a known fault id on every mounted filesystem, within the
    /// bounds described in the crate docs (depth 6 below each mount point, capped
    /// directory counts, no symlinks, no crossing of mounts, this mount namespace only).
    fn leftovers(known: &[String]) -> Result<Vec<Leftover<DiskFillReceipt>>> {
        let ids: HashSet<&str> = known.iter().map(String::as_str).collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let wanted = |n: &str| {
            n.strip_prefix(FILE_PREFIX)
                .is_some_and(|id| ids.contains(id))
        };
        let (found, _) = mounts::scan(&wanted);
        let ns = files::current_mnt_ns();
        let boot = fault_core::host::boot_id();
        Ok(found
            .into_iter()
            .map(|f| {
                let file = f.dir.join(&f.name);
                Leftover {
                    fault_id: f.name[FILE_PREFIX.len()..].to_string(),
                    found: format!(
                        "fill file {} ({}, {})",
                        file.display(),
                        Bytes(f.size).human(),
                        f.fs
                    ),
                    receipt: DiskFillReceipt {
                        dir: f.dir,
                        file,
                        bytes: f.size,
                        device: f.id.dev,
                        mnt_ns: ns.clone(),
                        boot_id: Some(boot.clone()),
                        inode: Some(f.id),
                    },
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn build(spec: serde_json::Value) -> Result<DiskFill> {
        let spec: DiskFillSpec =
            serde_json::from_value(spec).map_err(|e| Error::invalid(e.to_string()))?;
        DiskFill::new(spec)
    }

    #[test]
    fn spec_validation_table() {
        let ok = [
            json!({"path": "/var/tmp", "size": "1GiB"}),
            json!({"path": "/var/tmp", "size": 4096}),
            json!({"path": "/var/tmp", "percent": 90}),
            json!({"path": "/var/tmp", "percent": "12.5%", "reserve": "100MiB"}),
            json!({"path": "/", "percent": 100}),
        ];
        for spec in ok {
            build(spec.clone()).unwrap_or_else(|e| panic!("{spec}: {e}"));
        }
        let bad = [
            (
                json!({"path": "/var/tmp", "size": "1GiB", "color": 1}),
                "unknown field",
            ),
            (json!({"size": "1GiB"}), "missing field `path`"),
            (json!({"path": "var/tmp", "size": "1GiB"}), "is relative"),
            (json!({"path": "", "size": "1GiB"}), "path is empty"),
            (json!({"path": "/a\u{0}b", "size": "1GiB"}), "NUL"),
            (
                json!({"path": "/var/tmp", "size": "1GiB", "percent": 5}),
                "both size and percent",
            ),
            (json!({"path": "/var/tmp"}), "neither size nor percent"),
            (
                json!({"path": "/var/tmp", "reserve": "1GiB"}),
                "neither size nor percent",
            ),
            (json!({"path": "/var/tmp", "size": 0}), "size is 0"),
            (json!({"path": "/var/tmp", "size": "0MiB"}), "size is 0"),
            (json!({"path": "/var/tmp", "percent": 0}), "percent is 0"),
            (json!({"path": "/var/tmp", "percent": "0%"}), "percent is 0"),
            (
                json!({"path": "/var/tmp", "percent": "101%"}),
                "out of range",
            ),
            (json!({"path": "/var/tmp", "percent": -5}), "out of range"),
            (json!({"path": "/var/tmp", "size": "-1MiB"}), "negative"),
            (json!({"path": "/var/tmp", "size": "lots"}), "invalid size"),
        ];
        for (spec, want) in bad {
            let e = build(spec.clone()).expect_err(&spec.to_string());
            assert_eq!(e.kind(), ErrorKind::InvalidSpec, "{spec}");
            assert!(
                e.to_string().contains(want),
                "{spec}: {e} (wanted {want:?})"
            );
        }
    }

    #[test]
    fn registry_reports_invalid_specs() {
        let mut reg = fault_core::Registry::new();
        crate::register(&mut reg);
        let e = reg
            .build(KIND, &json!({"path": "/tmp", "percent": "101%"}))
            .err()
            .expect("101% must be refused");
        assert_eq!(e.kind(), ErrorKind::InvalidSpec);
        assert!(e.to_string().starts_with("percent: "), "{e}");
        let e = reg
            .build(KIND, &json!({"path": "/tmp", "size": 1, "bogus": true}))
            .err()
            .expect("unknown key must be refused");
        assert!(e.to_string().contains("bogus"), "{e}");
    }

    #[test]
    fn example_validates_through_the_registry() {
        let examples = chaos_engine::testing::build_examples(crate::register);
        assert_eq!(
            examples[KIND].describe(),
            "fill the filesystem of /var/tmp to 90% used"
        );
        let info = DiskFill::info();
        assert!(info.reversible);
        // Every documented parameter is a spec field, and every field is documented.
        let names: Vec<&str> = info.params.iter().map(|p| p.name).collect();
        assert_eq!(
            names,
            [
                "path",
                "size",
                "percent",
                "reserve",
                "allow_protected_filesystem"
            ]
        );
    }

    #[test]
    fn describe_names_amount_and_reserve() {
        let f = build(json!({"path": "/srv", "size": "2GiB", "reserve": "100MiB"})).unwrap();
        assert_eq!(
            f.describe(),
            "allocate 2.0 GiB on the filesystem of /srv, keeping at least 100.0 MiB available"
        );
    }

    #[test]
    fn spec_round_trips() {
        let spec = DiskFillSpec {
            path: "/srv".into(),
            size: None,
            percent: Some("40%".parse().unwrap()),
            reserve: Some(Bytes(1 << 20)),
            allow_protected_filesystem: false,
        };
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(
            v,
            json!({"path": "/srv", "percent": 40.0, "reserve": "1MiB"})
        );
        assert_eq!(serde_json::from_value::<DiskFillSpec>(v).unwrap(), spec);
        let allowed = DiskFillSpec {
            allow_protected_filesystem: true,
            ..spec
        };
        let v = serde_json::to_value(&allowed).unwrap();
        assert_eq!(v["allow_protected_filesystem"], json!(true));
        assert_eq!(serde_json::from_value::<DiskFillSpec>(v).unwrap(), allowed);
    }

    #[test]
    fn fill_file_name_comes_from_the_fault_id() {
        let p = fill_file(Path::new("/srv"), "f-123").unwrap();
        assert_eq!(p, Path::new("/srv/.chaos-agent-fill-f-123"));
        for bad in ["", "a/b", "../x", "a\0b"] {
            let e = fill_file(Path::new("/srv"), bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidSpec, "{bad:?}");
        }
        let long = "x".repeat(NAME_MAX - FILE_PREFIX.len());
        assert!(fill_file(Path::new("/srv"), &long).is_ok());
        assert!(fill_file(Path::new("/srv"), &format!("{long}x")).is_err());
    }

    fn receipt(dir: &str, id: &str) -> DiskFillReceipt {
        DiskFillReceipt {
            dir: dir.into(),
            file: Path::new(dir).join(format!("{FILE_PREFIX}{id}")),
            bytes: 4096,
            device: 2049,
            mnt_ns: None,
            boot_id: None,
            inode: None,
        }
    }

    #[test]
    fn manual_undo_and_targets() {
        let r = receipt("/srv/it's", "f1");
        assert_eq!(
            DiskFill::manual_undo(&r)[1],
            r"rm -f -- '/srv/it'\''s/.chaos-agent-fill-f1'"
        );
        assert!(DiskFill::manual_undo(&r)[0].starts_with(r"chattr -i -a -- '/srv/it'\''s/"));
        assert_eq!(DiskFill::targets(&r), ["path:/srv/it's"]);
    }

    #[test]
    fn manual_undo_quotes_spaces_and_semicolons() {
        let r = receipt("/srv/my data;rm -rf ~", "f1");
        assert_eq!(
            DiskFill::manual_undo(&r),
            [
                "chattr -i -a -- '/srv/my data;rm -rf ~/.chaos-agent-fill-f1'  # only if \
                 `lsattr` shows it immutable (i) or append-only (a)",
                "rm -f -- '/srv/my data;rm -rf ~/.chaos-agent-fill-f1'",
            ]
        );
        // Plain paths stay readable.
        assert_eq!(
            DiskFill::manual_undo(&receipt("/srv/data", "f1"))[1],
            "rm -f -- /srv/data/.chaos-agent-fill-f1"
        );
        // Made in a mount namespace nothing refers to any more: the person is told to
        // enter it, in one quoted word.
        let r = DiskFillReceipt {
            mnt_ns: Some(NsId {
                kind: fault_core::host::ns::NsKind::Mnt,
                dev: 4,
                ino: 1,
                cookie: None,
            }),
            ..receipt("/srv/my data", "f1")
        };
        assert_eq!(
            DiskFill::manual_undo(&r)[1],
            "nsenter '--mount=/proc/PID-IN-mnt:[1]/ns/mnt' rm -f -- \
             '/srv/my data/.chaos-agent-fill-f1'"
        );
    }

    #[test]
    fn check_receipt_wants_exactly_the_file_of_the_fault_id() {
        let r = receipt("/srv/data", "f1");
        DiskFill::check_receipt("f1", &r).unwrap();
        let edits = [
            ("f2", r.clone()),
            (
                "f1",
                DiskFillReceipt {
                    file: "/etc/passwd".into(),
                    ..r.clone()
                },
            ),
            (
                "f1",
                DiskFillReceipt {
                    file: "/srv/data/precious".into(),
                    ..r.clone()
                },
            ),
            (
                "f1",
                DiskFillReceipt {
                    file: "/srv/data/.chaos-agent-fill-f2".into(),
                    ..r.clone()
                },
            ),
            ("f1", receipt("/srv/data/../../etc", "f1")),
            ("f1", receipt("srv/data", "f1")),
            ("a/b", receipt("/srv/data", "a/b")),
            ("", r.clone()),
        ];
        for (id, edited) in edits {
            let e = DiskFill::check_receipt(id, &edited).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Drifted, "{id} {edited:?}: {e}");
        }
        // Revert alone (no fault id) still refuses what is no fill file in its directory.
        for file in [
            "/etc/passwd",
            "/srv/data/precious",
            "/srv/data/sub/.chaos-agent-fill-f1",
        ] {
            let edited = DiskFillReceipt {
                file: file.into(),
                ..r.clone()
            };
            let e = DiskFill::revert(&edited).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Drifted, "{file}: {e}");
        }
    }

    #[test]
    fn receipts_of_the_first_release_still_read_and_write_back_the_same() {
        let old = json!({
            "dir": "/nonexistent-chaos-dir",
            "file": "/nonexistent-chaos-dir/.chaos-agent-fill-x",
            "bytes": 4096,
            "device": 2049
        });
        let r: DiskFillReceipt = serde_json::from_value(old.clone()).unwrap();
        assert_eq!(r, receipt("/nonexistent-chaos-dir", "x"));
        assert_eq!(serde_json::to_value(&r).unwrap(), old);
        DiskFill::revert(&r).unwrap();
        assert_eq!(DiskFill::manual_undo(&r).len(), 2);
    }

    #[test]
    fn plan_records_the_mount_namespace_and_boot() {
        let dir = std::env::temp_dir();
        let f = build(json!({"path": dir, "size": 4096})).unwrap();
        let cx = Context::new("plan-ns", "run");
        let r = f.plan(&cx).unwrap();
        assert_eq!(r.mnt_ns, files::current_mnt_ns());
        assert!(r.mnt_ns.is_some());
        assert_eq!(r.boot_id.as_deref(), Some(cx.boot_id.as_str()));
        assert_eq!(r.inode, None, "identity comes with the file, at inject");
        DiskFill::check_receipt("plan-ns", &r).unwrap();
        let back: DiskFillReceipt =
            serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn receipt_functions_work_without_the_filesystem() {
        // A receipt whose directory is gone: clean, and revert succeeds.
        let r = receipt("/nonexistent-chaos-dir", "x");
        assert_eq!(
            DiskFill::verify(&r).unwrap().effect,
            fault_core::Effect::Clean
        );
        DiskFill::revert(&r).unwrap();
        DiskFill::revert(&r).unwrap();
    }

    #[test]
    fn plan_errors_need_no_privilege() {
        let cx = Context::new("plan-test", "run");
        let f = build(json!({"path": "/nonexistent-chaos-dir", "size": 1})).unwrap();
        assert_eq!(f.plan(&cx).unwrap_err().kind(), ErrorKind::NotFound);
        let f = build(json!({"path": "/proc/self/status", "size": 1})).unwrap();
        let e = f.plan(&cx).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidSpec);
        assert_eq!(e.to_string(), "/proc/self/status is not a directory");
    }
}
