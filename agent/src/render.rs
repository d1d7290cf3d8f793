//! What a person (or a script, with `--json`) sees.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chaos_engine::experiment::Prepared;
use chaos_engine::journal::{Entry, RecordState};
use chaos_engine::runner::{
    DryRunItem, Event, FaultState, RecoverOutcome, RevertOutcome, RunOutcome, RunReport,
};
use chaos_engine::{Recovery, Status};
use fault_core::Registry;

/// `println!` that returns the write error instead of panicking, so `chaos-agent faults |
/// head` ends quietly when the pipe closes (main treats a broken pipe as success).
macro_rules! say {
    ($($t:tt)*) => {
        writeln!(std::io::stdout().lock(), $($t)*)?
    };
}

/// The width of a column holding `values`, at least `min`.
fn width<'a>(values: impl IntoIterator<Item = &'a str>, min: usize) -> usize {
    values.into_iter().map(str::len).fold(min, usize::max)
}

fn secs(ms: u64) -> String {
    fault_core::Duration(Duration::from_millis(ms / 1000 * 1000)).to_string()
}

/// Wide enough for every shipped kind name (`network.duplication`).
const KIND_WIDTH: usize = 19;

/// The live view of a run: one line per state change, and a line of time left per holding
/// fault (redrawn in place on a terminal, every 5 s otherwise).
pub(crate) struct LiveView {
    json: bool,
    tty: bool,
    state: Mutex<ViewState>,
}

struct ViewState {
    steps: usize,
    holding: BTreeMap<String, u64>,
    last_progress: Option<Instant>,
    progress_shown: bool,
}

impl LiveView {
    pub(crate) fn new(json: bool, tty: bool) -> LiveView {
        LiveView {
            json,
            tty,
            state: Mutex::new(ViewState {
                steps: 0,
                holding: BTreeMap::new(),
                last_progress: None,
                progress_shown: false,
            }),
        }
    }

    pub(crate) fn event(&self, e: &Event) {
        let mut out = std::io::stdout().lock();
        if self.json {
            if let Ok(line) = serde_json::to_string(e) {
                let _ = writeln!(out, "{line}");
            }
            return;
        }
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let clear = |st: &mut ViewState, out: &mut std::io::StdoutLock<'_>| {
            if st.progress_shown && self.tty {
                let _ = write!(out, "\r\x1b[K");
                st.progress_shown = false;
            }
        };
        match e {
            Event::RunStarted {
                run_id,
                name,
                steps,
                max_duration_ms,
            } => {
                st.steps = *steps;
                let _ = writeln!(
                    out,
                    "Run {run_id} \"{name}\": {steps} step{}, at most {}. Ctrl-C reverts everything and stops.",
                    if *steps == 1 { "" } else { "s" },
                    secs(*max_duration_ms)
                );
            }
            Event::StepStarted { step, name, faults } => {
                clear(&mut st, &mut out);
                let _ = writeln!(
                    out,
                    "\n[step {}/{}] {name} ({faults} fault{})",
                    step + 1,
                    st.steps,
                    if *faults == 1 { "" } else { "s" }
                );
            }
            Event::Fault {
                fault_id,
                kind,
                state,
                detail,
                ..
            } => {
                clear(&mut st, &mut out);
                if !matches!(state, FaultState::Holding) {
                    st.holding.remove(fault_id);
                }
                let state_s = match state {
                    FaultState::Planned => "planned",
                    FaultState::Injected => "injected",
                    FaultState::Holding => "in effect",
                    FaultState::Reverting => "reverting",
                    FaultState::Reverted => "reverted",
                    FaultState::Failed => "FAILED",
                    FaultState::NeedsManual => "NEEDS MANUAL UNDO",
                    FaultState::Skipped => "skipped",
                };
                let line = format!(
                    "  {fault_id:<14} {kind:<w$} {state_s:<10}  {detail}",
                    w = KIND_WIDTH
                );
                let _ = writeln!(out, "{}", line.trim_end());
                if let Event::Fault { touches, .. } = e {
                    for t in touches {
                        let _ = writeln!(
                            out,
                            "  {:<14} {:<w$}   touches: {t}",
                            "",
                            "",
                            w = KIND_WIDTH
                        );
                    }
                }
            }
            Event::Holding {
                fault_id,
                remaining_ms,
                ..
            } => {
                st.holding.insert(fault_id.clone(), *remaining_ms);
                let due = match st.last_progress {
                    None => true,
                    Some(t) => {
                        t.elapsed()
                            >= if self.tty {
                                Duration::from_millis(900)
                            } else {
                                Duration::from_secs(5)
                            }
                    }
                };
                if due && !st.holding.is_empty() {
                    let parts: Vec<String> = st
                        .holding
                        .iter()
                        .map(|(id, ms)| format!("{id} {} left", secs(*ms + 999)))
                        .collect();
                    if self.tty {
                        let _ = write!(out, "\r\x1b[K  … holding: {}", parts.join(", "));
                        st.progress_shown = true;
                    } else {
                        let _ = writeln!(out, "  … holding: {}", parts.join(", "));
                    }
                    st.last_progress = Some(Instant::now());
                }
            }
            Event::JournalError { fault_id, error } => {
                clear(&mut st, &mut out);
                let _ = writeln!(
                    out,
                    "  {fault_id:<14} JOURNAL WRITE FAILED: {error}; no further fault is injected"
                );
            }
            Event::StepFinished { .. } | Event::RunFinished { .. } => clear(&mut st, &mut out),
        }
        let _ = out.flush();
    }

    pub(crate) fn finish(&self, report: &RunReport, state_dir: &Path) {
        if self.json {
            return;
        }
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "\nSummary of run {} \"{}\" ({}):",
            report.run_id,
            report.name,
            secs(report.elapsed_ms)
        );
        let _ = writeln!(
            out,
            "  {:<5} {:<14} {:<14} {:<9} {:<7} {:<13} ERROR",
            "STEP", "FAULT", "KIND", "INJECTED", "HELD", "REVERT"
        );
        for (si, step) in report.steps.iter().enumerate() {
            if step.faults.is_empty() {
                let _ = writeln!(
                    out,
                    "  {:<5} {:?}{}",
                    si + 1,
                    step.outcome,
                    step.error
                        .as_deref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                );
                continue;
            }
            for f in &step.faults {
                let revert = match f.revert {
                    RevertOutcome::Reverted => "reverted",
                    RevertOutcome::NotNeeded => "not needed",
                    RevertOutcome::Irreversible => "irreversible",
                    RevertOutcome::NeedsManual => "NEEDS MANUAL",
                };
                let _ = writeln!(
                    out,
                    "  {:<5} {:<14} {:<14} {:<9} {:<7} {:<13} {}",
                    si + 1,
                    f.fault_id,
                    f.kind,
                    if f.injected { "yes" } else { "no" },
                    secs(f.held_ms),
                    revert,
                    f.error.as_deref().unwrap_or("")
                );
            }
            if let Some(e) = &step.error {
                let _ = writeln!(out, "        step failed: {e}");
            }
        }
        let verdict = match report.outcome {
            RunOutcome::Completed => "completed".to_string(),
            RunOutcome::Failed => "FAILED".to_string(),
            RunOutcome::Aborted => format!(
                "aborted ({})",
                report.abort_reason.as_deref().unwrap_or("abort requested")
            ),
        };
        if report.host_clean() {
            let _ = writeln!(
                out,
                "\nResult: {verdict}. The host is clean: every change was reverted."
            );
        } else {
            let _ = writeln!(
                out,
                "\nResult: {verdict}. THE HOST IS NOT CLEAN. A person must undo these by hand:"
            );
            for f in report
                .steps
                .iter()
                .flat_map(|s| &s.faults)
                .filter(|f| f.revert == RevertOutcome::NeedsManual)
            {
                let _ = writeln!(
                    out,
                    "  {} ({}): {}",
                    f.fault_id,
                    f.kind,
                    f.error.as_deref().unwrap_or("")
                );
                for cmd in &f.manual_undo {
                    let _ = writeln!(out, "      {cmd}");
                }
            }
            let _ = writeln!(
                out,
                "Then run `chaos-agent --state-dir {} forget <fault-id>`. `chaos-agent recover` retries the revert.",
                state_dir.display()
            );
        }
    }
}

pub(crate) fn dry_run(prepared: &Prepared, items: &[DryRunItem], json: bool) -> anyhow::Result<()> {
    if json {
        let v: Vec<serde_json::Value> = items
            .iter()
            .map(|i| {
                serde_json::json!({
                    "step": i.step, "fault_id": i.fault_id, "kind": i.kind, "description": i.description,
                    "privileges": i.privileges, "start_delay": i.start_delay, "duration": i.duration,
                    "touches": i.touches, "plan": i.plan.as_ref().ok(), "error": i.plan.as_ref().err(),
                })
            })
            .collect();
        say!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let exp = &prepared.experiment;
    say!("Dry run of \"{}\": nothing will be changed.", exp.name);
    say!(
        "At most {} in all.",
        fault_core::Duration(exp.total_duration())
    );
    let mut last_step = usize::MAX;
    for i in items {
        if i.step != last_step {
            last_step = i.step;
            say!(
                "\n[step {}/{}] {} — its faults run at the same time",
                i.step + 1,
                exp.steps.len(),
                exp.steps[i.step].name
            );
        }
        let delay = if i.start_delay == "0s" {
            String::new()
        } else {
            format!(" after {}", i.start_delay)
        };
        say!(
            "  {} {}: {} for {}{delay}",
            i.fault_id,
            i.kind,
            i.description,
            i.duration
        );
        say!("      needs: {}", i.privileges);
        match &i.plan {
            Ok(_) if i.touches.is_empty() => {
                say!("      touches: (nothing it can name in advance)")
            }
            Ok(_) => {
                for t in &i.touches {
                    say!("      touches: {t}");
                }
            }
            Err(e) => say!("      WOULD FAIL NOW: {e}"),
        }
    }
    say!("\n`--json` shows each plan in full.");
    Ok(())
}

pub(crate) fn recover(recovery: &Recovery, json: bool) -> anyhow::Result<()> {
    if json {
        say!("{}", serde_json::to_string_pretty(recovery)?);
        return Ok(());
    }
    let items = &recovery.items;
    let kw = width(items.iter().map(|i| i.kind.as_str()), 14);
    for i in items {
        let outcome = match i.outcome {
            RecoverOutcome::Reverted => "reverted",
            RecoverOutcome::NeedsManual => "NEEDS MANUAL UNDO",
            RecoverOutcome::Unidentifiable => "UNREADABLE RECORD",
        };
        say!(
            "  {:<14} {:<kw$} was {:<12} -> {outcome}: {}",
            i.fault_id,
            i.kind,
            i.found,
            i.detail
        );
        for cmd in &i.manual_undo {
            say!("      {cmd}");
        }
    }
    for e in &recovery.scan_errors {
        say!("  could not check the host: {e}");
    }
    let bad = items
        .iter()
        .filter(|i| i.outcome != RecoverOutcome::Reverted)
        .count();
    if recovery.clean() {
        if items.is_empty() {
            say!("Nothing to recover: every journaled fault is reverted and none of this agent's faults is left on the host. The host is clean.");
        } else {
            say!("Recovered {} fault(s). The host is clean.", items.len());
        }
    } else if bad > 0 {
        say!("{bad} fault(s) could not be reverted: THE HOST IS NOT CLEAN. Undo them by hand as shown, then `chaos-agent forget <fault-id>`.");
    } else {
        say!("The host could not be fully checked: it is NOT KNOWN TO BE CLEAN.");
    }
    Ok(())
}

pub(crate) fn status(st: &Status, state_dir: &Path, json: bool) -> anyhow::Result<()> {
    let entries = &st.entries;
    if json {
        let v: Vec<serde_json::Value> = entries
            .iter()
            .map(|e| match e {
                Entry::Ok(r) => serde_json::to_value(r).unwrap_or_default(),
                Entry::Corrupt { fault_id, path, error, backup } => serde_json::json!({
                    "fault_id": fault_id, "state": "corrupt", "path": path, "error": error, "backup": backup,
                }),
            })
            .chain(st.orphans.iter().map(|o| serde_json::json!({
                "fault_id": o.fault_id, "kind": o.kind, "state": "not-in-journal", "found": o.found,
            })))
            .chain(st.lost.iter().map(|l| serde_json::json!({
                "fault_id": l.fault_id, "kind": l.kind, "state": "lost",
            })))
            .collect();
        // An array of records (as before); artifacts the journal lost are entries with
        // state "not-in-journal", searches that failed entries with state "unchecked".
        let v: Vec<serde_json::Value> = v
            .into_iter()
            .chain(
                st.scan_errors
                    .iter()
                    .map(|e| serde_json::json!({"state": "unchecked", "error": e})),
            )
            .collect();
        say!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if let Some(pid) = st.live_pid {
        say!(
            "In use: chaos-agent pid {pid} (a run, or the daemon) holds {}. Faults not yet reverted below are its own; it reverts them when its run ends (or on SIGTERM).\n",
            state_dir.display()
        );
    }
    if entries.is_empty() && st.clean() {
        say!(
            "The journal in {} is empty: no fault has run here.",
            state_dir.display()
        );
        return Ok(());
    }
    let kw = width(
        entries
            .iter()
            .filter_map(|e| match e {
                Entry::Ok(r) => Some(r.kind.as_str()),
                _ => None,
            })
            .chain(st.orphans.iter().map(|o| o.kind.as_str())),
        14,
    );
    say!(
        "{:<14} {:<kw$} {:<14} {:<8} TARGETS",
        "FAULT",
        "KIND",
        "STATE",
        "ATTEMPTS"
    );
    let mut pending = 0;
    for e in entries {
        match e {
            Entry::Ok(r) => {
                if r.state != RecordState::Reverted {
                    pending += 1;
                }
                say!(
                    "{:<14} {:<kw$} {:<14} {:<8} {}",
                    r.fault_id,
                    r.kind,
                    r.state.as_str(),
                    r.attempts,
                    r.targets.join(", ")
                );
                if let Some(err) = r
                    .last_error
                    .as_deref()
                    .filter(|_| r.state != RecordState::Reverted)
                {
                    say!("    last error: {err}");
                }
                for cmd in &r.manual_undo {
                    say!("    undo by hand: {cmd}");
                }
            }
            Entry::Corrupt {
                fault_id,
                error,
                backup,
                ..
            } => {
                pending += 1;
                let b = if backup.is_some() {
                    "an intact copy exists in the log"
                } else {
                    "no intact copy"
                };
                say!(
                    "{fault_id:<14} {:<kw$} {:<14} {:<8} ({error}; {b})",
                    "?",
                    "corrupt",
                    "-"
                );
            }
        }
    }
    for o in &st.orphans {
        pending += 1;
        say!(
            "{:<14} {:<kw$} {:<14} {:<8} found {}",
            o.fault_id,
            o.kind,
            "not-in-journal",
            "-",
            o.found
        );
    }
    for l in &st.lost {
        pending += 1;
        say!(
            "{:<14} {:<kw$} {:<14} {:<8} record lost; nothing on the host can be proven ours",
            l.fault_id,
            l.kind,
            "lost",
            "-"
        );
    }
    for e in &st.scan_errors {
        say!("could not check the host: {e}");
    }
    if st.clean() {
        say!("\nEvery fault is reverted. The host is clean.");
    } else if st.live_pid.is_some() {
        say!("\n{pending} fault(s) are not reverted yet (the agent in use owns them).");
    } else if pending == 0 {
        say!("\nThe host could not be fully checked: it is NOT KNOWN TO BE CLEAN.");
    } else {
        say!("\n{pending} fault(s) are not reverted. `chaos-agent recover` reverts them.");
    }
    Ok(())
}

pub(crate) fn faults(registry: &Registry, only: Option<&str>, json: bool) -> anyhow::Result<u8> {
    let entries: Vec<_> = match only {
        Some(k) => vec![registry.get(k)?],
        None => registry.kinds().collect(),
    };
    if json {
        let v: Vec<serde_json::Value> = entries
            .iter()
            .map(|e| {
                let mut v = serde_json::to_value((e.info)()).unwrap_or_default();
                v["kind"] = serde_json::Value::String(e.kind.to_string());
                v
            })
            .collect();
        say!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    say!("Every fault also takes: duration (required, e.g. \"30s\") and start_delay (default \"0s\").");
    for e in entries {
        let info = (e.info)();
        say!("\n{}", e.kind);
        say!("  {}", info.summary);
        say!("  needs: {}", info.privileges);
        if !info.reversible {
            say!("  irreversible: revert has nothing to undo");
        }
        say!("  parameters:");
        for p in info.params {
            let default = p
                .default
                .map(|d| format!(" (default {d})"))
                .unwrap_or_default();
            say!("    {:<12} {:<10} {}{default}", p.name, p.ty, p.doc);
        }
        say!("  example:\n    [[steps.faults]]");
        for line in info.example.lines() {
            say!("    {line}");
        }
    }
    Ok(0)
}
