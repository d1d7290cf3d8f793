//! Fill a filesystem (space and/or inodes) for a while, then free it.
//!
//! ```sh
//! sudo cargo run -p chaos-examples --bin disk-fill -- --path /var/tmp --percent 80 --duration 10s
//! ```

use clap::Parser;
use fault_core::{Bytes, Fault, Percent};
use fault_disk::{DiskFill, DiskFillSpec};

/// Fill the filesystem holding PATH to a size or a percentage, then remove the fill file.
#[derive(Parser)]
struct Args {
    /// A directory on the filesystem to fill.
    #[arg(long)]
    path: std::path::PathBuf,
    /// Allocate this much, e.g. 512MiB.
    #[arg(
        long,
        conflicts_with = "percent",
        required_unless_present_any = ["percent", "inodes", "inodes_percent"]
    )]
    size: Option<Bytes>,
    /// Fill until the filesystem is this % used.
    #[arg(long)]
    percent: Option<Percent>,
    /// Take this many inodes (a directory of empty files).
    #[arg(long, conflicts_with = "inodes_percent")]
    inodes: Option<u64>,
    /// Take inodes until this % of them is used (as `df -i` shows it).
    #[arg(long)]
    inodes_percent: Option<Percent>,
    /// Refuse if less than this would stay free.
    #[arg(long)]
    reserve: Option<Bytes>,
    /// Allow filling the filesystem of / or of the agent's state directory past its safe
    /// reserve (refused otherwise).
    #[arg(long)]
    allow_protected_filesystem: bool,
    /// How long to keep it full.
    #[arg(long, default_value = "10s", value_parser = chaos_examples::duration)]
    duration: std::time::Duration,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let spec = DiskFillSpec {
        path: a.path,
        size: a.size,
        percent: a.percent,
        inodes: a.inodes,
        inodes_percent: a.inodes_percent,
        reserve: a.reserve,
        allow_protected_filesystem: a.allow_protected_filesystem,
    };
    chaos_examples::run(DiskFill::KIND, serde_json::to_value(spec)?, a.duration)
}
