//! What this host offers the fault kinds, found by cheap probes that change nothing: the
//! kernel release, pidfd system calls, `cgroup.kill`, the cgroup layout, systemd as init,
//! kernel modules (qdiscs, nftables), and the effective capabilities.
//!
//! [`host`] probes once per process and keeps the answer. Each kind turns it into an
//! [`Availability`](crate::Availability) in its own `availability()`; `chaos-agent doctor`
//! prints both. Nothing here loads a module, creates a cgroup or a namespace, or sends a
//! signal to anything but this process (signal 0, which delivers nothing).
//!
//! Where a probe cannot tell (no `/lib/modules`, no kernel config), it says
//! [`ModuleState::Unknown`] rather than guessing: the kind's own `plan` still checks.

use std::collections::HashMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Serialize;

use super::cgroup::{self, Version};
use crate::Availability;

/// A capability the kinds use, by its number in `linux/capability.h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Cap {
    /// `CAP_KILL` (5): signal processes of other users.
    Kill = 5,
    /// `CAP_NET_ADMIN` (12): qdiscs and nftables.
    NetAdmin = 12,
    /// `CAP_SYS_ADMIN` (21): enter other namespaces (`setns`), mount.
    SysAdmin = 21,
    /// `CAP_SYS_RESOURCE` (24): exceed resource limits, ext4 reserved blocks.
    SysResource = 24,
}

impl Cap {
    /// Every capability the kinds look at.
    pub const ALL: [Cap; 4] = [Cap::SysAdmin, Cap::NetAdmin, Cap::Kill, Cap::SysResource];

    /// `CAP_SYS_ADMIN` and so on.
    pub fn name(self) -> &'static str {
        match self {
            Cap::Kill => "CAP_KILL",
            Cap::NetAdmin => "CAP_NET_ADMIN",
            Cap::SysAdmin => "CAP_SYS_ADMIN",
            Cap::SysResource => "CAP_SYS_RESOURCE",
        }
    }
}

/// How the cgroup filesystems are mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// Only cgroup2 (the unified hierarchy).
    V2Only,
    /// cgroup v1 controllers and a cgroup2 mount beside them (systemd's "hybrid").
    Hybrid,
    /// Only cgroup v1 hierarchies.
    V1Only,
    /// No cgroup filesystem mounted (or `/proc/self/mountinfo` unreadable).
    None,
}

impl Layout {
    /// For people: `v2 only`, `hybrid (v1 + v2)`, ...
    pub fn human(self) -> &'static str {
        match self {
            Layout::V2Only => "v2 only (unified)",
            Layout::Hybrid => "hybrid (v1 controllers + v2)",
            Layout::V1Only => "v1 only (legacy)",
            Layout::None => "not mounted",
        }
    }
}

/// The cgroup mounts as `/proc/self/mountinfo` lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CgroupLayout {
    /// v1 / hybrid / v2 only / none.
    pub layout: Layout,
    /// Where cgroup2 is mounted, if it is.
    pub v2_mount: Option<PathBuf>,
    /// The v1 controllers mounted (`cpu`, `memory`, `blkio`, `pids`, `freezer`, ...), sorted.
    pub v1_controllers: Vec<String>,
}

/// Whether a kernel module (a qdisc, nftables) is in this kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModuleState {
    /// Built into the kernel.
    Builtin,
    /// Loaded as a module.
    Loaded,
    /// Installed under `/lib/modules/$(uname -r)`; the kernel loads it on first use.
    Loadable,
    /// The kernel config builds it as a module, but no module file is installed.
    NotInstalled,
    /// The kernel is configured without it.
    NotBuilt,
    /// Neither built in nor installed, by the module lists under `/lib/modules`.
    Missing,
    /// Nothing here says (no kernel config, no `/lib/modules`, not loaded).
    Unknown,
}

impl ModuleState {
    /// Whether the kernel can use it now (or will load it on first use).
    pub fn present(self) -> bool {
        matches!(
            self,
            ModuleState::Builtin | ModuleState::Loaded | ModuleState::Loadable
        )
    }

    /// Whether it is known to be absent.
    pub fn absent(self) -> bool {
        matches!(
            self,
            ModuleState::NotInstalled | ModuleState::NotBuilt | ModuleState::Missing
        )
    }

    /// For people.
    pub fn human(self) -> &'static str {
        match self {
            ModuleState::Builtin => "built in",
            ModuleState::Loaded => "loaded",
            ModuleState::Loadable => "installed (loaded on first use)",
            ModuleState::NotInstalled => "a module of this kernel, but not installed",
            ModuleState::NotBuilt => "not built into this kernel, per its config",
            ModuleState::Missing => "neither built in nor installed",
            ModuleState::Unknown => "unknown (no kernel config or module list to read)",
        }
    }
}

/// systemd, as far as it is the init system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Init {
    /// The name of PID 1 (`/proc/1/comm`), empty when unreadable.
    pub pid1: String,
    /// Whether systemd booted this system (`/run/systemd/system` is a directory), which is
    /// what the service kinds check.
    pub systemd: bool,
    /// `systemctl --version`'s first line without the leading `systemd `, e.g.
    /// `252 (252.39-1~deb12u1)`; `None` when systemd is not init or systemctl is missing.
    pub systemd_version: Option<String>,
}

/// Everything the probes found. See [`host`].
#[derive(Debug, Clone, Serialize)]
pub struct Host {
    /// `uname -r`.
    pub kernel: String,
    /// `PRETTY_NAME` of `/etc/os-release`.
    pub distro: String,
    /// `pidfd_open(2)` works (Linux 5.3).
    pub pidfd_open: bool,
    /// `pidfd_send_signal(2)` works (Linux 5.1); tried with signal 0 on our own pidfd.
    pub pidfd_send_signal: bool,
    /// The cgroup mounts.
    pub cgroups: CgroupLayout,
    /// Whether cgroup2 offers `cgroup.kill` (Linux 5.14); `None` without cgroup2.
    pub cgroup_kill: Option<bool>,
    /// The hierarchies in which this process may create a child cgroup (write access to
    /// its own cgroup directory): `v2`, and `v1 (cpu memory ...)` with the v1 controllers.
    pub cgroups_writable: Vec<String>,
    /// Whether a child cgroup created by this process would carry the memory controller
    /// (a v1 memory hierarchy, or `memory` in our cgroup2 `cgroup.subtree_control`).
    pub memory_controller: bool,
    /// PID 1 and systemd.
    pub init: Init,
    /// Effective user id.
    pub euid: u32,
    /// Effective capabilities (the `CapEff` mask of `/proc/self/status`); `None` if unreadable.
    pub cap_eff: Option<u64>,
    /// Where the kernel config was read from (`/proc/config.gz`, `/boot/config-...`), if anywhere.
    pub kernel_config: Option<String>,
    #[serde(skip)]
    kconfig: HashMap<String, char>,
    #[serde(skip)]
    modules_dir: PathBuf,
}

/// The host, probed once per process (the first call takes a few milliseconds).
pub fn host() -> &'static Host {
    static HOST: OnceLock<Host> = OnceLock::new();
    HOST.get_or_init(Host::probe)
}

impl Host {
    fn probe() -> Host {
        let kernel = read_trim("/proc/sys/kernel/osrelease");
        let (pidfd_open, pidfd_send_signal) = probe_pidfd();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let cgroups = parse_cgroup_layout(&mountinfo);
        let hierarchies = cgroup::hierarchies();
        let v2 = hierarchies.iter().find(|h| h.version == Version::V2);
        let cgroup_kill = v2.map(|h| {
            // The root cgroup has no cgroup.kill; below it the file says for sure.
            if h.own.join("cgroup.kill").exists() {
                true
            } else {
                kernel_at_least(&kernel, 5, 14).unwrap_or(false)
            }
        });
        let mut cgroups_writable = Vec::new();
        if hierarchies
            .iter()
            .any(|h| h.version == Version::V2 && writable(&h.own))
        {
            cgroups_writable.push("v2".to_string());
        }
        let v1: Vec<&str> = hierarchies
            .iter()
            .filter(|h| h.version == Version::V1 && writable(&h.own))
            .flat_map(|h| h.controllers.iter().map(String::as_str))
            .filter(|c| super::cgroup::is_controller(c))
            .collect();
        if !v1.is_empty() {
            cgroups_writable.push(format!("v1 ({})", v1.join(" ")));
        }
        let memory_controller = hierarchies
            .iter()
            .any(|h| h.controllers.iter().any(|c| c == "memory"));
        let (kernel_config, kconfig) = match read_kernel_config(&kernel) {
            Some((from, text)) => (Some(from), parse_kconfig(&text)),
            None => (None, HashMap::new()),
        };
        Host {
            modules_dir: Path::new("/lib/modules").join(&kernel),
            distro: os_release_name(
                &std::fs::read_to_string("/etc/os-release")
                    .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
                    .unwrap_or_default(),
            ),
            kernel,
            pidfd_open,
            pidfd_send_signal,
            cgroups,
            cgroup_kill,
            cgroups_writable,
            memory_controller,
            init: probe_init(),
            // SAFETY: geteuid has no preconditions and cannot fail.
            euid: unsafe { libc::geteuid() },
            cap_eff: parse_cap_eff(
                &std::fs::read_to_string("/proc/self/status").unwrap_or_default(),
            ),
            kernel_config,
            kconfig,
        }
    }

    /// Whether the effective capability set holds `cap` (false when unreadable).
    pub fn has_cap(&self, cap: Cap) -> bool {
        self.cap_eff.is_some_and(|m| m & (1u64 << cap as u32) != 0)
    }

    /// Whether the running kernel is at least `major.minor` (`None` when the release does
    /// not parse).
    pub fn kernel_at_least(&self, major: u32, minor: u32) -> Option<bool> {
        kernel_at_least(&self.kernel, major, minor)
    }

    /// Whether kernel module `name` (e.g. `sch_netem`), configured by `config` (e.g.
    /// `CONFIG_NET_SCH_NETEM`), is in this kernel. Reads `/sys/module`, the kernel config
    /// and `/lib/modules/$(uname -r)`; loads nothing.
    pub fn module(&self, name: &str, config: &str) -> ModuleState {
        let sys = Path::new("/sys/module").join(name);
        let sys = if sys.join("initstate").exists() {
            SysModule::Loaded
        } else if sys.is_dir() {
            SysModule::Builtin
        } else {
            SysModule::Absent
        };
        let builtin = std::fs::read_to_string(self.modules_dir.join("modules.builtin"))
            .ok()
            .map(|t| lists_module(&t, name));
        let file = std::fs::read_to_string(self.modules_dir.join("modules.dep"))
            .ok()
            .map(|t| lists_module(&t, name));
        decide_module(sys, self.kconfig.get(config).copied(), builtin, file)
    }
}

impl Host {
    /// What the kinds that fork stressor processes (`cpu.stress`, `memory.stress`,
    /// `disk.io`) can count on: a cgroup of their own (so recovery finds workers whose pids
    /// never reached the journal), `cgroup.kill`, pidfds, and, with `memory`, the memory
    /// controller that charges the stressor's pages to its cgroup.
    pub fn stressor_availability(&self, memory: bool) -> Availability {
        let mut a = Availability::available();
        let alone = "the workers run without a cgroup of their own: they still die with the \
                     agent (PR_SET_PDEATHSIG), but recovery in a fresh process cannot find \
                     workers whose pids a crash kept out of the journal";
        if self.cgroups.layout == Layout::None {
            a.degrade(
                format!("no cgroup filesystem is mounted, so {alone}"),
                Some("mount cgroup2 on /sys/fs/cgroup (every systemd host does)".into()),
            );
        } else if self.cgroups_writable.is_empty() {
            a.degrade(
                format!(
                    "this process may not create a cgroup under its own (no write access), so {alone}"
                ),
                Some(
                    "run the agent as root, or delegate its cgroup to it (systemd: Delegate=yes)"
                        .into(),
                ),
            );
        } else if self.cgroup_kill != Some(true) {
            a.degrade(
                "no cgroup.kill (cgroup2, Linux 5.14): revert kills what is left in the \
                 fault's cgroup one process at a time, each through a pidfd taken while it is \
                 listed there",
                None,
            );
        }
        if memory && !self.memory_controller {
            a.degrade(
                "no memory controller for a cgroup of ours (no v1 memory hierarchy, and \
                 memory is not in our cgroup2 cgroup.subtree_control): the stressor's pages \
                 are charged to the agent's cgroup and OOM kills among them are not counted",
                Some(
                    "v1: mount the memory controller. v2: the agent's cgroup must list memory \
                     in cgroup.subtree_control, which cgroup v2 allows only in a cgroup with no \
                     process of its own: a parent that enables it for an empty child cgroup the \
                     agent runs in (this version does not move itself into one under systemd)"
                        .into(),
                ),
            );
        }
        if !self.pidfd_open {
            a.degrade(
                "pidfd_open is missing (Linux 5.3): workers are killed by pid after \
                 re-checking their start time (they are the agent's children until reaped, \
                 so their pids cannot be reused meanwhile)",
                None,
            );
        }
        a
    }
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn writable(dir: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: `c` is NUL-terminated; access(2) only reads it.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

/// `pidfd_open(getpid())`, then `pidfd_send_signal(fd, 0)`: signal 0 checks permission and
/// existence and delivers nothing.
fn probe_pidfd() -> (bool, bool) {
    // SAFETY: pidfd_open takes a pid and flags; no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
    if fd < 0 {
        // ENOSYS before 5.3; pidfd_send_signal (5.1) may exist, but is unused without a pidfd.
        return (false, false);
    }
    let fd = fd as i32;
    // SAFETY: fd is a valid pidfd; a null siginfo is allowed; signal 0 delivers nothing.
    let sent = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd,
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    } == 0;
    // SAFETY: fd was returned by pidfd_open and is closed once.
    unsafe { libc::close(fd) };
    (true, sent)
}

/// Whether release `r` (`6.1.0-13-amd64`, `5.14.0-362.el9.x86_64`) is at least `major.minor`.
pub fn kernel_at_least(r: &str, major: u32, minor: u32) -> Option<bool> {
    let mut it = r.split(|c: char| !c.is_ascii_digit());
    let a: u32 = it.next()?.parse().ok()?;
    let b: u32 = it.next()?.parse().ok()?;
    Some((a, b) >= (major, minor))
}

/// The `PRETTY_NAME` of an os-release file (`NAME VERSION_ID` without it).
pub fn os_release_name(text: &str) -> String {
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.trim().trim_matches('"').trim_matches('\'').to_string())
    };
    get("PRETTY_NAME")
        .or_else(|| {
            let name = get("NAME")?;
            Some(match get("VERSION_ID") {
                Some(v) => format!("{name} {v}"),
                None => name,
            })
        })
        .unwrap_or_default()
}

/// The effective capability mask (`CapEff:` line, hex) of a `/proc/PID/status` text.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// The cgroup mounts of a `/proc/self/mountinfo` text.
pub fn parse_cgroup_layout(mountinfo: &str) -> CgroupLayout {
    use super::cgroup::{is_controller, parse_mountinfo, Version};
    let mounts = parse_mountinfo(mountinfo);
    let v2_mount = mounts
        .iter()
        .find(|m| m.version == Version::V2)
        .map(|m| m.mount.clone());
    let mut v1: Vec<String> = mounts
        .iter()
        .filter(|m| m.version == Version::V1)
        .flat_map(|m| m.options.iter().filter(|o| is_controller(o)).cloned())
        .collect();
    v1.sort();
    v1.dedup();
    let layout = match (v2_mount.is_some(), !v1.is_empty()) {
        (true, true) => Layout::Hybrid,
        (true, false) => Layout::V2Only,
        (false, true) => Layout::V1Only,
        (false, false) => Layout::None,
    };
    CgroupLayout {
        layout,
        v2_mount,
        v1_controllers: v1,
    }
}

/// The version in `systemctl --version` output: `252 (252.39-1~deb12u1)` from
/// `systemd 252 (252.39-1~deb12u1)`.
pub fn parse_systemd_version(out: &str) -> Option<String> {
    let first = out.lines().next()?.trim();
    let v = first.strip_prefix("systemd ")?.trim();
    v.split_whitespace()
        .next()?
        .parse::<u32>()
        .ok()
        .map(|_| v.to_string())
}

fn probe_init() -> Init {
    let systemd = Path::new("/run/systemd/system").is_dir();
    Init {
        pid1: read_trim("/proc/1/comm"),
        systemd,
        systemd_version: if systemd { systemctl_version() } else { None },
    }
}

/// `systemctl --version` (argv, no shell), given two seconds.
fn systemctl_version() -> Option<String> {
    use std::process::{Command, Stdio};
    let mut child = Command::new("systemctl")
        .arg("--version")
        .env("LC_ALL", "C")
        .env("SYSTEMD_PAGER", "")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
    let mut out = String::new();
    child.stdout.take()?.read_to_string(&mut out).ok()?;
    parse_systemd_version(&out)
}

/// The kernel config: `/proc/config.gz` (gzip), else `/boot/config-RELEASE`.
fn read_kernel_config(release: &str) -> Option<(String, String)> {
    if let Ok(f) = std::fs::File::open("/proc/config.gz") {
        let mut text = String::new();
        let mut gz = flate2::read::GzDecoder::new(f).take(16 << 20);
        if gz.read_to_string(&mut text).is_ok() && !text.is_empty() {
            return Some(("/proc/config.gz".into(), text));
        }
    }
    let boot = format!("/boot/config-{release}");
    std::fs::read_to_string(&boot).ok().map(|t| (boot, t))
}

/// `CONFIG_X=y|m` lines, and `# CONFIG_X is not set` as `n`.
pub fn parse_kconfig(text: &str) -> HashMap<String, char> {
    let mut out = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            if let Some(sym) = rest.strip_suffix(" is not set") {
                if sym.starts_with("CONFIG_") {
                    out.insert(sym.to_string(), 'n');
                }
            }
        } else if let Some((sym, v)) = line.split_once('=') {
            if sym.starts_with("CONFIG_") && (v == "y" || v == "m") {
                out.insert(sym.to_string(), if v == "y" { 'y' } else { 'm' });
            }
        }
    }
    out
}

/// Whether a `modules.builtin` / `modules.dep` text lists module `name`
/// (`kernel/net/sched/sch_netem.ko`, `.ko.xz`, `.ko.zst`, ...). `-` and `_` are the same in
/// module names.
fn lists_module(text: &str, name: &str) -> bool {
    let want = name.replace('-', "_");
    text.lines().any(|l| {
        let path = l.split(':').next().unwrap_or("").trim();
        let base = path.rsplit('/').next().unwrap_or(path);
        base.split_once(".ko")
            .is_some_and(|(stem, _)| stem.replace('-', "_") == want)
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SysModule {
    Absent,
    Builtin,
    Loaded,
}

fn decide_module(
    sys: SysModule,
    config: Option<char>,
    builtin_list: Option<bool>,
    installed: Option<bool>,
) -> ModuleState {
    match (sys, config, builtin_list, installed) {
        (SysModule::Loaded, ..) => ModuleState::Loaded,
        (SysModule::Builtin, ..) | (_, Some('y'), ..) | (_, _, Some(true), _) => {
            ModuleState::Builtin
        }
        (_, _, _, Some(true)) => ModuleState::Loadable,
        (_, Some('m'), ..) => ModuleState::NotInstalled,
        (_, Some('n'), ..) => ModuleState::NotBuilt,
        (_, None, Some(false), Some(false)) => ModuleState::Missing,
        _ => ModuleState::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
";

    #[test]
    fn cgroup_layouts_from_mountinfo() {
        let h = parse_cgroup_layout(HYBRID);
        assert_eq!(h.layout, Layout::Hybrid);
        assert_eq!(
            h.v2_mount.as_deref(),
            Some(Path::new("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            h.v1_controllers,
            ["blkio", "cpu", "cpuacct", "freezer", "memory", "pids"]
        );

        let v2 = parse_cgroup_layout(
            "25 20 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n",
        );
        assert_eq!(v2.layout, Layout::V2Only);
        assert_eq!(v2.v2_mount.as_deref(), Some(Path::new("/sys/fs/cgroup")));
        assert!(v2.v1_controllers.is_empty());

        // CentOS 7: v1 only; a name= hierarchy carries no controller.
        let v1 = parse_cgroup_layout(
            "24 18 0:20 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,release_agent=/x,name=systemd\n\
             27 18 0:23 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
             28 18 0:24 / /sys/fs/cgroup/cpu\\054cpuacct rw - cgroup cgroup rw,cpuacct,cpu\n",
        );
        assert_eq!(v1.layout, Layout::V1Only);
        assert_eq!(v1.v1_controllers, ["cpu", "cpuacct", "memory"]);
        assert_eq!(v1.v2_mount, None);

        let none = parse_cgroup_layout("22 1 8:1 / / rw - ext4 /dev/sda1 rw\ngarbage\n");
        assert_eq!(none.layout, Layout::None);
        // A mount point with a space.
        let sp = parse_cgroup_layout("1 1 0:1 / /mnt/my\\040cg rw - cgroup2 cgroup2 rw\n");
        assert_eq!(sp.v2_mount.as_deref(), Some(Path::new("/mnt/my cg")));
    }

    #[test]
    fn capabilities_from_status() {
        let root = "Name:\tx\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\nCapEff:\t000001ffffffffff\n";
        let m = parse_cap_eff(root).unwrap();
        for c in Cap::ALL {
            assert!(m & (1 << c as u32) != 0, "{}", c.name());
        }
        // Only CAP_NET_ADMIN (bit 12) and CAP_KILL (bit 5).
        let some = parse_cap_eff("CapEff:\t0000000000001020\n").unwrap();
        assert_eq!(some, (1 << 12) | (1 << 5));
        assert_eq!(some & (1 << Cap::SysAdmin as u32), 0);
        assert_eq!(parse_cap_eff("CapEff:\tzz\n"), None);
        assert_eq!(parse_cap_eff("Name: x\n"), None);
    }

    #[test]
    fn systemd_versions() {
        assert_eq!(
            parse_systemd_version(
                "systemd 252 (252.39-1~deb12u1)\n+PAM +AUDIT +SELINUX +APPARMOR\n"
            )
            .as_deref(),
            Some("252 (252.39-1~deb12u1)")
        );
        assert_eq!(
            parse_systemd_version("systemd 219\n +PAM +AUDIT\n").as_deref(),
            Some("219")
        );
        assert_eq!(parse_systemd_version("systemctl: command not found"), None);
        assert_eq!(parse_systemd_version("systemd x.y"), None);
        assert_eq!(parse_systemd_version(""), None);
    }

    #[test]
    fn kernel_releases_and_os_release() {
        assert_eq!(kernel_at_least("6.18.44-fc-v1272", 5, 14), Some(true));
        assert_eq!(kernel_at_least("5.10.0-28-amd64", 5, 14), Some(false));
        assert_eq!(kernel_at_least("5.14.0-362.el9.x86_64", 5, 14), Some(true));
        assert_eq!(kernel_at_least("3.10.0-1160.el7.x86_64", 5, 3), Some(false));
        assert_eq!(kernel_at_least("", 5, 3), None);
        assert_eq!(
            os_release_name(
                "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n"
            ),
            "Debian GNU/Linux 12 (bookworm)"
        );
        assert_eq!(
            os_release_name("NAME=Alpine\nVERSION_ID=3.19\n"),
            "Alpine 3.19"
        );
        assert_eq!(os_release_name(""), "");
    }

    #[test]
    fn kernel_modules_from_config_and_module_lists() {
        let cfg = parse_kconfig(
            "CONFIG_NET_SCH_HTB=y\nCONFIG_NET_SCH_TBF=m\n# CONFIG_NET_SCH_NETEM is not set\nCONFIG_X=\"s\"\n",
        );
        assert_eq!(cfg.get("CONFIG_NET_SCH_HTB"), Some(&'y'));
        assert_eq!(cfg.get("CONFIG_NET_SCH_TBF"), Some(&'m'));
        assert_eq!(cfg.get("CONFIG_NET_SCH_NETEM"), Some(&'n'));
        assert_eq!(cfg.get("CONFIG_X"), None);

        let dep = "kernel/net/sched/sch_netem.ko.xz: \nkernel/net/sched/sch_htb.ko: kernel/x.ko\n";
        assert!(lists_module(dep, "sch_netem"));
        assert!(lists_module(dep, "sch_htb"));
        assert!(!lists_module(dep, "sch_tbf"));
        assert!(!lists_module(dep, "sch_net"));

        use ModuleState as M;
        use SysModule as S;
        assert_eq!(decide_module(S::Loaded, Some('m'), None, None), M::Loaded);
        assert_eq!(decide_module(S::Builtin, None, None, None), M::Builtin);
        assert_eq!(decide_module(S::Absent, Some('y'), None, None), M::Builtin);
        assert_eq!(
            decide_module(S::Absent, None, Some(true), Some(false)),
            M::Builtin
        );
        assert_eq!(
            decide_module(S::Absent, Some('m'), Some(false), Some(true)),
            M::Loadable
        );
        assert_eq!(
            decide_module(S::Absent, Some('m'), None, None),
            M::NotInstalled
        );
        assert_eq!(
            decide_module(S::Absent, Some('m'), Some(false), Some(false)),
            M::NotInstalled
        );
        assert_eq!(decide_module(S::Absent, Some('n'), None, None), M::NotBuilt);
        assert_eq!(
            decide_module(S::Absent, None, Some(false), Some(false)),
            M::Missing
        );
        assert_eq!(decide_module(S::Absent, None, None, None), M::Unknown);
        assert!(M::Loadable.present() && M::NotBuilt.absent() && !M::Unknown.absent());
    }

    #[test]
    fn this_host_is_probed_without_panicking() {
        let h = host();
        assert!(!h.kernel.is_empty());
        // This process can always signal itself; kernels since 5.3 have pidfd_open.
        if h.kernel_at_least(5, 3) == Some(true) {
            assert!(h.pidfd_open && h.pidfd_send_signal, "{h:?}");
        }
    }
}
