//! `chaos-agent doctor` on this host, and what its verdicts mean for a control plane: the
//! daemon offers only the kinds doctor calls available or degraded, and `chaos-control run`
//! refuses a run that needs one it did not offer.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::control::{diag, wait_until, ControlPlane, Daemon, Options};
use common::{agent_bin, text, wait_with_deadline, Sandbox};
use fault_core::host::probe::{self, Cap};
use fault_core::testing::TempDir;
use serde_json::Value;

fn doctor(state: &std::path::Path, json: bool) -> std::process::Output {
    let mut c = std::process::Command::new(agent_bin());
    c.args(["doctor", "--state-dir"]).arg(state);
    if json {
        c.arg("--json");
    }
    c.env_remove("CHAOS_AGENT_STATE_DIR")
        .output()
        .expect("run chaos-agent doctor")
}

fn doctor_json(state: &std::path::Path) -> (Option<i32>, Value) {
    let out = doctor(state, true);
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor --json is not one JSON object ({e}):\n{}",
            text(&out)
        )
    });
    (out.status.code(), v)
}

fn kind<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kind"] == name)
        .unwrap_or_else(|| panic!("no {name} in {report:#}"))
}

#[test]
fn doctor_reports_the_host_every_kind_and_the_state_directory() {
    let state = TempDir::new("chaos-doctor");
    let fresh = state.path().join("not-yet");
    let host = probe::host();

    let (code, v) = doctor_json(&fresh);
    assert_eq!(code, Some(0), "{v:#}");
    assert_eq!(v["exit_status"], 0);
    assert_eq!(v["host"]["kernel"], host.kernel.as_str());
    assert!(v["host"]["cgroups"]["layout"].is_string(), "{v:#}");
    assert!(
        v["host"]["libc"].as_str().unwrap().contains("libc"),
        "{v:#}"
    );
    assert_eq!(v["state_dir"]["exists"], false);
    assert!(!fresh.exists(), "doctor created the state directory");
    let kinds = v["kinds"].as_array().unwrap();
    let faults: Value = serde_json::from_slice(
        &std::process::Command::new(agent_bin())
            .args(["faults", "--json"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(
        kinds.len(),
        faults.as_array().unwrap().len(),
        "one row per kind"
    );
    let counts = &v["counts"];
    assert_eq!(
        counts["available"].as_u64().unwrap()
            + counts["degraded"].as_u64().unwrap()
            + counts["unavailable"].as_u64().unwrap(),
        kinds.len() as u64
    );
    for k in kinds {
        let level = k["level"].as_str().unwrap();
        assert!(
            ["available", "degraded", "unavailable"].contains(&level),
            "{k}"
        );
        if level != "available" {
            assert!(!k["reasons"].as_array().unwrap().is_empty(), "{k}");
        }
    }

    // Process kinds: available to root on a kernel with pidfd.
    for name in ["process.stop", "process.kill"] {
        let k = kind(&v, name);
        if host.has_cap(Cap::Kill) && host.pidfd_open {
            assert_eq!(k["level"], "available", "{k}");
        } else {
            assert_eq!(k["level"], "degraded", "{k}");
        }
    }
    // The netem kinds follow sch_netem; when it is missing they say how to get it.
    let netem = host.module("sch_netem", "CONFIG_NET_SCH_NETEM");
    for name in [
        "network.latency",
        "network.corruption",
        "network.duplication",
        "network.reorder",
    ] {
        let k = kind(&v, name);
        if netem.absent() {
            assert_eq!(k["level"], "unavailable", "{k}");
            let fixes = k["fixes"].to_string();
            assert!(
                fixes.contains("modprobe sch_netem") && fixes.contains("kernel-modules-extra"),
                "{k}"
            );
        } else if host.has_cap(Cap::NetAdmin) && netem.present() {
            assert_ne!(k["level"], "unavailable", "{k}");
        }
    }
    // Service kinds follow systemd as init.
    let svc = kind(&v, "service.stop");
    assert_eq!(svc["level"] == "unavailable", !host.init.systemd, "{svc}");
    eprintln!(
        "doctor here: {} available, {} degraded, {} unavailable; sch_netem {netem:?}, systemd init {}",
        counts["available"], counts["degraded"], counts["unavailable"], host.init.systemd
    );

    // The human form: the same verdicts, aligned under headings.
    let out = doctor(&fresh, false);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    for heading in ["Host", "Fault kinds (", "State directory "] {
        assert!(t.contains(heading), "{t}");
    }
    let row = |name: &str| {
        t.lines()
            .find(|l| l.trim_start().starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no row for {name}:\n{t}"))
            .to_string()
    };
    // The level column starts at the same place on every kind row.
    let col = |l: &str| l.len() - l.split_whitespace().last().unwrap().len();
    assert_eq!(
        col(&row("disk.fill")),
        col(&row("network.duplication")),
        "{t}"
    );
    if netem.absent() {
        assert!(row("network.latency").ends_with("unavailable"), "{t}");
        assert!(
            t.contains("fix: ") && t.contains("modprobe sch_netem"),
            "{t}"
        );
    }
    assert!(t.contains("exists        no"), "{t}");
    assert!(!fresh.exists());

    // A state directory others can write: refused, exit 2, as every command would.
    std::fs::create_dir(&fresh).unwrap();
    std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (code, v) = doctor_json(&fresh);
    assert_eq!(code, Some(2), "{v:#}");
    assert!(
        v["state_dir"]["problem"]
            .as_str()
            .unwrap()
            .contains("writable by everyone"),
        "{v:#}"
    );
    assert_eq!(v["state_dir"]["mode"], "0777");
    let t = text(&doctor(&fresh, false));
    assert!(t.contains("REFUSED") && t.contains("chmod go-w"), "{t}");
    std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(doctor_json(&fresh).0, Some(0));
}

#[test]
fn doctor_lists_records_not_reverted_until_recover() {
    let Some(sb) = Sandbox::new("doctor_lists_records_not_reverted_until_recover") else {
        return;
    };
    let exp = sb.two_step_experiment("30s");
    let mut child = sb.spawn(
        &["run", exp.to_str().unwrap()],
        Some("after-journal-applied"),
    );
    wait_with_deadline(&mut child, Duration::from_secs(20));
    let (code, v) = doctor_json(sb.state.path());
    assert_eq!(code, Some(3), "{v:#}");
    let left = v["state_dir"]["not_reverted"].as_array().unwrap();
    // The crash comes after the first record of the step is journaled applied; its other
    // fault may still be planned.
    assert!(left.iter().any(|r| r["state"] == "applied"), "{v:#}");
    assert!(
        left.iter()
            .all(|r| ["process.stop", "disk.fill"].contains(&r["kind"].as_str().unwrap())),
        "{v:#}"
    );
    assert!(v["state_dir"]["lock_held_by"].is_null(), "{v:#}");
    let t = text(&doctor(sb.state.path(), false));
    assert!(
        t.contains("not reverted") && t.contains("chaos-agent recover"),
        "{t}"
    );
    let out = sb.agent(&["recover"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(doctor_json(sb.state.path()).0, Some(0));
    sb.assert_clean("after recover");
}

#[test]
fn a_run_needing_a_kind_the_agent_did_not_offer_is_refused_by_chaos_control() {
    let Some(sb) =
        Sandbox::new("a_run_needing_a_kind_the_agent_did_not_offer_is_refused_by_chaos_control")
    else {
        return;
    };
    // A kind this host cannot run, as doctor says.
    let (_, report) = doctor_json(&sb.dir.path().join("doctor-state"));
    let Some(missing) = report["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["level"] == "unavailable")
        .map(|k| k["kind"].as_str().unwrap().to_string())
    else {
        eprintln!(
            "SKIPPED a_run_needing_a_kind_the_agent_did_not_offer_is_refused_by_chaos_control: every kind is available on this host"
        );
        return;
    };
    let cp = ControlPlane::start(Options::default());
    let key = cp.add_agent("web-01");
    let mut d = Daemon::new(&cp, sb.state.path(), Some(&key));
    d.start();
    wait_until(
        "the daemon to register",
        Duration::from_secs(30),
        Duration::from_millis(200),
        &|| diag(&cp, &[&d]),
        || (cp.agent("web-01")["state"] == "active").then_some(()),
    );
    let offered: Vec<String> = cp.agent("web-01")["host"]["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    assert!(
        !offered.contains(&missing),
        "{missing} offered: {offered:?}"
    );
    assert!(offered.contains(&"process.stop".to_string()), "{offered:?}");
    // The daemon said why, once, at startup.
    let log = d.log();
    assert!(
        log.contains("kind unavailable on this host") && log.contains(&missing),
        "{log}"
    );

    let faults: Value = serde_json::from_slice(
        &std::process::Command::new(agent_bin())
            .args(["faults", &missing, "--json"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let example = faults[0]["example"].as_str().unwrap();
    let file = sb.write(
        "unavailable.toml",
        &format!(
            "name = \"needs {missing}\"\n[[steps]]\nname = \"one\"\n  [[steps.faults]]\n{}\n",
            example
                .lines()
                .map(|l| format!("  {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        ),
    );
    let out = cp.cli(&["run", file.to_str().unwrap(), "--agent", "web-01"]);
    let t = text(&out);
    eprintln!("chaos-control run said:\n{t}");
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains("agent web-01") && t.contains(&missing) && t.contains("chaos-agent doctor"),
        "{t}"
    );
    assert_eq!(
        cp.json(&["runs", "list"])["runs"].as_array().map(Vec::len),
        Some(0)
    );
    sb.assert_clean("nothing ran");
}
