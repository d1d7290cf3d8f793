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

use fault_core::host::ns::{self, NsId, NsKind};
use fault_core::Result;

/// Most namespaces one scan enters (each costs a `setns` and a few netlink dumps).
pub(crate) const MAX_NAMESPACES: usize = 4096;

/// Run `query` inside every reachable network namespace and collect what it returns.
/// `query` gets the namespace and a path that reached it (for people). An error from
/// `query` ends the scan with that error.
pub(crate) fn each_namespace<T: Send>(
    mut query: impl FnMut(&NsId, &str) -> Result<Vec<T>> + Send,
) -> Result<Vec<T>> {
    // One path per namespace, told apart by nsfs device and inode. Only the caller's own
    // namespace is opened here (from the caller's thread); the others are opened one at a
    // time by the worker, so a host with thousands of namespaces does not need thousands
    // of descriptors at once.
    let own = std::fs::File::open("/proc/thread-self/ns/net")
        .map_err(|e| fault_core::Error::io("open /proc/thread-self/ns/net", e))?;
    let own_id = own
        .metadata()
        .map(|m| (m.dev(), m.ino()))
        .map_err(|e| fault_core::Error::io("stat /proc/thread-self/ns/net", e))?;
    let mut seen = HashSet::from([own_id]);
    let mut others = Vec::new();
    for path in ns::paths(NsKind::Net) {
        if others.len() + 1 >= MAX_NAMESPACES {
            break;
        }
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if seen.insert((meta.dev(), meta.ino())) {
            others.push((path, (meta.dev(), meta.ino())));
        }
    }
    std::thread::scope(|s| {
        s.spawn(move || {
            let mut out = Vec::new();
            let own = std::iter::once((Ok(own), own_id, "the agent's own namespace".to_string()));
            let rest = others
                .into_iter()
                .map(|(path, id)| (std::fs::File::open(&path), id, path.display().to_string()));
            for (file, want, shown) in own.chain(rest) {
                let Ok(file) = file else { continue };
                // The path may now refer to another namespace; then it was seen elsewhere
                // or is new: either way not the one listed.
                if file.metadata().map(|m| (m.dev(), m.ino())).ok() != Some(want) {
                    continue;
                }
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
