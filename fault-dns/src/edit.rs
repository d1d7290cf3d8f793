//! The edits themselves, as pure functions of a file's text (so they are tested without
//! touching any file), and what both kinds share: availability, manual undo, leftovers.

use std::net::Ipv4Addr;
use std::path::Path;

use fault_core::host::shell::join;
use fault_core::{Availability, Error, ErrorKind, Result};

use crate::lines;
use crate::names::Pattern;

/// The real paths; receipts must name exactly these (`check_receipt`).
pub const HOSTS: &str = "/etc/hosts";
/// See [`HOSTS`].
pub const RESOLV: &str = "/etc/resolv.conf";

/// glibc's `MAXNS`: nameservers past the third are ignored.
pub(crate) const MAXNS: usize = 3;

/// The hosts-file lines whose names the patterns match, to disable: every line whose names
/// all match. A line with matching and non-matching names is refused (disabling it would
/// break the others, keeping it would defeat the fault), naming the line.
pub(crate) fn hosts_matches<'a>(text: &'a str, patterns: &[Pattern]) -> Result<Vec<&'a str>> {
    let mut out = Vec::new();
    for (n, line) in lines::split(text).into_iter().enumerate() {
        // A line another fault disabled is looked at as it will be once that fault
        // reverts: this fault disables it too, or it would come back while this one holds.
        let f = lines::hosts_fields(lines::prefixes(line).1);
        if f.len() < 2 {
            continue;
        }
        let names = &f[1..];
        let hit = names
            .iter()
            .filter(|h| patterns.iter().any(|p| p.matches(h)))
            .count();
        if hit == 0 {
            continue;
        }
        if hit < names.len() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "{HOSTS} line {} ({:?}) lists names this fault matches together with names \
                     it does not: split that line (one line per name) or change the fault's \
                     names; nothing was changed",
                    n + 1,
                    lines::body(line)
                ),
            ));
        }
        out.push(line);
    }
    Ok(out)
}

/// `text` with fault `id`'s hosts lines disabled and `insert` (contents) prepended.
/// Idempotent: a text that already carries `id`'s edits is returned as it is.
pub(crate) fn edit_hosts(
    text: &str,
    id: &str,
    patterns: &[Pattern],
    insert: &[String],
) -> Result<String> {
    if lines::has(text, id) {
        return Ok(text.to_string());
    }
    let off = hosts_matches(text, patterns)?;
    let mut out: String = insert.iter().map(|c| lines::inserted(c, id)).collect();
    for line in lines::split(text) {
        if off.iter().any(|o| std::ptr::eq(*o, line)) {
            if !line.ends_with('\n') {
                // The last line without a newline: disabling it needs none added.
                out.push_str(&lines::disabled(line, id));
                continue;
            }
            out.push_str(&lines::disabled(line, id));
        } else {
            out.push_str(line);
        }
    }
    Ok(out)
}

/// What `dns.error` changes in resolv.conf, seen at plan.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ResolvPlan {
    /// Nameservers listed (in order).
    pub nameservers: Vec<String>,
    /// `search`/`domain` names (the responder fails `name.<domain>` too).
    pub search: Vec<String>,
    /// Whether an `options` line has `rotate`.
    pub rotate: bool,
}

/// Read resolv.conf the way glibc does (the keyword starts the line; the last
/// `search`/`domain` line wins).
pub(crate) fn resolv_plan(text: &str) -> ResolvPlan {
    let mut p = ResolvPlan::default();
    for line in lines::split(text) {
        let Some((kw, val)) = lines::resolv_keyword(line) else {
            continue;
        };
        let words: Vec<&str> = val
            .split(['#', ';'])
            .next()
            .unwrap_or("")
            .split_ascii_whitespace()
            .collect();
        match kw {
            "nameserver" => p.nameservers.extend(words.first().map(|w| w.to_string())),
            "search" | "domain" => {
                p.search = words
                    .iter()
                    .map(|w| w.trim_end_matches('.').to_ascii_lowercase())
                    .collect()
            }
            "options" => p.rotate |= words.contains(&"rotate"),
            _ => {}
        }
    }
    p
}

/// `text` with `nameserver ADDR` (tagged `id`) inserted before the first nameserver line,
/// and `options rotate` taken out (the line disabled, a tagged copy without `rotate`
/// inserted after it when other options remain). With no nameserver line at all, glibc
/// asks 127.0.0.1; a tagged `nameserver 127.0.0.1` after ours keeps that. Idempotent.
pub(crate) fn edit_resolv(text: &str, id: &str, addr: Ipv4Addr) -> String {
    if lines::has(text, id) {
        return text.to_string();
    }
    let ours = lines::inserted(&format!("nameserver {addr}"), id);
    let any_ns = lines::split(text)
        .iter()
        .any(|l| lines::resolv_keyword(l).is_some_and(|(k, _)| k == "nameserver"));
    let mut out = String::with_capacity(text.len() + 200);
    if !any_ns {
        out.push_str(&ours);
        out.push_str(&lines::inserted("nameserver 127.0.0.1", id));
    }
    let mut placed = !any_ns;
    for line in lines::split(text) {
        match lines::resolv_keyword(line) {
            Some(("nameserver", _)) if !placed => {
                out.push_str(&ours);
                out.push_str(line);
                placed = true;
            }
            _ if line.ends_with('\n') && rotate_line(line).is_some() => {
                let val = rotate_line(line).unwrap_or_default();
                let words: Vec<&str> = val.split_ascii_whitespace().collect();
                out.push_str(&lines::disabled(line, id));
                let rest: Vec<&str> = words.into_iter().filter(|w| *w != "rotate").collect();
                if !rest.is_empty() {
                    out.push_str(&lines::inserted(&format!("options {}", rest.join(" ")), id));
                }
            }
            _ => out.push_str(line),
        }
    }
    out
}

/// The value of an `options` line that has `rotate`, also when other faults disabled it
/// (it would come back when they revert, while this fault holds).
fn rotate_line(line: &str) -> Option<&str> {
    match lines::resolv_keyword(lines::prefixes(line).1) {
        Some(("options", val)) if val.split_ascii_whitespace().any(|w| w == "rotate") => Some(val),
        _ => None,
    }
}

/// Whether a process named `nscd` (or `unscd`) runs: it caches host lookups, so a program
/// that asks it would not see the fault until its cache entry expires.
pub(crate) fn nscd_running() -> Option<i32> {
    let dir = std::fs::read_dir("/proc").ok()?;
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Ok(c) = std::fs::read_to_string(format!("/proc/{pid}/comm")) {
            if matches!(c.trim_end(), "nscd" | "unscd") {
                return Some(pid);
            }
        }
    }
    None
}

/// The sources of the `hosts:` line of /etc/nsswitch.conf (default `dns files` when absent,
/// as glibc does).
pub(crate) fn nsswitch_hosts() -> Vec<String> {
    let text = std::fs::read_to_string("/etc/nsswitch.conf").unwrap_or_default();
    for line in text.lines() {
        let l = line.split('#').next().unwrap_or("");
        if let Some(rest) = l.trim_start().strip_prefix("hosts:") {
            return rest
                .split_ascii_whitespace()
                .filter(|w| !w.starts_with('['))
                .map(str::to_string)
                .collect();
        }
    }
    vec!["dns".into(), "files".into()]
}

/// What both kinds' availability says about nscd.
pub(crate) fn availability(needs: &str) -> Availability {
    let mut a = Availability::available();
    if let Some(pid) = nscd_running() {
        a.degrade(
            format!(
                "nscd runs (pid {pid}) and caches host lookups: programs that ask it see the \
                 fault only after their cached entry expires (and the reverted state likewise)"
            ),
            Some(join(["nscd", "--invalidate=hosts"])),
        );
    }
    let hosts = nsswitch_hosts();
    if !hosts.iter().any(|s| s == needs) {
        a.degrade(
            format!(
                "/etc/nsswitch.conf's hosts line ({}) has no `{needs}` source, so the system \
                 resolver does not read the file this fault edits",
                hosts.join(" ")
            ),
            None,
        );
    } else if needs == "dns" {
        if let Some(first) = hosts.iter().find(|s| *s != "files") {
            if first != "dns" {
                a.degrade(
                    format!(
                        "/etc/nsswitch.conf's hosts line asks `{first}` before `dns` \
                         (systemd-resolved's nss-resolve bypasses /etc/resolv.conf)"
                    ),
                    None,
                );
            }
        }
    }
    a
}

/// The commands a person runs to undo fault `id`'s lines in `path`.
pub(crate) fn undo_commands(prefix: &[String], path: &Path, id: &str) -> Vec<String> {
    let re = id.replace('.', "\\.");
    let argv = [
        "sed".to_string(),
        "-i".into(),
        "-e".into(),
        format!("/ # chaos-agent {re}$/d"),
        "-e".into(),
        format!("s/#chaos-agent {re}# //g"),
        "--".into(),
        path.display().to_string(),
    ];
    vec![join(prefix.iter().cloned().chain(argv))]
}

/// The lines of both files that carry one of `known`'s ids, by id: `(id, path, lines)`.
pub(crate) fn tagged(paths: &[&Path], known: &[String]) -> Vec<(String, String, Vec<String>)> {
    let mut out = Vec::new();
    for p in paths {
        let Ok(Some(cur)) = crate::files::read(p) else {
            continue;
        };
        for id in lines::ids(&cur.text) {
            if !known.contains(&id) {
                continue;
            }
            let ls: Vec<String> = lines::edits_of(&cur.text, &id)
                .into_iter()
                .map(str::to_string)
                .collect();
            out.push((id, p.display().to_string(), ls));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::parse_all;

    fn pats(p: &[&str]) -> Vec<Pattern> {
        parse_all(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>(), true).unwrap()
    }

    const HOSTS_TEXT: &str = "127.0.0.1 localhost\n10.0.0.5 db.internal\n10.0.0.6 api.corp.test www.corp.test\n10.0.0.7 mixed.corp.test other\n";

    #[test]
    fn hosts_lines_are_disabled_when_every_name_matches_and_mixed_ones_refused() {
        let t = "127.0.0.1 localhost\n10.0.0.5 db.internal\n10.0.0.6 api.corp.test www.corp.test";
        let e = edit_hosts(t, "f1", &pats(&["*.corp.test"]), &[]).unwrap();
        assert_eq!(
            e,
            "127.0.0.1 localhost\n10.0.0.5 db.internal\n#chaos-agent f1# 10.0.0.6 api.corp.test www.corp.test"
        );
        assert_eq!(lines::revert(&e, "f1"), t);
        let err = edit_hosts(HOSTS_TEXT, "f1", &pats(&["*.corp.test"]), &[]).unwrap_err();
        assert!(err.to_string().contains("line 4"), "{err}");
        assert!(err.to_string().contains("mixed.corp.test other"), "{err}");
        // Spoofing prepends tagged lines and disables the name's own lines.
        let e = edit_hosts(
            t,
            "s",
            &pats(&["db.internal"]),
            &["1.2.3.4 db.internal".into()],
        )
        .unwrap();
        assert!(e.starts_with("1.2.3.4 db.internal # chaos-agent s\n127.0.0.1 localhost\n#chaos-agent s# 10.0.0.5"), "{e}");
        assert_eq!(
            edit_hosts(&e, "s", &pats(&["db.internal"]), &[]).unwrap(),
            e,
            "idempotent"
        );
        assert_eq!(lines::revert(&e, "s"), t);
    }

    #[test]
    fn resolv_gets_our_nameserver_first_and_loses_rotate() {
        let t = "# generated\nsearch corp.test\nnameserver 10.0.0.2\nnameserver 10.0.0.3\noptions rotate ndots:2\n";
        let a = Ipv4Addr::new(127, 100, 1, 2);
        let e = edit_resolv(t, "f", a);
        assert_eq!(
            e,
            "# generated\nsearch corp.test\nnameserver 127.100.1.2 # chaos-agent f\nnameserver 10.0.0.2\nnameserver 10.0.0.3\n#chaos-agent f# options rotate ndots:2\noptions ndots:2 # chaos-agent f\n"
        );
        let p = resolv_plan(&e);
        assert_eq!(p.nameservers, ["127.100.1.2", "10.0.0.2", "10.0.0.3"]);
        assert!(!p.rotate);
        assert_eq!(p.search, ["corp.test"]);
        assert_eq!(edit_resolv(&e, "f", a), e);
        assert_eq!(lines::revert(&e, "f"), t);
        // No nameserver: glibc's default 127.0.0.1 is kept after ours.
        let e = edit_resolv("options rotate\n", "f", a);
        assert_eq!(
            e,
            "nameserver 127.100.1.2 # chaos-agent f\nnameserver 127.0.0.1 # chaos-agent f\n#chaos-agent f# options rotate\n"
        );
        assert_eq!(lines::revert(&e, "f"), "options rotate\n");
        // Two faults, reverted in both orders.
        let b = Ipv4Addr::new(127, 101, 1, 2);
        let two = edit_resolv(&edit_resolv(t, "f", a), "g", b);
        assert_eq!(
            resolv_plan(&two).nameservers[..2],
            ["127.101.1.2", "127.100.1.2"]
        );
        assert_eq!(lines::revert(&lines::revert(&two, "f"), "g"), t);
        assert_eq!(lines::revert(&lines::revert(&two, "g"), "f"), t);
        // While g holds, reverting f does not bring `rotate` back.
        let only_g = lines::revert(&two, "f");
        assert!(!resolv_plan(&only_g).rotate, "{only_g}");
        assert_eq!(only_g, edit_resolv(t, "g", b));
    }

    #[test]
    fn a_hosts_line_two_faults_disable_stays_disabled_until_both_revert() {
        let t = "127.0.0.1 localhost\n10.0.0.5 db.test\n";
        let p = pats(&["db.test"]);
        let two = edit_hosts(&edit_hosts(t, "f", &p, &[]).unwrap(), "g", &p, &[]).unwrap();
        assert_eq!(
            two,
            "127.0.0.1 localhost\n#chaos-agent g# #chaos-agent f# 10.0.0.5 db.test\n"
        );
        for (a, b) in [("f", "g"), ("g", "f")] {
            let one = lines::revert(&two, a);
            assert!(
                hosts_matches(&one, &p).unwrap().is_empty()
                    || one.contains(&format!("#chaos-agent {b}# ")),
                "{one}"
            );
            assert!(
                lines::hosts_fields(lines::split(&one)[1]).is_empty(),
                "{one}"
            );
            assert_eq!(lines::revert(&one, b), t);
        }
    }

    #[test]
    fn manual_undo_is_quoted() {
        let c = undo_commands(&[], Path::new("/etc/resolv.conf"), "r1.f2");
        assert_eq!(
            c,
            ["sed -i -e '/ # chaos-agent r1\\.f2$/d' -e 's/#chaos-agent r1\\.f2# //g' -- /etc/resolv.conf"]
        );
    }
}
