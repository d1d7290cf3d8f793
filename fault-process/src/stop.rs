//! `process.stop`: freeze processes with `SIGSTOP`, resume them with `SIGCONT` on revert.

use std::time::Duration;

use fault_core::{Context, Error, ErrorKind, Fault, KindInfo, Observation, Result};
use serde::{Deserialize, Serialize};

use crate::target::{self, Selector, TargetProcess, TARGET_PARAMS};

/// Parameters of `process.stop`: exactly one of `pid`, `name` or `cmdline`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ProcessStopSpec {
    /// Stop this pid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// Stop every process with this name (comm, argv\[0\] basename or executable basename).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Stop every process whose space-joined command line contains this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
}

/// Freezes the target processes for the fault's duration.
///
/// **Changes on the host:** every target gets `SIGSTOP` and sits in state `T` (stopped): it
/// keeps its memory, files and sockets but runs no code, so peers see it hang rather than
/// die. Nothing else changes.
///
/// **Privileges:** root, or the same user as the targets (`CAP_KILL` for other users'
/// processes).
///
/// **Revert** sends `SIGCONT` to each target that is still the very process recorded in the
/// receipt (pid + start time + boot id, signalled through a pidfd), so a pid reused by a
/// newcomer, or a reboot, can never resume a stranger; a target that is gone counts as
/// reverted. `plan` refuses a target that is already stopped, because resuming it later would
/// undo someone else's stop.
#[derive(Debug, Clone)]
pub struct ProcessStop {
    selector: Selector,
}

/// What `process.stop` planned: the processes it stops.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProcessStopReceipt {
    /// The processes to stop (and to resume on revert).
    pub targets: Vec<TargetProcess>,
}

/// How long `inject` waits for every target to reach state `T`.
const STOP_WAIT: Duration = Duration::from_secs(1);

impl Fault for ProcessStop {
    const KIND: &'static str = "process.stop";
    type Spec = ProcessStopSpec;
    type Receipt = ProcessStopReceipt;

    fn new(spec: ProcessStopSpec) -> Result<ProcessStop> {
        let selector =
            Selector::from_fields(spec.pid, spec.name.as_deref(), spec.cmdline.as_deref())?;
        Ok(ProcessStop { selector })
    }

    fn info() -> KindInfo {
        KindInfo {
            summary: "Stops the target processes with SIGSTOP for the duration: they keep their \
                      memory and sockets but run no code. Revert sends SIGCONT to each target \
                      that is still the very process recorded (pid + start time + boot id). A \
                      target that is already stopped is refused, so we never resume a process \
                      someone else stopped.",
            privileges: "root, or the same user as the target (CAP_KILL for others' processes)",
            reversible: true,
            params: &TARGET_PARAMS,
            example: "kind = \"process.stop\"\nduration = \"30s\"\nname = \"worker\"",
        }
    }

    fn describe(&self) -> String {
        format!(
            "stop {} with SIGSTOP (SIGCONT on revert)",
            self.selector.describe()
        )
    }

    fn plan(&self, cx: &Context) -> Result<ProcessStopReceipt> {
        let targets = self.selector.resolve(cx)?;
        if let Some(t) = targets.iter().find(|t| {
            t.id.stat()
                .is_some_and(|s| s.is_stopped() || s.state == 't')
        }) {
            return Err(Error::new(
                ErrorKind::Busy,
                format!(
                    "{t} is already stopped; refusing to stop it, because resuming it on revert \
                     would undo someone else's stop"
                ),
            ));
        }
        Ok(ProcessStopReceipt { targets })
    }

    fn inject(&self, _cx: &Context, receipt: &mut ProcessStopReceipt) -> Result<()> {
        let (_, result) = target::signal_each(&receipt.targets, libc::SIGSTOP);
        // SIGSTOP takes effect when the target next runs; wait so verify sees it.
        target::wait_until(STOP_WAIT, || {
            receipt.targets.iter().all(|t| {
                t.id.stat()
                    .is_none_or(|s| s.is_stopped() || target::is_dead(&s))
            })
        });
        result
    }

    fn verify(receipt: &ProcessStopReceipt) -> Result<Observation> {
        let (mut stopped, mut running, mut gone) = (Vec::new(), Vec::new(), 0);
        for t in &receipt.targets {
            match t.id.stat().filter(|s| !target::is_dead(s)) {
                Some(s) if s.is_stopped() => stopped.push(t.to_string()),
                Some(_) => running.push(t.to_string()),
                None => gone += 1,
            }
        }
        let gone_note = if gone > 0 {
            format!("; {gone} target(s) gone")
        } else {
            String::new()
        };
        Ok(match (stopped.is_empty(), running.is_empty()) {
            (true, true) => Observation::clean("no target process is alive"),
            (true, false) => {
                Observation::clean(format!("running: {}{gone_note}", running.join(", ")))
            }
            (false, true) => {
                Observation::in_effect(format!("stopped: {}{gone_note}", stopped.join(", ")))
            }
            (false, false) => Observation::partial(format!(
                "stopped: {}; running: {}{gone_note}",
                stopped.join(", "),
                running.join(", ")
            )),
        })
    }

    fn revert(receipt: &ProcessStopReceipt) -> Result<()> {
        target::signal_each(&receipt.targets, libc::SIGCONT).1
    }

    fn manual_undo(receipt: &ProcessStopReceipt) -> Vec<String> {
        if receipt.targets.is_empty() {
            return vec!["# nothing to undo: no process was stopped".to_string()];
        }
        receipt
            .targets
            .iter()
            .map(|t| {
                format!(
                    "kill -CONT {pid}  # only if /proc/{pid}/stat field 22 is still {ticks} ({comm}) \
                     and /proc/sys/kernel/random/boot_id is still {boot}",
                    pid = t.id.pid,
                    ticks = t.id.start_ticks,
                    comm = t.comm,
                    boot = t.id.boot_id,
                )
            })
            .collect()
    }

    fn targets(receipt: &ProcessStopReceipt) -> Vec<String> {
        receipt
            .targets
            .iter()
            .map(TargetProcess::target_name)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> Result<ProcessStop> {
        let spec: ProcessStopSpec =
            serde_json::from_value(json).map_err(|e| Error::invalid(e.to_string()))?;
        ProcessStop::new(spec)
    }

    #[test]
    fn spec_validation_table() {
        use serde_json::json;
        let cases = [
            (json!({"pid": 4242}), None),
            (json!({"name": "worker"}), None),
            (json!({"cmdline": "worker --queue"}), None),
            (
                json!({"pid": 4242, "signal": "TERM"}),
                Some("unknown field `signal`"),
            ),
            (json!({"pid": 1}), Some("PID 1 (init)")),
            (json!({"pid": 0}), Some("positive")),
            (json!({"pid": -3}), Some("positive")),
            (json!({"pid": 5, "name": "w"}), Some("only one")),
            (json!({}), Some("exactly one")),
            (json!({"name": ""}), Some("must not be empty")),
            (json!({"pid": "12"}), Some("invalid type")),
        ];
        for (json, want) in cases {
            match (spec(json.clone()), want) {
                (Ok(_), None) => {}
                (Err(e), Some(want)) => {
                    assert_eq!(e.kind(), ErrorKind::InvalidSpec);
                    assert!(e.to_string().contains(want), "{json}: {e}");
                }
                (r, want) => panic!("{json}: got {r:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn manual_undo_names_identity() {
        let r = ProcessStopReceipt {
            targets: vec![TargetProcess {
                id: fault_core::host::process::ProcessId {
                    pid: 4242,
                    start_ticks: 98765,
                    boot_id: "b".into(),
                },
                comm: "worker".into(),
            }],
        };
        let lines = ProcessStop::manual_undo(&r);
        assert!(
            lines[0].starts_with(
                "kill -CONT 4242  # only if /proc/4242/stat field 22 is still 98765 (worker)"
            ),
            "{lines:?}"
        );
        assert_eq!(ProcessStop::targets(&r), ["pid:4242:98765"]);
    }
}
