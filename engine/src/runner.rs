//! The runner: executes a validated experiment and always reverts.
//!
//! For each step, every fault is **planned** first (targets resolved, nothing changed); if
//! any plan fails, or two faults of the step act on the same target, or a target still waits
//! for a person to undo an earlier fault, the step fails before anything is touched. Then
//! each fault is journaled as `planned` (fsync'd) and runs on its own thread:
//! wait for its start delay -> inject -> journal `applied` -> verify it took effect -> hold
//! for its duration (calling `maintain` when the fault asks) -> revert -> verify clean ->
//! journal `reverted`.
//!
//! A fault that fails to inject or verify is reverted (partial artifacts too) and makes the
//! other faults of the step revert at once; the step and the run are reported failed and the
//! remaining steps do not run. An abort (Ctrl-C, SIGTERM, the daemon's abort order, a lost
//! lease) ends the hold of every fault, which then reverts. A revert is retried with
//! backoff; when it keeps failing the record becomes `needs-manual`, carrying the commands a
//! person can run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::experiment::{FaultDef, Prepared};
use crate::failpoint;
pub use crate::report::{
    Event, FaultReport, FaultState, RevertOutcome, RunOutcome, RunReport, StepOutcome, StepReport,
};
use crate::revert::{guarded, panic_message};
pub use crate::revert::{recover, revert_record, RecoverItem, RecoverOutcome};

use crate::journal::{Entry, Journal, Record, RecordState};
use fault_core::{Context, DynFault, Effect, Error, ErrorKind, Registry, Result};

/// A cancellation flag shared by the runner and whoever may abort it. A child handle is
/// aborted when its parent is, but aborting a child leaves the parent running.
#[derive(Debug, Clone, Default)]
pub struct AbortHandle {
    inner: Arc<AbortInner>,
}

#[derive(Debug, Default)]
struct AbortInner {
    flag: AtomicBool,
    reason: Mutex<Option<String>>,
    parent: Option<AbortHandle>,
    /// Shared by a handle and all its descendants: every abort in the family rings it, so
    /// sleepers wake at once (and re-check whether it was for them).
    bell: Arc<Bell>,
}

#[derive(Debug, Default)]
struct Bell {
    rung: Mutex<u64>,
    cv: std::sync::Condvar,
}

impl AbortHandle {
    /// A fresh, not-aborted handle.
    pub fn new() -> AbortHandle {
        AbortHandle::default()
    }

    /// A handle aborted by this one (and by its own `abort`).
    pub fn child(&self) -> AbortHandle {
        AbortHandle {
            inner: Arc::new(AbortInner {
                parent: Some(self.clone()),
                bell: self.inner.bell.clone(),
                ..Default::default()
            }),
        }
    }

    /// Abort, keeping the first reason given.
    pub fn abort(&self, reason: impl Into<String>) {
        let mut r = self.inner.reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            *r = Some(reason.into());
        }
        self.inner.flag.store(true, Ordering::SeqCst);
        drop(r);
        let bell = &self.inner.bell;
        *bell.rung.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        bell.cv.notify_all();
    }

    /// Whether this handle or an ancestor was aborted.
    pub fn is_aborted(&self) -> bool {
        self.inner.flag.load(Ordering::SeqCst)
            || self.inner.parent.as_ref().is_some_and(|p| p.is_aborted())
    }

    /// The reason of the nearest aborted handle.
    pub fn reason(&self) -> Option<String> {
        if self.inner.flag.load(Ordering::SeqCst) {
            return self
                .inner
                .reason
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
        }
        self.inner.parent.as_ref().and_then(|p| p.reason())
    }

    /// Sleep up to `d`, waking as soon as this handle (or an ancestor) is aborted.
    /// Returns `true` if aborted.
    pub fn sleep(&self, d: Duration) -> bool {
        self.sleep_until(Instant::now() + d)
    }

    /// Sleep until `end`, waking as soon as this handle (or an ancestor) is aborted.
    /// Returns `true` if aborted.
    pub fn sleep_until(&self, end: Instant) -> bool {
        let bell = &self.inner.bell;
        let mut rung = bell.rung.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if self.is_aborted() {
                return true;
            }
            let now = Instant::now();
            if now >= end {
                return false;
            }
            rung = bell
                .cv
                .wait_timeout(rung, end - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// How often and how patiently a failing revert is retried before `needs-manual`.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Delays before each attempt; its length is the number of attempts.
    pub backoff: Vec<Duration>,
    /// How long to wait for `verify` to report clean after a successful revert.
    pub settle: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            backoff: vec![
                Duration::ZERO,
                Duration::from_millis(250),
                Duration::from_secs(1),
            ],
            settle: Duration::from_secs(1),
        }
    }
}

/// The event callback.
pub type Events<'a> = &'a (dyn Fn(&Event) + Sync);

/// Runs experiments; see the module docs.
pub struct Runner<'a> {
    /// Kinds.
    pub registry: &'a Registry,
    /// The journal (held under the state lock by the caller).
    pub journal: &'a Journal,
    /// Progress callback.
    pub events: Events<'a>,
    /// Aborts the run.
    pub abort: AbortHandle,
    /// Revert retries.
    pub retry: RetryPolicy,
}

impl std::fmt::Debug for Runner<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("journal", &self.journal)
            .finish_non_exhaustive()
    }
}

/// A new run id: 8 random hex digits.
pub fn new_run_id() -> String {
    fault_core::host::random_hex(4)
}

/// The fault id of fault `fault` (0-based) of step `step` in run `run_id`.
pub fn fault_id(run_id: &str, step: usize, fault: usize) -> String {
    format!("{run_id}-{}-{}", step + 1, fault + 1)
}

/// Refuse to start while the journal holds faults that were never reverted (a crashed run):
/// those must be recovered first. Returns the targets of `needs-manual` records, which new
/// faults may not touch.
pub fn preflight(journal: &Journal) -> Result<Vec<String>> {
    let mut pending = Vec::new();
    let mut manual = Vec::new();
    for e in journal.load()? {
        match e {
            Entry::Ok(r) if r.state == RecordState::NeedsManual => manual.extend(r.targets),
            Entry::Ok(r) if r.state != RecordState::Reverted => pending.push(r.fault_id),
            Entry::Ok(_) => {}
            Entry::Corrupt { fault_id, .. } => pending.push(format!("{fault_id} (corrupt record)")),
        }
    }
    if !pending.is_empty() {
        return Err(Error::new(
            ErrorKind::Busy,
            format!(
                "the journal holds {} fault(s) from an earlier run that were never reverted ({}); run `chaos-agent recover` first",
                pending.len(),
                pending.join(", ")
            ),
        ));
    }
    Ok(manual)
}

/// One planned fault of a step.
struct Planned<'p> {
    fault: &'p dyn DynFault,
    def: &'p FaultDef,
    cx: Context,
    record: Record,
}

impl Runner<'_> {
    fn emit_fault(&self, step: usize, r: &Record, state: FaultState, detail: impl Into<String>) {
        (self.events)(&Event::Fault {
            step,
            fault_id: r.fault_id.clone(),
            kind: r.kind.clone(),
            state,
            detail: detail.into(),
            touches: Vec::new(),
        });
    }

    /// Write a record; a failure is announced as an event and returned as a message.
    fn put(&self, record: &Record) -> std::result::Result<(), String> {
        self.journal.put(record).map_err(|e| {
            let error = format!("journal write for {} failed: {e}", record.fault_id);
            tracing::error!(fault_id = %record.fault_id, %error, "journal write failed");
            (self.events)(&Event::JournalError {
                fault_id: record.fault_id.clone(),
                error: error.clone(),
            });
            error
        })
    }

    /// Run a validated experiment. Returns when every step has ended and every applied
    /// change has been reverted (or marked `needs-manual`). Call [`preflight`] first.
    pub fn run(&self, prepared: &Prepared, run_id: &str, manual_targets: &[String]) -> RunReport {
        let started = Instant::now();
        let exp = &prepared.experiment;
        tracing::info!(run_id, name = %exp.name, steps = exp.steps.len(), "run started");
        (self.events)(&Event::RunStarted {
            run_id: run_id.to_string(),
            name: exp.name.clone(),
            steps: exp.steps.len(),
            max_duration_ms: exp.total_duration().as_millis() as u64,
        });
        let mut steps = Vec::new();
        let mut outcome = RunOutcome::Completed;
        for (si, step) in exp.steps.iter().enumerate() {
            if outcome != RunOutcome::Completed || self.abort.is_aborted() {
                if self.abort.is_aborted() && outcome == RunOutcome::Completed {
                    outcome = RunOutcome::Aborted;
                }
                steps.push(StepReport {
                    name: step.name.clone(),
                    outcome: StepOutcome::Skipped,
                    error: None,
                    faults: Vec::new(),
                });
                (self.events)(&Event::StepFinished {
                    step: si,
                    outcome: StepOutcome::Skipped,
                });
                continue;
            }
            let report = self.run_step(
                si,
                &step.name,
                &prepared.faults[si],
                &step.faults,
                run_id,
                manual_targets,
            );
            (self.events)(&Event::StepFinished {
                step: si,
                outcome: report.outcome,
            });
            match report.outcome {
                StepOutcome::Failed => outcome = RunOutcome::Failed,
                StepOutcome::Aborted => outcome = RunOutcome::Aborted,
                _ => {}
            }
            steps.push(report);
        }
        let report = RunReport {
            run_id: run_id.to_string(),
            name: exp.name.clone(),
            outcome,
            abort_reason: if outcome == RunOutcome::Aborted {
                self.abort.reason()
            } else {
                None
            },
            steps,
            elapsed_ms: started.elapsed().as_millis() as u64,
        };
        tracing::info!(run_id, outcome = ?report.outcome, host_clean = report.host_clean(), elapsed_ms = report.elapsed_ms, "run finished");
        (self.events)(&Event::RunFinished {
            report: report.clone(),
        });
        report
    }

    fn run_step(
        &self,
        si: usize,
        name: &str,
        faults: &[Box<dyn DynFault>],
        defs: &[FaultDef],
        run_id: &str,
        manual_targets: &[String],
    ) -> StepReport {
        (self.events)(&Event::StepStarted {
            step: si,
            name: name.to_string(),
            faults: faults.len(),
        });
        let failed = |error: String, reports: Vec<FaultReport>| StepReport {
            name: name.to_string(),
            outcome: StepOutcome::Failed,
            error: Some(error),
            faults: reports,
        };
        let skipped = |f: &dyn DynFault, id: String, error: Option<String>| FaultReport {
            fault_id: id,
            kind: f.kind().to_string(),
            description: f.describe(),
            injected: false,
            observed: None,
            held_ms: 0,
            revert: RevertOutcome::NotNeeded,
            error,
            manual_undo: Vec::new(),
        };

        // 1. Plan everything; change nothing.
        let mut planned: Vec<Planned<'_>> = Vec::new();
        let mut errors = Vec::new();
        for (fi, (fault, def)) in faults.iter().zip(defs).enumerate() {
            let id = fault_id(run_id, si, fi);
            let cx = context(&id, run_id, self.journal.state_dir());
            let result = guarded("plan", || fault.plan(&cx)).and_then(|receipt| {
                let targets = self.registry.targets(fault.kind(), &receipt)?;
                Ok((receipt, targets))
            });
            match result {
                Ok((receipt, targets)) => {
                    let record =
                        Record::planned(&id, run_id, fault.kind(), fault.spec(), receipt, targets);
                    planned.push(Planned {
                        fault: fault.as_ref(),
                        def,
                        cx,
                        record,
                    });
                }
                Err(e) => errors.push(format!("{id} ({}): {e}", fault.kind())),
            }
        }
        // 2. Refuse overlapping targets, and targets waiting for manual undo.
        for (i, a) in planned.iter().enumerate() {
            for t in &a.record.targets {
                if manual_targets.contains(t) {
                    errors.push(format!(
                        "{} ({}): {t} still carries a fault that needs manual undo; undo it and run `chaos-agent forget <fault-id>`",
                        a.record.fault_id, a.record.kind
                    ));
                }
                for b in &planned[i + 1..] {
                    if b.record.targets.contains(t) {
                        errors.push(format!(
                            "{} and {} both act on {t}; faults of one step run at the same time, so put them in separate steps",
                            a.record.fault_id, b.record.fault_id
                        ));
                    }
                }
            }
        }
        if !errors.is_empty() {
            let reports = faults
                .iter()
                .enumerate()
                .map(|(fi, f)| skipped(f.as_ref(), fault_id(run_id, si, fi), None))
                .collect();
            for p in &planned {
                self.emit_fault(
                    si,
                    &p.record,
                    FaultState::Skipped,
                    "step failed before injection",
                );
            }
            return failed(
                format!("nothing was changed: {}", errors.join("; ")),
                reports,
            );
        }
        failpoint::hit("after-plan");

        // 3. Journal every plan before touching the host.
        for (i, p) in planned.iter().enumerate() {
            if let Err(e) = self.put(&p.record) {
                // Nothing is injected yet: close the records already written. Should that
                // fail too, they stay `planned`, which recovery reverts harmlessly.
                for q in &mut planned[..i] {
                    q.record.state = RecordState::Reverted;
                    let _ = self.put(&q.record);
                }
                let reports = planned
                    .iter()
                    .map(|p| skipped(p.fault, p.record.fault_id.clone(), None))
                    .collect();
                return failed(format!("nothing was changed: {e}"), reports);
            }
            (self.events)(&Event::Fault {
                step: si,
                fault_id: p.record.fault_id.clone(),
                kind: p.record.kind.clone(),
                state: FaultState::Planned,
                detail: p.fault.describe(),
                touches: self
                    .registry
                    .touches(&p.record.kind, &p.record.receipt)
                    .unwrap_or_default(),
            });
        }
        failpoint::hit("after-journal-planned");

        // 4. Run the faults of the step in parallel.
        let step_abort = self.abort.child();
        let reports: Vec<FaultReport> = std::thread::scope(|s| {
            let handles: Vec<_> = planned
                .into_iter()
                .map(|p| {
                    let step_abort = step_abort.clone();
                    let id = p.record.fault_id.clone();
                    let description = p.fault.describe();
                    let h = s.spawn(move || self.run_fault(si, p, &step_abort));
                    (h, id, description)
                })
                .collect();
            handles
                .into_iter()
                .map(|(h, id, description)| {
                    h.join().unwrap_or_else(|panic| {
                        // The fault's own calls are guarded; this is a panic elsewhere on
                        // its thread. Its last journaled record says what to revert.
                        step_abort.abort(format!("{id} failed: its thread panicked"));
                        self.revert_after_panic(si, &id, description, &panic_message(&*panic))
                    })
                })
                .collect()
        });
        let outcome = if reports.iter().any(|r| r.error.is_some()) {
            StepOutcome::Failed
        } else if self.abort.is_aborted() {
            StepOutcome::Aborted
        } else {
            StepOutcome::Completed
        };
        StepReport {
            name: name.to_string(),
            outcome,
            error: None,
            faults: reports,
        }
    }

    /// A fault thread died outside the fault's guarded calls: revert from the last record
    /// the journal holds for it.
    fn revert_after_panic(
        &self,
        si: usize,
        fault_id: &str,
        description: String,
        panic: &str,
    ) -> FaultReport {
        let mut report = FaultReport {
            fault_id: fault_id.to_string(),
            kind: String::new(),
            description,
            injected: false,
            observed: None,
            held_ms: 0,
            revert: RevertOutcome::NotNeeded,
            error: Some(format!("the fault's thread panicked: {panic}")),
            manual_undo: Vec::new(),
        };
        match self.journal.get(fault_id) {
            Ok(Some(mut record)) => {
                report.kind = record.kind.clone();
                report.injected = record.state != RecordState::Planned;
                self.emit_fault(
                    si,
                    &record,
                    FaultState::Failed,
                    report.error.clone().unwrap_or_default(),
                );
                let mut journal_errors = Vec::new();
                report.revert = revert_record(
                    self.registry,
                    self.journal,
                    &mut record,
                    &self.retry,
                    &mut journal_errors,
                );
                report.manual_undo = record.manual_undo.clone();
                let state = if report.revert == RevertOutcome::NeedsManual {
                    FaultState::NeedsManual
                } else {
                    FaultState::Reverted
                };
                self.emit_fault(si, &record, state, "");
            }
            other => {
                report.revert = RevertOutcome::NeedsManual;
                report.manual_undo = vec![format!(
                    "the journal record of {fault_id} cannot be read ({}); run `chaos-agent recover`, which also looks for its artifacts on the host",
                    match other {
                        Err(e) => e.to_string(),
                        _ => "missing".to_string(),
                    }
                )];
            }
        }
        report
    }

    fn run_fault(&self, si: usize, p: Planned<'_>, step_abort: &AbortHandle) -> FaultReport {
        let Planned {
            fault,
            def,
            cx,
            mut record,
        } = p;
        let mut report = FaultReport {
            fault_id: record.fault_id.clone(),
            kind: record.kind.clone(),
            description: fault.describe(),
            injected: false,
            observed: None,
            held_ms: 0,
            revert: RevertOutcome::NotNeeded,
            error: None,
            manual_undo: Vec::new(),
        };
        let fail = |report: &mut FaultReport, record: &Record, msg: String| {
            self.emit_fault(si, record, FaultState::Failed, msg.clone());
            if report.error.is_none() {
                report.error = Some(msg.clone());
            }
            step_abort.abort(format!("{} failed: {msg}", record.fault_id));
        };

        if step_abort.sleep(def.start_delay.std()) {
            // Never injected: close the record without touching the host.
            record.state = RecordState::Reverted;
            if let Err(e) = self.put(&record) {
                report.error = Some(e);
            }
            self.emit_fault(
                si,
                &record,
                FaultState::Skipped,
                "aborted before its start delay ended",
            );
            return report;
        }

        let injected = guarded("inject", || fault.inject(&cx, &mut record.receipt));
        failpoint::hit("after-inject");
        match injected {
            Err(e) => {
                // Keep what inject recorded (partial artifacts) so revert can remove it.
                let journaled = self.put(&record);
                fail(&mut report, &record, format!("inject failed: {e}"));
                if let Err(e) = journaled {
                    fail(&mut report, &record, e);
                }
            }
            Ok(()) => {
                report.injected = true;
                record.state = RecordState::Applied;
                record.updated_at = fault_core::host::unix_now();
                if let Err(e) = self.put(&record) {
                    fail(&mut report, &record, e);
                }
                failpoint::hit("after-journal-applied");
                self.emit_fault(si, &record, FaultState::Injected, "");
            }
        }

        if report.error.is_none() {
            match guarded("verify", || {
                self.registry.verify(&record.kind, &record.receipt)
            }) {
                Ok(obs) if obs.effect == Effect::InEffect => {
                    self.emit_fault(si, &record, FaultState::Holding, obs.detail.clone());
                    report.observed = Some(obs.detail);
                }
                Ok(obs) => fail(
                    &mut report,
                    &record,
                    format!("injected, but verify saw {:?}: {}", obs.effect, obs.detail),
                ),
                Err(e) => fail(&mut report, &record, format!("verify failed: {e}")),
            }
        }

        if report.error.is_none() {
            let start = Instant::now();
            let deadline = start + def.duration.std();
            let mut next_maintain = fault.maintain_interval().map(|d| start + d);
            let mut next_tick = start;
            loop {
                let now = Instant::now();
                if step_abort.is_aborted() || now >= deadline {
                    break;
                }
                if next_maintain.is_some_and(|t| now >= t) {
                    match guarded("maintain", || fault.maintain(&cx, &mut record.receipt)) {
                        Ok(next) => {
                            next_maintain = next.map(|d| Instant::now() + d);
                            if let Err(e) = self.put(&record) {
                                fail(&mut report, &record, e);
                                break;
                            }
                        }
                        Err(e) => {
                            fail(&mut report, &record, format!("maintain failed: {e}"));
                            break;
                        }
                    }
                }
                if now >= next_tick {
                    (self.events)(&Event::Holding {
                        step: si,
                        fault_id: record.fault_id.clone(),
                        kind: record.kind.clone(),
                        remaining_ms: (deadline - now).as_millis() as u64,
                    });
                    next_tick = now + Duration::from_secs(1);
                }
                let mut wake = deadline.min(next_tick);
                if let Some(t) = next_maintain {
                    wake = wake.min(t);
                }
                step_abort.sleep_until(wake);
            }
            report.held_ms = start.elapsed().as_millis() as u64;
        }

        self.emit_fault(si, &record, FaultState::Reverting, "");
        let mut journal_errors = Vec::new();
        let outcome = revert_record(
            self.registry,
            self.journal,
            &mut record,
            &self.retry,
            &mut journal_errors,
        );
        report.revert = outcome;
        for e in journal_errors {
            (self.events)(&Event::JournalError {
                fault_id: record.fault_id.clone(),
                error: e.clone(),
            });
            report.error.get_or_insert(e);
        }
        match outcome {
            RevertOutcome::NeedsManual => {
                report.manual_undo = record.manual_undo.clone();
                let err = record.last_error.clone().unwrap_or_default();
                self.emit_fault(
                    si,
                    &record,
                    FaultState::NeedsManual,
                    format!("revert failed: {err}"),
                );
                if report.error.is_none() {
                    report.error = Some(format!("revert failed: {err}"));
                }
            }
            _ if !report.injected && report.error.is_some() => {
                // Inject failed: whatever it left behind was removed.
                report.revert = RevertOutcome::Reverted;
                self.emit_fault(si, &record, FaultState::Reverted, "partial changes removed");
            }
            RevertOutcome::Irreversible => self.emit_fault(
                si,
                &record,
                FaultState::Reverted,
                "nothing to revert (irreversible)",
            ),
            _ => self.emit_fault(si, &record, FaultState::Reverted, ""),
        }
        report
    }
}

/// What one fault would do, for `--dry-run`.
#[derive(Debug, Clone, Serialize)]
pub struct DryRunItem {
    /// Step index.
    pub step: usize,
    /// Fault id it would get.
    pub fault_id: String,
    /// Kind.
    pub kind: String,
    /// What it will change.
    pub description: String,
    /// The privilege it needs.
    pub privileges: String,
    /// Start delay and duration.
    pub start_delay: String,
    /// Duration.
    pub duration: String,
    /// The plan's receipt (what it resolved), or the error planning gave.
    pub plan: std::result::Result<Value, String>,
    /// What it would touch, in human units (empty when planning failed).
    pub touches: Vec<String>,
}

/// The context a fault of this run gets: its ids, and the agent's state directory among
/// the paths whose filesystems must keep a reserve.
fn context(fault_id: &str, run_id: &str, state_dir: &std::path::Path) -> Context {
    let mut cx = Context::new(fault_id, run_id);
    cx.protected_paths.push(state_dir.to_path_buf());
    cx
}

/// Plan every fault without changing anything (resolving targets as of now), as a run
/// from `state_dir` would.
pub fn dry_run(
    registry: &Registry,
    prepared: &Prepared,
    run_id: &str,
    state_dir: &std::path::Path,
) -> Vec<DryRunItem> {
    let mut out = Vec::new();
    for (si, (faults, step)) in prepared
        .faults
        .iter()
        .zip(&prepared.experiment.steps)
        .enumerate()
    {
        for (fi, (fault, def)) in faults.iter().zip(&step.faults).enumerate() {
            let id = fault_id(run_id, si, fi);
            let info = registry.get(fault.kind()).map(|e| (e.info)());
            let plan = guarded("plan", || fault.plan(&context(&id, run_id, state_dir)))
                .map_err(|e| e.to_string());
            let touches = plan
                .as_ref()
                .ok()
                .and_then(|r| registry.touches(fault.kind(), r).ok())
                .unwrap_or_default();
            out.push(DryRunItem {
                step: si,
                fault_id: id.clone(),
                kind: fault.kind().to_string(),
                description: fault.describe(),
                privileges: info.map(|i| i.privileges.to_string()).unwrap_or_default(),
                start_delay: def.start_delay.to_string(),
                duration: def.duration.to_string(),
                plan,
                touches,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_abort_follows_parent_not_the_reverse() {
        let parent = AbortHandle::new();
        let child = parent.child();
        child.abort("step failed");
        assert!(child.is_aborted() && !parent.is_aborted());
        let other = parent.child();
        parent.abort("SIGTERM");
        parent.abort("second reason is ignored");
        assert!(other.is_aborted());
        assert_eq!(other.reason().as_deref(), Some("SIGTERM"));
        assert_eq!(child.reason().as_deref(), Some("step failed"));
    }

    #[test]
    fn sleep_wakes_on_abort() {
        let h = AbortHandle::new();
        let h2 = h.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            h2.abort("stop");
        });
        let start = Instant::now();
        assert!(h.sleep(Duration::from_secs(30)));
        assert!(start.elapsed() < Duration::from_secs(5));
        // A child sleeping when its grandparent is aborted wakes too.
        let root = AbortHandle::new();
        let grandchild = root.child().child();
        let r2 = root.clone();
        let t2 = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            r2.abort("stop");
        });
        assert!(grandchild.sleep(Duration::from_secs(30)));
        t2.join().unwrap();
        t.join().unwrap();
        assert!(!AbortHandle::new().sleep(Duration::from_millis(10)));
    }

    #[test]
    fn fault_ids_are_valid_journal_names() {
        let id = fault_id(&new_run_id(), 0, 11);
        crate::journal::check_id(&id).unwrap();
        assert!(id.ends_with("-1-12"), "{id}");
    }
}
