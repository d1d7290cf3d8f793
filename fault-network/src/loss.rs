//! `network.loss`: drop a percentage of outgoing packets.
//!
//! **On the host:** with netem (mechanism `netem`), our htb root qdisc whose class carries
//! `netem loss <percent> [<correlation>]` (see [`crate::shape`]). Where the kernel has no
//! netem (mechanism `nftables`), one nftables table of our own, `inet chaos_<fault id>`,
//! whose postrouting rules drop packets with `numgen random mod 10000 < percent x 100`
//! (0.01 % resolution; no correlation). `mechanism = "auto"` (default) probes netem at plan
//! and falls back; the receipt, `verify` and `describe` say which one is used.
//!
//! **Privileges:** CAP_NET_ADMIN (and CAP_SYS_ADMIN to revert from another namespace).
//!
//! **Revert:** netem: delete our root qdisc and restore the previous one; nftables: delete
//! our table.

use fault_core::{
    Context, Error, ErrorKind, Fault, KindInfo, Leftover, Observation, Param, Percent, Result,
};
use serde::{Deserialize, Serialize};

use crate::netem::NetemParams;
use crate::nft::{self, Dir, Expr};
use crate::shape::{self, Leaf, QdiscReceipt, NETEM_MISSING};
use crate::spec::{net_spec, params};
use crate::table::{self, TableReceipt};
use crate::target::Targeting;

/// How loss is produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LossMechanism {
    /// netem when the kernel has it, else nftables.
    #[default]
    Auto,
    /// netem only.
    Netem,
    /// nftables random drops only.
    Nftables,
}

net_spec! {
    /// Parameters of `network.loss`.
    pub struct LossSpec {
        /// Share of packets dropped.
        pub percent: Percent,
        /// netem loss correlation (not available with the nftables mechanism).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub correlation: Option<Percent>,
        /// auto (default), netem or nftables.
        #[serde(default)]
        pub mechanism: LossMechanism,
    }
}

/// Receipt of `network.loss`: which mechanism, and its receipt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase")]
pub enum LossReceipt {
    /// Loss by netem under our htb root.
    Netem(QdiscReceipt),
    /// Loss by an nftables random-drop rule.
    Nftables(TableReceipt),
}

/// The `network.loss` fault.
#[derive(Debug, Clone)]
pub struct Loss {
    spec: LossSpec,
    target: Targeting,
}

impl Loss {
    fn netem(&self) -> NetemParams {
        NetemParams {
            limit: 1000,
            loss: self.spec.percent.get(),
            loss_corr: self.spec.correlation.map(|c| c.get()).unwrap_or(0.0),
            ..Default::default()
        }
    }
    fn tail(&self) -> Vec<Expr> {
        let mut t = nft::random_below(self.spec.percent.get());
        t.extend(table::drop_tail());
        t
    }
}

impl Fault for Loss {
    const KIND: &'static str = "network.loss";
    const FINDS_LEFTOVERS: bool = true;
    type Spec = LossSpec;
    type Receipt = LossReceipt;

    fn new(spec: LossSpec) -> Result<Loss> {
        let target = spec.target_spec().validate()?;
        let corr = spec.correlation.map(|c| c.get()).unwrap_or(0.0);
        if spec.mechanism == LossMechanism::Nftables && corr > 0.0 {
            return Err(Error::invalid(
                "correlation: the nftables mechanism drops packets independently; remove correlation or use netem",
            ));
        }
        Ok(Loss { spec, target })
    }

    fn info() -> KindInfo {
        KindInfo {
            summary: "Drops a percentage of outgoing packets: netem under an htb root qdisc of our own, or, \
                      where the kernel lacks netem, an nftables table of our own with a random-drop rule \
                      (numgen). Revert deletes our qdisc (restoring the previous root qdisc) or our table.",
            privileges: "CAP_NET_ADMIN (and CAP_SYS_ADMIN to revert from another network namespace)",
            reversible: true,
            params: params![
                Param { name: "percent", ty: "percent", default: None, doc: "Share of packets dropped, 0..100." },
                Param { name: "correlation", ty: "percent", default: Some("0"), doc: "netem loss correlation (netem only)." },
                Param { name: "mechanism", ty: "string", default: Some("auto"), doc: "auto, netem or nftables." },
            ],
            example: "kind = \"network.loss\"\nduration = \"30s\"\ninterface = \"eth0\"\npercent = 20\ndestinations = [\"10.0.0.0/24\"]\n",
        }
    }

    /// Either mechanism will do: netem (htb, u32, netem) or nftables (nf_tables, numgen).
    /// With only one of them, specs asking for the other (`mechanism = ...`) are refused at
    /// plan, so the kind is degraded; with neither, unavailable.
    fn availability() -> fault_core::Availability {
        let netem = crate::avail::netem();
        let mut nft = crate::avail::nftables();
        crate::avail::module(
            &mut nft,
            "nft_numgen",
            "CONFIG_NFT_NUMGEN",
            "the random numbers of the nftables drop rule",
        );
        match (netem.runnable(), nft.runnable()) {
            (true, true) => {
                let mut a = netem;
                a.merge(nft);
                a
            }
            (false, true) => {
                let mut a = nft;
                a.degrade(
                    format!(
                        "only mechanism = \"nftables\" works (the default, \"auto\", uses it); \
                         netem: {}",
                        netem.reasons.join("; ")
                    ),
                    netem.fixes.first().cloned(),
                );
                a
            }
            (true, false) => {
                let mut a = netem;
                a.degrade(
                    format!(
                        "only mechanism = \"netem\" works (the default, \"auto\", uses it); \
                         nftables: {}",
                        nft.reasons.join("; ")
                    ),
                    nft.fixes.first().cloned(),
                );
                a
            }
            (false, false) => {
                let mut a = netem;
                a.merge(nft);
                a
            }
        }
    }

    fn describe(&self) -> String {
        let how = match self.spec.mechanism {
            LossMechanism::Auto => {
                "netem, or an nftables random-drop rule where netem is unavailable"
            }
            LossMechanism::Netem => "netem",
            LossMechanism::Nftables => "nftables random-drop rule",
        };
        format!(
            "drop {} of {} ({how})",
            self.spec.percent,
            self.target.describe()
        )
    }

    fn plan(&self, cx: &Context) -> Result<LossReceipt> {
        let use_netem = match self.spec.mechanism {
            LossMechanism::Netem => {
                shape::require_netem()?;
                true
            }
            LossMechanism::Nftables => false,
            LossMechanism::Auto => match shape::netem_available() {
                Some(false) => {
                    if self.spec.correlation.is_some_and(|c| c.get() > 0.0) {
                        return Err(Error::new(
                            ErrorKind::Unsupported,
                            format!("{NETEM_MISSING}, and the nftables fallback cannot honour a loss correlation"),
                        ));
                    }
                    false
                }
                _ => true,
            },
        };
        if use_netem {
            Ok(LossReceipt::Netem(shape::plan(
                cx,
                &self.target,
                &Leaf::Netem(self.netem()),
                self.netem().effect(),
            )?))
        } else {
            Ok(LossReceipt::Nftables(table::plan(
                cx,
                &self.target,
                &[Dir::Egress],
                &self.tail(),
                &format!("nftables random drop of {} (numgen), used because netem is unavailable or not chosen", self.spec.percent),
                format!("drop {} of egress packets (nftables random drop)", self.spec.percent),
            )?))
        }
    }

    fn inject(&self, _cx: &Context, r: &mut LossReceipt) -> Result<()> {
        match r {
            LossReceipt::Netem(q) => shape::inject(q, &Leaf::Netem(self.netem()), &self.target),
            LossReceipt::Nftables(t) => {
                table::inject(t, &self.target, &[Dir::Egress], &self.tail())
            }
        }
    }

    fn verify(r: &LossReceipt) -> Result<Observation> {
        match r {
            LossReceipt::Netem(q) => shape::verify(q),
            LossReceipt::Nftables(t) => table::verify(t),
        }
    }

    fn revert(r: &LossReceipt) -> Result<()> {
        match r {
            LossReceipt::Netem(q) => shape::revert(q),
            LossReceipt::Nftables(t) => table::revert(t),
        }
    }

    fn manual_undo(r: &LossReceipt) -> Vec<String> {
        match r {
            LossReceipt::Netem(q) => shape::manual_undo(q),
            LossReceipt::Nftables(t) => table::manual_undo(t),
        }
    }

    fn targets(r: &LossReceipt) -> Vec<String> {
        match r {
            LossReceipt::Netem(q) => shape::targets(q),
            LossReceipt::Nftables(t) => table::targets(t),
        }
    }

    fn touches(r: &LossReceipt) -> Vec<String> {
        match r {
            LossReceipt::Netem(q) => shape::touches(q),
            LossReceipt::Nftables(t) => table::touches(t),
        }
    }

    fn check_receipt(fault_id: &str, r: &LossReceipt) -> Result<()> {
        match r {
            LossReceipt::Netem(q) => shape::check(fault_id, q),
            LossReceipt::Nftables(t) => table::check(fault_id, t),
        }
    }

    /// Our root qdiscs whose netem leaf drops packets, and our tables with a random-drop
    /// rule, in every reachable network namespace.
    fn leftovers(known: &[String]) -> Result<Vec<Leftover<LossReceipt>>> {
        let mut out: Vec<Leftover<LossReceipt>> = shape::leftovers(known, Self::KIND)?
            .into_iter()
            .map(|l| Leftover {
                fault_id: l.fault_id,
                found: l.found,
                receipt: LossReceipt::Netem(l.receipt),
            })
            .collect();
        out.extend(
            table::leftovers(known, Self::KIND)?
                .into_iter()
                .map(|l| Leftover {
                    fault_id: l.fault_id,
                    found: l.found,
                    receipt: LossReceipt::Nftables(l.receipt),
                }),
        );
        Ok(out)
    }
}
