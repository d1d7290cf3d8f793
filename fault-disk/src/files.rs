//! What the disk faults share about the files they create: their identity (device and
//! inode, recorded once created), removing one only when it is still that file, and acting
//! in the mount namespace where it was made.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Component, Path};

use fault_core::host::ns::{NsId, NsKind};
use fault_core::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};

/// A file's identity: `st_dev`, `st_ino` and, where the filesystem has one, the inode's
/// generation number, recorded right after the fault created it. A file at the same path
/// with another identity is someone else's (or ours replaced), and is never removed.
///
/// The generation (`FS_IOC_GETVERSION`: random per new inode on ext4, xfs and f2fs) is what
/// tells a new file apart when the filesystem reuses the inode number of one just deleted,
/// as ext4 does at once. tmpfs has none, but does not reuse inode numbers either.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct FileId {
    /// `st_dev`: the filesystem.
    pub dev: u64,
    /// `st_ino`: the file on it.
    pub ino: u64,
    /// The inode's generation number, when the filesystem reports one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u32>,
}

impl std::fmt::Display for FileId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "device {} inode {}", dev_name(self.dev), self.ino)?;
        if let Some(g) = self.generation {
            write!(f, " generation {g}")?;
        }
        Ok(())
    }
}

impl FileId {
    /// The identity of an open file.
    pub(crate) fn of_fd(fd: libc::c_int) -> Option<FileId> {
        // SAFETY: zeroed stat is a valid out value.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid out pointer; a bad fd is an error return.
        if unsafe { libc::fstat(fd, &mut st) } != 0 {
            return None;
        }
        Some(FileId {
            dev: st.st_dev,
            ino: st.st_ino,
            generation: generation(fd),
        })
    }

    /// Whether `have` (what is there now) is the file this identity recorded: same device
    /// and inode, and same generation when one was recorded.
    pub(crate) fn is(&self, have: &FileId) -> bool {
        self.dev == have.dev
            && self.ino == have.ino
            && (self.generation.is_none() || self.generation == have.generation)
    }
}

/// The inode generation of an open file (`FS_IOC_GETVERSION`), where the filesystem has one.
fn generation(fd: libc::c_int) -> Option<u32> {
    // The kernel writes an int, whatever the ioctl number says.
    let mut v: libc::c_long = 0;
    // SAFETY: valid fd; `v` is larger than what the kernel writes.
    let r = unsafe { libc::ioctl(fd, libc::FS_IOC_GETVERSION, &mut v as *mut libc::c_long) };
    (r == 0).then_some(v as u32)
}

/// The identity of the regular file `name` in directory `dirfd`, whose `fstatat` is `st`:
/// opened read-only (never following a link, never blocking) only to read its generation,
/// after checking it is a regular file, and checked again to be the same inode.
pub(crate) fn id_at(dirfd: libc::c_int, name: &std::ffi::CStr, st: &libc::stat) -> FileId {
    let mut id = FileId {
        dev: st.st_dev,
        ino: st.st_ino,
        generation: None,
    };
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return id;
    }
    // SAFETY: valid fd and NUL-terminated name.
    let fd = unsafe {
        libc::openat(
            dirfd,
            name.as_ptr(),
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return id;
    }
    // SAFETY: fd was just opened and is owned from here on.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if let Some(now) = FileId::of_fd(fd.as_raw_fd()) {
        if (now.dev, now.ino) == (id.dev, id.ino) {
            id.generation = now.generation;
        }
    }
    id
}

/// `major:minor` of a device number, as `/proc/self/mountinfo` and `lsblk` show it.
pub(crate) fn dev_name(dev: u64) -> String {
    format!("{}:{}", libc::major(dev), libc::minor(dev))
}

/// Whether a path is absolute and plain: no `.` or `..` component, so it names exactly one
/// place (receipts hold canonical directories).
pub(crate) fn is_plain_absolute(path: &Path) -> bool {
    path.is_absolute()
        && !path.as_os_str().as_encoded_bytes().contains(&0)
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        // `components()` hides a "." in the middle of a path; a receipt never has one.
        && !path
            .as_os_str()
            .as_encoded_bytes()
            .split(|&b| b == b'/')
            .any(|c| c == b"." || c == b"..")
}

/// A [`ErrorKind::Drifted`] error.
pub(crate) fn drifted(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Drifted, msg)
}

fn cstring(path: &Path) -> std::io::Result<CString> {
    CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
}

/// `lstat(2)` without following a final symlink; `None` when nothing is there.
pub(crate) fn lstat(path: &Path) -> std::io::Result<Option<libc::stat>> {
    let c = cstring(path)?;
    // SAFETY: zeroed stat is a valid out value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated, `st` a valid out pointer.
    if unsafe { libc::lstat(c.as_ptr(), &mut st) } == 0 {
        return Ok(Some(st));
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENOTDIR) => Ok(None),
        _ => Err(e),
    }
}

/// The identity of what is at `path` now (not following a symlink), if anything.
pub(crate) fn id_of(path: &Path) -> Option<FileId> {
    let st = lstat(path).ok().flatten()?;
    let (dir, name) = (path.parent()?, path.file_name()?);
    let name = CString::new(name.as_encoded_bytes()).ok()?;
    let dir = cstring(dir).ok()?;
    // SAFETY: `dir` is NUL-terminated.
    let fd = unsafe {
        libc::open(
            dir.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd was just opened and is owned from here on.
    let dirfd = unsafe { OwnedFd::from_raw_fd(fd) };
    Some(id_at(dirfd.as_raw_fd(), &name, &st))
}

/// A name for a file type, for messages.
pub(crate) fn type_name(mode: libc::mode_t) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => "a directory",
        libc::S_IFLNK => "a symlink",
        libc::S_IFREG => "a regular file",
        libc::S_IFIFO => "a fifo",
        libc::S_IFSOCK => "a socket",
        _ => "a device node",
    }
}

/// What [`remove`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Removed {
    /// It was there and is gone now.
    Removed,
    /// Nothing was there (or not even the directory).
    Absent,
}

/// Remove the regular file `file` if it is the one `expected` names (when recorded), then
/// `fsync` its directory.
///
/// The directory is opened once and the file is looked at and unlinked relative to it
/// (`fstatat`, `unlinkat`), so both calls act on the same directory even if a path
/// component is swapped meanwhile. Refuses ([`ErrorKind::Drifted`]) anything that is not a
/// regular file, or a file whose device and inode differ from `expected`. `made_by` names
/// the kind in messages; `on_eperm` is added to an `EPERM` error (immutable files).
pub(crate) fn remove(
    file: &Path,
    expected: Option<FileId>,
    made_by: &str,
    on_eperm: &str,
) -> Result<Removed> {
    let shown = file.display();
    let (Some(dir), Some(name)) = (file.parent(), file.file_name()) else {
        return Err(drifted(format!(
            "refusing to remove {shown}: not a file path"
        )));
    };
    let cdir = cstring(dir).map_err(|e| Error::io(format!("opening {}", dir.display()), e))?;
    let cname = CString::new(name.as_encoded_bytes())
        .map_err(|_| drifted(format!("refusing to remove {shown}: NUL in its name")))?;
    // SAFETY: `cdir` is NUL-terminated.
    let fd = unsafe {
        libc::open(
            cdir.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            // The directory is gone, or replaced by a file: our file cannot be in it.
            Some(libc::ENOENT) | Some(libc::ENOTDIR) => Ok(Removed::Absent),
            _ => Err(Error::io(format!("opening {}", dir.display()), e)),
        };
    }
    // SAFETY: fd was just opened and is owned from here on.
    let dirfd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: zeroed stat is a valid out value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd, NUL-terminated name, valid out pointer.
    let r = unsafe {
        libc::fstatat(
            dirfd.as_raw_fd(),
            cname.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOENT) => Ok(Removed::Absent),
            _ => Err(Error::io(format!("inspecting {shown}"), e)),
        };
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(drifted(format!(
            "refusing to remove {shown}: it is {}, not the regular file {made_by} creates",
            type_name(st.st_mode)
        )));
    }
    if let Some(want) = expected {
        let have = id_at(dirfd.as_raw_fd(), &cname, &st);
        if !want.is(&have) {
            return Err(drifted(format!(
                "refusing to remove {shown}: it is not the file {made_by} created ({have}, \
                 the receipt recorded {want}); someone replaced it"
            )));
        }
    }
    // SAFETY: valid fd and NUL-terminated name.
    if unsafe { libc::unlinkat(dirfd.as_raw_fd(), cname.as_ptr(), 0) } != 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOENT) => Ok(Removed::Absent),
            Some(libc::EPERM) if !on_eperm.is_empty() => {
                Err(Error::io(format!("removing {shown} ({on_eperm})"), e))
            }
            _ => Err(Error::io(format!("removing {shown}"), e)),
        };
    }
    // SAFETY: valid fd.
    if unsafe { libc::fsync(dirfd.as_raw_fd()) } != 0 {
        return Err(Error::last_os(format!("fsync {}", dir.display())));
    }
    Ok(Removed::Removed)
}

/// The mount namespace the calling thread is in, for a receipt (`None` when `/proc` cannot
/// tell).
pub(crate) fn current_mnt_ns() -> Option<NsId> {
    NsId::current(NsKind::Mnt).ok()
}

/// Run `f` in the mount namespace a receipt was made in: [`in_recorded`](fault_core::host::ns::in_recorded).
pub(crate) use fault_core::host::ns::in_recorded as in_mount_ns;

/// The argv prefix a person runs a command with inside mount namespace `ns`
/// ([`NsId::nsenter_prefix`]), or nothing when none is recorded.
pub(crate) fn nsenter_prefix(ns: Option<&NsId>) -> Vec<String> {
    ns.map(NsId::nsenter_prefix).unwrap_or_default()
}

/// A percentage for people: one decimal without a trailing ".0" ("60%", "62.5%").
pub(crate) fn percent(p: f64) -> String {
    let s = format!("{p:.1}");
    format!("{}%", s.strip_suffix(".0").unwrap_or(&s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_absolute_paths() {
        for ok in ["/", "/srv", "/srv/my data/x;y", "/a/.b/..c"] {
            assert!(is_plain_absolute(Path::new(ok)), "{ok}");
        }
        for bad in ["srv", "", "/srv/../etc", "/srv/./x", "/srv/.", "/srv/.."] {
            assert!(!is_plain_absolute(Path::new(bad)), "{bad}");
        }
    }

    #[test]
    fn percentages_and_devices() {
        assert_eq!(percent(60.003), "60%");
        assert_eq!(percent(62.5), "62.5%");
        assert_eq!(dev_name(libc::makedev(254, 0)), "254:0");
        assert_eq!(
            FileId {
                dev: libc::makedev(0, 52),
                ino: 7,
                generation: None
            }
            .to_string(),
            "device 0:52 inode 7"
        );
        let recorded = FileId {
            dev: 1,
            ino: 2,
            generation: Some(3),
        };
        assert!(recorded.is(&recorded));
        assert!(!recorded.is(&FileId {
            generation: Some(4),
            ..recorded
        }));
        assert!(!recorded.is(&FileId {
            generation: None,
            ..recorded
        }));
        let old = FileId {
            generation: None,
            ..recorded
        };
        assert!(
            old.is(&recorded),
            "receipts without a generation compare dev and inode"
        );
    }

    #[test]
    fn a_namespace_of_this_boot_that_nobody_holds_is_refused() {
        let gone = NsId {
            kind: NsKind::Mnt,
            dev: 4,
            ino: 1,
            cookie: None,
        };
        let boot = fault_core::host::boot_id();
        let e = in_mount_ns(Some(&gone), Some(&boot), "the fill file", || Ok(())).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.to_string().contains("mount namespace mnt:[1]"), "{e}");
        // A receipt of an earlier boot acts here; none recorded acts here.
        in_mount_ns(Some(&gone), Some("another-boot"), "x", || Ok(())).unwrap();
        in_mount_ns(None, None, "x", || Ok(())).unwrap();
        assert_eq!(
            nsenter_prefix(Some(&gone)),
            ["nsenter", "--mount=/proc/PID-IN-mnt:[1]/ns/mnt"]
        );
        let here = current_mnt_ns().unwrap();
        assert!(nsenter_prefix(Some(&here)).is_empty());
        assert!(nsenter_prefix(None).is_empty());
    }
}
