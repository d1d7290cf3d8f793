//! # fault-memory
//!
//! Memory faults for chaos-agent. One kind so far:
//!
//! - [`MemoryStress`] (`memory.stress`): a child process that holds an amount of resident
//!   memory, given in bytes or as a percentage of the host's RAM, all at once or growing at
//!   a given rate.
//!
//! ## What changes on the host
//!
//! `memory.stress` starts one child process, `chaos-memory`, forked from the agent by
//! [`fault_core::host::stressor`]. It maps the amount as private anonymous memory and
//! writes to every page, so the memory is really resident (counted in its RSS and in the
//! cgroup's charge), not merely reserved; it re-touches the pages every second while it
//! holds them. With `rate` it touches that many bytes per second until it has the amount.
//!
//! The stressor joins a cgroup of its own, `chaos-agent-<fault id>`, under the agent's
//! cgroup (the v1 memory hierarchy on hybrid hosts, the cgroup2 hierarchy where memory is a
//! v2 controller) **before** it touches a page, so every page is charged there, and it runs
//! with `oom_score_adj` 1000: when memory runs out, on the host or in a cgroup above, the OOM
//! killer takes the stressor, never the agent (which lowers its own score with
//! [`fault_core::host::stressor::protect_self`]). The agent notices such a death within a
//! second and reports it, naming the OOM kill count of the fault's cgroup.
//!
//! ## Guardrails
//!
//! Plan refuses an amount that does not fit in `MemAvailable` minus a reserve (default 5% of
//! RAM, at least 256 MiB) that keeps the kernel and everything else alive, and also an
//! amount above the headroom of a memory cgroup limit the agent runs under.
//!
//! ## Privileges
//!
//! None to hold memory. Creating the cgroup needs root (or a delegated cgroup); without it
//! the stressor runs without one, still at `oom_score_adj` 1000.
//!
//! ## How revert undoes it
//!
//! Revert kills the stressor (`SIGKILL` through a pidfd, checked against its recorded start
//! time) and anything else in the fault's cgroups, waits until they are gone (the kernel
//! frees the memory as the process exits) and removes the cgroups. If the agent dies, the
//! stressor dies with it (`PR_SET_PDEATHSIG`).

#![deny(missing_docs)]
#![warn(unreachable_pub, missing_debug_implementations)]

mod meminfo;
mod stress;

pub use stress::{MemoryStress, MemoryStressReceipt, MemoryStressSpec, KIND};

/// Register every kind of this crate.
pub fn register(reg: &mut fault_core::Registry) {
    reg.register::<MemoryStress>();
}
