//! `network.duplication`: duplicate a percentage of outgoing packets (netem `duplicate`).
//!
//! **On the host:** our htb root qdisc whose class carries `netem duplicate <percent>`, on
//! all or only matching traffic (see [`crate::shape`]).
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
    /// Parameters of `network.duplication`.
    pub struct DuplicationSpec {
        /// Share of packets duplicated.
        pub percent: Percent,
        /// Correlation with the previous packet.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub correlation: Option<Percent>,
    }
}

/// The `network.duplication` fault.
#[derive(Debug, Clone)]
pub struct Duplication {
    spec: DuplicationSpec,
    target: Targeting,
}

impl Duplication {
    fn netem(&self) -> NetemParams {
        NetemParams {
            limit: 1000,
            duplicate: self.spec.percent.get(),
            dup_corr: pct(self.spec.correlation),
            ..Default::default()
        }
    }
}

impl Fault for Duplication {
    const KIND: &'static str = "network.duplication";
    type Spec = DuplicationSpec;
    type Receipt = QdiscReceipt;

    fn new(spec: DuplicationSpec) -> Result<Duplication> {
        let target = spec.target_spec().validate()?;
        Ok(Duplication { spec, target })
    }

    fn info() -> KindInfo {
        KindInfo {
            summary: "Duplicates a percentage of outgoing packets (netem duplicate) under an htb root qdisc \
                      of our own. Revert deletes it and restores the previous root qdisc. Needs netem.",
            privileges: "CAP_NET_ADMIN (and CAP_SYS_ADMIN to revert from another network namespace)",
            reversible: true,
            params: params![
                Param { name: "percent", ty: "percent", default: None, doc: "Share of packets duplicated." },
                Param { name: "correlation", ty: "percent", default: Some("0"), doc: "Correlation with the previous packet." },
            ],
            example: "kind = \"network.duplication\"\nduration = \"30s\"\ninterface = \"eth0\"\npercent = 5\n",
        }
    }

    /// Unavailable without CAP_NET_ADMIN or without the htb, u32 and netem modules.
    fn availability() -> fault_core::Availability {
        crate::avail::netem()
    }

    fn describe(&self) -> String {
        format!(
            "duplicate {} of {} (netem)",
            self.spec.percent,
            self.target.describe()
        )
    }

    netem_fault_body!();
}
