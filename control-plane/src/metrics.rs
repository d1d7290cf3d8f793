//! Prometheus metrics (text exposition format 0.0.4), served by `chaos-control serve
//! --metrics-listen ADDR:PORT` on a listener of their own, plain HTTP, off by default.
//!
//! | metric | type | what |
//! |---|---|---|
//! | `chaos_control_agents{state}` | gauge | agents by state in the store (`pending`, `active`, `locked`, `revoked`) |
//! | `chaos_control_agents_lost` | gauge | active agents silent for longer than `--lost-after` |
//! | `chaos_control_runs{state}` | gauge | runs by state |
//! | `chaos_control_long_polls` | gauge | agents' task polls waiting now |
//! | `chaos_control_connections` | gauge | client connections held |
//! | `chaos_control_connections_refused_total` | counter | connections closed over a limit |
//! | `chaos_control_dispatch_seconds` | histogram | run created → first handed to its agent |
//! | `chaos_control_auth_failures_total{code}` | counter | refused credentials by error code |

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

/// Upper bounds (seconds) of the dispatch histogram's buckets.
const DISPATCH_BOUNDS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The counters the server keeps in memory (the store holds the rest).
#[derive(Debug, Default)]
pub struct Metrics {
    long_polls: AtomicI64,
    auth_failures: Mutex<BTreeMap<String, u64>>,
    dispatch: Histogram,
}

#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; DISPATCH_BOUNDS.len()],
    count: AtomicU64,
    sum_ms: AtomicU64,
}

/// Holds one long poll in the gauge for as long as it lives.
#[derive(Debug)]
pub struct LongPoll<'a>(&'a Metrics);

impl Drop for LongPoll<'_> {
    fn drop(&mut self) {
        self.0.long_polls.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the store and the connection limits say, read when scraped.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Agents by state.
    pub agents: Vec<(String, u64)>,
    /// Active agents currently lost.
    pub lost: u64,
    /// Runs by state.
    pub runs: Vec<(String, u64)>,
    /// Connections held.
    pub connections: u64,
    /// Connections refused since start.
    pub refused: u64,
}

impl Metrics {
    /// A long poll starts waiting.
    pub fn long_poll(&self) -> LongPoll<'_> {
        self.long_polls.fetch_add(1, Ordering::Relaxed);
        LongPoll(self)
    }

    /// A call was refused for its credentials, with this error code.
    pub fn auth_failure(&self, code: &str) {
        let mut m = self.auth_failures.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(code.to_string()).or_insert(0) += 1;
    }

    /// A run was handed to its agent for the first time, `ms` after it was created.
    pub fn dispatched(&self, ms: u64) {
        let secs = ms as f64 / 1000.0;
        for (i, b) in DISPATCH_BOUNDS.iter().enumerate() {
            if secs <= *b {
                self.dispatch.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.dispatch.count.fetch_add(1, Ordering::Relaxed);
        self.dispatch.sum_ms.fetch_add(ms, Ordering::Relaxed);
    }

    /// The exposition text.
    pub fn render(&self, s: &Snapshot) -> String {
        let mut o = String::new();
        let head = |o: &mut String, name: &str, ty: &str, help: &str| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {ty}");
        };
        head(&mut o, "chaos_control_agents", "gauge", "Agents by state.");
        for st in ["pending", "active", "locked", "revoked"] {
            let n = s.agents.iter().find(|(k, _)| k == st).map_or(0, |x| x.1);
            let _ = writeln!(o, "chaos_control_agents{{state=\"{st}\"}} {n}");
        }
        head(
            &mut o,
            "chaos_control_agents_lost",
            "gauge",
            "Active agents silent for longer than --lost-after.",
        );
        let _ = writeln!(o, "chaos_control_agents_lost {}", s.lost);
        head(&mut o, "chaos_control_runs", "gauge", "Runs by state.");
        for st in KNOWN_RUN_STATES {
            let n = s.runs.iter().find(|(k, _)| k == st).map_or(0, |x| x.1);
            let _ = writeln!(o, "chaos_control_runs{{state=\"{st}\"}} {n}");
        }
        for (k, n) in &s.runs {
            if !KNOWN_RUN_STATES.contains(&k.as_str()) && is_label_safe(k) {
                let _ = writeln!(o, "chaos_control_runs{{state=\"{k}\"}} {n}");
            }
        }
        head(
            &mut o,
            "chaos_control_long_polls",
            "gauge",
            "Agents' task polls waiting now.",
        );
        let _ = writeln!(
            o,
            "chaos_control_long_polls {}",
            self.long_polls.load(Ordering::Relaxed).max(0)
        );
        head(
            &mut o,
            "chaos_control_connections",
            "gauge",
            "Client connections held.",
        );
        let _ = writeln!(o, "chaos_control_connections {}", s.connections);
        head(
            &mut o,
            "chaos_control_connections_refused_total",
            "counter",
            "Connections closed at once for being over a connection limit.",
        );
        let _ = writeln!(o, "chaos_control_connections_refused_total {}", s.refused);
        head(
            &mut o,
            "chaos_control_dispatch_seconds",
            "histogram",
            "Time from a run's creation to its first delivery to its agent.",
        );
        for (i, b) in DISPATCH_BOUNDS.iter().enumerate() {
            let _ = writeln!(
                o,
                "chaos_control_dispatch_seconds_bucket{{le=\"{b}\"}} {}",
                self.dispatch.buckets[i].load(Ordering::Relaxed)
            );
        }
        let count = self.dispatch.count.load(Ordering::Relaxed);
        let _ = writeln!(
            o,
            "chaos_control_dispatch_seconds_bucket{{le=\"+Inf\"}} {count}\n\
             chaos_control_dispatch_seconds_sum {}\n\
             chaos_control_dispatch_seconds_count {count}",
            self.dispatch.sum_ms.load(Ordering::Relaxed) as f64 / 1000.0
        );
        head(
            &mut o,
            "chaos_control_auth_failures_total",
            "counter",
            "Calls refused for their credentials, by error code.",
        );
        let m = self.auth_failures.lock().unwrap_or_else(|p| p.into_inner());
        for (code, n) in m.iter() {
            let _ = writeln!(
                o,
                "chaos_control_auth_failures_total{{code=\"{code}\"}} {n}"
            );
        }
        o
    }
}

const KNOWN_RUN_STATES: [&str; 5] = ["pending", "running", "completed", "failed", "aborted"];

/// Label values come from our own store, but are checked anyway.
fn is_label_safe(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_is_prometheus_exposition_format() {
        let m = Metrics::default();
        m.dispatched(3);
        m.dispatched(700);
        m.dispatched(120_000);
        m.auth_failure("invalid_token");
        m.auth_failure("invalid_token");
        let held = m.long_poll();
        let t = m.render(&Snapshot {
            agents: vec![("active".into(), 3), ("revoked".into(), 1)],
            lost: 1,
            runs: vec![("completed".into(), 2)],
            connections: 4,
            refused: 5,
        });
        for line in [
            "chaos_control_agents{state=\"active\"} 3",
            "chaos_control_agents{state=\"pending\"} 0",
            "chaos_control_agents_lost 1",
            "chaos_control_runs{state=\"completed\"} 2",
            "chaos_control_long_polls 1",
            "chaos_control_connections 4",
            "chaos_control_connections_refused_total 5",
            "chaos_control_dispatch_seconds_bucket{le=\"0.005\"} 1",
            "chaos_control_dispatch_seconds_bucket{le=\"1\"} 2",
            "chaos_control_dispatch_seconds_bucket{le=\"30\"} 2",
            "chaos_control_dispatch_seconds_bucket{le=\"+Inf\"} 3",
            "chaos_control_dispatch_seconds_count 3",
            "chaos_control_dispatch_seconds_sum 120.703",
            "chaos_control_auth_failures_total{code=\"invalid_token\"} 2",
        ] {
            assert!(t.lines().any(|l| l == line), "{line} not in\n{t}");
        }
        drop(held);
        assert!(m
            .render(&Snapshot::default())
            .contains("chaos_control_long_polls 0\n"));
        // Every sample line is `name{labels} value` or `name value`.
        for l in t.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = l.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{l}");
            assert!(name.starts_with("chaos_control_"), "{l}");
        }
    }
}
