//! Hierarchy token bucket (`htb`) options: the root qdisc (`struct tc_htb_glob`) and a
//! class (`struct tc_htb_opt`).
//!
//! As for tbf, rate specs say `linklayer = ethernet`, so kernels since 3.11 ignore the rate
//! tables (`TCA_HTB_RTAB`/`TCA_HTB_CTAB`); they are sent anyway, as `tc` sends them, for
//! kernels before that, which refuse a class without them.

use crate::nl::Msg;
use crate::tbf::{ratespec, rtab, xmittime, TCA_OPTIONS};

const TCA_HTB_PARMS: u16 = 1;
const TCA_HTB_INIT: u16 = 2;
const TCA_HTB_CTAB: u16 = 3;
const TCA_HTB_RTAB: u16 = 4;

/// Append the `TCA_OPTIONS` of an htb root qdisc with default class minor `defcls`
/// (0 = unclassified traffic bypasses shaping through htb's direct queue) and
/// `rate2quantum` `r2q` (`tc`'s default is 10).
///
/// r2q only matters for classes created without an explicit quantum, and ours always have
/// one, so our roots carry a mark derived from the fault id there
/// ([`crate::shape::mark`]): the kernel keeps it and dumps it back, which is how a root
/// qdisc is proven ours and not merely in our handle range.
pub(crate) fn encode_qdisc(m: &mut Msg, defcls: u32, r2q: u32) {
    let mut g = Vec::with_capacity(20);
    g.extend_from_slice(&3u32.to_ne_bytes()); // version
    g.extend_from_slice(&r2q.to_ne_bytes()); // rate2quantum
    g.extend_from_slice(&defcls.to_ne_bytes());
    g.extend_from_slice(&0u32.to_ne_bytes()); // debug
    g.extend_from_slice(&0u32.to_ne_bytes()); // direct_pkts
    let n = m.begin_nest(TCA_OPTIONS);
    m.attr(TCA_HTB_INIT, &g);
    m.end_nest(n);
}

/// The rate2quantum of a dumped htb root qdisc's `TCA_OPTIONS`.
pub(crate) fn decode_r2q(options: &[u8]) -> Option<u32> {
    let g = crate::nl::find_attr(options, TCA_HTB_INIT)?;
    Some(u32::from_ne_bytes(g.get(4..8)?.try_into().ok()?))
}

/// Append the `TCA_OPTIONS` of an htb class with rate = ceil = `rate_bytes`.
pub(crate) fn encode_class(m: &mut Msg, rate_bytes: u32, burst: u32, quantum: u32) {
    let buffer = xmittime(rate_bytes as u64, burst as u64);
    let mut o = Vec::with_capacity(44);
    o.extend_from_slice(&ratespec(rate_bytes));
    o.extend_from_slice(&ratespec(rate_bytes));
    o.extend_from_slice(&buffer.to_ne_bytes());
    o.extend_from_slice(&buffer.to_ne_bytes());
    o.extend_from_slice(&quantum.to_ne_bytes());
    o.extend_from_slice(&0u32.to_ne_bytes()); // level
    o.extend_from_slice(&0u32.to_ne_bytes()); // prio
    let n = m.begin_nest(TCA_OPTIONS);
    m.attr(TCA_HTB_PARMS, &o);
    // rate = ceil, so both tables are the same; `tc` sends them in this order.
    let table = rtab(rate_bytes);
    m.attr(TCA_HTB_RTAB, &table);
    m.attr(TCA_HTB_CTAB, &table);
    m.end_nest(n);
}
