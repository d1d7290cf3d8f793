//! Benchmark (issue 3): inject + revert of `network.rate` and `network.blackhole` through this
//! crate (netlink messages written in Rust) versus building the same thing with the `tc` and
//! `nft` command-line tools, which is what other chaos tools do.
//!
//! Everything happens in a throwaway network namespace holding a veth pair (random names,
//! deleted on exit and on panic). The main thread `setns`'s into it for the measurement, so
//! it is the process's own namespace, as for an agent started inside it (`ip netns exec`):
//! the library keeps its netfilter socket for the process's own namespace only (sockets
//! of namespaces a thread merely entered are not kept, so they cannot pin them). Both the
//! library's netlink sockets and the children it spawns (fork happens from the calling
//! thread, and a forked child keeps that thread's namespaces; checked below) act there.
//!
//! Per iteration, interleaved so that background load hits all four alike:
//! - rate, library: `plan` + `inject` + `revert` of one `RateLimit` built once (`new`);
//! - rate, CLI: `tc qdisc add ... htb r2q MARK`, `tc class add ... htb`, `tc qdisc add ... tbf`
//!   with the same handles, mark and parameters as the library's tree, then
//!   `tc qdisc del dev X root`;
//! - blackhole, library: `plan` + `inject` + `revert` of one `Blackhole`;
//! - blackhole, CLI: `nft -f -` with the same table, chains and rules, then
//!   `nft delete table inet X`.
//!
//! Run as root: `cargo bench -p fault-network --bench netlink_vs_cli` (or
//! `scripts/bench-network.sh`). `BENCH_ITERS` (default 200) and `BENCH_WARMUP` (default 20)
//! override the counts. Without root or without `ip`/`tc`/`nft` it prints why and skips.

#[path = "../tests/common/netns.rs"]
mod netns;

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fault_core::{Context, Effect, Fault};
use fault_network::{Blackhole, BlackholeSpec, RateLimit, RateSpec};
use netns::run;

/// Rate under test and the tbf parameters `RateLimit::new` derives for it (burst = max(rate x
/// 10ms, 16 KiB), limit = burst + rate x 400ms), written out for `tc`.
const RATE: &str = "8mbit";
const TBF_BURST: u32 = 16 * 1024;
const TBF_LIMIT: u32 = 16 * 1024 + 1_000_000 * 4 / 10;

/// One throwaway namespace with a veth pair in it; deleted on drop (also during unwinding).
struct Sandbox {
    ns: String,
    dev: String,
    peer: String,
}

impl Sandbox {
    fn new() -> Sandbox {
        let id = fault_core::host::random_hex(3);
        let s = Sandbox {
            ns: format!("chaos-bench-{id}"),
            dev: format!("vbn{id}a"),
            peer: format!("vbn{id}b"),
        };
        run(&["ip", "netns", "add", &s.ns]);
        // From here on, Drop removes the namespace (and the veth pair with it).
        run(&[
            "ip", "-n", &s.ns, "link", "add", &s.dev, "type", "veth", "peer", "name", &s.peer,
        ]);
        for d in [&s.dev, &s.peer, "lo"] {
            run(&["ip", "-n", &s.ns, "link", "set", d, "up"]);
        }
        run(&[
            "ip",
            "-n",
            &s.ns,
            "addr",
            "add",
            "10.78.0.1/24",
            "dev",
            &s.dev,
        ]);
        run(&[
            "ip",
            "-n",
            &s.ns,
            "addr",
            "add",
            "10.78.0.2/24",
            "dev",
            &s.peer,
        ]);
        s
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// Timings of one kind of cycle: setup part (plan+inject / add commands), teardown part
/// (revert / delete command), whole cycle.
#[derive(Default)]
struct Samples {
    inject: Vec<Duration>,
    revert: Vec<Duration>,
    total: Vec<Duration>,
}

impl Samples {
    fn push(&mut self, t0: Instant, t1: Instant, t2: Instant) {
        self.inject.push(t1 - t0);
        self.revert.push(t2 - t1);
        self.total.push(t2 - t0);
    }
}

struct Stats {
    mean: f64,
    p50: f64,
    p99: f64,
}

/// Mean and nearest-rank percentiles, in microseconds.
fn stats(v: &[Duration]) -> Stats {
    let mut us: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1e6).collect();
    us.sort_by(f64::total_cmp);
    let rank = |p: f64| us[((p * us.len() as f64).ceil() as usize).clamp(1, us.len()) - 1];
    Stats {
        mean: us.iter().sum::<f64>() / us.len() as f64,
        p50: rank(0.50),
        p99: rank(0.99),
    }
}

/// Run a tool and fail the benchmark with its stderr if it fails (as a chaos tool would check).
fn cli(argv: &[&str]) {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", argv[0]));
    assert!(
        out.status.success(),
        "{argv:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `nft -f -` with `script` on stdin.
fn nft_file(script: &str) {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nft");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("write nft script");
    let out = child.wait_with_output().expect("wait nft");
    assert!(
        out.status.success(),
        "nft -f - failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `tc` handle notation of a `major:0` handle.
fn major(h: u32) -> String {
    format!("{:x}:", h >> 16)
}

fn tool_present(cmd: &str, arg: &str) -> bool {
    Command::new(cmd)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Results {
    rate_lib: Samples,
    rate_cli: Samples,
    bh_lib: Samples,
    bh_cli: Samples,
}

/// Everything that runs inside the namespace (on a thread that entered it).
fn measure(ns: &str, dev: &str, iters: usize, warmup: usize) -> Results {
    // A child forked from this thread must be in this thread's namespace, not the process's.
    let mine = std::fs::read_link("/proc/thread-self/ns/net").expect("read own netns");
    let ns_ino = std::fs::metadata(format!("/run/netns/{ns}"))
        .expect("stat netns")
        .ino();
    assert_eq!(mine.to_string_lossy(), format!("net:[{ns_ino}]"));
    let child = run(&["readlink", "/proc/self/ns/net"]);
    assert_eq!(
        child.trim(),
        mine.to_string_lossy(),
        "a child spawned from the setns'd thread is not in the benchmark namespace"
    );
    let process = std::fs::read_link("/proc/self/ns/net").expect("read process netns");
    assert_eq!(
        process, mine,
        "the process's own namespace (its main thread's) is not the benchmark namespace"
    );

    let rate: RateLimit = RateLimit::new(
        serde_json::from_value::<RateSpec>(serde_json::json!({"rate": RATE, "interface": dev}))
            .expect("rate spec"),
    )
    .expect("rate fault");
    let bh = Blackhole::new(
        serde_json::from_value::<BlackholeSpec>(serde_json::json!({"interface": dev}))
            .expect("blackhole spec"),
    )
    .expect("blackhole fault");
    let cx_rate = Context::new("bench-rate", "bench");
    let cx_bh = Context::new("bench-blackhole", "bench");

    // The handles the library derives from the fault id, reused for the CLI tree.
    let r = rate.plan(&cx_rate).expect("plan rate");
    let (root, leaf) = (r.interfaces[0].root, r.interfaces[0].leaf);
    let (root_s, leaf_s) = (major(root), major(leaf));
    let class_s = format!("{root_s}10");
    let mark_s = fault_network::shape::mark(&cx_rate.fault_id).to_string();
    let (burst_s, limit_s) = (TBF_BURST.to_string(), TBF_LIMIT.to_string());
    let cli_table = "chaos_clibench";
    let nft_script = format!(
        "table inet {cli_table} {{\n\
         \tchain egress {{\n\t\ttype filter hook postrouting priority 0; policy accept;\n\
         \t\toifname \"{dev}\" counter drop\n\t}}\n\
         \tchain ingress {{\n\t\ttype filter hook prerouting priority 0; policy accept;\n\
         \t\tiifname \"{dev}\" counter drop\n\t}}\n}}\n"
    );

    let mut res = Results {
        rate_lib: Samples::default(),
        rate_cli: Samples::default(),
        bh_lib: Samples::default(),
        bh_cli: Samples::default(),
    };
    for i in 0..warmup + iters {
        let keep = i >= warmup;
        // Correctness checks run once, in the first (discarded) warm-up iteration.
        let check = i == 0;

        // (a) library, network.rate
        let t0 = Instant::now();
        let mut r = rate.plan(&cx_rate).expect("plan rate");
        rate.inject(&cx_rate, &mut r).expect("inject rate");
        let t1 = Instant::now();
        if check {
            let v = RateLimit::verify(&r).expect("verify rate");
            assert_eq!(v.effect, Effect::InEffect, "{}", v.detail);
        }
        RateLimit::revert(&r).expect("revert rate");
        let t2 = Instant::now();
        if check {
            let v = RateLimit::verify(&r).expect("verify rate");
            assert_eq!(v.effect, Effect::Clean, "{}", v.detail);
        }
        if keep {
            res.rate_lib.push(t0, t1, t2);
        }

        // (b) tc, same tree
        let t0 = Instant::now();
        cli(&[
            "tc", "qdisc", "add", "dev", dev, "root", "handle", &root_s, "htb", "r2q", &mark_s,
            "default", "10",
        ]);
        cli(&[
            "tc", "class", "add", "dev", dev, "parent", &root_s, "classid", &class_s, "htb",
            "rate", "32gbit", "burst", "64k", "quantum", "60000",
        ]);
        cli(&[
            "tc", "qdisc", "add", "dev", dev, "parent", &class_s, "handle", &leaf_s, "tbf", "rate",
            RATE, "burst", &burst_s, "limit", &limit_s,
        ]);
        let t1 = Instant::now();
        if check {
            // Our verify recognizes the tc-built tree as the same tree.
            let v = RateLimit::verify(&r).expect("verify tc tree");
            assert_eq!(v.effect, Effect::InEffect, "tc tree differs: {}", v.detail);
        }
        cli(&["tc", "qdisc", "del", "dev", dev, "root"]);
        let t2 = Instant::now();
        if keep {
            res.rate_cli.push(t0, t1, t2);
        }

        // (c) library, network.blackhole
        let t0 = Instant::now();
        let mut b = bh.plan(&cx_bh).expect("plan blackhole");
        bh.inject(&cx_bh, &mut b).expect("inject blackhole");
        let t1 = Instant::now();
        if check {
            let v = Blackhole::verify(&b).expect("verify blackhole");
            assert_eq!(v.effect, Effect::InEffect, "{}", v.detail);
            let listed = run(&["nft", "list", "table", "inet", &b.table]);
            assert!(
                listed.contains("oifname") && listed.contains("iifname"),
                "{listed}"
            );
        }
        Blackhole::revert(&b).expect("revert blackhole");
        let t2 = Instant::now();
        if check {
            let v = Blackhole::verify(&b).expect("verify blackhole");
            assert_eq!(v.effect, Effect::Clean, "{}", v.detail);
        }
        if keep {
            res.bh_lib.push(t0, t1, t2);
        }

        // (d) nft, same table
        let t0 = Instant::now();
        nft_file(&nft_script);
        let t1 = Instant::now();
        if check {
            let listed = run(&["nft", "list", "table", "inet", cli_table]);
            assert!(
                listed.contains("counter") && listed.contains("drop"),
                "{listed}"
            );
        }
        cli(&["nft", "delete", "table", "inet", cli_table]);
        let t2 = Instant::now();
        if keep {
            res.bh_cli.push(t0, t1, t2);
        }
    }

    // Nothing left behind by any of the 4 x (warm-up + iterations) cycles.
    let qdiscs = run(&["tc", "qdisc", "show", "dev", dev]);
    assert!(
        !qdiscs.contains("htb") && !qdiscs.contains("tbf"),
        "leftover qdiscs on {dev}: {qdiscs}"
    );
    let tables = run(&["nft", "list", "tables"]);
    assert!(
        !tables.contains("chaos_"),
        "leftover nft tables in the namespace: {tables}"
    );
    assert_eq!(RateLimit::verify(&r).expect("verify").effect, Effect::Clean);
    res
}

fn main() {
    // `cargo test --all-targets` runs bench binaries without `--bench`: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("netlink_vs_cli: not run by `cargo bench`; skipping");
        return;
    }
    if !fault_core::host::is_root() {
        println!("SKIPPED netlink_vs_cli: needs root (network namespaces, CAP_NET_ADMIN)");
        return;
    }
    let missing: Vec<&str> = [("ip", "-V"), ("tc", "-V"), ("nft", "--version")]
        .into_iter()
        .filter(|(c, a)| !tool_present(c, a))
        .map(|(c, _)| c)
        .collect();
    if !missing.is_empty() {
        println!(
            "SKIPPED netlink_vs_cli: missing {} (apt-get install iproute2 nftables)",
            missing.join(", ")
        );
        return;
    }
    let iters = env_usize("BENCH_ITERS", 200).max(1);
    let warmup = env_usize("BENCH_WARMUP", 20).max(1);

    let sb = Sandbox::new();
    println!(
        "netlink_vs_cli: namespace {} veth {}/{}; {warmup} warm-up + {iters} measured \
         iterations, interleaved",
        sb.ns, sb.dev, sb.peer
    );
    let started = Instant::now();
    let home = std::fs::File::open("/proc/thread-self/ns/net").expect("open own netns");
    let sandbox = std::fs::File::open(format!("/run/netns/{}", sb.ns)).expect("open netns");
    let setns = |f: &std::fs::File| {
        use std::os::fd::AsRawFd;
        // SAFETY: setns(2) of the main thread on an fd we hold open.
        let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
    };
    setns(&sandbox);
    let res = measure(&sb.ns, &sb.dev, iters, warmup);
    setns(&home);
    let wall = started.elapsed();
    drop(sb);

    println!(
        "kernel {}, {} CPUs, {}, {}",
        run(&["uname", "-r"]).trim(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        run(&["tc", "-V"]).trim(),
        run(&["nft", "--version"]).trim()
    );
    println!("wall time {:.1}s\n", wall.as_secs_f64());
    println!("per inject+revert cycle, microseconds:\n");
    println!(
        "| fault | method | mean | p50 | p99 | inject part: mean / p50 | revert part: mean / p50 |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    let row = |fault: &str, method: &str, s: &Samples| {
        let (t, i, r) = (stats(&s.total), stats(&s.inject), stats(&s.revert));
        println!(
            "| {fault} | {method} | {:.0} | {:.0} | {:.0} | {:.0} / {:.0} | {:.0} / {:.0} |",
            t.mean, t.p50, t.p99, i.mean, i.p50, r.mean, r.p50
        );
    };
    row(
        "network.rate",
        "library (netlink): plan+inject+revert",
        &res.rate_lib,
    );
    row("network.rate", "tc CLI: 3 x add + 1 x del", &res.rate_cli);
    row(
        "network.blackhole",
        "library (netlink): plan+inject+revert",
        &res.bh_lib,
    );
    row(
        "network.blackhole",
        "nft CLI: `nft -f -` + `nft delete table`",
        &res.bh_cli,
    );
    println!("\nratio CLI / library (higher = library faster; goal >= 10x):\n");
    println!("| fault | mean | p50 | p99 | goal met |");
    println!("|---|---:|---:|---:|---|");
    let ratio = |fault: &str, lib: &Samples, cli: &Samples| {
        let (l, c) = (stats(&lib.total), stats(&cli.total));
        let (m, p50, p99) = (c.mean / l.mean, c.p50 / l.p50, c.p99 / l.p99);
        println!(
            "| {fault} | {m:.1}x | {p50:.1}x | {p99:.1}x | {} |",
            if m >= 10.0 && p50 >= 10.0 {
                "yes"
            } else {
                "no"
            }
        );
    };
    ratio("network.rate", &res.rate_lib, &res.rate_cli);
    ratio("network.blackhole", &res.bh_lib, &res.bh_cli);
}
