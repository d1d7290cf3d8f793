//! Common targeting: interfaces, destinations (networks and host names)/ports to include,
//! destinations/ports to exclude, protocol. Parsed and validated once; expanded into u32
//! filters (tc faults) and nf_tables matches (blackhole, loss fallback).
//!
//! **Host names** (`hosts`) are resolved once, at plan, through the system resolver
//! (`getaddrinfo`: `/etc/hosts`, DNS, whatever nsswitch says; A and AAAA). The receipt records
//! each name with its addresses, inject matches exactly those addresses (as /32 and /128
//! destinations), and nothing later resolves again: revert deletes what the receipt names,
//! whatever the name resolves to by then. A name that does not resolve fails the plan.

use std::net::IpAddr;

use fault_core::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};

/// Most filters (or rules) one fault may expand into.
pub(crate) const MAX_SELECTORS: usize = 256;
/// Most host names one fault may name.
pub(crate) const MAX_HOSTS: usize = 32;
/// Longest host name (without a trailing dot), as DNS allows.
const MAX_HOSTNAME: usize = 253;

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
    /// The network of exactly one address (/32 or /128).
    pub fn host(addr: IpAddr) -> Cidr {
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        Cidr { addr, prefix }
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
    pub(crate) hosts: Vec<String>,
    pub(crate) ports: Vec<u32>,
    pub(crate) exclude_destinations: Vec<String>,
    pub(crate) exclude_ports: Vec<u32>,
    pub(crate) protocol: Protocol,
}

/// A host name and the addresses it resolved to at plan, as a receipt records them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedHost {
    /// The name as the spec wrote it.
    pub name: String,
    /// Its IPv4 and IPv6 addresses at plan time, sorted (IPv4 first); the fault matches
    /// exactly these.
    pub addrs: Vec<IpAddr>,
}

impl std::fmt::Display for ResolvedHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let a: Vec<String> = self.addrs.iter().map(|a| a.to_string()).collect();
        write!(f, "{} -> {}", self.name, a.join(", "))
    }
}

/// The lines `touches` shows for the host names of a receipt:
/// "host api.example.com -> 10.1.2.3, fd00::3 (resolved at plan)".
pub(crate) fn host_lines(hosts: &[ResolvedHost]) -> Vec<String> {
    hosts
        .iter()
        .map(|h| format!("host {h} (resolved at plan)"))
        .collect()
}

/// Validated targeting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Targeting {
    /// Named interfaces; empty = the interface of the default route, resolved at plan.
    pub(crate) interfaces: Vec<String>,
    pub(crate) destinations: Vec<Cidr>,
    /// Host names to target, validated, not yet resolved.
    pub(crate) hosts: Vec<String>,
    /// What `hosts` resolved to: filled at plan ([`Targeting::resolve`]) or from a receipt
    /// ([`Targeting::with_resolved`]). Until then the names match nothing.
    pub(crate) resolved: Vec<ResolvedHost>,
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

/// Check a host name of `hosts`: 1 to 253 characters, dot-separated labels of 1 to 63
/// letters, digits, `-` or `_` (not starting or ending with `-`), an optional trailing dot,
/// and a last label that is not all digits (that would be an IP address, which belongs in
/// `destinations`).
pub(crate) fn valid_hostname(n: &str) -> Result<()> {
    let bad = |why: &str| Err(Error::invalid(format!("hosts: {n:?} {why}")));
    if n.is_empty() {
        return bad("is empty; give a host name such as \"api.example.com\"");
    }
    if n.parse::<IpAddr>().is_ok() {
        return bad("is an IP address; put it in `destinations`");
    }
    let name = n.strip_suffix('.').unwrap_or(n);
    if name.len() > MAX_HOSTNAME {
        return bad(&format!(
            "is {} characters long, more than the {MAX_HOSTNAME} a host name may have",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return bad(&format!(
            "contains {c:?}; a host name has only letters, digits, '-', '_' and dots"
        ));
    }
    let labels: Vec<&str> = name.split('.').collect();
    for l in &labels {
        if l.is_empty() {
            return bad("has an empty label (two dots in a row, or a leading dot)");
        }
        if l.len() > 63 {
            return bad(&format!(
                "has a label of {} characters, more than 63",
                l.len()
            ));
        }
        if l.starts_with('-') || l.ends_with('-') {
            return bad(&format!("has a label {l:?} that starts or ends with '-'"));
        }
    }
    if labels
        .last()
        .is_some_and(|l| l.chars().all(|c| c.is_ascii_digit()))
    {
        return bad(
            "ends in an all-digit label, like an IP address; put addresses in `destinations`",
        );
    }
    Ok(())
}

/// Resolve a host name through the system resolver (`getaddrinfo`, IPv4 and IPv6).
fn lookup(name: &str) -> Result<Vec<IpAddr>> {
    use std::net::ToSocketAddrs;
    let fail = |why: String| {
        Error::new(
            ErrorKind::NotFound,
            format!("hosts: {name:?} does not resolve ({why}); nothing was changed"),
        )
    };
    let mut addrs: Vec<IpAddr> = (name, 0u16)
        .to_socket_addrs()
        .map_err(|e| fail(e.to_string()))?
        .map(|a| a.ip())
        .collect();
    addrs.sort();
    addrs.dedup();
    if addrs.is_empty() {
        return Err(fail("the resolver returned no address".into()));
    }
    Ok(addrs)
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
        if self.hosts.len() > MAX_HOSTS {
            return Err(Error::invalid(format!(
                "hosts: {} names, more than {MAX_HOSTS}",
                self.hosts.len()
            )));
        }
        let mut hosts: Vec<String> = Vec::new();
        for h in &self.hosts {
            valid_hostname(h)?;
            if !hosts.iter().any(|x| x.eq_ignore_ascii_case(h)) {
                hosts.push(h.clone());
            }
        }
        let t = Targeting {
            interfaces,
            destinations: cidrs(&self.destinations, "destinations")?,
            hosts,
            resolved: Vec::new(),
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
        t.check_size()?;
        Ok(t)
    }
}

impl Targeting {
    /// Refuse a targeting that expands into more than [`MAX_SELECTORS`] filters.
    fn check_size(&self) -> Result<()> {
        let n = self.includes().len() + self.excludes().len();
        if n > MAX_SELECTORS {
            return Err(Error::invalid(format!(
                "targeting expands into {n} filters (destinations and host addresses x ports x protocols), more than {MAX_SELECTORS}; use CIDRs"
            )));
        }
        Ok(())
    }

    /// Plan time: resolve every host name through the system resolver. The result targets
    /// exactly the addresses found; its `resolved` goes into the receipt. A name that does
    /// not resolve fails with an error that names it.
    pub(crate) fn resolve(&self) -> Result<Targeting> {
        let mut resolved = Vec::new();
        for name in &self.hosts {
            resolved.push(ResolvedHost {
                name: name.clone(),
                addrs: lookup(name)?,
            });
        }
        let t = Targeting {
            resolved,
            ..self.clone()
        };
        t.check_size()?;
        Ok(t)
    }

    /// Inject time: the targeting with the host addresses recorded in a receipt (never
    /// resolved again). Refuses a receipt that does not record every name of the spec.
    pub(crate) fn with_resolved(&self, recorded: &[ResolvedHost]) -> Result<Targeting> {
        for name in &self.hosts {
            if !recorded
                .iter()
                .any(|r| &r.name == name && !r.addrs.is_empty())
            {
                return Err(Error::new(
                    ErrorKind::Drifted,
                    format!(
                        "hosts: the receipt records no addresses for {name:?}; plan again (names are resolved only at plan)"
                    ),
                ));
            }
        }
        let t = Targeting {
            resolved: recorded
                .iter()
                .filter(|r| self.hosts.contains(&r.name))
                .cloned()
                .collect(),
            ..self.clone()
        };
        t.check_size()?;
        Ok(t)
    }

    /// True when every packet of the interface is targeted (minus exclusions).
    pub(crate) fn is_whole(&self) -> bool {
        self.destinations.is_empty()
            && self.hosts.is_empty()
            && self.ports.is_empty()
            && self.protocol == Protocol::All
    }

    /// The targeted networks: `destinations`, then each resolved host address as a /32 or
    /// /128, without repeats.
    fn nets(&self) -> Vec<Cidr> {
        let mut out: Vec<Cidr> = Vec::new();
        let hosts = self
            .resolved
            .iter()
            .flat_map(|h| h.addrs.iter().map(|&a| Cidr::host(a)));
        for c in self.destinations.iter().copied().chain(hosts) {
            if !out.contains(&c) {
                out.push(c);
            }
        }
        out
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
        let nets: Vec<(bool, Option<Cidr>)> =
            if self.destinations.is_empty() && self.hosts.is_empty() {
                vec![(false, None), (true, None)]
            } else {
                // Host names not resolved yet add nothing: they match no traffic.
                self.nets().iter().map(|c| (c.is_v6(), Some(*c))).collect()
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
            if !self.destinations.is_empty() || !self.hosts.is_empty() {
                let d: Vec<String> = self
                    .destinations
                    .iter()
                    .map(|c| c.to_string())
                    .chain(self.hosts.iter().cloned())
                    .collect();
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

    #[test]
    fn host_names_are_validated() {
        let v = |h: &str| {
            TargetSpec {
                hosts: vec![h.into()],
                ..Default::default()
            }
            .validate()
        };
        for good in [
            "api.example.com",
            "api.example.com.",
            "localhost",
            "a-b_c.internal",
            "x1.y2",
        ] {
            v(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        let long_label = format!("{}.com", "a".repeat(64));
        let too_long = vec!["abcdefghi"; 26].join("."); // 259 characters
        for (bad, says) in [
            ("", "is empty"),
            ("10.0.0.1", "is an IP address"),
            ("fd00::1", "is an IP address"),
            ("10.0.0.300", "all-digit label"),
            ("10.1", "all-digit label"),
            ("api .example.com", "contains ' '"),
            ("api/x", "contains '/'"),
            ("api\nx", "contains '\\n'"),
            ("exämple.com", "contains 'ä'"),
            ("a..b", "empty label"),
            (".a", "empty label"),
            ("-a.com", "starts or ends with '-'"),
            ("a-.com", "starts or ends with '-'"),
            (long_label.as_str(), "more than 63"),
            (too_long.as_str(), "more than the 253"),
        ] {
            let e = v(bad).expect_err(bad);
            assert_eq!(e.kind(), ErrorKind::InvalidSpec);
            assert!(e.to_string().contains(says), "{bad:?}: {e}");
            assert!(e.to_string().starts_with("hosts: "), "{e}");
        }
        let many = TargetSpec {
            hosts: (0..=MAX_HOSTS).map(|i| format!("h{i}.test")).collect(),
            ..Default::default()
        };
        assert!(many
            .validate()
            .unwrap_err()
            .to_string()
            .contains("more than 32"));
        // The same name twice (any case) is one name.
        let t = TargetSpec {
            hosts: vec!["A.test".into(), "a.TEST".into()],
            ..Default::default()
        }
        .validate()
        .unwrap();
        assert_eq!(t.hosts, vec!["A.test".to_string()]);
    }

    #[test]
    fn host_names_match_only_what_the_receipt_recorded() {
        let t = TargetSpec {
            hosts: vec!["api.test".into()],
            ports: vec![443],
            protocol: Protocol::Tcp,
            ..Default::default()
        }
        .validate()
        .unwrap();
        // Named but not resolved: not the whole interface, and it matches nothing.
        assert!(!t.is_whole());
        assert!(t.includes().is_empty());
        assert_eq!(t.traffic(), "traffic to api.test port 443 tcp");
        let rec = vec![ResolvedHost {
            name: "api.test".into(),
            addrs: vec!["10.1.2.3".parse().unwrap(), "fd00::3".parse().unwrap()],
        }];
        let r = t.with_resolved(&rec).unwrap();
        let nets: Vec<String> = r
            .includes()
            .iter()
            .map(|s| s.net.unwrap().to_string())
            .collect();
        assert_eq!(nets, vec!["10.1.2.3/32", "fd00::3/128"]);
        assert_eq!(
            host_lines(&rec),
            vec!["host api.test -> 10.1.2.3, fd00::3 (resolved at plan)".to_string()]
        );
        // A receipt without the name is refused, never resolved again.
        let e = t.with_resolved(&[]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Drifted);
        assert!(e.to_string().contains("\"api.test\""), "{e}");
        // Destinations and host addresses together, without repeats.
        let both = TargetSpec {
            destinations: vec!["10.1.2.3".into(), "10.9.0.0/16".into()],
            hosts: vec!["api.test".into()],
            ..Default::default()
        }
        .validate()
        .unwrap()
        .with_resolved(&rec)
        .unwrap();
        assert_eq!(both.includes().len(), 3);
    }
}
