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

    /// Create runs (one per agent) in one transaction, and wake the agents' long polls on
    /// every replica when it commits.
    pub fn create_runs(
        &mut self,
        runs: &[(String, String)],
        handed: &[bool],
        name: &str,
        experiment: &str,
        lease_secs: u64,
        now: u64,
    ) -> Result<()> {
        let ids: Vec<&str> = runs.iter().map(|r| r.0.as_str()).collect();
        let agents: Vec<&str> = runs.iter().map(|r| r.1.as_str()).collect();
        let handed: Vec<bool> = (0..runs.len())
            .map(|k| handed.get(k).copied().unwrap_or(false))
            .collect();
        let mut tx = self.client()?.transaction()?;
        match tx.execute(
            "INSERT INTO runs(id, agent_id, name, experiment, lease_secs, state, created_at_ms,
                              delivered_at_ms)
             SELECT v.r, v.a, $3, $4, $5, 'pending', $6, CASE WHEN v.h THEN $6::bigint END
             FROM unnest($1::text[], $2::text[], $7::bool[]) AS v(r, a, h)",
            &[
                &ids,
                &agents,
                &name,
                &experiment,
                &i(lease_secs),
                &i(now),
                &handed,
            ],
        ) {
            Err(e) if unique_violation(&e) => {
                return Err(StoreError::Conflict("a run id is taken".into()))
            }
            r => r?,
        };
        notify_agents(&mut tx, &agents)?;
        tx.commit()?;
        Ok(())
    }

    /// Fail the runs waiting for `agent_id` that need a kind it no longer offers.
    pub fn fail_unrunnable(&mut self, agent_id: &str, now: u64) -> Result<Vec<(String, String)>> {
        let Some(agent) = self.find_agent(agent_id)? else {
            return Ok(Vec::new());
        };
        let Some(offered) = agent.kinds() else {
            return Ok(Vec::new());
        };
        let mut tx = self.client()?.transaction()?;
        let rows = tx.query(
            "SELECT id, experiment FROM runs
             WHERE agent_id=$1 AND state='pending' AND abort_requested_at_ms IS NULL
             FOR UPDATE",
            &[&agent_id],
        )?;
        let mut failed = Vec::new();
        for r in &rows {
            let (run_id, exp) = (gs(r, 0)?, gs(r, 1)?);
            let exp: serde_json::Value = serde_json::from_str(&exp).unwrap_or_default();
            let Some(message) = rules::unrunnable(&agent, &offered, &exp) else {
                continue;
            };
            tx.execute(
                "UPDATE runs SET state='failed', finished_at_ms=$2, message=$3 WHERE id=$1",
                &[&run_id, &i(now), &message],
            )?;
            failed.push((run_id, message));
        }
        if !failed.is_empty() {
            notify_logs(&mut tx)?;
        }
        tx.commit()?;
        Ok(failed)
    }

    /// The tasks an agent has not acknowledged, whether any is due now, and the creation
    /// times of the runs among them never handed out before.
    pub fn tasks_with_first(
        &mut self,
        agent_id: &str,
        redeliver_before_ms: u64,
    ) -> Result<(Vec<Task>, bool, Vec<u64>)> {
        let rows = self.client()?.query(
            "SELECT id, experiment, lease_secs, created_at_ms, delivered_at_ms,
                    abort_requested_at_ms, abort_reason, abort_delivered_at_ms, state
             FROM runs WHERE agent_id=$1 AND state IN ('pending', 'running')
             ORDER BY created_at_ms",
            &[&agent_id],
        )?;
        let rows = rows
            .iter()
            .map(|r| {
                Ok(rules::TaskRow {
                    run_id: gs(r, 0)?,
                    experiment: gs(r, 1)?,
                    lease_secs: gu(r, 2)?,
                    created_at_ms: gu(r, 3)?,
                    delivered_at_ms: gou(r, 4)?,
                    abort_requested_at_ms: gou(r, 5)?,
                    abort_reason: gos(r, 6)?,
                    abort_delivered_at_ms: gou(r, 7)?,
                    state: gs(r, 8)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(rules::tasks(rows, redeliver_before_ms))
    }

    /// Record that these tasks were handed out now. Like the SQLite store, this one commit
    /// does not wait for the disk (`synchronous_commit = off` for it alone): lost in a crash,
    /// a mark only means the task is handed out once more.
    pub fn mark_delivered(&mut self, tasks: &[Task], now: u64) -> Result<()> {
        let (mut runs, mut aborts) = (Vec::new(), Vec::new());
        for t in tasks {
            match t {
                Task::Run(r) => runs.push(r.run_id.as_str()),
                Task::Abort(a) => aborts.push(a.run_id.as_str()),
            }
        }
        let mut tx = self.client()?.transaction()?;
        tx.batch_execute("SET LOCAL synchronous_commit = off")?;
        if !runs.is_empty() {
            tx.execute(
                "UPDATE runs SET delivered_at_ms=$2 WHERE id = ANY($1)",
                &[&runs, &i(now)],
            )?;
        }
        if !aborts.is_empty() {
            tx.execute(
                "UPDATE runs SET abort_delivered_at_ms=$2 WHERE id = ANY($1)",
                &[&aborts, &i(now)],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Who owns a run.
    pub fn run_owner(&mut self, run_id: &str) -> Result<Option<RunOwner>> {
        let r = self.client()?.query_opt(
            "SELECT agent_id, state, abort_requested_at_ms IS NOT NULL, abort_reason
             FROM runs WHERE id=$1",
            &[&run_id],
        )?;
        r.map(|r| {
            let abort_requested = gb(&r, 2)?;
            Ok(RunOwner {
                agent_id: gs(&r, 0)?,
                state: state_of(gs(&r, 1)?),
                abort_requested,
                abort_reason: if abort_requested { gos(&r, 3)? } else { None },
            })
        })
        .transpose()
    }

    /// The stored experiment of a run (its JSON form), if the run exists.
    pub fn run_experiment(&mut self, run_id: &str) -> Result<Option<serde_json::Value>> {
        let r = self
            .client()?
            .query_opt("SELECT experiment FROM runs WHERE id=$1", &[&run_id])?;
        Ok(r.map(|r| gs(&r, 0))
            .transpose()?
            .map(|e| serde_json::from_str(&e).unwrap_or_default()))
    }

    /// Apply a status update. A terminal state is final.
    pub fn update_status(
        &mut self,
        run_id: &str,
        update: &StatusUpdate,
        now: u64,
    ) -> Result<(RunState, bool)> {
        let mut tx = self.client()?.transaction()?;
        let Some(row) = tx.query_opt(
            "SELECT state, abort_requested_at_ms IS NOT NULL FROM runs WHERE id=$1 FOR UPDATE",
            &[&run_id],
        )?
        else {
            return Err(StoreError::NotFound(format!("no run {run_id}")));
        };
        let (state, abort) = (state_of(gs(&row, 0)?), gb(&row, 1)?);
        if !rules::status_change(run_id, state, update.state)? {
            return Ok((state, abort));
        }
        let new = update.state;
        tx.execute(
            "UPDATE runs SET state=$2,
                started_at_ms = COALESCE(started_at_ms, $3),
                finished_at_ms = CASE WHEN $4 THEN $3 ELSE finished_at_ms END,
                step = COALESCE($5, step),
                message = COALESCE($6, message)
             WHERE id=$1",
            &[
                &run_id,
                &new.as_str(),
                &i(now),
                &new.is_terminal(),
                &update.step.map(i64::from),
                &update.message,
            ],
        )?;
        if !update.faults.is_empty() {
            let st = tx.prepare(
                "INSERT INTO run_faults(run_id, fault_id, step, kind, state, detail, updated_at_ms)
                 VALUES($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT(run_id, fault_id) DO UPDATE SET step=excluded.step,
                    kind=excluded.kind, state=excluded.state, detail=excluded.detail,
                    updated_at_ms=excluded.updated_at_ms",
            )?;
            for f in &update.faults {
                tx.execute(
                    &st,
                    &[
                        &run_id,
                        &f.fault_id,
                        &i64::from(f.step),
                        &f.kind,
                        &enum_str(&f.state),
                        &f.detail,
                        &i(now),
                    ],
                )?;
            }
        }
        notify_logs(&mut tx)?;
        tx.commit()?;
        Ok((new, abort))
    }

    /// Store log lines (one statement); lines whose `seq` is already held are ignored.
    pub fn append_logs(&mut self, run_id: &str, lines: &[LogLine]) -> Result<(u32, u32)> {
        let seq: Vec<i64> = lines.iter().map(|l| i(l.seq)).collect();
        let at: Vec<i64> = lines.iter().map(|l| i(l.at_ms)).collect();
        let level: Vec<String> = lines.iter().map(|l| enum_str(&l.level)).collect();
        let message: Vec<&str> = lines.iter().map(|l| l.message.as_str()).collect();
        let mut tx = self.client()?.transaction()?;
        let accepted = tx.execute(
            "INSERT INTO logs(run_id, seq, at_ms, level, message)
             SELECT $1, v.s, v.t, v.l, v.m
             FROM unnest($2::int8[], $3::int8[], $4::text[], $5::text[]) AS v(s, t, l, m)
             ON CONFLICT (run_id, seq) DO NOTHING",
            &[&run_id, &seq, &at, &level, &message],
        )? as u32;
        if accepted > 0 {
            notify_logs(&mut tx)?;
        }
        tx.commit()?;
        Ok((accepted, lines.len() as u32 - accepted))
    }

    /// Store the final result. The same result again is fine; a different one is a conflict.
    pub fn store_result(
        &mut self,
        run_id: &str,
        result: &RunResult,
        now: u64,
    ) -> Result<(RunState, bool)> {
        let mut tx = self.client()?.transaction()?;
        let Some(row) = tx.query_opt(
            "SELECT state, abort_requested_at_ms IS NOT NULL, result FROM runs
             WHERE id=$1 FOR UPDATE",
            &[&run_id],
        )?
        else {
            return Err(StoreError::NotFound(format!("no run {run_id}")));
        };
        let (state, abort, stored) = (state_of(gs(&row, 0)?), gb(&row, 1)?, gos(&row, 2)?);
        let new = result.outcome.state();
        if !rules::result_change(run_id, state, stored.as_deref(), result)? {
            return Ok((state, abort));
        }
        let json = serde_json::to_string(result).unwrap_or_default();
        tx.execute(
            "UPDATE runs SET state=$2, result=$3, started_at_ms=COALESCE(started_at_ms, $4),
                finished_at_ms=COALESCE(finished_at_ms, $4) WHERE id=$1",
            &[&run_id, &new.as_str(), &json, &i(now)],
        )?;
        notify_logs(&mut tx)?;
        tx.commit()?;
        Ok((new, abort))
    }

    /// Ask for an abort. A run never handed out is aborted at once.
    pub fn abort(&mut self, run_id: &str, reason: &str, now: u64) -> Result<RunState> {
        let mut tx = self.client()?.transaction()?;
        let Some(row) = tx.query_opt(
            "SELECT state, delivered_at_ms, agent_id FROM runs WHERE id=$1 FOR UPDATE",
            &[&run_id],
        )?
        else {
            return Err(StoreError::NotFound(format!("no run {run_id}")));
        };
        let (state, delivered, agent_id) = (state_of(gs(&row, 0)?), gou(&row, 1)?, gs(&row, 2)?);
        let new = if rules::abort_now(run_id, state, delivered)? {
            tx.execute(
                "UPDATE runs SET state='aborted', finished_at_ms=$2, abort_requested_at_ms=$2,
                    abort_reason=$3, message=$4 WHERE id=$1",
                &[&run_id, &i(now), &reason, &rules::ABORTED_UNSENT],
            )?;
            RunState::Aborted
        } else {
            tx.execute(
                "UPDATE runs SET abort_requested_at_ms=COALESCE(abort_requested_at_ms, $2),
                    abort_reason=$3 WHERE id=$1",
                &[&run_id, &i(now), &reason],
            )?;
            state
        };
        notify_agents(&mut tx, &[agent_id.as_str()])?;
        notify_logs(&mut tx)?;
        tx.commit()?;
        Ok(new)
    }

    /// Runs, newest first.
    pub fn list_runs(&mut self, f: &RunFilter) -> Result<Vec<RunSummary>> {
        let rows = self.client()?.query(
            "SELECT r.id, r.agent_id, a.name, r.name, r.state, r.created_at_ms, r.delivered_at_ms,
                    r.started_at_ms, r.finished_at_ms, r.abort_requested_at_ms IS NOT NULL
             FROM runs r JOIN agents a ON a.id = r.agent_id
             WHERE ($1::text IS NULL OR r.agent_id = $1) AND ($2::text IS NULL OR r.state = $2)
             ORDER BY r.created_at_ms DESC, r.id LIMIT $3",
            &[
                &f.agent_id,
                &f.state.map(|s| s.as_str()),
                &i64::from(f.limit),
            ],
        )?;
        rows.iter().map(summary_row).collect()
    }

    /// One run with its faults and result.
    pub fn run_detail(&mut self, run_id: &str) -> Result<Option<RunDetail>> {
        let c = self.client()?;
        let Some(r) = c.query_opt(
            "SELECT r.id, r.agent_id, a.name, r.name, r.state, r.created_at_ms,
                    r.delivered_at_ms, r.started_at_ms, r.finished_at_ms,
                    r.abort_requested_at_ms IS NOT NULL,
                    r.experiment, r.lease_secs, r.abort_reason, r.step, r.message, r.result,
                    (SELECT COUNT(*) FROM logs l WHERE l.run_id = r.id)
             FROM runs r JOIN agents a ON a.id = r.agent_id WHERE r.id=$1",
            &[&run_id],
        )?
        else {
            return Ok(None);
        };
        let mut d = RunDetail {
            summary: summary_row(&r)?,
            experiment: serde_json::from_str(&gs(&r, 10)?).unwrap_or_default(),
            lease_secs: gu(&r, 11)?,
            abort_reason: gos(&r, 12)?,
            step: gou(&r, 13)?.map(|s| s.min(u32::MAX as u64) as u32),
            message: gos(&r, 14)?,
            faults: Vec::new(),
            result: gos(&r, 15)?.and_then(|j| serde_json::from_str(&j).ok()),
            log_lines: gu(&r, 16)?,
        };
        let rows = c.query(
            "SELECT fault_id, step, kind, state, detail FROM run_faults WHERE run_id=$1
             ORDER BY step, fault_id",
            &[&run_id],
        )?;
        d.faults = rows
            .iter()
            .map(|r| {
                Ok(FaultStatus {
                    fault_id: gs(r, 0)?,
                    step: g32(r, 1)?,
                    kind: gs(r, 2)?,
                    state: serde_json::from_value(serde_json::Value::String(gs(r, 3)?))
                        .unwrap_or(chaos_protocol::run::FaultState::Failed),
                    detail: gs(r, 4)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Some(d))
    }

    /// Log lines with `seq > after`, at most `limit`.
    pub fn logs_after(&mut self, run_id: &str, after: u64, limit: u32) -> Result<Vec<LogLine>> {
        let rows = self.client()?.query(
            "SELECT seq, at_ms, level, message FROM logs WHERE run_id=$1 AND seq > $2
             ORDER BY seq LIMIT $3",
            &[&run_id, &i(after), &i64::from(limit)],
        )?;
        rows.iter()
            .map(|r| {
                Ok(LogLine {
                    seq: gu(r, 0)?,
                    at_ms: gu(r, 1)?,
                    level: serde_json::from_value(serde_json::Value::String(gs(r, 2)?))
                        .unwrap_or(chaos_protocol::run::LogLevel::Info),
                    message: gs(r, 3)?,
                })
            })
            .collect()
    }

    /// Agents by state and runs by state (for the metrics).
    pub fn counts_by_state(&mut self) -> Result<(StateCounts, StateCounts)> {
        let c = self.client()?;
        let mut by = |sql: &str| -> Result<StateCounts> {
            c.query(sql, &[])?
                .iter()
                .map(|r| Ok((gs(r, 0)?, gu(r, 1)?)))
                .collect()
        };
        Ok((
            by("SELECT state, COUNT(*) FROM agents GROUP BY state")?,
            by("SELECT state, COUNT(*) FROM runs GROUP BY state")?,
        ))
    }

    /// Counts for tests and health: (agents, runs, log lines).
    pub fn counts(&mut self) -> Result<(u64, u64, u64)> {
        let r = self.client()?.query_one(
            "SELECT (SELECT COUNT(*) FROM agents), (SELECT COUNT(*) FROM runs),
                    (SELECT COUNT(*) FROM logs)",
            &[],
        )?;
        Ok((gu(&r, 0)?, gu(&r, 1)?, gu(&r, 2)?))
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
