//! Requested vs achieved load of `cpu.stress` and of `stress-ng --cpu-load`, side by side in
//! one run, as the host's CPU accounting reports it (`/proc/stat`) and as the workers receive
//! it (`/proc/<pid>/schedstat`); then memory requested vs what `free` shows (`memory.stress`
//! vs `stress-ng --vm`). Run through `scripts/bench-stress.sh` (needs root for the cgroups,
//! and stress-ng); never part of `cargo test`. Method and results: docs/benchmarks.md.
//!
//! Environment: `BENCH_WINDOW_S` (measurement window, default 10), `BENCH_WARMUP_S`
//! (default 3), `BENCH_LEVELS` (comma-separated percentages, default 10,30,50,70,90),
//! `BENCH_SKIP_MEMORY=1`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fault_core::host::process::Stat;
use fault_core::host::stressor;
use fault_core::{Context, Fault};
use fault_cpu::{CpuStress, CpuStressSpec};
use fault_memory::{MemoryStress, MemoryStressSpec};

const MIB: f64 = (1u64 << 20) as f64;

/// `(cpu ns, run-queue wait ns)` from `/proc/<pid>/schedstat`.
fn schedstat(pid: i32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).ok()?;
    let mut it = s.split_whitespace().map(|v| v.parse::<u64>().ok());
    Some((it.next()??, it.next()??))
}

/// The aggregate `cpu` line of `/proc/stat`, in seconds: `(busy, idle + iowait)`. Busy is
/// user + nice + system + irq + softirq + steal (guest time is inside user), as `top`,
/// `vmstat`, `sar` and node_exporter count it.
fn proc_stat() -> (f64, f64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<f64> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // SAFETY: sysconf has no memory preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let f = |i: usize| v.get(i).copied().unwrap_or(0.0) / hz;
    (f(0) + f(1) + f(2) + f(5) + f(6) + f(7), f(3) + f(4))
}

fn children(pid: i32) -> Vec<i32> {
    fault_core::host::process::all_pids()
        .into_iter()
        .filter(|&p| Stat::read(p).is_some_and(|s| s.ppid == pid))
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

/// One tool at one level, per worker, in percent of one CPU.
struct Sample {
    /// By `/proc/stat` (tick-sampled busy, less everything else's CPU time).
    stat: f64,
    /// By the workers' own CPU time (schedstat, nanoseconds).
    sched: f64,
    /// Run-queue wait per worker (runnable, but another task ran).
    wait: f64,
    /// CPU time of everything else on the machine, in CPUs.
    background: f64,
}

/// Measure `workers` over `window`.
///
/// `/proc/stat` is tick-sampled for busy time but exact for idle time (with
/// `CONFIG_NO_HZ`, idle is the measured time in the idle loop). So exact busy time of the
/// whole machine is `ncpu * wall - idle`, everything but our workers is that less the
/// workers' schedstat time, and the workers' load as the host reports it is the tick-sampled
/// busy less everything else. On an idle machine that is simply the busy time `top` shows;
/// on a busy one it takes out the average of the others, and keeps their sampling noise.
fn measure(workers: &[i32], window: Duration, ncpu: usize) -> Sample {
    let t0 = Instant::now();
    let s0 = proc_stat();
    let a: Vec<(u64, u64)> = workers
        .iter()
        .map(|&p| schedstat(p).unwrap_or((0, 0)))
        .collect();
    std::thread::sleep(window);
    let s1 = proc_stat();
    let wall = t0.elapsed().as_secs_f64();
    let (mut cpu, mut wait) = (0.0, 0.0);
    for (&p, (c0, w0)) in workers.iter().zip(a) {
        let (c1, w1) = schedstat(p).unwrap_or((c0, w0));
        cpu += (c1 - c0) as f64 / 1e9;
        wait += (w1 - w0) as f64 / 1e9;
    }
    let busy_ticks = s1.0 - s0.0;
    let idle = s1.1 - s0.1;
    let busy_exact = (ncpu as f64 * wall - idle).max(0.0);
    let others = (busy_exact - cpu).max(0.0);
    let n = workers.len().max(1) as f64;
    Sample {
        stat: (busy_ticks - others) * 100.0 / wall / n,
        sched: cpu * 100.0 / wall / n,
        wait: wait * 100.0 / wall / n,
        background: others / wall,
    }
}

fn ours(load: f64, workers: Option<usize>, warmup: Duration, window: Duration) -> Sample {
    let w = workers.map_or(serde_json::json!("all"), |n| serde_json::json!(n));
    let spec: CpuStressSpec =
        serde_json::from_value(serde_json::json!({"workers": w, "load": load})).unwrap();
    let f = CpuStress::new(spec).unwrap();
    let cx = Context::new(
        format!("bench-{}", fault_core::host::random_hex(4)),
        "bench",
    );
    let mut r = f.plan(&cx).unwrap();
    f.inject(&cx, &mut r).unwrap();
    std::thread::sleep(warmup);
    let pids: Vec<i32> = r.stressors.processes.iter().map(|p| p.pid).collect();
    f.maintain(&cx, &mut r).unwrap();
    let s = measure(&pids, window, ncpu());
    f.maintain(&cx, &mut r).unwrap();
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

fn stress_ng(load: f64, workers: usize, warmup: Duration, window: Duration) -> Option<Sample> {
    let args: Vec<String> = vec![
        "--cpu".into(),
        workers.to_string(),
        "--cpu-load".into(),
        format!("{}", load as u32),
        "--timeout".into(),
        format!("{}s", (warmup + window).as_secs() + 5),
    ];
    let child = spawn_stress_ng(&args)?;
    std::thread::sleep(warmup);
    let pids = children(child.id() as i32);
    let s = measure(&pids, window, ncpu());
    stop(child);
    Some(s)
}

fn ncpu() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn env_secs(name: &str, default: u64) -> Duration {
    Duration::from_secs(
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
    )
}

/// `30.12 (+0.12)`: achieved and its difference from the request, in points.
fn cell(v: f64, load: f64) -> String {
    format!("{v:.2} ({:+.2})", v - load)
}

fn cpu_table(label: &str, workers: Option<usize>, levels: &[f64], have_ng: bool) {
    let warmup = env_secs("BENCH_WARMUP_S", 3);
    let window = env_secs("BENCH_WINDOW_S", 10);
    let n = workers.unwrap_or_else(ncpu);
    println!();
    println!("{label}: {n} worker(s), {} s warm-up, {} s window; % of one CPU per worker, (difference from the request in points)", warmup.as_secs(), window.as_secs());
    println!();
    println!("| requested | cpu.stress /proc/stat | cpu.stress schedstat | wait | stress-ng /proc/stat | stress-ng schedstat | wait | /proc/stat error ours/stress-ng | others (CPUs) |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut worst = [0f64; 4];
    for &load in levels {
        let o = ours(load, workers, warmup, window);
        let g = if have_ng {
            stress_ng(load, n, warmup, window)
        } else {
            None
        };
        worst[0] = worst[0].max((o.stat - load).abs());
        worst[1] = worst[1].max((o.sched - load).abs());
        let (gs, gc, gw, ratio) = match &g {
            Some(g) => {
                worst[2] = worst[2].max((g.stat - load).abs());
                worst[3] = worst[3].max((g.sched - load).abs());
                let e = (g.stat - load).abs();
                (
                    cell(g.stat, load),
                    cell(g.sched, load),
                    format!("{:.1}", g.wait),
                    if e > 0.0 {
                        format!("{:.2}", (o.stat - load).abs() / e)
                    } else {
                        "n/a".into()
                    },
                )
            }
            None => ("n/a".into(), "n/a".into(), "n/a".into(), "n/a".into()),
        };
        let bg = match &g {
            Some(g) => format!("{:.2} / {:.2}", o.background, g.background),
            None => format!("{:.2}", o.background),
        };
        println!(
            "| {load}% | {} | {} | {:.1} | {gs} | {gc} | {gw} | {ratio} | {bg} |",
            cell(o.stat, load),
            cell(o.sched, load),
            o.wait,
        );
    }
    println!(
        "| largest error | {:.2} | {:.2} | | {} | {} | | | |",
        worst[0],
        worst[1],
        if have_ng {
            format!("{:.2}", worst[2])
        } else {
            "n/a".into()
        },
        if have_ng {
            format!("{:.2}", worst[3])
        } else {
            "n/a".into()
        },
    );
}

fn mem_available() -> f64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        * 1024.0
}

/// MemAvailable, the median of 5 reads 100 ms apart.
fn mem_available_median() -> f64 {
    let mut v: Vec<f64> = (0..5)
        .map(|i| {
            if i > 0 {
                std::thread::sleep(Duration::from_millis(100));
            }
            mem_available()
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[2]
}

/// What `free` shows a holder of memory took: MemAvailable before start and after stop
/// (their mean, and their difference as the background's drift), less MemAvailable while it
/// holds. `hold` starts the holder, waits until it holds, and returns a closure that reads
/// what it wants to report and stops it.
struct MemSample {
    drop: f64,
    drift: f64,
    rss: f64,
    cgroup: Option<f64>,
}

fn memory_ours(mib: u64) -> MemSample {
    let spec: MemoryStressSpec =
        serde_json::from_value(serde_json::json!({"size": format!("{mib}MiB")})).unwrap();
    let f = MemoryStress::new(spec).unwrap();
    let cx = Context::new(
        format!("bench-{}", fault_core::host::random_hex(4)),
        "bench",
    );
    let mut r = f.plan(&cx).unwrap();
    let before = mem_available_median();
    f.inject(&cx, &mut r).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let during = mem_available_median();
    let pid = r.stressors.processes[0].pid;
    let rss = stressor::rss_bytes(pid).unwrap_or(0) as f64;
    let cgroup = r
        .stressors
        .cgroups
        .iter()
        .find_map(|c| c.memory_usage())
        .map(|b| b as f64);
    MemoryStress::revert(&r).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let after = mem_available_median();
    MemSample {
        drop: (before + after) / 2.0 - during,
        drift: after - before,
        rss,
        cgroup,
    }
}

fn memory_ng(mib: u64) -> Option<MemSample> {
    let args: Vec<String> = [
        "--vm",
        "1",
        "--vm-bytes",
        &format!("{mib}M"),
        "--vm-keep",
        "--timeout",
        "15s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let before = mem_available_median();
    let c = spawn_stress_ng(&args)?;
    std::thread::sleep(Duration::from_secs(3));
    let during = mem_available_median();
    let rss = descendants(c.id() as i32)
        .into_iter()
        .filter_map(stressor::rss_bytes)
        .max()
        .unwrap_or(0) as f64;
    stop(c);
    std::thread::sleep(Duration::from_secs(1));
    let after = mem_available_median();
    Some(MemSample {
        drop: (before + after) / 2.0 - during,
        drift: after - before,
        rss,
        cgroup: None,
    })
}

fn memory_table(have_ng: bool) {
    println!();
    println!("Memory: MemAvailable drop (what `free` shows as taken; background drift between before and after in brackets), resident set, fault cgroup charge; MiB");
    println!();
    println!("| requested | memory.stress MemAvailable drop | RSS | cgroup | stress-ng --vm 1 --vm-keep MemAvailable drop | RSS |");
    println!("|---|---|---|---|---|---|");
    for mib in [256u64, 1024] {
        let o = memory_ours(mib);
        let g = if have_ng { memory_ng(mib) } else { None };
        let (gd, gr) = match g {
            Some(g) => (
                format!("{:.1} ({:+.1})", g.drop / MIB, g.drift / MIB),
                format!("{:.1}", g.rss / MIB),
            ),
            None => ("n/a".into(), "n/a".into()),
        };
        println!(
            "| {mib} | {:.1} ({:+.1}) | {:.1} | {} | {gd} | {gr} |",
            o.drop / MIB,
            o.drift / MIB,
            o.rss / MIB,
            o.cgroup.map_or("n/a".into(), |b| format!("{:.1}", b / MIB)),
        );
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        // `cargo test --all-targets` runs bench targets too: this one takes minutes and
        // loads every CPU, so it only runs under `cargo bench`.
        println!("SKIPPED: run with `cargo bench -p fault-cpu --bench accuracy`");
        return;
    }
    if !fault_core::host::is_root() {
        println!("SKIPPED: needs root (cgroups); run scripts/bench-stress.sh as root");
        return;
    }
    let have_ng = Command::new("stress-ng").arg("--version").output().is_ok();
    if !have_ng {
        println!("NOTE: stress-ng not found; only cpu.stress and memory.stress are measured");
    }
    let ng_version = Command::new("stress-ng")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let levels: Vec<f64> = std::env::var("BENCH_LEVELS")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .filter(|v: &Vec<f64>| !v.is_empty())
        .unwrap_or_else(|| vec![10.0, 30.0, 50.0, 70.0, 90.0]);
    let uname = Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    // SAFETY: sysconf has no memory preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    println!("{} CPUs, Linux {uname}, USER_HZ {hz}; {ng_version}", ncpu());
    let idle = measure(&[], env_secs("BENCH_WARMUP_S", 3), ncpu());
    println!(
        "Before the run: others use {:.2} CPUs; /proc/stat busy minus exact busy: {:+.3} CPUs",
        idle.background,
        idle.stat / 100.0
    );
    cpu_table("One worker", Some(1), &levels, have_ng);
    cpu_table("workers = \"all\"", None, &levels, have_ng);
    if std::env::var_os("BENCH_SKIP_MEMORY").is_none() {
        memory_table(have_ng);
    }
}
