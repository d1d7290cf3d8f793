//! The mount table (`/proc/self/mountinfo`): which filesystem a directory is on, for people
//! ("tmpfs on /tmp/x (device 0:52)") and for the protected-filesystem guard, and a bounded
//! search of every mounted filesystem for files the disk faults left behind.
//!
//! # The search ([`scan`])
//!
//! Recovery calls it when the journal lost a record, with the fault ids the state directory
//! planned. It reads directories only, never follows a symlink and never crosses into
//! another mount during a walk (each mount is walked from its own mount point), and is
//! bounded so that it stays cheap on a real root filesystem:
//!
//! - filesystems searched: those mounted read-write in this mount namespace whose type holds
//!   files on a local disk or in memory ([`SEARCHED_TYPES`]: ext2/3/4, xfs, btrfs, f2fs, vfat,
//!   exfat, ntfs, … and tmpfs, ramfs, overlay). Not searched: pseudo filesystems (proc,
//!   sysfs, cgroup, devpts, nsfs, debugfs, …), devtmpfs, network and FUSE filesystems (a
//!   hung server would hang recovery), read-only mounts, and the lower, upper and work
//!   directories of overlay mounts (the merged view is searched instead);
//! - depth: files at most [`MAX_DEPTH`] directory levels below a mount point
//!   (`/srv/a/b/c/d/e/f/<file>` is found, one level deeper is not);
//! - breadth first, at most [`MAX_DIRS_PER_FS`] directories per filesystem and
//!   [`MAX_DIRS`] in all, and no new directory after [`DEADLINE`];
//! - a file is reported only if it is a regular file on the filesystem being walked, owned by
//!   the agent's effective uid, with one link (a file someone hard-linked elsewhere is not
//!   removed).
//!
//! Not found, therefore: files deeper than that or past the caps, files in other mount
//! namespaces' private mounts (a container's own tmpfs), under mounts the search skips, in
//! directories hidden under another mount or that the agent cannot read, renamed, or
//! hard-linked. Measured on the project's build machine (ext4 root of 252 GiB; 4
//! filesystems, ~8,600 directories within the depth): 0.10–0.13 s with a warm cache,
//! 0.75 s after dropping the page cache (the test `scan_of_this_machine_is_bounded` prints
//! it).

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::files::{self, dev_name, FileId};

/// Filesystem types [`scan`] searches: local disk filesystems and memory ones.
pub(crate) const SEARCHED_TYPES: &[&str] = &[
    "ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "jfs", "reiserfs", "bcachefs", "nilfs2", "zfs",
    "vfat", "msdos", "exfat", "ntfs", "ntfs3", "hfsplus", "udf", "tmpfs", "ramfs", "overlay",
];

/// Deepest directory level below a mount point that [`scan`] reads.
pub(crate) const MAX_DEPTH: usize = 6;

/// Most directories [`scan`] reads on one filesystem.
pub(crate) const MAX_DIRS_PER_FS: usize = 25_000;

/// Most directories [`scan`] reads in all.
pub(crate) const MAX_DIRS: usize = 100_000;

/// [`scan`] opens no new directory after this long.
pub(crate) const DEADLINE: Duration = Duration::from_secs(5);

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mount {
    /// `major:minor` of the filesystem, as `st_dev` of its files shows it (except btrfs
    /// subvolumes and overlay, whose files report their own).
    pub(crate) dev: (u32, u32),
    /// Where it is mounted.
    pub(crate) mount_point: PathBuf,
    /// Filesystem type (`ext4`, `tmpfs`, …).
    pub(crate) fstype: String,
    /// Mount source (`/dev/vda`, `tmpfs`, …).
    pub(crate) source: String,
    /// Mounted read-only (per-mount or superblock option `ro`).
    pub(crate) read_only: bool,
    /// Superblock options (`upperdir=…` for overlay).
    pub(crate) super_options: String,
}

impl Mount {
    /// "tmpfs on /tmp/x (device 0:52)", or "ext4 /dev/vda on / (device 254:0)" when the
    /// source is a device.
    pub(crate) fn label(&self) -> String {
        let source = if self.source.starts_with('/') {
            format!(" {}", self.source)
        } else {
            String::new()
        };
        format!(
            "{}{source} on {} (device {}:{})",
            self.fstype,
            self.mount_point.display(),
            self.dev.0,
            self.dev.1
        )
    }
}

fn path_of(s: &str) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(
        &fault_core::host::fs::unescape_mountinfo(s),
    ))
}

/// Parse mountinfo text.
pub(crate) fn parse(text: &str) -> Vec<Mount> {
    let mut out = Vec::new();
    for line in text.lines() {
        // "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS"
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        if l.len() < 6 || r.len() < 3 {
            continue;
        }
        let Some((maj, min)) = l[2].split_once(':') else {
            continue;
        };
        let (Ok(maj), Ok(min)) = (maj.parse(), min.parse()) else {
            continue;
        };
        let ro = |opts: &str| opts.split(',').any(|o| o == "ro");
        out.push(Mount {
            dev: (maj, min),
            mount_point: path_of(l[4]),
            fstype: r[0].to_string(),
            source: String::from_utf8_lossy(&fault_core::host::fs::unescape_mountinfo(r[1]))
                .into_owned(),
            read_only: ro(l[5]) || ro(r[2]),
            super_options: r[2].to_string(),
        });
    }
    out
}

/// The mounts of this mount namespace.
/// The mounts of the calling thread's mount namespace (`/proc/thread-self`: a thread that
/// entered another mount namespace sees that one, while `/proc/self` shows the main
/// thread's).
pub(crate) fn mounts() -> Vec<Mount> {
    let text = std::fs::read_to_string("/proc/thread-self/mountinfo")
        .or_else(|_| std::fs::read_to_string("/proc/self/mountinfo"))
        .unwrap_or_default();
    parse(&text)
}

/// The mount `dir` (a canonical path) is on, given its `st_dev`: among the mounts whose
/// mount point contains it, the deepest one with that device, else the deepest one at all
/// (btrfs subvolumes and overlay report other devices than mountinfo).
pub(crate) fn mount_of<'a>(ms: &'a [Mount], dir: &Path, dev: u64) -> Option<&'a Mount> {
    let d = (libc::major(dev), libc::minor(dev));
    // Among equally deep candidates the last line wins: it is mounted over the others.
    let deepest = |same_dev: bool| {
        let mut best: Option<&'a Mount> = None;
        for m in ms {
            if !dir.starts_with(&m.mount_point) || (same_dev && m.dev != d) {
                continue;
            }
            let len = m.mount_point.as_os_str().len();
            if best.is_none_or(|b| b.mount_point.as_os_str().len() <= len) {
                best = Some(m);
            }
        }
        best
    };
    deepest(true).or_else(|| deepest(false))
}

/// "tmpfs on /tmp/x (device 0:52)" for the filesystem of `dir`, or "device 0:52" when the
/// mount table does not say.
pub(crate) fn label(dir: &Path, dev: u64) -> String {
    match mount_of(&mounts(), dir, dev) {
        Some(m) => m.label(),
        None => format!(
            "the filesystem of {} (device {})",
            dir.display(),
            dev_name(dev)
        ),
    }
}

/// Whether `a` (on device `a_dev`) and `b` (on `b_dev`) are on the same filesystem: the same
/// device, or mounts of one block device with one type (btrfs subvolumes report a device
/// of their own, but share the space).
pub(crate) fn same_filesystem(ms: &[Mount], a: &Path, a_dev: u64, b: &Path, b_dev: u64) -> bool {
    if a_dev == b_dev {
        return true;
    }
    match (mount_of(ms, a, a_dev), mount_of(ms, b, b_dev)) {
        (Some(x), Some(y)) => {
            x.source.starts_with("/dev/") && x.source == y.source && x.fstype == y.fstype
        }
        _ => false,
    }
}

/// A file [`scan`] found.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    /// The directory it is in.
    pub(crate) dir: PathBuf,
    /// Its name.
    pub(crate) name: String,
    /// Its identity.
    pub(crate) id: FileId,
    /// Its length.
    pub(crate) size: u64,
    /// Whether it is a directory (else a regular file).
    pub(crate) is_dir: bool,
    /// The filesystem, for people.
    pub(crate) fs: String,
}

/// What a [`scan`] covered.
#[derive(Debug, Clone, Default)]
pub(crate) struct Coverage {
    /// Filesystems walked.
    pub(crate) filesystems: usize,
    /// Directories read.
    pub(crate) dirs: usize,
    /// Mount points of the filesystems whose walk stopped at a cap or the deadline.
    pub(crate) cut_short: Vec<PathBuf>,
}

/// Whether [`scan`] searches a mount.
fn searched(m: &Mount) -> bool {
    !m.read_only && SEARCHED_TYPES.contains(&m.fstype.as_str())
}

/// The directories of overlay mounts (lower, upper, work), which are searched through the
/// merged view only.
fn overlay_dirs(ms: &[Mount]) -> HashSet<PathBuf> {
    let mut out = HashSet::new();
    for m in ms.iter().filter(|m| m.fstype == "overlay") {
        for opt in m.super_options.split(',') {
            let Some((k, v)) = opt.split_once('=') else {
                continue;
            };
            match k {
                "lowerdir" => out.extend(v.split(':').map(path_of)),
                "upperdir" | "workdir" => {
                    out.insert(path_of(v));
                }
                _ => {}
            }
        }
    }
    out
}

fn open_dir(path: &Path) -> Option<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    // O_NOFOLLOW: a directory swapped for a symlink since it was listed is not followed.
    // SAFETY: `c` is NUL-terminated.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    // SAFETY: fd was just opened and is owned from here on.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fstat(fd: &OwnedFd) -> Option<libc::stat> {
    // SAFETY: zeroed stat is a valid out value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and out pointer.
    (unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } == 0).then_some(st)
}

fn fstatat(fd: libc::c_int, name: &CStr) -> Option<libc::stat> {
    // SAFETY: zeroed stat is a valid out value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd, NUL-terminated name, valid out pointer.
    let r = unsafe { libc::fstatat(fd, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
    (r == 0).then_some(st)
}

/// Call `f(dirfd, name, d_type)` for each entry of an open directory but `.` and `..`.
/// Takes the fd.
fn each_entry(fd: OwnedFd, mut f: impl FnMut(libc::c_int, &CStr, u8)) {
    // SAFETY: fdopendir takes ownership of a valid directory fd.
    let dir = unsafe { libc::fdopendir(fd.as_raw_fd()) };
    if dir.is_null() {
        return; // `fd` still owns and closes it
    }
    std::mem::forget(fd);
    // SAFETY: dir is a valid DIR*.
    let dirfd = unsafe { libc::dirfd(dir) };
    loop {
        // SAFETY: dir is a valid DIR*; the entry is valid until the next readdir.
        let e = unsafe { libc::readdir64(dir) };
        if e.is_null() {
            break;
        }
        // SAFETY: d_name is NUL-terminated inside the entry, valid until the next readdir.
        let (name, dtype) = unsafe { (CStr::from_ptr((*e).d_name.as_ptr()), (*e).d_type) };
        if name.to_bytes() != b"." && name.to_bytes() != b".." {
            f(dirfd, name, dtype);
        }
    }
    // SAFETY: dir came from fdopendir and is closed once (closing the fd too).
    unsafe { libc::closedir(dir) };
}

/// Search every searched filesystem (see the module docs for what and how far) for regular
/// files, and directories, whose name `wanted` accepts. A directory found is not searched.
pub(crate) fn scan(wanted: &dyn Fn(&str) -> bool) -> (Vec<Found>, Coverage) {
    scan_mounts(&mounts(), wanted, MAX_DIRS_PER_FS)
}

/// [`scan`] over the mounts `ms`, with a per-filesystem cap.
pub(crate) fn scan_mounts(
    ms: &[Mount],
    wanted: &dyn Fn(&str) -> bool,
    max_dirs_per_fs: usize,
) -> (Vec<Found>, Coverage) {
    let start = Instant::now();
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    let all_points: HashSet<&Path> = ms.iter().map(|m| m.mount_point.as_path()).collect();
    let skip = overlay_dirs(ms);
    // The mount on top at each mount point (later lines cover earlier ones).
    let mut top: HashMap<&Path, &Mount> = HashMap::new();
    let mut order: Vec<&Path> = Vec::new();
    for m in ms {
        if top.insert(m.mount_point.as_path(), m).is_none() {
            order.push(m.mount_point.as_path());
        }
    }
    let mut found: Vec<Found> = Vec::new();
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let mut cov = Coverage::default();
    for point in order {
        let m = top[point];
        if !searched(m) || skip.contains(point) {
            continue;
        }
        let Some(root) = open_dir(point) else {
            continue;
        };
        let Some(st) = fstat(&root) else {
            continue;
        };
        let dev = st.st_dev;
        cov.filesystems += 1;
        let label = m.label();
        let mut queue: VecDeque<(PathBuf, usize, Option<OwnedFd>)> =
            VecDeque::from([(point.to_path_buf(), 0, Some(root))]);
        let mut dirs = 0;
        while let Some((path, depth, fd)) = queue.pop_front() {
            if dirs >= max_dirs_per_fs || cov.dirs >= MAX_DIRS || start.elapsed() >= DEADLINE {
                cov.cut_short.push(point.to_path_buf());
                break;
            }
            let fd = match fd {
                Some(fd) => fd,
                None => match open_dir(&path) {
                    Some(fd) => fd,
                    None => continue,
                },
            };
            // Another filesystem (a mount the table did not show, or a swapped directory).
            if depth > 0 && fstat(&fd).is_none_or(|s| s.st_dev != dev) {
                continue;
            }
            dirs += 1;
            cov.dirs += 1;
            each_entry(fd, |dirfd, name, dtype| {
                let bytes = name.to_bytes();
                let wants_file = std::str::from_utf8(bytes)
                    .is_ok_and(|n| n.starts_with(".chaos-agent-") && wanted(n));
                let mut kind = dtype;
                if kind == libc::DT_UNKNOWN
                    || (wants_file && (kind == libc::DT_REG || kind == libc::DT_DIR))
                {
                    let Some(st) = fstatat(dirfd, name) else {
                        return;
                    };
                    kind = match st.st_mode & libc::S_IFMT {
                        libc::S_IFDIR => libc::DT_DIR,
                        libc::S_IFREG => libc::DT_REG,
                        _ => libc::DT_UNKNOWN,
                    };
                    if (kind == libc::DT_REG && st.st_nlink == 1 || kind == libc::DT_DIR)
                        && wants_file
                        && st.st_dev == dev
                        && st.st_uid == euid
                        && seen.insert((st.st_dev, st.st_ino))
                    {
                        found.push(Found {
                            dir: path.clone(),
                            name: String::from_utf8_lossy(bytes).into_owned(),
                            id: files::id_at(dirfd, name, &st),
                            size: st.st_size as u64,
                            fs: label.clone(),
                            is_dir: kind == libc::DT_DIR,
                        });
                        return; // a directory found is not searched
                    }
                }
                if kind == libc::DT_DIR && depth < MAX_DEPTH {
                    let p = path.join(OsStr::from_bytes(bytes));
                    if !all_points.contains(p.as_path()) && !skip.contains(&p) {
                        queue.push_back((p, depth + 1, None));
                    }
                }
            });
        }
    }
    (found, cov)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
28 27 0:25 / /mnt/tools ro,nosuid - tmpfs tools ro,size=4k
30 27 0:27 / /srv/my\\040data rw,relatime shared:5 - tmpfs tmpfs rw,size=1024k
31 27 8:1 /sub /srv/sub rw - btrfs /dev/sda1 rw,subvol=/sub
32 27 0:33 / /srv/other rw - btrfs /dev/sda1 rw,subvol=/other
40 27 0:50 / /var/lib/c/merged rw - overlay overlay rw,lowerdir=/var/lib/c/l1:/var/lib/c/l2,upperdir=/var/lib/c/up,workdir=/var/lib/c/work
";

    #[test]
    fn parses_mountinfo() {
        let ms = parse(MOUNTINFO);
        assert_eq!(ms.len(), 7);
        assert_eq!(ms[1].label(), "ext4 /dev/vda on / (device 254:0)");
        assert!(ms[2].read_only);
        assert_eq!(ms[3].mount_point, Path::new("/srv/my data"));
        assert_eq!(ms[3].label(), "tmpfs on /srv/my data (device 0:27)");
        assert!(!ms[3].read_only);
        let searched: Vec<&Path> = ms
            .iter()
            .filter(|m| searched(m))
            .map(|m| m.mount_point.as_path())
            .collect();
        assert_eq!(
            searched,
            [
                "/",
                "/srv/my data",
                "/srv/sub",
                "/srv/other",
                "/var/lib/c/merged"
            ]
            .map(Path::new)
        );
        let skip = overlay_dirs(&ms);
        for d in [
            "/var/lib/c/l1",
            "/var/lib/c/l2",
            "/var/lib/c/up",
            "/var/lib/c/work",
        ] {
            assert!(skip.contains(Path::new(d)), "{d}");
        }
    }

    #[test]
    fn finds_the_mount_of_a_directory() {
        let ms = parse(MOUNTINFO);
        let dev = |a, b| libc::makedev(a, b);
        let m = mount_of(&ms, Path::new("/srv/my data/x"), dev(0, 27)).unwrap();
        assert_eq!(m.mount_point, Path::new("/srv/my data"));
        let m = mount_of(&ms, Path::new("/var/tmp"), dev(254, 0)).unwrap();
        assert_eq!(m.mount_point, Path::new("/"));
        // A btrfs subvolume whose files report another device than mountinfo.
        let m = mount_of(&ms, Path::new("/srv/sub/a"), dev(0, 99)).unwrap();
        assert_eq!(m.mount_point, Path::new("/srv/sub"));
        assert!(same_filesystem(
            &ms,
            Path::new("/srv/sub/a"),
            dev(0, 99),
            Path::new("/srv/other"),
            dev(0, 33)
        ));
        assert!(!same_filesystem(
            &ms,
            Path::new("/srv/my data"),
            dev(0, 27),
            Path::new("/"),
            dev(254, 0)
        ));
    }

    /// Walks every filesystem of this machine the way recovery does, and prints what it
    /// cost (the figure quoted in the docs comes from here).
    #[test]
    fn scan_of_this_machine_is_bounded() {
        let t = Instant::now();
        let (found, cov) = scan(&|n| n == ".chaos-agent-fill-never-a-fault-id");
        let took = t.elapsed();
        eprintln!(
            "scan: {} filesystems, {} directories in {:?}; cut short: {:?}",
            cov.filesystems, cov.dirs, took, cov.cut_short
        );
        assert!(found.is_empty());
        assert!(cov.dirs <= MAX_DIRS);
        assert!(cov.filesystems >= 1);
        // A cap of 3 directories per filesystem is honoured.
        let (_, small) = scan_mounts(&mounts(), &|_| false, 3);
        assert!(small.dirs <= 3 * small.filesystems, "{small:?}");
        assert!(!small.cut_short.is_empty());
    }
}
