//! What an agent reports about a run: state transitions, logs, and the final result.
//!
//! | call | body | answer |
//! |---|---|---|
//! | `POST /api/v1/runs/{run}/status` | [`StatusUpdate`] | [`StatusResponse`] |
//! | `POST /api/v1/runs/{run}/logs` | [`LogBatch`] | [`LogsResponse`] |
//! | `POST /api/v1/runs/{run}/result` | [`RunResult`] | [`StatusResponse`] |
//!
//! [`RunResult`] has the same JSON shape as `chaos_engine::runner::RunReport`, so an agent
//! can send its report as it is.

use serde::{Deserialize, Serialize};

use crate::validate::Checker;
use crate::{
    Invalid, MAX_FAULTS_PER_STATUS, MAX_LOG_LINES, MAX_LOG_MESSAGE_BYTES, MAX_NAME_BYTES,
    MAX_TEXT_BYTES,
};

/// The state of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Created; not yet acknowledged by the agent.
    Pending,
    /// The agent has started it.
    Running,
    /// Every step completed and everything was reverted.
    Completed,
    /// A step failed (everything applied was reverted unless a fault says `needs-manual`).
    Failed,
    /// Aborted (by the operator, a signal, or the lease).
    Aborted,
}

impl RunState {
    /// Completed, failed or aborted: nothing more will happen.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunState::Completed | RunState::Failed | RunState::Aborted
        )
    }

    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Pending => "pending",
            RunState::Running => "running",
            RunState::Completed => "completed",
            RunState::Failed => "failed",
            RunState::Aborted => "aborted",
        }
    }

    /// Parse the wire name.
    pub fn parse(s: &str) -> Option<RunState> {
        Some(match s {
            "pending" => RunState::Pending,
            "running" => RunState::Running,
            "completed" => RunState::Completed,
            "failed" => RunState::Failed,
            "aborted" => RunState::Aborted,
            _ => return None,
        })
    }
}

/// Where a fault is (the runner's states).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
    /// Failed to plan, inject or verify.
    Failed,
    /// The revert failed after retries; a person must undo it.
    NeedsManual,
    /// Never injected.
    Skipped,
}

/// `POST /api/v1/runs/{run}/status`: the run's state now, with any fault state changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusUpdate {
    /// `running`, or a terminal state when the agent could not send a result.
    pub state: RunState,
    /// The step now running (0-based), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u32>,
    /// Faults whose state changed (or all of them; the latest per `fault_id` is kept).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<FaultStatus>,
    /// A line for people, e.g. why the run failed to start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The state of one fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultStatus {
    /// Fault id (`<run>-<step>-<fault>`).
    pub fault_id: String,
    /// Step index.
    pub step: u32,
    /// Kind.
    pub kind: String,
    /// State.
    pub state: FaultState,
    /// What happened, for people.
    #[serde(default)]
    pub detail: String,
}

impl StatusUpdate {
    /// Check every field.
    pub fn validate(&self) -> Result<(), Invalid> {
        let mut c = Checker::default();
        if self.state == RunState::Pending {
            c.add("state", "an agent cannot set a run back to pending");
        }
        if self.faults.len() > MAX_FAULTS_PER_STATUS {
            c.add(
                "faults",
                format!(
                    "{} faults; at most {MAX_FAULTS_PER_STATUS}",
                    self.faults.len()
                ),
            );
        }
        for (i, f) in self.faults.iter().enumerate() {
            c.text(&format!("faults[{i}].fault_id"), &f.fault_id, 64, true);
            c.text(&format!("faults[{i}].kind"), &f.kind, MAX_NAME_BYTES, true);
            c.multiline(&format!("faults[{i}].detail"), &f.detail, MAX_TEXT_BYTES);
        }
        if let Some(m) = &self.message {
            c.multiline("message", m, MAX_TEXT_BYTES);
        }
        c.done()
    }
}

/// The answer to a status update or a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusResponse {
    /// Run id.
    pub run_id: String,
    /// The state the control plane now holds.
    pub state: RunState,
    /// The operator asked to abort this run: stop and revert.
    pub abort_requested: bool,
    /// The operator's reason, when an abort was requested with one (the same text the
    /// abort task carries, so the run is aborted with it whichever answer arrives first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort_reason: Option<String>,
}

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Details.
    Debug,
    /// Progress.
    Info,
    /// Something unexpected that the run survived.
    Warn,
    /// Something failed.
    Error,
}

/// `POST /api/v1/runs/{run}/logs`: a batch of log lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogBatch {
    /// The lines, each with its own sequence number.
    pub lines: Vec<LogLine>,
}

/// One log line. `seq` numbers the lines of one run from 1 without gaps; a line whose
/// `seq` the server already holds is ignored, so a batch can be retried safely.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogLine {
    /// Sequence number within the run, from 1.
    pub seq: u64,
    /// When, in ms since the Unix epoch (the agent's clock).
    pub at_ms: u64,
    /// Severity.
    pub level: LogLevel,
    /// The text.
    pub message: String,
}

impl LogBatch {
    /// Check every field.
    pub fn validate(&self) -> Result<(), Invalid> {
        let mut c = Checker::default();
        if self.lines.is_empty() {
            c.add("lines", "empty: send at least one line");
        }
        if self.lines.len() > MAX_LOG_LINES {
            c.add(
                "lines",
                format!("{} lines; at most {MAX_LOG_LINES}", self.lines.len()),
            );
        }
        for (i, l) in self.lines.iter().enumerate() {
            if l.seq == 0 || l.seq > i64::MAX as u64 {
                c.add(format!("lines[{i}].seq"), "must be 1 or more");
            }
            c.multiline(
                &format!("lines[{i}].message"),
                &l.message,
                MAX_LOG_MESSAGE_BYTES,
            );
        }
        c.done()
    }
}

/// The answer to a log batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsResponse {
    /// Lines stored now.
    pub accepted: u32,
    /// Lines already held (a retried batch).
    pub duplicates: u32,
    /// The operator asked to abort this run.
    pub abort_requested: bool,
    /// The operator's reason (see [`StatusResponse::abort_reason`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort_reason: Option<String>,
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

impl RunOutcome {
    /// The run state this outcome leads to.
    pub fn state(self) -> RunState {
        match self {
            RunOutcome::Completed => RunState::Completed,
            RunOutcome::Failed => RunState::Failed,
            RunOutcome::Aborted => RunState::Aborted,
        }
    }
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
    /// The step never started.
    Skipped,
}

/// What became of a fault's change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RevertOutcome {
    /// Reverted and verified clean.
    Reverted,
    /// Nothing was applied.
    NotNeeded,
    /// The change cannot be taken back (e.g. a killed process).
    Irreversible,
    /// The revert failed; see `manual_undo`.
    NeedsManual,
}

/// `POST /api/v1/runs/{run}/result`: the final verdict (the JSON of
/// `chaos_engine::runner::RunReport`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunResult {
    /// Run id; must match the path.
    pub run_id: String,
    /// Experiment name.
    pub name: String,
    /// Outcome.
    pub outcome: RunOutcome,
    /// Why it was aborted.
    pub abort_reason: Option<String>,
    /// Every step.
    pub steps: Vec<StepResult>,
    /// Wall time, in ms.
    pub elapsed_ms: u64,
}

/// One step of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepResult {
    /// Step name.
    pub name: String,
    /// Outcome.
    pub outcome: StepOutcome,
    /// Why the step failed before any fault ran.
    pub error: Option<String>,
    /// Its faults.
    pub faults: Vec<FaultResult>,
}

/// One fault of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultResult {
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
    /// How long it was held, in ms.
    pub held_ms: u64,
    /// What became of it.
    pub revert: RevertOutcome,
    /// The first error.
    pub error: Option<String>,
    /// Commands for a person, when `revert` is `needs-manual`.
    pub manual_undo: Vec<String>,
}

impl RunResult {
    /// Whether every change was reverted (no fault needs a person).
    pub fn host_clean(&self) -> bool {
        self.steps
            .iter()
            .flat_map(|s| &s.faults)
            .all(|f| f.revert != RevertOutcome::NeedsManual)
    }

    /// Check every field.
    pub fn validate(&self) -> Result<(), Invalid> {
        let mut c = Checker::default();
        c.run_id("run_id", &self.run_id);
        c.text("name", &self.name, 200, true);
        if let Some(r) = &self.abort_reason {
            c.multiline("abort_reason", r, MAX_TEXT_BYTES);
        }
        if self.steps.len() > 1000 {
            c.add("steps", "at most 1000 steps");
        }
        for (i, s) in self.steps.iter().enumerate() {
            c.text(&format!("steps[{i}].name"), &s.name, 200, false);
            if let Some(e) = &s.error {
                c.multiline(&format!("steps[{i}].error"), e, MAX_LOG_MESSAGE_BYTES);
            }
            if s.faults.len() > MAX_FAULTS_PER_STATUS {
                c.add(format!("steps[{i}].faults"), "too many faults");
            }
            for (j, f) in s.faults.iter().enumerate() {
                let at = format!("steps[{i}].faults[{j}]");
                c.text(&format!("{at}.fault_id"), &f.fault_id, 64, true);
                c.text(&format!("{at}.kind"), &f.kind, MAX_NAME_BYTES, true);
                c.multiline(&format!("{at}.description"), &f.description, MAX_TEXT_BYTES);
                for (k, v) in [("observed", &f.observed), ("error", &f.error)] {
                    if let Some(v) = v {
                        c.multiline(&format!("{at}.{k}"), v, MAX_LOG_MESSAGE_BYTES);
                    }
                }
                for (k, u) in f.manual_undo.iter().enumerate() {
                    c.multiline(&format!("{at}.manual_undo[{k}]"), u, MAX_TEXT_BYTES);
                }
            }
        }
        c.done()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_batch_checks() {
        let b = LogBatch {
            lines: vec![LogLine {
                seq: 0,
                at_ms: 1,
                level: LogLevel::Info,
                message: "a\u{7}".into(),
            }],
        };
        let e = b.validate().unwrap_err();
        assert_eq!(e.0.len(), 2, "{e}");
        assert!(LogBatch { lines: vec![] }.validate().is_err());
    }

    #[test]
    fn status_cannot_go_to_pending() {
        let s: StatusUpdate = serde_json::from_str(r#"{"state":"pending"}"#).unwrap();
        assert!(s.validate().is_err());
        let s: StatusUpdate = serde_json::from_str(
            r#"{"state":"running","step":0,"faults":[{"fault_id":"deadbeef-0-0","step":0,"kind":"disk.fill","state":"needs-manual"}]}"#,
        )
        .unwrap();
        s.validate().unwrap();
    }
}
