//! # fault-process
//!
//! Process faults for chaos-agent:
//!
//! - [`ProcessStop`] (`process.stop`): freeze processes with `SIGSTOP` for the duration;
//!   revert resumes them with `SIGCONT`.
//! - [`ProcessKill`] (`process.kill`): send a signal (`SIGKILL` by default), once or every
//!   `interval` for the duration. Irreversible: a signal cannot be taken back.
//! - [`ServiceStop`] (`service.stop`): `systemctl stop` a service unit for the duration;
//!   revert starts it again when it was active before.
//! - [`ServiceRestart`] (`service.restart`): `systemctl restart` a service unit, once or every
//!   `interval`. Irreversible; revert only makes sure it runs again if it ran before.
//!
//! ## Choosing targets
//!
//! Both kinds take exactly one of `pid = 4242`, `name = "worker"` (exact match against the
//! kernel's `comm`, which is cut to 15 characters, or the basename of `argv[0]`, or the
//! basename of `/proc/PID/exe`) and `cmdline = "worker --queue"` (substring of the
//! space-joined command line). PID 1, kernel threads, zombies, and the agent with its
//! ancestors are never targeted: an explicit pid naming one is refused, a name or cmdline
//! match skips them.
//!
//! ## Blast radius
//!
//! A `name` or `cmdline` that matches more than `max_targets` processes
//! ([`DEFAULT_MAX_TARGETS`] = 5 unless the spec sets it, at most [`MAX_TARGETS_CEILING`]) is
//! refused at plan time, before anything is signalled, with the count and the first few
//! matches as `pid N (comm)`: a loose pattern (`cmdline = "/"` matches nearly every process)
//! must never reach unrelated programs. `max_targets = 50` means "I accept up to 50"; it is
//! refused with `pid`, which names one process. `process.kill` with `interval` applies the
//! same limit to every repeat: a round that would signal more fails the fault and signals
//! none. A `cmdline` shorter than 3 characters is refused as an invalid spec outright.
//!
//! ## Receipts read back from the journal
//!
//! Before revert acts on a journaled receipt, `check_receipt` refuses (as
//! [`ErrorKind::Drifted`](fault_core::ErrorKind::Drifted)) anything `plan` could not have
//! written: PID 1, kthreadd or a live kernel thread among the processes, a missing or
//! malformed boot id, processes of different boots, one process twice, more processes than
//! the receipt's limit; for services, a unit name the spec check refuses (including
//! `chaos-agent.service` and the shutdown/rescue units), the unit the agent runs in now, or
//! a prior state that was not active. Every command printed for people is shell-quoted word
//! by word, and names a target chose (its `comm`, its command line) are shown with control
//! characters escaped.
//!
//! ## Leftovers
//!
//! None of these kinds looks for leftovers without a journal record: a stopped process or
//! a stopped service carries no mark of who stopped it, so nothing proves it is ours, and
//! resuming or starting what an operator stopped on purpose would be a fault of its own.
//!
//! ## What changes on the host, and how revert undoes it
//!
//! Only the targets' run state: stopped (state `T`) or signalled. Nothing is written to
//! disk. Every target is recorded in the receipt as a
//! [`ProcessId`](fault_core::host::process::ProcessId) (pid + start time + boot id) and
//! signalled through a pidfd after re-checking that identity, so a pid that a newcomer
//! reused, or a reboot, can never make revert (or a repeated kill) hit the wrong process.
//! `process.stop` refuses a target that is already stopped, so its revert never resumes a
//! process that someone else stopped. `process.kill` has nothing to revert.
//!
//! ## Service faults
//!
//! `service.stop` and `service.restart` talk to systemd through `systemctl`, run with an
//! argument vector (no shell) and a unit name checked against systemd's character set. The
//! receipt records the unit's prior `ActiveState` (and invocation id), so revert (`systemctl
//! start`, only when it was active) works from the journal alone, after a crash or a reboot.
//! `chaos-agent.service`, and any unit the agent or one of its ancestors runs in (read from
//! `/proc/PID/cgroup`), are refused. Where systemd is not the init system, `plan` fails with
//! [`ErrorKind::Unsupported`](fault_core::ErrorKind::Unsupported) before anything changes.
//!
//! ## Privileges
//!
//! Process faults: root, or the same user as the targets (`CAP_KILL` to signal other users'
//! processes); `plan` checks this with signal 0 before anything changes. Service faults:
//! root (systemd's `manage-units`).

#![deny(missing_docs)]
#![warn(unreachable_pub, missing_debug_implementations)]

mod kill;
mod service;
mod stop;
mod target;

pub use kill::{ProcessKill, ProcessKillReceipt, ProcessKillSpec, SignalSpec};
pub use service::{
    ServiceReceipt, ServiceRestart, ServiceRestartSpec, ServiceStop, ServiceStopSpec,
};
pub use stop::{ProcessStop, ProcessStopReceipt, ProcessStopSpec};
pub use target::{Selector, TargetProcess, DEFAULT_MAX_TARGETS, MAX_TARGETS_CEILING};

/// Register `process.stop`, `process.kill`, `service.stop` and `service.restart`.
pub fn register(reg: &mut fault_core::Registry) {
    reg.register::<ProcessStop>()
        .register::<ProcessKill>()
        .register::<ServiceStop>()
        .register::<ServiceRestart>();
}

#[cfg(test)]
mod tests {
    use fault_core::Registry;

    /// Every kind's `info().example` validates as an experiment file would be read.
    #[test]
    fn examples_validate() {
        let examples = chaos_engine::testing::build_examples(super::register);
        let kinds: Vec<&str> = examples.keys().copied().collect();
        assert_eq!(
            kinds,
            [
                "process.kill",
                "process.stop",
                "service.restart",
                "service.stop"
            ]
        );
        assert!(examples.values().all(|f| !f.describe().is_empty()));
    }

    #[test]
    fn unknown_keys_are_refused_through_the_registry() {
        let mut reg = Registry::new();
        super::register(&mut reg);
        for kind in ["process.stop", "process.kill"] {
            let e = reg
                .build(kind, &serde_json::json!({"name": "w", "colour": "red"}))
                .err()
                .expect("unknown key refused");
            assert_eq!(e.kind(), fault_core::ErrorKind::InvalidSpec);
            assert!(e.to_string().contains("colour"), "{e}");
        }
    }
}
