//! [`Session`]: the one front door to the engine.
//!
//! A session owns what every caller of the engine must get right the same way: the
//! state-directory checks and lock (one agent per state directory), the journal and its
//! compaction, the preflight before a run (no unrecovered faults), the agent's
//! self-protection (its OOM score), and recovery that compares the host with the journal.
//! `chaos-agent run`, `recover`, `status` and `forget`, the examples, the tests and the
//! daemon all go through it.
//!
//! ```no_run
//! # fn main() -> fault_core::Result<()> {
//! use chaos_engine::{experiment::Experiment, runner::AbortHandle, Session};
//! let registry = fault_core::Registry::new(); // chaos_kinds::registry() in the agent
//! let session = Session::open("/var/lib/chaos-agent".as_ref(), &registry)?;
//! let recovery = session.recover()?; // always first: revert what a crash left
//! assert!(recovery.clean());
//! let prepared = Experiment::load_toml("name = \"x\"\n[[steps]]\nfaults = []", &registry);
//! # let _ = prepared;
//! # Ok(()) }
//! ```

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use fault_core::{Error, ErrorKind, Registry, Result};
use serde::Serialize;

use crate::experiment::Prepared;
use crate::journal::{check_state_dir, Entry, Indexed, Journal, Record, RecordState, StateLock};
use crate::runner::{
    self, AbortHandle, DryRunItem, Events, RecoverItem, RecoverOutcome, RetryPolicy, RunReport,
    Runner,
};

/// How many `reverted` records the journal keeps for `status`.
const KEEP_REVERTED: usize = 200;

/// An open state directory: the lock is held for the life of this value.
pub struct Session<'r> {
    registry: &'r Registry,
    journal: Journal,
    retry: RetryPolicy,
    warnings: Vec<String>,
    _lock: StateLock,
}

impl std::fmt::Debug for Session<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("journal", &self.journal)
            .finish_non_exhaustive()
    }
}

/// What [`Session::recover`] did.
#[derive(Debug, Clone, Serialize)]
pub struct Recovery {
    /// One item per journal record that was not reverted, and per artifact found on the
    /// host that the journal no longer described.
    pub items: Vec<RecoverItem>,
    /// Kinds whose artifacts could not be looked for (the host is then not known clean).
    pub scan_errors: Vec<String>,
}

impl Recovery {
    /// Whether the host is known to be clean: every item reverted and every search done.
    pub fn clean(&self) -> bool {
        self.scan_errors.is_empty()
            && self
                .items
                .iter()
                .all(|i| i.outcome == RecoverOutcome::Reverted)
    }
}

/// An artifact of one of this state directory's faults, found on the host, that no journal
/// record describes.
#[derive(Debug, Clone, Serialize)]
pub struct Orphan {
    /// Fault id its name carries.
    pub fault_id: String,
    /// Kind that recognised it.
    pub kind: String,
    /// Where it was found.
    pub found: String,
    /// A receipt that reverts it.
    #[serde(skip)]
    receipt: serde_json::Value,
}

/// What [`Session::status`] found, without taking the lock or changing anything.
#[derive(Debug)]
pub struct Status {
    /// The journal's entries (empty when there is no journal).
    pub entries: Vec<Entry>,
    /// The pid of the agent holding the state directory, when a run is in progress.
    pub live_pid: Option<u32>,
    /// Artifacts of this state directory's faults found on the host that no record
    /// describes (the journal lost them); `chaos-agent recover` reverts them.
    pub orphans: Vec<Orphan>,
    /// Faults whose record is lost and whose kind cannot find its artifacts on the host:
    /// a person must check (see [`Lost`]).
    pub lost: Vec<Lost>,
    /// Kinds whose artifacts could not be looked for.
    pub scan_errors: Vec<String>,
}

/// A fault of this state directory whose journal record is lost, of a kind whose effect
/// cannot be found on the host (a stopped process is not marked as ours).
#[derive(Debug, Clone, Serialize)]
pub struct Lost {
    /// Fault id.
    pub fault_id: String,
    /// Kind (empty when unknown).
    pub kind: String,
}

impl Lost {
    fn advice(&self, registry: &Registry) -> (String, Vec<String>) {
        let what = registry
            .get(&self.kind)
            .map(|e| (e.info)().summary.to_string())
            .unwrap_or_else(|_| "its kind is unknown to this agent".into());
        (
            format!(
                "its journal record is lost and a {} fault leaves nothing on the host that can be proven ours, so nothing was touched",
                if self.kind.is_empty() { "?" } else { &self.kind }
            ),
            vec![
                format!("check by hand what it may have left: {what}"),
                format!("then `chaos-agent forget --force {}`", self.fault_id),
            ],
        )
    }
}

impl Status {
    /// Whether the journal and the host say everything is reverted.
    pub fn clean(&self) -> bool {
        self.orphans.is_empty()
            && self.lost.is_empty()
            && self.scan_errors.is_empty()
            && self
                .entries
                .iter()
                .all(|e| matches!(e, Entry::Ok(r) if r.state == RecordState::Reverted))
    }
}

/// What [`Session::forget`] dropped.
#[derive(Debug)]
pub struct Forgotten {
    /// The record's state when it was dropped (`None` when it was unreadable).
    pub state: Option<RecordState>,
    /// What stays on the host because the record was not reverted (with `--force`): the
    /// commands that would undo it by hand.
    pub left_on_host: Vec<String>,
}

impl<'r> Session<'r> {
    /// Open a state directory: check who may write it, take its lock (or fail with
    /// [`ErrorKind::Busy`] naming the holder), open and compact the journal, and protect
    /// this process from the OOM killer (stressors stay its first choice). Warnings that
    /// do not stop anything are in [`Session::warnings`].
    pub fn open(state_dir: &Path, registry: &'r Registry) -> Result<Session<'r>> {
        check_state_dir(state_dir)?;
        let lock = StateLock::acquire(state_dir)?;
        check_state_dir(state_dir)?;
        let journal = Journal::open(state_dir)?;
        journal.compact(KEEP_REVERTED)?;
        let mut warnings = Vec::new();
        if let Err(e) = fault_core::host::stressor::protect_self() {
            warnings.push(format!(
                "cannot lower this agent's own OOM score ({e}); stressors still run at oom_score_adj {}, so the OOM killer takes them first",
                fault_core::host::stressor::STRESSOR_OOM_SCORE_ADJ
            ));
        }
        Ok(Session {
            registry,
            journal,
            retry: RetryPolicy::default(),
            warnings,
            _lock: lock,
        })
    }

    /// Use another revert retry policy (tests shorten it).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Session<'r> {
        self.retry = retry;
        self
    }

    /// Things the person running the agent should know once (e.g. no OOM protection).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The journal.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        self.journal.state_dir()
    }

    /// The kinds this session runs.
    pub fn registry(&self) -> &'r Registry {
        self.registry
    }

    /// Revert everything a crash, a kill or a reboot left: every journal record that is
    /// not `reverted` (needs-manual ones get another round), and every artifact of this
    /// state directory's faults that the host still carries although its record is gone.
    /// Needs no network. The host is clean when [`Recovery::clean`] says so.
    pub fn recover(&self) -> Result<Recovery> {
        let mut items = runner::recover(self.registry, &self.journal, &self.retry)?;
        let Search {
            orphans,
            lost,
            errors: scan_errors,
        } = find_orphans(self.registry, &self.journal)?;
        for l in &lost {
            if items.iter().any(|i| i.fault_id == l.fault_id) {
                continue; // already reported (a damaged record)
            }
            let (detail, manual_undo) = l.advice(self.registry);
            items.push(RecoverItem {
                fault_id: l.fault_id.clone(),
                kind: l.kind.clone(),
                found: "not in the journal".into(),
                outcome: RecoverOutcome::Unidentifiable,
                detail,
                manual_undo,
            });
        }
        for orphan in orphans {
            let run_id = orphan
                .fault_id
                .rsplitn(3, '-')
                .nth(2)
                .unwrap_or("unknown")
                .to_string();
            let targets = self
                .registry
                .targets(&orphan.kind, &orphan.receipt)
                .unwrap_or_default();
            let mut record = Record::planned(
                &orphan.fault_id,
                &run_id,
                &orphan.kind,
                serde_json::Value::Null,
                orphan.receipt.clone(),
                targets,
            );
            record.state = RecordState::Applied;
            tracing::warn!(fault_id = %orphan.fault_id, kind = %orphan.kind, found = %orphan.found, "reverting an artifact the journal lost");
            // Unidentifiable (damaged) records of this id are superseded by what was found.
            items.retain(|i| i.fault_id != orphan.fault_id);
            let mut journal_errors = Vec::new();
            if let Err(e) = self.journal.put(&record) {
                journal_errors.push(e.to_string());
            }
            let outcome = runner::revert_record(
                self.registry,
                &self.journal,
                &mut record,
                &self.retry,
                &mut journal_errors,
            );
            let mut detail = format!("not in the journal; found {}", orphan.found);
            for e in journal_errors {
                detail.push_str(&format!("; {e}"));
            }
            let outcome = match outcome {
                runner::RevertOutcome::NeedsManual => {
                    detail.push_str(&format!(
                        "; revert failed: {}",
                        record.last_error.clone().unwrap_or_default()
                    ));
                    RecoverOutcome::NeedsManual
                }
                _ => {
                    detail.push_str("; reverted");
                    RecoverOutcome::Reverted
                }
            };
            items.push(RecoverItem {
                fault_id: orphan.fault_id,
                kind: orphan.kind,
                found: "not in the journal".into(),
                outcome,
                detail,
                manual_undo: record.manual_undo,
            });
        }
        let recovery = Recovery { items, scan_errors };
        if recovery.clean() {
            self.journal.compact(KEEP_REVERTED)?;
            // Ids without a record whose artifacts were looked for and not found: done.
            let records: BTreeSet<String> = self
                .journal
                .load()?
                .into_iter()
                .map(|e| match e {
                    Entry::Ok(r) => r.fault_id,
                    Entry::Corrupt { fault_id, .. } => fault_id,
                })
                .collect();
            let keep: Vec<Indexed> = self
                .journal
                .indexed()?
                .into_iter()
                .filter(|i| records.contains(&i.fault_id))
                .collect();
            self.journal.retain_indexed(&keep)?;
        }
        Ok(recovery)
    }

    /// What `prepared` would do, planned as of now from `state_dir`; changes nothing and
    /// takes no lock (a dry run works while another run holds the state directory).
    pub fn dry_run(
        registry: &Registry,
        state_dir: &Path,
        prepared: &Prepared,
        run_id: &str,
    ) -> Vec<DryRunItem> {
        runner::dry_run(registry, prepared, run_id, state_dir)
    }

    /// Run a validated experiment: refuse while the journal holds unrecovered faults
    /// ([`ErrorKind::Busy`]), then run every step, reverting everything at the end, on
    /// `abort`, and when a fault fails or panics. Returns when the host is back (or the
    /// report says what needs a person).
    pub fn run(
        &self,
        prepared: &Prepared,
        run_id: &str,
        abort: &AbortHandle,
        events: Events<'_>,
    ) -> Result<RunReport> {
        crate::journal::check_id(&runner::fault_id(run_id, 0, 0))?;
        let manual_targets = runner::preflight(&self.journal)?;
        let runner = Runner {
            registry: self.registry,
            journal: &self.journal,
            events,
            abort: abort.clone(),
            retry: self.retry.clone(),
        };
        Ok(runner.run(prepared, run_id, &manual_targets))
    }

    /// Drop a journal record after a person undid its fault by hand. A record whose fault
    /// may still be on the host (`planned`, `applied`, `reverting`) is refused unless
    /// `force`; then what stays on the host is returned, and its id is no longer looked
    /// for by recovery.
    pub fn forget(&self, fault_id: &str, force: bool) -> Result<Forgotten> {
        crate::journal::check_id(fault_id)?;
        let entry = self.journal.load()?.into_iter().find(|e| match e {
            Entry::Ok(r) => r.fault_id == fault_id,
            Entry::Corrupt { fault_id: id, .. } => id == fault_id,
        });
        let indexed = self.journal.indexed()?;
        let (state, left_on_host) = match entry {
            // A lost record, still looked for: drop it from the index.
            None if indexed.iter().any(|i| i.fault_id == fault_id) && force => (
                None,
                vec!["(its record was lost: whatever it changed stays as it is)".into()],
            ),
            None => {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "no journal record {fault_id} in {}",
                        self.state_dir().display()
                    ),
                ))
            }
            Some(Entry::Corrupt { .. }) => (None, Vec::new()),
            Some(Entry::Ok(r)) => {
                let live = matches!(
                    r.state,
                    RecordState::Planned | RecordState::Applied | RecordState::Reverting
                );
                let undo = if live {
                    self.registry
                        .manual_undo(&r.kind, &r.receipt)
                        .unwrap_or_else(|e| vec![format!("(its receipt cannot say: {e})")])
                } else {
                    Vec::new()
                };
                if live && !force {
                    return Err(Error::new(
                        ErrorKind::Busy,
                        format!(
                            "fault {fault_id} ({}) is {}: its change may still be on the host. Run `chaos-agent recover` to revert it; `chaos-agent forget --force {fault_id}` drops the record and leaves the change in place",
                            r.kind,
                            r.state.as_str()
                        ),
                    ));
                }
                (Some(r.state), undo)
            }
        };
        // Index first, then the record: a crash in between leaves a record (still shown by
        // `status`), never an indexed id whose record is gone.
        let keep: Vec<Indexed> = indexed
            .into_iter()
            .filter(|i| i.fault_id != fault_id)
            .collect();
        self.journal.retain_indexed(&keep)?;
        self.journal.forget(fault_id)?;
        Ok(Forgotten {
            state,
            left_on_host,
        })
    }

    /// What the journal holds and what the host still carries, without the lock and
    /// without changing anything; says when a run is in progress (and its pid).
    pub fn status(registry: &Registry, state_dir: &Path) -> Result<Status> {
        let live_pid = StateLock::holder(state_dir);
        if !state_dir.join("journal").is_dir() && !state_dir.join("fault-ids").exists() {
            return Ok(Status {
                entries: Vec::new(),
                live_pid,
                orphans: Vec::new(),
                lost: Vec::new(),
                scan_errors: Vec::new(),
            });
        }
        check_state_dir(state_dir)?;
        let journal = Journal::open(state_dir)?;
        let entries = journal.load()?;
        let search = find_orphans(registry, &journal)?;
        // A live run's ids are indexed a moment before their first record is written.
        let lost = if live_pid.is_some() {
            Vec::new()
        } else {
            search.lost
        };
        Ok(Status {
            entries,
            live_pid,
            orphans: search.orphans,
            lost,
            scan_errors: search.errors,
        })
    }
}

/// What the host holds of faults the journal lost.
struct Search {
    orphans: Vec<Orphan>,
    lost: Vec<Lost>,
    errors: Vec<String>,
}

/// This state directory's fault ids whose records are gone (or damaged beyond their backup
/// copy), looked for on the host by their kind (by every kind when it is unknown).
fn find_orphans(registry: &Registry, journal: &Journal) -> Result<Search> {
    // The index first, then the records: a record is written before its id is indexed, so
    // an id read here has its record in what is loaded next (a live run's new fault is
    // never mistaken for a lost one).
    let indexed = journal.indexed()?;
    let described: HashMap<String, bool> = journal
        .load()?
        .into_iter()
        .map(|e| match e {
            Entry::Ok(r) => (r.fault_id, true),
            Entry::Corrupt {
                fault_id, backup, ..
            } => (fault_id, backup.is_some()),
        })
        .collect();
    let candidates: Vec<Indexed> = indexed
        .into_iter()
        .filter(|i| !described.get(&i.fault_id).copied().unwrap_or(false))
        .collect();
    let mut search = Search {
        orphans: Vec::new(),
        lost: Vec::new(),
        errors: Vec::new(),
    };
    if candidates.is_empty() {
        return Ok(search);
    }
    let known_kind = |k: &str| registry.get(k).is_ok();
    for entry in registry.kinds() {
        let ids: Vec<String> = candidates
            .iter()
            .filter(|i| i.kind == entry.kind || !known_kind(&i.kind))
            .map(|i| i.fault_id.clone())
            .collect();
        if ids.is_empty() || !entry.finds_leftovers {
            continue;
        }
        let found = std::panic::catch_unwind(|| registry.leftovers(entry.kind, &ids))
            .unwrap_or_else(|_| {
                Err(Error::new(
                    ErrorKind::Io,
                    "looking for leftovers panicked".to_string(),
                ))
            });
        match found {
            Ok(list) => search.orphans.extend(list.into_iter().filter_map(|l| {
                ids.contains(&l.fault_id).then(|| Orphan {
                    fault_id: l.fault_id,
                    kind: entry.kind.to_string(),
                    found: l.found,
                    receipt: l.receipt,
                })
            })),
            Err(e) => search.errors.push(format!(
                "{}: cannot look for the artifacts of {}: {e}",
                entry.kind,
                ids.join(", ")
            )),
        }
    }
    // What no kind can look for, and could have left something: a person must check.
    for c in &candidates {
        let searchable_or_harmless = registry
            .get(&c.kind)
            .is_ok_and(|e| e.finds_leftovers || !(e.info)().reversible);
        let found = search.orphans.iter().any(|o| o.fault_id == c.fault_id);
        if !searchable_or_harmless && !found {
            search.lost.push(Lost {
                fault_id: c.fault_id.clone(),
                kind: c.kind.clone(),
            });
        }
    }
    Ok(search)
}
