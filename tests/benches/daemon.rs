//! Benchmark of `chaos-agent daemon` against a real `chaos-control serve`: abort
//! latency, lease expiry and idle cost, in one run, with a fixed-interval poller measured in
//! the same run as the baseline.
//!
//! Everything runs in a private network namespace `chaos-bench-<random>` (deleted on exit):
//! the release binaries `chaos-control` and `chaos-agent` (found next to this benchmark in
//! `target/release`, or `CHAOS_CONTROL_BIN` / `CHAOS_AGENT_BIN`), three control planes on
//! loopback, two daemons and the baseline pollers. The main thread `setns`'s into the
//! namespace before it starts any thread or process, so every child and every socket of
//! this process lives there; nftables counters and a packet socket on the namespace's `lo`
//! see only the benchmark's traffic, never the host's.
//!
//! Each control plane is set up as an operator would: `chaos-control init --name 127.0.0.2
//! --port P`, `chaos-control serve`, `chaos-control agents add NAME`; the daemon's
//! configuration is the `[control_plane]` section `init` printed (url, ca_sha256; ca_file
//! pointing at a copy of ca.pem) with the key `agents add` printed. Agents reach their
//! control plane at 127.0.0.2 (the URL `init` prints); the benchmark's operator calls go to
//! 127.0.0.1 (what the `chaos-control` commands use), so the two are told apart on the wire.
//!
//! 1. **Abort latency** (control plane B, daemon B): a run `process.stop` of a `sleep` the
//!    benchmark started; once the victim is stopped (`T` in /proc/PID/stat) and 100-300 ms
//!    have passed, `POST /api/v1/admin/runs/{run}/abort`; latency = the first moment a poll
//!    of /proc/PID/stat (every 0.25 ms, on a thread started before the call) sees the victim
//!    running, minus the moment the abort call returned. 3 warm-up runs, then 50 measured.
//!    **Baseline:** the daemon cannot poll at a fixed interval (`poll_wait_secs` is 1-60 and
//!    always a long poll, which the server answers as soon as a task is queued), so the
//!    baseline is a minimal poller written here against control plane C with the same
//!    protocol client: `GET tasks?wait=0` every 5 s on a fixed schedule (what Harness
//!    documents for its agent), `SIGSTOP` of the victim on a run task, `SIGCONT` on an abort
//!    task, then a status. 10 such agents with their own victims run 5 runs each; each abort
//!    is sent 0-5 s (uniform) after its victim stopped, so its phase against the poll is
//!    random. It skips the engine (journal, plan, verify), so it favours the baseline.
//! 2. **Lease expiry** (B): a run with `lease_secs = 10`; 0.5-3.5 s after the victim stopped,
//!    control plane B is SIGKILLed. A packet socket on `lo` timestamps every TCP segment with
//!    payload that B sends to the daemon (source 127.0.0.2:P); the last one before the kill
//!    ends the daemon's last successful call. Measured: last answer -> victim running again
//!    (the lease as the daemon counts it; goal: within lease + 1 s) and kill -> running.
//!    Then B is started again and the daemon is sent SIGHUP (a reload, which also ends its
//!    reconnect backoff at once) so the next repetition need not wait for the backoff. 5
//!    repetitions; at the end every lease run must have reached the control plane as
//!    `aborted` with the lease named.
//! 3. **Idle cost** (control plane A, daemon A, default 30 s long poll): over 60 s, the
//!    daemon's CPU (utime + stime from /proc/PID/stat, and the threads' schedstat run time),
//!    its RSS at the end (VmRSS, RssAnon, RssFile, VmHWM, and `ps -o rss`), and the bytes it
//!    exchanged with A (nftables counters in the namespace's output hook on 127.0.0.2:P, both
//!    directions, IP headers included).
//!
//! Phase 1 (abort latency of the daemon) runs alone; phase 2 runs the idle window, the lease
//! repetitions and the baseline side by side (each against its own control plane), which
//! keeps the whole benchmark near 2 minutes.
//!
//! Run as root: `scripts/bench-daemon.sh` (builds the release binaries, then `cargo bench -p
//! chaos-tests --bench daemon`). `BENCH_ABORT_RUNS` (50), `BENCH_BASELINE_AGENTS` (10),
//! `BENCH_BASELINE_RUNS` (5), `BENCH_LEASE_REPS` (5) and `BENCH_IDLE_SECS` (60) change the
//! counts. It prints `SKIPPED ...` and exits 0 under `cargo test` (no `--bench` argument),
//! without root, or without `ip`, `nft`, `ps` or the release binaries.

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use chaos_protocol::admin::{
    AbortRequest, AddAgentRequest, CreateRunsRequest, CreateRunsResponse, RegistrationKey,
    RunDetail,
};
use chaos_protocol::agent::{HostFacts, RegisterRequest, Task};
use chaos_protocol::client::{Client, ClientConfig, Method};
use chaos_protocol::run::{RunState, StatusUpdate};
use serde_json::{json, Value};

const LEASE_SECS: u64 = 10;
const BASELINE_INTERVAL: Duration = Duration::from_secs(5);
/// How often the victim's state is read while waiting for it to change.
const PROC_POLL: Duration = Duration::from_micros(250);
const WARMUP_RUNS: usize = 3;

fn main() {
    // `cargo test --all-targets` runs bench binaries without `--bench`: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("SKIPPED daemon bench: not run by `cargo bench` (scripts/bench-daemon.sh)");
        return;
    }
    if !fault_core::host::is_root() {
        println!("SKIPPED daemon bench: needs root (network namespace, nftables, packet socket)");
        return;
    }
    let missing: Vec<&str> = [("ip", "-V"), ("nft", "--version"), ("ps", "--version")]
        .into_iter()
        .filter(|(c, a)| {
            !Command::new(c)
                .arg(a)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(|(c, _)| c)
        .collect();
    if !missing.is_empty() {
        println!(
            "SKIPPED daemon bench: missing {} (apt-get install iproute2 nftables procps)",
            missing.join(", ")
        );
        return;
    }
    let bins = match Bins::find() {
        Ok(b) => b,
        Err(e) => {
            println!("SKIPPED daemon bench: {e:#}");
            return;
        }
    };
    if let Err(e) = bench(&bins) {
        eprintln!("daemon bench FAILED: {e:#}");
        std::process::exit(1);
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Bins {
    agent: PathBuf,
    control: PathBuf,
}

impl Bins {
    /// The release binaries next to this benchmark (target/release/deps/daemon-* ->
    /// target/release), or the ones the environment names.
    fn find() -> anyhow::Result<Bins> {
        let exe = std::env::current_exe()?;
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .context("no target directory")?;
        let pick = |var: &str, name: &str| -> anyhow::Result<PathBuf> {
            let p = std::env::var_os(var)
                .map(PathBuf::from)
                .unwrap_or_else(|| dir.join(name));
            ensure!(
                p.is_file(),
                "{} not found (cargo build --release -p chaos-agent -p chaos-control, or set {var})",
                p.display()
            );
            Ok(p)
        };
        Ok(Bins {
            agent: pick("CHAOS_AGENT_BIN", "chaos-agent")?,
            control: pick("CHAOS_CONTROL_BIN", "chaos-control")?,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Sandbox: namespace, temporary directory, children.

/// The private network namespace; deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> anyhow::Result<Netns> {
        let ns = Netns {
            name: format!("chaos-bench-{}", fault_core::host::random_hex(3)),
        };
        run(&["ip", "netns", "add", &ns.name])?;
        // From here on, drop deletes it.
        run(&["ip", "-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Move the calling thread (the main thread, before any other exists) into it.
    fn enter(&self) -> anyhow::Result<()> {
        let f = std::fs::File::open(format!("/run/netns/{}", self.name))?;
        // SAFETY: setns(2) on an fd we hold open.
        let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        ensure!(r == 0, "setns: {}", std::io::Error::last_os_error());
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A temporary directory (mode 0700), removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> anyhow::Result<TempDir> {
        use std::os::unix::fs::DirBuilderExt;
        let p = std::env::temp_dir().join(format!(
            "chaos-bench-daemon-{}",
            fault_core::host::random_hex(4)
        ));
        std::fs::DirBuilder::new().mode(0o700).create(&p)?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("BENCH_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        } else {
            eprintln!("kept {}", self.0.display());
        }
    }
}

/// Run a command, fail with its stderr.
fn run(argv: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .with_context(|| format!("spawn {}", argv[0]))?;
    ensure!(
        out.status.success(),
        "{argv:?} failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: signalling a process this benchmark started.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// A `sleep` the faults stop and resume; resumed and killed on drop.
struct Victim(Child);

impl Victim {
    fn spawn() -> anyhow::Result<Victim> {
        let c = Command::new("sleep")
            .arg("100000")
            .stdin(Stdio::null())
            .spawn()
            .context("spawn sleep")?;
        Ok(Victim(c))
    }
    fn pid(&self) -> i32 {
        self.0.id() as i32
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        signal(self.pid(), libc::SIGCONT);
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The state letter of /proc/PID/stat (`T` = stopped).
fn proc_state(pid: i32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s[s.rfind(')')? + 1..].trim_start().chars().next()
}

/// Poll /proc/PID/stat every [`PROC_POLL`] until the process is stopped (or running, for
/// `stopped = false`); the instant right after the read that showed it.
fn wait_victim(pid: i32, stopped: bool, timeout: Duration) -> anyhow::Result<Instant> {
    let end = Instant::now() + timeout;
    loop {
        let st = proc_state(pid).with_context(|| format!("victim {pid} is gone"))?;
        let now = Instant::now();
        if (st == 'T') == stopped {
            return Ok(now);
        }
        if now > end {
            bail!(
                "victim {pid} still in state {st} after {timeout:?} (waiting for it to be {})",
                if stopped { "stopped" } else { "running" }
            );
        }
        std::thread::sleep(PROC_POLL);
    }
}

/// xorshift64*, seeded from the kernel's random numbers.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        Rng(u64::from_str_radix(&fault_core::host::random_hex(8), 16).unwrap_or(1) | 1)
    }
    /// Uniform in [lo, hi).
    fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11;
        lo + (hi - lo).mul_f64(x as f64 / (1u64 << 53) as f64)
    }
}

// ---------------------------------------------------------------------------------------
// Control planes and daemons.

struct ControlPlane {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    /// What `init` printed for agents.
    agent_url: String,
    ca_sha256: String,
    ca_pem: Vec<u8>,
    admin_token: String,
    admin: Client,
    child: Option<Child>,
}

impl ControlPlane {
    /// `chaos-control init` + `serve`.
    fn new(bins: &Bins, root: &Path, name: &str, port: u16) -> anyhow::Result<ControlPlane> {
        let dir = root.join(name);
        let out = run(&[
            bins.control.to_str().context("path")?,
            "--state-dir",
            dir.to_str().context("path")?,
            "init",
            "--name",
            "127.0.0.2",
            "--port",
            &port.to_string(),
        ])?;
        // The agent configuration snippet init printed.
        let value = |key: &str| -> anyhow::Result<String> {
            let line = out
                .lines()
                .find(|l| l.starts_with(&format!("{key} = ")))
                .with_context(|| format!("init printed no `{key} = ` line:\n{out}"))?;
            Ok(line
                .split('"')
                .nth(1)
                .context("unquoted value")?
                .to_string())
        };
        let agent_url = value("url")?;
        let ca_sha256 = value("ca_sha256")?;
        let ca_pem = std::fs::read(dir.join("ca.pem"))?;
        let admin_token = std::fs::read_to_string(dir.join("admin.token"))?
            .trim()
            .to_string();
        let admin = Self::admin_client(port, &ca_pem)?;
        let mut cp = ControlPlane {
            bin: bins.control.clone(),
            dir,
            port,
            agent_url,
            ca_sha256,
            ca_pem,
            admin_token,
            admin,
            child: None,
        };
        cp.start()?;
        Ok(cp)
    }

    fn admin_client(port: u16, ca: &[u8]) -> anyhow::Result<Client> {
        Ok(Client::new(ClientConfig::new(
            format!("https://127.0.0.1:{port}"),
            ca.to_vec(),
        ))?)
    }

    fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.with_extension("log"))?;
        let child = Command::new(&self.bin)
            .arg("--state-dir")
            .arg(&self.dir)
            .arg("serve")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn chaos-control serve")?;
        self.child = Some(child);
        // A fresh client: the old one's pooled connections died with the old server.
        self.admin = Self::admin_client(self.port, &self.ca_pem)?;
        let end = Instant::now() + Duration::from_secs(15);
        loop {
            if self.admin.health().is_ok() {
                return Ok(());
            }
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "chaos-control serve exited ({st}); see {}",
                    self.dir.with_extension("log").display()
                );
            }
            ensure!(Instant::now() < end, "chaos-control serve is not answering");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL; the instant right after kill(2) returned. Waits until it is gone.
    fn kill_hard(&mut self) -> Instant {
        let mut c = self.child.take().expect("server running");
        signal(c.id() as i32, libc::SIGKILL);
        let t = Instant::now();
        let _ = c.wait();
        t
    }

    fn get<R: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<R> {
        Ok(self
            .admin
            .call::<(), R>(Method::GET, path, Some(&self.admin_token), None)?)
    }

    fn post<B: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<R> {
        Ok(self
            .admin
            .call(Method::POST, path, Some(&self.admin_token), Some(body))?)
    }

    /// `chaos-control agents add NAME`: the registration key it printed.
    fn add_agent_cli(&self, name: &str) -> anyhow::Result<String> {
        let out = run(&[
            self.bin.to_str().context("path")?,
            "--state-dir",
            self.dir.to_str().context("path")?,
            "agents",
            "add",
            name,
        ])?;
        Ok(out
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("ccr_"))
            .with_context(|| format!("no key in:\n{out}"))?
            .to_string())
    }

    fn create_run(
        &self,
        agent: &str,
        experiment: Value,
        lease: Option<u64>,
    ) -> anyhow::Result<String> {
        let r: CreateRunsResponse = self.post(
            "/admin/runs",
            &CreateRunsRequest {
                experiment,
                agents: vec![agent.to_string()],
                lease_secs: lease,
            },
        )?;
        Ok(r.runs.first().context("no run created")?.run_id.clone())
    }

    fn abort(&self, run: &str) -> anyhow::Result<RunDetail> {
        self.post(
            &format!("/admin/runs/{run}/abort"),
            &AbortRequest {
                reason: Some("benchmark".into()),
            },
        )
    }

    fn wait_terminal(&self, run: &str, timeout: Duration) -> anyhow::Result<RunDetail> {
        let end = Instant::now() + timeout;
        loop {
            let d: RunDetail = self.get(&format!("/admin/runs/{run}"))?;
            if d.summary.state.is_terminal() {
                return Ok(d);
            }
            ensure!(
                Instant::now() < end,
                "run {run} still {} after {timeout:?}",
                d.summary.state.as_str()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn wait_agent_active(&self, name: &str, timeout: Duration) -> anyhow::Result<()> {
        let end = Instant::now() + timeout;
        loop {
            let a: chaos_protocol::admin::AgentInfo = self.get(&format!("/admin/agents/{name}"))?;
            if a.state == chaos_protocol::admin::AgentState::Active {
                return Ok(());
            }
            ensure!(
                Instant::now() < end,
                "agent {name} is {} after {timeout:?}",
                a.state.as_str()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id() as i32, libc::SIGKILL);
            let _ = c.wait();
        }
    }
}

/// A real `chaos-agent daemon` configured from what `init` and `agents add` printed.
struct Daemon {
    child: Child,
    dir: PathBuf,
}

impl Daemon {
    fn start(bins: &Bins, root: &Path, name: &str, cp: &ControlPlane) -> anyhow::Result<Daemon> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let key = cp.add_agent_cli(name)?;
        let dir = root.join(name);
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, &cp.ca_pem)?;
        let config = format!(
            "[control_plane]\nurl = \"{}\"\nca_file = \"{}\"\nca_sha256 = \"{}\"\nregistration_key = \"{key}\"\n\n[agent]\nstate_dir = \"{}\"\n",
            cp.agent_url,
            ca.display(),
            cp.ca_sha256,
            dir.join("state").display(),
        );
        let path = dir.join("agent.toml");
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?
            .write_all(config.as_bytes())?;
        let log = std::fs::File::create(dir.join("daemon.log"))?;
        let child = Command::new(&bins.agent)
            .arg("daemon")
            .arg("--config")
            .arg(&path)
            .env_remove("CHAOS_AGENT_STATE_DIR")
            .env_remove("CHAOS_AGENT_LOG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn chaos-agent daemon")?;
        let d = Daemon { child, dir };
        cp.wait_agent_active(name, Duration::from_secs(20))
            .with_context(|| format!("see {}", d.dir.join("daemon.log").display()))?;
        Ok(d)
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGTERM: the daemon reverts whatever it holds, flushes, exits 0.
        signal(self.pid(), libc::SIGTERM);
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stop_experiment(name: &str, pid: i32) -> Value {
    json!({
        "name": name,
        "steps": [{"name": "stop", "faults": [
            {"kind": "process.stop", "duration": "120s", "pid": pid}
        ]}]
    })
}

// ---------------------------------------------------------------------------------------
// Statistics and /proc.

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[f64], p: f64) -> f64 {
    let n = sorted.len();
    sorted[((p * n as f64).ceil() as usize).clamp(1, n) - 1]
}

struct Summary {
    n: usize,
    p50: f64,
    p99: f64,
    max: f64,
    mean: f64,
    min: f64,
}

fn summary(v: &[f64]) -> Summary {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    Summary {
        n: s.len(),
        p50: pct(&s, 0.50),
        p99: pct(&s, 0.99),
        max: *s.last().unwrap_or(&0.0),
        mean: s.iter().sum::<f64>() / s.len().max(1) as f64,
        min: *s.first().unwrap_or(&0.0),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Signed milliseconds from `a` to `b`.
fn ms_between(a: Instant, b: Instant) -> f64 {
    if b >= a {
        ms(b - a)
    } else {
        -ms(a - b)
    }
}

/// utime + stime of a process, in seconds (clock ticks of /proc/PID/stat).
fn cpu_ticks_secs(pid: i32) -> anyhow::Result<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let f: Vec<&str> = s[s.rfind(')').context("stat")? + 2..]
        .split_whitespace()
        .collect();
    // Fields 14 and 15 of stat(5); f[0] is field 3.
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(ticks as f64 / hz)
}

/// Time on CPU of every thread of a process, in seconds (schedstat, nanoseconds).
fn cpu_schedstat_secs(pid: i32) -> anyhow::Result<f64> {
    let mut ns = 0u64;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let s = std::fs::read_to_string(t?.path().join("schedstat"))?;
        ns += s
            .split_whitespace()
            .next()
            .context("schedstat")?
            .parse::<u64>()?;
    }
    Ok(ns as f64 / 1e9)
}

/// A `/proc/PID/status` field in kB.
fn status_kb(pid: i32, field: &str) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = s
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("value")?
        .parse::<u64>()?)
}

// ---------------------------------------------------------------------------------------
// nftables counters and the packet socket.

const NFT_TABLE: &str = "chaos_bench";

/// Counters of the traffic between agents and the control plane on `port` (the agents'
/// address 127.0.0.2), in the output hook, so each loopback packet is counted once.
fn nft_counters(ports: &[(&str, u16)]) -> anyhow::Result<()> {
    let mut rules = String::new();
    let mut counters = String::new();
    for (name, port) in ports {
        counters.push_str(&format!(
            "  counter {name}_up {{}}\n  counter {name}_down {{}}\n"
        ));
        rules.push_str(&format!(
            "    ip daddr 127.0.0.2 tcp dport {port} counter name \"{name}_up\"\n    ip saddr 127.0.0.2 tcp sport {port} counter name \"{name}_down\"\n"
        ));
    }
    let text = format!(
        "table inet {NFT_TABLE} {{\n{counters}  chain out {{\n    type filter hook output priority 0; policy accept;\n{rules}  }}\n}}\n"
    );
    let mut c = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    c.stdin
        .take()
        .context("stdin")?
        .write_all(text.as_bytes())?;
    let out = c.wait_with_output()?;
    ensure!(
        out.status.success(),
        "nft -f failed: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// (packets, bytes) of every named counter of the table.
fn nft_read() -> anyhow::Result<HashMap<String, (u64, u64)>> {
    let out = run(&["nft", "-j", "list", "counters", "table", "inet", NFT_TABLE])?;
    let v: Value = serde_json::from_str(&out)?;
    let mut m = HashMap::new();
    for item in v["nftables"].as_array().context("nft json")? {
        if let Some(c) = item.get("counter") {
            m.insert(
                c["name"].as_str().unwrap_or_default().to_string(),
                (
                    c["packets"].as_u64().unwrap_or(0),
                    c["bytes"].as_u64().unwrap_or(0),
                ),
            );
        }
    }
    Ok(m)
}

/// Timestamps every TCP segment with payload sent from 127.0.0.2:`port` (the control plane
/// answering its agent) on this namespace's `lo`, until `stop`.
fn capture_answers(
    port: u16,
    last: &Mutex<Option<Instant>>,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    // ETH_P_ALL: a socket for one protocol sees only incoming packets, not outgoing ones.
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    ensure!(
        fd >= 0,
        "packet socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero sockaddr_ll is valid; if_nametoindex reads a C string.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = unsafe { libc::if_nametoindex(c"lo".as_ptr()) } as i32;
    // SAFETY: bind with a valid sockaddr_ll and its size.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    ensure!(
        r == 0,
        "bind packet socket: {}",
        std::io::Error::last_os_error()
    );
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    // SAFETY: setsockopt with a timeval and its size.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
    }
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::SeqCst) {
        // SAFETY: as above; from/len describe a sockaddr_ll we own.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        let n = unsafe {
            libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&mut from as *mut libc::sockaddr_ll).cast(),
                &mut len,
            )
        };
        let now = Instant::now();
        if n < 0 {
            continue; // timeout (to look at `stop`) or EINTR
        }
        // On lo every packet is seen leaving and arriving: keep one copy.
        if from.sll_pkttype != libc::PACKET_OUTGOING
            || from.sll_protocol != (libc::ETH_P_IP as u16).to_be()
        {
            continue;
        }
        let p = &buf[..n as usize];
        if p.len() < 20 || p[0] >> 4 != 4 || p[9] != libc::IPPROTO_TCP as u8 {
            continue;
        }
        let ihl = usize::from(p[0] & 0xf) * 4;
        let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
        if p.len() < ihl + 20 || p[12..16] != [127, 0, 0, 2] {
            continue;
        }
        let tcp = &p[ihl..];
        let sport = u16::from_be_bytes([tcp[0], tcp[1]]);
        let doff = usize::from(tcp[12] >> 4) * 4;
        if sport == port && total > ihl + doff {
            *last.lock().unwrap_or_else(|e| e.into_inner()) = Some(now);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The phases.

struct AbortSample {
    /// Abort call returned -> victim running.
    from_answer: f64,
    /// Abort call sent -> victim running.
    from_request: f64,
}

/// One abort: returns when the victim runs again.
fn timed_abort(cp: &ControlPlane, run: &str, victim: i32) -> anyhow::Result<AbortSample> {
    std::thread::scope(|s| {
        let watch = s.spawn(|| wait_victim(victim, false, Duration::from_secs(20)));
        let t0 = Instant::now();
        let r = cp.abort(run);
        let t1 = Instant::now();
        let resumed = watch.join().expect("watcher panicked")?;
        r?;
        Ok(AbortSample {
            from_answer: ms_between(t1, resumed),
            from_request: ms_between(t0, resumed),
        })
    })
}

/// Phase 1: the daemon's abort latency.
fn abort_latency(
    cp: &ControlPlane,
    agent: &str,
    victim: i32,
    runs: usize,
    rng: &mut Rng,
) -> anyhow::Result<Vec<AbortSample>> {
    let mut out = Vec::new();
    for i in 0..WARMUP_RUNS + runs {
        ensure!(
            proc_state(victim) != Some('T'),
            "victim stopped before run {i}"
        );
        let run = cp.create_run(agent, stop_experiment("abort-latency", victim), None)?;
        wait_victim(victim, true, Duration::from_secs(20))
            .with_context(|| format!("run {run} never stopped the victim"))?;
        std::thread::sleep(rng.between(Duration::from_millis(100), Duration::from_millis(300)));
        let s = timed_abort(cp, &run, victim)?;
        let d = cp.wait_terminal(&run, Duration::from_secs(20))?;
        ensure!(
            d.summary.state == RunState::Aborted,
            "run {run} ended {}",
            d.summary.state.as_str()
        );
        if i >= WARMUP_RUNS {
            out.push(s);
        }
    }
    Ok(out)
}

struct LeaseSample {
    run: String,
    /// Last answer of the control plane -> SIGKILL.
    last_to_kill: f64,
    /// SIGKILL -> victim running.
    kill_to_revert: f64,
    /// Last answer -> victim running.
    last_to_revert: f64,
}

/// Phase 2, part: lease expiry.
fn lease_expiry(
    cp: &mut ControlPlane,
    agent: &str,
    daemon_pid: i32,
    victim: i32,
    reps: usize,
    rng: &mut Rng,
) -> anyhow::Result<Vec<LeaseSample>> {
    let last = Mutex::new(None);
    let stop = AtomicBool::new(false);
    let port = cp.port;
    std::thread::scope(|s| {
        let cap = s.spawn(|| capture_answers(port, &last, &stop));
        let result = (|| {
            let mut out = Vec::new();
            for r in 0..reps {
                let run = cp.create_run(
                    agent,
                    stop_experiment("lease-expiry", victim),
                    Some(LEASE_SECS),
                )?;
                // After a restart the daemon may still be in its reconnect backoff (SIGHUP
                // ends it): allow for the longest backoff.
                wait_victim(victim, true, Duration::from_secs(45))
                    .with_context(|| format!("lease run {run} never stopped the victim"))?;
                std::thread::sleep(
                    rng.between(Duration::from_millis(500), Duration::from_millis(3500)),
                );
                let killed = cp.kill_hard();
                let last_answer = (*last.lock().unwrap_or_else(|e| e.into_inner()))
                    .context("no answer from the control plane was captured")?;
                let reverted = wait_victim(victim, false, Duration::from_secs(LEASE_SECS + 20))
                    .with_context(|| format!("lease run {run}: the fault stayed"))?;
                let sample = LeaseSample {
                    run,
                    last_to_kill: ms_between(last_answer, killed),
                    kill_to_revert: ms_between(killed, reverted),
                    last_to_revert: ms_between(last_answer, reverted),
                };
                println!(
                    "  lease {}/{reps}: last answer {:.0} ms before the kill, reverted {:.0} ms after the kill, {:.0} ms after the last answer",
                    r + 1,
                    sample.last_to_kill,
                    sample.kill_to_revert,
                    sample.last_to_revert
                );
                out.push(sample);
                cp.start()?;
                // A reload ends the daemon's reconnect backoff.
                signal(daemon_pid, libc::SIGHUP);
            }
            Ok(out)
        })();
        stop.store(true, Ordering::SeqCst);
        cap.join().expect("capture panicked")?;
        result
    })
}

struct IdleSample {
    secs: f64,
    cpu_ticks: f64,
    cpu_sched: f64,
    rss_kb: u64,
    rss_anon_kb: u64,
    rss_file_kb: u64,
    hwm_kb: u64,
    /// Resident kB by mapping (smaps): the daemon's own executable, shared libraries,
    /// mappings without a file (heap, thread stacks).
    rss_exe_kb: u64,
    rss_libs_kb: u64,
    rss_nofile_kb: u64,
    /// Context switches of all threads over the window (each voluntary one is a wake-up).
    switches: (u64, u64),
    ps_rss_kb: u64,
    vsz_kb: u64,
    threads: u64,
    up: (u64, u64),
    down: (u64, u64),
}

/// Phase 2, part: the idle daemon over a window.
fn idle_cost(pid: i32, secs: u64, counter: &str) -> anyhow::Result<IdleSample> {
    let c0 = nft_read()?;
    let t0 = Instant::now();
    let ticks0 = cpu_ticks_secs(pid)?;
    let sched0 = cpu_schedstat_secs(pid)?;
    let sw0 = ctxt_switches(pid)?;
    std::thread::sleep(Duration::from_secs(secs));
    let ticks1 = cpu_ticks_secs(pid)?;
    let sched1 = cpu_schedstat_secs(pid)?;
    let sw1 = ctxt_switches(pid)?;
    let elapsed = t0.elapsed().as_secs_f64();
    let c1 = nft_read()?;
    let diff = |name: String| -> (u64, u64) {
        let a = c0.get(&name).copied().unwrap_or_default();
        let b = c1.get(&name).copied().unwrap_or_default();
        (b.0 - a.0, b.1 - a.1)
    };
    let ps = run(&["ps", "-o", "rss=,vsz=", "-p", &pid.to_string()])?;
    let (rss_exe_kb, rss_libs_kb, rss_nofile_kb) = rss_by_mapping(pid)?;
    let mut psv = ps.split_whitespace().map(|v| v.parse::<u64>().unwrap_or(0));
    Ok(IdleSample {
        secs: elapsed,
        cpu_ticks: ticks1 - ticks0,
        cpu_sched: sched1 - sched0,
        rss_kb: status_kb(pid, "VmRSS")?,
        rss_anon_kb: status_kb(pid, "RssAnon")?,
        rss_file_kb: status_kb(pid, "RssFile")?,
        hwm_kb: status_kb(pid, "VmHWM")?,
        rss_exe_kb,
        rss_libs_kb,
        rss_nofile_kb,
        switches: (sw1.0 - sw0.0, sw1.1 - sw0.1),
        ps_rss_kb: psv.next().unwrap_or(0),
        vsz_kb: psv.next().unwrap_or(0),
        threads: std::fs::read_to_string(format!("/proc/{pid}/status"))?
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0),
        up: diff(format!("{counter}_up")),
        down: diff(format!("{counter}_down")),
    })
}

/// Voluntary and involuntary context switches, summed over the threads.
fn ctxt_switches(pid: i32) -> anyhow::Result<(u64, u64)> {
    let (mut v, mut n) = (0, 0);
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let s = std::fs::read_to_string(t?.path().join("status"))?;
        for l in s.lines() {
            let num = |p: &str| l.strip_prefix(p).and_then(|x| x.trim().parse::<u64>().ok());
            if let Some(x) = num("voluntary_ctxt_switches:") {
                v += x;
            } else if let Some(x) = num("nonvoluntary_ctxt_switches:") {
                n += x;
            }
        }
    }
    Ok((v, n))
}

/// Resident kB of the process's own executable, of the other file mappings (shared
/// libraries) and of mappings without a file, from /proc/PID/smaps. Private pages a
/// mapping of a file has written (relocated data) count with that file here, but as
/// RssAnon in /proc/PID/status.
fn rss_by_mapping(pid: i32) -> anyhow::Result<(u64, u64, u64)> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))?;
    let exe = exe.to_string_lossy();
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let (mut own, mut libs, mut nofile) = (0, 0, 0);
    let mut file: Option<bool> = None; // Some(is the executable) for file mappings
    for l in smaps.lines() {
        let mut w = l.split_whitespace();
        let first = w.next().unwrap_or_default();
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            // "start-end perms offset dev inode [path]"
            let path = w.nth(4).unwrap_or_default();
            file = path.starts_with('/').then(|| l.ends_with(exe.as_ref()));
        } else if first == "Rss:" {
            let kb: u64 = w.next().unwrap_or("0").parse().unwrap_or(0);
            match file {
                Some(true) => own += kb,
                Some(false) => libs += kb,
                None => nofile += kb,
            }
        }
    }
    Ok((own, libs, nofile))
}

/// A minimal agent that polls `GET tasks?wait=0` every [`BASELINE_INTERVAL`] on a fixed
/// schedule: SIGSTOP of the run's pid on a run task, SIGCONT on an abort task.
fn baseline_poller(
    client: &Client,
    agent_id: &str,
    token: &str,
    stop: &AtomicBool,
    start: Instant,
) -> usize {
    let mut active: HashMap<String, i32> = HashMap::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut errors = 0;
    let mut n = 0u32;
    while !stop.load(Ordering::SeqCst) {
        let tick = start + BASELINE_INTERVAL * n;
        n += 1;
        while Instant::now() < tick {
            if stop.load(Ordering::SeqCst) {
                return errors;
            }
            std::thread::sleep((tick - Instant::now()).min(Duration::from_millis(50)));
        }
        let tasks = match client.tasks(agent_id, token, Duration::ZERO) {
            Ok(r) => r.tasks,
            Err(_) => {
                errors += 1;
                continue;
            }
        };
        for t in tasks {
            let (run_id, state) = match t {
                Task::Run(r) => {
                    if !seen.insert(r.run_id.clone()) {
                        continue;
                    }
                    let pid = r.experiment["steps"][0]["faults"][0]["pid"]
                        .as_i64()
                        .unwrap_or(0) as i32;
                    if pid > 1 {
                        signal(pid, libc::SIGSTOP);
                        active.insert(r.run_id.clone(), pid);
                    }
                    (r.run_id, RunState::Running)
                }
                Task::Abort(a) => {
                    if let Some(pid) = active.remove(&a.run_id) {
                        signal(pid, libc::SIGCONT);
                    }
                    (a.run_id, RunState::Aborted)
                }
            };
            let up = StatusUpdate {
                state,
                step: None,
                faults: Vec::new(),
                message: None,
            };
            if client.status(&run_id, token, &up).is_err() {
                errors += 1;
            }
        }
    }
    errors
}

/// Phase 2, part: the baseline's abort latency, `agents` pollers side by side.
fn baseline(
    cp: &ControlPlane,
    agents: usize,
    runs_each: usize,
    seed: u64,
) -> anyhow::Result<(Vec<AbortSample>, usize)> {
    let mut pollers = Vec::new();
    for k in 0..agents {
        let name = format!("baseline-{k:02}");
        let key: RegistrationKey = cp.post(
            "/admin/agents",
            &AddAgentRequest {
                name: name.clone(),
                key_ttl_secs: None,
            },
        )?;
        let mut cc = ClientConfig::new(cp.agent_url.clone(), cp.ca_pem.clone());
        cc.ca_sha256 = Some(cp.ca_sha256.clone());
        let client = Client::new(cc)?;
        let reg = client.register(&RegisterRequest {
            registration_key: key.registration_key,
            host: HostFacts {
                hostname: name.clone(),
                agent_version: "0.1.0".into(),
                os: String::new(),
                kernel: String::new(),
                arch: String::new(),
                machine_id: String::new(),
                kinds: vec!["process.stop".into()],
            },
        })?;
        let victim = Victim::spawn()?;
        let rng = Rng((seed ^ (k as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1);
        pollers.push((name, client, reg.agent_id, reg.token.token, victim, rng));
    }
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    std::thread::scope(|s| {
        let mut polls = Vec::new();
        let mut drivers = Vec::new();
        for (k, (name, client, agent_id, token, victim, rng)) in pollers.iter_mut().enumerate() {
            let (stop, client, agent_id, token) = (&stop, &*client, &*agent_id, &*token);
            // Each poller's schedule starts at its own offset within the interval.
            let offset = BASELINE_INTERVAL.mul_f64(k as f64 / agents as f64);
            polls.push(
                s.spawn(move || baseline_poller(client, agent_id, token, stop, start + offset)),
            );
            let (name, victim) = (&*name, victim.pid());
            drivers.push(s.spawn(move || -> anyhow::Result<Vec<AbortSample>> {
                let mut out = Vec::new();
                for _ in 0..runs_each {
                    let run =
                        cp.create_run(name, stop_experiment("abort-baseline", victim), None)?;
                    wait_victim(victim, true, BASELINE_INTERVAL * 3)
                        .with_context(|| format!("baseline run {run} never stopped its victim"))?;
                    // The abort lands at a uniformly random phase of the poll interval.
                    std::thread::sleep(rng.between(Duration::ZERO, BASELINE_INTERVAL));
                    out.push(timed_abort(cp, &run, victim)?);
                    let d = cp.wait_terminal(&run, BASELINE_INTERVAL * 3)?;
                    ensure!(
                        d.summary.state == RunState::Aborted,
                        "baseline run {run} ended {}",
                        d.summary.state.as_str()
                    );
                }
                Ok(out)
            }));
        }
        let mut samples = Vec::new();
        let mut first_err = None;
        for d in drivers {
            match d.join().expect("driver panicked") {
                Ok(v) => samples.extend(v),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        stop.store(true, Ordering::SeqCst);
        let errors: usize = polls
            .into_iter()
            .map(|p| p.join().expect("poller panicked"))
            .sum();
        match first_err {
            Some(e) => Err(e),
            None => Ok((samples, errors)),
        }
    })
}

// ---------------------------------------------------------------------------------------

fn bench(bins: &Bins) -> anyhow::Result<()> {
    let abort_runs = env_usize("BENCH_ABORT_RUNS", 50).max(1);
    let baseline_agents = env_usize("BENCH_BASELINE_AGENTS", 10).max(1);
    let baseline_runs = env_usize("BENCH_BASELINE_RUNS", 5).max(1);
    let lease_reps = env_usize("BENCH_LEASE_REPS", 5).max(1);
    let idle_secs = env_usize("BENCH_IDLE_SECS", 60).max(1) as u64;
    let started = Instant::now();

    let ns = Netns::new()?;
    // Before any thread or child exists: everything from here on lives in the namespace.
    ns.enter()?;
    let tmp = TempDir::new()?;
    println!(
        "daemon bench: namespace {}, {} cores, kernel {}; binaries {} and {}",
        ns.name,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        bins.control.display(),
        bins.agent.display()
    );
    let (port_a, port_b, port_c) = (8441, 8442, 8443);
    nft_counters(&[("idle", port_a)])?;
    let cp_a = ControlPlane::new(bins, &tmp.0, "cc-idle", port_a)?;
    let mut cp_b = ControlPlane::new(bins, &tmp.0, "cc-work", port_b)?;
    let cp_c = ControlPlane::new(bins, &tmp.0, "cc-baseline", port_c)?;
    let daemon_a = Daemon::start(bins, &tmp.0, "agent-idle", &cp_a)?;
    let daemon_b = Daemon::start(bins, &tmp.0, "agent-work", &cp_b)?;
    let victim_b = Victim::spawn()?;
    let mut rng = Rng::new();
    println!(
        "set up in {:.1} s: 3 control planes, 2 daemons registered",
        started.elapsed().as_secs_f64()
    );

    // Phase 1, alone.
    let t = Instant::now();
    let aborts = abort_latency(&cp_b, "agent-work", victim_b.pid(), abort_runs, &mut rng)?;
    println!(
        "phase 1: {WARMUP_RUNS} + {abort_runs} aborts of the daemon in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // Phase 2, side by side.
    let t = Instant::now();
    let mut rng_lease = Rng(rng.0 ^ 0x5555_5555_5555_5555);
    let (idle, lease, base) = std::thread::scope(|s| {
        let idle = s.spawn(|| idle_cost(daemon_a.pid(), idle_secs, "idle"));
        let lease = s.spawn(|| {
            lease_expiry(
                &mut cp_b,
                "agent-work",
                daemon_b.pid(),
                victim_b.pid(),
                lease_reps,
                &mut rng_lease,
            )
        });
        let (seed, cp_c) = (rng.0, &cp_c);
        let base = s.spawn(move || baseline(cp_c, baseline_agents, baseline_runs, seed));
        (
            idle.join().expect("idle panicked"),
            lease.join().expect("lease panicked"),
            base.join().expect("baseline panicked"),
        )
    });
    let (idle, lease, (base, base_errors)) = (idle?, lease?, base?);
    println!(
        "phase 2 (idle window, lease, baseline side by side): {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // Every lease run reached the control plane as aborted, naming the lease.
    let mut lease_reasons = Vec::new();
    for l in &lease {
        let d = cp_b.wait_terminal(&l.run, Duration::from_secs(60))?;
        let reason = d
            .result
            .as_ref()
            .and_then(|r| r.abort_reason.clone())
            .unwrap_or_default();
        ensure!(
            d.summary.state == RunState::Aborted && reason.contains("lease"),
            "lease run {} ended {} ({reason:?})",
            l.run,
            d.summary.state.as_str()
        );
        lease_reasons.push(reason);
    }
    let total = started.elapsed().as_secs_f64();

    // ---- report ----
    println!("\n### Abort latency (abort call -> victim running again), ms\n");
    println!("| agent | runs | from the answer: p50 | p99 | max | mean | from the request: p50 | p99 | max |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let row = |name: &str, v: &[AbortSample]| -> (Summary, Summary) {
        let a = summary(&v.iter().map(|s| s.from_answer).collect::<Vec<_>>());
        let r = summary(&v.iter().map(|s| s.from_request).collect::<Vec<_>>());
        println!(
            "| {name} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            a.n, a.p50, a.p99, a.max, a.mean, r.p50, r.p99, r.max
        );
        (a, r)
    };
    let (da, _) = row("chaos-agent daemon (long poll 30 s)", &aborts);
    let (ba, _) = row("baseline: poll every 5 s", &base);
    println!(
        "\nratio baseline / daemon (from the answer): p50 {:.0}x, p99 {:.0}x, max {:.0}x; daemon minimum {:.1} ms; goal p99 < 100 ms: {}",
        ba.p50 / da.p50,
        ba.p99 / da.p99,
        ba.max / da.max,
        da.min,
        if da.p99 < 100.0 { "met" } else { "MISSED" }
    );
    let mut slow: Vec<f64> = aborts.iter().map(|s| s.from_answer).collect();
    slow.sort_by(|a, b| b.total_cmp(a));
    println!(
        "daemon: {} of {} aborts over 50 ms; slowest five: {}",
        slow.iter().filter(|&&v| v > 50.0).count(),
        slow.len(),
        slow.iter()
            .take(5)
            .map(|v| format!("{v:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("baseline poller call errors: {base_errors}");

    println!("\n### Lease expiry (lease {LEASE_SECS} s, control plane SIGKILLed), ms\n");
    println!("| rep | last answer -> kill | kill -> reverted | last answer -> reverted | minus lease | within lease + 1 s |");
    println!("|---:|---:|---:|---:|---:|---|");
    for (i, l) in lease.iter().enumerate() {
        let over = l.last_to_revert - LEASE_SECS as f64 * 1e3;
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:+.0} | {} |",
            i + 1,
            l.last_to_kill,
            l.kill_to_revert,
            l.last_to_revert,
            over,
            if over <= 1000.0 { "yes" } else { "NO" }
        );
    }
    println!("abort reasons reported: {:?}", lease_reasons.first());

    println!(
        "\n### Idle daemon over {:.1} s (default 30 s long poll)\n",
        idle.secs
    );
    let kbps = |b: u64| b as f64 / idle.secs / 1000.0;
    let total_bytes = idle.up.1 + idle.down.1;
    println!("| measure | value | goal | Harness (documented) |");
    println!("|---|---:|---|---|");
    println!(
        "| RSS (VmRSS) | {:.1} MiB ({} kB; anon {} kB, file {} kB) | < 10 MB | ~15 MB |",
        idle.rss_kb as f64 / 1024.0,
        idle.rss_kb,
        idle.rss_anon_kb,
        idle.rss_file_kb
    );
    println!(
        "| RSS by mapping (smaps) | executable {} kB, shared libraries {} kB, no file (heap, stacks) {} kB | | |",
        idle.rss_exe_kb, idle.rss_libs_kb, idle.rss_nofile_kb
    );
    println!(
        "| RSS as `ps -o rss` shows | {} kB (VSZ {} kB, {} threads, peak VmHWM {} kB) | | |",
        idle.ps_rss_kb, idle.vsz_kb, idle.threads, idle.hwm_kb
    );
    println!(
        "| CPU, utime+stime | {:.3}% of one core ({:.2} s) | < 0.1% | |",
        idle.cpu_ticks / idle.secs * 100.0,
        idle.cpu_ticks
    );
    println!(
        "| CPU, threads' schedstat | {:.4}% of one core ({:.1} ms) | < 0.1% | |",
        idle.cpu_sched / idle.secs * 100.0,
        idle.cpu_sched * 1e3
    );
    println!(
        "| wake-ups | {:.1}/s ({} voluntary, {} involuntary context switches) | | |",
        idle.switches.0 as f64 / idle.secs,
        idle.switches.0,
        idle.switches.1
    );
    println!(
        "| network, both ways | {:.3} KB/s ({} B up in {} packets, {} B down in {} packets) | < 0.1 KB/s | 0.15 KB/s |",
        kbps(total_bytes),
        idle.up.1,
        idle.up.0,
        idle.down.1,
        idle.down.0
    );
    println!(
        "\nratios Harness / daemon: memory {:.1}x, network {}",
        15.0 * 1000.0 / (idle.rss_kb as f64 * 1.024),
        if total_bytes == 0 {
            "n/a (no traffic in the window)".to_string()
        } else {
            format!("{:.1}x", 0.15 / kbps(total_bytes))
        }
    );
    println!("\ntotal {total:.0} s");
    drop(daemon_a);
    drop(daemon_b);
    drop(victim_b);
    drop((cp_a, cp_b, cp_c));
    drop(tmp);
    drop(ns);
    Ok(())
}
