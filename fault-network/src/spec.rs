//! The targeting fields every network spec shares, added to each spec by `net_spec!`
//! (serde's `flatten` cannot be combined with `deny_unknown_fields`).

use fault_core::Param;

/// Declare a spec struct with the common targeting fields appended.
macro_rules! net_spec {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$fmeta:meta])* pub $field:ident : $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
            /// Interface name, or list of names; default: the interface of the default route.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub interface: Option<$crate::target::OneOrMany>,
            /// Remote IPs/CIDRs to target; default: every destination.
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            pub destinations: Vec<String>,
            /// Remote host names to target, resolved once at plan (A and AAAA).
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            pub hosts: Vec<String>,
            /// Remote ports (1..=65535) to target; default: every port.
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            pub ports: Vec<u32>,
            /// Remote IPs/CIDRs left untouched even when otherwise targeted.
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            pub exclude_destinations: Vec<String>,
            /// Remote ports left untouched even when otherwise targeted.
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            pub exclude_ports: Vec<u32>,
            /// `all` (default), `tcp`, `udp` or `icmp`.
            #[serde(default)]
            pub protocol: $crate::target::Protocol,
        }

        impl $name {
            fn target_spec(&self) -> $crate::target::TargetSpec {
                $crate::target::TargetSpec {
                    interface: self.interface.clone(),
                    destinations: self.destinations.clone(),
                    hosts: self.hosts.clone(),
                    ports: self.ports.clone(),
                    exclude_destinations: self.exclude_destinations.clone(),
                    exclude_ports: self.exclude_ports.clone(),
                    protocol: self.protocol,
                }
            }
        }
    };
}
pub(crate) use net_spec;

/// Build a `&'static [Param]` of kind-specific params followed by the common ones.
macro_rules! params {
    ($($p:expr),* $(,)?) => {
        &[
            $($p,)*
            $crate::spec::P_INTERFACE,
            $crate::spec::P_DESTINATIONS,
            $crate::spec::P_HOSTS,
            $crate::spec::P_PORTS,
            $crate::spec::P_EXCLUDE_DESTINATIONS,
            $crate::spec::P_EXCLUDE_PORTS,
            $crate::spec::P_PROTOCOL,
        ]
    };
}
pub(crate) use params;

pub(crate) const P_INTERFACE: Param = Param {
    name: "interface",
    ty: "string or list of strings",
    default: Some("the interface of the default route"),
    doc: "Interface(s) the fault applies to.",
};
pub(crate) const P_DESTINATIONS: Param = Param {
    name: "destinations",
    ty: "list of IPs/CIDRs",
    default: Some("all"),
    doc: "Only traffic to (egress) or from (ingress) these networks is affected.",
};
pub(crate) const P_HOSTS: Param = Param {
    name: "hosts",
    ty: "list of host names",
    default: Some("none"),
    doc: "Like destinations, by name: each is resolved once, at plan, through the system resolver \
          (getaddrinfo: /etc/hosts, DNS; IPv4 and IPv6), and the fault matches exactly the addresses \
          found, which the receipt records and the dry run shows; revert never resolves again. \
          A name that does not resolve fails the plan, nothing changed. Excluded destinations \
          (and, under the daemon, the spared control plane and DNS resolvers) still win.",
};
pub(crate) const P_PORTS: Param = Param {
    name: "ports",
    ty: "list of integers 1..=65535",
    default: Some("all"),
    doc: "Only traffic to these remote ports (from them, for ingress) is affected.",
};
pub(crate) const P_EXCLUDE_DESTINATIONS: Param = Param {
    name: "exclude_destinations",
    ty: "list of IPs/CIDRs",
    default: Some("none"),
    doc: "Traffic with these remote networks is never affected.",
};
pub(crate) const P_EXCLUDE_PORTS: Param = Param {
    name: "exclude_ports",
    ty: "list of integers 1..=65535",
    default: Some("none"),
    doc: "Traffic with these remote TCP/UDP ports is never affected.",
};
pub(crate) const P_PROTOCOL: Param = Param {
    name: "protocol",
    ty: "string",
    default: Some("all"),
    doc: "all, tcp, udp or icmp.",
};

/// Bounds every delay/jitter is checked against.
pub(crate) const MAX_DELAY: std::time::Duration = std::time::Duration::from_secs(60);

/// Check a duration is at most [`MAX_DELAY`].
pub(crate) fn check_delay(what: &str, d: fault_core::Duration) -> fault_core::Result<u64> {
    if d.std() > MAX_DELAY {
        return Err(fault_core::Error::invalid(format!(
            "{what}: {d} is more than the 60s limit"
        )));
    }
    Ok(d.std().as_nanos() as u64)
}

/// The plan/inject/verify/revert/manual_undo/targets/touches/check_receipt/leftovers of a
/// netem kind (a type with `target: Targeting` and `fn netem(&self) -> NetemParams`).
macro_rules! netem_fault_body {
    () => {
        fn plan(
            &self,
            cx: &fault_core::Context,
        ) -> fault_core::Result<$crate::shape::QdiscReceipt> {
            $crate::shape::require_netem()?;
            $crate::shape::plan(
                cx,
                &self.target,
                &$crate::shape::Leaf::Netem(self.netem()),
                self.netem().effect(),
            )
        }
        fn inject(
            &self,
            _cx: &fault_core::Context,
            r: &mut $crate::shape::QdiscReceipt,
        ) -> fault_core::Result<()> {
            $crate::shape::inject(r, &$crate::shape::Leaf::Netem(self.netem()), &self.target)
        }
        fn verify(r: &$crate::shape::QdiscReceipt) -> fault_core::Result<fault_core::Observation> {
            $crate::shape::verify(r)
        }
        fn revert(r: &$crate::shape::QdiscReceipt) -> fault_core::Result<()> {
            $crate::shape::revert(r)
        }
        fn manual_undo(r: &$crate::shape::QdiscReceipt) -> Vec<String> {
            $crate::shape::manual_undo(r)
        }
        fn targets(r: &$crate::shape::QdiscReceipt) -> Vec<String> {
            $crate::shape::targets(r)
        }
        fn touches(r: &$crate::shape::QdiscReceipt) -> Vec<String> {
            $crate::shape::touches(r)
        }
        fn check_receipt(
            fault_id: &str,
            r: &$crate::shape::QdiscReceipt,
        ) -> fault_core::Result<()> {
            $crate::shape::check(fault_id, r)
        }
        const FINDS_LEFTOVERS: bool = true;
        fn leftovers(
            known: &[String],
        ) -> fault_core::Result<Vec<fault_core::Leftover<$crate::shape::QdiscReceipt>>> {
            $crate::shape::leftovers(known, Self::KIND)
        }
    };
}
pub(crate) use netem_fault_body;

/// A percentage's value, 0 when absent.
pub(crate) fn pct(p: Option<fault_core::Percent>) -> f64 {
    p.map(|p| p.get()).unwrap_or(0.0)
}
