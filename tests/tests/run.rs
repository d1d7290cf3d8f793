//! `chaos-agent run` end to end: a clean run, abort by signal, the lock, a failed inject
//! that reverts its siblings, and a revert that needs a person.

mod common;

use std::io::BufRead;
use std::time::{Duration, Instant};

use common::{fault_state, text, wait_for_event, wait_with_deadline, Sandbox};

#[test]
fn run_completes_and_reverts_everything() {
    let Some(sb) = Sandbox::new("run_completes_and_reverts_everything") else {
        return;
    };
    let exp = sb.two_step_experiment("300ms");
    let out = sb.agent(&["run", exp.to_str().unwrap()]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("The host is clean"), "{t}");
    assert!(t.contains("[step 2/2] fill more"), "{t}");
    sb.assert_clean("after run");
    assert_eq!(sb.records().len(), 3);
}

#[test]
fn json_events_show_each_fault_in_effect() {
    let Some(sb) = Sandbox::new("json_events_show_each_fault_in_effect") else {
        return;
    };
    let exp = sb.two_step_experiment("1s");
    let mut child = sb.spawn(&["run", "--json", exp.to_str().unwrap()], None);
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let ev = wait_for_event(&mut lines, |v| fault_state(v, "process.stop", "holding"));
    assert!(ev["detail"].as_str().unwrap().contains("stopped"), "{ev}");
    assert_eq!(
        sb.victim.state(),
        Some('T'),
        "victim is stopped while the fault holds"
    );
    let ev = wait_for_event(&mut lines, |v| v["event"] == "run-finished");
    assert_eq!(ev["report"]["outcome"], "completed");
    assert!(wait_with_deadline(&mut child, Duration::from_secs(10)).success());
    sb.assert_clean("after json run");
}

#[test]
fn sigterm_aborts_and_reverts() {
    let Some(sb) = Sandbox::new("sigterm_aborts_and_reverts") else {
        return;
    };
    let exp = sb.two_step_experiment("10m");
    let mut child = sb.spawn(&["run", "--json", exp.to_str().unwrap()], None);
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    wait_for_event(&mut lines, |v| fault_state(v, "disk.fill", "holding"));
    assert_eq!(sb.fill_files().len(), 1);
    let start = Instant::now();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let ev = wait_for_event(&mut lines, |v| v["event"] == "run-finished");
    assert_eq!(ev["report"]["outcome"], "aborted");
    assert_eq!(ev["report"]["abort_reason"], "received SIGTERM");
    assert_eq!(ev["report"]["steps"][1]["outcome"], "skipped");
    let status = wait_with_deadline(&mut child, Duration::from_secs(10));
    assert_eq!(status.code(), Some(130));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "abort took {:?}",
        start.elapsed()
    );
    sb.assert_clean("after SIGTERM");
}

#[test]
fn second_run_is_refused_while_one_is_active() {
    let Some(sb) = Sandbox::new("second_run_is_refused_while_one_is_active") else {
        return;
    };
    let exp = sb.two_step_experiment("5s");
    let mut first = sb.spawn(&["run", "--json", exp.to_str().unwrap()], None);
    let mut lines = std::io::BufReader::new(first.stdout.take().unwrap()).lines();
    wait_for_event(&mut lines, |v| v["event"] == "run-started");
    let out = sb.agent(&["run", exp.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("another chaos-agent (pid {})", first.id())),
        "{}",
        text(&out)
    );
    let out = sb.agent(&["recover"]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "recover must not fight a live run: {}",
        text(&out)
    );
    unsafe { libc::kill(first.id() as i32, libc::SIGINT) };
    assert_eq!(
        wait_with_deadline(&mut first, Duration::from_secs(10)).code(),
        Some(130)
    );
    sb.assert_clean("after lock test");
}

#[test]
fn failed_inject_reverts_the_other_faults_of_the_step() {
    let Some(sb) = Sandbox::new("failed_inject_reverts_the_other_faults_of_the_step") else {
        return;
    };
    // disk.fill waits 1s before injecting; meanwhile the test takes the space it planned
    // for, so its fallocate fails with ENOSPC while process.stop is already in effect.
    let exp = sb.write(
        "exp.toml",
        &format!(
            r#"
name = "inject fails"
[[steps]]
  [[steps.faults]]
  kind = "process.stop"
  duration = "30s"
  pid = {pid}
  [[steps.faults]]
  kind = "disk.fill"
  duration = "30s"
  start_delay = "1s"
  path = "{fs}"
  size = "40MiB"
[[steps]]
  [[steps.faults]]
  kind = "process.stop"
  duration = "1s"
  pid = {pid}
"#,
            pid = sb.victim.pid(),
            fs = sb.fs.path().display()
        ),
    );
    let mut child = sb.spawn(&["run", "--json", exp.to_str().unwrap()], None);
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    wait_for_event(&mut lines, |v| fault_state(v, "process.stop", "holding"));
    let hog = sb.fs.path().join("hog");
    std::fs::write(&hog, vec![1u8; 40 << 20]).unwrap();
    let ev = wait_for_event(&mut lines, |v| fault_state(v, "disk.fill", "failed"));
    assert!(
        ev["detail"].as_str().unwrap().contains("not enough space"),
        "{ev}"
    );
    let ev = wait_for_event(&mut lines, |v| v["event"] == "run-finished");
    let report = &ev["report"];
    assert_eq!(report["outcome"], "failed");
    assert_eq!(
        report["steps"][0]["faults"][0]["revert"], "reverted",
        "{report}"
    );
    assert_eq!(
        report["steps"][1]["outcome"], "skipped",
        "later steps do not run"
    );
    assert!(
        report["steps"][0]["faults"][0]["held_ms"].as_u64().unwrap() < 10_000,
        "sibling reverted early"
    );
    assert_eq!(
        wait_with_deadline(&mut child, Duration::from_secs(10)).code(),
        Some(1)
    );
    std::fs::remove_file(hog).unwrap();
    sb.assert_clean("after failed inject");
}

#[test]
fn revert_that_keeps_failing_becomes_needs_manual_and_blocks_the_target() {
    let Some(sb) =
        Sandbox::new("revert_that_keeps_failing_becomes_needs_manual_and_blocks_the_target")
    else {
        return;
    };
    let exp = sb.write(
        "exp.toml",
        &format!(
            "name = \"manual\"\n[[steps]]\n  [[steps.faults]]\n  kind = \"disk.fill\"\n  duration = \"1s\"\n  path = \"{}\"\n  size = \"1MiB\"\n",
            sb.fs.path().display()
        ),
    );
    let mut child = sb.spawn(&["run", exp.to_str().unwrap()], None);
    // Once the fill file exists, put a directory in its place: revert must refuse to
    // delete what is not its own regular file.
    let deadline = Instant::now() + Duration::from_secs(10);
    let name = loop {
        if let Some(n) = sb.fill_files().pop() {
            break n;
        }
        assert!(Instant::now() < deadline, "fill file never appeared");
        std::thread::sleep(Duration::from_millis(5));
    };
    let path = sb.fs.path().join(&name);
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    let status = wait_with_deadline(&mut child, Duration::from_secs(30));
    let mut out = String::new();
    use std::io::Read;
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(status.code(), Some(3), "{out}");
    assert!(out.contains("THE HOST IS NOT CLEAN"), "{out}");
    assert!(
        out.contains("rm -f --"),
        "the manual undo is printed: {out}"
    );
    let records = sb.records();
    assert_eq!(records[0]["state"], "needs-manual");
    assert_eq!(records[0]["attempts"], 3);
    let fault_id = records[0]["fault_id"].as_str().unwrap().to_string();

    // The target is refused until a person clears it.
    let out = sb.agent(&["run", exp.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("needs manual undo"), "{}", text(&out));
    let out = sb.agent(&["status"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out).contains("needs-manual"), "{}", text(&out));

    // The person undoes it and tells the agent.
    std::fs::remove_dir(&path).unwrap();
    let out = sb.agent(&["forget", &fault_id]);
    assert!(out.status.success(), "{}", text(&out));
    sb.assert_clean("after manual undo");
}
