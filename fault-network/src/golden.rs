//! Byte-for-byte tests of the encoders against what `tc` (iproute2 6.1) and `nft` (1.0.6)
//! sent for the same commands, captured once with `strace -e write=all` in a scratch
//! network namespace on veth `vga` (ifindex 3). The fixtures are in `tests/fixtures/`; the
//! commands are in each test. Sequence numbers and port ids are zeroed before comparing.
//! The 1 KiB rate tables (`TCA_TBF_RTAB`, `TCA_HTB_RTAB`/`CTAB`) are compared too: kernels
//! since 3.11 ignore them (the rate spec says `linklayer = ethernet`), older ones need them.

use std::net::IpAddr;

use crate::netem::NetemParams;
use crate::nft::{self, Dir, Expr};
use crate::nl::{self, F_EXCL};
use crate::target::{Cidr, Selector};
use crate::tbf::TbfParams;
use crate::tc::{self, handle, TC_H_ROOT};
use crate::u32::{self as u32f, Filter, Key};

fn fixture(name: &str) -> Vec<Vec<u8>> {
    let path = format!("{}/tests/fixtures/{name}.hex", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| nl::from_hex(l).expect("hex"))
        .collect()
}

fn zero_seq(mut m: Vec<u8>) -> Vec<u8> {
    m[8..16].fill(0);
    m
}

fn assert_tc(name: &str, ours: Vec<u8>) {
    let golden = fixture(name).remove(0);
    assert_eq!(
        nl::to_hex(&zero_seq(ours)),
        nl::to_hex(&zero_seq(golden)),
        "{name}: ours (left) differs from tc's (right)"
    );
}

const IF: u32 = 3;
const ROOT: u32 = 0xc002_0000;
const CLASS: u32 = 0xc002_0010;

#[test]
fn tbf_root() {
    // tc qdisc add dev vga root handle 1: tbf rate 8mbit burst 32kb limit 100kb
    let p = TbfParams {
        rate_bytes: 1_000_000,
        burst: 32 * 1024,
        limit: 100 * 1024,
    };
    assert_tc(
        "tbf_root",
        tc::new_qdisc(IF, TC_H_ROOT, handle(1, 0), "tbf", F_EXCL, |m| p.encode(m)),
    );
}

#[test]
fn tbf_leaf() {
    // tc qdisc add dev vga parent c002:10 handle c003: tbf rate 8mbit burst 32kb limit 100kb
    let p = TbfParams {
        rate_bytes: 1_000_000,
        burst: 32 * 1024,
        limit: 100 * 1024,
    };
    assert_tc(
        "tbf_leaf",
        tc::new_qdisc(IF, CLASS, 0xc003_0000, "tbf", F_EXCL, |m| p.encode(m)),
    );
}

#[test]
fn htb_root() {
    // tc qdisc add dev vga root handle c002: htb default 0
    assert_tc(
        "htb_root",
        tc::new_qdisc(IF, TC_H_ROOT, ROOT, "htb", F_EXCL, |m| {
            crate::htb::encode_qdisc(m, 0, 10)
        }),
    );
}

#[test]
fn htb_class() {
    // tc class add dev vga parent c002: classid c002:10 htb rate 32gbit ceil 32gbit burst 64k cburst 64k quantum 60000
    assert_tc(
        "htb_class",
        tc::new_htb_class(IF, ROOT, CLASS, 4_000_000_000, 65536, 60000),
    );
}

#[test]
fn qdisc_delete() {
    // tc qdisc del dev vga root handle c002:
    assert_tc("del_root", tc::del_qdisc(IF, TC_H_ROOT, ROOT));
}

fn cidr(s: &str) -> Cidr {
    Cidr::parse(s).unwrap()
}

#[test]
fn u32_filters() {
    // tc filter add dev vga parent c002: protocol ip prio 2 u32 match ip dst 10.1.2.0/24
    //   match ip protocol 6 0xff match ip dport 5201 0xffff flowid c002:10
    let c = cidr("10.1.2.0/24");
    let mut keys = u32f::dst_keys(c.addr, c.prefix);
    keys.push(u32f::proto_key(false, 6));
    keys.push(u32f::dport_key(false, 5201));
    let f = Filter {
        prio: 2,
        eth_proto: u32f::ETH_P_IP,
        keys,
        classid: CLASS,
    };
    assert_tc("u32_v4", tc::new_u32_filter(IF, ROOT, &f));

    // ... protocol ip prio 1 u32 match ip dst 10.9.9.9/32 flowid c002:0
    let c = cidr("10.9.9.9");
    let f = Filter {
        prio: 1,
        eth_proto: u32f::ETH_P_IP,
        keys: u32f::dst_keys(c.addr, c.prefix),
        classid: ROOT,
    };
    assert_tc("u32_excl", tc::new_u32_filter(IF, ROOT, &f));

    // ... protocol ipv6 prio 3 u32 match ip6 dst fd00::/64 match ip6 protocol 17 0xff
    //   match ip6 dport 53 0xffff flowid c002:10
    let c = cidr("fd00::/64");
    let mut keys = u32f::dst_keys(c.addr, c.prefix);
    keys.push(u32f::proto_key(true, 17));
    keys.push(u32f::dport_key(true, 53));
    let f = Filter {
        prio: 3,
        eth_proto: u32f::ETH_P_IPV6,
        keys,
        classid: CLASS,
    };
    assert_tc("u32_v6", tc::new_u32_filter(IF, ROOT, &f));

    // ... protocol all prio 4 u32 match u32 0 0 flowid c002:10
    let f = Filter {
        prio: 4,
        eth_proto: u32f::ETH_P_ALL,
        keys: vec![Key {
            val: 0,
            mask: 0,
            off: 0,
        }],
        classid: CLASS,
    };
    assert_tc("u32_all", tc::new_u32_filter(IF, ROOT, &f));
}

fn netem_msg(p: NetemParams) -> Vec<u8> {
    tc::new_qdisc(IF, CLASS, 0xc004_0000, "netem", F_EXCL, |m| p.encode(m))
}

#[test]
fn netem_options() {
    let base = NetemParams {
        limit: 1000,
        ..Default::default()
    };
    // tc qdisc add dev vga parent c002:10 handle c004: netem delay 100ms 20ms 25%
    assert_tc(
        "netem_delay",
        netem_msg(NetemParams {
            delay_ns: 100_000_000,
            jitter_ns: 20_000_000,
            delay_corr: 25.0,
            ..base
        }),
    );
    // ... netem loss 30% 25%
    assert_tc(
        "netem_loss",
        netem_msg(NetemParams {
            loss: 30.0,
            loss_corr: 25.0,
            ..base
        }),
    );
    // ... netem corrupt 1%
    assert_tc(
        "netem_corrupt",
        netem_msg(NetemParams {
            corrupt: 1.0,
            ..base
        }),
    );
    // ... netem duplicate 5% 10%  (tc 6.1 drops the duplicate correlation; we compare without it)
    assert_tc(
        "netem_dup",
        netem_msg(NetemParams {
            duplicate: 5.0,
            ..base
        }),
    );
    // ... netem delay 10ms reorder 25% 50% gap 5
    assert_tc(
        "netem_reorder",
        netem_msg(NetemParams {
            delay_ns: 10_000_000,
            reorder: 25.0,
            reorder_corr: 50.0,
            gap: 5,
            ..base
        }),
    );
    // ... netem limit 5000 delay 2s 100ms
    assert_tc(
        "netem_rate_limit",
        netem_msg(NetemParams {
            limit: 5000,
            delay_ns: 2_000_000_000,
            jitter_ns: 100_000_000,
            ..base
        }),
    );
}

fn assert_nft(name: &str, ours: Vec<u8>) {
    let golden = fixture(name).remove(0);
    let msgs: Vec<Vec<u8>> = nl::split_messages(&golden)
        .into_iter()
        .map(|m| zero_seq(m.to_vec()))
        .collect();
    assert_eq!(msgs.len(), 3, "{name}: begin, one message, end");
    assert_eq!(
        nl::to_hex(&msgs[0]),
        nl::to_hex(&nft::batch_begin()),
        "{name}: batch begin"
    );
    assert_eq!(
        nl::to_hex(&msgs[2]),
        nl::to_hex(&nft::batch_end()),
        "{name}: batch end"
    );
    assert_eq!(
        nl::to_hex(&zero_seq(ours)),
        nl::to_hex(&msgs[1]),
        "{name}: ours (left) differs from nft's (right)"
    );
}

fn sel(net: Option<&str>, l4: Option<u8>, port: Option<u16>) -> Selector {
    let net = net.map(cidr);
    Selector {
        v6: net.is_some_and(|n| matches!(n.addr, IpAddr::V6(_))),
        net,
        l4,
        port,
    }
}

fn rule(dir: Dir, chain: &str, s: Option<Selector>, tail: Vec<Expr>) -> Vec<u8> {
    let mut e = nft::ifname_match(dir, "vga");
    if let Some(s) = s {
        e.extend(nft::selector_match(dir, &s));
    }
    e.extend(tail);
    nft::new_rule("chaos_t", chain, &e)
}

#[test]
fn nft_messages() {
    let drop = crate::table::drop_tail;
    // nft add table inet chaos_t
    assert_nft("nft_table", nft::new_table("chaos_t"));
    // nft add chain inet chaos_t egress '{ type filter hook postrouting priority 0; policy accept; }'
    assert_nft(
        "nft_chain",
        nft::new_chain("chaos_t", "egress", nft::HOOK_POSTROUTING, 0),
    );
    // nft delete table inet chaos_t
    assert_nft("nft_deltable", nft::del_table("chaos_t"));
    // nft add rule inet chaos_t egress oifname "vga" ip daddr 10.1.2.0/24 tcp dport 5201 counter drop
    assert_nft(
        "nft_rule_v4",
        rule(
            Dir::Egress,
            "egress",
            Some(sel(Some("10.1.2.0/24"), Some(6), Some(5201))),
            drop(),
        ),
    );
    // ... oifname "vga" ip daddr 10.1.16.0/20 tcp dport 5201 counter drop
    assert_nft(
        "nft_rule_v4_20",
        rule(
            Dir::Egress,
            "egress",
            Some(sel(Some("10.1.16.0/20"), Some(6), Some(5201))),
            drop(),
        ),
    );
    // ... oifname "vga" ip6 daddr fd00::/64 udp dport 53 counter drop
    assert_nft(
        "nft_rule_v6",
        rule(
            Dir::Egress,
            "egress",
            Some(sel(Some("fd00::/64"), Some(17), Some(53))),
            drop(),
        ),
    );
    // ... oifname "vga" ip daddr 10.9.9.9 accept
    assert_nft(
        "nft_rule_excl",
        rule(
            Dir::Egress,
            "egress",
            Some(sel(Some("10.9.9.9"), None, None)),
            vec![Expr::Verdict(nft::NF_ACCEPT)],
        ),
    );
    // ... oifname "vga" numgen random mod 10000 < 3000 counter drop
    let mut t = nft::random_below(30.0);
    t.extend(drop());
    assert_nft("nft_rule_ng", rule(Dir::Egress, "egress", None, t));
    // nft add rule inet chaos_t ingress iifname "vga" ip saddr 10.1.2.3 udp sport 53 counter drop
    assert_nft(
        "nft_rule_in",
        rule(
            Dir::Ingress,
            "ingress",
            Some(sel(Some("10.1.2.3"), Some(17), Some(53))),
            drop(),
        ),
    );
    // ... oifname "vga" meta l4proto icmp counter drop
    assert_nft(
        "nft_rule_proto",
        rule(
            Dir::Egress,
            "egress",
            Some(sel(None, Some(1), None)),
            drop(),
        ),
    );
}
