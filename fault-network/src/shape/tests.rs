//! Unit tests of the qdisc engine: the ARP filters, manual undo, receipt checks, older receipts,
//! namespaces that are gone, and ownership marks.

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
