//! # fault-disk
//!
//! Disk faults for chaos-agent. One kind so far:
//!
//! - [`DiskFill`] (`disk.fill`): fills the filesystem holding a directory, to a size or to a
//!   percentage used as `df` shows it.
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
//! ## Privileges
//!
//! Write access to the directory; no root needed. Root gets no more than an unprivileged
//! user: ext4's reserved blocks need `CAP_SYS_RESOURCE`, and the sizing never counts on them.
//!
//! ## How revert undoes it
//!
//! Revert unlinks the file (only a regular file at exactly the receipt's path; anything else
//! there is refused as drifted) and `fsync`s the directory, and the space comes back at once.
//! Space stays allocated after the unlink only while another process holds the file open;
//! the fault closes its own descriptor before `inject` returns. A failed allocation is
//! unlinked before `inject` returns, because ext4 keeps a partial one on `ENOSPC`. The file
//! and the directory are `fsync`ed after each change, so a crash or a reboot leaves either
//! the whole fill file or none, and revert from the journaled receipt removes it.

#![deny(missing_docs)]
#![warn(unreachable_pub, missing_debug_implementations)]

mod fill;
mod statfs;

pub use fill::{DiskFill, DiskFillReceipt, DiskFillSpec, KIND};

/// Register every kind of this crate.
pub fn register(reg: &mut fault_core::Registry) {
    reg.register::<DiskFill>();
}
