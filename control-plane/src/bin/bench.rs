//! `chaos-control-bench`: many simulated agents long-polling one `chaos-control serve` over
//! TLS on 127.0.0.1, measuring connections held, the server's RSS and CPU, and dispatch
//! latency (run created -> agent received it).
//!
//! ```text
//! cargo build --release -p chaos-control
//! target/release/chaos-control-bench --agents 1000,10000
//! ```
//!
//! The server is the real binary (a child process, found next to this one), so its RSS and
//! CPU are its own. Simulated agents speak HTTP/1.1 by hand over tokio-rustls, one
//! connection each, holding a `wait=60` long poll, acknowledging each run with a `running`
//! status as an agent would. Not part of `cargo test`.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use chaos_protocol::admin::{
    AddAgentRequest, CreateRunsRequest, CreateRunsResponse, RegistrationKey,
};
use chaos_protocol::agent::{HostFacts, RegisterRequest, Task, TasksResponse};
use chaos_protocol::client::{Client, ClientConfig, Method};
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Simulated agents against one chaos-control server on this machine.
#[derive(Debug, Parser)]
#[command(name = "chaos-control-bench")]
struct Args {
    /// Numbers of agents to simulate, one round each.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    agents: Vec<usize>,
    /// Single-agent runs to create one after another, per round.
    #[arg(long, default_value_t = 200)]
    runs: usize,
    /// Also create one run on every agent at once, per round.
    #[arg(long, default_value_t = true)]
    broadcast: bool,
    /// The chaos-control binary (default: next to this one).
    #[arg(long)]
    server: Option<PathBuf>,
    /// Simultaneous TLS connects while the agents come up.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
}

type Receipts = Arc<Mutex<HashMap<String, Instant>>>;

struct Sim {
    held: AtomicUsize,
    polls: AtomicUsize,
    errors: AtomicUsize,
    stopping: std::sync::atomic::AtomicBool,
    receipts: Receipts,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let nofile = chaos_control::server::raise_nofile();
    let server_bin = match &args.server {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no parent dir")?
            .join("chaos-control"),
    };
    if !server_bin.exists() {
        bail!(
            "{} not found: `cargo build --release -p chaos-control` first",
            server_bin.display()
        );
    }
    let max = args.agents.iter().copied().max().unwrap_or(0);
    if (nofile as usize) < max + 100 {
        bail!("open-files limit {nofile} is too low for {max} agents");
    }
    println!(
        "machine: {} cores, kernel {}; open-files limit {nofile}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    let mut rows = Vec::new();
    for &n in &args.agents {
        rows.push(round(&args, &server_bin, n)?);
    }
    println!("\n| agents | held | server RSS idle | server RSS peak | idle CPU | sequential dispatch p50 / p99 / max | broadcast to all: p50 / p99 / max | broadcast CPU |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

struct ServerProc {
    child: Child,
    dir: PathBuf,
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by its pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn proc_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// utime + stime in clock ticks.
fn proc_cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields after the command: state is [0], utime is [11], stime is [12].
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

fn ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn fmt_d(d: Duration) -> String {
    if d < Duration::from_millis(10) {
        format!("{:.2} ms", d.as_secs_f64() * 1000.0)
    } else {
        format!("{:.0} ms", d.as_secs_f64() * 1000.0)
    }
}

fn round(args: &Args, bin: &Path, n: usize) -> anyhow::Result<String> {
    println!("\n== {n} agents ==");
    let dir = std::env::temp_dir().join(format!(
        "chaos-control-bench-{}",
        chaos_control::secrets::random_hex(4)
    ));
    let port = free_port()?;
    let st = Command::new(bin)
        .args(["init", "--name", "localhost", "--port"])
        .arg(port.to_string())
        .arg("--state-dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .status()?;
    if !st.success() {
        bail!("chaos-control init failed");
    }
    let log = std::fs::File::create(dir.join("serve.log"))?;
    let child = Command::new(bin)
        .args([
            "serve",
            "--poll-wait",
            "60s",
            "--lost-after",
            "10m",
            // Every simulated agent comes from 127.0.0.1.
            "--max-connections-per-peer",
            "1000000",
            "--listen",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--state-dir")
        .arg(&dir)
        .env("RUST_LOG", "warn")
        .stderr(log)
        .spawn()?;
    let server = ServerProc {
        child,
        dir: dir.clone(),
    };
    let pid = server.child.id();
    let ca = std::fs::read(dir.join("ca.pem"))?;
    let admin = std::fs::read_to_string(dir.join("admin.token"))?
        .trim()
        .to_string();
    let url = format!("https://127.0.0.1:{port}");
    let client = Client::new(ClientConfig::new(url, ca.clone()))?;
    let t = Instant::now();
    while client.health().is_err() {
        if t.elapsed() > Duration::from_secs(10) {
            bail!(
                "the server did not come up; see {}",
                dir.join("serve.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    // Register the agents (two threads: admin add + register are sequential per agent).
    let t = Instant::now();
    let creds: Vec<(String, String)> = std::thread::scope(|s| {
        let chunks: Vec<_> = (0..n)
            .collect::<Vec<_>>()
            .chunks(n.div_ceil(2).max(1))
            .map(|c| c.to_vec())
            .collect();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|idx| {
                let client = client.clone();
                let admin = admin.clone();
                s.spawn(move || -> anyhow::Result<Vec<(String, String)>> {
                    let mut out = Vec::new();
                    for i in idx {
                        let k: RegistrationKey = client.call(
                            Method::POST,
                            "/admin/agents",
                            Some(&admin),
                            Some(&AddAgentRequest {
                                name: format!("sim-{i:05}"),
                                key_ttl_secs: None,
                            }),
                        )?;
                        let r = client.register(&RegisterRequest {
                            registration_key: k.registration_key,
                            host: HostFacts {
                                hostname: format!("sim-{i:05}"),
                                agent_version: "bench".into(),
                                os: String::new(),
                                kernel: String::new(),
                                arch: String::new(),
                                machine_id: String::new(),
                                kinds: vec![],
                            },
                        })?;
                        out.push((r.agent_id, r.token.token));
                    }
                    Ok(out)
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.join().expect("register thread")?);
        }
        anyhow::Ok(all)
    })?;
    println!(
        "registered {n} agents in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // The simulated agents.
    let sim = Arc::new(Sim {
        held: AtomicUsize::new(0),
        polls: AtomicUsize::new(0),
        errors: AtomicUsize::new(0),
        stopping: std::sync::atomic::AtomicBool::new(false),
        receipts: Arc::new(Mutex::new(HashMap::new())),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let connector = tls_connector(&ca)?;
    let gate = Arc::new(tokio::sync::Semaphore::new(args.connect_concurrency));
    let t = Instant::now();
    for (id, tok) in &creds {
        let (sim, connector, gate) = (sim.clone(), connector.clone(), gate.clone());
        let (id, tok) = (id.clone(), tok.clone());
        rt.spawn(async move {
            if let Err(e) = agent(addr, connector, gate, &id, &tok, &sim).await {
                if sim.stopping.load(Ordering::Relaxed) {
                    return;
                }
                if sim.errors.fetch_add(1, Ordering::Relaxed) < 5 {
                    eprintln!("agent {id}: {e:#}");
                }
            }
        });
    }
    while sim.polls.load(Ordering::Relaxed) < n {
        if t.elapsed() > Duration::from_secs(300) {
            bail!(
                "only {} of {n} agents polling after 300 s ({} errors)",
                sim.polls.load(Ordering::Relaxed),
                sim.errors.load(Ordering::Relaxed)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "{n} agents connected over TLS and long-polling after {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // Idle: every agent holds a long poll.
    std::thread::sleep(Duration::from_secs(2));
    let tps = ticks_per_sec();
    let c0 = proc_cpu_ticks(pid);
    let idle_window = Duration::from_secs(10);
    std::thread::sleep(idle_window);
    let idle_cpu = (proc_cpu_ticks(pid) - c0) as f64 / tps as f64 / idle_window.as_secs_f64();
    let rss_idle = proc_rss_kib(pid);
    let held = sim.held.load(Ordering::Relaxed);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    println!(
        "idle: {held} connections held (server has {fds} open fds), server RSS {:.1} MiB, CPU {:.1}% of one core",
        rss_idle as f64 / 1024.0,
        idle_cpu * 100.0
    );

    let exp = serde_json::json!({
        "name": "bench",
        "steps": [{"faults": [{"kind": "disk.fill", "duration": "5s", "path": "/tmp", "size": "1MiB"}]}]
    });
    // Sequential single-agent runs.
    let mut seq = Vec::new();
    let mut rng = 0x9e3779b97f4a7c15u64;
    for _ in 0..args.runs {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let (id, _) = &creds[(rng % n as u64) as usize];
        let t0 = Instant::now();
        let r: CreateRunsResponse = client.call(
            Method::POST,
            "/admin/runs",
            Some(&admin),
            Some(&CreateRunsRequest {
                experiment: exp.clone(),
                agents: vec![id.clone()],
                lease_secs: None,
            }),
        )?;
        let run = &r.runs[0].run_id;
        let got = wait_receipt(&sim.receipts, run, Duration::from_secs(10))?;
        seq.push(got.saturating_duration_since(t0));
        std::thread::sleep(Duration::from_millis(10));
    }
    seq.sort();
    println!(
        "sequential dispatch ({} runs): p50 {} p99 {} max {}",
        seq.len(),
        fmt_d(pct(&seq, 0.5)),
        fmt_d(pct(&seq, 0.99)),
        fmt_d(*seq.last().unwrap_or(&Duration::ZERO))
    );

    // One request, one run on every agent.
    let mut bcast = String::from("-");
    let mut bcast_cpu = String::from("-");
    if args.broadcast {
        let c0 = proc_cpu_ticks(pid);
        let t0 = Instant::now();
        let r: CreateRunsResponse = client.call(
            Method::POST,
            "/admin/runs",
            Some(&admin),
            Some(&CreateRunsRequest {
                experiment: exp.clone(),
                agents: creds.iter().map(|c| c.0.clone()).collect(),
                lease_secs: None,
            }),
        )?;
        let created = t0.elapsed();
        let mut lat = Vec::with_capacity(n);
        for rr in &r.runs {
            lat.push(
                wait_receipt(&sim.receipts, &rr.run_id, Duration::from_secs(60))?
                    .saturating_duration_since(t0),
            );
        }
        let all = t0.elapsed();
        let cpu = (proc_cpu_ticks(pid) - c0) as f64 / tps as f64;
        lat.sort();
        println!(
            "broadcast to {n}: create call {} ; received p50 {} p99 {} max {}; server CPU {:.2} s over {:.2} s",
            fmt_d(created),
            fmt_d(pct(&lat, 0.5)),
            fmt_d(pct(&lat, 0.99)),
            fmt_d(*lat.last().unwrap_or(&Duration::ZERO)),
            cpu,
            all.as_secs_f64()
        );
        bcast = format!(
            "{} / {} / {}",
            fmt_d(pct(&lat, 0.5)),
            fmt_d(pct(&lat, 0.99)),
            fmt_d(*lat.last().unwrap_or(&Duration::ZERO))
        );
        bcast_cpu = format!("{cpu:.1} s");
    }
    let rss_peak = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    let errors = sim.errors.load(Ordering::Relaxed);
    if errors > 0 {
        println!("agent errors: {errors}");
    }
    let t = Instant::now();
    sim.stopping.store(true, Ordering::Relaxed);
    drop(server);
    println!(
        "server stopped (SIGTERM, {held} connections open) in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    rt.shutdown_timeout(Duration::from_secs(1));
    std::io::stdout().flush()?;
    Ok(format!(
        "| {n} | {held} | {:.1} MiB | {:.1} MiB | {:.1}% | {} / {} / {} | {bcast} | {bcast_cpu} |",
        rss_idle as f64 / 1024.0,
        rss_peak as f64 / 1024.0,
        idle_cpu * 100.0,
        fmt_d(pct(&seq, 0.5)),
        fmt_d(pct(&seq, 0.99)),
        fmt_d(*seq.last().unwrap_or(&Duration::ZERO)),
    ))
}

fn wait_receipt(r: &Receipts, run: &str, limit: Duration) -> anyhow::Result<Instant> {
    let t = Instant::now();
    loop {
        if let Some(i) = r.lock().unwrap().get(run) {
            return Ok(*i);
        }
        if t.elapsed() > limit {
            bail!("run {run} not received within {limit:?}");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn tls_connector(ca_pem: &[u8]) -> anyhow::Result<TlsConnector> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(c?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(cfg)))
}

/// One simulated agent: connect, then long-poll forever, acknowledging runs.
async fn agent(
    addr: SocketAddr,
    connector: TlsConnector,
    gate: Arc<tokio::sync::Semaphore>,
    id: &str,
    token: &str,
    sim: &Sim,
) -> anyhow::Result<()> {
    let permit = gate.acquire().await?;
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let mut tls = connector.connect(name, tcp).await?;
    drop(permit);
    sim.held.fetch_add(1, Ordering::Relaxed);
    let poll = format!(
        "GET /api/v1/agents/{id}/tasks?wait=60 HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    let mut buf = Vec::with_capacity(4096);
    let mut first = true;
    loop {
        tls.write_all(poll.as_bytes()).await?;
        if first {
            // Counted once the first poll is in flight (it will be held by the server).
            sim.polls.fetch_add(1, Ordering::Relaxed);
            first = false;
        }
        let (status, body) = read_response(&mut tls, &mut buf).await?;
        if status != 200 {
            bail!("poll: HTTP {status}: {}", String::from_utf8_lossy(&body));
        }
        let tasks: TasksResponse = serde_json::from_slice(&body)?;
        for t in tasks.tasks {
            if let Task::Run(r) = t {
                let now = Instant::now();
                sim.receipts
                    .lock()
                    .unwrap()
                    .entry(r.run_id.clone())
                    .or_insert(now);
                let body = br#"{"state":"running"}"#;
                let req = format!(
                    "POST /api/v1/runs/{}/status HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    r.run_id,
                    body.len()
                );
                tls.write_all(req.as_bytes()).await?;
                tls.write_all(body).await?;
                let (status, b) = read_response(&mut tls, &mut buf).await?;
                if status != 200 {
                    bail!("status: HTTP {status}: {}", String::from_utf8_lossy(&b));
                }
            }
        }
    }
}

async fn read_response<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> anyhow::Result<(u16, Vec<u8>)> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end])?.to_string();
            let status: u16 = head
                .split_whitespace()
                .nth(1)
                .context("no status")?
                .parse()?;
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .context("no content-length")?;
            let total = end + 4 + len;
            while buf.len() < total {
                read_more(s, buf).await?;
            }
            let body = buf[end + 4..total].to_vec();
            buf.drain(..total);
            return Ok((status, body));
        }
        read_more(s, buf).await?;
    }
}

async fn read_more<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> anyhow::Result<()> {
    let mut chunk = [0u8; 4096];
    let n = s.read(&mut chunk).await?;
    if n == 0 {
        bail!("connection closed");
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}
