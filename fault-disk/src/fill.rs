//! `disk.fill`: allocate space on a filesystem with one `fallocate(2)`'d file.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind as IoKind;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use fault_core::host::fs::sync_dir;
use fault_core::{
    Bytes, Context, Error, ErrorKind, Fault, KindInfo, Observation, Param, Percent, Result,
};
use serde::{Deserialize, Serialize};

use crate::statfs::{bytes_to_fill, Amount, FsStats};

/// The kind string of [`DiskFill`].
pub const KIND: &str = "disk.fill";

/// Prefix of the fill file's name; the fault id follows it.
const FILE_PREFIX: &str = ".chaos-agent-fill-";

/// Longest file name most Linux filesystems accept (`NAME_MAX`).
const NAME_MAX: usize = 255;

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
}

/// What [`DiskFill::plan`] resolved: everything `verify` and `revert` need.
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
/// # Revert
///
/// Unlinks the file and `fsync`s the directory; the space comes back at once. Only a
/// regular file at exactly that path is removed; anything else found there (a directory, a
/// symlink) is refused as drifted. The space stays allocated after the unlink while some
/// other process holds the file open; the fault itself closes its descriptor before
/// `inject` returns, so only a stranger (a backup tool, say) can do that.
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
    Error::new(
        ErrorKind::Drifted,
        format!(
            "refusing to {doing} {}: it is {}, not the regular file disk.fill creates",
            file.display(),
            type_name(m)
        ),
    )
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

/// Quote for a POSIX shell.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl DiskFill {
    /// Open the fill file: create it, or reopen one an earlier `inject` of this receipt
    /// left (it carries our fault id). Returns the file and whether it was created now.
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
        let f = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(file)
            .map_err(|e| Error::io(format!("reopening {}", file.display()), e))?;
        let now = f
            .metadata()
            .map_err(|e| Error::io(format!("inspecting {}", file.display()), e))?;
        if (now.dev(), now.ino()) != (meta.dev(), meta.ino()) {
            return Err(Error::new(
                ErrorKind::Drifted,
                format!("{} was replaced while being reopened", file.display()),
            ));
        }
        Ok((f, false))
    }

    /// Allocate and make durable; the caller unlinks on error.
    fn allocate(&self, receipt: &DiskFillReceipt, f: &File, fresh: bool) -> Result<()> {
        let dir = &self.spec.path;
        let bytes = receipt.bytes;
        let meta = f
            .metadata()
            .map_err(|e| Error::io(format!("inspecting {}", receipt.file.display()), e))?;
        if !fresh && meta.len() >= bytes && allocated(&meta) >= bytes {
            return Ok(()); // an earlier inject of this receipt finished
        }
        // The reserve was checked at plan; check it again just before taking the space, in
        // case the filesystem filled up since. Not on a retry: our own partial file would
        // count against it.
        if fresh && self.spec.reserve.is_some() {
            let s = FsStats::of_file(f)
                .map_err(|e| Error::io(format!("statvfs {}", dir.display()), e))?;
            bytes_to_fill(
                &s,
                Amount::Size(bytes),
                self.reserve(),
                &dir.display().to_string(),
            )
            .map_err(|m| Error::new(ErrorKind::Unsupported, m))?;
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

impl Fault for DiskFill {
    const KIND: &'static str = KIND;
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
                      `reserve`, or the filesystem is already that full. Revert unlinks the \
                      file, which returns the space at once (unless another process holds it \
                      open).",
            privileges: "write access to the directory (no root needed); root cannot use ext4 \
                         reserved blocks without CAP_SYS_RESOURCE",
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
        s
    }

    fn plan(&self, cx: &Context) -> Result<DiskFillReceipt> {
        let path = &self.spec.path;
        let shown = path.display().to_string();
        let (dir, stats, device) = crate::statfs::writable_dir(path)?;
        let file = fill_file(&dir, &cx.fault_id)?;
        let bytes = bytes_to_fill(&stats, self.amount, self.reserve(), &shown)
            .map_err(|m| Error::new(ErrorKind::Unsupported, m))?;
        Ok(DiskFillReceipt {
            dir,
            file,
            bytes,
            device,
        })
    }

    fn inject(&self, _cx: &Context, receipt: &mut DiskFillReceipt) -> Result<()> {
        let (f, fresh) = DiskFill::open_fill(receipt)?;
        let result = self.allocate(receipt, &f, fresh);
        drop(f); // close before unlinking: an open fd would keep the space allocated
        if let Err(e) = result {
            // Never leave a partial allocation (ext4 keeps one on ENOSPC).
            if let Err(u) = std::fs::remove_file(&receipt.file) {
                if u.kind() != IoKind::NotFound {
                    return Err(e.context(format!(
                        "and removing the partial {} failed too ({u})",
                        receipt.file.display()
                    )));
                }
            }
            let _ = sync_dir(&receipt.dir);
            return Err(e);
        }
        Ok(())
    }

    fn verify(receipt: &DiskFillReceipt) -> Result<Observation> {
        let file = &receipt.file;
        let dir = parent(file);
        let meta =
            lstat(file).map_err(|e| Error::io(format!("inspecting {}", file.display()), e))?;
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
        let want = Bytes(receipt.bytes).human();
        let have = meta.len().min(allocated(&meta));
        if have >= receipt.bytes {
            Ok(Observation::in_effect(format!(
                "{} holds {want} (device {}); {}",
                file.display(),
                receipt.device,
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

    fn revert(receipt: &DiskFillReceipt) -> Result<()> {
        let file = &receipt.file;
        let meta =
            lstat(file).map_err(|e| Error::io(format!("inspecting {}", file.display()), e))?;
        let Some(meta) = meta else {
            return Ok(());
        };
        if !meta.file_type().is_file() {
            return Err(not_ours(file, &meta, "remove"));
        }
        match std::fs::remove_file(file) {
            Ok(()) => {}
            Err(e) if e.kind() == IoKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                // Root gets EPERM from unlink only for immutable or append-only files.
                return Err(Error::io(
                    format!(
                        "removing {} (it is immutable or append-only: `lsattr` shows it, \
                         `chattr -i -a` clears it)",
                        file.display()
                    ),
                    e,
                ));
            }
            Err(e) => return Err(Error::io(format!("removing {}", file.display()), e)),
        }
        let dir = parent(file);
        sync_dir(dir).map_err(|e| Error::io(format!("fsync {}", dir.display()), e))
    }

    fn manual_undo(receipt: &DiskFillReceipt) -> Vec<String> {
        let file = sh_quote(&receipt.file.to_string_lossy());
        vec![
            format!("chattr -i -a -- {file}  # only if `lsattr` shows it immutable (i) or append-only (a)"),
            format!("rm -f -- {file}"),
        ]
    }

    fn targets(receipt: &DiskFillReceipt) -> Vec<String> {
        vec![format!("path:{}", receipt.dir.display())]
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
        assert_eq!(names, ["path", "size", "percent", "reserve"]);
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
        };
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(
            v,
            json!({"path": "/srv", "percent": 40.0, "reserve": "1MiB"})
        );
        assert_eq!(serde_json::from_value::<DiskFillSpec>(v).unwrap(), spec);
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

    #[test]
    fn manual_undo_and_targets() {
        let r = DiskFillReceipt {
            dir: "/srv/it's".into(),
            file: "/srv/it's/.chaos-agent-fill-f1".into(),
            bytes: 1,
            device: 2049,
        };
        assert_eq!(
            DiskFill::manual_undo(&r)[1],
            r"rm -f -- '/srv/it'\''s/.chaos-agent-fill-f1'"
        );
        assert!(DiskFill::manual_undo(&r)[0].starts_with(r"chattr -i -a -- '/srv/it'\''s/"));
        assert_eq!(DiskFill::targets(&r), ["path:/srv/it's"]);
    }

    #[test]
    fn receipt_functions_work_without_the_filesystem() {
        // A receipt whose directory is gone: clean, and revert succeeds.
        let r = DiskFillReceipt {
            dir: "/nonexistent-chaos-dir".into(),
            file: "/nonexistent-chaos-dir/.chaos-agent-fill-x".into(),
            bytes: 4096,
            device: 0,
        };
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
