//! The shape every example shares: spec -> fault -> plan -> inject -> verify -> hold for the
//! duration or until Ctrl-C/SIGTERM -> revert -> verify clean.
//!
//! This is the library API an embedding tool uses directly. It keeps no journal: if the
//! example is killed with SIGKILL, nothing reverts the fault, so it prints the manual undo
//! up front. For crash-safe runs use `chaos-agent run`, which journals every step.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use fault_core::{Context, Effect, Fault};

/// Run one fault for `duration` (or until Ctrl-C / SIGTERM), then revert it.
pub fn run_one<F: Fault>(fault: F, duration: Duration) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("installing signal handler")?;
    }
    let cx = Context::new(
        format!("example-{}", fault_core::host::random_hex(4)),
        "example",
    );
    println!("{}: {}", F::KIND, fault.describe());
    let mut receipt = fault
        .plan(&cx)
        .with_context(|| format!("planning {}", F::KIND))?;
    println!("receipt: {}", serde_json::to_string(&receipt)?);
    println!("if this program is killed with SIGKILL, undo by hand with:");
    for line in F::manual_undo(&receipt) {
        println!("    {line}");
    }

    let injected = fault.inject(&cx, &mut receipt);
    let result = injected.map_err(anyhow::Error::from).and_then(|()| {
        let obs = F::verify(&receipt)?;
        println!("in effect: {}", obs.detail);
        if obs.effect != Effect::InEffect {
            bail!("inject did not take effect: {}", obs.detail);
        }
        println!(
            "holding for {} (Ctrl-C reverts now)…",
            fault_core::Duration(duration)
        );
        let end = Instant::now() + duration;
        let mut next = fault.maintain_interval().map(|d| Instant::now() + d);
        while Instant::now() < end && !stop.load(Ordering::SeqCst) {
            if next.is_some_and(|t| Instant::now() >= t) {
                next = fault
                    .maintain(&cx, &mut receipt)?
                    .map(|d| Instant::now() + d);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    });

    // Always revert, also after a failed inject (it may have left partial changes).
    F::revert(&receipt).with_context(|| format!("reverting {}", F::KIND))?;
    if F::info().reversible {
        let obs = F::verify(&receipt)?;
        println!("after revert: {}", obs.detail);
        if obs.effect != Effect::Clean {
            bail!("revert left the host dirty: {}", obs.detail);
        }
    }
    println!("reverted");
    result
}

/// Parse a duration argument such as "30s".
pub fn duration(s: &str) -> Result<Duration, String> {
    s.parse::<fault_core::Duration>().map(|d| d.std())
}
