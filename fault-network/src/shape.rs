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
//!   │                          -> <R>:0 (so excluded destinations stay reachable)
//!   └── class htb <R>:10 (32 Gbit/s, never the bottleneck)
//!         └── leaf qdisc <R+1>: tbf or netem
//! ```
//!
//! Unclassified packets go through htb's direct queue, so traffic the fault does not aim at
//! is not shaped. `<R>` is derived from the fault id in the range `c000`..`dffe`, which is
//! how a qdisc is recognized as ours.
//!
//! Coexistence: plan records the interface's root qdisc. A kernel default (handle 0:
//! noqueue, pfifo_fast, mq, fq_codel ...) is simply replaced, and deleting ours brings the
//! default back. A classless root qdisc someone configured (`tbf`, `pfifo`, `bfifo`) is
//! replaced and re-created on revert with its recorded handle and the exact options the
//! kernel dumped. Any other non-default root qdisc (htb, prio, ... with classes and filters
//! we could not restore exactly) makes plan refuse, as does a root qdisc of another
//! chaos-agent fault.

use fault_core::{Context, Error, ErrorKind, Observation, Result};
use serde::{Deserialize, Serialize};

use crate::netem::NetemParams;
use crate::nl::{self, Msg, Socket, F_EXCL, F_REPLACE};
use crate::target::{resolve_interfaces, Selector, Targeting};
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
        if self.is_default() {
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QdiscReceipt {
    /// Fault id the handles derive from.
    pub fault_id: String,
    /// Boot id at plan time: qdiscs do not survive a reboot.
    pub boot_id: String,
    /// What carries the fault: "tbf" or "netem" (under our htb root).
    pub mechanism: String,
    /// The interfaces, with their prior root qdisc.
    pub interfaces: Vec<ShapedInterface>,
    /// u32 filters we add per interface.
    pub filters: usize,
}

/// Handles of a fault id: (root, leaf).
pub(crate) fn handles(fault_id: &str) -> (u32, u32) {
    let base = 0xc000u16 + 2 * (crate::fnv1a(fault_id) % 0x1000) as u16;
    (handle(base, 0), handle(base + 1, 0))
}

fn is_chaos_root(q: &TcObject) -> bool {
    q.kind == "htb" && (0xc000..=0xdfff).contains(&(q.handle >> 16))
}

fn route_socket() -> Result<Socket> {
    Socket::open(nl::NETLINK_ROUTE).map_err(|e| Error::io("open a NETLINK_ROUTE socket", e))
}

/// The u32 filters for a targeting, for a qdisc of handle `root`.
pub(crate) fn filters_for(t: &Targeting, root: u32) -> Vec<Filter> {
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
    if t.is_whole() && !excludes.is_empty() {
        // Whole-interface faults send unclassified packets to the faulted class, ARP too.
        // Excluded destinations must stay reachable, and reaching any of them (or the
        // gateway in front of it) needs ARP: a lost or delayed ARP stalls neighbour
        // resolution for a second per retry. So ARP goes to the unshaped direct queue.
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

/// Plan: resolve interfaces, snapshot their root qdisc, refuse what we cannot undo.
pub(crate) fn plan(cx: &Context, t: &Targeting, mechanism: &str) -> Result<QdiscReceipt> {
    let ifaces = resolve_interfaces(t)?;
    let (root, leaf) = handles(&cx.fault_id);
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
            leaf,
            prior,
        });
    }
    Ok(QdiscReceipt {
        fault_id: cx.fault_id.clone(),
        boot_id: cx.boot_id.clone(),
        mechanism: mechanism.into(),
        filters: filters_for(t, root).len(),
        interfaces: out,
    })
}

struct IfState {
    root_ok: bool,
    class_ok: bool,
    leaf_ok: bool,
    filters: usize,
}

fn inspect(sock: &mut Socket, i: &ShapedInterface, kind: &str) -> Result<Option<IfState>> {
    let what = |e: nl::NlError| e.into_error(format!("read the qdiscs of {}", i.name));
    let qs = match tc::qdiscs(sock, i.ifindex) {
        Ok(q) => q,
        Err(e) if e.errno == libc::ENODEV => return Ok(None),
        Err(e) => return Err(what(e)),
    };
    let root_ok = qs
        .iter()
        .any(|q| q.parent == TC_H_ROOT && q.handle == i.root);
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

/// Inject: build the tree on every interface. Idempotent: a complete tree is left alone, a
/// partial one is rebuilt. On failure everything this fault created is removed again.
pub(crate) fn inject(r: &QdiscReceipt, leaf: &Leaf, t: &Targeting) -> Result<()> {
    let result = inject_all(r, leaf, t);
    if result.is_err() {
        let _ = revert(r);
    }
    result
}

fn inject_all(r: &QdiscReceipt, leaf: &Leaf, t: &Targeting) -> Result<()> {
    let mut sock = route_socket()?;
    for i in &r.interfaces {
        let filters = filters_for(t, i.root);
        if let Some(s) = inspect(&mut sock, i, leaf.kind())? {
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
            |m| crate::htb::encode_qdisc(m, defcls),
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

/// Revert: delete our root qdisc (only if its handle is ours), then re-create the prior
/// root qdisc if it was not the kernel default and nothing else took its place.
pub(crate) fn revert(r: &QdiscReceipt) -> Result<()> {
    if rebooted(r) {
        return Ok(());
    }
    let mut sock = route_socket()?;
    let mut first_err = None;
    for i in &r.interfaces {
        let res = (|| -> Result<()> {
            let Some(cur) = root_of(&mut sock, i)? else {
                return Ok(());
            };
            if cur.handle == i.root {
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

/// Verify: read qdiscs, classes and filters back and compare with the receipt.
pub(crate) fn verify(r: &QdiscReceipt) -> Result<Observation> {
    if rebooted(r) {
        return Ok(Observation::clean(
            "the host rebooted since the fault was planned; qdiscs do not survive a reboot",
        ));
    }
    let mut sock = route_socket()?;
    let (mut on, mut off, mut details) = (0, 0, Vec::new());
    for i in &r.interfaces {
        let Some(s) = inspect(&mut sock, i, &r.mechanism)? else {
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

/// The `tc` commands that undo the fault by hand.
pub(crate) fn manual_undo(r: &QdiscReceipt) -> Vec<String> {
    let mut out = Vec::new();
    for i in &r.interfaces {
        out.push(format!(
            "tc qdisc del dev {} root handle {}",
            i.name,
            fmt_handle(i.root)
        ));
        if !i.prior.is_default() {
            let opts = nl::from_hex(&i.prior.options).unwrap_or_default();
            let args = match i.prior.kind.as_str() {
                "tbf" => TbfParams::decode_rate_limit(&opts)
                    .map(|(rate, limit)| {
                        format!(
                            "tbf rate {}bit limit {limit} burst <as before, see receipt>",
                            rate as u64 * 8
                        )
                    })
                    .unwrap_or_else(|| "tbf <options as before>".into()),
                k if opts.len() >= 4 => {
                    format!(
                        "{k} limit {}",
                        u32::from_ne_bytes(opts[0..4].try_into().unwrap_or([0; 4]))
                    )
                }
                k => k.to_string(),
            };
            out.push(format!(
                "tc qdisc add dev {} root handle {} {args}",
                i.name,
                fmt_handle(i.prior.handle)
            ));
        }
    }
    out
}

/// Host objects a qdisc receipt acts on.
pub(crate) fn targets(r: &QdiscReceipt) -> Vec<String> {
    // The root qdisc is what two faults cannot share; nft faults on the same interface
    // compose with it (their targets are their own tables).
    r.interfaces
        .iter()
        .map(|i| format!("tc-root:{}", i.name))
        .collect()
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
            ports: vec![],
            exclude_destinations: exclude.iter().map(|c| Cidr::parse(c).unwrap()).collect(),
            exclude_ports: vec![],
            protocol: Protocol::All,
        }
    }

    fn arp_filters(t: &Targeting) -> Vec<Filter> {
        filters_for(t, 0xc000_0000)
            .into_iter()
            .filter(|f| f.eth_proto == u32f::ETH_P_ARP)
            .collect()
    }

    #[test]
    fn arp_is_spared_only_when_the_whole_interface_is_faulted_with_exclusions() {
        // Whole interface with an exclusion: ARP goes to the direct queue (unshaped).
        let arp = arp_filters(&targeting(&[], &["10.0.0.5/32"]));
        assert_eq!(arp.len(), 1);
        assert_eq!(
            arp[0].classid, 0xc000_0000,
            "htb's direct queue, not the faulted class"
        );
        // Whole interface, nothing excluded: classic netem/tbf semantics, ARP included.
        assert!(arp_filters(&targeting(&[], &[])).is_empty());
        // Targeted faults: ARP is unclassified and already unshaped; no filter needed.
        assert!(arp_filters(&targeting(&["10.0.0.0/24"], &["10.0.0.5/32"])).is_empty());
    }
}
