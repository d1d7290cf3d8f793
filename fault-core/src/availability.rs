//! Whether a fault kind can run on this host, as far as cheap probes can tell
//! ([`Fault::availability`](crate::Fault::availability)).

use serde::{Deserialize, Serialize};

/// How well a kind can run here. Ordered: `Available < Degraded < Unavailable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Level {
    /// Everything the kind relies on is here.
    Available,
    /// It runs, with a weaker guarantee or a missing extra; the reasons say which.
    Degraded,
    /// It cannot run here; `plan` would refuse it.
    Unavailable,
}

impl Level {
    /// `available`, `degraded` or `unavailable`.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Available => "available",
            Level::Degraded => "degraded",
            Level::Unavailable => "unavailable",
        }
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A kind's [`Level`] on this host, why it is not fully available, and what a person can do
/// about it. Built with [`Availability::available`] and raised by
/// [`degrade`](Availability::degrade) / [`refuse`](Availability::refuse).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Availability {
    /// The verdict: the worst level any reason set.
    pub level: Level,
    /// One sentence per thing missing or weaker, in the order found.
    pub reasons: Vec<String>,
    /// What would make it fully available (commands are shell-quoted), one per line.
    pub fixes: Vec<String>,
}

impl Default for Availability {
    fn default() -> Availability {
        Availability::available()
    }
}

impl Availability {
    /// Fully available, nothing to say.
    pub fn available() -> Availability {
        Availability {
            level: Level::Available,
            reasons: Vec::new(),
            fixes: Vec::new(),
        }
    }

    /// Add a reason at `level` (the verdict becomes the worse of the two) and an optional fix.
    pub fn add(
        &mut self,
        level: Level,
        reason: impl Into<String>,
        fix: Option<String>,
    ) -> &mut Availability {
        self.level = self.level.max(level);
        let reason = reason.into();
        if !self.reasons.contains(&reason) {
            self.reasons.push(reason);
        }
        if let Some(fix) = fix {
            if !self.fixes.contains(&fix) {
                self.fixes.push(fix);
            }
        }
        self
    }

    /// It still runs, with a weaker guarantee: `reason` says which.
    pub fn degrade(&mut self, reason: impl Into<String>, fix: Option<String>) -> &mut Availability {
        self.add(Level::Degraded, reason, fix)
    }

    /// It cannot run here.
    pub fn refuse(&mut self, reason: impl Into<String>, fix: Option<String>) -> &mut Availability {
        self.add(Level::Unavailable, reason, fix)
    }

    /// A note that changes nothing about the level (e.g. which mechanism will be used).
    pub fn note(&mut self, reason: impl Into<String>) -> &mut Availability {
        self.add(Level::Available, reason, None)
    }

    /// Everything `other` says, added to this.
    pub fn merge(&mut self, other: Availability) -> &mut Availability {
        self.level = self.level.max(other.level);
        for r in other.reasons {
            if !self.reasons.contains(&r) {
                self.reasons.push(r);
            }
        }
        for f in other.fixes {
            if !self.fixes.contains(&f) {
                self.fixes.push(f);
            }
        }
        self
    }

    /// Whether the kind can run here at all (available or degraded).
    pub fn runnable(&self) -> bool {
        self.level != Level::Unavailable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_reason_sets_the_level_and_nothing_is_said_twice() {
        let mut a = Availability::available();
        a.note("uses nftables");
        assert_eq!(a.level, Level::Available);
        a.degrade("no pidfd", Some("upgrade".into()));
        a.degrade("no pidfd", Some("upgrade".into()));
        assert_eq!(a.level, Level::Degraded);
        assert!(a.runnable());
        let mut b = Availability::available();
        b.refuse("no netem", Some("modprobe sch_netem".into()));
        a.merge(b);
        assert_eq!(a.level, Level::Unavailable);
        assert!(!a.runnable());
        assert_eq!(a.reasons, ["uses nftables", "no pidfd", "no netem"]);
        assert_eq!(a.fixes, ["upgrade", "modprobe sch_netem"]);
        assert_eq!(
            serde_json::to_value(&a).unwrap()["level"],
            serde_json::json!("unavailable")
        );
        assert!(Level::Available < Level::Degraded && Level::Degraded < Level::Unavailable);
    }
}
