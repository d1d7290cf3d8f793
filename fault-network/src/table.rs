//! The nftables engine shared by `network.blackhole` and the `network.loss` fallback: one
//! table of our own per fault, `inet chaos_<fault id>`, holding base chains at
//! postrouting (egress) and/or prerouting (ingress), priority 0, policy accept.
//!
//! Inject sends one atomic batch `add table; delete table; add table; add chain...; add
//! rule...`, so injecting twice leaves exactly one copy. Revert is a single `delete table`:
//! it cannot touch anyone else's rules, and "no such table" means already reverted.
//! Chains of other tables at the same hooks still run: our `drop` wins over their
//! `accept`, our `accept` (used for exclusions) only ends our own chain.
//!
//! Tables exist per network namespace: the receipt records the namespace of the plan and
//! every later step runs inside it (see `place.rs`); "no such table" means reverted
//! only when it was looked for there.

use std::collections::BTreeSet;

use fault_core::host::ns::NsId;
use fault_core::host::shell;
use fault_core::{Context, Error, ErrorKind, Leftover, Observation, Result};
use serde::{Deserialize, Serialize};

use crate::nft::{self, Dir, Expr, HOOK_POSTROUTING, HOOK_PREROUTING, NF_ACCEPT, NF_DROP};
use crate::nl::{self, Socket};
use crate::place::{self, Reached};
use crate::target::{resolve_interfaces, Interface, ResolvedHost, Targeting};

/// Receipt of an nftables fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableReceipt {
    /// Fault id the table name derives from.
    pub fault_id: String,
    /// Boot id at plan time: nft tables do not survive a reboot.
    pub boot_id: String,
    /// The network namespace of the table and interfaces, recorded at plan. `None` only in
    /// receipts of older versions, which revert refuses (see `place.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<NsId>,
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
    /// What the fault does, for people ("drop egress and ingress").
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub effect: String,
    /// Which traffic it does it to ("all traffic", "traffic to 10.0.0.0/24 port 80").
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub traffic: String,
    /// The host names of the spec with the addresses they resolved to at plan; the rules
    /// match exactly these, and nothing resolves them again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<ResolvedHost>,
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
            if t.is_whole() {
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

/// Run `f` with a `NETLINK_NETFILTER` socket of the calling thread's network namespace.
///
/// The socket of the process's own namespace is kept open and reused: releasing a
/// netfilter socket after a batch that deleted a table waits for the kernel to finish the
/// deletion (10-15 ms here, measured in `benches/netlink_vs_cli.rs`), which made every
/// inject+revert as slow as spawning `nft`. It is keyed by the namespace's identity
/// ([`NsId`]: nsfs device and inode, and cookie) as seen from the calling thread
/// (`/proc/thread-self`), so a thread that entered another namespace never gets it.
/// Sockets of other namespaces (a thread that entered a receipt's namespace, a
/// leftovers scan) are opened for the call and not kept: a kept socket pins its
/// namespace, and would keep a namespace that everyone else let go of alive, with its
/// interfaces and their qdiscs, for as long as the agent runs. They are closed on a
/// short-lived thread of their own, so the caller does not wait for the kernel's cleanup
/// and the namespace is let go of as soon as that cleanup is done. A socket that saw any
/// error is closed rather than reused.
pub(crate) fn with_socket<T>(
    f: impl FnOnce(&mut Socket) -> std::result::Result<T, nl::NlError>,
) -> Result<std::result::Result<T, nl::NlError>> {
    use std::os::unix::fs::MetadataExt;
    use std::sync::Mutex;
    static KEPT: Mutex<Option<(NsId, Socket)>> = Mutex::new(None);
    let here = place::here()?;
    let own = std::fs::metadata("/proc/self/ns/net")
        .map(|m| (m.dev(), m.ino()))
        .map_err(|e| Error::io("identify the agent's network namespace", e))?;
    let keep = (here.dev, here.ino) == own;
    let kept = if keep {
        let mut k = KEPT.lock().unwrap_or_else(|e| e.into_inner());
        match k.take() {
            Some((id, sock)) if id == here => Some(sock),
            _ => None,
        }
    } else {
        None
    };
    let mut sock = match kept {
        Some(s) => s,
        None => Socket::open(nl::NETLINK_NETFILTER)
            .map_err(|e| Error::io("open a NETLINK_NETFILTER socket", e))?,
    };
    let result = f(&mut sock);
    if keep && result.is_ok() {
        *KEPT.lock().unwrap_or_else(|e| e.into_inner()) = Some((here, sock));
    } else {
        close_later(sock);
    }
    Ok(result)
}

/// Close a netfilter socket on a thread of its own (its release may wait for the kernel's
/// nf_tables cleanup). If no thread can be started, `spawn` drops the closure, and the
/// socket in it, right here.
fn close_later(sock: Socket) {
    let _ = std::thread::Builder::new()
        .name("nft-close".into())
        .spawn(move || drop(sock));
}

/// Plan: record the namespace, resolve interfaces, derive the table name, check nf_tables
/// answers. `effect` says what the fault does, for people.
pub(crate) fn plan(
    cx: &Context,
    t: &Targeting,
    dirs: &[Dir],
    tail: &[Expr],
    mechanism: &str,
    effect: String,
) -> Result<TableReceipt> {
    let netns = place::here()?;
    let interfaces = resolve_interfaces(t)?;
    let t = &t.resolve()?;
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
        netns: Some(netns),
        table,
        chains: dirs.iter().map(|&d| chain_name(d).to_string()).collect(),
        interfaces,
        rules: n,
        mechanism: mechanism.into(),
        effect,
        traffic: t.traffic(),
        hosts: t.resolved.clone(),
    })
}

/// What a receipt made, for messages.
fn subject(r: &TableReceipt) -> String {
    format!("fault {}'s nft table inet {}", r.fault_id, r.table)
}

/// Inject, inside the receipt's namespace: one atomic batch that (re)creates the whole
/// table.
pub(crate) fn inject(r: &TableReceipt, t: &Targeting, dirs: &[Dir], tail: &[Expr]) -> Result<()> {
    match place::within(r.netns.as_ref(), &subject(r), || {
        inject_here(r, t, dirs, tail)
    })? {
        Reached::Done(()) => Ok(()),
        Reached::Gone(why) => Err(Error::new(ErrorKind::NotFound, why)),
    }
}

fn inject_here(r: &TableReceipt, t: &Targeting, dirs: &[Dir], tail: &[Expr]) -> Result<()> {
    let t = &t.with_resolved(&r.hosts)?;
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
    let uses_numgen = tail.iter().any(|x| matches!(x, Expr::NumgenRandom(_)));
    with_socket(|sock| nft::send_batch(sock, msgs))?.map_err(|e| {
        let missing = e.errno == libc::ENOENT;
        let err = e.into_error(format!("create nft table inet {}", r.table));
        if !missing {
            return err;
        }
        // The batch is all or nothing: a kernel without a feature of the rule adds nothing.
        let needs = if uses_numgen {
            "the random drop's `numgen` expression (Linux 4.9+, CONFIG_NFT_NUMGEN;              use mechanism = \"netem\" on older kernels)"
        } else {
            "the inet family (Linux 3.14+) and the payload, meta, cmp, counter and \
             immediate expressions"
        };
        Error::new(
            ErrorKind::Unsupported,
            format!("{err}: this kernel lacks an nf_tables feature the rule needs: {needs}; nothing was added"),
        )
    })
}

fn rebooted(r: &TableReceipt) -> bool {
    !r.boot_id.is_empty() && r.boot_id != fault_core::host::boot_id()
}

/// Revert, inside the receipt's namespace: `delete table`; a missing table there is
/// success.
pub(crate) fn revert(r: &TableReceipt) -> Result<()> {
    if rebooted(r) {
        return Ok(());
    }
    match place::within(r.netns.as_ref(), &subject(r), || revert_here(r))? {
        Reached::Done(()) | Reached::Gone(_) => Ok(()),
    }
}

fn revert_here(r: &TableReceipt) -> Result<()> {
    match with_socket(|sock| nft::send_batch(sock, vec![nft::del_table(&r.table)]))? {
        Ok(()) => Ok(()),
        Err(e) if e.errno == libc::ENOENT => Ok(()),
        Err(e) => Err(e.into_error(format!("delete nft table inet {}", r.table))),
    }
}

/// Verify, inside the receipt's namespace: read the table, its chains and its rules back.
pub(crate) fn verify(r: &TableReceipt) -> Result<Observation> {
    if rebooted(r) {
        return Ok(Observation::clean(
            "the host rebooted since the fault was planned; nft tables do not survive a reboot",
        ));
    }
    match place::within(r.netns.as_ref(), &subject(r), || verify_here(r))? {
        Reached::Done(o) => Ok(o),
        Reached::Gone(why) => Ok(Observation::clean(why)),
    }
}

fn verify_here(r: &TableReceipt) -> Result<Observation> {
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
            "nft table inet {} does not exist in {}",
            r.table,
            place::show(r.netns.as_ref())
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

/// The `nft` command that undoes the fault by hand, each word shell-quoted, run inside
/// the receipt's namespace.
pub(crate) fn manual_undo(r: &TableReceipt) -> Vec<String> {
    let mut out: Vec<String> = place::legacy_note(r.netns.as_ref()).into_iter().collect();
    let mut argv = place::prefix(r.netns.as_ref());
    argv.extend(["nft", "delete", "table", "inet"].map(String::from));
    argv.push(r.table.clone());
    out.push(shell::join(&argv));
    out
}

/// Host objects an nft receipt acts on: its own table only. Tables of different faults
/// (and a qdisc fault on the same interface) compose, so they do not conflict.
pub(crate) fn targets(r: &TableReceipt) -> Vec<String> {
    vec![format!("nft:inet {}", r.table)]
}

/// The blast radius for people: each interface with its namespace and what happens to
/// which traffic, and the table that does it.
pub(crate) fn touches(r: &TableReceipt) -> Vec<String> {
    let ns = place::show(r.netns.as_ref());
    let effect = if r.effect.is_empty() {
        r.mechanism.clone()
    } else {
        r.effect.clone()
    };
    let traffic = if r.traffic.is_empty() {
        String::new()
    } else {
        format!(" {}", r.traffic)
    };
    let mut out: Vec<String> = if r.interfaces.is_empty() {
        vec![format!(
            "nft table inet {} in {ns}: {effect}{traffic}",
            r.table
        )]
    } else {
        r.interfaces
            .iter()
            .map(|i| {
                format!(
                    "interface {} (index {}) in {ns}: {effect}{traffic} (nft table inet {})",
                    i.name, i.ifindex, r.table
                )
            })
            .collect()
    };
    out.extend(crate::target::host_lines(&r.hosts));
    out
}

/// Check a journaled receipt against the fault id it is filed under: the table revert
/// deletes is the one that id derives.
pub(crate) fn check(fault_id: &str, r: &TableReceipt) -> Result<()> {
    let want = nft::table_name(fault_id);
    let refuse = |what: String| {
        Err(Error::new(
            ErrorKind::Drifted,
            format!("receipt filed under fault {fault_id} {what}; refusing to act on it"),
        ))
    };
    if r.fault_id != fault_id {
        return refuse(format!("was made for fault {}", r.fault_id));
    }
    if r.table != want {
        return refuse(format!(
            "names nft table inet {:?}, but that fault's table is inet {want}",
            r.table
        ));
    }
    Ok(())
}

/// Which kind a table of ours belongs to: a random-drop rule (`numgen`) is
/// `network.loss`'s fallback, anything else `network.blackhole`.
fn owner(uses_numgen: bool) -> &'static str {
    if uses_numgen {
        "network.loss"
    } else {
        "network.blackhole"
    }
}

/// Our tables in every reachable network namespace named after a fault id in `known` and
/// belonging to kind `kind` (see [`owner`]), each with a receipt that deletes it.
pub(crate) fn leftovers(known: &[String], kind: &str) -> Result<Vec<Leftover<TableReceipt>>> {
    if known.is_empty() {
        return Ok(Vec::new());
    }
    let boot_id = fault_core::host::boot_id();
    crate::scan::each_namespace(|ns, shown| {
        let found = with_socket(|sock| {
            let tables = match nft::tables(sock) {
                Ok(t) => t,
                Err(e) if matches!(e.errno, libc::EPROTONOSUPPORT | libc::EOPNOTSUPP) => {
                    return Ok(Vec::new())
                }
                Err(e) => return Err(e),
            };
            let mut out = Vec::new();
            for id in known {
                let table = nft::table_name(id);
                if !tables.contains(&table) {
                    continue;
                }
                let chains = nft::chains(sock, &table)?;
                let (rules, numgen) = nft::rule_summary(sock, &table)?;
                out.push((id.clone(), table, chains, rules, numgen));
            }
            Ok(out)
        })?
        .map_err(|e| e.into_error(format!("list nft tables in {ns}")))?;
        Ok(found
            .into_iter()
            .filter(|f| owner(f.4) == kind)
            .map(|(id, table, chains, rules, _)| Leftover {
                fault_id: id.clone(),
                found: format!("nft table inet {table} of fault {id} in {ns} ({shown})"),
                receipt: TableReceipt {
                    fault_id: id,
                    boot_id: boot_id.clone(),
                    netns: Some(ns.clone()),
                    table,
                    interfaces: Vec::new(),
                    chains,
                    rules,
                    mechanism: "nftables (found by recovery)".into(),
                    effect: String::new(),
                    traffic: String::new(),
                    hosts: Vec::new(),
                },
            })
            .collect())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fault_core::host::ns::NsKind;

    fn receipt(fault_id: &str, name: &str, netns: Option<NsId>) -> TableReceipt {
        TableReceipt {
            fault_id: fault_id.into(),
            boot_id: fault_core::host::boot_id(),
            netns,
            table: nft::table_name(fault_id),
            interfaces: vec![Interface {
                name: name.into(),
                ifindex: 5,
            }],
            chains: vec!["egress".into()],
            rules: 1,
            mechanism: "nftables drop".into(),
            effect: "drop egress".into(),
            traffic: "traffic to 10.0.0.0/24 port 80".into(),
            hosts: Vec::new(),
        }
    }

    #[test]
    fn check_receipt_refuses_a_table_it_did_not_derive() {
        let id = "ab12-1-2";
        let good = receipt(id, "eth0", Some(place::here().unwrap()));
        check(id, &good).unwrap();
        let mut edited = serde_json::to_value(&good).unwrap();
        edited["table"] = serde_json::json!("filter");
        let edited: TableReceipt = serde_json::from_value(edited).unwrap();
        let e = check(id, &edited).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Drifted);
        assert!(e.to_string().contains("\"filter\""), "{e}");
        let e = check("ab12-1-3", &good).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Drifted);
    }

    #[test]
    fn manual_undo_and_touches() {
        let here = place::here().unwrap();
        let r = receipt("ab12-1-2", "q;id", Some(here.clone()));
        assert_eq!(
            manual_undo(&r),
            vec!["nft delete table inet chaos_ab12_1_2_d1209a84".to_string()]
        );
        assert_eq!(
            touches(&r),
            vec![format!(
                "interface q;id (index 5) in net:[{}]: drop egress traffic to 10.0.0.0/24 port 80 (nft table inet chaos_ab12_1_2_d1209a84)",
                here.ino
            )]
        );
        let far = NsId {
            kind: NsKind::Net,
            dev: 4,
            ino: 1,
            cookie: None,
        };
        let undo = manual_undo(&receipt("ab12-1-2", "eth0", Some(far)));
        assert_eq!(
            undo,
            vec!["nsenter '--net=/proc/PID-IN-net:[1]/ns/net' nft delete table inet chaos_ab12_1_2_d1209a84".to_string()]
        );
    }

    #[test]
    fn receipts_of_older_versions_deserialize_and_are_refused() {
        let mut v = serde_json::to_value(receipt("ab12-1-2", "eth0", None)).unwrap();
        for k in ["netns", "effect", "traffic"] {
            v.as_object_mut().unwrap().remove(k);
        }
        let old: TableReceipt = serde_json::from_value(v).unwrap();
        let e = revert(&old).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
        assert_eq!(manual_undo(&old).len(), 2);
    }
}
