//! End-to-end tests of `chaos-agent` live in `tests/`; this crate has no library code.
//! They need the `chaos-agent` binary built in the same target directory
//! (`cargo test --workspace` builds it) and root (they mount tmpfs and stop processes
//! they started themselves).
