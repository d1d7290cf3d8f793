//! The nftables engine shared by `network.blackhole` and the `network.loss` fallback: one
//! table of our own per fault, `inet chaos_<fault id>`, holding base chains at
//! postrouting (egress) and/or prerouting (ingress), priority 0, policy accept.
//!
//! Inject sends one atomic batch `add table; delete table; add table; add chain...; add
//! rule...`, so injecting twice leaves exactly one copy. Revert is a single `delete table`:
//! it cannot touch anyone else's rules, and "no such table" means already reverted.
//! Chains of other tables at the same hooks still run: our `drop` wins over their
//! `accept`, our `accept` (used for exclusions) only ends our own chain.

use std::collections::BTreeSet;

use fault_core::{Context, Error, ErrorKind, Observation, Result};
use serde::{Deserialize, Serialize};

use crate::nft::{self, Dir, Expr, HOOK_POSTROUTING, HOOK_PREROUTING, NF_ACCEPT, NF_DROP};
use crate::nl::{self, Socket};
use crate::target::{resolve_interfaces, Interface, Targeting};

/// Receipt of an nftables fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableReceipt {
    /// Fault id the table name derives from.
    pub fault_id: String,
    /// Boot id at plan time: nft tables do not survive a reboot.
    pub boot_id: String,
    /// `inet` table name.
    pub table: String,
    /// Interfaces matched by name (`oifname`/`iifname`).
    pub interfaces: Vec<Interface>,
    /// Our chains ("egress", "ingress").
    pub chains: Vec<String>,
    /// Number of rules we add.
    pub rules: usize,
    /// Human description of the mechanism, e.g. "nftables drop".
    pub mechanism: String,
}

fn chain_name(d: Dir) -> &'static str {
    match d {
        Dir::Egress => "egress",
        Dir::Ingress => "ingress",
    }
}

/// The rules (chain, expressions) for a targeting; `verdict_tail` ends each targeted rule
/// (e.g. `counter drop`, or `numgen ... < n counter drop`).
pub(crate) fn rules(
    ifaces: &[Interface],
    t: &Targeting,
    dirs: &[Dir],
    tail: &[Expr],
) -> Vec<(&'static str, Vec<Expr>)> {
    let mut out = Vec::new();
    for &d in dirs {
        let mut seen = BTreeSet::new();
        let mut push = |out: &mut Vec<(&'static str, Vec<Expr>)>, e: Vec<Expr>| {
            if seen.insert(format!("{e:?}")) {
                out.push((chain_name(d), e));
            }
        };
        for i in ifaces {
            for s in t.excludes() {
                let mut e = nft::ifname_match(d, &i.name);
                e.extend(nft::selector_match(d, &s));
                e.push(Expr::Verdict(NF_ACCEPT));
                push(&mut out, e);
            }
            let includes = t.includes();
            if includes.is_empty() {
                let mut e = nft::ifname_match(d, &i.name);
                e.extend_from_slice(tail);
                push(&mut out, e);
            }
            for s in includes {
                let mut e = nft::ifname_match(d, &i.name);
                e.extend(nft::selector_match(d, &s));
                e.extend_from_slice(tail);
                push(&mut out, e);
            }
        }
    }
    out
}

/// `counter drop`.
pub(crate) fn drop_tail() -> Vec<Expr> {
    vec![Expr::Counter, Expr::Verdict(NF_DROP)]
}

/// Run `f` with this network namespace's `NETLINK_NETFILTER` socket.
///
/// The socket is kept open and reused: releasing a netfilter socket after a batch that
/// deleted a table waits for the kernel to finish the deletion (10-15 ms here, measured in
/// `benches/netlink_vs_cli.rs`), which made every inject+revert as slow as spawning `nft`.
/// Sockets are keyed by the calling thread's network namespace (device and inode of
/// `/proc/thread-self/ns/net`; an open socket pins its namespace, so the key cannot be
/// reused), and a socket that saw any error is closed rather than reused.
fn with_socket<T>(
    f: impl FnOnce(&mut Socket) -> std::result::Result<T, nl::NlError>,
) -> Result<std::result::Result<T, nl::NlError>> {
    use std::collections::HashMap;
    use std::os::unix::fs::MetadataExt;
    use std::sync::{Mutex, OnceLock};
    static SOCKETS: OnceLock<Mutex<HashMap<(u64, u64), Socket>>> = OnceLock::new();
    let ns = std::fs::metadata("/proc/thread-self/ns/net")
        .map(|m| (m.dev(), m.ino()))
        .map_err(|e| Error::io("identify the network namespace", e))?;
    let mut sockets = SOCKETS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let mut sock = match sockets.remove(&ns) {
        Some(s) => s,
        None => Socket::open(nl::NETLINK_NETFILTER)
            .map_err(|e| Error::io("open a NETLINK_NETFILTER socket", e))?,
    };
    let result = f(&mut sock);
    if result.is_ok() {
        sockets.insert(ns, sock);
    }
    Ok(result)
}

/// Plan: resolve interfaces, derive the table name, check nf_tables answers.
pub(crate) fn plan(
    cx: &Context,
    t: &Targeting,
    dirs: &[Dir],
    tail: &[Expr],
    mechanism: &str,
) -> Result<TableReceipt> {
    let interfaces = resolve_interfaces(t)?;
    let table = nft::table_name(&cx.fault_id);
    with_socket(|sock| nft::table_exists(sock, &table))?.map_err(|e| {
        let mut err = e.into_error("query nf_tables");
        if err.raw_os_error() == Some(libc::EPROTONOSUPPORT)
            || err.raw_os_error() == Some(libc::EOPNOTSUPP)
        {
            err = Error::new(
                ErrorKind::Unsupported,
                "nf_tables is not available in this kernel (CONFIG_NF_TABLES)",
            );
        }
        err
    })?;
    let n = rules(&interfaces, t, dirs, tail).len();
    Ok(TableReceipt {
        fault_id: cx.fault_id.clone(),
        boot_id: cx.boot_id.clone(),
        table,
        chains: dirs.iter().map(|&d| chain_name(d).to_string()).collect(),
        interfaces,
        rules: n,
        mechanism: mechanism.into(),
    })
}

/// Inject: one atomic batch that (re)creates the whole table.
pub(crate) fn inject(r: &TableReceipt, t: &Targeting, dirs: &[Dir], tail: &[Expr]) -> Result<()> {
    let mut msgs = vec![
        nft::new_table(&r.table),
        nft::del_table(&r.table),
        nft::new_table(&r.table),
    ];
    for &d in dirs {
        let hook = match d {
            Dir::Egress => HOOK_POSTROUTING,
            Dir::Ingress => HOOK_PREROUTING,
        };
        msgs.push(nft::new_chain(&r.table, chain_name(d), hook, 0));
    }
    for (chain, exprs) in rules(&r.interfaces, t, dirs, tail) {
        msgs.push(nft::new_rule(&r.table, chain, &exprs));
    }
    with_socket(|sock| nft::send_batch(sock, msgs))?
        .map_err(|e| e.into_error(format!("create nft table inet {}", r.table)))
}

fn rebooted(r: &TableReceipt) -> bool {
    !r.boot_id.is_empty() && r.boot_id != fault_core::host::boot_id()
}

/// Revert: `delete table`; a missing table is success.
pub(crate) fn revert(r: &TableReceipt) -> Result<()> {
    if rebooted(r) {
        return Ok(());
    }
    match with_socket(|sock| nft::send_batch(sock, vec![nft::del_table(&r.table)]))? {
        Ok(()) => Ok(()),
        Err(e) if e.errno == libc::ENOENT => Ok(()),
        Err(e) => Err(e.into_error(format!("delete nft table inet {}", r.table))),
    }
}

/// Verify: read the table, its chains and its rules back.
pub(crate) fn verify(r: &TableReceipt) -> Result<Observation> {
    if rebooted(r) {
        return Ok(Observation::clean(
            "the host rebooted since the fault was planned; nft tables do not survive a reboot",
        ));
    }
    let rd = |e: nl::NlError| e.into_error(format!("read nft table inet {}", r.table));
    let found = with_socket(|sock| {
        if !nft::table_exists(sock, &r.table)? {
            return Ok(None);
        }
        Ok(Some((
            nft::chains(sock, &r.table)?,
            nft::rule_count(sock, &r.table)?,
        )))
    })?
    .map_err(rd)?;
    let Some((chains, rules)) = found else {
        return Ok(Observation::clean(format!(
            "nft table inet {} does not exist",
            r.table
        )));
    };
    let chains_ok = r.chains.iter().all(|c| chains.contains(c));
    let detail = format!(
        "nft table inet {} with chains [{}] and {rules} of {} rules ({})",
        r.table,
        chains.join(", "),
        r.rules,
        r.mechanism
    );
    Ok(if chains_ok && rules == r.rules {
        Observation::in_effect(detail)
    } else {
        Observation::partial(detail)
    })
}

/// The `nft` command that undoes the fault by hand.
pub(crate) fn manual_undo(r: &TableReceipt) -> Vec<String> {
    vec![format!("nft delete table inet {}", r.table)]
}

/// Host objects an nft receipt acts on: its own table only. Tables of different faults
/// (and a qdisc fault on the same interface) compose, so they do not conflict.
pub(crate) fn targets(r: &TableReceipt) -> Vec<String> {
    vec![format!("nft:inet {}", r.table)]
}
