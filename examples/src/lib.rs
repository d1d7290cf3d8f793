//! The shape every example shares: spec -> fault -> plan -> inject -> verify -> hold for the
//! duration or until Ctrl-C/SIGTERM -> revert -> verify clean.
//!
//! The fault is built through [`chaos_kinds::registry`], the same registry the agent uses,
//! from a spec (the typed examples serialize their typed `…Spec`). No journal is kept: if
//! the example is killed with SIGKILL nothing reverts the fault, so it prints the manual undo
//! up front. For crash-safe runs use `chaos-agent run`, which journals every step.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use fault_core::{Context, Effect};

/// Run one fault of `kind` with `spec` for `duration` (or until Ctrl-C / SIGTERM), then
/// revert it and check that the host is clean.
pub fn run(kind: &str, spec: serde_json::Value, duration: Duration) -> anyhow::Result<()> {
    let registry = chaos_kinds::registry();
    let fault = registry.build(kind, &spec)?;
    let reversible = (registry.get(kind)?.info)().reversible;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("installing signal handler")?;
    }
    let cx = Context::new(
        format!("example-{}", fault_core::host::random_hex(4)),
        "example",
    );
    println!("{kind}: {}", fault.describe());
    let mut receipt = fault
        .plan(&cx)
        .with_context(|| format!("planning {kind}"))?;
    println!("receipt: {receipt}");
    println!("if this program is killed with SIGKILL, undo by hand with:");
    for line in registry.manual_undo(kind, &receipt)? {
        println!("    {line}");
    }

    let held = fault
        .inject(&cx, &mut receipt)
        .map_err(anyhow::Error::from)
        .and_then(|()| {
            let obs = registry.verify(kind, &receipt)?;
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
    registry
        .revert(kind, &receipt)
        .with_context(|| format!("reverting {kind}"))?;
    if reversible {
        let obs = registry.verify(kind, &receipt)?;
        println!("after revert: {}", obs.detail);
        if obs.effect != Effect::Clean {
            bail!("revert left the host dirty: {}", obs.detail);
        }
    }
    println!("reverted");
    held
}

/// Parse a duration argument such as "30s".
pub fn duration(s: &str) -> Result<Duration, String> {
    s.parse::<fault_core::Duration>().map(|d| d.std())
}
