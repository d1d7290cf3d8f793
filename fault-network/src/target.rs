//! Common targeting: interfaces, destinations/ports to include, destinations/ports to
//! exclude, protocol. Parsed and validated once; expanded into u32 filters (tc faults) and
//! nf_tables matches (blackhole, loss fallback).

use std::net::IpAddr;

use fault_core::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};

/// Most filters (or rules) one fault may expand into.
pub(crate) const MAX_SELECTORS: usize = 256;

/// One interface name or a list of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// `interface = "eth0"`
    One(String),
    /// `interface = ["eth0", "eth1"]`
    Many(Vec<String>),
}

impl OneOrMany {
    fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// A network: an address and a prefix length; host bits are cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cidr {
    /// Network address.
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// Parse `"10.0.0.0/24"`, `"10.0.0.1"`, `"fd00::/64"`.
    pub fn parse(s: &str) -> std::result::Result<Cidr, String> {
        let (a, p) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("\"{s}\" is not an IP address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|&n| n <= max)
                .ok_or_else(|| format!("\"{s}\": prefix length must be 0..={max}"))?,
        };
        let addr = match addr {
            IpAddr::V4(v) => {
                let m = if prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - prefix as u32)
                };
                IpAddr::V4((u32::from(v) & m).into())
            }
            IpAddr::V6(v) => {
                let m = if prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - prefix as u32)
                };
                IpAddr::V6((u128::from(v) & m).into())
            }
        };
        Ok(Cidr { addr, prefix })
    }
    /// Whether it is IPv6.
    pub fn is_v6(&self) -> bool {
        self.addr.is_ipv6()
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Transport protocol filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Any protocol.
    #[default]
    All,
    /// TCP only.
    Tcp,
    /// UDP only.
    Udp,
    /// ICMP (IPv4) and ICMPv6.
    Icmp,
}

/// The common targeting fields, as written in every network spec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TargetSpec {
    pub(crate) interface: Option<OneOrMany>,
    pub(crate) destinations: Vec<String>,
    pub(crate) ports: Vec<u32>,
    pub(crate) exclude_destinations: Vec<String>,
    pub(crate) exclude_ports: Vec<u32>,
    pub(crate) protocol: Protocol,
}

/// Validated targeting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Targeting {
    /// Named interfaces; empty = the interface of the default route, resolved at plan.
    pub(crate) interfaces: Vec<String>,
    pub(crate) destinations: Vec<Cidr>,
    pub(crate) ports: Vec<u16>,
    pub(crate) exclude_destinations: Vec<Cidr>,
    pub(crate) exclude_ports: Vec<u16>,
    pub(crate) protocol: Protocol,
}

/// Match on one class of packets: family, remote network, transport protocol, remote port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Selector {
    pub(crate) v6: bool,
    pub(crate) net: Option<Cidr>,
    pub(crate) l4: Option<u8>,
    pub(crate) port: Option<u16>,
}

fn port(p: u32, what: &str) -> Result<u16> {
    if (1..=65535).contains(&p) {
        Ok(p as u16)
    } else {
        Err(Error::invalid(format!(
            "{what}: port {p} is out of range 1..=65535"
        )))
    }
}

pub(crate) fn valid_ifname(n: &str) -> Result<()> {
    if n.is_empty() || n.len() > 15 || n.contains('/') || n.contains(char::is_whitespace) {
        return Err(Error::invalid(format!(
            "interface: \"{n}\" is not a valid interface name (1 to 15 characters, no '/' or spaces)"
        )));
    }
    Ok(())
}

impl TargetSpec {
    /// Validate.
    pub(crate) fn validate(&self) -> Result<Targeting> {
        let interfaces = self
            .interface
            .as_ref()
            .map(|i| i.to_vec())
            .unwrap_or_default();
        if matches!(self.interface, Some(OneOrMany::Many(ref v)) if v.is_empty()) {
            return Err(Error::invalid(
                "interface: empty list (omit it to use the interface of the default route)",
            ));
        }
        for i in &interfaces {
            valid_ifname(i)?;
        }
        let cidrs = |v: &[String], what: &str| -> Result<Vec<Cidr>> {
            v.iter()
                .map(|s| Cidr::parse(s).map_err(|e| Error::invalid(format!("{what}: {e}"))))
                .collect()
        };
        let t = Targeting {
            interfaces,
            destinations: cidrs(&self.destinations, "destinations")?,
            ports: self
                .ports
                .iter()
                .map(|&p| port(p, "ports"))
                .collect::<Result<_>>()?,
            exclude_destinations: cidrs(&self.exclude_destinations, "exclude_destinations")?,
            exclude_ports: self
                .exclude_ports
                .iter()
                .map(|&p| port(p, "exclude_ports"))
                .collect::<Result<_>>()?,
            protocol: self.protocol,
        };
        if t.protocol == Protocol::Icmp && !t.ports.is_empty() {
            return Err(Error::invalid(
                "ports: ICMP has no ports; drop `ports` or choose tcp/udp",
            ));
        }
        let n = t.includes().len() + t.excludes().len();
        if n > MAX_SELECTORS {
            return Err(Error::invalid(format!(
                "targeting expands into {n} filters (destinations x ports x protocols), more than {MAX_SELECTORS}; use CIDRs"
            )));
        }
        Ok(t)
    }
}

impl Targeting {
    /// True when every packet of the interface is targeted (minus exclusions).
    pub(crate) fn is_whole(&self) -> bool {
        self.destinations.is_empty() && self.ports.is_empty() && self.protocol == Protocol::All
    }

    fn l4s(&self, v6: bool) -> Vec<Option<u8>> {
        match (self.protocol, self.ports.is_empty()) {
            (Protocol::All, true) => vec![None],
            (Protocol::All, false) => vec![Some(6), Some(17)],
            (Protocol::Tcp, _) => vec![Some(6)],
            (Protocol::Udp, _) => vec![Some(17)],
            (Protocol::Icmp, _) => vec![Some(if v6 { 58 } else { 1 })],
        }
    }

    /// The selectors of targeted traffic (empty when [`Targeting::is_whole`]).
    pub(crate) fn includes(&self) -> Vec<Selector> {
        if self.is_whole() {
            return Vec::new();
        }
        let nets: Vec<(bool, Option<Cidr>)> = if self.destinations.is_empty() {
            vec![(false, None), (true, None)]
        } else {
            self.destinations
                .iter()
                .map(|c| (c.is_v6(), Some(*c)))
                .collect()
        };
        let ports: Vec<Option<u16>> = if self.ports.is_empty() {
            vec![None]
        } else {
            self.ports.iter().map(|&p| Some(p)).collect()
        };
        let mut out = Vec::new();
        for (v6, net) in nets {
            for l4 in self.l4s(v6) {
                for &port in &ports {
                    out.push(Selector { v6, net, l4, port });
                }
            }
        }
        out
    }

    /// The selectors of excluded traffic, matched first and left alone.
    pub(crate) fn excludes(&self) -> Vec<Selector> {
        let mut out: Vec<Selector> = self
            .exclude_destinations
            .iter()
            .map(|c| Selector {
                v6: c.is_v6(),
                net: Some(*c),
                l4: None,
                port: None,
            })
            .collect();
        for &p in &self.exclude_ports {
            for v6 in [false, true] {
                for l4 in [6u8, 17] {
                    out.push(Selector {
                        v6,
                        net: None,
                        l4: Some(l4),
                        port: Some(p),
                    });
                }
            }
        }
        out
    }

    /// Which traffic, for people: "all traffic", "traffic to 10.0.0.0/24 port 80 tcp",
    /// with " except ..." for exclusions.
    pub(crate) fn traffic(&self) -> String {
        let mut s = String::new();
        if self.is_whole() {
            s.push_str("all traffic");
        } else {
            let mut parts = Vec::new();
            if !self.destinations.is_empty() {
                let d: Vec<String> = self.destinations.iter().map(|c| c.to_string()).collect();
                parts.push(format!("to {}", d.join(", ")));
            }
            if !self.ports.is_empty() {
                let p: Vec<String> = self.ports.iter().map(|p| p.to_string()).collect();
                parts.push(format!("port {}", p.join(",")));
            }
            if self.protocol != Protocol::All {
                parts.push(format!("{:?}", self.protocol).to_lowercase());
            }
            s.push_str(&format!("traffic {}", parts.join(" ")));
        }
        if !self.exclude_destinations.is_empty() || !self.exclude_ports.is_empty() {
            let mut ex: Vec<String> = self
                .exclude_destinations
                .iter()
                .map(|c| c.to_string())
                .collect();
            ex.extend(self.exclude_ports.iter().map(|p| format!("port {p}")));
            s.push_str(&format!(" except {}", ex.join(", ")));
        }
        s
    }

    /// A short human description ("traffic to 10.0.0.0/24 port 80 tcp, except ... on eth0").
    pub(crate) fn describe(&self) -> String {
        let ifs = if self.interfaces.is_empty() {
            "the default-route interface".to_string()
        } else {
            self.interfaces.join(", ")
        };
        format!("{} on {ifs}", self.traffic())
    }
}

/// A resolved interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Name at plan time.
    pub name: String,
    /// Index at plan time.
    pub ifindex: u32,
}

/// `if_nametoindex` in the calling thread's network namespace.
pub(crate) fn ifindex(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: c is a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// The interface of the IPv4 (else IPv6) default route with the lowest metric, read from
/// this thread's network namespace (`/proc/thread-self/net`).
pub(crate) fn default_route_interface() -> Option<String> {
    let mut best: Option<(u32, String)> = None;
    if let Ok(t) = std::fs::read_to_string("/proc/thread-self/net/route") {
        for l in t.lines().skip(1) {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() > 7 && f[1] == "00000000" && f[7] == "00000000" {
                let metric = f[6].parse().unwrap_or(u32::MAX);
                if best.as_ref().is_none_or(|(m, _)| metric < *m) {
                    best = Some((metric, f[0].to_string()));
                }
            }
        }
    }
    if best.is_none() {
        if let Ok(t) = std::fs::read_to_string("/proc/thread-self/net/ipv6_route") {
            for l in t.lines() {
                let f: Vec<&str> = l.split_whitespace().collect();
                if f.len() >= 10
                    && f[0] == "00000000000000000000000000000000"
                    && f[1] == "00"
                    && f[9] != "lo"
                {
                    let metric = u32::from_str_radix(f[5], 16).unwrap_or(u32::MAX);
                    if best.as_ref().is_none_or(|(m, _)| metric < *m) {
                        best = Some((metric, f[9].to_string()));
                    }
                }
            }
        }
    }
    best.map(|(_, n)| n)
}

/// Resolve the targeted interfaces (plan time).
pub(crate) fn resolve_interfaces(t: &Targeting) -> Result<Vec<Interface>> {
    let names = if t.interfaces.is_empty() {
        vec![default_route_interface().ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                "no interface given and there is no default route to take it from",
            )
        })?]
    } else {
        t.interfaces.clone()
    };
    let mut out = Vec::new();
    for name in names {
        let ifindex = ifindex(&name).ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("interface \"{name}\" does not exist"),
            )
        })?;
        if out.iter().any(|i: &Interface| i.ifindex == ifindex) {
            continue;
        }
        out.push(Interface { name, ifindex });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_mask() {
        assert_eq!(
            Cidr::parse("10.1.2.3/24").unwrap().to_string(),
            "10.1.2.0/24"
        );
        assert_eq!(Cidr::parse("10.1.2.3").unwrap().prefix, 32);
        assert_eq!(Cidr::parse("fd00::1/64").unwrap().to_string(), "fd00::/64");
        assert!(Cidr::parse("10.1.2.3/33").is_err());
        assert!(Cidr::parse("nope").is_err());
    }

    #[test]
    fn expansion() {
        let t = TargetSpec {
            destinations: vec!["10.0.0.0/8".into(), "fd00::/8".into()],
            ports: vec![80, 443],
            ..Default::default()
        }
        .validate()
        .unwrap();
        // 2 nets x (tcp, udp) x 2 ports
        assert_eq!(t.includes().len(), 8);
        let w = TargetSpec::default().validate().unwrap();
        assert!(w.is_whole() && w.includes().is_empty());
        assert!(TargetSpec {
            ports: vec![0],
            ..Default::default()
        }
        .validate()
        .is_err());
        assert!(TargetSpec {
            ports: vec![70000],
            ..Default::default()
        }
        .validate()
        .is_err());
        assert!(TargetSpec {
            ports: vec![1],
            protocol: Protocol::Icmp,
            ..Default::default()
        }
        .validate()
        .is_err());
    }
}
