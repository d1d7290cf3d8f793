//! The journal: the durable rollback ledger.
//!
//! One record per fault instance, in `<state-dir>/journal/<fault-id>.json`, written with
//! write-temp + `fsync` + `rename` + `fsync(dir)`, so a crash at any instant leaves either the
//! previous or the next version of a record, never a torn one. Every write is also appended
//! to `<state-dir>/journal/log.jsonl` with a CRC-32 per line: if a record file is damaged
//! later (disk error, a person's editor), recovery takes the last intact copy from the log.
//!
//! A record moves through [`RecordState`]: `planned` (written before the host is touched)
//! -> `applied` -> `reverting` -> `reverted`, or `needs-manual` when revert keeps failing.
//! Anything not `reverted` is reverted by `chaos-agent recover`.
//!
//! The state directory is created mode 0700 and records mode 0600: receipts name processes
//! and paths on the host.

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use fault_core::host::fs::{sync_dir, write_atomic};
use fault_core::{Error, ErrorKind, Result};

/// Version of the record schema written by this build.
pub const SCHEMA_VERSION: u32 = 1;

/// Where a fault is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecordState {
    /// Planned and journaled; the host may or may not have been changed yet.
    Planned,
    /// Injected: the change is on the host.
    Applied,
    /// Revert has started (and may have been interrupted).
    Reverting,
    /// Reverted and verified clean. Final.
    Reverted,
    /// Revert failed after bounded retries; a person must undo it (see `manual_undo`).
    NeedsManual,
}

impl RecordState {
    /// The kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordState::Planned => "planned",
            RecordState::Applied => "applied",
            RecordState::Reverting => "reverting",
            RecordState::Reverted => "reverted",
            RecordState::NeedsManual => "needs-manual",
        }
    }
}

/// One fault instance in the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// Schema version ([`SCHEMA_VERSION`]).
    pub version: u32,
    /// The fault id (also the file name).
    pub fault_id: String,
    /// The run it belongs to.
    pub run_id: String,
    /// The fault kind.
    pub kind: String,
    /// The validated spec.
    pub spec: Value,
    /// The receipt from plan (updated by inject): all that revert needs.
    pub receipt: Value,
    /// Current state.
    pub state: RecordState,
    /// Revert attempts so far.
    pub attempts: u32,
    /// The last error, if any.
    pub last_error: Option<String>,
    /// Kernel boot id when the record was created.
    pub boot_id: String,
    /// Unix seconds when the record was created.
    pub created_at: u64,
    /// Unix seconds of the last update.
    pub updated_at: u64,
    /// Host objects the receipt acts on (see [`fault_core::Fault::targets`]).
    pub targets: Vec<String>,
    /// Commands a person can run to undo it (filled when it becomes `needs-manual`).
    pub manual_undo: Vec<String>,
}

impl Record {
    /// A new `planned` record.
    pub fn planned(
        fault_id: &str,
        run_id: &str,
        kind: &str,
        spec: Value,
        receipt: Value,
        targets: Vec<String>,
    ) -> Record {
        let now = fault_core::host::unix_now();
        Record {
            version: SCHEMA_VERSION,
            fault_id: fault_id.to_string(),
            run_id: run_id.to_string(),
            kind: kind.to_string(),
            spec,
            receipt,
            state: RecordState::Planned,
            attempts: 0,
            last_error: None,
            boot_id: fault_core::host::boot_id(),
            created_at: now,
            updated_at: now,
            targets,
            manual_undo: Vec::new(),
        }
    }
}

/// One line of the fault-id index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Indexed {
    /// The fault id.
    pub fault_id: String,
    /// Its kind (empty if unknown).
    pub kind: String,
}

/// What the journal holds for one fault id.
#[derive(Debug, Clone)]
pub enum Entry {
    /// An intact record.
    Ok(Record),
    /// The record file is damaged.
    Corrupt {
        /// The fault id, from the file name.
        fault_id: String,
        /// The damaged file.
        path: PathBuf,
        /// Why it could not be read.
        error: String,
        /// The last intact copy from the backup log, if there is one.
        backup: Option<Record>,
    },
}

/// The journal in a state directory.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    log_lock: Mutex<()>,
    /// Fault ids already in the index file (so each is appended once).
    indexed: Mutex<std::collections::HashSet<String>>,
}

const LOG: &str = "log.jsonl";

/// The fault-id index, beside (not inside) the journal directory: every fault id this
/// state directory planned, appended and fsync'd before its first record is written. When
/// records are lost (a person deletes `journal/`), recovery still knows which ids were
/// ours and asks each kind to find their artifacts on the host.
const INDEX: &str = "fault-ids";

/// Fault ids become file names: keep them to a safe alphabet.
pub fn check_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "invalid fault id \"{id}\" (use 1-64 of [A-Za-z0-9._-])"
        )))
    }
}

impl Journal {
    /// Open (creating if needed) the journal under `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Journal> {
        let dir = state_dir.join("journal");
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::io(format!("creating journal directory {}", dir.display()), e))
            .map_err(journal_kind)?;
        let journal = Journal {
            dir,
            log_lock: Mutex::new(()),
            indexed: Mutex::new(Default::default()),
        };
        let known = journal.indexed()?;
        *journal.indexed.lock().unwrap_or_else(|e| e.into_inner()) =
            known.into_iter().map(|i| i.fault_id).collect();
        Ok(journal)
    }

    fn index_path(&self) -> PathBuf {
        self.state_dir().join(INDEX)
    }

    /// Every fault id in the index (see [`Journal::put`]) with its kind, in the order they
    /// were planned.
    pub fn indexed(&self) -> Result<Vec<Indexed>> {
        let path = self.index_path();
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(text
                .lines()
                .filter_map(|l| {
                    let (id, kind) = l.split_once(' ').unwrap_or((l, ""));
                    check_id(id).ok()?;
                    Some(Indexed {
                        fault_id: id.to_string(),
                        kind: kind.to_string(),
                    })
                })
                .collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(journal_kind(Error::io(
                format!("reading {}", path.display()),
                e,
            ))),
        }
    }

    fn index(&self, record: &Record) -> Result<()> {
        let mut indexed = self.indexed.lock().unwrap_or_else(|e| e.into_inner());
        if indexed.contains(&record.fault_id) {
            return Ok(());
        }
        let path = self.index_path();
        let kind: String = record
            .kind
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .collect();
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| {
                f.write_all(format!("{} {kind}\n", record.fault_id).as_bytes())?;
                f.sync_data()
            })
            .map_err(|e| journal_kind(Error::io(format!("appending to {}", path.display()), e)))?;
        indexed.insert(record.fault_id.clone());
        Ok(())
    }

    /// Rewrite the index with only `keep` (ids still worth looking for on the host).
    pub fn retain_indexed(&self, keep: &[Indexed]) -> Result<()> {
        let mut indexed = self.indexed.lock().unwrap_or_else(|e| e.into_inner());
        let text: String = keep
            .iter()
            .map(|i| format!("{} {}\n", i.fault_id, i.kind))
            .collect();
        write_atomic(&self.index_path(), text.as_bytes(), 0o600).map_err(journal_kind)?;
        *indexed = keep.iter().map(|i| i.fault_id.clone()).collect();
        Ok(())
    }

    /// The intact record of `fault_id`, if there is one.
    pub fn get(&self, fault_id: &str) -> Result<Option<Record>> {
        check_id(fault_id)?;
        let path = self.path_of(fault_id);
        match std::fs::read(&path) {
            Ok(b) => Ok(serde_json::from_slice(&b).ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(journal_kind(Error::io(
                format!("reading {}", path.display()),
                e,
            ))),
        }
    }

    /// The journal directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The state directory the journal lives in.
    pub fn state_dir(&self) -> &Path {
        self.dir.parent().unwrap_or(Path::new("/"))
    }

    fn path_of(&self, fault_id: &str) -> PathBuf {
        self.dir.join(format!("{fault_id}.json"))
    }

    /// Durably write `record` (replacing any previous version). When this returns, the
    /// record survives a crash or power loss.
    ///
    /// The fault id is then added to the fault-id index beside the journal directory (once),
    /// so that recovery can look for the fault's artifacts even if this record is lost
    /// later. Record first, index second: an id in the index without a record always means
    /// a record that existed and was lost, never one a crash kept from being written (the
    /// host is touched only after `put` returns).
    pub fn put(&self, record: &Record) -> Result<()> {
        check_id(&record.fault_id)?;
        let json = serde_json::to_string(record)
            .map_err(|e| Error::new(ErrorKind::Journal, format!("encoding record: {e}")))?;
        self.append_log(&json)?;
        let mut pretty = serde_json::to_vec_pretty(record)
            .map_err(|e| Error::new(ErrorKind::Journal, format!("encoding record: {e}")))?;
        pretty.push(b'\n');
        write_atomic(&self.path_of(&record.fault_id), &pretty, 0o600).map_err(journal_kind)?;
        self.index(record)
    }

    fn append_log(&self, json: &str) -> Result<()> {
        let _guard = self.log_lock.lock().unwrap_or_else(|e| e.into_inner());
        let path = self.dir.join(LOG);
        let line = format!("{:08x} {json}\n", crc32(json.as_bytes()));
        let result = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| {
                f.write_all(line.as_bytes())?;
                f.sync_data()
            });
        result.map_err(|e| journal_kind(Error::io(format!("appending to {}", path.display()), e)))
    }

    /// The last intact copy of every fault id in the backup log.
    fn log_records(&self) -> std::collections::HashMap<String, Record> {
        let mut out = std::collections::HashMap::new();
        let Ok(text) = std::fs::read(self.dir.join(LOG)) else {
            return out;
        };
        for line in text.split(|&b| b == b'\n') {
            if let Some(rec) = parse_log_line(line) {
                out.insert(rec.fault_id.clone(), rec);
            }
        }
        out
    }

    /// Every record, sorted by creation time (then id). Damaged records are returned as
    /// [`Entry::Corrupt`] with the last intact copy from the backup log, when there is one.
    pub fn load(&self) -> Result<Vec<Entry>> {
        let rd = std::fs::read_dir(&self.dir)
            .map_err(|e| journal_kind(Error::io(format!("reading {}", self.dir.display()), e)))?;
        let mut backups: Option<std::collections::HashMap<String, Record>> = None;
        let mut entries = Vec::new();
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(id) = name.strip_suffix(".json") else {
                continue;
            };
            if name.starts_with('.') {
                continue; // temp file of an interrupted write: the rename never happened
            }
            let path = e.path();
            let parsed = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Record>(&b).map_err(|e| e.to_string()))
                .and_then(|r| {
                    if r.fault_id != id {
                        Err(format!("record names fault {} but the file is {name}", r.fault_id))
                    } else if r.version > SCHEMA_VERSION {
                        Err(format!("record schema version {} is newer than this agent's ({SCHEMA_VERSION})", r.version))
                    } else {
                        Ok(r)
                    }
                });
            match parsed {
                Ok(r) => entries.push(Entry::Ok(r)),
                Err(error) => {
                    let backups = backups.get_or_insert_with(|| self.log_records());
                    entries.push(Entry::Corrupt {
                        fault_id: id.to_string(),
                        path,
                        error,
                        backup: backups.get(id).cloned(),
                    });
                }
            }
        }
        entries.sort_by(|a, b| {
            let key = |e: &Entry| match e {
                Entry::Ok(r) => (r.created_at, r.fault_id.clone()),
                Entry::Corrupt {
                    fault_id, backup, ..
                } => (
                    backup.as_ref().map(|r| r.created_at).unwrap_or(0),
                    fault_id.clone(),
                ),
            };
            key(a).cmp(&key(b))
        });
        Ok(entries)
    }

    /// Intact records only.
    pub fn records(&self) -> Result<Vec<Record>> {
        Ok(self
            .load()?
            .into_iter()
            .filter_map(|e| match e {
                Entry::Ok(r) => Some(r),
                Entry::Corrupt { .. } => None,
            })
            .collect())
    }

    /// Remove a record (after a person has undone it by hand, or a corrupt file they have
    /// dealt with). Returns whether something was removed.
    pub fn forget(&self, fault_id: &str) -> Result<bool> {
        check_id(fault_id)?;
        let path = self.path_of(fault_id);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                let _ = sync_dir(&self.dir);
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(journal_kind(Error::io(
                format!("removing {}", path.display()),
                e,
            ))),
        }
    }

    /// Keep the journal small: drop `reverted` records beyond the newest `keep_reverted`,
    /// and rewrite the backup log with only the latest line of each remaining record.
    /// Call it while holding the state lock.
    pub fn compact(&self, keep_reverted: usize) -> Result<()> {
        // Temporary files of writes interrupted by a crash (the rename never happened).
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                let name = e.file_name();
                if name
                    .to_str()
                    .is_some_and(|n| n.starts_with('.') && n.contains(".tmp."))
                {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let entries = self.load()?;
        let mut reverted: Vec<&Record> = entries
            .iter()
            .filter_map(|e| match e {
                Entry::Ok(r) if r.state == RecordState::Reverted => Some(r),
                _ => None,
            })
            .collect();
        reverted.sort_by_key(|r| std::cmp::Reverse((r.updated_at, r.fault_id.clone())));
        // A reverted record was verified clean: its id need not be looked for again. Ids
        // without any record stay (their record was lost; recovery looks for them). The
        // index is rewritten before records are removed, so a crash in between never
        // leaves an indexed id without its record.
        let done: std::collections::HashSet<&str> =
            reverted.iter().map(|r| r.fault_id.as_str()).collect();
        let keep: Vec<Indexed> = self
            .indexed()?
            .into_iter()
            .filter(|i| !done.contains(i.fault_id.as_str()))
            .collect();
        self.retain_indexed(&keep)?;
        for r in reverted.iter().skip(keep_reverted) {
            self.forget(&r.fault_id)?;
        }
        let _guard = self.log_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut text = String::new();
        for e in &entries {
            let keep = match e {
                Entry::Ok(r) => (r.state != RecordState::Reverted).then(|| r.clone()),
                Entry::Corrupt { backup, .. } => backup.clone(),
            };
            if let Some(r) = keep {
                let json = serde_json::to_string(&r)
                    .map_err(|e| Error::new(ErrorKind::Journal, format!("encoding record: {e}")))?;
                text.push_str(&format!("{:08x} {json}\n", crc32(json.as_bytes())));
            }
        }
        write_atomic(&self.dir.join(LOG), text.as_bytes(), 0o600).map_err(journal_kind)
    }
}

fn journal_kind(e: Error) -> Error {
    match e.kind() {
        ErrorKind::PermissionDenied => e,
        _ => Error::new(ErrorKind::Journal, e.to_string()),
    }
}

fn parse_log_line(line: &[u8]) -> Option<Record> {
    let line = std::str::from_utf8(line).ok()?;
    let (crc, json) = line.split_once(' ')?;
    let crc = u32::from_str_radix(crc, 16).ok()?;
    if crc32(json.as_bytes()) != crc {
        return None;
    }
    serde_json::from_str(json).ok()
}

/// CRC-32 (IEEE 802.3), bitwise: the log is small and this is not a hot path.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The one-agent-per-machine lock: an exclusive `flock` on `<state-dir>/lock`, held for the
/// life of this value. The file holds the owner's pid for error messages.
#[derive(Debug)]
pub struct StateLock {
    _file: std::fs::File,
}

impl StateLock {
    /// Take the lock, or fail at once with [`ErrorKind::Busy`] naming the holder.
    pub fn acquire(state_dir: &Path) -> Result<StateLock> {
        use std::io::{Read, Seek};
        use std::os::fd::AsRawFd;
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(|e| {
                Error::io(
                    format!("creating state directory {}", state_dir.display()),
                    e,
                )
            })?;
        let path = state_dir.join("lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        // SAFETY: flock on a valid fd.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let who = if holder.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {holder})")
                };
                return Err(Error::new(
                    ErrorKind::Busy,
                    format!(
                        "another chaos-agent{who} is using {}; one agent per machine — wait for it to finish or stop it first",
                        state_dir.display()
                    ),
                ));
            }
            return Err(Error::io(format!("locking {}", path.display()), err));
        }
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = writeln!(file, "{}", std::process::id());
        Ok(StateLock { _file: file })
    }

    /// The pid of the process holding the lock of `state_dir`, if one does. Reads
    /// `/proc/locks`, so asking never takes (or delays) the lock.
    pub fn holder(state_dir: &Path) -> Option<u32> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(state_dir.join("lock")).ok()?;
        let dev = meta.dev();
        let (major, minor) = (libc::major(dev), libc::minor(dev));
        let locks = std::fs::read_to_string("/proc/locks").ok()?;
        // "1: FLOCK  ADVISORY  WRITE 4242 00:1f:123456 0 EOF"
        locks.lines().find_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.get(1) != Some(&"FLOCK") || f.get(2) == Some(&"->") {
                return None;
            }
            let mut id = f.get(5)?.split(':');
            let ma = u32::from_str_radix(id.next()?, 16).ok()?;
            let mi = u32::from_str_radix(id.next()?, 16).ok()?;
            let ino: u64 = id.next()?.parse().ok()?;
            (ma == major && mi == minor && ino == meta.ino())
                .then(|| f.get(4)?.parse().ok())
                .flatten()
        })
    }
}

/// Refuse a state directory that someone else could write: its records tell revert what to
/// delete and whom to signal, as root. It must be a directory owned by this process's
/// effective user and not writable by group or others; the same holds for its `journal/`.
/// A missing directory is fine (it is created 0700).
pub fn check_state_dir(state_dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    for dir in [state_dir.to_path_buf(), state_dir.join("journal")] {
        let meta = match std::fs::metadata(&dir) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(format!("checking {}", dir.display()), e)),
        };
        let d = dir.display().to_string();
        let problem = if !meta.is_dir() {
            Some((
                "is not a directory".to_string(),
                format!(
                    "move it away: {}",
                    fault_core::host::shell::join(["mv", &d, &format!("{d}.old")])
                ),
            ))
        } else if meta.uid() != euid {
            Some((
                format!(
                    "is owned by uid {}, not by this agent's uid {euid}",
                    meta.uid()
                ),
                fault_core::host::shell::join(["chown", &euid.to_string(), &d]),
            ))
        } else if meta.mode() & 0o022 != 0 {
            Some((
                format!(
                    "is writable by {} (mode {:04o})",
                    if meta.mode() & 0o002 != 0 {
                        "everyone"
                    } else {
                        "its group"
                    },
                    meta.mode() & 0o7777
                ),
                fault_core::host::shell::join(["chmod", "go-w", &d]),
            ))
        } else {
            None
        };
        if let Some((problem, fix)) = problem {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                format!(
                    "refusing state directory {}: {d} {problem}; its journal tells revert what to delete and whom to signal, so only the agent's user may write it (check nobody tampered with it, then: {fix})",
                    state_dir.display(),
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> PathBuf {
        let p =
            std::env::temp_dir().join(format!("journal-test-{}", fault_core::host::random_hex(6)));
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    fn rec(id: &str) -> Record {
        Record::planned(
            id,
            "run1",
            "test.kind",
            serde_json::json!({"a": 1}),
            serde_json::json!({"r": id}),
            vec![],
        )
    }

    #[test]
    fn crc_matches_reference() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn put_then_load_round_trips_with_private_modes() {
        use std::os::unix::fs::PermissionsExt;
        let d = tmp();
        let j = Journal::open(&d).unwrap();
        let mut r = rec("f1");
        j.put(&r).unwrap();
        r.state = RecordState::Applied;
        j.put(&r).unwrap();
        let recs = j.records().unwrap();
        assert_eq!(recs, vec![r]);
        let mode = std::fs::metadata(j.dir().join("f1.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = std::fs::metadata(j.dir()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn corrupt_record_falls_back_to_log_copy() {
        let d = tmp();
        let j = Journal::open(&d).unwrap();
        let mut r = rec("f2");
        j.put(&r).unwrap();
        r.state = RecordState::Applied;
        j.put(&r).unwrap();
        let path = j.dir().join("f2.json");
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len / 2)
            .unwrap();
        match &j.load().unwrap()[0] {
            Entry::Corrupt {
                fault_id,
                backup: Some(b),
                ..
            } => {
                assert_eq!(fault_id, "f2");
                assert_eq!(b.state, RecordState::Applied);
            }
            other => panic!("expected corrupt with backup, got {other:?}"),
        }
        // Damage the log too: the damaged line is skipped, never misread.
        let log = j.dir().join(LOG);
        let mut text = std::fs::read(&log).unwrap();
        let n = text.len();
        text[n - 10] ^= 0x55;
        std::fs::write(&log, &text).unwrap();
        match &j.load().unwrap()[0] {
            Entry::Corrupt {
                backup: Some(b), ..
            } => assert_eq!(b.state, RecordState::Planned),
            other => panic!("expected older backup, got {other:?}"),
        }
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn compact_keeps_unreverted_and_newest_reverted() {
        let d = tmp();
        let j = Journal::open(&d).unwrap();
        for i in 0..5 {
            let mut r = rec(&format!("done{i}"));
            r.state = RecordState::Reverted;
            r.updated_at = i;
            j.put(&r).unwrap();
        }
        j.put(&rec("live")).unwrap();
        let stale = j.dir().join(".live.json.tmp.12345");
        std::fs::write(&stale, b"{").unwrap();
        j.compact(2).unwrap();
        assert!(!stale.exists(), "interrupted temp files are removed");
        let mut ids: Vec<String> = j
            .records()
            .unwrap()
            .into_iter()
            .map(|r| r.fault_id)
            .collect();
        ids.sort();
        assert_eq!(ids, vec!["done3", "done4", "live"]);
        let log = std::fs::read_to_string(j.dir().join(LOG)).unwrap();
        assert_eq!(
            log.lines().count(),
            1,
            "only the live record stays in the log"
        );
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn ids_are_checked() {
        for bad in ["", "../x", "a/b", ".hidden", &"x".repeat(65)] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
        assert!(check_id("3f9a1c2e-1-2").is_ok());
    }

    #[test]
    fn lock_is_exclusive() {
        let d = tmp();
        let held = StateLock::acquire(&d).unwrap();
        // flock locks are per open file description: a second open in the same process
        // conflicts just as another process would.
        let err = StateLock::acquire(&d).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Busy);
        assert!(
            err.to_string().contains(&std::process::id().to_string()),
            "{err}"
        );
        drop(held);
        StateLock::acquire(&d).unwrap();
        std::fs::remove_dir_all(d).unwrap();
    }
}
