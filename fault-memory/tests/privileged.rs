//! `memory.stress` against the real kernel: a real stressor process, its resident memory
//! read from `/proc/<pid>/statm`, its cgroup (and an OOM kill in it), and a `kill -9` of an
//! agent process mid-fault. Amounts stay at or below 128 MiB.
//!
//! # Tolerance
//!
//! The stressor's RSS must reach the request and exceed it by at most 32 MiB: a forked
//! child also maps, copy-on-write, the pages of the (test) process it was forked from,
//! and those count in its RSS. The charge of the fault's memory cgroup, which counts only
//! pages the stressor touched after joining it, must be within 8 MiB of the request.

#![cfg(feature = "privileged-tests")]

use std::time::{Duration, Instant};

use chaos_engine::journal::{Journal, RecordState};
use chaos_engine::runner::{self, RecoverOutcome, RetryPolicy};
use fault_core::host::stressor;
use fault_core::{Context, Effect, ErrorKind, Fault};
use fault_memory::{MemoryStress, MemoryStressReceipt, MemoryStressSpec};
use serde_json::json;

const MIB: u64 = 1 << 20;

fn cx() -> Context {
    Context::new(
        format!("t-{}", fault_core::host::random_hex(6)),
        "privileged-test",
    )
}

fn fault(spec: serde_json::Value) -> MemoryStress {
    let spec: MemoryStressSpec = serde_json::from_value(spec).expect("spec parses");
    MemoryStress::new(spec).expect("spec validates")
}

fn rss(r: &MemoryStressReceipt) -> u64 {
    stressor::rss_bytes(r.stressors.processes[0].pid).unwrap_or(0)
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn assert_clean(r: &MemoryStressReceipt) {
    for p in &r.stressors.processes {
        assert!(!p.is_alive(), "stressor {} still alive", p.pid);
    }
    for c in &r.stressors.cgroups {
        assert!(!c.dir.exists(), "cgroup {} left", c.dir.display());
    }
    let obs = MemoryStress::verify(r).unwrap();
    assert_eq!(obs.effect, Effect::Clean, "{}", obs.detail);
}

#[test]
fn rss_reaches_the_requested_amount_and_revert_frees_it() {
    fault_core::require_root!();
    let cx = cx();
    let f = fault(json!({"size": "128MiB"}));
    let mut r = f.plan(&cx).unwrap();
    assert_eq!(r.bytes, 128 * MIB);
    f.inject(&cx, &mut r).unwrap();
    let p = r.stressors.processes[0].clone();
    assert_eq!(p.stat().unwrap().comm, "chaos-memory");
    let adj = std::fs::read_to_string(format!("/proc/{}/oom_score_adj", p.pid)).unwrap();
    assert_eq!(adj.trim(), "1000");
    wait_for("RSS to reach 128 MiB", Duration::from_secs(10), || {
        rss(&r) >= 128 * MIB
    });
    std::thread::sleep(Duration::from_millis(200));
    let got = rss(&r);
    eprintln!(
        "requested 128 MiB, resident {:.1} MiB",
        got as f64 / MIB as f64
    );
    assert!(got <= 160 * MIB, "RSS {got}");
    let mem_cg = r
        .stressors
        .cgroups
        .iter()
        .find(|c| c.has_memory())
        .expect("a memory cgroup");
    let charge = mem_cg.memory_usage().unwrap();
    eprintln!("cgroup charge {:.1} MiB", charge as f64 / MIB as f64);
    assert!(charge.abs_diff(128 * MIB) <= 8 * MIB, "charge {charge}");
    let obs = MemoryStress::verify(&r).unwrap();
    assert_eq!(obs.effect, Effect::InEffect, "{}", obs.detail);
    assert!(
        obs.detail.contains("of 128.0 MiB requested"),
        "{}",
        obs.detail
    );
    assert!(f.maintain(&cx, &mut r).unwrap().is_some());

    // inject twice = once
    f.inject(&cx, &mut r).unwrap();
    assert_eq!(r.stressors.processes, std::slice::from_ref(&p));

    // Revert from the journaled receipt, twice.
    let back: MemoryStressReceipt =
        serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
    MemoryStress::revert(&back).unwrap();
    MemoryStress::revert(&back).unwrap();
    assert_clean(&r);
}

#[test]
fn growth_follows_the_rate() {
    fault_core::require_root!();
    let cx = cx();
    let f = fault(json!({"size": "96MiB", "rate": "64MiB"}));
    let mut r = f.plan(&cx).unwrap();
    f.inject(&cx, &mut r).unwrap();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let half = rss(&r);
    let at = t0.elapsed().as_secs_f64();
    wait_for("RSS to reach 96 MiB", Duration::from_secs(5), || {
        rss(&r) >= 96 * MIB
    });
    let full_at = t0.elapsed().as_secs_f64();
    MemoryStress::revert(&r).unwrap();
    assert_clean(&r);
    let half_mib = half as f64 / MIB as f64;
    eprintln!("after {at:.2} s: {half_mib:.1} MiB; 96 MiB after {full_at:.2} s");
    // 64 MiB/s: ~32 MiB after 0.5 s (plus the few MiB shared with the parent).
    assert!(
        (16.0..56.0).contains(&half_mib),
        "{half_mib} MiB after {at} s"
    );
    assert!(full_at > 1.2 && full_at < 3.0, "full after {full_at} s");
}

#[test]
fn oom_in_a_small_cgroup_kills_the_stressor_and_the_agent_reports_it() {
    fault_core::require_root!();
    let cx = cx();
    let f = fault(json!({"size": "128MiB", "rate": "64MiB"}));
    let mut r = f.plan(&cx).unwrap();
    f.inject(&cx, &mut r).unwrap();
    let mem_cg = r
        .stressors
        .cgroups
        .iter()
        .find(|c| c.has_memory())
        .expect("a memory cgroup")
        .clone();
    // Place the growing stressor in a small cgroup: 32 MiB.
    mem_cg.set_memory_limit(32 * MIB).unwrap();
    let p = r.stressors.processes[0].clone();
    wait_for("the OOM kill", Duration::from_secs(10), || !p.is_alive());
    // The agent (this process) is alive and says what happened.
    let e = f.maintain(&cx, &mut r).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Drifted);
    let msg = e.to_string();
    eprintln!("maintain: {msg}");
    assert!(msg.contains("killed by signal 9"), "{msg}");
    assert!(msg.contains("the OOM killer killed 1 process(es)"), "{msg}");
    let obs = MemoryStress::verify(&r).unwrap();
    assert_eq!(obs.effect, Effect::Partial, "{}", obs.detail);
    assert!(obs.detail.contains("OOM killer"), "{}", obs.detail);
    MemoryStress::revert(&r).unwrap();
    assert_clean(&r);
}

#[test]
fn plan_refuses_what_the_host_cannot_give() {
    fault_core::require_root!();
    let e = fault(json!({"size": "64MiB", "reserve": "100TiB"}))
        .plan(&cx())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(
        e.to_string().contains("the reserve keeps 100.0 TiB free"),
        "{e}"
    );
    let e = fault(json!({"percent": 99})).plan(&cx()).unwrap_err();
    assert!(e.to_string().contains("can be taken safely"), "{e}");
}

// ---- kill -9 of an agent process -------------------------------------------------------

chaos_engine::agent_kill9_harness!(fault_memory::register);

fn registry() -> fault_core::Registry {
    let mut reg = fault_core::Registry::new();
    fault_memory::register(&mut reg);
    reg
}

#[test]
fn kill_9_of_the_agent_kills_the_stressor_and_recover_reports_clean() {
    fault_core::require_root!();
    let exp = r#"
name = "kill9"
[[steps]]
name = "hog"
  [[steps.faults]]
  kind = "memory.stress"
  duration = "60s"
  size = "64MiB"
"#;
    let (dir, pids, killed_at) = run_agent_then_kill_it(exp);
    while pids.iter().any(|p| p.is_alive()) {
        assert!(
            killed_at.elapsed() < Duration::from_secs(3),
            "stressor outlived the agent by 3 s: {pids:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!("stressor gone {:?} after the agent", killed_at.elapsed());
    let journal = Journal::open(dir.path()).unwrap();
    let reg = registry();
    let items = runner::recover(&reg, &journal, &RetryPolicy::default()).unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].outcome, RecoverOutcome::Reverted, "{:?}", items[0]);
    let record = journal.records().unwrap().pop().unwrap();
    assert_eq!(record.state, RecordState::Reverted);
    let obs = reg.verify(fault_memory::KIND, &record.receipt).unwrap();
    assert_eq!(obs.effect, Effect::Clean, "{}", obs.detail);
    let r: MemoryStressReceipt = serde_json::from_value(record.receipt).unwrap();
    assert_clean(&r);
}

#[test]
fn after_kill_9_with_the_record_lost_leftovers_find_the_cgroup_and_revert_removes_it() {
    fault_core::require_root!();
    let exp = r#"
name = "kill9-lost"
[[steps]]
name = "hog"
  [[steps.faults]]
  kind = "memory.stress"
  duration = "60s"
  size = "16MiB"
"#;
    let (dir, pids, _) = run_agent_then_kill_it(exp);
    let journal = Journal::open(dir.path()).unwrap();
    let record = journal.records().unwrap().pop().unwrap();
    let lost: MemoryStressReceipt = serde_json::from_value(record.receipt).unwrap();
    if lost.stressors.cgroups.is_empty() {
        eprintln!("SKIPPED: no cgroup hierarchy to test with");
        return;
    }
    // The journal lost the record; only the fault id is known.
    let found = MemoryStress::leftovers(std::slice::from_ref(&record.fault_id)).unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    let l = &found[0];
    assert_eq!(l.fault_id, record.fault_id);
    let mut want: Vec<_> = lost.stressors.cgroups.iter().map(|c| &c.dir).collect();
    let mut got: Vec<_> = l.receipt.stressors.cgroups.iter().map(|c| &c.dir).collect();
    want.sort();
    got.sort();
    assert_eq!(got, want);
    let reg = registry();
    let v = serde_json::to_value(&l.receipt).unwrap();
    reg.check_receipt(fault_memory::KIND, &record.fault_id, &v)
        .unwrap();
    reg.revert(fault_memory::KIND, &v).unwrap();
    reg.revert(fault_memory::KIND, &v).unwrap();
    assert_eq!(
        reg.verify(fault_memory::KIND, &v).unwrap().effect,
        Effect::Clean
    );
    for p in &pids {
        assert!(!p.is_alive(), "stressor {} survived", p.pid);
    }
    assert_clean(&lost);
    assert!(
        MemoryStress::leftovers(std::slice::from_ref(&record.fault_id))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_receipt_edited_to_another_faults_cgroup_is_refused() {
    fault_core::require_root!();
    let f = fault(json!({"size": "8MiB"}));
    let cx = cx();
    let r = f.plan(&cx).unwrap();
    let Some(first) = r.stressors.cgroups.first() else {
        eprintln!("SKIPPED: no cgroup hierarchy to test with");
        return;
    };
    let other = first
        .dir
        .with_file_name(format!("chaos-agent-t-{}", fault_core::host::random_hex(6)));
    std::fs::create_dir(&other).unwrap();
    let mut edited = r.clone();
    edited.stressors.cgroups[0].dir = other.clone();
    let e = MemoryStress::check_receipt(&cx.fault_id, &edited).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Drifted, "{e}");
    assert!(other.is_dir(), "nothing is touched");
    MemoryStress::check_receipt(&cx.fault_id, &r).unwrap();
    std::fs::remove_dir(&other).unwrap();
}
