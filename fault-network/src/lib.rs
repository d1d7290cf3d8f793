//! # fault-network
//!
//! Network faults for chaos-agent, driven over netlink directly: no `tc`, `nft` or
//! `iptables` binary and no C library (libnftnl, libmnl) at build or run time.
//!
//! | kind | mechanism | what changes on the host |
//! |---|---|---|
//! | `network.rate` | tbf | our htb root qdisc + class carrying `tbf` |
//! | `network.latency` | netem | our htb root qdisc + class carrying `netem delay` |
//! | `network.loss` | netem, or nftables | `netem loss`, or table `inet chaos_<id>` with a `numgen` random-drop rule |
//! | `network.corruption` | netem | `netem corrupt` |
//! | `network.duplication` | netem | `netem duplicate` |
//! | `network.reorder` | netem | `netem delay ... reorder ... gap` |
//! | `network.blackhole` | nftables | table `inet chaos_<id>` dropping matching packets |
//!
//! Every kind takes the same targeting: `interface` (one or a list; default the interface
//! of the default route), `destinations`, `hosts` (names, resolved once at plan through the
//! system resolver; the receipt records the addresses and nothing resolves them again) and
//! `ports` to include, `exclude_destinations` and `exclude_ports`, and `protocol`. Traffic the fault is not aimed at is left untouched:
//! qdisc faults steer matching packets into their class with u32 filters and let the rest
//! through htb's unshaped direct queue; nftables faults put the matches in their rules.
//!
//! **Privileges:** CAP_NET_ADMIN in the agent's network namespace. The netem probe (below)
//! also uses CAP_SYS_ADMIN to create a private namespace; without it the probe is skipped.
//! Acting on a receipt from another network namespace (a `recover` started elsewhere) and
//! looking for leftovers in other namespaces also need CAP_SYS_ADMIN (`setns(2)`).
//!
//! **Where:** every receipt records the network namespace its plan ran in (nsfs device and
//! inode, and the netns cookie). Verify, revert and manual undo run inside that namespace,
//! whatever namespace the process doing them is in, and touch an interface only while its
//! recorded name and index still belong together (a renamed interface is `Drifted` and
//! left alone; one that is gone took our qdiscs with it). A namespace that cannot be
//! reached makes revert fail, so the run ends `needs-manual` with `nsenter --net=PATH`
//! commands, unless the host rebooted (nothing survives a reboot) or the namespace provably
//! no longer exists. Receipts of older versions, which have no namespace, are refused. See
//! `place.rs` for the whole policy.
//!
//! **Revert** works from the receipt alone, in a fresh process: qdisc faults delete the
//! root qdisc whose handle **and** mark derive from the fault id and re-create the root
//! qdisc recorded at plan; nftables faults delete their own table. Both are idempotent, and
//! after a reboot (boot id changed) there is nothing left to undo. See [`shape`] for
//! coexistence with existing qdiscs.
//!
//! **Journal checks and leftovers:** `check_receipt` refuses a receipt whose table name or
//! qdisc handles are not those its fault id derives (or whose prior root qdisc is not one
//! chaos-agent ever replaces). `leftovers` looks in every reachable network namespace (the
//! agent's own, `/run/netns/*`, nsfs bind mounts, each distinct `/proc/*/ns/net`, at most
//! 4096) for tables named after a known fault id and for root qdiscs with its handle and
//! mark; the root qdisc a found tree replaced is unknown, so its receipt deletes ours and
//! the kernel default comes back. Each qdisc tree is listed by the kind its leaf says
//! (tbf: rate; netem: by its options; none: rate), each table by its rules (a random drop:
//! loss; else blackhole).
//!
//! **netem availability.** Some kernels are built without `sch_netem` (the kernel answers
//! ENOENT). The netem kinds probe at plan time inside a short-lived private network
//! namespace (a thread `unshare(CLONE_NEWNET)`s and tries to add netem to that namespace's
//! loopback), so they fail with "qdisc netem is not available in this kernel
//! (CONFIG_NET_SCH_NETEM)" before anything on the host changes. If the probe cannot run,
//! inject reports the same error and removes the partial htb tree. `network.loss` falls
//! back to nftables instead (unless `mechanism = "netem"`).

#![deny(missing_docs)]
#![warn(unreachable_pub, missing_debug_implementations)]

mod spec;

mod avail;
mod blackhole;
mod corruption;
mod duplication;
mod htb;
mod latency;
mod loss;
mod netem;
mod nft;
mod nl;
mod place;
mod rate;
mod reorder;
mod scan;
pub mod shape;
mod table;
mod target;
mod tbf;
mod tc;
mod u32;

pub use blackhole::{Blackhole, BlackholeReceipt, BlackholeSpec, Direction};
pub use corruption::{Corruption, CorruptionSpec};
pub use duplication::{Duplication, DuplicationSpec};
pub use latency::{Latency, LatencySpec};
pub use loss::{Loss, LossMechanism, LossReceipt, LossSpec};
pub use netem::NetemParams;
pub use rate::{Rate, RateLimit, RateReceipt, RateSpec};
pub use reorder::{Reorder, ReorderSpec};
pub use shape::{QdiscReceipt, NETEM_MISSING};
pub use table::TableReceipt;
pub use target::{Cidr, Interface, OneOrMany, Protocol, ResolvedHost};
pub use tbf::TbfParams;

/// Register every network fault kind.
pub fn register(reg: &mut fault_core::Registry) {
    reg.register::<RateLimit>()
        .register::<Blackhole>()
        .register::<Loss>()
        .register::<Latency>()
        .register::<Corruption>()
        .register::<Duplication>()
        .register::<Reorder>();
}

/// 64-bit FNV-1a, for names derived from fault ids (stable across processes and versions).
pub(crate) fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod golden;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_validates() {
        let examples = chaos_engine::testing::build_examples(register);
        assert_eq!(examples.len(), 7);
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        let mut reg = fault_core::Registry::new();
        register(&mut reg);
        let bad = [
            ("network.latency", serde_json::json!({"delay": "61s"})),
            (
                "network.latency",
                serde_json::json!({"delay": "10ms", "jitter": "2m"}),
            ),
            (
                "network.latency",
                serde_json::json!({"delay": "10ms", "typo": 1}),
            ),
            ("network.loss", serde_json::json!({"percent": 101})),
            (
                "network.loss",
                serde_json::json!({"percent": 5, "mechanism": "nftables", "correlation": 10}),
            ),
            ("network.blackhole", serde_json::json!({"ports": [0]})),
            (
                "network.blackhole",
                serde_json::json!({"destinations": ["10.0.0.300"]}),
            ),
            (
                "network.blackhole",
                serde_json::json!({"direction": "sideways"}),
            ),
            ("network.blackhole", serde_json::json!({"hosts": [""]})),
            (
                "network.blackhole",
                serde_json::json!({"hosts": ["10.0.0.1"]}),
            ),
            (
                "network.rate",
                serde_json::json!({"rate": "1mbit", "hosts": ["a b"]}),
            ),
            (
                "network.rate",
                serde_json::json!({"rate": "1mbit", "hosts": "a.test"}),
            ),
            (
                "network.loss",
                serde_json::json!({"percent": 5, "hosts": [null]}),
            ),
            (
                "network.reorder",
                serde_json::json!({"percent": 5, "delay": "0s"}),
            ),
            (
                "network.rate",
                serde_json::json!({"rate": "1mbit", "interface": "a/b"}),
            ),
        ];
        for (kind, spec) in bad {
            assert!(
                reg.build(kind, &spec).is_err(),
                "{kind} {spec} should be refused"
            );
        }
    }

    #[test]
    fn names_derive_from_the_fault_id() {
        let (r, l) = shape::handles("fault-1");
        assert_eq!(r >> 16, (l >> 16) - 1);
        assert!((0xc000..=0xdfff).contains(&(r >> 16)));
        assert_eq!(shape::handles("fault-1"), (r, l));
        assert_eq!(nft::table_name("abc_1"), "chaos_abc_1");
        let long = nft::table_name("run-2024-11-24/step-3/fault-17");
        assert!(
            long.starts_with("chaos_run_2024_11_24_") && long.len() <= 31,
            "{long}"
        );
    }
}
