//! `/proc/meminfo` and the pure arithmetic that turns a request into a number of bytes,
//! or a refusal that names the numbers.

use fault_core::Bytes;

/// The fields of `/proc/meminfo` the guardrail uses, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MemInfo {
    /// `MemTotal`.
    pub(crate) total: u64,
    /// `MemAvailable`: what can be allocated without swapping (the kernel's estimate).
    pub(crate) available: u64,
}

impl MemInfo {
    /// Parse `/proc/meminfo` text.
    pub(crate) fn parse(text: &str) -> Option<MemInfo> {
        let field = |k: &str| {
            text.lines().find_map(|l| {
                let rest = l.strip_prefix(k)?.strip_prefix(':')?.trim();
                let kb: u64 = rest
                    .strip_suffix("kB")
                    .unwrap_or(rest)
                    .trim()
                    .parse()
                    .ok()?;
                Some(kb * 1024)
            })
        };
        Some(MemInfo {
            total: field("MemTotal")?,
            available: field("MemAvailable")?,
        })
    }

    /// Read `/proc/meminfo`.
    pub(crate) fn read() -> std::io::Result<MemInfo> {
        let text = std::fs::read_to_string("/proc/meminfo")?;
        MemInfo::parse(&text).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "unreadable /proc/meminfo")
        })
    }
}

/// What the spec asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Amount {
    /// This many bytes.
    Size(u64),
    /// This percent of `MemTotal` (0 < p <= 100).
    Percent(f64),
}

/// A percentage for people: one decimal, without a trailing ".0" ("6%", "6.3%"), and
/// "<0.1%" for a share too small to show.
pub(crate) fn percent(p: f64) -> String {
    if p > 0.0 && p < 0.05 {
        return "<0.1%".to_string();
    }
    let s = format!("{p:.1}");
    format!("{}%", s.strip_suffix(".0").unwrap_or(&s))
}

/// The default reserve: 5% of RAM, at least 256 MiB.
pub(crate) fn default_reserve(total: u64) -> u64 {
    (total / 20).max(256 << 20)
}

/// Round up to whole pages.
fn round_up(n: u64, page: u64) -> u64 {
    n.div_ceil(page).saturating_mul(page)
}

/// How many bytes to hold, or why not: the amount must fit in `MemAvailable` minus the
/// reserve, and in the headroom of the tightest memory cgroup limit above the agent
/// (`cgroup`: room left and the cgroup that sets it).
pub(crate) fn bytes_to_hold(
    m: &MemInfo,
    amount: Amount,
    reserve: u64,
    cgroup: Option<(u64, &str)>,
    page: u64,
) -> Result<u64, String> {
    let bytes = match amount {
        Amount::Size(n) => n,
        Amount::Percent(p) => (m.total as f64 * p / 100.0) as u64,
    };
    let bytes = round_up(bytes.max(1), page);
    let h = |n: u64| Bytes(n).human();
    let room = m.available.saturating_sub(reserve);
    if bytes > room {
        return Err(format!(
            "requested {} but only {} can be taken safely: {} is available (MemAvailable) and \
             the reserve keeps {} free for the kernel and the rest of the host",
            h(bytes),
            h(room),
            h(m.available),
            h(reserve)
        ));
    }
    if let Some((left, dir)) = cgroup {
        if bytes > left {
            return Err(format!(
                "requested {} but the memory cgroup {dir}, which the agent runs under, has only \
                 {} left before its limit",
                h(bytes),
                h(left)
            ));
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;

    #[test]
    fn percentages_for_people() {
        assert_eq!(percent(6.0), "6%");
        assert_eq!(percent(6.25), "6.2%");
        assert_eq!(percent(0.01), "<0.1%");
        assert_eq!(percent(0.0), "0%");
        assert_eq!(percent(100.0), "100%");
    }

    #[test]
    fn parses_meminfo() {
        let t = "MemTotal:       24684000 kB\nMemFree:        23000000 kB\nMemAvailable:   24300000 kB\n";
        let m = MemInfo::parse(t).unwrap();
        assert_eq!(m.total, 24684000 * 1024);
        assert_eq!(m.available, 24300000 * 1024);
        assert!(MemInfo::parse("MemTotal: 1 kB\n").is_none());
    }

    #[test]
    fn sizing_table() {
        let m = MemInfo {
            total: 16 * GIB,
            available: 12 * GIB,
        };
        assert_eq!(default_reserve(m.total), 16 * GIB / 20);
        assert_eq!(default_reserve(GIB), 256 * MIB);
        let ok = |a, r, cg| bytes_to_hold(&m, a, r, cg, 4096);
        assert_eq!(ok(Amount::Size(GIB), 0, None), Ok(GIB));
        assert_eq!(ok(Amount::Size(1), 0, None), Ok(4096), "whole pages");
        assert_eq!(ok(Amount::Percent(50.0), 0, None), Ok(8 * GIB));
        assert_eq!(ok(Amount::Size(11 * GIB), GIB, None), Ok(11 * GIB));
        let e = ok(Amount::Size(11 * GIB + 4096), GIB, None).unwrap_err();
        assert!(
            e.starts_with(
                "requested 11.0 GiB but only 11.0 GiB can be taken safely: 12.0 GiB is available"
            ),
            "{e}"
        );
        let e = ok(Amount::Percent(80.0), 0, None).unwrap_err();
        assert!(e.starts_with("requested 12.8 GiB"), "{e}");
        let e = ok(
            Amount::Size(2 * GIB),
            0,
            Some((GIB, "/sys/fs/cgroup/memory/a")),
        )
        .unwrap_err();
        assert!(
            e.contains("the memory cgroup /sys/fs/cgroup/memory/a"),
            "{e}"
        );
        assert!(e.contains("has only 1.0 GiB left"), "{e}");
    }
}
