//! `disk.fill`: take space on a filesystem with one `fallocate(2)`'d file ([`space`]),
//! and/or its free inodes with one directory of empty files ([`inodes`]).

use std::collections::HashSet;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use fault_core::host::ns::NsId;
use fault_core::host::shell::join;
use fault_core::{
    Bytes, Context, Error, ErrorKind, Fault, KindInfo, Leftover, Observation, Param, Percent,
    Result,
};
use serde::{Deserialize, Serialize};

mod guard;
mod inodes;
mod observe;
mod space;

pub use inodes::InodeFill;
use inodes::{inode_dir, inodes_to_take, InodeAmount, DIR_PREFIX};
use observe::{inode_touch_line, verify_here};
use space::touch_line;

use crate::files::{self, drifted, in_mount_ns, FileId};
use crate::mounts;
use crate::statfs::{bytes_to_fill, Amount, FsStats};

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
/// At most one of [`size`](DiskFillSpec::size) and [`percent`](DiskFillSpec::percent), at
/// most one of [`inodes`](DiskFillSpec::inodes) and
/// [`inodes_percent`](DiskFillSpec::inodes_percent), and at least one of the four is given.
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
    /// Take this many inodes (> 0): a directory named after the fault id and `inodes - 1`
    /// empty files in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inodes: Option<u64>,
    /// Take inodes until this percent of the filesystem's inodes is used (> 0), as
    /// `df -i` shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inodes_percent: Option<Percent>,
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
    /// The inode fill, when the spec asked for one. `bytes` is 0 when it asked for nothing
    /// else (then there is no fill file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inodes: Option<InodeFill>,
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
    amount: Option<Amount>,
    inodes: Option<InodeAmount>,
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
/// name (`.chaos-agent-fill-…`) directly in `dir`, an absolute plain path, and the inode
/// directory, if any, is `.chaos-agent-inodes-<the same id>` directly in `dir`. (The engine
/// also checks the id itself with [`DiskFill::check_receipt`].)
fn check_shape(r: &DiskFillReceipt) -> Result<()> {
    let name = r.file.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let ok = files::is_plain_absolute(&r.file)
        && r.file.parent() == Some(r.dir.as_path())
        && name.len() > FILE_PREFIX.len()
        && name.starts_with(FILE_PREFIX);
    if !ok {
        return Err(drifted(format!(
            "refusing to touch {}: disk.fill only removes {FILE_PREFIX}<fault id> directly in \
             its directory {}",
            r.file.display(),
            r.dir.display()
        )));
    }
    if let Some(i) = &r.inodes {
        let id = &name[FILE_PREFIX.len()..];
        if i.dir.parent() != Some(r.dir.as_path()) || i.fault_id() != Some(id) {
            return Err(drifted(format!(
                "refusing to touch {}: disk.fill only empties {DIR_PREFIX}{id} directly in its \
                 directory {}",
                i.dir.display(),
                r.dir.display()
            )));
        }
    }
    Ok(())
}

impl DiskFill {
    /// `inject` in the receipt's mount namespace: inodes first (a directory's entries need
    /// blocks too), then space.
    fn inject_here(&self, cx: &Context, receipt: &mut DiskFillReceipt) -> Result<()> {
        check_shape(receipt)?;
        if receipt.inodes.is_some() {
            self.inject_inodes(cx, receipt)?;
        }
        if receipt.bytes == 0 {
            return Ok(());
        }
        if let Err(e) = self.inject_space(cx, receipt) {
            if let Some(i) = &receipt.inodes {
                if let Err(u) = inodes::remove(i, &receipt.dir) {
                    return Err(e.context(format!(
                        "and removing the inode directory {} failed too ({u})",
                        i.dir.display()
                    )));
                }
            }
            return Err(e);
        }
        Ok(())
    }

    /// The inode fill: check the guard again on a fresh directory, make it and its files;
    /// on failure remove what was made.
    fn inject_inodes(&self, cx: &Context, receipt: &mut DiskFillReceipt) -> Result<()> {
        let Some(fill) = receipt.inodes.as_mut() else {
            return Ok(());
        };
        if fill.id.is_none() {
            // Not on a retry: our own partial directory would count against the checks.
            let s = FsStats::of_path(&receipt.dir)
                .map_err(|e| Error::io(format!("statvfs {}", receipt.dir.display()), e))?;
            inodes_to_take(
                &s,
                InodeAmount::Count(fill.count),
                &receipt.dir.display().to_string(),
            )
            .map_err(|m| Error::new(ErrorKind::Unsupported, m))?;
            self.guard_inodes(cx, &receipt.dir, receipt.device, &s, fill.count)?;
        }
        let result = inodes::create(fill, &receipt.dir);
        if let Err(e) = result {
            if let Err(u) = inodes::remove(fill, &receipt.dir) {
                return Err(e.context(format!(
                    "and removing the partial {} failed too ({u})",
                    fill.dir.display()
                )));
            }
            return Err(e);
        }
        Ok(())
    }

    /// The space fill: allocate the fill file; on failure unlink it.
    fn inject_space(&self, cx: &Context, receipt: &mut DiskFillReceipt) -> Result<()> {
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
        let amount = match (spec.size, spec.percent) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid(
                    "both size and percent are given: give at most one",
                ))
            }
            (None, None) => None,
            (Some(Bytes(0)), None) => {
                return Err(Error::invalid("size is 0: nothing would be filled"))
            }
            (Some(Bytes(n)), None) => Some(Amount::Size(n)),
            (None, Some(p)) if p.get() <= 0.0 => {
                return Err(Error::invalid("percent is 0: nothing would be filled"))
            }
            (None, Some(p)) => Some(Amount::Percent(p.get())),
        };
        let inodes = match (spec.inodes, spec.inodes_percent) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid(
                    "both inodes and inodes_percent are given: give at most one",
                ))
            }
            (None, None) => None,
            (Some(0), None) => return Err(Error::invalid("inodes is 0: nothing would be filled")),
            (Some(n), None) if n > inodes::MAX_INODES => {
                return Err(Error::invalid(format!(
                    "inodes: {n} is more than the {} one fault creates (they all live in one \
                     directory)",
                    inodes::MAX_INODES
                )))
            }
            (Some(n), None) => Some(InodeAmount::Count(n)),
            (None, Some(p)) if p.get() <= 0.0 => {
                return Err(Error::invalid(
                    "inodes_percent is 0: nothing would be filled",
                ))
            }
            (None, Some(p)) => Some(InodeAmount::Percent(p.get())),
        };
        if amount.is_none() && inodes.is_none() {
            return Err(Error::invalid(
                "neither size nor percent (nor inodes or inodes_percent) is given: give one \
                 (e.g. size = \"1GiB\", percent = 90 or inodes_percent = 95)",
            ));
        }
        Ok(DiskFill {
            spec,
            amount,
            inodes,
        })
    }

    fn info() -> KindInfo {
        KindInfo {
            summary: "Fills the filesystem holding `path` by allocating one file, \
                      `<path>/.chaos-agent-fill-<fault id>`, with fallocate(2): `size` bytes, \
                      or enough to make the filesystem `percent` used as df shows it; and/or \
                      exhausts its inodes with one directory \
                      `<path>/.chaos-agent-inodes-<fault id>` of empty files (mknodat(2)): \
                      `inodes` of them, or enough to make `inodes_percent` of the inodes used \
                      as df -i shows it (refused on filesystems without an inode limit, such \
                      as btrfs). Plan \
                      refuses (never fills less) when that does not fit, would leave less than \
                      `reserve`, or the filesystem is already that full; on a filesystem \
                      holding the root or the agent's state directory it also refuses to go \
                      below a safe reserve (5% of the filesystem, at least 1 GiB, at most a \
                      quarter of it; for inodes 5% of them, at least 10000, at most a quarter) \
                      unless `allow_protected_filesystem` is set. Revert unlinks the file and \
                      the directory's files (unlinkat(2), only names of the fault id) and the \
                      directory (only those inject created, in the mount namespace they were \
                      created in), which returns the space and the inodes at once (unless \
                      another process holds the file open).",
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
                    doc: "Bytes to allocate, e.g. \"2GiB\"; give this or percent (or neither, \
                          with inodes or inodes_percent).",
                },
                Param {
                    name: "percent",
                    ty: "percent",
                    default: None,
                    doc: "Fill until the filesystem is this % used (as df shows it); give this \
                          or size.",
                },
                Param {
                    name: "inodes",
                    ty: "integer",
                    default: None,
                    doc: "Inodes to take: a directory named after the fault id and empty files \
                          in it (at most 10 million; the fill file of size/percent, if any, \
                          counts as one); give this or inodes_percent, with or instead of \
                          size/percent.",
                },
                Param {
                    name: "inodes_percent",
                    ty: "percent",
                    default: None,
                    doc: "Take inodes until this % of the filesystem's inodes is used (as df -i \
                          shows it); give this or inodes.",
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
                          it; for inodes 5%, at least 10000, at most a quarter); without it \
                          plan refuses such a fill.",
                },
            ],
            example: "kind = \"disk.fill\"\nduration = \"30s\"\npath = \"/var/tmp\"\npercent = 90",
        }
    }

    fn describe(&self) -> String {
        let path = self.spec.path.display();
        let mut parts = Vec::new();
        match self.amount {
            Some(Amount::Size(n)) => parts.push(format!(
                "allocate {} on the filesystem of {path}",
                Bytes(n).human()
            )),
            Some(Amount::Percent(p)) => {
                parts.push(format!("fill the filesystem of {path} to {p}% used"))
            }
            None => {}
        }
        match self.inodes {
            Some(InodeAmount::Count(n)) => {
                parts.push(format!("take {n} inodes of the filesystem of {path}"))
            }
            Some(InodeAmount::Percent(p)) => parts.push(format!(
                "fill the inodes of the filesystem of {path} to {p}% used"
            )),
            None => {}
        }
        let mut s = parts.join(" and ");
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
        let inodes = match self.inodes {
            None => None,
            Some(amount) => {
                let mut count = inodes_to_take(&stats, amount, &shown)
                    .map_err(|m| Error::new(ErrorKind::Unsupported, m))?;
                if self.amount.is_some() {
                    // The fill file takes one of the inodes asked for.
                    count = count.saturating_sub(1).max(1);
                }
                self.guard_inodes(cx, &dir, device, &stats, count)?;
                Some(InodeFill {
                    dir: inode_dir(&dir, &cx.fault_id)?,
                    count,
                    id: None,
                })
            }
        };
        let bytes = match self.amount {
            None => 0,
            Some(amount) => {
                let bytes = bytes_to_fill(&stats, amount, self.reserve(), &shown)
                    .map_err(|m| Error::new(ErrorKind::Unsupported, m))?;
                self.guard(cx, &dir, device, &stats, bytes)?;
                bytes
            }
        };
        Ok(DiskFillReceipt {
            dir,
            file,
            bytes,
            device,
            mnt_ns: files::current_mnt_ns(),
            boot_id: Some(cx.boot_id.clone()),
            inode: None,
            inodes,
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

    /// Removes the inode directory's files and the directory, then the fill file; an error
    /// of the first does not keep the second from being removed.
    fn revert(receipt: &DiskFillReceipt) -> Result<()> {
        check_shape(receipt)?;
        in_mount_ns(
            receipt.mnt_ns.as_ref(),
            receipt.boot_id.as_deref(),
            &format!("the fill file {}", receipt.file.display()),
            || {
                let dir = receipt
                    .inodes
                    .as_ref()
                    .map(|i| inodes::remove(i, &receipt.dir))
                    .transpose();
                let file = files::remove(&receipt.file, receipt.inode, KIND, IMMUTABLE_HINT);
                dir?;
                file.map(drop)
            },
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
        let mut out = vec![
            format!(
                "{}  # only if `lsattr` shows it immutable (i) or append-only (a)",
                cmd(&["chattr", "-i", "-a", "--", &file])
            ),
            cmd(&["rm", "-f", "--", &file]),
        ];
        if let Some(i) = &receipt.inodes {
            let dir = i.dir.to_string_lossy();
            out.push(format!(
                "{}  # the inode fill: a directory of empty files named after the fault id",
                cmd(&["rm", "-rf", "--", &dir])
            ));
        }
        out
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
        let mut out = Vec::new();
        if receipt.bytes > 0 || receipt.inodes.is_none() {
            out.push(line.unwrap_or_else(|e| {
                format!(
                    "fill {} on the filesystem of {} (device {}): {e}",
                    Bytes(receipt.bytes).human(),
                    receipt.dir.display(),
                    files::dev_name(receipt.device)
                )
            }));
        }
        if let Some(i) = &receipt.inodes {
            let line = in_mount_ns(
                receipt.mnt_ns.as_ref(),
                receipt.boot_id.as_deref(),
                "the inode directory",
                || Ok(inode_touch_line(receipt, i, &ns)),
            );
            out.push(line.unwrap_or_else(|e| {
                format!(
                    "take {} inodes of the filesystem of {} (device {}): {e}",
                    i.count,
                    receipt.dir.display(),
                    files::dev_name(receipt.device)
                )
            }));
        }
        out
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
        if let Some(i) = &receipt.inodes {
            let want = inode_dir(&receipt.dir, fault_id).map_err(|e| {
                drifted(format!(
                    "refusing disk.fill receipt: fault id {fault_id:?} names no inode directory \
                     ({e})"
                ))
            })?;
            if i.dir != want {
                return Err(drifted(format!(
                    "refusing disk.fill receipt of fault {fault_id:?}: it names {} but this \
                     fault only ever creates {}",
                    i.dir.display(),
                    want.display()
                )));
            }
        }
        Ok(())
    }

    /// Fill files and inode directories named after a known fault id on every mounted
    /// filesystem, within the bounds described in the crate docs (depth 6 below each mount
    /// point, capped directory counts, no symlinks, no crossing of mounts, this mount
    /// namespace only). A fill file and an inode directory of one fault in one directory
    /// make one receipt.
    fn leftovers(known: &[String]) -> Result<Vec<Leftover<DiskFillReceipt>>> {
        let ids: HashSet<&str> = known.iter().map(String::as_str).collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let id_of = |n: &str, dir: bool| -> Option<String> {
            let prefix = if dir { DIR_PREFIX } else { FILE_PREFIX };
            n.strip_prefix(prefix)
                .filter(|id| ids.contains(id))
                .map(str::to_string)
        };
        let wanted = |n: &str| id_of(n, false).or_else(|| id_of(n, true)).is_some();
        let (found, _) = mounts::scan(&wanted);
        let ns = files::current_mnt_ns();
        let boot = fault_core::host::boot_id();
        let mut out: Vec<Leftover<DiskFillReceipt>> = Vec::new();
        for f in found {
            let Some(id) = id_of(&f.name, f.is_dir) else {
                continue;
            };
            let path = f.dir.join(&f.name);
            let at = out
                .iter()
                .position(|l| l.fault_id == id && l.receipt.dir == f.dir);
            let at = match at {
                Some(at) => at,
                None => {
                    out.push(Leftover {
                        fault_id: id.clone(),
                        found: String::new(),
                        receipt: DiskFillReceipt {
                            file: f.dir.join(format!("{FILE_PREFIX}{id}")),
                            dir: f.dir.clone(),
                            bytes: 0,
                            device: f.id.dev,
                            mnt_ns: ns.clone(),
                            boot_id: Some(boot.clone()),
                            inode: None,
                            inodes: None,
                        },
                    });
                    out.len() - 1
                }
            };
            let l = &mut out[at];
            if !l.found.is_empty() {
                l.found.push_str(", ");
            }
            if f.is_dir {
                l.found
                    .push_str(&format!("inode directory {} ({})", path.display(), f.fs));
                l.receipt.inodes = Some(InodeFill {
                    dir: path,
                    count: 0,
                    id: Some(f.id),
                });
            } else {
                l.found.push_str(&format!(
                    "fill file {} ({}, {})",
                    path.display(),
                    Bytes(f.size).human(),
                    f.fs
                ));
                l.receipt.bytes = f.size;
                l.receipt.inode = Some(f.id);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
