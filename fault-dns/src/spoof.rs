//! `dns.spoof`: host names resolve to given addresses, through tagged lines at the top of
//! /etc/hosts.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use fault_core::host::ns::NsId;
use fault_core::{
    Availability, Context, Error, ErrorKind, Fault, KindInfo, Leftover, Observation, Param, Result,
};
use serde::{Deserialize, Serialize};

use crate::edit::{self, HOSTS};
use crate::files;
use crate::lines;
use crate::names::{self, Pattern};

/// The kind string of [`DnsSpoof`].
pub const SPOOF_KIND: &str = "dns.spoof";

/// Most addresses one fault takes.
const MAX_ADDRESSES: usize = 16;

/// The parameters of a `dns.spoof` fault.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DnsSpoofSpec {
    /// Exact host names (a hosts file has no wildcards).
    pub names: Vec<String>,
    /// The addresses they resolve to (IPv4 and/or IPv6).
    pub addresses: Vec<IpAddr>,
}

/// What [`DnsSpoof::plan`] resolved.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DnsSpoofReceipt {
    /// The fault id every edited line carries.
    pub fault_id: String,
    /// The file edited: always `/etc/hosts`, in `mnt_ns`.
    pub hosts: PathBuf,
    /// The lines inserted (without their tag).
    pub lines: Vec<String>,
    /// The lines of the file that name only these names, disabled during the fault (as at
    /// plan).
    pub disabled: Vec<String>,
    /// The mount namespace the file was resolved in; revert acts there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mnt_ns: Option<NsId>,
    /// The boot the receipt was planned in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
}

/// Make host names resolve to given addresses for programs using the system resolver.
#[derive(Debug, Clone)]
pub struct DnsSpoof {
    spec: DnsSpoofSpec,
    patterns: Vec<Pattern>,
}

impl DnsSpoof {
    fn lines(&self) -> Vec<String> {
        let names: Vec<String> = self.patterns.iter().map(|p| p.to_string()).collect();
        self.spec
            .addresses
            .iter()
            .map(|a| format!("{a} {}", names.join(" ")))
            .collect()
    }
}

pub(crate) fn check_id(kind: &str, id: &str) -> Result<()> {
    if lines::valid_id(id) {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "{kind}: fault id {id:?} cannot tag a line (1 to 128 of A-Z a-z 0-9 . _ : -)"
        )))
    }
}

pub(crate) fn drifted(msg: String) -> Error {
    Error::new(ErrorKind::Drifted, msg)
}

fn verify_here(r: &DnsSpoofReceipt) -> Result<Observation> {
    let Some(cur) = files::read(&r.hosts)? else {
        return Ok(Observation::clean(format!(
            "{} does not exist",
            r.hosts.display()
        )));
    };
    let have = lines::edits_of(&cur.text, &r.fault_id);
    let want = r.lines.len() + r.disabled.len();
    if have.is_empty() {
        Ok(Observation::clean(format!(
            "no line of {} carries fault {}",
            r.hosts.display(),
            r.fault_id
        )))
    } else if have.len() >= want {
        Ok(Observation::in_effect(format!(
            "{}: {}",
            r.hosts.display(),
            have.join(" | ")
        )))
    } else {
        Ok(Observation::partial(format!(
            "{} has {} of the fault's {want} lines: {}",
            r.hosts.display(),
            have.len(),
            have.join(" | ")
        )))
    }
}

impl Fault for DnsSpoof {
    const KIND: &'static str = SPOOF_KIND;
    const FINDS_LEFTOVERS: bool = true;
    type Spec = DnsSpoofSpec;
    type Receipt = DnsSpoofReceipt;

    fn new(spec: DnsSpoofSpec) -> Result<DnsSpoof> {
        let patterns = names::parse_all(&spec.names, false)?;
        if spec.addresses.is_empty() {
            return Err(Error::invalid(
                "addresses is empty: give at least one address the names resolve to",
            ));
        }
        if spec.addresses.len() > MAX_ADDRESSES {
            return Err(Error::invalid(format!(
                "addresses has {} entries; at most {MAX_ADDRESSES}",
                spec.addresses.len()
            )));
        }
        for (i, a) in spec.addresses.iter().enumerate() {
            if spec.addresses[..i].contains(a) {
                return Err(Error::invalid(format!("address {a} is listed twice")));
            }
            if a.is_unspecified() {
                return Err(Error::invalid(format!(
                    "address {a} is unspecified (0.0.0.0 / ::); give a real address"
                )));
            }
        }
        Ok(DnsSpoof { spec, patterns })
    }

    fn info() -> KindInfo {
        KindInfo {
            summary: "Makes host names resolve to given addresses for programs that use the \
                      system resolver (glibc/musl getaddrinfo with nsswitch `files` first): \
                      inserts one line per address at the top of /etc/hosts, each tagged \
                      `# chaos-agent <fault id>`, and disables (prefixes with `#chaos-agent \
                      <fault id># `) the lines that name only these names. Exact names only; a \
                      line naming these and other names is refused at plan. The file is \
                      rewritten atomically (temporary file, fsync, rename), mode and owner kept, \
                      in the mount namespace the fault was planned in. Revert removes the lines \
                      tagged with the fault id and strips its prefixes, nothing else: lines \
                      added meanwhile stay, and overlapping DNS faults revert in any order. \
                      Programs that cache lookups (nscd, JVMs, resolvers inside the program) \
                      may not see it.",
            privileges: "root (writes /etc/hosts); reverting from another mount namespace \
                         needs CAP_SYS_ADMIN",
            reversible: true,
            params: &[
                Param {
                    name: "names",
                    ty: "list of strings",
                    default: None,
                    doc: "Exact host names (no wildcards: a hosts file has none).",
                },
                Param {
                    name: "addresses",
                    ty: "list of IP addresses",
                    default: None,
                    doc: "The addresses every name resolves to (IPv4 and/or IPv6).",
                },
            ],
            example: "kind = \"dns.spoof\"\nduration = \"30s\"\nnames = [\"api.example.com\"]\naddresses = [\"10.1.2.3\"]",
        }
    }

    fn availability() -> Availability {
        edit::availability("files")
    }

    fn describe(&self) -> String {
        let names: Vec<String> = self.patterns.iter().map(|p| p.to_string()).collect();
        let addrs: Vec<String> = self.spec.addresses.iter().map(|a| a.to_string()).collect();
        format!(
            "resolve {} to {} through {HOSTS}",
            names.join(", "),
            addrs.join(", ")
        )
    }

    fn plan(&self, cx: &Context) -> Result<DnsSpoofReceipt> {
        check_id(SPOOF_KIND, &cx.fault_id)?;
        let hosts = PathBuf::from(HOSTS);
        let cur = files::read(&hosts)?
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("{HOSTS} does not exist")))?;
        let disabled = edit::hosts_matches(&cur.text, &self.patterns)?
            .into_iter()
            .map(|l| lines::body(l).to_string())
            .collect();
        Ok(DnsSpoofReceipt {
            fault_id: cx.fault_id.clone(),
            hosts,
            lines: self.lines(),
            disabled,
            mnt_ns: files::current_mnt_ns(),
            boot_id: Some(cx.boot_id.clone()),
        })
    }

    fn inject(&self, _cx: &Context, r: &mut DnsSpoofReceipt) -> Result<()> {
        let rr = r.clone();
        files::in_mount_ns(r.mnt_ns.as_ref(), r.boot_id.as_deref(), || {
            files::apply(&rr.hosts, &rr.fault_id, |t| {
                edit::edit_hosts(t, &rr.fault_id, &self.patterns, &rr.lines)
            })
            .map(drop)
        })
    }

    fn verify(r: &DnsSpoofReceipt) -> Result<Observation> {
        files::in_mount_ns(r.mnt_ns.as_ref(), r.boot_id.as_deref(), || verify_here(r))
    }

    fn revert(r: &DnsSpoofReceipt) -> Result<()> {
        check_id(SPOOF_KIND, &r.fault_id)?;
        if r.hosts != Path::new(HOSTS) {
            return Err(drifted(format!(
                "refusing to edit {}: dns.spoof only ever edits {HOSTS}",
                r.hosts.display()
            )));
        }
        files::in_mount_ns(r.mnt_ns.as_ref(), r.boot_id.as_deref(), || {
            files::undo(&r.hosts, &r.fault_id, None)
        })
    }

    fn manual_undo(r: &DnsSpoofReceipt) -> Vec<String> {
        edit::undo_commands(
            &files::nsenter_prefix(r.mnt_ns.as_ref()),
            &r.hosts,
            &r.fault_id,
        )
    }

    /// The names: faults on other names share the file without conflict (each edit is
    /// its own), faults on one name would.
    fn targets(r: &DnsSpoofReceipt) -> Vec<String> {
        r.lines
            .first()
            .map(|l| {
                l.split_whitespace()
                    .skip(1)
                    .map(|n| format!("dns:{n}"))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn touches(r: &DnsSpoofReceipt) -> Vec<String> {
        let mut out: Vec<String> = r
            .lines
            .iter()
            .map(|l| format!("{HOSTS}: insert \"{l}\""))
            .collect();
        out.extend(
            r.disabled
                .iter()
                .map(|l| format!("{HOSTS}: disable \"{l}\"")),
        );
        out
    }

    fn check_receipt(fault_id: &str, r: &DnsSpoofReceipt) -> Result<()> {
        if r.fault_id != fault_id || !lines::valid_id(fault_id) {
            return Err(drifted(format!(
                "refusing dns.spoof receipt filed under fault {fault_id:?}: it names fault {:?}",
                r.fault_id
            )));
        }
        if r.hosts != Path::new(HOSTS) {
            return Err(drifted(format!(
                "refusing dns.spoof receipt of fault {fault_id:?}: it names {} but this fault \
                 only ever edits {HOSTS}",
                r.hosts.display()
            )));
        }
        Ok(())
    }

    fn leftovers(known: &[String]) -> Result<Vec<Leftover<DnsSpoofReceipt>>> {
        let boot = fault_core::host::boot_id();
        let ns = files::current_mnt_ns();
        // An id with a line in resolv.conf is a dns.error fault's (its /etc/hosts lines go
        // with it); dns.error's leftovers claim those.
        let errors: Vec<String> = edit::tagged(&[Path::new(crate::edit::RESOLV)], known)
            .into_iter()
            .map(|(id, _, _)| id)
            .collect();
        Ok(edit::tagged(&[Path::new(HOSTS)], known)
            .into_iter()
            .filter(|(id, _, _)| !errors.contains(id))
            .map(|(id, path, ls)| Leftover {
                found: format!(
                    "{} line(s) of fault {id} in {path}: {}",
                    ls.len(),
                    ls.join(" | ")
                ),
                receipt: DnsSpoofReceipt {
                    fault_id: id.clone(),
                    hosts: PathBuf::from(HOSTS),
                    lines: Vec::new(),
                    disabled: Vec::new(),
                    mnt_ns: ns.clone(),
                    boot_id: Some(boot.clone()),
                },
                fault_id: id,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn build(v: serde_json::Value) -> Result<DnsSpoof> {
        let spec: DnsSpoofSpec =
            serde_json::from_value(v).map_err(|e| Error::invalid(e.to_string()))?;
        DnsSpoof::new(spec)
    }

    #[test]
    fn spec_validation() {
        let f = build(json!({"names": ["API.example.com"], "addresses": ["10.1.2.3", "fd00::1"]}))
            .unwrap();
        assert_eq!(
            f.describe(),
            "resolve api.example.com to 10.1.2.3, fd00::1 through /etc/hosts"
        );
        assert_eq!(
            f.lines(),
            ["10.1.2.3 api.example.com", "fd00::1 api.example.com"]
        );
        for (spec, want) in [
            (
                json!({"names": ["*.example.com"], "addresses": ["10.1.2.3"]}),
                "no wildcards",
            ),
            (
                json!({"names": ["*"], "addresses": ["10.1.2.3"]}),
                "no wildcards",
            ),
            (
                json!({"names": [], "addresses": ["10.1.2.3"]}),
                "names is empty",
            ),
            (
                json!({"names": ["a"], "addresses": []}),
                "addresses is empty",
            ),
            (
                json!({"names": ["a"], "addresses": ["10.1.2"]}),
                "invalid IP address",
            ),
            (
                json!({"names": ["a"], "addresses": ["0.0.0.0"]}),
                "unspecified",
            ),
            (
                json!({"names": ["a b"], "addresses": ["10.1.2.3"]}),
                "not a host name",
            ),
            (
                json!({"names": ["a"], "addresses": ["1.1.1.1"], "x": 1}),
                "unknown field",
            ),
            (
                json!({"names": null, "addresses": ["1.1.1.1"]}),
                "invalid type",
            ),
        ] {
            let e = build(spec.clone()).expect_err(&spec.to_string());
            assert_eq!(e.kind(), ErrorKind::InvalidSpec);
            assert!(e.to_string().contains(want), "{spec}: {e}");
        }
    }

    #[test]
    fn example_validates_and_receipts_are_checked() {
        let ex = chaos_engine::testing::build_examples(crate::register);
        assert_eq!(
            ex[SPOOF_KIND].describe(),
            "resolve api.example.com to 10.1.2.3 through /etc/hosts"
        );
        let r = DnsSpoofReceipt {
            fault_id: "f1".into(),
            hosts: HOSTS.into(),
            lines: vec![],
            disabled: vec![],
            mnt_ns: None,
            boot_id: None,
        };
        DnsSpoof::check_receipt("f1", &r).unwrap();
        assert!(DnsSpoof::check_receipt("f2", &r).is_err());
        let bad = DnsSpoofReceipt {
            hosts: "/etc/passwd".into(),
            ..r.clone()
        };
        assert_eq!(
            DnsSpoof::check_receipt("f1", &bad).unwrap_err().kind(),
            ErrorKind::Drifted
        );
        assert_eq!(
            DnsSpoof::manual_undo(&r),
            ["sed -i -e '/ # chaos-agent f1$/d' -e 's/#chaos-agent f1# //g' -- /etc/hosts"]
        );
    }
}
