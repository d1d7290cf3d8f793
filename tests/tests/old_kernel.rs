//! Every fault on an old kernel: `chaos-agent` runs under a seccomp filter that answers
//! `ENOSYS` to every system call newer than Linux 4.4 (`chaos_tests::oldkernel`), as
//! Ubuntu 16.04's kernel would (so no pidfd, no `close_range`, no `statx`, no `clone3`,
//! no `rseq`, no `faccessat2`). Process, disk, CPU, memory and network faults still inject
//! and revert, a `kill -9` of the agent mid-run is still recovered (by `recover` under the
//! same filter), and the host is left clean. Root only (SKIPPED otherwise); x86_64 only.

mod common;

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chaos_tests::oldkernel::{restrict, seccomp_mode, Kernel};
use common::netns::Netns;
use common::{text, wait_for_event, wait_with_deadline, Sandbox};
use fault_core::testing::{TempDir, Victim};

const PROBE_ENV: &str = "CHAOS_OLDKERNEL_PROBE";

/// `None` (after printing why) when this target cannot simulate an old kernel.
fn supported(test: &str) -> Option<()> {
    match restrict(&mut Command::new("true"), Kernel::V4_4) {
        Ok(()) => Some(()),
        Err(e) => {
            eprintln!("SKIPPED {test}: {e}");
            None
        }
    }
}

/// The agent of `sb`, as on Linux 4.4.
fn old_agent(sb: &Sandbox) -> Command {
    let mut c = sb.cmd();
    restrict(&mut c, Kernel::V4_4).expect("checked by supported()");
    c
}

fn spawn_json(sb: &Sandbox, exp: &std::path::Path) -> Child {
    old_agent(sb)
        .args(["run", "--json"])
        .arg(exp)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn chaos-agent")
}

/// Wait until the `run --json` child reports `n` faults (of distinct kinds) holding.
fn wait_holding(lines: &mut impl Iterator<Item = std::io::Result<String>>, n: usize) {
    let mut holding = std::collections::HashSet::new();
    while holding.len() < n {
        let v = wait_for_event(lines, |v| v["event"] == "fault" && v["state"] == "holding");
        holding.insert(v["kind"].as_str().unwrap_or_default().to_string());
    }
}

/// The stressors (pid, start ticks) and the fault cgroups the journal recorded.
fn stressors(sb: &Sandbox) -> (Vec<(i32, u64)>, Vec<String>) {
    let (mut procs, mut cgroups) = (Vec::new(), Vec::new());
    for r in sb.records() {
        let s = &r["receipt"]["stressors"];
        for p in s["processes"].as_array().into_iter().flatten() {
            procs.push((
                p["pid"].as_i64().unwrap() as i32,
                p["start_ticks"].as_u64().unwrap(),
            ));
        }
        for c in s["cgroups"].as_array().into_iter().flatten() {
            cgroups.push(c["dir"].as_str().unwrap().to_string());
        }
    }
    (procs, cgroups)
}

fn alive(pid: i32, start: u64) -> bool {
    fault_core::host::process::Stat::read(pid)
        .is_some_and(|s| s.start_ticks == start && s.state != 'Z')
}

/// The descriptors a process holds.
fn fds(pid: i32) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Every stressor and fault cgroup is gone (waiting a little for SIGKILLed processes).
fn assert_stressors_gone(procs: &[(i32, u64)], cgroups: &[String], context: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while procs.iter().any(|&(p, s)| alive(p, s)) {
        assert!(
            Instant::now() < deadline,
            "{context}: stressors left: {procs:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for dir in cgroups {
        assert!(
            !std::path::Path::new(dir).exists(),
            "{context}: cgroup {dir} left behind"
        );
    }
}

/// One step with every local fault kind: stop and kill processes the test started, fill
/// the sandbox's tmpfs, a CPU and a memory stressor.
fn experiment(sb: &Sandbox, killed: Option<&Victim>, hold: &str) -> std::path::PathBuf {
    let kill = killed
        .map(|v| {
            format!(
                "  [[steps.faults]]\n  kind = \"process.kill\"\n  duration = \"{hold}\"\n  pid = {}\n",
                v.pid()
            )
        })
        .unwrap_or_default();
    sb.write(
        "old.toml",
        &format!(
            r#"
name = "old kernel"
[[steps]]
  [[steps.faults]]
  kind = "process.stop"
  duration = "{hold}"
  pid = {pid}
  [[steps.faults]]
  kind = "disk.fill"
  duration = "{hold}"
  path = "{fs}"
  size = "8MiB"
  [[steps.faults]]
  kind = "cpu.stress"
  duration = "{hold}"
  workers = 1
  load = 20
  [[steps.faults]]
  kind = "memory.stress"
  duration = "{hold}"
  size = "16MiB"
{kill}"#,
            pid = sb.victim.pid(),
            fs = sb.fs.path().display()
        ),
    )
}

/// Not a test on its own: run by [`the_filter_answers_enosys_to_newer_calls_only`] in a
/// child under the filter, it reports what the kernel answered.
#[test]
fn probe_under_filter() {
    if std::env::var_os(PROBE_ENV).is_none() {
        return;
    }
    let call = |nr: libc::c_long, a: libc::c_long, b: libc::c_long| {
        // SAFETY: each probe passes no pointers (or null ones the kernel checks).
        let r = unsafe { libc::syscall(nr, a, b, 0, 0, 0) };
        if r < 0 {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
        } else {
            0
        }
    };
    let me = std::process::id() as libc::c_long;
    // Close only an fd range that holds nothing (1000000..=1000001): no effect when allowed.
    let report = format!(
        "PROBE pidfd_open={} close_range={} statx={} clone3={} getpid={} mlock2={} seccomp={}",
        call(libc::SYS_pidfd_open, me, 0),
        call(libc::SYS_close_range, 1_000_000, 1_000_001),
        call(libc::SYS_statx, -1, 0),
        call(libc::SYS_clone3, 0, 0),
        call(libc::SYS_getpid, 0, 0),
        call(libc::SYS_mlock2, 0, 0),
        seccomp_mode(std::process::id()).unwrap_or(99),
    );
    println!("{report}");
}

/// The report of a [`probe_under_filter`] child (libtest prints it after the test's name).
fn probe_line(out: &str) -> &str {
    out.lines()
        .find_map(|l| l.find("PROBE ").map(|i| &l[i..]))
        .unwrap_or_else(|| panic!("no probe report in:\n{out}"))
}

/// The filter itself (needs no root): calls newer than 4.4 get ENOSYS, older ones reach
/// the kernel (mlock2 of nothing succeeds, getpid works), and the process is in seccomp
/// filter mode.
#[test]
fn the_filter_answers_enosys_to_newer_calls_only() {
    if supported("the_filter_answers_enosys_to_newer_calls_only").is_none() {
        return;
    }
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        "--exact",
        "probe_under_filter",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(PROBE_ENV, "1");
    restrict(&mut c, Kernel::V4_4).unwrap();
    let out = c.output().unwrap();
    let t = text(&out);
    let line = probe_line(&t);
    let enosys = libc::ENOSYS;
    assert_eq!(
        line,
        format!(
            "PROBE pidfd_open={enosys} close_range={enosys} statx={enosys} clone3={enosys} \
             getpid=0 mlock2=0 seccomp=2"
        )
    );
    // Without the filter the same calls reach this (newer) kernel.
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "probe_under_filter",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(PROBE_ENV, "1")
        .output()
        .unwrap();
    let t = text(&out);
    let line = probe_line(&t);
    assert!(
        line.starts_with("PROBE pidfd_open=0 close_range=0"),
        "{line}"
    );
}

/// A full run of every local fault kind as on Linux 4.4: each fault is in effect while it
/// holds (the stressors closed their inherited descriptors without close_range), and the
/// run reverts everything by itself (SIGCONT and the stressors' SIGKILL without pidfds).
#[test]
fn local_faults_run_and_revert_on_linux_4_4() {
    let test = "local_faults_run_and_revert_on_linux_4_4";
    let Some(sb) = supported(test).and_then(|_| Sandbox::new(test)) else {
        return;
    };
    let killed = Victim::sleeping(&format!("chaos-kill-{}", fault_core::host::random_hex(3)));
    let exp = experiment(&sb, Some(&killed), "1500ms");
    let mut child = spawn_json(&sb, &exp);
    let agent_pid = child.id();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    wait_holding(&mut lines, 5);

    assert_eq!(
        seccomp_mode(agent_pid),
        Some(2),
        "the agent runs under the filter"
    );
    assert_eq!(sb.victim.state(), Some('T'), "process.stop is in effect");
    assert_eq!(killed.state(), Some('Z'), "process.kill killed its target");
    assert_eq!(sb.fill_files().len(), 1, "disk.fill is in effect");
    let (procs, cgroups) = stressors(&sb);
    assert_eq!(procs.len(), 2, "1 cpu worker + 1 memory worker");
    for &(pid, start) in &procs {
        assert!(alive(pid, start));
        assert_eq!(seccomp_mode(pid as u32), Some(2));
        assert_eq!(
            fds(pid),
            ["0", "1", "2"],
            "stressor {pid} kept a descriptor"
        );
    }

    let ev = wait_for_event(&mut lines, |v| v["event"] == "run-finished");
    assert_eq!(ev["report"]["outcome"], "completed", "{ev}");
    assert!(wait_with_deadline(&mut child, Duration::from_secs(20)).success());
    assert_stressors_gone(&procs, &cgroups, "after the run");
    sb.assert_clean("after the run");
}

/// `kill -9` of the agent while every local fault holds, then `recover`, both as on Linux
/// 4.4: the stressors die with the agent, recover resumes the stopped process, deletes the
/// fill file, removes the stressors' cgroups, and a second recover finds nothing to do.
#[test]
fn sigkill_mid_run_then_recover_on_linux_4_4() {
    let test = "sigkill_mid_run_then_recover_on_linux_4_4";
    let Some(sb) = supported(test).and_then(|_| Sandbox::new(test)) else {
        return;
    };
    let exp = experiment(&sb, None, "5m");
    let mut child = spawn_json(&sb, &exp);
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    wait_holding(&mut lines, 4);
    let (procs, cgroups) = stressors(&sb);
    assert_eq!(procs.len(), 2);
    assert_eq!(seccomp_mode(child.id()), Some(2));

    child.kill().unwrap(); // SIGKILL: no revert runs
    child.wait().unwrap();
    assert_eq!(
        sb.victim.state(),
        Some('T'),
        "still stopped after the crash"
    );
    assert_eq!(sb.fill_files().len(), 1, "still filled after the crash");
    // Parent-death signal: the stressors go with the agent; their cgroups stay for recover.
    let deadline = Instant::now() + Duration::from_secs(5);
    while procs.iter().any(|&(p, s)| alive(p, s)) {
        assert!(
            Instant::now() < deadline,
            "stressors outlived the agent: {procs:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let out = old_agent(&sb).arg("recover").output().unwrap();
    assert!(out.status.success(), "recover: {}", text(&out));
    assert_stressors_gone(&procs, &cgroups, "after recover");
    sb.assert_clean("after recover");
    let out = old_agent(&sb).arg("recover").output().unwrap();
    assert!(
        out.status.success() && text(&out).contains("Nothing to recover"),
        "{}",
        text(&out)
    );
}

/// Network faults that need no netem (tbf/htb shaping, nftables drops) inside a namespace
/// the test created, as on Linux 4.4: a run reverts them, and a crash with them applied is
/// cleaned by `recover`.
#[test]
fn network_faults_run_crash_and_recover_on_linux_4_4() {
    if supported("network_faults_run_crash_and_recover_on_linux_4_4").is_none() {
        return;
    }
    let Some(ns) = Netns::new() else { return };
    let (state, dir) = (
        TempDir::new("chaos-old-net-state"),
        TempDir::new("chaos-old-net"),
    );
    let exp = |hold: &str| {
        let p = dir.path().join(format!("net-{hold}.toml"));
        std::fs::write(
            &p,
            format!(
                r#"
name = "net"
[[steps]]
  [[steps.faults]]
  kind = "network.rate"
  duration = "{hold}"
  interface = "cha0"
  rate = "1mbit"
  [[steps.faults]]
  kind = "network.blackhole"
  duration = "{hold}"
  interface = "cha0"
  destinations = ["10.201.0.0/24"]
  ports = [5201]
  [[steps.faults]]
  kind = "network.loss"
  duration = "{hold}"
  interface = "cha1"
  percent = 30
  mechanism = "nftables"
"#
            ),
        )
        .unwrap();
        p
    };
    let agent = |args: &[&str], crash_at: Option<&str>| {
        let mut c = ns.exec();
        c.arg(common::agent_bin())
            .arg("--state-dir")
            .arg(state.path())
            .args(args);
        c.env_remove("CHAOS_AGENT_CRASH_AT");
        if let Some(p) = crash_at {
            c.env("CHAOS_AGENT_CRASH_AT", p);
        }
        // `ip netns exec` runs under the filter too and execs the agent, which inherits it.
        restrict(&mut c, Kernel::V4_4).unwrap();
        c
    };
    let before = ns.state();

    let out = agent(&["run", exp("500ms").to_str().unwrap()], None)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("The host is clean"), "{}", text(&out));
    assert_eq!(ns.state(), before, "namespace changed after the run");

    let mut child = agent(
        &["run", exp("30s").to_str().unwrap()],
        Some("after-journal-applied"),
    )
    .stdout(Stdio::null())
    .spawn()
    .unwrap();
    let status = wait_with_deadline(&mut child, Duration::from_secs(30));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    let during = ns.state();
    assert!(
        during.contains("htb") || during.contains("tbf") || during.contains("chaos_"),
        "no network fault in effect at the crash:\n{during}"
    );
    let out = agent(&["recover"], None).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(ns.state(), before, "recover left something behind");
}

/// `chaos-agent doctor` on "Linux 4.4": without pidfds the process kinds are degraded, and
/// the reason says what that weakens; the daemon would still offer them (degraded is
/// offered). Needs no root: doctor changes nothing.
#[test]
fn doctor_reports_the_degraded_guarantees_on_linux_4_4() {
    let test = "doctor_reports_the_degraded_guarantees_on_linux_4_4";
    if supported(test).is_none() {
        return;
    }
    let state = TempDir::new("chaos-oldkernel-doctor");
    let mut c = Command::new(common::agent_bin());
    restrict(&mut c, Kernel::V4_4).expect("checked by supported()");
    let out = c
        .args(["doctor", "--json", "--state-dir"])
        .arg(state.path().join("state"))
        .env_remove("CHAOS_AGENT_STATE_DIR")
        .output()
        .expect("run chaos-agent doctor");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor --json is not JSON ({e}): {}", text(&out)));
    assert_eq!(out.status.code(), Some(0), "{v:#}");
    assert_eq!(v["host"]["pidfd_open"], false, "{v:#}");
    for name in ["process.stop", "process.kill"] {
        let k = v["kinds"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kind"] == name)
            .unwrap_or_else(|| panic!("no {name} in {v:#}"));
        assert_eq!(k["level"], "degraded", "{k}");
        let reasons = k["reasons"].to_string();
        assert!(reasons.contains("pidfd"), "{k}");
        assert!(reasons.contains("start time"), "{k}");
    }
}
