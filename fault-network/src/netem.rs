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
    fn ticks_like_tc() {
        assert_eq!(ticks(100_000_000), 1_562_500);
        assert_eq!(ticks(20_000_000), 312_500);
        assert_eq!(ticks(2_000_000_000), 31_250_000);
    }
}
