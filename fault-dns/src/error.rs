//! `dns.error`: host names fail to resolve (NXDOMAIN), through a responder of the agent's
//! listed first in /etc/resolv.conf.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use fault_core::host::ns::NsId;
use fault_core::host::shell::join;
use fault_core::{
    Availability, Context, Error, ErrorKind, Fault, KindInfo, Leftover, Observation, Param, Result,
};
use serde::{Deserialize, Serialize};

use crate::edit::{self, HOSTS, MAXNS, RESOLV};
use crate::files::{self, Symlink};
use crate::lines;
use crate::names::{self, Pattern};
use crate::responder;
use crate::spoof::{check_id, drifted};

/// The kind string of [`DnsError`].
pub const ERROR_KIND: &str = "dns.error";

/// The parameters of a `dns.error` fault.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DnsErrorSpec {
    /// Exact host names, or `*.suffix` for every name below `suffix`.
    pub names: Vec<String>,
}

/// What [`DnsError::plan`] resolved, and what inject added.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DnsErrorReceipt {
    /// The fault id every edited line carries.
    pub fault_id: String,
    /// The names, as the spec gave them (normalized).
    pub names: Vec<String>,
    /// Always `/etc/hosts`, in `mnt_ns`.
    pub hosts: PathBuf,
    /// Always `/etc/resolv.conf`, in `mnt_ns`.
    pub resolv: PathBuf,
    /// The responder's loopback address: derived from the fault id at plan, the one it
    /// bound at inject.
    pub address: Ipv4Addr,
    /// The process running the responder (set by inject).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Lines of /etc/hosts naming only matching names, disabled during the fault (at plan).
    pub disabled_hosts: Vec<String>,
    /// The nameservers resolv.conf listed at plan.
    pub nameservers: Vec<String>,
    /// Set when /etc/resolv.conf was a symlink: revert puts it back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symlink: Option<Symlink>,
    /// The mount namespace the files were resolved in; revert acts there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mnt_ns: Option<NsId>,
    /// The boot the receipt was planned in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
}

/// Make host names fail to resolve for programs using the system resolver.
#[derive(Debug, Clone)]
pub struct DnsError {
    patterns: Vec<Pattern>,
}

fn patterns_of(r: &DnsErrorReceipt) -> Vec<Pattern> {
    r.names
        .iter()
        .filter_map(|n| Pattern::parse(n, true).ok())
        .collect()
}

fn check_paths(r: &DnsErrorReceipt) -> Result<()> {
    if r.hosts != Path::new(HOSTS) || r.resolv != Path::new(RESOLV) {
        return Err(drifted(format!(
            "refusing dns.error receipt of fault {:?}: it names {} and {}, but this fault only \
             ever edits {HOSTS} and {RESOLV}",
            r.fault_id,
            r.hosts.display(),
            r.resolv.display()
        )));
    }
    Ok(())
}

fn verify_here(r: &DnsErrorReceipt) -> Result<Observation> {
    let mut have = Vec::new();
    let mut in_resolv = false;
    for p in [&r.hosts, &r.resolv] {
        if let Some(cur) = files::read(p)? {
            let e = lines::edits_of(&cur.text, &r.fault_id);
            in_resolv |= p == &r.resolv && !e.is_empty();
            have.extend(e.into_iter().map(|l| format!("{}: {l}", p.display())));
        }
    }
    if have.is_empty() {
        return Ok(Observation::clean(format!(
            "no line of {HOSTS} or {RESOLV} carries fault {}",
            r.fault_id
        )));
    }
    let lines = have.join(" | ");
    if !in_resolv {
        return Ok(Observation::partial(format!(
            "{RESOLV} does not list the responder; {lines}"
        )));
    }
    // The responder: asked when this process runs it; otherwise what can be said.
    let probe = patterns_of(r).first().map(Pattern::example);
    match (responder::running(&r.fault_id), probe) {
        (Some(addr), Some(name)) => match responder::ask(addr, &name) {
            Ok(responder::NXDOMAIN) => Ok(Observation::in_effect(format!(
                "the responder at {addr}:53 answers NXDOMAIN for {name}; {lines}"
            ))),
            Ok(rc) => Ok(Observation::partial(format!(
                "the responder at {addr}:53 answers rcode {rc} for {name}; {lines}"
            ))),
            Err(e) => Ok(Observation::partial(format!("{e}; {lines}"))),
        },
        _ if r.pid == Some(std::process::id()) => Ok(Observation::partial(format!(
            "the responder of this fault is not running in this process: names resolve as \
             before; {lines}"
        ))),
        _ => Ok(Observation::in_effect(format!(
            "{lines} (the responder runs in pid {}, not checked from here)",
            r.pid.map_or_else(|| "?".to_string(), |p| p.to_string())
        ))),
    }
}

impl Fault for DnsError {
    const KIND: &'static str = ERROR_KIND;
    const FINDS_LEFTOVERS: bool = true;
    type Spec = DnsErrorSpec;
    type Receipt = DnsErrorReceipt;

    fn new(spec: DnsErrorSpec) -> Result<DnsError> {
        Ok(DnsError {
            patterns: names::parse_all(&spec.names, true)?,
        })
    }

    fn info() -> KindInfo {
        KindInfo {
            summary: "Makes host names (exact, or `*.suffix` for every name below it) fail to \
                      resolve (NXDOMAIN; getaddrinfo returns EAI_NONAME) for programs that use \
                      the system resolver (nsswitch `files dns`). The agent runs a small UDP DNS \
                      responder on a loopback address of its own (127.x.y.z:53, derived from the \
                      fault id) that answers NXDOMAIN for the names (also with the resolv.conf \
                      search domains appended) and REFUSED for every other name, and inserts a \
                      tagged `nameserver 127.x.y.z # chaos-agent <fault id>` line before the \
                      existing nameservers of /etc/resolv.conf; glibc asks the next nameserver \
                      on REFUSED, so other names resolve as before, and when the agent dies the \
                      responder's port is closed and resolution falls back to the original \
                      servers. `options rotate` is disabled during the fault, and /etc/hosts \
                      lines naming only matching names are disabled (a line mixing them with \
                      other names is refused at plan). A symlinked /etc/resolv.conf \
                      (systemd-resolved's stub) is replaced by a regular file and put back as \
                      the same symlink at revert. Revert stops the responder and removes only \
                      the fault's tagged lines and prefixes (files rewritten atomically, mode \
                      and owner kept, in the mount namespace of the plan). Limits: glibc uses \
                      the first 3 nameservers (the third original is ignored during the fault); \
                      musl asks all nameservers at once and takes the first NXDOMAIN or answer, \
                      so there the fault holds only while the local responder answers first; \
                      nscd and programs with their own resolver or cache are not affected.",
            privileges: "root (writes /etc/hosts and /etc/resolv.conf, binds port 53); \
                         reverting from another mount namespace needs CAP_SYS_ADMIN",
            reversible: true,
            params: &[Param {
                name: "names",
                ty: "list of strings",
                default: None,
                doc: "Host names that fail to resolve: exact, or \"*.example.com\" for every \
                      name below example.com.",
            }],
            example: "kind = \"dns.error\"\nduration = \"30s\"\nnames = [\"api.example.com\", \"*.internal.example.com\"]",
        }
    }

    fn availability() -> Availability {
        edit::availability("dns")
    }

    fn describe(&self) -> String {
        let names: Vec<String> = self.patterns.iter().map(|p| p.to_string()).collect();
        format!(
            "make {} fail to resolve (NXDOMAIN) through {RESOLV}",
            names.join(", ")
        )
    }

    fn plan(&self, cx: &Context) -> Result<DnsErrorReceipt> {
        check_id(ERROR_KIND, &cx.fault_id)?;
        let hosts = files::read(Path::new(HOSTS))?;
        let disabled_hosts = match &hosts {
            Some(h) => edit::hosts_matches(&h.text, &self.patterns)?
                .into_iter()
                .map(|l| lines::body(l).to_string())
                .collect(),
            None => Vec::new(),
        };
        let resolv = files::read(Path::new(RESOLV))?.ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("{RESOLV} does not exist (nothing to put the responder in)"),
            )
        })?;
        let symlink = resolv.link.clone().map(|target| Symlink {
            target,
            content: resolv.text.clone(),
        });
        Ok(DnsErrorReceipt {
            fault_id: cx.fault_id.clone(),
            names: self.patterns.iter().map(|p| p.to_string()).collect(),
            hosts: HOSTS.into(),
            resolv: RESOLV.into(),
            address: responder::derived(&cx.fault_id),
            pid: None,
            disabled_hosts,
            nameservers: edit::resolv_plan(&resolv.text).nameservers,
            symlink,
            mnt_ns: files::current_mnt_ns(),
            boot_id: Some(cx.boot_id.clone()),
        })
    }

    fn inject(&self, _cx: &Context, r: &mut DnsErrorReceipt) -> Result<()> {
        check_paths(r)?;
        let id = r.fault_id.clone();
        let (ns, boot) = (r.mnt_ns.clone(), r.boot_id.clone());
        let search = files::in_mount_ns(ns.as_ref(), boot.as_deref(), || {
            Ok(files::read(Path::new(RESOLV))?
                .map(|c| edit::resolv_plan(&c.text).search)
                .unwrap_or_default())
        })?;
        r.address = responder::start(&id, self.patterns.clone(), search)?;
        r.pid = Some(std::process::id());
        let addr = r.address;
        let result = files::in_mount_ns(ns.as_ref(), boot.as_deref(), || {
            files::apply(Path::new(HOSTS), &id, |t| {
                edit::edit_hosts(t, &id, &self.patterns, &[])
            })?;
            let now = files::read(Path::new(RESOLV))?;
            let replaced_by_us = now
                .as_ref()
                .is_some_and(|c| c.link.is_none() && lines::has(&c.text, &id));
            let link = files::apply(Path::new(RESOLV), &id, |t| {
                Ok(edit::edit_resolv(t, &id, addr))
            })?;
            Ok((link, replaced_by_us))
        });
        match result {
            Ok((Some(link), _)) => r.symlink = Some(link),
            Ok((None, true)) => {} // an earlier inject of this receipt: keep what it recorded
            Ok((None, false)) => r.symlink = None, // no longer a symlink since plan
            Err(e) => return Err(e),
        }
        Ok(())
    }

    fn verify(r: &DnsErrorReceipt) -> Result<Observation> {
        files::in_mount_ns(r.mnt_ns.as_ref(), r.boot_id.as_deref(), || verify_here(r))
    }

    fn revert(r: &DnsErrorReceipt) -> Result<()> {
        check_id(ERROR_KIND, &r.fault_id)?;
        check_paths(r)?;
        responder::stop(&r.fault_id);
        files::in_mount_ns(r.mnt_ns.as_ref(), r.boot_id.as_deref(), || {
            let hosts = files::undo(&r.hosts, &r.fault_id, None);
            let resolv = files::undo(&r.resolv, &r.fault_id, r.symlink.as_ref());
            hosts.and(resolv)
        })
    }

    fn manual_undo(r: &DnsErrorReceipt) -> Vec<String> {
        let prefix = files::nsenter_prefix(r.mnt_ns.as_ref());
        let mut out = edit::undo_commands(&prefix, &r.resolv, &r.fault_id);
        out.extend(edit::undo_commands(&prefix, &r.hosts, &r.fault_id));
        if let Some(l) = &r.symlink {
            let target = l.target.display().to_string();
            let argv = ["ln", "-sfn", "--", target.as_str(), RESOLV];
            out.push(format!(
                "{}  # {RESOLV} was this symlink: run it once {RESOLV} holds nothing you need \
                 beyond what {target} holds (compare: diff -- {} {RESOLV})",
                join(prefix.iter().map(String::as_str).chain(argv)),
                fault_core::host::shell::quote(&target)
            ));
        }
        out
    }

    /// The names (see [`DnsSpoof::targets`](crate::DnsSpoof)).
    fn targets(r: &DnsErrorReceipt) -> Vec<String> {
        r.names.iter().map(|n| format!("dns:{n}")).collect()
    }

    fn touches(r: &DnsErrorReceipt) -> Vec<String> {
        let mut out = vec![format!(
            "{RESOLV}: insert \"nameserver {}\" before {} (a responder in the agent answers \
             NXDOMAIN for {}, REFUSED otherwise)",
            r.address,
            if r.nameservers.is_empty() {
                "glibc's default 127.0.0.1".to_string()
            } else {
                r.nameservers.join(", ")
            },
            r.names.join(", ")
        )];
        if r.nameservers.len() >= MAXNS {
            out.push(format!(
                "{RESOLV}: glibc reads {MAXNS} nameservers, so {} is not asked during the fault",
                r.nameservers[MAXNS - 1..].join(", ")
            ));
        }
        if let Some(l) = &r.symlink {
            out.push(format!(
                "{RESOLV}: a symlink to {}, replaced by a regular file during the fault",
                l.target.display()
            ));
        }
        out.extend(
            r.disabled_hosts
                .iter()
                .map(|l| format!("{HOSTS}: disable \"{l}\"")),
        );
        out
    }

    fn check_receipt(fault_id: &str, r: &DnsErrorReceipt) -> Result<()> {
        if r.fault_id != fault_id || !lines::valid_id(fault_id) {
            return Err(drifted(format!(
                "refusing dns.error receipt filed under fault {fault_id:?}: it names fault {:?}",
                r.fault_id
            )));
        }
        check_paths(r)?;
        if !responder::is_ours(r.address) {
            return Err(drifted(format!(
                "refusing dns.error receipt of fault {fault_id:?}: {} is not an address this \
                 fault uses",
                r.address
            )));
        }
        Ok(())
    }

    fn leftovers(known: &[String]) -> Result<Vec<Leftover<DnsErrorReceipt>>> {
        let boot = fault_core::host::boot_id();
        let ns = files::current_mnt_ns();
        let mut out: Vec<Leftover<DnsErrorReceipt>> = Vec::new();
        for (id, path, ls) in edit::tagged(&[Path::new(RESOLV), Path::new(HOSTS)], known) {
            // dns.spoof's lines in /etc/hosts are its own (they insert address lines, not
            // nameservers); a dns.error fault always has its nameserver line in resolv.conf.
            let found = format!(
                "{} line(s) of fault {id} in {path}: {}",
                ls.len(),
                ls.join(" | ")
            );
            if let Some(l) = out.iter_mut().find(|l| l.fault_id == id) {
                l.found = format!("{}; {found}", l.found);
                continue;
            }
            if path != RESOLV {
                continue;
            }
            out.push(Leftover {
                found,
                receipt: DnsErrorReceipt {
                    fault_id: id.clone(),
                    names: Vec::new(),
                    hosts: HOSTS.into(),
                    resolv: RESOLV.into(),
                    address: responder::derived(&id),
                    pid: None,
                    disabled_hosts: Vec::new(),
                    nameservers: Vec::new(),
                    symlink: None,
                    mnt_ns: ns.clone(),
                    boot_id: Some(boot.clone()),
                },
                fault_id: id,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn build(v: serde_json::Value) -> Result<DnsError> {
        let spec: DnsErrorSpec =
            serde_json::from_value(v).map_err(|e| Error::invalid(e.to_string()))?;
        DnsError::new(spec)
    }

    #[test]
    fn spec_validation() {
        let f = build(json!({"names": ["api.example.com", "*.Corp.test"]})).unwrap();
        assert_eq!(
            f.describe(),
            "make api.example.com, *.corp.test fail to resolve (NXDOMAIN) through /etc/resolv.conf"
        );
        for (spec, want) in [
            (json!({"names": ["*"]}), "whole first label"),
            (json!({"names": []}), "names is empty"),
            (json!({"names": ["a..b"]}), "empty label"),
            (json!({"names": ["a"], "x": 1}), "unknown field"),
            (json!({}), "missing field `names`"),
        ] {
            let e = build(spec.clone()).expect_err(&spec.to_string());
            assert_eq!(e.kind(), ErrorKind::InvalidSpec);
            assert!(e.to_string().contains(want), "{spec}: {e}");
        }
    }

    fn receipt(id: &str) -> DnsErrorReceipt {
        DnsErrorReceipt {
            fault_id: id.into(),
            names: vec!["a.example".into()],
            hosts: HOSTS.into(),
            resolv: RESOLV.into(),
            address: responder::derived(id),
            pid: None,
            disabled_hosts: vec![],
            nameservers: vec!["1.1.1.1".into(), "8.8.8.8".into(), "9.9.9.9".into()],
            symlink: Some(Symlink {
                target: "/run/systemd/resolve/stub-resolv.conf".into(),
                content: String::new(),
            }),
            mnt_ns: None,
            boot_id: None,
        }
    }

    #[test]
    fn example_receipt_checks_manual_undo_and_touches() {
        let ex = chaos_engine::testing::build_examples(crate::register);
        assert!(ex[ERROR_KIND]
            .describe()
            .starts_with("make api.example.com"));
        let r = receipt("f1");
        DnsError::check_receipt("f1", &r).unwrap();
        for bad in [
            DnsErrorReceipt {
                resolv: "/etc/passwd".into(),
                ..r.clone()
            },
            DnsErrorReceipt {
                address: Ipv4Addr::new(127, 0, 0, 1),
                ..r.clone()
            },
            DnsErrorReceipt {
                fault_id: "f2".into(),
                ..r.clone()
            },
        ] {
            assert_eq!(
                DnsError::check_receipt("f1", &bad).unwrap_err().kind(),
                ErrorKind::Drifted
            );
        }
        let m = DnsError::manual_undo(&r);
        assert_eq!(m.len(), 3);
        assert!(
            m[2].starts_with(
                "ln -sfn -- /run/systemd/resolve/stub-resolv.conf /etc/resolv.conf  # "
            ),
            "{}",
            m[2]
        );
        let t = DnsError::touches(&r);
        assert!(t[1].contains("9.9.9.9 is not asked"), "{t:?}");
        let back: DnsErrorReceipt =
            serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
