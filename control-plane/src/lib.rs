//! # chaos-control
//!
//! The reference control plane for `chaos-agent`: an HTTPS API (axum + rustls with ring)
//! speaking the protocol of the `chaos-protocol` crate, an embedded SQLite store, and the
//! pieces of the `chaos-control` command line (`init`, `serve`, operator commands).
//!
//! - [`pki`]: `chaos-control init` — a private CA, a server certificate, an admin token.
//! - [`server`]: the API: registration, token rotation with generation checks, the task
//!   long poll, status, logs, results, and the operator's calls.
//! - [`store`]: the durable store. Secrets are kept only as SHA-256 hashes.
//! - [`registry`]: the fault kinds the server validates experiments against — the same
//!   registry the agent builds, so a bad experiment is refused before any agent sees it.

#![deny(missing_docs)]
#![warn(unreachable_pub, missing_debug_implementations)]

pub mod limits;
pub mod metrics;
pub mod pki;
pub mod rotate;
pub mod secrets;
pub mod server;
pub mod store;

use std::fmt;

/// Every fault kind the agent knows: the same registry `chaos-agent` builds
/// (`chaos_kinds::registry`), so an experiment accepted here is one the agent can run.
pub fn registry() -> fault_core::Registry {
    chaos_kinds::registry()
}

/// An error of the control plane's library: a sentence for a person.
#[derive(Debug)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl Error {
    /// An error with this message.
    pub fn msg(m: impl Into<String>) -> Error {
        Error(m.into())
    }
}

impl From<store::StoreError> for Error {
    fn from(e: store::StoreError) -> Error {
        Error(e.to_string())
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
