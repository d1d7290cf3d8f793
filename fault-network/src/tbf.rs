//! Token bucket filter (`tbf`) options: `struct tc_tbf_qopt`, `TCA_TBF_BURST` and the rate
//! table `TCA_TBF_RTAB`, byte for byte what `tc` sends (the golden test compares them).
//!
//! The rate spec carries `linklayer = ethernet`, so kernels since 3.11 compute transmission
//! times themselves and ignore the 1 KiB rate table; kernels before that (upstream 3.10)
//! refuse a tbf or htb rate without one (`EINVAL`), so it is always sent.

use serde::{Deserialize, Serialize};

use crate::nl::Msg;

const TCA_TBF_PARMS: u16 = 1;
const TCA_TBF_RTAB: u16 = 2;
const TCA_TBF_BURST: u16 = 6;
/// `TCA_OPTIONS`.
pub(crate) const TCA_OPTIONS: u16 = 2;

/// Psched ticks per microsecond on every kernel since 2.6.x (`/proc/net/psched`:
/// 1000 ns per us / 64 ns per tick).
const TICKS_PER_USEC: f64 = 15.625;

/// What `tc` computes as the transmission time of `size` bytes at `rate` bytes/s, in
/// psched ticks (`tc_calc_xmittime`: whole microseconds first, then ticks, truncating).
pub(crate) fn xmittime(rate_bytes: u64, size: u64) -> u32 {
    if rate_bytes == 0 {
        return 0;
    }
    let usec = (1_000_000f64 * (size as f64 / rate_bytes as f64)) as u32;
    (usec as f64 * TICKS_PER_USEC) as u32
}

/// `struct tc_ratespec` as `tc` fills it for a rate in bytes/s (cell_log 3, ethernet,
/// cell_align -1).
pub(crate) fn ratespec(rate_bytes: u32) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0] = 3; // cell_log
    b[1] = 1; // TC_LINKLAYER_ETHERNET
    b[2..4].copy_from_slice(&0u16.to_ne_bytes()); // overhead
    b[4..6].copy_from_slice(&(-1i16).to_ne_bytes()); // cell_align
    b[6..8].copy_from_slice(&0u16.to_ne_bytes()); // mpu
    b[8..12].copy_from_slice(&rate_bytes.to_ne_bytes());
    b
}

/// The rate table `tc` computes for `rate_bytes` (`tc_calc_rtable` with its default MTU,
/// cell_log 3, no MPU, ethernet): the transmission time, in psched ticks, of a packet of
/// `(i + 1) * 8` bytes for each of the 256 cells.
pub(crate) fn rtab(rate_bytes: u32) -> Vec<u8> {
    (0..256u64)
        .flat_map(|i| xmittime(rate_bytes as u64, (i + 1) << 3).to_ne_bytes())
        .collect()
}

/// Parameters of a tbf qdisc.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TbfParams {
    /// Rate in bytes per second (at most `u32::MAX`).
    pub rate_bytes: u32,
    /// Bucket size in bytes.
    pub burst: u32,
    /// Queue limit in bytes.
    pub limit: u32,
}

impl TbfParams {
    /// Append `TCA_OPTIONS` (a nest of `TCA_TBF_PARMS`, `TCA_TBF_BURST` and
    /// `TCA_TBF_RTAB`) to `m`.
    pub(crate) fn encode(&self, m: &mut Msg) {
        let mut q = Vec::with_capacity(36);
        q.extend_from_slice(&ratespec(self.rate_bytes));
        q.extend_from_slice(&[0u8; 12]); // peakrate
        q.extend_from_slice(&self.limit.to_ne_bytes());
        q.extend_from_slice(&xmittime(self.rate_bytes as u64, self.burst as u64).to_ne_bytes());
        q.extend_from_slice(&0u32.to_ne_bytes()); // mtu
        let n = m.begin_nest(TCA_OPTIONS);
        m.attr(TCA_TBF_PARMS, &q);
        m.attr_u32(TCA_TBF_BURST, self.burst);
        m.attr(TCA_TBF_RTAB, &rtab(self.rate_bytes));
        m.end_nest(n);
    }

    /// Read the parameters back from a dumped `TCA_OPTIONS` payload. The kernel keeps the
    /// bucket as a transmission time, so `burst` is the smallest size `tc` turns into that
    /// same time (within a few bytes of what was set, and the same bucket).
    pub(crate) fn decode(options: &[u8]) -> Option<TbfParams> {
        let p = crate::nl::find_attr(options, TCA_TBF_PARMS)?;
        if p.len() < 36 {
            return None;
        }
        let u = |i: usize| p[i..i + 4].try_into().ok().map(u32::from_ne_bytes);
        let rate_bytes = u(8)?;
        let limit = u(24)?;
        let buffer = u(28)?;
        // The smallest burst whose transmission time is `buffer` ticks: `tc ... burst B`
        // then sets exactly the bucket the kernel dumped.
        let (mut lo, mut hi) = (0u64, u32::MAX as u64);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if xmittime(rate_bytes as u64, mid) >= buffer {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        let burst = lo as u32;
        Some(TbfParams {
            rate_bytes,
            burst,
            limit,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xmittime_matches_tc() {
        // 32 KiB at 8 Mbit/s: tc sends buffer 512000 ticks.
        assert_eq!(xmittime(1_000_000, 32 * 1024), 512_000);
        // 64 KiB at 32 Gbit/s: tc sends 250 (16 whole us * 15.625).
        assert_eq!(xmittime(4_000_000_000, 64 * 1024), 250);
    }

    #[test]
    fn decode_reads_back_what_encode_wrote() {
        let p = TbfParams {
            rate_bytes: 37_500_000,
            burst: 64 * 1024,
            limit: 1 << 20,
        };
        let mut m = Msg::new(36, 0);
        p.encode(&mut m);
        let b = m.finish();
        let opts = crate::nl::find_attr(&b[16..], TCA_OPTIONS).unwrap();
        let back = TbfParams::decode(opts).unwrap();
        assert_eq!((back.rate_bytes, back.limit), (p.rate_bytes, p.limit));
        assert!(back.burst.abs_diff(p.burst) <= 40, "{back:?}");
        assert_eq!(
            xmittime(back.rate_bytes as u64, back.burst as u64),
            xmittime(p.rate_bytes as u64, p.burst as u64)
        );
    }
}
