//! Network faults through the real agent, inside network namespaces the test creates:
//! a full run reverts everything, a crash with faults applied is cleaned by `recover`, and
//! a `recover` started in another namespace acts where the faults were injected or says
//! that it cannot. Nothing touches the machine's own interfaces.

mod common;

use std::os::fd::AsRawFd;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

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

    /// The index of an interface inside the namespace.
    fn ifindex(&self, name: &str) -> u32 {
        let out = self.sh(&["ip", "-n", &self.name, "-o", "link", "show", name]);
        let s = String::from_utf8_lossy(&out.stdout);
        s.split(':').next().unwrap().trim().parse().unwrap()
    }

    /// Remove the namespace's name, keeping it alive only through the returned descriptor:
    /// no process, bind mount or `/run/netns` entry refers to it any more, so nothing that
    /// looks for it can find it.
    fn detach(&self) -> std::fs::File {
        let f = std::fs::File::open(format!("/run/netns/{}", self.name)).unwrap();
        self.sh(&["ip", "netns", "del", &self.name]);
        assert!(!std::path::Path::new(&format!("/run/netns/{}", self.name)).exists());
        f
    }

    /// Give a detached namespace its name back (a bind mount, as `ip netns add` makes).
    fn reattach(&self, held: &std::fs::File) {
        let path = format!("/run/netns/{}", self.name);
        std::fs::File::create(&path).unwrap();
        let src = std::ffi::CString::new(format!("/proc/self/fd/{}", held.as_raw_fd())).unwrap();
        let dst = std::ffi::CString::new(path).unwrap();
        // SAFETY: valid NUL-terminated paths; a plain bind mount.
        let r = unsafe {
            libc::mount(
                src.as_ptr(),
                dst.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        };
        assert_eq!(r, 0, "bind mount: {}", std::io::Error::last_os_error());
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

fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Regression: `network.rate` + `network.blackhole` on a veth in namespace A, `kill -9` of
/// the agent, then `chaos-agent recover` in namespace B, which has an interface of the same
/// name and index. The old agent "recovered" in B: it said the host was clean, left the
/// qdisc and the table in A, and installed A's saved root qdisc on B's interface.
///
/// Now, while A cannot be reached from B, recover touches nothing in B and ends NOT clean
/// (exit 3, needs-manual, commands that say where); once A is reachable again (a
/// `/run/netns` name), recover from B reverts inside A and the host is clean.
#[test]
fn recover_in_another_namespace_never_acts_there() {
    let Some(a) = Netns::new() else { return };
    let b = Netns::new().unwrap();
    assert_eq!(
        a.ifindex("cha0"),
        b.ifindex("cha0"),
        "the test needs the same interface name and index in both namespaces"
    );
    // A root qdisc of someone else's in A, which revert must restore (in A, nowhere else).
    a.sh(&[
        "ip", "netns", "exec", &a.name, "tc", "qdisc", "add", "dev", "cha0", "root", "handle",
        "7:", "tbf", "rate", "300mbit", "burst", "64kb", "limit", "1mb",
    ]);
    let (before_a, before_b) = (a.state(), b.state());
    let (state, dir) = (TempDir::new("chaos-net-state"), TempDir::new("chaos-net"));
    let exp = experiment(&dir, "120s");
    let mut child = agent(&a, &state, &["run", exp.to_str().unwrap()], None)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(
        "both faults in effect in A",
        Duration::from_secs(30),
        || {
            let s = a.state();
            s.contains("htb") && s.contains("chaos_")
        },
    );
    child.kill().unwrap(); // SIGKILL: `ip netns exec` exec'd the agent
    child.wait().unwrap();

    let held = a.detach();
    let out = agent(&b, &state, &["recover"], None).output().unwrap();
    let said = text(&out);
    assert_eq!(out.status.code(), Some(3), "recover from B: {said}");
    assert!(!said.contains("The host is clean"), "{said}");
    assert!(
        said.contains("nsenter '--net=/proc/PID-IN-net:["),
        "no command that says where: {said}"
    );
    assert_eq!(b.state(), before_b, "recover acted in namespace B");
    let status = agent(&b, &state, &["status"], None).output().unwrap();
    assert_eq!(status.status.code(), Some(3), "status: {}", text(&status));

    a.reattach(&held);
    let during = a.state();
    assert!(
        during.contains("htb") && during.contains("chaos_"),
        "the faults should still be in effect in A:\n{during}"
    );
    let out = agent(&b, &state, &["recover"], None).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "recover with A reachable: {}",
        text(&out)
    );
    assert_eq!(a.state(), before_a, "A was not restored");
    assert_eq!(b.state(), before_b, "recover acted in namespace B");
    let status = agent(&b, &state, &["status"], None).output().unwrap();
    assert_eq!(status.status.code(), Some(0), "status: {}", text(&status));
}
