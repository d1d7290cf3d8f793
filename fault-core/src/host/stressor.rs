//! Stressor processes: children that burn CPU, hold memory or drive I/O for a fault, kept
//! apart from the agent so the agent survives them, and killed for sure on revert or when
//! the agent dies.
//!
//! # How a stressor is started
//!
//! [`spawn`] `fork(2)`s. No `exec`: the child runs the fault's [`Work`] in the copy of the
//! agent it is, so any embedding binary works without cooperating (re-executing
//! `/proc/self/exe` would need every binary that links a fault crate to recognise a
//! "become a stressor" argument). Because the agent is multi-threaded, the child may only
//! make async-signal-safe calls: the setup below and every [`Work`] use raw system calls on
//! memory prepared before the fork, never the allocator, locks or std I/O.
//!
//! In the child, before any work:
//!
//! 1. `prctl(PR_SET_PDEATHSIG, SIGKILL)`, then `getppid()` is checked against the agent's
//!    pid, so an agent that died during the fork is noticed;
//! 2. its own process group (a Ctrl-C at the terminal reaches the agent, which reverts,
//!    not the stressors), default signal dispositions and an empty signal mask (the agent's
//!    handlers must not swallow a `SIGTERM`);
//! 3. stdin/stdout/stderr on `/dev/null` and every other inherited descriptor closed, so a
//!    surviving stressor holds neither the agent's state lock nor a pipe someone waits on
//!    (`close_range`, or on kernels before 5.9 each descriptor listed in `/proc/self/fd`);
//! 4. `oom_score_adj` 1000, so the OOM killer takes a stressor before anything else
//!    ([`protect_self`] lowers the agent's own);
//! 5. it joins the fault's cgroups (writing `0` to each `cgroup.procs`) **before** it
//!    allocates anything, so its memory is charged to the fault's cgroup from the start;
//! 6. CPU affinity, when asked, then [`Work::prepare`] (open files, map memory);
//!
//! and it reports the outcome through a close-on-exec pipe, so [`spawn`] returns an error
//! naming the step and errno instead of a pid that dies at once.
//!
//! # Dying with the agent
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked dies, not the process. The runner
//! calls `inject` from a thread per fault that ends with the fault, so forking there would
//! kill stressors early (or, with a thread pool, never). All forks therefore happen on one
//! dedicated thread, started on first use and never ended: it dies only with the process,
//! and then every stressor gets `SIGKILL`. Stressors also check [`orphaned`] as they work,
//! and each fault's cgroup is named after its fault id, so recovery in a fresh process
//! kills whatever is left in it even when the journaled receipt never got the pids (a crash
//! between fork and journal).
//!
//! # Killing
//!
//! [`stop`] kills the recorded processes by [`ProcessId`] (pidfd, safe from PID reuse),
//! and everything in the fault's cgroups (`cgroup.kill`, or per pid through a pidfd taken
//! while the pid is listed in the cgroup), reaps the ones that are this process's children,
//! waits until none is left and removes the cgroups.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::cgroup::FaultCgroup;
use super::process::ProcessId;
use crate::{Error, ErrorKind, Result};

mod child;

/// The `oom_score_adj` every stressor sets for itself: the OOM killer's first choice.
pub const STRESSOR_OOM_SCORE_ADJ: i32 = 1000;

/// The `oom_score_adj` [`protect_self`] gives the agent.
pub const AGENT_OOM_SCORE_ADJ: i32 = -900;

/// What a stressor does once started.
///
/// # Safety
///
/// Both methods run in a child forked from a multi-threaded process. They may only make
/// async-signal-safe calls (raw system calls through `libc`, arithmetic, reads and writes of
/// memory prepared before the fork). They must not allocate or free, take a lock (including
/// stdout/stderr and `println!`), or panic: another thread of the parent may have held the
/// allocator's or a lock's mutex at the moment of the fork, and the child would deadlock.
/// Prepare strings (`CString`) and buffers in the value before calling [`spawn`]; keep
/// state that `prepare` hands to `run` in atomics.
pub unsafe trait Work: Send + Sync + 'static {
    /// Runs in the child after its setup, before [`spawn`] returns. Return `Err(errno)` to
    /// make `spawn` fail (the child then exits).
    fn prepare(&self) -> std::result::Result<(), i32> {
        Ok(())
    }

    /// The work. Runs until killed, or returns the exit code.
    fn run(&self) -> i32;
}

/// How to start a stressor.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Its name (`comm`, cut to 15 bytes), e.g. `"chaos-cpu"`.
    pub name: String,
    /// The fault's cgroups to join (created beforehand).
    pub cgroups: Vec<FaultCgroup>,
    /// Pin it to these CPUs.
    pub cpus: Option<Vec<usize>>,
}

/// Steps of the child's setup, as reported through the status pipe.
const STEP_OK: u8 = 0;
const STEP_PDEATHSIG: u8 = 1;
const STEP_STDIO: u8 = 2;
const STEP_OOM: u8 = 3;
const STEP_CGROUP: u8 = 4;
const STEP_AFFINITY: u8 = 5;
const STEP_PREPARE: u8 = 6;

fn step_name(step: u8) -> &'static str {
    match step {
        STEP_PDEATHSIG => "setting the parent-death signal",
        STEP_STDIO => "opening /dev/null for stdio",
        STEP_OOM => "setting oom_score_adj 1000",
        STEP_CGROUP => "joining the fault's cgroup",
        STEP_AFFINITY => "setting CPU affinity",
        STEP_PREPARE => "preparing its work",
        _ => "starting",
    }
}

/// Everything the child needs, prepared before the fork.
struct Prepared {
    name: [u8; 16],
    procs: Vec<CString>,
    cpuset: Option<libc::cpu_set_t>,
    work: Arc<dyn Work>,
    parent: i32,
}

struct Job {
    prepared: Prepared,
    reply: mpsc::Sender<std::io::Result<(i32, OwnedFd)>>,
}

/// The pid of the agent as seen by a stressor, set in the child (0 in the agent).
static PARENT: AtomicI32 = AtomicI32::new(0);

/// The long-lived thread that forks every stressor (see the module docs).
fn forker() -> Result<&'static mpsc::Sender<Job>> {
    static FORKER: OnceLock<std::result::Result<mpsc::Sender<Job>, String>> = OnceLock::new();
    FORKER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Job>();
            std::thread::Builder::new()
                .name("chaos-stressor-forker".into())
                .spawn(move || {
                    // The sender lives in a static, so this loop never ends: the thread
                    // lives as long as the process, and with it every PR_SET_PDEATHSIG.
                    for job in rx {
                        let r = fork_child(&job.prepared);
                        let _ = job.reply.send(r);
                    }
                })
                .map(|_| tx)
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!("cannot start the stressor thread: {e}"),
            )
        })
}

fn fork_child(p: &Prepared) -> std::io::Result<(i32, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: fds is a valid out array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the child only runs `child_main`, which makes async-signal-safe calls.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let e = std::io::Error::last_os_error();
        // SAFETY: both fds came from pipe2 and are closed once.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        return Err(e);
    }
    if pid == 0 {
        // SAFETY: we are the freshly forked child.
        unsafe { child::child_main(p, fds[1], fds[0]) }
    }
    // SAFETY: fds[1] came from pipe2 and is closed once; fds[0] is owned from here on.
    unsafe { libc::close(fds[1]) };
    Ok((pid, unsafe { OwnedFd::from_raw_fd(fds[0]) }))
}

/// Start a stressor running `work` (see the module docs for what the child does first).
/// Returns its identity once it has finished its setup and `prepare`; on any failure the
/// child is gone and the error names the step.
pub fn spawn(opts: &Options, work: Arc<dyn Work>) -> Result<ProcessId> {
    let mut name = [0u8; 16];
    for (d, s) in name.iter_mut().zip(opts.name.bytes().take(15)) {
        *d = s;
    }
    let procs = opts
        .cgroups
        .iter()
        .map(|c| {
            CString::new(c.procs_file().as_os_str().as_encoded_bytes())
                .map_err(|_| Error::invalid(format!("{} contains NUL", c.dir.display())))
        })
        .collect::<Result<Vec<_>>>()?;
    let cpuset = match &opts.cpus {
        None => None,
        Some(cpus) => {
            // SAFETY: an all-zero cpu_set_t is the empty set.
            let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
            for &c in cpus {
                if c >= libc::CPU_SETSIZE as usize {
                    return Err(Error::invalid(format!("CPU {c} is out of range")));
                }
                // SAFETY: c < CPU_SETSIZE was checked above.
                unsafe { libc::CPU_SET(c, &mut set) };
            }
            Some(set)
        }
    };
    let (tx, rx) = mpsc::channel();
    let job = Job {
        prepared: Prepared {
            name,
            procs,
            cpuset,
            work,
            parent: std::process::id() as i32,
        },
        reply: tx,
    };
    forker()?
        .send(job)
        .map_err(|_| Error::new(ErrorKind::Io, "the stressor thread is gone"))?;
    let (pid, status) = rx
        .recv()
        .map_err(|_| Error::new(ErrorKind::Io, "the stressor thread is gone"))?
        .map_err(|e| Error::io(format!("fork for stressor {}", opts.name), e))?;
    let id = ProcessId::of(pid);
    match read_status(&status, Duration::from_secs(10)) {
        Ok(Some([STEP_OK, ..])) => {
            // The child closes its end right after reporting; wait for that (EOF), so that
            // once spawn returns the child holds no descriptor of ours but stdio.
            let _ = read_status(&status, Duration::from_secs(1));
            id
        }
        outcome => {
            let what = match outcome {
                Ok(Some(b)) => {
                    let err = i32::from_le_bytes([b[4], b[5], b[6], b[7]]);
                    let step = if b[0] == STEP_CGROUP {
                        let dir = opts.cgroups.get(b[1] as usize).map(|c| c.dir.display());
                        format!(
                            "{} {}",
                            step_name(b[0]),
                            dir.map(|d| d.to_string()).unwrap_or_default()
                        )
                    } else {
                        step_name(b[0]).to_string()
                    };
                    let e = Error::io(
                        format!("stressor {} (pid {pid}) failed {step}", opts.name),
                        std::io::Error::from_raw_os_error(err),
                    );
                    reap_pid(pid, true);
                    return Err(e);
                }
                Ok(None) => "exited during its setup".to_string(),
                Err(e) => format!("did not finish its setup: {e}"),
            };
            // SAFETY: pid is our unreaped child, so the number cannot have been reused.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let status = reap_pid(pid, true);
            Err(Error::new(
                ErrorKind::Io,
                format!(
                    "stressor {} (pid {pid}) {what}{}",
                    opts.name,
                    status.map(|s| format!(" ({s})")).unwrap_or_default()
                ),
            ))
        }
    }
}

/// Read the child's 8-byte status; `Ok(None)` on EOF (the child died).
fn read_status(fd: &OwnedFd, timeout: Duration) -> std::io::Result<Option<[u8; 8]>> {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 8];
    let mut got = 0;
    while got < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::from_raw_os_error(libc::ETIMEDOUT));
        }
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: pfd is one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            continue;
        }
        // SAFETY: the pointer and length describe the unfilled tail of buf.
        let r = unsafe {
            libc::read(
                fd.as_raw_fd(),
                buf[got..].as_mut_ptr().cast(),
                buf.len() - got,
            )
        };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Ok(None);
        }
        got += r as usize;
    }
    Ok(Some(buf))
}

/// How a stressor ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it (9 for SIGKILL, which is also what the OOM killer sends).
    Signal(i32),
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal(s) => write!(f, "killed by signal {s}"),
        }
    }
}

fn decode_status(status: i32) -> Exit {
    if libc::WIFSIGNALED(status) {
        Exit::Signal(libc::WTERMSIG(status))
    } else {
        Exit::Code(libc::WEXITSTATUS(status))
    }
}

/// Reap child `pid` (blocking, or only if it has exited).
fn reap_pid(pid: i32, block: bool) -> Option<Exit> {
    let mut status = 0;
    loop {
        let flags = if block { 0 } else { libc::WNOHANG };
        // SAFETY: status is a valid out pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, flags) };
        if r == pid {
            return Some(decode_status(status));
        }
        if r < 0 && child::errno() == libc::EINTR {
            continue;
        }
        return None;
    }
}

/// Whether `p` is a child of this process (so this process may wait for it).
fn is_our_child(p: &ProcessId) -> bool {
    p.stat()
        .is_some_and(|s| s.ppid == std::process::id() as i32)
}

/// How a stressor that is this process's child ended, without reaping it (`waitid` with
/// `WNOWAIT`); `None` while it runs, or when another process is its parent (after a
/// restart of the agent).
pub fn exit_status(p: &ProcessId) -> Option<Exit> {
    if !is_our_child(p) {
        return None;
    }
    // SAFETY: zeroed siginfo is a valid out value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: info is a valid out pointer; the pid is our child, not reaped.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            p.pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: si_pid/si_status are valid for SIGCHLD-style siginfo filled by waitid.
    let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    if r != 0 || pid != p.pid {
        return None;
    }
    Some(if info.si_code == libc::CLD_EXITED {
        Exit::Code(status)
    } else {
        Exit::Signal(status)
    })
}

/// Reap `p` if it is this process's child and has exited; returns how it ended.
pub fn reap(p: &ProcessId) -> Option<Exit> {
    if is_our_child(p) {
        reap_pid(p.pid, false)
    } else {
        None
    }
}

/// Kill every stressor of a fault: the recorded processes and everything in its cgroups;
/// reap those that are this process's children; wait (up to `timeout`) until none is
/// left; remove the cgroups. Idempotent: nothing left is success.
///
/// Refuses ([`ErrorKind::Drifted`], nothing killed) a cgroup that is not a fault cgroup
/// ([`FaultCgroup::check_ours`]) and a recorded process that is alive but not named like a
/// stressor (`chaos-…`): stressors never change their name, so such a receipt was edited.
pub fn stop(pids: &[ProcessId], cgroups: &[FaultCgroup], timeout: Duration) -> Result<()> {
    for c in cgroups {
        c.check_ours()?;
    }
    for p in pids {
        if let Some(s) = p
            .stat()
            .filter(|s| s.state != 'Z' && !s.comm.starts_with("chaos-"))
        {
            return Err(Error::new(
                ErrorKind::Drifted,
                format!(
                    "refusing to kill pid {} ({}): it is not a stressor (they are named chaos-…)",
                    p.pid, s.comm
                ),
            ));
        }
    }
    let deadline = Instant::now() + timeout;
    loop {
        let mut first_error = None;
        for p in pids {
            if let Err(e) = p.signal(libc::SIGKILL) {
                first_error.get_or_insert(e);
            }
        }
        for c in cgroups {
            if let Err(e) = c.kill_all() {
                first_error.get_or_insert(e);
            }
        }
        for p in pids {
            reap(p);
        }
        let alive: Vec<i32> = pids
            .iter()
            .filter(|p| p.is_alive())
            .map(|p| p.pid)
            .collect();
        let mut listed = Vec::new();
        for c in cgroups {
            listed.extend(c.pids()?);
        }
        if alive.is_empty() && listed.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            let why = first_error.map(|e| format!(": {e}")).unwrap_or_default();
            return Err(Error::new(
                ErrorKind::Busy,
                format!(
                    "stressors still running after {:?} (pids {:?}, in cgroups {:?}){why}",
                    timeout, alive, listed
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for c in cgroups {
        c.remove(Duration::from_secs(2))?;
    }
    Ok(())
}

/// The stressors of one fault, as its receipt records them: the fault's cgroups (named
/// from the fault id at plan time, so they are journaled before anything starts) and the
/// processes started in them.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stressors {
    /// The fault's cgroups, `<agent's cgroup>/chaos-agent-<fault id>` in each hierarchy.
    pub cgroups: Vec<FaultCgroup>,
    /// Every stressor started, in order.
    pub processes: Vec<ProcessId>,
}

/// How long [`Stressors::stop`] waits for the stressors to be gone.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

impl Stressors {
    /// Plan the cgroups of fault `fault_id`, with the v1 hierarchies of `controllers` when
    /// cgroup2 does not offer them (see [`super::cgroup::plan`]). Changes nothing.
    pub fn plan(fault_id: &str, controllers: &[&str]) -> Result<Stressors> {
        Ok(Stressors {
            cgroups: super::cgroup::plan(fault_id, controllers)?,
            processes: Vec::new(),
        })
    }

    /// Create the cgroups. A hierarchy that refuses us (`EACCES`, `EPERM`, `EROFS`: no
    /// root, a read-only cgroupfs in a container) is dropped from the list: the stressors
    /// then run without it, still at `oom_score_adj` 1000.
    pub fn create_cgroups(&mut self) -> Result<()> {
        let mut kept = Vec::new();
        for c in std::mem::take(&mut self.cgroups) {
            match c.create() {
                Ok(_) => kept.push(c),
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS)
                    ) => {}
                Err(e) => {
                    kept.push(c);
                    self.cgroups = kept;
                    return Err(e);
                }
            }
        }
        self.cgroups = kept;
        Ok(())
    }

    /// Start one stressor in the fault's cgroups and record it.
    pub fn spawn(
        &mut self,
        name: &str,
        cpus: Option<Vec<usize>>,
        work: Arc<dyn Work>,
    ) -> Result<&ProcessId> {
        let opts = Options {
            name: name.to_string(),
            cgroups: self.cgroups.clone(),
            cpus,
        };
        let p = spawn(&opts, work)?;
        self.processes.push(p);
        Ok(self.processes.last().expect("just pushed"))
    }

    /// The recorded stressors still running.
    pub fn alive(&self) -> Vec<&ProcessId> {
        self.processes.iter().filter(|p| p.is_alive()).collect()
    }

    /// The cgroups that still exist.
    pub fn existing_cgroups(&self) -> Vec<&FaultCgroup> {
        self.cgroups.iter().filter(|c| c.exists()).collect()
    }

    /// Pids found in the fault's cgroups (including any the receipt never recorded).
    pub fn listed(&self) -> Vec<i32> {
        let mut v: Vec<i32> = self
            .cgroups
            .iter()
            .flat_map(|c| c.pids().unwrap_or_default())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Whether nothing of this fault is left: no recorded process, no cgroup.
    pub fn is_clean(&self) -> bool {
        self.alive().is_empty() && self.existing_cgroups().is_empty()
    }

    /// The start of every stressor fault's `inject`, idempotent: returns `true` when an
    /// earlier inject of this receipt already has all `workers` running (nothing to do).
    /// A partial start (some died, or a crash cut it short) is stopped and forgotten so
    /// inject begins again from nothing; then the cgroups are created.
    pub fn begin_inject(&mut self, workers: usize) -> Result<bool> {
        if !self.processes.is_empty() {
            if self.alive().len() == workers {
                return Ok(true);
            }
            self.stop()?;
            self.processes.clear();
        }
        self.create_cgroups()?;
        Ok(false)
    }

    /// Kill everything and remove the cgroups ([`stop`]).
    pub fn stop(&self) -> Result<()> {
        stop(&self.processes, &self.cgroups, STOP_TIMEOUT)
    }

    /// The first recorded stressor that is no longer running, and how it ended when this
    /// process is its parent.
    pub fn first_dead(&self) -> Option<(&ProcessId, Option<Exit>)> {
        self.processes
            .iter()
            .find(|p| !p.is_alive())
            .map(|p| (p, exit_status(p)))
    }

    /// OOM kills counted in the fault's memory cgroup, when it has one.
    pub fn oom_kills(&self) -> Option<u64> {
        self.cgroups
            .iter()
            .filter(|c| c.has_memory())
            .find_map(|c| c.oom_kills())
    }

    /// A sentence on why stressor `p` is gone, for errors and observations.
    pub fn death_note(&self, p: &ProcessId, exit: Option<Exit>) -> String {
        let mut s = format!("stressor pid {} is gone", p.pid);
        if let Some(e) = exit {
            s.push_str(&format!(" ({e})"));
        }
        if let Some(n) = self.oom_kills().filter(|&n| n > 0) {
            s.push_str(&format!(
                "; the OOM killer killed {n} process(es) in the fault's memory cgroup"
            ));
        } else if exit == Some(Exit::Signal(libc::SIGKILL)) {
            s.push_str("; SIGKILL without a revert is usually the OOM killer");
        }
        s
    }

    /// Shell commands that undo this by hand: kill what is in the cgroups and remove them,
    /// and kill each recorded pid after checking its start time. Every path is quoted with
    /// [`super::shell::quote`].
    pub fn manual_undo(&self) -> Vec<String> {
        use super::shell::{join, quote};
        let mut out = Vec::new();
        for p in &self.processes {
            out.push(format!(
                "[ \"$(awk '{{print $22}}' /proc/{pid}/stat 2>/dev/null)\" = {t} ] && {kill}",
                pid = p.pid,
                t = p.start_ticks,
                kill = join(["kill", "-9", &p.pid.to_string()])
            ));
        }
        for c in &self.cgroups {
            let d = c.dir.to_string_lossy();
            let q = quote(&d);
            match c.version {
                super::cgroup::Version::V2 => out.push(format!(
                    "[ -d {q} ] && echo 1 > {}",
                    quote(&c.dir.join("cgroup.kill").to_string_lossy())
                )),
                super::cgroup::Version::V1 => out.push(format!(
                    "[ -d {q} ] && xargs -r kill -9 < {}",
                    quote(&c.procs_file().to_string_lossy())
                )),
            }
            out.push(format!("[ -d {q} ] && {}", join(["rmdir", &d])));
        }
        out
    }

    /// Check, before a revert acts on a journaled receipt, that it is consistent with fault
    /// `fault_id`: every cgroup is exactly one this fault creates
    /// ([`FaultCgroup::check_for`]), none is listed twice, and every recorded process that
    /// is still alive is a stressor named `comm` (stressors never change their name, so a
    /// live recorded process with another name means the receipt was edited to point at
    /// someone else's process). Refuses with [`ErrorKind::Drifted`]; changes nothing.
    pub fn check_receipt(&self, fault_id: &str, comm: &str) -> Result<()> {
        for (i, c) in self.cgroups.iter().enumerate() {
            c.check_for(fault_id)?;
            if self.cgroups[..i].iter().any(|o| o.dir == c.dir) {
                return Err(Error::new(
                    ErrorKind::Drifted,
                    format!("cgroup {} is listed twice", c.dir.display()),
                ));
            }
        }
        for p in &self.processes {
            if let Some(stat) = p.stat().filter(|_| p.is_alive()) {
                if stat.comm != comm {
                    return Err(Error::new(
                        ErrorKind::Drifted,
                        format!(
                            "refusing to kill pid {} ({}): fault {fault_id:?} only starts \
                             stressors named {comm}",
                            p.pid, stat.comm
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The stressor cgroups of the fault ids in `known` found on the host
    /// ([`super::cgroup::find_fault_cgroups`]), grouped by fault id, each as a receipt part
    /// whose [`stop`](Stressors::stop) kills whatever is in them and removes them. A group
    /// is claimed for stressors named `comm` unless it holds a process named like another
    /// kind's stressor (`chaos-…` but not `comm`): after a crash the stressors are dead (they
    /// die with the agent) and the empty cgroups of a fault id are claimed by every stressor
    /// kind that looks, which is harmless (the first revert removes them, the others find
    /// nothing).
    pub fn leftovers(known: &[String], comm: &str) -> Vec<crate::Leftover<Stressors>> {
        let mut out: Vec<crate::Leftover<Stressors>> = Vec::new();
        for (id, cg) in super::cgroup::find_fault_cgroups(known) {
            match out.iter_mut().find(|l| l.fault_id == id) {
                Some(l) => l.receipt.cgroups.push(cg),
                None => out.push(crate::Leftover {
                    fault_id: id,
                    receipt: Stressors {
                        cgroups: vec![cg],
                        processes: Vec::new(),
                    },
                    found: String::new(),
                }),
            }
        }
        out.retain(|l| {
            l.receipt.listed().iter().all(|&pid| {
                let name = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .map(|s| s.trim_end().to_string())
                    .unwrap_or_default();
                name == comm || !name.starts_with("chaos-")
            })
        });
        for l in &mut out {
            let dirs: Vec<String> = l
                .receipt
                .cgroups
                .iter()
                .map(|c| c.dir.display().to_string())
                .collect();
            let pids = l.receipt.listed();
            l.found = format!(
                "cgroup{} {}{}",
                if dirs.len() == 1 { "" } else { "s" },
                dirs.join(", "),
                if pids.is_empty() {
                    " (empty)".to_string()
                } else {
                    format!(" holding pids {pids:?}")
                }
            );
        }
        out
    }

    /// Lines for [`Fault::touches`](crate::Fault::touches): the cgroups, and the recorded
    /// stressors still running as "pid 4242 (chaos-cpu)".
    pub fn touches(&self) -> Vec<String> {
        let mut out = Vec::new();
        let alive: Vec<String> = self
            .processes
            .iter()
            .filter_map(|p| p.stat().map(|s| format!("pid {} ({})", p.pid, s.comm)))
            .collect();
        if !alive.is_empty() {
            out.push(format!("processes {}", alive.join(", ")));
        }
        for c in &self.cgroups {
            out.push(format!(
                "cgroup {} ({}{})",
                c.dir.display(),
                match c.version {
                    super::cgroup::Version::V1 => "v1",
                    super::cgroup::Version::V2 => "v2",
                },
                if c.controllers.is_empty() {
                    String::new()
                } else {
                    format!(": {}", c.controllers.join(","))
                }
            ));
        }
        out
    }
}

/// Lower this process's `oom_score_adj` to [`AGENT_OOM_SCORE_ADJ`] so that the OOM killer
/// prefers anything else, stressors (at 1000) first. Call it once at agent start.
/// Lowering needs `CAP_SYS_RESOURCE`; without it this fails with
/// [`ErrorKind::PermissionDenied`] and the stressors' 1000 is the only protection. Returns
/// the value now in effect.
pub fn protect_self() -> Result<i32> {
    let path = "/proc/self/oom_score_adj";
    std::fs::write(path, AGENT_OOM_SCORE_ADJ.to_string()).map_err(|e| {
        Error::io(
            format!("lowering {path} to {AGENT_OOM_SCORE_ADJ} (needs CAP_SYS_RESOURCE)"),
            e,
        )
    })?;
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| Error::new(ErrorKind::Io, format!("reading {path}")))
}

/// In a stressor: whether the agent that started it is gone (it has been re-parented).
/// Work loops check this as a second line of defence behind `PR_SET_PDEATHSIG`.
pub fn orphaned() -> bool {
    let p = PARENT.load(Ordering::Relaxed);
    // SAFETY: getppid cannot fail.
    p != 0 && unsafe { libc::getppid() } != p
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    // SAFETY: zeroed timespec is a valid out value.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: ts is a valid out pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `CLOCK_MONOTONIC` in nanoseconds (async-signal-safe).
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// CPU time this process has used, in nanoseconds (`CLOCK_PROCESS_CPUTIME_ID`;
/// async-signal-safe).
pub fn own_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// Sleep until `CLOCK_MONOTONIC` reaches `deadline_ns` (async-signal-safe).
pub fn sleep_until_ns(deadline_ns: u64) {
    let ts = libc::timespec {
        tv_sec: (deadline_ns / 1_000_000_000) as _,
        tv_nsec: (deadline_ns % 1_000_000_000) as libc::c_long,
    };
    loop {
        // SAFETY: ts is valid; the remainder pointer may be null with TIMER_ABSTIME.
        let r = unsafe {
            libc::clock_nanosleep(
                libc::CLOCK_MONOTONIC,
                libc::TIMER_ABSTIME,
                &ts,
                std::ptr::null_mut(),
            )
        };
        if r != libc::EINTR {
            return;
        }
    }
}

/// CPU time process `pid` has used so far, in nanoseconds: `/proc/<pid>/schedstat`
/// (nanosecond resolution), else `utime + stime` of `/proc/<pid>/stat` (clock ticks).
pub fn cpu_time_ns(pid: i32) -> Option<u64> {
    if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/schedstat")) {
        if let Some(ns) = s.split_whitespace().next().and_then(|v| v.parse().ok()) {
            return Some(ns);
        }
    }
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest: Vec<&str> = text
        .get(text.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no memory preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some((utime + stime) * (1_000_000_000 / hz))
}

/// The load (CPU time / wall time, 1.0 = one full CPU) each of `pids` achieves over
/// `window`, measured from their own CPU time; `None` for a process that is gone.
pub fn measure_load(pids: &[i32], window: Duration) -> Vec<Option<f64>> {
    let t0 = Instant::now();
    let before: Vec<Option<u64>> = pids.iter().map(|&p| cpu_time_ns(p)).collect();
    std::thread::sleep(window);
    let wall = t0.elapsed().as_nanos() as f64;
    pids.iter()
        .zip(before)
        .map(|(&p, b)| {
            let a = cpu_time_ns(p)?;
            Some(a.saturating_sub(b?) as f64 / wall)
        })
        .collect()
}

/// Resident memory of `pid` in bytes (`/proc/<pid>/statm`).
pub fn rss_bytes(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no memory preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    Some(pages * page)
}

/// Bytes `pid` made the storage layer read and write (`read_bytes`, `write_bytes` of
/// `/proc/<pid>/io`; direct I/O counts, page-cache hits do not).
pub fn io_bytes(pid: i32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    let field = |k: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(k)?.trim().parse::<u64>().ok())
    };
    Some((field("read_bytes:")?, field("write_bytes:")?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    struct Sleep;
    // SAFETY: only raw syscalls.
    unsafe impl Work for Sleep {
        fn run(&self) -> i32 {
            loop {
                if orphaned() {
                    return 3;
                }
                sleep_until_ns(monotonic_ns() + 50_000_000);
            }
        }
    }

    struct Fails(AtomicU64);
    // SAFETY: only an atomic load.
    unsafe impl Work for Fails {
        fn prepare(&self) -> std::result::Result<(), i32> {
            Err(self.0.load(Ordering::Relaxed) as i32)
        }
        fn run(&self) -> i32 {
            0
        }
    }

    struct Exits(i32);
    // SAFETY: no calls at all.
    unsafe impl Work for Exits {
        fn run(&self) -> i32 {
            self.0
        }
    }

    fn opts(name: &str) -> Options {
        Options {
            name: name.into(),
            ..Options::default()
        }
    }

    #[test]
    fn spawn_sets_up_the_child_and_stop_kills_it() {
        let p = spawn(&opts("chaos-test-sleep"), Arc::new(Sleep)).unwrap();
        let stat = p.stat().unwrap();
        assert_eq!(stat.comm, "chaos-test-slee");
        assert_eq!(stat.ppid, std::process::id() as i32);
        let adj = std::fs::read_to_string(format!("/proc/{}/oom_score_adj", p.pid)).unwrap();
        assert_eq!(adj.trim(), "1000");
        // stdio is /dev/null and nothing else is inherited.
        let fds: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", p.pid))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(fds.len(), 3, "{fds:?}");
        assert_eq!(
            std::fs::read_link(format!("/proc/{}/fd/1", p.pid)).unwrap(),
            std::path::Path::new("/dev/null")
        );
        assert_eq!(exit_status(&p), None);
        stop(std::slice::from_ref(&p), &[], Duration::from_secs(5)).unwrap();
        assert!(p.stat().is_none(), "killed and reaped");
        stop(&[p], &[], Duration::from_secs(5)).unwrap();
    }

    #[test]
    fn a_failing_prepare_is_an_error_naming_the_step() {
        let e = spawn(
            &opts("chaos-test-fail"),
            Arc::new(Fails(AtomicU64::new(22))),
        )
        .unwrap_err();
        let s = e.to_string();
        assert!(s.contains("failed preparing its work"), "{s}");
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{s}");
    }

    #[test]
    fn exit_status_is_seen_without_reaping() {
        let p = spawn(&opts("chaos-test-exit"), Arc::new(Exits(7))).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while exit_status(&p).is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(exit_status(&p), Some(Exit::Code(7)));
        assert_eq!(exit_status(&p), Some(Exit::Code(7)), "not reaped by a peek");
        assert_eq!(reap(&p), Some(Exit::Code(7)));
        assert!(p.stat().is_none());
    }

    #[test]
    fn check_receipt_refuses_a_live_process_that_is_no_stressor() {
        let mut child = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .unwrap();
        let stranger = ProcessId::of(child.id() as i32).unwrap();
        let s = Stressors {
            cgroups: Vec::new(),
            processes: vec![stranger],
        };
        let e = s.check_receipt("f-1", "chaos-cpu").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Drifted);
        assert!(e.to_string().contains("(sleep)"), "{e}");
        // Revert itself refuses too, and the stranger lives on.
        assert_eq!(s.stop().unwrap_err().kind(), ErrorKind::Drifted);
        assert!(s.processes[0].is_alive());
        child.kill().unwrap();
        child.wait().unwrap();
        // Gone: nothing to kill, nothing to refuse.
        s.check_receipt("f-1", "chaos-cpu").unwrap();

        let p = spawn(&opts("chaos-cpu"), Arc::new(Sleep)).unwrap();
        let s = Stressors {
            cgroups: Vec::new(),
            processes: vec![p],
        };
        s.check_receipt("f-1", "chaos-cpu").unwrap();
        assert_eq!(
            s.check_receipt("f-1", "chaos-memory").unwrap_err().kind(),
            ErrorKind::Drifted
        );
        s.stop().unwrap();
    }

    #[test]
    fn manual_undo_quotes_every_path() {
        let s = Stressors {
            cgroups: vec![
                FaultCgroup {
                    version: super::super::cgroup::Version::V2,
                    dir: "/sys/fs/cgroup/my svc;x/chaos-agent-f1".into(),
                    controllers: vec![],
                },
                FaultCgroup {
                    version: super::super::cgroup::Version::V1,
                    dir: "/sys/fs/cgroup/memory/plain/chaos-agent-f1".into(),
                    controllers: vec!["memory".into()],
                },
            ],
            processes: vec![ProcessId {
                pid: 42,
                start_ticks: 7,
                boot_id: "b".into(),
            }],
        };
        assert_eq!(
            s.manual_undo(),
            [
                r#"[ "$(awk '{print $22}' /proc/42/stat 2>/dev/null)" = 7 ] && kill -9 42"#,
                "[ -d '/sys/fs/cgroup/my svc;x/chaos-agent-f1' ] && echo 1 > \
                 '/sys/fs/cgroup/my svc;x/chaos-agent-f1/cgroup.kill'",
                "[ -d '/sys/fs/cgroup/my svc;x/chaos-agent-f1' ] && rmdir \
                 '/sys/fs/cgroup/my svc;x/chaos-agent-f1'",
                "[ -d /sys/fs/cgroup/memory/plain/chaos-agent-f1 ] && xargs -r kill -9 < \
                 /sys/fs/cgroup/memory/plain/chaos-agent-f1/cgroup.procs",
                "[ -d /sys/fs/cgroup/memory/plain/chaos-agent-f1 ] && rmdir \
                 /sys/fs/cgroup/memory/plain/chaos-agent-f1",
            ]
        );
    }

    #[test]
    fn leftovers_find_a_fault_cgroup_and_stop_removes_it() {
        if !crate::host::is_root() {
            eprintln!("SKIPPED {}: needs root", module_path!());
            return;
        }
        let id = format!("left-{}", crate::host::random_hex(6));
        let mut s = Stressors::plan(&id, &["memory"]).unwrap();
        if s.cgroups.is_empty() {
            eprintln!("SKIPPED {}: no cgroups mounted", module_path!());
            return;
        }
        s.create_cgroups().unwrap();
        s.spawn("chaos-cpu", None, Arc::new(Sleep)).unwrap();
        let pid = s.processes[0].pid;
        // Another kind's stressor kind does not claim it while its process runs.
        assert!(Stressors::leftovers(std::slice::from_ref(&id), "chaos-memory").is_empty());
        let found = Stressors::leftovers(&["other-id".to_string(), id.clone()], "chaos-cpu");
        assert_eq!(found.len(), 1, "{found:?}");
        let l = &found[0];
        assert_eq!(l.fault_id, id);
        let mut want: Vec<_> = s.cgroups.iter().map(|c| c.dir.clone()).collect();
        let mut got: Vec<_> = l.receipt.cgroups.iter().map(|c| c.dir.clone()).collect();
        want.sort();
        got.sort();
        assert_eq!(got, want);
        assert!(
            l.found.contains(&format!("holding pids [{pid}]")),
            "{}",
            l.found
        );
        l.receipt.check_receipt(&id, "chaos-cpu").unwrap();
        // Through JSON, as recovery journals it.
        let back: Stressors =
            serde_json::from_str(&serde_json::to_string(&l.receipt).unwrap()).unwrap();
        back.stop().unwrap();
        back.stop().unwrap();
        assert!(!s.processes[0].is_alive());
        reap(&s.processes[0]);
        assert!(s.is_clean());
        assert!(Stressors::leftovers(std::slice::from_ref(&id), "chaos-cpu").is_empty());
    }

    #[test]
    fn measures_cpu_time_and_rss_of_self() {
        let me = std::process::id() as i32;
        assert!(cpu_time_ns(me).unwrap() > 0);
        assert!(rss_bytes(me).unwrap() > 0);
        let load = measure_load(&[me, i32::MAX], Duration::from_millis(20));
        assert!(load[0].is_some() && load[1].is_none());
    }
}
