//! # fault-core
//!
//! The contract every chaos-agent fault crate implements, and the host helpers they share
//! (the journal, experiment model and runner live in `chaos-engine`):
//!
//! - [`Fault`]: the plan -> inject -> verify -> revert contract. Revert works from a
//!   serialized receipt alone, in a fresh process, after a crash or a reboot.
//! - [`Registry`]: kind strings (`"process.stop"`) to constructors, so nothing `match`es on
//!   kinds.
//! - [`units`]: `Duration` (`"250ms"`), `Bytes` (`"512MiB"`), `Percent` (`"40%"`).
//! - [`host`]: process identity safe from PID reuse (pidfd), durable writes, boot id, and
//!   the probes behind [`Fault::availability`] ([`host::probe`]).
//!
//! This crate changes nothing on the host by itself; the fault crates do, through it.
//! Whatever privilege a fault needs is stated on that fault.

#![deny(missing_docs)]
#![warn(unreachable_pub, missing_debug_implementations)]

mod availability;
mod error;
mod fault;
pub mod host;
mod registry;
#[cfg(feature = "test-util")]
pub mod testing;
pub mod units;

pub use availability::{Availability, Level};
pub use error::{Error, ErrorKind, Result};
pub use fault::{Context, Effect, Fault, KindInfo, Leftover, Observation, Param};
pub use registry::{DynFault, KindEntry, Registry};
pub use units::{Bytes, Duration, Percent};
