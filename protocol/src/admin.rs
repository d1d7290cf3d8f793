//! The operator's calls (admin token): agents, runs, logs, aborts.
//!
//! Agents never make these calls; they are here so that any CLI or UI can drive a control
//! plane. See `docs/protocol.md` for the paths.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::agent::HostFacts;
use crate::run::{FaultStatus, LogLine, RunResult, RunState};
use crate::validate::Checker;
use crate::{is_agent_id, validate_name, Invalid, MAX_TEXT_BYTES};

/// Longest a registration key may live: 30 days.
pub const MAX_KEY_TTL_SECS: u64 = 30 * 24 * 3600;
/// Most agents one run request may target.
pub const MAX_RUN_TARGETS: usize = 100_000;
/// Shortest and longest lease, in seconds.
pub const LEASE_SECS_RANGE: (u64, u64) = (10, 24 * 3600);

/// `POST /api/v1/admin/agents`: create an agent record and its one-time registration key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddAgentRequest {
    /// A name for people (unique): letters, digits, `.`, `_`, `-`.
    pub name: String,
    /// How long the registration key stays valid, in seconds (default: the server's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_ttl_secs: Option<u64>,
}

impl AddAgentRequest {
    /// Check every field.
    pub fn validate(&self) -> Result<(), Invalid> {
        let mut c = Checker::default();
        if let Err(e) = validate_name(&self.name) {
            c.add("name", e);
        }
        if let Some(t) = self.key_ttl_secs {
            if t == 0 || t > MAX_KEY_TTL_SECS {
                c.add(
                    "key_ttl_secs",
                    format!("must be 1 to {MAX_KEY_TTL_SECS} seconds"),
                );
            }
        }
        c.done()
    }
}

/// A registration key for an agent (from `agents add` or `agents rekey`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationKey {
    /// Agent id.
    pub agent_id: String,
    /// Agent name.
    pub name: String,
    /// The one-time key (`ccr_...`). Shown once; the server keeps only its hash.
    pub registration_key: String,
    /// When the key stops working, in ms since the Unix epoch.
    pub expires_at_ms: u64,
}

impl std::fmt::Debug for RegistrationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistrationKey")
            .field("agent_id", &self.agent_id)
            .field("name", &self.name)
            .field("registration_key", &"<redacted>")
            .field("expires_at_ms", &self.expires_at_ms)
            .finish()
    }
}

/// The state of an agent as operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    /// Added; waiting for the agent to register with its key.
    Pending,
    /// Registered and heard from recently.
    Active,
    /// Registered, but silent for longer than the server's `lost_after`.
    Lost,
    /// An old token generation was used after a newer one: the identity was copied.
    /// Refused until the operator issues a new key (`agents rekey`).
    Locked,
    /// Revoked by the operator.
    Revoked,
}

impl AgentState {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Pending => "pending",
            AgentState::Active => "active",
            AgentState::Lost => "lost",
            AgentState::Locked => "locked",
            AgentState::Revoked => "revoked",
        }
    }
}

/// One agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// Id.
    pub agent_id: String,
    /// Name.
    pub name: String,
    /// State.
    pub state: AgentState,
    /// Why it is locked or revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_reason: Option<String>,
    /// When it was added, ms since the Unix epoch.
    pub created_at_ms: u64,
    /// When it registered.
    #[serde(default)]
    pub registered_at_ms: Option<u64>,
    /// When it last called.
    #[serde(default)]
    pub last_seen_ms: Option<u64>,
    /// The newest token generation it has used.
    pub token_generation: u64,
    /// What it reported about its host.
    #[serde(default)]
    pub host: Option<HostFacts>,
}

/// `GET /api/v1/admin/agents`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentList {
    /// Agents, by name.
    pub agents: Vec<AgentInfo>,
}

/// `POST /api/v1/admin/runs`: run an experiment on agents (one run per agent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRunsRequest {
    /// The experiment in its JSON form.
    pub experiment: Value,
    /// Agent ids or names.
    pub agents: Vec<String>,
    /// The lease in seconds (default: the server's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_secs: Option<u64>,
}

impl CreateRunsRequest {
    /// Check the fields other than the experiment (which the server checks against its
    /// kind registry).
    pub fn validate(&self) -> Result<(), Invalid> {
        let mut c = Checker::default();
        if self.agents.is_empty() {
            c.add("agents", "empty: name at least one agent");
        }
        if self.agents.len() > MAX_RUN_TARGETS {
            c.add("agents", format!("at most {MAX_RUN_TARGETS} agents"));
        }
        for (i, a) in self.agents.iter().enumerate() {
            if !is_agent_id(a) && validate_name(a).is_err() {
                c.add(format!("agents[{i}]"), "neither an agent id nor a name");
            }
        }
        if let Some(l) = self.lease_secs {
            let (lo, hi) = LEASE_SECS_RANGE;
            if !(lo..=hi).contains(&l) {
                c.add("lease_secs", format!("must be {lo} to {hi} seconds"));
            }
        }
        c.done()
    }
}

/// A run and the agent it is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRef {
    /// Run id.
    pub run_id: String,
    /// Agent id.
    pub agent_id: String,
    /// Agent name.
    pub agent_name: String,
}

/// The answer to [`CreateRunsRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateRunsResponse {
    /// One run per agent, in the order asked.
    pub runs: Vec<RunRef>,
}

/// A run, in a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSummary {
    /// Run id.
    pub run_id: String,
    /// Agent id.
    pub agent_id: String,
    /// Agent name.
    pub agent_name: String,
    /// Experiment name.
    pub name: String,
    /// State.
    pub state: RunState,
    /// Created, ms since the Unix epoch.
    pub created_at_ms: u64,
    /// First handed to the agent.
    #[serde(default)]
    pub delivered_at_ms: Option<u64>,
    /// Started (first `running` status).
    #[serde(default)]
    pub started_at_ms: Option<u64>,
    /// Finished.
    #[serde(default)]
    pub finished_at_ms: Option<u64>,
    /// The operator asked for an abort.
    pub abort_requested: bool,
}

/// `GET /api/v1/admin/runs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunList {
    /// Newest first.
    pub runs: Vec<RunSummary>,
}

/// `GET /api/v1/admin/runs/{run}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunDetail {
    /// The summary.
    #[serde(flatten)]
    pub summary: RunSummary,
    /// The experiment as created.
    pub experiment: Value,
    /// The lease, in seconds.
    pub lease_secs: u64,
    /// Why the operator aborted it.
    #[serde(default)]
    pub abort_reason: Option<String>,
    /// The step the agent last reported.
    #[serde(default)]
    pub step: Option<u32>,
    /// The agent's last message.
    #[serde(default)]
    pub message: Option<String>,
    /// The latest state of each fault.
    pub faults: Vec<FaultStatus>,
    /// The final result, once sent.
    #[serde(default)]
    pub result: Option<RunResult>,
    /// Log lines held.
    pub log_lines: u64,
}

/// `POST /api/v1/admin/runs/{run}/abort`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbortRequest {
    /// Why (shown to the agent and in the run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl AbortRequest {
    /// Check every field.
    pub fn validate(&self) -> Result<(), Invalid> {
        let mut c = Checker::default();
        if let Some(r) = &self.reason {
            c.text("reason", r, MAX_TEXT_BYTES, false);
        }
        c.done()
    }
}

/// `GET /api/v1/admin/runs/{run}/logs?after=SEQ&wait=S`: lines after `after`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPage {
    /// Lines with `seq > after`, in order (at most 1000).
    pub lines: Vec<LogLine>,
    /// Pass this as `after` next time.
    pub next_after: u64,
    /// The run has finished (no more lines are expected).
    pub finished: bool,
}

/// `GET /api/v1/health` (no token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `ok`.
    pub status: String,
    /// Server version.
    pub version: String,
    /// Protocol version, `v1`.
    pub api: String,
}
