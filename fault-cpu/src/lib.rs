//! # fault-cpu
//!
//! CPU faults for chaos-agent. One kind so far:
//!
//! - [`CpuStress`] (`cpu.stress`): worker processes that each hold a CPU load (1 to 100% of
//!   one CPU), on every core or on a list of cores, optionally ramping up to it.
//!
//! ## What changes on the host
//!
//! `cpu.stress` starts one child process per worker (named `chaos-cpu`), forked from the
//! agent by [`fault_core::host::stressor`]. Each runs a duty cycle of periods 10 to 30 ms
//! long (drawn at random each time): it spins, then sleeps until the period ends. How long
//! it spins is decided from the CPU time it has *actually received*
//! (`CLOCK_PROCESS_CPUTIME_ID`) against the load integrated over wall time, so time lost to
//! preemption is made up (within the period, and up to 25 ms of debt carried into the next
//! ones, so a stressor that was stopped does not then burn for seconds). A wall-clock duty
//! cycle, as `stress-ng --cpu-load` uses, under-delivers as soon as anything else competes
//! for the CPU. The random period lengths keep the busy phases uncorrelated with the
//! scheduler tick, so the kernel's tick-sampled accounting (`/proc/stat`: `top`, `vmstat`,
//! `sar`, node_exporter) reports the requested load too, not only the worker's own CPU time;
//! a fixed period beats against the tick and shows up to 10 points less. The workers ask
//! for 1 ns timer slack (`PR_SET_TIMERSLACK`), so wake-ups are not deferred onto a tick.
//! See `docs/benchmarks.md`.
//!
//! The workers sit in a cgroup of their own, `chaos-agent-<fault id>`, under the agent's
//! cgroup (the cgroup2 hierarchy, and the v1 memory hierarchy when memory is a v1
//! controller), and run with `oom_score_adj` 1000. They are deliberately **not** put in a
//! v1 `cpu` cgroup: a group there is scheduled as one entity against the other tasks of its
//! parent, which would cap the stress it is meant to cause.
//!
//! ## Privileges
//!
//! None to burn CPU or to pin to cores the agent may use. Creating the cgroups needs root
//! (or a delegated cgroup); without it the workers run without one.
//!
//! ## How revert undoes it
//!
//! Revert kills every worker (`SIGKILL` through a pidfd, checked against the recorded start
//! time, so a reused pid is never hit), kills whatever else is in the fault's cgroups (which
//! covers a crash between starting the workers and journaling their pids), waits until none
//! is left and removes the cgroups. CPU load ends with the processes. If the agent dies, the
//! workers die with it (`PR_SET_PDEATHSIG`), and recovery's revert removes the cgroups.

#![deny(missing_docs)]
#![warn(unreachable_pub, missing_debug_implementations)]

mod duty;
mod stress;

pub use stress::{CpuStress, CpuStressReceipt, CpuStressSpec, Workers, KIND};

/// Register every kind of this crate.
pub fn register(reg: &mut fault_core::Registry) {
    reg.register::<CpuStress>();
}
