//! `chaos-agent daemon`: the service. It recovers what the journal holds, then long-polls the
//! control plane over TLS with its rotating token, runs each experiment through the same
//! engine as `chaos-agent run` (one at a time), streams status and log lines through an
//! on-disk outbox, sends the result — and reverts on abort, on a lost lease, on SIGTERM, and
//! when its identity is refused.
//!
//! Threads (all scoped to [`run`]):
//! - the **poll loop** (this thread): token rotation, `GET tasks?wait=…`, dispatch;
//! - the **runner**: runs queued experiments through the [`Session`];
//! - the **sender**: flushes the outbox in order, with backoff;
//! - the **supervisor**: the lease, the systemd watchdog, `STATUS=` lines;
//! - the **signal** thread: SIGTERM/SIGINT stop (revert, flush, exit 0), SIGHUP reloads.

pub(crate) mod config;
mod host;
mod identity;
pub(crate) mod notify;
mod outbox;
mod runs;
mod sender;
mod supervisor;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chaos_engine::runner::AbortHandle;
use chaos_engine::Session;
use chaos_protocol::agent::{RegisterRequest, Task};
use chaos_protocol::client::{Client, ClientConfig, ClientError};
use chaos_protocol::run::{LogLevel, RunState, StatusUpdate};
use chaos_protocol::ErrorCode;
use fault_core::Registry;

use config::Config;
use identity::Identity;
use notify::Sd;
use outbox::Outbox;
use runs::{Queue, Reporter, RunStore};

/// Debug builds die here when `CHAOS_AGENT_CRASH_AT` names the point (crash tests).
pub(crate) fn failpoint(point: &str) {
    chaos_engine::failpoint::hit(point);
}

/// How long SIGTERM waits for the outbox to reach the control plane after reverting.
const FLUSH_ON_STOP: Duration = Duration::from_secs(10);
/// Transport errors and 5xx are retried after 1 s, doubling up to this, with jitter.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The run in progress.
struct Active {
    run_id: String,
    abort: AbortHandle,
    lease: Duration,
}

/// What every thread of the daemon shares.
struct Daemon<'s, 'r> {
    session: &'s Session<'r>,
    config_path: PathBuf,
    config: RwLock<Config>,
    client: RwLock<Client>,
    identity: RwLock<Option<Arc<Identity>>>,
    outbox: Outbox,
    store: RunStore,
    queue: Queue,
    active: Mutex<Option<Active>>,
    /// When a call to the control plane last succeeded.
    last_ok: Mutex<Instant>,
    /// When the control plane last failed after a success (for `STATUS=`). An `Instant`
    /// (`CLOCK_MONOTONIC`), like every deadline of the daemon: a wall-clock step (a
    /// `time.offset` fault, NTP) must not make it jump.
    unreachable_since: Mutex<Option<Instant>>,
    /// Why the agent stopped talking to the control plane (identity refused), if it did.
    lockout: Mutex<Option<String>>,
    /// Stops everything (SIGTERM); runs are children of it.
    stop: AbortHandle,
    reload: AtomicBool,
    runner_done: AtomicBool,
    /// The poll loop's heartbeat: the instant by which it must beat again.
    beat_due: Mutex<Instant>,
    /// The server's long-poll wait (from registration); the configuration may override.
    server_poll_wait: Mutex<u64>,
    sd: Sd,
}

/// Options from the command line.
#[derive(Debug)]
pub(crate) struct Options {
    pub(crate) config: PathBuf,
    pub(crate) state_dir: PathBuf,
    /// Whether `state_dir` was given on the command line or in the environment (it then
    /// wins over the configuration's `[agent] state_dir`).
    pub(crate) state_dir_explicit: bool,
}

/// Run the daemon until SIGTERM. Returns the exit status.
pub(crate) fn run(registry: &Registry, opts: Options) -> anyhow::Result<u8> {
    let (config, warnings) = match Config::load(&opts.config) {
        Ok(c) => c,
        Err(e) => {
            init_logging(None);
            let hint = if e.kind() == config::ConfigErrorKind::NoConfig {
                "\n`chaos-control init` prints the [control_plane] section to put in /etc/chaos-agent/config.d/20-control.toml (packaging/agent.toml.sample documents every key)"
            } else {
                ""
            };
            eprintln!(
                "chaos-agent daemon: the configuration is unusable ({} problem(s)); nothing was touched:\n{e}{hint}",
                e.problems().len().max(1)
            );
            return Ok(crate::exit::INVALID);
        }
    };
    init_logging(Some(&config));
    for w in &warnings {
        tracing::warn!("{w}");
    }
    tracing::info!(
        files = ?config.sources,
        log_format = config.agent.log_format.as_str(),
        control_plane = %config.control_plane.url,
        "configuration read"
    );
    let state_dir = config
        .agent
        .state_dir(opts.state_dir_explicit.then_some(opts.state_dir.as_path()));
    host::log_availability(registry);
    let sd = Sd::from_env();
    sd.status("recovering what the journal holds");
    let session = Session::open(&state_dir, registry)?;
    for w in session.warnings() {
        tracing::warn!("{w}");
    }
    let recovery = session.recover()?;
    for item in &recovery.items {
        tracing::warn!(fault_id = %item.fault_id, kind = %item.kind, outcome = ?item.outcome, detail = %item.detail, "recovered at start");
    }
    if !recovery.clean() {
        tracing::error!(
            "THE HOST IS NOT CLEAN after recovery: `chaos-agent status` lists what needs a person"
        );
    }
    let outbox = Outbox::open(&state_dir, config.agent.outbox_max_bytes)?;
    let store = RunStore::open(&state_dir)?;
    runs::report_interrupted(&session, &store, &outbox, &recovery);
    store.compact();
    outbox.forget_sent(|run_id| store.get(run_id).is_some());
    let client = make_client(&config)?;
    let identity = match Identity::load(&state_dir)? {
        Some(id) if id.url() == config.control_plane.url => Some(Arc::new(id)),
        Some(_) => {
            tracing::warn!("the configured control plane URL changed: registering again");
            None
        }
        None => None,
    };
    let daemon = Daemon {
        session: &session,
        config_path: opts.config.clone(),
        config: RwLock::new(config),
        client: RwLock::new(client),
        identity: RwLock::new(identity),
        outbox,
        store,
        queue: Queue::default(),
        active: Mutex::new(None),
        last_ok: Mutex::new(Instant::now()),
        unreachable_since: Mutex::new(None),
        lockout: Mutex::new(None),
        stop: AbortHandle::new(),
        reload: AtomicBool::new(false),
        runner_done: AtomicBool::new(false),
        beat_due: Mutex::new(Instant::now() + Duration::from_secs(60)),
        server_poll_wait: Mutex::new(30),
        sd,
    };
    // Ready once the host is recovered: the control plane may be far away or down, and
    // `systemctl start` must not wait for it.
    daemon
        .sd
        .ready(Some("recovered; connecting to the control plane"));
    tracing::info!(state_dir = %state_dir.display(), "chaos-agent daemon ready");
    let signals = install_signals()?;
    std::thread::scope(|s| {
        let d = &daemon;
        s.spawn(move || signal_loop(d, signals));
        s.spawn(move || d.supervise());
        s.spawn(move || d.poll_loop());
        let sender = s.spawn(move || d.send_loop());
        let runner = s.spawn(move || d.run_loop());
        // Stopping ends here: the run reverted, the outbox flushed (or its time is up).
        let _ = runner.join();
        let _ = sender.join();
        tracing::info!("chaos-agent daemon stopped");
        // The poll loop may sit in a long poll for up to its wait, and the signal thread
        // waits for signals: neither holds anything that needs closing (the journal and the
        // outbox are on disk), so do not wait for them.
        std::process::exit(0)
    })
}

/// Diagnostics on stderr (the journal, under systemd): the configuration's format and
/// level; `CHAOS_AGENT_LOG` wins over the level.
fn init_logging(config: Option<&Config>) {
    let level = std::env::var("CHAOS_AGENT_LOG")
        .ok()
        .or_else(|| config.map(|c| c.agent.log_level.clone()))
        .unwrap_or_else(|| config::DEFAULT_LOG_LEVEL.to_string());
    let filter = tracing_subscriber::EnvFilter::try_new(&level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match config.map(|c| c.agent.log_format) {
        Some(config::LogFormat::Json) => b.json().flatten_event(true).try_init(),
        _ => b.try_init(),
    };
}

fn make_client(config: &Config) -> anyhow::Result<Client> {
    let cp = &config.control_plane;
    let mut cc = ClientConfig::new(cp.url.clone(), cp.ca_pem.clone());
    cc.ca_sha256 = cp.ca_sha256.clone();
    cc.proxy_from_env = cp.proxy_from_env;
    cc.user_agent = concat!("chaos-agent/", env!("CARGO_PKG_VERSION")).into();
    Client::new(cc).map_err(|e| anyhow::anyhow!("{e}"))
}

type Signals = signal_hook::iterator::Signals;

fn install_signals() -> anyhow::Result<Signals> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    Signals::new([SIGINT, SIGTERM, SIGHUP]).context("installing signal handlers")
}

fn signal_loop(d: &Daemon<'_, '_>, mut signals: Signals) {
    use signal_hook::consts::SIGHUP;
    for sig in signals.forever() {
        if sig == SIGHUP {
            d.reload.store(true, Ordering::SeqCst);
            continue;
        }
        let name = if sig == signal_hook::consts::SIGTERM {
            "SIGTERM"
        } else {
            "SIGINT"
        };
        if !d.stop.is_aborted() {
            tracing::info!("{name}: aborting any run, reverting every fault, then stopping");
            d.sd.stopping();
            // Reverting and flushing may take a while: tell systemd (the watchdog is off
            // while stopping).
            d.sd.extend_timeout(Duration::from_secs(200));
            d.stop.abort(format!("the agent is stopping ({name})"));
            d.queue.wake();
            d.outbox.nudge();
        }
    }
}

/// A failed call, sorted by what to do about it.
enum CallError {
    /// No identity, or locked out: nothing can be sent now.
    NoIdentity,
    /// Worth retrying later (transport, 5xx).
    Retry(ClientError),
    /// Refused for good (4xx other than the identity ones).
    Refused(ClientError),
}

fn fatal_for_identity(e: &ClientError) -> Option<&'static str> {
    match e.code()? {
        ErrorCode::IdentityLocked => Some("the control plane locked this agent's identity (a copy of its state directory used an older token)"),
        ErrorCode::AgentRevoked => Some("the operator revoked this agent"),
        ErrorCode::TokenExpired => Some("the access token expired (the agent was away longer than its lifetime)"),
        ErrorCode::InvalidToken => Some("the control plane does not know this agent's token"),
        _ => None,
    }
}

impl Daemon<'_, '_> {
    fn identity(&self) -> Option<Arc<Identity>> {
        self.identity
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn client(&self) -> Client {
        self.client
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn locked_out(&self) -> Option<String> {
        self.lockout
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn ok(&self) {
        *self.last_ok.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        *self
            .unreachable_since
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn unreachable(&self) {
        self.unreachable_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(Instant::now);
    }

    /// One authenticated call.
    fn call<T>(
        &self,
        f: impl FnOnce(&Client, &str, &str) -> Result<T, ClientError>,
    ) -> Result<T, CallError> {
        if self.locked_out().is_some() {
            return Err(CallError::NoIdentity);
        }
        let Some(id) = self.identity() else {
            return Err(CallError::NoIdentity);
        };
        let client = self.client();
        match id.with_token(|agent, token| f(&client, agent, token)) {
            Ok(v) => {
                self.ok();
                Ok(v)
            }
            Err(e) => {
                if let Some(why) = fatal_for_identity(&e) {
                    self.lock_out(format!("{why} ({})", e.code().map_or("", |c| c.as_str())));
                    Err(CallError::NoIdentity)
                } else if e.is_retryable() {
                    self.unreachable();
                    Err(CallError::Retry(e))
                } else {
                    // The control plane answered: the link is fine.
                    self.ok();
                    Err(CallError::Refused(e))
                }
            }
        }
    }

    /// The control plane refuses this identity: revert any run, stop polling, say why, and
    /// wait for a new registration key (SIGHUP re-reads the configuration).
    fn lock_out(&self, why: String) {
        let mut l = self.lockout.lock().unwrap_or_else(|e| e.into_inner());
        if l.is_some() {
            return;
        }
        tracing::error!("{why}: reverting any run and waiting for a new registration key (chaos-control agents rekey NAME, then put the key in the configuration and `systemctl reload chaos-agent`)");
        *l = Some(why.clone());
        drop(l);
        self.abort_active(None, &why);
    }

    fn is_active(&self, run_id: &str) -> bool {
        self.active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|a| a.run_id == run_id)
    }

    fn abort_active(&self, run_id: Option<&str>, reason: &str) -> bool {
        let a = self.active.lock().unwrap_or_else(|e| e.into_inner());
        match a.as_ref() {
            Some(a) if run_id.is_none_or(|r| r == a.run_id) => {
                if !a.abort.is_aborted() {
                    tracing::warn!(run_id = %a.run_id, "{reason}");
                }
                a.abort.abort(reason);
                true
            }
            _ => false,
        }
    }

    fn sleep(&self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end && !self.stop.is_aborted() && !self.reload.load(Ordering::SeqCst)
        {
            std::thread::sleep((end - Instant::now()).min(Duration::from_millis(100)));
        }
    }

    fn beat(&self, within: Duration) {
        *self.beat_due.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now() + within;
    }

    // ---- the poll loop ----

    fn poll_loop(&self) {
        let mut backoff = Backoff::default();
        while !self.stop.is_aborted() {
            self.beat(Duration::from_secs(5));
            if self.reload.swap(false, Ordering::SeqCst) {
                self.reload_config();
            }
            if self.identity().is_none() || self.locked_out().is_some() {
                if self.locked_out().is_none() {
                    self.register();
                }
                if self.identity().is_none() || self.locked_out().is_some() {
                    self.sleep(Duration::from_secs(1));
                    continue;
                }
            }
            if let Err(wait) = self.rotate_if_due(&mut backoff) {
                self.sleep(wait);
                continue;
            }
            let wait = self.poll_wait();
            let timeout = wait + Duration::from_secs(45);
            self.beat(timeout);
            match self.call(|c, agent, token| c.tasks(agent, token, wait)) {
                Ok(resp) => {
                    backoff.reset();
                    for t in resp.tasks {
                        self.dispatch(t);
                    }
                }
                Err(CallError::NoIdentity) => {}
                Err(CallError::Retry(e)) => {
                    let d = backoff.next();
                    tracing::warn!(error = %e, retry_in_ms = d.as_millis() as u64, "long poll failed");
                    self.beat(d + Duration::from_secs(5));
                    self.sleep(d);
                }
                Err(CallError::Refused(e)) => {
                    let d = backoff.next();
                    tracing::error!(error = %e, "the control plane refused the long poll");
                    self.beat(d + Duration::from_secs(5));
                    self.sleep(d);
                }
            }
        }
    }

    /// How long to hold the long poll: the configured (or server's) wait, and while a run
    /// is active or waiting a third of its lease, so a healthy link never lets a lease run
    /// out (a run just received counts too: the poll that follows its delivery is in flight
    /// when the run starts, and the lease counts from then); never past the time the token
    /// is due for rotation.
    fn poll_wait(&self) -> Duration {
        let server = *self
            .server_poll_wait
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut w = self
            .config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .agent
            .poll_wait(server);
        // The queue first, then the run in progress: a run moves from one to the other under
        // the queue's lock (Queue::pop_with), so it is seen in one of them.
        if let Some(l) = self.queue.min_lease() {
            w = w.min(l / 3);
        }
        if let Some(a) = self
            .active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            w = w.min(a.lease / 3);
        }
        // Back in time to rotate the token: rotation happens between polls, and a poll that
        // outlasts the token's half-life (a wait of 30 s with --token-ttl 1m) could return
        // after the token expired, locking the agent out.
        if let Some(id) = self.identity() {
            w = w.min(id.rotate_in());
        }
        if let Some(wd) = self.sd.watchdog {
            w = w.min(wd);
        }
        w.clamp(
            Duration::from_secs(1),
            Duration::from_secs(chaos_protocol::MAX_WAIT_SECS),
        )
    }

    fn rotate_if_due(&self, backoff: &mut Backoff) -> Result<(), Duration> {
        let Some(id) = self.identity() else {
            return Ok(());
        };
        if !id.rotate_in().is_zero() {
            return Ok(());
        }
        let client = self.client();
        match id.rotate(|agent, token| client.rotate(agent, token)) {
            Ok(generation) => {
                self.ok();
                tracing::info!(generation, "access token rotated");
                Ok(())
            }
            Err(identity::RotateError::Call(e)) => {
                if let Some(why) = fatal_for_identity(&e) {
                    self.lock_out(why.to_string());
                    return Err(Duration::from_secs(1));
                }
                if e.is_retryable() {
                    self.unreachable();
                } else {
                    self.ok();
                }
                let d = backoff.next();
                tracing::warn!(error = %e, retry_in_ms = d.as_millis() as u64, "token rotation failed; the current token stays in use");
                Err(d)
            }
            Err(identity::RotateError::Persist(e)) => {
                let d = backoff.next();
                tracing::error!(error = %format!("{e:#}"), "cannot save the rotated token; the current token stays in use");
                Err(d)
            }
        }
    }

    fn dispatch(&self, task: Task) {
        // Run ids name files in the state directory and parts of host-side names: only
        // what the protocol allows (8 lowercase hex digits) is accepted.
        let run_id = match &task {
            Task::Run(t) => &t.run_id,
            Task::Abort(t) => &t.run_id,
        };
        if run_id.len() != 8
            || !run_id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            tracing::error!(run_id = %runs::short(run_id), "ignored a task with an invalid run id (the protocol's run ids are 8 lowercase hex digits)");
            return;
        }
        match task {
            Task::Run(t) => {
                // Queue first, then active: the runner marks a run active before it leaves
                // the queue's lock (`pop_with`), so a run being taken is seen in one of them.
                if self.queue.contains(&t.run_id)
                    || self.is_active(&t.run_id)
                    || self.store.get(&t.run_id).is_some()
                {
                    return; // delivered again: runs are idempotent by run id
                }
                tracing::info!(run_id = %t.run_id, "run received");
                self.queue.push(t);
            }
            Task::Abort(t) => {
                let reason = abort_reason(&t.reason);
                // Queue first, then active (see above): a run the runner is taking right now
                // is aborted, never reported as "never started" and then run anyway.
                let queued = self.queue.remove(&t.run_id).is_some();
                if !queued && self.abort_active(Some(&t.run_id), &reason) {
                    return;
                }
                let rep = Reporter::new(&t.run_id, &self.outbox);
                if queued {
                    rep.log(
                        LogLevel::Info,
                        format!("{reason} before it started; nothing was changed"),
                    );
                } else if self.store.get(&t.run_id).is_some() {
                    return; // finished: its result is on its way
                } else {
                    rep.log(
                        LogLevel::Info,
                        format!(
                            "{reason}: this agent never started run {}; nothing was changed",
                            t.run_id
                        ),
                    );
                }
                rep.status(StatusUpdate {
                    state: RunState::Aborted,
                    step: None,
                    faults: Vec::new(),
                    message: Some(runs::short(&reason)),
                });
            }
        }
    }

    // ---- registration and reload ----

    fn register(&self) {
        let cfg = self.config.read().unwrap_or_else(|e| e.into_inner());
        let Some(key) = cfg.control_plane.registration_key.clone() else {
            drop(cfg);
            self.lock_out("this agent has no identity yet and the configuration has no registration_key (chaos-control agents add NAME prints one)".into());
            return;
        };
        let url = cfg.control_plane.url.clone();
        drop(cfg);
        let req = RegisterRequest {
            registration_key: key.expose().to_string(),
            host: host::facts(self.session.registry()),
        };
        match self.client().register(&req) {
            Ok(resp) => {
                self.ok();
                let state_dir = self.session.state_dir();
                *self
                    .server_poll_wait
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = resp.settings.poll_wait_secs;
                match Identity::create(state_dir, &url, resp) {
                    Ok(id) => {
                        tracing::info!(agent_id = %id.agent_id(), name = %id.name(), "registered with the control plane");
                        *self.identity.write().unwrap_or_else(|e| e.into_inner()) =
                            Some(Arc::new(id));
                    }
                    Err(e) => {
                        self.lock_out(format!("registered, but cannot save the identity: {e:#}; ask for a new key (chaos-control agents rekey NAME)"));
                    }
                }
            }
            Err(e) if e.is_retryable() => {
                self.unreachable();
                tracing::warn!(error = %e, "cannot register yet; retrying");
                self.sleep(Duration::from_secs(5));
            }
            Err(e) => {
                self.lock_out(format!("registration refused: {e}"));
            }
        }
    }

    fn reload_config(&self) {
        self.sd.reloading();
        match Config::load(&self.config_path) {
            Ok((cfg, warnings)) => {
                for w in warnings {
                    tracing::warn!("{w}");
                }
                match make_client(&cfg) {
                    Ok(c) => *self.client.write().unwrap_or_else(|e| e.into_inner()) = c,
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "new configuration not used")
                    }
                }
                let new_key = cfg.control_plane.registration_key.is_some();
                let url_changed = self
                    .identity()
                    .is_some_and(|i| i.url() != cfg.control_plane.url);
                *self.config.write().unwrap_or_else(|e| e.into_inner()) = cfg;
                let locked = self.locked_out().is_some();
                if (locked || url_changed || self.identity().is_none()) && new_key {
                    tracing::info!(
                        "configuration re-read: registering with the registration key it holds"
                    );
                    let _ = identity::remove(self.session.state_dir());
                    *self.identity.write().unwrap_or_else(|e| e.into_inner()) = None;
                    *self.lockout.lock().unwrap_or_else(|e| e.into_inner()) = None;
                } else {
                    tracing::info!("configuration re-read");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "configuration not re-read; the previous one stays")
            }
        }
        self.sd.ready(None);
    }

    // ---- the runner ----

    fn run_loop(&self) {
        while !self.stop.is_aborted() {
            let abort = self.stop.child();
            // Active before it leaves the queue: poll_wait() always sees its lease.
            let start = |task: &chaos_protocol::agent::RunTask| {
                *self.active.lock().unwrap_or_else(|e| e.into_inner()) = Some(Active {
                    run_id: task.run_id.clone(),
                    abort: abort.clone(),
                    lease: runs::lease(task),
                });
                // The lease counts from the start of the run.
                *self.last_ok.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
            };
            let Some(task) = self.queue.pop_with(Duration::from_millis(500), start) else {
                continue;
            };
            if self.stop.is_aborted() {
                // not started: the control plane hands it out again
                *self.active.lock().unwrap_or_else(|e| e.into_inner()) = None;
                break;
            }
            let cfg = self
                .config
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let (experiment, spared) = host::spare_control_plane(&task.experiment, &cfg);
            if let Some(note) = spared {
                Reporter::new(&task.run_id, &self.outbox).log(LogLevel::Info, note);
            }
            runs::execute(
                self.session,
                &self.store,
                &self.outbox,
                &task,
                &experiment,
                &abort,
            );
            *self.active.lock().unwrap_or_else(|e| e.into_inner()) = None;
            self.outbox.nudge();
        }
        self.runner_done.store(true, Ordering::SeqCst);
        self.outbox.nudge();
    }
}

/// Exponential backoff from 1 s to [`MAX_BACKOFF`], each delay jittered to 50–100 %.
#[derive(Debug, Default)]
struct Backoff {
    n: u32,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let base = Duration::from_secs(1)
            .saturating_mul(1 << self.n.min(10))
            .min(MAX_BACKOFF);
        self.n += 1;
        let r = u64::from_str_radix(&fault_core::host::random_hex(2), 16).unwrap_or(0);
        base / 2 + base / 2 * (r as u32) / 65535
    }
    fn reset(&mut self) {
        self.n = 0;
    }
}

/// The reason a run is aborted with, from the operator's (the abort task's, or a status or
/// log answer's: both give the same text, so the first to arrive wins nothing).
pub(crate) fn abort_reason(operator: &str) -> String {
    if operator.is_empty() {
        "aborted by the operator".to_string()
    } else if operator.starts_with("aborted") {
        operator.to_string()
    } else {
        format!("aborted by the operator: {operator}")
    }
}
