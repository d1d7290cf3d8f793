//! Reading a qdisc fault back: verify, manual undo, what it targets and touches, receipt
//! checks and leftovers (the tree itself is built and torn down in the parent module).

use super::*;

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
