//! The inode half of `disk.fill`: one directory `<dir>/.chaos-agent-inodes-<fault id>`
//! holding empty regular files `<fault id>.<n>`, so that the directory and its files take
//! exactly the requested number of inodes.
//!
//! Files are made with `mknodat(2)` (one system call each, no descriptor to close) and
//! removed with `unlinkat(2)` relative to the directory's descriptor, never through a
//! shell. Only names of that exact shape are removed; anything else found in the directory
//! is left there and reported, and the directory then stays too.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use fault_core::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};

use crate::files::{drifted, type_name, FileId};
use crate::statfs::FsStats;

/// Prefix of the directory's name; the fault id follows it.
pub(super) const DIR_PREFIX: &str = ".chaos-agent-inodes-";

/// Most inodes one fault takes: they all live in one directory, and ext4 without
/// `large_dir` holds about ten million entries in one.
pub(super) const MAX_INODES: u64 = 10_000_000;

/// Longest file name most Linux filesystems accept (`NAME_MAX`).
const NAME_MAX: usize = 255;

/// Added to the error when unlinking fails with `EPERM`.
const IMMUTABLE_HINT: &str =
    "it is immutable or append-only: `lsattr` shows it, `chattr -i -a` clears it";

/// What the spec asks for, in inodes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum InodeAmount {
    /// This many inodes (the directory included).
    Count(u64),
    /// Until this percent of the filesystem's inodes is used, as `df -i` shows it.
    Percent(f64),
}

/// The inode fill of a `disk.fill` receipt.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InodeFill {
    /// The directory, `<dir>/.chaos-agent-inodes-<fault id>`; the fault id in its name is
    /// what makes it ours.
    pub dir: PathBuf,
    /// Inodes taken: the directory and `count - 1` empty files `<fault id>.<n>` in it.
    /// 0 in a receipt made by recovery, which does not know it.
    pub count: u64,
    /// The directory's device, inode and generation, recorded by inject once it made it.
    /// Revert never empties a directory at `dir` with another identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<FileId>,
}

impl InodeFill {
    /// The fault id its directory's name carries.
    pub(super) fn fault_id(&self) -> Option<&str> {
        self.dir
            .file_name()?
            .to_str()?
            .strip_prefix(DIR_PREFIX)
            .filter(|id| !id.is_empty())
    }
}

/// The inode directory's path for a fault id, refusing ids that would not make plain names
/// (of the directory, and of the files `<id>.<n>` in it).
pub(super) fn inode_dir(dir: &Path, fault_id: &str) -> Result<PathBuf> {
    // `<id>.` and up to 20 digits must fit NAME_MAX too.
    let max = NAME_MAX - DIR_PREFIX.len().max(21);
    if fault_id.is_empty()
        || fault_id.contains(['/', '\0'])
        || fault_id == "."
        || fault_id == ".."
        || fault_id.len() > max
    {
        return Err(Error::invalid(format!(
            "fault id {fault_id:?} cannot name an inode directory: it must be 1 to {max} bytes \
             without '/'"
        )));
    }
    Ok(dir.join(format!("{DIR_PREFIX}{fault_id}")))
}

/// Whether `name` is one of the files `<fault id>.<n>` made for `fault_id`.
fn is_ours(name: &[u8], fault_id: &str) -> bool {
    name.strip_prefix(fault_id.as_bytes())
        .and_then(|r| r.strip_prefix(b"."))
        .is_some_and(|n| !n.is_empty() && n.len() <= 20 && n.iter().all(u8::is_ascii_digit))
}

/// The safe inode reserve of a filesystem of `files` inodes that holds a protected path:
/// 5% of them, at least 10,000, at most a quarter of them.
pub(crate) fn protected_inode_reserve(files: u64) -> u64 {
    (files / 20).max(10_000).min(files / 4)
}

/// The percentage of inodes used, as `df -i` shows it (unrounded).
pub(crate) fn inodes_used_percent(fs: &FsStats) -> f64 {
    if fs.files == 0 {
        return 0.0;
    }
    fs.files.saturating_sub(fs.ffree) as f64 * 100.0 / fs.files as f64
}

/// How many inodes to take on a filesystem in state `fs` to satisfy `amount`. Refuses,
/// naming the numbers, instead of ever taking fewer than asked: a filesystem without an
/// inode limit (`f_files` 0, as btrfs reports), one already that full, a request beyond the
/// free inodes, or one beyond [`MAX_INODES`]. `path` names the filesystem in messages.
pub(crate) fn inodes_to_take(
    fs: &FsStats,
    amount: InodeAmount,
    path: &str,
) -> std::result::Result<u64, String> {
    if fs.files == 0 {
        return Err(format!(
            "the filesystem of {path} has no inode limit (statfs reports 0 inodes, as btrfs \
             does): there are no inodes to exhaust; fill it by size or percent instead"
        ));
    }
    let free = fs.favail;
    let (n, what) = match amount {
        InodeAmount::Count(n) => (n, format!("requested {n} inodes")),
        InodeAmount::Percent(p) => {
            let used = fs.files.saturating_sub(fs.ffree);
            let target = ((p / 100.0) * fs.files as f64).ceil().min(fs.files as f64) as u64;
            if target <= used {
                return Err(format!(
                    "{path} already has {:.1}% of its inodes used (requested {p}%)",
                    inodes_used_percent(fs)
                ));
            }
            let n = target - used;
            (n, format!("filling the inodes of {path} to {p}% needs {n}"))
        }
    };
    if n > free {
        return Err(format!("{what} but only {free} inodes are free on {path}"));
    }
    if n > MAX_INODES {
        return Err(format!(
            "{what}, more than the {MAX_INODES} one fault creates (they all live in one directory)"
        ));
    }
    Ok(n)
}

fn cstr(b: &[u8], what: &Path) -> Result<CString> {
    CString::new(b).map_err(|_| drifted(format!("refusing {}: NUL in its name", what.display())))
}

/// `open(path, O_DIRECTORY)`; `None` when it (or a parent) is not there.
fn open_dir(path: &Path) -> Result<Option<OwnedFd>> {
    let c = cstr(path.as_os_str().as_encoded_bytes(), path)?;
    // SAFETY: `c` is NUL-terminated.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENOTDIR) => Ok(None),
            _ => Err(Error::io(format!("opening {}", path.display()), e)),
        };
    }
    // SAFETY: fd was just opened and is owned from here on.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// The directory `name` in `parent`, opened without following a symlink and checked to be
/// the recorded one; `None` when nothing is there.
fn open_ours(
    parent: &OwnedFd,
    name: &CStr,
    fill: &InodeFill,
    doing: &str,
) -> Result<Option<OwnedFd>> {
    let shown = fill.dir.display();
    // SAFETY: zeroed stat is a valid out value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd, NUL-terminated name, valid out pointer.
    if unsafe {
        libc::fstatat(
            parent.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    } != 0
    {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOENT) => Ok(None),
            _ => Err(Error::io(format!("inspecting {shown}"), e)),
        };
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return Err(drifted(format!(
            "refusing to {doing} {shown}: it is {}, not the directory disk.fill creates",
            type_name(st.st_mode)
        )));
    }
    // SAFETY: valid fd and NUL-terminated name.
    let fd = unsafe {
        libc::openat(
            parent.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(Error::last_os(format!("opening {shown}")));
    }
    // SAFETY: fd was just opened and is owned from here on.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let have = FileId::of_fd(fd.as_raw_fd())
        .ok_or_else(|| Error::last_os(format!("inspecting {shown}")))?;
    if (have.dev, have.ino) != (st.st_dev, st.st_ino) {
        return Err(drifted(format!("{shown} was replaced while being opened")));
    }
    if let Some(want) = fill.id.filter(|w| !w.is(&have)) {
        return Err(drifted(format!(
            "refusing to {doing} {shown}: it is not the directory disk.fill created ({have}, the \
             receipt recorded {want}); someone replaced it"
        )));
    }
    Ok(Some(fd))
}

fn fsync(fd: &OwnedFd, what: &Path) -> Result<()> {
    // SAFETY: valid fd.
    if unsafe { libc::fsync(fd.as_raw_fd()) } != 0 {
        return Err(Error::last_os(format!("fsync {}", what.display())));
    }
    Ok(())
}

/// The names in an open directory but `.` and `..`.
fn names(dir: &OwnedFd, shown: &Path) -> Result<Vec<CString>> {
    // SAFETY: dup of a valid fd; fdopendir takes the duplicate.
    let dup = unsafe { libc::fcntl(dir.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(Error::last_os(format!("reading {}", shown.display())));
    }
    // SAFETY: `dup` is a valid directory fd that fdopendir takes over.
    let d = unsafe { libc::fdopendir(dup) };
    if d.is_null() {
        let e = std::io::Error::last_os_error();
        // SAFETY: fdopendir failed, so `dup` is still ours to close.
        unsafe { libc::close(dup) };
        return Err(Error::io(format!("reading {}", shown.display()), e));
    }
    // The duplicate shares its offset with `dir`: start from the beginning.
    // SAFETY: `d` is a valid DIR*.
    unsafe { libc::rewinddir(d) };
    let mut out = Vec::new();
    loop {
        // SAFETY: `d` is a valid DIR*; the entry is valid until the next readdir.
        let e = unsafe { libc::readdir64(d) };
        if e.is_null() {
            break;
        }
        // SAFETY: d_name is NUL-terminated inside the entry.
        let name = unsafe { CStr::from_ptr((*e).d_name.as_ptr()) };
        if name.to_bytes() != b"." && name.to_bytes() != b".." {
            out.push(name.to_owned());
        }
    }
    // SAFETY: `d` came from fdopendir and is closed once (closing `dup`).
    unsafe { libc::closedir(d) };
    Ok(out)
}

/// Inject: make the directory (or reopen the one an earlier inject of this receipt made,
/// checked against the recorded identity) and the empty files in it, then `fsync` both
/// directories. Records the directory's identity in `fill` before making any file, so that
/// the caller can remove a partial fill on error.
pub(super) fn create(fill: &mut InodeFill, parent_dir: &Path) -> Result<()> {
    let shown = fill.dir.display().to_string();
    let id = fill
        .fault_id()
        .ok_or_else(|| drifted(format!("refusing {shown}: not an inode directory name")))?
        .to_string();
    let parent = open_dir(parent_dir)?.ok_or_else(|| {
        Error::new(
            ErrorKind::NotFound,
            format!("{} does not exist", parent_dir.display()),
        )
    })?;
    let name = cstr(
        fill.dir.file_name().unwrap_or_default().as_encoded_bytes(),
        &fill.dir,
    )?;
    // SAFETY: valid fd and NUL-terminated name.
    if unsafe { libc::mkdirat(parent.as_raw_fd(), name.as_ptr(), 0o700) } != 0 {
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EEXIST) => {} // an earlier inject's: checked by open_ours
            Some(libc::ENOSPC) => {
                return Err(Error::io(
                    format!("no inode left on {} to make {shown}", parent_dir.display()),
                    e,
                ))
            }
            _ => return Err(Error::io(format!("creating {shown}"), e)),
        }
    }
    let dir = open_ours(&parent, &name, fill, "fill")?
        .ok_or_else(|| drifted(format!("{shown} vanished while being filled")))?;
    if fill.id.is_none() {
        fill.id = FileId::of_fd(dir.as_raw_fd());
    }
    let files = fill.count.saturating_sub(1);
    for n in 0..files {
        let f = CString::new(format!("{id}.{n}")).map_err(|_| drifted("NUL in a fault id"))?;
        loop {
            // SAFETY: valid fd and NUL-terminated name.
            let r = unsafe { libc::mknodat(dir.as_raw_fd(), f.as_ptr(), libc::S_IFREG | 0o600, 0) };
            if r == 0 {
                break;
            }
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EEXIST) => break, // an earlier inject's file
                Some(libc::ENOSPC) => {
                    return Err(Error::io(
                        format!(
                            "the filesystem ran out of inodes or space after {n} of {files} files in {shown}"
                        ),
                        e,
                    ))
                }
                _ => return Err(Error::io(format!("creating file {n} in {shown}"), e)),
            }
        }
    }
    fsync(&dir, &fill.dir)?;
    fsync(&parent, parent_dir)
}

/// Revert: unlink every file `<fault id>.<n>` in the directory, then the directory, and
/// `fsync` the parent. Nothing there is success. A directory that is not the recorded one
/// is refused (drifted); entries of other names are left, reported, and keep the directory.
/// Returns whether anything was there.
pub(super) fn remove(fill: &InodeFill, parent_dir: &Path) -> Result<bool> {
    let shown = fill.dir.display().to_string();
    let id = fill
        .fault_id()
        .ok_or_else(|| {
            drifted(format!(
                "refusing to remove {shown}: not an inode directory name"
            ))
        })?
        .to_string();
    let Some(parent) = open_dir(parent_dir)? else {
        return Ok(false);
    };
    let name = cstr(
        fill.dir.file_name().unwrap_or_default().as_encoded_bytes(),
        &fill.dir,
    )?;
    let Some(dir) = open_ours(&parent, &name, fill, "remove")? else {
        return Ok(false);
    };
    let mut strangers: Vec<String> = Vec::new();
    for n in names(&dir, &fill.dir)? {
        if !is_ours(n.to_bytes(), &id) {
            strangers.push(n.to_string_lossy().into_owned());
            continue;
        }
        // SAFETY: valid fd and NUL-terminated name; a directory of that name fails (EISDIR).
        if unsafe { libc::unlinkat(dir.as_raw_fd(), n.as_ptr(), 0) } != 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENOENT) => {}
                Some(libc::EISDIR) => strangers.push(n.to_string_lossy().into_owned()),
                Some(libc::EPERM) => {
                    return Err(Error::io(
                        format!(
                            "removing {shown}/{} ({IMMUTABLE_HINT})",
                            n.to_string_lossy()
                        ),
                        e,
                    ))
                }
                _ => {
                    return Err(Error::io(
                        format!("removing {shown}/{}", n.to_string_lossy()),
                        e,
                    ))
                }
            }
        }
    }
    fsync(&dir, &fill.dir)?;
    drop(dir);
    if !strangers.is_empty() {
        strangers.sort();
        let more = strangers.len().saturating_sub(5);
        strangers.truncate(5);
        return Err(drifted(format!(
            "removed disk.fill's files from {shown}, but it also holds entries disk.fill did not \
             create ({}{}); they and the directory are left for a person to look at",
            strangers.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        )));
    }
    // SAFETY: valid fd and NUL-terminated name.
    if unsafe { libc::unlinkat(parent.as_raw_fd(), name.as_ptr(), libc::AT_REMOVEDIR) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ENOENT) {
            return Err(Error::io(format!("removing {shown}"), e));
        }
    }
    fsync(&parent, parent_dir)?;
    Ok(true)
}

/// What is there now: `None` when there is no directory, else (our files, other entries).
pub(super) fn count(fill: &InodeFill, parent_dir: &Path) -> Result<Option<(u64, u64)>> {
    let id = fill.fault_id().unwrap_or_default().to_string();
    let Some(parent) = open_dir(parent_dir)? else {
        return Ok(None);
    };
    let name = cstr(
        fill.dir.file_name().unwrap_or_default().as_encoded_bytes(),
        &fill.dir,
    )?;
    let Some(dir) = open_ours(&parent, &name, fill, "verify")? else {
        return Ok(None);
    };
    let (mut ours, mut other) = (0, 0);
    for n in names(&dir, &fill.dir)? {
        if is_ours(n.to_bytes(), &id) {
            ours += 1;
        } else {
            other += 1;
        }
    }
    Ok(Some((ours, other)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fs(files: u64, used: u64) -> FsStats {
        FsStats {
            frsize: 4096,
            blocks: 1000,
            bfree: 1000,
            bavail: 1000,
            read_only: false,
            files,
            ffree: files - used,
            favail: files - used,
        }
    }

    #[test]
    fn counts_and_percentages_of_inodes() {
        assert_eq!(
            inodes_to_take(&fs(1000, 100), InodeAmount::Count(900), "/x"),
            Ok(900)
        );
        let e = inodes_to_take(&fs(1000, 100), InodeAmount::Count(901), "/x").unwrap_err();
        assert_eq!(e, "requested 901 inodes but only 900 inodes are free on /x");
        // df -i: 50% of 1000 = 500 used; 100 are.
        assert_eq!(
            inodes_to_take(&fs(1000, 100), InodeAmount::Percent(50.0), "/x"),
            Ok(400)
        );
        assert_eq!(
            inodes_to_take(&fs(1000, 100), InodeAmount::Percent(100.0), "/x"),
            Ok(900)
        );
        // 33.35% of 1000 = 333.5 -> 334.
        assert_eq!(
            inodes_to_take(&fs(1000, 0), InodeAmount::Percent(33.35), "/x"),
            Ok(334)
        );
        let e = inodes_to_take(&fs(1000, 600), InodeAmount::Percent(50.0), "/x").unwrap_err();
        assert_eq!(e, "/x already has 60.0% of its inodes used (requested 50%)");
        let e = inodes_to_take(&fs(0, 0), InodeAmount::Count(1), "/btr").unwrap_err();
        assert!(e.contains("no inode limit"), "{e}");
        let big = fs(u64::MAX / 2, 0);
        let e = inodes_to_take(&big, InodeAmount::Count(MAX_INODES + 1), "/x").unwrap_err();
        assert!(e.contains("more than the 10000000"), "{e}");
    }

    #[test]
    fn inode_reserve_table() {
        assert_eq!(protected_inode_reserve(16_384), 4_096);
        assert_eq!(protected_inode_reserve(100_000), 10_000);
        assert_eq!(protected_inode_reserve(6_553_600), 327_680);
        assert_eq!(protected_inode_reserve(0), 0);
    }

    #[test]
    fn names_come_from_the_fault_id() {
        let d = inode_dir(Path::new("/srv"), "f-1").unwrap();
        assert_eq!(d, Path::new("/srv/.chaos-agent-inodes-f-1"));
        let fill = InodeFill {
            dir: d,
            count: 3,
            id: None,
        };
        assert_eq!(fill.fault_id(), Some("f-1"));
        for bad in ["", "a/b", "..", "a\0b"] {
            assert!(inode_dir(Path::new("/srv"), bad).is_err(), "{bad:?}");
        }
        assert!(inode_dir(Path::new("/srv"), &"x".repeat(235)).is_err());
        assert!(inode_dir(Path::new("/srv"), &"x".repeat(234)).is_ok());
        assert!(is_ours(b"f-1.0", "f-1") && is_ours(b"f-1.123", "f-1"));
        for not in [
            &b"f-1."[..],
            b"f-1",
            b"f-2.1",
            b"f-1.1x",
            b"xf-1.1",
            b"f-1.-1",
        ] {
            assert!(!is_ours(not, "f-1"), "{}", String::from_utf8_lossy(not));
        }
    }

    #[test]
    fn create_count_and_remove_in_a_temporary_directory() {
        let t = fault_core::testing::TempDir::new("inode-fill");
        let mut fill = InodeFill {
            dir: inode_dir(t.path(), "u-1").unwrap(),
            count: 51,
            id: None,
        };
        create(&mut fill, t.path()).unwrap();
        assert!(fill.id.is_some());
        assert_eq!(count(&fill, t.path()).unwrap(), Some((50, 0)));
        create(&mut fill, t.path()).unwrap(); // again: nothing new
        assert_eq!(count(&fill, t.path()).unwrap(), Some((50, 0)));
        // A stranger's file in our directory keeps it, and is reported.
        std::fs::write(fill.dir.join("precious"), "x").unwrap();
        let e = remove(&fill, t.path()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Drifted);
        assert!(e.to_string().contains("precious"), "{e}");
        assert_eq!(count(&fill, t.path()).unwrap(), Some((0, 1)));
        std::fs::remove_file(fill.dir.join("precious")).unwrap();
        assert!(remove(&fill, t.path()).unwrap());
        assert!(!fill.dir.exists());
        assert!(!remove(&fill, t.path()).unwrap());
        assert_eq!(count(&fill, t.path()).unwrap(), None);
        // A directory at that name that is not the recorded one is never emptied.
        std::fs::create_dir(&fill.dir).unwrap();
        std::fs::write(fill.dir.join("u-1.0"), "").unwrap();
        let e = remove(&fill, t.path()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Drifted, "{e}");
        assert!(fill.dir.join("u-1.0").exists());
        // A symlink there is not followed.
        std::fs::remove_dir_all(&fill.dir).unwrap();
        std::os::unix::fs::symlink(t.path(), &fill.dir).unwrap();
        let e = remove(&fill, t.path()).unwrap_err();
        assert!(e.to_string().contains("a symlink"), "{e}");
    }
}
