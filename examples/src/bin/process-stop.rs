//! Stop a process with SIGSTOP for a while, then resume it.
//!
//! ```sh
//! sleep 600 & sudo cargo run -p chaos-examples --bin process-stop -- --pid $! --duration 10s
//! ```

use clap::Parser;
use fault_core::Fault;
use fault_process::{ProcessStop, ProcessStopSpec};

/// Stop a process (SIGSTOP) for a duration, then resume it (SIGCONT).
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
    /// How long to keep it stopped.
    #[arg(long, default_value = "10s", value_parser = chaos_examples::duration)]
    duration: std::time::Duration,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let spec = ProcessStopSpec {
        pid: a.pid,
        name: a.name,
        cmdline: a.cmdline,
        max_targets: None,
    };
    chaos_examples::run(ProcessStop::KIND, serde_json::to_value(spec)?, a.duration)
}
