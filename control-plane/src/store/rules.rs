//! The decisions both stores take the same way, on what they read inside their transaction.

use super::{missing_kinds, AgentRow, Result, StoreError};
use chaos_protocol::agent::{AbortTask, RunTask, Task};
use chaos_protocol::run::{RunResult, RunState};

/// A status update to a run in `state`: `Ok(true)` to apply it, `Ok(false)` when it
/// repeats the terminal state the run has (nothing to do). A terminal state is final.
pub(crate) fn status_change(run_id: &str, state: RunState, new: RunState) -> Result<bool> {
    if !state.is_terminal() {
        return Ok(true);
    }
    if state == new {
        return Ok(false);
    }
    Err(StoreError::Conflict(format!(
        "run {run_id} is already {}; it cannot become {}",
        state.as_str(),
        new.as_str()
    )))
}

/// A result for a run in `state` holding `stored`: `Ok(true)` to store it, `Ok(false)`
/// when the same result is stored already; a different one, or one that contradicts a
/// terminal state, is a conflict.
pub(crate) fn result_change(
    run_id: &str,
    state: RunState,
    stored: Option<&str>,
    result: &RunResult,
) -> Result<bool> {
    if let Some(stored) = stored {
        if serde_json::from_str::<RunResult>(stored).ok().as_ref() == Some(result) {
            return Ok(false);
        }
        return Err(StoreError::Conflict(format!(
            "run {run_id} already has a different result"
        )));
    }
    let new = result.outcome.state();
    if state.is_terminal() && state != new {
        return Err(StoreError::Conflict(format!(
            "run {run_id} is already {}; a result of {} contradicts it",
            state.as_str(),
            new.as_str()
        )));
    }
    Ok(true)
}

/// An abort of a run in `state`: refused once the run is over; `true` when the run ends
/// at once (never handed out), with [`ABORTED_UNSENT`] as its message.
pub(crate) fn abort_now(run_id: &str, state: RunState, delivered: Option<u64>) -> Result<bool> {
    if state.is_terminal() {
        return Err(StoreError::Conflict(format!(
            "run {run_id} is already {}",
            state.as_str()
        )));
    }
    Ok(state == RunState::Pending && delivered.is_none())
}

/// The message of a run aborted before its agent received it.
pub(crate) const ABORTED_UNSENT: &str = "aborted before the agent received it";

/// Why a waiting run of `agent` (which registered again offering `offered`) cannot run:
/// `None` when it can.
pub(crate) fn unrunnable(
    agent: &AgentRow,
    offered: &[String],
    experiment: &serde_json::Value,
) -> Option<String> {
    let missing = missing_kinds(offered, experiment);
    (!missing.is_empty()).then(|| {
        format!(
            "agent {} registered again without kind(s) {} (it now offers: {}); the run \
             was not sent. `chaos-agent doctor` on that host says why",
            agent.name,
            missing.join(", "),
            offered.join(", ")
        )
    })
}

/// The machine id in registration host facts (JSON), when there is one.
pub(crate) fn machine_id(host_json: &str) -> Option<String> {
    serde_json::from_str::<serde_json::Value>(host_json)
        .ok()
        .and_then(|h| h.get("machine_id")?.as_str().map(str::to_string))
        .filter(|m| !m.is_empty())
}

/// One unfinished run of an agent, as stored.
pub(crate) struct TaskRow {
    /// Run id.
    pub(crate) run_id: String,
    /// The experiment (JSON text).
    pub(crate) experiment: String,
    /// Lease.
    pub(crate) lease_secs: u64,
    /// Created.
    pub(crate) created_at_ms: u64,
    /// Handed out (last).
    pub(crate) delivered_at_ms: Option<u64>,
    /// Abort asked.
    pub(crate) abort_requested_at_ms: Option<u64>,
    /// The operator's reason.
    pub(crate) abort_reason: Option<String>,
    /// Abort handed out (last).
    pub(crate) abort_delivered_at_ms: Option<u64>,
    /// `pending` or `running`.
    pub(crate) state: String,
}

/// What the agent's poll answers from its unfinished runs (oldest first): the tasks,
/// whether any is due (never handed out, or handed out before `redeliver_before_ms`), and
/// the creation times of the runs never handed out before.
pub(crate) fn tasks(
    rows: impl IntoIterator<Item = TaskRow>,
    redeliver_before_ms: u64,
) -> (Vec<Task>, bool, Vec<u64>) {
    let mut tasks = Vec::new();
    let mut first = Vec::new();
    let mut due = false;
    let is_due = |t: Option<u64>| t.is_none_or(|t| t < redeliver_before_ms);
    for r in rows {
        if let Some(at) = r.abort_requested_at_ms {
            due |= is_due(r.abort_delivered_at_ms);
            tasks.push(Task::Abort(AbortTask {
                run_id: r.run_id,
                reason: r.abort_reason.unwrap_or_default(),
                requested_at_ms: at,
            }));
        } else if r.state == "pending" {
            due |= is_due(r.delivered_at_ms);
            if r.delivered_at_ms.is_none() {
                first.push(r.created_at_ms);
            }
            tasks.push(Task::Run(RunTask {
                run_id: r.run_id,
                experiment: serde_json::from_str(&r.experiment).unwrap_or_default(),
                lease_secs: r.lease_secs,
                created_at_ms: r.created_at_ms,
            }));
        }
    }
    (tasks, due, first)
}
