//! `disk.fill`: allocate space on a filesystem with one `fallocate(2)`'d file.

use std::collections::HashSet;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use fault_core::host::ns::NsId;
use fault_core::host::shell::join;
use fault_core::{
    Bytes, Context, Error, ErrorKind, Fault, KindInfo, Leftover, Observation, Param, Percent,
    Result,
};
use serde::{Deserialize, Serialize};

mod space;

use space::{touch_line, verify_file};

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
            || verify_file(receipt),
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
mod tests;
