//! `process.kill`: send a signal (SIGKILL by default) once, or repeatedly for the duration.

use std::fmt;

use fault_core::{Context, Fault, KindInfo, Observation, Param, Result};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::target::{
    self, Limit, Selector, TargetProcess, MAX_TARGETS_CEILING, MAX_TARGETS_PARAM, TARGET_PARAMS,
};

/// Parameters of `process.kill`: exactly one of `pid`, `name` or `cmdline`, plus the signal,
/// an optional repeat interval, and how many processes a name or cmdline may match.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ProcessKillSpec {
    /// Signal this pid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// Signal every process with this name (comm, argv\[0\] basename or executable basename).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Signal every process whose space-joined command line contains this (at least 3
    /// characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// How many processes `name` or `cmdline` may match (1..=1000), at plan time and on
    /// every repeat; more is refused and nothing is signalled. Omitted:
    /// [`DEFAULT_MAX_TARGETS`](crate::DEFAULT_MAX_TARGETS) (5). Not allowed with `pid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_targets: Option<u32>,
    /// The signal; `SIGKILL` when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<SignalSpec>,
    /// Repeat every `interval` for the fault's duration; omitted: signal once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<fault_core::Duration>,
}

/// A signal as written in a spec: a name (`"SIGTERM"`, `"TERM"`, `"term"`) or a number
/// (`15`). Checked by [`ProcessKill::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignalSpec {
    /// A signal name, with or without the `SIG` prefix, any case.
    Name(String),
    /// A signal number, 1..=64.
    Number(i64),
}

/// Sends a signal to the target processes, once or every `interval` for the duration.
///
/// **Changes on the host:** the targets receive the signal (by default `SIGKILL`, so they
/// die). With `interval`, name and cmdline targets are looked up again each time, so an
/// instance a supervisor restarts is hit again; a pid target is re-signalled only while it
/// is still the very process first found.
///
/// **Privileges:** root, or the same user as the targets (`CAP_KILL` for other users'
/// processes).
///
/// **Revert** has nothing to undo: a signal cannot be taken back, so this kind is marked
/// irreversible and `revert` returns `Ok`. Restart the service if it does not restart
/// itself. Every signal goes through a pidfd after re-checking the process's start time, so
/// a pid reused by another process is never hit.
///
/// **Blast radius:** a `name` or `cmdline` that matches more than `max_targets` processes
/// (5 unless the spec says otherwise) is refused at plan time, with the count and the first
/// few matches, before any signal is sent. With `interval`, every repeat checks the same
/// limit: a round that would signal more fails the fault instead of signalling any.
///
/// **Leftovers:** none ([`Fault::leftovers`] keeps its default): a signal leaves nothing on
/// the host to find or take back.
#[derive(Debug, Clone)]
pub struct ProcessKill {
    selector: Selector,
    limit: Limit,
    signal: i32,
    interval: Option<std::time::Duration>,
}

/// What `process.kill` planned and did.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProcessKillReceipt {
    /// The signal number.
    pub signal: i32,
    /// How targets are chosen (re-resolved on each repeat).
    pub selector: Selector,
    /// The processes found by `plan`.
    pub planned: Vec<TargetProcess>,
    /// The processes the signal reached, oldest first; at most 1000, the most recent.
    pub signalled: Vec<TargetProcess>,
    /// How many times a signal was delivered in all.
    pub deliveries: u64,
    /// The most processes the spec accepted per round (absent in receipts written before
    /// the limit existed: [`MAX_TARGETS_CEILING`] then applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_targets: Option<u32>,
    /// The repeat interval, when the spec has one (for people: what will be signalled next).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<fault_core::Duration>,
}

/// How many signalled processes a receipt keeps (the most recent ones).
pub(crate) const MAX_RECORDED: usize = 1000;

/// The shortest repeat interval accepted, so a typo cannot make the agent spin on `/proc`.
const MIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// How long `verify` waits for processes sent SIGKILL to exit.
const EXIT_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

const KILL_PARAMS: [Param; 6] = [
    TARGET_PARAMS[0],
    TARGET_PARAMS[1],
    TARGET_PARAMS[2],
    MAX_TARGETS_PARAM,
    Param {
        name: "signal",
        ty: "string or integer",
        default: Some("SIGKILL"),
        doc: "Signal to send: a name (\"SIGTERM\", \"TERM\", \"term\") or a number 1..=64.",
    },
    Param {
        name: "interval",
        ty: "duration",
        default: Some("none (signal once)"),
        doc: "Signal again every interval for the duration, looking name and cmdline targets up afresh so restarted instances are hit too.",
    },
];

impl Fault for ProcessKill {
    const KIND: &'static str = "process.kill";
    type Spec = ProcessKillSpec;
    type Receipt = ProcessKillReceipt;

    fn new(spec: ProcessKillSpec) -> Result<ProcessKill> {
        let selector =
            Selector::from_fields(spec.pid, spec.name.as_deref(), spec.cmdline.as_deref())?;
        let limit = Limit::from_spec(&selector, spec.max_targets)?;
        let signal = match &spec.signal {
            None => libc::SIGKILL,
            Some(SignalSpec::Name(name)) => target::parse_signal(name)?,
            Some(SignalSpec::Number(n)) => target::signal_number(*n)?,
        };
        if is_stopping(signal) {
            return Err(fault_core::Error::invalid(format!(
                "{} would leave the process stopped with nothing to resume it; use \
                 process.stop, which resumes it on revert",
                target::signal_name(signal)
            )));
        }
        let interval = spec.interval.map(|d| d.std());
        if interval.is_some_and(|d| d < MIN_INTERVAL) {
            return Err(fault_core::Error::invalid(format!(
                "interval must be at least {}",
                fault_core::Duration(MIN_INTERVAL)
            )));
        }
        Ok(ProcessKill {
            selector,
            limit,
            signal,
            interval,
        })
    }

    fn info() -> KindInfo {
        KindInfo {
            summary: "Sends a signal (SIGKILL by default) to the target processes, once or every \
                      interval for the duration (name and cmdline targets are looked up afresh \
                      each time, so restarted instances are hit again). A name or cmdline \
                      matching more than max_targets processes (5 by default) is refused, at \
                      plan time and on every repeat, before anything is signalled. A signal \
                      cannot be taken back: revert does nothing; restart the service if needed.",
            privileges: "root, or the same user as the target (CAP_KILL for others' processes)",
            reversible: false,
            params: &KILL_PARAMS,
            example: "kind = \"process.kill\"\nduration = \"1m\"\nname = \"worker\"\n\
                      signal = \"SIGKILL\"\ninterval = \"10s\"",
        }
    }

    /// Degraded without pidfd (signals by pid) or without CAP_KILL (own uid only).
    fn availability() -> fault_core::Availability {
        target::availability()
    }

    fn describe(&self) -> String {
        let every = self
            .interval
            .map(|d| format!(" every {}", fault_core::Duration(d)))
            .unwrap_or_default();
        format!(
            "send {} to {}{every} (cannot be undone)",
            target::signal_name(self.signal),
            self.selector.describe()
        )
    }

    fn plan(&self, cx: &Context) -> Result<ProcessKillReceipt> {
        Ok(ProcessKillReceipt {
            signal: self.signal,
            selector: self.selector.clone(),
            planned: self.selector.resolve(cx, self.limit)?,
            signalled: Vec::new(),
            deliveries: 0,
            max_targets: Some(self.limit.max),
            interval: self.interval.map(fault_core::Duration),
        })
    }

    fn inject(&self, _cx: &Context, receipt: &mut ProcessKillReceipt) -> Result<()> {
        // Inject twice = once: a planned process already signalled is not signalled again.
        let pending: Vec<TargetProcess> = (receipt.planned.iter())
            .filter(|t| !receipt.signalled.iter().any(|s| s.id == t.id))
            .cloned()
            .collect();
        receipt.signal_all(&pending)
    }

    fn maintain_interval(&self) -> Option<std::time::Duration> {
        self.interval
    }

    fn maintain(
        &self,
        cx: &Context,
        receipt: &mut ProcessKillReceipt,
    ) -> Result<Option<std::time::Duration>> {
        let current = receipt
            .selector
            .current(cx, &receipt.planned, self.limit)
            .map_err(|e| e.context("repeating the signal"))?;
        receipt.signal_all(&current)?;
        Ok(self.interval)
    }

    fn verify(receipt: &ProcessKillReceipt) -> Result<Observation> {
        let name = target::signal_name(receipt.signal);
        let n = receipt.signalled.len();
        if n == 0 {
            return Ok(Observation::clean(format!(
                "{name} has not been sent to any process"
            )));
        }
        if receipt.signal != libc::SIGKILL {
            return Ok(Observation::in_effect(format!(
                "{name} delivered to {n} process(es) ({} deliveries)",
                receipt.deliveries
            )));
        }
        let alive = || receipt.signalled.iter().filter(|t| t.id.is_alive());
        target::wait_until(EXIT_WAIT, || alive().next().is_none());
        let left: Vec<String> = alive().map(|t| t.to_string()).collect();
        Ok(if left.is_empty() {
            Observation::in_effect(format!("all {n} process(es) sent SIGKILL are gone"))
        } else {
            Observation::partial(format!(
                "SIGKILL sent to {n} process(es), but still alive: {}",
                left.join(", ")
            ))
        })
    }

    fn revert(_receipt: &ProcessKillReceipt) -> Result<()> {
        Ok(())
    }

    fn manual_undo(receipt: &ProcessKillReceipt) -> Vec<String> {
        vec![format!(
            "# nothing can be undone: {} was sent to {} process(es); restart the service if \
             it did not restart by itself (e.g. systemctl restart <unit>)",
            target::signal_name(receipt.signal),
            receipt.signalled.len()
        )]
    }

    fn targets(receipt: &ProcessKillReceipt) -> Vec<String> {
        receipt
            .planned
            .iter()
            .map(TargetProcess::target_name)
            .collect()
    }

    fn touches(receipt: &ProcessKillReceipt) -> Vec<String> {
        let name = target::signal_name(receipt.signal);
        let mut lines: Vec<String> = (receipt.planned.iter())
            .map(|t| format!("{}: {name} (cannot be undone)", t.human()))
            .collect();
        if let Some(every) = receipt.interval {
            lines.push(match &receipt.selector {
                Selector::Pid(_) => {
                    format!("then {name} again every {every} while that very process lives")
                }
                sel => format!(
                    "then every {every}: {name} to the {} found at that moment (at most {} \
                     per round)",
                    sel.describe(),
                    receipt.max_targets.unwrap_or(MAX_TARGETS_CEILING)
                ),
            });
        }
        lines
    }

    /// Revert sends nothing, but the receipt is still checked so that what people are shown
    /// (targets, manual undo) is what `plan` could have written: a valid signal and selector,
    /// real process identities from one boot within the limits, a pid target listing only
    /// that pid.
    fn check_receipt(fault_id: &str, receipt: &ProcessKillReceipt) -> Result<()> {
        let bad = |problem: String| Err(target::drifted(Self::KIND, fault_id, problem));
        if target::signal_number(receipt.signal.into()).is_err() || is_stopping(receipt.signal) {
            return bad(format!(
                "signal {} is not one process.kill sends",
                receipt.signal
            ));
        }
        if let Err(e) = receipt.selector.check() {
            return bad(format!("its selector is invalid ({e})"));
        }
        let max = receipt.max_targets.unwrap_or(MAX_TARGETS_CEILING);
        if max == 0 || max > MAX_TARGETS_CEILING {
            return bad(format!(
                "max_targets = {max} is outside 1..={MAX_TARGETS_CEILING}"
            ));
        }
        if let Selector::Pid(pid) = receipt.selector {
            if max != 1 && receipt.max_targets.is_some() {
                return bad(format!("a pid target with max_targets = {max}"));
            }
            if let Some(t) =
                (receipt.planned.iter().chain(&receipt.signalled)).find(|t| t.id.pid != pid)
            {
                return bad(format!("its target is pid {pid}, but it lists {t}"));
            }
        }
        if receipt.interval.is_some_and(|d| d.std() < MIN_INTERVAL) {
            return bad("its interval is shorter than process.kill accepts".to_string());
        }
        target::check_targets(
            Self::KIND,
            fault_id,
            "planned processes",
            &receipt.planned,
            max as usize,
        )?;
        target::check_targets(
            Self::KIND,
            fault_id,
            "signalled processes",
            &receipt.signalled,
            MAX_RECORDED,
        )
    }
}

/// Signals that stop a process (nothing would resume it): refused, `process.stop` is for that.
fn is_stopping(signal: i32) -> bool {
    matches!(
        signal,
        libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
    )
}

impl ProcessKillReceipt {
    /// Signal `targets`, recording each one reached; returns the first failure.
    fn signal_all(&mut self, targets: &[TargetProcess]) -> Result<()> {
        let (reached, result) = target::signal_each(targets, self.signal);
        for t in reached {
            self.deliveries += 1;
            if !self.signalled.iter().any(|s| s.id == t.id) {
                // Identity and comm only: this list is rewritten on every repeat.
                self.signalled.push(TargetProcess {
                    cmdline: String::new(),
                    ..t.clone()
                });
            }
        }
        let excess = self.signalled.len().saturating_sub(MAX_RECORDED);
        self.signalled.drain(..excess);
        result
    }
}

impl Serialize for SignalSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            SignalSpec::Name(name) => s.serialize_str(name),
            SignalSpec::Number(n) => s.serialize_i64(*n),
        }
    }
}

impl<'de> Deserialize<'de> for SignalSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SignalSpec, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = SignalSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a signal name like \"SIGTERM\" or a number 1..=64")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SignalSpec, E> {
                Ok(SignalSpec::Name(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<SignalSpec, E> {
                Ok(SignalSpec::Number(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<SignalSpec, E> {
                Ok(SignalSpec::Number(i64::try_from(v).unwrap_or(i64::MAX)))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::fake;
    use fault_core::ErrorKind;
    use serde_json::json;

    fn build(json: serde_json::Value) -> Result<ProcessKill> {
        let spec: ProcessKillSpec =
            serde_json::from_value(json).map_err(|e| fault_core::Error::invalid(e.to_string()))?;
        ProcessKill::new(spec)
    }

    #[test]
    fn spec_validation_table() {
        let cases = [
            (json!({"pid": 4242}), Ok(libc::SIGKILL)),
            (json!({"name": "w", "signal": "SIGTERM"}), Ok(libc::SIGTERM)),
            (json!({"name": "w", "signal": "TERM"}), Ok(libc::SIGTERM)),
            (json!({"name": "w", "signal": "term"}), Ok(libc::SIGTERM)),
            (json!({"name": "w", "signal": 10}), Ok(10)),
            (json!({"name": "w", "signal": "64"}), Ok(64)),
            (
                json!({"cmdline": "worker", "interval": "250ms"}),
                Ok(libc::SIGKILL),
            ),
            (json!({"name": "w", "signal": 0}), Err("signal 0")),
            (json!({"name": "w", "signal": 65}), Err("out of range")),
            (json!({"name": "w", "signal": -9}), Err("out of range")),
            (
                json!({"name": "w", "signal": "SIGNOPE"}),
                Err("unknown signal"),
            ),
            (
                json!({"name": "w", "signal": true}),
                Err("a signal name like"),
            ),
            (
                json!({"name": "w", "signal": "STOP"}),
                Err("use process.stop"),
            ),
            (
                json!({"name": "w", "interval": "1ms"}),
                Err("at least 100ms"),
            ),
            (json!({"name": "w", "interval": "5"}), Err("needs a unit")),
            (
                json!({"name": "w", "sig": "TERM"}),
                Err("unknown field `sig`"),
            ),
            (json!({"pid": 1}), Err("PID 1 (init)")),
            (json!({"pid": 0}), Err("positive")),
            (json!({"pid": -1}), Err("positive")),
            (json!({"pid": 5, "cmdline": "x"}), Err("only one")),
            (json!({"signal": "TERM"}), Err("exactly one")),
            (json!({"name": "w", "max_targets": 8}), Ok(libc::SIGKILL)),
            (json!({"cmdline": "/"}), Err("too short")),
            (json!({"cmdline": "ab"}), Err("too short")),
            (
                json!({"pid": 7, "max_targets": 1}),
                Err("a pid names exactly one"),
            ),
            (json!({"name": "w", "max_targets": 0}), Err("at least 1")),
            (
                json!({"name": "w", "max_targets": "8"}),
                Err("invalid type: string \"8\", expected u32"),
            ),
            (
                json!({"name": "w", "signal": 9.5}),
                Err("invalid type: floating point `9.5`, expected a signal name"),
            ),
        ];
        for (json, want) in cases {
            match (build(json.clone()), want) {
                (Ok(f), Ok(sig)) => assert_eq!(f.signal, sig, "{json}"),
                (Err(e), Err(want)) => {
                    assert_eq!(e.kind(), ErrorKind::InvalidSpec);
                    assert!(e.to_string().contains(want), "{json}: {e}");
                }
                (r, want) => panic!("{json}: got {r:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn spec_round_trips_through_json() {
        let spec = ProcessKillSpec {
            name: Some("worker".into()),
            signal: Some(SignalSpec::Number(15)),
            interval: Some(fault_core::Duration::from_secs(5)),
            ..Default::default()
        };
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(v, json!({"name": "worker", "signal": 15, "interval": "5s"}));
        assert_eq!(serde_json::from_value::<ProcessKillSpec>(v).unwrap(), spec);
    }

    fn receipt(selector: Selector, planned: Vec<TargetProcess>) -> ProcessKillReceipt {
        ProcessKillReceipt {
            signal: libc::SIGKILL,
            selector,
            planned,
            signalled: Vec::new(),
            deliveries: 0,
            max_targets: Some(5),
            interval: None,
        }
    }

    #[test]
    fn touches_names_processes_signal_and_repeats() {
        let mut r = receipt(
            Selector::Name("worker".into()),
            vec![fake::process(4242, "worker", "/usr/bin/worker --queue a")],
        );
        assert_eq!(
            ProcessKill::touches(&r),
            ["pid 4242 (worker) `/usr/bin/worker --queue a`: SIGKILL (cannot be undone)"]
        );
        r.interval = Some(fault_core::Duration::from_secs(10));
        r.signal = libc::SIGTERM;
        assert_eq!(
            ProcessKill::touches(&r)[1],
            "then every 10s: SIGTERM to the processes named \"worker\" found at that moment \
             (at most 5 per round)"
        );
        r.selector = Selector::Pid(4242);
        assert_eq!(
            ProcessKill::touches(&r)[1],
            "then SIGTERM again every 10s while that very process lives"
        );
    }

    #[test]
    fn check_receipt_table() {
        let good = receipt(
            Selector::Cmdline("worker --queue".into()),
            vec![fake::process(100, "a", ""), fake::process(101, "b", "")],
        );
        ProcessKill::check_receipt("f", &good).unwrap();
        let mut by_pid = receipt(Selector::Pid(100), vec![fake::process(100, "a", "")]);
        by_pid.max_targets = Some(1);
        ProcessKill::check_receipt("f", &by_pid).unwrap();

        type Edit = fn(&mut ProcessKillReceipt);
        let cases: [(&str, Edit); 10] = [
            ("signal 0 is not", |r| r.signal = 0),
            ("signal 19 is not", |r| r.signal = libc::SIGSTOP),
            ("signal 99 is not", |r| r.signal = 99),
            ("selector is invalid (cmdline \"/\" is too short", |r| {
                r.selector = Selector::Cmdline("/".into())
            }),
            ("selector is invalid (refusing to target PID 1", |r| {
                r.selector = Selector::Pid(1)
            }),
            ("its target is pid 7, but it lists pid 100 (a)", |r| {
                r.selector = Selector::Pid(7);
                r.max_targets = Some(1);
                r.planned.truncate(1);
            }),
            ("more than its limit of 1", |r| r.max_targets = Some(1)),
            ("outside 1..=1000", |r| r.max_targets = Some(0)),
            ("interval is shorter", |r| {
                r.interval = Some(fault_core::Duration::from_millis(1))
            }),
            ("signalled processes include pid 1", |r| {
                r.signalled.push(fake::process(1, "init", ""))
            }),
        ];
        for (want, edit) in cases {
            let mut r = good.clone();
            edit(&mut r);
            let e = ProcessKill::check_receipt("f-2", &r).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Drifted, "{want}");
            assert!(e.to_string().contains(want), "{want}: {e}");
        }
    }

    #[test]
    fn receipt_keeps_the_last_signalled_processes() {
        let me = TargetProcess {
            id: fault_core::host::process::ProcessId::of(std::process::id() as i32).unwrap(),
            comm: "me".into(),
            cmdline: "the test binary".into(),
        };
        let mut r = ProcessKillReceipt {
            signal: 0,
            selector: Selector::Pid(me.id.pid),
            planned: vec![],
            signalled: (0..MAX_RECORDED as u64)
                .map(|i| {
                    let mut t = me.clone();
                    t.id.start_ticks = i;
                    t
                })
                .collect(),
            deliveries: 0,
            max_targets: None,
            interval: None,
        };
        // Signal 0 to ourselves: delivered, changes nothing.
        r.signal_all(std::slice::from_ref(&me)).unwrap();
        r.signal_all(std::slice::from_ref(&me)).unwrap();
        assert_eq!(r.signalled.len(), MAX_RECORDED);
        let last = r.signalled.last().unwrap();
        assert_eq!(last.id, me.id);
        assert_eq!(last.cmdline, "", "signalled entries keep identity only");
        assert_eq!(r.signalled[0].id.start_ticks, 1, "the oldest was dropped");
        assert_eq!(r.deliveries, 2);
    }
}
