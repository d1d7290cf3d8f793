//! Where a network fault's changes live, and acting there and nowhere else.
//!
//! Interface names, interface indexes, qdiscs and nft tables exist only inside a network
//! namespace: `cha0` index 2 in one namespace and `cha0` index 2 in another are different
//! interfaces. So every receipt records the namespace its plan ran in ([`NsId`]: nsfs
//! device and inode, and the netns cookie), and verify, revert and manual undo run inside
//! that namespace ([`NsId::enter`] on a thread of their own), whatever namespace the
//! process doing them is in. Inside it, an interface is acted on only when its recorded
//! name and index still belong together ([`check_interface`]).
//!
//! When the namespace cannot be reached:
//! * the host rebooted since the plan (boot id differs): everything the fault made died
//!   with the old boot, and the callers report clean before coming here;
//! * the namespace provably no longer exists ([`Whereabouts::Gone`]: its number belongs to
//!   a newer namespace, the cookie differs): what lived in it went with it ([`Reached::Gone`]);
//! * otherwise it may still be alive where this process cannot see it (kept by an open
//!   descriptor, or by processes out of sight): revert fails with an error that says
//!   where, so the engine ends `needs-manual`, and manual undo prefixes each command with
//!   `nsenter --net=PATH` ([`NsId::nsenter_prefix`]).
//!
//! "Not found" counts as reverted only when it was looked for in the recorded namespace.
//!
//! **Receipts without a namespace** (written by chaos-agent before it recorded one) are
//! refused: revert and verify fail with [`legacy`], nothing is touched, and manual undo
//! gives the commands to run in the namespace where the experiment ran. Acting in the
//! namespace of the process doing the revert is exactly the bug this module exists for (a
//! `recover` run in another namespace changed an interface there that had the same index),
//! and nothing in such a receipt can tell the two namespaces apart, so it cannot be argued
//! safe. After a reboot such receipts are clean like any other.

use fault_core::host::ns::{NsId, NsKind, Whereabouts};
use fault_core::{Error, ErrorKind, Result};

/// The network namespace of the calling thread, for a receipt.
pub(crate) fn here() -> Result<NsId> {
    NsId::current(NsKind::Net)
}

/// A namespace as people read it: `net:[4026532001]`, or that it is not recorded.
pub(crate) fn show(netns: Option<&NsId>) -> String {
    match netns {
        Some(ns) => ns.to_string(),
        None => "an unrecorded network namespace".into(),
    }
}

/// What running something in a receipt's namespace came to.
#[derive(Debug)]
pub(crate) enum Reached<T> {
    /// It ran inside the namespace and returned this.
    Done(T),
    /// The namespace no longer exists (proof in the sentence): nothing of it is left.
    Gone(String),
}

/// Run `f` inside the network namespace `netns` recorded in a receipt (here when the
/// calling thread is already in it). `subject` says what the receipt made, for messages
/// ("htb c002: on cha0 (index 2)").
pub(crate) fn within<T: Send>(
    netns: Option<&NsId>,
    subject: &str,
    f: impl FnOnce() -> Result<T> + Send,
) -> Result<Reached<T>> {
    let Some(ns) = netns else {
        return Err(legacy(subject));
    };
    match ns.whereabouts() {
        Whereabouts::Current => f().map(Reached::Done),
        Whereabouts::At(_) => match ns.enter(|| Ok(f())) {
            Ok(r) => r.map(Reached::Done),
            Err(e) => Err(unreachable(ns, subject, Some(&e))),
        },
        Whereabouts::Gone(path) => Ok(Reached::Gone(format!(
            "network namespace {ns} no longer exists ({} is a newer namespace that reuses its number), and {subject} went with it",
            path.display()
        ))),
        Whereabouts::Unreachable => Err(unreachable(ns, subject, None)),
    }
}

/// The error of a namespace this process cannot get into.
pub(crate) fn unreachable(ns: &NsId, subject: &str, why: Option<&Error>) -> Error {
    let why = match why {
        Some(e) => format!("entering it failed: {e}"),
        None => "no /run/netns name, nsfs bind mount or process this agent can see refers to it"
            .to_string(),
    };
    Error::new(
        ErrorKind::NotFound,
        format!(
            "{subject} is in network namespace {ns}, which this process cannot reach ({why}); \
             the host has not rebooted since, so it may still be in effect there. Nothing was \
             touched. Run `chaos-agent recover` where that namespace can be reached, or the \
             manual undo commands inside it"
        ),
    )
}

/// The error for a receipt without a namespace (see the module docs).
pub(crate) fn legacy(subject: &str) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        format!(
            "this receipt was written by an older chaos-agent that did not record the network \
             namespace of {subject}; names and indexes of interfaces mean something only inside \
             their namespace, so acting from here could change another interface. Nothing was \
             touched. Run the manual undo commands in the network namespace where the experiment \
             ran, then `chaos-agent forget` this fault"
        ),
    )
}

/// The argv prefix that runs a manual command in the receipt's namespace.
pub(crate) fn prefix(netns: Option<&NsId>) -> Vec<String> {
    netns.map(NsId::nsenter_prefix).unwrap_or_default()
}

/// A manual-undo comment line for receipts without a namespace (a shell ignores it).
pub(crate) fn legacy_note(netns: Option<&NsId>) -> Option<String> {
    netns.is_none().then(|| {
        "# run these in the network namespace where the experiment ran (this receipt does not say which)"
            .to_string()
    })
}

/// An interface recorded as `name` with index `ifindex`, looked up in the calling thread's
/// network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Iface {
    /// Index and name still belong together: it is the interface of the receipt.
    Same,
    /// Nothing has the index any more: the interface is gone, and whatever was attached to
    /// it (qdiscs, filters) with it. `now` is the index a newer interface of the same name
    /// has, if any (not ours, never touched).
    Gone { now: Option<u32> },
    /// The index now carries another name (renamed, or another interface): not touched.
    Renamed { now: String },
}

/// Whether the interface of a receipt is still there, by name **and** index.
pub(crate) fn check_interface(name: &str, ifindex: u32) -> Iface {
    match index_to_name(ifindex) {
        Some(n) if n == name => Iface::Same,
        Some(n) => Iface::Renamed { now: n },
        None => Iface::Gone {
            now: crate::target::ifindex(name),
        },
    }
}

impl Iface {
    /// The [`ErrorKind::Drifted`] error of a renamed interface; `None` otherwise.
    pub(crate) fn drifted(&self, name: &str, ifindex: u32, ns: Option<&NsId>) -> Option<Error> {
        match self {
            Iface::Renamed { now } => Some(Error::new(
                ErrorKind::Drifted,
                format!(
                    "interface {name} (index {ifindex}) in {} is now named {now}: renamed, or \
                     another interface; not touching it",
                    show(ns)
                ),
            )),
            _ => None,
        }
    }
}

/// `if_indextoname` in the calling thread's network namespace.
pub(crate) fn index_to_name(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success buf holds a NUL-terminated name.
    let s = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(s.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_itself_and_a_missing_index_is_gone() {
        assert_eq!(check_interface("lo", 1), Iface::Same);
        assert!(matches!(check_interface("nosuchif0", 1), Iface::Renamed { now } if now == "lo"));
        assert_eq!(
            check_interface("nosuchif0", 0x7fff_fff0),
            Iface::Gone { now: None }
        );
    }

    #[test]
    fn receipts_without_a_namespace_are_refused_and_say_why() {
        let err = within(None, "htb c002: on eth0 (index 2)", || Ok(())).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        assert!(err
            .to_string()
            .contains("did not record the network namespace"));
        assert!(legacy_note(None).unwrap().starts_with('#'));
    }

    #[test]
    fn an_unreachable_namespace_is_an_error_that_says_where() {
        let ns = NsId {
            kind: NsKind::Net,
            dev: 4,
            ino: 1,
            cookie: Some(9),
        };
        let err = within(Some(&ns), "nft table inet chaos_x", || Ok(())).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        let msg = err.to_string();
        assert!(
            msg.contains("net:[1]") && msg.contains("cannot reach"),
            "{msg}"
        );
        assert_eq!(prefix(Some(&ns))[0], "nsenter");
        let here = here().unwrap();
        assert!(matches!(
            within(Some(&here), "x", || Ok(5)).unwrap(),
            Reached::Done(5)
        ));
    }
}
