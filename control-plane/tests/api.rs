//! API tests over real TLS on 127.0.0.1 with the protocol's blocking HTTPS client.

mod common;

use std::time::{Duration, Instant};

use chaos_protocol::agent::Task;
use chaos_protocol::client::{ClientError, Method};
use chaos_protocol::run::{FaultState, FaultStatus, RunResult, RunState, StatusUpdate};
use chaos_protocol::ErrorCode;
use common::{code, experiment, lines, register_req, Harness};
use serde_json::json;

fn result_json(run_id: &str, outcome: &str) -> RunResult {
    // The JSON a chaos-agent sends: chaos_engine::runner::RunReport as it is.
    let report = chaos_engine::runner::RunReport {
        run_id: run_id.into(),
        name: "fill-tmp".into(),
        outcome: match outcome {
            "aborted" => chaos_engine::runner::RunOutcome::Aborted,
            _ => chaos_engine::runner::RunOutcome::Completed,
        },
        abort_reason: (outcome == "aborted").then(|| "operator".to_string()),
        steps: vec![chaos_engine::runner::StepReport {
            name: "fill".into(),
            outcome: chaos_engine::runner::StepOutcome::Completed,
            error: None,
            faults: vec![chaos_engine::runner::FaultReport {
                fault_id: format!("{run_id}-1-1"),
                kind: "disk.fill".into(),
                description: "fill /tmp with 1 MiB".into(),
                injected: true,
                observed: Some("1 MiB allocated".into()),
                held_ms: 5000,
                revert: chaos_engine::runner::RevertOutcome::Reverted,
                error: None,
                manual_undo: vec![],
            }],
        }],
        elapsed_ms: 5012,
    };
    serde_json::from_value(serde_json::to_value(report).unwrap()).unwrap()
}

#[test]
fn health_answers_without_a_token() {
    let h = Harness::new();
    let health = h.client().health().unwrap();
    assert_eq!((health.status.as_str(), health.api.as_str()), ("ok", "v1"));
}

#[test]
fn register_then_rotate_many_times() {
    let h = Harness::new();
    let c = h.client();
    let reg = h.agent("web-01");
    assert_eq!(reg.token.generation, 1);
    assert!(reg.token.rotate_at_ms < reg.token.expires_at_ms);
    assert_eq!(reg.settings.token_ttl_secs, 3600);
    let id = reg.agent_id.clone();
    let mut token = reg.token.token;
    for n in 2..=60u64 {
        let next = c.rotate(&id, &token).unwrap();
        assert_eq!(next.generation, n);
        // Until the new token is used, the old one keeps working.
        c.tasks(&id, &token, Duration::ZERO).unwrap();
        c.tasks(&id, &next.token, Duration::ZERO).unwrap();
        token = next.token;
    }
    let info = h.admin_get(&format!("/admin/agents/{id}")).unwrap();
    assert_eq!(info["token_generation"], 60);
    assert_eq!(info["state"], "active");
    assert_eq!(info["host"]["kernel"], "6.18.44");

    // A rotation whose answer was lost: the agent retries with the same token and gets a
    // replacement; the lost token never works.
    let lost = c.rotate(&id, &token).unwrap();
    let again = c.rotate(&id, &token).unwrap();
    assert_eq!(lost.generation, again.generation);
    assert_eq!(
        code(&c.tasks(&id, &lost.token, Duration::ZERO).unwrap_err()),
        (401, "invalid_token".into())
    );
    c.tasks(&id, &again.token, Duration::ZERO).unwrap();
}

#[test]
fn old_generation_after_rotation_locks_the_identity() {
    let h = Harness::new();
    let c = h.client();
    let reg = h.agent("cloned");
    let id = reg.agent_id.clone();
    let old = reg.token.token;
    let new = c.rotate(&id, &old).unwrap();
    c.tasks(&id, &new.token, Duration::ZERO).unwrap(); // first use: gen 2 is current
    let e = c.tasks(&id, &old, Duration::ZERO).unwrap_err();
    assert_eq!(code(&e), (403, "identity_locked".into()));
    // Now every token of the identity is refused, and the operator is told why.
    let e = c.tasks(&id, &new.token, Duration::ZERO).unwrap_err();
    assert_eq!(code(&e), (403, "identity_locked".into()));
    let info = h.admin_get(&format!("/admin/agents/{id}")).unwrap();
    assert_eq!(info["state"], "locked");
    assert!(
        info["state_reason"]
            .as_str()
            .unwrap()
            .contains("generation 1 was presented after generation 2"),
        "{info}"
    );
    // Runs are refused for a locked agent.
    let e = h
        .admin_post(
            "/admin/runs",
            &json!({"experiment": experiment(), "agents": ["cloned"]}),
        )
        .unwrap_err();
    assert_eq!(code(&e), (422, "invalid".into()));
    // Rekey lifts the lock: a new key, a new registration, generation 1 again.
    let k = h
        .admin_post(&format!("/admin/agents/{id}/rekey"), &json!({}))
        .unwrap();
    let reg2 = c
        .register(&common::register_req(
            k["registration_key"].as_str().unwrap(),
        ))
        .unwrap();
    assert_eq!(
        (reg2.agent_id.as_str(), reg2.token.generation),
        (id.as_str(), 1)
    );
    c.tasks(&id, &reg2.token.token, Duration::ZERO).unwrap();
    assert_eq!(
        code(&c.tasks(&id, &new.token, Duration::ZERO).unwrap_err()),
        (401, "invalid_token".into())
    );
}

#[test]
fn long_poll_wakes_within_milliseconds_when_a_run_is_created() {
    let h = Harness::new();
    let reg = h.agent("poller");
    let c = h.client();
    // An empty poll waits its full time.
    let t = Instant::now();
    let r = c
        .tasks(&reg.agent_id, &reg.token.token, Duration::from_secs(1))
        .unwrap();
    assert!(r.tasks.is_empty());
    assert!(
        t.elapsed() >= Duration::from_millis(950),
        "{:?}",
        t.elapsed()
    );

    let (id, tok) = (reg.agent_id.clone(), reg.token.token.clone());
    let poll = std::thread::spawn(move || {
        let r = c.tasks(&id, &tok, Duration::from_secs(30)).unwrap();
        (r, Instant::now())
    });
    std::thread::sleep(Duration::from_millis(300));
    let created = Instant::now();
    let runs = h.create_run(&["poller"]);
    let (r, got) = poll.join().unwrap();
    let latency = got.duration_since(created);
    eprintln!("dispatch latency (create request sent -> poll answered): {latency:?}");
    assert!(latency < Duration::from_millis(500), "{latency:?}");
    let [Task::Run(run)] = r.tasks.as_slice() else {
        panic!("{r:?}")
    };
    assert_eq!(run.run_id, runs.runs[0].run_id);
    assert_eq!(run.experiment["steps"][0]["faults"][0]["kind"], "disk.fill");
    assert_eq!(run.lease_secs, 120);

    // Not acknowledged yet: the next poll does not hand it out again at once (it waits),
    // but a poll after `running` has been reported no longer includes it.
    let c = h.client();
    c.status(
        &run.run_id,
        &reg.token.token,
        &StatusUpdate {
            state: RunState::Running,
            step: Some(0),
            faults: vec![],
            message: None,
        },
    )
    .unwrap();
    let r = c
        .tasks(&reg.agent_id, &reg.token.token, Duration::ZERO)
        .unwrap();
    assert!(r.tasks.is_empty(), "{r:?}");
}

#[test]
fn status_logs_and_result_are_stored_once() {
    let h = Harness::new();
    let reg = h.agent("worker");
    let c = h.client();
    let tok = &reg.token.token;
    let run = h.create_run(&["worker"]).runs[0].run_id.clone();
    c.tasks(&reg.agent_id, tok, Duration::ZERO).unwrap();
    let st = c
        .status(
            &run,
            tok,
            &StatusUpdate {
                state: RunState::Running,
                step: Some(0),
                faults: vec![FaultStatus {
                    fault_id: format!("{run}-1-1"),
                    step: 0,
                    kind: "disk.fill".into(),
                    state: FaultState::Holding,
                    detail: "1 MiB allocated".into(),
                }],
                message: None,
            },
        )
        .unwrap();
    assert_eq!((st.state, st.abort_requested), (RunState::Running, false));

    let r = c.logs(&run, tok, &lines(1, 10)).unwrap();
    assert_eq!((r.accepted, r.duplicates), (10, 0));
    let r = c.logs(&run, tok, &lines(1, 10)).unwrap(); // a retried batch
    assert_eq!((r.accepted, r.duplicates), (0, 10));
    let r = c.logs(&run, tok, &lines(5, 15)).unwrap(); // overlapping
    assert_eq!((r.accepted, r.duplicates), (5, 6));
    let page = h
        .admin_get(&format!("/admin/runs/{run}/logs?after=0"))
        .unwrap();
    let seqs: Vec<u64> = page["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=15).collect::<Vec<_>>());
    assert_eq!(page["next_after"], 15);

    let res = result_json(&run, "completed");
    let st = c.result(&run, tok, &res).unwrap();
    assert_eq!(st.state, RunState::Completed);
    c.result(&run, tok, &res).unwrap(); // retry: same result, fine
    let mut other = res.clone();
    other.elapsed_ms += 1;
    assert_eq!(
        code(&c.result(&run, tok, &other).unwrap_err()),
        (409, "conflict".into())
    );
    // A finished run cannot go back to running.
    let e = c
        .status(
            &run,
            tok,
            &StatusUpdate {
                state: RunState::Running,
                step: None,
                faults: vec![],
                message: None,
            },
        )
        .unwrap_err();
    assert_eq!(code(&e), (409, "conflict".into()));

    let d = h.admin_get(&format!("/admin/runs/{run}")).unwrap();
    assert_eq!(d["state"], "completed");
    assert_eq!(d["faults"][0]["state"], "holding");
    assert_eq!(d["result"]["steps"][0]["faults"][0]["revert"], "reverted");
    assert_eq!(d["log_lines"], 15);
    assert!(d["finished_at_ms"].as_u64().is_some());
    let list = h.admin_get("/admin/runs?state=completed").unwrap();
    assert_eq!(list["runs"].as_array().unwrap().len(), 1);
    // A result for another run id is refused.
    let e = c
        .result(&run, tok, &result_json("0badc0de", "completed"))
        .unwrap_err();
    assert_eq!(code(&e), (422, "invalid".into()));
}

#[test]
fn abort_is_delivered_to_a_waiting_agent() {
    let h = Harness::new();
    let reg = h.agent("victim");
    let c = h.client();
    let tok = reg.token.token.clone();
    let run = h.create_run(&["victim"]).runs[0].run_id.clone();
    c.tasks(&reg.agent_id, &tok, Duration::ZERO).unwrap();
    c.status(
        &run,
        &tok,
        &StatusUpdate {
            state: RunState::Running,
            step: Some(0),
            faults: vec![],
            message: None,
        },
    )
    .unwrap();
    let (id, t2) = (reg.agent_id.clone(), tok.clone());
    let c2 = h.client();
    let poll = std::thread::spawn(move || {
        (
            c2.tasks(&id, &t2, Duration::from_secs(30)).unwrap(),
            Instant::now(),
        )
    });
    std::thread::sleep(Duration::from_millis(200));
    let asked = Instant::now();
    let d = h
        .admin_post(
            &format!("/admin/runs/{run}/abort"),
            &json!({"reason": "game day over"}),
        )
        .unwrap();
    assert_eq!(d["abort_requested"], true);
    let (r, got) = poll.join().unwrap();
    assert!(got.duration_since(asked) < Duration::from_millis(500));
    let [Task::Abort(a)] = r.tasks.as_slice() else {
        panic!("{r:?}")
    };
    assert_eq!(
        (a.run_id.as_str(), a.reason.as_str()),
        (run.as_str(), "game day over")
    );
    // Status and log answers carry the abort too, with the operator's reason: an agent
    // that learns of it there aborts with the same reason as from the task.
    let r = c.logs(&run, &tok, &lines(1, 1)).unwrap();
    assert!(r.abort_requested);
    assert_eq!(r.abort_reason.as_deref(), Some("game day over"));
    let st = c
        .status(
            &run,
            &tok,
            &StatusUpdate {
                state: RunState::Running,
                step: Some(0),
                faults: vec![],
                message: None,
            },
        )
        .unwrap();
    assert_eq!(
        (st.abort_requested, st.abort_reason.as_deref()),
        (true, Some("game day over"))
    );
    let st = c.result(&run, &tok, &result_json(&run, "aborted")).unwrap();
    assert_eq!(st.state, RunState::Aborted);
    assert_eq!(st.abort_reason.as_deref(), Some("game day over"));
    let r = c.tasks(&reg.agent_id, &tok, Duration::ZERO).unwrap();
    assert!(
        r.tasks.is_empty(),
        "abort is acknowledged by the result: {r:?}"
    );
    // Aborting a finished run is a conflict.
    let e = h
        .admin_post(&format!("/admin/runs/{run}/abort"), &json!({}))
        .unwrap_err();
    assert_eq!(code(&e), (409, "conflict".into()));

    // A run the agent never received is aborted at once and never handed out.
    let run2 = h.create_run(&["victim"]).runs[0].run_id.clone();
    let d = h
        .admin_post(&format!("/admin/runs/{run2}/abort"), &json!({}))
        .unwrap();
    assert_eq!(d["state"], "aborted");
    let r = c.tasks(&reg.agent_id, &tok, Duration::ZERO).unwrap();
    assert!(r.tasks.is_empty(), "{r:?}");
}

#[test]
fn one_run_per_agent_and_bad_experiments_are_refused_before_any_agent_sees_them() {
    let h = Harness::new();
    let a = h.agent("a1");
    let b = h.agent("a2");
    let c = h.client();
    let bad = json!({
        "name": "bad",
        "steps": [{"faults": [
            {"kind": "disk.fill", "duration": "5s", "path": "/tmp", "percent": 250},
            {"kind": "no.such.kind", "duration": "5s"}
        ]}]
    });
    let e = h
        .admin_post(
            "/admin/runs",
            &json!({"experiment": bad, "agents": ["a1", "a2"]}),
        )
        .unwrap_err();
    let chaos_protocol::client::ClientError::Api { status, error } = e else {
        panic!()
    };
    assert_eq!((status, error.code), (422, ErrorCode::Invalid));
    let paths: Vec<&str> = error.problems.iter().map(|p| p.path.as_str()).collect();
    assert!(
        paths
            .iter()
            .any(|p| p.starts_with("experiment.steps[0].faults[0]"))
            && paths
                .iter()
                .any(|p| p.starts_with("experiment.steps[0].faults[1]")),
        "{paths:?}"
    );
    assert_eq!(h.counts().1, 0, "no run stored");
    assert!(c
        .tasks(&a.agent_id, &a.token.token, Duration::ZERO)
        .unwrap()
        .tasks
        .is_empty());
    // Unknown agents are refused the same way.
    let e = h
        .admin_post(
            "/admin/runs",
            &json!({"experiment": experiment(), "agents": ["a1", "nobody"]}),
        )
        .unwrap_err();
    assert_eq!(code(&e), (422, "invalid".into()));
    assert_eq!(h.counts().1, 0);

    let runs = h.create_run(&["a1", b.agent_id.as_str()]);
    assert_eq!(runs.runs.len(), 2);
    assert_ne!(runs.runs[0].run_id, runs.runs[1].run_id);
    for (reg, want) in [(&a, &runs.runs[0]), (&b, &runs.runs[1])] {
        let t = c
            .tasks(&reg.agent_id, &reg.token.token, Duration::ZERO)
            .unwrap();
        let [Task::Run(r)] = t.tasks.as_slice() else {
            panic!("{t:?}")
        };
        assert_eq!(r.run_id, want.run_id);
    }
    // Another agent's run: forbidden.
    let e = c
        .logs(&runs.runs[0].run_id, &b.token.token, &lines(1, 1))
        .unwrap_err();
    assert_eq!(code(&e), (403, "forbidden".into()));
}

#[test]
fn restart_keeps_agents_runs_and_logs() {
    let mut h = Harness::new();
    let reg = h.agent("durable");
    let tok = reg.token.token.clone();
    let run = h.create_run(&["durable"]).runs[0].run_id.clone();
    let c = h.client();
    c.tasks(&reg.agent_id, &tok, Duration::ZERO).unwrap();
    c.logs(&run, &tok, &lines(1, 20)).unwrap();
    let rotated = c.rotate(&reg.agent_id, &tok).unwrap();
    let before = h.admin_get(&format!("/admin/runs/{run}")).unwrap();

    h.restart();
    let c = h.client();
    // The old token still works until the rotated one is used, across the restart.
    c.tasks(&reg.agent_id, &tok, Duration::ZERO).unwrap();
    c.tasks(&reg.agent_id, &rotated.token, Duration::ZERO)
        .unwrap();
    let r = c.logs(&run, &rotated.token, &lines(1, 25)).unwrap();
    assert_eq!((r.accepted, r.duplicates), (5, 20));
    c.result(&run, &rotated.token, &result_json(&run, "completed"))
        .unwrap();

    h.restart();
    let after = h.admin_get(&format!("/admin/runs/{run}")).unwrap();
    assert_eq!(after["run_id"], before["run_id"]);
    assert_eq!(after["experiment"], before["experiment"]);
    assert_eq!(after["state"], "completed");
    assert_eq!(after["log_lines"], 25);
    let agents = h.admin_get("/admin/agents").unwrap();
    assert_eq!(agents["agents"][0]["name"], "durable");
    assert_eq!(agents["agents"][0]["token_generation"], 2);
    assert_eq!(
        code(
            &h.client()
                .tasks(&reg.agent_id, &tok, Duration::ZERO)
                .unwrap_err()
        ),
        (403, "identity_locked".into())
    );
}

#[test]
fn silent_agents_are_shown_lost_and_come_back() {
    let h = Harness::with(chaos_control::server::Settings {
        lost_after: Duration::from_millis(1500),
        ..Default::default()
    });
    let reg = h.agent("quiet");
    let state = |h: &Harness| h.admin_get("/admin/agents/quiet").unwrap()["state"].clone();
    assert_eq!(state(&h), "active");
    std::thread::sleep(Duration::from_millis(2000));
    assert_eq!(state(&h), "lost");
    h.client()
        .tasks(&reg.agent_id, &reg.token.token, Duration::ZERO)
        .unwrap();
    assert_eq!(state(&h), "active");
}

#[test]
fn follow_logs_long_poll_returns_when_lines_arrive() {
    let h = Harness::new();
    let reg = h.agent("chatty");
    let run = h.create_run(&["chatty"]).runs[0].run_id.clone();
    let (url, ca, admin, r2) = (h.url(), h.ca.clone(), h.admin.clone(), run.clone());
    let follower = std::thread::spawn(move || {
        let c =
            chaos_protocol::client::Client::new(chaos_protocol::client::ClientConfig::new(url, ca))
                .unwrap();
        let t = Instant::now();
        let p: serde_json::Value = c
            .call::<(), _>(
                Method::GET,
                &format!("/admin/runs/{r2}/logs?after=0&wait=20"),
                Some(&admin),
                None,
            )
            .unwrap();
        (p, t.elapsed())
    });
    std::thread::sleep(Duration::from_millis(200));
    h.client()
        .logs(&run, &reg.token.token, &lines(1, 3))
        .unwrap();
    let (p, took) = follower.join().unwrap();
    assert_eq!(p["lines"].as_array().unwrap().len(), 3);
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn the_protocol_document_names_every_error_code_and_call() {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/protocol.md"),
    )
    .unwrap();
    for c in ErrorCode::ALL {
        assert!(
            doc.contains(&format!("`{}`", c.as_str())),
            "{c} is not documented"
        );
    }
    for call in [
        "POST /api/v1/agents/register",
        "POST /api/v1/agents/{id}/token",
        "GET /api/v1/agents/{id}/tasks?wait=S",
        "POST /api/v1/runs/{run}/status",
        "POST /api/v1/runs/{run}/logs",
        "POST /api/v1/runs/{run}/result",
    ] {
        assert!(doc.contains(call), "{call} is not documented");
    }
}

#[test]
fn one_agent_per_machine_until_the_first_is_revoked() {
    let h = Harness::new();
    let first = h.add_agent("first");
    let second = h.add_agent("second");
    let mut req = register_req(&first.registration_key);
    req.host.machine_id = "feedfacefeedfacefeedfacefeedface".into();
    h.client().register(&req).unwrap();
    // The same machine under another name: refused, and the key stays usable.
    let mut req2 = register_req(&second.registration_key);
    req2.host.machine_id = req.host.machine_id.clone();
    let e = h.client().register(&req2).unwrap_err();
    assert_eq!(code(&e), (409, "conflict".into()), "{e}");
    assert!(e.to_string().contains("agents revoke first"), "{e}");
    h.admin_post("/admin/agents/first/revoke", &json!({}))
        .unwrap();
    h.client().register(&req2).unwrap();
}

/// Issue 9: `null` and over-broad process matches are refused before any agent sees them
/// (serde would read `null` as "not given", i.e. the default: `signal = null` -> SIGKILL).
#[test]
fn null_numbers_and_over_broad_matches_are_refused_with_their_path() {
    let h = Harness::new();
    h.agent("web-01");
    let refused = |fault: serde_json::Value, want_path: &str| {
        let e = h
            .admin_post(
                "/admin/runs",
                &json!({
                    "experiment": {"name": "x", "steps": [{"name": "s", "faults": [fault]}]},
                    "agents": ["web-01"],
                }),
            )
            .unwrap_err();
        assert_eq!(code(&e), (422, "invalid".into()), "{e}");
        let chaos_protocol::client::ClientError::Api { error, .. } = &e else {
            unreachable!()
        };
        assert!(
            error.problems.iter().any(|p| p.path.ends_with(want_path)),
            "{want_path} not in {:?}",
            error.problems
        );
    };
    refused(
        json!({"kind": "process.kill", "duration": "1s", "pid": 4242, "signal": null}),
        "steps[0].faults[0].signal",
    );
    refused(
        json!({"kind": "disk.fill", "duration": "1s", "path": "/tmp", "percent": 50, "reserve": null}),
        "steps[0].faults[0].reserve",
    );
    // The kind's own check names the field in its message.
    refused(
        json!({"kind": "process.kill", "duration": "1s", "cmdline": "/"}),
        "steps[0].faults[0]",
    );
    assert_eq!(h.counts().1, 0, "no run was created");
}

#[test]
fn runs_needing_a_kind_the_agent_did_not_register_are_refused_or_failed() {
    let h = Harness::new();
    let c = h.client();
    // The harness's agents register disk.fill and process.stop.
    let a = h.agent("only-two");
    let kill = json!({"name": "kill", "steps": [{"name": "k", "faults": [
        {"kind": "process.kill", "duration": "1s", "name": "worker"}
    ]}]});
    let e = h
        .admin_post(
            "/admin/runs",
            &json!({"experiment": kill, "agents": ["only-two"]}),
        )
        .unwrap_err();
    let ClientError::Api { status, error } = &e else {
        panic!("{e}")
    };
    assert_eq!((*status, error.code), (422, ErrorCode::Invalid));
    let p = &error.problems[0];
    assert_eq!(p.path, "agents[0]");
    assert!(
        p.message.contains("agent only-two")
            && p.message.contains("process.kill")
            && p.message.contains("disk.fill, process.stop"),
        "{}",
        p.message
    );
    // The whole message (what `chaos-control run` prints) names both.
    assert!(e.to_string().contains("process.kill"), "{e}");
    assert_eq!(h.counts().1, 0, "no run stored");

    // A queued run that needs process.stop; then the agent registers again offering only
    // disk.fill: the run fails, naming why, and is never sent.
    let stop = json!({"name": "stop", "steps": [{"name": "s", "faults": [
        {"kind": "process.stop", "duration": "1s", "name": "worker"}
    ]}]});
    let fill = h.create_run(&["only-two"]);
    let queued: chaos_protocol::admin::CreateRunsResponse = serde_json::from_value(
        h.admin_post(
            "/admin/runs",
            &json!({"experiment": stop, "agents": ["only-two"]}),
        )
        .unwrap(),
    )
    .unwrap();
    let k = h
        .admin_post(&format!("/admin/agents/{}/rekey", a.agent_id), &json!({}))
        .unwrap();
    let mut req = common::register_req(k["registration_key"].as_str().unwrap());
    req.host.kinds = vec!["disk.fill".into()];
    let reg = c.register(&req).unwrap();
    let run = &queued.runs[0].run_id;
    let d = h.admin_get(&format!("/admin/runs/{run}")).unwrap();
    assert_eq!(d["state"], "failed", "{d}");
    let msg = d["message"].as_str().unwrap();
    assert!(
        msg.contains("only-two") && msg.contains("process.stop"),
        "{msg}"
    );
    // Only the disk.fill run is handed out.
    let t = c
        .tasks(&reg.agent_id, &reg.token.token, Duration::ZERO)
        .unwrap();
    let [Task::Run(r)] = t.tasks.as_slice() else {
        panic!("{t:?}")
    };
    assert_eq!(r.run_id, fill.runs[0].run_id);
}
