//! Send a signal to processes, optionally again and again for a duration.
//!
//! ```sh
//! sleep 600 & cargo run -p chaos-examples --bin process-kill -- --pid $! --signal TERM
//! ```

use clap::Parser;
use fault_core::Fault;
use fault_process::{ProcessKill, ProcessKillSpec};

/// Signal processes (default SIGKILL); with --interval, repeat for the duration.
#[derive(Parser)]
struct Args {
    /// Target this pid.
    #[arg(long, conflicts_with_all = ["name", "cmdline"], required_unless_present_any = ["name", "cmdline"])]
    pid: Option<i32>,
    /// Target every process with this exact name.
    #[arg(long)]
    name: Option<String>,
    /// Target every process whose command line contains this.
    #[arg(long)]
    cmdline: Option<String>,
    /// Signal name or number, e.g. KILL, TERM, 15.
    #[arg(long, default_value = "KILL")]
    signal: String,
    /// Repeat this often (re-resolving name/cmdline targets), e.g. 2s.
    #[arg(long)]
    interval: Option<String>,
    /// How long to keep repeating.
    #[arg(long, default_value = "1s", value_parser = chaos_examples::duration)]
    duration: std::time::Duration,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    // The spec's own deserializer parses signal names and intervals, exactly as it does for
    // experiment files.
    let spec: ProcessKillSpec = serde_json::from_value(serde_json::json!({
        "pid": a.pid, "name": a.name, "cmdline": a.cmdline, "signal": a.signal, "interval": a.interval,
    }))?;
    chaos_examples::run(ProcessKill::KIND, serde_json::to_value(spec)?, a.duration)
}
