//! # fault-disk
//!
//! Disk faults for chaos-agent:
//!
//! - [`DiskFill`] (`disk.fill`): fills the filesystem holding a directory, to a size or to a
//!   percentage used as `df` shows it, and/or exhausts its inodes, by count or to a
//!   percentage used as `df -i` shows it.
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
//! With `inodes` or `inodes_percent`, `disk.fill` also (or instead) makes one directory,
//! `<path>/.chaos-agent-inodes-<fault id>` (mode 0700), holding empty regular files
//! `<fault id>.<n>` made with `mknodat(2)`, so that the directory and its files take exactly
//! the inodes asked for (the fill file, when there is one, counts as one of them). Inodes
//! are taken before space (a directory's entries need blocks too). A filesystem without an
//! inode limit (`statfs` reports 0 inodes, as btrfs does) is refused at plan. Revert
//! `unlinkat(2)`s every `<fault id>.<n>` file relative to the directory's descriptor, then
//! the directory, only when the directory's device, inode and generation are the ones inject
//! recorded; entries of other names are left in place and reported (drifted), and keep the
//! directory. Recovery finds the directory by its name like the fill file.
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
//! ## The protected-filesystem guard
//!
//! A filesystem that holds one of [`fault_core::Context::protected_paths`] (`/`, and the
//! agent's state directory, which the engine adds) keeps a safe reserve: 5% of its size, at
//! least 1 GiB, at most a quarter of it (16 MiB of a 64 MiB filesystem, 1 GiB of 4 GiB,
//! 12.6 GiB of 252 GiB). `disk.fill` refuses at plan, and again at inject, a fill that would
//! leave less available there, with an error naming the filesystem, the numbers and the
//! opt-in: `allow_protected_filesystem = true` in the fault's spec. Inodes keep a reserve
//! the same way: 5% of them, at least 10,000, at most a quarter. Filesystems are the same
//! when their device is, or when they are mounts of one block device (btrfs subvolumes).
//! `disk.io`'s scratch files are not guarded (their size is given, not derived).
//!
//! ## Privileges
//!
//! Write access to the directory; no root needed (`disk.io` uses root, or a delegated
//! cgroup, only to give its workers a cgroup of their own). Root gets no more than an
//! unprivileged user: ext4's reserved blocks need `CAP_SYS_RESOURCE`, and the sizing never
//! counts on them. Reverting from another mount namespace than the one the fault was
//! planned in needs `CAP_SYS_ADMIN` (to enter it).
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
//!
//! Nothing is unlinked that is not provably the file the fault created:
//!
//! - **by name**: the engine checks every receipt read back from the journal against the
//!   fault id it is filed under (`check_receipt`): the fill file must be exactly
//!   `<dir>/.chaos-agent-fill-<fault id>`, the scratch files exactly
//!   `<dir>/.chaos-agent-io-<fault id>-<n>`, the cgroups exactly `chaos-agent-<fault id>`;
//!   revert itself refuses any file that is not such a name directly in the receipt's
//!   directory;
//! - **by identity**: inject records each file's device, inode and inode generation
//!   ([`FileId`]) once created; revert refuses a file at that path with another identity
//!   (one someone put there after deleting ours; ext4 even gives it the same inode number,
//!   which the generation tells apart);
//! - **by place**: receipts record the mount namespace the directory was resolved in.
//!   Revert and verify act in it, entering it (on a thread of their own) when the
//!   reverting process is elsewhere. If nothing visible refers to it any more and the
//!   receipt is from this boot, revert fails, touching nothing, and the manual undo reads
//!   `nsenter --mount=… rm -f -- …`; a receipt of an earlier boot acts in the current
//!   namespace (namespaces do not outlive a boot; the identity check still applies).
//!
//! Receipts journaled before these fields existed still read, and revert by name in the
//! caller's mount namespace, as before.
//!
//! ## Leftovers
//!
//! When the journal lost a record, recovery asks each kind for what it left under the
//! fault ids its state directory planned. Both kinds search every read-write local-disk or
//! memory filesystem mounted in the agent's mount namespace for their file names, at most 6
//! directory levels below each mount point, breadth first, within 25,000 directories per
//! filesystem, 100,000 in all and 5 s, never following a symlink or crossing a mount, and
//! skipping pseudo, network and FUSE filesystems and overlay lower/upper/work directories
//! (see `mounts.rs` for the exact rules and what they cannot find). On the build machine
//! (ext4 root of 252 GiB, 4 filesystems searched, ~8,600 directories) a search takes about
//! 0.1 s with a warm cache and 0.75 s cold. `disk.io` also finds its cgroups
//! ([`fault_core::host::stressor::Stressors::leftovers`]).

#![deny(missing_docs)]
#![warn(unreachable_pub, missing_debug_implementations)]

mod files;
mod fill;
mod io;
mod mounts;
mod statfs;

pub use files::FileId;
pub use fill::{DiskFill, DiskFillReceipt, DiskFillSpec, InodeFill, KIND};
pub use io::{DiskIo, DiskIoReceipt, DiskIoSpec, IoMode, IO_KIND};

/// Register every kind of this crate.
pub fn register(reg: &mut fault_core::Registry) {
    reg.register::<DiskFill>();
    reg.register::<DiskIo>();
}
