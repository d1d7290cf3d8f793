//! End-to-end tests of `chaos-agent` live in `tests/`; this crate's library holds what they
//! share that is worth reusing outside them: [`oldkernel`], a seccomp filter that makes a
//! program see the system call table of an old kernel (and the `enosys-exec` binary).
//! The tests need the `chaos-agent` binary built in the same target directory
//! (`cargo test --workspace` builds it) and root (they mount tmpfs and stop processes
//! they started themselves).

pub mod oldkernel;
