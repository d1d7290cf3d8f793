//! `network.reorder`: send a percentage of outgoing packets ahead of the others, which are
//! held back by a base delay (netem `delay ... reorder ... gap`).
//!
//! **On the host:** our htb root qdisc whose class carries `netem delay <delay> reorder
//! <percent> <correlation> gap <gap>`, on all or only matching traffic (see
//! [`crate::shape`]).
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
    /// Parameters of `network.reorder`.
    pub struct ReorderSpec {
        /// Share of packets sent immediately (out of order).
        pub percent: Percent,
        /// Correlation with the previous packet.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub correlation: Option<Percent>,
        /// Base delay of the other packets (required by netem to reorder; at most 60s).
        pub delay: Duration,
        /// Reorder only every gap-th packet (netem `gap`); default 1 = any packet.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub gap: Option<u32>,
    }
}

/// The `network.reorder` fault.
#[derive(Debug, Clone)]
pub struct Reorder {
    spec: ReorderSpec,
    target: Targeting,
    delay_ns: u64,
}

impl Reorder {
    fn netem(&self) -> NetemParams {
        NetemParams {
            limit: 1000,
            delay_ns: self.delay_ns,
            reorder: self.spec.percent.get(),
            reorder_corr: pct(self.spec.correlation),
            gap: self.spec.gap.unwrap_or(1),
            ..Default::default()
        }
    }
}

impl Fault for Reorder {
    const KIND: &'static str = "network.reorder";
    type Spec = ReorderSpec;
    type Receipt = QdiscReceipt;

    fn new(spec: ReorderSpec) -> Result<Reorder> {
        let target = spec.target_spec().validate()?;
        let delay_ns = crate::spec::check_delay("delay", spec.delay)?;
        if delay_ns == 0 {
            return Err(Error::invalid(
                "delay: reordering needs a base delay of more than 0",
            ));
        }
        if spec.gap == Some(0) {
            return Err(Error::invalid("gap: must be at least 1"));
        }
        Ok(Reorder {
            spec,
            target,
            delay_ns,
        })
    }

    fn info() -> KindInfo {
        KindInfo {
            summary: "Reorders outgoing packets: netem holds packets back by a base delay and sends a \
                      percentage of them at once, under an htb root qdisc of our own. Revert deletes it \
                      and restores the previous root qdisc. Needs netem.",
            privileges: "CAP_NET_ADMIN (and CAP_SYS_ADMIN to revert from another network namespace)",
            reversible: true,
            params: params![
                Param { name: "percent", ty: "percent", default: None, doc: "Share of packets sent out of order." },
                Param { name: "correlation", ty: "percent", default: Some("0"), doc: "Correlation with the previous packet." },
                Param { name: "delay", ty: "duration", default: None, doc: "Base delay of the other packets." },
                Param { name: "gap", ty: "integer", default: Some("1"), doc: "Reorder only every gap-th packet." },
            ],
            example: "kind = \"network.reorder\"\nduration = \"30s\"\ninterface = \"eth0\"\npercent = 25\ndelay = \"10ms\"\n",
        }
    }

    /// Unavailable without CAP_NET_ADMIN or without the htb, u32 and netem modules.
    fn availability() -> fault_core::Availability {
        crate::avail::netem()
    }

    fn describe(&self) -> String {
        format!(
            "reorder {} of {} (base delay {}, netem)",
            self.spec.percent,
            self.target.describe(),
            self.spec.delay
        )
    }

    netem_fault_body!();
}
