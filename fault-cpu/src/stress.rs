//! `cpu.stress`: worker processes holding a measured CPU load.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use fault_core::host::stressor::{self, Stressors};

use crate::duty::{DutyCycle, PERIOD_NS};
use fault_core::{
    Context, Duration, Error, ErrorKind, Fault, KindInfo, Leftover, Observation, Param, Percent,
    Result,
};
use serde::{Deserialize, Serialize};

/// The kind string of [`CpuStress`].
pub const KIND: &str = "cpu.stress";

/// The name (`comm`) of every worker.
const WORKER_NAME: &str = "chaos-cpu";

/// Most workers one fault may start (a guard against a typo forking thousands).
const MAX_WORKERS: u32 = 1024;

/// How long `verify` measures the achieved load (about fifteen periods, so the phase of the
/// duty cycle barely shows).
const VERIFY_WINDOW: StdDuration = StdDuration::from_millis(300);

/// How many workers to start: a count, or `"all"` (one per usable core, or per listed core).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    /// This many (>= 1).
    Count(u32),
    /// One per core the agent may run on, or one per core in `cores`.
    All,
}

impl Serialize for Workers {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Workers::Count(n) => s.serialize_u32(*n),
            Workers::All => s.serialize_str("all"),
        }
    }
}

impl<'de> Deserialize<'de> for Workers {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Workers, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Workers;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number of workers (>= 1) or \"all\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<Workers, E> {
                u32::try_from(v)
                    .map(Workers::Count)
                    .map_err(|_| E::custom(format!("{v} workers is too many")))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<Workers, E> {
                if v < 0 {
                    return Err(E::custom(format!("workers is negative ({v})")));
                }
                self.visit_u64(v as u64)
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> std::result::Result<Workers, E> {
                Err(E::custom(format!(
                    "workers must be a whole number, not {v}"
                )))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Workers, E> {
                match v.trim() {
                    "all" => Ok(Workers::All),
                    t => t
                        .parse::<i64>()
                        .map_err(|_| {
                            E::custom(format!("invalid workers \"{v}\" (a number or \"all\")"))
                        })
                        .and_then(|n| self.visit_i64(n)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// The parameters of a `cpu.stress` fault, as written in an experiment.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CpuStressSpec {
    /// How many workers: a number, or `"all"`. Default: one per listed core when `cores` is
    /// given, else 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<Workers>,
    /// The load each worker holds, 1 to 100% of one CPU. Default 100%.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<Percent>,
    /// Pin workers to these CPUs (worker i to `cores[i % len]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores: Option<Vec<usize>>,
    /// Rise linearly from 0 to `load` over this time (> 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ramp: Option<Duration>,
}

/// What [`CpuStress::plan`] resolved and `inject` recorded: everything `verify` and
/// `revert` need.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CpuStressReceipt {
    /// The load per worker, in percent of one CPU.
    pub load: f64,
    /// The CPU each worker is pinned to (`None`: not pinned); one entry per worker.
    pub cpus: Vec<Option<usize>>,
    /// Ramp time in milliseconds (0: none).
    pub ramp_ms: u64,
    /// The cgroups (named at plan) and the worker processes (recorded at inject).
    pub stressors: Stressors,
}

/// Load CPUs with worker processes, each holding a given load.
///
/// # What changes on the host
///
/// One process per worker, `chaos-cpu`, each spinning and sleeping in periods of a random
/// 10 to 30 ms so that the CPU time it receives matches `load`, and the host's tick-sampled
/// accounting (`top`) shows it too (see the crate docs for the regulation). They run
/// in the fault's own cgroup under the agent's, with `oom_score_adj` 1000, pinned to a core
/// when `cores` is given.
///
/// # Revert
///
/// Kills every worker and anything else in the fault's cgroups, then removes the cgroups.
///
/// # Persistence
///
/// The receipt names the cgroups at plan (journaled before any worker starts) and records
/// each worker's pid, start time and boot id at inject, so a fresh process reverts it. The
/// workers die with the agent (`PR_SET_PDEATHSIG`).
///
/// # Privileges
///
/// None to load CPUs; root (or a delegated cgroup) for the cgroups, without which the
/// workers run without one.
#[derive(Debug, Clone)]
pub struct CpuStress {
    spec: CpuStressSpec,
    load: f64,
}

impl CpuStress {
    /// The validated spec.
    pub fn spec(&self) -> &CpuStressSpec {
        &self.spec
    }
}

/// The CPUs this process may run on (its affinity mask), ascending.
fn usable_cpus() -> Result<Vec<usize>> {
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is a valid out value of the size passed.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0
    {
        return Err(Error::last_os("sched_getaffinity"));
    }
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: i < CPU_SETSIZE.
        .filter(|&i| unsafe { libc::CPU_ISSET(i, &set) })
        .collect())
}

/// `0-3,6` style rendering of a CPU list.
fn cpu_list(cpus: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            cpus[i].to_string()
        } else {
            format!("{}-{}", cpus[i], cpus[j])
        });
        i = j + 1;
    }
    out.join(",")
}

impl Fault for CpuStress {
    const KIND: &'static str = KIND;
    const FINDS_LEFTOVERS: bool = true;
    type Spec = CpuStressSpec;
    type Receipt = CpuStressReceipt;

    fn new(spec: CpuStressSpec) -> Result<CpuStress> {
        let load = spec.load.map_or(100.0, Percent::get);
        if load < 1.0 {
            return Err(Error::invalid(format!(
                "load is {load}%: give 1% to 100% of one CPU per worker"
            )));
        }
        match spec.workers {
            Some(Workers::Count(0)) => {
                return Err(Error::invalid("workers is 0: give at least 1, or \"all\""))
            }
            Some(Workers::Count(n)) if n > MAX_WORKERS => {
                return Err(Error::invalid(format!(
                    "workers is {n}: at most {MAX_WORKERS}"
                )))
            }
            _ => {}
        }
        if let Some(cores) = &spec.cores {
            if cores.is_empty() {
                return Err(Error::invalid(
                    "cores is empty: list CPUs (e.g. [0, 1]) or leave it out",
                ));
            }
            let mut sorted = cores.clone();
            sorted.sort_unstable();
            if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
                return Err(Error::invalid(format!("cores lists CPU {} twice", w[0])));
            }
            if let Some(&c) = cores.iter().find(|&&c| c >= libc::CPU_SETSIZE as usize) {
                return Err(Error::invalid(format!("CPU {c} is out of range")));
            }
        }
        if let Some(r) = spec.ramp {
            if r.std().is_zero() {
                return Err(Error::invalid("ramp is 0s: leave it out for no ramp"));
            }
        }
        Ok(CpuStress { load, spec })
    }

    fn info() -> KindInfo {
        KindInfo {
            summary: "Starts worker processes (`chaos-cpu`) that each hold `load` percent of one \
                      CPU, regulated from the CPU time they actually receive (duty cycle \
                      of random 10-30 ms periods, so tick-based accounting such as top's \
                      sees the same load), optionally pinned to `cores` and ramping up over `ramp`. They run \
                      in a cgroup of their own under the agent's, with oom_score_adj 1000, and \
                      die with the agent. Revert kills them (and anything left in the cgroup) \
                      and removes the cgroup.",
            privileges: "none to load CPUs; root (or a delegated cgroup) to put the workers \
                         in a cgroup of their own",
            reversible: true,
            params: &[
                Param {
                    name: "workers",
                    ty: "integer or \"all\"",
                    default: Some("1, or one per listed core"),
                    doc: "How many worker processes; \"all\" starts one per usable (or listed) \
                          core.",
                },
                Param {
                    name: "load",
                    ty: "percent",
                    default: Some("100%"),
                    doc: "Load each worker holds, 1% to 100% of one CPU.",
                },
                Param {
                    name: "cores",
                    ty: "list of integers",
                    default: None,
                    doc: "Pin workers to these CPUs, round-robin.",
                },
                Param {
                    name: "ramp",
                    ty: "duration",
                    default: None,
                    doc: "Rise linearly from 0 to the load over this time.",
                },
            ],
            example: "kind = \"cpu.stress\"\nduration = \"1m\"\nworkers = \"all\"\nload = 60\nramp = \"10s\"",
        }
    }

    /// Degraded when the workers cannot get a cgroup of their own (or `cgroup.kill`).
    fn availability() -> fault_core::Availability {
        fault_core::host::probe::host().stressor_availability(false)
    }

    fn describe(&self) -> String {
        let workers = match self.spec.workers {
            Some(Workers::Count(n)) => format!("{n} worker{}", if n == 1 { "" } else { "s" }),
            Some(Workers::All) => "one worker per core".to_string(),
            None => match &self.spec.cores {
                Some(c) => format!("{} worker{}", c.len(), if c.len() == 1 { "" } else { "s" }),
                None => "1 worker".to_string(),
            },
        };
        let mut s = format!("load {workers} at {}% of a CPU each", self.load);
        if let Some(c) = &self.spec.cores {
            let mut c = c.clone();
            c.sort_unstable();
            s.push_str(&format!(" on CPUs {}", cpu_list(&c)));
        }
        if let Some(r) = self.spec.ramp {
            s.push_str(&format!(", ramping up over {r}"));
        }
        s
    }

    fn plan(&self, cx: &Context) -> Result<CpuStressReceipt> {
        let usable = usable_cpus()?;
        if let Some(cores) = &self.spec.cores {
            if let Some(c) = cores.iter().find(|c| !usable.contains(c)) {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "CPU {c} is not available to the agent (usable: {})",
                        cpu_list(&usable)
                    ),
                ));
            }
        }
        let pool: Vec<usize> = self.spec.cores.clone().unwrap_or_default();
        let n = match self.spec.workers {
            Some(Workers::Count(n)) => n as usize,
            Some(Workers::All) if !pool.is_empty() => pool.len(),
            Some(Workers::All) => usable.len().max(1),
            None => pool.len().max(1),
        };
        let cpus = (0..n)
            .map(|i| (!pool.is_empty()).then(|| pool[i % pool.len()]))
            .collect();
        Ok(CpuStressReceipt {
            load: self.load,
            cpus,
            ramp_ms: self.spec.ramp.map_or(0, |r| r.std().as_millis() as u64),
            stressors: Stressors::plan(&cx.fault_id, &["memory"])?,
        })
    }

    fn inject(&self, _cx: &Context, receipt: &mut CpuStressReceipt) -> Result<()> {
        let workers = receipt.cpus.len();
        let s = &mut receipt.stressors;
        if s.begin_inject(workers)? {
            return Ok(()); // an earlier inject of this receipt finished
        }
        let work = Arc::new(DutyCycle::new(
            receipt.load / 100.0,
            receipt.ramp_ms.saturating_mul(1_000_000),
            PERIOD_NS,
        ));
        for cpu in &receipt.cpus {
            s.spawn(WORKER_NAME, cpu.map(|c| vec![c]), work.clone())?;
        }
        Ok(())
    }

    fn maintain_interval(&self) -> Option<StdDuration> {
        Some(StdDuration::from_secs(1))
    }

    fn maintain(
        &self,
        _cx: &Context,
        receipt: &mut CpuStressReceipt,
    ) -> Result<Option<StdDuration>> {
        let s = &receipt.stressors;
        if let Some((p, exit)) = s.first_dead() {
            return Err(Error::new(ErrorKind::Drifted, s.death_note(p, exit)));
        }
        Ok(Some(StdDuration::from_secs(1)))
    }

    fn verify(receipt: &CpuStressReceipt) -> Result<Observation> {
        let s = &receipt.stressors;
        let alive = s.alive();
        if alive.is_empty() {
            let left = s.existing_cgroups();
            return Ok(if left.is_empty() {
                Observation::clean("no cpu.stress worker running, no cgroup left")
            } else {
                Observation::partial(format!(
                    "no worker running, but cgroup {} is left (holding pids {:?})",
                    left[0].dir.display(),
                    s.listed()
                ))
            });
        }
        let pids: Vec<i32> = alive.iter().map(|p| p.pid).collect();
        let loads = stressor::measure_load(&pids, VERIFY_WINDOW);
        let shown: Vec<String> = loads
            .iter()
            .map(|l| l.map_or("gone".into(), |l| format!("{:.1}%", l * 100.0)))
            .collect();
        let got: Vec<f64> = loads.iter().flatten().copied().collect();
        let mean = got.iter().sum::<f64>() / got.len().max(1) as f64 * 100.0;
        let ramp = if receipt.ramp_ms > 0 {
            format!(" (ramping over {} ms)", receipt.ramp_ms)
        } else {
            String::new()
        };
        let detail = format!(
            "{} of {} workers running at {}% requested{ramp}; achieved {} (mean {mean:.1}%) over {} ms",
            alive.len(),
            receipt.cpus.len(),
            receipt.load,
            shown.join(", "),
            VERIFY_WINDOW.as_millis()
        );
        Ok(if alive.len() == receipt.cpus.len() {
            Observation::in_effect(detail)
        } else {
            Observation::partial(detail)
        })
    }

    fn revert(receipt: &CpuStressReceipt) -> Result<()> {
        receipt.stressors.stop()
    }

    fn manual_undo(receipt: &CpuStressReceipt) -> Vec<String> {
        receipt.stressors.manual_undo()
    }

    fn touches(receipt: &CpuStressReceipt) -> Vec<String> {
        let mut out = Vec::new();
        let n = receipt.cpus.len();
        if n > 0 {
            let total = usable_cpus().map_or(0, |c| c.len());
            let mut pinned: Vec<usize> = receipt.cpus.iter().flatten().copied().collect();
            pinned.sort_unstable();
            pinned.dedup();
            let place = if pinned.is_empty() {
                format!("on all {total} CPUs")
            } else {
                format!(
                    "pinned to CPU{} {} (of {total})",
                    if pinned.len() == 1 { "" } else { "s" },
                    cpu_list(&pinned)
                )
            };
            let busy = n as f64 * receipt.load / 100.0;
            let mut line = format!(
                "{n} worker{} at {}% CPU each {place}: {busy:.2} CPUs busy, {:.0}% of the machine",
                if n == 1 { "" } else { "s" },
                receipt.load,
                busy * 100.0 / total.max(1) as f64
            );
            if receipt.ramp_ms > 0 {
                line.push_str(&format!(", ramping up over {} ms", receipt.ramp_ms));
            }
            out.push(line);
        }
        out.extend(receipt.stressors.touches());
        out
    }

    fn check_receipt(fault_id: &str, receipt: &CpuStressReceipt) -> Result<()> {
        receipt.stressors.check_receipt(fault_id, WORKER_NAME)
    }

    /// The fault's cgroups, found by name in every cgroup hierarchy (see
    /// [`Stressors::leftovers`]); revert kills what is in them and removes them.
    fn leftovers(known: &[String]) -> Result<Vec<Leftover<CpuStressReceipt>>> {
        Ok(Stressors::leftovers(known, WORKER_NAME)
            .into_iter()
            .map(|l| Leftover {
                fault_id: l.fault_id,
                found: l.found,
                receipt: CpuStressReceipt {
                    load: 0.0,
                    cpus: Vec::new(),
                    ramp_ms: 0,
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

    fn build(spec: serde_json::Value) -> Result<CpuStress> {
        let spec: CpuStressSpec =
            serde_json::from_value(spec).map_err(|e| Error::invalid(e.to_string()))?;
        CpuStress::new(spec)
    }

    #[test]
    fn spec_validation_table() {
        let ok = [
            json!({}),
            json!({"workers": 2, "load": 50}),
            json!({"workers": "all", "load": "25%"}),
            json!({"workers": "3"}),
            json!({"cores": [0], "load": 1}),
            json!({"load": 100, "ramp": "10s"}),
        ];
        for spec in ok {
            build(spec.clone()).unwrap_or_else(|e| panic!("{spec}: {e}"));
        }
        let bad = [
            (json!({"workers": 0}), "workers is 0"),
            (json!({"workers": -2}), "negative"),
            (json!({"workers": 1.5}), "whole number"),
            (json!({"workers": "many"}), "invalid workers"),
            (json!({"workers": 5000}), "at most 1024"),
            (json!({"load": 0}), "load is 0%"),
            (json!({"load": "0.5%"}), "load is 0.5%"),
            (json!({"load": -10}), "out of range"),
            (json!({"load": 150}), "out of range"),
            (json!({"cores": []}), "cores is empty"),
            (json!({"cores": [1, 1]}), "CPU 1 twice"),
            (json!({"cores": [-1]}), "invalid value"),
            (json!({"ramp": "0s"}), "ramp is 0s"),
            (json!({"ramp": "-1s"}), "duration"),
            (json!({"loads": 5}), "unknown field"),
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
            "load one worker per core at 60% of a CPU each, ramping up over 10s"
        );
        let names: Vec<&str> = CpuStress::info().params.iter().map(|p| p.name).collect();
        assert_eq!(names, ["workers", "load", "cores", "ramp"]);
        assert!(CpuStress::info().reversible);
    }

    #[test]
    fn plan_resolves_workers_and_cores() {
        let cx = Context::new("plan-cpu", "run");
        let usable = usable_cpus().unwrap();
        let r = build(json!({"workers": "all"})).unwrap().plan(&cx).unwrap();
        assert_eq!(r.cpus, vec![None; usable.len()]);
        let r = build(json!({"cores": [usable[0]], "workers": 3}))
            .unwrap()
            .plan(&cx)
            .unwrap();
        assert_eq!(r.cpus, vec![Some(usable[0]); 3]);
        assert_eq!(r.load, 100.0);
        assert!(r.stressors.processes.is_empty());
        let e = build(json!({"cores": [1000]}))
            .unwrap()
            .plan(&cx)
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(
            e.to_string().starts_with("CPU 1000 is not available"),
            "{e}"
        );
    }

    #[test]
    fn describe_and_cpu_list() {
        assert_eq!(cpu_list(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
        let f = build(json!({"cores": [3, 1, 2], "load": 25})).unwrap();
        assert_eq!(
            f.describe(),
            "load 3 workers at 25% of a CPU each on CPUs 1-3"
        );
    }

    #[test]
    fn touches_says_how_much_of_the_machine_is_loaded() {
        let total = usable_cpus().unwrap().len();
        let r = CpuStressReceipt {
            load: 60.0,
            cpus: vec![None; 2],
            ramp_ms: 0,
            stressors: Stressors::default(),
        };
        assert_eq!(
            CpuStress::touches(&r),
            [format!(
                "2 workers at 60% CPU each on all {total} CPUs: 1.20 CPUs busy, {:.0}% of the \
                 machine",
                120.0 / total as f64
            )]
        );
        let r = CpuStressReceipt {
            load: 12.5,
            cpus: vec![Some(0), Some(0), Some(1)],
            ramp_ms: 10_000,
            ..r
        };
        let t = CpuStress::touches(&r);
        assert!(
            t[0].starts_with(&format!(
                "3 workers at 12.5% CPU each pinned to CPUs 0-1 (of {total}): 0.38 CPUs busy"
            )),
            "{t:?}"
        );
        assert!(t[0].ends_with(", ramping up over 10000 ms"), "{t:?}");
    }

    #[test]
    fn receipt_functions_work_on_an_empty_receipt() {
        let r = CpuStressReceipt {
            load: 50.0,
            cpus: vec![None],
            ramp_ms: 0,
            stressors: Stressors::default(),
        };
        assert_eq!(
            CpuStress::verify(&r).unwrap().effect,
            fault_core::Effect::Clean
        );
        CpuStress::revert(&r).unwrap();
        CpuStress::revert(&r).unwrap();
        assert!(CpuStress::manual_undo(&r).is_empty());
    }
}
