//! The HTTPS API.
//!
//! One process, one SQLite store behind a mutex (every store call is short), and in memory:
//! a wake-up per agent for the long poll, the last-seen times (flushed to the store every
//! two seconds), and the set of agents currently reported lost.
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

/// An error answer: status + `{"error": ...}`.
#[derive(Debug)]
pub struct ApiErr(pub ApiError);

impl ApiErr {
    fn new(code: ErrorCode, message: impl Into<String>) -> ApiErr {
        ApiErr(ApiError {
            code,
            message: message.into(),
            problems: Vec::new(),
        })
    }

    fn invalid(message: impl Into<String>, problems: Vec<Problem>) -> ApiErr {
        ApiErr(ApiError {
            code: ErrorCode::Invalid,
            message: message.into(),
            problems,
        })
    }

    fn from_invalid(what: &str, inv: Invalid) -> ApiErr {
        ApiErr::invalid(format!("the {what} has invalid fields"), inv.0)
    }
}

impl IntoResponse for ApiErr {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = (status, Json(ErrorBody { error: self.0 })).into_response();
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        // The rest of a too-large body is not read (only drained, see `linger`): this
        // connection cannot carry another request.
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        r
    }
}

/// A JSON body read with the server's limit; errors become 400/413/422 JSON answers.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

/// How much of a refused body is still read and thrown away (see [`linger`]), and for how
/// long at most.
const LINGER_BYTES: usize = 16 * 1024 * 1024;
const LINGER_TIME: Duration = Duration::from_secs(5);

fn too_large(max: usize) -> ApiErr {
    ApiErr::new(
        ErrorCode::PayloadTooLarge,
        format!("the body is larger than the {max} bytes this server accepts"),
    )
}

/// The next frame of a body: its data, or `None` for a trailers frame.
async fn next_frame(body: &mut Body) -> Option<Result<Option<Bytes>, axum::Error>> {
    std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx))
        .await
        .map(|r| r.map(|f| f.into_data().ok()))
}

/// The lingering close of a refused body. The 413 goes out (with `Connection: close`) before
/// the body has been read; if the connection were then closed with the rest of the body
/// unread, the kernel would answer the client's next bytes with a reset, and a client that
/// writes its whole body before reading the answer (ureq, most clients) would get EPIPE or
/// ECONNRESET instead of the 413. So what the client still sends is read and thrown away, up
/// to `LINGER_BYTES` and for up to `LINGER_TIME` (or until shutdown); hyper closes the
/// connection when the body has ended or this task drops it.
fn linger(app: &Arc<App>, mut body: Body) {
    let app = app.clone();
    tokio::spawn(async move {
        let drain = async {
            let mut n = 0;
            while let Some(Ok(data)) = next_frame(&mut body).await {
                n += data.map_or(0, |d| d.len());
                if n > LINGER_BYTES {
                    break;
                }
            }
        };
        tokio::select! {
            _ = drain => {}
            _ = tokio::time::sleep(LINGER_TIME) => {}
            _ = app.shutdown.wait() => {}
        }
    });
}

impl<T: DeserializeOwned> FromRequest<Arc<App>> for JsonBody<T> {
    type Rejection = ApiErr;

    async fn from_request(req: Request, app: &Arc<App>) -> Result<Self, ApiErr> {
        let max = app.settings.max_body;
        let headers = req.headers();
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        // A client waiting for `100 Continue` sends no body: nothing to linger for (and
        // reading would make hyper send the 100).
        let sends_body = !headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        let mut body = req.into_body();
        // Refused on its Content-Length, before any of it is read.
        if declared.is_some_and(|n| n > max as u64) {
            if sends_body {
                linger(app, body);
            }
            return Err(too_large(max));
        }
        let mut bytes = Vec::with_capacity(declared.unwrap_or(0) as usize);
        let deadline = tokio::time::Instant::now() + app.settings.body_timeout;
        loop {
            let frame = match tokio::time::timeout_at(deadline, next_frame(&mut body)).await {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(_) => {
                    return Err(ApiErr::new(
                        ErrorCode::BadRequest,
                        format!(
                            "the body did not arrive within {} s (read {} bytes)",
                            app.settings.body_timeout.as_secs(),
                            bytes.len()
                        ),
                    ))
                }
            };
            let frame = frame.map_err(|e| {
                ApiErr::new(ErrorCode::BadRequest, format!("cannot read the body: {e}"))
            })?;
            let Some(data) = frame else {
                continue;
            };
            // A chunked body has no Content-Length: refused when it passes the limit.
            if bytes.len() + data.len() > max {
                linger(app, body);
                return Err(too_large(max));
            }
            bytes.extend_from_slice(&data);
        }
        let de = &mut serde_json::Deserializer::from_slice(&bytes);
        match serde_path_to_error::deserialize::<_, T>(de) {
            Ok(v) => Ok(JsonBody(v)),
            Err(e) => {
                let path = e.path().to_string();
                let inner = e.into_inner();
                if inner.is_data() {
                    let path = if path == "." { String::new() } else { path };
                    Err(ApiErr::invalid(
                        "the body does not have the fields this call expects",
                        vec![Problem {
                            path,
                            message: inner.to_string(),
                        }],
                    ))
                } else {
                    Err(ApiErr::new(
                        ErrorCode::MalformedJson,
                        format!("the body is not valid JSON: {inner}"),
                    ))
                }
            }
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
    store: Mutex<Store>,
    /// The store is PostgreSQL: its calls block on the network (see [`App::db`]).
    remote_store: bool,
    settings: Settings,
    admin_hash: Vec<u8>,
    registry: fault_core::Registry,
    wakers: Mutex<HashMap<String, Arc<Notify>>>,
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
        Ok(App {
            remote_store: store.is_postgres(),
            store: Mutex::new(store),
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
        for n in w.values() {
            n.notify_waiters();
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
            Heard::Connected => self.wake_all(),
        }
    }

    fn waker(&self, agent_id: &str) -> Arc<Notify> {
        let mut w = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
        w.entry(agent_id.to_string()).or_default().clone()
    }

    fn wake(&self, agent_id: &str) {
        let w = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = w.get(agent_id) {
            n.notify_waiters();
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

async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        api: "v1".into(),
    })
}

async fn register(
    State(app): Shared,
    JsonBody(req): JsonBody<RegisterRequest>,
) -> Result<Json<RegisterResponse>, ApiErr> {
    req.validate()
        .map_err(|e| ApiErr::from_invalid("registration", e))?;
    if !secrets::well_formed(&req.registration_key, REGISTRATION_PREFIX) {
        return Err(ApiErr::new(
            ErrorCode::RegistrationKeyInvalid,
            "not a registration key (they start with ccr_)",
        ));
    }
    let now = now_ms();
    let (token, at) = app.issue(1, now);
    let host = serde_json::to_string(&req.host).map_err(internal)?;
    let key_hash = secrets::hash(&req.registration_key);
    let token_hash = secrets::hash(&token);
    let r = app.db(|s| s.register(&key_hash, &host, &token_hash, at.expires_at_ms, now))?;
    let (agent_id, name) = r.map_err(|refusal| match refusal {
        RegisterRefusal::Unknown => ApiErr::new(
            ErrorCode::RegistrationKeyInvalid,
            "unknown registration key; ask the operator for one (`chaos-control agents add`)",
        ),
        RegisterRefusal::Expired => ApiErr::new(
            ErrorCode::RegistrationKeyExpired,
            "the registration key has expired; ask the operator for a new one (`chaos-control agents rekey`)",
        ),
        RegisterRefusal::Used => ApiErr::new(
            ErrorCode::RegistrationKeyUsed,
            "the registration key was already used; each key registers once (`chaos-control agents rekey` issues a new one)",
        ),
        RegisterRefusal::MachineTaken { name, state } => ApiErr::new(
            ErrorCode::Conflict,
            format!(
                "this machine (same machine id) is already registered as agent {name} ({state}): one agent per machine. Revoke it first (`chaos-control agents revoke {name}`); the key stays unused"
            ),
        ),
    })?;
    app.saw(&agent_id);
    tracing::info!(%agent_id, %name, hostname = %req.host.hostname, version = %req.host.agent_version, "agent registered");
    let failed = app.db(|s| s.fail_unrunnable(&agent_id, now))?;
    for (run_id, message) in &failed {
        tracing::warn!(%run_id, %agent_id, %message, "queued run failed");
    }
    if !failed.is_empty() {
        app.logs_changed.notify_waiters();
    }
    Ok(Json(RegisterResponse {
        agent_id,
        name,
        token: at,
        settings: AgentSettings {
            poll_wait_secs: app.settings.poll_wait.as_secs(),
            lost_after_secs: app.settings.lost_after.as_secs(),
            token_ttl_secs: app.settings.token_ttl.as_secs(),
        },
    }))
}

async fn rotate(
    State(app): Shared,
    UrlPath(id): UrlPath<String>,
    Extension(auth): Extension<Authed>,
    JsonBody(_): JsonBody<RotateRequest>,
) -> Result<Json<AccessToken>, ApiErr> {
    if auth.agent_id != id {
        return Err(ApiErr::new(
            ErrorCode::Forbidden,
            "this token belongs to another agent",
        ));
    }
    // After authentication the presented token is the newest generation in use.
    let current = auth.generation;
    let now = now_ms();
    let (token, at) = app.issue(current + 1, now);
    let hash = secrets::hash(&token);
    app.db(|s| s.rotate(&id, current, &hash, at.expires_at_ms, now))?;
    tracing::info!(agent_id = %id, generation = current + 1, "token rotated");
    Ok(Json(at))
}

async fn tasks(
    State(app): Shared,
    UrlPath(id): UrlPath<String>,
    RawQuery(q): RawQuery,
    Extension(auth): Extension<Authed>,
) -> Result<Json<TasksResponse>, ApiErr> {
    if auth.agent_id != id {
        return Err(ApiErr::new(
            ErrorCode::Forbidden,
            "this token belongs to another agent",
        ));
    }
    let wait = Duration::from_secs(query_u64(&q, "wait", 0)?.min(MAX_WAIT_SECS));
    let waker = app.waker(&id);
    let woken = waker.notified();
    tokio::pin!(woken);
    woken.as_mut().enable();
    let redeliver = |now: u64| now.saturating_sub(ms(app.settings.redeliver_after));
    let (mut list, due, mut first) = app.db(|s| s.tasks_with_first(&id, redeliver(now_ms())))?;
    if !due && !wait.is_zero() {
        let _held = app.metrics.long_poll();
        tokio::select! {
            _ = &mut woken => {}
            _ = tokio::time::sleep(wait) => {}
            _ = app.shutdown.wait() => {}
        }
        (list, _, first) = app.db(|s| s.tasks_with_first(&id, redeliver(now_ms())))?;
        app.saw(&id);
    }
    if !list.is_empty() {
        let now = now_ms();
        app.db(|s| s.mark_delivered(&list, now))?;
        for created in first {
            app.metrics.dispatched(now.saturating_sub(created));
        }
    }
    Ok(Json(TasksResponse { tasks: list }))
}

async fn status(
    State(app): Shared,
    UrlPath(run): UrlPath<String>,
    Extension(auth): Extension<Authed>,
    JsonBody(up): JsonBody<StatusUpdate>,
) -> Result<Json<StatusResponse>, ApiErr> {
    app.own_run(&auth, &run)?;
    up.validate()
        .map_err(|e| ApiErr::from_invalid("status", e))?;
    let reported = up
        .faults
        .iter()
        .map(|f| (f.fault_id.as_str(), f.step, f.kind.as_str()));
    app.check_faults(&run, "faults", reported)?;
    let (state, abort) = app.db(|s| s.update_status(&run, &up, now_ms()))?;
    app.logs_changed.notify_waiters();
    tracing::info!(run_id = %run, agent_id = %auth.agent_id, state = state.as_str(), "run status");
    let abort_reason = app.abort_reason(&run, abort)?;
    Ok(Json(StatusResponse {
        run_id: run,
        state,
        abort_requested: abort,
        abort_reason,
    }))
}

async fn logs(
    State(app): Shared,
    UrlPath(run): UrlPath<String>,
    Extension(auth): Extension<Authed>,
    JsonBody(batch): JsonBody<LogBatch>,
) -> Result<Json<LogsResponse>, ApiErr> {
    app.own_run(&auth, &run)?;
    batch
        .validate()
        .map_err(|e| ApiErr::from_invalid("log batch", e))?;
    let (accepted, duplicates) = app.db(|s| s.append_logs(&run, &batch.lines))?;
    let owner = app.db(|s| s.run_owner(&run))?;
    let abort_requested = owner.as_ref().is_some_and(|o| o.abort_requested);
    let abort_reason = owner.and_then(|o| o.abort_reason);
    if accepted > 0 {
        app.logs_changed.notify_waiters();
    }
    Ok(Json(LogsResponse {
        accepted,
        duplicates,
        abort_requested,
        abort_reason,
    }))
}

async fn result(
    State(app): Shared,
    UrlPath(run): UrlPath<String>,
    Extension(auth): Extension<Authed>,
    JsonBody(res): JsonBody<RunResult>,
) -> Result<Json<StatusResponse>, ApiErr> {
    app.own_run(&auth, &run)?;
    res.validate()
        .map_err(|e| ApiErr::from_invalid("result", e))?;
    if res.run_id != run {
        return Err(ApiErr::invalid(
            "the result is for another run",
            vec![Problem {
                path: "run_id".into(),
                message: format!("{} does not match the run in the path ({run})", res.run_id),
            }],
        ));
    }
    let reported = res.steps.iter().enumerate().flat_map(|(si, st)| {
        st.faults
            .iter()
            .map(move |f| (f.fault_id.as_str(), si as u32, f.kind.as_str()))
    });
    app.check_faults(&run, "steps[].faults", reported)?;
    let (state, abort) = app.db(|s| s.store_result(&run, &res, now_ms()))?;
    app.logs_changed.notify_waiters();
    tracing::info!(run_id = %run, agent_id = %auth.agent_id, state = state.as_str(), host_clean = res.host_clean(), "run result");
    let abort_reason = app.abort_reason(&run, abort)?;
    Ok(Json(StatusResponse {
        run_id: run,
        state,
        abort_requested: abort,
        abort_reason,
    }))
}

// ---- operator calls ----

fn key_for(app: &App, ttl: Option<u64>) -> (String, Vec<u8>, u64) {
    let key = secrets::new_secret(REGISTRATION_PREFIX);
    let hash = secrets::hash(&key);
    let ttl = ttl.map(|s| s * 1000).unwrap_or(ms(app.settings.key_ttl));
    (key, hash, now_ms() + ttl)
}

async fn add_agent(
    State(app): Shared,
    Extension(AdminOk): Extension<AdminOk>,
    JsonBody(req): JsonBody<AddAgentRequest>,
) -> Result<(StatusCode, Json<RegistrationKey>), ApiErr> {
    req.validate()
        .map_err(|e| ApiErr::from_invalid("request", e))?;
    let id = secrets::random_hex(8);
    let (key, hash, expires) = key_for(&app, req.key_ttl_secs);
    app.db(|s| s.add_agent(&id, &req.name, &hash, expires, now_ms()))?;
    tracing::info!(agent_id = %id, name = %req.name, "agent added");
    Ok((
        StatusCode::CREATED,
        Json(RegistrationKey {
            agent_id: id,
            name: req.name,
            registration_key: key,
            expires_at_ms: expires,
        }),
    ))
}

async fn list_agents(
    State(app): Shared,
    Extension(AdminOk): Extension<AdminOk>,
) -> Result<Json<AgentList>, ApiErr> {
    let rows = app.db(|s| s.list_agents())?;
    Ok(Json(AgentList {
        agents: rows.iter().map(|r| app.agent_info(r)).collect(),
    }))
}

fn find_agent(app: &App, key: &str) -> Result<crate::store::AgentRow, ApiErr> {
    if !is_agent_id(key) && chaos_protocol::validate_name(key).is_err() {
        return Err(ApiErr::new(
            ErrorCode::NotFound,
            format!("no agent {key:?}"),
        ));
    }
    app.db(|s| s.find_agent(key))?
        .ok_or_else(|| ApiErr::new(ErrorCode::NotFound, format!("no agent {key:?}")))
}

async fn show_agent(
    State(app): Shared,
    UrlPath(key): UrlPath<String>,
    Extension(AdminOk): Extension<AdminOk>,
) -> Result<Json<AgentInfo>, ApiErr> {
    let row = find_agent(&app, &key)?;
    Ok(Json(app.agent_info(&row)))
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RekeyRequest {
    #[serde(default)]
    key_ttl_secs: Option<u64>,
    /// Rekeying a revoked agent lets it back in: the operator must say so.
    #[serde(default)]
    unrevoke: bool,
}

async fn rekey_agent(
    State(app): Shared,
    UrlPath(key): UrlPath<String>,
    Extension(AdminOk): Extension<AdminOk>,
    JsonBody(req): JsonBody<RekeyRequest>,
) -> Result<Json<RegistrationKey>, ApiErr> {
    let row = find_agent(&app, &key)?;
    if row.state == "revoked" && !req.unrevoke {
        return Err(ApiErr::new(
            ErrorCode::Conflict,
            format!(
                "agent {} is revoked; a new key would let it register again. Say so explicitly: `chaos-control agents rekey {} --unrevoke` (API: \"unrevoke\": true)",
                row.name, row.name
            ),
        ));
    }
    let was_revoked = row.state == "revoked";
    if let Some(t) = req.key_ttl_secs {
        AddAgentRequest {
            name: row.name.clone(),
            key_ttl_secs: Some(t),
        }
        .validate()
        .map_err(|e| ApiErr::from_invalid("request", e))?;
    }
    let (k, hash, expires) = key_for(&app, req.key_ttl_secs);
    app.db(|s| s.rekey(&row.id, &hash, expires))?;
    app.wake(&row.id);
    if was_revoked {
        tracing::warn!(agent_id = %row.id, name = %row.name, "revoked agent un-revoked and rekeyed: it may register again with the new key");
    } else {
        tracing::info!(agent_id = %row.id, name = %row.name, "agent rekeyed: tokens dropped, new registration key issued");
    }
    Ok(Json(RegistrationKey {
        agent_id: row.id,
        name: row.name,
        registration_key: k,
        expires_at_ms: expires,
    }))
}

async fn revoke_agent(
    State(app): Shared,
    UrlPath(key): UrlPath<String>,
    Extension(AdminOk): Extension<AdminOk>,
    JsonBody(req): JsonBody<AbortRequest>,
) -> Result<Json<AgentInfo>, ApiErr> {
    req.validate()
        .map_err(|e| ApiErr::from_invalid("request", e))?;
    let row = find_agent(&app, &key)?;
    let reason = req
        .reason
        .unwrap_or_else(|| "revoked by the operator".into());
    app.db(|s| s.revoke(&row.id, &reason))?;
    app.wake(&row.id);
    tracing::info!(agent_id = %row.id, name = %row.name, "agent revoked");
    let row = find_agent(&app, &row.id)?;
    Ok(Json(app.agent_info(&row)))
}

/// Every string of an experiment (names, descriptions, fault parameters, and keys) is free
/// of control characters: they would reach operators' terminals (`runs list`, `runs show`)
/// and agents' logs. Only a `description` may hold tabs and line breaks.
fn control_chars(v: &serde_json::Value, path: &str, problems: &mut Vec<Problem>) {
    fn bad(s: &str, multiline: bool) -> Option<char> {
        s.chars()
            .find(|c| c.is_control() && !(*c == '\t' || multiline && matches!(c, '\n' | '\r')))
    }
    fn say(c: char) -> String {
        format!(
            "must not contain control characters (found U+{:04X})",
            c as u32
        )
    }
    match v {
        serde_json::Value::String(s) => {
            let multiline = path.ends_with(".description");
            if let Some(c) = bad(s, multiline) {
                problems.push(Problem {
                    path: path.into(),
                    message: say(c),
                });
            }
        }
        serde_json::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                control_chars(x, &format!("{path}[{i}]"), problems);
            }
        }
        serde_json::Value::Object(o) => {
            for (k, x) in o {
                if let Some(c) = bad(k, false) {
                    problems.push(Problem {
                        path: format!("{path} (a key)"),
                        message: say(c),
                    });
                    continue;
                }
                control_chars(x, &format!("{path}.{k}"), problems);
            }
        }
        _ => {}
    }
}

async fn create_runs(
    State(app): Shared,
    Extension(AdminOk): Extension<AdminOk>,
    JsonBody(req): JsonBody<CreateRunsRequest>,
) -> Result<(StatusCode, Json<CreateRunsResponse>), ApiErr> {
    let mut problems = req.validate().err().map(|e| e.0).unwrap_or_default();
    control_chars(&req.experiment, "experiment", &mut problems);
    let (exp_json, name) = match Experiment::load_value(&req.experiment, &app.registry) {
        Ok(p) => (p.experiment.to_value(), p.experiment.name.clone()),
        Err(inv) => {
            problems.extend(inv.0.into_iter().map(|p| Problem {
                path: if p.path.is_empty() {
                    "experiment".into()
                } else {
                    format!("experiment.{}", p.path)
                },
                message: p.message,
            }));
            (serde_json::Value::Null, String::new())
        }
    };
    let mut targets: Vec<(String, String)> = Vec::new();
    if problems.is_empty() {
        for (i, key) in req.agents.iter().enumerate() {
            let path = format!("agents[{i}]");
            match app.db(|s| s.find_agent(key))? {
                None => problems.push(Problem {
                    path,
                    message: format!("no agent {key:?}"),
                }),
                Some(a) if a.state != "active" => problems.push(Problem {
                    path,
                    message: format!(
                        "agent {} is {}; only registered agents can run experiments",
                        a.name, a.state
                    ),
                }),
                Some(a) if targets.iter().any(|(id, _)| *id == a.id) => problems.push(Problem {
                    path,
                    message: format!("agent {} is named twice", a.name),
                }),
                Some(a) => {
                    let offered = a.kinds();
                    let missing = offered
                        .as_deref()
                        .map(|k| crate::store::missing_kinds(k, &exp_json))
                        .unwrap_or_default();
                    if missing.is_empty() {
                        targets.push((a.id, a.name));
                    } else {
                        problems.push(Problem {
                            path,
                            message: format!(
                                "agent {} does not offer kind(s) {} (it registered: {}); \
                                 `chaos-agent doctor` on that host says why",
                                a.name,
                                missing.join(", "),
                                offered.unwrap_or_default().join(", ")
                            ),
                        });
                    }
                }
            }
        }
    }
    if !problems.is_empty() {
        return Err(ApiErr::invalid(
            "the run request is invalid; nothing was created",
            problems,
        ));
    }
    let lease = req.lease_secs.unwrap_or(app.settings.lease.as_secs());
    let exp_text = serde_json::to_string(&exp_json).map_err(internal)?;
    let mut attempt = 0;
    let runs = loop {
        let runs: Vec<(String, String)> = targets
            .iter()
            .map(|(id, _)| (secrets::random_hex(4), id.clone()))
            .collect();
        let mut ids: Vec<&String> = runs.iter().map(|r| &r.0).collect();
        ids.sort();
        ids.dedup();
        if ids.len() != runs.len() {
            continue;
        }
        match app.db(
            |s| match s.create_runs(&runs, &name, &exp_text, lease, now_ms()) {
                Err(StoreError::Conflict(m)) => Ok(Err(m)),
                other => other.map(Ok),
            },
        )? {
            Ok(()) => break runs,
            Err(m) if attempt < 5 => {
                attempt += 1;
                tracing::debug!(%m, "run id collision; retrying");
            }
            Err(m) => return Err(ApiErr::new(ErrorCode::Internal, m)),
        }
    };
    let mut out = Vec::with_capacity(runs.len());
    for ((run_id, agent_id), (_, agent_name)) in runs.into_iter().zip(targets) {
        app.wake(&agent_id);
        tracing::info!(%run_id, %agent_id, experiment = %name, "run created");
        out.push(RunRef {
            run_id,
            agent_id,
            agent_name,
        });
    }
    Ok((StatusCode::CREATED, Json(CreateRunsResponse { runs: out })))
}

async fn list_runs(
    State(app): Shared,
    RawQuery(q): RawQuery,
    Extension(AdminOk): Extension<AdminOk>,
) -> Result<Json<RunList>, ApiErr> {
    let limit = query_u64(&q, "limit", 50)?.clamp(1, 10_000) as u32;
    let agent_id = match query_str(&q, "agent") {
        Some(a) => Some(find_agent(&app, a)?.id),
        None => None,
    };
    let state = match query_str(&q, "state") {
        Some(s) => Some(RunState::parse(s).ok_or_else(|| {
            ApiErr::new(
                ErrorCode::BadRequest,
                format!("unknown state {s:?} (pending, running, completed, failed, aborted)"),
            )
        })?),
        None => None,
    };
    let runs = app.db(|s| {
        s.list_runs(&RunFilter {
            agent_id,
            state,
            limit,
        })
    })?;
    Ok(Json(RunList { runs }))
}

fn check_run_id(run: &str) -> Result<(), ApiErr> {
    if is_run_id(run) {
        Ok(())
    } else {
        Err(ApiErr::new(ErrorCode::NotFound, format!("no run {run:?}")))
    }
}

async fn show_run(
    State(app): Shared,
    UrlPath(run): UrlPath<String>,
    Extension(AdminOk): Extension<AdminOk>,
) -> Result<Json<RunDetail>, ApiErr> {
    check_run_id(&run)?;
    app.db(|s| s.run_detail(&run))?
        .map(Json)
        .ok_or_else(|| ApiErr::new(ErrorCode::NotFound, format!("no run {run}")))
}

async fn run_logs(
    State(app): Shared,
    UrlPath(run): UrlPath<String>,
    RawQuery(q): RawQuery,
    Extension(AdminOk): Extension<AdminOk>,
) -> Result<Json<LogPage>, ApiErr> {
    check_run_id(&run)?;
    let after = query_u64(&q, "after", 0)?;
    let wait = Duration::from_secs(query_u64(&q, "wait", 0)?.min(MAX_WAIT_SECS));
    let limit = query_u64(&q, "limit", 1000)?.clamp(1, 1000) as u32;
    let deadline = Instant::now() + wait;
    loop {
        let changed = app.logs_changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let owner = app
            .db(|s| s.run_owner(&run))?
            .ok_or_else(|| ApiErr::new(ErrorCode::NotFound, format!("no run {run}")))?;
        let lines = app.db(|s| s.logs_after(&run, after, limit))?;
        let finished = owner.state.is_terminal();
        let left = deadline.saturating_duration_since(Instant::now());
        if !lines.is_empty() || finished || left.is_zero() {
            let next_after = lines.last().map(|l| l.seq).unwrap_or(after);
            return Ok(Json(LogPage {
                lines,
                next_after,
                finished,
            }));
        }
        tokio::select! {
            _ = &mut changed => {}
            _ = tokio::time::sleep(left) => {}
            _ = app.shutdown.wait() => {
                return Ok(Json(LogPage { lines: vec![], next_after: after, finished: false }));
            }
        }
    }
}

async fn abort_run(
    State(app): Shared,
    UrlPath(run): UrlPath<String>,
    Extension(AdminOk): Extension<AdminOk>,
    JsonBody(req): JsonBody<AbortRequest>,
) -> Result<Json<RunDetail>, ApiErr> {
    check_run_id(&run)?;
    req.validate()
        .map_err(|e| ApiErr::from_invalid("request", e))?;
    let reason = req
        .reason
        .unwrap_or_else(|| "aborted by the operator".into());
    app.db(|s| s.abort(&run, &reason, now_ms()))?;
    let detail = app
        .db(|s| s.run_detail(&run))?
        .ok_or_else(|| ApiErr::new(ErrorCode::NotFound, format!("no run {run}")))?;
    app.wake(&detail.summary.agent_id);
    app.logs_changed.notify_waiters();
    tracing::info!(run_id = %run, agent_id = %detail.summary.agent_id, %reason, "abort requested");
    Ok(Json(detail))
}

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

/// The TLS configuration: the server certificate and key from the state directory, ring as
/// the only crypto provider, HTTP/1.1.
pub fn tls_config(paths: &Paths) -> Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (cp, kp) = (paths.server_pem(), paths.server_key());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cp)
        .and_then(|i| i.collect())
        .map_err(|e| {
            Error(format!(
                "cannot read the server certificate {}: {e} (run `chaos-control init` first)",
                cp.display()
            ))
        })?;
    let key = PrivateKeyDer::from_pem_file(&kp)
        .map_err(|e| Error(format!("cannot read the server key {}: {e}", kp.display())))?;
    check_private(&kp);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            Error(format!(
                "TLS: the server certificate and key do not fit: {e}"
            ))
        })?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

fn check_private(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(p) {
        if m.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %p.display(), "private key is readable by others; chmod 600 it");
        }
    }
}

/// Raise the soft open-files limit to the hard limit (each agent holds a connection).
pub fn raise_nofile() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
    }
    r.rlim_cur
}

/// A server ready to run.
#[derive(Debug)]
pub struct Server {
    app: Arc<App>,
    tls: Arc<rustls::ServerConfig>,
    paths: Paths,
    database: Database,
}

impl Server {
    /// Open the store and TLS files of a state directory.
    pub fn open(paths: &Paths, settings: Settings) -> Result<Server> {
        // One process-wide provider; ring is the only one compiled in.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let database = settings
            .database
            .clone()
            .unwrap_or_else(|| Database::Sqlite(paths.db()));
        if let Database::Sqlite(db) = &database {
            if !db.exists() {
                return Err(Error(format!(
                    "{} holds no store: run `chaos-control init --state-dir {}` first",
                    paths.dir.display(),
                    paths.dir.display()
                )));
            }
        }
        let tls = Arc::new(tls_config(paths)?);
        let store = Store::open(&database)
            .map_err(|e| Error(format!("cannot open the store in {database}: {e}")))?;
        let app = Arc::new(App::new(store, settings)?);
        Ok(Server {
            app,
            tls,
            paths: paths.clone(),
            database,
        })
    }

    /// Serve on `listener` until `stop` completes; then stop taking connections, release
    /// long polls, give in-flight requests the grace period, and flush to the store.
    pub async fn run(
        self,
        listener: std::net::TcpListener,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<()> {
        listener
            .set_nonblocking(true)
            .map_err(|e| Error(format!("listener: {e}")))?;
        let addr: SocketAddr = listener
            .local_addr()
            .map_err(|e| Error(format!("listener: {e}")))?;
        let handle: axum_server::Handle<SocketAddr> = axum_server::Handle::new();
        let rustls = axum_server::tls_rustls::RustlsConfig::from_config(self.tls.clone());
        let settings = &self.app.settings;
        let limits = crate::limits::Limits::new(
            settings
                .max_connections
                .unwrap_or_else(|| crate::limits::default_max_connections(raise_nofile())),
            settings.max_connections_per_peer,
        );
        // Connections are counted (and refused over a limit) before their TLS handshake.
        // SIGHUP: read the server certificate and key again (after `cert reissue` or a CA
        // rotation step); connections already open keep theirs.
        // Registered here, before the first connection is accepted, so a SIGHUP sent once
        // the server answers never meets the default action (terminate).
        let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| Error(format!("cannot handle SIGHUP: {e}")))?;
        let reloader = {
            let rustls = rustls.clone();
            let paths = self.paths.clone();
            let mut hup = hup;
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    match tls_config(&paths) {
                        Ok(cfg) => {
                            rustls.reload_from_config(Arc::new(cfg));
                            tracing::info!("SIGHUP: server certificate reloaded");
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "SIGHUP: the server certificate was not reloaded; the old one stays in use")
                        }
                    }
                }
            })
        };
        let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(rustls)
            .handshake_timeout(settings.header_timeout)
            .acceptor(crate::limits::LimitAcceptor(limits.clone()));
        let mut server = axum_server::from_tcp(listener)
            .map_err(|e| Error(format!("listener: {e}")))?
            .acceptor(acceptor)
            .handle(handle.clone())
            // HTTP/1.1 only (as ALPN says): no un-timed protocol detection.
            .http1_only()
            .first_request_timeout(settings.header_timeout);
        server
            .http_builder()
            .http1()
            .header_read_timeout(settings.header_timeout);
        tracing::info!(
            max_connections = limits.max_total(),
            max_connections_per_peer = settings.max_connections_per_peer,
            header_timeout_s = settings.header_timeout.as_secs(),
            body_timeout_s = settings.body_timeout.as_secs(),
            "connection limits"
        );
        *self.app.limits.lock().unwrap_or_else(|p| p.into_inner()) = Some(limits);
        let app = self.app.clone();
        let sweeper = {
            let app = app.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(2));
                let mut n: u64 = 0;
                loop {
                    tick.tick().await;
                    app.sweep();
                    n += 1;
                    if n % 1800 == 1 {
                        app.prune();
                    }
                }
            })
        };
        // With PostgreSQL, other replicas' runs, aborts and log lines wake what this one holds.
        let listener_thread = match &self.database {
            Database::Postgres(url) => {
                let (app, url) = (app.clone(), url.clone());
                let t = std::thread::Builder::new()
                    .name("pg-listen".into())
                    .spawn(move || {
                        crate::store::pg::listen(&url, &app.shutdown.flag, &|h| app.heard(h))
                    })
                    .map_err(|e| Error(format!("cannot start the PostgreSQL listener: {e}")))?;
                tracing::info!(database = %self.database, "store on PostgreSQL; listening for other replicas' changes");
                Some(t)
            }
            Database::Sqlite(_) => None,
        };
        let svc = router(app.clone()).into_make_service_with_connect_info::<SocketAddr>();
        let grace = app.settings.shutdown_grace;
        let h2 = handle.clone();
        let app2 = app.clone();
        let stopper = async move {
            stop.await;
            tracing::info!("shutting down: releasing long polls, finishing requests");
            app2.shutdown.trigger();
            h2.graceful_shutdown(Some(grace));
        };
        tracing::info!(%addr, "listening (HTTPS)");
        let serve = server.serve(svc);
        tokio::pin!(serve);
        tokio::pin!(stopper);
        let mut stopped = false;
        let r = loop {
            tokio::select! {
                r = &mut serve => break r,
                _ = &mut stopper, if !stopped => { stopped = true; }
            }
        };
        sweeper.abort();
        reloader.abort();
        app.sweep();
        // The shutdown flag is set: the listener sees it within a second.
        app.shutdown.trigger();
        if let Some(t) = listener_thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        r.map_err(|e| Error(format!("server: {e}")))?;
        tracing::info!("stopped");
        Ok(())
    }

    /// The shared state (for tests).
    pub fn app(&self) -> Arc<App> {
        self.app.clone()
    }
}

impl App {
    /// The Prometheus exposition text (see [`crate::metrics`]).
    pub fn metrics_text(&self) -> Result<String> {
        let (agents, runs) = self.with_store(|s| s.counts_by_state())?;
        let lost = self.lost.lock().unwrap_or_else(|p| p.into_inner()).len() as u64;
        let (connections, refused) = self.connections();
        Ok(self.metrics.render(&crate::metrics::Snapshot {
            agents,
            lost,
            runs,
            connections: connections as u64,
            refused,
        }))
    }

    /// Connections held now and refused since start (zero before the server runs).
    pub fn connections(&self) -> (usize, u64) {
        self.limits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or((0, 0), |l| (l.held(), l.refused()))
    }

    /// Counts of (agents, runs, log lines) in the store.
    pub fn counts(&self) -> Result<(u64, u64, u64)> {
        Ok(self.with_store(|s| s.counts())?)
    }
}
