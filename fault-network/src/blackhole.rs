//! `network.blackhole`: silently drop all matching traffic.
//!
//! **On the host:** one nftables table of our own, `inet chaos_<fault id>`, with base chains
//! at postrouting (egress) and/or prerouting (ingress) whose rules `counter drop` packets
//! leaving/arriving on the targeted interfaces (filtered by destinations/ports/protocol;
//! exclusions are `accept`ed first). For ingress, `destinations`/`ports` name the remote
//! side, i.e. the packets' source address and port, so `direction = "both"` cuts both
//! directions of the same conversation. Messages are written by hand over NETLINK_NETFILTER
//! ([`crate::nft`]); no `nft` binary, no libnftnl.
//!
//! **Privileges:** CAP_NET_ADMIN in the network namespace (and CAP_SYS_ADMIN to revert
//! from another namespace: see the crate docs).
//!
//! **Revert:** one `delete table` of our own table; it cannot touch anyone else's rules.

use fault_core::{Context, Fault, KindInfo, Leftover, Observation, Param, Result};
use serde::{Deserialize, Serialize};

use crate::nft::Dir;
use crate::spec::{net_spec, params};
use crate::table::{self, TableReceipt};
use crate::target::Targeting;

/// Which way the blackhole drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Outgoing packets.
    Egress,
    /// Incoming packets.
    Ingress,
    /// Both.
    #[default]
    Both,
}

impl Direction {
    fn effect(self) -> &'static str {
        match self {
            Direction::Egress => "drop egress",
            Direction::Ingress => "drop ingress",
            Direction::Both => "drop egress and ingress",
        }
    }
    fn dirs(self) -> &'static [Dir] {
        match self {
            Direction::Egress => &[Dir::Egress],
            Direction::Ingress => &[Dir::Ingress],
            Direction::Both => &[Dir::Egress, Dir::Ingress],
        }
    }
}

net_spec! {
    /// Parameters of `network.blackhole`.
    pub struct BlackholeSpec {
        /// egress, ingress or both (default).
        #[serde(default)]
        pub direction: Direction,
    }
}

/// The `network.blackhole` fault.
#[derive(Debug, Clone)]
pub struct Blackhole {
    spec: BlackholeSpec,
    target: Targeting,
}

/// Receipt of `network.blackhole`.
pub type BlackholeReceipt = TableReceipt;

impl Fault for Blackhole {
    const KIND: &'static str = "network.blackhole";
    const FINDS_LEFTOVERS: bool = true;
    type Spec = BlackholeSpec;
    type Receipt = BlackholeReceipt;

    fn new(spec: BlackholeSpec) -> Result<Blackhole> {
        let target = spec.target_spec().validate()?;
        Ok(Blackhole { spec, target })
    }

    fn info() -> KindInfo {
        KindInfo {
            summary: "Drops all matching traffic with an nftables table of our own (inet chaos_<fault id>, \
                      chains at postrouting/prerouting). Revert deletes that table, which cannot touch \
                      anyone else's rules.",
            privileges: "CAP_NET_ADMIN (and CAP_SYS_ADMIN to revert from another network namespace)",
            reversible: true,
            params: params![Param {
                name: "direction",
                ty: "string",
                default: Some("both"),
                doc: "egress, ingress or both; for ingress, destinations/ports match the remote (source) side.",
            }],
            example: "kind = \"network.blackhole\"\nduration = \"30s\"\ninterface = \"eth0\"\ndestinations = [\"10.0.0.5\"]\nports = [5432]\ndirection = \"both\"\n",
        }
    }

    /// Unavailable without CAP_NET_ADMIN or without a working nf_tables.
    fn availability() -> fault_core::Availability {
        crate::avail::nftables()
    }

    fn describe(&self) -> String {
        format!(
            "drop {} ({:?}, nftables)",
            self.target.describe(),
            self.spec.direction
        )
        .to_lowercase()
    }

    fn plan(&self, cx: &Context) -> Result<BlackholeReceipt> {
        table::plan(
            cx,
            &self.target,
            self.spec.direction.dirs(),
            &table::drop_tail(),
            "nftables drop",
            self.spec.direction.effect().to_string(),
        )
    }

    fn inject(&self, _cx: &Context, r: &mut BlackholeReceipt) -> Result<()> {
        table::inject(
            r,
            &self.target,
            self.spec.direction.dirs(),
            &table::drop_tail(),
        )
    }

    fn verify(r: &BlackholeReceipt) -> Result<Observation> {
        table::verify(r)
    }

    fn revert(r: &BlackholeReceipt) -> Result<()> {
        table::revert(r)
    }

    fn manual_undo(r: &BlackholeReceipt) -> Vec<String> {
        table::manual_undo(r)
    }

    fn targets(r: &BlackholeReceipt) -> Vec<String> {
        table::targets(r)
    }

    fn touches(r: &BlackholeReceipt) -> Vec<String> {
        table::touches(r)
    }

    fn check_receipt(fault_id: &str, r: &BlackholeReceipt) -> Result<()> {
        table::check(fault_id, r)
    }

    /// Our tables without a random-drop rule, in every reachable network namespace.
    fn leftovers(known: &[String]) -> Result<Vec<Leftover<BlackholeReceipt>>> {
        table::leftovers(known, Self::KIND)
    }
}
