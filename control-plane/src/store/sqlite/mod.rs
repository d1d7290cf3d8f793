//! The embedded store: one SQLite file (bundled SQLite, WAL mode).

use std::path::Path;

use chaos_protocol::admin::{RunDetail, RunSummary};
use chaos_protocol::agent::Task;
use chaos_protocol::run::{FaultStatus, LogLine, RunResult, RunState, StatusUpdate};
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{
    rules, state_of, AgentRow, RegisterRefusal, Result, RunFilter, RunOwner, StateCounts,
    StoreError, TokenRow, Write, Written,
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS agents (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    state_reason TEXT,
    created_at_ms INTEGER NOT NULL,
    registered_at_ms INTEGER,
    last_seen_ms INTEGER,
    token_generation INTEGER NOT NULL DEFAULT 0,
    key_hash BLOB UNIQUE,
    key_expires_at_ms INTEGER,
    key_used_at_ms INTEGER,
    host TEXT
);
CREATE TABLE IF NOT EXISTS tokens (
    hash BLOB PRIMARY KEY,
    agent_id TEXT NOT NULL REFERENCES agents(id),
    generation INTEGER NOT NULL,
    issued_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    used_at_ms INTEGER
);
CREATE INDEX IF NOT EXISTS tokens_agent ON tokens(agent_id, generation);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL REFERENCES agents(id),
    name TEXT NOT NULL,
    experiment TEXT NOT NULL,
    lease_secs INTEGER NOT NULL,
    state TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    delivered_at_ms INTEGER,
    started_at_ms INTEGER,
    finished_at_ms INTEGER,
    abort_requested_at_ms INTEGER,
    abort_reason TEXT,
    abort_delivered_at_ms INTEGER,
    step INTEGER,
    message TEXT,
    result TEXT
);
CREATE INDEX IF NOT EXISTS runs_agent_state ON runs(agent_id, state);
CREATE INDEX IF NOT EXISTS runs_created ON runs(created_at_ms);
CREATE TABLE IF NOT EXISTS run_faults (
    run_id TEXT NOT NULL REFERENCES runs(id),
    fault_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    detail TEXT NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (run_id, fault_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS logs (
    run_id TEXT NOT NULL REFERENCES runs(id),
    seq INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
";

/// Schema version stored in `meta`.
const SCHEMA_VERSION: i64 = 1;

/// An open store.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
}

fn agent_row(r: &Row<'_>) -> rusqlite::Result<AgentRow> {
    Ok(AgentRow {
        id: r.get(0)?,
        name: r.get(1)?,
        state: r.get(2)?,
        state_reason: r.get(3)?,
        created_at_ms: r.get(4)?,
        registered_at_ms: r.get(5)?,
        last_seen_ms: r.get(6)?,
        token_generation: r.get(7)?,
        host: r.get(8)?,
    })
}

const AGENT_COLS: &str = "id, name, state, state_reason, created_at_ms, registered_at_ms, \
                          last_seen_ms, token_generation, host";

impl SqliteStore {
    /// Open (or create) the store at `path`, with mode 0600.
    pub fn open(path: &Path) -> Result<SqliteStore> {
        if !path.exists() {
            // Create it private before SQLite writes anything into it.
            crate::secrets::write_private(path, b"").map_err(|e| {
                StoreError::Conflict(format!("cannot create {}: {e}", path.display()))
            })?;
        }
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // synchronous=FULL: every commit is on disk before the request that made it is
        // answered. An agent deletes what the control plane acknowledged (log lines, results);
        // with NORMAL a power loss of this host could roll back the last acknowledged commits,
        // and those lines would be lost for good (the VM suite's daemon-hard-reset saw it).
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;",
        )?;
        conn.execute_batch(SCHEMA)?;
        let version: Option<i64> = conn
            .query_row(
                "SELECT CAST(value AS INTEGER) FROM meta WHERE key='schema_version'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        match version {
            None => {
                conn.execute(
                    "INSERT INTO meta(key, value) VALUES('schema_version', ?1)",
                    params![SCHEMA_VERSION],
                )?;
            }
            Some(SCHEMA_VERSION) => {}
            Some(v) => {
                return Err(StoreError::Conflict(format!(
                    "the store has schema version {v}; this chaos-control knows {SCHEMA_VERSION}"
                )))
            }
        }
        Ok(SqliteStore { conn })
    }

    /// Call `each` with every row of `table` (its `cols`, in order), all read in one read
    /// transaction: a consistent copy even while a server writes. `table` and `cols` are
    /// this crate's constants, never input.
    pub(super) fn each_row(
        &mut self,
        table: &str,
        cols: &[&str],
        mut each: impl FnMut(Vec<rusqlite::types::Value>) -> Result<()>,
    ) -> Result<u64> {
        let tx = self.conn.transaction()?;
        let mut n = 0;
        {
            let mut st = tx.prepare(&format!("SELECT {} FROM {table}", cols.join(", ")))?;
            let mut rows = st.query([])?;
            while let Some(r) = rows.next()? {
                let row = (0..cols.len())
                    .map(|i| r.get::<_, rusqlite::types::Value>(i))
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                each(row)?;
                n += 1;
            }
        }
        tx.commit()?;
        Ok(n)
    }

    /// A value from `meta`.
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key=?1", params![key], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Set a value in `meta`.
    pub fn set_meta(&self, key: &str, value: &[u8]) -> Result<()> {
        self.conn.execute(
            "INSERT INTO meta(key, value) VALUES(?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    /// Add an agent waiting for registration.
    pub fn add_agent(
        &self,
        id: &str,
        name: &str,
        key_hash: &[u8],
        key_expires_at_ms: u64,
        now: u64,
    ) -> Result<()> {
        let taken: bool = self.conn.query_row(
            "SELECT EXISTS(SELECT 1 FROM agents WHERE name=?1 OR id=?2)",
            params![name, id],
            |r| r.get(0),
        )?;
        if taken {
            return Err(StoreError::Conflict(format!(
                "an agent named {name:?} already exists"
            )));
        }
        self.conn.execute(
            "INSERT INTO agents(id, name, state, created_at_ms, key_hash, key_expires_at_ms)
             VALUES(?1, ?2, 'pending', ?3, ?4, ?5)",
            params![id, name, now, key_hash, key_expires_at_ms],
        )?;
        Ok(())
    }

    /// Give an agent a new registration key: its tokens are dropped, any lock is lifted, and
    /// it must register again.
    pub fn rekey(&mut self, id: &str, key_hash: &[u8], key_expires_at_ms: u64) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM tokens WHERE agent_id=?1", params![id])?;
        let n = tx.execute(
            "UPDATE agents SET state='pending', state_reason=NULL, token_generation=0,
                    key_hash=?2, key_expires_at_ms=?3, key_used_at_ms=NULL
             WHERE id=?1",
            params![id, key_hash, key_expires_at_ms],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("no agent {id}")));
        }
        tx.commit()?;
        Ok(())
    }

    /// Revoke an agent: every token and its registration key stop working.
    pub fn revoke(&self, id: &str, reason: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE agents SET state='revoked', state_reason=?2, key_hash=NULL WHERE id=?1",
            params![id, reason],
        )?;
        Ok(())
    }

    /// Lock an agent whose identity was copied.
    pub fn lock(&self, id: &str, reason: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE agents SET state='locked', state_reason=?2 WHERE id=?1 AND state='active'",
            params![id, reason],
        )?;
        Ok(())
    }

    /// An agent by id or name.
    pub fn find_agent(&self, id_or_name: &str) -> Result<Option<AgentRow>> {
        // Cached: a run for thousands of agents looks each one up.
        Ok(self
            .conn
            .prepare_cached(&format!(
                "SELECT {AGENT_COLS} FROM agents WHERE id=?1 OR name=?1"
            ))?
            .query_row(params![id_or_name], agent_row)
            .optional()?)
    }

    /// Every agent, by name.
    pub fn list_agents(&self) -> Result<Vec<AgentRow>> {
        let mut st = self
            .conn
            .prepare_cached(&format!("SELECT {AGENT_COLS} FROM agents ORDER BY name"))?;
        let rows = st.query_map([], agent_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Trade a registration key for an identity and the first token (generation 1).
    #[allow(clippy::too_many_arguments)]
    pub fn register(
        &mut self,
        key_hash: &[u8],
        host_json: &str,
        token_hash: &[u8],
        token_expires_at_ms: u64,
        now: u64,
    ) -> Result<std::result::Result<(String, String), RegisterRefusal>> {
        let tx = self.conn.transaction()?;
        let row: Option<(String, String, u64, Option<u64>)> = tx
            .query_row(
                "SELECT id, name, key_expires_at_ms, key_used_at_ms FROM agents WHERE key_hash=?1",
                params![key_hash],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        let Some((id, name, expires, used)) = row else {
            return Ok(Err(RegisterRefusal::Unknown));
        };
        if used.is_some() {
            return Ok(Err(RegisterRefusal::Used));
        }
        if expires <= now {
            return Ok(Err(RegisterRefusal::Expired));
        }
        if let Some(machine_id) = rules::machine_id(host_json) {
            let taken: Option<(String, String)> = tx
                .query_row(
                    "SELECT name, state FROM agents
                     WHERE id != ?1 AND state IN ('active', 'lost', 'locked')
                       AND json_extract(host, '$.machine_id') = ?2
                     ORDER BY name LIMIT 1",
                    params![id, machine_id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            if let Some((name, state)) = taken {
                // Refused before anything is stored: the key stays unused.
                return Ok(Err(RegisterRefusal::MachineTaken { name, state }));
            }
        }
        tx.execute(
            "UPDATE agents SET state='active', state_reason=NULL, registered_at_ms=?2,
                    last_seen_ms=?2, token_generation=0, key_used_at_ms=?2, host=?3
             WHERE id=?1",
            params![id, now, host_json],
        )?;
        tx.execute("DELETE FROM tokens WHERE agent_id=?1", params![id])?;
        tx.execute(
            "INSERT INTO tokens(hash, agent_id, generation, issued_at_ms, expires_at_ms)
             VALUES(?1, ?2, 1, ?3, ?4)",
            params![token_hash, id, now, token_expires_at_ms],
        )?;
        tx.commit()?;
        Ok(Ok((id, name)))
    }

    /// Look a token up by its hash.
    pub fn token(&self, hash: &[u8]) -> Result<Option<TokenRow>> {
        let mut st = self.conn.prepare_cached(
            "SELECT t.agent_id, t.generation, t.expires_at_ms, a.state, a.token_generation
             FROM tokens t JOIN agents a ON a.id = t.agent_id WHERE t.hash=?1",
        )?;
        Ok(st
            .query_row(params![hash], |r| {
                Ok(TokenRow {
                    agent_id: r.get(0)?,
                    generation: r.get(1)?,
                    expires_at_ms: r.get(2)?,
                    agent_state: r.get(3)?,
                    agent_generation: r.get(4)?,
                })
            })
            .optional()?)
    }

    /// First use of a token generation: it becomes the agent's newest; older ones retire.
    pub fn use_generation(&self, agent_id: &str, generation: u64, now: u64) -> Result<()> {
        self.conn.execute(
            "UPDATE agents SET token_generation=?2 WHERE id=?1 AND token_generation < ?2",
            params![agent_id, generation],
        )?;
        self.conn.execute(
            "UPDATE tokens SET used_at_ms=?3 WHERE agent_id=?1 AND generation=?2 AND used_at_ms IS NULL",
            params![agent_id, generation, now],
        )?;
        Ok(())
    }

    /// Issue the next token: generation `current + 1`, replacing an unused one of that
    /// generation (whose answer the agent may never have received).
    pub fn rotate(
        &mut self,
        agent_id: &str,
        current: u64,
        hash: &[u8],
        expires_at_ms: u64,
        now: u64,
    ) -> Result<u64> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "DELETE FROM tokens WHERE agent_id=?1 AND generation > ?2 AND used_at_ms IS NULL",
            params![agent_id, current],
        )?;
        tx.execute(
            "INSERT INTO tokens(hash, agent_id, generation, issued_at_ms, expires_at_ms)
             VALUES(?1, ?2, ?3, ?4, ?5)",
            params![hash, agent_id, current + 1, now, expires_at_ms],
        )?;
        tx.commit()?;
        Ok(current + 1)
    }

    /// Forget retired tokens that expired before `before_ms` (after that, presenting one is
    /// simply an invalid token, no longer proof of a copied identity).
    pub fn prune_tokens(&self, before_ms: u64) -> Result<usize> {
        Ok(self.conn.execute(
            "DELETE FROM tokens WHERE expires_at_ms < ?1 AND generation <
               (SELECT token_generation FROM agents WHERE agents.id = tokens.agent_id)",
            params![before_ms],
        )?)
    }

    /// Registered agents silent since before `before_ms`: (id, name, last seen).
    pub fn silent_agents(&self, before_ms: u64) -> Result<Vec<(String, String, Option<u64>)>> {
        let mut st = self.conn.prepare_cached(
            "SELECT id, name, last_seen_ms FROM agents
             WHERE state='active' AND COALESCE(last_seen_ms, 0) < ?1",
        )?;
        let rows = st.query_map(params![before_ms], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Write last-seen times.
    pub fn touch(&mut self, seen: &[(String, u64)]) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut st = tx.prepare_cached(
                "UPDATE agents SET last_seen_ms=?2 WHERE id=?1 AND (last_seen_ms IS NULL OR last_seen_ms < ?2)",
            )?;
            for (id, t) in seen {
                st.execute(params![id, t])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Create runs (one per agent) in one transaction. `ids` must be fresh; a collision
    /// returns `Conflict` and nothing is stored.
    pub fn create_runs(
        &mut self,
        runs: &[(String, String)],
        handed: &[bool],
        name: &str,
        experiment: &str,
        lease_secs: u64,
        now: u64,
    ) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut exists = tx.prepare_cached("SELECT EXISTS(SELECT 1 FROM runs WHERE id=?1)")?;
            let mut ins = tx.prepare_cached(
                "INSERT INTO runs(id, agent_id, name, experiment, lease_secs, state, created_at_ms,
                                  delivered_at_ms)
                 VALUES(?1, ?2, ?3, ?4, ?5, 'pending', ?6, CASE WHEN ?7 THEN ?6 END)",
            )?;
            for (i, (run_id, agent_id)) in runs.iter().enumerate() {
                if exists.query_row(params![run_id], |r| r.get::<_, bool>(0))? {
                    return Err(StoreError::Conflict(format!("run id {run_id} is taken")));
                }
                let handed = handed.get(i).copied().unwrap_or(false);
                ins.execute(params![
                    run_id, agent_id, name, experiment, lease_secs, now, handed
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Fail the runs waiting for `agent_id` (never started, no abort asked) that need a
    /// kind it no longer offers, after it registered again with fewer kinds: they would
    /// only fail on the agent. Returns each failed run id with its message.
    pub fn fail_unrunnable(&mut self, agent_id: &str, now: u64) -> Result<Vec<(String, String)>> {
        let Some(agent) = self.find_agent(agent_id)? else {
            return Ok(Vec::new());
        };
        let Some(offered) = agent.kinds() else {
            return Ok(Vec::new());
        };
        let tx = self.conn.transaction()?;
        let mut failed = Vec::new();
        {
            let mut st = tx.prepare_cached(
                "SELECT id, experiment FROM runs
                 WHERE agent_id=?1 AND state='pending' AND abort_requested_at_ms IS NULL",
            )?;
            let rows: Vec<(String, String)> = st
                .query_map(params![agent_id], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            for (run_id, exp) in rows {
                let exp: serde_json::Value = serde_json::from_str(&exp).unwrap_or_default();
                let Some(message) = rules::unrunnable(&agent, &offered, &exp) else {
                    continue;
                };
                tx.execute(
                    "UPDATE runs SET state='failed', finished_at_ms=?2, message=?3 WHERE id=?1",
                    params![run_id, now, message],
                )?;
                failed.push((run_id, message));
            }
        }
        tx.commit()?;
        Ok(failed)
    }

    /// The tasks an agent has not acknowledged, and whether any is due now (never handed
    /// out, or handed out before `redeliver_before_ms`).
    pub fn tasks_for(&self, agent_id: &str, redeliver_before_ms: u64) -> Result<(Vec<Task>, bool)> {
        self.tasks_with_first(agent_id, redeliver_before_ms)
            .map(|(t, due, _)| (t, due))
    }

    /// [`SqliteStore::tasks_for`], and the creation times of the runs among them that were never
    /// handed out before (for the dispatch-latency metric).
    pub fn tasks_with_first(
        &self,
        agent_id: &str,
        redeliver_before_ms: u64,
    ) -> Result<(Vec<Task>, bool, Vec<u64>)> {
        let mut st = self.conn.prepare_cached(
            "SELECT id, experiment, lease_secs, created_at_ms, delivered_at_ms,
                    abort_requested_at_ms, abort_reason, abort_delivered_at_ms, state
             FROM runs WHERE agent_id=?1 AND state IN ('pending', 'running')
             ORDER BY created_at_ms",
        )?;
        let rows = st
            .query_map(params![agent_id], |r| {
                Ok(rules::TaskRow {
                    run_id: r.get(0)?,
                    experiment: r.get(1)?,
                    lease_secs: r.get(2)?,
                    created_at_ms: r.get(3)?,
                    delivered_at_ms: r.get(4)?,
                    abort_requested_at_ms: r.get(5)?,
                    abort_reason: r.get(6)?,
                    abort_delivered_at_ms: r.get(7)?,
                    state: r.get(8)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rules::tasks(rows, redeliver_before_ms))
    }

    /// Record that these tasks were handed out now.
    ///
    /// A delivery mark only times the next hand-out of a task not yet acknowledged; lost in a
    /// crash, it means the task is handed out once more, which agents take idempotently (by
    /// run id). So this one commit does not wait for the disk (`synchronous=NORMAL`: in WAL
    /// mode that loses at most this commit on power loss, never an earlier one), which keeps
    /// a broadcast to thousands of waiting agents from costing one fsync per agent.
    pub fn mark_delivered(&mut self, tasks: &[Task], now: u64) -> Result<()> {
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        let r = self.mark_delivered_tx(tasks, now);
        // Every other commit waits for the disk again, whatever happened above.
        self.conn.pragma_update(None, "synchronous", "FULL")?;
        r
    }

    fn mark_delivered_tx(&mut self, tasks: &[Task], now: u64) -> Result<()> {
        let tx = self.conn.transaction()?;
        for t in tasks {
            match t {
                Task::Run(r) => tx
                    .prepare_cached("UPDATE runs SET delivered_at_ms=?2 WHERE id=?1")?
                    .execute(params![r.run_id, now])?,
                Task::Abort(a) => tx
                    .prepare_cached("UPDATE runs SET abort_delivered_at_ms=?2 WHERE id=?1")?
                    .execute(params![a.run_id, now])?,
            };
        }
        tx.commit()?;
        Ok(())
    }

    /// Who owns a run.
    pub fn run_owner(&self, run_id: &str) -> Result<Option<RunOwner>> {
        let mut st = self.conn.prepare_cached(
            "SELECT agent_id, state, abort_requested_at_ms IS NOT NULL, abort_reason
             FROM runs WHERE id=?1",
        )?;
        Ok(st
            .query_row(params![run_id], |r| {
                let abort_requested: bool = r.get(2)?;
                Ok(RunOwner {
                    agent_id: r.get(0)?,
                    state: state_of(r.get(1)?),
                    abort_requested,
                    abort_reason: if abort_requested { r.get(3)? } else { None },
                })
            })
            .optional()?)
    }

    /// The stored experiment of a run (its JSON form), if the run exists.
    pub fn run_experiment(&self, run_id: &str) -> Result<Option<serde_json::Value>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT experiment FROM runs WHERE id=?1")?;
        let exp: Option<String> = st.query_row(params![run_id], |r| r.get(0)).optional()?;
        Ok(exp.map(|e| serde_json::from_str(&e).unwrap_or_default()))
    }

    /// Apply a status update. A terminal state is final: repeating it is fine, changing it is
    /// a conflict.
    pub fn update_status(
        &mut self,
        run_id: &str,
        update: &StatusUpdate,
        now: u64,
    ) -> Result<(RunState, bool)> {
        let tx = self.conn.transaction()?;
        let r = update_status_in(&tx, run_id, update, now)?;
        tx.commit()?;
        Ok(r)
    }

    /// Store log lines; lines whose `seq` is already held are ignored.
    pub fn append_logs(&mut self, run_id: &str, lines: &[LogLine]) -> Result<(u32, u32)> {
        let tx = self.conn.transaction()?;
        let r = append_logs_in(&tx, run_id, lines)?;
        tx.commit()?;
        Ok(r)
    }

    /// Store the final result. The same result again is fine; a different one is a conflict.
    pub fn store_result(
        &mut self,
        run_id: &str,
        result: &RunResult,
        now: u64,
    ) -> Result<(RunState, bool)> {
        let tx = self.conn.transaction()?;
        let r = store_result_in(&tx, run_id, result, now)?;
        tx.commit()?;
        Ok(r)
    }

    /// See [`super::Store::write_group`]: one transaction, one commit (one fsync), each
    /// write in a savepoint of its own (rolled back alone when it is refused).
    pub fn write_group(&mut self, writes: &[Write]) -> Result<Vec<Result<Written>>> {
        let mut tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut out = Vec::with_capacity(writes.len());
        for w in writes {
            let sp = tx.savepoint()?;
            let r = match w {
                Write::Status {
                    run_id,
                    update,
                    now,
                } => update_status_in(&sp, run_id, update, *now).map(|(s, a)| Written::State(s, a)),
                Write::Logs { run_id, lines } => {
                    append_logs_in(&sp, run_id, lines).map(|(a, d)| Written::Logs(a, d))
                }
                Write::Result {
                    run_id,
                    result,
                    now,
                } => store_result_in(&sp, run_id, result, *now).map(|(s, a)| Written::State(s, a)),
            };
            if r.is_ok() {
                sp.commit()?;
            } // else: dropped, rolled back
            out.push(r);
        }
        tx.commit()?;
        Ok(out)
    }

    /// Ask for an abort. A run never handed out is aborted at once.
    pub fn abort(&mut self, run_id: &str, reason: &str, now: u64) -> Result<RunState> {
        let tx = self.conn.transaction()?;
        let row: Option<(String, Option<u64>)> = tx
            .query_row(
                "SELECT state, delivered_at_ms FROM runs WHERE id=?1",
                params![run_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((state, delivered)) = row else {
            return Err(StoreError::NotFound(format!("no run {run_id}")));
        };
        let state = state_of(state);
        let new = if rules::abort_now(run_id, state, delivered)? {
            tx.execute(
                "UPDATE runs SET state='aborted', finished_at_ms=?2, abort_requested_at_ms=?2,
                    abort_reason=?3, message=?4 WHERE id=?1",
                params![run_id, now, reason, rules::ABORTED_UNSENT],
            )?;
            RunState::Aborted
        } else {
            tx.execute(
                "UPDATE runs SET abort_requested_at_ms=COALESCE(abort_requested_at_ms, ?2),
                    abort_reason=?3 WHERE id=?1",
                params![run_id, now, reason],
            )?;
            state
        };
        tx.commit()?;
        Ok(new)
    }

    /// Runs, newest first.
    pub fn list_runs(&self, f: &RunFilter) -> Result<Vec<RunSummary>> {
        let mut st = self.conn.prepare_cached(
            "SELECT r.id, r.agent_id, a.name, r.name, r.state, r.created_at_ms, r.delivered_at_ms,
                    r.started_at_ms, r.finished_at_ms, r.abort_requested_at_ms IS NOT NULL
             FROM runs r JOIN agents a ON a.id = r.agent_id
             WHERE (?1 IS NULL OR r.agent_id = ?1) AND (?2 IS NULL OR r.state = ?2)
             ORDER BY r.created_at_ms DESC, r.id LIMIT ?3",
        )?;
        let rows = st.query_map(
            params![f.agent_id, f.state.map(|s| s.as_str()), f.limit],
            summary_row,
        )?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// One run with its faults and result.
    pub fn run_detail(&self, run_id: &str) -> Result<Option<RunDetail>> {
        let row = self
            .conn
            .query_row(
                "SELECT r.id, r.agent_id, a.name, r.name, r.state, r.created_at_ms,
                        r.delivered_at_ms, r.started_at_ms, r.finished_at_ms,
                        r.abort_requested_at_ms IS NOT NULL,
                        r.experiment, r.lease_secs, r.abort_reason, r.step, r.message, r.result,
                        (SELECT COUNT(*) FROM logs l WHERE l.run_id = r.id)
                 FROM runs r JOIN agents a ON a.id = r.agent_id WHERE r.id=?1",
                params![run_id],
                |r| {
                    let exp: String = r.get(10)?;
                    let result: Option<String> = r.get(15)?;
                    Ok(RunDetail {
                        summary: summary_row(r)?,
                        experiment: serde_json::from_str(&exp).unwrap_or_default(),
                        lease_secs: r.get(11)?,
                        abort_reason: r.get(12)?,
                        step: r.get(13)?,
                        message: r.get(14)?,
                        faults: Vec::new(),
                        result: result.and_then(|j| serde_json::from_str(&j).ok()),
                        log_lines: r.get(16)?,
                    })
                },
            )
            .optional()?;
        let Some(mut d) = row else { return Ok(None) };
        let mut st = self.conn.prepare_cached(
            "SELECT fault_id, step, kind, state, detail FROM run_faults WHERE run_id=?1
             ORDER BY step, fault_id",
        )?;
        let faults = st.query_map(params![run_id], |r| {
            let state: String = r.get(3)?;
            Ok(FaultStatus {
                fault_id: r.get(0)?,
                step: r.get(1)?,
                kind: r.get(2)?,
                state: serde_json::from_value(serde_json::Value::String(state))
                    .unwrap_or(chaos_protocol::run::FaultState::Failed),
                detail: r.get(4)?,
            })
        })?;
        d.faults = faults.collect::<rusqlite::Result<_>>()?;
        Ok(Some(d))
    }

    /// Log lines with `seq > after`, at most `limit`.
    pub fn logs_after(&self, run_id: &str, after: u64, limit: u32) -> Result<Vec<LogLine>> {
        let mut st = self.conn.prepare_cached(
            "SELECT seq, at_ms, level, message FROM logs WHERE run_id=?1 AND seq > ?2
             ORDER BY seq LIMIT ?3",
        )?;
        let rows = st.query_map(params![run_id, after, limit], |r| {
            let level: String = r.get(2)?;
            Ok(LogLine {
                seq: r.get(0)?,
                at_ms: r.get(1)?,
                level: serde_json::from_value(serde_json::Value::String(level))
                    .unwrap_or(chaos_protocol::run::LogLevel::Info),
                message: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Agents by state and runs by state (for the metrics).
    pub fn counts_by_state(&self) -> Result<(StateCounts, StateCounts)> {
        let by = |sql: &str| -> Result<StateCounts> {
            let mut st = self.conn.prepare_cached(sql)?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        };
        Ok((
            by("SELECT state, COUNT(*) FROM agents GROUP BY state")?,
            by("SELECT state, COUNT(*) FROM runs GROUP BY state")?,
        ))
    }

    /// Counts for tests and health: (agents, runs, log lines).
    pub fn counts(&self) -> Result<(u64, u64, u64)> {
        Ok(self.conn.query_row(
            "SELECT (SELECT COUNT(*) FROM agents), (SELECT COUNT(*) FROM runs),
                    (SELECT COUNT(*) FROM logs)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?)
    }
}

fn summary_row(r: &Row<'_>) -> rusqlite::Result<RunSummary> {
    Ok(RunSummary {
        run_id: r.get(0)?,
        agent_id: r.get(1)?,
        agent_name: r.get(2)?,
        name: r.get(3)?,
        state: state_of(r.get(4)?),
        created_at_ms: r.get(5)?,
        delivered_at_ms: r.get(6)?,
        started_at_ms: r.get(7)?,
        finished_at_ms: r.get(8)?,
        abort_requested: r.get(9)?,
    })
}

#[cfg(test)]
mod tests;
mod writes;

use writes::{append_logs_in, store_result_in, update_status_in};
