//! A small cgroup v1/v2 module: find the hierarchies this process lives in, and create, fill,
//! empty and remove one cgroup per fault *under the agent's own cgroup*.
//!
//! # Why our own module
//!
//! The one maintained crate, `cgroups-rs`, supports v2 only when `/sys/fs/cgroup` itself is
//! the cgroup2 mount (its root is hard-coded), so the hybrid layout of many hosts (v1
//! controllers under `/sys/fs/cgroup/<ctrl>`, cgroup2 at `/sys/fs/cgroup/unified`) is out of
//! its reach; it also pulls ~90 crates (zbus, nix). What faults need is a handful of file
//! operations, written here with `std::fs`: read `/proc/self/mountinfo` and
//! `/proc/self/cgroup`, `mkdir`, write `cgroup.procs`, read a few counters, kill everything
//! in the cgroup, `rmdir`.
//!
//! # Layout
//!
//! A fault's cgroup is named `chaos-agent-<fault id>` and sits directly under the agent's
//! own cgroup in every hierarchy used: the cgroup2 hierarchy when one is mounted (it tracks
//! the processes and, since Linux 5.14, kills them all at once with `cgroup.kill`), and, for
//! each controller asked for that is not available on cgroup2, the v1 hierarchy holding
//! that controller. Under the agent's cgroup rather than at the root: moving a process to
//! the root would escape limits the agent itself runs under (a systemd unit's `MemoryMax`,
//! a container's memory cgroup).
//!
//! The names are derived from the fault id before anything is created, so a receipt
//! journaled before `inject` already names every cgroup revert must empty and remove.

use std::io::ErrorKind as IoKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::{Error, ErrorKind, Result};

/// Prefix of every cgroup a fault creates; the fault id follows.
pub const PREFIX: &str = "chaos-agent-";

const CGROUP_SUPER_MAGIC: i64 = 0x0027_e0eb;
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Which cgroup interface a hierarchy speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Version {
    /// Legacy hierarchies, one (or a few) controllers each.
    V1,
    /// The unified hierarchy.
    V2,
}

/// One mounted hierarchy and this process's cgroup in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// v1 or v2.
    pub version: Version,
    /// Where it is mounted.
    pub mount: PathBuf,
    /// The controllers it carries. For v1, the mount's controllers; for v2, those enabled
    /// for children of our cgroup (its `cgroup.subtree_control`).
    pub controllers: Vec<String>,
    /// This process's cgroup directory in it.
    pub own: PathBuf,
}

/// One line of `/proc/self/mountinfo` that mounts a cgroup filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CgroupMount {
    pub(crate) version: Version,
    /// The mount's root inside the hierarchy (not `/` in containers).
    root: String,
    pub(crate) mount: PathBuf,
    /// v1 super options (controllers and `name=`), empty for v2.
    pub(crate) options: Vec<String>,
}

/// Undo the octal escapes (`\040` for a space) of `/proc/self/mountinfo`.
fn unescape(s: &str) -> String {
    String::from_utf8_lossy(&super::fs::unescape_mountinfo(s)).into_owned()
}

pub(crate) fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split_whitespace().collect();
        let r: Vec<&str> = right.split_whitespace().collect();
        if l.len() < 5 || r.len() < 3 {
            continue;
        }
        let version = match r[0] {
            "cgroup" => Version::V1,
            "cgroup2" => Version::V2,
            _ => continue,
        };
        let options = if version == Version::V1 {
            r[2].split(',')
                .filter(|o| !matches!(*o, "rw" | "ro") && !o.is_empty())
                .map(String::from)
                .collect()
        } else {
            Vec::new()
        };
        out.push(CgroupMount {
            version,
            root: unescape(l[3]),
            mount: PathBuf::from(unescape(l[4])),
            options,
        });
    }
    out
}

/// `(hierarchy id, controllers or name=, path)` lines of `/proc/self/cgroup`.
fn parse_proc_cgroup(text: &str) -> Vec<(String, Vec<String>, String)> {
    text.lines()
        .filter_map(|line| {
            let mut it = line.splitn(3, ':');
            let id = it.next()?.to_string();
            let ctrls = it.next()?;
            let path = it.next()?.to_string();
            let ctrls = if ctrls.is_empty() {
                Vec::new()
            } else {
                ctrls.split(',').map(String::from).collect()
            };
            Some((id, ctrls, path))
        })
        .collect()
}

/// The directory of cgroup `path` (as `/proc/self/cgroup` shows it) in a mount whose root
/// is `root`, or `None` when the cgroup is outside what the mount shows.
fn dir_in_mount(mount: &Path, root: &str, path: &str) -> Option<PathBuf> {
    let rel = if root == "/" {
        path.strip_prefix('/').unwrap_or(path)
    } else {
        let rest = path.strip_prefix(root)?;
        if !(rest.is_empty() || rest.starts_with('/')) {
            return None;
        }
        rest.trim_start_matches('/')
    };
    if rel.split('/').any(|c| c == "..") {
        return None;
    }
    Some(if rel.is_empty() {
        mount.to_path_buf()
    } else {
        mount.join(rel)
    })
}

fn resolve(mounts: &[CgroupMount], own: &[(String, Vec<String>, String)]) -> Vec<Hierarchy> {
    let mut out: Vec<Hierarchy> = Vec::new();
    for m in mounts {
        let line = own.iter().find(|(id, ctrls, _)| match m.version {
            Version::V2 => id == "0" && ctrls.is_empty(),
            Version::V1 => {
                !ctrls.is_empty() && {
                    let mut a = ctrls.clone();
                    let mut b: Vec<String> = m
                        .options
                        .iter()
                        .filter(|o| o.starts_with("name=") || !o.contains('=') && is_controller(o))
                        .cloned()
                        .collect();
                    a.sort();
                    b.sort();
                    a == b
                }
            }
        });
        let Some((_, ctrls, path)) = line else {
            continue;
        };
        let Some(dir) = dir_in_mount(&m.mount, &m.root, path) else {
            continue;
        };
        // A hierarchy mounted twice counts once.
        if out.iter().any(|h| h.version == m.version && h.own == dir) {
            continue;
        }
        let controllers = match m.version {
            Version::V1 => ctrls
                .iter()
                .filter(|c| !c.starts_with("name="))
                .cloned()
                .collect(),
            Version::V2 => Vec::new(),
        };
        out.push(Hierarchy {
            version: m.version,
            mount: m.mount.clone(),
            controllers,
            own: dir,
        });
    }
    out
}

/// Whether a v1 mount option names a controller (rather than a flag such as `xattr`).
pub(crate) fn is_controller(o: &str) -> bool {
    matches!(
        o,
        "cpu"
            | "cpuacct"
            | "cpuset"
            | "memory"
            | "devices"
            | "freezer"
            | "net_cls"
            | "net_prio"
            | "blkio"
            | "perf_event"
            | "hugetlb"
            | "pids"
            | "rdma"
            | "misc"
    )
}

/// The cgroup hierarchies mounted here and this process's cgroup in each. Empty when
/// cgroups are not mounted (or `/proc` is unreadable).
pub fn hierarchies() -> Vec<Hierarchy> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mut hs = resolve(&parse_mountinfo(&mountinfo), &parse_proc_cgroup(&own));
    for h in hs.iter_mut().filter(|h| h.version == Version::V2) {
        h.controllers = std::fs::read_to_string(h.own.join("cgroup.subtree_control"))
            .unwrap_or_default()
            .split_whitespace()
            .map(String::from)
            .collect();
    }
    hs
}

/// A fault's own cgroup in one hierarchy, as recorded in receipts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultCgroup {
    /// v1 or v2.
    pub version: Version,
    /// Its directory, `<agent's cgroup>/chaos-agent-<fault id>`.
    pub dir: PathBuf,
    /// The controllers it was created for (v1) or has available (v2).
    pub controllers: Vec<String>,
}

/// The cgroup name of fault `fault_id`, `chaos-agent-<fault id>`, refusing ids that would
/// not make one plain name.
pub fn cgroup_name(fault_id: &str) -> Result<String> {
    if fault_id.is_empty()
        || fault_id.len() > 200
        || fault_id.contains(['/', '\0', '\n'])
        || fault_id == "."
        || fault_id == ".."
    {
        return Err(Error::invalid(format!(
            "fault id {fault_id:?} cannot name a cgroup: use 1 to 200 bytes without '/'"
        )));
    }
    Ok(format!("{PREFIX}{fault_id}"))
}

/// The cgroups a fault with `fault_id` would use: the cgroup2 hierarchy when mounted, plus
/// the v1 hierarchy of every controller in `want` that cgroup2 does not offer here. Reads
/// the host, changes nothing. Empty when cgroups are not available.
pub fn plan(fault_id: &str, want: &[&str]) -> Result<Vec<FaultCgroup>> {
    plan_in(&hierarchies(), fault_id, want)
}

fn plan_in(hs: &[Hierarchy], fault_id: &str, want: &[&str]) -> Result<Vec<FaultCgroup>> {
    let name = cgroup_name(fault_id)?;
    let mut out = Vec::new();
    let v2 = hs.iter().find(|h| h.version == Version::V2);
    if let Some(h) = v2 {
        out.push(FaultCgroup {
            version: Version::V2,
            dir: h.own.join(&name),
            controllers: h.controllers.clone(),
        });
    }
    for c in want {
        if v2.is_some_and(|h| h.controllers.iter().any(|x| x == c)) {
            continue;
        }
        if let Some(h) = hs
            .iter()
            .find(|h| h.version == Version::V1 && h.controllers.iter().any(|x| x == c))
        {
            let dir = h.own.join(&name);
            if !out.iter().any(|f: &FaultCgroup| f.dir == dir) {
                out.push(FaultCgroup {
                    version: Version::V1,
                    dir,
                    controllers: h.controllers.clone(),
                });
            }
        }
    }
    Ok(out)
}

fn read_u64_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(char::is_whitespace)?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

fn statfs_magic(path: &Path) -> std::io::Result<i64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: zeroed statfs is valid (plain integers).
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` a valid out pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // f_type's type differs between targets
    Ok(st.f_type as i64)
}

impl FaultCgroup {
    /// Its `cgroup.procs` file.
    pub fn procs_file(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// Whether the directory exists.
    pub fn exists(&self) -> bool {
        self.dir.is_dir()
    }

    /// Refuse a receipt whose cgroup is not one a fault creates: the name must carry the
    /// prefix and the parent must be on a cgroup filesystem. Revert checks this before it
    /// kills anything listed in the directory.
    pub fn check_ours(&self) -> Result<()> {
        let name = self.dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !name.starts_with(PREFIX) || name.len() == PREFIX.len() {
            return Err(Error::new(
                ErrorKind::Drifted,
                format!(
                    "refusing to touch cgroup {}: its name does not start with {PREFIX}",
                    self.dir.display()
                ),
            ));
        }
        let parent = self.dir.parent().unwrap_or(Path::new("/"));
        match statfs_magic(parent) {
            Ok(m) if m == CGROUP_SUPER_MAGIC || m == CGROUP2_SUPER_MAGIC => Ok(()),
            // The hierarchy is gone (unmounted, rebooted into another layout): nothing of
            // ours can be in it.
            Err(e) if e.kind() == IoKind::NotFound => Ok(()),
            Ok(_) => Err(Error::new(
                ErrorKind::Drifted,
                format!(
                    "refusing to touch {}: {} is not a cgroup filesystem",
                    self.dir.display(),
                    parent.display()
                ),
            )),
            Err(e) => Err(Error::io(format!("statfs {}", parent.display()), e)),
        }
    }

    /// Check, before a revert acts on a journaled receipt, that this cgroup is exactly one
    /// that fault `fault_id` creates: its name is `chaos-agent-<fault id>`, its path is
    /// absolute and plain (no `.`, `..`), it lies inside a mounted cgroup hierarchy of its
    /// version (when one is mounted there) and [`check_ours`](FaultCgroup::check_ours)
    /// holds. Its parent may be any cgroup of that hierarchy: the agent that planned it may
    /// have lived in another cgroup than the process that reverts it.
    pub fn check_for(&self, fault_id: &str) -> Result<()> {
        let drifted = |why: String| {
            Error::new(
                ErrorKind::Drifted,
                format!(
                    "refusing cgroup {} for fault {fault_id:?}: {why}",
                    self.dir.display()
                ),
            )
        };
        let want = cgroup_name(fault_id).map_err(|e| drifted(e.to_string()))?;
        let name = self.dir.file_name().and_then(|n| n.to_str());
        if name != Some(want.as_str()) {
            return Err(drifted(format!(
                "fault {fault_id:?} only creates cgroups named {want}"
            )));
        }
        let plain = self.dir.is_absolute()
            && self.dir.components().all(|c| {
                matches!(
                    c,
                    std::path::Component::RootDir | std::path::Component::Normal(_)
                )
            });
        if !plain {
            return Err(drifted("the path is not absolute and plain".into()));
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mounts = parse_mountinfo(&mountinfo);
        let inside = mounts.iter().any(|m| {
            m.version == self.version && self.dir.starts_with(&m.mount) && self.dir != m.mount
        });
        if !inside && self.dir.parent().is_some_and(Path::exists) {
            return Err(drifted(format!(
                "it is not inside a mounted cgroup {} hierarchy",
                match self.version {
                    Version::V1 => "v1",
                    Version::V2 => "v2",
                }
            )));
        }
        self.check_ours()
    }

    /// Create the directory. Returns `Ok(false)` when it already existed.
    pub fn create(&self) -> Result<bool> {
        self.check_ours()?;
        match std::fs::create_dir(&self.dir) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == IoKind::AlreadyExists => Ok(false),
            Err(e) => Err(Error::io(
                format!("creating cgroup {}", self.dir.display()),
                e,
            )),
        }
    }

    /// The pids in it (empty when it does not exist).
    pub fn pids(&self) -> Result<Vec<i32>> {
        match std::fs::read_to_string(self.procs_file()) {
            Ok(t) => Ok(t.lines().filter_map(|l| l.trim().parse().ok()).collect()),
            Err(e) if e.kind() == IoKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(Error::io(
                format!("reading {}", self.procs_file().display()),
                e,
            )),
        }
    }

    /// Move process `pid` into it.
    pub fn add(&self, pid: i32) -> Result<()> {
        std::fs::write(self.procs_file(), pid.to_string()).map_err(|e| {
            Error::io(
                format!("moving pid {pid} into {}", self.procs_file().display()),
                e,
            )
        })
    }

    /// SIGKILL every process in it: at once with `cgroup.kill` on cgroup2 (Linux 5.14+),
    /// otherwise one by one through a pidfd taken while the process is seen in this cgroup
    /// (so a pid reused meanwhile is never hit). Without pidfds (Linux < 5.3) each pid is
    /// checked to be listed in this cgroup immediately before `kill(2)` (see [`kill_if_in`]).
    /// Returns how many were listed.
    pub fn kill_all(&self) -> Result<usize> {
        self.check_ours()?;
        let pids = self.pids()?;
        if pids.is_empty() {
            return Ok(0);
        }
        if self.version == Version::V2 {
            match write_existing(&self.dir.join("cgroup.kill"), b"1") {
                Ok(()) => return Ok(pids.len()),
                // Linux < 5.14 has no cgroup.kill: one by one below.
                Err(e) if e.kind() == IoKind::NotFound => {
                    if !self.exists() {
                        return Ok(0);
                    }
                }
                Err(e) => {
                    return Err(Error::io(
                        format!("writing {}/cgroup.kill", self.dir.display()),
                        e,
                    ))
                }
            }
        }
        for pid in &pids {
            kill_if_in(*pid, &self.dir)?;
        }
        Ok(pids.len())
    }

    /// Remove the directory once it is empty, retrying while the kernel still counts
    /// exiting processes (`EBUSY`) for up to `wait`. Gone already is success.
    pub fn remove(&self, wait: Duration) -> Result<()> {
        self.check_ours()?;
        let deadline = Instant::now() + wait;
        loop {
            match std::fs::remove_dir(&self.dir) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == IoKind::NotFound => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    return Err(Error::io(
                        format!("removing cgroup {}", self.dir.display()),
                        e,
                    ))
                }
            }
        }
    }

    /// Whether it carries the memory controller.
    pub fn has_memory(&self) -> bool {
        self.controllers.iter().any(|c| c == "memory")
    }

    /// Cap its memory (`memory.limit_in_bytes` on v1, `memory.max` on v2).
    pub fn set_memory_limit(&self, bytes: u64) -> Result<()> {
        let file = match self.version {
            Version::V1 => "memory.limit_in_bytes",
            Version::V2 => "memory.max",
        };
        std::fs::write(self.dir.join(file), bytes.to_string()).map_err(|e| {
            Error::io(
                format!("writing {bytes} to {}/{file}", self.dir.display()),
                e,
            )
        })
    }

    /// Memory charged to it now, when it has the memory controller.
    pub fn memory_usage(&self) -> Option<u64> {
        let file = match self.version {
            Version::V1 => "memory.usage_in_bytes",
            Version::V2 => "memory.current",
        };
        std::fs::read_to_string(self.dir.join(file))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// How many processes the OOM killer killed in it (v1 `memory.oom_control`, v2
    /// `memory.events`), when it has the memory controller.
    pub fn oom_kills(&self) -> Option<u64> {
        let file = match self.version {
            Version::V1 => "memory.oom_control",
            Version::V2 => "memory.events",
        };
        let text = std::fs::read_to_string(self.dir.join(file)).ok()?;
        read_u64_field(&text, "oom_kill")
    }
}

/// How deep below a hierarchy's mount point [`find_fault_cgroups`] looks: agents run at
/// most a few levels down (`/system.slice/chaos-agent.service`, a Kubernetes pod's
/// `/kubepods.slice/…/cri-containerd-….scope` at depth 4 or 5), and their fault cgroups one
/// below.
pub const FIND_MAX_DEPTH: usize = 10;

/// Most cgroup directories [`find_fault_cgroups`] reads per hierarchy.
pub const FIND_MAX_DIRS: usize = 20_000;

/// The cgroups named after the fault ids in `known` (`chaos-agent-<fault id>`), in every
/// mounted cgroup hierarchy (v1 and v2), wherever they sit in it: the process looking may
/// live in another cgroup than the agent that created them. Each is returned with the fault
/// id its name carries, in mount order, breadth first. Bounded: at most
/// [`FIND_MAX_DEPTH`] levels below each mount point and [`FIND_MAX_DIRS`] directories per
/// hierarchy; the inside of a fault cgroup (ours or another agent's) is not searched.
pub fn find_fault_cgroups(known: &[String]) -> Vec<(String, FaultCgroup)> {
    let names: std::collections::HashMap<String, &String> = known
        .iter()
        .filter_map(|id| Some((cgroup_name(id).ok()?, id)))
        .collect();
    if names.is_empty() {
        return Vec::new();
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<(String, FaultCgroup)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut walked = std::collections::HashSet::new();
    for m in parse_mountinfo(&mountinfo) {
        if !walked.insert(m.mount.clone()) {
            continue;
        }
        let controllers: Vec<String> = m
            .options
            .iter()
            .filter(|o| is_controller(o))
            .cloned()
            .collect();
        let mut queue = std::collections::VecDeque::from([(m.mount.clone(), 0usize)]);
        let mut dirs = 0;
        while let Some((dir, depth)) = queue.pop_front() {
            if dirs >= FIND_MAX_DIRS {
                break;
            }
            dirs += 1;
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                // d_type: never follows a link (cgroupfs has none anyway).
                if !e.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let name = e.file_name();
                let Some(name) = name.to_str() else {
                    continue;
                };
                if let Some(id) = names.get(name) {
                    let path = e.path();
                    // The same cgroup reached through two mounts of one hierarchy counts once.
                    let key = std::fs::metadata(&path).map(|md| {
                        use std::os::unix::fs::MetadataExt;
                        (md.dev(), md.ino())
                    });
                    if let Ok(key) = key {
                        if !seen.insert(key) {
                            continue;
                        }
                    }
                    let controllers = match m.version {
                        Version::V1 => controllers.clone(),
                        Version::V2 => std::fs::read_to_string(path.join("cgroup.controllers"))
                            .unwrap_or_default()
                            .split_whitespace()
                            .map(String::from)
                            .collect(),
                    };
                    out.push((
                        (*id).clone(),
                        FaultCgroup {
                            version: m.version,
                            dir: path,
                            controllers,
                        },
                    ));
                } else if !name.starts_with(PREFIX) && depth + 1 < FIND_MAX_DEPTH {
                    queue.push_back((e.path(), depth + 1));
                }
            }
        }
    }
    out
}

/// Write `data` to an existing file, never creating it: a cgroup file this kernel lacks is
/// `ENOENT`. (`std::fs::write` opens with `O_CREAT`, which cgroupfs answers with `EACCES`
/// for a missing name, so a missing `cgroup.kill` would look like a permission error.)
fn write_existing(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(data)
}

/// Whether `pid` is listed in cgroup directory `dir` now.
fn listed_in(pid: i32, dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|t| t.lines().any(|l| l.trim() == pid.to_string()))
        .unwrap_or(false)
}

/// SIGKILL `pid` if, once pinned by a pidfd, it is still in cgroup directory `dir`.
///
/// Without pidfds (Linux < 5.3, or a seccomp profile refusing `pidfd_open`), `cgroup.procs`
/// is read again immediately before `kill(2)`: a pid could only be hit wrongly if our
/// process exited and the number was reused in the microseconds between that read and the
/// signal (and our cgroups hold only stressors, which never fork).
fn kill_if_in(pid: i32, dir: &Path) -> Result<()> {
    // SAFETY: pidfd_open takes a pid and flags; no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ESRCH) {
            return Ok(());
        }
        if !super::process::pidfd_unavailable(&e) {
            return Err(Error::io(format!("pidfd_open({pid})"), e));
        }
        if listed_in(pid, dir) {
            // SAFETY: kill has no memory preconditions.
            if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::ESRCH) {
                    return Err(Error::io(format!("SIGKILL to pid {pid}"), e));
                }
            }
        }
        return Ok(());
    }
    let fd = fd as i32;
    let still_ours = listed_in(pid, dir);
    let r = if still_ours {
        // SAFETY: fd is a valid pidfd; a null siginfo is allowed.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd,
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        }
    } else {
        0
    };
    let err = std::io::Error::last_os_error();
    // SAFETY: fd came from pidfd_open and is closed once.
    unsafe { libc::close(fd) };
    if r < 0 && err.raw_os_error() != Some(libc::ESRCH) {
        return Err(Error::io(format!("SIGKILL to pid {pid}"), err));
    }
    Ok(())
}

/// Room left for more memory in the memory cgroups this process is subject to: the least
/// `limit - usage` over its memory cgroup and the ancestors visible here, with the cgroup
/// that sets it. `None` when no limit applies (or no memory controller is mounted).
pub fn memory_headroom() -> Option<(u64, PathBuf)> {
    let hs = hierarchies();
    let h = hs
        .iter()
        .find(|h| h.version == Version::V1 && h.controllers.iter().any(|c| c == "memory"))
        .or_else(|| hs.iter().find(|h| h.version == Version::V2))?;
    let (limit_file, usage_file) = match h.version {
        Version::V1 => ("memory.limit_in_bytes", "memory.usage_in_bytes"),
        Version::V2 => ("memory.max", "memory.current"),
    };
    let mut best: Option<(u64, PathBuf)> = None;
    let mut dir = h.own.clone();
    loop {
        let limit = std::fs::read_to_string(dir.join(limit_file))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        let usage = std::fs::read_to_string(dir.join(usage_file))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        // v1 writes "no limit" as a huge page-rounded number; v2 as "max" (parse fails).
        if let (Some(l), Some(u)) = (limit, usage) {
            if l < (1u64 << 60) {
                let room = l.saturating_sub(u);
                if best.as_ref().is_none_or(|(b, _)| room < *b) {
                    best = Some((room, dir.clone()));
                }
            }
        }
        if dir == h.mount {
            break;
        }
        match dir.parent() {
            Some(p) if p.starts_with(&h.mount) => dir = p.to_path_buf(),
            _ => break,
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,xattr,cpu,cpuacct
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
50 31 0:39 /inner /mnt/my\\040cg rw - cgroup cgroup rw,pids
";

    const PROC_CGROUP: &str = "\
9:name=systemd:/
8:pids:/inner/x
4:memory:/process_api/f0dd
1:cpu:/
0::/
";

    /// A cgroup file the kernel lacks (`cgroup.kill` before Linux 5.14) must read as
    /// missing, not as a permission error: cgroupfs answers `O_CREAT` with `EACCES`.
    #[test]
    fn a_missing_cgroup_file_is_not_found_not_permission_denied() {
        let Some(h) = hierarchies().into_iter().find(|h| h.version == Version::V2) else {
            eprintln!("SKIPPED: no cgroup2 hierarchy mounted");
            return;
        };
        let missing = h.own.join("cgroup.no-such-file-chaos-test");
        let e = write_existing(&missing, b"1").unwrap_err();
        assert_eq!(e.kind(), IoKind::NotFound, "{e}");
        assert!(!missing.exists());
    }

    #[test]
    fn parses_hybrid_layout() {
        let mounts = parse_mountinfo(MOUNTINFO);
        assert_eq!(mounts.len(), 6);
        assert_eq!(mounts[5].mount, Path::new("/mnt/my cg"));
        let hs = resolve(&mounts, &parse_proc_cgroup(PROC_CGROUP));
        let find = |c: &str| hs.iter().find(|h| h.controllers.iter().any(|x| x == c));
        assert_eq!(
            find("memory").unwrap().own,
            Path::new("/sys/fs/cgroup/memory/process_api/f0dd")
        );
        assert_eq!(find("cpu").unwrap().own, Path::new("/sys/fs/cgroup/cpu"));
        assert_eq!(find("pids").unwrap().own, Path::new("/mnt/my cg/x"));
        let v2 = hs.iter().find(|h| h.version == Version::V2).unwrap();
        assert_eq!(v2.own, Path::new("/sys/fs/cgroup/unified"));
        // cpu,cpuacct is not our "1:cpu" line: not matched.
        assert!(!hs
            .iter()
            .any(|h| h.controllers.iter().any(|c| c == "cpuacct")));
    }

    #[test]
    fn plans_v2_plus_missing_v1_controllers() {
        let hs = resolve(&parse_mountinfo(MOUNTINFO), &parse_proc_cgroup(PROC_CGROUP));
        let p = plan_in(&hs, "run-1-1", &["memory"]).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].version, Version::V2);
        assert_eq!(
            p[0].dir,
            Path::new("/sys/fs/cgroup/unified/chaos-agent-run-1-1")
        );
        assert_eq!(
            p[1].dir,
            Path::new("/sys/fs/cgroup/memory/process_api/f0dd/chaos-agent-run-1-1")
        );
        // When cgroup2 offers memory, no v1 group is used.
        let mut hs2 = hs.clone();
        for h in hs2.iter_mut().filter(|h| h.version == Version::V2) {
            h.controllers = vec!["memory".into()];
        }
        assert_eq!(plan_in(&hs2, "x", &["memory"]).unwrap().len(), 1);
        assert!(plan_in(&[], "x", &["memory"]).unwrap().is_empty());
        for bad in ["", "a/b", ".."] {
            assert!(plan_in(&hs, bad, &[]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cgroup_outside_the_mount_root_is_skipped() {
        assert_eq!(dir_in_mount(Path::new("/m"), "/a", "/b/c"), None);
        assert_eq!(dir_in_mount(Path::new("/m"), "/a", "/ab"), None);
        assert_eq!(
            dir_in_mount(Path::new("/m"), "/a", "/a/b"),
            Some(PathBuf::from("/m/b"))
        );
        assert_eq!(
            dir_in_mount(Path::new("/m"), "/", "/"),
            Some(PathBuf::from("/m"))
        );
    }

    #[test]
    fn check_ours_refuses_foreign_names() {
        let c = FaultCgroup {
            version: Version::V1,
            dir: "/sys/fs/cgroup/memory/user.slice".into(),
            controllers: vec![],
        };
        assert_eq!(c.check_ours().unwrap_err().kind(), ErrorKind::Drifted);
        let c = FaultCgroup {
            version: Version::V1,
            dir: "/tmp/chaos-agent-x".into(),
            controllers: vec![],
        };
        assert_eq!(c.check_ours().unwrap_err().kind(), ErrorKind::Drifted);
    }

    #[test]
    fn check_for_wants_exactly_the_name_derived_from_the_fault_id() {
        let hs = hierarchies();
        let Some(v2) = hs.iter().find(|h| h.version == Version::V2) else {
            eprintln!("SKIPPED {}: no cgroup2 hierarchy", module_path!());
            return;
        };
        let ours = FaultCgroup {
            version: Version::V2,
            dir: v2.own.join("chaos-agent-run-1-1"),
            controllers: vec![],
        };
        ours.check_for("run-1-1").unwrap();
        // Another fault's cgroup, a foreign cgroup, a path that climbs out, the wrong
        // version: all refused before anything is touched.
        let bad = [
            ("run-1-2", v2.own.join("chaos-agent-run-1-1"), Version::V2),
            ("run-1-1", v2.own.join("user.slice"), Version::V2),
            (
                "run-1-1",
                v2.own.join("../chaos-agent-run-1-1"),
                Version::V2,
            ),
            (
                "run-1-1",
                PathBuf::from("/tmp/chaos-agent-run-1-1"),
                Version::V2,
            ),
            ("a/b", v2.own.join("chaos-agent-a/b"), Version::V2),
        ];
        for (id, dir, version) in bad {
            let c = FaultCgroup {
                version,
                dir: dir.clone(),
                controllers: vec![],
            };
            let e = c.check_for(id).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Drifted, "{id} {}: {e}", dir.display());
        }
    }

    #[test]
    fn finds_fault_cgroups_anywhere_in_the_hierarchy_only_for_known_ids() {
        if !crate::host::is_root() {
            eprintln!("SKIPPED {}: needs root", module_path!());
            return;
        }
        let hs = hierarchies();
        let Some(v2) = hs.iter().find(|h| h.version == Version::V2) else {
            eprintln!("SKIPPED {}: no cgroup2 hierarchy", module_path!());
            return;
        };
        let id = format!("find-{}", crate::host::random_hex(6));
        let other = format!("find-{}", crate::host::random_hex(6));
        // Not under our own cgroup: one level below a sibling, as if another agent process
        // (in another cgroup) had made it.
        let parent = v2
            .mount
            .join(format!("chaos-test-parent-{}", crate::host::random_hex(4)));
        std::fs::create_dir(&parent).unwrap();
        let dir = parent.join(format!("{PREFIX}{id}"));
        std::fs::create_dir(&dir).unwrap();
        let found = find_fault_cgroups(&[other.clone(), id.clone()]);
        let mine: Vec<_> = found.iter().filter(|(i, _)| *i == id).collect();
        assert_eq!(mine.len(), 1, "{found:?}");
        assert_eq!(mine[0].1.dir, dir);
        assert_eq!(mine[0].1.version, Version::V2);
        mine[0].1.check_for(&id).unwrap();
        assert!(!found.iter().any(|(i, _)| *i == other));
        assert!(find_fault_cgroups(std::slice::from_ref(&other)).is_empty());
        assert!(find_fault_cgroups(&[]).is_empty());
        FaultCgroup {
            version: Version::V2,
            dir: dir.clone(),
            controllers: vec![],
        }
        .remove(Duration::from_secs(2))
        .unwrap();
        std::fs::remove_dir(&parent).unwrap();
        assert!(find_fault_cgroups(std::slice::from_ref(&id)).is_empty());
    }

    #[test]
    fn reads_oom_kill_counters() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(read_u64_field(v1, "oom_kill"), Some(3));
        let v2 = "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(read_u64_field(v2, "oom_kill"), Some(1));
        assert_eq!(read_u64_field(v2, "nope"), None);
    }
}
