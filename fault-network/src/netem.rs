//! Network emulator (`netem`) options.
//!
//! Unlike most qdiscs, netem's `TCA_OPTIONS` is not a plain nest: it is a
//! `struct tc_netem_qopt` (24 bytes) followed by attributes (`TCA_NETEM_CORR`,
//! `TCA_NETEM_REORDER`, `TCA_NETEM_CORRUPT`), which is why no netlink crate models it.
//! Probabilities are fractions of `u32::MAX` rounded like `tc` (`rint`), times are psched
//! ticks (64 ns) computed like `tc` (whole microseconds first).

use serde::{Deserialize, Serialize};

use crate::nl::Msg;
use crate::tbf::TCA_OPTIONS;

const TCA_NETEM_CORR: u16 = 1;
const TCA_NETEM_REORDER: u16 = 3;
const TCA_NETEM_CORRUPT: u16 = 4;

/// A percentage (0..=100) as netem's probability (`tc`'s `rint(p * UINT32_MAX)`).
pub(crate) fn prob(percent: f64) -> u32 {
    ((percent / 100.0) * u32::MAX as f64).round_ties_even() as u32
}

/// Nanoseconds as psched ticks, like `tc` (`tc_core_time2tick(usec)`).
pub(crate) fn ticks(ns: u64) -> u32 {
    let usec = (ns / 1000).min(u32::MAX as u64);
    ((usec as f64) * 15.625).min(u32::MAX as f64) as u32
}

/// Everything netem can be told by our faults. Percentages are 0..=100.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct NetemParams {
    /// Queue limit in packets (tc's default is 1000).
    pub limit: u32,
    /// Added delay, ns.
    pub delay_ns: u64,
    /// Jitter, ns.
    pub jitter_ns: u64,
    /// Correlation of successive delays, %.
    pub delay_corr: f64,
    /// Loss, %.
    pub loss: f64,
    /// Loss correlation, %.
    pub loss_corr: f64,
    /// Duplication, %.
    pub duplicate: f64,
    /// Duplication correlation, %.
    pub dup_corr: f64,
    /// Corruption, %.
    pub corrupt: f64,
    /// Corruption correlation, %.
    pub corrupt_corr: f64,
    /// Reordering, %.
    pub reorder: f64,
    /// Reordering correlation, %.
    pub reorder_corr: f64,
    /// Reorder gap.
    pub gap: u32,
}

impl NetemParams {
    /// What these parameters do, for people: "egress delay 100ms ± 10ms (netem)".
    pub(crate) fn effect(&self) -> String {
        let d = |ns: u64| fault_core::Duration(std::time::Duration::from_nanos(ns)).to_string();
        let corr = |c: f64| {
            if c > 0.0 {
                format!(", correlation {c}%")
            } else {
                String::new()
            }
        };
        let mut parts = Vec::new();
        if self.reorder > 0.0 {
            parts.push(format!(
                "reordering of {}% of packets{} (every {} packet(s) eligible; the others delayed {})",
                self.reorder,
                corr(self.reorder_corr),
                self.gap.max(1),
                d(self.delay_ns)
            ));
        } else if self.delay_ns > 0 {
            let jitter = if self.jitter_ns > 0 {
                format!(" ± {}", d(self.jitter_ns))
            } else {
                String::new()
            };
            parts.push(format!(
                "delay {}{jitter}{}",
                d(self.delay_ns),
                corr(self.delay_corr)
            ));
        }
        if self.loss > 0.0 {
            parts.push(format!(
                "loss of {}% of packets{}",
                self.loss,
                corr(self.loss_corr)
            ));
        }
        if self.duplicate > 0.0 {
            parts.push(format!(
                "duplication of {}% of packets{}",
                self.duplicate,
                corr(self.dup_corr)
            ));
        }
        if self.corrupt > 0.0 {
            parts.push(format!(
                "corruption of {}% of packets{}",
                self.corrupt,
                corr(self.corrupt_corr)
            ));
        }
        format!("egress {} (netem)", parts.join(", "))
    }

    /// Append the raw `TCA_OPTIONS` to `m`.
    pub(crate) fn encode(&self, m: &mut Msg) {
        let mut o = Vec::with_capacity(64);
        for v in [
            ticks(self.delay_ns),
            self.limit,
            prob(self.loss),
            self.gap,
            prob(self.duplicate),
            ticks(self.jitter_ns),
        ] {
            o.extend_from_slice(&v.to_ne_bytes());
        }
        let nla = |o: &mut Vec<u8>, ty: u16, vals: &[u32]| {
            o.extend_from_slice(&((4 + 4 * vals.len()) as u16).to_ne_bytes());
            o.extend_from_slice(&ty.to_ne_bytes());
            for v in vals {
                o.extend_from_slice(&v.to_ne_bytes());
            }
        };
        let corr = [
            prob(self.delay_corr),
            prob(self.loss_corr),
            prob(self.dup_corr),
        ];
        // tc sends CORR when a correlation is given and whenever it reorders.
        if corr.iter().any(|&c| c != 0) || self.reorder > 0.0 {
            nla(&mut o, TCA_NETEM_CORR, &corr);
        }
        if self.reorder > 0.0 {
            nla(
                &mut o,
                TCA_NETEM_REORDER,
                &[prob(self.reorder), prob(self.reorder_corr)],
            );
        }
        if self.corrupt > 0.0 {
            nla(
                &mut o,
                TCA_NETEM_CORRUPT,
                &[prob(self.corrupt), prob(self.corrupt_corr)],
            );
        }
        m.attr(TCA_OPTIONS, &o);
    }
}

/// Which of our netem kinds a dumped netem `TCA_OPTIONS` belongs to (`struct
/// tc_netem_qopt` then attributes): reordering, else corruption, else duplication, else
/// loss, else delay — the one parameter each kind sets that the others leave at 0.
pub(crate) fn kind_of(options: &[u8]) -> &'static str {
    let u = |i: usize| {
        options
            .get(i..i + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_ne_bytes)
            .unwrap_or(0)
    };
    let (loss, duplicate) = (u(8), u(16));
    let attrs = options.get(24..).unwrap_or_default();
    let first = |ty: u16| {
        crate::nl::find_attr(attrs, ty)
            .and_then(|v| v.get(0..4))
            .and_then(|b| b.try_into().ok())
            .map(u32::from_ne_bytes)
            .unwrap_or(0)
    };
    if first(TCA_NETEM_REORDER) != 0 {
        "network.reorder"
    } else if first(TCA_NETEM_CORRUPT) != 0 {
        "network.corruption"
    } else if duplicate != 0 {
        "network.duplication"
    } else if loss != 0 {
        "network.loss"
    } else {
        "network.latency"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_round_like_tc() {
        assert_eq!(prob(30.0), 0x4ccc_cccc);
        assert_eq!(prob(1.0), 0x028f_5c29);
        assert_eq!(prob(25.0), 0x4000_0000);
        assert_eq!(prob(50.0), 0x8000_0000);
        assert_eq!(prob(100.0), u32::MAX);
        assert_eq!(prob(0.0), 0);
    }

    #[test]
    fn netem_options_tell_the_kind() {
        let opts = |p: NetemParams| {
            let mut m = Msg::new(36, 0);
            p.encode(&mut m);
            let b = m.finish();
            crate::nl::find_attr(&b[16..], TCA_OPTIONS)
                .unwrap()
                .to_vec()
        };
        let base = NetemParams {
            limit: 1000,
            ..Default::default()
        };
        let cases = [
            (
                NetemParams {
                    delay_ns: 10_000_000,
                    ..base
                },
                "network.latency",
            ),
            (NetemParams { loss: 5.0, ..base }, "network.loss"),
            (
                NetemParams {
                    duplicate: 5.0,
                    ..base
                },
                "network.duplication",
            ),
            (
                NetemParams {
                    corrupt: 5.0,
                    ..base
                },
                "network.corruption",
            ),
            (
                NetemParams {
                    delay_ns: 10_000_000,
                    reorder: 25.0,
                    gap: 5,
                    ..base
                },
                "network.reorder",
            ),
        ];
        for (p, kind) in cases {
            assert_eq!(kind_of(&opts(p)), kind, "{p:?}");
        }
    }

    #[test]
    fn ticks_like_tc() {
        assert_eq!(ticks(100_000_000), 1_562_500);
        assert_eq!(ticks(20_000_000), 312_500);
        assert_eq!(ticks(2_000_000_000), 31_250_000);
    }
}
