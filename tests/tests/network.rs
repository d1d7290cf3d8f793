//! Network faults through the real agent, inside a network namespace the test creates:
//! a full run reverts everything, and a crash with faults applied is cleaned by `recover`.
//! Nothing touches the machine's own interfaces.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::{text, wait_with_deadline};
use fault_core::testing::TempDir;

struct Netns {
    name: String,
}

impl Netns {
    /// A namespace holding a veth pair `cha0`/`cha1`, both up, with addresses.
    fn new() -> Option<Netns> {
        if !fault_core::host::is_root() {
            eprintln!("SKIPPED network e2e: needs root (creates a network namespace)");
            return None;
        }
        for tool in ["ip", "tc", "nft"] {
            if Command::new(tool).arg("-V").output().is_err() {
                eprintln!(
                    "SKIPPED network e2e: `{tool}` is not installed (scripts/test.sh installs it)"
                );
                return None;
            }
        }
        let ns = Netns {
            name: format!("chaos-e2e-{}", fault_core::host::random_hex(3)),
        };
        ns.sh(&["ip", "netns", "add", &ns.name]);
        ns.ip(&[
            "link", "add", "cha0", "type", "veth", "peer", "name", "cha1",
        ]);
        ns.ip(&["addr", "add", "10.201.0.1/24", "dev", "cha0"]);
        ns.ip(&["addr", "add", "10.201.0.2/24", "dev", "cha1"]);
        ns.ip(&["link", "set", "cha0", "up"]);
        ns.ip(&["link", "set", "cha1", "up"]);
        Some(ns)
    }

    fn sh(&self, argv: &[&str]) -> Output {
        let out = Command::new(argv[0]).args(&argv[1..]).output().unwrap();
        assert!(out.status.success(), "{argv:?}: {}", text(&out));
        out
    }

    fn ip(&self, args: &[&str]) {
        let mut argv = vec!["ip", "-n", &self.name];
        argv.extend_from_slice(args);
        self.sh(&argv);
    }

    fn exec(&self) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]);
        c
    }

    /// The root qdisc of cha0 and the nft tables, as the CLI tools render them.
    fn state(&self) -> String {
        let q = self
            .exec()
            .args(["tc", "qdisc", "show", "dev", "cha0"])
            .output()
            .unwrap();
        let t = self
            .exec()
            .args(["nft", "list", "tables"])
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&q.stdout),
            String::from_utf8_lossy(&t.stdout)
        )
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn experiment(dir: &TempDir, hold: &str) -> std::path::PathBuf {
    let p = dir.path().join("net.toml");
    std::fs::write(
        &p,
        format!(
            r#"
name = "net"
[[steps]]
  [[steps.faults]]
  kind = "network.rate"
  duration = "{hold}"
  interface = "cha0"
  rate = "1mbit"
  [[steps.faults]]
  kind = "network.blackhole"
  duration = "{hold}"
  interface = "cha0"
  destinations = ["10.201.0.0/24"]
  ports = [5201]
"#
        ),
    )
    .unwrap();
    p
}

fn agent(ns: &Netns, state: &TempDir, args: &[&str], crash_at: Option<&str>) -> Command {
    let mut c = ns.exec();
    c.arg(common::agent_bin())
        .arg("--state-dir")
        .arg(state.path())
        .args(args);
    c.env_remove("CHAOS_AGENT_CRASH_AT");
    if let Some(p) = crash_at {
        c.env("CHAOS_AGENT_CRASH_AT", p);
    }
    c
}

#[test]
fn network_faults_run_and_revert_inside_a_namespace() {
    let Some(ns) = Netns::new() else { return };
    let (state, dir) = (TempDir::new("chaos-net-state"), TempDir::new("chaos-net"));
    let before = ns.state();
    let out = agent(
        &ns,
        &state,
        &["run", experiment(&dir, "500ms").to_str().unwrap()],
        None,
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("The host is clean"), "{}", text(&out));
    assert_eq!(ns.state(), before, "namespace changed after the run");
}

#[test]
fn crash_with_network_faults_applied_then_recover_cleans() {
    let Some(ns) = Netns::new() else { return };
    let (state, dir) = (TempDir::new("chaos-net-state"), TempDir::new("chaos-net"));
    let before = ns.state();
    let exp = experiment(&dir, "30s");
    let mut child = agent(
        &ns,
        &state,
        &["run", exp.to_str().unwrap()],
        Some("after-journal-applied"),
    )
    .stdout(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let status = wait_with_deadline(&mut child, Duration::from_secs(30));
    // `ip netns exec` execs the agent, so the status is the agent's own.
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    let during = ns.state();
    assert!(
        during.contains("htb") || during.contains("chaos_"),
        "no network fault in effect at the crash:\n{during}"
    );
    let out = agent(&ns, &state, &["recover"], None).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(ns.state(), before, "recover left something behind");
    let out = agent(&ns, &state, &["recover"], None).output().unwrap();
    assert!(text(&out).contains("Nothing to recover"), "{}", text(&out));
}
