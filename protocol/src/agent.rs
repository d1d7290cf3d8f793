//! Registration, token rotation and the task long poll.
//!
//! | call | body | answer |
//! |---|---|---|
//! | `POST /api/v1/agents/register` | [`RegisterRequest`] | [`RegisterResponse`] |
//! | `POST /api/v1/agents/{id}/token` | [`RotateRequest`] | [`AccessToken`] |
//! | `GET /api/v1/agents/{id}/tasks?wait=S` | none | [`TasksResponse`] |

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::validate::Checker;
use crate::{Invalid, MAX_NAME_BYTES, MAX_TEXT_BYTES};

/// Most fault kinds an agent may report.
pub const MAX_KINDS: usize = 256;

/// `POST /api/v1/agents/register`: trade a one-time registration key for an identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// The key the operator got from `chaos-control agents add` (`ccr_...`).
    pub registration_key: String,
    /// What the agent says about its host.
    pub host: HostFacts,
}

/// Facts an agent reports about its host at registration (shown to operators).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostFacts {
    /// Host name.
    pub hostname: String,
    /// The agent's version (`chaos-agent --version`).
    pub agent_version: String,
    /// Operating system, e.g. `Debian GNU/Linux 12`.
    #[serde(default)]
    pub os: String,
    /// Kernel release (`uname -r`).
    #[serde(default)]
    pub kernel: String,
    /// CPU architecture, e.g. `x86_64`.
    #[serde(default)]
    pub arch: String,
    /// `/etc/machine-id`, to tell two machines with the same name apart.
    #[serde(default)]
    pub machine_id: String,
    /// The fault kinds this agent can run.
    #[serde(default)]
    pub kinds: Vec<String>,
}

impl RegisterRequest {
    /// Check every field.
    pub fn validate(&self) -> Result<(), Invalid> {
        let mut c = Checker::default();
        c.text("registration_key", &self.registration_key, 128, true);
        self.host.check(&mut c, "host");
        c.done()
    }
}

impl HostFacts {
    /// Check every field.
    pub fn validate(&self) -> Result<(), Invalid> {
        let mut c = Checker::default();
        self.check(&mut c, "host");
        c.done()
    }

    pub(crate) fn check(&self, c: &mut Checker, at: &str) {
        c.text(&format!("{at}.hostname"), &self.hostname, 255, true);
        c.text(
            &format!("{at}.agent_version"),
            &self.agent_version,
            64,
            true,
        );
        c.text(&format!("{at}.os"), &self.os, MAX_TEXT_BYTES, false);
        c.text(&format!("{at}.kernel"), &self.kernel, 255, false);
        c.text(&format!("{at}.arch"), &self.arch, 64, false);
        c.text(&format!("{at}.machine_id"), &self.machine_id, 64, false);
        if self.kinds.len() > MAX_KINDS {
            c.add(
                format!("{at}.kinds"),
                format!("{} kinds; at most {MAX_KINDS}", self.kinds.len()),
            );
        }
        for (i, k) in self.kinds.iter().enumerate() {
            c.text(&format!("{at}.kinds[{i}]"), k, MAX_NAME_BYTES, true);
        }
    }
}

/// The answer to a registration: who the agent is now, and its first token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterResponse {
    /// The agent's id (16 hex digits), used in every path.
    pub agent_id: String,
    /// The name the operator gave it.
    pub name: String,
    /// The first access token (generation 1).
    pub token: AccessToken,
    /// Timings the agent should follow.
    pub settings: AgentSettings,
}

/// Timings the control plane asks of the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSettings {
    /// The `wait` the agent should ask for in its long poll, in seconds.
    pub poll_wait_secs: u64,
    /// After this long without hearing from the agent, the control plane marks it lost.
    pub lost_after_secs: u64,
    /// How long an access token lives, in seconds.
    pub token_ttl_secs: u64,
}

/// An access token. Send it as `Authorization: Bearer <token>`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessToken {
    /// The secret (`cca_` + 64 hex digits). The server keeps only its SHA-256.
    pub token: String,
    /// 1 for the first token, +1 per rotation.
    pub generation: u64,
    /// When it stops working, in ms since the Unix epoch.
    pub expires_at_ms: u64,
    /// When the agent should rotate it (half its lifetime), in ms since the Unix epoch.
    pub rotate_at_ms: u64,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("token", &"<redacted>")
            .field("generation", &self.generation)
            .field("expires_at_ms", &self.expires_at_ms)
            .field("rotate_at_ms", &self.rotate_at_ms)
            .finish()
    }
}

/// `POST /api/v1/agents/{id}/token`: the body is `{}`; the current token is in the header.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {}

/// `GET /api/v1/agents/{id}/tasks`: what the agent must do now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TasksResponse {
    /// Runs to start and runs to abort. Empty when the wait ran out.
    pub tasks: Vec<Task>,
}

/// One order for the agent. Tasks are repeated in later polls until the agent acknowledges
/// them (see the protocol document), so an agent must treat them idempotently by `run_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Task {
    /// Start this run.
    Run(RunTask),
    /// Abort this run and revert everything it applied.
    Abort(AbortTask),
}

/// Start a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunTask {
    /// Run id (8 hex digits).
    pub run_id: String,
    /// The experiment in its JSON form (the same keys as the TOML file).
    pub experiment: Value,
    /// The lease: if the agent cannot reach the control plane for this long while the run
    /// is in progress, it aborts the run and reverts.
    pub lease_secs: u64,
    /// When the operator created the run, in ms since the Unix epoch.
    pub created_at_ms: u64,
}

/// Abort a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbortTask {
    /// Run id.
    pub run_id: String,
    /// Why, as the operator said.
    pub reason: String,
    /// When the abort was requested, in ms since the Unix epoch.
    pub requested_at_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_json_shape() {
        let t = Task::Abort(AbortTask {
            run_id: "deadbeef".into(),
            reason: "stop".into(),
            requested_at_ms: 5,
        });
        assert_eq!(
            serde_json::to_value(&t).unwrap(),
            serde_json::json!({"type":"abort","run_id":"deadbeef","reason":"stop","requested_at_ms":5})
        );
    }

    #[test]
    fn register_rejects_unknown_fields_and_checks_fields() {
        let bad = r#"{"registration_key":"k","host":{"hostname":"h","agent_version":"1"},"x":1}"#;
        assert!(serde_json::from_str::<RegisterRequest>(bad).is_err());
        let r: RegisterRequest = serde_json::from_str(
            r#"{"registration_key":"","host":{"hostname":"a\u0000b","agent_version":"1"}}"#,
        )
        .unwrap();
        let e = r.validate().unwrap_err();
        let paths: Vec<_> = e.0.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["registration_key", "host.hostname"]);
    }

    #[test]
    fn token_debug_hides_the_secret() {
        let t = AccessToken {
            token: "cca_secret".into(),
            generation: 1,
            expires_at_ms: 0,
            rotate_at_ms: 0,
        };
        assert!(!format!("{t:?}").contains("secret"));
    }
}
