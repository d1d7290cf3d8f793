//! # chaos-protocol
//!
//! The wire protocol (v1) between `chaos-agent` and a control plane such as `chaos-control`:
//! typed request and response bodies with serde, the limits both sides enforce, the error
//! body, and (with the `client` feature) a small blocking HTTPS client that trusts only the
//! control plane's private CA.
//!
//! Every call is made by the agent (HTTPS, JSON bodies, under [`API_PREFIX`]); the agent opens
//! no port. `docs/protocol.md` describes each call, its JSON, its errors, the token lifecycle,
//! the lease, retries and idempotency; this crate is the executable form of that document.
//!
//! Bodies a server *reads* are `deny_unknown_fields` and have a `validate()` method that checks
//! every field against the limits here, so a server can refuse bad input before storing
//! anything. Bodies a server *writes* accept unknown fields, so that a newer server can add
//! fields without breaking older agents.
//!
//! This crate has no async runtime and no server code: anyone can implement either side.

#![deny(missing_docs)]
#![warn(unreachable_pub, missing_debug_implementations)]

pub mod admin;
pub mod agent;
#[cfg(feature = "client")]
pub mod client;
mod error;
pub mod run;
mod validate;

pub use error::{ApiError, ErrorBody, ErrorCode, Problem};
pub use validate::{is_agent_id, is_run_id, validate_name, Invalid};

/// Every path of this protocol version starts with this.
pub const API_PREFIX: &str = "/api/v1";

/// The largest request body a server accepts (1 MiB); larger bodies get 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The longest long poll (`wait`) a server honours, in seconds; longer waits are cut to this.
pub const MAX_WAIT_SECS: u64 = 60;

/// Most log lines in one batch.
pub const MAX_LOG_LINES: usize = 1000;

/// Longest log message, in bytes.
pub const MAX_LOG_MESSAGE_BYTES: usize = 8 * 1024;

/// Longest free-text field (hostnames, versions, details, reasons), in bytes.
pub const MAX_TEXT_BYTES: usize = 1024;

/// Longest agent or experiment name, in bytes.
pub const MAX_NAME_BYTES: usize = 64;

/// Most fault states in one status update.
pub const MAX_FAULTS_PER_STATUS: usize = 1000;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
