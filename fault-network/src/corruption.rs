//! `network.corruption`: corrupt a percentage of outgoing packets (netem `corrupt`: a random
//! bit flip).
//!
//! **On the host:** our htb root qdisc whose class carries `netem corrupt <percent>`, on all
//! or only matching traffic (see [`crate::shape`]). ARP is never corrupted: it has no
//! checksum, so a neighbour would take a corrupted ARP packet at its word and keep sending
//! to a wrong address after the revert, for minutes (Linux) to hours (some routers). On a
//! whole interface a filter sends ARP around the netem; targeted faults never classify it.
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

net_spec! {
    /// Parameters of `network.corruption`.
    pub struct CorruptionSpec {
        /// Share of packets corrupted.
        pub percent: Percent,
        /// Correlation with the previous packet.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub correlation: Option<Percent>,
    }
}

/// The `network.corruption` fault.
#[derive(Debug, Clone)]
pub struct Corruption {
    spec: CorruptionSpec,
    target: Targeting,
}

impl Corruption {
    fn netem(&self) -> NetemParams {
        NetemParams {
            limit: 1000,
            corrupt: self.spec.percent.get(),
            corrupt_corr: pct(self.spec.correlation),
            ..Default::default()
        }
    }
}

impl Fault for Corruption {
    const KIND: &'static str = "network.corruption";
    type Spec = CorruptionSpec;
    type Receipt = QdiscReceipt;

    fn new(spec: CorruptionSpec) -> Result<Corruption> {
        let target = spec.target_spec().validate()?;
        Ok(Corruption { spec, target })
    }

    fn info() -> KindInfo {
        KindInfo {
            summary: "Corrupts a percentage of outgoing packets (netem corrupt) under an htb root qdisc \
                      of our own; ARP is spared, since a corrupted ARP would teach neighbours a wrong \
                      address that outlives the revert. Revert deletes the qdisc and restores the \
                      previous root qdisc. Needs netem.",
            privileges: "CAP_NET_ADMIN (and CAP_SYS_ADMIN to revert from another network namespace)",
            reversible: true,
            params: params![
                Param { name: "percent", ty: "percent", default: None, doc: "Share of packets corrupted." },
                Param { name: "correlation", ty: "percent", default: Some("0"), doc: "Correlation with the previous packet." },
            ],
            example: "kind = \"network.corruption\"\nduration = \"30s\"\ninterface = \"eth0\"\npercent = 5\n",
        }
    }

    /// Unavailable without CAP_NET_ADMIN or without the htb, u32 and netem modules.
    fn availability() -> fault_core::Availability {
        crate::avail::netem()
    }

    fn describe(&self) -> String {
        format!(
            "corrupt {} of {} (netem)",
            self.spec.percent,
            self.target.describe()
        )
    }

    netem_fault_body!();
}
