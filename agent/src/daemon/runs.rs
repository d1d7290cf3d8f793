//! Runs the control plane hands out: remembered on disk by run id (so a run is started at
//! most once, across restarts), executed one at a time through the engine's [`Session`],
//! and reported — every status transition and log line through the outbox, then the result.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use chaos_engine::experiment::Experiment;
use chaos_engine::runner::{AbortHandle, Event, FaultState, RunOutcome};
use chaos_engine::Session;
use chaos_protocol::agent::RunTask;
use chaos_protocol::run::{FaultStatus, LogLevel, RunResult, RunState, StatusUpdate};
use fault_core::host::fs::write_atomic;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::outbox::{line, now_ms, Message, Outbox};

/// Where a run is, as remembered in `<state-dir>/runs/<run>.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Phase {
    /// Received, waiting for the run before it to end.
    Queued,
    /// Started: its faults may be on the host.
    Running,
    /// Ended and reported to the outbox (the result may still be waiting there).
    Finished,
}

/// A run as remembered on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RunFile {
    pub(crate) run_id: String,
    pub(crate) phase: Phase,
    pub(crate) experiment: Value,
    pub(crate) lease_secs: u64,
    pub(crate) received_at_ms: u64,
}

/// The runs directory.
#[derive(Debug)]
pub(crate) struct RunStore {
    dir: PathBuf,
}

/// How many finished runs are remembered (to refuse running them again).
const KEEP_FINISHED: usize = 1000;

impl RunStore {
    pub(crate) fn open(state_dir: &Path) -> anyhow::Result<RunStore> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = state_dir.join("runs");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        Ok(RunStore { dir })
    }

    fn path(&self, run_id: &str) -> PathBuf {
        self.dir.join(format!("{run_id}.json"))
    }

    pub(crate) fn get(&self, run_id: &str) -> Option<RunFile> {
        let bytes = std::fs::read(self.path(run_id)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub(crate) fn put(&self, run: &RunFile) -> anyhow::Result<()> {
        let json = serde_json::to_vec_pretty(run)?;
        write_atomic(&self.path(&run.run_id), &json, 0o600)
            .with_context(|| format!("remembering run {}", run.run_id))
    }

    pub(crate) fn all(&self) -> Vec<RunFile> {
        let mut out: Vec<RunFile> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let bytes = std::fs::read(e.path()).ok()?;
                serde_json::from_slice(&bytes).ok()
            })
            .collect();
        out.sort_by_key(|r| r.received_at_ms);
        out
    }

    /// Forget the oldest finished runs beyond [`KEEP_FINISHED`].
    pub(crate) fn compact(&self) {
        let finished: Vec<RunFile> = self
            .all()
            .into_iter()
            .filter(|r| r.phase == Phase::Finished)
            .collect();
        for r in finished
            .iter()
            .take(finished.len().saturating_sub(KEEP_FINISHED))
        {
            let _ = std::fs::remove_file(self.path(&r.run_id));
        }
    }
}

/// A run's lease: without a successful call to the control plane for this long, it is
/// aborted.
pub(crate) fn lease(t: &RunTask) -> Duration {
    Duration::from_secs(t.lease_secs.max(1))
}

/// Runs waiting for their turn.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    tasks: Mutex<VecDeque<RunTask>>,
    ready: Condvar,
}

impl Queue {
    pub(crate) fn push(&self, t: RunTask) {
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(t);
        self.ready.notify_all();
    }

    pub(crate) fn contains(&self, run_id: &str) -> bool {
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|t| t.run_id == run_id)
    }

    pub(crate) fn remove(&self, run_id: &str) -> Option<RunTask> {
        let mut q = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        let i = q.iter().position(|t| t.run_id == run_id)?;
        q.remove(i)
    }

    /// The next run, waiting up to `timeout`. `start` is called with it while the queue is
    /// still locked, so that whoever reads [`Queue::min_lease`] and then the run in progress
    /// finds the run in one or the other, never in neither.
    pub(crate) fn pop_with(
        &self,
        timeout: Duration,
        start: impl FnOnce(&RunTask),
    ) -> Option<RunTask> {
        let mut q = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        if q.is_empty() {
            q = self
                .ready
                .wait_timeout(q, timeout)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let t = q.pop_front()?;
        start(&t);
        Some(t)
    }

    /// The shortest lease of the runs waiting (none: `None`).
    pub(crate) fn min_lease(&self) -> Option<Duration> {
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(lease)
            .min()
    }

    pub(crate) fn wake(&self) {
        self.ready.notify_all();
    }
}

/// Writes what happens in a run to the outbox: status transitions and log lines, numbered.
pub(crate) struct Reporter<'a> {
    pub(crate) run_id: String,
    outbox: &'a Outbox,
    seq: Mutex<u64>,
}

impl<'a> Reporter<'a> {
    pub(crate) fn new(run_id: &str, outbox: &'a Outbox) -> Reporter<'a> {
        Reporter {
            run_id: run_id.to_string(),
            seq: Mutex::new(outbox.max_seq(run_id)),
            outbox,
        }
    }

    fn push(&self, msg: Message) {
        if let Err(e) = self.outbox.push(msg) {
            tracing::error!(run_id = %self.run_id, error = %e, "cannot queue a message for the control plane");
        }
    }

    pub(crate) fn log(&self, level: LogLevel, message: impl Into<String>) {
        let message = message.into();
        match level {
            LogLevel::Error => tracing::error!(run_id = %self.run_id, "{message}"),
            LogLevel::Warn => tracing::warn!(run_id = %self.run_id, "{message}"),
            _ => tracing::info!(run_id = %self.run_id, "{message}"),
        }
        let dropped = self.outbox.take_dropped();
        let mut seq = self.seq.lock().unwrap_or_else(|e| e.into_inner());
        let mut lines = Vec::new();
        if dropped > 0 {
            *seq += 1;
            lines.push(line(
                *seq,
                LogLevel::Warn,
                format!("{dropped} log line(s) were dropped: the agent's outbox was full while the control plane was unreachable"),
            ));
        }
        *seq += 1;
        lines.push(line(*seq, level, message));
        self.push(Message::Logs {
            run_id: self.run_id.clone(),
            lines,
        });
    }

    pub(crate) fn status(&self, update: StatusUpdate) {
        self.push(Message::Status {
            run_id: self.run_id.clone(),
            update,
        });
    }

    pub(crate) fn result(&self, result: RunResult) {
        self.push(Message::Result {
            run_id: self.run_id.clone(),
            result,
        });
    }

    /// Turn one engine event into status updates and log lines.
    pub(crate) fn event(&self, e: &Event) {
        match e {
            Event::RunStarted {
                name,
                steps,
                max_duration_ms,
                ..
            } => self.log(
                LogLevel::Info,
                format!(
                    "run \"{name}\" started: {steps} step(s), at most {}",
                    fault_core::Duration(Duration::from_millis(*max_duration_ms))
                ),
            ),
            Event::StepStarted { step, name, faults } => {
                self.status(StatusUpdate {
                    state: RunState::Running,
                    step: Some(*step as u32),
                    faults: Vec::new(),
                    message: None,
                });
                self.log(
                    LogLevel::Info,
                    format!(
                        "step {} \"{name}\": {faults} fault(s) at the same time",
                        step + 1
                    ),
                );
            }
            Event::Fault {
                step,
                fault_id,
                kind,
                state,
                detail,
                touches,
            } => {
                let wire = match state {
                    FaultState::Planned => chaos_protocol::run::FaultState::Planned,
                    FaultState::Injected => chaos_protocol::run::FaultState::Injected,
                    FaultState::Holding => chaos_protocol::run::FaultState::Holding,
                    FaultState::Reverting => chaos_protocol::run::FaultState::Reverting,
                    FaultState::Reverted => chaos_protocol::run::FaultState::Reverted,
                    FaultState::Failed => chaos_protocol::run::FaultState::Failed,
                    FaultState::NeedsManual => chaos_protocol::run::FaultState::NeedsManual,
                    FaultState::Skipped => chaos_protocol::run::FaultState::Skipped,
                };
                let detail = clip(detail, chaos_protocol::MAX_TEXT_BYTES);
                self.status(StatusUpdate {
                    state: RunState::Running,
                    step: Some(*step as u32),
                    faults: vec![FaultStatus {
                        fault_id: fault_id.clone(),
                        step: *step as u32,
                        kind: kind.clone(),
                        state: wire,
                        detail: detail.clone(),
                    }],
                    message: None,
                });
                let level = match state {
                    FaultState::Failed => LogLevel::Error,
                    FaultState::NeedsManual => LogLevel::Error,
                    _ => LogLevel::Info,
                };
                let mut msg = format!(
                    "{fault_id} {kind}: {}",
                    serde_json::to_value(state)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default()
                );
                if !detail.is_empty() {
                    msg.push_str(&format!(": {detail}"));
                }
                for t in touches {
                    msg.push_str(&format!("\n  touches: {t}"));
                }
                self.log(level, msg);
            }
            Event::JournalError { fault_id, error } => {
                self.log(LogLevel::Error, format!("{fault_id}: {error}"))
            }
            Event::Holding { .. } => {}
            Event::StepFinished { step, outcome } => self.log(
                LogLevel::Info,
                format!(
                    "step {} {}",
                    step + 1,
                    serde_json::to_value(outcome)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default()
                ),
            ),
            Event::RunFinished { .. } => {}
        }
    }
}

/// The result the protocol expects, from the engine's report (same JSON shape).
pub(crate) fn to_result(report: &chaos_engine::runner::RunReport) -> anyhow::Result<RunResult> {
    let v = serde_json::to_value(report)?;
    Ok(serde_json::from_value(v)?)
}

/// Tell the control plane (through the outbox) what became of the run, with every fault
/// that needs a person and the exact commands.
pub(crate) fn report_end(rep: &Reporter<'_>, report: &chaos_engine::runner::RunReport) {
    for f in report.steps.iter().flat_map(|s| &s.faults) {
        if f.revert == chaos_engine::runner::RevertOutcome::NeedsManual {
            rep.log(
                LogLevel::Error,
                format!(
                    "{} {}: the revert failed; THE HOST IS NOT CLEAN. A person must run:\n{}",
                    f.fault_id,
                    f.kind,
                    f.manual_undo
                        .iter()
                        .map(|c| format!("  {c}"))
                        .collect::<Vec<_>>()
                        .join("\n")
                ),
            );
        }
    }
    let outcome = match report.outcome {
        RunOutcome::Completed => "completed",
        RunOutcome::Failed => "failed",
        RunOutcome::Aborted => "aborted",
    };
    let why = report
        .abort_reason
        .as_deref()
        .map(|r| format!(" ({r})"))
        .unwrap_or_default();
    rep.log(
        if report.host_clean() {
            LogLevel::Info
        } else {
            LogLevel::Error
        },
        format!(
            "run {outcome}{why} in {}; {}",
            fault_core::Duration(Duration::from_millis(report.elapsed_ms / 100 * 100)),
            if report.host_clean() {
                "every fault is reverted: the host is clean"
            } else {
                "THE HOST IS NOT CLEAN (see the lines above)"
            }
        ),
    );
    match to_result(report) {
        Ok(r) => rep.result(r),
        Err(e) => rep.log(LogLevel::Error, format!("cannot encode the result: {e}")),
    }
}

/// Run one task to its end: validate, start, run through the session, report. `abort` is
/// the run's own handle (the poll loop and the lease watchdog abort it).
pub(crate) fn execute(
    session: &Session<'_>,
    store: &RunStore,
    outbox: &Outbox,
    task: &RunTask,
    experiment: &Value,
    abort: &AbortHandle,
) {
    let rep = Reporter::new(&task.run_id, outbox);
    let refuse = |message: String| {
        rep.log(LogLevel::Error, message.clone());
        rep.status(StatusUpdate {
            state: RunState::Failed,
            step: None,
            faults: Vec::new(),
            message: Some(short(&message)),
        });
    };
    let mut file = RunFile {
        run_id: task.run_id.clone(),
        phase: Phase::Running,
        experiment: task.experiment.clone(),
        lease_secs: task.lease_secs,
        received_at_ms: now_ms(),
    };
    if let Err(e) = store.put(&file) {
        // Without a record of having started, a restart could run it twice: refuse.
        refuse(format!("not started: {e:#}"));
        return;
    }
    let prepared = match Experiment::load_value(experiment, session.registry()) {
        Ok(p) => p,
        Err(invalid) => {
            refuse(format!(
                "this agent cannot run the experiment; nothing was changed:\n{invalid}"
            ));
            finish(store, &mut file);
            return;
        }
    };
    // Acknowledges the task.
    rep.status(StatusUpdate {
        state: RunState::Running,
        step: None,
        faults: Vec::new(),
        message: Some(format!(
            "started by chaos-agent {}",
            env!("CARGO_PKG_VERSION")
        )),
    });
    let events = |e: &Event| rep.event(e);
    match session.run(&prepared, &task.run_id, abort, &events) {
        Ok(report) => report_end(&rep, &report),
        Err(e) => refuse(format!("not started, nothing was changed: {e}")),
    }
    finish(store, &mut file);
}

fn finish(store: &RunStore, file: &mut RunFile) {
    file.phase = Phase::Finished;
    if let Err(e) = store.put(file) {
        tracing::error!(run_id = %file.run_id, error = %e, "cannot remember that the run finished");
    }
}

/// A message for the status's `message` field (free text ≤ 1 KiB, no control characters).
pub(crate) fn short(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    clip(&s, chaos_protocol::MAX_TEXT_BYTES)
}

/// At most `max` bytes of `s`, cut at a character boundary (with `…` when cut).
pub(crate) fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut cut = max - '…'.len_utf8();
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &s[..cut])
}

/// After a restart: runs that were `running` when the previous agent process ended. Their
/// faults were reverted by the session's recovery before this; report each as aborted
/// ("agent restarted") with every fault's revert outcome from the journal.
pub(crate) fn report_interrupted(
    session: &Session<'_>,
    store: &RunStore,
    outbox: &Outbox,
    recovery: &chaos_engine::Recovery,
) {
    for mut file in store
        .all()
        .into_iter()
        .filter(|r| r.phase == Phase::Running)
    {
        let rep = Reporter::new(&file.run_id, outbox);
        rep.log(
            LogLevel::Warn,
            "agent restarted: the previous agent process ended during this run (crash, kill or reboot); its faults were reverted at start, before anything else",
        );
        let mut steps = Vec::new();
        let mut statuses = Vec::new();
        let exp = Experiment::from_value(&file.experiment).ok();
        let mut clean = true;
        for (si, step) in exp.iter().flat_map(|e| &e.steps).enumerate() {
            let mut faults = Vec::new();
            for fi in 0..step.faults.len() {
                let id = chaos_engine::runner::fault_id(&file.run_id, si, fi);
                let item = recovery.items.iter().find(|i| i.fault_id == id);
                let record = session.journal().get(&id).ok().flatten();
                let (revert, undo) = match (&record, item) {
                    (_, Some(i)) if i.outcome != chaos_engine::runner::RecoverOutcome::Reverted => {
                        ("needs-manual", i.manual_undo.clone())
                    }
                    (Some(r), _) if r.state == chaos_engine::journal::RecordState::NeedsManual => {
                        ("needs-manual", r.manual_undo.clone())
                    }
                    (Some(_), _) => ("reverted", Vec::new()),
                    (None, _) => ("not-needed", Vec::new()),
                };
                clean &= revert != "needs-manual";
                if let Some(i) = item {
                    rep.log(
                        if revert == "needs-manual" {
                            LogLevel::Error
                        } else {
                            LogLevel::Info
                        },
                        format!("{id} {}: was {} -> {}", i.kind, i.found, i.detail),
                    );
                    for c in &undo {
                        rep.log(LogLevel::Error, format!("  undo by hand: {c}"));
                    }
                }
                // The control plane last heard "holding" (or so) from the process that
                // died: tell it where each fault ended.
                statuses.push(FaultStatus {
                    fault_id: id.clone(),
                    step: si as u32,
                    kind: step.faults[fi].kind.clone(),
                    state: match revert {
                        "needs-manual" => chaos_protocol::run::FaultState::NeedsManual,
                        "reverted" => chaos_protocol::run::FaultState::Reverted,
                        _ => chaos_protocol::run::FaultState::Skipped,
                    },
                    detail: match revert {
                        "needs-manual" => "the revert at restart failed: a person must undo it",
                        "reverted" => "reverted at the agent's restart",
                        _ => "not started before the agent restarted",
                    }
                    .into(),
                });
                faults.push(serde_json::json!({
                    "fault_id": id,
                    "kind": step.faults[fi].kind,
                    "description": step.faults[fi].kind,
                    "injected": item.is_some_and(|i| i.found != "planned"),
                    "observed": null,
                    "held_ms": 0,
                    "revert": revert,
                    "error": item.map(|i| i.detail.clone()),
                    "manual_undo": undo,
                }));
            }
            let touched = faults.iter().any(|f| f["revert"] != "not-needed");
            steps.push(serde_json::json!({
                "name": step.name,
                "outcome": if touched { "aborted" } else { "skipped" },
                "error": null,
                "faults": faults,
            }));
        }
        let result = serde_json::json!({
            "run_id": file.run_id,
            "name": exp.as_ref().map(|e| e.name.clone()).unwrap_or_default(),
            "outcome": "aborted",
            "abort_reason": "agent restarted: the previous agent process ended during the run; its faults were reverted at start",
            "steps": steps,
            "elapsed_ms": now_ms().saturating_sub(file.received_at_ms),
        });
        if !statuses.is_empty() {
            rep.status(StatusUpdate {
                state: RunState::Running,
                step: None,
                faults: statuses,
                message: Some("agent restarted: reporting the run as aborted".into()),
            });
        }
        rep.log(
            if clean {
                LogLevel::Info
            } else {
                LogLevel::Error
            },
            if clean {
                "recovered: every fault of this run is reverted; the host is clean".to_string()
            } else {
                "THE HOST IS NOT CLEAN: a revert needs a person (commands above)".to_string()
            },
        );
        match serde_json::from_value::<RunResult>(result) {
            Ok(r) => rep.result(r),
            Err(e) => rep.log(LogLevel::Error, format!("cannot encode the result: {e}")),
        }
        finish(store, &mut file);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(run_id: &str, lease_secs: u64) -> RunTask {
        RunTask {
            run_id: run_id.into(),
            experiment: Value::Null,
            lease_secs,
            created_at_ms: 0,
        }
    }

    #[test]
    fn the_queue_knows_the_shortest_lease_waiting() {
        let q = Queue::default();
        assert_eq!(q.min_lease(), None);
        q.push(task("aaaaaaaa", 120));
        q.push(task("bbbbbbbb", 10));
        assert_eq!(q.min_lease(), Some(Duration::from_secs(10)));
        // a lease of 0 is read as 1 s, never as "no lease"
        q.push(task("cccccccc", 0));
        assert_eq!(q.min_lease(), Some(Duration::from_secs(1)));
    }

    #[test]
    fn pop_with_starts_the_run_before_it_leaves_the_queue() {
        let q = Queue::default();
        q.push(task("aaaaaaaa", 10));
        let mut seen = None;
        let t = q.pop_with(Duration::ZERO, |t| {
            // under the queue's lock: nobody looks at the queue between pop and start
            seen = Some((t.run_id.clone(), q.tasks.try_lock().is_err()));
        });
        assert_eq!(t.map(|t| t.run_id), Some("aaaaaaaa".into()));
        assert_eq!(
            seen,
            Some(("aaaaaaaa".into(), true)),
            "called under the lock"
        );
        assert_eq!(q.min_lease(), None);
        let mut called = false;
        assert!(q
            .pop_with(Duration::from_millis(1), |_| called = true)
            .is_none());
        assert!(!called, "not called when nothing is waiting");
    }
}
