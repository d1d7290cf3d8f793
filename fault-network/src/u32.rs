//! `u32` classifier filters: `TCA_U32_CLASSID` and `struct tc_u32_sel` with its keys.
//!
//! Offsets are those `tc ... match ip dst/dport/protocol` and `match ip6 ...` use: the IPv4
//! transport header is assumed to follow a 20-byte IP header (no options), the IPv6 one a
//! 40-byte header (no extension headers), exactly like `tc`.

use std::net::IpAddr;

use crate::nl::Msg;
use crate::tbf::TCA_OPTIONS;

const TCA_KIND: u16 = 1;
const TCA_U32_CLASSID: u16 = 1;
const TCA_U32_SEL: u16 = 5;
const TC_U32_TERMINAL: u8 = 1;

/// `ETH_P_ALL` (used by the golden tests).
#[cfg(test)]
pub(crate) const ETH_P_ALL: u16 = 0x0003;
/// `ETH_P_IP`.
pub(crate) const ETH_P_IP: u16 = 0x0800;
/// `ETH_P_IPV6`.
pub(crate) const ETH_P_IPV6: u16 = 0x86dd;
/// `ETH_P_ARP`.
pub(crate) const ETH_P_ARP: u16 = 0x0806;

/// One 32-bit match: `(packet[off..off+4] & mask) == val`, values in host order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Key {
    pub(crate) val: u32,
    pub(crate) mask: u32,
    pub(crate) off: i32,
}

/// A u32 filter sending matching packets to `classid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Filter {
    /// Filter priority (pref); one protocol per priority.
    pub(crate) prio: u16,
    /// Ethertype, host order.
    pub(crate) eth_proto: u16,
    /// All keys must match.
    pub(crate) keys: Vec<Key>,
    /// Destination class (`major:0` = the htb qdisc itself = unshaped direct queue).
    pub(crate) classid: u32,
}

impl Filter {
    /// `tcm_info` of the filter message: priority and network-order protocol.
    pub(crate) fn info(&self) -> u32 {
        ((self.prio as u32) << 16) | self.eth_proto.to_be() as u32
    }

    /// Append `TCA_KIND` and `TCA_OPTIONS`.
    pub(crate) fn encode(&self, m: &mut Msg) {
        m.attr_str(TCA_KIND, "u32");
        let mut sel = Vec::with_capacity(16 + 16 * self.keys.len());
        sel.push(TC_U32_TERMINAL); // flags
        sel.push(0); // offshift
        sel.push(self.keys.len() as u8); // nkeys
        sel.push(0); // padding
        sel.extend_from_slice(&[0u8; 12]); // offmask, off, offoff, hoff, hmask
        for k in &self.keys {
            sel.extend_from_slice(&k.mask.to_be_bytes());
            sel.extend_from_slice(&k.val.to_be_bytes());
            sel.extend_from_slice(&k.off.to_ne_bytes());
            sel.extend_from_slice(&0i32.to_ne_bytes()); // offmask
        }
        let n = m.begin_nest(TCA_OPTIONS);
        m.attr_u32(TCA_U32_CLASSID, self.classid);
        m.attr(TCA_U32_SEL, &sel);
        m.end_nest(n);
    }
}

fn prefix_mask32(bits: u32) -> u32 {
    if bits == 0 {
        0
    } else {
        u32::MAX << (32 - bits.min(32))
    }
}

/// Keys matching a destination network.
pub(crate) fn dst_keys(addr: IpAddr, prefix: u8) -> Vec<Key> {
    match addr {
        IpAddr::V4(a) => vec![Key {
            val: u32::from(a) & prefix_mask32(prefix as u32),
            mask: prefix_mask32(prefix as u32),
            off: 16,
        }],
        IpAddr::V6(a) => {
            let o = a.octets();
            let mut keys = Vec::new();
            for w in 0..4u32 {
                let bits = (prefix as u32).saturating_sub(w * 32).min(32);
                if bits == 0 {
                    break;
                }
                let i = (w * 4) as usize;
                let word = u32::from_be_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
                let mask = prefix_mask32(bits);
                keys.push(Key {
                    val: word & mask,
                    mask,
                    off: 24 + 4 * w as i32,
                });
            }
            keys
        }
    }
}

/// Key matching the transport protocol number.
pub(crate) fn proto_key(v6: bool, proto: u8) -> Key {
    if v6 {
        Key {
            val: (proto as u32) << 8,
            mask: 0x0000_ff00,
            off: 4,
        }
    } else {
        Key {
            val: (proto as u32) << 16,
            mask: 0x00ff_0000,
            off: 8,
        }
    }
}

/// Key matching the destination port.
pub(crate) fn dport_key(v6: bool, port: u16) -> Key {
    Key {
        val: port as u32,
        mask: 0x0000_ffff,
        off: if v6 { 40 } else { 20 },
    }
}
