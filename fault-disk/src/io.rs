//! `disk.io`: worker processes driving direct I/O on a filesystem.

use std::collections::HashSet;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration as StdDuration;

use fault_core::host::fs::sync_dir;
use fault_core::host::ns::NsId;
use fault_core::host::shell::join;
use fault_core::host::stressor::{self, Exit, Stressors, Work};
use fault_core::{
    Bytes, Context, Error, ErrorKind, Fault, KindInfo, Leftover, Observation, Param, Result,
};
use serde::{Deserialize, Serialize};

use crate::files::{self, drifted, in_mount_ns, FileId};
use crate::mounts;

/// The kind string of [`DiskIo`].
pub const IO_KIND: &str = "disk.io";

/// Prefix of the scratch files' names; the fault id and the worker index follow.
const FILE_PREFIX: &str = ".chaos-agent-io-";

/// The name (`comm`) of every worker.
const WORKER_NAME: &str = "chaos-io";

/// Alignment O_DIRECT needs for buffer, offset and length on every common filesystem.
const ALIGN: u64 = 4096;

/// Most workers one fault may start.
const MAX_WORKERS: u32 = 256;

/// Largest block size.
const MAX_BLOCK: u64 = 64 << 20;

/// How long `verify` measures throughput.
const VERIFY_WINDOW: StdDuration = StdDuration::from_millis(300);

const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6;

/// What the workers do.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum IoMode {
    /// Read the scratch file over and over (it is written once first).
    Read,
    /// Write the scratch file over and over.
    Write,
    /// Alternate: read one block, write the next.
    Mixed,
}

impl IoMode {
    fn as_str(self) -> &'static str {
        match self {
            IoMode::Read => "read",
            IoMode::Write => "write",
            IoMode::Mixed => "mixed",
        }
    }
}

/// The parameters of a `disk.io` fault, as written in an experiment.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DiskIoSpec {
    /// An existing directory, written as an absolute path: the workers' scratch files are
    /// created in it, so its filesystem takes the I/O.
    pub path: PathBuf,
    /// Worker processes (>= 1). Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<u32>,
    /// `read`, `write` or `mixed`. Default `write`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<IoMode>,
    /// Bytes per read or write, a multiple of 4096. Default 1 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<Bytes>,
    /// Size of each worker's scratch file, which it goes through again and again (rounded
    /// down to whole blocks). Default 64 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_size: Option<Bytes>,
    /// Stop each worker once it has moved this many bytes (> 0). Default: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<Bytes>,
    /// Throughput target per worker, in bytes per second (> 0). Default: as fast as the
    /// device goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Bytes>,
}

/// What [`DiskIo::plan`] resolved and `inject` recorded.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DiskIoReceipt {
    /// The directory (canonical path).
    pub dir: PathBuf,
    /// One scratch file per worker, `<dir>/.chaos-agent-io-<fault id>-<n>`.
    pub files: Vec<PathBuf>,
    /// What the workers do.
    pub mode: IoMode,
    /// Bytes per I/O.
    pub block_size: u64,
    /// Bytes per scratch file.
    pub file_size: u64,
    /// Bytes each worker moves before it stops; `None`: until reverted.
    pub bytes: Option<u64>,
    /// Bytes per second per worker; `None`: unthrottled.
    pub rate: Option<u64>,
    /// The cgroups (named at plan) and the workers (recorded at inject).
    pub stressors: Stressors,
    /// The mount namespace `dir` was resolved in: the scratch files are removed there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mnt_ns: Option<NsId>,
    /// The boot the receipt was planned in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// Each scratch file's device and inode (same order as `files`), recorded at inject once
    /// its worker created it; revert never unlinks a file with another identity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub file_ids: Vec<Option<FileId>>,
}

/// Drive direct I/O on the filesystem of a directory with worker processes.
///
/// # What changes on the host
///
/// One scratch file per worker, `<path>/.chaos-agent-io-<fault id>-<n>` (mode 0600), and one
/// process per worker, `chaos-io`, that opens it with `O_DIRECT` (so the page cache cannot
/// absorb the load: every read and write reaches the device) and reads, writes or
/// alternates `block_size` blocks through it in a loop, from a page-aligned buffer; at
/// `rate` bytes per second when given, and until it has moved `bytes` when given. Read
/// and mixed modes write the file once first. The workers run in the fault's cgroup under
/// the agent's, with `oom_score_adj` 1000.
///
/// # Revert
///
/// Kills the workers (and anything else in the fault's cgroups), removes the cgroups, then
/// unlinks the scratch files (only regular files at exactly the receipt's paths, with the
/// device and inode recorded when the workers created them) and `fsync`s the directory. The
/// files are removed in the mount namespace the fault was planned in (entered when the
/// reverting process is elsewhere), as for `disk.fill`.
///
/// # Persistence
///
/// The receipt names the files and cgroups at plan, before anything is created, and records
/// each worker's identity at inject, so a fresh process reverts it. The workers die with the
/// agent.
///
/// # Privileges
///
/// Write access to the directory; root (or a delegated cgroup) for the cgroups.
#[derive(Debug, Clone)]
pub struct DiskIo {
    spec: DiskIoSpec,
}

impl DiskIo {
    /// The validated spec.
    pub fn spec(&self) -> &DiskIoSpec {
        &self.spec
    }
    fn workers(&self) -> u32 {
        self.spec.workers.unwrap_or(1)
    }
    fn mode(&self) -> IoMode {
        self.spec.mode.unwrap_or(IoMode::Write)
    }
    fn block(&self) -> u64 {
        self.spec.block_size.map_or(1 << 20, Bytes::get)
    }
    fn file_size(&self) -> u64 {
        let f = self.spec.file_size.map_or(64 << 20, Bytes::get);
        f - f % self.block()
    }
}

fn scratch_file(dir: &Path, fault_id: &str, i: usize) -> Result<PathBuf> {
    let name = format!("{FILE_PREFIX}{fault_id}-{i}");
    if fault_id.is_empty() || fault_id.contains(['/', '\0']) || name.len() > 255 {
        return Err(Error::invalid(format!(
            "fault id {fault_id:?} cannot name a file"
        )));
    }
    Ok(dir.join(name))
}

/// `(fault id, worker index)` of a scratch file's name.
fn parse_name(name: &str) -> Option<(&str, usize)> {
    let (id, n) = name.strip_prefix(FILE_PREFIX)?.rsplit_once('-')?;
    if id.is_empty() || n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if n.len() > 1 && n.starts_with('0') {
        return None; // not a name we write
    }
    let n: usize = n.parse().ok()?;
    (n < MAX_WORKERS as usize).then_some((id, n))
}

/// What revert checks of a receipt without knowing the fault id: every file is a scratch
/// file name directly in `dir`, an absolute plain path.
fn check_shape(r: &DiskIoReceipt) -> Result<()> {
    for f in &r.files {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !(files::is_plain_absolute(f)
            && f.parent() == Some(r.dir.as_path())
            && parse_name(name).is_some())
        {
            return Err(drifted(format!(
                "refusing to remove {}: not a disk.io scratch file in {}",
                f.display(),
                r.dir.display()
            )));
        }
    }
    Ok(())
}

/// Remove the scratch files (in the current mount namespace); true when any was there.
fn remove_files(r: &DiskIoReceipt) -> Result<bool> {
    let mut removed = false;
    for (i, file) in r.files.iter().enumerate() {
        let id = r.file_ids.get(i).copied().flatten();
        if files::remove(file, id, IO_KIND, "")? == files::Removed::Removed {
            removed = true;
        }
    }
    Ok(removed)
}

fn fs_magic(path: &Path) -> std::io::Result<i64> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: zeroed statfs is valid (plain integers).
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is NUL-terminated, st a valid out pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // f_type's type differs between targets
    Ok(st.f_type as i64)
}

/// The loop one worker runs. Only async-signal-safe calls (see [`Work`]).
#[derive(Debug)]
struct IoWorker {
    path: CString,
    mode: IoMode,
    block: usize,
    blocks: u64,
    /// Bytes to move before stopping; 0: never stop.
    limit: u64,
    /// Bytes per second; 0: unthrottled.
    rate: u64,
    fd: AtomicI32,
    buf: AtomicUsize,
}

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

impl IoWorker {
    /// One block at block index `i`: `write` or read. Returns an errno on failure.
    fn io(&self, write: bool, i: u64) -> std::result::Result<(), i32> {
        let fd = self.fd.load(Ordering::Relaxed);
        let buf = self.buf.load(Ordering::Relaxed) as *mut libc::c_void;
        let off = (i * self.block as u64) as libc::off_t;
        loop {
            // SAFETY: buf is our mapping of `block` bytes; fd is open.
            let n = unsafe {
                if write {
                    libc::pwrite(fd, buf, self.block, off)
                } else {
                    libc::pread(fd, buf, self.block, off)
                }
            };
            if n >= 0 {
                return Ok(());
            }
            let e = errno();
            if e != libc::EINTR {
                return Err(e);
            }
        }
    }
}

// SAFETY: prepare/run only call open, mmap, pread, pwrite, clock_gettime, clock_nanosleep
// and getppid, on memory prepared before the fork or mapped here.
unsafe impl Work for IoWorker {
    fn prepare(&self) -> std::result::Result<(), i32> {
        // SAFETY: path is NUL-terminated.
        let fd = unsafe {
            libc::open(
                self.path.as_ptr(),
                libc::O_RDWR | libc::O_CREAT | libc::O_DIRECT | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o600,
            )
        };
        if fd < 0 {
            return Err(errno());
        }
        // SAFETY: an anonymous mapping (page-aligned, so O_DIRECT-aligned).
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                self.block,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(errno());
        }
        // Non-zero data, so no layer can skip it as zeroes.
        // SAFETY: p is a fresh mapping of `block` bytes.
        unsafe { std::ptr::write_bytes(p as *mut u8, 0xa5, self.block) };
        self.fd.store(fd, Ordering::Relaxed);
        self.buf.store(p as usize, Ordering::Relaxed);
        Ok(())
    }

    fn run(&self) -> i32 {
        let code = |e: i32| e.clamp(1, 255);
        if self.mode != IoMode::Write {
            for i in 0..self.blocks {
                if let Err(e) = self.io(true, i) {
                    return code(e);
                }
            }
        }
        let start = stressor::monotonic_ns();
        let mut moved: u64 = 0;
        let mut n: u64 = 0;
        loop {
            for i in 0..self.blocks {
                let write = match self.mode {
                    IoMode::Write => true,
                    IoMode::Read => false,
                    IoMode::Mixed => n % 2 == 1,
                };
                if let Err(e) = self.io(write, i) {
                    return code(e);
                }
                n += 1;
                moved += self.block as u64;
                if self.limit > 0 && moved >= self.limit {
                    return 0;
                }
                if self.rate > 0 {
                    let due = (moved as u128 * 1_000_000_000 / self.rate as u128) as u64;
                    stressor::sleep_until_ns(start + due);
                }
                if n % 64 == 0 && stressor::orphaned() {
                    return 0;
                }
            }
        }
    }
}

/// `(name, errno text)` of an exit code that is an errno.
fn explain(exit: Exit) -> String {
    match exit {
        Exit::Code(c) if c > 0 => format!("{exit}: {}", std::io::Error::from_raw_os_error(c)),
        other => other.to_string(),
    }
}

impl Fault for DiskIo {
    const KIND: &'static str = IO_KIND;
    const FINDS_LEFTOVERS: bool = true;
    type Spec = DiskIoSpec;
    type Receipt = DiskIoReceipt;

    fn new(spec: DiskIoSpec) -> Result<DiskIo> {
        crate::statfs::check_spec_path(&spec.path)?;
        match spec.workers {
            Some(0) => return Err(Error::invalid("workers is 0: give at least 1")),
            Some(n) if n > MAX_WORKERS => {
                return Err(Error::invalid(format!(
                    "workers is {n}: at most {MAX_WORKERS}"
                )))
            }
            _ => {}
        }
        if let Some(b) = spec.block_size {
            let b = b.get();
            if b == 0 || b % ALIGN != 0 || b > MAX_BLOCK {
                return Err(Error::invalid(format!(
                    "block_size is {b}: give a multiple of 4096 up to 64MiB (direct I/O needs \
                     aligned blocks)"
                )));
            }
        }
        let f = DiskIo { spec };
        let block = f.block();
        if let Some(s) = f.spec.file_size {
            if s.get() < block {
                return Err(Error::invalid(format!(
                    "file_size {} is smaller than one block ({})",
                    s.human(),
                    Bytes(block).human()
                )));
            }
        }
        if f.spec.bytes == Some(Bytes(0)) {
            return Err(Error::invalid(
                "bytes is 0: leave it out to run until reverted",
            ));
        }
        if f.spec.rate == Some(Bytes(0)) {
            return Err(Error::invalid("rate is 0: leave it out for full speed"));
        }
        Ok(f)
    }

    fn info() -> KindInfo {
        KindInfo {
            summary: "Starts `workers` processes (`chaos-io`) that each read, write or \
                      alternate `block_size` blocks through a scratch file of their own, \
                      `<path>/.chaos-agent-io-<fault id>-<n>`, with O_DIRECT so the page \
                      cache cannot hide the load; at `rate` bytes/s and up to `bytes` when \
                      given. Plan refuses a path that does not exist, a filesystem without \
                      O_DIRECT (tmpfs) or without room for the files. Revert kills the \
                      workers, removes their cgroup and unlinks the files.",
            privileges: "write access to the directory; root (or a delegated cgroup) to put \
                         the workers in a cgroup of their own",
            reversible: true,
            params: &[
                Param {
                    name: "path",
                    ty: "path",
                    default: None,
                    doc: "An existing directory (absolute path); its filesystem takes the I/O.",
                },
                Param {
                    name: "workers",
                    ty: "integer",
                    default: Some("1"),
                    doc: "How many worker processes.",
                },
                Param {
                    name: "mode",
                    ty: "\"read\", \"write\" or \"mixed\"",
                    default: Some("write"),
                    doc: "What the workers do; read and mixed write the file once first.",
                },
                Param {
                    name: "block_size",
                    ty: "bytes",
                    default: Some("1MiB"),
                    doc: "Bytes per read or write, a multiple of 4096.",
                },
                Param {
                    name: "file_size",
                    ty: "bytes",
                    default: Some("64MiB"),
                    doc: "Size of each worker's scratch file, gone through again and again.",
                },
                Param {
                    name: "bytes",
                    ty: "bytes",
                    default: None,
                    doc: "Each worker stops after moving this many bytes.",
                },
                Param {
                    name: "rate",
                    ty: "bytes per second",
                    default: None,
                    doc: "Throughput target per worker.",
                },
            ],
            example: "kind = \"disk.io\"\nduration = \"1m\"\npath = \"/var/tmp\"\nworkers = 2\nmode = \"mixed\"\nblock_size = \"256KiB\"\nrate = \"50MiB\"",
        }
    }

    /// Degraded when the workers cannot get a cgroup of their own (or `cgroup.kill`).
    /// Whether a directory's filesystem takes `O_DIRECT` depends on the spec: `plan` checks.
    fn availability() -> fault_core::Availability {
        fault_core::host::probe::host().stressor_availability(false)
    }

    fn describe(&self) -> String {
        let n = self.workers();
        let mut s = format!(
            "{n} worker{} doing direct {} I/O in {} blocks on the filesystem of {}",
            if n == 1 { "" } else { "s" },
            self.mode().as_str(),
            Bytes(self.block()).human(),
            self.spec.path.display()
        );
        if let Some(r) = self.spec.rate {
            s.push_str(&format!(", {}/s each", r.human()));
        }
        if let Some(b) = self.spec.bytes {
            s.push_str(&format!(", stopping after {} each", b.human()));
        }
        s
    }

    fn plan(&self, cx: &Context) -> Result<DiskIoReceipt> {
        let path = &self.spec.path;
        let shown = path.display().to_string();
        let (dir, stats, _) = crate::statfs::writable_dir(path)?;
        let magic = fs_magic(&dir).map_err(|e| Error::io(format!("statfs {shown}"), e))?;
        if magic == TMPFS_MAGIC || magic == RAMFS_MAGIC {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "{shown} is on a memory filesystem (tmpfs/ramfs), which has no device and \
                     does not support O_DIRECT"
                ),
            ));
        }
        let n = self.workers() as usize;
        let files = (0..n)
            .map(|i| scratch_file(&dir, &cx.fault_id, i))
            .collect::<Result<Vec<_>>>()?;
        let need = self.file_size().saturating_mul(n as u64);
        if need > stats.avail() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "the scratch files need {} ({n} x {}) but only {} is available on {shown}",
                    Bytes(need).human(),
                    Bytes(self.file_size()).human(),
                    Bytes(stats.avail()).human()
                ),
            ));
        }
        Ok(DiskIoReceipt {
            dir,
            files,
            mode: self.mode(),
            block_size: self.block(),
            file_size: self.file_size(),
            bytes: self.spec.bytes.map(Bytes::get),
            rate: self.spec.rate.map(Bytes::get),
            stressors: Stressors::plan(&cx.fault_id, &["memory"])?,
            mnt_ns: files::current_mnt_ns(),
            boot_id: Some(cx.boot_id.clone()),
            file_ids: Vec::new(),
        })
    }

    fn inject(&self, _cx: &Context, receipt: &mut DiskIoReceipt) -> Result<()> {
        check_shape(receipt)?;
        let workers = receipt.files.len();
        let s = &mut receipt.stressors;
        if s.begin_inject(workers)? {
            return Ok(()); // an earlier inject of this receipt finished
        }
        receipt.file_ids = vec![None; receipt.files.len()];
        for (i, file) in receipt.files.iter().enumerate() {
            let path = CString::new(file.as_os_str().as_encoded_bytes())
                .map_err(|_| Error::invalid(format!("{} contains NUL", file.display())))?;
            let work = Arc::new(IoWorker {
                path,
                mode: receipt.mode,
                block: receipt.block_size as usize,
                blocks: receipt.file_size / receipt.block_size,
                limit: receipt.bytes.unwrap_or(0),
                rate: receipt.rate.unwrap_or(0),
                fd: AtomicI32::new(-1),
                buf: AtomicUsize::new(0),
            });
            s.spawn("chaos-io", None, work).map_err(|e| {
                if e.raw_os_error() == Some(libc::EINVAL) {
                    Error::new(
                        ErrorKind::Unsupported,
                        format!(
                            "the filesystem of {} refused O_DIRECT: {e}",
                            receipt.dir.display()
                        ),
                    )
                } else {
                    e
                }
            })?;
            // The worker created (or reopened) it before spawn returned.
            receipt.file_ids[i] = files::id_of(file);
        }
        let _ = sync_dir(&receipt.dir);
        Ok(())
    }

    fn maintain_interval(&self) -> Option<StdDuration> {
        Some(StdDuration::from_secs(1))
    }

    fn maintain(&self, _cx: &Context, receipt: &mut DiskIoReceipt) -> Result<Option<StdDuration>> {
        let s = &receipt.stressors;
        for p in s.processes.iter().filter(|p| !p.is_alive()) {
            match stressor::exit_status(p) {
                Some(Exit::Code(0)) => {} // moved its `bytes`
                Some(exit) => {
                    return Err(Error::new(
                        ErrorKind::Drifted,
                        format!("disk.io worker pid {} stopped ({})", p.pid, explain(exit)),
                    ))
                }
                None => return Err(Error::new(ErrorKind::Drifted, s.death_note(p, None))),
            }
        }
        Ok(Some(StdDuration::from_secs(1)))
    }

    fn verify(receipt: &DiskIoReceipt) -> Result<Observation> {
        let s = &receipt.stressors;
        let files: Vec<&PathBuf> = in_mount_ns(
            receipt.mnt_ns.as_ref(),
            receipt.boot_id.as_deref(),
            "disk.io's scratch files",
            || {
                Ok(receipt
                    .files
                    .iter()
                    .filter(|f| std::fs::symlink_metadata(f).is_ok())
                    .collect())
            },
        )?;
        let alive = s.alive();
        let finished = s
            .processes
            .iter()
            .filter(|p| stressor::exit_status(p) == Some(Exit::Code(0)))
            .count();
        if alive.is_empty() && finished == 0 {
            let cgroups = s.existing_cgroups();
            return Ok(if files.is_empty() && cgroups.is_empty() {
                Observation::clean(format!(
                    "no disk.io worker running, no scratch file in {}",
                    receipt.dir.display()
                ))
            } else {
                Observation::partial(format!(
                    "no worker running, but {} scratch file(s) and {} cgroup(s) are left",
                    files.len(),
                    cgroups.len()
                ))
            });
        }
        let pids: Vec<i32> = alive.iter().map(|p| p.pid).collect();
        let before: Vec<Option<(u64, u64)>> = pids.iter().map(|&p| stressor::io_bytes(p)).collect();
        let t0 = std::time::Instant::now();
        std::thread::sleep(VERIFY_WINDOW);
        let secs = t0.elapsed().as_secs_f64();
        let (mut rd, mut wr) = (0u64, 0u64);
        for (&p, b) in pids.iter().zip(before) {
            if let (Some((r0, w0)), Some((r1, w1))) = (b, stressor::io_bytes(p)) {
                rd += r1.saturating_sub(r0);
                wr += w1.saturating_sub(w0);
            }
        }
        let per_s = |b: u64| Bytes((b as f64 / secs) as u64).human();
        let detail = format!(
            "{} of {} workers running{} ({} direct I/O in {} blocks on {}): reading {}/s, \
             writing {}/s",
            alive.len(),
            receipt.files.len(),
            if finished > 0 {
                format!(", {finished} finished")
            } else {
                String::new()
            },
            receipt.mode.as_str(),
            Bytes(receipt.block_size).human(),
            receipt.dir.display(),
            per_s(rd),
            per_s(wr)
        );
        Ok(if alive.len() + finished == receipt.files.len() {
            Observation::in_effect(detail)
        } else {
            Observation::partial(detail)
        })
    }

    fn revert(receipt: &DiskIoReceipt) -> Result<()> {
        check_shape(receipt)?;
        // Workers first: an open descriptor would keep a file's blocks allocated. Processes
        // and cgroups are handled from here (pids are this PID namespace's); only the
        // files' paths belong to the mount namespace.
        receipt.stressors.stop()?;
        in_mount_ns(
            receipt.mnt_ns.as_ref(),
            receipt.boot_id.as_deref(),
            "disk.io's scratch files",
            || remove_files(receipt).map(drop),
        )
    }

    fn manual_undo(receipt: &DiskIoReceipt) -> Vec<String> {
        let mut out = receipt.stressors.manual_undo();
        let prefix = files::nsenter_prefix(receipt.mnt_ns.as_ref());
        for f in &receipt.files {
            let f = f.to_string_lossy();
            out.push(join(
                prefix
                    .iter()
                    .map(String::as_str)
                    .chain(["rm", "-f", "--", &f]),
            ));
        }
        out
    }

    fn touches(receipt: &DiskIoReceipt) -> Vec<String> {
        let mut out = Vec::new();
        let n = receipt.files.len();
        if n > 0 {
            let fs = in_mount_ns(
                receipt.mnt_ns.as_ref(),
                receipt.boot_id.as_deref(),
                "disk.io's scratch files",
                || {
                    let m = std::fs::metadata(&receipt.dir).map_err(|e| {
                        Error::io(format!("inspecting {}", receipt.dir.display()), e)
                    })?;
                    use std::os::unix::fs::MetadataExt;
                    Ok(mounts::label(&receipt.dir, m.dev()))
                },
            )
            .unwrap_or_else(|e| format!("the filesystem of {} ({e})", receipt.dir.display()));
            let mut line = format!(
                "{n} worker{} doing direct {} I/O in {} blocks on {fs}",
                if n == 1 { "" } else { "s" },
                receipt.mode.as_str(),
                Bytes(receipt.block_size).human()
            );
            if let Some(r) = receipt.rate {
                line.push_str(&format!(", at most {}/s each", Bytes(r).human()));
            }
            if let Some(b) = receipt.bytes {
                line.push_str(&format!(", {} each in all", Bytes(b).human()));
            }
            out.push(line);
            out.push(format!(
                "{n} scratch file{} of {} ({} in all) in {}",
                if n == 1 { "" } else { "s" },
                Bytes(receipt.file_size).human(),
                Bytes(receipt.file_size.saturating_mul(n as u64)).human(),
                receipt.dir.display()
            ));
        }
        out.extend(receipt.stressors.touches());
        out
    }

    /// Every scratch file must be exactly `<dir>/.chaos-agent-io-<fault id>-<n>` with `n`
    /// its position, every cgroup the fault's own, every live recorded process a
    /// `chaos-io` worker.
    fn check_receipt(fault_id: &str, receipt: &DiskIoReceipt) -> Result<()> {
        if !receipt.files.is_empty() && !files::is_plain_absolute(&receipt.dir) {
            return Err(drifted(format!(
                "refusing disk.io receipt of fault {fault_id:?}: its directory {} is not an \
                 absolute plain path",
                receipt.dir.display()
            )));
        }
        if receipt.files.len() > MAX_WORKERS as usize
            || receipt.file_ids.len() > receipt.files.len()
        {
            return Err(drifted(format!(
                "refusing disk.io receipt of fault {fault_id:?}: {} files, {} identities",
                receipt.files.len(),
                receipt.file_ids.len()
            )));
        }
        for (i, f) in receipt.files.iter().enumerate() {
            let want = scratch_file(&receipt.dir, fault_id, i).map_err(|e| {
                drifted(format!(
                    "refusing disk.io receipt: fault id {fault_id:?} names no scratch file ({e})"
                ))
            })?;
            if *f != want {
                return Err(drifted(format!(
                    "refusing disk.io receipt of fault {fault_id:?}: it names {} where this \
                     fault only ever creates {}",
                    f.display(),
                    want.display()
                )));
            }
        }
        receipt.stressors.check_receipt(fault_id, WORKER_NAME)
    }

    /// Scratch files named after a known fault id on every mounted filesystem (bounded as
    /// for `disk.fill`, see the crate docs), and the fault's cgroups in every
    /// hierarchy; one receipt per fault id and directory, which kills whatever is in the
    /// cgroups, removes them and unlinks the files.
    fn leftovers(known: &[String]) -> Result<Vec<Leftover<DiskIoReceipt>>> {
        let ids: HashSet<&str> = known.iter().map(String::as_str).collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let wanted = |n: &str| parse_name(n).is_some_and(|(id, _)| ids.contains(id));
        let (found, _) = mounts::scan(&wanted);
        let ns = files::current_mnt_ns();
        let boot = fault_core::host::boot_id();
        let mut out: Vec<Leftover<DiskIoReceipt>> = Vec::new();
        for f in found.into_iter().filter(|f| !f.is_dir) {
            let Some((id, n)) = parse_name(&f.name) else {
                continue;
            };
            let i = match out
                .iter()
                .position(|l| l.fault_id == id && l.receipt.dir == f.dir)
            {
                Some(i) => i,
                None => {
                    out.push(Leftover {
                        fault_id: id.to_string(),
                        found: String::new(),
                        receipt: DiskIoReceipt {
                            dir: f.dir.clone(),
                            files: Vec::new(),
                            mode: IoMode::Write,
                            block_size: ALIGN,
                            file_size: 0,
                            bytes: None,
                            rate: None,
                            stressors: Stressors::default(),
                            mnt_ns: ns.clone(),
                            boot_id: Some(boot.clone()),
                            file_ids: Vec::new(),
                        },
                    });
                    out.len() - 1
                }
            };
            let r = &mut out[i].receipt;
            while r.files.len() <= n {
                let next = scratch_file(&f.dir, id, r.files.len())?;
                r.files.push(next);
                r.file_ids.push(None);
            }
            r.file_ids[n] = Some(f.id);
            r.file_size = r.file_size.max(f.size);
            let l = &mut out[i];
            if !l.found.is_empty() {
                l.found.push_str(", ");
            }
            l.found.push_str(&format!(
                "scratch file {} ({}, {})",
                f.dir.join(&f.name).display(),
                Bytes(f.size).human(),
                f.fs
            ));
        }
        for c in Stressors::leftovers(known, WORKER_NAME) {
            match out.iter_mut().find(|l| l.fault_id == c.fault_id) {
                Some(l) => {
                    l.receipt.stressors = c.receipt;
                    l.found.push_str(&format!(", {}", c.found));
                }
                None => out.push(Leftover {
                    fault_id: c.fault_id,
                    found: c.found,
                    receipt: DiskIoReceipt {
                        dir: PathBuf::from("/"),
                        files: Vec::new(),
                        mode: IoMode::Write,
                        block_size: ALIGN,
                        file_size: 0,
                        bytes: None,
                        rate: None,
                        stressors: c.receipt,
                        mnt_ns: ns.clone(),
                        boot_id: Some(boot.clone()),
                        file_ids: Vec::new(),
                    },
                }),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn build(spec: serde_json::Value) -> Result<DiskIo> {
        let spec: DiskIoSpec =
            serde_json::from_value(spec).map_err(|e| Error::invalid(e.to_string()))?;
        DiskIo::new(spec)
    }

    #[test]
    fn spec_validation_table() {
        let ok = [
            json!({"path": "/var/tmp"}),
            json!({"path": "/var/tmp", "workers": 4, "mode": "read", "block_size": "4KiB"}),
            json!({"path": "/var/tmp", "mode": "mixed", "file_size": "1GiB", "bytes": "10GiB"}),
            json!({"path": "/var/tmp", "rate": "10MiB"}),
        ];
        for spec in ok {
            build(spec.clone()).unwrap_or_else(|e| panic!("{spec}: {e}"));
        }
        let bad = [
            (json!({}), "missing field `path`"),
            (json!({"path": "var/tmp"}), "is relative"),
            (json!({"path": ""}), "path is empty"),
            (json!({"path": "/var/tmp", "workers": 0}), "workers is 0"),
            (json!({"path": "/var/tmp", "workers": -1}), "invalid value"),
            (json!({"path": "/var/tmp", "workers": 1000}), "at most 256"),
            (
                json!({"path": "/var/tmp", "mode": "append"}),
                "unknown variant",
            ),
            (
                json!({"path": "/var/tmp", "block_size": 1000}),
                "multiple of 4096",
            ),
            (
                json!({"path": "/var/tmp", "block_size": 0}),
                "multiple of 4096",
            ),
            (
                json!({"path": "/var/tmp", "block_size": "128MiB"}),
                "up to 64MiB",
            ),
            (
                json!({"path": "/var/tmp", "file_size": "4KiB"}),
                "smaller than one block",
            ),
            (json!({"path": "/var/tmp", "bytes": 0}), "bytes is 0"),
            (json!({"path": "/var/tmp", "rate": 0}), "rate is 0"),
            (json!({"path": "/var/tmp", "rate": "-1MiB"}), "negative"),
            (json!({"path": "/var/tmp", "speed": 1}), "unknown field"),
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
    fn example_validates_through_the_registry() {
        let examples = chaos_engine::testing::build_examples(crate::register);
        assert_eq!(
            examples[IO_KIND].describe(),
            "2 workers doing direct mixed I/O in 256.0 KiB blocks on the filesystem of \
             /var/tmp, 50.0 MiB/s each"
        );
        let names: Vec<&str> = DiskIo::info().params.iter().map(|p| p.name).collect();
        assert_eq!(
            names,
            [
                "path",
                "workers",
                "mode",
                "block_size",
                "file_size",
                "bytes",
                "rate"
            ]
        );
    }

    #[test]
    fn file_size_is_whole_blocks_and_names_carry_the_fault_id() {
        let f = build(json!({"path": "/x", "block_size": "1MiB", "file_size": "10.5MiB"})).unwrap();
        assert_eq!(f.file_size(), 10 << 20);
        assert_eq!(
            scratch_file(Path::new("/x"), "r-1-1", 2).unwrap(),
            Path::new("/x/.chaos-agent-io-r-1-1-2")
        );
        assert!(scratch_file(Path::new("/x"), "a/b", 0).is_err());
    }

    #[test]
    fn plan_refuses_missing_paths_and_memory_filesystems() {
        let cx = Context::new("plan-io", "run");
        let e = build(json!({"path": "/nonexistent-chaos-dir"}))
            .unwrap()
            .plan(&cx)
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.to_string().contains("does not exist"), "{e}");
        if fs_magic(Path::new("/dev/shm")).ok() == Some(TMPFS_MAGIC) {
            let e = build(json!({"path": "/dev/shm"}))
                .unwrap()
                .plan(&cx)
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Unsupported);
            assert!(e.to_string().contains("O_DIRECT"), "{e}");
        }
    }

    #[test]
    fn receipt_functions_work_without_the_filesystem() {
        let r = DiskIoReceipt {
            dir: "/nonexistent-chaos-dir".into(),
            files: vec!["/nonexistent-chaos-dir/.chaos-agent-io-x-0".into()],
            mode: IoMode::Write,
            block_size: 4096,
            file_size: 4096,
            bytes: None,
            rate: None,
            stressors: Stressors::default(),
            mnt_ns: None,
            boot_id: None,
            file_ids: Vec::new(),
        };
        assert_eq!(
            DiskIo::verify(&r).unwrap().effect,
            fault_core::Effect::Clean
        );
        DiskIo::revert(&r).unwrap();
        DiskIo::revert(&r).unwrap();
        assert_eq!(
            DiskIo::manual_undo(&r),
            ["rm -f -- /nonexistent-chaos-dir/.chaos-agent-io-x-0"]
        );
        DiskIo::check_receipt("x", &r).unwrap();
        // Receipts written before the mount namespace and file identities were recorded.
        let old = serde_json::json!({
            "dir": "/nonexistent-chaos-dir",
            "files": ["/nonexistent-chaos-dir/.chaos-agent-io-x-0"],
            "mode": "write", "block_size": 4096, "file_size": 4096,
            "bytes": null, "rate": null,
            "stressors": {"cgroups": [], "processes": []}
        });
        let back: DiskIoReceipt = serde_json::from_value(old.clone()).unwrap();
        assert_eq!(back, r);
        assert_eq!(serde_json::to_value(&back).unwrap(), old);
    }

    #[test]
    fn scratch_file_names_parse_back() {
        assert_eq!(parse_name(".chaos-agent-io-r-1-1-2"), Some(("r-1-1", 2)));
        assert_eq!(parse_name(".chaos-agent-io-x-0"), Some(("x", 0)));
        for bad in [
            ".chaos-agent-io-x-",
            ".chaos-agent-io--1",
            ".chaos-agent-io-x-01",
            ".chaos-agent-io-x-256",
            ".chaos-agent-io-x-1a",
            ".chaos-agent-fill-x-1",
        ] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn check_receipt_wants_the_files_of_the_fault_id_in_order() {
        let dir = Path::new("/srv/io");
        let r = DiskIoReceipt {
            dir: dir.into(),
            files: (0..2)
                .map(|i| scratch_file(dir, "f1", i).unwrap())
                .collect(),
            mode: IoMode::Write,
            block_size: 4096,
            file_size: 4096,
            bytes: None,
            rate: None,
            stressors: Stressors::default(),
            mnt_ns: None,
            boot_id: None,
            file_ids: Vec::new(),
        };
        DiskIo::check_receipt("f1", &r).unwrap();
        assert_eq!(
            DiskIo::check_receipt("f2", &r).unwrap_err().kind(),
            ErrorKind::Drifted
        );
        for file in [
            "/srv/io/precious",
            "/etc/passwd",
            "/srv/io/.chaos-agent-io-f1-0", // in the wrong position
            "/srv/io/.chaos-agent-io-f2-1",
        ] {
            let mut edited = r.clone();
            edited.files[1] = file.into();
            let e = DiskIo::check_receipt("f1", &edited).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Drifted, "{file}: {e}");
        }
        for file in [
            "/srv/io/precious",
            "/etc/passwd",
            "/srv/io/sub/.chaos-agent-io-f1-1",
        ] {
            let mut edited = r.clone();
            edited.files[1] = file.into();
            let e = DiskIo::revert(&edited).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Drifted, "{file}: {e}");
        }
        let mut spaced = r.clone();
        spaced.dir = "/srv/my io;x".into();
        spaced.files = vec![scratch_file(&spaced.dir, "f1", 0).unwrap()];
        assert_eq!(
            DiskIo::manual_undo(&spaced),
            ["rm -f -- '/srv/my io;x/.chaos-agent-io-f1-0'"]
        );
    }
}
