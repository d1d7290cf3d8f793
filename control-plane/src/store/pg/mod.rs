//! The PostgreSQL store: the same tables and calls as the SQLite one, for several `serve`
//! replicas sharing one database.
//!
//! Replicas keep no state the others need: every decision that must be unique (a key used
//! once, one agent per machine, the next token generation, a terminal run state) is taken
//! inside one transaction holding a row lock (`SELECT … FOR UPDATE`) or an advisory lock, never
//! an in-process lock. What a replica must hear from another (a run or abort for an agent whose
//! long poll it holds, new log lines for a follower) is sent with `NOTIFY` inside the same
//! transaction, so it is delivered when, and only if, the change commits: see [`listen`].

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use chaos_protocol::admin::{RunDetail, RunSummary};
use chaos_protocol::agent::Task;
use chaos_protocol::run::{FaultStatus, LogLine, RunResult, RunState, StatusUpdate};
use postgres::error::SqlState;
use postgres::{Client, Row};

mod conn;
mod listen;
mod runs;

pub use conn::{describe, redact, PgTarget};
pub use listen::{listen, Heard};

use super::{
    rules, state_of, AgentRow, RegisterRefusal, Result, RunFilter, RunOwner, StateCounts,
    StoreError, TokenRow,
};

/// The channel replicas `LISTEN` on. Payloads: `wake:<agent id>` (a run or an abort for that
/// agent) and `logs` (a run's logs, status or result changed).
pub const CHANNEL: &str = "chaos_control";

/// Advisory lock key held while the schema is created (replicas may start together).
const SCHEMA_LOCK: i64 = 0x6368_616f_735f_6370; // "chaos_cp"

/// Schema version stored in `meta` (the same as the SQLite store's).
pub(super) const SCHEMA_VERSION: i64 = 1;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BYTEA NOT NULL);
CREATE TABLE IF NOT EXISTS agents (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    state_reason TEXT,
    created_at_ms BIGINT NOT NULL,
    registered_at_ms BIGINT,
    last_seen_ms BIGINT,
    token_generation BIGINT NOT NULL DEFAULT 0,
    key_hash BYTEA UNIQUE,
    key_expires_at_ms BIGINT,
    key_used_at_ms BIGINT,
    host TEXT
);
CREATE TABLE IF NOT EXISTS tokens (
    hash BYTEA PRIMARY KEY,
    agent_id TEXT NOT NULL REFERENCES agents(id),
    generation BIGINT NOT NULL,
    issued_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    used_at_ms BIGINT
);
CREATE INDEX IF NOT EXISTS tokens_agent ON tokens(agent_id, generation);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL REFERENCES agents(id),
    name TEXT NOT NULL,
    experiment TEXT NOT NULL,
    lease_secs BIGINT NOT NULL,
    state TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    delivered_at_ms BIGINT,
    started_at_ms BIGINT,
    finished_at_ms BIGINT,
    abort_requested_at_ms BIGINT,
    abort_reason TEXT,
    abort_delivered_at_ms BIGINT,
    step BIGINT,
    message TEXT,
    result TEXT
);
CREATE INDEX IF NOT EXISTS runs_agent_state ON runs(agent_id, state);
CREATE INDEX IF NOT EXISTS runs_created ON runs(created_at_ms);
CREATE TABLE IF NOT EXISTS run_faults (
    run_id TEXT NOT NULL REFERENCES runs(id),
    fault_id TEXT NOT NULL,
    step BIGINT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    detail TEXT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (run_id, fault_id)
);
CREATE TABLE IF NOT EXISTS logs (
    run_id TEXT NOT NULL REFERENCES runs(id),
    seq BIGINT NOT NULL,
    at_ms BIGINT NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
";

fn unique_violation(e: &postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

fn i(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

fn gu(r: &Row, c: usize) -> Result<u64> {
    Ok(r.try_get::<_, i64>(c)?.max(0) as u64)
}

fn gou(r: &Row, c: usize) -> Result<Option<u64>> {
    Ok(r.try_get::<_, Option<i64>>(c)?.map(|v| v.max(0) as u64))
}

fn g32(r: &Row, c: usize) -> Result<u32> {
    Ok(r.try_get::<_, i64>(c)?.clamp(0, u32::MAX as i64) as u32)
}

fn gs(r: &Row, c: usize) -> Result<String> {
    Ok(r.try_get(c)?)
}

fn gos(r: &Row, c: usize) -> Result<Option<String>> {
    Ok(r.try_get(c)?)
}

fn gb(r: &Row, c: usize) -> Result<bool> {
    Ok(r.try_get(c)?)
}

fn agent_row(r: &Row) -> Result<AgentRow> {
    Ok(AgentRow {
        id: gs(r, 0)?,
        name: gs(r, 1)?,
        state: gs(r, 2)?,
        state_reason: gos(r, 3)?,
        created_at_ms: gu(r, 4)?,
        registered_at_ms: gou(r, 5)?,
        last_seen_ms: gou(r, 6)?,
        token_generation: gu(r, 7)?,
        host: gos(r, 8)?,
    })
}

const AGENT_COLS: &str = "id, name, state, state_reason, created_at_ms, registered_at_ms, \
                          last_seen_ms, token_generation, host";

fn summary_row(r: &Row) -> Result<RunSummary> {
    Ok(RunSummary {
        run_id: gs(r, 0)?,
        agent_id: gs(r, 1)?,
        agent_name: gs(r, 2)?,
        name: gs(r, 3)?,
        state: state_of(gs(r, 4)?),
        created_at_ms: gu(r, 5)?,
        delivered_at_ms: gou(r, 6)?,
        started_at_ms: gou(r, 7)?,
        finished_at_ms: gou(r, 8)?,
        abort_requested: gb(r, 9)?,
    })
}

fn enum_str<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// A store in a PostgreSQL database. One connection, opened again when it was lost.
pub struct PgStore {
    target: PgTarget,
    client: Option<Client>,
    /// The server process (backend) of that connection: its own `NOTIFY`s are not news to
    /// this replica (see [`listen`]).
    pid: Arc<AtomicI32>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connect, and create the tables when the database has none.
    pub fn open(target: &PgTarget) -> Result<PgStore> {
        let mut s = PgStore {
            target: target.clone(),
            client: None,
            pid: Arc::new(AtomicI32::new(0)),
        };
        let mut tx = s.client()?.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])?;
        tx.batch_execute(SCHEMA)?;
        let version = tx
            .query_opt("SELECT value FROM meta WHERE key='schema_version'", &[])?
            .map(|r| r.try_get::<_, Vec<u8>>(0))
            .transpose()?;
        match version {
            None => {
                tx.execute(
                    "INSERT INTO meta(key, value) VALUES('schema_version', $1)",
                    &[&SCHEMA_VERSION.to_string().into_bytes()],
                )?;
            }
            Some(v) if v == SCHEMA_VERSION.to_string().as_bytes() => {}
            Some(v) => {
                return Err(StoreError::Conflict(format!(
                    "the store has schema version {}; this chaos-control knows {SCHEMA_VERSION}",
                    String::from_utf8_lossy(&v)
                )))
            }
        }
        tx.commit()?;
        Ok(s)
    }

    /// The connection, made again if it was lost (PostgreSQL restarted, network cut).
    pub(super) fn client(&mut self) -> Result<&mut Client> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = None;
            let mut c = self.target.connect()?;
            let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[])?.try_get(0)?;
            self.pid.store(pid, Ordering::SeqCst);
            self.client = Some(c);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    /// The backend process id of this store's connection (kept current across reconnects).
    pub fn backend_pid(&self) -> Arc<AtomicI32> {
        self.pid.clone()
    }

    /// Whether the database holds nothing yet (no agents, runs, or admin token).
    pub fn is_empty(&mut self) -> Result<bool> {
        let r = self.client()?.query_one(
            "SELECT NOT EXISTS(SELECT 1 FROM agents) AND NOT EXISTS(SELECT 1 FROM runs)
                AND NOT EXISTS(SELECT 1 FROM meta WHERE key <> 'schema_version')",
            &[],
        )?;
        gb(&r, 0)
    }

    /// A value from `meta`.
    pub fn meta(&mut self, key: &str) -> Result<Option<Vec<u8>>> {
        let r = self
            .client()?
            .query_opt("SELECT value FROM meta WHERE key=$1", &[&key])?;
        Ok(r.map(|r| r.try_get(0)).transpose()?)
    }

    /// Set a value in `meta`.
    pub fn set_meta(&mut self, key: &str, value: &[u8]) -> Result<()> {
        self.client()?.execute(
            "INSERT INTO meta(key, value) VALUES($1, $2)
             ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            &[&key, &value],
        )?;
        Ok(())
    }

    /// Add an agent waiting for registration.
    pub fn add_agent(
        &mut self,
        id: &str,
        name: &str,
        key_hash: &[u8],
        key_expires_at_ms: u64,
        now: u64,
    ) -> Result<()> {
        let taken = || StoreError::Conflict(format!("an agent named {name:?} already exists"));
        let c = self.client()?;
        let r = c.query_one(
            "SELECT EXISTS(SELECT 1 FROM agents WHERE name=$1 OR id=$2)",
            &[&name, &id],
        )?;
        if gb(&r, 0)? {
            return Err(taken());
        }
        match c.execute(
            "INSERT INTO agents(id, name, state, created_at_ms, key_hash, key_expires_at_ms)
             VALUES($1, $2, 'pending', $3, $4, $5)",
            &[&id, &name, &i(now), &key_hash, &i(key_expires_at_ms)],
        ) {
            // Another replica added the same name between the check and the insert.
            Err(e) if unique_violation(&e) => Err(taken()),
            r => r.map(|_| ()).map_err(Into::into),
        }
    }

    /// Give an agent a new registration key.
    pub fn rekey(&mut self, id: &str, key_hash: &[u8], key_expires_at_ms: u64) -> Result<()> {
        let mut tx = self.client()?.transaction()?;
        if tx
            .query_opt("SELECT 1 FROM agents WHERE id=$1 FOR UPDATE", &[&id])?
            .is_none()
        {
            return Err(StoreError::NotFound(format!("no agent {id}")));
        }
        tx.execute("DELETE FROM tokens WHERE agent_id=$1", &[&id])?;
        tx.execute(
            "UPDATE agents SET state='pending', state_reason=NULL, token_generation=0,
                    key_hash=$2, key_expires_at_ms=$3, key_used_at_ms=NULL
             WHERE id=$1",
            &[&id, &key_hash, &i(key_expires_at_ms)],
        )?;
        notify_agents(&mut tx, &[id])?;
        tx.commit()?;
        Ok(())
    }

    /// Revoke an agent.
    pub fn revoke(&mut self, id: &str, reason: &str) -> Result<()> {
        let mut tx = self.client()?.transaction()?;
        tx.execute(
            "UPDATE agents SET state='revoked', state_reason=$2, key_hash=NULL WHERE id=$1",
            &[&id, &reason],
        )?;
        // Its long poll, on whichever replica, returns (and its next call is refused).
        notify_agents(&mut tx, &[id])?;
        tx.commit()?;
        Ok(())
    }

    /// Lock an agent whose identity was copied.
    pub fn lock(&mut self, id: &str, reason: &str) -> Result<()> {
        self.client()?.execute(
            "UPDATE agents SET state='locked', state_reason=$2 WHERE id=$1 AND state='active'",
            &[&id, &reason],
        )?;
        Ok(())
    }

    /// An agent by id or name.
    pub fn find_agent(&mut self, id_or_name: &str) -> Result<Option<AgentRow>> {
        let r = self.client()?.query_opt(
            &format!("SELECT {AGENT_COLS} FROM agents WHERE id=$1 OR name=$1"),
            &[&id_or_name],
        )?;
        r.as_ref().map(agent_row).transpose()
    }

    /// Every agent, by name.
    pub fn list_agents(&mut self) -> Result<Vec<AgentRow>> {
        let rows = self.client()?.query(
            &format!("SELECT {AGENT_COLS} FROM agents ORDER BY name"),
            &[],
        )?;
        rows.iter().map(agent_row).collect()
    }

    /// Trade a registration key for an identity and the first token (generation 1).
    pub fn register(
        &mut self,
        key_hash: &[u8],
        host_json: &str,
        token_hash: &[u8],
        token_expires_at_ms: u64,
        now: u64,
    ) -> Result<std::result::Result<(String, String), RegisterRefusal>> {
        let mut tx = self.client()?.transaction()?;
        // The row lock makes a key usable once even when two replicas see it together.
        let row = tx.query_opt(
            "SELECT id, name, key_expires_at_ms, key_used_at_ms FROM agents
             WHERE key_hash=$1 FOR UPDATE",
            &[&key_hash],
        )?;
        let Some(row) = row else {
            return Ok(Err(RegisterRefusal::Unknown));
        };
        let (id, name) = (gs(&row, 0)?, gs(&row, 1)?);
        if gou(&row, 3)?.is_some() {
            return Ok(Err(RegisterRefusal::Used));
        }
        if gou(&row, 2)?.unwrap_or(0) <= now {
            return Ok(Err(RegisterRefusal::Expired));
        }
        if let Some(machine_id) = rules::machine_id(host_json) {
            // One registration per machine at a time, across replicas.
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtext('machine:' || $1))",
                &[&machine_id],
            )?;
            let taken = tx.query_opt(
                "SELECT name, state FROM agents
                 WHERE id <> $1 AND state IN ('active', 'lost', 'locked')
                   AND (host::jsonb ->> 'machine_id') = $2
                 ORDER BY name LIMIT 1",
                &[&id, &machine_id],
            )?;
            if let Some(t) = taken {
                return Ok(Err(RegisterRefusal::MachineTaken {
                    name: gs(&t, 0)?,
                    state: gs(&t, 1)?,
                }));
            }
        }
        tx.execute(
            "UPDATE agents SET state='active', state_reason=NULL, registered_at_ms=$2,
                    last_seen_ms=$2, token_generation=0, key_used_at_ms=$2, host=$3
             WHERE id=$1",
            &[&id, &i(now), &host_json],
        )?;
        tx.execute("DELETE FROM tokens WHERE agent_id=$1", &[&id])?;
        tx.execute(
            "INSERT INTO tokens(hash, agent_id, generation, issued_at_ms, expires_at_ms)
             VALUES($1, $2, 1, $3, $4)",
            &[&token_hash, &id, &i(now), &i(token_expires_at_ms)],
        )?;
        tx.commit()?;
        Ok(Ok((id, name)))
    }

    /// Look a token up by its hash.
    pub fn token(&mut self, hash: &[u8]) -> Result<Option<TokenRow>> {
        let r = self.client()?.query_opt(
            "SELECT t.agent_id, t.generation, t.expires_at_ms, a.state, a.token_generation
             FROM tokens t JOIN agents a ON a.id = t.agent_id WHERE t.hash=$1",
            &[&hash],
        )?;
        r.map(|r| {
            Ok(TokenRow {
                agent_id: gs(&r, 0)?,
                generation: gu(&r, 1)?,
                expires_at_ms: gu(&r, 2)?,
                agent_state: gs(&r, 3)?,
                agent_generation: gu(&r, 4)?,
            })
        })
        .transpose()
    }

    /// First use of a token generation: it becomes the agent's newest; older ones retire.
    pub fn use_generation(&mut self, agent_id: &str, generation: u64, now: u64) -> Result<()> {
        let mut tx = self.client()?.transaction()?;
        tx.execute(
            "UPDATE agents SET token_generation=$2 WHERE id=$1 AND token_generation < $2",
            &[&agent_id, &i(generation)],
        )?;
        tx.execute(
            "UPDATE tokens SET used_at_ms=$3
             WHERE agent_id=$1 AND generation=$2 AND used_at_ms IS NULL",
            &[&agent_id, &i(generation), &i(now)],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Issue the next token (under the agent's row lock: two replicas rotating at once leave
    /// one unused token of the next generation, not two).
    pub fn rotate(
        &mut self,
        agent_id: &str,
        current: u64,
        hash: &[u8],
        expires_at_ms: u64,
        now: u64,
    ) -> Result<u64> {
        let mut tx = self.client()?.transaction()?;
        tx.execute("SELECT 1 FROM agents WHERE id=$1 FOR UPDATE", &[&agent_id])?;
        tx.execute(
            "DELETE FROM tokens WHERE agent_id=$1 AND generation > $2 AND used_at_ms IS NULL",
            &[&agent_id, &i(current)],
        )?;
        tx.execute(
            "INSERT INTO tokens(hash, agent_id, generation, issued_at_ms, expires_at_ms)
             VALUES($1, $2, $3, $4, $5)",
            &[
                &hash,
                &agent_id,
                &i(current + 1),
                &i(now),
                &i(expires_at_ms),
            ],
        )?;
        tx.commit()?;
        Ok(current + 1)
    }

    /// Forget retired tokens that expired before `before_ms`.
    pub fn prune_tokens(&mut self, before_ms: u64) -> Result<usize> {
        Ok(self.client()?.execute(
            "DELETE FROM tokens WHERE expires_at_ms < $1 AND generation <
               (SELECT token_generation FROM agents WHERE agents.id = tokens.agent_id)",
            &[&i(before_ms)],
        )? as usize)
    }

    /// Registered agents silent since before `before_ms`: (id, name, last seen).
    pub fn silent_agents(&mut self, before_ms: u64) -> Result<Vec<(String, String, Option<u64>)>> {
        let rows = self.client()?.query(
            "SELECT id, name, last_seen_ms FROM agents
             WHERE state='active' AND COALESCE(last_seen_ms, 0) < $1",
            &[&i(before_ms)],
        )?;
        rows.iter()
            .map(|r| Ok((gs(r, 0)?, gs(r, 1)?, gou(r, 2)?)))
            .collect()
    }

    /// Write last-seen times (one statement for the whole batch).
    pub fn touch(&mut self, seen: &[(String, u64)]) -> Result<()> {
        let ids: Vec<&str> = seen.iter().map(|s| s.0.as_str()).collect();
        let at: Vec<i64> = seen.iter().map(|s| i(s.1)).collect();
        self.client()?.execute(
            "UPDATE agents a SET last_seen_ms = v.t
             FROM unnest($1::text[], $2::int8[]) AS v(id, t)
             WHERE a.id = v.id AND (a.last_seen_ms IS NULL OR a.last_seen_ms < v.t)",
            &[&ids, &at],
        )?;
        Ok(())
    }
}

fn notify_agents(tx: &mut postgres::Transaction<'_>, agents: &[&str]) -> Result<()> {
    tx.execute(
        "SELECT pg_notify($1, 'wake:' || a) FROM unnest($2::text[]) AS a",
        &[&CHANNEL, &agents],
    )?;
    Ok(())
}

fn notify_logs(tx: &mut postgres::Transaction<'_>) -> Result<()> {
    tx.execute("SELECT pg_notify($1, 'logs')", &[&CHANNEL])?;
    Ok(())
}
