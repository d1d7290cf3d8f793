//! Stressors never outlive the agent: `kill -9` of `chaos-agent run` while CPU and memory
//! stressors run, and every stressor is gone within seconds (parent-death signal); then
//! `recover` reports the host clean and removes their cgroups.

mod common;

use std::io::BufRead;
use std::time::{Duration, Instant};

use common::{text, wait_for_event, Sandbox};

fn alive(pid: i64, start: u64) -> bool {
    fault_core::host::process::Stat::read(pid as i32)
        .is_some_and(|s| s.start_ticks == start && s.state != 'Z')
}

#[test]
fn sigkill_of_the_agent_takes_every_stressor_with_it() {
    let Some(sb) = Sandbox::new("sigkill_of_the_agent_takes_every_stressor_with_it") else {
        return;
    };
    let exp = sb.write(
        "stress.toml",
        r#"
name = "stress"
[[steps]]
  [[steps.faults]]
  kind = "cpu.stress"
  duration = "5m"
  workers = 2
  load = 20
  [[steps.faults]]
  kind = "memory.stress"
  duration = "5m"
  size = "32MiB"
"#,
    );
    let mut child = sb.spawn(&["run", "--json", exp.to_str().unwrap()], None);
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    // The two faults of the step start in parallel: their events come in either order.
    let mut holding = std::collections::HashSet::new();
    while holding.len() < 2 {
        let v = wait_for_event(&mut lines, |v| {
            v["event"] == "fault" && v["state"] == "holding"
        });
        holding.insert(v["kind"].as_str().unwrap().to_string());
    }

    // The stressors, as the journal recorded them.
    let mut procs = Vec::new();
    for r in sb.records() {
        for p in r["receipt"]["stressors"]["processes"].as_array().unwrap() {
            procs.push((
                p["pid"].as_i64().unwrap(),
                p["start_ticks"].as_u64().unwrap(),
            ));
        }
    }
    assert_eq!(procs.len(), 3, "2 cpu workers + 1 memory worker");
    assert!(procs.iter().all(|&(p, s)| alive(p, s)));

    child.kill().unwrap(); // SIGKILL: no revert runs
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while procs.iter().any(|&(p, s)| alive(p, s)) {
        assert!(
            Instant::now() < deadline,
            "stressors outlived the agent: {procs:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let out = sb.agent(&["recover"]);
    assert!(out.status.success(), "{}", text(&out));
    for r in sb.records() {
        assert_eq!(r["state"], "reverted", "{r}");
        for cg in r["receipt"]["stressors"]["cgroups"].as_array().unwrap() {
            let dir = cg["dir"].as_str().unwrap();
            assert!(
                !std::path::Path::new(dir).exists(),
                "cgroup {dir} left behind"
            );
        }
    }
}
