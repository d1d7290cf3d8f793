//! Namespace identity that survives a crash, and running code inside a recorded namespace.
//!
//! A fault that acts inside a network or mount namespace records *which* one in its receipt
//! ([`NsId`]), so that a revert run later — by a fresh process, possibly started in another
//! namespace — acts in the same place, or says it cannot get there. Names and interface
//! indexes are only meaningful inside their namespace: `veth0` index 5 in one network
//! namespace and `veth0` index 5 in another are different interfaces.
//!
//! Identity is the nsfs device and inode (what `readlink /proc/PID/ns/net` shows as
//! `net:[INODE]`), and for network namespaces also the netns cookie (Linux 5.14+,
//! `SO_NETNS_COOKIE`), which the kernel never reuses within a boot. Inodes can be reused
//! once a namespace is freed; the cookie catches that where the kernel has one.
//!
//! Entering needs `CAP_SYS_ADMIN` (and `CAP_SYS_CHROOT` for mount namespaces). It happens on
//! a new thread, so the calling thread's namespaces never change.

use std::fmt;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, ErrorKind, Result};

/// Which namespace type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NsKind {
    /// Network namespace (`CLONE_NEWNET`).
    Net,
    /// Mount namespace (`CLONE_NEWNS`).
    Mnt,
}

impl NsKind {
    /// The name under `/proc/PID/ns/`.
    pub fn as_str(self) -> &'static str {
        match self {
            NsKind::Net => "net",
            NsKind::Mnt => "mnt",
        }
    }
    fn clone_flag(self) -> libc::c_int {
        match self {
            NsKind::Net => libc::CLONE_NEWNET,
            NsKind::Mnt => libc::CLONE_NEWNS,
        }
    }
}

/// A namespace, identified so that a later process can find it again (or know it cannot).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NsId {
    /// Namespace type.
    pub kind: NsKind,
    /// `st_dev` of the nsfs inode.
    pub dev: u64,
    /// `st_ino` of the nsfs inode (the number in `net:[…]`).
    pub ino: u64,
    /// The netns cookie, when the kernel has one (network namespaces, Linux 5.14+).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<u64>,
}

impl fmt::Display for NsId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:[{}]", self.kind.as_str(), self.ino)
    }
}

const SO_NETNS_COOKIE: libc::c_int = 71;

/// The netns cookie of the calling thread's network namespace, if the kernel has one.
fn current_netns_cookie() -> Option<u64> {
    // SAFETY: plain socket(2); the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: the buffer and length describe `cookie`.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    (r == 0).then_some(cookie)
}

fn stat_id(path: &Path) -> std::io::Result<(u64, u64)> {
    let m = std::fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
}

impl NsId {
    /// The namespace of `kind` the calling thread is in.
    pub fn current(kind: NsKind) -> Result<NsId> {
        let path = PathBuf::from(format!("/proc/thread-self/ns/{}", kind.as_str()));
        let (dev, ino) =
            stat_id(&path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        let cookie = match kind {
            NsKind::Net => current_netns_cookie(),
            NsKind::Mnt => None,
        };
        Ok(NsId {
            kind,
            dev,
            ino,
            cookie,
        })
    }

    /// Whether the calling thread is in this namespace.
    pub fn is_current(&self) -> bool {
        NsId::current(self.kind).is_ok_and(|c| c.same(self))
    }

    fn same(&self, other: &NsId) -> bool {
        self.kind == other.kind
            && self.dev == other.dev
            && self.ino == other.ino
            && match (self.cookie, other.cookie) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }

    fn matches_path(&self, path: &Path) -> bool {
        stat_id(path).is_ok_and(|(d, i)| d == self.dev && i == self.ino)
    }

    /// A path that refers to this namespace now, for entering it or for a person's
    /// `nsenter`: a bind mount (`ip netns` names under `/run/netns`, any nsfs mount in the
    /// mount table), else `/proc/PID/ns/KIND` of a process inside it. `None` when nothing
    /// this process can see refers to it (it is gone, or kept only by an open descriptor).
    pub fn find(&self) -> Option<PathBuf> {
        paths(self.kind).into_iter().find(|p| self.matches_path(p))
    }

    /// Where this namespace is now, as seen from the calling thread: the thread is in it,
    /// a path reaches it, it no longer exists (its number now belongs to a newer namespace,
    /// told by the netns cookie), or nothing this process can see refers to it.
    ///
    /// [`Whereabouts::Gone`] is a proof: the kernel frees a namespace's number only when
    /// the namespace is destroyed, and cookies are never reused. [`Whereabouts::Unreachable`]
    /// is not: the namespace may be gone, or alive but kept only by an open descriptor or
    /// by processes this one cannot see.
    pub fn whereabouts(&self) -> Whereabouts {
        if self.is_current() {
            return Whereabouts::Current;
        }
        let Some(path) = self.find() else {
            return Whereabouts::Unreachable;
        };
        if self.cookie.is_none() {
            return Whereabouts::At(path);
        }
        let Ok(file) = std::fs::File::open(&path) else {
            return Whereabouts::Unreachable;
        };
        if !self.matches_path(&path) {
            return Whereabouts::Unreachable;
        }
        let kind = self.kind;
        let now = std::thread::scope(|s| {
            s.spawn(|| {
                if kind == NsKind::Mnt {
                    // SAFETY: unshare(2) of this thread's fs context (see `enter`).
                    if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
                        return None;
                    }
                }
                // SAFETY: setns(2) on an fd we hold open; affects only this thread, which
                // ends right after.
                if unsafe { libc::setns(file.as_raw_fd(), kind.clone_flag()) } != 0 {
                    return None;
                }
                NsId::current(kind).ok()
            })
            .join()
            .ok()
            .flatten()
        });
        match now {
            Some(now) if now.same(self) => Whereabouts::At(path),
            Some(_) => Whereabouts::Gone(path),
            None => Whereabouts::Unreachable,
        }
    }

    /// Run `f` inside this namespace, on a new thread (the caller's namespaces never
    /// change). When the calling thread is already in it, `f` runs right here.
    ///
    /// Fails with [`ErrorKind::NotFound`] when nothing refers to the namespace any more (see
    /// [`find`](NsId::find)), [`ErrorKind::Drifted`] when the path found turns out to be
    /// another namespace (inode reused, told by the cookie), and with the `setns(2)` errno
    /// otherwise.
    pub fn enter<T, F>(&self, f: F) -> Result<T>
    where
        T: Send,
        F: FnOnce() -> Result<T> + Send,
    {
        if self.is_current() {
            return f();
        }
        let path = self.find().ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("namespace {self} is not reachable: no process, bind mount or /run/netns name refers to it"),
            )
        })?;
        let file = std::fs::File::open(&path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        if !self.matches_path(&path) {
            return Err(Error::new(
                ErrorKind::Drifted,
                format!("{} no longer refers to namespace {self}", path.display()),
            ));
        }
        std::thread::scope(|s| {
            s.spawn(|| {
                if self.kind == NsKind::Mnt {
                    // A thread shares its filesystem context with the others; a mount
                    // namespace can be entered only with a private one.
                    // SAFETY: unshare(2) of this thread's fs context.
                    if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
                        return Err(Error::io(
                            "unshare(CLONE_FS) before entering a mount namespace",
                            std::io::Error::last_os_error(),
                        ));
                    }
                }
                // SAFETY: setns(2) on an fd we hold open; affects only this thread.
                if unsafe { libc::setns(file.as_raw_fd(), self.kind.clone_flag()) } != 0 {
                    return Err(Error::io(
                        format!("entering namespace {self} through {}", path.display()),
                        std::io::Error::last_os_error(),
                    ));
                }
                let now = NsId::current(self.kind)?;
                if !now.same(self) {
                    return Err(Error::new(
                        ErrorKind::Drifted,
                        format!("{} is a new namespace that reuses the number of {self} (cookie differs)", path.display()),
                    ));
                }
                f()
            })
            .join()
            .unwrap_or_else(|_| {
                Err(Error::new(
                    ErrorKind::Io,
                    format!("the thread working inside namespace {self} panicked"),
                ))
            })
        })
    }

    /// The argv prefix that runs a command inside this namespace for a person, e.g.
    /// `["nsenter", "--net=/run/netns/a"]`; empty when the caller is already in it. When
    /// nothing refers to it, a placeholder path tells the person what to look for.
    pub fn nsenter_prefix(&self) -> Vec<String> {
        if self.is_current() {
            return Vec::new();
        }
        let path = self
            .find()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| format!("/proc/PID-IN-{}/ns/{}", self, self.kind.as_str()));
        // nsenter's options are --net= and --mount= (not --mnt=).
        let option = match self.kind {
            NsKind::Net => "--net",
            NsKind::Mnt => "--mount",
        };
        vec!["nsenter".to_string(), format!("{option}={path}")]
    }
}

/// Run `f` in the namespace a receipt was made in (`ns`), so that what the receipt names
/// (paths, interfaces) is what was there when it was made.
///
/// - No namespace recorded (receipts from before they were), or it is this thread's: `f`
///   runs here.
/// - Another namespace that a process or a bind mount visible from here refers to: `f` runs
///   on a thread that entered it ([`NsId::enter`]; needs `CAP_SYS_ADMIN`).
/// - Not reachable, and the receipt is from an earlier boot (`boot_id` differs from this
///   one's): namespaces do not outlive a boot, so `f` runs here (the identity a receipt
///   records, such as a file's device and inode, keeps it from touching something that
///   merely has the same name).
/// - Not reachable in the same boot: fails with [`ErrorKind::NotFound`], nothing touched;
///   `what` ("the fill file", "the DNS files") names what was made there. The engine then
///   leaves the record to a person, with [`NsId::nsenter_prefix`]ed commands.
pub fn in_recorded<T, F>(ns: Option<&NsId>, boot_id: Option<&str>, what: &str, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce() -> Result<T> + Send,
{
    let Some(ns) = ns else {
        return f();
    };
    if ns.is_current() {
        return f();
    }
    if ns.find().is_some() {
        return ns.enter(f);
    }
    if boot_id.is_some_and(|b| b != crate::host::boot_id()) {
        return f();
    }
    let (kind, option) = match ns.kind {
        NsKind::Net => ("network", "--net"),
        NsKind::Mnt => ("mount", "--mount"),
    };
    Err(Error::new(
        ErrorKind::NotFound,
        format!(
            "{what} was made in {kind} namespace {ns}, which is not reachable from here: no process \
             or bind mount visible to this agent refers to it (a process in another PID \
             namespace or an open descriptor may still keep it alive). Nothing was changed. \
             Run the manual undo inside that namespace: `nsenter {option}=/proc/PID/ns/{}` with \
             the PID of a process in it",
            ns.kind.as_str()
        ),
    ))
}

/// Every path that may refer to a namespace of `kind` now, in the order [`NsId::find`]
/// tries them: `ip netns` names under `/run/netns` (network namespaces), nsfs bind mounts
/// in the mount table (of any namespace type: check the type before use), then
/// `/proc/PID/ns/KIND` of every process, long-lived ones (low pids) first and this process
/// last. The same namespace may appear under several paths.
pub fn paths(kind: NsKind) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if kind == NsKind::Net {
        if let Ok(dir) = std::fs::read_dir("/run/netns") {
            let mut names: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
            names.sort();
            out.extend(names);
        }
    }
    if let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") {
        for line in mounts.lines() {
            // "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS ... - FSTYPE SOURCE SUPER"
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            if !right.starts_with("nsfs ") {
                continue;
            }
            if let Some(mp) = left.split(' ').nth(4) {
                out.push(mountinfo_path(mp));
            }
        }
    }
    let me = std::process::id();
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|&p| p != me)
        .collect();
    // Prefer long-lived processes (low pids) over our own short-lived children.
    pids.sort_unstable();
    pids.push(me);
    out.extend(
        pids.into_iter()
            .map(|p| PathBuf::from(format!("/proc/{p}/ns/{}", kind.as_str()))),
    );
    out
}

/// Where a recorded namespace is now ([`NsId::whereabouts`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Whereabouts {
    /// The calling thread is in it.
    Current,
    /// This path refers to it ([`NsId::enter`] goes through it).
    At(PathBuf),
    /// It no longer exists: this path carries its number but is a newer namespace (the
    /// netns cookie differs). Whatever lived only in it went with it.
    Gone(PathBuf),
    /// Nothing this process can see refers to it: it may be gone, or alive but kept only
    /// by an open descriptor or by processes out of sight.
    Unreachable,
}

/// A mount point field of mountinfo as a path.
fn mountinfo_path(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(super::fs::unescape_mountinfo(
        field,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_namespace_is_found_and_entered_in_place() {
        let net = NsId::current(NsKind::Net).unwrap();
        assert!(net.is_current());
        assert!(net.find().is_some());
        assert_eq!(net.enter(|| Ok(7)).unwrap(), 7);
        assert!(net.nsenter_prefix().is_empty());
        let json = serde_json::to_string(&net).unwrap();
        assert_eq!(serde_json::from_str::<NsId>(&json).unwrap(), net);
    }

    #[test]
    fn a_namespace_nobody_holds_is_not_found() {
        let gone = NsId {
            kind: NsKind::Net,
            dev: 4,
            ino: 1,
            cookie: None,
        };
        assert!(!gone.is_current());
        assert!(gone.find().is_none());
        let err = gone.enter(|| Ok(())).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert_eq!(gone.nsenter_prefix()[0], "nsenter");
        assert!(gone.nsenter_prefix()[1].starts_with("--net="));
        let mnt = NsId {
            kind: NsKind::Mnt,
            ..gone
        };
        assert!(
            mnt.nsenter_prefix()[1].starts_with("--mount="),
            "{:?}",
            mnt.nsenter_prefix()
        );
    }

    #[test]
    fn whereabouts_of_current_and_unknown_namespaces() {
        let net = NsId::current(NsKind::Net).unwrap();
        assert_eq!(net.whereabouts(), Whereabouts::Current);
        let gone = NsId {
            kind: NsKind::Net,
            dev: 4,
            ino: 1,
            cookie: Some(1),
        };
        assert_eq!(gone.whereabouts(), Whereabouts::Unreachable);
        // Our own namespace's number with another cookie: a newer namespace reusing it.
        if let Some(c) = net.cookie {
            let reused = NsId {
                cookie: Some(c.wrapping_add(1)),
                ..net.clone()
            };
            // Not current (`same` compares cookies when both have one), and the namespace
            // found under its number is `net`, whose cookie differs.
            assert!(matches!(reused.whereabouts(), Whereabouts::Gone(_)));
        }
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(
            mountinfo_path(r"/run/netns/a\040b"),
            Path::new("/run/netns/a b")
        );
        assert_eq!(mountinfo_path("/plain"), Path::new("/plain"));
        assert_eq!(
            crate::host::fs::unescape_mountinfo(r"a\134b\011"),
            b"a\\b\t"
        );
    }
}
