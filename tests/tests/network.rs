//! Network faults through the real agent, inside network namespaces the test creates:
//! a full run reverts everything, a crash with faults applied is cleaned by `recover`, and
//! a `recover` started in another namespace acts where the faults were injected or says
//! that it cannot. Nothing touches the machine's own interfaces.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::netns::Netns;
use common::{text, wait_with_deadline};
use fault_core::testing::TempDir;

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
    common::on_configured_kernel(&mut c);
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

/// Run `cmd` in a mount namespace of its own whose `/etc/hosts` and `/etc/nsswitch.conf`
/// are bind mounts of the files the test wrote in `dir` (`hosts: files`, so no name is ever
/// asked of a DNS server). The machine's `/etc` is never written.
fn with_private_hosts(cmd: &mut Command, dir: &TempDir, hosts: &str) {
    use std::ffi::CString;
    use std::os::unix::process::CommandExt;
    let h = dir.path().join("hosts");
    let n = dir.path().join("nsswitch.conf");
    std::fs::write(&h, hosts).unwrap();
    std::fs::write(&n, "hosts: files\n").unwrap();
    let c = |p: &std::path::Path| CString::new(p.to_str().unwrap()).unwrap();
    let binds = [
        (c(&h), CString::new("/etc/hosts").unwrap()),
        (c(&n), CString::new("/etc/nsswitch.conf").unwrap()),
    ];
    let root = CString::new("/").unwrap();
    // SAFETY: only system calls between fork and exec, on strings made before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let err = || Err(std::io::Error::last_os_error());
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return err();
            }
            let none: *const libc::c_char = std::ptr::null();
            let nodata: *const libc::c_void = std::ptr::null();
            if libc::mount(
                none,
                root.as_ptr(),
                none,
                libc::MS_REC | libc::MS_PRIVATE,
                nodata,
            ) != 0
            {
                return err();
            }
            for (src, dst) in &binds {
                if libc::mount(src.as_ptr(), dst.as_ptr(), none, libc::MS_BIND, nodata) != 0 {
                    return err();
                }
            }
            Ok(())
        });
    }
}

const PEER_HOSTS: &str =
    "127.0.0.1 localhost\n10.201.0.2 peer.chaos.test\nfd00:201::2 peer.chaos.test\n";

fn hosts_experiment(dir: &TempDir, host: &str, hold: &str) -> std::path::PathBuf {
    let p = dir.path().join(format!("{host}.toml"));
    std::fs::write(
        &p,
        format!(
            r#"
name = "by-name"
[[steps]]
  [[steps.faults]]
  kind = "network.blackhole"
  duration = "{hold}"
  interface = "cha0"
  hosts = ["{host}"]
  [[steps.faults]]
  kind = "network.rate"
  duration = "{hold}"
  interface = "cha0"
  rate = "1mbit"
  hosts = ["{host}"]
"#
        ),
    )
    .unwrap();
    p
}

/// Faults aimed at a host name: the name is resolved at plan through the system resolver
/// (here a private `/etc/hosts` that maps it to the peer's IPv4 and IPv6 address), the dry
/// run shows what it resolved to, the fault hits exactly those addresses (the peer's other
/// address still answers), `kill -9` + `recover` (without the private `/etc/hosts`, so
/// nothing could resolve the name again) leaves the namespace as it was, and a name that
/// does not resolve fails the plan and changes nothing.
#[test]
fn faults_by_host_name_hit_exactly_the_addresses_resolved_at_plan() {
    let Some(ns) = Netns::with_peer() else { return };
    let (state, dir) = (TempDir::new("chaos-net-state"), TempDir::new("chaos-net"));
    let before = ns.state();
    assert!(ns.ping("10.201.0.2") && ns.ping("10.201.0.3") && ns.ping("fd00:201::2"));
    let exp = hosts_experiment(&dir, "peer.chaos.test", "60s");

    // Dry run: the resolved addresses, nothing changed.
    let mut dry = agent(
        &ns,
        &state,
        &["run", "--dry-run", exp.to_str().unwrap()],
        None,
    );
    with_private_hosts(&mut dry, &dir, PEER_HOSTS);
    let out = dry.output().unwrap();
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("host peer.chaos.test -> 10.201.0.2, fd00:201::2 (resolved at plan)"),
        "{said}"
    );
    assert_eq!(ns.state(), before, "the dry run changed something");

    // A name that does not resolve: the plan fails naming it, nothing changed.
    let bad = hosts_experiment(&dir, "nowhere.chaos.test", "60s");
    let mut run = agent(&ns, &state, &["run", bad.to_str().unwrap()], None);
    with_private_hosts(&mut run, &dir, PEER_HOSTS);
    let out = run.output().unwrap();
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("\"nowhere.chaos.test\" does not resolve"),
        "{said}"
    );
    assert_eq!(ns.state(), before, "a failed plan changed something");

    // The real run, killed with -9 while both faults are in effect.
    let mut run = agent(&ns, &state, &["run", exp.to_str().unwrap()], None);
    with_private_hosts(&mut run, &dir, PEER_HOSTS);
    let mut child = run
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("both faults in effect", Duration::from_secs(30), || {
        let s = ns.state();
        s.contains("htb") && s.contains("chaos_")
    });
    assert!(
        !ns.ping("10.201.0.2"),
        "the name's IPv4 address still answers"
    );
    assert!(
        !ns.ping("fd00:201::2"),
        "the name's IPv6 address still answers"
    );
    assert!(ns.ping("10.201.0.3"), "another address of the peer was hit");
    let filters = ns
        .exec()
        .args(["tc", "filter", "show", "dev", "cha0"])
        .output()
        .unwrap();
    let filters = String::from_utf8_lossy(&filters.stdout).into_owned();
    assert!(
        filters.contains("0ac90002/ffffffff at 16") && !filters.contains("0ac90003"),
        "the rate fault's filters do not match exactly 10.201.0.2:\n{filters}"
    );
    child.kill().unwrap(); // SIGKILL: `ip netns exec` exec'd the agent
    child.wait().unwrap();

    let out = agent(&ns, &state, &["recover"], None).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(ns.state(), before, "recover left something behind");
    assert!(ns.ping("10.201.0.2") && ns.ping("fd00:201::2"));
    let out = agent(&ns, &state, &["recover"], None).output().unwrap();
    assert!(text(&out).contains("Nothing to recover"), "{}", text(&out));
}
