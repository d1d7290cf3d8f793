//! The line algebra both kinds edit `/etc/hosts` and `/etc/resolv.conf` with: every change
//! is a line that carries the fault id, so each fault's edit is undone on its own, in any
//! order, and lines a person adds meanwhile survive.
//!
//! - An **inserted** line ends with the tag ` # chaos-agent <id>` (a comment to both
//!   files' parsers).
//! - A **disabled** line is prefixed with `#chaos-agent <id># ` (a comment now).
//!
//! [`revert`] for an id removes every line whose trailing tag is that id (also when another
//! fault has since prefixed it) and strips that id's prefixes wherever they are in a line's
//! chain of prefixes; nothing else changes, byte for byte (line endings, a missing final
//! newline, blank lines).

/// The word both markers start with.
pub(crate) const MARK: &str = "chaos-agent";

/// Whether a fault id can be written into a tag: 1 to 128 bytes of `[A-Za-z0-9._:-]`, so
/// a tag is one word that ends the line, and is found again exactly.
pub(crate) fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// The trailing tag of an inserted line.
pub(crate) fn tag(id: &str) -> String {
    format!(" # {MARK} {id}")
}

/// The prefix of a disabled line.
pub(crate) fn prefix(id: &str) -> String {
    format!("#{MARK} {id}# ")
}

/// Split into lines that keep their `\n` (the last one may have none).
pub(crate) fn split(text: &str) -> Vec<&str> {
    text.split_inclusive('\n').collect()
}

/// A line without its line ending (`\n`, and a `\r` before it).
pub(crate) fn body(line: &str) -> &str {
    let l = line.strip_suffix('\n').unwrap_or(line);
    l.strip_suffix('\r').unwrap_or(l)
}

/// The prefixes a line carries (ids, outermost first) and what they disable.
pub(crate) fn prefixes(line: &str) -> (Vec<&str>, &str) {
    let mut ids = Vec::new();
    let mut rest = line;
    while let Some(after) = rest.strip_prefix('#').and_then(|r| r.strip_prefix(MARK)) {
        let Some(after) = after.strip_prefix(' ') else {
            break;
        };
        let Some(end) = after.find("# ") else { break };
        let id = &after[..end];
        if !valid_id(id) {
            break;
        }
        ids.push(id);
        rest = &after[end + 2..];
    }
    (ids, rest)
}

/// The id of an inserted line's trailing tag (under any prefixes), if it has one.
pub(crate) fn tag_id(line: &str) -> Option<&str> {
    let (_, inner) = prefixes(line);
    let b = body(inner);
    let at = b.rfind(&format!(" # {MARK} "))?;
    let id = &b[at + MARK.len() + 4..];
    valid_id(id).then_some(id)
}

/// Every fault id a text's lines name, by tag or prefix, in order of first appearance.
pub(crate) fn ids(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in split(text) {
        let (ps, _) = prefixes(line);
        for id in ps.into_iter().chain(tag_id(line)) {
            if !out.iter().any(|o| o == id) {
                out.push(id.to_string());
            }
        }
    }
    out
}

/// Whether `text` carries any edit of `id`.
pub(crate) fn has(text: &str, id: &str) -> bool {
    split(text)
        .iter()
        .any(|l| tag_id(l) == Some(id) || prefixes(l).0.contains(&id))
}

/// The lines of `text` that are `id`'s edits (inserted or disabled), as they are now.
pub(crate) fn edits_of<'a>(text: &'a str, id: &str) -> Vec<&'a str> {
    split(text)
        .into_iter()
        .filter(|l| tag_id(l) == Some(id) || prefixes(l).0.contains(&id))
        .map(body)
        .collect()
}

/// `text` with every edit of `id` undone: its inserted lines removed, its prefixes
/// stripped. Everything else is kept byte for byte.
pub(crate) fn revert(text: &str, id: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in split(text) {
        if tag_id(line) == Some(id) {
            continue;
        }
        let (ps, inner) = prefixes(line);
        if !ps.contains(&id) {
            out.push_str(line);
            continue;
        }
        for p in ps.iter().filter(|p| **p != id) {
            out.push_str(&prefix(p));
        }
        out.push_str(inner);
    }
    out
}

/// A line inserted by `id`: `content`, its tag and a newline.
pub(crate) fn inserted(content: &str, id: &str) -> String {
    format!("{content}{}\n", tag(id))
}

/// `line` (with its line ending) disabled by `id`.
pub(crate) fn disabled(line: &str, id: &str) -> String {
    format!("{}{line}", prefix(id))
}

/// The hosts-file fields of a line (address, then names), without its comment; empty for
/// a blank or comment line (disabled lines are comments).
pub(crate) fn hosts_fields(line: &str) -> Vec<&str> {
    let b = body(line);
    let b = b.split('#').next().unwrap_or("");
    b.split_ascii_whitespace().collect()
}

/// The resolv.conf keyword and value of a line (`nameserver`, `options`, ...): glibc reads
/// a keyword at the very start of a line; `#` and `;` start comments.
pub(crate) fn resolv_keyword(line: &str) -> Option<(&str, &str)> {
    let b = body(line);
    if b.starts_with('#') || b.starts_with(';') {
        return None;
    }
    let kw_end = b.find([' ', '\t']).unwrap_or(b.len());
    let kw = &b[..kw_end];
    if kw.is_empty() {
        return None;
    }
    Some((kw, b[kw_end..].trim_start_matches([' ', '\t'])))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str =
        "127.0.0.1\tlocalhost\n# a comment\n\n10.0.0.5 db.internal db\r\n::1 ip6-localhost";

    #[test]
    fn tags_and_prefixes_read_back() {
        let l = inserted("10.1.2.3 api.example.com", "f-1");
        assert_eq!(l, "10.1.2.3 api.example.com # chaos-agent f-1\n");
        assert_eq!(tag_id(&l), Some("f-1"));
        let d = disabled(&l, "g_2");
        assert_eq!(
            d,
            "#chaos-agent g_2# 10.1.2.3 api.example.com # chaos-agent f-1\n"
        );
        assert_eq!(tag_id(&d), Some("f-1"));
        assert_eq!(prefixes(&d).0, ["g_2"]);
        assert_eq!(ids(&d), ["g_2", "f-1"]);
        assert!(hosts_fields(&d).is_empty());
        assert_eq!(hosts_fields(&l), ["10.1.2.3", "api.example.com"]);
        // Text that merely looks like a marker is not one.
        for other in [
            "# chaos-agent\n",
            "1.2.3.4 x # chaos-agent a b\n",
            "#chaos-agent a/b# x\n",
            "#chaos-agentx# y\n",
        ] {
            assert_eq!(ids(other), Vec::<String>::new(), "{other:?}");
        }
    }

    #[test]
    fn ids_are_one_plain_word() {
        for ok in ["a", "f-1", "r1.s0.f2", "A_b:c"] {
            assert!(valid_id(ok), "{ok}");
        }
        for bad in ["", "a b", "a#b", "a\nb", "é", &"x".repeat(129)] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn revert_undoes_exactly_one_id() {
        let mut t = inserted("10.1.2.3 api", "a");
        let lines = split(BASE);
        t.push_str(lines[0]);
        t.push_str(&disabled(lines[1], "a"));
        t.push_str(lines[2]);
        t.push_str(&disabled(lines[3], "b"));
        t.push_str(lines[4]);
        assert_eq!(revert(&revert(&t, "a"), "b"), BASE);
        assert_eq!(revert(&revert(&t, "b"), "a"), BASE);
        assert_eq!(revert(&t, "c"), t);
        assert!(has(&t, "a") && has(&t, "b") && !has(&t, "c"));
        assert_eq!(edits_of(&t, "a").len(), 2);
    }

    #[test]
    fn a_line_another_fault_disabled_is_still_removed_by_its_owner() {
        let a = inserted("nameserver 127.100.1.2", "a");
        let t = format!("{}nameserver 9.9.9.9\n", disabled(&a, "b"));
        assert_eq!(revert(&t, "a"), "nameserver 9.9.9.9\n");
        assert_eq!(revert(&revert(&t, "b"), "a"), "nameserver 9.9.9.9\n");
    }

    /// A small deterministic generator (no crate): xorshift.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Random files, random interleavings of edits by several ids (inserting, disabling
    /// any line including another id's, a person adding untagged lines): reverting the
    /// ids in any order leaves exactly the original plus the person's lines.
    #[test]
    fn property_any_edits_any_revert_order_restore_the_original() {
        let pool = [
            "127.0.0.1 localhost\n",
            "# comment\n",
            "\n",
            "nameserver 1.1.1.1\n",
            "options rotate\r\n",
            "10.0.0.1 a b c\n",
            "#chaos-agent looks# like a prefix but is a person's\n",
            "x # chaos-agent not an id\n",
        ];
        let ids = ["f1", "f2", "f3"];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for case in 0..2000 {
            let n = rng.below(6);
            let mut orig: String = (0..n).map(|_| pool[rng.below(pool.len())]).collect();
            if rng.below(3) == 0 {
                orig.push_str("last line without newline");
            }
            let mut lines: Vec<String> = split(&orig).iter().map(|s| s.to_string()).collect();
            let mut person: Vec<String> = Vec::new();
            for _ in 0..rng.below(8) {
                let id = ids[rng.below(ids.len())];
                match rng.below(3) {
                    0 => {
                        let mut at = rng.below(lines.len() + 1);
                        if at == lines.len() && lines.last().is_some_and(|l| !l.ends_with('\n')) {
                            at -= 1; // the fault inserts before a line, never after a last one
                        }
                        lines.insert(at, inserted("nameserver 127.100.0.1", id));
                    }
                    1 if !lines.is_empty() => {
                        let at = rng.below(lines.len());
                        if !lines[at].ends_with('\n') {
                            continue;
                        }
                        lines[at] = disabled(&lines[at], id);
                    }
                    _ => {
                        // A person's line, at the end (so the original's order is kept).
                        let l = format!("person {case}\n");
                        if lines.last().is_some_and(|l| !l.ends_with('\n')) {
                            continue;
                        }
                        person.push(l.clone());
                        lines.push(l);
                    }
                }
            }
            let edited: String = lines.concat();
            let mut order = ids.to_vec();
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i + 1));
            }
            let mut t = edited.clone();
            for id in &order {
                t = revert(&t, id);
            }
            let want = format!("{orig}{}", person.concat());
            assert_eq!(t, want, "case {case}: {edited:?} reverted in {order:?}");
            assert!(ids.iter().all(|id| !has(&t, id)), "case {case}");
        }
    }

    #[test]
    fn resolv_keywords() {
        assert_eq!(
            resolv_keyword("nameserver 1.2.3.4 # x\n"),
            Some(("nameserver", "1.2.3.4 # x"))
        );
        assert_eq!(
            resolv_keyword("options\trotate\n"),
            Some(("options", "rotate"))
        );
        assert_eq!(resolv_keyword("# nameserver 1.2.3.4\n"), None);
        assert_eq!(resolv_keyword("; x\n"), None);
        assert_eq!(resolv_keyword("\n"), None);
    }
}
