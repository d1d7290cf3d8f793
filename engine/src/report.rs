//! What a run reports: events as they happen (for a live view, JSON lines, the daemon's
//! status updates and log lines) and the final [`RunReport`] (the protocol's result).

use serde::{Deserialize, Serialize};

/// Where a fault is, as reported in events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultState {
    /// Planned and journaled.
    Planned,
    /// Injected.
    Injected,
    /// Verified in effect; holding.
    Holding,
    /// Reverting.
    Reverting,
    /// Reverted and verified clean.
    Reverted,
    /// Failed (plan, inject or verify).
    Failed,
    /// Revert failed after retries; a person must undo it.
    NeedsManual,
    /// Never injected (the step failed or the run was aborted first).
    Skipped,
}

/// Progress, for a live view or JSON lines.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// The run begins.
    RunStarted {
        /// Run id.
        run_id: String,
        /// Experiment name.
        name: String,
        /// Number of steps.
        steps: usize,
        /// Upper bound of the run's length, in milliseconds.
        max_duration_ms: u64,
    },
    /// A step begins.
    StepStarted {
        /// Step index (0-based).
        step: usize,
        /// Step name.
        name: String,
        /// Number of faults in the step.
        faults: usize,
    },
    /// A fault changed state.
    Fault {
        /// Step index.
        step: usize,
        /// Fault id.
        fault_id: String,
        /// Kind.
        kind: String,
        /// New state.
        state: FaultState,
        /// What happened, for people.
        detail: String,
        /// What the fault will touch, in human units (sent with `planned`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        touches: Vec<String>,
    },
    /// A journal write failed. The fault it was for is failed (its step reverts, later
    /// steps are skipped); reverting goes on regardless.
    JournalError {
        /// Fault id.
        fault_id: String,
        /// What failed.
        error: String,
    },
    /// A fault is being held; sent about once a second.
    Holding {
        /// Step index.
        step: usize,
        /// Fault id.
        fault_id: String,
        /// Kind.
        kind: String,
        /// Time left, in milliseconds.
        remaining_ms: u64,
    },
    /// A step ended.
    StepFinished {
        /// Step index.
        step: usize,
        /// Outcome.
        outcome: StepOutcome,
    },
    /// The run ended.
    RunFinished {
        /// The full report.
        report: RunReport,
    },
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepOutcome {
    /// Every fault ran its full duration and was reverted.
    Completed,
    /// A fault failed to plan, inject or verify.
    Failed,
    /// The run was aborted during the step.
    Aborted,
    /// The step never started (an earlier step failed, or the run was aborted).
    Skipped,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunOutcome {
    /// Every step completed.
    Completed,
    /// A step failed.
    Failed,
    /// The run was aborted.
    Aborted,
}

/// What became of a fault's change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RevertOutcome {
    /// Reverted and verified clean.
    Reverted,
    /// Nothing was applied, so nothing had to be reverted.
    NotNeeded,
    /// The change cannot be taken back (e.g. a killed process); nothing to revert.
    Irreversible,
    /// Revert failed; see `manual_undo`.
    NeedsManual,
}

/// One fault in a report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FaultReport {
    /// Fault id.
    pub fault_id: String,
    /// Kind.
    pub kind: String,
    /// What it does.
    pub description: String,
    /// Whether inject succeeded.
    pub injected: bool,
    /// What verify saw after inject.
    pub observed: Option<String>,
    /// How long it was held, in milliseconds.
    pub held_ms: u64,
    /// What became of it.
    pub revert: RevertOutcome,
    /// The first error, if any.
    pub error: Option<String>,
    /// Commands for a person, when `revert` is `needs-manual`.
    pub manual_undo: Vec<String>,
}

/// One step in a report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepReport {
    /// Step name.
    pub name: String,
    /// Outcome.
    pub outcome: StepOutcome,
    /// Why the step failed before any fault ran (planning errors, conflicts).
    pub error: Option<String>,
    /// Its faults.
    pub faults: Vec<FaultReport>,
}

/// The result of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    /// Run id.
    pub run_id: String,
    /// Experiment name.
    pub name: String,
    /// Outcome.
    pub outcome: RunOutcome,
    /// Why it was aborted.
    pub abort_reason: Option<String>,
    /// Steps.
    pub steps: Vec<StepReport>,
    /// Wall time, in milliseconds.
    pub elapsed_ms: u64,
}

impl RunReport {
    /// Whether every change was reverted (no fault needs a person).
    pub fn host_clean(&self) -> bool {
        self.steps
            .iter()
            .flat_map(|s| &s.faults)
            .all(|f| f.revert != RevertOutcome::NeedsManual)
    }
}
