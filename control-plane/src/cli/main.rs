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

mod ops;
use ops::{agents, run_file, runs};

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
        #[command(flatten)]
        db: DbArgs,
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
        /// The CA certificate(s) (PEM) that sign PostgreSQL's server certificate: the
        /// connection is then TLS, and the URL's host must be in that certificate.
        #[arg(long, value_name = "FILE", env = "CHAOS_CONTROL_DATABASE_CA")]
        database_ca: Option<PathBuf>,
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
    #[command(flatten)]
    db: DbArgs,
}

/// Where the store is: the SQLite file of the state directory, or PostgreSQL.
#[derive(Debug, Args)]
struct DbArgs {
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
    /// The CA certificate(s) (PEM) that sign PostgreSQL's server certificate: the
    /// connection is then TLS (never plain text), and the URL's host must be in that
    /// certificate. Without it the connection is plain text: keep it on loopback, a Unix
    /// socket or a private network.
    #[arg(long, value_name = "FILE", env = "CHAOS_CONTROL_DATABASE_CA")]
    database_ca: Option<PathBuf>,
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
            db,
        } => {
            let database = database_arg(&db, &Paths::new(&state))?;
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
        Command::Migrate { to, database_ca } => migrate(
            &state,
            &DbArgs {
                database: Some(to),
                database_ca,
            },
        ),
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
fn database_arg(a: &DbArgs, paths: &Paths) -> anyhow::Result<Option<Database>> {
    match Database::choose(a.database.as_deref(), a.database_ca.as_deref(), &paths.db()) {
        Ok(Database::Sqlite(_)) => Ok(None),
        Ok(db) => Ok(Some(db)),
        Err(e) => bail!(Exit(2, e.to_string())),
    }
}

fn migrate(state: &Path, to: &DbArgs) -> anyhow::Result<()> {
    let paths = Paths::new(state);
    let Some(db) = database_arg(to, &paths)? else {
        bail!(Exit(2, "--to must be a postgres:// URL".into()));
    };
    let Database::Postgres(target) = &db else {
        bail!(Exit(2, "--to must be a postgres:// URL".into()));
    };
    let from = paths.db();
    let copied = chaos_control::store::sqlite_to_postgres(&from, target)
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
    let database = database_arg(&a.db, &paths)?;
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
