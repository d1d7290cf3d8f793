//! `network.rate`: limit bandwidth with a token bucket filter (tbf).
//!
//! **On the host:** the targeted interfaces get an htb root qdisc of ours whose class
//! carries a `tbf` qdisc; all traffic (or, with destinations/ports/protocol, only matching
//! traffic steered by u32 filters) leaves at most at `rate`. See [`crate::shape`] for the
//! tree and how a pre-existing root qdisc is recorded and restored.
//!
//! **Privileges:** CAP_NET_ADMIN in the network namespace (and CAP_SYS_ADMIN to revert
//! from another namespace: see the crate docs).
//!
//! **Revert:** deletes our root qdisc by its handle (derived from the fault id) and
//! re-creates a recorded non-default root qdisc; a root qdisc that is not ours is left alone.

use std::fmt;
use std::str::FromStr;

use fault_core::{Bytes, Context, Error, Fault, KindInfo, Leftover, Observation, Param, Result};
use serde::{Deserialize, Serialize};

use crate::shape::{self, Leaf, QdiscReceipt};
use crate::spec::{net_spec, params};
use crate::target::Targeting;
use crate::tbf::TbfParams;

/// A bandwidth, written like `tc` does: `"8mbit"`, `"500kbit"`, `"1gbit"` (bits per second)
/// or `"100kbps"`, `"1mbps"` (bytes per second). SI multipliers (k = 1000).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rate(pub u64);

impl Rate {
    /// Bits per second.
    pub fn bits_per_sec(self) -> u64 {
        self.0
    }
}

impl FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Rate, String> {
        let t = s.trim().to_ascii_lowercase();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = (&t[..split], t[split..].trim());
        let n: f64 = num
            .parse()
            .map_err(|_| format!("invalid rate \"{s}\" (write e.g. \"10mbit\")"))?;
        let mult: f64 = match unit {
            "bit" => 1.0,
            "kbit" => 1e3,
            "mbit" => 1e6,
            "gbit" => 1e9,
            "bps" => 8.0,
            "kbps" => 8e3,
            "mbps" => 8e6,
            "gbps" => 8e9,
            "" => return Err(format!("rate \"{s}\" needs a unit: bit, kbit, mbit, gbit (bits/s) or bps, kbps, mbps, gbps (bytes/s)")),
            u => return Err(format!("invalid rate \"{s}\": unknown unit \"{u}\"")),
        };
        let v = n * mult;
        if !(1.0..=1e15).contains(&v) {
            return Err(format!("rate \"{s}\" is out of range"));
        }
        Ok(Rate(v.round() as u64))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (u, m) in [
            ("gbit", 1_000_000_000),
            ("mbit", 1_000_000),
            ("kbit", 1_000),
        ] {
            if self.0 >= m && self.0 % m == 0 {
                return write!(f, "{}{u}", self.0 / m);
            }
        }
        write!(f, "{}bit", self.0)
    }
}

impl Serialize for Rate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Rate, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Largest rate: the tbf rate field holds bytes/s in 32 bits (about 34 Gbit/s).
const MAX_RATE_BYTES: u64 = u32::MAX as u64;

net_spec! {
    /// Parameters of `network.rate`.
    pub struct RateSpec {
        /// Bandwidth, e.g. "10mbit".
        pub rate: Rate,
        /// Bucket size; default max(rate x 10ms, 16 KiB).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub burst: Option<Bytes>,
        /// Queue size; default burst + rate x 400ms.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub limit: Option<Bytes>,
    }
}

/// The `network.rate` fault.
#[derive(Debug, Clone)]
pub struct RateLimit {
    spec: RateSpec,
    target: Targeting,
    tbf: TbfParams,
}

/// Receipt of `network.rate`.
pub type RateReceipt = QdiscReceipt;

fn bytes_u32(what: &str, b: Bytes) -> Result<u32> {
    u32::try_from(b.get())
        .ok()
        .filter(|&v| v > 0)
        .ok_or_else(|| Error::invalid(format!("{what}: {b} must be between 1 byte and 4 GiB")))
}

impl Fault for RateLimit {
    const KIND: &'static str = "network.rate";
    const FINDS_LEFTOVERS: bool = true;
    type Spec = RateSpec;
    type Receipt = RateReceipt;

    fn new(spec: RateSpec) -> Result<RateLimit> {
        let target = spec.target_spec().validate()?;
        let rate_bytes = spec.rate.bits_per_sec() / 8;
        if rate_bytes == 0 || rate_bytes > MAX_RATE_BYTES {
            return Err(Error::invalid(format!(
                "rate: {} is out of range (8bit .. 34gbit)",
                spec.rate
            )));
        }
        let burst = match spec.burst {
            Some(b) => bytes_u32("burst", b)?,
            None => (rate_bytes / 100).clamp(16 * 1024, u32::MAX as u64) as u32,
        };
        if burst < 1600 {
            return Err(Error::invalid(format!(
                "burst: {} is smaller than one full-size packet (1600 bytes)",
                Bytes(burst as u64)
            )));
        }
        let limit = match spec.limit {
            Some(l) => bytes_u32("limit", l)?,
            None => (burst as u64 + rate_bytes * 4 / 10).min(u32::MAX as u64) as u32,
        };
        let tbf = TbfParams {
            rate_bytes: rate_bytes as u32,
            burst,
            limit,
        };
        Ok(RateLimit { spec, target, tbf })
    }

    fn info() -> KindInfo {
        KindInfo {
            summary: "Limits the bandwidth of outgoing traffic with a token bucket filter (tbf) under an htb \
                      root qdisc of our own; with destinations/ports/protocol only matching traffic is \
                      shaped (u32 filters). Revert deletes our root qdisc by its handle and restores the \
                      previous root qdisc.",
            privileges: "CAP_NET_ADMIN (and CAP_SYS_ADMIN to revert from another network namespace)",
            reversible: true,
            params: params![
                Param { name: "rate", ty: "rate", default: None, doc: "Bandwidth: \"10mbit\", \"500kbit\", \"1gbit\" (bits/s) or \"1mbps\" (bytes/s)." },
                Param { name: "burst", ty: "bytes", default: Some("max(rate x 10ms, 16KiB)"), doc: "Token bucket size." },
                Param { name: "limit", ty: "bytes", default: Some("burst + rate x 400ms"), doc: "Bytes that may wait in the queue before packets are dropped." },
            ],
            example: "kind = \"network.rate\"\nduration = \"30s\"\ninterface = \"eth0\"\nrate = \"1mbit\"\ndestinations = [\"10.0.0.0/24\"]\nports = [5432]\n",
        }
    }

    /// Unavailable without CAP_NET_ADMIN or without the htb, u32 and tbf modules.
    fn availability() -> fault_core::Availability {
        crate::avail::qdisc((
            "sch_tbf",
            "CONFIG_NET_SCH_TBF",
            "the tbf qdisc that limits the rate",
        ))
    }

    fn describe(&self) -> String {
        format!(
            "limit {} to {} (tbf)",
            self.target.describe(),
            self.spec.rate
        )
    }

    fn plan(&self, cx: &Context) -> Result<RateReceipt> {
        let effect = format!(
            "egress rate {} (tbf, burst {}, queue limit {})",
            human_rate(self.spec.rate.bits_per_sec()),
            Bytes(self.tbf.burst as u64).human(),
            Bytes(self.tbf.limit as u64).human()
        );
        shape::plan(cx, &self.target, &Leaf::Tbf(self.tbf), effect)
    }

    fn inject(&self, _cx: &Context, r: &mut RateReceipt) -> Result<()> {
        shape::inject(r, &Leaf::Tbf(self.tbf), &self.target)
    }

    fn verify(r: &RateReceipt) -> Result<Observation> {
        shape::verify(r)
    }

    fn revert(r: &RateReceipt) -> Result<()> {
        shape::revert(r)
    }

    fn manual_undo(r: &RateReceipt) -> Vec<String> {
        shape::manual_undo(r)
    }

    fn targets(r: &RateReceipt) -> Vec<String> {
        shape::targets(r)
    }

    fn touches(r: &RateReceipt) -> Vec<String> {
        shape::touches(r)
    }

    fn check_receipt(fault_id: &str, r: &RateReceipt) -> Result<()> {
        shape::check(fault_id, r)
    }

    /// Our root qdiscs with a tbf leaf, or whose leaf is missing (an inject cut short).
    fn leftovers(known: &[String]) -> Result<Vec<Leftover<RateReceipt>>> {
        shape::leftovers(known, Self::KIND)
    }
}

/// A bandwidth for people: "8 Mbit/s", "1.5 Gbit/s", "500 kbit/s".
pub(crate) fn human_rate(bits: u64) -> String {
    for (unit, size) in [("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)] {
        if bits as f64 >= size {
            let v = bits as f64 / size;
            let s = format!("{v:.3}");
            let s = s.trim_end_matches('0').trim_end_matches('.');
            return format!("{s} {unit}");
        }
    }
    format!("{bits} bit/s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!("8mbit".parse::<Rate>().unwrap().0, 8_000_000);
        assert_eq!("1.5mbit".parse::<Rate>().unwrap().0, 1_500_000);
        assert_eq!("100kbps".parse::<Rate>().unwrap().0, 800_000);
        assert!("100".parse::<Rate>().is_err());
        assert!("0bit".parse::<Rate>().is_err());
        assert_eq!(Rate(8_000_000).to_string(), "8mbit");
        assert_eq!(human_rate(8_000_000), "8 Mbit/s");
        assert_eq!(human_rate(1_500_000), "1.5 Mbit/s");
        assert_eq!(human_rate(500_000), "500 kbit/s");
        assert_eq!(human_rate(12), "12 bit/s");
    }

    #[test]
    fn spec_validation() {
        let spec =
            |v: serde_json::Value| serde_json::from_value::<RateSpec>(v).map_err(|e| e.to_string());
        let ok = spec(serde_json::json!({"rate": "1mbit"})).unwrap();
        let f = RateLimit::new(ok).unwrap();
        assert_eq!(f.tbf.rate_bytes, 125_000);
        assert_eq!(f.tbf.burst, 16 * 1024);
        assert!(spec(serde_json::json!({"rate": "1mbit", "bogus": 1})).is_err());
        let bad = spec(serde_json::json!({"rate": "100gbit"})).unwrap();
        assert!(RateLimit::new(bad).is_err());
        let bad =
            spec(serde_json::json!({"rate": "1mbit", "destinations": ["10.0.0.0/99"]})).unwrap();
        assert!(RateLimit::new(bad).is_err());
        let bad = spec(serde_json::json!({"rate": "1mbit", "burst": 100})).unwrap();
        assert!(RateLimit::new(bad).is_err());
    }
}
