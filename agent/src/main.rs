//! `chaos-agent`: runs chaos experiments on this host and always puts it back.
//!
//! This crate only wires the pieces: the kind registry (from the fault crates), the journal
//! and runner (from `fault-core`), signals, the state lock, and what a person sees. It holds
//! no fault logic. See `chaos-agent --help`.

mod daemon;
mod doctor;
mod render;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use chaos_engine::experiment::Experiment;
use chaos_engine::runner::{self, AbortHandle, RunOutcome};
use chaos_engine::Session;
use clap::{Parser, Subcommand};
use fault_core::{ErrorKind, Registry};

/// Exit statuses, documented in `--help`.
pub(crate) mod exit {
    pub const OK: u8 = 0;
    pub const FAILED: u8 = 1;
    pub const INVALID: u8 = 2;
    pub const NOT_CLEAN: u8 = 3;
    pub const BUSY: u8 = 4;
    pub const ABORTED: u8 = 130;
}

const AFTER_HELP: &str = "\
Exit status:
  0    success; the host is clean
  1    a fault failed to plan, inject or verify (everything applied was reverted)
  2    invalid input: bad arguments, an invalid experiment file, or a state directory
       others could write (nothing was touched)
  3    the host is NOT clean: a revert failed and needs a person (see `chaos-agent status`)
  4    busy: another chaos-agent holds the state directory, or an earlier run must be
       recovered first (`chaos-agent recover`)
  130  aborted by a signal; everything applied was reverted

Examples:
  chaos-agent doctor                         what this host offers each fault kind, and why not
  chaos-agent faults                         every fault kind, its parameters and an example
  chaos-agent run --dry-run demo.toml        what the experiment would change; touches nothing
  sudo chaos-agent run demo.toml             run it; Ctrl-C reverts everything and stops
  sudo chaos-agent recover                   revert whatever a crash or reboot left behind
  chaos-agent status                         what the journal holds

Environment:
  CHAOS_AGENT_STATE_DIR   the state directory (default /var/lib/chaos-agent)
  CHAOS_AGENT_LOG         diagnostics on stderr: warn, info, debug (or a tracing filter)";

const DOCTOR_HELP: &str = "\
Exit status:
  0    the agent can run here: the state directory is usable (or will be created) and holds
       nothing unreverted. Unavailable kinds are reported, not an error: most hosts lack
       something (systemd, a qdisc module); the daemon simply does not offer those kinds.
  1    the journal could not be read
  2    the state directory is refused (not a directory, another owner, writable by group
       or others): nothing can run until it is fixed
  3    records are not reverted and no agent holds the directory: run `chaos-agent recover`
  4    records are not reverted and an agent (a run, or the daemon) holds the directory:
       they are its own, in progress

Examples:
  sudo chaos-agent doctor                          as the service user sees it
  chaos-agent doctor --json | jq '.kinds[] | select(.level != \"available\")'
  chaos-agent doctor --state-dir /tmp/chaos        check another state directory";

/// Run chaos experiments on this host, and always put it back.
///
/// Every change is written to a durable journal before it is made, so `chaos-agent recover`
/// can undo it after a crash, a `kill -9` or a reboot, without network access.
#[derive(Debug, Parser)]
#[command(name = "chaos-agent", version, about, long_about, after_help = AFTER_HELP)]
struct Cli {
    /// Directory holding the journal and the one-agent-per-machine lock.
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        env = "CHAOS_AGENT_STATE_DIR",
        default_value = "/var/lib/chaos-agent"
    )]
    state_dir: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate and run an experiment file, reverting everything at the end or on Ctrl-C.
    ///
    /// The whole file is validated first; if anything is wrong, every problem is listed with
    /// its place in the file and nothing on the host is touched.
    Run {
        /// The experiment file (TOML). See `chaos-agent faults` for the kinds.
        file: PathBuf,
        /// Print what each fault would change and which privileges it needs; touch nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print machine-readable events (JSON lines) instead of the live view.
        #[arg(long)]
        json: bool,
    },
    /// Revert every journaled fault that is not yet reverted. Works offline.
    ///
    /// Exit status 0 only when the host is clean afterwards.
    Recover {
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show what the journal holds: faults in effect, reverted, or waiting for a person.
    Status {
        /// Print the journal records as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List every fault kind with its parameters, defaults and an example.
    Faults {
        /// Show only this kind.
        kind: Option<String>,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check what this host offers each fault kind, and whether the state directory is usable.
    ///
    /// Prints the host (kernel, distribution, init system and systemd version, cgroup
    /// layout, pidfd, effective capabilities, kernel config, this binary's libc), then every
    /// fault kind as available, degraded (it runs, with a weaker guarantee: the reason says
    /// which) or unavailable (plan would refuse it), each with its reasons and a fix, then
    /// the state directory (owner and mode as the agent checks them, who holds its lock,
    /// records not yet reverted). The daemon offers the control plane the available and
    /// degraded kinds only.
    ///
    /// Changes nothing: no module is loaded, no cgroup or namespace is created, the state
    /// lock is not taken and no journal is created. Run it as the user the agent runs as
    /// (root for the service): capabilities and cgroup access are this process's own.
    #[command(after_help = DOCTOR_HELP)]
    Doctor {
        /// Print one JSON object: host, kinds (kind, level, reasons, fixes), counts,
        /// state_dir, exit_status.
        #[arg(long)]
        json: bool,
    },
    /// Run as the service: poll the control plane, run its experiments, report, revert.
    ///
    /// Recovers what the journal holds first (before talking to anyone), registers with the
    /// registration key of the configuration on first start, then long-polls the control
    /// plane over TLS with a rotating token. Every run goes through the same engine as
    /// `chaos-agent run`; status and log lines are streamed through an on-disk outbox.
    /// SIGTERM aborts any run, reverts, flushes, and exits 0; SIGHUP re-reads the
    /// configuration (a new registration key after a lockout). Runs under systemd as
    /// `Type=notify` (READY after recovery, WATCHDOG, STATUS).
    Daemon {
        /// The configuration file; `config.d/*.toml` beside it are read after it.
        #[arg(
            long,
            value_name = "FILE",
            default_value = daemon::config::DEFAULT_PATH
        )]
        config: PathBuf,
    },
    /// Drop a journal record after you have undone its fault by hand.
    ///
    /// Use it for records in `needs-manual` state (or unreadable ones) once `chaos-agent
    /// status` shows what to undo and you have done it. New faults may then target it again.
    /// A record whose fault may still be on the host (planned, applied, reverting) is
    /// refused: `chaos-agent recover` reverts it. `--force` drops it anyway, prints what
    /// stays on the host, and recovery stops looking for it.
    Forget {
        /// The fault id, as shown by `chaos-agent status`.
        fault_id: String,
        /// Drop a record that is not reverted, leaving its change on the host.
        #[arg(long)]
        force: bool,
    },
}

fn main() -> ExitCode {
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    // Whether --state-dir (or CHAOS_AGENT_STATE_DIR) was given, or is the default.
    let state_dir_explicit = matches
        .value_source("state_dir")
        .is_some_and(|s| s != clap::parser::ValueSource::DefaultValue);
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    if !matches!(cli.command, Command::Daemon { .. }) {
        init_logging(); // the daemon sets up its own, from its configuration
    }
    match run(cli, state_dir_explicit) {
        Ok(code) => ExitCode::from(code),
        // The reader went away (`chaos-agent faults | head`): nothing more to say.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::from(exit::OK)
        }
        Err(e) => {
            eprintln!("chaos-agent: error: {e:#}");
            let kind = e.downcast_ref::<fault_core::Error>().map(|e| e.kind());
            ExitCode::from(match kind {
                Some(ErrorKind::Busy) => exit::BUSY,
                Some(
                    ErrorKind::InvalidSpec | ErrorKind::NotFound | ErrorKind::PermissionDenied,
                ) => exit::INVALID,
                _ => exit::FAILED,
            })
        }
    }
}

fn run(cli: Cli, state_dir_explicit: bool) -> anyhow::Result<u8> {
    let registry = chaos_kinds::registry();
    match cli.command {
        Command::Run {
            file,
            dry_run,
            json,
        } => cmd_run(&registry, &cli.state_dir, &file, dry_run, json),
        Command::Recover { json } => cmd_recover(&registry, &cli.state_dir, json),
        Command::Status { json } => cmd_status(&registry, &cli.state_dir, json),
        Command::Daemon { config } => daemon::run(
            &registry,
            daemon::Options {
                config,
                state_dir: cli.state_dir.clone(),
                state_dir_explicit,
            },
        ),
        Command::Doctor { json } => doctor::run(&registry, &cli.state_dir, json),
        Command::Faults { kind, json } => render::faults(&registry, kind.as_deref(), json),
        Command::Forget { fault_id, force } => {
            let session = open(&registry, &cli.state_dir)?;
            let gone = session.forget(&fault_id, force)?;
            let was = gone.state.map_or("unreadable", |s| s.as_str());
            println!("forgot {fault_id} (it was {was})");
            if !gone.left_on_host.is_empty() {
                println!("Its change may still be on the host; to undo it by hand:");
                for cmd in &gone.left_on_host {
                    println!("    {cmd}");
                }
            }
            Ok(exit::OK)
        }
    }
}

/// Diagnostics (the engine's `tracing` events: revert attempts, journal errors, orphans) go
/// to stderr when `CHAOS_AGENT_LOG` asks for them (`warn`, `info`, `debug`, or a filter such
/// as `chaos_engine=debug`); what a person normally reads is the live view.
fn init_logging() {
    let Ok(filter) = std::env::var("CHAOS_AGENT_LOG") else {
        return;
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Open the state directory, printing the session's warnings once.
fn open<'r>(registry: &'r Registry, state_dir: &Path) -> anyhow::Result<Session<'r>> {
    let session = Session::open(state_dir, registry)?;
    for w in session.warnings() {
        eprintln!("chaos-agent: warning: {w}");
    }
    Ok(session)
}

fn cmd_run(
    registry: &Registry,
    state_dir: &Path,
    file: &Path,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<u8> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("chaos-agent: cannot read {}: {e}", file.display());
            return Ok(exit::INVALID);
        }
    };
    let prepared = match Experiment::load_toml(&text, registry) {
        Ok(p) => p,
        Err(invalid) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"event": "invalid", "file": file, "problems": invalid.0})
                );
            } else {
                eprint!("chaos-agent: {}: {invalid}", file.display());
                eprintln!("Nothing was changed on this host.");
            }
            return Ok(exit::INVALID);
        }
    };
    let run_id = runner::new_run_id();
    if dry_run {
        let items = Session::dry_run(registry, state_dir, &prepared, &run_id);
        let ok = items.iter().all(|i| i.plan.is_ok());
        render::dry_run(&prepared, &items, json)?;
        return Ok(if ok { exit::OK } else { exit::FAILED });
    }

    let session = open(registry, state_dir)?;
    let abort = AbortHandle::new();
    install_signal_handlers(&abort, json)?;
    let view = render::LiveView::new(json, std::io::stdout().is_terminal());
    let events = |e: &runner::Event| view.event(e);
    let report = session.run(&prepared, &run_id, &abort, &events)?;
    view.finish(&report, state_dir);
    Ok(if !report.host_clean() {
        exit::NOT_CLEAN
    } else {
        match report.outcome {
            RunOutcome::Completed => exit::OK,
            RunOutcome::Failed => exit::FAILED,
            RunOutcome::Aborted => exit::ABORTED,
        }
    })
}

/// SIGINT, SIGTERM and SIGHUP abort the run; every fault then reverts. A second signal only
/// says that the revert is under way: skipping it would leave the host broken.
fn install_signal_handlers(abort: &AbortHandle, json: bool) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .context("installing signal handlers")?;
    let abort = abort.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let name = match sig {
                    SIGINT => "SIGINT",
                    SIGTERM => "SIGTERM",
                    _ => "SIGHUP",
                };
                if abort.is_aborted() {
                    if !json {
                        eprintln!("\nchaos-agent: {name} again: still reverting, please wait (reverting is what keeps the host safe)");
                    }
                } else {
                    if !json {
                        eprintln!("\nchaos-agent: {name}: aborting, reverting every fault…");
                    }
                    abort.abort(format!("received {name}"));
                }
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}

fn cmd_recover(registry: &Registry, state_dir: &Path, json: bool) -> anyhow::Result<u8> {
    let session = open(registry, state_dir)?;
    let recovery = session.recover()?;
    render::recover(&recovery, json)?;
    Ok(if recovery.clean() {
        exit::OK
    } else {
        exit::NOT_CLEAN
    })
}

fn cmd_status(registry: &Registry, state_dir: &Path, json: bool) -> anyhow::Result<u8> {
    let status = Session::status(registry, state_dir)?;
    render::status(&status, state_dir, json)?;
    Ok(if status.clean() {
        exit::OK
    } else if status.live_pid.is_some() {
        exit::BUSY // a run in progress owns what is not reverted
    } else {
        exit::NOT_CLEAN
    })
}
