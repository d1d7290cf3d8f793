//! # fault-disk
//!
//! Disk faults for chaos-agent:
//!
//! - [`DiskFill`] (`disk.fill`): fills the filesystem holding a directory, to a size or to a
//!   percentage used as `df` shows it.
//! - [`DiskIo`] (`disk.io`): worker processes that read, write or mix direct I/O through
//!   scratch files on the filesystem holding a directory.
//!
//! ## What changes on the host
//!
//! `disk.fill` creates one regular file, `<path>/.chaos-agent-fill-<fault id>` (mode 0600),
//! and allocates its blocks with `fallocate(2)`. No data is written, so the fill is instant
//! on ext4, xfs, btrfs and tmpfs, yet the space is really taken: `df` shows it and other
//! writers get `ENOSPC`. The file name carries the fault id, which is how revert (and a
//! person) knows it is ours. Plan sizes the fill from `statvfs(3)`'s `f_bavail` and refuses,
//! naming the numbers, rather than ever filling less than asked.
//!
//! `disk.io` creates one scratch file per worker, `<path>/.chaos-agent-io-<fault id>-<n>`
//! (mode 0600), and one child process per worker (`chaos-io`, forked by
//! [`fault_core::host::stressor`], in a cgroup of its own under the agent's, with
//! `oom_score_adj` 1000). Each opens its file with `O_DIRECT`, so the page cache cannot
//! absorb the load and every block reaches the device, and loops over it in `block_size`
//! blocks from a page-aligned buffer (direct I/O needs 4096-byte alignment of buffer,
//! offset and length), optionally throttled to `rate` and stopped after `bytes`. Plan
//! refuses a directory that is not there, a memory filesystem (tmpfs has no O_DIRECT) and
//! files that would not fit. Revert kills the workers (pidfd, PID-reuse safe, plus
//! everything in their cgroup), then unlinks the files; the workers die with the agent.
//!
//! ## Privileges
//!
//! Write access to the directory; no root needed (`disk.io` uses root, or a delegated
//! cgroup, only to give its workers a cgroup of their own). Root gets no more than an
//! unprivileged user: ext4's reserved blocks need `CAP_SYS_RESOURCE`, and the sizing never
//! counts on them.
//!
//! ## How revert undoes it
//!
//! `disk.fill`'s revert unlinks the file (only a regular file at exactly the receipt's path; anything else
//! there is refused as drifted) and `fsync`s the directory, and the space comes back at once.
//! Space stays allocated after the unlink only while another process holds the file open;
//! the fault closes its own descriptor before `inject` returns. A failed allocation is
//! unlinked before `inject` returns, because ext4 keeps a partial one on `ENOSPC`. The file
//! and the directory are `fsync`ed after each change, so a crash or a reboot leaves either
//! the whole fill file or none, and revert from the journaled receipt removes it.
//! `disk.io`'s revert kills the workers first (an open descriptor would keep the blocks
//! allocated), then unlinks the scratch files the same way.

#![deny(missing_docs)]
#![warn(unreachable_pub, missing_debug_implementations)]

mod fill;
mod io;
mod statfs;

pub use fill::{DiskFill, DiskFillReceipt, DiskFillSpec, KIND};
pub use io::{DiskIo, DiskIoReceipt, DiskIoSpec, IoMode, IO_KIND};

/// Register every kind of this crate.
pub fn register(reg: &mut fault_core::Registry) {
    reg.register::<DiskFill>();
    reg.register::<DiskIo>();
}
