//! `chaos-agent daemon` end to end, over real TLS on 127.0.0.1, against a real control plane
//! (`chaos-control serve`; the in-process server where tokens must be shorter than `serve`
//! accepts): a two-step run reported in full, abort by the operator, the lease when the
//! control plane dies, token rotation during a run, recovery after the agent is killed, a
//! cloned identity, and SIGTERM. The victims are the sandbox's own process and tmpfs.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::control::{diag, wait_until, ControlPlane, Daemon, Options};
use common::Sandbox;
use fault_core::testing::TempDir;
use serde_json::Value;

const AGENT: &str = "web-01";
const FAST: Duration = Duration::from_millis(20);
const CLI: Duration = Duration::from_millis(200);
/// Access tokens rotate every 3 s (`chaos-control serve` accepts no less than 1m, so these
/// tests run its server in-process).
const TOKEN_TTL: Duration = Duration::from_secs(6);

/// A sandbox, a control plane and a registered daemon whose state directory is the
/// sandbox's (so `Sandbox::assert_clean` reads the daemon's journal). Fields drop in order:
/// the daemon first (SIGTERM: it reverts what it holds), then the server, then the sandbox.
struct Setup {
    d: Daemon,
    cp: ControlPlane,
    sb: Sandbox,
}

impl Setup {
    fn new(test: &str, opts: Options) -> Option<Setup> {
        let sb = Sandbox::new(test)?;
        let cp = ControlPlane::start(opts);
        let key = cp.add_agent(AGENT);
        let mut d = Daemon::new(&cp, sb.state.path(), Some(&key));
        d.start();
        let s = Setup { d, cp, sb };
        s.wait("the daemon to register", 30, CLI, || {
            (s.cp.agent(AGENT)["state"] == "active").then_some(())
        });
        Some(s)
    }

    fn diag(&self) -> String {
        diag(&self.cp, &[&self.d])
    }

    fn wait<T>(&self, what: &str, secs: u64, every: Duration, f: impl FnMut() -> Option<T>) -> T {
        wait_until(what, Duration::from_secs(secs), every, &|| self.diag(), f)
    }

    /// One step: process.stop of the victim and disk.fill of the tmpfs together, for `hold`.
    fn hold_experiment(&self, hold: &str) -> PathBuf {
        self.sb.write(
            "hold.toml",
            &format!(
                r#"
name = "hold"
[[steps]]
name = "stop and fill"
  [[steps.faults]]
  kind = "process.stop"
  duration = "{hold}"
  pid = {pid}
  [[steps.faults]]
  kind = "disk.fill"
  duration = "{hold}"
  path = "{fs}"
  size = "8MiB"
"#,
                pid = self.sb.victim.pid(),
                fs = self.sb.fs.path().display()
            ),
        )
    }

    /// Both faults of [`hold_experiment`](Setup::hold_experiment) are in effect on the host.
    fn wait_in_effect(&self) {
        self.wait("the victim stopped and the tmpfs filled", 30, FAST, || {
            (self.sb.victim.state() == Some('T')
                && self.sb.fill_files().len() == 1
                && self.sb.used_bytes() >= 8 << 20)
                .then_some(())
        });
    }

    /// Wait until the control plane shows every fault of `run` in `state`.
    fn wait_faults(&self, run: &str, n: usize, state: &str) {
        self.wait(
            &format!("the control plane to show {n} faults {state}"),
            30,
            CLI,
            || {
                let d = self.cp.run(run);
                let faults = d["faults"].as_array().cloned().unwrap_or_default();
                (faults.len() == n && faults.iter().all(|f| f["state"] == state)).then_some(())
            },
        );
    }

    /// Wait for the victim to run again; how long after `since` it did (checked every 5 ms).
    fn wait_resumed(&self, since: Instant, limit: Duration) -> Duration {
        loop {
            let st = self.sb.victim.state();
            if st != Some('T') {
                assert!(
                    matches!(st, Some('S' | 'R')),
                    "victim state {st:?}\n{}",
                    self.diag()
                );
                return since.elapsed();
            }
            if since.elapsed() > limit {
                panic!(
                    "the victim is still stopped {limit:?} later\n{}",
                    self.diag()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn wait_fill_gone(&self) {
        self.wait("the fill file to be removed", 30, FAST, || {
            self.sb.fill_files().is_empty().then_some(())
        });
    }

    fn wait_finished(&self, run: &str, secs: u64) -> Value {
        self.cp
            .wait_finished(run, Duration::from_secs(secs), &|| self.diag())
    }

    /// The run's log on the control plane: numbered from 1 without gaps, as many lines as
    /// the run's detail counts and as the daemon wrote (nothing lost on the way).
    fn complete_logs(&self, run: &str, detail: &Value) -> Vec<Value> {
        let lines = self.cp.logs(run);
        let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
        let expected: Vec<u64> = (1..=lines.len() as u64).collect();
        assert_eq!(seqs, expected, "log seq has gaps\n{}", show(&lines));
        assert_eq!(
            detail["log_lines"].as_u64(),
            Some(lines.len() as u64),
            "{detail:#}"
        );
        assert_eq!(
            self.d.report_lines(),
            lines.len(),
            "the daemon wrote a different number of lines than the control plane holds\n{}\n{}",
            show(&lines),
            self.diag()
        );
        lines
    }
}

fn show(lines: &[Value]) -> String {
    lines
        .iter()
        .map(|l| format!("{:>3} {}", l["seq"], l["message"].as_str().unwrap_or("")))
        .collect::<Vec<_>>()
        .join("\n")
}

fn message(l: &Value) -> &str {
    l["message"].as_str().unwrap_or("")
}

/// The index of the first line whose message satisfies `pred`.
fn find(lines: &[Value], what: &str, pred: impl Fn(&str) -> bool) -> usize {
    lines
        .iter()
        .position(|l| pred(message(l)))
        .unwrap_or_else(|| panic!("no log line {what}\n{}", show(lines)))
}

/// Each of `states` of the fault has exactly one line, in this order.
fn assert_fault_lines(lines: &[Value], fault_id: &str, kind: &str, states: &[&str]) {
    let mut last = None;
    for st in states {
        let prefix = format!("{fault_id} {kind}: {st}");
        let is = |m: &str| {
            m == prefix
                || m.strip_prefix(&prefix)
                    .is_some_and(|r| r.starts_with(':') || r.starts_with('\n'))
        };
        let hits: Vec<usize> = (0..lines.len())
            .filter(|&i| is(message(&lines[i])))
            .collect();
        assert_eq!(
            hits.len(),
            1,
            "one line \"{prefix}\" expected\n{}",
            show(lines)
        );
        if let Some(prev) = last {
            assert!(hits[0] > prev, "\"{prefix}\" out of order\n{}", show(lines));
        }
        last = Some(hits[0]);
    }
}

/// (fault_id, kind, state) of every fault the control plane shows.
fn fault_states(detail: &Value) -> Vec<(String, String, String)> {
    detail["faults"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["fault_id"].as_str().unwrap().to_string(),
                f["kind"].as_str().unwrap().to_string(),
                f["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Every fault of the result: (fault_id, revert outcome).
fn reverts(detail: &Value) -> Vec<(String, String)> {
    detail["result"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["faults"].as_array().unwrap().iter())
        .map(|f| {
            (
                f["fault_id"].as_str().unwrap().to_string(),
                f["revert"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

const LIFECYCLE: [&str; 5] = ["planned", "injected", "holding", "reverting", "reverted"];

fn hold_faults(run: &str) -> [(String, &'static str); 2] {
    [
        (format!("{run}-1-1"), "process.stop"),
        (format!("{run}-1-2"), "disk.fill"),
    ]
}

fn reverted(run: &str) -> Vec<(String, String)> {
    hold_faults(run)
        .iter()
        .map(|(id, _)| (id.clone(), "reverted".to_string()))
        .collect()
}

#[test]
fn a_two_step_run_is_reported_in_full() {
    let Some(s) = Setup::new("a_two_step_run_is_reported_in_full", Options::default()) else {
        return;
    };
    let exp = s.sb.write(
        "two-steps.toml",
        &format!(
            r#"
name = "two steps"
[[steps]]
name = "stop"
  [[steps.faults]]
  kind = "process.stop"
  duration = "1s"
  pid = {pid}
[[steps]]
name = "stop and fill"
  [[steps.faults]]
  kind = "process.stop"
  duration = "1s"
  pid = {pid}
  [[steps.faults]]
  kind = "disk.fill"
  duration = "1s"
  path = "{fs}"
  size = "8MiB"
"#,
            pid = s.sb.victim.pid(),
            fs = s.sb.fs.path().display()
        ),
    );
    let run = s.cp.create_run(&exp, AGENT, None);
    let d = s.wait_finished(&run, 60);

    // Every status: the run completed, each fault's last state is reverted.
    assert_eq!(d["state"], "completed", "{d:#}");
    let faults = [
        (format!("{run}-1-1"), "process.stop"),
        (format!("{run}-2-1"), "process.stop"),
        (format!("{run}-2-2"), "disk.fill"),
    ];
    let want: Vec<(String, String, String)> = faults
        .iter()
        .map(|(id, k)| (id.clone(), k.to_string(), "reverted".to_string()))
        .collect();
    assert_eq!(fault_states(&d), want, "{d:#}");

    // The result: both steps completed, each fault held and reverted: the host is clean.
    let r = &d["result"];
    assert_eq!(r["outcome"], "completed", "{r:#}");
    assert!(r["abort_reason"].is_null(), "{r:#}");
    for st in r["steps"].as_array().unwrap() {
        assert_eq!(st["outcome"], "completed", "{r:#}");
        for f in st["faults"].as_array().unwrap() {
            assert_eq!(f["injected"], true, "{f:#}");
            assert_eq!(f["revert"], "reverted", "{f:#}");
            assert!(f["held_ms"].as_u64().unwrap() >= 1000, "{f:#}");
        }
    }
    let text = s.cp.cli_ok(&["runs", "show", &run]);
    assert!(text.contains("host clean: yes"), "{text}");

    // Every log line, in order: each fault's life from planned to reverted.
    let lines = s.complete_logs(&run, &d);
    for (id, kind) in &faults {
        assert_fault_lines(&lines, id, kind, &LIFECYCLE);
    }
    let step1 = find(&lines, "step 1 started", |m| {
        m.starts_with("step 1 \"stop\"")
    });
    let step1_done = find(&lines, "step 1 completed", |m| m == "step 1 completed");
    let step2 = find(&lines, "step 2 started", |m| {
        m.starts_with("step 2 \"stop and fill\"")
    });
    assert!(step1 < step1_done && step1_done < step2, "{}", show(&lines));
    let stop1 = find(&lines, "first stop reverted", |m| {
        m == format!("{run}-1-1 process.stop: reverted")
    });
    let fill = find(&lines, "fill planned", |m| {
        m.starts_with(&format!("{run}-2-2 disk.fill: planned"))
    });
    assert!(stop1 < step1_done && step2 < fill, "{}", show(&lines));
    let last = message(lines.last().unwrap());
    assert!(
        last.starts_with("run completed") && last.contains("the host is clean"),
        "{}",
        show(&lines)
    );
    s.sb.assert_clean("after the run");
}

#[test]
fn abort_by_the_operator_resumes_the_victim_at_once() {
    let Some(s) = Setup::new(
        "abort_by_the_operator_resumes_the_victim_at_once",
        Options::default(),
    ) else {
        return;
    };
    let run = s.cp.create_run(&s.hold_experiment("10m"), AGENT, None);
    s.wait_in_effect();
    let asked = Instant::now();
    s.cp.cli_ok(&["runs", "abort", &run, "--reason", "game day over"]);
    let resumed = s.wait_resumed(asked, Duration::from_secs(30));
    eprintln!("abort: the victim ran again {resumed:?} after `chaos-control runs abort`");
    assert!(
        resumed < Duration::from_secs(3),
        "abort took {resumed:?}\n{}",
        s.diag()
    );
    s.wait_fill_gone();
    let d = s.wait_finished(&run, 30);
    assert_eq!(d["state"], "aborted", "{d:#}");
    assert_eq!(d["abort_reason"], "game day over", "{d:#}");
    let r = &d["result"];
    assert_eq!(r["outcome"], "aborted", "{r:#}");
    let why = r["abort_reason"].as_str().unwrap_or("");
    assert!(why.contains("game day over"), "{r:#}");
    assert_eq!(reverts(&d), reverted(&run), "{d:#}");
    let lines = s.complete_logs(&run, &d);
    for (id, kind) in &hold_faults(&run) {
        assert_fault_lines(&lines, id, kind, &LIFECYCLE);
    }
    let last = message(lines.last().unwrap());
    assert!(
        last.starts_with("run aborted") && last.contains("game day over"),
        "{}",
        show(&lines)
    );
    s.sb.assert_clean("after the abort");
}

#[test]
fn a_dead_control_plane_costs_the_run_its_lease_and_no_report() {
    let Some(mut s) = Setup::new(
        "a_dead_control_plane_costs_the_run_its_lease_and_no_report",
        Options::default(),
    ) else {
        return;
    };
    let lease = Duration::from_secs(10);
    let run =
        s.cp.create_run(&s.hold_experiment("10m"), AGENT, Some("10s"));
    s.wait_in_effect();
    let killed = Instant::now();
    s.cp.kill9();
    // The lease counts from the last successful call, which was before the kill.
    let after = s.wait_resumed(killed, lease + Duration::from_secs(20));
    eprintln!("lease: the victim ran again {after:?} after the control plane was killed");
    assert!(
        after <= lease + Duration::from_secs(2),
        "reverted {after:?} after the kill, lease {lease:?}\n{}",
        s.diag()
    );
    // Not a reaction to the first failed call: the daemon keeps the run for its lease.
    assert!(
        after >= Duration::from_secs(3),
        "reverted {after:?} after the kill: sooner than the lease allows\n{}",
        s.diag()
    );
    s.wait_fill_gone();
    assert_eq!(
        s.cp.cli(&["runs", "show", &run]).status.code(),
        Some(1),
        "the control plane is down"
    );

    s.cp.serve();
    let d = s.wait_finished(&run, 60);
    assert_eq!(d["state"], "aborted", "{d:#}");
    let r = &d["result"];
    let why = r["abort_reason"].as_str().unwrap_or("");
    assert!(why.contains("lease"), "{r:#}");
    assert_eq!(reverts(&d), reverted(&run), "{d:#}");
    s.wait("the outbox to empty", 30, FAST, || {
        (s.d.outbox_len() == 0).then_some(())
    });
    let lines = s.complete_logs(&run, &d);
    for (id, kind) in &hold_faults(&run) {
        assert_fault_lines(&lines, id, kind, &LIFECYCLE);
    }
    let last = message(lines.last().unwrap());
    assert!(
        last.starts_with("run aborted") && last.contains("lease"),
        "{}",
        show(&lines)
    );
    s.sb.assert_clean("after the lease ran out");
}

#[test]
fn tokens_rotate_during_a_long_run_without_a_hiccup() {
    // The long poll (10 s) outlasts half the token's life (3 s): the agent must rotate on time
    // all the same.
    let Some(s) = Setup::new(
        "tokens_rotate_during_a_long_run_without_a_hiccup",
        Options {
            token_ttl: Some(TOKEN_TTL),
            poll_wait: Duration::from_secs(10),
            ..Options::default()
        },
    ) else {
        return;
    };
    let before = s.cp.agent(AGENT)["token_generation"].as_u64().unwrap();
    let run = s.cp.create_run(&s.hold_experiment("15s"), AGENT, None);
    let d = s.wait("the run to end", 60, CLI, || {
        let a = s.cp.agent(AGENT);
        assert_eq!(a["state"], "active", "{a:#}\n{}", s.diag());
        let notes = s.d.notifications();
        let out = notes.iter().find(|n| n.starts_with("STATUS=locked out"));
        assert!(out.is_none(), "{out:?}\n{}", s.diag());
        let d = s.cp.run(&run);
        (!d["result"].is_null()).then_some(d)
    });
    assert_eq!(d["state"], "completed", "{d:#}\n{}", s.diag());
    assert_eq!(reverts(&d), reverted(&run), "{d:#}");
    let after = s.cp.agent(AGENT);
    assert_eq!(after["state"], "active", "{after:#}");
    let rose = after["token_generation"].as_u64().unwrap() - before;
    eprintln!("rotation: the token generation rose by {rose} during the run");
    assert!(rose >= 3, "generation {before} -> {after:#}\n{}", s.diag());
    let log = s.d.log();
    assert!(log.matches("access token rotated").count() >= 3, "{log}");
    for bad in ["rotation failed", "locked", "expired", "refused"] {
        assert!(!log.contains(bad), "\"{bad}\" in the daemon's log:\n{log}");
    }
    let lines = s.complete_logs(&run, &d);
    for (id, kind) in &hold_faults(&run) {
        assert_fault_lines(&lines, id, kind, &LIFECYCLE);
    }
    s.sb.assert_clean("after the run");
}

#[test]
fn a_killed_agent_reverts_at_restart_before_it_polls_and_reports_the_run_aborted() {
    let Some(mut s) = Setup::new(
        "a_killed_agent_reverts_at_restart_before_it_polls_and_reports_the_run_aborted",
        Options::default(),
    ) else {
        return;
    };
    let run = s.cp.create_run(&s.hold_experiment("10m"), AGENT, None);
    s.wait_in_effect();
    // Let the first life's report reach the control plane before the kill.
    s.wait_faults(&run, 2, "holding");
    s.wait("the outbox to empty", 30, FAST, || {
        (s.d.outbox_len() == 0).then_some(())
    });
    s.d.kill9();
    assert_eq!(
        s.sb.victim.state(),
        Some('T'),
        "a killed agent reverts nothing"
    );
    assert_eq!(s.sb.fill_files().len(), 1);

    let restarted = Instant::now();
    s.d.start();
    let resumed = s.wait_resumed(restarted, Duration::from_secs(30));
    eprintln!("restart: the victim ran again {resumed:?} after the agent restarted");
    s.wait_fill_gone();
    // Recovery happened before the poll loop started (it starts after "ready").
    let log = s.wait("the restarted daemon to be ready", 30, FAST, || {
        Some(s.d.life_log()).filter(|l| l.contains("chaos-agent daemon ready"))
    });
    let ready = log.find("chaos-agent daemon ready").unwrap();
    for (id, _) in &hold_faults(&run) {
        let at = log
            .lines()
            .position(|l| l.contains("recovered at start") && l.contains(id.as_str()))
            .unwrap_or_else(|| panic!("{id} not recovered at start:\n{log}"));
        let offset: usize = log.lines().take(at).map(|l| l.len() + 1).sum();
        assert!(
            offset < ready,
            "{id} recovered after the daemon was ready:\n{log}"
        );
    }

    let d = s.wait_finished(&run, 60);
    assert_eq!(d["state"], "aborted", "{d:#}");
    let r = &d["result"];
    let why = r["abort_reason"].as_str().unwrap_or("");
    assert!(why.contains("agent restarted"), "{r:#}");
    assert_eq!(reverts(&d), reverted(&run), "{d:#}");
    let lines = s.complete_logs(&run, &d);
    for (id, kind) in &hold_faults(&run) {
        assert_fault_lines(&lines, id, kind, &LIFECYCLE[..3]);
        find(&lines, &format!("{id} recovered"), |m| {
            m.starts_with(&format!("{id} {kind}: was "))
        });
    }
    let restart = find(&lines, "agent restarted", |m| {
        m.starts_with("agent restarted")
    });
    let recovered = find(&lines, "recovered", |m| {
        m.starts_with("recovered: every fault of this run is reverted")
    });
    assert!(restart < recovered, "{}", show(&lines));
    s.sb.assert_clean("after the restart");
}

#[test]
fn a_cloned_identity_is_locked_and_both_copies_revert() {
    let Some(mut s) = Setup::new(
        "a_cloned_identity_is_locked_and_both_copies_revert",
        Options {
            token_ttl: Some(TOKEN_TTL),
            ..Options::default()
        },
    ) else {
        return;
    };
    let run = s.cp.create_run(&s.hold_experiment("10m"), AGENT, None);
    s.wait_in_effect();

    // A copy of the identity (a restored backup, a cloned VM image): its token generation
    // is the one the agent uses now …
    let bytes = std::fs::read(s.sb.state.path().join("identity.json")).unwrap();
    let identity: Value = serde_json::from_slice(&bytes).unwrap();
    let copied = identity["token"]["generation"].as_u64().unwrap();
    let clone_state = TempDir::new("chaos-e2e-clone-state");
    let clone_id = clone_state.path().join("identity.json");
    std::fs::write(&clone_id, &bytes).unwrap();
    std::fs::set_permissions(&clone_id, std::fs::Permissions::from_mode(0o600)).unwrap();
    // … and the original moves on: it rotates and uses the next generation.
    s.wait(
        "the original agent to use a newer token than the copy",
        30,
        CLI,
        || (s.cp.agent(AGENT)["token_generation"].as_u64() > Some(copied)).then_some(()),
    );
    let mut clone = Daemon::new(&s.cp, clone_state.path(), None);
    clone.start();
    let both = |s: &Setup, clone: &Daemon| diag(&s.cp, &[&s.d, clone]);

    let info = wait_until(
        "the control plane to lock the identity",
        Duration::from_secs(30),
        CLI,
        &|| both(&s, &clone),
        || {
            let a = s.cp.agent(AGENT);
            (a["state"] == "locked").then_some(a)
        },
    );
    let reason = info["state_reason"].as_str().unwrap_or("");
    assert!(reason.contains("two agents"), "{info:#}");
    let list = s.cp.cli_ok(&["agents", "list"]);
    assert!(list.contains(&format!("{AGENT} is locked")), "{list}");

    // The run in progress on the original is reverted: the victim runs again.
    s.wait_resumed(Instant::now(), Duration::from_secs(30));
    s.wait_fill_gone();

    // Both copies say they are locked out, and stay up waiting for a new key.
    for d in [&s.d, &clone] {
        wait_until(
            "the daemon to say it is locked out",
            Duration::from_secs(30),
            FAST,
            &|| both(&s, &clone),
            || {
                let notes = d.notifications();
                let status = notes.iter().any(|n| n.starts_with("STATUS=locked out"));
                (status && d.life_log().contains("locked this agent's identity")).then_some(())
            },
        );
    }
    assert!(s.d.alive(), "{}", both(&s, &clone));
    assert!(clone.alive(), "{}", both(&s, &clone));
    for d in [&mut s.d, &mut clone] {
        d.signal(libc::SIGTERM);
        let st = d.wait_exit(Duration::from_secs(15));
        assert_eq!(st.code(), Some(0), "{}", d.log());
    }
    // Locked out, the original could not report the end of the run: the report waits in
    // its outbox for a new key.
    assert!(
        s.d.outbox_len() > 0,
        "run {run}: nothing left to report?\n{}",
        s.diag()
    );
    s.sb.assert_clean("after the lockout");
}

#[test]
fn sigterm_reverts_flushes_and_exits_0() {
    let Some(mut s) = Setup::new("sigterm_reverts_flushes_and_exits_0", Options::default()) else {
        return;
    };
    let run = s.cp.create_run(&s.hold_experiment("10m"), AGENT, None);
    s.wait_in_effect();
    let asked = Instant::now();
    s.d.signal(libc::SIGTERM);
    let st = s.d.wait_exit(Duration::from_secs(30));
    let took = asked.elapsed();
    eprintln!("SIGTERM: the daemon exited {took:?} later");
    assert_eq!(st.code(), Some(0), "{}", s.diag());
    assert!(took < Duration::from_secs(5), "took {took:?}\n{}", s.diag());
    assert!(
        s.d.notifications().iter().any(|n| n == "STOPPING=1"),
        "{}",
        s.diag()
    );
    // Flushed before it exited: the outcome is on the control plane already.
    assert_eq!(s.d.outbox_len(), 0, "{}", s.diag());
    let d = s.cp.run(&run);
    assert_eq!(d["state"], "aborted", "{d:#}\n{}", s.diag());
    let r = &d["result"];
    let why = r["abort_reason"].as_str().unwrap_or("");
    assert!(why.contains("SIGTERM"), "{r:#}");
    assert_eq!(reverts(&d), reverted(&run), "{d:#}");
    let lines = s.complete_logs(&run, &d);
    for (id, kind) in &hold_faults(&run) {
        assert_fault_lines(&lines, id, kind, &LIFECYCLE);
    }
    s.sb.assert_clean("after SIGTERM");
}
