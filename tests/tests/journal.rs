//! A damaged journal: recover still reverts what it can prove is ours, reports the rest,
//! and never touches what is not ours.

mod common;

use std::time::Duration;

use common::{text, wait_with_deadline, Sandbox};
use fault_core::testing::Victim;

fn crash_with_faults_applied(sb: &Sandbox) {
    let exp = sb.two_step_experiment("30s");
    let mut child = sb.spawn(
        &["run", exp.to_str().unwrap()],
        Some("after-journal-applied"),
    );
    wait_with_deadline(&mut child, Duration::from_secs(20));
    // The crash point fires in the first fault thread to reach it; wait until both
    // faults of the step are in effect or the process is gone (it is).
    assert_eq!(sb.records().len(), 2);
}

fn truncate(path: &std::path::Path) {
    let len = std::fs::metadata(path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len / 3)
        .unwrap();
}

#[test]
fn truncated_record_is_recovered_from_the_journal_log() {
    let Some(sb) = Sandbox::new("truncated_record_is_recovered_from_the_journal_log") else {
        return;
    };
    crash_with_faults_applied(&sb);
    let journal = sb.state.path().join("journal");
    for e in std::fs::read_dir(&journal).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "json") {
            truncate(&p);
        }
    }
    let out = sb.agent(&["status"]);
    assert!(text(&out).contains("corrupt"), "{}", text(&out));
    let out = sb.agent(&["recover"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("last intact copy"), "{}", text(&out));
    sb.assert_clean("after recovering damaged records");
}

#[test]
fn unreadable_record_without_copy_is_reported_and_nothing_foreign_is_touched() {
    let Some(sb) =
        Sandbox::new("unreadable_record_without_copy_is_reported_and_nothing_foreign_is_touched")
    else {
        return;
    };
    // Someone else's stopped process and someone else's file that looks like ours.
    let foreign = Victim::sleeping("foreign-stopped");
    unsafe { libc::kill(foreign.pid(), libc::SIGSTOP) };
    let lookalike = sb.fs.path().join(".chaos-agent-fill-someone-else");
    std::fs::write(&lookalike, b"not ours").unwrap();

    crash_with_faults_applied(&sb);
    let journal = sb.state.path().join("journal");
    std::fs::write(journal.join("log.jsonl"), b"garbage\n").unwrap();
    let mut damaged = Vec::new();
    for e in std::fs::read_dir(&journal).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "json") && p.to_string_lossy().contains("-1-1") {
            truncate(&p); // the process.stop record
            damaged.push(p);
        }
    }
    assert_eq!(damaged.len(), 1);
    let out = sb.agent(&["recover"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(3), "not clean, and says so: {t}");
    assert!(
        t.contains("UNREADABLE RECORD") && t.contains("nothing was touched"),
        "{t}"
    );
    // The intact record (disk.fill) was still reverted.
    assert!(t.contains("disk.fill") && t.contains("-> reverted"), "{t}");
    assert!(sb
        .fill_files()
        .iter()
        .all(|f| f == ".chaos-agent-fill-someone-else"));
    // Ours stays stopped (we cannot prove which process it was); foreign things untouched.
    assert_eq!(
        foreign.state(),
        Some('T'),
        "a process we did not stop stays stopped"
    );
    assert_eq!(std::fs::read(&lookalike).unwrap(), b"not ours");

    // A person resumes the victim and forgets the record.
    unsafe { libc::kill(sb.victim.pid(), libc::SIGCONT) };
    std::fs::remove_file(&lookalike).unwrap();
    let id = damaged[0].file_stem().unwrap().to_str().unwrap();
    assert!(sb.agent(&["forget", id]).status.success());
    sb.assert_clean("after manual cleanup");
}
