//! Requested vs achieved load of `cpu.stress` and of `stress-ng --cpu-load`, side by side in
//! one run, as the host's CPU accounting reports it (`/proc/stat`) and as the workers receive
//! it (`/proc/<pid>/schedstat`); then memory requested vs what `free` shows (`memory.stress`
//! vs `stress-ng --vm`). Run through `scripts/bench-stress.sh` (needs root for the cgroups,
//! and stress-ng); never part of `cargo test`. Method and results: docs/benchmarks.md.
//!
//! Environment: `BENCH_WINDOW_S` (measurement window, default 10), `BENCH_WARMUP_S`
//! (default 3), `BENCH_LEVELS` (comma-separated percentages, default 10,30,50,70,90),
//! `BENCH_NICE` (a nice value given to both tools' workers, e.g. -10 on a machine shared
//! with other jobs, so that what is measured is the tools and not the contention; default:
//! none), `BENCH_RT=1` (both tools' workers `SCHED_FIFO` priority 1: other jobs can no
//! longer take their CPU, so a shared machine measures the tools rather than the
//! contention), `BENCH_SKIP_CPU=1`, `BENCH_SKIP_MEMORY=1`, `BENCH_MEM_REPEATS` (default 3).

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

/// A v1 `cpuacct` cgroup of the bench's own, holding one tool's workers while they are
/// measured. The kernel charges each tick to the running task's `cpuacct` groups too:
/// `cpuacct.usage_user` + `cpuacct.usage_sys` are the very tick samples `/proc/stat` adds up,
/// for these tasks alone, while `cpuacct.usage` is their exact CPU time. `cpuacct` does not
/// change scheduling (the `cpu` controller is another hierarchy here; where the two are
/// mounted together, moving the workers would change their share, so the bench does not
/// use it).
struct TickCg {
    dir: std::path::PathBuf,
}

impl TickCg {
    fn create() -> Option<TickCg> {
        let h = fault_core::host::cgroup::hierarchies()
            .into_iter()
            .find(|h| {
                h.version == fault_core::host::cgroup::Version::V1 && h.controllers == ["cpuacct"]
            })?;
        let dir = h
            .own
            .join(format!("chaos-bench-{}", fault_core::host::random_hex(6)));
        std::fs::create_dir(&dir).ok()?;
        Some(TickCg { dir })
    }

    fn add(&self, pids: &[i32]) {
        for p in pids {
            let _ = std::fs::write(self.dir.join("cgroup.procs"), p.to_string());
        }
    }

    /// `(tick-sampled CPU time, exact CPU time)` in seconds.
    fn read(&self) -> Option<(f64, f64)> {
        let r = |f: &str| -> Option<f64> {
            let v: f64 = std::fs::read_to_string(self.dir.join(f))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            Some(v / 1e9)
        };
        Some((
            r("cpuacct.usage_user")? + r("cpuacct.usage_sys")?,
            r("cpuacct.usage")?,
        ))
    }
}

impl Drop for TickCg {
    fn drop(&mut self) {
        // Its processes were killed just before; rmdir succeeds once they are reaped.
        for _ in 0..100 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("NOTE: could not remove {}", self.dir.display());
    }
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
    /// The workers' own tick samples (their `cpuacct` group), when available.
    ticks: Option<f64>,
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
fn measure(workers: &[i32], window: Duration, ncpu: usize, cg: Option<&TickCg>) -> Sample {
    let t0 = Instant::now();
    let k0 = cg.and_then(TickCg::read);
    let s0 = proc_stat();
    let a: Vec<(u64, u64)> = workers
        .iter()
        .map(|&p| schedstat(p).unwrap_or((0, 0)))
        .collect();
    std::thread::sleep(window);
    let s1 = proc_stat();
    let k1 = cg.and_then(TickCg::read);
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
        ticks: k0.zip(k1).map(|(a, b)| (b.0 - a.0) * 100.0 / wall / n),
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
    let pids: Vec<i32> = r.stressors.processes.iter().map(|p| p.pid).collect();
    renice(&pids);
    let cg = TickCg::create();
    if let Some(cg) = &cg {
        cg.add(&pids);
    }
    std::thread::sleep(warmup);
    f.maintain(&cx, &mut r).unwrap();
    let s = measure(&pids, window, ncpu(), cg.as_ref());
    f.maintain(&cx, &mut r).unwrap();
    CpuStress::revert(&r).unwrap();
    drop(cg);
    s
}

/// Apply `BENCH_NICE` (a nice value) and `BENCH_RT=1` (`SCHED_FIFO` priority 1) to `pids`,
/// when set.
fn renice(pids: &[i32]) {
    let nice = std::env::var("BENCH_NICE")
        .ok()
        .and_then(|v| v.parse::<i32>().ok());
    let rt = std::env::var("BENCH_RT").is_ok_and(|v| v == "1");
    for &p in pids {
        if let Some(nice) = nice {
            // SAFETY: no memory preconditions; the pids are the tools' workers.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, p as libc::id_t, nice) };
        }
        if rt {
            let param = libc::sched_param { sched_priority: 1 };
            // SAFETY: param is a valid sched_param; the pid is a tool's worker.
            if unsafe { libc::sched_setscheduler(p, libc::SCHED_FIFO, &param) } != 0 {
                eprintln!(
                    "NOTE: SCHED_FIFO for {p}: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
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
    // Its workers are forked at once; find them, then warm up.
    std::thread::sleep(Duration::from_millis(300));
    let pids = children(child.id() as i32);
    renice(&pids);
    let cg = TickCg::create();
    if let Some(cg) = &cg {
        cg.add(&pids);
    }
    std::thread::sleep(warmup.saturating_sub(Duration::from_millis(300)));
    let s = measure(&pids, window, ncpu(), cg.as_ref());
    stop(child);
    drop(cg);
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

/// The cells of one tool: machine `/proc/stat`, schedstat, wait, its own tick samples.
fn cells(s: Option<&Sample>, load: f64) -> [String; 4] {
    match s {
        Some(s) => [
            cell(s.stat, load),
            cell(s.sched, load),
            format!("{:.1}", s.wait),
            s.ticks.map_or("n/a".into(), |t| cell(t, load)),
        ],
        None => std::array::from_fn(|_| "n/a".to_string()),
    }
}

fn cpu_table(label: &str, workers: Option<usize>, levels: &[f64], have_ng: bool) {
    let warmup = env_secs("BENCH_WARMUP_S", 3);
    let window = env_secs("BENCH_WINDOW_S", 10);
    let n = workers.unwrap_or_else(ncpu);
    println!();
    println!(
        "{label}: {n} worker(s), {} s warm-up, {} s window; % of one CPU per worker \
         (difference from the request, points)",
        warmup.as_secs(),
        window.as_secs()
    );
    println!();
    println!(
        "| requested | cpu.stress /proc/stat | schedstat | wait | own ticks \
         | stress-ng /proc/stat | schedstat | wait | own ticks \
         | /proc/stat error ours/stress-ng | others (CPUs) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    // Largest |error| per column: ours stat, sched, ticks; theirs stat, sched, ticks.
    let mut worst = [0f64; 6];
    let mut upd = |i: usize, v: Option<f64>, load: f64| {
        if let Some(v) = v {
            worst[i] = worst[i].max((v - load).abs());
        }
    };
    for &load in levels {
        let o = ours(load, workers, warmup, window);
        let g = if have_ng {
            stress_ng(load, n, warmup, window)
        } else {
            None
        };
        upd(0, Some(o.stat), load);
        upd(1, Some(o.sched), load);
        upd(2, o.ticks, load);
        upd(3, g.as_ref().map(|g| g.stat), load);
        upd(4, g.as_ref().map(|g| g.sched), load);
        upd(5, g.as_ref().and_then(|g| g.ticks), load);
        let ratio = match &g {
            Some(g) if (g.stat - load).abs() > 0.0 => {
                format!("{:.2}", (o.stat - load).abs() / (g.stat - load).abs())
            }
            _ => "n/a".into(),
        };
        let bg = match &g {
            Some(g) => format!("{:.2} / {:.2}", o.background, g.background),
            None => format!("{:.2}", o.background),
        };
        let [os, oc, ow, ot] = cells(Some(&o), load);
        let [gs, gc, gw, gt] = cells(g.as_ref(), load);
        println!(
            "| {load}% | {os} | {oc} | {ow} | {ot} | {gs} | {gc} | {gw} | {gt} | {ratio} | {bg} |"
        );
    }
    let w: Vec<String> = worst.iter().map(|v| format!("{v:.2}")).collect();
    println!(
        "| largest error | {} | {} | | {} | {} | {} | | {} | | |",
        w[0], w[1], w[2], w[3], w[4], w[5]
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

/// What `free` shows a holder of memory took, and what it holds by its own and its cgroup's
/// count, in bytes. MemAvailable is read right before the holder starts and once it has
/// touched all its memory (the step up), then right before it is stopped and once it is
/// gone (the step down); the table shows the median of the steps of a few runs.
/// MemAvailable lags a change: pages freed or allocated pass through the per-CPU page
/// lists, which MemFree does not count and which the kernel shrinks back every
/// `vm.stat_interval` (1 s) over a few seconds; each read after a change waits
/// four intervals plus a margin ([`settle`]).
struct MemSample {
    up: f64,
    down: f64,
    rss: f64,
    cgroup: Option<f64>,
}

/// Wait until MemAvailable reflects a change just made: four `vm.stat_interval`s plus 1 s.
fn settle() {
    let interval: f64 = std::fs::read_to_string("/proc/sys/vm/stat_interval")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(1.0);
    std::thread::sleep(Duration::from_secs_f64(
        4.0 * interval.clamp(0.0, 10.0) + 1.0,
    ));
}

/// Wait (up to 20 s) until the largest resident set among `pids()` reaches `bytes`; returns
/// it.
fn wait_resident(pids: impl Fn() -> Vec<i32>, bytes: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rss = pids()
            .into_iter()
            .filter_map(stressor::rss_bytes)
            .max()
            .unwrap_or(0) as f64;
        if rss >= bytes || Instant::now() > deadline {
            return rss;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
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
    let a0 = mem_available();
    f.inject(&cx, &mut r).unwrap();
    let pid = r.stressors.processes[0].pid;
    wait_resident(|| vec![pid], mib as f64 * MIB);
    settle();
    let a1 = mem_available();
    let rss = stressor::rss_bytes(pid).unwrap_or(0) as f64;
    let cgroup = r
        .stressors
        .cgroups
        .iter()
        .find_map(|c| c.memory_usage())
        .map(|b| b as f64);
    let a2 = mem_available();
    MemoryStress::revert(&r).unwrap();
    settle();
    let a3 = mem_available();
    MemSample {
        up: a0 - a1,
        down: a3 - a2,
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
        "30s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let a0 = mem_available();
    let c = spawn_stress_ng(&args)?;
    let parent = c.id() as i32;
    wait_resident(|| descendants(parent), mib as f64 * MIB);
    settle();
    let a1 = mem_available();
    let rss = descendants(parent)
        .into_iter()
        .filter_map(stressor::rss_bytes)
        .max()
        .unwrap_or(0) as f64;
    let a2 = mem_available();
    stop(c);
    settle();
    let a3 = mem_available();
    Some(MemSample {
        up: a0 - a1,
        down: a3 - a2,
        rss,
        cgroup: None,
    })
}

/// Median and range of `v` (not empty).
fn median_range(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let med = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (med, v[0], v[n - 1])
}

fn memory_table(have_ng: bool) {
    let repeats: usize = std::env::var("BENCH_MEM_REPEATS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    println!();
    println!(
        "Memory, MiB, {repeats} runs per tool and size: MemAvailable drop (what `free` shows \
         as taken: the median of the steps at start and at stop, their range in brackets), \
         resident set, the fault cgroup's charge (last run)"
    );
    println!();
    println!(
        "| requested | memory.stress MemAvailable drop | RSS | cgroup \
         | stress-ng --vm 1 --vm-keep MemAvailable drop | RSS |"
    );
    println!("|---|---|---|---|---|---|");
    let show = |v: &[MemSample]| {
        let steps: Vec<f64> = v.iter().flat_map(|m| [m.up, m.down]).collect();
        let (med, lo, hi) = median_range(steps);
        format!("{:.1} ({:.1} to {:.1})", med / MIB, lo / MIB, hi / MIB)
    };
    for mib in [256u64, 1024] {
        let mut o = Vec::new();
        let mut g = Vec::new();
        for _ in 0..repeats {
            o.push(memory_ours(mib));
            if have_ng {
                g.extend(memory_ng(mib));
            }
        }
        let (gd, gr) = match g.last() {
            Some(last) => (show(&g), format!("{:.1}", last.rss / MIB)),
            None => ("n/a".into(), "n/a".into()),
        };
        let last = o.last().expect("repeats >= 1");
        println!(
            "| {mib} | {} | {:.1} | {} | {gd} | {gr} |",
            show(&o),
            last.rss / MIB,
            last.cgroup
                .map_or("n/a".into(), |b| format!("{:.1}", b / MIB)),
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
    let idle = measure(&[], env_secs("BENCH_WARMUP_S", 3), ncpu(), None);
    println!(
        "Before the run: others use {:.2} CPUs; /proc/stat busy minus exact busy: {:+.3} CPUs",
        idle.background,
        idle.stat / 100.0
    );
    if std::env::var_os("BENCH_SKIP_CPU").is_none() {
        cpu_table("One worker", Some(1), &levels, have_ng);
        cpu_table("workers = \"all\"", None, &levels, have_ng);
    }
    if std::env::var_os("BENCH_SKIP_MEMORY").is_none() {
        memory_table(have_ng);
    }
}
