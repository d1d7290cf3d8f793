//! The store: agents, tokens, runs, their faults and logs.
//!
//! Two backends hold the same data: SQLite (embedded, the default: one file in the state
//! directory) and PostgreSQL (`serve --database postgres://…`), where several `serve`
//! replicas share one database. Every value from outside reaches SQL only as a bound
//! parameter, never as SQL text. Secrets are stored only as SHA-256 hashes. The store is
//! synchronous; the server holds it behind a mutex and keeps every call short.

use std::path::{Path, PathBuf};

use chaos_protocol::admin::{AgentInfo, AgentState, RunDetail, RunSummary};
use chaos_protocol::agent::{HostFacts, Task};
use chaos_protocol::run::{LogLine, RunResult, RunState, StatusUpdate};

mod migrate;
pub mod pg;
pub(crate) mod rules;
mod sqlite;

pub use self::migrate::{sqlite_to_postgres, Copied};
pub use self::pg::{PgStore, PgTarget};
pub use self::sqlite::SqliteStore;

/// A store failure or a refusal based on stored state.
#[derive(Debug)]
pub enum StoreError {
    /// SQLite failed.
    Sql(rusqlite::Error),
    /// PostgreSQL failed (or could not be reached).
    Pg(::postgres::Error),
    /// The change contradicts what is stored.
    Conflict(String),
    /// No such thing.
    NotFound(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        StoreError::Sql(e)
    }
}

impl From<::postgres::Error> for StoreError {
    fn from(e: ::postgres::Error) -> StoreError {
        StoreError::Pg(e)
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Sql(e) => write!(f, "storage: {e}"),
            StoreError::Pg(e) => write!(f, "PostgreSQL: {}", pg::describe(e)),
            StoreError::Conflict(m) | StoreError::NotFound(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for StoreError {}

/// Result of store calls.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A write an agent waits for (its answer says it is stored): one of a group committed
/// together, see [`Store::write_group`].
#[derive(Debug)]
pub enum Write {
    /// [`Store::update_status`].
    Status {
        /// The run.
        run_id: String,
        /// What the agent reported.
        update: StatusUpdate,
        /// When.
        now: u64,
    },
    /// [`Store::append_logs`].
    Logs {
        /// The run.
        run_id: String,
        /// The lines.
        lines: Vec<LogLine>,
    },
    /// [`Store::store_result`].
    Result {
        /// The run.
        run_id: String,
        /// The result.
        result: RunResult,
        /// When.
        now: u64,
    },
}

/// What a [`Write`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// A status or result: the run's state now, and whether an abort was asked.
    State(RunState, bool),
    /// Log lines: accepted, duplicates.
    Logs(u32, u32),
}

/// What a token lookup finds.
#[derive(Debug, Clone)]
pub struct TokenRow {
    /// Owner.
    pub agent_id: String,
    /// The token's generation.
    pub generation: u64,
    /// Expiry.
    pub expires_at_ms: u64,
    /// The owner's state (`pending`, `active`, `locked`, `revoked`).
    pub agent_state: String,
    /// The newest generation the owner has used.
    pub agent_generation: u64,
}

/// A stored agent (the server adds `lost` from `last_seen`).
#[derive(Debug, Clone)]
pub struct AgentRow {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Stored state.
    pub state: String,
    /// Why locked or revoked.
    pub state_reason: Option<String>,
    /// Added.
    pub created_at_ms: u64,
    /// Registered.
    pub registered_at_ms: Option<u64>,
    /// Last call (as last flushed).
    pub last_seen_ms: Option<u64>,
    /// Newest generation used.
    pub token_generation: u64,
    /// Host facts JSON.
    pub host: Option<String>,
}

impl AgentRow {
    /// The fault kinds this agent offered when it registered; `None` when it stated none
    /// (`kinds` is optional in the protocol: an agent that omits it is not checked), before
    /// it registered, or when its stored host facts do not read.
    pub fn kinds(&self) -> Option<Vec<String>> {
        let host: HostFacts = serde_json::from_str(self.host.as_deref()?).ok()?;
        (!host.kinds.is_empty()).then_some(host.kinds)
    }

    /// The agent as operators see it; `lost_before_ms`: last seen before this means lost.
    pub fn info(&self, last_seen: Option<u64>, lost_before_ms: u64) -> AgentInfo {
        let last_seen_ms = last_seen.max(self.last_seen_ms);
        let state = match self.state.as_str() {
            "pending" => AgentState::Pending,
            "locked" => AgentState::Locked,
            "revoked" => AgentState::Revoked,
            _ if last_seen_ms.unwrap_or(0) < lost_before_ms => AgentState::Lost,
            _ => AgentState::Active,
        };
        AgentInfo {
            agent_id: self.id.clone(),
            name: self.name.clone(),
            state,
            state_reason: self.state_reason.clone(),
            created_at_ms: self.created_at_ms,
            registered_at_ms: self.registered_at_ms,
            last_seen_ms,
            token_generation: self.token_generation,
            host: self
                .host
                .as_deref()
                .and_then(|h| serde_json::from_str::<HostFacts>(h).ok()),
        }
    }
}

/// (state, count) pairs.
pub type StateCounts = Vec<(String, u64)>;

/// The fault kinds an experiment (its JSON form, as stored) uses, sorted, each once.
pub fn experiment_kinds(experiment: &serde_json::Value) -> Vec<String> {
    let mut kinds: Vec<String> = experiment
        .get("steps")
        .and_then(|s| s.as_array())
        .into_iter()
        .flatten()
        .filter_map(|step| step.get("faults")?.as_array())
        .flatten()
        .filter_map(|f| Some(f.get("kind")?.as_str()?.to_string()))
        .collect();
    kinds.sort();
    kinds.dedup();
    kinds
}

/// Every fault of an experiment (its JSON form, as stored) as the agent reports it:
/// (fault id, 0-based step, kind). Fault ids are `<run>-<step>-<fault>`, 1-based, as
/// `chaos_engine::runner::fault_id` makes them.
pub fn experiment_faults(
    run_id: &str,
    experiment: &serde_json::Value,
) -> Vec<(String, u32, String)> {
    let mut out = Vec::new();
    let steps = experiment.get("steps").and_then(|s| s.as_array());
    for (si, step) in steps.into_iter().flatten().enumerate() {
        let faults = step.get("faults").and_then(|f| f.as_array());
        for (fi, f) in faults.into_iter().flatten().enumerate() {
            let kind = f.get("kind").and_then(|k| k.as_str()).unwrap_or_default();
            out.push((
                chaos_engine::runner::fault_id(run_id, si, fi),
                si as u32,
                kind.to_string(),
            ));
        }
    }
    out
}

/// The kinds of `experiment` that are not in `offered`, sorted.
pub fn missing_kinds(offered: &[String], experiment: &serde_json::Value) -> Vec<String> {
    experiment_kinds(experiment)
        .into_iter()
        .filter(|k| !offered.contains(k))
        .collect()
}

/// Why a registration was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterRefusal {
    /// Unknown key.
    Unknown,
    /// Expired.
    Expired,
    /// Already used.
    Used,
    /// Another agent that is not revoked registered from the same machine (same machine
    /// id): one agent per machine.
    MachineTaken {
        /// That agent's name.
        name: String,
        /// Its state.
        state: String,
    },
}

/// Who owns a run, and where it is.
#[derive(Debug, Clone)]
pub struct RunOwner {
    /// Agent id.
    pub agent_id: String,
    /// State.
    pub state: RunState,
    /// Abort requested.
    pub abort_requested: bool,
    /// The operator's reason for the abort, if one was requested.
    pub abort_reason: Option<String>,
}

/// A filter for [`Store::list_runs`].
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// Only this agent's runs.
    pub agent_id: Option<String>,
    /// Only runs in this state.
    pub state: Option<RunState>,
    /// At most this many (newest first).
    pub limit: u32,
}

fn state_of(s: String) -> RunState {
    RunState::parse(&s).unwrap_or(RunState::Failed)
}

/// Where the store lives.
#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    /// The embedded SQLite file (`store.db` in the state directory).
    Sqlite(PathBuf),
    /// A PostgreSQL database.
    Postgres(PgTarget),
}

impl Database {
    /// `url` if given (it must be a `postgres://` or `postgresql://` URL; `ca`: the CA
    /// certificate(s) that sign PostgreSQL's server certificate, which makes TLS required),
    /// else the SQLite file `default`.
    pub fn choose(url: Option<&str>, ca: Option<&Path>, default: &Path) -> Result<Database> {
        match url.map(str::trim) {
            None | Some("") if ca.is_some() => Err(StoreError::Conflict(
                "--database-ca is for a PostgreSQL store: give --database too".into(),
            )),
            None | Some("") => Ok(Database::Sqlite(default.to_path_buf())),
            Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
                let t = PgTarget {
                    url: u.to_string(),
                    ca: ca.map(Path::to_path_buf),
                };
                t.check()?;
                Ok(Database::Postgres(t))
            }
            Some(u) => Err(StoreError::Conflict(format!(
                "--database must be a postgres:// URL (postgres://USER:PASSWORD@HOST:PORT/DBNAME), \
                 not {:?}; without it the store is the SQLite file in the state directory",
                pg::redact(u)
            ))),
        }
    }

    /// Whether this is PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        matches!(self, Database::Postgres(_))
    }
}

/// The URL with its password replaced by `***` (URLs are printed and logged only this way).
impl std::fmt::Display for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Database::Sqlite(p) => write!(f, "{} (SQLite)", p.display()),
            Database::Postgres(t) => write!(
                f,
                "{} (PostgreSQL{})",
                pg::redact(&t.url),
                if t.ca.is_some() { ", TLS" } else { "" }
            ),
        }
    }
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// An open store: the same calls on either backend.
#[derive(Debug)]
pub enum Store {
    /// SQLite.
    Sqlite(SqliteStore),
    /// PostgreSQL.
    Postgres(Box<PgStore>),
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            Store::Sqlite($s) => $e,
            Store::Postgres($s) => $e,
        }
    };
}

impl Store {
    /// Open (or create) the store. A new SQLite file is created with mode 0600; a
    /// PostgreSQL database gets its tables when it has none.
    pub fn open(db: &Database) -> Result<Store> {
        Ok(match db {
            Database::Sqlite(p) => Store::Sqlite(SqliteStore::open(p)?),
            Database::Postgres(t) => Store::Postgres(Box::new(PgStore::open(t)?)),
        })
    }

    /// Open the SQLite store at `path` (creating it).
    pub fn open_sqlite(path: &Path) -> Result<Store> {
        Ok(Store::Sqlite(SqliteStore::open(path)?))
    }

    /// With PostgreSQL: the backend pid of the store's connection (see [`pg::listen`]).
    pub fn backend_pid(&self) -> Option<std::sync::Arc<std::sync::atomic::AtomicI32>> {
        match self {
            Store::Postgres(s) => Some(s.backend_pid()),
            Store::Sqlite(_) => None,
        }
    }

    /// Whether calls go over the network to PostgreSQL (and so may block for longer).
    pub fn is_postgres(&self) -> bool {
        matches!(self, Store::Postgres(_))
    }

    /// A value from `meta`.
    pub fn meta(&mut self, key: &str) -> Result<Option<Vec<u8>>> {
        each!(self, s => s.meta(key))
    }

    /// Set a value in `meta`.
    pub fn set_meta(&mut self, key: &str, value: &[u8]) -> Result<()> {
        each!(self, s => s.set_meta(key, value))
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
        each!(self, s => s.add_agent(id, name, key_hash, key_expires_at_ms, now))
    }

    /// Give an agent a new registration key: its tokens are dropped, any lock is lifted, and
    /// it must register again.
    pub fn rekey(&mut self, id: &str, key_hash: &[u8], key_expires_at_ms: u64) -> Result<()> {
        each!(self, s => s.rekey(id, key_hash, key_expires_at_ms))
    }

    /// Revoke an agent: every token and its registration key stop working.
    pub fn revoke(&mut self, id: &str, reason: &str) -> Result<()> {
        each!(self, s => s.revoke(id, reason))
    }

    /// Lock an agent whose identity was copied.
    pub fn lock(&mut self, id: &str, reason: &str) -> Result<()> {
        each!(self, s => s.lock(id, reason))
    }

    /// An agent by id or name.
    pub fn find_agent(&mut self, id_or_name: &str) -> Result<Option<AgentRow>> {
        each!(self, s => s.find_agent(id_or_name))
    }

    /// Every agent, by name.
    pub fn list_agents(&mut self) -> Result<Vec<AgentRow>> {
        each!(self, s => s.list_agents())
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
        each!(self, s => s.register(key_hash, host_json, token_hash, token_expires_at_ms, now))
    }

    /// Look a token up by its hash.
    pub fn token(&mut self, hash: &[u8]) -> Result<Option<TokenRow>> {
        each!(self, s => s.token(hash))
    }

    /// First use of a token generation: it becomes the agent's newest; older ones retire.
    pub fn use_generation(&mut self, agent_id: &str, generation: u64, now: u64) -> Result<()> {
        each!(self, s => s.use_generation(agent_id, generation, now))
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
        each!(self, s => s.rotate(agent_id, current, hash, expires_at_ms, now))
    }

    /// Forget retired tokens that expired before `before_ms`.
    pub fn prune_tokens(&mut self, before_ms: u64) -> Result<usize> {
        each!(self, s => s.prune_tokens(before_ms))
    }

    /// Registered agents silent since before `before_ms`: (id, name, last seen).
    pub fn silent_agents(&mut self, before_ms: u64) -> Result<Vec<(String, String, Option<u64>)>> {
        each!(self, s => s.silent_agents(before_ms))
    }

    /// Write last-seen times.
    pub fn touch(&mut self, seen: &[(String, u64)]) -> Result<()> {
        each!(self, s => s.touch(seen))
    }

    /// Create runs (one per agent) in one transaction. `ids` must be fresh; a collision
    /// returns `Conflict` and nothing is stored. `handed[i]`: run `i` is handed out now,
    /// at its creation (its agent's long poll is waiting here and takes it from memory), so
    /// it is stored as delivered at `now` (re-delivered after `redeliver_after` if not
    /// acknowledged, as any task handed out).
    pub fn create_runs(
        &mut self,
        runs: &[(String, String)],
        handed: &[bool],
        name: &str,
        experiment: &str,
        lease_secs: u64,
        now: u64,
    ) -> Result<()> {
        each!(self, s => s.create_runs(runs, handed, name, experiment, lease_secs, now))
    }

    /// Fail the runs waiting for `agent_id` that need a kind it no longer offers.
    pub fn fail_unrunnable(&mut self, agent_id: &str, now: u64) -> Result<Vec<(String, String)>> {
        each!(self, s => s.fail_unrunnable(agent_id, now))
    }

    /// The tasks an agent has not acknowledged, whether any is due now, and the creation
    /// times of the runs among them never handed out before.
    pub fn tasks_with_first(
        &mut self,
        agent_id: &str,
        redeliver_before_ms: u64,
    ) -> Result<(Vec<Task>, bool, Vec<u64>)> {
        each!(self, s => s.tasks_with_first(agent_id, redeliver_before_ms))
    }

    /// Record that these tasks were handed out now.
    pub fn mark_delivered(&mut self, tasks: &[Task], now: u64) -> Result<()> {
        each!(self, s => s.mark_delivered(tasks, now))
    }

    /// Who owns a run.
    pub fn run_owner(&mut self, run_id: &str) -> Result<Option<RunOwner>> {
        each!(self, s => s.run_owner(run_id))
    }

    /// The stored experiment of a run (its JSON form), if the run exists.
    pub fn run_experiment(&mut self, run_id: &str) -> Result<Option<serde_json::Value>> {
        each!(self, s => s.run_experiment(run_id))
    }

    /// Apply a status update. A terminal state is final.
    pub fn update_status(
        &mut self,
        run_id: &str,
        update: &StatusUpdate,
        now: u64,
    ) -> Result<(RunState, bool)> {
        each!(self, s => s.update_status(run_id, update, now))
    }

    /// Apply `writes` and commit them together: on SQLite one transaction (one fsync), each
    /// write in its own savepoint, so a refused write (a conflict) leaves the others in;
    /// on PostgreSQL one transaction each. The outer error (the commit failed) means none
    /// is stored; otherwise each write's own result, in order. Nothing here is durable
    /// before this returns.
    pub fn write_group(&mut self, writes: &[Write]) -> Result<Vec<Result<Written>>> {
        match self {
            Store::Sqlite(s) => s.write_group(writes),
            Store::Postgres(s) => Ok(writes
                .iter()
                .map(|w| match w {
                    Write::Status {
                        run_id,
                        update,
                        now,
                    } => s
                        .update_status(run_id, update, *now)
                        .map(|(st, a)| Written::State(st, a)),
                    Write::Logs { run_id, lines } => s
                        .append_logs(run_id, lines)
                        .map(|(a, d)| Written::Logs(a, d)),
                    Write::Result {
                        run_id,
                        result,
                        now,
                    } => s
                        .store_result(run_id, result, *now)
                        .map(|(st, a)| Written::State(st, a)),
                })
                .collect()),
        }
    }

    /// Store log lines; lines whose `seq` is already held are ignored.
    pub fn append_logs(&mut self, run_id: &str, lines: &[LogLine]) -> Result<(u32, u32)> {
        each!(self, s => s.append_logs(run_id, lines))
    }

    /// Store the final result.
    pub fn store_result(
        &mut self,
        run_id: &str,
        result: &RunResult,
        now: u64,
    ) -> Result<(RunState, bool)> {
        each!(self, s => s.store_result(run_id, result, now))
    }

    /// Ask for an abort. A run never handed out is aborted at once.
    pub fn abort(&mut self, run_id: &str, reason: &str, now: u64) -> Result<RunState> {
        each!(self, s => s.abort(run_id, reason, now))
    }

    /// Runs, newest first.
    pub fn list_runs(&mut self, f: &RunFilter) -> Result<Vec<RunSummary>> {
        each!(self, s => s.list_runs(f))
    }

    /// One run with its faults and result.
    pub fn run_detail(&mut self, run_id: &str) -> Result<Option<RunDetail>> {
        each!(self, s => s.run_detail(run_id))
    }

    /// Log lines with `seq > after`, at most `limit`.
    pub fn logs_after(&mut self, run_id: &str, after: u64, limit: u32) -> Result<Vec<LogLine>> {
        each!(self, s => s.logs_after(run_id, after, limit))
    }

    /// Agents by state and runs by state (for the metrics).
    pub fn counts_by_state(&mut self) -> Result<(StateCounts, StateCounts)> {
        each!(self, s => s.counts_by_state())
    }

    /// Counts for tests and health: (agents, runs, log lines).
    pub fn counts(&mut self) -> Result<(u64, u64, u64)> {
        each!(self, s => s.counts())
    }
}
