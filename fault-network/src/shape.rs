//! The traffic-control engine shared by the qdisc faults (rate, latency, loss via netem,
//! corruption, duplication, reorder).
//!
//! Per interface it builds, as one unit owned by the fault:
//!
//! ```text
//! root: htb <R>:  (default class <R>:10 when all traffic is targeted, else none)
//!   ├── u32 filters, prio 1-2: excluded destinations/ports -> <R>:0 (htb's direct queue, unshaped)
//!   ├── u32 filters, prio 3-4: targeted traffic            -> <R>:10
//!   ├── u32 filter,  prio 5:   ARP, when the whole interface is faulted with exclusions
//!   │                          or the leaf corrupts -> <R>:0 (unshaped, see [`filters_for`])
//!   └── class htb <R>:10 (32 Gbit/s, never the bottleneck)
//!         └── leaf qdisc <R+1>: tbf or netem
//! ```
//!
//! Unclassified packets go through htb's direct queue, so traffic the fault does not aim at
//! is not shaped. `<R>` is derived from the fault id in the range `c000`..`dffe`, which is
//! how a qdisc is recognized as ours.
//!
//! `<R>` is also marked: the htb root carries, as its `r2q`, a 32-bit value derived from
//! the fault id ([`mark`]; our classes set their quantum explicitly, so r2q changes
//! nothing else). A root qdisc is ours only with the handle **and** the mark of its fault
//! id, so a root of another agent whose fault id happens to hash to the same handle is
//! never taken for ours (by revert, or by `leftovers`).
//!
//! Where: the receipt records the network namespace of the plan; every later step runs
//! inside it and acts on an interface only while its recorded name and index still belong
//! together (see `place.rs`).
//!
//! Coexistence: plan records the interface's root qdisc. A kernel default (handle 0:
//! noqueue, pfifo_fast, mq, fq_codel ...) is simply replaced, and deleting ours brings the
//! default back. A classless root qdisc someone configured (`tbf`, `pfifo`, `bfifo`) is
//! replaced and re-created on revert with its recorded handle and the exact options the
//! kernel dumped. Any other non-default root qdisc (htb, prio, ... with classes and filters
//! we could not restore exactly) makes plan refuse, as does a root qdisc of another
//! chaos-agent fault.

use fault_core::host::ns::NsId;
use fault_core::host::shell;
use fault_core::{Context, Error, ErrorKind, Leftover, Observation, Result};
use serde::{Deserialize, Serialize};

use crate::netem::NetemParams;
use crate::nl::{self, Msg, Socket, F_EXCL, F_REPLACE};
use crate::place::{self, Iface, Reached};
use crate::target::{resolve_interfaces, ResolvedHost, Selector, Targeting};
use crate::tbf::TbfParams;
use crate::tc::{self, fmt_handle, handle, TcObject, TC_H_ROOT};
use crate::u32::{self as u32f, Filter};

/// What `tc` and this crate say when the kernel lacks netem.
pub const NETEM_MISSING: &str =
    "qdisc netem is not available in this kernel (CONFIG_NET_SCH_NETEM)";

/// Root qdisc kinds we can re-create exactly from their dumped options.
const RESTORABLE: &[&str] = &["tbf", "pfifo", "bfifo"];
const CLASS_MINOR: u16 = 0x10;
/// Our htb class: 32 Gbit/s (4e9 bytes/s fits the 32-bit rate field), burst 64 KiB.
const CLASS_RATE: u32 = 4_000_000_000;
const CLASS_BURST: u32 = 64 * 1024;
const CLASS_QUANTUM: u32 = 60_000;

/// The qdisc that carries the fault.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Leaf {
    /// Token bucket filter.
    Tbf(TbfParams),
    /// Network emulator.
    Netem(NetemParams),
}

impl Leaf {
    fn kind(&self) -> &'static str {
        match self {
            Leaf::Tbf(_) => "tbf",
            Leaf::Netem(_) => "netem",
        }
    }
    fn encode(&self, m: &mut Msg) {
        match self {
            Leaf::Tbf(p) => p.encode(m),
            Leaf::Netem(p) => p.encode(m),
        }
    }
    /// Whether ARP must bypass this leaf even when the whole interface is faulted: a leaf
    /// that corrupts packets. ARP carries no checksum, so a neighbour accepts a corrupted
    /// ARP packet as it is and learns from it a wrong hardware address for this host (or
    /// this host's address for another IP). That outlives the revert: the neighbour sends
    /// to the wrong address until its cache entry expires, which is minutes on Linux and
    /// hours on some routers. Measured in a VM guest before this existed, with plain `tc`:
    /// after 4 rounds in 40 of a fresh ARP under `netem corrupt 50%`, the gateway (slirp)
    /// still sent to a wrong MAC once the qdisc was gone.
    pub(crate) fn spares_arp(&self) -> bool {
        matches!(self, Leaf::Netem(p) if p.corrupt > 0.0)
    }
}

/// The root qdisc an interface had before the fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriorRoot {
    /// Qdisc kind ("noqueue", "pfifo_fast", "tbf", ...).
    pub kind: String,
    /// Its handle; 0 for the kernel's default qdisc.
    pub handle: u32,
    /// Its `TCA_OPTIONS` as dumped, hex; re-sent as-is to restore it.
    pub options: String,
}

impl PriorRoot {
    fn of(q: &TcObject) -> PriorRoot {
        PriorRoot {
            kind: q.kind.clone(),
            handle: q.handle,
            options: nl::to_hex(&q.options),
        }
    }
    /// Whether it is the kernel's default (deleting ours brings it back by itself).
    pub fn is_default(&self) -> bool {
        self.handle == 0
    }
    fn matches(&self, q: &TcObject) -> bool {
        q.kind == self.kind && q.handle == self.handle && nl::to_hex(&q.options) == self.options
    }
    fn describe(&self) -> String {
        if self.is_default() && self.kind.is_empty() {
            "the kernel's default qdisc".to_string()
        } else if self.is_default() {
            format!("the default {} qdisc", self.kind)
        } else {
            format!("{} {}", self.kind, fmt_handle(self.handle))
        }
    }
}

/// One interface under a qdisc fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShapedInterface {
    /// Interface name at plan time.
    pub name: String,
    /// Interface index at plan time; every request uses it.
    pub ifindex: u32,
    /// Our htb root handle (`major:0`).
    pub root: u32,
    /// Our leaf qdisc handle (`major+1:0`).
    pub leaf: u32,
    /// The root qdisc to restore.
    pub prior: PriorRoot,
}

/// Receipt of every qdisc fault.
///
/// An interface is identified by the receipt's namespace, its name and its index, all
/// three: revert acts on it only inside `netns`, and only while that index still carries
/// that name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QdiscReceipt {
    /// Fault id the handles derive from.
    pub fault_id: String,
    /// Boot id at plan time: qdiscs do not survive a reboot.
    pub boot_id: String,
    /// The network namespace of the interfaces, recorded at plan. `None` only in receipts
    /// of older versions, which revert refuses (see `place.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<NsId>,
    /// What carries the fault: "tbf" or "netem" (under our htb root).
    pub mechanism: String,
    /// The interfaces, with their prior root qdisc.
    pub interfaces: Vec<ShapedInterface>,
    /// u32 filters we add per interface.
    pub filters: usize,
    /// What the fault does, for people ("egress rate 8 Mbit/s (tbf, ...)").
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub effect: String,
    /// Which traffic it does it to ("all traffic", "traffic to 10.0.0.0/24 port 80").
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub traffic: String,
    /// The host names of the spec with the addresses they resolved to at plan; the filters
    /// match exactly these, and nothing resolves them again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<ResolvedHost>,
}

/// Handles of a fault id: (root, leaf).
pub(crate) fn handles(fault_id: &str) -> (u32, u32) {
    let base = 0xc000u16 + 2 * (crate::fnv1a(fault_id) % 0x1000) as u16;
    (handle(base, 0), handle(base + 1, 0))
}

/// The mark our htb root of a fault id carries as its r2q: 30 bits of a hash of the fault
/// id in `0x4000_0000..=0x7fff_ffff`, far above any r2q a person picks (tc's default is
/// 10), and below 2^31 (the kernel keeps r2q in an `int` and turns anything below 1 into
/// 1). Public for the benchmark, which builds the same tree with `tc ... htb r2q MARK`.
pub fn mark(fault_id: &str) -> u32 {
    ((crate::fnv1a(&format!("htb-r2q:{fault_id}")) as u32) & 0x3fff_ffff) | 0x4000_0000
}

/// Whether `q` is a root qdisc in chaos-agent's handle range (any fault's).
fn is_chaos_root(q: &TcObject) -> bool {
    q.kind == "htb" && (0xc000..=0xdfff).contains(&(q.handle >> 16))
}

/// Whether `q` is the root qdisc of fault `fault_id`: our handle and our mark.
fn is_ours(q: &TcObject, fault_id: &str) -> bool {
    q.parent == TC_H_ROOT
        && q.kind == "htb"
        && q.handle == handles(fault_id).0
        && crate::htb::decode_r2q(&q.options) == Some(mark(fault_id))
}

fn route_socket() -> Result<Socket> {
    Socket::open(nl::NETLINK_ROUTE).map_err(|e| Error::io("open a NETLINK_ROUTE socket", e))
}

/// The u32 filters for a targeting, for a qdisc of handle `root` whose leaf is `leaf`.
///
/// Targeted faults classify only IPv4/IPv6 packets, so ARP stays unclassified and goes
/// through htb's direct queue, unshaped. A whole-interface fault sends unclassified
/// packets, ARP included, to the faulted class (classic netem/tbf semantics), except in
/// two cases, where a prio 5 filter sends ARP to the direct queue:
/// * excluded destinations must stay reachable, and reaching any of them (or the gateway
///   in front of it) needs ARP: a lost or delayed ARP stalls neighbour resolution for a
///   second per retry;
/// * a corrupting leaf would teach neighbours wrong addresses ([`Leaf::spares_arp`]).
pub(crate) fn filters_for(t: &Targeting, root: u32, leaf: &Leaf) -> Vec<Filter> {
    let class = root | CLASS_MINOR as u32;
    let mut out = Vec::new();
    let mut add = |sel: &Selector, prio_v4: u16, classid: u32| {
        let mut keys = Vec::new();
        if let Some(n) = sel.net {
            keys.extend(u32f::dst_keys(n.addr, n.prefix));
        }
        if let Some(p) = sel.l4 {
            keys.push(u32f::proto_key(sel.v6, p));
        }
        if let Some(p) = sel.port {
            keys.push(u32f::dport_key(sel.v6, p));
        }
        if keys.is_empty() {
            keys.push(u32f::Key {
                val: 0,
                mask: 0,
                off: 0,
            });
        }
        out.push(Filter {
            prio: prio_v4 + sel.v6 as u16,
            eth_proto: if sel.v6 {
                u32f::ETH_P_IPV6
            } else {
                u32f::ETH_P_IP
            },
            keys,
            classid,
        });
    };
    let excludes = t.excludes();
    for s in &excludes {
        add(s, 1, root);
    }
    for s in t.includes() {
        add(&s, 3, class);
    }
    if t.is_whole() && (!excludes.is_empty() || leaf.spares_arp()) {
        out.push(Filter {
            prio: 5,
            eth_proto: u32f::ETH_P_ARP,
            keys: vec![u32f::Key {
                val: 0,
                mask: 0,
                off: 0,
            }],
            classid: root,
        });
    }
    out
}

/// Plan: record the namespace, resolve interfaces, snapshot their root qdisc, refuse what
/// we cannot undo. `leaf` is what inject will attach; `effect` says what the fault does,
/// for people.
pub(crate) fn plan(
    cx: &Context,
    t: &Targeting,
    leaf: &Leaf,
    effect: String,
) -> Result<QdiscReceipt> {
    let netns = place::here()?;
    let ifaces = resolve_interfaces(t)?;
    let t = &t.resolve()?;
    let (root, leaf_handle) = handles(&cx.fault_id);
    let mut sock = route_socket()?;
    let mut out = Vec::new();
    for i in ifaces {
        let cur = tc::root_qdisc(&mut sock, i.ifindex)
            .map_err(|e| e.into_error(format!("read the root qdisc of {}", i.name)))?;
        let prior = match cur {
            None => PriorRoot {
                kind: "none".into(),
                handle: 0,
                options: String::new(),
            },
            Some(q) if is_chaos_root(&q) => {
                return Err(Error::new(
                    ErrorKind::Busy,
                    format!(
                        "interface {} already carries a chaos-agent network fault (root qdisc htb {}); \
                         one qdisc fault per interface at a time",
                        i.name,
                        fmt_handle(q.handle)
                    ),
                ))
            }
            Some(q) if q.handle == 0 => PriorRoot::of(&q),
            Some(q) if RESTORABLE.contains(&q.kind.as_str()) => PriorRoot::of(&q),
            Some(q) => {
                return Err(Error::new(
                    ErrorKind::Busy,
                    format!(
                        "interface {} has a root qdisc {} {} that chaos-agent did not create; refusing to \
                         replace it because its classes and filters could not be restored exactly \
                         (only default qdiscs and tbf/pfifo/bfifo are replaced and restored)",
                        i.name,
                        q.kind,
                        fmt_handle(q.handle)
                    ),
                ))
            }
        };
        out.push(ShapedInterface {
            name: i.name,
            ifindex: i.ifindex,
            root,
            leaf: leaf_handle,
            prior,
        });
    }
    Ok(QdiscReceipt {
        fault_id: cx.fault_id.clone(),
        boot_id: cx.boot_id.clone(),
        netns: Some(netns),
        mechanism: leaf.kind().into(),
        filters: filters_for(t, root, leaf).len(),
        interfaces: out,
        effect,
        traffic: t.traffic(),
        hosts: t.resolved.clone(),
    })
}

/// What a receipt made, for messages: "htb c002: on cha0 (index 2), eth1 (index 3)".
fn subject(r: &QdiscReceipt) -> String {
    let ifs: Vec<String> = r
        .interfaces
        .iter()
        .map(|i| format!("{} (index {})", i.name, i.ifindex))
        .collect();
    let root = r.interfaces.first().map(|i| i.root).unwrap_or(0);
    format!(
        "fault {}'s root qdisc htb {} on {}",
        r.fault_id,
        fmt_handle(root),
        ifs.join(", ")
    )
}

struct IfState {
    root_ok: bool,
    class_ok: bool,
    leaf_ok: bool,
    filters: usize,
}

fn inspect(
    sock: &mut Socket,
    fault_id: &str,
    i: &ShapedInterface,
    kind: &str,
) -> Result<Option<IfState>> {
    let what = |e: nl::NlError| e.into_error(format!("read the qdiscs of {}", i.name));
    let qs = match tc::qdiscs(sock, i.ifindex) {
        Ok(q) => q,
        Err(e) if e.errno == libc::ENODEV => return Ok(None),
        Err(e) => return Err(what(e)),
    };
    let root_ok = qs
        .iter()
        .any(|q| q.handle == i.root && is_ours(q, fault_id));
    if !root_ok {
        return Ok(Some(IfState {
            root_ok,
            class_ok: false,
            leaf_ok: false,
            filters: 0,
        }));
    }
    let class = i.root | CLASS_MINOR as u32;
    let leaf_ok = qs
        .iter()
        .any(|q| q.handle == i.leaf && q.parent == class && q.kind == kind);
    let class_ok = tc::classes(sock, i.ifindex)
        .map_err(what)?
        .iter()
        .any(|c| c.handle == class);
    let filters = tc::filters(sock, i.ifindex, i.root).map_err(what)?.len();
    Ok(Some(IfState {
        root_ok,
        class_ok,
        leaf_ok,
        filters,
    }))
}

fn root_of(sock: &mut Socket, i: &ShapedInterface) -> Result<Option<TcObject>> {
    match tc::root_qdisc(sock, i.ifindex) {
        Ok(q) => Ok(q),
        Err(e) if e.errno == libc::ENODEV => Ok(None),
        Err(e) => Err(e.into_error(format!("read the root qdisc of {}", i.name))),
    }
}

/// Inject: build the tree on every interface, inside the receipt's namespace. Idempotent: a
/// complete tree is left alone, a partial one is rebuilt. On failure everything this fault
/// created is removed again.
pub(crate) fn inject(r: &QdiscReceipt, leaf: &Leaf, t: &Targeting) -> Result<()> {
    let run = || {
        let result = inject_all(r, leaf, t);
        if result.is_err() {
            let _ = revert_here(r);
        }
        result
    };
    match place::within(r.netns.as_ref(), &subject(r), run)? {
        Reached::Done(()) => Ok(()),
        Reached::Gone(why) => Err(Error::new(ErrorKind::NotFound, why)),
    }
}

/// The interface of the receipt, in the calling thread's namespace, or why not.
fn same_interface(r: &QdiscReceipt, i: &ShapedInterface) -> Result<()> {
    match place::check_interface(&i.name, i.ifindex) {
        Iface::Same => Ok(()),
        Iface::Gone { .. } => Err(Error::new(
            ErrorKind::NotFound,
            format!("interface {} (index {}) is gone", i.name, i.ifindex),
        )),
        renamed => Err(renamed
            .drifted(&i.name, i.ifindex, r.netns.as_ref())
            .unwrap_or_else(|| Error::new(ErrorKind::Drifted, "interface changed"))),
    }
}

fn inject_all(r: &QdiscReceipt, leaf: &Leaf, t: &Targeting) -> Result<()> {
    let t = &t.with_resolved(&r.hosts)?;
    let mut sock = route_socket()?;
    for i in &r.interfaces {
        same_interface(r, i)?;
        let filters = filters_for(t, i.root, leaf);
        if let Some(s) = inspect(&mut sock, &r.fault_id, i, leaf.kind())? {
            if s.root_ok && s.class_ok && s.leaf_ok && s.filters == filters.len() {
                continue;
            }
            if s.root_ok {
                del_ours(&mut sock, i)?;
            }
        }
        let cur = root_of(&mut sock, i)?.ok_or_else(|| {
            Error::new(ErrorKind::NotFound, format!("interface {} is gone", i.name))
        })?;
        let flags = if cur.handle == 0 {
            F_EXCL
        } else if is_chaos_root(&cur) {
            return Err(Error::new(
                ErrorKind::Busy,
                format!(
                    "interface {} now carries another chaos-agent fault (qdisc htb {})",
                    i.name,
                    fmt_handle(cur.handle)
                ),
            ));
        } else if i.prior.matches(&cur) {
            F_REPLACE
        } else {
            return Err(Error::new(
                ErrorKind::Drifted,
                format!(
                    "the root qdisc of {} changed since plan (now {} {}); not replacing it",
                    i.name,
                    cur.kind,
                    fmt_handle(cur.handle)
                ),
            ));
        };
        let defcls = if t.is_whole() { CLASS_MINOR as u32 } else { 0 };
        let op = |what: &str| format!("{what} on {}", i.name);
        sock.request(tc::new_qdisc(
            i.ifindex,
            TC_H_ROOT,
            i.root,
            "htb",
            flags,
            |m| crate::htb::encode_qdisc(m, defcls, mark(&r.fault_id)),
        ))
        .map_err(|e| e.into_error(op(&format!("add root qdisc htb {}", fmt_handle(i.root)))))?;
        let class = i.root | CLASS_MINOR as u32;
        sock.request(tc::new_htb_class(
            i.ifindex,
            i.root,
            class,
            CLASS_RATE,
            CLASS_BURST,
            CLASS_QUANTUM,
        ))
        .map_err(|e| e.into_error(op(&format!("add class htb {}", fmt_handle(class)))))?;
        match sock.request(tc::new_qdisc(
            i.ifindex,
            class,
            i.leaf,
            leaf.kind(),
            F_EXCL,
            |m| leaf.encode(m),
        )) {
            Ok(()) => {}
            Err(e) if e.errno == libc::ENOENT && leaf.kind() == "netem" => {
                return Err(Error::new(ErrorKind::Unsupported, NETEM_MISSING));
            }
            Err(e) => {
                return Err(e.into_error(op(&format!(
                    "add qdisc {} {}",
                    leaf.kind(),
                    fmt_handle(i.leaf)
                ))))
            }
        }
        for f in &filters {
            sock.request(tc::new_u32_filter(i.ifindex, i.root, f))
                .map_err(|e| e.into_error(op(&format!("add u32 filter prio {}", f.prio))))?;
        }
    }
    Ok(())
}

fn del_ours(sock: &mut Socket, i: &ShapedInterface) -> Result<()> {
    match sock.request(tc::del_qdisc(i.ifindex, TC_H_ROOT, i.root)) {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.errno, libc::ENOENT | libc::EINVAL | libc::ENODEV) => Ok(()),
        Err(e) => Err(e.into_error(format!(
            "delete root qdisc htb {} of {}",
            fmt_handle(i.root),
            i.name
        ))),
    }
}

fn rebooted(r: &QdiscReceipt) -> bool {
    !r.boot_id.is_empty() && r.boot_id != fault_core::host::boot_id()
}

/// Revert, inside the receipt's namespace: delete our root qdisc (only if it carries our
/// handle and mark), then re-create the prior root qdisc if it was not the kernel default
/// and nothing else took its place. An interface whose index now has another name is not
/// touched (`Drifted`); one that is gone took our qdiscs with it.
pub(crate) fn revert(r: &QdiscReceipt) -> Result<()> {
    if rebooted(r) {
        return Ok(());
    }
    match place::within(r.netns.as_ref(), &subject(r), || revert_here(r))? {
        Reached::Done(()) | Reached::Gone(_) => Ok(()),
    }
}

fn revert_here(r: &QdiscReceipt) -> Result<()> {
    let mut sock = route_socket()?;
    let mut first_err = None;
    for i in &r.interfaces {
        let res = (|| -> Result<()> {
            match place::check_interface(&i.name, i.ifindex) {
                Iface::Same => {}
                Iface::Gone { .. } => return Ok(()),
                renamed => {
                    return Err(renamed
                        .drifted(&i.name, i.ifindex, r.netns.as_ref())
                        .unwrap_or_else(|| Error::new(ErrorKind::Drifted, "interface changed")))
                }
            }
            let Some(cur) = root_of(&mut sock, i)? else {
                return Ok(());
            };
            if is_ours(&cur, &r.fault_id) {
                del_ours(&mut sock, i)?;
            }
            if i.prior.is_default() {
                return Ok(());
            }
            let Some(cur) = root_of(&mut sock, i)? else {
                return Ok(());
            };
            if cur.handle != 0 {
                return Ok(()); // the prior one is back, or someone else's: not ours to touch
            }
            let options = nl::from_hex(&i.prior.options).unwrap_or_default();
            sock.request(tc::new_qdisc_raw(
                i.ifindex,
                TC_H_ROOT,
                i.prior.handle,
                &i.prior.kind,
                &options,
            ))
            .map_err(|e| {
                e.into_error(format!(
                    "restore root qdisc {} of {}",
                    i.prior.describe(),
                    i.name
                ))
            })
        })();
        if let Err(e) = res {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

mod observe;
pub(crate) use observe::{check, leftovers, manual_undo, targets, touches, verify};

/// Whether netem exists, probed in a private network namespace (see [`tc::probe_qdisc_kind`]).
/// Cached once known.
pub(crate) fn netem_available() -> Option<bool> {
    static KNOWN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if let Some(k) = KNOWN.get() {
        return Some(*k);
    }
    let r = tc::probe_qdisc_kind("netem", |m| {
        NetemParams {
            limit: 1000,
            ..Default::default()
        }
        .encode(m)
    });
    if let Some(k) = r {
        let _ = KNOWN.set(k);
    }
    r
}

/// Plan-time check for the netem kinds: fail before anything changes when netem is missing.
pub(crate) fn require_netem() -> Result<()> {
    match netem_available() {
        Some(false) => Err(Error::new(ErrorKind::Unsupported, NETEM_MISSING)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
