//! What a person sees around a run, through the binary: `status` during a live run, the
//! state directory's owner and mode, `forget` of a fault that is still applied, a journal
//! that lost its records, and output into a closed pipe.

mod common;

use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{fault_state, text, wait_for_event, wait_with_deadline, Sandbox};

#[test]
fn status_during_a_live_run_names_the_run_and_recover_waits_its_turn() {
    let Some(sb) =
        Sandbox::new("status_during_a_live_run_names_the_run_and_recover_waits_its_turn")
    else {
        return;
    };
    let exp = sb.two_step_experiment("30s");
    let mut child = sb.spawn(&["run", "--json", exp.to_str().unwrap()], None);
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    wait_for_event(&mut lines, |v| fault_state(v, "disk.fill", "holding"));
    let out = sb.agent(&["status"]);
    let t = text(&out);
    assert!(
        t.contains(&format!(
            "In use: chaos-agent pid {} (a run, or the daemon)",
            child.id()
        )),
        "{t}"
    );
    assert!(!t.contains("`chaos-agent recover` reverts them"), "{t}");
    assert_eq!(
        out.status.code(),
        Some(4),
        "busy while a run owns the faults: {t}"
    );
    let out = sb.agent(&["recover"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    wait_with_deadline(&mut child, Duration::from_secs(20));
    sb.assert_clean("after SIGTERM");
}

#[test]
fn a_state_directory_others_can_write_is_refused() {
    let Some(sb) = Sandbox::new("a_state_directory_others_can_write_is_refused") else {
        return;
    };
    std::fs::set_permissions(sb.state.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let exp = sb.two_step_experiment("1s");
    for args in [vec!["run", exp.to_str().unwrap()], vec!["recover"]] {
        let out = sb.agent(&args);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {t}");
        assert!(t.contains("writable by everyone"), "{t}");
    }
    assert_eq!(sb.victim.state(), Some('S'));
    std::fs::set_permissions(sb.state.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
}

#[test]
fn forget_of_an_applied_fault_needs_force_and_says_what_stays() {
    let Some(sb) = Sandbox::new("forget_of_an_applied_fault_needs_force_and_says_what_stays")
    else {
        return;
    };
    let exp = sb.two_step_experiment("30s");
    let mut child = sb.spawn(
        &["run", exp.to_str().unwrap()],
        Some("after-journal-applied"),
    );
    wait_with_deadline(&mut child, Duration::from_secs(20));
    let applied: Vec<String> = sb
        .records()
        .iter()
        .filter(|r| r["state"] == "applied" && r["kind"] == "disk.fill")
        .map(|r| r["fault_id"].as_str().unwrap().to_string())
        .collect();
    let Some(id) = applied.first() else {
        // The crash point fired in the process.stop thread first; nothing to forget here.
        sb.agent(&["recover"]);
        return;
    };
    let out = sb.agent(&["forget", id]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(4), "{t}");
    assert!(t.contains("--force") && t.contains("applied"), "{t}");
    let out = sb.agent(&["forget", "--force", id]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("rm -f") && t.contains(".chaos-agent-fill-"),
        "{t}"
    );
    // A person follows the advice; the rest is recovered as usual.
    for f in sb.fill_files() {
        std::fs::remove_file(sb.fs.path().join(f)).unwrap();
    }
    let out = sb.agent(&["recover"]);
    assert!(out.status.success(), "{}", text(&out));
    sb.assert_clean("after forget --force and recover");
}

#[test]
fn a_journal_that_lost_its_records_still_recovers_the_fill_and_never_says_clean_falsely() {
    let Some(sb) = Sandbox::new(
        "a_journal_that_lost_its_records_still_recovers_the_fill_and_never_says_clean_falsely",
    ) else {
        return;
    };
    let exp = sb.two_step_experiment("30s");
    let mut child = sb.spawn(
        &["run", exp.to_str().unwrap()],
        Some("after-journal-applied"),
    );
    wait_with_deadline(&mut child, Duration::from_secs(20));
    assert!(!sb.fill_files().is_empty() || sb.victim.state() == Some('T'));
    std::fs::remove_dir_all(sb.state.path().join("journal")).unwrap();

    let out = sb.agent(&["status"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(3), "{t}");
    assert!(!t.contains("The host is clean"), "{t}");

    let out = sb.agent(&["recover"]);
    let t = text(&out);
    // The fill file is found by its name and removed. The stopped process cannot be
    // proven ours, so the host is not said to be clean: a person is told what to check.
    assert!(sb.fill_files().is_empty(), "fill file left: {t}");
    assert_eq!(out.status.code(), Some(3), "{t}");
    assert!(!t.contains("The host is clean"), "{t}");
    assert!(
        t.contains("process.stop") && t.contains("forget --force"),
        "{t}"
    );
    // The person resumes the process and forgets the lost record.
    unsafe { libc::kill(sb.victim.pid(), libc::SIGCONT) };
    let id = t
        .lines()
        .find(|l| l.contains("process.stop"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    let out = sb.agent(&["forget", "--force", &id]);
    assert!(out.status.success(), "{}", text(&out));
    let out = sb.agent(&["recover"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("The host is clean"));
    sb.assert_clean("after recovering a lost journal");
}

#[test]
fn output_into_a_closed_pipe_is_not_a_panic() {
    let Some(sb) = Sandbox::new("output_into_a_closed_pipe_is_not_a_panic") else {
        return;
    };
    let mut child = sb
        .cmd()
        .arg("faults")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // `| head -0`
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(out.status.success(), "{:?}: {err}", out.status);
}
