//! Network namespaces against the real kernel: receipts act inside the namespace they were
//! planned in, from wherever they are used; interfaces are matched by name and index;
//! leftovers are found in every reachable namespace. Each test creates its own namespaces
//! (random names) and deletes them. Run as root with `--features privileged-tests`.

#![cfg(feature = "privileged-tests")]

mod common;

use common::netns::{in_ns, run, Pair};
use fault_core::host::ns::{NsId, NsKind};
use fault_core::require_root;
use fault_core::{Context, Effect, ErrorKind, Fault, Registry};
use fault_network::*;

fn cx() -> Context {
    Context::new(format!("t{}", fault_core::host::random_hex(4)), "run-test")
}

fn spec<S: serde::de::DeserializeOwned>(v: serde_json::Value) -> S {
    serde_json::from_value(v).expect("spec")
}

fn inject<F: Fault + Clone>(ns: &str, f: &F, cx: &Context) -> F::Receipt {
    let (f, cx) = (f.clone(), cx.clone());
    in_ns(ns, move || {
        let mut r = f.plan(&cx).expect("plan");
        f.inject(&cx, &mut r).expect("inject");
        r
    })
}

/// Root qdisc of `dev` and the nft tables of namespace `ns`, as the CLI tools show them.
fn state(ns: &str, dev: &str) -> String {
    let q = run(&["ip", "netns", "exec", ns, "tc", "qdisc", "show", "dev", dev]);
    let t = run(&["ip", "netns", "exec", ns, "nft", "list", "tables"]);
    format!("{q}{t}")
}

fn registry() -> Registry {
    let mut reg = Registry::new();
    register(&mut reg);
    reg
}

#[test]
fn revert_from_another_namespace_acts_inside_the_recorded_one() {
    require_root!();
    let p = Pair::new();
    run(&[
        "ip", "netns", "exec", &p.ns_a, "tc", "qdisc", "add", "dev", &p.if_a, "root", "handle",
        "7:", "tbf", "rate", "300mbit", "burst", "64kb", "limit", "1mb",
    ]);
    let (before_a, before_b) = (state(&p.ns_a, &p.if_a), state(&p.ns_b, &p.if_b));
    let rate = RateLimit::new(spec(
        serde_json::json!({"rate": "8mbit", "interface": p.if_a, "ports": [80]}),
    ))
    .unwrap();
    let hole = Blackhole::new(spec(serde_json::json!({"interface": p.if_a}))).unwrap();
    let (c1, c2) = (cx(), cx());
    let r1 = inject(&p.ns_a, &rate, &c1);
    let r2 = inject(&p.ns_a, &hole, &c2);
    let ns_a = in_ns(&p.ns_a, || NsId::current(NsKind::Net).unwrap());
    assert_eq!(r1.netns.as_ref(), Some(&ns_a));
    assert_eq!(r2.netns.as_ref(), Some(&ns_a));
    let touched = RateLimit::touches(&r1);
    assert!(
        touched[0].starts_with(&format!("interface {} (index ", p.if_a))
            && touched[0].contains(&format!("in {ns_a}: egress rate 8 Mbit/s"))
            && touched[0].contains("on traffic port 80;"),
        "{touched:?}"
    );
    assert_ne!(state(&p.ns_a, &p.if_a), before_a);

    // Only the JSON survives; the process doing the revert is in namespace b.
    let jobs = [
        (
            "network.rate",
            c1.fault_id.clone(),
            serde_json::to_value(&r1).unwrap(),
        ),
        (
            "network.blackhole",
            c2.fault_id.clone(),
            serde_json::to_value(&r2).unwrap(),
        ),
    ];
    let run_a = format!("/run/netns/{}", p.ns_a);
    in_ns(&p.ns_b, move || {
        let reg = registry();
        for (kind, id, json) in jobs {
            let text = serde_json::to_string(&json).unwrap();
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            reg.check_receipt(kind, &id, &v).unwrap();
            let o = reg.verify(kind, &v).unwrap();
            assert_eq!(o.effect, Effect::InEffect, "{kind}: {}", o.detail);
            let undo = reg.manual_undo(kind, &v).unwrap();
            assert!(
                undo.iter()
                    .all(|c| c.starts_with(&format!("nsenter --net={run_a} "))),
                "{undo:?}"
            );
            reg.revert(kind, &v).unwrap();
            reg.revert(kind, &v).unwrap();
            let o = reg.verify(kind, &v).unwrap();
            assert_eq!(o.effect, Effect::Clean, "{kind}: {}", o.detail);
        }
    });
    assert_eq!(state(&p.ns_a, &p.if_a), before_a, "a is not as before");
    assert_eq!(state(&p.ns_b, &p.if_b), before_b, "b was touched");
}

#[test]
fn a_renamed_interface_is_drifted_and_left_alone() {
    require_root!();
    let p = Pair::new();
    let before = state(&p.ns_a, &p.if_a);
    let f = RateLimit::new(spec(
        serde_json::json!({"rate": "8mbit", "interface": p.if_a}),
    ))
    .unwrap();
    let r = inject(&p.ns_a, &f, &cx());
    let renamed = format!("{}r", &p.if_a[..p.if_a.len().min(14)]);
    let rename = |from: &str, to: &str| {
        run(&["ip", "-n", &p.ns_a, "link", "set", "dev", from, "down"]);
        run(&["ip", "-n", &p.ns_a, "link", "set", "dev", from, "name", to]);
        run(&["ip", "-n", &p.ns_a, "link", "set", "dev", to, "up"]);
    };
    rename(&p.if_a, &renamed);
    let r2 = r.clone();
    let err = in_ns(&p.ns_a, move || RateLimit::revert(&r2).unwrap_err());
    assert_eq!(err.kind(), ErrorKind::Drifted, "{err}");
    assert!(
        err.to_string().contains(&format!("now named {renamed}")),
        "{err}"
    );
    let q = run(&[
        "ip", "netns", "exec", &p.ns_a, "tc", "qdisc", "show", "dev", &renamed,
    ]);
    assert!(
        q.contains("htb"),
        "revert touched the renamed interface: {q}"
    );
    rename(&renamed, &p.if_a);
    let r2 = r.clone();
    in_ns(&p.ns_a, move || RateLimit::revert(&r2).unwrap());
    assert_eq!(state(&p.ns_a, &p.if_a), before);
}

#[test]
fn a_gone_interface_took_its_qdiscs_with_it() {
    require_root!();
    let p = Pair::new();
    let f = RateLimit::new(spec(
        serde_json::json!({"rate": "8mbit", "interface": p.if_a}),
    ))
    .unwrap();
    let r = inject(&p.ns_a, &f, &cx());
    run(&["ip", "-n", &p.ns_a, "link", "del", &p.if_a]);
    // A newer interface of the same name (another index): not ours, never touched.
    let peer = format!("{}p", p.if_a);
    run(&[
        "ip", "-n", &p.ns_a, "link", "add", &p.if_a, "type", "veth", "peer", "name", &peer,
    ]);
    let newer = state(&p.ns_a, &p.if_a);
    let o = in_ns(&p.ns_a, move || {
        RateLimit::revert(&r).unwrap();
        RateLimit::verify(&r).unwrap()
    });
    assert_eq!(o.effect, Effect::Clean, "{}", o.detail);
    assert!(o.detail.contains("interface is gone"), "{}", o.detail);
    assert!(o.detail.contains("a newer"), "{}", o.detail);
    assert_eq!(state(&p.ns_a, &p.if_a), newer);
}

#[test]
fn leftovers_are_found_in_another_namespace_and_removed() {
    require_root!();
    let p = Pair::new();
    let before_a = state(&p.ns_a, &p.if_a);
    let (cr, cb, cl, cx_other) = (cx(), cx(), cx(), cx());
    let rate = RateLimit::new(spec(
        serde_json::json!({"rate": "8mbit", "interface": p.if_a}),
    ))
    .unwrap();
    let hole =
        Blackhole::new(spec(serde_json::json!({"interface": p.if_a, "ports": [9]}))).unwrap();
    let loss = Loss::new(spec(serde_json::json!({
        "interface": p.if_a, "percent": 10, "mechanism": "nftables"
    })))
    .unwrap();
    let rr = inject(&p.ns_a, &rate, &cr);
    inject(&p.ns_a, &hole, &cb);
    inject(&p.ns_a, &loss, &cl);
    // In b: a table of a fault id nobody asks about, and a root qdisc with the handle of a
    // known fault id that chaos-agent did not make (no mark): neither may be claimed.
    let other = Blackhole::new(spec(serde_json::json!({"interface": p.if_b}))).unwrap();
    inject(&p.ns_b, &other, &cx_other);
    let h = rr.interfaces[0].root >> 16;
    run(&[
        "ip",
        "netns",
        "exec",
        &p.ns_b,
        "tc",
        "qdisc",
        "add",
        "dev",
        &p.if_b,
        "root",
        "handle",
        &format!("{h:x}:"),
        "htb",
    ]);
    let before_b = state(&p.ns_b, &p.if_b);
    // The journal is lost: only the fault ids are known.
    drop(rr);
    let known = vec![
        cr.fault_id.clone(),
        cb.fault_id.clone(),
        cl.fault_id.clone(),
        "never-planned-1-1".to_string(),
    ];
    let ns_a = in_ns(&p.ns_a, || NsId::current(NsKind::Net).unwrap());
    let where_a = format!("/run/netns/{}", p.ns_a);

    let found = RateLimit::leftovers(&known).unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    let l = &found[0];
    assert_eq!(l.fault_id, cr.fault_id);
    assert_eq!(l.receipt.netns.as_ref(), Some(&ns_a));
    assert_eq!(l.receipt.interfaces[0].name, p.if_a);
    assert!(
        l.found.contains(&where_a) && l.found.contains("unknown"),
        "{}",
        l.found
    );
    RateLimit::check_receipt(&l.fault_id, &l.receipt).unwrap();
    RateLimit::revert(&l.receipt).unwrap();
    assert_eq!(RateLimit::verify(&l.receipt).unwrap().effect, Effect::Clean);

    let found = Blackhole::leftovers(&known).unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].fault_id, cb.fault_id);
    assert!(found[0].found.contains(&where_a), "{}", found[0].found);
    Blackhole::check_receipt(&cb.fault_id, &found[0].receipt).unwrap();
    Blackhole::revert(&found[0].receipt).unwrap();
    assert_eq!(
        Blackhole::verify(&found[0].receipt).unwrap().effect,
        Effect::Clean
    );

    let found = Loss::leftovers(&known).unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].fault_id, cl.fault_id);
    assert!(matches!(found[0].receipt, LossReceipt::Nftables(_)));
    Loss::check_receipt(&cl.fault_id, &found[0].receipt).unwrap();
    Loss::revert(&found[0].receipt).unwrap();
    assert_eq!(
        Loss::verify(&found[0].receipt).unwrap().effect,
        Effect::Clean
    );

    assert!(Latency::leftovers(&known).unwrap().is_empty());
    for found in [
        RateLimit::leftovers(&known).unwrap().len(),
        Blackhole::leftovers(&known).unwrap().len(),
        Loss::leftovers(&known).unwrap().len(),
    ] {
        assert_eq!(found, 0);
    }
    assert_eq!(state(&p.ns_a, &p.if_a), before_a, "a is not clean");
    assert_eq!(state(&p.ns_b, &p.if_b), before_b, "b was touched");
    assert!(Blackhole::leftovers(&[]).unwrap().is_empty());
}

/// The netfilter socket is kept only for the process's own namespace: a socket kept for a
/// namespace a thread entered would pin it, and with it its interfaces, after everyone
/// else let go. Here namespace a, once deleted, must really go away, taking the veth pair
/// (and so b's end) with it.
#[test]
fn entered_namespaces_are_not_pinned_by_a_kept_socket() {
    require_root!();
    let p = Pair::new();
    let f = Blackhole::new(spec(serde_json::json!({"interface": p.if_a}))).unwrap();
    let r = inject(&p.ns_a, &f, &cx());
    assert_eq!(
        in_ns(&p.ns_a, {
            let r = r.clone();
            move || Blackhole::verify(&r).unwrap().effect
        }),
        Effect::InEffect
    );
    // Revert from the test's own namespace, through `enter`.
    Blackhole::revert(&r).unwrap();
    assert_eq!(Blackhole::verify(&r).unwrap().effect, Effect::Clean);
    run(&["ip", "netns", "del", &p.ns_a]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let links = run(&["ip", "-n", &p.ns_b, "-o", "link", "show"]);
        if !links.contains(&p.if_b) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "namespace a is still alive (its veth end {} is still in b)",
            p.if_b
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
