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
    /// hours on some routers. Measured in the VM suite before this existed: 4 corrupted
    /// ARP exchanges in 40 left the gateway unreachable after the revert.
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

/// Verify, inside the receipt's namespace: read qdiscs, classes and filters back and
/// compare with the receipt.
pub(crate) fn verify(r: &QdiscReceipt) -> Result<Observation> {
    if rebooted(r) {
        return Ok(Observation::clean(
            "the host rebooted since the fault was planned; qdiscs do not survive a reboot",
        ));
    }
    match place::within(r.netns.as_ref(), &subject(r), || verify_here(r))? {
        Reached::Done(o) => Ok(o),
        Reached::Gone(why) => Ok(Observation::clean(why)),
    }
}

fn verify_here(r: &QdiscReceipt) -> Result<Observation> {
    let mut sock = route_socket()?;
    let (mut on, mut off, mut details) = (0, 0, Vec::new());
    for i in &r.interfaces {
        match place::check_interface(&i.name, i.ifindex) {
            Iface::Same => {}
            Iface::Gone { now } => {
                off += 1;
                let newer = now
                    .map(|n| {
                        format!(
                            " (a newer {} has index {n}: not ours, not looked at)",
                            i.name
                        )
                    })
                    .unwrap_or_default();
                details.push(format!(
                    "{} (index {}): interface is gone, and its qdiscs with it{newer}",
                    i.name, i.ifindex
                ));
                continue;
            }
            renamed => {
                return Err(renamed
                    .drifted(&i.name, i.ifindex, r.netns.as_ref())
                    .unwrap_or_else(|| Error::new(ErrorKind::Drifted, "interface changed")))
            }
        }
        let Some(s) = inspect(&mut sock, &r.fault_id, i, &r.mechanism)? else {
            off += 1;
            details.push(format!("{}: interface is gone", i.name));
            continue;
        };
        if s.root_ok {
            if s.class_ok && s.leaf_ok && s.filters == r.filters {
                on += 1;
                details.push(format!(
                    "{}: htb {} -> class {} -> {} {} with {} u32 filter(s)",
                    i.name,
                    fmt_handle(i.root),
                    fmt_handle(i.root | CLASS_MINOR as u32),
                    r.mechanism,
                    fmt_handle(i.leaf),
                    s.filters
                ));
            } else {
                details.push(format!(
                    "{}: htb {} present but incomplete (class {}, {} {}, {} of {} filters)",
                    i.name,
                    fmt_handle(i.root),
                    if s.class_ok { "ok" } else { "missing" },
                    r.mechanism,
                    if s.leaf_ok { "ok" } else { "missing" },
                    s.filters,
                    r.filters
                ));
            }
            continue;
        }
        let cur = root_of(&mut sock, i)?;
        let restored = match &cur {
            None => true,
            Some(q) if i.prior.is_default() => q.handle == 0,
            Some(q) => i.prior.matches(q),
        };
        if restored {
            off += 1;
            details.push(format!(
                "{}: root qdisc is {} as before",
                i.name,
                i.prior.describe()
            ));
        } else {
            let now = cur
                .map(|q| format!("{} {}", q.kind, fmt_handle(q.handle)))
                .unwrap_or_default();
            details.push(format!(
                "{}: our qdiscs are gone but the root qdisc is {now}, not {} as before",
                i.name,
                i.prior.describe()
            ));
        }
    }
    let detail = details.join("; ");
    let n = r.interfaces.len();
    Ok(if on == n {
        Observation::in_effect(detail)
    } else if off == n {
        Observation::clean(detail)
    } else {
        Observation::partial(detail)
    })
}

/// The `tc` arguments (after `root handle H`) that re-create a prior root qdisc.
fn restore_args(prior: &PriorRoot) -> Vec<String> {
    let opts = nl::from_hex(&prior.options).unwrap_or_default();
    let mut args = vec![prior.kind.clone()];
    match prior.kind.as_str() {
        "tbf" => {
            if let Some(p) = TbfParams::decode(&opts) {
                args.extend([
                    "rate".to_string(),
                    format!("{}bit", p.rate_bytes as u64 * 8),
                    "burst".to_string(),
                    p.burst.to_string(),
                    "limit".to_string(),
                    p.limit.to_string(),
                ]);
            }
        }
        "pfifo" | "bfifo" if opts.len() >= 4 => {
            let limit = u32::from_ne_bytes(opts[0..4].try_into().unwrap_or([0; 4]));
            args.extend(["limit".to_string(), limit.to_string()]);
        }
        _ => {}
    }
    args
}

/// The `tc` commands that undo the fault by hand, each word shell-quoted, run inside the
/// receipt's namespace (`nsenter --net=PATH` when that is not where they are printed).
pub(crate) fn manual_undo(r: &QdiscReceipt) -> Vec<String> {
    let prefix = place::prefix(r.netns.as_ref());
    let cmd = |words: Vec<String>| shell::join(prefix.iter().chain(words.iter()));
    let mut out: Vec<String> = place::legacy_note(r.netns.as_ref()).into_iter().collect();
    for i in &r.interfaces {
        out.push(cmd(vec![
            "tc".into(),
            "qdisc".into(),
            "del".into(),
            "dev".into(),
            i.name.clone(),
            "root".into(),
            "handle".into(),
            fmt_handle(i.root),
        ]));
        if !i.prior.is_default() {
            let mut words: Vec<String> = ["tc", "qdisc", "add", "dev"]
                .iter()
                .map(|w| w.to_string())
                .collect();
            words.extend([
                i.name.clone(),
                "root".into(),
                "handle".into(),
                fmt_handle(i.prior.handle),
            ]);
            words.extend(restore_args(&i.prior));
            out.push(cmd(words));
        }
    }
    out
}

/// Host objects a qdisc receipt acts on.
pub(crate) fn targets(r: &QdiscReceipt) -> Vec<String> {
    // The root qdisc is what two faults cannot share; nft faults on the same interface
    // compose with it (their targets are their own tables). Names mean something only in
    // their namespace, so the namespace is part of the target.
    r.interfaces
        .iter()
        .map(|i| match &r.netns {
            Some(ns) => format!("tc-root:{ns}:{}", i.name),
            None => format!("tc-root:{}", i.name),
        })
        .collect()
}

/// The blast radius for people: each interface with its namespace, what happens to which
/// traffic, and what becomes of its root qdisc.
pub(crate) fn touches(r: &QdiscReceipt) -> Vec<String> {
    let ns = place::show(r.netns.as_ref());
    let effect = if r.effect.is_empty() {
        format!("chaos-agent's {} tree", r.mechanism)
    } else {
        r.effect.clone()
    };
    let traffic = if r.traffic.is_empty() {
        String::new()
    } else {
        format!(" on {}", r.traffic)
    };
    let mut out: Vec<String> = r
        .interfaces
        .iter()
        .map(|i| {
            format!(
                "interface {} (index {}) in {ns}: {effect}{traffic}; its root qdisc ({}) is replaced by htb {} until revert",
                i.name,
                i.ifindex,
                i.prior.describe(),
                fmt_handle(i.root),
            )
        })
        .collect();
    out.extend(crate::target::host_lines(&r.hosts));
    out
}

/// Check a journaled receipt against the fault id it is filed under: the handles revert
/// deletes are those of that id, and the prior root qdisc is one revert may re-create.
pub(crate) fn check(fault_id: &str, r: &QdiscReceipt) -> Result<()> {
    let drifted = |what: String| {
        Err(Error::new(
            ErrorKind::Drifted,
            format!("receipt filed under fault {fault_id} {what}; refusing to act on it"),
        ))
    };
    if r.fault_id != fault_id {
        return drifted(format!("was made for fault {}", r.fault_id));
    }
    let (root, leaf) = handles(fault_id);
    for i in &r.interfaces {
        if i.root != root || i.leaf != leaf {
            return drifted(format!(
                "names qdiscs {} and {} on {}, but that fault's are {} and {}",
                fmt_handle(i.root),
                fmt_handle(i.leaf),
                i.name,
                fmt_handle(root),
                fmt_handle(leaf)
            ));
        }
        if crate::target::valid_ifname(&i.name).is_err() {
            return drifted(format!("names an impossible interface {:?}", i.name));
        }
        let p = &i.prior;
        if !p.is_default() && !RESTORABLE.contains(&p.kind.as_str()) {
            return drifted(format!(
                "would restore root qdisc {} {} on {}, which is not one chaos-agent ever replaces",
                p.kind,
                fmt_handle(p.handle),
                i.name
            ));
        }
    }
    Ok(())
}

/// Which qdisc kind a tree of ours belongs to, from its leaf: tbf is `network.rate`, netem
/// is told apart by its options; a tree whose leaf is missing (an inject cut short) is
/// claimed by `network.rate`, whose revert removes any root of ours just the same.
fn owner(leaf: Option<&TcObject>) -> &'static str {
    match leaf {
        Some(q) if q.kind == "netem" => crate::netem::kind_of(&q.options),
        _ => "network.rate",
    }
}

/// Our root qdiscs in every reachable network namespace whose handle and mark are those of
/// a fault id in `known` and whose tree belongs to kind `kind` (see [`owner`]), each with a
/// receipt that reverts it. The root qdisc it replaced is unknown, so the receipt records
/// the kernel default: revert deletes ours and the default comes back.
pub(crate) fn leftovers(known: &[String], kind: &str) -> Result<Vec<Leftover<QdiscReceipt>>> {
    if known.is_empty() {
        return Ok(Vec::new());
    }
    let boot_id = fault_core::host::boot_id();
    crate::scan::each_namespace(|ns, shown| {
        let mut sock = route_socket()?;
        let qs = tc::all_qdiscs(&mut sock).map_err(|e| e.into_error("dump qdiscs"))?;
        let mut out = Vec::new();
        for q in qs.iter().filter(|q| q.parent == TC_H_ROOT) {
            let Some(id) = known.iter().find(|id| is_ours(q, id)) else {
                continue;
            };
            let (root, leaf) = handles(id);
            let leaf_q = qs.iter().find(|l| {
                l.ifindex == q.ifindex && l.handle == leaf && l.parent == root | CLASS_MINOR as u32
            });
            if owner(leaf_q) != kind {
                continue;
            }
            let Some(name) = place::index_to_name(q.ifindex) else {
                continue; // vanished while we looked
            };
            let filters = tc::filters(&mut sock, q.ifindex, root)
                .map(|f| f.len())
                .unwrap_or(0);
            let mechanism = leaf_q
                .map(|l| l.kind.clone())
                .unwrap_or_else(|| "htb".into());
            let carrying = match leaf_q {
                Some(l) => format!("carrying {} {}", l.kind, fmt_handle(l.handle)),
                None => "its leaf qdisc missing".to_string(),
            };
            out.push(Leftover {
                fault_id: id.clone(),
                found: format!(
                    "tc root qdisc htb {} ({carrying}) of fault {id} on interface {name} (index {}) in {ns} ({shown}); \
                     the root qdisc it replaced is unknown, so revert deletes it and the kernel's default root qdisc comes back",
                    fmt_handle(root),
                    q.ifindex
                ),
                receipt: QdiscReceipt {
                    fault_id: id.clone(),
                    boot_id: boot_id.clone(),
                    netns: Some(ns.clone()),
                    mechanism,
                    interfaces: vec![ShapedInterface {
                        name,
                        ifindex: q.ifindex,
                        root,
                        leaf,
                        prior: PriorRoot {
                            kind: String::new(),
                            handle: 0,
                            options: String::new(),
                        },
                    }],
                    filters,
                    effect: String::new(),
                    traffic: String::new(),
                    hosts: Vec::new(),
                },
            });
        }
        Ok(out)
    })
}

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
mod tests {
    use super::*;
    use crate::target::{Cidr, Protocol, Targeting};

    fn targeting(destinations: &[&str], exclude: &[&str]) -> Targeting {
        Targeting {
            interfaces: vec!["eth0".into()],
            destinations: destinations
                .iter()
                .map(|c| Cidr::parse(c).unwrap())
                .collect(),
            hosts: vec![],
            resolved: vec![],
            ports: vec![],
            exclude_destinations: exclude.iter().map(|c| Cidr::parse(c).unwrap()).collect(),
            exclude_ports: vec![],
            protocol: Protocol::All,
        }
    }

    fn arp_filters(t: &Targeting, leaf: &Leaf) -> Vec<Filter> {
        filters_for(t, 0xc000_0000, leaf)
            .into_iter()
            .filter(|f| f.eth_proto == u32f::ETH_P_ARP)
            .collect()
    }

    fn netem(corrupt: f64, loss: f64) -> Leaf {
        Leaf::Netem(NetemParams {
            limit: 1000,
            corrupt,
            loss,
            ..Default::default()
        })
    }

    #[test]
    fn arp_is_spared_when_the_whole_interface_is_faulted_with_exclusions() {
        let loss = netem(0.0, 50.0);
        // Whole interface with an exclusion: ARP goes to the direct queue (unshaped).
        let arp = arp_filters(&targeting(&[], &["10.0.0.5/32"]), &loss);
        assert_eq!(arp.len(), 1);
        assert_eq!(
            arp[0].classid, 0xc000_0000,
            "htb's direct queue, not the faulted class"
        );
        // Whole interface, nothing excluded: classic netem/tbf semantics, ARP included.
        assert!(arp_filters(&targeting(&[], &[]), &loss).is_empty());
        // Targeted faults: ARP is unclassified and already unshaped; no filter needed.
        assert!(arp_filters(&targeting(&["10.0.0.0/24"], &["10.0.0.5/32"]), &loss).is_empty());
    }

    #[test]
    fn arp_is_never_corrupted() {
        // A corrupted ARP poisons neighbours' caches beyond the revert, so a corrupting
        // leaf spares ARP on a whole interface, with or without exclusions...
        for exclude in [&[][..], &["10.0.0.5/32"][..]] {
            let arp = arp_filters(&targeting(&[], exclude), &netem(5.0, 0.0));
            assert_eq!(arp.len(), 1, "exclusions {exclude:?}");
            assert_eq!(arp[0].classid, 0xc000_0000);
        }
        // ... and a targeted one never classifies it.
        assert!(arp_filters(&targeting(&["10.0.0.0/24"], &[]), &netem(5.0, 0.0)).is_empty());
        // The other leaves keep classic semantics on a whole interface.
        let tbf = Leaf::Tbf(TbfParams {
            rate_bytes: 125_000,
            burst: 1600,
            limit: 10_000,
        });
        assert!(arp_filters(&targeting(&[], &[]), &tbf).is_empty());
        assert!(!netem(0.0, 50.0).spares_arp());
    }

    use fault_core::host::ns::NsKind;

    /// A receipt as plan writes it, for `name`/`index` in namespace `netns`, with a prior
    /// tbf root.
    fn receipt(fault_id: &str, name: &str, index: u32, netns: Option<NsId>) -> QdiscReceipt {
        let (root, leaf) = handles(fault_id);
        let mut m = Msg::new(36, 0);
        TbfParams {
            rate_bytes: 37_500_000,
            burst: 64 * 1024,
            limit: 1 << 20,
        }
        .encode(&mut m);
        let b = m.finish();
        let opts = nl::find_attr(&b[16..], crate::tbf::TCA_OPTIONS).unwrap();
        QdiscReceipt {
            fault_id: fault_id.into(),
            boot_id: fault_core::host::boot_id(),
            netns,
            mechanism: "tbf".into(),
            interfaces: vec![ShapedInterface {
                name: name.into(),
                ifindex: index,
                root,
                leaf,
                prior: PriorRoot {
                    kind: "tbf".into(),
                    handle: handle(7, 0),
                    options: nl::to_hex(opts),
                },
            }],
            filters: 0,
            effect: "egress rate 8 Mbit/s (tbf, burst 16.0 KiB, queue limit 406.6 KiB)".into(),
            traffic: "traffic to 10.0.0.0/24 port 80".into(),
            hosts: Vec::new(),
        }
    }

    #[test]
    fn manual_undo_quotes_every_word() {
        let r = receipt("ab12-1-1", "q;id", 5, Some(place::here().unwrap()));
        let root = fmt_handle(handles("ab12-1-1").0);
        assert_eq!(
            manual_undo(&r),
            vec![
                format!("tc qdisc del dev 'q;id' root handle {root}"),
                "tc qdisc add dev 'q;id' root handle 7: tbf rate 300000000bit burst 65513 limit 1048576"
                    .to_string(),
            ]
        );
    }

    #[test]
    fn manual_undo_says_where_when_the_namespace_is_elsewhere() {
        let far = NsId {
            kind: NsKind::Net,
            dev: 4,
            ino: 1,
            cookie: None,
        };
        let r = receipt("ab12-1-1", "q;id", 5, Some(far));
        let undo = manual_undo(&r);
        assert!(
            undo[0].starts_with(
                "nsenter '--net=/proc/PID-IN-net:[1]/ns/net' tc qdisc del dev 'q;id' root"
            ),
            "{undo:?}"
        );
        // Without a namespace (older receipts): a comment says where to run them.
        let undo = manual_undo(&receipt("ab12-1-1", "eth0", 5, None));
        assert!(
            undo[0].starts_with("# run these in the network namespace"),
            "{undo:?}"
        );
        assert!(undo[1].starts_with("tc qdisc del dev eth0 root handle"));
    }

    #[test]
    fn touches_speaks_human() {
        let here = place::here().unwrap();
        let r = receipt("ab12-1-1", "veth0", 5, Some(here.clone()));
        let t = touches(&r);
        assert_eq!(t.len(), 1);
        assert_eq!(
            t[0],
            format!(
                "interface veth0 (index 5) in net:[{}]: egress rate 8 Mbit/s (tbf, burst 16.0 KiB, queue limit 406.6 KiB) \
                 on traffic to 10.0.0.0/24 port 80; its root qdisc (tbf 7:) is replaced by htb {} until revert",
                here.ino,
                fmt_handle(handles("ab12-1-1").0)
            )
        );
        assert_eq!(
            targets(&r),
            vec![format!("tc-root:net:[{}]:veth0", here.ino)]
        );
    }

    #[test]
    fn check_receipt_refuses_handles_or_priors_it_did_not_derive() {
        let id = "ab12-1-1";
        let good = receipt(id, "eth0", 5, Some(place::here().unwrap()));
        check(id, &good).unwrap();
        let refused = |r: &QdiscReceipt, id: &str, what: &str| {
            let e = check(id, r).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Drifted, "{e}");
            assert!(e.to_string().contains(what), "{e}");
        };
        refused(&good, "ab12-1-2", "was made for fault ab12-1-1");
        let mut r = good.clone();
        r.interfaces[0].root = handle(0xc004, 0);
        refused(&r, id, "names qdiscs c004:");
        let mut r = good.clone();
        r.interfaces[0].leaf = handle(1, 0);
        refused(&r, id, "names qdiscs");
        let mut r = good.clone();
        r.interfaces[0].prior.kind = "htb".into();
        refused(&r, id, "not one chaos-agent ever replaces");
        let mut r = good.clone();
        r.interfaces[0].name = "a/b".into();
        refused(&r, id, "impossible interface");
        // A receipt as a JSON edit would make it, through serde.
        let mut v = serde_json::to_value(&good).unwrap();
        v["interfaces"][0]["root"] = serde_json::json!(0x0001_0000u32);
        let edited: QdiscReceipt = serde_json::from_value(v).unwrap();
        refused(&edited, id, "names qdiscs 1:");
    }

    #[test]
    fn receipts_of_older_versions_deserialize_and_are_refused() {
        let mut v = serde_json::to_value(receipt("ab12-1-1", "eth0", 5, None)).unwrap();
        for k in ["netns", "effect", "traffic"] {
            v.as_object_mut().unwrap().remove(k);
        }
        let old: QdiscReceipt = serde_json::from_value(v).unwrap();
        assert_eq!(old.netns, None);
        let e = revert(&old).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
        assert!(
            e.to_string()
                .contains("did not record the network namespace"),
            "{e}"
        );
        assert!(verify(&old).is_err());
        // After a reboot there is nothing left to undo, namespace or not.
        let rebooted = QdiscReceipt {
            boot_id: "another-boot".into(),
            ..old
        };
        revert(&rebooted).unwrap();
        assert_eq!(verify(&rebooted).unwrap().effect, fault_core::Effect::Clean);
    }

    #[test]
    fn a_namespace_that_provably_no_longer_exists_is_clean() {
        // Our own namespace's number with another cookie: the recorded namespace was freed
        // and its number reused, so what lived in it is gone. Nothing is looked at here.
        let here = place::here().unwrap();
        let Some(cookie) = here.cookie else {
            eprintln!("SKIPPED: this kernel has no netns cookie");
            return;
        };
        let gone = NsId {
            cookie: Some(cookie.wrapping_add(1)),
            ..here
        };
        let r = receipt("ab12-1-1", "lo", 1, Some(gone));
        revert(&r).unwrap();
        let v = verify(&r).unwrap();
        assert_eq!(v.effect, fault_core::Effect::Clean);
        assert!(v.detail.contains("no longer exists"), "{}", v.detail);
    }

    #[test]
    fn marks_stay_in_the_range_the_kernel_keeps() {
        for id in ["a", "ab12-1-1", "run-2024/step-3/fault-17", ""] {
            let m = mark(id);
            assert!((0x4000_0000..=0x7fff_ffff).contains(&m), "{m:x}");
        }
        assert_ne!(mark("ab12-1-1"), mark("ab12-1-2"));
    }
}
