//! Requested vs achieved CPU load of `cpu.stress` and of `stress-ng --cpu-load`, side by side
//! in one run, plus memory requested vs resident (`memory.stress` vs `stress-ng --vm`) and
//! the supervising process's own CPU. Run through `scripts/bench-stress.sh` (needs root for
//! the cgroups, and stress-ng); never part of `cargo test`.
//!
//! Method: for each level, each tool runs one worker per CPU; after 1 s of warm-up the
//! workers' CPU time is read from `/proc/<pid>/schedstat` over a window of `BENCH_WINDOW_S`
//! seconds (default 6); achieved = CPU time / wall time, averaged over the workers. The
//! run-queue wait (schedstat's second field) is shown too: CPU the worker asked for but the
//! scheduler gave to someone else (this machine is shared). The tools alternate per level so
//! both see the same background load.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fault_core::host::stressor;
use fault_core::{Context, Fault};
use fault_cpu::{CpuStress, CpuStressSpec};
use fault_memory::{MemoryStress, MemoryStressSpec};

const MIB: u64 = 1 << 20;

fn schedstat(pid: i32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).ok()?;
    let mut it = s.split_whitespace().map(|v| v.parse::<u64>().ok());
    Some((it.next()??, it.next()??))
}

fn children(pid: i32) -> Vec<i32> {
    fault_core::host::process::all_pids()
        .into_iter()
        .filter(|&p| fault_core::host::process::Stat::read(p).is_some_and(|s| s.ppid == pid))
        .collect()
}

fn descendants(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for c in children(p) {
            out.push(c);
            todo.push(c);
        }
    }
    out
}

struct Sample {
    /// Mean achieved load per worker, percent of one CPU.
    achieved: f64,
    /// Mean run-queue wait per worker, percent.
    waited: f64,
    /// The supervising process's own CPU, percent of one CPU.
    overhead: f64,
}

/// Measure `workers` over `window`; `supervisor` is the pid whose own CPU is overhead;
/// `tick` runs every 50 ms meanwhile (our runner's hold loop).
fn measure(workers: &[i32], supervisor: i32, window: Duration, mut tick: impl FnMut()) -> Sample {
    let t0 = Instant::now();
    let a: Vec<(u64, u64)> = workers
        .iter()
        .map(|&p| schedstat(p).unwrap_or((0, 0)))
        .collect();
    let s0 = schedstat(supervisor).unwrap_or((0, 0)).0;
    while t0.elapsed() < window {
        std::thread::sleep(Duration::from_millis(50));
        tick();
    }
    let wall = t0.elapsed().as_nanos() as f64;
    let s1 = schedstat(supervisor).unwrap_or((0, 0)).0;
    let (mut cpu, mut wait) = (0.0, 0.0);
    for (&p, (c0, w0)) in workers.iter().zip(a) {
        let (c1, w1) = schedstat(p).unwrap_or((c0, w0));
        cpu += (c1 - c0) as f64;
        wait += (w1 - w0) as f64;
    }
    let n = workers.len().max(1) as f64;
    Sample {
        achieved: cpu * 100.0 / wall / n,
        waited: wait * 100.0 / wall / n,
        overhead: (s1 - s0) as f64 * 100.0 / wall,
    }
}

fn ours(load: f64, window: Duration) -> Sample {
    let spec: CpuStressSpec =
        serde_json::from_value(serde_json::json!({"workers": "all", "load": load})).unwrap();
    let f = CpuStress::new(spec).unwrap();
    let cx = Context::new(
        format!("bench-{}", fault_core::host::random_hex(4)),
        "bench",
    );
    let mut r = f.plan(&cx).unwrap();
    f.inject(&cx, &mut r).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let pids: Vec<i32> = r.stressors.processes.iter().map(|p| p.pid).collect();
    let mut last = Instant::now();
    let me = std::process::id() as i32;
    let s = measure(&pids, me, window, || {
        // What the runner does while holding: maintain once a second.
        if last.elapsed() >= Duration::from_secs(1) {
            f.maintain(&cx, &mut r).unwrap();
            last = Instant::now();
        }
    });
    CpuStress::revert(&r).unwrap();
    s
}

fn spawn_stress_ng(args: &[String]) -> Option<Child> {
    Command::new("stress-ng")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}

fn stop(mut c: Child) {
    // SAFETY: kill has no memory preconditions; the child is ours and not yet reaped.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let _ = c.wait();
}

fn stress_ng(load: f64, slice: Option<i32>, ncpu: usize, window: Duration) -> Option<Sample> {
    let mut args = vec![
        "--cpu".to_string(),
        ncpu.to_string(),
        "--cpu-load".into(),
        format!("{}", load as u32),
        "--timeout".into(),
        format!("{}s", window.as_secs() + 5),
    ];
    if let Some(s) = slice {
        args.push("--cpu-load-slice".into());
        args.push(s.to_string());
    }
    let child = spawn_stress_ng(&args)?;
    std::thread::sleep(Duration::from_secs(1));
    let parent = child.id() as i32;
    let workers = children(parent);
    let s = measure(&workers, parent, window, || {});
    stop(child);
    Some(s)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        // `cargo test --all-targets` runs bench targets too: this one takes minutes and
        // loads every CPU, so it only runs under `cargo bench`.
        println!("SKIPPED: run with `cargo bench -p fault-cpu --bench accuracy`");
        return;
    }
    let window = Duration::from_secs(
        std::env::var("BENCH_WINDOW_S")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(6),
    );
    if !fault_core::host::is_root() {
        println!("SKIPPED: needs root (cgroups); run scripts/bench-stress.sh as root");
        return;
    }
    let have_ng = Command::new("stress-ng").arg("--version").output().is_ok();
    if !have_ng {
        println!("NOTE: stress-ng not found; only cpu.stress is measured");
    }
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    let ng_version = Command::new("stress-ng")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!(
        "CPU load, {ncpu} workers (one per CPU), {} s windows; {ng_version}",
        window.as_secs()
    );
    println!();
    println!("| requested | cpu.stress achieved (wait) | error | stress-ng default slice (wait) | error | stress-ng --cpu-load-slice 10 (wait) | error | ratio ours/best stress-ng |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut overheads = Vec::new();
    let mut ng_overheads = Vec::new();
    for load in [10.0, 30.0, 50.0, 70.0, 90.0] {
        let o = ours(load, window);
        overheads.push(o.overhead);
        let cell = |s: &Option<Sample>| match s {
            Some(s) => (
                format!("{:.2}% ({:.1}%)", s.achieved, s.waited),
                format!("{:.2}", (s.achieved - load).abs()),
            ),
            None => ("n/a".into(), "n/a".into()),
        };
        let d = if have_ng {
            stress_ng(load, None, ncpu, window)
        } else {
            None
        };
        let t = if have_ng {
            stress_ng(load, Some(10), ncpu, window)
        } else {
            None
        };
        for s in d.iter().chain(t.iter()) {
            ng_overheads.push(s.overhead);
        }
        let best = [&d, &t]
            .iter()
            .filter_map(|s| s.as_ref().map(|s| (s.achieved - load).abs()))
            .fold(f64::INFINITY, f64::min);
        let ours_err = (o.achieved - load).abs();
        let (dc, de) = cell(&d);
        let (tc, te) = cell(&t);
        println!(
            "| {load}% | {:.2}% ({:.1}%) | {ours_err:.2} | {dc} | {de} | {tc} | {te} | {} |",
            o.achieved,
            o.waited,
            if best.is_finite() && best > 0.0 {
                format!("{:.2}", ours_err / best)
            } else {
                "n/a".into()
            }
        );
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    println!();
    println!(
        "Supervisor CPU while holding: cpu.stress agent (maintain every 1 s, 50 ms ticks) \
         {:.3}% of one CPU; stress-ng parent {:.3}%",
        mean(&overheads),
        mean(&ng_overheads)
    );

    // Memory: requested vs resident.
    println!();
    println!("| memory requested | memory.stress RSS | stress-ng --vm 1 --vm-keep RSS |");
    println!("|---|---|---|");
    for mib in [64u64, 256] {
        let spec: MemoryStressSpec =
            serde_json::from_value(serde_json::json!({"size": format!("{mib}MiB")})).unwrap();
        let f = MemoryStress::new(spec).unwrap();
        let cx = Context::new(
            format!("bench-{}", fault_core::host::random_hex(4)),
            "bench",
        );
        let mut r = f.plan(&cx).unwrap();
        f.inject(&cx, &mut r).unwrap();
        std::thread::sleep(Duration::from_secs(2));
        let rss = stressor::rss_bytes(r.stressors.processes[0].pid).unwrap_or(0);
        MemoryStress::revert(&r).unwrap();
        let ng = if have_ng {
            let args: Vec<String> = [
                "--vm",
                "1",
                "--vm-bytes",
                &format!("{mib}M"),
                "--vm-keep",
                "--timeout",
                "10s",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            spawn_stress_ng(&args).map(|c| {
                std::thread::sleep(Duration::from_secs(3));
                let max = descendants(c.id() as i32)
                    .into_iter()
                    .filter_map(stressor::rss_bytes)
                    .max()
                    .unwrap_or(0);
                stop(c);
                format!("{:.1} MiB", max as f64 / MIB as f64)
            })
        } else {
            None
        };
        println!(
            "| {mib} MiB | {:.1} MiB | {} |",
            rss as f64 / MIB as f64,
            ng.unwrap_or_else(|| "n/a".into())
        );
    }
}
