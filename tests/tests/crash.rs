//! Crash safety: `chaos-agent run` killed with SIGKILL at every named point, and at random
//! moments, always leaves a journal from which `chaos-agent recover` restores the host.

mod common;

use std::time::Duration;

use common::{text, wait_with_deadline, Sandbox};

const POINTS: &[&str] = &[
    "after-plan",
    "after-journal-planned",
    "after-inject",
    "after-journal-applied",
    "mid-revert",
    "after-revert",
];

#[test]
fn kill_at_every_named_point_then_recover_leaves_host_clean() {
    let Some(sb) = Sandbox::new("kill_at_every_named_point_then_recover_leaves_host_clean") else {
        return;
    };
    let exp = sb.two_step_experiment("200ms");
    for point in POINTS {
        let mut child = sb.spawn(&["run", exp.to_str().unwrap()], Some(point));
        let status = wait_with_deadline(&mut child, Duration::from_secs(30));
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "{point}: agent should have died at the crash point"
        );
        if *point == "after-inject" || *point == "after-journal-applied" {
            // A fault really was in effect when it died (the point fires in whichever fault
            // thread of the step reaches it first).
            let stopped = sb.victim.state() == Some('T');
            let filled = sb.fill_files().len() == 1;
            assert!(
                stopped || filled,
                "{point}: no fault in effect at the crash"
            );
        }
        let out = sb.agent(&["recover"]);
        assert!(
            out.status.success(),
            "{point}: recover failed: {}",
            text(&out)
        );
        sb.assert_clean(point);
        // Recover again: nothing to do, still clean.
        let out = sb.agent(&["recover"]);
        assert!(
            out.status.success() && text(&out).contains("Nothing to recover"),
            "{point}: {}",
            text(&out)
        );
    }
}

#[test]
fn random_sigkill_loop_never_leaks() {
    let Some(sb) = Sandbox::new("random_sigkill_loop_never_leaks") else {
        return;
    };
    let iterations: u32 = std::env::var("CHAOS_KILL_LOOP")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let exp = sb.two_step_experiment("150ms");
    let mut killed_mid_fault = 0;
    for i in 0..iterations {
        let delay_ms = u64::from_str_radix(&fault_core::host::random_hex(2), 16).unwrap() % 450;
        let mut child = sb.spawn(&["run", exp.to_str().unwrap()], None);
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        if sb.victim.state() == Some('T') || !sb.fill_files().is_empty() {
            killed_mid_fault += 1;
        }
        let out = sb.agent(&["recover"]);
        assert!(
            out.status.success(),
            "iteration {i} (killed after {delay_ms} ms): recover failed: {}",
            text(&out)
        );
        sb.assert_clean(&format!("iteration {i} (killed after {delay_ms} ms)"));
    }
    eprintln!("{iterations} iterations, {killed_mid_fault} killed while a fault was in effect");
    // The loop must actually exercise the dangerous window, or it proves nothing.
    assert!(
        killed_mid_fault * 4 >= iterations,
        "only {killed_mid_fault}/{iterations} kills hit a live fault"
    );
}
