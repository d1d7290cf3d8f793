//! Traffic-control messages (`struct tcmsg`): add/delete qdiscs, add classes and filters,
//! dump them back. The option payloads come from [`crate::tbf`], [`crate::htb`],
//! [`crate::netem`] and [`crate::u32`].

use crate::nl::{self, Msg, NlError, Socket, F_ACK, F_CREATE, F_EXCL, F_REQUEST};

pub(crate) const RTM_NEWQDISC: u16 = 36;
pub(crate) const RTM_DELQDISC: u16 = 37;
pub(crate) const RTM_GETQDISC: u16 = 38;
pub(crate) const RTM_NEWTCLASS: u16 = 40;
pub(crate) const RTM_GETTCLASS: u16 = 42;
pub(crate) const RTM_NEWTFILTER: u16 = 44;
pub(crate) const RTM_GETTFILTER: u16 = 46;
/// `TC_H_ROOT`.
pub(crate) const TC_H_ROOT: u32 = 0xffff_ffff;
const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;

/// `major:minor` as a tc handle.
pub(crate) fn handle(major: u16, minor: u16) -> u32 {
    ((major as u32) << 16) | minor as u32
}

/// A handle as `tc` prints it (`c002:`, `c002:10`).
pub(crate) fn fmt_handle(h: u32) -> String {
    if h == TC_H_ROOT {
        return "root".into();
    }
    let (maj, min) = (h >> 16, h & 0xffff);
    if min == 0 {
        format!("{maj:x}:")
    } else {
        format!("{maj:x}:{min:x}")
    }
}

fn tcmsg(m: &mut Msg, ifindex: u32, handle: u32, parent: u32, info: u32) {
    let mut b = [0u8; 20];
    b[4..8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
    b[8..12].copy_from_slice(&handle.to_ne_bytes());
    b[12..16].copy_from_slice(&parent.to_ne_bytes());
    b[16..20].copy_from_slice(&info.to_ne_bytes());
    m.raw(&b);
}

/// RTM_NEWQDISC as `tc qdisc add` sends it (`flags` adds e.g. `NLM_F_REPLACE`).
pub(crate) fn new_qdisc(
    ifindex: u32,
    parent: u32,
    handle: u32,
    kind: &str,
    extra_flags: u16,
    options: impl FnOnce(&mut Msg),
) -> Vec<u8> {
    let mut m = Msg::new(RTM_NEWQDISC, F_REQUEST | F_ACK | F_CREATE | extra_flags);
    tcmsg(&mut m, ifindex, handle, parent, 0);
    m.attr_str(TCA_KIND, kind);
    options(&mut m);
    m.finish()
}

/// RTM_NEWQDISC carrying raw, previously dumped options (restoring a prior qdisc).
pub(crate) fn new_qdisc_raw(
    ifindex: u32,
    parent: u32,
    handle: u32,
    kind: &str,
    options: &[u8],
) -> Vec<u8> {
    new_qdisc(ifindex, parent, handle, kind, F_EXCL, |m| {
        if !options.is_empty() {
            m.attr(TCA_OPTIONS, options);
        }
    })
}

/// RTM_DELQDISC as `tc qdisc del dev X parent P handle H` sends it.
pub(crate) fn del_qdisc(ifindex: u32, parent: u32, handle: u32) -> Vec<u8> {
    let mut m = Msg::new(RTM_DELQDISC, F_REQUEST | F_ACK);
    tcmsg(&mut m, ifindex, handle, parent, 0);
    m.finish()
}

/// RTM_NEWTCLASS for an htb class.
pub(crate) fn new_htb_class(
    ifindex: u32,
    parent: u32,
    classid: u32,
    rate: u32,
    burst: u32,
    quantum: u32,
) -> Vec<u8> {
    let mut m = Msg::new(RTM_NEWTCLASS, F_REQUEST | F_ACK | F_EXCL | F_CREATE);
    tcmsg(&mut m, ifindex, classid, parent, 0);
    m.attr_str(TCA_KIND, "htb");
    crate::htb::encode_class(&mut m, rate, burst, quantum);
    m.finish()
}

/// RTM_NEWTFILTER for a u32 filter attached to qdisc `parent`.
pub(crate) fn new_u32_filter(ifindex: u32, parent: u32, f: &crate::u32::Filter) -> Vec<u8> {
    let mut m = Msg::new(RTM_NEWTFILTER, F_REQUEST | F_ACK | F_EXCL | F_CREATE);
    tcmsg(&mut m, ifindex, 0, parent, f.info());
    f.encode(&mut m);
    m.finish()
}

/// A qdisc, class or filter as dumped by the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TcObject {
    pub(crate) ifindex: u32,
    pub(crate) handle: u32,
    pub(crate) parent: u32,
    pub(crate) info: u32,
    pub(crate) kind: String,
    pub(crate) options: Vec<u8>,
}

fn parse_object(m: &[u8]) -> Option<TcObject> {
    if m.len() < 36 {
        return None;
    }
    let t = &m[16..36];
    let u = |i: usize| u32::from_ne_bytes(t[i..i + 4].try_into().unwrap_or([0; 4]));
    let a = &m[36..];
    Some(TcObject {
        ifindex: u(4),
        handle: u(8),
        parent: u(12),
        info: u(16),
        kind: nl::find_attr(a, TCA_KIND)
            .map(nl::attr_string)
            .unwrap_or_default(),
        options: nl::find_attr(a, TCA_OPTIONS)
            .map(|v| v.to_vec())
            .unwrap_or_default(),
    })
}

fn dump(sock: &mut Socket, ty: u16, ifindex: u32, parent: u32) -> Result<Vec<TcObject>, NlError> {
    let mut m = Msg::new(ty, F_REQUEST);
    tcmsg(&mut m, ifindex, 0, parent, 0);
    let msgs = sock.dump(m.finish())?;
    Ok(msgs
        .iter()
        .filter_map(|m| parse_object(m))
        .filter(|o| o.ifindex == ifindex)
        .collect())
}

/// Every qdisc of an interface (the kernel dumps all interfaces; we keep one).
pub(crate) fn qdiscs(sock: &mut Socket, ifindex: u32) -> Result<Vec<TcObject>, NlError> {
    dump(sock, RTM_GETQDISC, ifindex, 0)
}

/// Every qdisc of every interface of the namespace.
pub(crate) fn all_qdiscs(sock: &mut Socket) -> Result<Vec<TcObject>, NlError> {
    let mut m = Msg::new(RTM_GETQDISC, F_REQUEST);
    tcmsg(&mut m, 0, 0, 0, 0);
    let msgs = sock.dump(m.finish())?;
    Ok(msgs.iter().filter_map(|m| parse_object(m)).collect())
}

/// The root qdisc of an interface (`None` if the interface has none, e.g. it vanished).
pub(crate) fn root_qdisc(sock: &mut Socket, ifindex: u32) -> Result<Option<TcObject>, NlError> {
    Ok(qdiscs(sock, ifindex)?
        .into_iter()
        .find(|q| q.parent == TC_H_ROOT))
}

/// Every class of an interface.
pub(crate) fn classes(sock: &mut Socket, ifindex: u32) -> Result<Vec<TcObject>, NlError> {
    dump(sock, RTM_GETTCLASS, ifindex, 0)
}

/// Every filter attached to qdisc `parent` of an interface. The kernel lists one entry per
/// priority/protocol (the u32 hash table) plus one per filter; only the latter carry a
/// handle with a non-zero node id, which is what we count.
pub(crate) fn filters(
    sock: &mut Socket,
    ifindex: u32,
    parent: u32,
) -> Result<Vec<TcObject>, NlError> {
    Ok(dump(sock, RTM_GETTFILTER, ifindex, parent)?
        .into_iter()
        .filter(|f| f.handle & 0xfff != 0)
        .collect())
}

/// Whether the kernel knows qdisc `kind`, answered without touching any interface of the
/// host: a short-lived thread moves into a private, empty network namespace
/// (`unshare(CLONE_NEWNET)`) and tries to add the qdisc to that namespace's loopback.
/// The namespace disappears with the thread. `None` when the probe itself cannot run
/// (no CAP_SYS_ADMIN), in which case inject finds out and rolls back.
pub(crate) fn probe_qdisc_kind(kind: &'static str, options: fn(&mut Msg)) -> Option<bool> {
    std::thread::spawn(move || {
        // SAFETY: unshare only affects this thread, which exits right after.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return None;
        }
        let mut sock = Socket::open(nl::NETLINK_ROUTE).ok()?;
        let msg = new_qdisc(1, TC_H_ROOT, handle(1, 0), kind, F_EXCL, options);
        match sock.request(msg) {
            Ok(()) => Some(true),
            Err(e) if e.errno == libc::ENOENT => Some(false),
            Err(_) => None,
        }
    })
    .join()
    .ok()
    .flatten()
}
