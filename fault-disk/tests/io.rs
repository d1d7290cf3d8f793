//! `disk.io` against the real kernel: real worker processes doing direct I/O on an ext4
//! image loop-mounted from a tmpfs each test mounts (tmpfs itself has no O_DIRECT), bytes
//! observed in `/proc/<pid>/io`, and a `kill -9` of an agent process mid-fault. The real
//! disk is never touched. Workers are throttled (`rate`) so the tests stay light.
//!
//! # Tolerance
//!
//! A throttled worker must move its `rate` within 30% over a 1 s window (the loop device
//! and a busy machine add latency; the throttle itself only sleeps, so more than the rate
//! is impossible beyond one block).

#![cfg(feature = "privileged-tests")]

use std::path::Path;
use std::time::{Duration, Instant};

use chaos_engine::journal::{Journal, RecordState};
use chaos_engine::runner::{self, RecoverOutcome, RetryPolicy};
use fault_core::host::stressor::{self, Exit};
use fault_core::testing::Ext4Loop;
use fault_core::testing::Tmpfs;
use fault_core::{Context, Effect, ErrorKind, Fault};
use fault_disk::{DiskIo, DiskIoReceipt, DiskIoSpec};
use serde_json::json;

const MIB: u64 = 1 << 20;

fn cx() -> Context {
    Context::new(
        format!("t-{}", fault_core::host::random_hex(6)),
        "privileged-test",
    )
}

fn fault(spec: serde_json::Value) -> DiskIo {
    let spec: DiskIoSpec = serde_json::from_value(spec).expect("spec parses");
    DiskIo::new(spec).expect("spec validates")
}

/// Bytes `(read, written)` by the workers over `window`.
fn moved(r: &DiskIoReceipt, window: Duration) -> (u64, u64) {
    let pids: Vec<i32> = r.stressors.processes.iter().map(|p| p.pid).collect();
    let a: Vec<(u64, u64)> = pids
        .iter()
        .map(|&p| stressor::io_bytes(p).unwrap())
        .collect();
    std::thread::sleep(window);
    pids.iter().zip(a).fold((0, 0), |(rd, wr), (&p, (r0, w0))| {
        let (r1, w1) = stressor::io_bytes(p).unwrap();
        (rd + r1 - r0, wr + w1 - w0)
    })
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lost+found")
        .collect();
    v.sort();
    v
}

fn assert_clean(r: &DiskIoReceipt) {
    for p in &r.stressors.processes {
        assert!(!p.is_alive(), "worker {} still alive", p.pid);
    }
    for c in &r.stressors.cgroups {
        assert!(!c.dir.exists(), "cgroup {} left", c.dir.display());
    }
    for f in &r.files {
        assert!(!f.exists(), "{} left", f.display());
    }
    let obs = DiskIo::verify(r).unwrap();
    assert_eq!(obs.effect, Effect::Clean, "{}", obs.detail);
}

#[test]
fn write_workers_move_bytes_at_the_rate_and_revert_removes_their_files() {
    fault_core::require_root!();
    let Some(fs) = Ext4Loop::mount(32 * MIB) else {
        return;
    };
    let dir = fs.path();
    let cx = cx();
    let f = fault(json!({"path": dir, "workers": 2, "block_size": "64KiB",
                         "file_size": "4MiB", "rate": "8MiB"}));
    let mut r = f.plan(&cx).unwrap();
    assert_eq!(
        r.files,
        [0, 1].map(|i| dir.join(format!(".chaos-agent-io-{}-{i}", cx.fault_id)))
    );
    assert!(entries(dir).is_empty(), "plan changes nothing");
    f.inject(&cx, &mut r).unwrap();
    for p in &r.stressors.processes {
        assert_eq!(p.stat().unwrap().comm, "chaos-io");
    }
    std::thread::sleep(Duration::from_millis(300));
    let (rd, wr) = moved(&r, Duration::from_secs(1));
    eprintln!(
        "2 x 8 MiB/s requested: wrote {:.1} MiB, read {:.1} MiB in 1 s",
        wr as f64 / MIB as f64,
        rd as f64 / MIB as f64
    );
    assert!(
        (wr as f64 - 16.0 * MIB as f64).abs() <= 0.3 * 16.0 * MIB as f64,
        "wrote {wr}"
    );
    let obs = DiskIo::verify(&r).unwrap();
    assert_eq!(obs.effect, Effect::InEffect, "{}", obs.detail);
    assert!(
        obs.detail.contains("2 of 2 workers running"),
        "{}",
        obs.detail
    );
    assert_eq!(entries(dir).len(), 2);
    f.inject(&cx, &mut r).unwrap(); // twice = once
    assert_eq!(r.stressors.processes.len(), 2);

    let back: DiskIoReceipt = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
    DiskIo::revert(&back).unwrap();
    DiskIo::revert(&back).unwrap();
    assert_clean(&r);
    assert!(entries(dir).is_empty(), "{:?}", entries(dir));
}

#[test]
fn reads_go_around_the_page_cache() {
    fault_core::require_root!();
    let Some(fs) = Ext4Loop::mount(32 * MIB) else {
        return;
    };
    let cx = cx();
    let f = fault(
        json!({"path": fs.path(), "mode": "read", "block_size": "256KiB",
                         "file_size": "2MiB", "rate": "16MiB"}),
    );
    let mut r = f.plan(&cx).unwrap();
    f.inject(&cx, &mut r).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (rd, _) = moved(&r, Duration::from_secs(1));
    DiskIo::revert(&r).unwrap();
    assert_clean(&r);
    eprintln!(
        "read {:.1} MiB of a 2 MiB file in 1 s",
        rd as f64 / MIB as f64
    );
    // A cached file would be read from the device once at most.
    assert!(rd >= 8 * MIB, "read {rd}: the page cache served it");
}

#[test]
fn mixed_mode_reads_and_writes() {
    fault_core::require_root!();
    let Some(fs) = Ext4Loop::mount(32 * MIB) else {
        return;
    };
    let cx = cx();
    let f = fault(
        json!({"path": fs.path(), "mode": "mixed", "block_size": "64KiB",
                         "file_size": "1MiB", "rate": "8MiB"}),
    );
    let mut r = f.plan(&cx).unwrap();
    f.inject(&cx, &mut r).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (rd, wr) = moved(&r, Duration::from_secs(1));
    DiskIo::revert(&r).unwrap();
    assert_clean(&r);
    assert!(rd >= 2 * MIB && wr >= 2 * MIB, "read {rd}, wrote {wr}");
}

#[test]
fn a_worker_stops_after_its_bytes() {
    fault_core::require_root!();
    let Some(fs) = Ext4Loop::mount(32 * MIB) else {
        return;
    };
    let cx = cx();
    let f = fault(
        json!({"path": fs.path(), "block_size": "64KiB", "file_size": "1MiB",
                         "bytes": "3MiB"}),
    );
    let mut r = f.plan(&cx).unwrap();
    f.inject(&cx, &mut r).unwrap();
    let p = r.stressors.processes[0].clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.is_alive() {
        assert!(Instant::now() < deadline, "worker never finished");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(stressor::exit_status(&p), Some(Exit::Code(0)));
    assert!(
        f.maintain(&cx, &mut r).unwrap().is_some(),
        "finishing is not a failure"
    );
    let obs = DiskIo::verify(&r).unwrap();
    assert_eq!(obs.effect, Effect::InEffect, "{}", obs.detail);
    assert!(obs.detail.contains("1 finished"), "{}", obs.detail);
    DiskIo::revert(&r).unwrap();
    assert_clean(&r);
}

#[test]
fn plan_refuses_tmpfs_missing_paths_and_files_that_do_not_fit() {
    fault_core::require_root!();
    let t = Tmpfs::mount(16 * MIB).unwrap();
    let e = fault(json!({"path": t.path()})).plan(&cx()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(e.to_string().contains("does not support O_DIRECT"), "{e}");
    let e = fault(json!({"path": t.path().join("gone")}))
        .plan(&cx())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.to_string().contains("does not exist"), "{e}");
    let Some(fs) = Ext4Loop::mount(32 * MIB) else {
        return;
    };
    let e = fault(json!({"path": fs.path(), "workers": 4, "file_size": "16MiB"}))
        .plan(&cx())
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("the scratch files need 64.0 MiB (4 x 16.0 MiB)"),
        "{e}"
    );
}

// ---- kill -9 of an agent process -------------------------------------------------------

chaos_engine::agent_kill9_harness!(fault_disk::register);

fn registry() -> fault_core::Registry {
    let mut reg = fault_core::Registry::new();
    fault_disk::register(&mut reg);
    reg
}

#[test]
fn kill_9_of_the_agent_kills_every_worker_and_recover_removes_the_files() {
    fault_core::require_root!();
    let Some(fs) = Ext4Loop::mount(32 * MIB) else {
        return;
    };
    let exp = format!(
        r#"
name = "kill9"
[[steps]]
name = "io"
  [[steps.faults]]
  kind = "disk.io"
  duration = "60s"
  path = "{}"
  workers = 2
  block_size = "64KiB"
  file_size = "2MiB"
  rate = "4MiB"
"#,
        fs.path().display()
    );
    let (dir, pids, killed_at) = run_agent_then_kill_it(&exp);
    while pids.iter().any(|p| p.is_alive()) {
        assert!(
            killed_at.elapsed() < Duration::from_secs(3),
            "workers outlived the agent by 3 s: {pids:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!("workers gone {:?} after the agent", killed_at.elapsed());
    assert_eq!(entries(fs.path()).len(), 2, "files wait for recover");
    let journal = Journal::open(dir.path()).unwrap();
    let reg = registry();
    let items = runner::recover(&reg, &journal, &RetryPolicy::default()).unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].outcome, RecoverOutcome::Reverted, "{:?}", items[0]);
    let record = journal.records().unwrap().pop().unwrap();
    assert_eq!(record.state, RecordState::Reverted);
    let r: DiskIoReceipt = serde_json::from_value(record.receipt).unwrap();
    assert_clean(&r);
    assert!(entries(fs.path()).is_empty());
}
