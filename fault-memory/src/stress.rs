//! `memory.stress`: a child process holding resident memory.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration as StdDuration;

use fault_core::host::stressor::{self, Stressors, Work};
use fault_core::{
    Bytes, Context, Error, ErrorKind, Fault, KindInfo, Leftover, Observation, Param, Percent,
    Result,
};
use serde::{Deserialize, Serialize};

use crate::meminfo::{bytes_to_hold, default_reserve, Amount, MemInfo};

/// The kind string of [`MemoryStress`].
pub const KIND: &str = "memory.stress";

/// The name (`comm`) of the stressor.
const WORKER_NAME: &str = "chaos-memory";

/// The parameters of a `memory.stress` fault, as written in an experiment.
///
/// Exactly one of [`size`](MemoryStressSpec::size) and
/// [`percent`](MemoryStressSpec::percent) is given.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MemoryStressSpec {
    /// Hold this many bytes (> 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Bytes>,
    /// Hold this percentage of the host's RAM (`MemTotal`, > 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<Percent>,
    /// Grow by this many bytes per second (> 0) instead of taking it all at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Bytes>,
    /// Refuse (at plan) when the amount would leave less than this available. Default: 5%
    /// of RAM, at least 256 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserve: Option<Bytes>,
}

/// What [`MemoryStress::plan`] resolved and `inject` recorded.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MemoryStressReceipt {
    /// Bytes to hold (whole pages).
    pub bytes: u64,
    /// Growth in bytes per second; `None`: all at once.
    pub rate: Option<u64>,
    /// The cgroups (named at plan) and the stressor process (recorded at inject).
    pub stressors: Stressors,
}

/// Hold resident memory in a child process.
///
/// # What changes on the host
///
/// One process, `chaos-memory`, maps `bytes` of private anonymous memory and writes to every
/// page (at `rate` bytes per second when given), then keeps re-touching it. It runs in the
/// fault's own cgroup under the agent's, joined before the first page is touched, with
/// `oom_score_adj` 1000.
///
/// # Revert
///
/// Kills the process and anything else in the fault's cgroups, then removes the cgroups.
/// The kernel frees the memory as the process exits.
///
/// # Persistence
///
/// The receipt names the cgroups at plan (journaled before the process starts) and records
/// its pid, start time and boot id at inject. The stressor dies with the agent.
///
/// # Privileges
///
/// None to hold memory; root (or a delegated cgroup) for the cgroup.
#[derive(Debug, Clone)]
pub struct MemoryStress {
    spec: MemoryStressSpec,
    amount: Amount,
}

impl MemoryStress {
    /// The validated spec.
    pub fn spec(&self) -> &MemoryStressSpec {
        &self.spec
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no memory preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64
}

/// The memory hog a stressor runs. Only async-signal-safe calls (see [`Work`]).
#[derive(Debug)]
struct Hog {
    bytes: usize,
    /// Bytes per second; 0 for all at once.
    rate: u64,
    page: usize,
    /// The mapping, set by `prepare` in the child.
    addr: AtomicUsize,
}

impl Hog {
    /// Write to every page in `[from, to)` of the mapping.
    fn touch(&self, base: usize, from: usize, to: usize, value: u8) {
        let mut off = from;
        while off < to {
            // SAFETY: base..base+bytes is our read-write mapping and off < bytes.
            unsafe { std::ptr::write_volatile((base + off) as *mut u8, value) };
            off += self.page;
        }
    }
}

// SAFETY: prepare/run only call mmap, clock_gettime, clock_nanosleep and getppid, and write
// to the mapping.
unsafe impl Work for Hog {
    fn prepare(&self) -> std::result::Result<(), i32> {
        // SAFETY: an anonymous private mapping; no memory of ours is passed.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                self.bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::ENOMEM));
        }
        self.addr.store(p as usize, Ordering::Relaxed);
        Ok(())
    }

    fn run(&self) -> i32 {
        let base = self.addr.load(Ordering::Relaxed);
        let start = stressor::monotonic_ns();
        let mut touched = 0usize;
        // Grow (every 20 ms when rate-limited), then hold.
        while touched < self.bytes {
            if stressor::orphaned() {
                return 0;
            }
            let target = if self.rate == 0 {
                self.bytes
            } else {
                let t = stressor::monotonic_ns() - start;
                let due = (self.rate as u128 * t as u128 / 1_000_000_000) as usize;
                due.min(self.bytes)
            };
            if target > touched {
                self.touch(base, touched, target, 0xa5);
                touched = target.div_ceil(self.page) * self.page;
            }
            if touched < self.bytes {
                stressor::sleep_until_ns(stressor::monotonic_ns() + 20_000_000);
            }
        }
        let mut value = 0x5au8;
        loop {
            if stressor::orphaned() {
                return 0;
            }
            stressor::sleep_until_ns(stressor::monotonic_ns() + 1_000_000_000);
            // Keep it resident (and not merged or reclaimed as idle) while held.
            self.touch(base, 0, self.bytes, value);
            value = value.wrapping_add(1) | 1;
        }
    }
}

impl Fault for MemoryStress {
    const KIND: &'static str = KIND;
    const FINDS_LEFTOVERS: bool = true;
    type Spec = MemoryStressSpec;
    type Receipt = MemoryStressReceipt;

    fn new(spec: MemoryStressSpec) -> Result<MemoryStress> {
        let amount =
            match (spec.size, spec.percent) {
                (Some(_), Some(_)) => {
                    return Err(Error::invalid(
                        "both size and percent are given: give exactly one",
                    ))
                }
                (None, None) => return Err(Error::invalid(
                    "neither size nor percent is given: give exactly one (e.g. size = \"1GiB\" \
                     or percent = 20)",
                )),
                (Some(Bytes(0)), None) => {
                    return Err(Error::invalid("size is 0: nothing would be held"))
                }
                (Some(b), None) => Amount::Size(b.get()),
                (None, Some(p)) if p.get() == 0.0 => {
                    return Err(Error::invalid("percent is 0: nothing would be held"))
                }
                (None, Some(p)) => Amount::Percent(p.get()),
            };
        if spec.rate == Some(Bytes(0)) {
            return Err(Error::invalid(
                "rate is 0: leave it out to take the memory at once",
            ));
        }
        Ok(MemoryStress { spec, amount })
    }

    fn info() -> KindInfo {
        KindInfo {
            summary: "Starts one process (`chaos-memory`) that maps `size` bytes (or `percent` \
                      of RAM) and writes to every page, so the memory is really resident, all \
                      at once or growing by `rate` bytes per second. It runs in a cgroup of \
                      its own under the agent's, joined before it touches a page, with \
                      oom_score_adj 1000 so the OOM killer takes it rather than the agent (an \
                      OOM kill is reported). Plan refuses more than MemAvailable minus \
                      `reserve`, or more than a memory cgroup limit above the agent allows. \
                      Revert kills it and removes the cgroup; the memory is freed as it exits.",
            privileges: "none to hold memory; root (or a delegated cgroup) to put the stressor \
                         in a cgroup of its own",
            reversible: true,
            params: &[
                Param {
                    name: "size",
                    ty: "bytes",
                    default: None,
                    doc: "Bytes to hold, e.g. \"2GiB\"; give this or percent.",
                },
                Param {
                    name: "percent",
                    ty: "percent",
                    default: None,
                    doc: "Hold this % of the host's RAM (MemTotal); give this or size.",
                },
                Param {
                    name: "rate",
                    ty: "bytes per second",
                    default: None,
                    doc: "Grow by this much per second instead of all at once.",
                },
                Param {
                    name: "reserve",
                    ty: "bytes",
                    default: Some("5% of RAM, at least 256MiB"),
                    doc: "Refuse when the amount would leave less than this available.",
                },
            ],
            example:
                "kind = \"memory.stress\"\nduration = \"2m\"\nsize = \"2GiB\"\nrate = \"100MiB\"",
        }
    }

    /// Degraded when the stressor cannot get a cgroup of its own, `cgroup.kill`, or the
    /// memory controller that charges its pages there.
    fn availability() -> fault_core::Availability {
        fault_core::host::probe::host().stressor_availability(true)
    }

    fn describe(&self) -> String {
        let mut s = match self.amount {
            Amount::Size(n) => format!("hold {} of resident memory", Bytes(n).human()),
            Amount::Percent(p) => format!("hold {p}% of RAM as resident memory"),
        };
        if let Some(r) = self.spec.rate {
            s.push_str(&format!(", growing by {}/s", r.human()));
        }
        if let Some(r) = self.spec.reserve {
            s.push_str(&format!(", keeping at least {} available", r.human()));
        }
        s
    }

    fn plan(&self, cx: &Context) -> Result<MemoryStressReceipt> {
        let m = MemInfo::read().map_err(|e| Error::io("reading /proc/meminfo", e))?;
        let reserve = self
            .spec
            .reserve
            .map_or_else(|| default_reserve(m.total), Bytes::get);
        let headroom = fault_core::host::cgroup::memory_headroom();
        let cg = headroom
            .as_ref()
            .map(|(left, dir)| (*left, dir.to_str().unwrap_or("?")));
        let bytes = bytes_to_hold(&m, self.amount, reserve, cg, page_size())
            .map_err(|msg| Error::new(ErrorKind::Unsupported, msg))?;
        if bytes > usize::MAX as u64 {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "the amount does not fit in this address space",
            ));
        }
        Ok(MemoryStressReceipt {
            bytes,
            rate: self.spec.rate.map(Bytes::get),
            stressors: Stressors::plan(&cx.fault_id, &["memory"])?,
        })
    }

    fn inject(&self, _cx: &Context, receipt: &mut MemoryStressReceipt) -> Result<()> {
        let workers = 1;
        let s = &mut receipt.stressors;
        if s.begin_inject(workers)? {
            return Ok(()); // an earlier inject of this receipt finished
        }
        let work = Arc::new(Hog {
            bytes: receipt.bytes as usize,
            rate: receipt.rate.unwrap_or(0),
            page: page_size() as usize,
            addr: AtomicUsize::new(0),
        });
        s.spawn(WORKER_NAME, None, work)?;
        Ok(())
    }

    fn maintain_interval(&self) -> Option<StdDuration> {
        Some(StdDuration::from_secs(1))
    }

    fn maintain(
        &self,
        _cx: &Context,
        receipt: &mut MemoryStressReceipt,
    ) -> Result<Option<StdDuration>> {
        let s = &receipt.stressors;
        if let Some((p, exit)) = s.first_dead() {
            return Err(Error::new(ErrorKind::Drifted, s.death_note(p, exit)));
        }
        Ok(Some(StdDuration::from_secs(1)))
    }

    fn verify(receipt: &MemoryStressReceipt) -> Result<Observation> {
        let s = &receipt.stressors;
        let want = Bytes(receipt.bytes).human();
        let charged = s
            .cgroups
            .iter()
            .filter(|c| c.has_memory())
            .find_map(|c| c.memory_usage())
            .map(|b| format!(", cgroup charge {}", Bytes(b).human()))
            .unwrap_or_default();
        match s.alive().first() {
            Some(p) => {
                let rss = stressor::rss_bytes(p.pid).unwrap_or(0);
                Ok(Observation::in_effect(format!(
                    "pid {} holds {} resident of {want} requested{charged}",
                    p.pid,
                    Bytes(rss).human()
                )))
            }
            None => {
                let note = match s.first_dead() {
                    Some((p, exit)) => format!("{}; ", s.death_note(p, exit)),
                    None => String::new(),
                };
                let left = s.existing_cgroups();
                Ok(if left.is_empty() {
                    Observation::clean(format!("{note}no memory.stress process, no cgroup left"))
                } else {
                    Observation::partial(format!(
                        "{note}no memory.stress process running, but cgroup {} is left{charged}",
                        left[0].dir.display()
                    ))
                })
            }
        }
    }

    fn revert(receipt: &MemoryStressReceipt) -> Result<()> {
        receipt.stressors.stop()
    }

    fn manual_undo(receipt: &MemoryStressReceipt) -> Vec<String> {
        receipt.stressors.manual_undo()
    }

    fn touches(receipt: &MemoryStressReceipt) -> Vec<String> {
        let mut out = Vec::new();
        if receipt.bytes > 0 {
            let share = match MemInfo::read() {
                Ok(m) if m.total > 0 => format!(
                    "{} of MemTotal {}",
                    crate::meminfo::percent(receipt.bytes as f64 * 100.0 / m.total as f64),
                    Bytes(m.total).human()
                ),
                _ => "MemTotal unknown".to_string(),
            };
            let how = match receipt.rate {
                Some(r) => format!("growing by {}/s", Bytes(r).human()),
                None => "all at once".to_string(),
            };
            out.push(format!(
                "{} of resident memory ({share}), {how}",
                Bytes(receipt.bytes).human()
            ));
        }
        out.extend(receipt.stressors.touches());
        out
    }

    fn check_receipt(fault_id: &str, receipt: &MemoryStressReceipt) -> Result<()> {
        receipt.stressors.check_receipt(fault_id, WORKER_NAME)
    }

    /// The fault's cgroups, found by name in every cgroup hierarchy (see
    /// [`Stressors::leftovers`]); revert kills what is in them and removes them.
    fn leftovers(known: &[String]) -> Result<Vec<Leftover<MemoryStressReceipt>>> {
        Ok(Stressors::leftovers(known, WORKER_NAME)
            .into_iter()
            .map(|l| Leftover {
                fault_id: l.fault_id,
                found: l.found,
                receipt: MemoryStressReceipt {
                    bytes: 0,
                    rate: None,
                    stressors: l.receipt,
                },
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn build(spec: serde_json::Value) -> Result<MemoryStress> {
        let spec: MemoryStressSpec =
            serde_json::from_value(spec).map_err(|e| Error::invalid(e.to_string()))?;
        MemoryStress::new(spec)
    }

    #[test]
    fn spec_validation_table() {
        let ok = [
            json!({"size": "1GiB"}),
            json!({"size": 4096, "rate": "10MiB"}),
            json!({"percent": 10}),
            json!({"percent": "2.5%", "reserve": "1GiB"}),
        ];
        for spec in ok {
            build(spec.clone()).unwrap_or_else(|e| panic!("{spec}: {e}"));
        }
        let bad = [
            (json!({}), "neither size nor percent"),
            (json!({"size": 1, "percent": 1}), "both size and percent"),
            (json!({"size": 0}), "size is 0"),
            (json!({"size": "-5MiB"}), "negative"),
            (json!({"percent": 0}), "percent is 0"),
            (json!({"percent": -1}), "out of range"),
            (json!({"percent": 101}), "out of range"),
            (json!({"size": "1GiB", "rate": 0}), "rate is 0"),
            (json!({"size": "1GiB", "rate": "-1MiB"}), "negative"),
            (json!({"size": "1GiB", "growth": 1}), "unknown field"),
        ];
        for (spec, want) in bad {
            let e = build(spec.clone()).expect_err(&spec.to_string());
            assert_eq!(e.kind(), ErrorKind::InvalidSpec, "{spec}");
            assert!(
                e.to_string().contains(want),
                "{spec}: {e} (wanted {want:?})"
            );
        }
    }

    #[test]
    fn example_validates_through_the_registry() {
        let examples = chaos_engine::testing::build_examples(crate::register);
        assert_eq!(
            examples[KIND].describe(),
            "hold 2.0 GiB of resident memory, growing by 100.0 MiB/s"
        );
        let names: Vec<&str> = MemoryStress::info().params.iter().map(|p| p.name).collect();
        assert_eq!(names, ["size", "percent", "rate", "reserve"]);
        assert!(MemoryStress::info().reversible);
    }

    #[test]
    fn plan_refuses_more_than_the_host_can_give() {
        let cx = Context::new("plan-mem", "run");
        let e = build(json!({"size": "100TiB"}))
            .unwrap()
            .plan(&cx)
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert!(
            e.to_string().starts_with("requested 100.0 TiB but only"),
            "{e}"
        );
        let e = build(json!({"percent": 100}))
            .unwrap()
            .plan(&cx)
            .unwrap_err();
        assert!(e.to_string().contains("the reserve keeps"), "{e}");
        let r = build(json!({"size": 10000})).unwrap().plan(&cx).unwrap();
        assert_eq!(r.bytes % page_size(), 0);
        assert!(r.bytes >= 10000);
    }

    #[test]
    fn touches_gives_the_share_of_ram() {
        let m = MemInfo::read().unwrap();
        let r = MemoryStressReceipt {
            bytes: 3 << 29,
            rate: None,
            stressors: Stressors::default(),
        };
        let pct = crate::meminfo::percent((3u64 << 29) as f64 * 100.0 / m.total as f64);
        assert_eq!(
            MemoryStress::touches(&r),
            [format!(
                "1.5 GiB of resident memory ({pct} of MemTotal {}), all at once",
                Bytes(m.total).human()
            )]
        );
        let r = MemoryStressReceipt {
            rate: Some(100 << 20),
            ..r
        };
        assert!(MemoryStress::touches(&r)[0].ends_with(", growing by 100.0 MiB/s"));
    }

    #[test]
    fn receipt_functions_work_on_an_empty_receipt() {
        let r = MemoryStressReceipt {
            bytes: 4096,
            rate: None,
            stressors: Stressors::default(),
        };
        assert_eq!(
            MemoryStress::verify(&r).unwrap().effect,
            fault_core::Effect::Clean
        );
        MemoryStress::revert(&r).unwrap();
        MemoryStress::revert(&r).unwrap();
    }
}
