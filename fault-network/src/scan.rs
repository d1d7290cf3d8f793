//! Every network namespace this process can reach, for [`leftovers`](fault_core::Fault::leftovers):
//! the caller's own, `/run/netns/*` (`ip netns` names), every nsfs bind mount in the mount
//! table, and `/proc/PID/ns/net` of every process, each namespace once (by nsfs device and
//! inode), at most [`MAX_NAMESPACES`].
//!
//! One worker thread enters them in turn (`setns(2)`, which needs CAP_SYS_ADMIN) and runs
//! the caller's query there; the calling thread never changes namespace and the worker ends
//! with the scan. Namespaces that vanish or cannot be entered while the scan runs are
//! skipped: nothing in them can be acted on from here anyway.

use std::collections::HashSet;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use fault_core::host::ns::{self, NsId, NsKind};
use fault_core::Result;

/// Most namespaces one scan enters (each costs a `setns` and a few netlink dumps).
pub(crate) const MAX_NAMESPACES: usize = 4096;

/// Paths that may refer to a network namespace, first the caller's own.
fn candidates() -> Vec<PathBuf> {
    let mut out = vec![PathBuf::from("/proc/thread-self/ns/net")];
    out.extend(ns::paths(NsKind::Net));
    out
}

/// Run `query` inside every reachable network namespace and collect what it returns.
/// `query` gets the namespace and a path that reached it (for people). An error from
/// `query` ends the scan with that error.
pub(crate) fn each_namespace<T: Send>(
    mut query: impl FnMut(&NsId, &str) -> Result<Vec<T>> + Send,
) -> Result<Vec<T>> {
    // Open every candidate now (the caller's own namespace from the caller's thread), one
    // per namespace.
    let mut seen = HashSet::new();
    let mut files = Vec::new();
    for path in candidates() {
        if files.len() >= MAX_NAMESPACES {
            break;
        }
        let Ok(file) = std::fs::File::open(&path) else {
            continue;
        };
        let Ok(meta) = file.metadata() else { continue };
        if !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        let shown = if path.starts_with("/proc/thread-self") {
            "the agent's own namespace".to_string()
        } else {
            path.display().to_string()
        };
        files.push((file, shown));
    }
    std::thread::scope(|s| {
        s.spawn(move || {
            let mut out = Vec::new();
            for (file, shown) in files {
                // SAFETY: setns(2) on an fd we hold open; it affects only this worker
                // thread, which ends with the scan. A file that is not a network namespace
                // (an nsfs mount of another type) fails with EINVAL and is skipped.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    continue;
                }
                let Ok(id) = NsId::current(NsKind::Net) else {
                    continue;
                };
                out.extend(query(&id, &shown)?);
            }
            Ok(out)
        })
        .join()
        .unwrap_or_else(|_| {
            Err(fault_core::Error::new(
                fault_core::ErrorKind::Io,
                "the thread scanning network namespaces panicked",
            ))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_own_namespace_is_scanned_first_and_once() {
        let me = crate::place::here().unwrap();
        let seen = each_namespace(|id, shown| Ok(vec![(id.clone(), shown.to_string())])).unwrap();
        assert_eq!(seen[0].0, me);
        assert_eq!(seen[0].1, "the agent's own namespace");
        let mut ids: Vec<_> = seen.iter().map(|(i, _)| (i.dev, i.ino)).collect();
        let n = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), n, "a namespace was scanned twice");
        assert!(me.is_current(), "the calling thread changed namespace");
    }
}
