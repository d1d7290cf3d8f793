//! Reverting a journaled fault from its record alone (with bounded retries, receipt checks
//! and panics turned into failures), and recovery of every record a crash left.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::failpoint;
use crate::journal::{Entry, Journal, Record, RecordState};
use crate::report::RevertOutcome;
use crate::runner::RetryPolicy;
use fault_core::{Effect, Error, ErrorKind, Registry, Result};

/// Revert a journaled fault from its record alone, with bounded retries, keeping the
/// journal current at every attempt. Used by the runner and by recovery.
///
/// The receipt is first checked against the fault id it is filed under
/// ([`Registry::check_receipt`]); a receipt that does not match (edited by someone) is not
/// acted on at all, and the record becomes `needs-manual`. A revert or verify that panics
/// counts as a failed attempt. Journal writes that fail are pushed to `journal_errors`;
/// reverting goes on regardless (the host matters more than the ledger).
pub fn revert_record(
    registry: &Registry,
    journal: &Journal,
    record: &mut Record,
    retry: &RetryPolicy,
    journal_errors: &mut Vec<String>,
) -> RevertOutcome {
    let mut put = |record: &Record| {
        if let Err(e) = journal.put(record) {
            journal_errors.push(format!("journal write for {} failed: {e}", record.fault_id));
        }
    };
    let inspect = |why: &str| {
        vec![format!(
            "{why}; nothing was touched. Inspect {}/{}.json: its receipt describes what the fault changed",
            journal.dir().display(),
            record.fault_id
        )]
    };
    let refused = match registry.get(&record.kind) {
        Err(e) => Some((
            format!("{e}; this agent cannot revert it"),
            inspect("this agent does not know the kind"),
        )),
        Ok(_) => match guarded("check_receipt", || {
            registry.check_receipt(&record.kind, &record.fault_id, &record.receipt)
        }) {
            Err(e) => Some((
                format!("the journal record was refused: {e}"),
                inspect("the receipt does not match its fault id (was the journal edited?)"),
            )),
            Ok(()) => None,
        },
    };
    if let Some((error, undo)) = refused {
        tracing::error!(fault_id = %record.fault_id, kind = %record.kind, %error, "revert refused");
        record.state = RecordState::NeedsManual;
        record.last_error = Some(error);
        record.manual_undo = undo;
        record.updated_at = fault_core::host::unix_now();
        put(record);
        return RevertOutcome::NeedsManual;
    }
    let reversible = registry
        .get(&record.kind)
        .map(|e| (e.info)().reversible)
        .unwrap_or(true);
    for delay in &retry.backoff {
        std::thread::sleep(*delay);
        record.state = RecordState::Reverting;
        record.attempts += 1;
        record.updated_at = fault_core::host::unix_now();
        put(record);
        failpoint::hit("mid-revert");
        let result =
            guarded("revert", || registry.revert(&record.kind, &record.receipt)).and_then(|()| {
                if reversible {
                    wait_clean(registry, record, retry.settle)
                } else {
                    Ok(())
                }
            });
        match result {
            Ok(()) => {
                record.state = RecordState::Reverted;
                record.last_error = None;
                record.updated_at = fault_core::host::unix_now();
                put(record);
                failpoint::hit("after-revert");
                return if reversible {
                    RevertOutcome::Reverted
                } else {
                    RevertOutcome::Irreversible
                };
            }
            Err(e) => {
                tracing::warn!(fault_id = %record.fault_id, kind = %record.kind, attempt = record.attempts, error = %e, "revert attempt failed");
                record.last_error = Some(e.to_string());
            }
        }
    }
    tracing::error!(fault_id = %record.fault_id, kind = %record.kind, error = record.last_error.as_deref().unwrap_or(""), "revert failed: a person must undo it");
    record.state = RecordState::NeedsManual;
    record.manual_undo = guarded("manual_undo", || {
        registry.manual_undo(&record.kind, &record.receipt)
    })
    .unwrap_or_else(|e| inspect(&format!("the receipt cannot say how to undo it ({e})")));
    record.updated_at = fault_core::host::unix_now();
    put(record);
    RevertOutcome::NeedsManual
}

/// Run one of a fault's own calls, turning a panic into an error: a panicking fault is a
/// failed fault (reverted from its receipt), never a dead agent.
pub(crate) fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        Err(Error::new(
            ErrorKind::Io,
            format!("{what} panicked: {}", panic_message(&*panic)),
        ))
    })
}

pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

fn wait_clean(registry: &Registry, record: &Record, settle: Duration) -> Result<()> {
    let end = Instant::now() + settle;
    loop {
        let obs = guarded("verify", || registry.verify(&record.kind, &record.receipt))?;
        if obs.effect == Effect::Clean {
            return Ok(());
        }
        if Instant::now() >= end {
            return Err(Error::new(
                ErrorKind::Drifted,
                format!("after revert the host is not clean: {}", obs.detail),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What recovery did with one journal entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecoverItem {
    /// Fault id.
    pub fault_id: String,
    /// Kind (empty when the record is unreadable).
    pub kind: String,
    /// State found in the journal.
    pub found: String,
    /// What recovery did.
    pub outcome: RecoverOutcome,
    /// Details (errors, where the receipt came from).
    pub detail: String,
    /// Commands for a person.
    pub manual_undo: Vec<String>,
}

/// The outcome of recovering one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecoverOutcome {
    /// Reverted now (or found already gone), verified clean.
    Reverted,
    /// Could not be reverted; a person must act.
    NeedsManual,
    /// The record is damaged and no intact copy exists: what it changed is unknown.
    Unidentifiable,
}

/// Revert every journal entry that is not `reverted` (including `needs-manual` ones, which
/// get another round of attempts). Needs no network and no token. The host is clean when
/// every item is `reverted`.
pub fn recover(
    registry: &Registry,
    journal: &Journal,
    retry: &RetryPolicy,
) -> Result<Vec<RecoverItem>> {
    let mut items = Vec::new();
    for entry in journal.load()? {
        let (mut record, mut source) = match entry {
            Entry::Ok(r) if r.state == RecordState::Reverted => continue,
            Entry::Corrupt { path, error, backup: Some(b), .. } => {
                (b, format!("record {} was damaged ({error}); used its last intact copy from the journal log. ", path.display()))
            }
            Entry::Corrupt { fault_id, path, error, backup: None } => {
                items.push(RecoverItem {
                    fault_id: fault_id.clone(),
                    kind: String::new(),
                    found: "corrupt".into(),
                    outcome: RecoverOutcome::Unidentifiable,
                    detail: format!("record {} is damaged ({error}) and has no intact copy; nothing was touched", path.display()),
                    manual_undo: vec![
                        format!("look for leftovers named after fault {fault_id}, e.g. `find / -xdev -name '.chaos-agent-*{fault_id}*'`, and stopped processes (`ps -eo pid,stat,comm | awk '$2 ~ /T/'`)"),
                        format!("then `chaos-agent forget {fault_id}`"),
                    ],
                });
                continue;
            }
            Entry::Ok(r) => (r, String::new()),
        };
        let found = record.state.as_str().to_string();
        let mut journal_errors = Vec::new();
        let outcome = revert_record(registry, journal, &mut record, retry, &mut journal_errors);
        if !journal_errors.is_empty() {
            source.push_str(&format!("{}. ", journal_errors.join("; ")));
        }
        let (outcome, detail) = match outcome {
            RevertOutcome::NeedsManual => (
                RecoverOutcome::NeedsManual,
                format!(
                    "{source}revert failed: {}",
                    record.last_error.clone().unwrap_or_default()
                ),
            ),
            RevertOutcome::Irreversible => (
                RecoverOutcome::Reverted,
                format!("{source}nothing to revert (irreversible)"),
            ),
            _ => (RecoverOutcome::Reverted, format!("{source}reverted")),
        };
        items.push(RecoverItem {
            fault_id: record.fault_id.clone(),
            kind: record.kind.clone(),
            found,
            outcome,
            detail,
            manual_undo: record.manual_undo.clone(),
        });
    }
    Ok(items)
}
