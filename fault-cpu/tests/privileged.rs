//! `cpu.stress` against the real kernel: real worker processes, their load measured from
//! their own CPU time, their cgroups, and a `kill -9` of an agent process mid-fault.
//!
//! # Accuracy tolerance
//!
//! Each level is measured over 2.0 s (about a hundred duty-cycle periods of a random 10 to
//! 30 ms) from `/proc/<pid>/schedstat` (nanosecond CPU time) after 0.5 s of warm-up. The
//! achieved load must be within **3 percentage points** of the request. What a correct
//! worker can be off by, at most: one period's busy time at each end of the window (0.75
//! points at 50%) plus the 25 ms of debt it may catch up on after being kept from the CPU
//! during warm-up (1.25 points), 2 points in all.
//!
//! The machine is shared with other builds, so a worker may be denied CPU it asked for: a
//! shortfall beyond 3 points is accepted only when the worker's run-queue wait time
//! (schedstat's second field: runnable but not running) accounts for it. Overshoot is never
//! excused.
//!
//! No assertion depends on how promptly the test itself runs: each schedstat read is
//! bracketed by two clock reads, so the interval the CPU time was counted over is known to
//! lie between the inner and the outer pair. The overshoot check uses the load over the
//! longest possible interval (the lowest it can be), the shortfall check the load and wait
//! over the shortest (the highest). A test thread delayed between a read and its clock read
//! on a loaded machine (which used to count the worker's CPU time over a longer interval
//! than the wall time it was divided by, i.e. look like overshoot) widens the range instead.
//!
//! The host's tick-sampled accounting (`/proc/stat`) is not asserted here: it depends on
//! everything else the machine runs. The benchmark measures it (docs/benchmarks.md).

#![cfg(feature = "privileged-tests")]

use std::sync::Mutex;
use std::time::{Duration, Instant};

use chaos_engine::journal::{Journal, RecordState};
use chaos_engine::runner::{self, RecoverOutcome, RetryPolicy};
use fault_core::host::process::ProcessId;
use fault_core::testing::Victim;
use fault_core::{Context, Effect, ErrorKind, Fault};
use fault_cpu::{CpuStress, CpuStressReceipt, CpuStressSpec};
use serde_json::json;

/// CPU-heavy tests run one at a time, or they would measure each other.
static SERIAL: Mutex<()> = Mutex::new(());

const TOLERANCE_PP: f64 = 3.0;

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn cx() -> Context {
    Context::new(
        format!("t-{}", fault_core::host::random_hex(6)),
        "privileged-test",
    )
}

fn fault(spec: serde_json::Value) -> CpuStress {
    let spec: CpuStressSpec = serde_json::from_value(spec).expect("spec parses");
    CpuStress::new(spec).expect("spec validates")
}

/// `(cpu ns, run-queue wait ns)` of a process from `/proc/<pid>/schedstat`.
fn schedstat(pid: i32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).expect("schedstat");
    let mut it = s.split_whitespace().map(|v| v.parse::<u64>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

/// A worker's load over a measurement window, in percent of one CPU.
#[derive(Debug, Clone, Copy)]
struct Load {
    /// CPU time over the longest interval it can have been counted over.
    low: f64,
    /// CPU time over the shortest such interval.
    high: f64,
    /// Run-queue wait over the shortest interval.
    waited: f64,
}

/// Per worker: its [`Load`] over about `window`. Each read of schedstat is bracketed by two
/// clock reads (see the module docs).
fn measure(pids: &[i32], window: Duration) -> Vec<Load> {
    let read = |p: i32| {
        let before = Instant::now();
        let v = schedstat(p);
        (before, v, Instant::now())
    };
    let a: Vec<_> = pids.iter().map(|&p| read(p)).collect();
    std::thread::sleep(window);
    pids.iter()
        .zip(a)
        .map(|(&p, (b0, (c0, w0), a0))| {
            let (b1, (c1, w1), a1) = read(p);
            let longest = (a1 - b0).as_nanos() as f64;
            let shortest = (b1.saturating_duration_since(a0)).as_nanos().max(1) as f64;
            Load {
                low: (c1 - c0) as f64 * 100.0 / longest,
                high: (c1 - c0) as f64 * 100.0 / shortest,
                waited: (w1 - w0) as f64 * 100.0 / shortest,
            }
        })
        .collect()
}

fn assert_clean(r: &CpuStressReceipt) {
    for p in &r.stressors.processes {
        assert!(!p.is_alive(), "worker {} still alive", p.pid);
    }
    for c in &r.stressors.cgroups {
        assert!(!c.dir.exists(), "cgroup {} left", c.dir.display());
    }
    assert_eq!(CpuStress::verify(r).unwrap().effect, Effect::Clean);
}

#[test]
fn load_is_held_at_25_50_100_percent_on_one_and_on_all_cores() {
    fault_core::require_root!();
    let _g = serial();
    let mut report = Vec::new();
    for (label, shape) in [
        ("one core", json!({"workers": 1, "cores": [0]})),
        ("all cores", json!({"workers": "all"})),
    ] {
        for load in [25.0, 50.0, 100.0] {
            let mut spec = shape.clone();
            spec["load"] = json!(load);
            let f = fault(spec);
            let cx = cx();
            let mut r = f.plan(&cx).unwrap();
            f.inject(&cx, &mut r).unwrap();
            assert!(!r.stressors.processes.is_empty());
            for p in &r.stressors.processes {
                let adj = std::fs::read_to_string(format!("/proc/{}/oom_score_adj", p.pid));
                assert_eq!(adj.unwrap().trim(), "1000");
            }
            std::thread::sleep(Duration::from_millis(500));
            let pids: Vec<i32> = r.stressors.processes.iter().map(|p| p.pid).collect();
            let got = measure(&pids, Duration::from_millis(2000));
            CpuStress::revert(&r).unwrap();
            assert_clean(&r);
            for Load { low, high, waited } in got {
                report.push(format!(
                    "{label} {load}%: achieved {low:.2}-{high:.2}% (waited {waited:.2}%)"
                ));
                assert!(
                    low - load <= TOLERANCE_PP,
                    "{label} {load}%: overshoot, achieved at least {low:.2}%"
                );
                assert!(
                    high - load >= -TOLERANCE_PP || high + waited >= load - TOLERANCE_PP,
                    "{label} {load}%: achieved at most {high:.2}%, and waiting for a CPU \
                     ({waited:.2}%) does not explain the shortfall"
                );
            }
        }
    }
    eprintln!("{}", report.join("\n"));
}

#[test]
fn workers_are_pinned_and_in_the_fault_cgroup() {
    fault_core::require_root!();
    let _g = serial();
    let f = fault(json!({"cores": [0], "workers": 2, "load": 10}));
    let cx = cx();
    let mut r = f.plan(&cx).unwrap();
    assert!(
        r.stressors
            .cgroups
            .iter()
            .all(|c| c.dir.ends_with(format!("chaos-agent-{}", cx.fault_id))),
        "{:?}",
        r.stressors.cgroups
    );
    assert!(!r.stressors.cgroups.is_empty(), "this machine has cgroups");
    f.inject(&cx, &mut r).unwrap();
    for p in &r.stressors.processes {
        let status = std::fs::read_to_string(format!("/proc/{}/status", p.pid)).unwrap();
        let allowed = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap()
            .trim()
            .to_string();
        assert_eq!(allowed, "0");
        assert_eq!(p.stat().unwrap().comm, "chaos-cpu");
        for c in &r.stressors.cgroups {
            assert!(
                c.pids().unwrap().contains(&p.pid),
                "{} in {}",
                p.pid,
                c.dir.display()
            );
        }
    }
    let obs = CpuStress::verify(&r).unwrap();
    assert_eq!(obs.effect, Effect::InEffect, "{}", obs.detail);
    assert!(
        obs.detail
            .contains("2 of 2 workers running at 10% requested"),
        "{}",
        obs.detail
    );
    CpuStress::revert(&r).unwrap();
    CpuStress::revert(&r).unwrap();
    assert_clean(&r);
}

#[test]
fn inject_twice_is_once_and_revert_works_from_the_journaled_receipt() {
    fault_core::require_root!();
    let _g = serial();
    let f = fault(json!({"workers": 1, "load": 5}));
    let cx = cx();
    let mut r = f.plan(&cx).unwrap();
    let planned = serde_json::to_string(&r).unwrap();
    CpuStress::revert(&r).unwrap(); // before inject: nothing to do
    f.inject(&cx, &mut r).unwrap();
    let first = r.stressors.processes.clone();
    f.inject(&cx, &mut r).unwrap();
    assert_eq!(r.stressors.processes, first);
    // A crash before the pids were journaled: revert from the *planned* receipt still
    // finds the worker through the cgroup named after the fault id.
    let back: CpuStressReceipt = serde_json::from_str(&planned).unwrap();
    assert!(back.stressors.processes.is_empty());
    assert_eq!(CpuStress::verify(&back).unwrap().effect, Effect::Partial);
    CpuStress::revert(&back).unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while first[0].is_alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!first[0].is_alive(), "unrecorded worker survived");
    CpuStress::revert(&r).unwrap(); // reaps it
    assert_clean(&r);
}

#[test]
fn ramp_rises_to_the_load() {
    fault_core::require_root!();
    let _g = serial();
    let f = fault(json!({"workers": 1, "cores": [0], "load": 80, "ramp": "2s"}));
    let cx = cx();
    let mut r = f.plan(&cx).unwrap();
    f.inject(&cx, &mut r).unwrap();
    let pid = r.stressors.processes[0].pid;
    // Over the first 0.5 s the mean of a linear ramp to 80% in 2 s is 10%.
    let early = measure(&[pid], Duration::from_millis(500))[0];
    std::thread::sleep(Duration::from_millis(1700));
    let late = measure(&[pid], Duration::from_millis(1000))[0];
    CpuStress::revert(&r).unwrap();
    assert_clean(&r);
    eprintln!("ramp: first 0.5 s {early:?}, after 2.2 s {late:?}");
    assert!(early.low < 25.0, "early {early:?}");
    assert!(late.low < 85.0, "late {late:?}");
    // As in the accuracy test: on a shared machine a shortfall is accepted only when the
    // time the worker spent waiting for a CPU explains it.
    assert!(
        late.high > 70.0 || late.high + late.waited > 70.0,
        "late {late:?}: waiting for a CPU does not explain the shortfall"
    );
}

#[test]
fn a_killed_worker_is_reported_by_maintain_and_verify() {
    fault_core::require_root!();
    let _g = serial();
    let f = fault(json!({"workers": 2, "load": 5}));
    let cx = cx();
    let mut r = f.plan(&cx).unwrap();
    f.inject(&cx, &mut r).unwrap();
    assert!(f.maintain(&cx, &mut r).unwrap().is_some());
    r.stressors.processes[0].signal(libc::SIGKILL).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let e = f.maintain(&cx, &mut r).unwrap_err();
    assert!(e.to_string().contains("killed by signal 9"), "{e}");
    assert_eq!(CpuStress::verify(&r).unwrap().effect, Effect::Partial);
    CpuStress::revert(&r).unwrap();
    assert_clean(&r);
}

// ---- kill -9 of an agent process -------------------------------------------------------

chaos_engine::agent_kill9_harness!(fault_cpu::register);

fn registry() -> fault_core::Registry {
    let mut reg = fault_core::Registry::new();
    fault_cpu::register(&mut reg);
    reg
}

#[test]
fn kill_9_of_the_agent_kills_every_worker_and_recover_reports_clean() {
    fault_core::require_root!();
    let _g = serial();
    let exp = r#"
name = "kill9"
[[steps]]
name = "burn"
  [[steps.faults]]
  kind = "cpu.stress"
  duration = "60s"
  workers = 2
  load = 20
"#;
    let (dir, pids, killed_at) = run_agent_then_kill_it(exp);
    while pids.iter().any(|p| p.is_alive()) {
        assert!(
            killed_at.elapsed() < Duration::from_secs(3),
            "workers outlived the agent by 3 s: {pids:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!("workers gone {:?} after the agent", killed_at.elapsed());
    let journal = Journal::open(dir.path()).unwrap();
    let reg = registry();
    let items = runner::recover(&reg, &journal, &RetryPolicy::default()).unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].outcome, RecoverOutcome::Reverted, "{:?}", items[0]);
    let record = journal.records().unwrap().pop().unwrap();
    assert_eq!(record.state, RecordState::Reverted);
    let obs = reg.verify(fault_cpu::KIND, &record.receipt).unwrap();
    assert_eq!(obs.effect, Effect::Clean, "{}", obs.detail);
    let r: CpuStressReceipt = serde_json::from_value(record.receipt).unwrap();
    assert_clean(&r);
}

// ---- receipts read back from a journal -------------------------------------------------

#[test]
fn a_receipt_edited_to_another_cgroup_or_process_is_refused_and_both_survive() {
    fault_core::require_root!();
    let _g = serial();
    let f = fault(json!({"workers": 1, "load": 5}));
    let cx = cx();
    let mut r = f.plan(&cx).unwrap();
    if r.stressors.cgroups.is_empty() {
        eprintln!("SKIPPED: no cgroup hierarchy to test with");
        return;
    }
    f.inject(&cx, &mut r).unwrap();
    // Beside the fault's cgroup: another fault's cgroup, holding a process the test owns.
    let other = format!("chaos-agent-t-{}", fault_core::host::random_hex(6));
    let other_cg = r.stressors.cgroups[0].dir.with_file_name(&other);
    std::fs::create_dir(&other_cg).unwrap();
    let victim = Victim::sleeping("victim");
    std::fs::write(other_cg.join("cgroup.procs"), victim.pid().to_string()).unwrap();
    let reg = registry();

    let mut edited = r.clone();
    edited.stressors.cgroups[0].dir = other_cg.clone();
    let v = serde_json::to_value(&edited).unwrap();
    let e = reg
        .check_receipt(fault_cpu::KIND, &cx.fault_id, &v)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Drifted, "{e}");
    assert!(e.to_string().contains(&other), "{e}");

    let mut edited = r.clone();
    edited.stressors.processes[0] = ProcessId::of(victim.pid()).unwrap();
    let v = serde_json::to_value(&edited).unwrap();
    let e = reg
        .check_receipt(fault_cpu::KIND, &cx.fault_id, &v)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Drifted, "{e}");
    // Revert of that receipt refuses on its own too: the process is no stressor.
    let e = reg.revert(fault_cpu::KIND, &v).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Drifted, "{e}");

    assert!(
        matches!(victim.state(), Some(s) if s != 'Z' && s != 'X'),
        "the test's process must survive: {:?}",
        victim.state()
    );
    let procs = std::fs::read_to_string(other_cg.join("cgroup.procs")).unwrap();
    assert_eq!(procs.trim(), victim.pid().to_string());

    // The receipt as inject wrote it passes and reverts.
    let v = serde_json::to_value(&r).unwrap();
    reg.check_receipt(fault_cpu::KIND, &cx.fault_id, &v)
        .unwrap();
    reg.revert(fault_cpu::KIND, &v).unwrap();
    assert_clean(&r);
    drop(victim);
    std::fs::remove_dir(&other_cg).unwrap();
}

#[test]
fn leftovers_find_the_fault_cgroups_and_their_revert_kills_the_workers() {
    fault_core::require_root!();
    let _g = serial();
    let f = fault(json!({"workers": 2, "load": 5}));
    let cx = cx();
    let mut r = f.plan(&cx).unwrap();
    if r.stressors.cgroups.is_empty() {
        eprintln!("SKIPPED: no cgroup hierarchy to test with");
        return;
    }
    f.inject(&cx, &mut r).unwrap();
    // As if the journal had lost the record: only the fault id is known.
    let found = CpuStress::leftovers(&["t-never-planned".into(), cx.fault_id.clone()]).unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    let l = &found[0];
    assert_eq!(l.fault_id, cx.fault_id);
    assert_eq!(l.receipt.stressors.cgroups.len(), r.stressors.cgroups.len());
    assert!(l.found.contains("holding pids"), "{}", l.found);
    CpuStress::check_receipt(&cx.fault_id, &l.receipt).unwrap();
    assert!(CpuStress::leftovers(&["t-never-planned".into()])
        .unwrap()
        .is_empty());

    // Revert twice from the journaled (JSON) leftover receipt.
    let reg = registry();
    let v = serde_json::to_value(&l.receipt).unwrap();
    reg.revert(fault_cpu::KIND, &v).unwrap();
    reg.revert(fault_cpu::KIND, &v).unwrap();
    for p in &r.stressors.processes {
        assert!(!p.is_alive(), "worker {} survived", p.pid);
    }
    assert_eq!(
        reg.verify(fault_cpu::KIND, &v).unwrap().effect,
        Effect::Clean
    );
    assert!(CpuStress::leftovers(std::slice::from_ref(&cx.fault_id))
        .unwrap()
        .is_empty());
    CpuStress::revert(&r).unwrap(); // reaps the workers
    assert_clean(&r);
}

#[test]
fn touches_names_the_workers_and_their_cgroups() {
    fault_core::require_root!();
    let _g = serial();
    let f = fault(json!({"workers": 2, "load": 10}));
    let cx = cx();
    let mut r = f.plan(&cx).unwrap();
    f.inject(&cx, &mut r).unwrap();
    let t = CpuStress::touches(&r);
    CpuStress::revert(&r).unwrap();
    assert!(
        t[0].starts_with("2 workers at 10% CPU each on all "),
        "{t:?}"
    );
    let pids: Vec<String> = r
        .stressors
        .processes
        .iter()
        .map(|p| format!("pid {} (chaos-cpu)", p.pid))
        .collect();
    assert_eq!(t[1], format!("processes {}", pids.join(", ")));
    for c in &r.stressors.cgroups {
        assert!(
            t.iter()
                .any(|l| l.starts_with(&format!("cgroup {}", c.dir.display()))),
            "{t:?}"
        );
    }
}
