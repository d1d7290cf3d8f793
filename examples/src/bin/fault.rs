//! Run any fault kind from the command line, with its parameters as `key=value`.
//!
//! ```sh
//! cargo run -p chaos-examples --bin fault -- --help
//! sudo cargo run -p chaos-examples --bin fault -- disk.fill path=/var/tmp percent=80 --duration 10s
//! sudo cargo run -p chaos-examples --bin fault -- network.rate interface=eth0 rate=1mbit 'destinations=["10.0.0.0/24"]'
//! ```

use anyhow::{bail, Context as _};
use clap::Parser;

/// Run one fault of any kind (see `chaos-agent faults`), hold it, then revert it.
///
/// Parameters are `key=value`; a value is read as TOML when it parses (`percent=80`,
/// `ports=[22,443]`, `path="/x"`) and as a plain string otherwise (`path=/var/tmp`).
#[derive(Parser)]
struct Args {
    /// The fault kind, e.g. disk.fill.
    kind: String,
    /// Parameters of the kind, as key=value.
    params: Vec<String>,
    /// How long to hold the fault.
    #[arg(long, default_value = "10s", value_parser = chaos_examples::duration)]
    duration: std::time::Duration,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let mut spec = serde_json::Map::new();
    for p in &a.params {
        let Some((key, raw)) = p.split_once('=') else {
            bail!("parameter \"{p}\" is not key=value")
        };
        let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
            Ok(mut t) => serde_json::to_value(t.remove("v")).context("converting value")?,
            Err(_) => serde_json::Value::String(raw.to_string()),
        };
        spec.insert(key.to_string(), value);
    }
    chaos_examples::run(&a.kind, serde_json::Value::Object(spec), a.duration)
}
