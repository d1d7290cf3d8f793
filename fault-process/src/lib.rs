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
pub use target::{Selector, TargetProcess};

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
