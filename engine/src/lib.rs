//! # chaos-engine
//!
//! What runs experiments on a host and always puts it back, built on the `fault-core`
//! contract:
//!
//! - [`Session`]: the front door. It owns the state-directory lock, the journal, the
//!   preflight checks and the agent's self-protection, and offers `recover`, `dry_run` and
//!   `run`. `chaos-agent run`, the examples, the tests and the daemon use only it.
//! - [`journal`]: the durable rollback ledger (write-temp + fsync + rename + fsync dir).
//! - [`experiment`]: the experiment model (steps run serially, faults of a step in
//!   parallel), validated in one pass with every problem's path.
//! - [`runner`]: the runner that always reverts, and recovery from the journal alone.
//!
//! Nothing here changes the host by itself; the faults do, through the registry.

#![deny(missing_docs)]
#![warn(unreachable_pub, missing_debug_implementations)]

pub mod experiment;
pub mod failpoint;
pub mod journal;
mod report;
mod revert;
pub mod runner;
mod session;
#[cfg(feature = "test-util")]
pub mod testing;

pub use session::{Forgotten, Lost, Orphan, Recovery, Session, Status};
