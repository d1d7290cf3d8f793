//! The shape every example shares, through the engine's front door ([`Session`]): one
//! fault, run as a one-step experiment with a journal, for `duration` or until
//! Ctrl-C/SIGTERM, then reverted and checked clean.
//!
//! The fault is built through [`chaos_kinds::registry`], the same registry the agent uses,
//! from a spec (the typed examples serialize their typed `…Spec`). Because the session
//! journals every step in the agent's state directory (`$CHAOS_AGENT_STATE_DIR`, default
//! `/var/lib/chaos-agent`), an example killed with SIGKILL is reverted by
//! `chaos-agent recover` like any run; and it takes the same lock, so it never runs beside
//! an agent on the same state directory.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use chaos_engine::experiment::Experiment;
use chaos_engine::runner::{new_run_id, AbortHandle, Event, RunOutcome};
use chaos_engine::Session;

/// The state directory an example uses: the agent's, unless `CHAOS_AGENT_STATE_DIR` says
/// otherwise.
pub fn state_dir() -> PathBuf {
    std::env::var_os("CHAOS_AGENT_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/chaos-agent"))
}

/// Run one fault of `kind` with `spec` for `duration` (or until Ctrl-C / SIGTERM), then
/// revert it and check that the host is clean.
pub fn run(kind: &str, spec: serde_json::Value, duration: Duration) -> anyhow::Result<()> {
    let registry = chaos_kinds::registry();
    let mut fault = match spec {
        serde_json::Value::Object(m) => m,
        _ => bail!("a fault spec is a table of parameters"),
    };
    fault.insert("kind".into(), kind.into());
    fault.insert(
        "duration".into(),
        fault_core::Duration(duration).to_string().into(),
    );
    let experiment = serde_json::json!({
        "name": format!("example {kind}"),
        "steps": [{ "name": kind, "faults": [fault] }],
    });
    let prepared = Experiment::load_value(&experiment, &registry)
        .map_err(|invalid| anyhow::anyhow!("invalid {kind} spec:\n{invalid}"))?;

    let state_dir = state_dir();
    let session = Session::open(&state_dir, &registry)
        .with_context(|| format!("opening state directory {}", state_dir.display()))?;
    for w in session.warnings() {
        eprintln!("warning: {w}");
    }
    let recovery = session.recover()?;
    if !recovery.clean() {
        bail!("an earlier run left faults that need a person: see `chaos-agent status`");
    }
    let abort = AbortHandle::new();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .context("installing signal handlers")?;
    let on_signal = abort.clone();
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            on_signal.abort("interrupted");
        }
    });
    let events = |e: &Event| match e {
        Event::Fault {
            fault_id,
            state,
            detail,
            touches,
            ..
        } => {
            println!(
                "{fault_id} {}: {detail}",
                serde_json::to_string(state)
                    .unwrap_or_default()
                    .trim_matches('"')
            );
            for t in touches {
                println!("    touches: {t}");
            }
        }
        Event::JournalError { error, .. } => eprintln!("{error}"),
        _ => {}
    };
    println!(
        "{kind}: holding for {} (Ctrl-C reverts now; journal in {})",
        fault_core::Duration(duration),
        state_dir.display()
    );
    let report = session.run(&prepared, &new_run_id(), &abort, &events)?;
    for f in report.steps.iter().flat_map(|s| &s.faults) {
        for cmd in &f.manual_undo {
            println!("    undo by hand: {cmd}");
        }
    }
    if !report.host_clean() {
        bail!("a revert failed: THE HOST IS NOT CLEAN (commands above)");
    }
    match report.outcome {
        RunOutcome::Completed | RunOutcome::Aborted => {
            println!("reverted; the host is clean");
            Ok(())
        }
        RunOutcome::Failed => {
            let err = report
                .steps
                .iter()
                .flat_map(|s| {
                    s.error
                        .iter()
                        .chain(s.faults.iter().filter_map(|f| f.error.as_ref()))
                })
                .next()
                .cloned()
                .unwrap_or_default();
            bail!("{kind} failed (everything applied was reverted): {err}")
        }
    }
}

/// Parse a duration argument such as "30s".
pub fn duration(s: &str) -> Result<Duration, String> {
    s.parse::<fault_core::Duration>().map(|d| d.std())
}
