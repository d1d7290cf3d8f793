//! `process.stop`: freeze processes with `SIGSTOP`, resume them with `SIGCONT` on revert.

use std::time::Duration;

use fault_core::{
    shell_cmd, Context, Error, ErrorKind, Fault, KindInfo, Observation, Param, Result,
};
use serde::{Deserialize, Serialize};

use crate::target::{
    self, Limit, Selector, TargetProcess, MAX_TARGETS_CEILING, MAX_TARGETS_PARAM, TARGET_PARAMS,
};

/// Parameters of `process.stop`: exactly one of `pid`, `name` or `cmdline`, and how many
/// processes a name or cmdline may match.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ProcessStopSpec {
    /// Stop this pid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// Stop every process with this name (comm, argv\[0\] basename or executable basename).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Stop every process whose space-joined command line contains this (at least 3
    /// characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// How many processes `name` or `cmdline` may match (1..=1000); more is refused at plan
    /// time. Omitted: [`DEFAULT_MAX_TARGETS`](crate::DEFAULT_MAX_TARGETS) (5). Not allowed
    /// with `pid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_targets: Option<u32>,
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
///
/// **Blast radius:** a `name` or `cmdline` that matches more than `max_targets` processes
/// (5 unless the spec says otherwise) is refused at plan time, with the count and the first
/// few matches, before anything is stopped.
///
/// **Leftovers:** none are looked for ([`Fault::leftovers`] keeps its default). A stopped
/// process carries no mark of who stopped it: a process in state `T` may have been stopped
/// by a debugger, a shell's job control or an operator, and resuming it would undo their
/// stop. Without the journal record (which holds the pids, start times and boot id) nothing
/// proves a stopped process is ours, so recovery leaves it alone; `chaos-agent recover`
/// prints the hint to look for stopped processes instead.
#[derive(Debug, Clone)]
pub struct ProcessStop {
    selector: Selector,
    limit: Limit,
}

/// What `process.stop` planned: the processes it stops.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProcessStopReceipt {
    /// The processes to stop (and to resume on revert).
    pub targets: Vec<TargetProcess>,
    /// The most processes the spec accepted (absent in receipts written before the limit
    /// existed: [`MAX_TARGETS_CEILING`] then applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_targets: Option<u32>,
}

const STOP_PARAMS: [Param; 4] = [
    TARGET_PARAMS[0],
    TARGET_PARAMS[1],
    TARGET_PARAMS[2],
    MAX_TARGETS_PARAM,
];

/// How long `inject` waits for every target to reach state `T`.
const STOP_WAIT: Duration = Duration::from_secs(1);

impl Fault for ProcessStop {
    const KIND: &'static str = "process.stop";
    type Spec = ProcessStopSpec;
    type Receipt = ProcessStopReceipt;

    fn new(spec: ProcessStopSpec) -> Result<ProcessStop> {
        let selector =
            Selector::from_fields(spec.pid, spec.name.as_deref(), spec.cmdline.as_deref())?;
        let limit = Limit::from_spec(&selector, spec.max_targets)?;
        Ok(ProcessStop { selector, limit })
    }

    fn info() -> KindInfo {
        KindInfo {
            summary: "Stops the target processes with SIGSTOP for the duration: they keep their \
                      memory and sockets but run no code. Revert sends SIGCONT to each target \
                      that is still the very process recorded (pid + start time + boot id). A \
                      target that is already stopped is refused, so we never resume a process \
                      someone else stopped. A name or cmdline matching more than max_targets \
                      processes (5 by default) is refused before anything is stopped.",
            privileges: "root, or the same user as the target (CAP_KILL for others' processes)",
            reversible: true,
            params: &STOP_PARAMS,
            example: "kind = \"process.stop\"\nduration = \"30s\"\nname = \"worker\"",
        }
    }

    /// Degraded without pidfd (signals by pid) or without CAP_KILL (own uid only).
    fn availability() -> fault_core::Availability {
        target::availability()
    }

    fn describe(&self) -> String {
        format!(
            "stop {} with SIGSTOP (SIGCONT on revert)",
            self.selector.describe()
        )
    }

    fn plan(&self, cx: &Context) -> Result<ProcessStopReceipt> {
        let targets = self.selector.resolve(cx, self.limit)?;
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
        Ok(ProcessStopReceipt {
            targets,
            max_targets: Some(self.limit.max),
        })
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
                    "{cmd}  # {t}: only if /proc/{pid}/stat field 22 is still {ticks} and \
                     /proc/sys/kernel/random/boot_id is still {boot}",
                    cmd = shell_cmd!["kill", "-CONT", t.id.pid.to_string()],
                    pid = t.id.pid,
                    ticks = t.id.start_ticks,
                    boot = target::printable(&t.id.boot_id),
                )
            })
            .collect()
    }

    fn touches(receipt: &ProcessStopReceipt) -> Vec<String> {
        receipt
            .targets
            .iter()
            .map(|t| format!("{}: SIGSTOP now, SIGCONT on revert", t.human()))
            .collect()
    }

    /// Revert sends `SIGCONT` to every listed process that is still that very process, so
    /// the list must be one `plan` could have written: real process identities from one
    /// boot, never PID 1 or a kernel thread, within the spec's `max_targets`.
    fn check_receipt(fault_id: &str, receipt: &ProcessStopReceipt) -> Result<()> {
        let max = receipt.max_targets.unwrap_or(MAX_TARGETS_CEILING);
        if max == 0 || max > MAX_TARGETS_CEILING {
            return Err(target::drifted(
                Self::KIND,
                fault_id,
                format!("max_targets = {max} is outside 1..={MAX_TARGETS_CEILING}"),
            ));
        }
        target::check_targets(
            Self::KIND,
            fault_id,
            "targets",
            &receipt.targets,
            max as usize,
        )
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
    use crate::target::fake;

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
            (json!({"name": "worker", "max_targets": 50}), None),
            (json!({"cmdline": "worker --queue", "max_targets": 1}), None),
            (json!({"cmdline": "/"}), Some("too short")),
            (
                json!({"pid": 5, "max_targets": 2}),
                Some("a pid names exactly one"),
            ),
            (json!({"name": "w", "max_targets": 0}), Some("at least 1")),
            (
                json!({"name": "w", "max_targets": 5000}),
                Some("more than 1000"),
            ),
            (
                json!({"name": "w", "max_targets": "50"}),
                Some("invalid type: string \"50\", expected u32"),
            ),
            (
                json!({"name": "w", "max_targets": -1}),
                Some("invalid value: integer `-1`, expected u32"),
            ),
            (
                json!({"name": "w", "max_targets": 2.5}),
                Some("invalid type: floating point `2.5`, expected u32"),
            ),
            (
                json!({"name": "w", "max_targets": true}),
                Some("invalid type: boolean `true`, expected u32"),
            ),
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

    fn receipt(targets: Vec<TargetProcess>) -> ProcessStopReceipt {
        ProcessStopReceipt {
            targets,
            max_targets: Some(5),
        }
    }

    #[test]
    fn manual_undo_names_identity() {
        let mut t = fake::process(4242, "worker", "/usr/bin/worker");
        t.id.start_ticks = 98765;
        let r = receipt(vec![t]);
        let lines = ProcessStop::manual_undo(&r);
        assert_eq!(
            lines,
            [format!(
                "kill -CONT 4242  # pid 4242 (worker): only if /proc/4242/stat field 22 is \
                 still 98765 and /proc/sys/kernel/random/boot_id is still {}",
                fake::BOOT
            )]
        );
        assert_eq!(ProcessStop::targets(&r), ["pid:4242:98765"]);
        assert_eq!(
            ProcessStop::manual_undo(&receipt(vec![])),
            ["# nothing to undo: no process was stopped"]
        );
    }

    #[test]
    fn manual_undo_stays_one_line_whatever_the_names() {
        // comm and boot id come from the receipt (a process chooses its comm; a journal can
        // be edited): spaces, `;`, quotes and newlines must not add a command.
        let mut t = fake::process(4242, "my; worker\nrm -rf /", "");
        t.id.boot_id = "x'; reboot\n".into();
        let lines = ProcessStop::manual_undo(&receipt(vec![t]));
        assert_eq!(lines.len(), 1);
        assert!(!lines[0].contains('\n'), "{lines:?}");
        assert!(
            lines[0].starts_with("kill -CONT 4242  # pid 4242 (my; worker\\nrm -rf /): "),
            "{lines:?}"
        );
        assert!(lines[0].ends_with("is still x'; reboot\\n"), "{lines:?}");
    }

    #[test]
    fn touches_lists_each_process_with_its_command_line_and_signal() {
        let r = receipt(vec![
            fake::process(4242, "worker", "/usr/bin/worker --queue a"),
            fake::process(4243, "worker", ""),
        ]);
        assert_eq!(
            ProcessStop::touches(&r),
            [
                "pid 4242 (worker) `/usr/bin/worker --queue a`: SIGSTOP now, SIGCONT on revert",
                "pid 4243 (worker): SIGSTOP now, SIGCONT on revert",
            ]
        );
    }

    #[test]
    fn check_receipt_table() {
        let good = receipt(vec![
            fake::process(100, "a", ""),
            fake::process(101, "b", ""),
        ]);
        ProcessStop::check_receipt("f", &good).unwrap();
        let old = ProcessStopReceipt {
            max_targets: None,
            ..good.clone()
        };
        ProcessStop::check_receipt("f", &old).expect("a receipt from before max_targets");
        let bad: [(&str, ProcessStopReceipt); 5] = [
            (
                "more than its limit of 1",
                ProcessStopReceipt {
                    max_targets: Some(1),
                    ..good.clone()
                },
            ),
            (
                "outside 1..=1000",
                ProcessStopReceipt {
                    max_targets: Some(0),
                    ..good.clone()
                },
            ),
            (
                "outside 1..=1000",
                ProcessStopReceipt {
                    max_targets: Some(5000),
                    ..good.clone()
                },
            ),
            (
                "pid 1 (init",
                receipt(vec![fake::process(1, "systemd", "")]),
            ),
            ("no valid boot id", {
                let mut r = good.clone();
                r.targets[0].id.boot_id = String::new();
                r
            }),
        ];
        for (want, r) in bad {
            let e = ProcessStop::check_receipt("f-1", &r).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Drifted, "{want}");
            assert!(e.to_string().contains(want), "{want}: {e}");
        }
        // Through the registry, as the engine calls it on a journal record.
        let mut reg = fault_core::Registry::new();
        crate::register(&mut reg);
        let v = serde_json::to_value(&good).unwrap();
        reg.check_receipt("process.stop", "f", &v).unwrap();
        let mut edited = v.clone();
        edited["targets"][0]["id"]["pid"] = serde_json::json!(1);
        let e = reg.check_receipt("process.stop", "f", &edited).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Drifted);
    }
}
