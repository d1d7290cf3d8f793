//! `network.latency`: delay outgoing packets, with optional jitter and correlation (netem
//! `delay`).
//!
//! **On the host:** our htb root qdisc whose class carries `netem delay <delay> <jitter>
//! <correlation>`, on all or only matching traffic (see [`crate::shape`]).
//!
//! **Privileges:** CAP_NET_ADMIN (CAP_SYS_ADMIN to revert from another namespace). **Needs** netem (`CONFIG_NET_SCH_NETEM`): plan fails with
//! "qdisc netem is not available in this kernel" before anything changes otherwise.
//!
//! **Revert:** deletes our root qdisc by handle and restores the previous root qdisc.

use fault_core::{Fault, KindInfo, Param, Percent, Result};

use crate::netem::NetemParams;
use crate::shape::QdiscReceipt;
use crate::spec::{net_spec, netem_fault_body, params, pct};
use crate::target::Targeting;
use fault_core::{Duration, Error};

net_spec! {
    /// Parameters of `network.latency`.
    pub struct LatencySpec {
        /// Added delay (at most 60s).
        pub delay: Duration,
        /// Random variation around the delay (at most 60s).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub jitter: Option<Duration>,
        /// Correlation of successive delays.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub correlation: Option<Percent>,
    }
}

/// The `network.latency` fault.
#[derive(Debug, Clone)]
pub struct Latency {
    spec: LatencySpec,
    target: Targeting,
    delay_ns: u64,
    jitter_ns: u64,
}

impl Latency {
    fn netem(&self) -> NetemParams {
        NetemParams {
            limit: 1000,
            delay_ns: self.delay_ns,
            jitter_ns: self.jitter_ns,
            delay_corr: pct(self.spec.correlation),
            ..Default::default()
        }
    }
}

impl Fault for Latency {
    const KIND: &'static str = "network.latency";
    type Spec = LatencySpec;
    type Receipt = QdiscReceipt;

    fn new(spec: LatencySpec) -> Result<Latency> {
        let target = spec.target_spec().validate()?;
        let delay_ns = crate::spec::check_delay("delay", spec.delay)?;
        if delay_ns == 0 {
            return Err(Error::invalid("delay: must be more than 0"));
        }
        let jitter_ns = match spec.jitter {
            Some(j) => crate::spec::check_delay("jitter", j)?,
            None => 0,
        };
        Ok(Latency {
            spec,
            target,
            delay_ns,
            jitter_ns,
        })
    }

    fn info() -> KindInfo {
        KindInfo {
            summary: "Delays outgoing packets (netem delay, jitter, correlation) under an htb root qdisc of \
                      our own. Revert deletes it and restores the previous root qdisc. Needs netem.",
            privileges: "CAP_NET_ADMIN (and CAP_SYS_ADMIN to revert from another network namespace)",
            reversible: true,
            params: params![
                Param { name: "delay", ty: "duration", default: None, doc: "Added delay, at most 60s." },
                Param { name: "jitter", ty: "duration", default: Some("0s"), doc: "Random variation of the delay." },
                Param { name: "correlation", ty: "percent", default: Some("0"), doc: "Correlation of successive delays." },
            ],
            example: "kind = \"network.latency\"\nduration = \"1m\"\ninterface = \"eth0\"\ndelay = \"100ms\"\njitter = \"10ms\"\ndestinations = [\"10.0.0.0/24\"]\n",
        }
    }

    /// Unavailable without CAP_NET_ADMIN or without the htb, u32 and netem modules.
    fn availability() -> fault_core::Availability {
        crate::avail::netem()
    }

    fn describe(&self) -> String {
        let j = self
            .spec
            .jitter
            .map(|j| format!(" ± {j}"))
            .unwrap_or_default();
        format!(
            "delay {} by {}{j} (netem)",
            self.target.describe(),
            self.spec.delay
        )
    }

    netem_fault_body!();
}
