//! `chaos-control`: the reference control plane for chaos-agent, and its command line.
//! See `chaos-control --help`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use chaos_control::pki::{self, format_ms, InitOptions, Paths};
use chaos_control::server::{self, Server, Settings};
use chaos_control::store::Database;
use chaos_engine::experiment::Experiment;
use chaos_protocol::admin::{
    AbortRequest, AddAgentRequest, AgentInfo, AgentList, CreateRunsRequest, CreateRunsResponse,
    LogPage, RegistrationKey, RunDetail, RunList,
};
use chaos_protocol::client::Method;
use chaos_protocol::client::{Client, ClientConfig, ClientError};
use chaos_protocol::{now_ms, ErrorCode};
use clap::{Args, Parser, Subcommand, ValueEnum};

/// Text from the server (names, messages, log lines, host facts an agent reported) made
/// safe for a terminal: control characters other than line breaks and tabs are printed
/// escaped (`\u{1b}`), so nothing stored through the API can drive the operator's terminal.
fn terminal_safe(s: &str) -> std::borrow::Cow<'_, str> {
    if !s
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\t'))
    {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() && !matches!(c, '\n' | '\t') {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// `println!` through [`terminal_safe`]: every line this program prints goes through it.
macro_rules! say {
    () => {
        println!()
    };
    ($($t:tt)*) => {
        println!("{}", terminal_safe(&format!($($t)*)))
    };
}

const AFTER_HELP: &str = "\
Getting started (one machine, one minute):
  chaos-control init --state-dir ./cc --name $(hostname)
        creates a private CA, a server certificate for these names, an admin token,
        and prints the agent configuration snippet (URL, CA fingerprint)
  chaos-control serve --state-dir ./cc          HTTPS API on 0.0.0.0:8443
  chaos-control agents add web-01 --state-dir ./cc
        prints a one-time registration key for the agent on web-01
  chaos-control agents list --state-dir ./cc    state, last seen, version, host facts
  chaos-control run demo.toml --agent web-01 --follow --state-dir ./cc

The operator commands (agents, run, runs) talk to the API with the admin token from the
state directory; --url, --ca and --admin-token-file point them elsewhere.

Exit status:
  0  success
  1  failure (the server refused, or cannot be reached)
  2  invalid input: bad arguments, an invalid experiment, or a fault kind an agent did
     not register (see `chaos-agent doctor` on it); nothing was created";

/// The reference control plane for chaos-agent: an HTTPS API that agents poll, an embedded
/// store, and commands for people.
///
/// Agents connect out to it (they open no port). Experiments are validated here with the
/// same fault registry the agent uses, so a bad experiment is refused before any agent
/// sees it.
#[derive(Debug, Parser)]
#[command(name = "chaos-control", version, about, long_about, after_help = AFTER_HELP)]
struct Cli {
    /// Directory holding the CA, certificates, admin token and store.
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        env = "CHAOS_CONTROL_STATE_DIR",
        default_value = "/var/lib/chaos-control"
    )]
    state_dir: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the state directory: private CA, server certificate, admin token, store.
    ///
    /// Prints the agent configuration snippet (URL and CA fingerprint). `localhost` and
    /// 127.0.0.1 are always in the certificate, for the commands on this machine.
    Init {
        /// A DNS name or IP address agents use to reach this server (repeat for more).
        /// Default: this machine's host name.
        #[arg(long = "name", value_name = "NAME|IP")]
        names: Vec<String>,
        /// The port `serve` listens on and the URL says.
        #[arg(long, default_value_t = 8443)]
        port: u16,
        /// Replace an existing CA, certificates and admin token (agents keep their
        /// registrations but need the new CA).
        #[arg(long)]
        force: bool,
        /// Keep the store in this PostgreSQL database instead of the SQLite file of the state
        /// directory (postgres://USER:PASSWORD@HOST:PORT/DBNAME). Prefer the environment
        /// variable: a command line is visible to every user of the machine.
        #[arg(
            long,
            value_name = "URL",
            env = "CHAOS_CONTROL_DATABASE",
            hide_env_values = true
        )]
        database: Option<String>,
    },
    /// Serve the HTTPS API until SIGINT/SIGTERM (then finish requests and stop). SIGHUP
    /// reloads the server certificate and key.
    Serve(ServeArgs),
    /// Copy the SQLite store of the state directory into an empty PostgreSQL database.
    ///
    /// Stop `serve` first (what it writes after the copy began is not copied). Everything
    /// is copied in one transaction: agents keep their identities and tokens, runs their
    /// logs. Then start `serve --database URL`, on as many machines as needed. The SQLite
    /// file is only read.
    Migrate {
        /// The PostgreSQL database (postgres://USER:PASSWORD@HOST:PORT/DBNAME).
        #[arg(
            long,
            value_name = "URL",
            env = "CHAOS_CONTROL_DATABASE",
            hide_env_values = true
        )]
        to: String,
    },
    /// The server certificate: `cert reissue` makes a new one from the same CA.
    #[command(subcommand)]
    Cert(CertCmd),
    /// The private CA: `ca rotate` replaces it, with an overlap during which agents trust
    /// the old and the new CA.
    #[command(subcommand)]
    Ca(CaCmd),
    /// Add, list, show, rekey or revoke agents.
    #[command(subcommand)]
    Agents(AgentsCmd),
    /// Run an experiment file on one or more agents (one run per agent).
    ///
    /// The file is validated here and again by the server; if anything is wrong, every
    /// problem is listed and nothing is created.
    Run {
        /// The experiment file (TOML, the same format `chaos-agent run` reads).
        file: PathBuf,
        /// Agent name or id (repeat, or separate with commas).
        #[arg(long = "agent", short = 'a', required = true, value_delimiter = ',')]
        agents: Vec<String>,
        /// The lease: an agent that cannot reach this server for this long aborts the run
        /// and reverts. Default: the server's.
        #[arg(long, value_name = "DURATION")]
        lease: Option<fault_core::Duration>,
        /// Follow the run's logs until it ends (only with one agent).
        #[arg(long, short)]
        follow: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// List, show, follow or abort runs.
    #[command(subcommand)]
    Runs(RunsCmd),
}

#[derive(Debug, Subcommand)]
enum CertCmd {
    /// A new server certificate and key from the CA in use (new names, a new five-year
    /// expiry); agents need nothing new. `serve` uses it after SIGHUP or a restart.
    Reissue {
        /// The names and addresses agents use (repeat); `localhost` and 127.0.0.1 are always
        /// added. Default: the certificate's current names.
        #[arg(long = "name", value_name = "NAME|IP")]
        names: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum CaCmd {
    /// Replace the CA in steps, agents trusting both CAs in between:
    /// --stage (ca.pem holds old + new: copy it to the agents), then --activate (the
    /// server certificate is signed by the new CA), then --finish (ca.pem holds only the
    /// new CA: copy it again, with its fingerprint). --cancel goes back to the old CA.
    Rotate {
        #[command(flatten)]
        step: RotateStep,
    },
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct RotateStep {
    /// Create the new CA; ca.pem holds the old and the new one.
    #[arg(long)]
    stage: bool,
    /// Sign the server certificate with the new CA.
    #[arg(long)]
    activate: bool,
    /// Keep only the new CA (its key replaces the old one).
    #[arg(long)]
    finish: bool,
    /// Back to the old CA alone.
    #[arg(long)]
    cancel: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address and port to listen on. Default: 0.0.0.0 and the port given to `init`.
    #[arg(long, value_name = "ADDR:PORT", env = "CHAOS_CONTROL_LISTEN")]
    listen: Option<SocketAddr>,
    /// Lifetime of agent access tokens (agents rotate at half of it).
    #[arg(long, value_name = "DURATION", default_value = "1h")]
    token_ttl: fault_core::Duration,
    /// Default lifetime of registration keys.
    #[arg(long, value_name = "DURATION", default_value = "24h")]
    key_ttl: fault_core::Duration,
    /// Mark an agent lost after this long without a call.
    #[arg(long, value_name = "DURATION", default_value = "2m")]
    lost_after: fault_core::Duration,
    /// The long-poll wait agents are asked to use (at most 60s).
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    poll_wait: fault_core::Duration,
    /// Default lease of a run.
    #[arg(long, value_name = "DURATION", default_value = "2m")]
    lease: fault_core::Duration,
    /// Connections held at most (a new one over it is closed at once). Default: the
    /// open-files limit (raised to its hard limit at start) minus 256.
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Connections held at most from one client address (raise it when many agents
    /// reach the server through one NAT or proxy address).
    #[arg(long, value_name = "N", default_value_t = 1024)]
    max_connections_per_peer: usize,
    /// Time a client has for its TLS handshake, then for each request head (also the
    /// longest a kept-alive connection may sit idle).
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    header_timeout: fault_core::Duration,
    /// Time a client has to send a request body once its head is in.
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    body_timeout: fault_core::Duration,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (plain HTTP, no token: keep it
    /// on a private address). Off by default.
    #[arg(long, value_name = "ADDR:PORT", env = "CHAOS_CONTROL_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Log format (logs go to stderr; RUST_LOG sets the level, default info).
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// The store is this PostgreSQL database (postgres://USER:PASSWORD@HOST:PORT/DBNAME),
    /// not the SQLite file of the state directory. Several `serve` replicas with the same
    /// database and a copy of the same state directory serve one fleet. Prefer the
    /// environment variable: a command line is visible to every user of the machine.
    #[arg(
        long,
        value_name = "URL",
        env = "CHAOS_CONTROL_DATABASE",
        hide_env_values = true
    )]
    database: Option<String>,
}

#[derive(Debug, Args)]
struct Conn {
    /// The API's URL. Default: https://127.0.0.1:<port from init>.
    #[arg(long, global = true, env = "CHAOS_CONTROL_URL")]
    url: Option<String>,
    /// The CA certificate to trust. Default: <state-dir>/ca.pem.
    #[arg(long, global = true, value_name = "FILE", env = "CHAOS_CONTROL_CA")]
    ca: Option<PathBuf>,
    /// File holding the admin token. Default: <state-dir>/admin.token.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "CHAOS_CONTROL_ADMIN_TOKEN_FILE"
    )]
    admin_token_file: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum AgentsCmd {
    /// Add an agent; prints its one-time registration key.
    Add {
        /// A unique name: letters, digits, '.', '_', '-'.
        name: String,
        /// How long the key stays valid. Default: the server's (24h).
        #[arg(long, value_name = "DURATION")]
        key_ttl: Option<fault_core::Duration>,
        #[command(flatten)]
        conn: Conn,
    },
    /// List agents: state, last seen, version, host.
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Show one agent with its host facts.
    Show {
        /// Name or id.
        agent: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Issue a new registration key: drops the agent's tokens and lifts a lock.
    Rekey {
        /// Name or id.
        agent: String,
        /// Let a revoked agent back in (refused without it: a revoked agent stays revoked
        /// until the operator says otherwise).
        #[arg(long)]
        unrevoke: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Revoke an agent: every token and key of it stops working.
    Revoke {
        /// Name or id.
        agent: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Debug, Subcommand)]
enum RunsCmd {
    /// List runs, newest first.
    List {
        /// Only this agent's runs.
        #[arg(long)]
        agent: Option<String>,
        /// Only runs in this state (pending, running, completed, failed, aborted).
        #[arg(long)]
        state: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show a run: steps, faults, states, result.
    Show {
        /// Run id.
        run: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Print a run's logs; --follow waits for more until the run ends.
    Logs {
        /// Run id.
        run: String,
        /// Keep printing new lines until the run ends.
        #[arg(long, short)]
        follow: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Ask the agent to abort a run and revert.
    Abort {
        /// Run id.
        run: String,
        /// Why (shown to the agent and in the run).
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
}

/// An error that carries its exit status.
#[derive(Debug)]
struct Exit(u8, String);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.1)
    }
}

impl std::error::Error for Exit {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chaos-control: error: {}", terminal_safe(&format!("{e:#}")));
            let code = if let Some(x) = e.downcast_ref::<Exit>() {
                x.0
            } else if let Some(c) = e.downcast_ref::<ClientError>() {
                match c.code() {
                    Some(ErrorCode::Invalid | ErrorCode::MalformedJson | ErrorCode::BadRequest) => {
                        2
                    }
                    _ => 1,
                }
            } else {
                1
            };
            ExitCode::from(code)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let state = cli.state_dir;
    match cli.command {
        Command::Init {
            names,
            port,
            force,
            database,
        } => {
            let database = database_arg(database.as_deref(), &Paths::new(&state))?;
            let names = if names.is_empty() {
                vec![hostname()]
            } else {
                names
            };
            let report = pki::init(&InitOptions {
                state_dir: state.clone(),
                names,
                port,
                force,
                database,
            })?;
            print!("{}", terminal_safe(&report.render()));
            Ok(())
        }
        Command::Serve(args) => serve(&state, args),
        Command::Migrate { to } => migrate(&state, &to),
        Command::Cert(CertCmd::Reissue { names }) => {
            let done = chaos_control::rotate::reissue(&Paths::new(&state), &names)?;
            print!("{}", terminal_safe(&done.render()));
            Ok(())
        }
        Command::Ca(CaCmd::Rotate { step }) => {
            let paths = Paths::new(&state);
            let done = if step.stage {
                chaos_control::rotate::stage(&paths)
            } else if step.activate {
                chaos_control::rotate::activate(&paths)
            } else if step.finish {
                chaos_control::rotate::finish(&paths)
            } else {
                chaos_control::rotate::cancel(&paths)
            }?;
            print!("{}", terminal_safe(&done.render()));
            Ok(())
        }
        Command::Agents(cmd) => agents(&state, cmd),
        Command::Run {
            file,
            agents,
            lease,
            follow,
            conn,
        } => run_file(&state, &file, agents, lease, follow, &conn),
        Command::Runs(cmd) => runs(&state, cmd),
    }
}

/// `--database`: `None` when absent (the SQLite file), exit status 2 when not a usable URL.
fn database_arg(url: Option<&str>, paths: &Paths) -> anyhow::Result<Option<Database>> {
    match url {
        None => Ok(None),
        Some(u) => match Database::choose(Some(u), &paths.db()) {
            Ok(Database::Sqlite(_)) => Ok(None),
            Ok(db) => Ok(Some(db)),
            Err(e) => bail!(Exit(2, e.to_string())),
        },
    }
}

fn migrate(state: &Path, to: &str) -> anyhow::Result<()> {
    let paths = Paths::new(state);
    let Some(db) = database_arg(Some(to), &paths)? else {
        bail!(Exit(2, "--to must be a postgres:// URL".into()));
    };
    let from = paths.db();
    let copied = chaos_control::store::sqlite_to_postgres(&from, to)
        .with_context(|| format!("cannot migrate {} to {db}", from.display()))?;
    println!("Copied {} into {db}:", from.display());
    for (table, n) in &copied.tables {
        println!("  {table:<11} {n:>8} rows");
    }
    println!(
        "\nNext: chaos-control serve --state-dir {} with CHAOS_CONTROL_DATABASE set to that URL \
         (or --database). {} is no longer used by it; keep it until the new store has served.",
        fault_core::host::shell::quote(&state.display().to_string()),
        from.display()
    );
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

fn serve(state: &Path, a: ServeArgs) -> anyhow::Result<()> {
    init_logs(a.log_format);
    let paths = Paths::new(state);
    let info = paths.init_info()?;
    let listen = a
        .listen
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], info.port)));
    let poll_wait = a
        .poll_wait
        .0
        .min(Duration::from_secs(chaos_protocol::MAX_WAIT_SECS));
    if a.token_ttl.0 < Duration::from_secs(60) {
        bail!(Exit(2, "--token-ttl must be at least 1m".into()));
    }
    if a.lost_after.0 <= poll_wait {
        bail!(Exit(
            2,
            "--lost-after must be longer than --poll-wait, or every agent looks lost".into()
        ));
    }
    for (flag, d) in [
        ("--header-timeout", a.header_timeout.0),
        ("--body-timeout", a.body_timeout.0),
    ] {
        if d < Duration::from_secs(1) || d > Duration::from_secs(600) {
            bail!(Exit(2, format!("{flag} must be 1s to 10m")));
        }
    }
    if a.max_connections == Some(0) || a.max_connections_per_peer == 0 {
        bail!(Exit(
            2,
            "--max-connections and --max-connections-per-peer must be at least 1".into()
        ));
    }
    let database = database_arg(a.database.as_deref(), &paths)?;
    let settings = Settings {
        database,
        header_timeout: a.header_timeout.0,
        body_timeout: a.body_timeout.0,
        max_connections: a.max_connections,
        max_connections_per_peer: a.max_connections_per_peer,
        token_ttl: a.token_ttl.0,
        key_ttl: a.key_ttl.0,
        lost_after: a.lost_after.0,
        poll_wait,
        lease: a.lease.0,
        ..Settings::default()
    };
    let nofile = server::raise_nofile();
    let server = Server::open(&paths, settings.clone())?;
    tracing::info!(
        state_dir = %state.display(),
        url = %info.url,
        store = %settings.database.clone().unwrap_or_else(|| Database::Sqlite(paths.db())),
        token_ttl_s = settings.token_ttl.as_secs(),
        lost_after_s = settings.lost_after.as_secs(),
        open_files_limit = nofile,
        "chaos-control starting"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        let listener = listen_on(listen).with_context(|| format!("cannot listen on {listen}"))?;
        if let Some(m) = a.metrics_listen {
            let ml = tokio::net::TcpListener::bind(m)
                .await
                .with_context(|| format!("cannot listen on {m} (--metrics-listen)"))?;
            let router = server::metrics_router(server.app());
            tracing::info!(addr = %m, "metrics at http://{m}/metrics");
            tokio::spawn(async move {
                if let Err(e) = axum::serve(ml, router).await {
                    tracing::error!(error = %e, "the metrics listener stopped");
                }
            });
        }
        server.run(listener, stop_signal()).await?;
        anyhow::Ok(())
    })?;
    Ok(())
}

/// A listener with a deep accept backlog (std's is 128), for many agents reconnecting at once.
fn listen_on(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(4096)?.into_std()
}

async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn init_logs(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => b.json().flatten_event(true).init(),
        LogFormat::Text => b.init(),
    }
}

/// What the operator commands need to talk to the API.
struct Api {
    client: Client,
    token: String,
    json: bool,
}

impl Api {
    fn open(state: &Path, conn: &Conn) -> anyhow::Result<Api> {
        let paths = Paths::new(state);
        let url = match &conn.url {
            Some(u) => u.clone(),
            None => {
                let info = paths.init_info()?;
                format!("https://127.0.0.1:{}", info.port)
            }
        };
        let ca_path = conn.ca.clone().unwrap_or_else(|| paths.ca_pem());
        let ca = std::fs::read(&ca_path).with_context(|| {
            format!(
                "cannot read the CA certificate {} (pass --ca or --state-dir)",
                ca_path.display()
            )
        })?;
        let token_path = conn
            .admin_token_file
            .clone()
            .unwrap_or_else(|| paths.admin_token());
        let token = std::fs::read_to_string(&token_path)
            .with_context(|| {
                format!(
                    "cannot read the admin token {} (pass --admin-token-file or --state-dir; \
                     it is readable only by its owner)",
                    token_path.display()
                )
            })?
            .trim()
            .to_string();
        let client = Client::new(ClientConfig::new(url, ca))?;
        Ok(Api {
            client,
            token,
            json: conn.json,
        })
    }

    fn get<R: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<R> {
        Ok(self
            .client
            .call::<(), R>(Method::GET, path, Some(&self.token), None)?)
    }

    fn post<B: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<R> {
        Ok(self
            .client
            .call(Method::POST, path, Some(&self.token), Some(body))?)
    }

    fn print_json<T: serde::Serialize>(&self, v: &T) -> anyhow::Result<()> {
        say!("{}", serde_json::to_string_pretty(v)?);
        Ok(())
    }
}

fn enc(s: &str) -> String {
    // Path segments are names or ids; anything else is refused by the server anyway.
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn ago(ms: Option<u64>) -> String {
    let Some(t) = ms else { return "never".into() };
    let s = now_ms().saturating_sub(t) / 1000;
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86_399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

fn agents(state: &Path, cmd: AgentsCmd) -> anyhow::Result<()> {
    match cmd {
        AgentsCmd::Add {
            name,
            key_ttl,
            conn,
        } => {
            let api = Api::open(state, &conn)?;
            let k: RegistrationKey = api.post(
                "/admin/agents",
                &AddAgentRequest {
                    name,
                    key_ttl_secs: key_ttl.map(|d| d.0.as_secs().max(1)),
                },
            )?;
            if api.json {
                return api.print_json(&k);
            }
            print_key(&k, "added");
            Ok(())
        }
        AgentsCmd::List { conn } => {
            let api = Api::open(state, &conn)?;
            let list: AgentList = api.get("/admin/agents")?;
            if api.json {
                return api.print_json(&list);
            }
            if list.agents.is_empty() {
                say!("no agents yet; add one with `chaos-control agents add NAME`");
                return Ok(());
            }
            say!(
                "{:<20} {:<16} {:<8} {:<10} {:<10} {:<20} KERNEL",
                "NAME",
                "ID",
                "STATE",
                "LAST SEEN",
                "VERSION",
                "HOST"
            );
            for a in &list.agents {
                let h = a.host.as_ref();
                say!(
                    "{:<20} {:<16} {:<8} {:<10} {:<10} {:<20} {}",
                    a.name,
                    a.agent_id,
                    a.state.as_str(),
                    ago(a.last_seen_ms),
                    h.map(|h| h.agent_version.as_str()).unwrap_or("-"),
                    h.map(|h| h.hostname.as_str()).unwrap_or("-"),
                    h.map(|h| h.kernel.as_str()).unwrap_or("-"),
                );
            }
            for a in list.agents.iter().filter(|a| a.state_reason.is_some()) {
                say!(
                    "\n{} is {}: {}",
                    a.name,
                    a.state.as_str(),
                    a.state_reason.as_deref().unwrap_or_default()
                );
            }
            Ok(())
        }
        AgentsCmd::Show { agent, conn } => {
            let api = Api::open(state, &conn)?;
            let a: AgentInfo = api.get(&format!("/admin/agents/{}", enc(&agent)))?;
            if api.json {
                return api.print_json(&a);
            }
            print_agent(&a);
            Ok(())
        }
        AgentsCmd::Rekey {
            agent,
            unrevoke,
            conn,
        } => {
            let api = Api::open(state, &conn)?;
            let body = if unrevoke {
                serde_json::json!({ "unrevoke": true })
            } else {
                serde_json::json!({})
            };
            let k: RegistrationKey =
                api.post(&format!("/admin/agents/{}/rekey", enc(&agent)), &body)?;
            if api.json {
                return api.print_json(&k);
            }
            print_key(&k, "rekeyed (its tokens no longer work)");
            Ok(())
        }
        AgentsCmd::Revoke {
            agent,
            reason,
            conn,
        } => {
            let api = Api::open(state, &conn)?;
            let a: AgentInfo = api.post(
                &format!("/admin/agents/{}/revoke", enc(&agent)),
                &AbortRequest { reason },
            )?;
            if api.json {
                return api.print_json(&a);
            }
            say!("agent {} ({}) revoked", a.name, a.agent_id);
            Ok(())
        }
    }
}

fn print_key(k: &RegistrationKey, what: &str) {
    say!("agent {} ({}) {what}", k.name, k.agent_id);
    say!();
    say!(
        "registration key (one use, expires {}):",
        format_ms(k.expires_at_ms)
    );
    say!("  {}", k.registration_key);
    say!();
    say!("Put it in the agent's configuration as `registration_key`; the agent trades it");
    say!("for its own rotating token at first start. Keep it secret until then.");
}

fn print_agent(a: &AgentInfo) {
    say!("name          {}", a.name);
    say!("id            {}", a.agent_id);
    say!("state         {}", a.state.as_str());
    if let Some(r) = &a.state_reason {
        say!("reason        {r}");
    }
    say!("added         {}", format_ms(a.created_at_ms));
    if let Some(t) = a.registered_at_ms {
        say!("registered    {}", format_ms(t));
    }
    say!("last seen     {}", ago(a.last_seen_ms));
    say!("token gen.    {}", a.token_generation);
    if let Some(h) = &a.host {
        say!("hostname      {}", h.hostname);
        say!("version       {}", h.agent_version);
        say!("os            {}", h.os);
        say!("kernel        {}", h.kernel);
        say!("arch          {}", h.arch);
        say!("machine id    {}", h.machine_id);
        say!("kinds         {}", h.kinds.join(", "));
    }
}

fn run_file(
    state: &Path,
    file: &Path,
    agents: Vec<String>,
    lease: Option<fault_core::Duration>,
    follow: bool,
    conn: &Conn,
) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    // The same validation the server does, so problems show with line numbers and
    // without a round trip.
    let prepared = Experiment::load_toml(&text, &chaos_control::registry())
        .map_err(|e| Exit(2, format!("{}: {e}", file.display())))?;
    if follow && agents.len() != 1 {
        bail!(Exit(2, "--follow needs exactly one --agent".into()));
    }
    let api = Api::open(state, conn)?;
    let resp: CreateRunsResponse = api.post(
        "/admin/runs",
        &CreateRunsRequest {
            experiment: prepared.experiment.to_value(),
            agents,
            lease_secs: lease.map(|d| d.0.as_secs()),
        },
    )?;
    if api.json && !follow {
        return api.print_json(&resp);
    }
    for r in &resp.runs {
        say!("run {} created for agent {}", r.run_id, r.agent_name);
    }
    if follow {
        follow_logs(&api, &resp.runs[0].run_id)?;
        show_run(&api, &resp.runs[0].run_id)?;
    } else {
        for r in &resp.runs {
            say!(
                "\nwatch:   chaos-control runs logs --follow {id}\ndetails: chaos-control runs show {id}\nabort:   chaos-control runs abort {id}",
                id = r.run_id
            );
        }
    }
    Ok(())
}

fn runs(state: &Path, cmd: RunsCmd) -> anyhow::Result<()> {
    match cmd {
        RunsCmd::List {
            agent,
            state: st,
            limit,
            conn,
        } => {
            let api = Api::open(state, &conn)?;
            let mut q = format!("/admin/runs?limit={limit}");
            if let Some(a) = agent {
                q.push_str(&format!("&agent={}", enc(&a)));
            }
            if let Some(s) = st {
                q.push_str(&format!("&state={}", enc(&s)));
            }
            let list: RunList = api.get(&q)?;
            if api.json {
                return api.print_json(&list);
            }
            if list.runs.is_empty() {
                say!("no runs");
                return Ok(());
            }
            say!(
                "{:<9} {:<20} {:<24} {:<10} {:<10} ABORT",
                "RUN",
                "AGENT",
                "EXPERIMENT",
                "STATE",
                "CREATED"
            );
            for r in &list.runs {
                say!(
                    "{:<9} {:<20} {:<24} {:<10} {:<10} {}",
                    r.run_id,
                    r.agent_name,
                    r.name,
                    r.state.as_str(),
                    ago(Some(r.created_at_ms)),
                    if r.abort_requested { "requested" } else { "" }
                );
            }
            Ok(())
        }
        RunsCmd::Show { run, conn } => {
            let api = Api::open(state, &conn)?;
            if api.json {
                let d: RunDetail = api.get(&format!("/admin/runs/{}", enc(&run)))?;
                return api.print_json(&d);
            }
            show_run(&api, &run)
        }
        RunsCmd::Logs { run, follow, conn } => {
            let api = Api::open(state, &conn)?;
            if follow {
                follow_logs(&api, &run)
            } else {
                let mut after = 0;
                loop {
                    let p: LogPage =
                        api.get(&format!("/admin/runs/{}/logs?after={after}", enc(&run)))?;
                    print_lines(&api, &p)?;
                    if p.lines.is_empty() {
                        return Ok(());
                    }
                    after = p.next_after;
                }
            }
        }
        RunsCmd::Abort { run, reason, conn } => {
            let api = Api::open(state, &conn)?;
            let d: RunDetail = api.post(
                &format!("/admin/runs/{}/abort", enc(&run)),
                &AbortRequest { reason },
            )?;
            if api.json {
                return api.print_json(&d);
            }
            if d.summary.state.is_terminal() {
                say!("run {} {}", run, d.summary.state.as_str());
            } else {
                say!(
                    "abort of run {run} requested; agent {} will revert and report",
                    d.summary.agent_name
                );
            }
            Ok(())
        }
    }
}

fn print_lines(api: &Api, p: &LogPage) -> anyhow::Result<()> {
    for l in &p.lines {
        if api.json {
            say!("{}", serde_json::to_string(l)?);
        } else {
            let level = serde_json::to_value(l.level)?;
            say!(
                "{} {:<5} {}",
                format_ms(l.at_ms),
                level.as_str().unwrap_or(""),
                l.message
            );
        }
    }
    Ok(())
}

fn follow_logs(api: &Api, run: &str) -> anyhow::Result<()> {
    let mut after = 0;
    loop {
        let p: LogPage = api.get(&format!(
            "/admin/runs/{}/logs?after={after}&wait=25",
            enc(run)
        ))?;
        print_lines(api, &p)?;
        after = p.next_after;
        if p.finished && p.lines.is_empty() {
            return Ok(());
        }
    }
}

fn show_run(api: &Api, run: &str) -> anyhow::Result<()> {
    let d: RunDetail = api.get(&format!("/admin/runs/{}", enc(run)))?;
    let s = &d.summary;
    say!("run           {}", s.run_id);
    say!("experiment    {}", s.name);
    say!("agent         {} ({})", s.agent_name, s.agent_id);
    say!("state         {}", s.state.as_str());
    say!("created       {}", format_ms(s.created_at_ms));
    for (label, t) in [
        ("delivered", s.delivered_at_ms),
        ("started", s.started_at_ms),
        ("finished", s.finished_at_ms),
    ] {
        if let Some(t) = t {
            say!("{label:<13} {}", format_ms(t));
        }
    }
    say!("lease         {}s", d.lease_secs);
    if s.abort_requested {
        say!(
            "abort         requested: {}",
            d.abort_reason.as_deref().unwrap_or("")
        );
    }
    if let Some(m) = &d.message {
        say!("message       {m}");
    }
    say!("log lines     {}", d.log_lines);
    let steps = d.experiment["steps"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    say!("\nsteps:");
    for (i, st) in steps.iter().enumerate() {
        say!(
            "  {}. {}",
            i + 1,
            st["name"].as_str().unwrap_or("(unnamed)")
        );
        for f in st["faults"].as_array().into_iter().flatten() {
            say!(
                "       {} for {}",
                f["kind"].as_str().unwrap_or("?"),
                f["duration"].as_str().unwrap_or("?")
            );
        }
    }
    if !d.faults.is_empty() {
        say!("\nfaults:");
        for f in &d.faults {
            let st = serde_json::to_value(f.state)?;
            say!(
                "  {:<16} {:<16} {:<13} {}",
                f.fault_id,
                f.kind,
                st.as_str().unwrap_or(""),
                f.detail
            );
        }
    }
    if let Some(r) = &d.result {
        let outcome = serde_json::to_value(r.outcome)?;
        say!(
            "\nresult: {} in {} ms; host clean: {}",
            outcome.as_str().unwrap_or(""),
            r.elapsed_ms,
            if r.host_clean() { "yes" } else { "NO" }
        );
        if let Some(a) = &r.abort_reason {
            say!("  aborted: {a}");
        }
        for (i, st) in r.steps.iter().enumerate() {
            let o = serde_json::to_value(st.outcome)?;
            say!("  step {} {}: {}", i + 1, st.name, o.as_str().unwrap_or(""));
            if let Some(e) = &st.error {
                say!("    error: {e}");
            }
            for f in &st.faults {
                let rv = serde_json::to_value(f.revert)?;
                say!(
                    "    {} {} held {} ms, revert {}{}",
                    f.fault_id,
                    f.kind,
                    f.held_ms,
                    rv.as_str().unwrap_or(""),
                    f.error
                        .as_deref()
                        .map(|e| format!(", error: {e}"))
                        .unwrap_or_default()
                );
                for u in &f.manual_undo {
                    say!("      undo by hand: {u}");
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::terminal_safe;

    #[test]
    fn control_characters_are_printed_escaped() {
        assert_eq!(
            terminal_safe("plain text\tand\nlines"),
            "plain text\tand\nlines"
        );
        assert_eq!(
            terminal_safe("\u{1b}[2J\u{1b}]0;owned\u{7}x\ry"),
            "\\u{1b}[2J\\u{1b}]0;owned\\u{7}x\\u{d}y"
        );
        assert_eq!(terminal_safe("\u{9b}31m"), "\\u{9b}31m");
    }
}
