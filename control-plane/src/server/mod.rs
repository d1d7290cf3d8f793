//! The HTTPS API.
//!
//! One process, one store behind a mutex (every store call is short: SQLite, or one
//! PostgreSQL connection), and in memory: a wake-up per agent for the long poll, the
//! last-seen times (flushed to the store every two seconds), and the set of agents currently
//! reported lost. With PostgreSQL, several processes (replicas) share the store; what one
//! changes reaches the others' long polls and log followers through `NOTIFY`
//! (`crate::store::pg::listen`), and nothing else needs to be shared.
//!
//! Files: `agent.rs` (the agents' calls), `admin.rs` (the operators' calls), `extract.rs`
//! (request bodies and error answers), `serve.rs` (TLS, limits, shutdown), `mailbox.rs` (each
//! agent's long-poll wake-up and the runs handed to a waiting poll), `group.rs` (group commit
//! of agents' writes on SQLite).
//!
//! Authentication: agents send `Authorization: Bearer cca_...`; the token's SHA-256 is
//! looked up, and its generation is compared with the newest generation the agent has used
//! (see `docs/protocol.md`, "Token lifecycle"). Operators send the admin token.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{
    ConnectInfo, DefaultBodyLimit, FromRequest, Path as UrlPath, RawQuery, Request, State,
};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chaos_engine::experiment::Experiment;
use chaos_protocol::admin::{
    AbortRequest, AddAgentRequest, AgentInfo, AgentList, CreateRunsRequest, CreateRunsResponse,
    Health, LogPage, RegistrationKey, RunDetail, RunList, RunRef,
};
use chaos_protocol::agent::{
    AccessToken, AgentSettings, RegisterRequest, RegisterResponse, RotateRequest, TasksResponse,
};
use chaos_protocol::run::{
    LogBatch, LogsResponse, RunResult, RunState, StatusResponse, StatusUpdate,
};
use chaos_protocol::{
    is_agent_id, is_run_id, now_ms, ApiError, ErrorBody, ErrorCode, Invalid, Problem,
    MAX_BODY_BYTES, MAX_WAIT_SECS,
};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use crate::pki::{Paths, ADMIN_HASH_KEY};
use crate::secrets::{self, ACCESS_PREFIX, ADMIN_PREFIX, REGISTRATION_PREFIX};
use crate::store::{Database, RegisterRefusal, RunFilter, Store, StoreError};
use crate::{Error, Result};

mod admin;
mod agent;
mod extract;
mod group;
mod mailbox;
use mailbox::Mailbox;
mod serve;

use admin::*;
use agent::*;
use extract::*;
pub use extract::{ApiErr, JsonBody};
pub use serve::{raise_nofile, tls_config, Server};

/// Timings and limits of a server.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Lifetime of an access token.
    pub token_ttl: Duration,
    /// Default lifetime of a registration key.
    pub key_ttl: Duration,
    /// Silence after which an agent is shown as lost.
    pub lost_after: Duration,
    /// The long-poll `wait` agents are asked to use.
    pub poll_wait: Duration,
    /// Default lease of a run.
    pub lease: Duration,
    /// A task handed out but not acknowledged is handed out again after this long.
    pub redeliver_after: Duration,
    /// Largest request body.
    pub max_body: usize,
    /// How long in-flight requests may take to finish at shutdown.
    pub shutdown_grace: Duration,
    /// How long a client may take for its TLS handshake, and then for each request head
    /// (also the longest a kept-alive connection may sit idle between requests).
    pub header_timeout: Duration,
    /// How long a client may take to send a request body, once its head is in.
    pub body_timeout: Duration,
    /// Connections held at most, in all; `None`: below the open-files limit by
    /// [`crate::limits::RESERVED_FDS`].
    pub max_connections: Option<usize>,
    /// Connections held at most from one client address.
    pub max_connections_per_peer: usize,
    /// Where the store is; `None`: the SQLite file of the state directory.
    pub database: Option<Database>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            token_ttl: Duration::from_secs(3600),
            key_ttl: Duration::from_secs(24 * 3600),
            lost_after: Duration::from_secs(120),
            poll_wait: Duration::from_secs(30),
            lease: Duration::from_secs(120),
            redeliver_after: Duration::from_secs(10),
            max_body: MAX_BODY_BYTES,
            shutdown_grace: Duration::from_secs(5),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: None,
            max_connections_per_peer: 1024,
            database: None,
        }
    }
}

/// Set once at shutdown; long polls return at once.
#[derive(Debug, Default)]
struct Shutdown {
    flag: AtomicBool,
    notify: Notify,
}

impl Shutdown {
    fn trigger(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    async fn wait(&self) {
        let n = self.notify.notified();
        tokio::pin!(n);
        n.as_mut().enable();
        if self.flag.load(Ordering::SeqCst) {
            return;
        }
        n.await
    }
}

/// Shared state of the server.
pub struct App {
    store: Arc<Mutex<Store>>,
    /// Group commit of the writes agents wait for (SQLite only; see `group.rs`).
    committer: Option<group::CommitHandle>,
    /// The store is PostgreSQL: its calls block on the network (see [`App::db`]).
    remote_store: bool,
    settings: Settings,
    admin_hash: Vec<u8>,
    registry: fault_core::Registry,
    wakers: Mutex<HashMap<String, Arc<Mailbox>>>,
    logs_changed: Notify,
    seen: Mutex<HashMap<String, u64>>,
    lost: Mutex<HashSet<String>>,
    shutdown: Shutdown,
    limits: Mutex<Option<Arc<crate::limits::Limits>>>,
    metrics: crate::metrics::Metrics,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// An authenticated agent call (set by [`agent_gate`]).
#[derive(Debug, Clone)]
struct Authed {
    agent_id: String,
    generation: u64,
}

/// An admin call that presented the admin token (set by [`admin_gate`]).
#[derive(Debug, Clone, Copy)]
struct AdminOk;

/// The client's address, for logs ("-" when unknown, e.g. in a test without connect info).
#[derive(Debug, Clone, Copy)]
struct Peer(Option<SocketAddr>);

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(a) => write!(f, "{a}"),
            None => f.write_str("-"),
        }
    }
}

fn peer_of(req: &Request) -> Peer {
    Peer(
        req.extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0),
    )
}

/// A refused call whose body is not read: the client may still be sending it (it writes the
/// whole body before reading the answer), so what it sends is drained (see [`linger`]) and
/// the connection is closed after the answer.
fn refuse_unread(app: &Arc<App>, req: Request, err: ApiErr) -> Response {
    let sends_body = !req
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if sends_body && !req.body().is_end_stream() {
        linger(app, req.into_body());
    }
    let mut r = err.into_response();
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// Agent calls authenticate before anything else is looked at: the body of a call without
/// a valid token is never parsed (docs/protocol.md, "Authentication").
async fn agent_gate(State(app): Shared, mut req: Request, next: Next) -> Response {
    let peer = peer_of(&req);
    match app.agent(req.headers(), peer) {
        Ok(auth) => {
            req.extensions_mut().insert(auth);
            next.run(req).await
        }
        Err(e) => {
            app.metrics.auth_failure(e.0.code.as_str());
            refuse_unread(&app, req, e)
        }
    }
}

/// Admin calls present the admin token before their body is read.
async fn admin_gate(State(app): Shared, mut req: Request, next: Next) -> Response {
    match app.admin(req.headers()) {
        Ok(()) => {
            req.extensions_mut().insert(AdminOk);
            next.run(req).await
        }
        Err(e) => {
            app.metrics.auth_failure(e.0.code.as_str());
            refuse_unread(&app, req, e)
        }
    }
}

/// At most 64 characters of what a client sent, for an error message.
fn clip_for_message(s: &str) -> String {
    s.chars().take(64).collect()
}

fn internal(e: impl std::fmt::Display) -> ApiErr {
    tracing::error!(error = %e, "storage failure");
    ApiErr::new(
        ErrorCode::Internal,
        "the server could not read or write its store; see the server log",
    )
}

fn store_err(e: StoreError) -> ApiErr {
    match e {
        StoreError::Sql(e) => internal(e),
        StoreError::Pg(e) => internal(crate::store::pg::describe(&e)),
        StoreError::Conflict(m) => ApiErr::new(ErrorCode::Conflict, m),
        StoreError::NotFound(m) => ApiErr::new(ErrorCode::NotFound, m),
    }
}

fn bearer(headers: &HeaderMap) -> Result<&str, ApiErr> {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiErr::new(
            ErrorCode::MissingToken,
            "this call needs an `Authorization: Bearer <token>` header",
        ));
    };
    v.to_str()
        .ok()
        .and_then(|s| s.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            ApiErr::new(
                ErrorCode::InvalidToken,
                "the Authorization header must be `Bearer <token>`",
            )
        })
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

impl App {
    /// Build the state from an open store.
    pub fn new(mut store: Store, settings: Settings) -> Result<App> {
        let admin_hash = store.meta(ADMIN_HASH_KEY)?.ok_or_else(|| {
            Error::msg("the store has no admin token: run `chaos-control init` first")
        })?;
        let remote_store = store.is_postgres();
        let store = Arc::new(Mutex::new(store));
        let committer = if remote_store {
            None
        } else {
            Some(
                group::Committer::start(store.clone())
                    .map_err(|e| Error(format!("cannot start the store's committer: {e}")))?,
            )
        };
        Ok(App {
            remote_store,
            store,
            committer,
            settings,
            admin_hash,
            registry: crate::registry(),
            wakers: Mutex::new(HashMap::new()),
            logs_changed: Notify::new(),
            seen: Mutex::new(HashMap::new()),
            lost: Mutex::new(HashSet::new()),
            shutdown: Shutdown::default(),
            limits: Mutex::new(None),
            metrics: crate::metrics::Metrics::default(),
        })
    }

    fn db<T: Send>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<T, StoreError> + Send,
    ) -> Result<T, ApiErr> {
        self.with_store(f).map_err(store_err)
    }

    /// A write the agent waits for: with SQLite committed with others queued meanwhile
    /// (one fsync for the group, see `group.rs`), with PostgreSQL on its own. Answered only
    /// once committed.
    async fn durable(&self, w: crate::store::Write) -> Result<crate::store::Written, ApiErr> {
        match &self.committer {
            Some(c) => c.write(w).await.map_err(store_err),
            None => self.db(|s| {
                s.write_group(std::slice::from_ref(&w))?
                    .pop()
                    .unwrap_or_else(|| Err(StoreError::NotFound("no write".into())))
            }),
        }
    }

    /// Run `f` on the store. A PostgreSQL call waits on the network with its own small
    /// runtime (the `postgres` client's), so on a worker thread of the server's runtime it
    /// runs in `block_in_place`: the worker's other tasks move to another thread meanwhile.
    fn with_store<T: Send>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<T, StoreError> + Send,
    ) -> Result<T, StoreError> {
        let call = || {
            let mut s = self.store.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut s)
        };
        if !self.remote_store {
            return call();
        }
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Err(_) => call(),
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(call),
            // A single-threaded runtime (the metrics listener in tests) cannot lend its
            // thread: the call runs on a thread of its own.
            Ok(_) => std::thread::scope(|s| {
                s.spawn(call)
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p))
            }),
        }
    }

    /// Wake every long poll and log follower held here (their next look at the store finds
    /// what changed).
    fn wake_all(&self) {
        let w = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
        for m in w.values() {
            m.lock().stale = true;
            m.notify.notify_waiters();
        }
        drop(w);
        self.logs_changed.notify_waiters();
    }

    /// What another replica changed (heard through PostgreSQL's `NOTIFY`).
    fn heard(&self, what: crate::store::pg::Heard) {
        use crate::store::pg::Heard;
        match what {
            Heard::Wake(agent_id) => self.wake(&agent_id),
            Heard::Logs => self.logs_changed.notify_waiters(),
            Heard::Listening => {}
            Heard::Reconnected => self.wake_all(),
        }
    }

    fn saw(&self, agent_id: &str) {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(agent_id.to_string(), now_ms());
        let back = self
            .lost
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(agent_id);
        if back {
            tracing::info!(agent_id, "agent is back");
        }
    }

    fn admin(&self, headers: &HeaderMap) -> Result<(), ApiErr> {
        let t = bearer(headers)?;
        if !secrets::well_formed(t, ADMIN_PREFIX) {
            return Err(ApiErr::new(
                ErrorCode::InvalidToken,
                "this call needs the admin token (see admin.token in the state directory)",
            ));
        }
        // Comparing SHA-256 digests of a 256-bit secret leaks nothing useful through timing.
        if secrets::hash(t) != self.admin_hash {
            return Err(ApiErr::new(ErrorCode::InvalidToken, "wrong admin token"));
        }
        Ok(())
    }

    fn agent(&self, headers: &HeaderMap, peer: Peer) -> Result<Authed, ApiErr> {
        let t = bearer(headers)?;
        if !secrets::well_formed(t, ACCESS_PREFIX) {
            return Err(ApiErr::new(
                ErrorCode::InvalidToken,
                "not an agent access token",
            ));
        }
        let hash = secrets::hash(t);
        let now = now_ms();
        let row = self.db(|s| s.token(&hash))?;
        let Some(row) = row else {
            return Err(ApiErr::new(
                ErrorCode::InvalidToken,
                "unknown token (never issued, or replaced); register again with a new key",
            ));
        };
        match row.agent_state.as_str() {
            "revoked" => {
                return Err(ApiErr::new(
                    ErrorCode::AgentRevoked,
                    "this agent was revoked by the operator",
                ))
            }
            "locked" => {
                return Err(ApiErr::new(
                    ErrorCode::IdentityLocked,
                    "this agent identity is locked because an old token was used after a newer \
                     one: two agents share it. The operator must issue a new key \
                     (`chaos-control agents rekey`)",
                ))
            }
            _ => {}
        }
        if row.generation < row.agent_generation {
            let reason = format!(
                "token generation {} was presented after generation {} had been used: this \
                 identity is in use by two agents (a copied state directory?)",
                row.generation, row.agent_generation
            );
            self.db(|s| s.lock(&row.agent_id, &reason))?;
            tracing::warn!(
                agent_id = %row.agent_id,
                %peer,
                presented = row.generation,
                newest = row.agent_generation,
                "identity locked: an old token generation was used after a newer one"
            );
            return Err(ApiErr::new(
                ErrorCode::IdentityLocked,
                format!("{reason}. Every token of this agent is refused until the operator issues a new key (`chaos-control agents rekey`)"),
            ));
        }
        if row.expires_at_ms <= now {
            return Err(ApiErr::new(
                ErrorCode::TokenExpired,
                "the access token has expired; rotate before half its lifetime, or register again with a new key",
            ));
        }
        if row.generation > row.agent_generation {
            self.db(|s| s.use_generation(&row.agent_id, row.generation, now))?;
            tracing::debug!(agent_id = %row.agent_id, generation = row.generation, "token generation in use");
        }
        self.saw(&row.agent_id);
        Ok(Authed {
            agent_id: row.agent_id,
            generation: row.generation,
        })
    }

    fn issue(&self, generation: u64, now: u64) -> (String, AccessToken) {
        let token = secrets::new_secret(ACCESS_PREFIX);
        let ttl = ms(self.settings.token_ttl);
        let at = AccessToken {
            token: token.clone(),
            generation,
            expires_at_ms: now + ttl,
            rotate_at_ms: now + ttl / 2,
        };
        (token, at)
    }

    /// The run must exist (404) and be this agent's (403).
    fn own_run(&self, auth: &Authed, run_id: &str) -> Result<(), ApiErr> {
        if !is_run_id(run_id) {
            return Err(ApiErr::new(
                ErrorCode::NotFound,
                format!("no run {run_id:?}"),
            ));
        }
        match self.db(|s| s.run_owner(run_id))? {
            None => Err(ApiErr::new(ErrorCode::NotFound, format!("no run {run_id}"))),
            Some(o) if o.agent_id != auth.agent_id => Err(ApiErr::new(
                ErrorCode::Forbidden,
                format!("run {run_id} belongs to another agent"),
            )),
            Some(_) => Ok(()),
        }
    }

    /// Faults an agent reports must be the run's own: a fault id the run's experiment makes,
    /// at its step, with its kind. Anything else (another run's id, `../../etc/passwd`, an
    /// invented kind) is refused with 422 and nothing is stored.
    fn check_faults<'a>(
        &self,
        run_id: &str,
        what: &str,
        reported: impl Iterator<Item = (&'a str, u32, &'a str)>,
    ) -> Result<(), ApiErr> {
        let mut reported = reported.peekable();
        if reported.peek().is_none() {
            return Ok(()); // nothing to check: no store read on the acknowledgement path
        }
        let exp = self.db(|s| s.run_experiment(run_id))?.unwrap_or_default();
        let known = crate::store::experiment_faults(run_id, &exp);
        let mut problems = Vec::new();
        for (i, (id, step, kind)) in reported.enumerate() {
            let path = format!("{what}[{i}]");
            match known.iter().find(|(k, _, _)| k == id) {
                None => problems.push(Problem {
                    path: format!("{path}.fault_id"),
                    message: format!(
                        "{:?} is not a fault of run {run_id} (its faults: {})",
                        clip_for_message(id),
                        known
                            .iter()
                            .map(|k| k.0.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                }),
                Some((_, s, k)) => {
                    if *s != step {
                        problems.push(Problem {
                            path: format!("{path}.step"),
                            message: format!("fault {id} is in step {s}, not {step}"),
                        });
                    }
                    if k != kind {
                        problems.push(Problem {
                            path: format!("{path}.kind"),
                            message: format!(
                                "fault {id} is a {k} fault, not {:?}",
                                clip_for_message(kind)
                            ),
                        });
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ApiErr::invalid(
                "the faults reported are not this run's",
                problems,
            ))
        }
    }

    /// The operator's reason for aborting `run_id`, when `abort` says one was requested.
    fn abort_reason(&self, run_id: &str, abort: bool) -> Result<Option<String>, ApiErr> {
        if !abort {
            return Ok(None);
        }
        Ok(self
            .db(|s| s.run_owner(run_id))?
            .and_then(|o| o.abort_reason))
    }

    /// Write last-seen times and report agents that fell silent.
    fn sweep(&self) {
        let seen: Vec<(String, u64)> = self
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        let now = now_ms();
        let lost_before = now.saturating_sub(ms(self.settings.lost_after));
        let r = self.db(|s| {
            if !seen.is_empty() {
                s.touch(&seen)?;
            }
            s.silent_agents(lost_before)
        });
        let Ok(silent) = r else { return };
        let mut lost = self.lost.lock().unwrap_or_else(|p| p.into_inner());
        for (id, name, last_seen_ms) in silent {
            if lost.insert(id.clone()) {
                tracing::warn!(agent_id = %id, %name, last_seen_ms, "agent lost: silent for longer than lost_after");
            }
        }
    }

    fn prune(&self) {
        let before = now_ms().saturating_sub(7 * 24 * 3600 * 1000);
        if let Ok(n) = self.db(|s| s.prune_tokens(before)) {
            if n > 0 {
                tracing::info!(tokens = n, "forgot retired tokens older than 7 days");
            }
        }
    }

    fn agent_info(&self, row: &crate::store::AgentRow) -> AgentInfo {
        let seen = self
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&row.id)
            .copied();
        let lost_before = now_ms().saturating_sub(ms(self.settings.lost_after));
        row.info(seen, lost_before)
    }
}

fn query_u64(raw: &Option<String>, key: &str, default: u64) -> Result<u64, ApiErr> {
    let Some(q) = raw else { return Ok(default) };
    for pair in q.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == key {
            return v.parse::<u64>().map_err(|_| {
                ApiErr::new(
                    ErrorCode::BadRequest,
                    format!("query parameter `{key}` must be a whole number, not {v:?}"),
                )
            });
        }
    }
    Ok(default)
}

fn query_str<'a>(raw: &'a Option<String>, key: &str) -> Option<&'a str> {
    raw.as_deref()?.split('&').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        (k == key).then_some(v)
    })
}

type Shared = State<Arc<App>>;

async fn not_found() -> ApiErr {
    ApiErr::new(
        ErrorCode::NotFound,
        "no such path (the API lives under /api/v1)",
    )
}

async fn method_not_allowed() -> ApiErr {
    ApiErr::new(
        ErrorCode::MethodNotAllowed,
        "this path does not take this method",
    )
}

async fn log_requests(req: Request, next: Next) -> Response {
    let peer = peer_of(&req);
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let start = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    let ms = start.elapsed().as_millis() as u64;
    if path.ends_with("/tasks") && status < 400 {
        tracing::debug!(%peer, %method, %path, status, ms, "request");
    } else if status >= 500 {
        tracing::error!(%peer, %method, %path, status, ms, "request");
    } else if status >= 400 {
        tracing::warn!(%peer, %method, %path, status, ms, "request refused");
    } else {
        tracing::info!(%peer, %method, %path, status, ms, "request");
    }
    resp
}

/// The router, with body limits, JSON fallbacks and request logs.
pub fn router(app: Arc<App>) -> Router {
    let max_body = app.settings.max_body;
    let agent = Router::new()
        .route("/agents/{id}/token", post(rotate))
        .route("/agents/{id}/tasks", get(tasks))
        .route("/runs/{run}/status", post(status))
        .route("/runs/{run}/logs", post(logs))
        .route("/runs/{run}/result", post(result))
        .route_layer(middleware::from_fn_with_state(app.clone(), agent_gate));
    let admin = Router::new()
        .route("/admin/agents", post(add_agent).get(list_agents))
        .route("/admin/agents/{key}", get(show_agent))
        .route("/admin/agents/{key}/rekey", post(rekey_agent))
        .route("/admin/agents/{key}/revoke", post(revoke_agent))
        .route("/admin/runs", post(create_runs).get(list_runs))
        .route("/admin/runs/{run}", get(show_run))
        .route("/admin/runs/{run}/logs", get(run_logs))
        .route("/admin/runs/{run}/abort", post(abort_run))
        .route_layer(middleware::from_fn_with_state(app.clone(), admin_gate));
    let api = Router::new()
        .route("/health", get(health))
        .route("/agents/register", post(register))
        .merge(agent)
        .merge(admin)
        .method_not_allowed_fallback(method_not_allowed);
    Router::new()
        .nest(chaos_protocol::API_PREFIX, api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // `JsonBody` applies the limit itself (with a lingering close); this covers axum's
        // own body extractors, should a handler ever use one.
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn(log_requests))
        .with_state(app)
}

/// The metrics listener's router: `GET /metrics` (Prometheus text format), nothing else.
pub fn metrics_router(app: Arc<App>) -> Router {
    async fn metrics(State(app): Shared) -> Response {
        match app.metrics_text() {
            Ok(t) => (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                )],
                t,
            )
                .into_response(),
            Err(e) => internal(e).into_response(),
        }
    }
    Router::new()
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(app)
}
