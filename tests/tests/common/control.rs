//! A control plane and daemons for end-to-end tests of `chaos-agent daemon`: a real
//! `chaos-control serve` process (or, for access tokens shorter than `serve` accepts, the
//! same server in this process) over TLS on 127.0.0.1, its command line for the operator's
//! view, and `chaos-agent daemon` processes configured as `chaos-control init` says, each
//! with its own configuration directory, log file and systemd notification socket.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fault_core::testing::TempDir;
use serde_json::Value;

use super::{agent_bin, control_bin};

/// A port on 127.0.0.1 that nothing uses right now (tests run in parallel, so each asks
/// instead of using a fixed number), below the kernel's ephemeral range when there is room:
/// the server binds it a moment later, and again after a restart, and an outgoing
/// connection of any process may take a port of the ephemeral range as its own meanwhile.
pub fn free_port() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if low > 12_000 {
        let span = u32::from(low) - 10_000;
        for _ in 0..100 {
            let r = u32::from_str_radix(&fault_core::host::random_hex(4), 16).unwrap();
            let port = (10_000 + r % span) as u16;
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// Poll `f` every `every` until it gives a value; past `limit`, panic with `what` and
/// `diag()` (the processes' logs). Each check is of the real condition.
pub fn wait_until<T>(
    what: &str,
    limit: Duration,
    every: Duration,
    diag: &dyn Fn() -> String,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= end {
            panic!("timed out after {limit:?} waiting for {what}\n{}", diag());
        }
        std::thread::sleep(every);
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let skip = lines.len().saturating_sub(n);
    let mut out = String::new();
    if skip > 0 {
        out.push_str(&format!("[… {skip} earlier lines]\n"));
    }
    for l in &lines[skip..] {
        out.push_str(l);
        out.push('\n');
    }
    out
}

fn secs(d: Duration) -> String {
    assert_eq!(d.subsec_nanos(), 0, "whole seconds only: {d:?}");
    format!("{}s", d.as_secs())
}

// ---- server logs of in-process servers ----

type Buf = Arc<Mutex<Vec<u8>>>;

/// Log buffers of in-process servers, by the name of the threads they run on.
static LOGS: Mutex<BTreeMap<String, Buf>> = Mutex::new(BTreeMap::new());

struct ByThread;

struct ThreadLog(Option<Buf>);

impl std::io::Write for ThreadLog {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if let Some(buf) = &self.0 {
            buf.lock().unwrap_or_else(|e| e.into_inner()).extend(b);
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for ByThread {
    type Writer = ThreadLog;
    fn make_writer(&'a self) -> ThreadLog {
        let name = std::thread::current().name().map(str::to_string);
        ThreadLog(name.and_then(|n| {
            LOGS.lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&n)
                .cloned()
        }))
    }
}

fn capture_logs(thread_name: &str) -> Buf {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "info,chaos_control=debug",
            ))
            .with_ansi(false)
            .with_writer(ByThread)
            .try_init();
    });
    let buf = Buf::default();
    LOGS.lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(thread_name.to_string(), buf.clone());
    buf
}

// ---- the control plane ----

/// How the control plane serves.
#[derive(Debug, Clone)]
pub struct Options {
    /// `--poll-wait`: the long-poll wait agents are told to use.
    pub poll_wait: Duration,
    /// `--lease`: the default lease of a run (the server's default when `None`).
    pub lease: Option<Duration>,
    /// `--token-ttl`. `serve` refuses less than 1 minute; a shorter one runs the same server
    /// code (`chaos_control::server::Server`) in this process instead, which then cannot be
    /// killed with a signal.
    pub token_ttl: Option<Duration>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            poll_wait: Duration::from_secs(5),
            lease: None,
            token_ttl: None,
        }
    }
}

enum Serving {
    Stopped,
    Process(Child),
    InProcess {
        stop: tokio::sync::oneshot::Sender<()>,
        thread: std::thread::JoinHandle<()>,
    },
}

/// A control plane: `chaos-control init` in a temporary state directory, then `serve` on a
/// free port of 127.0.0.1 (the certificate names `localhost`).
pub struct ControlPlane {
    dir: TempDir,
    /// The state directory (`--state-dir`).
    pub state: PathBuf,
    pub port: u16,
    /// The CA fingerprint `init` printed.
    pub ca_sha256: String,
    opts: Options,
    serving: Serving,
    /// How many times it was started (each process life logs to its own file).
    lives: u32,
    in_process_log: Option<Buf>,
}

impl ControlPlane {
    /// Initialise and serve.
    pub fn start(opts: Options) -> ControlPlane {
        let dir = TempDir::new("chaos-e2e-control");
        let state = dir.path().join("state");
        let port = free_port();
        let out = Command::new(control_bin())
            .arg("--state-dir")
            .arg(&state)
            .args(["init", "--name", "localhost", "--port", &port.to_string()])
            .output()
            .expect("run chaos-control init");
        let text = super::text(&out);
        assert!(out.status.success(), "chaos-control init failed:\n{text}");
        let ca_sha256 = text
            .lines()
            .skip_while(|l| !l.starts_with("CA SHA-256 fingerprint:"))
            .nth(1)
            .map(|l| l.trim().to_string())
            .unwrap_or_else(|| panic!("no fingerprint in init's output:\n{text}"));
        assert_eq!(ca_sha256.len(), 95, "fingerprint {ca_sha256:?}");
        let mut cp = ControlPlane {
            dir,
            state,
            port,
            ca_sha256,
            opts,
            serving: Serving::Stopped,
            lives: 0,
            in_process_log: None,
        };
        cp.serve();
        cp
    }

    fn in_process(&self) -> bool {
        self.opts
            .token_ttl
            .is_some_and(|t| t < Duration::from_secs(60))
    }

    fn log_path(&self, life: u32) -> PathBuf {
        self.dir.path().join(format!("serve-{life}.log"))
    }

    /// `chaos-control serve` on the same state directory and port (again, after a kill).
    pub fn serve(&mut self) {
        assert!(matches!(self.serving, Serving::Stopped), "already serving");
        self.lives += 1;
        if self.in_process() {
            self.serve_in_process();
            return;
        }
        let log = std::fs::File::create(self.log_path(self.lives)).expect("create serve log");
        let mut cmd = Command::new(control_bin());
        cmd.arg("--state-dir")
            .arg(&self.state)
            .args(["serve", "--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--poll-wait", &secs(self.opts.poll_wait)])
            .args(["--lost-after", "10m"]);
        if let Some(l) = self.opts.lease {
            cmd.args(["--lease", &secs(l)]);
        }
        if let Some(t) = self.opts.token_ttl {
            cmd.args(["--token-ttl", &secs(t)]);
        }
        let child = cmd
            .env("RUST_LOG", "info,chaos_control=debug")
            .env_remove("CHAOS_CONTROL_LISTEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn chaos-control serve");
        self.serving = Serving::Process(child);
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if let Serving::Process(c) = &mut self.serving {
                if let Some(st) = c.try_wait().expect("try_wait") {
                    panic!("chaos-control serve exited ({st}):\n{}", self.log());
                }
            }
            let text = std::fs::read_to_string(self.log_path(self.lives)).unwrap_or_default();
            if text.contains("listening (HTTPS)") {
                return;
            }
            assert!(
                Instant::now() < end,
                "chaos-control serve did not listen within 30 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn serve_in_process(&mut self) {
        use chaos_control::pki::Paths;
        use chaos_control::server::{Server, Settings};
        let settings = Settings {
            token_ttl: self.opts.token_ttl.expect("token ttl"),
            poll_wait: self.opts.poll_wait,
            lease: self.opts.lease.unwrap_or(Settings::default().lease),
            lost_after: Duration::from_secs(600),
            ..Settings::default()
        };
        let server = Server::open(&Paths::new(&self.state), settings).expect("open the server");
        let listener = std::net::TcpListener::bind(("127.0.0.1", self.port))
            .unwrap_or_else(|e| panic!("bind 127.0.0.1:{}: {e}", self.port));
        let name = format!("control-{}-{}", self.port, self.lives);
        self.in_process_log = Some(capture_logs(&name));
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name(name)
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                rt.block_on(server.run(listener, async {
                    let _ = rx.await;
                }))
                .expect("the in-process server failed");
            })
            .expect("spawn the server thread");
        self.serving = Serving::InProcess { stop, thread };
    }

    /// SIGKILL the server process: no goodbye to anyone.
    pub fn kill9(&mut self) {
        match std::mem::replace(&mut self.serving, Serving::Stopped) {
            Serving::Process(mut c) => {
                c.kill().expect("SIGKILL chaos-control serve");
                c.wait().expect("reap chaos-control serve");
            }
            _ => panic!("only a server process can be killed"),
        }
    }

    fn stop(&mut self) {
        match std::mem::replace(&mut self.serving, Serving::Stopped) {
            Serving::Stopped => {}
            Serving::Process(mut c) => {
                let _ = c.kill();
                let _ = c.wait();
            }
            Serving::InProcess { stop, thread } => {
                let _ = stop.send(());
                let _ = thread.join();
            }
        }
    }

    /// Everything the server logged, every life.
    pub fn log(&self) -> String {
        if let Some(buf) = &self.in_process_log {
            let b = buf.lock().unwrap_or_else(|e| e.into_inner());
            return format!(
                "--- control plane (in-process) log ---\n{}",
                tail(&String::from_utf8_lossy(&b), 200)
            );
        }
        let mut out = String::new();
        for life in 1..=self.lives {
            let text = std::fs::read_to_string(self.log_path(life)).unwrap_or_default();
            out.push_str(&format!(
                "--- chaos-control serve, life {life} ---\n{}",
                tail(&text, 200)
            ));
        }
        out
    }

    /// `chaos-control --state-dir D ARGS…`.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(control_bin())
            .arg("--state-dir")
            .arg(&self.state)
            .args(args)
            .env_remove("CHAOS_CONTROL_URL")
            .env_remove("CHAOS_CONTROL_CA")
            .env_remove("CHAOS_CONTROL_ADMIN_TOKEN_FILE")
            .output()
            .expect("run chaos-control")
    }

    /// The command's stdout; panics with its output and the server's log if it fails.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "chaos-control {args:?} failed ({}):\n{}\n{}",
            out.status,
            super::text(&out),
            self.log()
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// The command with `--json`, parsed.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let text = self.cli_ok(&a);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{a:?}: bad JSON ({e}):\n{text}"))
    }

    /// `agents add NAME`: the one-time registration key.
    pub fn add_agent(&self, name: &str) -> String {
        let v = self.json(&["agents", "add", name]);
        v["registration_key"]
            .as_str()
            .unwrap_or_else(|| panic!("no key in {v}"))
            .to_string()
    }

    /// `agents show NAME` (AgentInfo: state, state_reason, token_generation, …).
    pub fn agent(&self, name: &str) -> Value {
        self.json(&["agents", "show", name])
    }

    /// `run FILE --agent NAME [--lease L]`: the run id.
    pub fn create_run(&self, file: &Path, agent: &str, lease: Option<&str>) -> String {
        let mut args = vec!["run", file.to_str().expect("utf-8 path"), "--agent", agent];
        if let Some(l) = lease {
            args.extend(["--lease", l]);
        }
        let v = self.json(&args);
        v["runs"][0]["run_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no run id in {v}"))
            .to_string()
    }

    /// `runs show RUN` (RunDetail).
    pub fn run(&self, run: &str) -> Value {
        self.json(&["runs", "show", run])
    }

    /// `runs logs RUN`: every line (seq, at_ms, level, message) in the server's order.
    pub fn logs(&self, run: &str) -> Vec<Value> {
        self.cli_ok(&["runs", "logs", run, "--json"])
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad log line {l}: {e}")))
            .collect()
    }

    /// Wait until the run is in a terminal state with its result; returns the RunDetail.
    pub fn wait_finished(&self, run: &str, limit: Duration, diag: &dyn Fn() -> String) -> Value {
        wait_until(
            &format!("run {run} to end with a result"),
            limit,
            Duration::from_millis(200),
            diag,
            || {
                let d = self.run(run);
                let terminal = matches!(
                    d["state"].as_str(),
                    Some("completed" | "failed" | "aborted")
                );
                (terminal && !d["result"].is_null()).then_some(d)
            },
        )
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
        if let Some(buf) = &self.in_process_log {
            LOGS.lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|_, b| !Arc::ptr_eq(b, buf));
        }
    }
}

// ---- the daemon ----

/// A `chaos-agent daemon`: `<root>/etc/config.d/20-control.toml` as `chaos-control init`
/// suggests (mode 0600, directories 0700, a copy of the CA), a state directory, stderr in
/// `<root>/daemon-<life>.log` (`CHAOS_AGENT_LOG=debug`), and a notification socket standing
/// in for systemd's (`NOTIFY_SOCKET`), so READY/STATUS/STOPPING can be read.
pub struct Daemon {
    root: TempDir,
    pub state: PathBuf,
    pub config: PathBuf,
    child: Option<Child>,
    lives: u32,
    notify_path: PathBuf,
    notes: Arc<Mutex<Vec<String>>>,
    reader: Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>,
}

impl Daemon {
    /// Configure (not start) a daemon of `cp` on `state`; with `key`, the registration key.
    pub fn new(cp: &ControlPlane, state: &Path, key: Option<&str>) -> Daemon {
        let root = TempDir::new("chaos-e2e-daemon");
        let etc = root.path().join("etc");
        let dropins = etc.join("config.d");
        std::fs::create_dir_all(&dropins).expect("create config.d");
        for d in [&etc, &dropins] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        let ca = etc.join("ca.pem");
        std::fs::copy(cp.state.join("ca.pem"), &ca).expect("copy ca.pem");
        std::fs::set_permissions(&ca, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut toml = format!(
            "[control_plane]\nurl = \"https://localhost:{}\"\nca_file = \"{}\"\nca_sha256 = \"{}\"\n",
            cp.port,
            ca.display(),
            cp.ca_sha256
        );
        if let Some(k) = key {
            toml.push_str(&format!("registration_key = \"{k}\"\n"));
        }
        let file = dropins.join("20-control.toml");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&file)
            .expect("create 20-control.toml");
        f.write_all(toml.as_bytes()).unwrap();
        // Read as systemd does: at once, whatever arrives.
        let notify_path = root.path().join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).expect("bind the notification socket");
        notify
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let notes = Arc::new(Mutex::new(Vec::new()));
        let done = Arc::new(AtomicBool::new(false));
        let reader = {
            let (notes, done) = (notes.clone(), done.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 8192];
                while !done.load(Ordering::SeqCst) {
                    if let Ok(n) = notify.recv(&mut buf) {
                        notes.lock().unwrap_or_else(|e| e.into_inner()).extend(
                            String::from_utf8_lossy(&buf[..n])
                                .lines()
                                .map(str::to_string),
                        );
                    }
                }
            })
        };
        Daemon {
            config: etc.join("agent.toml"),
            root,
            state: state.to_path_buf(),
            child: None,
            lives: 0,
            notify_path,
            notes,
            reader: Some((done, reader)),
        }
    }

    fn log_path(&self, life: u32) -> PathBuf {
        self.root.path().join(format!("daemon-{life}.log"))
    }

    /// `chaos-agent --state-dir S daemon --config <root>/etc/agent.toml` (again after a kill).
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        self.lives += 1;
        let log = std::fs::File::create(self.log_path(self.lives)).expect("create daemon log");
        let mut cmd = Command::new(agent_bin());
        super::on_configured_kernel(&mut cmd);
        let child = cmd
            .arg("--state-dir")
            .arg(&self.state)
            .arg("daemon")
            .arg("--config")
            .arg(&self.config)
            .env("CHAOS_AGENT_LOG", "debug")
            .env("NOTIFY_SOCKET", &self.notify_path)
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("CHAOS_AGENT_CRASH_AT")
            .env_remove("CHAOS_AGENT_STATE_DIR")
            .env_remove("HTTPS_PROXY")
            .env_remove("ALL_PROXY")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn chaos-agent daemon");
        self.child = Some(child);
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// The log of the current (last) life.
    pub fn life_log(&self) -> String {
        std::fs::read_to_string(self.log_path(self.lives)).unwrap_or_default()
    }

    /// Every life's log, and the notifications received.
    pub fn log(&self) -> String {
        let mut out = String::new();
        for life in 1..=self.lives {
            let text = std::fs::read_to_string(self.log_path(life)).unwrap_or_default();
            out.push_str(&format!(
                "--- chaos-agent daemon {}, life {life} ---\n{}",
                self.state.display(),
                tail(&text, 200)
            ));
        }
        out.push_str(&format!(
            "--- notifications ---\n{}\n",
            self.notifications().join("\n")
        ));
        out
    }

    /// Every notification (`READY=1`, `STATUS=…`, …) received so far, in order.
    pub fn notifications(&self) -> Vec<String> {
        self.notes.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0, "kill({sig})");
    }

    /// SIGKILL: the daemon gets no chance to revert anything.
    pub fn kill9(&mut self) {
        let mut c = self.child.take().expect("running");
        c.kill().expect("SIGKILL the daemon");
        c.wait().expect("reap the daemon");
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        match &mut self.child {
            Some(c) => c.try_wait().expect("try_wait").is_none(),
            None => false,
        }
    }

    /// Wait for the process to exit (it was told to); panics with the log past `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let end = Instant::now() + limit;
        loop {
            let c = self.child.as_mut().expect("running");
            if let Some(st) = c.try_wait().expect("try_wait") {
                self.child = None;
                return st;
            }
            if Instant::now() >= end {
                panic!("the daemon did not exit within {limit:?}\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// How many run log lines the daemon wrote for the control plane, every life: each
    /// line it queues is also logged locally, as an event of `chaos_agent::daemon::runs`.
    pub fn report_lines(&self) -> usize {
        (1..=self.lives)
            .map(|life| {
                std::fs::read_to_string(self.log_path(life))
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.contains(" chaos_agent::daemon::runs: "))
                    .count()
            })
            .sum()
    }

    /// Messages waiting in the outbox (not yet accepted by the control plane).
    pub fn outbox_len(&self) -> usize {
        std::fs::read_dir(self.state.join("outbox"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                    .count()
            })
            .unwrap_or(0)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        if let Some((done, reader)) = self.reader.take() {
            done.store(true, Ordering::SeqCst);
            let _ = reader.join();
        }
    }
}

impl Daemon {
    fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        // Let it revert what it holds (a failed test must not leave a stopped process).
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(15);
        while Instant::now() < end {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// The processes' logs, for panic messages.
pub fn diag(cp: &ControlPlane, daemons: &[&Daemon]) -> String {
    let mut out = String::new();
    for d in daemons {
        out.push_str(&d.log());
    }
    out.push_str(&cp.log());
    out
}
