//! Host names and the patterns `dns.error` matches them with: exact names, or `*.suffix`
//! (any name below `suffix`, not `suffix` itself). Compared in lower case, without a
//! trailing dot.

use fault_core::{Error, Result};

/// Most names one fault takes.
pub(crate) const MAX_NAMES: usize = 64;

/// An exact name or a `*.suffix` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Pattern {
    /// This name only.
    Exact(String),
    /// Any name ending in `.suffix` (the suffix is stored without the dot).
    Below(String),
}

/// Check one host name: 1 to 253 bytes of dot-separated labels of 1 to 63 letters, digits,
/// `-` and `_`. Returns it in lower case without a trailing dot.
pub(crate) fn check_name(name: &str) -> Result<String> {
    let n = name.strip_suffix('.').unwrap_or(name);
    let bad = |why: &str| {
        Err(Error::invalid(format!(
            "name {name:?} is not a host name: {why}"
        )))
    };
    if n.is_empty() {
        return bad("it is empty");
    }
    if n.len() > 253 {
        return bad("longer than 253 bytes");
    }
    for label in n.split('.') {
        if label.is_empty() {
            return bad("an empty label (two dots, or a leading dot)");
        }
        if label.len() > 63 {
            return bad("a label longer than 63 bytes");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return bad("only letters, digits, '-', '_' and dots are allowed");
        }
    }
    Ok(n.to_ascii_lowercase())
}

impl Pattern {
    /// Parse a name; `*.suffix` only when `wildcards`.
    pub(crate) fn parse(s: &str, wildcards: bool) -> Result<Pattern> {
        if let Some(suffix) = s.strip_prefix("*.") {
            if !wildcards {
                return Err(Error::invalid(format!(
                    "name {s:?}: a hosts file has no wildcards, so dns.spoof takes exact names \
                     only (list each name)"
                )));
            }
            return Ok(Pattern::Below(check_name(suffix)?));
        }
        if s.contains('*') {
            return Err(Error::invalid(if wildcards {
                format!("name {s:?}: '*' is allowed only as a whole first label, as in \"*.example.com\"")
            } else {
                format!(
                    "name {s:?}: a hosts file has no wildcards, so dns.spoof takes exact names only"
                )
            }));
        }
        Ok(Pattern::Exact(check_name(s)?))
    }

    /// Whether `name` (lower case, no trailing dot) matches.
    pub(crate) fn matches(&self, name: &str) -> bool {
        let name = name.strip_suffix('.').unwrap_or(name);
        match self {
            Pattern::Exact(n) => name.eq_ignore_ascii_case(n),
            Pattern::Below(s) => {
                name.len() > s.len() + 1
                    && name.as_bytes()[name.len() - s.len() - 1] == b'.'
                    && name[name.len() - s.len()..].eq_ignore_ascii_case(s)
            }
        }
    }

    /// A name this pattern matches (for probing the responder).
    pub(crate) fn example(&self) -> String {
        match self {
            Pattern::Exact(n) => n.clone(),
            Pattern::Below(s) => format!("chaos-agent-probe.{s}"),
        }
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pattern::Exact(n) => f.write_str(n),
            Pattern::Below(s) => write!(f, "*.{s}"),
        }
    }
}

/// Parse a spec's list of names: 1 to [`MAX_NAMES`], no duplicates.
pub(crate) fn parse_all(names: &[String], wildcards: bool) -> Result<Vec<Pattern>> {
    if names.is_empty() {
        return Err(Error::invalid(
            "names is empty: give at least one host name",
        ));
    }
    if names.len() > MAX_NAMES {
        return Err(Error::invalid(format!(
            "names has {} entries; at most {MAX_NAMES}",
            names.len()
        )));
    }
    let mut out: Vec<Pattern> = Vec::new();
    for n in names {
        let p = Pattern::parse(n, wildcards)?;
        if out.contains(&p) {
            return Err(Error::invalid(format!("name {n:?} is listed twice")));
        }
        out.push(p);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_patterns() {
        assert_eq!(check_name("API.example.com.").unwrap(), "api.example.com");
        for bad in [
            "",
            ".",
            "a..b",
            ".a",
            "a b",
            "a/b",
            "é.com",
            &"x".repeat(64),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        let p = Pattern::parse("*.example.com", true).unwrap();
        assert!(p.matches("a.example.com") && p.matches("a.b.EXAMPLE.com."));
        assert!(!p.matches("example.com") && !p.matches("aexample.com"));
        let e = Pattern::parse("*.example.com", false).unwrap_err();
        assert!(e.to_string().contains("no wildcards"), "{e}");
        for bad in ["*", "a.*.com", "*x.com", "*"] {
            assert!(Pattern::parse(bad, true).is_err(), "{bad}");
        }
        assert!(Pattern::parse("*", false)
            .unwrap_err()
            .to_string()
            .contains("no wildcards"));
        let x = Pattern::parse("Api.Example.com", false).unwrap();
        assert!(x.matches("api.example.com") && !x.matches("b.api.example.com"));
        assert!(parse_all(&[], true).is_err());
        assert!(parse_all(&["a".into(), "A".into()], true)
            .unwrap_err()
            .to_string()
            .contains("twice"));
    }
}
