//! Real-kernel tests of `process.stop` and `process.kill` against child processes each test
//! starts itself (named with a random suffix, so no other process on the machine matches).
#![cfg(feature = "privileged-tests")]

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::Command;
use std::time::{Duration, Instant};

use fault_core::host::random_hex;
use fault_core::testing::Victim;
use fault_core::{require_root, Context, Effect, ErrorKind, Fault, Registry};
use fault_process::{
    ProcessKill, ProcessKillSpec, ProcessStop, ProcessStopReceipt, ProcessStopSpec, SignalSpec,
};

fn cx() -> Context {
    Context::new(format!("test-{}", random_hex(4)), "test-run")
}

fn unique_name() -> String {
    format!("chaos-t-{}", random_hex(4))
}

/// `sleep 600` with `argv[0]` = `name`, once the kernel shows its new command line.
///
/// `spawn` returns as soon as the child has begun `execve` (the vfork is released when the
/// new memory map is installed), a moment before the kernel has copied the arguments in: a
/// name or cmdline lookup in that moment sees an empty command line. Wait for the real
/// condition, the command line in /proc, before a test looks the victim up.
fn victim(name: &str) -> Victim {
    let v = Victim::sleeping(name);
    let want = [name.to_string(), "600".to_string()];
    let deadline = Instant::now() + Duration::from_secs(10);
    while fault_core::host::process::cmdline(v.pid()) != want {
        assert!(
            Instant::now() < deadline,
            "victim {} never showed its command line",
            v.pid()
        );
        std::thread::yield_now();
    }
    v
}

fn stop(spec: ProcessStopSpec) -> ProcessStop {
    ProcessStop::new(spec).expect("valid spec")
}

fn stop_pid(pid: i32) -> ProcessStop {
    stop(ProcessStopSpec {
        pid: Some(pid),
        ..Default::default()
    })
}

/// Wait (up to 2s) until the victim's state satisfies `ok`; returns the last state.
fn wait_state(v: &Victim, ok: impl Fn(char) -> bool) -> Option<char> {
    for _ in 0..200 {
        match v.state() {
            Some(s) if ok(s) => return Some(s),
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    v.state()
}

fn is_stopped(v: &Victim) -> bool {
    v.state() == Some('T')
}

/// Reap the victim and return the signal that ended it.
fn killed_by(v: &mut Victim) -> Option<i32> {
    v.0.wait().expect("wait").signal()
}

/// A pid that no process can have: above the kernel's pid_max.
fn free_pid() -> i32 {
    let max: i32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    max + 1
}

#[test]
fn stop_by_pid_then_revert_resumes_it() {
    require_root!();
    let v = victim(&unique_name());
    let f = stop_pid(v.pid());
    let cx = cx();
    let mut r = f.plan(&cx).unwrap();
    assert!(!is_stopped(&v), "plan changes nothing");
    assert_eq!(
        ProcessStop::verify(&r).unwrap().effect,
        Effect::Clean,
        "before inject"
    );

    f.inject(&cx, &mut r).unwrap();
    assert_eq!(v.state(), Some('T'));
    let seen = ProcessStop::verify(&r).unwrap();
    assert_eq!(seen.effect, Effect::InEffect, "{}", seen.detail);
    assert!(
        seen.detail.contains(&v.pid().to_string()),
        "{}",
        seen.detail
    );

    // Inject twice = once.
    let before = r.clone();
    f.inject(&cx, &mut r).unwrap();
    assert_eq!(r, before);
    assert_eq!(v.state(), Some('T'));

    ProcessStop::revert(&r).unwrap();
    assert_ne!(wait_state(&v, |s| s != 'T'), Some('T'));
    assert_eq!(ProcessStop::verify(&r).unwrap().effect, Effect::Clean);
    // Revert twice = Ok, and changes nothing.
    ProcessStop::revert(&r).unwrap();
    assert_ne!(v.state(), Some('T'));
}

#[test]
fn revert_works_from_a_receipt_read_back_from_json() {
    require_root!();
    let v = victim(&unique_name());
    let mut reg = Registry::new();
    fault_process::register(&mut reg);
    let cx = cx();
    let fault = reg
        .build("process.stop", &serde_json::json!({ "pid": v.pid() }))
        .unwrap();
    let mut receipt = fault.plan(&cx).unwrap();
    fault.inject(&cx, &mut receipt).unwrap();
    assert!(is_stopped(&v));

    // What the journal stores, read back as a fresh process would.
    let text = serde_json::to_string(&receipt).unwrap();
    let stored: serde_json::Value = serde_json::from_str(&text).unwrap();
    let typed: ProcessStopReceipt = serde_json::from_str(&text).unwrap();
    assert_eq!(typed.targets[0].id.pid, v.pid());
    assert_eq!(
        reg.targets("process.stop", &stored).unwrap(),
        [format!(
            "pid:{}:{}",
            v.pid(),
            typed.targets[0].id.start_ticks
        )]
    );
    assert_eq!(
        reg.verify("process.stop", &stored).unwrap().effect,
        Effect::InEffect
    );
    let undo = reg.manual_undo("process.stop", &stored).unwrap();
    assert!(
        undo[0].starts_with(&format!("kill -CONT {} ", v.pid())),
        "{undo:?}"
    );

    reg.revert("process.stop", &stored).unwrap();
    assert_ne!(wait_state(&v, |s| s != 'T'), Some('T'));
    reg.revert("process.stop", &stored).unwrap();
    assert_eq!(
        reg.verify("process.stop", &stored).unwrap().effect,
        Effect::Clean
    );
}

#[test]
fn stop_by_name_stops_every_instance() {
    require_root!();
    let name = unique_name();
    let (a, b) = (victim(&name), victim(&name));
    let other = victim(&unique_name());
    let f = stop(ProcessStopSpec {
        name: Some(name.clone()),
        ..Default::default()
    });
    let cx = cx();
    let mut r = f.plan(&cx).unwrap();
    let mut pids: Vec<i32> = r.targets.iter().map(|t| t.id.pid).collect();
    pids.sort();
    let mut want = vec![a.pid(), b.pid()];
    want.sort();
    assert_eq!(pids, want, "exactly our two victims match {name}");

    f.inject(&cx, &mut r).unwrap();
    assert!(is_stopped(&a) && is_stopped(&b));
    assert!(
        !is_stopped(&other),
        "a differently named process is untouched"
    );

    // One resumed behind our back: partial, and the detail names it.
    // SAFETY: kill has no memory preconditions; `b` is our own child.
    unsafe { libc::kill(b.pid(), libc::SIGCONT) };
    wait_state(&b, |s| s != 'T');
    let seen = ProcessStop::verify(&r).unwrap();
    assert_eq!(seen.effect, Effect::Partial, "{}", seen.detail);
    assert!(
        seen.detail.contains(&b.pid().to_string()),
        "{}",
        seen.detail
    );

    ProcessStop::revert(&r).unwrap();
    assert!(!is_stopped(&a) && !is_stopped(&b));
}

#[test]
fn stop_by_cmdline_matches_a_substring() {
    require_root!();
    let name = unique_name();
    let v = victim(&name);
    let f = stop(ProcessStopSpec {
        cmdline: Some(format!("{name} 600")),
        ..Default::default()
    });
    let cx = cx();
    let mut r = f.plan(&cx).unwrap();
    assert_eq!(r.targets.len(), 1);
    assert_eq!(r.targets[0].id.pid, v.pid());
    f.inject(&cx, &mut r).unwrap();
    assert!(is_stopped(&v));
    ProcessStop::revert(&r).unwrap();
    assert!(!is_stopped(&v));
}

#[test]
fn an_already_stopped_target_is_refused() {
    require_root!();
    let v = victim(&unique_name());
    // SAFETY: kill has no memory preconditions; `v` is our own child.
    unsafe { libc::kill(v.pid(), libc::SIGSTOP) };
    assert_eq!(wait_state(&v, |s| s == 'T'), Some('T'));
    let e = stop_pid(v.pid()).plan(&cx()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy);
    assert!(e.to_string().contains("already stopped"), "{e}");
    assert_eq!(v.state(), Some('T'), "left as someone else stopped it");
}

#[test]
fn missing_targets_are_not_found() {
    require_root!();
    let pid = free_pid();
    let e = stop_pid(pid).plan(&cx()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert_eq!(e.to_string(), format!("no process with pid {pid}"));

    let name = unique_name();
    let e = stop(ProcessStopSpec {
        name: Some(name.clone()),
        ..Default::default()
    })
    .plan(&cx())
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.to_string().contains(&format!("\"{name}\"")), "{e}");

    let e = ProcessKill::new(ProcessKillSpec {
        cmdline: Some(name),
        ..Default::default()
    })
    .unwrap()
    .plan(&cx())
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
}

#[test]
fn a_receipt_with_another_start_time_never_signals_the_live_process() {
    require_root!();
    let v = victim(&unique_name());
    let f = stop_pid(v.pid());
    let cx = cx();
    let real = f.plan(&cx).unwrap();
    let mut reused = real.clone();
    reused.targets[0].id.start_ticks += 1; // as if the pid now belonged to a newcomer

    f.inject(&cx, &mut reused).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        !is_stopped(&v),
        "inject must not stop a process it did not record"
    );
    assert_eq!(ProcessStop::verify(&reused).unwrap().effect, Effect::Clean);

    let mut real = real;
    f.inject(&cx, &mut real).unwrap();
    assert!(is_stopped(&v));
    ProcessStop::revert(&reused).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        is_stopped(&v),
        "revert must not resume a process it did not record"
    );
    ProcessStop::revert(&real).unwrap();
    assert!(!is_stopped(&v));
}

#[test]
fn a_receipt_from_another_boot_counts_as_gone() {
    require_root!();
    let v = victim(&unique_name());
    let f = stop_pid(v.pid());
    let cx = cx();
    let mut real = f.plan(&cx).unwrap();
    f.inject(&cx, &mut real).unwrap();
    let mut old_boot = real.clone();
    old_boot.targets[0].id.boot_id = "00000000-0000-0000-0000-000000000000".into();

    let seen = ProcessStop::verify(&old_boot).unwrap();
    assert_eq!(seen.effect, Effect::Clean, "{}", seen.detail);
    ProcessStop::revert(&old_boot).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert!(is_stopped(&v), "a record from another boot resumes nothing");
    ProcessStop::revert(&real).unwrap();
    assert!(!is_stopped(&v));
}

#[test]
fn kill_with_sigkill_kills_the_victim() {
    require_root!();
    let mut v = victim(&unique_name());
    let f = ProcessKill::new(ProcessKillSpec {
        pid: Some(v.pid()),
        ..Default::default()
    })
    .unwrap();
    let cx = cx();
    let mut r = f.plan(&cx).unwrap();
    assert!(v.state().is_some_and(|s| s != 'Z'), "plan changes nothing");
    f.inject(&cx, &mut r).unwrap();
    let seen = ProcessKill::verify(&r).unwrap();
    assert_eq!(seen.effect, Effect::InEffect, "{}", seen.detail);
    assert_eq!(killed_by(&mut v), Some(libc::SIGKILL));
    assert_eq!(r.signalled.len(), 1);
    assert_eq!(r.deliveries, 1);
    f.inject(&cx, &mut r).unwrap();
    assert_eq!(r.deliveries, 1, "inject twice = once");
    ProcessKill::revert(&r).unwrap();
    assert!(ProcessKill::manual_undo(&r)[0].contains("nothing can be undone"));
    assert!(!<ProcessKill as Fault>::info().reversible);
}

#[test]
fn kill_with_sigterm_reports_delivery_even_when_ignored() {
    require_root!();
    let name = unique_name();
    // A process that ignores SIGTERM (the disposition survives exec).
    let child = Command::new("sh")
        .arg0(&name)
        .args(["-c", "trap '' TERM; exec sleep 600"])
        .spawn()
        .unwrap();
    let v = Victim(child);
    // Wait until the exec has happened (comm becomes "sleep").
    for _ in 0..200 {
        let comm = fault_core::host::process::Stat::read(v.pid()).map(|s| s.comm);
        if comm.as_deref() == Some("sleep") {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let f = ProcessKill::new(ProcessKillSpec {
        pid: Some(v.pid()),
        signal: Some(SignalSpec::Name("term".into())),
        ..Default::default()
    })
    .unwrap();
    assert!(f.describe().contains("SIGTERM"), "{}", f.describe());
    let cx = cx();
    let mut r = f.plan(&cx).unwrap();
    f.inject(&cx, &mut r).unwrap();
    let seen = ProcessKill::verify(&r).unwrap();
    assert_eq!(seen.effect, Effect::InEffect, "{}", seen.detail);
    assert!(
        seen.detail.contains("SIGTERM delivered to 1"),
        "{}",
        seen.detail
    );
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        v.state().is_some_and(|s| s != 'Z'),
        "it ignored SIGTERM and lives on"
    );
}

#[test]
fn kill_with_interval_hits_a_restarted_instance_again() {
    require_root!();
    let name = unique_name();
    let mut first = victim(&name);
    let f = ProcessKill::new(ProcessKillSpec {
        name: Some(name.clone()),
        interval: Some(fault_core::Duration::from_millis(100)),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(f.maintain_interval(), Some(Duration::from_millis(100)));
    let cx = cx();
    let mut r = f.plan(&cx).unwrap();
    f.inject(&cx, &mut r).unwrap();
    assert_eq!(killed_by(&mut first), Some(libc::SIGKILL));

    // Nothing matches now: maintain is a no-op, not an error.
    assert_eq!(
        f.maintain(&cx, &mut r).unwrap(),
        Some(Duration::from_millis(100))
    );
    assert_eq!(r.deliveries, 1);

    // A "supervisor" restarts it under the same name; the next round kills it too.
    let mut second = victim(&name);
    f.maintain(&cx, &mut r).unwrap();
    let seen = ProcessKill::verify(&r).unwrap();
    assert_eq!(seen.effect, Effect::InEffect, "{}", seen.detail);
    assert_eq!(killed_by(&mut second), Some(libc::SIGKILL));
    let pids: Vec<i32> = r.signalled.iter().map(|t| t.id.pid).collect();
    assert_eq!(pids, [first.pid(), second.pid()]);
    assert_eq!(r.deliveries, 2);
}

#[test]
fn kill_with_interval_by_pid_never_hits_another_process() {
    require_root!();
    let name = unique_name();
    let mut first = victim(&name);
    let f = ProcessKill::new(ProcessKillSpec {
        pid: Some(first.pid()),
        interval: Some(fault_core::Duration::from_millis(100)),
        ..Default::default()
    })
    .unwrap();
    let cx = cx();
    let mut r = f.plan(&cx).unwrap();
    f.inject(&cx, &mut r).unwrap();
    assert_eq!(killed_by(&mut first), Some(libc::SIGKILL));
    let second = victim(&name);
    f.maintain(&cx, &mut r).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        second.state().is_some_and(|s| s != 'Z'),
        "the newcomer lives"
    );
    assert_eq!(r.deliveries, 1);
}

/// Whether a victim still runs (alive and not stopped): nothing was signalled.
fn untouched(v: &Victim) -> bool {
    v.state().is_some_and(|s| !matches!(s, 'T' | 'Z' | 'X'))
}

#[test]
fn a_match_wider_than_max_targets_is_refused_until_the_spec_accepts_it() {
    require_root!();
    let marker = unique_name();
    let mut victims: Vec<Victim> = (0..8).map(|_| victim(&marker)).collect();
    let mut pids: Vec<i32> = victims.iter().map(Victim::pid).collect();
    pids.sort();
    let cx = cx();
    let kill = |max_targets| {
        ProcessKill::new(ProcessKillSpec {
            cmdline: Some(format!("{marker} 600")),
            max_targets,
            ..Default::default()
        })
        .unwrap()
    };
    let stop_by_name = |max_targets| {
        stop(ProcessStopSpec {
            name: Some(marker.clone()),
            max_targets,
            ..Default::default()
        })
    };

    // The default (5): refused, with the count and the first five, lowest pids first.
    let e = kill(None).plan(&cx).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidSpec);
    let msg = e.to_string();
    assert!(
        msg.contains(&format!(
            "cmdline \"{marker} 600\" matches 8 processes, more than the 5"
        )),
        "{msg}"
    );
    let first: Vec<String> = pids[..5]
        .iter()
        .map(|p| format!("pid {p} (sleep)"))
        .collect();
    assert!(
        msg.contains(&format!("{}, and 3 more", first.join(", "))),
        "{msg}"
    );
    assert!(msg.contains("set max_targets = 8"), "{msg}");
    let e = stop_by_name(None).plan(&cx).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidSpec);
    assert!(e.to_string().contains("matches 8 processes"), "{e}");
    // A limit below the count: refused too.
    let e = kill(Some(7)).plan(&cx).unwrap_err();
    assert!(e.to_string().contains("more than max_targets = 7"), "{e}");
    assert!(
        victims.iter().all(untouched),
        "a refused plan signals nothing"
    );

    // max_targets = 8 accepts them: stop all, show them, check the receipt, resume all.
    let f = stop_by_name(Some(8));
    let mut r = f.plan(&cx).unwrap();
    let mut planned: Vec<i32> = r.targets.iter().map(|t| t.id.pid).collect();
    planned.sort();
    assert_eq!(planned, pids);
    assert_eq!(r.max_targets, Some(8));
    ProcessStop::check_receipt(&cx.fault_id, &r).unwrap();
    let touches = ProcessStop::touches(&r);
    assert_eq!(touches.len(), 8);
    for (t, line) in r.targets.iter().zip(&touches) {
        assert_eq!(
            *line,
            format!(
                "pid {} (sleep) `{marker} 600`: SIGSTOP now, SIGCONT on revert",
                t.id.pid
            )
        );
    }
    f.inject(&cx, &mut r).unwrap();
    assert!(victims.iter().all(is_stopped));
    ProcessStop::revert(&r).unwrap();
    for v in &victims {
        assert_ne!(wait_state(v, |s| s != 'T'), Some('T'));
    }

    let f = kill(Some(8));
    let mut r = f.plan(&cx).unwrap();
    assert_eq!(r.planned.len(), 8);
    ProcessKill::check_receipt(&cx.fault_id, &r).unwrap();
    f.inject(&cx, &mut r).unwrap();
    for v in &mut victims {
        assert_eq!(killed_by(v), Some(libc::SIGKILL));
    }
}

#[test]
fn a_repeat_that_would_signal_more_than_max_targets_signals_none() {
    require_root!();
    let name = unique_name();
    let (mut a, mut b) = (victim(&name), victim(&name));
    let f = ProcessKill::new(ProcessKillSpec {
        name: Some(name.clone()),
        max_targets: Some(2),
        interval: Some(fault_core::Duration::from_millis(100)),
        ..Default::default()
    })
    .unwrap();
    let cx = cx();
    let mut r = f.plan(&cx).unwrap();
    f.inject(&cx, &mut r).unwrap();
    assert_eq!(killed_by(&mut a), Some(libc::SIGKILL));
    assert_eq!(killed_by(&mut b), Some(libc::SIGKILL));

    // Three instances now match, one more than accepted: the round fails, none is hit.
    let later: Vec<Victim> = (0..3).map(|_| victim(&name)).collect();
    let e = f.maintain(&cx, &mut r).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidSpec);
    assert!(
        e.to_string()
            .contains("matches 3 processes, more than max_targets = 2"),
        "{e}"
    );
    assert_eq!(r.deliveries, 2);
    assert!(
        later.iter().all(untouched),
        "no process of a refused round is signalled"
    );
}

#[test]
fn a_one_character_cmdline_is_refused_before_any_lookup() {
    let mut reg = Registry::new();
    fault_process::register(&mut reg);
    for kind in ["process.stop", "process.kill"] {
        let e = reg
            .build(kind, &serde_json::json!({ "cmdline": "/" }))
            .err()
            .expect("refused");
        assert_eq!(e.kind(), ErrorKind::InvalidSpec);
        assert!(e.to_string().contains("too short"), "{kind}: {e}");
    }
}
