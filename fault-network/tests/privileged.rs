//! Real-kernel tests. Each creates its own network namespaces and veth pair (random names),
//! runs the fault on a thread that entered namespace `a`, measures real traffic, and
//! deletes everything. Run as root with `--features privileged-tests`.

#![cfg(feature = "privileged-tests")]

mod common;

use std::time::Duration;

use common::netns::{in_ns, run, Pair, IP_A, IP_B, IP_B2};
use common::traffic::{tcp_throughput, udp_delivered};
use fault_core::require_root;
use fault_core::{Context, Effect, ErrorKind, Fault, Registry};
use fault_network::*;

fn cx() -> Context {
    Context::new(format!("t{}", fault_core::host::random_hex(4)), "run-test")
}

fn spec<S: serde::de::DeserializeOwned>(v: serde_json::Value) -> S {
    serde_json::from_value(v).expect("spec")
}

/// Plan + inject on a thread inside `ns`; returns the receipt.
fn inject<F: Fault + Clone>(ns: &str, f: &F, cx: &Context) -> F::Receipt {
    let (f, cx) = (f.clone(), cx.clone());
    in_ns(ns, move || {
        let mut r = f.plan(&cx).expect("plan");
        f.inject(&cx, &mut r).expect("inject");
        r
    })
}

fn verify<F: Fault>(ns: &str, r: &F::Receipt) -> fault_core::Observation {
    let r = r.clone();
    in_ns(ns, move || F::verify(&r).expect("verify"))
}

fn revert<F: Fault>(ns: &str, r: &F::Receipt) {
    let r = r.clone();
    in_ns(ns, move || F::revert(&r).expect("revert"))
}

fn within(measured: f64, want: f64, tol: f64) -> bool {
    (measured - want).abs() <= want * tol
}

/// tbf counts whole Ethernet frames; the receiver counts TCP payload. With 1500-byte MTU
/// and timestamps, 1448 payload bytes travel in 1514 bytes on the wire.
const GOODPUT_8MBIT: f64 = 8e6 * 1448.0 / 1514.0;

#[test]
fn rate_limits_whole_interface_then_revert_restores_full_speed() {
    require_root!();
    let p = Pair::new();
    let before = p.qdiscs_a();
    let f = RateLimit::new(spec(
        serde_json::json!({"rate": "8mbit", "interface": p.if_a}),
    ))
    .unwrap();
    let cx = cx();
    let r = inject(&p.ns_a, &f, &cx);
    assert_eq!(verify::<RateLimit>(&p.ns_a, &r).effect, Effect::InEffect);
    // Inject twice = once.
    let (f2, cx2, mut r2) = (f.clone(), cx.clone(), r.clone());
    in_ns(&p.ns_a, move || {
        f2.inject(&cx2, &mut r2).expect("second inject")
    });
    let v = verify::<RateLimit>(&p.ns_a, &r);
    assert_eq!(v.effect, Effect::InEffect, "{}", v.detail);

    let bps = tcp_throughput(&p.ns_a, &p.ns_b, IP_B, 5201, Duration::from_secs(3));
    eprintln!(
        "network.rate 8mbit whole interface: measured {:.3} Mbit/s",
        bps / 1e6
    );
    assert!(
        within(bps, GOODPUT_8MBIT, 0.10),
        "throughput {bps} not within 10% of 8 Mbit/s"
    );

    revert::<RateLimit>(&p.ns_a, &r);
    revert::<RateLimit>(&p.ns_a, &r); // idempotent
    let v = verify::<RateLimit>(&p.ns_a, &r);
    assert_eq!(v.effect, Effect::Clean, "{}", v.detail);
    assert_eq!(p.qdiscs_a(), before);
    let bps = tcp_throughput(&p.ns_a, &p.ns_b, IP_B, 5202, Duration::from_secs(1));
    eprintln!("after revert: {:.0} Mbit/s", bps / 1e6);
    assert!(bps > 40e6, "after revert throughput is only {bps}");
}

#[test]
fn targeted_rate_limit_shapes_only_the_targeted_port_and_destination() {
    require_root!();
    let p = Pair::new();
    let f = RateLimit::new(spec(serde_json::json!({
        "rate": "8mbit", "interface": p.if_a, "destinations": ["10.77.0.2/32"], "ports": [5201], "protocol": "tcp"
    })))
    .unwrap();
    let cx = cx();
    let r = inject(&p.ns_a, &f, &cx);
    assert_eq!(r.filters, 1);
    let v = verify::<RateLimit>(&p.ns_a, &r);
    assert_eq!(v.effect, Effect::InEffect, "{}", v.detail);
    let shaped = tcp_throughput(&p.ns_a, &p.ns_b, IP_B, 5201, Duration::from_secs(3));
    let other_port = tcp_throughput(&p.ns_a, &p.ns_b, IP_B, 5202, Duration::from_secs(1));
    let other_dst = tcp_throughput(&p.ns_a, &p.ns_b, IP_B2, 5201, Duration::from_secs(1));
    eprintln!(
        "targeted network.rate 8mbit: port 5201 {:.3} Mbit/s, port 5202 {:.0} Mbit/s, other destination {:.0} Mbit/s",
        shaped / 1e6,
        other_port / 1e6,
        other_dst / 1e6
    );
    assert!(
        within(shaped, GOODPUT_8MBIT, 0.10),
        "targeted flow {shaped}"
    );
    assert!(
        other_port > 40e6,
        "untargeted port was shaped: {other_port}"
    );
    assert!(
        other_dst > 40e6,
        "untargeted destination was shaped: {other_dst}"
    );
    revert::<RateLimit>(&p.ns_a, &r);
    assert_eq!(verify::<RateLimit>(&p.ns_a, &r).effect, Effect::Clean);
}

#[test]
fn rate_with_exclusion_leaves_excluded_destination_unshaped() {
    require_root!();
    let p = Pair::new();
    let f = RateLimit::new(spec(serde_json::json!({
        "rate": "8mbit", "interface": p.if_a, "exclude_destinations": ["10.77.0.3"]
    })))
    .unwrap();
    let r = inject(&p.ns_a, &f, &cx());
    let shaped = tcp_throughput(&p.ns_a, &p.ns_b, IP_B, 5201, Duration::from_secs(2));
    let excluded = tcp_throughput(&p.ns_a, &p.ns_b, IP_B2, 5201, Duration::from_secs(1));
    eprintln!(
        "rate with exclusion: shaped {:.3} Mbit/s, excluded {:.0} Mbit/s",
        shaped / 1e6,
        excluded / 1e6
    );
    assert!(within(shaped, GOODPUT_8MBIT, 0.10), "{shaped}");
    assert!(excluded > 40e6, "{excluded}");
    revert::<RateLimit>(&p.ns_a, &r);
}

#[test]
fn prior_tbf_root_qdisc_is_restored_exactly() {
    require_root!();
    let p = Pair::new();
    run(&[
        "ip", "netns", "exec", &p.ns_a, "tc", "qdisc", "add", "dev", &p.if_a, "root", "handle",
        "7:", "tbf", "rate", "300mbit", "burst", "64kb", "limit", "1mb",
    ]);
    let before = p.qdiscs_a();
    assert!(before.contains("tbf 7:"), "{before}");
    let f = RateLimit::new(spec(
        serde_json::json!({"rate": "8mbit", "interface": p.if_a}),
    ))
    .unwrap();
    let r = inject(&p.ns_a, &f, &cx());
    assert!(!r.interfaces[0].prior.is_default());
    assert!(p.qdiscs_a().contains("htb"), "{}", p.qdiscs_a());
    // A second qdisc fault on the same interface is refused.
    let (f2, cx2) = (f.clone(), cx());
    let err = in_ns(&p.ns_a, move || f2.plan(&cx2).unwrap_err());
    assert_eq!(err.kind(), ErrorKind::Busy, "{err}");
    assert!(
        err.to_string().contains("already carries a chaos-agent"),
        "{err}"
    );

    revert::<RateLimit>(&p.ns_a, &r);
    assert_eq!(p.qdiscs_a(), before, "root qdisc not restored exactly");
    let v = verify::<RateLimit>(&p.ns_a, &r);
    assert_eq!(v.effect, Effect::Clean, "{}", v.detail);
    revert::<RateLimit>(&p.ns_a, &r);
    assert_eq!(p.qdiscs_a(), before);
}

#[test]
fn foreign_classful_root_qdisc_is_refused_at_plan() {
    require_root!();
    let p = Pair::new();
    run(&[
        "ip", "netns", "exec", &p.ns_a, "tc", "qdisc", "add", "dev", &p.if_a, "root", "handle",
        "1:", "htb",
    ]);
    let f = RateLimit::new(spec(
        serde_json::json!({"rate": "8mbit", "interface": p.if_a}),
    ))
    .unwrap();
    let c = cx();
    let err = in_ns(&p.ns_a, move || f.plan(&c).unwrap_err());
    assert_eq!(err.kind(), ErrorKind::Busy, "{err}");
    assert!(err.to_string().contains("refusing to replace"), "{err}");
}

#[test]
fn plan_refuses_a_missing_interface() {
    require_root!();
    let p = Pair::new();
    let f = RateLimit::new(spec(
        serde_json::json!({"rate": "8mbit", "interface": "nosuchif0"}),
    ))
    .unwrap();
    let c = cx();
    let err = in_ns(&p.ns_a, move || f.plan(&c).unwrap_err());
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
}

#[test]
fn default_interface_is_the_default_route_interface() {
    require_root!();
    let p = Pair::new();
    let f = RateLimit::new(spec(serde_json::json!({"rate": "8mbit"}))).unwrap();
    let c = cx();
    let r = in_ns(&p.ns_a, move || f.plan(&c).unwrap());
    assert_eq!(r.interfaces[0].name, p.if_a);
}

#[test]
fn revert_from_json_round_tripped_receipt_through_the_registry() {
    require_root!();
    let p = Pair::new();
    let before = p.qdiscs_a();
    let mut reg = Registry::new();
    register(&mut reg);
    let c = cx();
    let spec = serde_json::json!({"rate": "8mbit", "interface": p.if_a, "ports": [5201]});
    let json = in_ns(&p.ns_a, move || {
        let mut reg = Registry::new();
        register(&mut reg);
        let f = reg.build("network.rate", &spec).unwrap();
        let mut r = f.plan(&c).unwrap();
        f.inject(&c, &mut r).unwrap();
        serde_json::to_string(&r).unwrap()
    });
    assert_ne!(p.qdiscs_a(), before);
    // A "fresh process": only the JSON text survives.
    let json2 = json.clone();
    in_ns(&p.ns_a, move || {
        let mut reg = Registry::new();
        register(&mut reg);
        let v: serde_json::Value = serde_json::from_str(&json2).unwrap();
        assert_eq!(
            reg.verify("network.rate", &v).unwrap().effect,
            Effect::InEffect
        );
        reg.revert("network.rate", &v).unwrap();
        reg.revert("network.rate", &v).unwrap();
        assert_eq!(
            reg.verify("network.rate", &v).unwrap().effect,
            Effect::Clean
        );
        assert!(reg.manual_undo("network.rate", &v).unwrap()[0].starts_with("tc qdisc del dev"));
    });
    assert_eq!(p.qdiscs_a(), before);
    let _ = reg;
}

#[test]
fn blackhole_drops_targeted_traffic_and_spares_excluded_destination() {
    require_root!();
    let p = Pair::new();
    let f = Blackhole::new(spec(serde_json::json!({
        "interface": p.if_a, "destinations": ["10.77.0.0/24"], "exclude_destinations": ["10.77.0.3"],
        "protocol": "udp", "direction": "egress"
    })))
    .unwrap();
    let c = cx();
    let r = inject(&p.ns_a, &f, &c);
    assert_eq!(verify::<Blackhole>(&p.ns_a, &r).effect, Effect::InEffect);
    let (f2, c2, mut r2) = (f.clone(), c.clone(), r.clone());
    in_ns(&p.ns_a, move || f2.inject(&c2, &mut r2).unwrap()); // idempotent
    let v = verify::<Blackhole>(&p.ns_a, &r);
    assert_eq!(v.effect, Effect::InEffect, "{}", v.detail);
    let listing = run(&[
        "ip", "netns", "exec", &p.ns_a, "nft", "list", "table", "inet", &r.table,
    ]);
    assert!(listing.contains("ip daddr 10.77.0.3 accept"), "{listing}");

    let dropped = udp_delivered(&p.ns_a, &p.ns_b, IP_B, 9000, 300);
    let spared = udp_delivered(&p.ns_a, &p.ns_b, IP_B2, 9000, 300);
    eprintln!("blackhole: targeted {dropped}/300 delivered, excluded {spared}/300 delivered");
    assert_eq!(dropped, 0);
    assert_eq!(spared, 300);

    revert::<Blackhole>(&p.ns_a, &r);
    revert::<Blackhole>(&p.ns_a, &r);
    assert_eq!(verify::<Blackhole>(&p.ns_a, &r).effect, Effect::Clean);
    assert_eq!(udp_delivered(&p.ns_a, &p.ns_b, IP_B, 9000, 300), 300);
}

#[test]
fn blackhole_ingress_drops_arriving_traffic_from_the_remote() {
    require_root!();
    let p = Pair::new();
    let f = Blackhole::new(spec(serde_json::json!({
        "interface": p.if_b, "destinations": ["10.77.0.1"], "direction": "ingress"
    })))
    .unwrap();
    let r = inject(&p.ns_b, &f, &cx());
    assert_eq!(udp_delivered(&p.ns_a, &p.ns_b, IP_B, 9001, 200), 0);
    revert::<Blackhole>(&p.ns_b, &r);
    assert_eq!(udp_delivered(&p.ns_a, &p.ns_b, IP_B, 9001, 200), 200);
    let _ = IP_A;
}

#[test]
fn loss_drops_about_the_requested_share_and_spares_excluded() {
    require_root!();
    let p = Pair::new();
    let f = Loss::new(spec(serde_json::json!({
        "interface": p.if_a, "percent": 30, "exclude_destinations": ["10.77.0.3"]
    })))
    .unwrap();
    let r = inject(&p.ns_a, &f, &cx());
    let mech = match &r {
        LossReceipt::Netem(_) => "netem",
        LossReceipt::Nftables(_) => "nftables",
    };
    let v = verify::<Loss>(&p.ns_a, &r);
    assert_eq!(v.effect, Effect::InEffect, "{}", v.detail);
    let n = 4000;
    let got = udp_delivered(&p.ns_a, &p.ns_b, IP_B, 9002, n);
    let loss = 100.0 * (n - got) as f64 / n as f64;
    let spared = udp_delivered(&p.ns_a, &p.ns_b, IP_B2, 9002, 500);
    eprintln!("network.loss 30% via {mech}: measured {loss:.2}% loss over {n} datagrams; excluded {spared}/500; verify: {}", v.detail);
    // Binomial sd at n=4000 is 0.72 points; allow 5 sd.
    assert!((loss - 30.0).abs() < 3.6, "loss {loss}%");
    assert_eq!(spared, 500);
    revert::<Loss>(&p.ns_a, &r);
    revert::<Loss>(&p.ns_a, &r);
    assert_eq!(verify::<Loss>(&p.ns_a, &r).effect, Effect::Clean);
    assert_eq!(udp_delivered(&p.ns_a, &p.ns_b, IP_B, 9002, 500), 500);
}

#[test]
fn loss_nftables_mechanism_round_trips_through_json() {
    require_root!();
    let p = Pair::new();
    let f = Loss::new(spec(serde_json::json!({"interface": p.if_a, "percent": 50, "mechanism": "nftables", "ports": [9003]}))).unwrap();
    let r = inject(&p.ns_a, &f, &cx());
    let json = serde_json::to_string(&r).unwrap();
    assert!(json.contains("\"backend\":\"nftables\""), "{json}");
    let back: LossReceipt = serde_json::from_str(&json).unwrap();
    let got = udp_delivered(&p.ns_a, &p.ns_b, IP_B, 9003, 2000);
    assert!(
        (800..1200).contains(&got),
        "{got} of 2000 delivered at 50% loss"
    );
    assert_eq!(
        udp_delivered(&p.ns_a, &p.ns_b, IP_B, 9004, 300),
        300,
        "untargeted port"
    );
    revert::<Loss>(&p.ns_a, &back);
    assert_eq!(verify::<Loss>(&p.ns_a, &back).effect, Effect::Clean);
}

/// The netem kinds: where the kernel has no netem, plan must fail with the clear message
/// before changing anything; elsewhere inject/verify/revert run for real.
fn netem_kind<F: Fault + Clone>(name: &str, f: F, p: &Pair) -> Option<F::Receipt> {
    let before = p.qdiscs_a();
    let c = cx();
    let f2 = f.clone();
    let planned = in_ns(&p.ns_a, move || {
        f2.plan(&c).map_err(|e| (e.kind(), e.to_string()))
    });
    match planned {
        Err((kind, msg)) if msg.contains("netem is not available") => {
            assert_eq!(kind, ErrorKind::Unsupported);
            assert_eq!(msg, NETEM_MISSING);
            assert_eq!(p.qdiscs_a(), before, "plan changed the interface");
            eprintln!("SKIPPED {name}: qdisc netem is not available in this kernel");
            None
        }
        Err((_, msg)) => panic!("{name}: plan failed: {msg}"),
        Ok(_) => {
            let r = inject(&p.ns_a, &f, &cx());
            assert_eq!(verify::<F>(&p.ns_a, &r).effect, Effect::InEffect);
            Some(r)
        }
    }
}

#[test]
fn latency_delays_packets_or_reports_missing_netem() {
    require_root!();
    let p = Pair::new();
    let f = Latency::new(spec(
        serde_json::json!({"interface": p.if_a, "delay": "100ms"}),
    ))
    .unwrap();
    let Some(r) = netem_kind("latency", f, &p) else {
        return;
    };
    let t = std::time::Instant::now();
    assert_eq!(udp_delivered(&p.ns_a, &p.ns_b, IP_B, 9005, 10), 10);
    assert!(t.elapsed() >= Duration::from_millis(100));
    revert::<Latency>(&p.ns_a, &r);
    assert_eq!(verify::<Latency>(&p.ns_a, &r).effect, Effect::Clean);
}

#[test]
fn corruption_duplication_reorder_or_report_missing_netem() {
    require_root!();
    let p = Pair::new();
    let c = Corruption::new(spec(serde_json::json!({"interface": p.if_a, "percent": 5}))).unwrap();
    if let Some(r) = netem_kind("corruption", c, &p) {
        revert::<Corruption>(&p.ns_a, &r);
        assert_eq!(verify::<Corruption>(&p.ns_a, &r).effect, Effect::Clean);
    }
    let d = Duplication::new(spec(
        serde_json::json!({"interface": p.if_a, "percent": 50}),
    ))
    .unwrap();
    if let Some(r) = netem_kind("duplication", d, &p) {
        let got = udp_delivered(&p.ns_a, &p.ns_b, IP_B, 9006, 1000);
        assert!(
            got > 1300,
            "{got} datagrams for 1000 sent at 50% duplication"
        );
        revert::<Duplication>(&p.ns_a, &r);
        assert_eq!(verify::<Duplication>(&p.ns_a, &r).effect, Effect::Clean);
    }
    let o = Reorder::new(spec(
        serde_json::json!({"interface": p.if_a, "percent": 25, "delay": "10ms"}),
    ))
    .unwrap();
    if let Some(r) = netem_kind("reorder", o, &p) {
        revert::<Reorder>(&p.ns_a, &r);
        assert_eq!(verify::<Reorder>(&p.ns_a, &r).effect, Effect::Clean);
    }
}
