//! The agent's identity: agent id and rotating access token, kept in
//! `<state-dir>/identity.json` (mode 0600, written atomically) and never printed.
//!
//! Rotation follows docs/protocol.md: at half-life, rotate with the current token, **write
//! the new token to disk before using it**, and retry a rotation whose answer was lost with
//! the same (still valid) token. Calls hold a read lock for their whole length and rotation
//! a write lock, so no call can present the old generation after the new one was used (the
//! server would take that for a clone and lock the identity). A crash at any instant leaves
//! on disk either the old token (still valid: the new one was never used) or the new one.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chaos_protocol::agent::{AccessToken, RegisterResponse};
use fault_core::host::fs::write_atomic;
use serde::{Deserialize, Serialize};

/// What `identity.json` holds.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Stored {
    pub(crate) agent_id: String,
    pub(crate) name: String,
    /// The control plane it belongs to (a new URL in the config means a new identity).
    pub(crate) url: String,
    pub(crate) token: AccessToken,
}

impl std::fmt::Debug for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stored")
            .field("agent_id", &self.agent_id)
            .field("name", &self.name)
            .field("generation", &self.token.generation)
            .finish_non_exhaustive()
    }
}

/// The identity in memory, shared by every thread that talks to the control plane.
pub(crate) struct Identity {
    path: PathBuf,
    inner: RwLock<Stored>,
    /// When to rotate, on `CLOCK_MONOTONIC`. The token's `rotate_at_ms` is the control
    /// plane's wall time: comparing it with ours would rotate at every poll while our clock
    /// runs ahead (a `time.offset` fault, a bad NTP step) and let the token expire, which
    /// locks the agent out, while it runs behind. So the deadline is the token's half-life
    /// (`expires_at_ms - rotate_at_ms`, both the server's, no clock of ours involved) after
    /// we received it; for a token loaded from disk, what our wall clock says is left of it
    /// at load, never more than its half-life.
    rotate_due: Mutex<Instant>,
}

/// The monotonic rotation deadline of a token received (or loaded) now. `wall_now_ms`:
/// our wall clock, for a token read from disk; `None` for one just received.
fn rotate_due(token: &AccessToken, wall_now_ms: Option<u64>) -> Instant {
    let half_life = token.expires_at_ms.saturating_sub(token.rotate_at_ms);
    let left = match wall_now_ms {
        None => half_life,
        Some(now) => token.rotate_at_ms.saturating_sub(now).min(half_life),
    };
    Instant::now() + Duration::from_millis(left)
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

pub(crate) fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("identity.json")
}

impl Identity {
    /// The stored identity, if there is one.
    pub(crate) fn load(state_dir: &Path) -> anyhow::Result<Option<Identity>> {
        let path = path(state_dir);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let stored: Stored = serde_json::from_slice(&text)
            .with_context(|| format!("{} is damaged", path.display()))?;
        Ok(Some(Identity {
            path,
            rotate_due: Mutex::new(rotate_due(
                &stored.token,
                Some(crate::daemon::outbox::now_ms()),
            )),
            inner: RwLock::new(stored),
        }))
    }

    /// Keep a new registration (before anything else uses it).
    pub(crate) fn create(
        state_dir: &Path,
        url: &str,
        reg: RegisterResponse,
    ) -> anyhow::Result<Identity> {
        let stored = Stored {
            agent_id: reg.agent_id,
            name: reg.name,
            url: url.to_string(),
            token: reg.token,
        };
        let path = path(state_dir);
        persist(&path, &stored)?;
        Ok(Identity {
            path,
            rotate_due: Mutex::new(rotate_due(&stored.token, None)),
            inner: RwLock::new(stored),
        })
    }

    pub(crate) fn agent_id(&self) -> String {
        self.read().agent_id.clone()
    }

    pub(crate) fn name(&self) -> String {
        self.read().name.clone()
    }

    pub(crate) fn url(&self) -> String {
        self.read().url.clone()
    }

    /// How long until the token is due for rotation (zero: due now), on `CLOCK_MONOTONIC`.
    pub(crate) fn rotate_in(&self) -> Duration {
        self.rotate_due
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .saturating_duration_since(Instant::now())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Stored> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Make one call with the current token; rotation waits until it is done.
    pub(crate) fn with_token<T>(&self, call: impl FnOnce(&str, &str) -> T) -> T {
        let g = self.read();
        call(&g.agent_id, &g.token.token)
    }

    /// Rotate: ask for the next token with the current one, write it to disk, then make it
    /// the one in use. On any failure the current token stays (a lost answer is retried
    /// with it, as the protocol says).
    pub(crate) fn rotate(
        &self,
        ask: impl FnOnce(&str, &str) -> Result<AccessToken, chaos_protocol::client::ClientError>,
    ) -> Result<u64, RotateError> {
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let next = ask(&g.agent_id, &g.token.token).map_err(RotateError::Call)?;
        let mut stored = g.clone();
        stored.token = next;
        persist(&self.path, &stored).map_err(RotateError::Persist)?;
        crate::daemon::failpoint("after-rotate-persisted");
        let generation = stored.token.generation;
        *self.rotate_due.lock().unwrap_or_else(|e| e.into_inner()) =
            rotate_due(&stored.token, None);
        *g = stored;
        Ok(generation)
    }
}

/// Why a rotation did not happen.
#[derive(Debug)]
pub(crate) enum RotateError {
    /// The call failed (the current token stays in use).
    Call(chaos_protocol::client::ClientError),
    /// The new token could not be written: it is not used (the old one stays valid).
    Persist(anyhow::Error),
}

fn persist(path: &Path, stored: &Stored) -> anyhow::Result<()> {
    let json = serde_json::to_vec_pretty(stored).context("encoding the identity")?;
    write_atomic(path, &json, 0o600).with_context(|| format!("writing {}", path.display()))
}

/// Forget the identity (a new registration key replaces it).
pub(crate) fn remove(state_dir: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path(state_dir)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).context("removing the old identity")
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(rotate_at_ms: u64, expires_at_ms: u64) -> AccessToken {
        AccessToken {
            token: "cca_x".into(),
            generation: 1,
            expires_at_ms,
            rotate_at_ms,
        }
    }

    /// The rotation deadline never compares the server's wall time with a wall clock of
    /// ours that may be shifted: a token just received rotates after its half-life.
    #[test]
    fn rotation_deadline_is_monotonic() {
        let t = token(10_000_000 + 1_800_000, 10_000_000 + 3_600_000);
        let half = Duration::from_millis(1_800_000);
        let slack = Duration::from_secs(5);
        let left = |due: Instant| due.saturating_duration_since(Instant::now());
        // received now: half-life, whatever our clock says
        let l = left(rotate_due(&t, None));
        assert!(l <= half && l + slack > half, "{l:?}");
        // loaded from disk with our clock in step: what is left of it
        let l = left(rotate_due(&t, Some(10_000_000 + 1_200_000)));
        assert!(l <= Duration::from_millis(600_000) && l + slack > Duration::from_millis(600_000));
        // loaded with our clock 2 h ahead: due now (one early rotation, then monotonic)
        assert_eq!(
            left(rotate_due(&t, Some(10_000_000 + 7_200_000))),
            Duration::ZERO
        );
        // loaded with our clock 2 h behind: never later than one half-life
        let l = left(rotate_due(&t, Some(600_000)));
        assert!(l <= half, "{l:?}");
        // a damaged token (expiry before rotation) is due at once
        assert_eq!(left(rotate_due(&token(10, 5), None)), Duration::ZERO);
    }
}
