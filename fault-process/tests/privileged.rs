//! Real-kernel tests of `process.stop` and `process.kill` against child processes each test
//! starts itself (named with a random suffix, so no other process on the machine matches).
#![cfg(feature = "privileged-tests")]

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::Command;
use std::time::Duration;

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
    let v = Victim::sleeping(&unique_name());
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
    let v = Victim::sleeping(&unique_name());
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
    let (a, b) = (Victim::sleeping(&name), Victim::sleeping(&name));
    let other = Victim::sleeping(&unique_name());
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
    let v = Victim::sleeping(&name);
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
    let v = Victim::sleeping(&unique_name());
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
    let v = Victim::sleeping(&unique_name());
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
    let v = Victim::sleeping(&unique_name());
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
    let mut v = Victim::sleeping(&unique_name());
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
    let mut first = Victim::sleeping(&name);
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
    let mut second = Victim::sleeping(&name);
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
    let mut first = Victim::sleeping(&name);
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
    let second = Victim::sleeping(&name);
    f.maintain(&cx, &mut r).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        second.state().is_some_and(|s| s != 'Z'),
        "the newcomer lives"
    );
    assert_eq!(r.deliveries, 1);
}
