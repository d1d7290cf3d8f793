//! A real `chaos-control` server over TLS on 127.0.0.1 (ephemeral port), with a private CA
//! made by `init` in a temporary state directory, and the protocol's blocking HTTPS client.

#![allow(dead_code)]

pub mod pg;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::Duration;

use chaos_control::pki::{self, InitOptions, Paths};
use chaos_control::server::{Server, Settings};
use chaos_control::store::pg::PgTarget;
use chaos_control::store::Database;
use chaos_protocol::admin::{
    AddAgentRequest, CreateRunsRequest, CreateRunsResponse, RegistrationKey,
};
use chaos_protocol::agent::{HostFacts, RegisterRequest, RegisterResponse};
use chaos_protocol::client::{Body, Client, ClientConfig, ClientError, Method};
use serde_json::{json, Value};

pub struct Harness {
    pub dir: PathBuf,
    pub settings: Settings,
    pub addr: SocketAddr,
    pub ca: Vec<u8>,
    pub admin: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    pub app: std::sync::Arc<chaos_control::server::App>,
}

/// Whether this test binary runs its [`Harness`]es on PostgreSQL: `tests/api_postgres.rs`
/// and `tests/security_postgres.rs`, which are `tests/api.rs` and `tests/security.rs` again
/// (those suites against both stores).
pub fn on_postgres() -> bool {
    matches!(
        env!("CARGO_CRATE_NAME"),
        "api_postgres" | "security_postgres"
    )
}

fn temp_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "chaos-control-test-{}",
        chaos_control::secrets::random_hex(6)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

impl Harness {
    pub fn new() -> Harness {
        Harness::with(Settings::default())
    }

    /// A server with `settings`; its store on PostgreSQL in the test binaries that ask for it
    /// (see [`on_postgres`]) unless `settings` name one.
    pub fn with(mut settings: Settings) -> Harness {
        if on_postgres() && settings.database.is_none() {
            match pg::database() {
                Ok(url) => settings.database = Some(Database::Postgres(PgTarget { url, ca: None })),
                Err(why) => eprintln!(
                    "SKIPPED {} on PostgreSQL ({why}): on SQLite instead",
                    std::thread::current().name().unwrap_or("this test")
                ),
            }
        }
        let dir = temp_dir().join("state");
        pki::init(&InitOptions {
            state_dir: dir.clone(),
            names: vec!["localhost".into()],
            port: 8443,
            force: false,
            database: settings.database.clone(),
        })
        .unwrap();
        let paths = Paths::new(&dir);
        let ca = std::fs::read(paths.ca_pem()).unwrap();
        let admin = std::fs::read_to_string(paths.admin_token())
            .unwrap()
            .trim()
            .to_string();
        let (addr, stop, thread, app) = start(&dir, &settings);
        Harness {
            dir,
            settings,
            addr,
            ca,
            admin,
            stop: Some(stop),
            thread: Some(thread),
            app,
        }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    pub fn client(&self) -> Client {
        let mut cfg = ClientConfig::new(self.url(), self.ca.clone());
        cfg.timeout = Duration::from_secs(10);
        Client::new(cfg).unwrap()
    }

    /// Stop (gracefully) and start again on the same state directory.
    pub fn restart(&mut self) {
        self.shutdown();
        let (addr, stop, thread, app) = start(&self.dir, &self.settings);
        self.addr = addr;
        self.stop = Some(stop);
        self.thread = Some(thread);
        self.app = app;
    }

    fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }

    pub fn admin_get(&self, path: &str) -> Result<Value, ClientError> {
        self.client()
            .call::<(), Value>(Method::GET, path, Some(&self.admin), None)
    }

    pub fn admin_post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.client()
            .call(Method::POST, path, Some(&self.admin), Some(body))
    }

    pub fn add_agent(&self, name: &str) -> RegistrationKey {
        self.client()
            .call(
                Method::POST,
                "/admin/agents",
                Some(&self.admin),
                Some(&AddAgentRequest {
                    name: name.into(),
                    key_ttl_secs: None,
                }),
            )
            .unwrap()
    }

    /// Add and register an agent; returns its registration answer.
    pub fn agent(&self, name: &str) -> RegisterResponse {
        let key = self.add_agent(name);
        self.client()
            .register(&register_req(&key.registration_key))
            .unwrap()
    }

    pub fn create_run(&self, agents: &[&str]) -> CreateRunsResponse {
        self.client()
            .call(
                Method::POST,
                "/admin/runs",
                Some(&self.admin),
                Some(&CreateRunsRequest {
                    experiment: experiment(),
                    agents: agents.iter().map(|s| s.to_string()).collect(),
                    lease_secs: None,
                }),
            )
            .unwrap()
    }

    pub fn counts(&self) -> (u64, u64, u64) {
        self.app.counts().unwrap()
    }

    /// A raw call: status and body.
    pub fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: &[u8],
    ) -> (u16, Value) {
        let (s, b) = self
            .client()
            .call_raw(
                method,
                path,
                token,
                if body.is_empty() {
                    Body::None
                } else {
                    Body::Raw(body)
                },
                Duration::ZERO,
            )
            .unwrap();
        (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown();
        if let Some(p) = self.dir.parent() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

type Started = (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    JoinHandle<()>,
    std::sync::Arc<chaos_control::server::App>,
);

fn start(dir: &std::path::Path, settings: &Settings) -> Started {
    let server = Server::open(&Paths::new(dir), settings.clone()).unwrap();
    let app = server.app();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(server.run(listener, async {
            let _ = rx.await;
        }))
        .unwrap();
    });
    (addr, tx, thread, app)
}

pub fn host() -> HostFacts {
    HostFacts {
        hostname: "test-host".into(),
        agent_version: "0.1.0".into(),
        os: "Debian GNU/Linux 12".into(),
        kernel: "6.18.44".into(),
        arch: "x86_64".into(),
        // One machine per registration (the server refuses a second agent per machine).
        machine_id: chaos_control::secrets::random_hex(16),
        kinds: vec!["disk.fill".into(), "process.stop".into()],
    }
}

pub fn register_req(key: &str) -> RegisterRequest {
    RegisterRequest {
        registration_key: key.into(),
        host: host(),
    }
}

/// A valid experiment for the agent's registry.
pub fn experiment() -> Value {
    json!({
        "name": "fill-tmp",
        "steps": [{
            "name": "fill",
            "faults": [{"kind": "disk.fill", "duration": "5s", "path": "/tmp", "size": "1MiB"}]
        }]
    })
}

pub fn code(e: &ClientError) -> (u16, String) {
    match e {
        ClientError::Api { status, error } => (*status, error.code.as_str().to_string()),
        other => panic!("expected an API error, got {other}"),
    }
}

/// The real `chaos-control` binary: `init` in a temporary directory, then `serve` on a free
/// port of 127.0.0.1 with its log (stderr) in `serve-PORT.log` there. Several may serve the
/// same state directory (replicas of one PostgreSQL store): see [`Served::init`] and
/// [`Served::serve`].
pub struct Served {
    pub dir: PathBuf,
    pub addr: SocketAddr,
    pub child: std::process::Child,
    log: PathBuf,
    /// Waited for already (by [`Served::stop`]): never signalled again.
    stopped: bool,
    /// [`Served::stop`] hands the state directory over: not removed on drop.
    keep_dir: bool,
}

/// A temporary state directory (`…/state` in a directory of its own): that directory is
/// removed when this is dropped (also when a test fails), unless [`StateDir::into_path`].
pub struct StateDir(PathBuf);

impl StateDir {
    /// A new temporary state directory, not created yet (its parent is).
    pub fn fresh() -> StateDir {
        StateDir(temp_dir().join("state"))
    }

    /// Keep the directory (another owner removes it); its path.
    pub fn into_path(mut self) -> PathBuf {
        std::mem::take(&mut self.0)
    }
}

impl std::ops::Deref for StateDir {
    type Target = std::path::Path;

    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        if let Some(p) = self.0.parent().filter(|p| !p.as_os_str().is_empty()) {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// A free port of 127.0.0.1 (free when asked).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Served {
    pub fn start() -> Served {
        let dir = Served::init(&[]);
        let s = Served::serve_on(&dir, Served::init_port(&dir), &[]);
        dir.into_path(); // the server removes it
        s
    }

    /// The port `init` was given: where `serve` listens by default and the CLI's commands
    /// reach the server.
    pub fn init_port(dir: &std::path::Path) -> u16 {
        Paths::new(dir).init_info().unwrap().port
    }

    /// `init --name localhost --port P` and `extra` (e.g. `--database URL`) in a new temporary
    /// directory; the state directory.
    pub fn init(extra: &[&str]) -> StateDir {
        let dir = StateDir(temp_dir().join("state"));
        let port = free_port().to_string();
        let mut args = vec!["init", "--name", "localhost", "--port", &port];
        args.extend_from_slice(extra);
        Served::cli_in(&dir, &args);
        dir
    }

    /// `serve` on `dir` (made by [`Served::init`]) on a free port, with `extra` arguments;
    /// returns once it answers `/health`. The directory is removed when the last of the
    /// servers on it is dropped (by each, in fact: removing it twice is harmless).
    pub fn serve(dir: &std::path::Path, extra: &[&str]) -> Served {
        Served::serve_on(dir, free_port(), extra)
    }

    /// [`Served::serve`] on 127.0.0.1:`port`.
    pub fn serve_on(dir: &std::path::Path, port: u16, extra: &[&str]) -> Served {
        Served::serve_env(dir, port, extra, &[])
    }

    /// [`Served::serve_on`] with these environment variables set too.
    pub fn serve_env(
        dir: &std::path::Path,
        port: u16,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Served {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let log = dir.join(format!("serve-{}.log", addr.port()));
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_chaos-control"))
            .args(["serve", "--listen", &addr.to_string(), "--state-dir"])
            .arg(dir)
            .args(extra)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut s = Served {
            dir: dir.to_path_buf(),
            addr,
            child,
            log,
            stopped: false,
            keep_dir: false,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while s.client().health().is_err() {
            if let Ok(Some(status)) = s.child.try_wait() {
                s.stopped = true;
                panic!("serve exited ({status}):\n{}", s.log());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "serve did not answer:\n{}",
                s.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    /// Stop the server (SIGTERM, then wait) and keep its state directory; that directory.
    pub fn stop(mut self) -> StateDir {
        self.signal(libc::SIGTERM);
        let _ = self.child.wait();
        self.stopped = true;
        self.keep_dir = true;
        StateDir(self.dir.clone())
    }

    /// Run `chaos-control ARGS --state-dir DIR`: its output, whatever the exit status.
    pub fn cli_output(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_chaos-control"))
            .args(args)
            .arg("--state-dir")
            .arg(dir)
            .output()
            .unwrap()
    }

    /// Run `chaos-control ARGS --state-dir DIR`, which must succeed: its stdout.
    pub fn cli_in(dir: &std::path::Path, args: &[&str]) -> String {
        let out = Served::cli_output(dir, args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Run a `chaos-control` command on this state directory; its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        Served::cli_in(&self.dir, args)
    }

    pub fn ca(&self) -> Vec<u8> {
        std::fs::read(self.dir.join("ca.pem")).unwrap()
    }

    pub fn client(&self) -> Client {
        let mut cfg =
            ClientConfig::new(format!("https://127.0.0.1:{}", self.addr.port()), self.ca());
        cfg.timeout = Duration::from_secs(10);
        Client::new(cfg).unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Send a signal to the server (a process this test started, not yet waited for).
    pub fn signal(&self, sig: i32) {
        if self.stopped {
            return;
        }
        // SAFETY: kill(2) on the pid of our own child, not reaped yet.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.signal(libc::SIGTERM);
        if !self.stopped {
            let _ = self.child.wait();
        }
        if !self.keep_dir {
            if let Some(p) = self.dir.parent() {
                let _ = std::fs::remove_dir_all(p);
            }
        }
    }
}

/// Log lines `from..=to` (seq, a fixed time base, `line N`), as an agent sends them.
pub fn lines(from: u64, to: u64) -> chaos_protocol::run::LogBatch {
    use chaos_protocol::run::{LogBatch, LogLevel, LogLine};
    LogBatch {
        lines: (from..=to)
            .map(|seq| LogLine {
                seq,
                at_ms: 1_700_000_000_000 + seq,
                level: LogLevel::Info,
                message: format!("line {seq}"),
            })
            .collect(),
    }
}
