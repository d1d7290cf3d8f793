//! DNS faults through the real agent, inside a mount + network namespace the test creates:
//! `/etc` there is an overlay on the machine's `/etc` whose upper layer is a tmpfs of the
//! namespace, so the agent edits the real paths `/etc/hosts` and `/etc/resolv.conf` while
//! the machine's own files are never touched. An upstream DNS server of the test's (a
//! thread in the namespace's network) answers 192.0.2.7 for every name, so "resolves as
//! before" and "falls back to the original nameserver" are observable. `getent` runs in
//! the same namespaces (nsenter on the holder process).

mod common;

use std::io::{BufRead, Write};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{fault_state, text, wait_for_event, wait_with_deadline};
use fault_core::testing::TempDir;

const HOSTS0: &str =
    "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n10.0.0.5 db.test\n# the end\n";
const RESOLV0: &str =
    "# test resolver\nsearch corp.test\nnameserver 127.0.0.99\noptions rotate timeout:1 attempts:1\n";
const STUB: &str = "/etc/chaos-test-stub-resolv.conf";
const UPSTREAM: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 99);
const ANSWER: &str = "192.0.2.7";

/// A process holding a private mount + network namespace, `/etc` overlaid, `lo` up, and
/// the upstream DNS server. Everything dies with it.
struct Ns {
    holder: Child,
    _mnt: TempDir,
    stop: Arc<AtomicBool>,
    upstream: Option<std::thread::JoinHandle<()>>,
}

impl Ns {
    fn new(test: &str) -> Option<Ns> {
        if !fault_core::host::is_root() {
            eprintln!("SKIPPED {test}: needs root (mount and network namespaces)");
            return None;
        }
        for tool in [
            ["unshare", "--version"],
            ["nsenter", "--version"],
            ["getent", "--help"],
            ["ip", "-V"],
        ] {
            if Command::new(tool[0]).arg(tool[1]).output().is_err() {
                eprintln!("SKIPPED {test}: `{}` is not installed", tool[0]);
                return None;
            }
        }
        let holder = Command::new("unshare")
            .args([
                "--mount",
                "--net",
                "--propagation",
                "private",
                "--",
                "sleep",
                "3600",
            ])
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn unshare");
        let pid = holder.id();
        let me = std::fs::read_link("/proc/self/ns/mnt").unwrap();
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let moved = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).is_ok_and(|n| n != me);
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if moved && comm.trim() == "sleep" {
                break;
            }
            assert!(Instant::now() < end, "unshare did not make its namespaces");
            std::thread::sleep(Duration::from_millis(10));
        }
        let mnt = TempDir::new("chaos-dns-ovl");
        let mut ns = Ns {
            holder,
            _mnt: mnt,
            stop: Arc::new(AtomicBool::new(false)),
            upstream: None,
        };
        ns.must(&["ip", "link", "set", "lo", "up"]);
        let m = ns._mnt.path().to_str().unwrap().to_string();
        ns.must(&["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", &m]);
        std::fs::create_dir(ns.root(&format!("{m}/u"))).unwrap();
        std::fs::create_dir(ns.root(&format!("{m}/w"))).unwrap();
        let opts = format!("lowerdir=/etc,upperdir={m}/u,workdir={m}/w");
        let o = ns.exec(&["mount", "-t", "overlay", "overlay", "-o", &opts, "/etc"]);
        if !o.status.success() {
            eprintln!(
                "SKIPPED {test}: cannot overlay /etc in a mount namespace: {}",
                text(&o)
            );
            return None;
        }
        ns.put("/etc/hosts", HOSTS0);
        ns.put("/etc/resolv.conf", RESOLV0);
        ns.upstream = Some(ns.start_upstream());
        Some(ns)
    }

    fn pid(&self) -> u32 {
        self.holder.id()
    }

    /// A path inside the namespace, as the test (outside it) reaches it.
    fn root(&self, p: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{p}", self.pid()))
    }

    fn cmd(&self, argv: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.pid().to_string(), "-m", "-n", "--"])
            .args(argv);
        c
    }

    fn exec(&self, argv: &[&str]) -> Output {
        self.cmd(argv).output().unwrap()
    }

    fn must(&self, argv: &[&str]) -> Output {
        let o = self.exec(argv);
        assert!(o.status.success(), "{argv:?}: {}", text(&o));
        o
    }

    fn put(&self, p: &str, text: &str) {
        let path = self.root(p);
        let _ = std::fs::remove_file(&path);
        std::fs::write(path, text).unwrap();
    }

    /// A file's text as seen inside the namespace (an absolute symlink there would resolve
    /// against the test's root through /proc/PID/root).
    fn get(&self, p: &str) -> String {
        String::from_utf8(self.must(&["cat", "--", p]).stdout).unwrap()
    }

    fn is_symlink(&self, p: &str) -> Option<PathBuf> {
        std::fs::read_link(self.root(p)).ok()
    }

    /// `/etc/resolv.conf` a symlink to a stub file holding [`RESOLV0`].
    fn symlink_resolv(&self) {
        self.put(STUB, RESOLV0);
        let _ = std::fs::remove_file(self.root("/etc/resolv.conf"));
        std::os::unix::fs::symlink(STUB, self.root("/etc/resolv.conf")).unwrap();
    }

    /// What `getent hosts NAME` says inside the namespace: the first address, or `None`
    /// when the name does not resolve (exit 2).
    fn resolve(&self, name: &str) -> Option<String> {
        let o = self.exec(&["getent", "hosts", name]);
        match o.status.code() {
            Some(0) => Some(
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .to_string(),
            ),
            Some(2) => None,
            _ => panic!("getent hosts {name}: {}", text(&o)),
        }
    }

    /// The agent inside the namespace (nsenter execs it, so the child is the agent).
    fn agent(&self, state: &TempDir, args: &[&str]) -> Command {
        let mut c = self.cmd(&[]);
        common::on_configured_kernel(&mut c);
        c.arg(common::agent_bin())
            .arg("--state-dir")
            .arg(state.path())
            .args(args)
            .env_remove("CHAOS_AGENT_CRASH_AT");
        c
    }

    /// A thread in the namespace's network answering every A query with [`ANSWER`] (and
    /// other types with no data), on [`UPSTREAM`]:53.
    fn start_upstream(&self) -> std::thread::JoinHandle<()> {
        let net = std::fs::File::open(format!("/proc/{}/ns/net", self.pid())).unwrap();
        let stop = self.stop.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let h = std::thread::spawn(move || {
            // SAFETY: setns on an fd we hold; affects only this thread.
            assert_eq!(
                unsafe { libc::setns(net.as_raw_fd(), libc::CLONE_NEWNET) },
                0
            );
            let s = UdpSocket::bind(SocketAddrV4::new(UPSTREAM, 53)).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            tx.send(()).unwrap();
            let mut buf = [0u8; 1500];
            while !stop.load(Ordering::SeqCst) {
                let Ok((n, from)) = s.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(r) = upstream_reply(&buf[..n]) {
                    let _ = s.send_to(&r, from);
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("upstream DNS server started");
        h
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.upstream.take() {
            let _ = h.join();
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// The upstream's reply: A -> [`ANSWER`], anything else NOERROR without data.
fn upstream_reply(q: &[u8]) -> Option<Vec<u8>> {
    if q.len() < 12 || q[2] & 0x80 != 0 {
        return None;
    }
    let mut i = 12;
    while *q.get(i)? != 0 {
        i += 1 + q[i] as usize;
    }
    let end = i + 5;
    let qtype = u16::from_be_bytes([*q.get(i + 1)?, *q.get(i + 2)?]);
    let a = qtype == 1;
    let mut r = q[..2].to_vec();
    r.extend_from_slice(&[0x81, 0x80, 0, 1, 0, u8::from(a), 0, 0, 0, 0]);
    r.extend_from_slice(q.get(12..end)?);
    if a {
        r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4, 192, 0, 2, 7]);
    }
    Some(r)
}

fn experiment(dir: &TempDir, name: &str, spoof: (&str, &str), error: &[&str]) -> PathBuf {
    let p = dir.path().join(format!("{name}.toml"));
    let names: Vec<String> = error.iter().map(|n| format!("{n:?}")).collect();
    std::fs::write(
        &p,
        format!(
            r#"
name = "{name}"
[[steps]]
  [[steps.faults]]
  kind = "dns.spoof"
  duration = "10m"
  names = ["{}"]
  addresses = ["{}"]
  [[steps.faults]]
  kind = "dns.error"
  duration = "10m"
  names = [{}]
"#,
            spoof.0,
            spoof.1,
            names.join(", ")
        ),
    )
    .unwrap();
    p
}

/// Start `run --json` and wait until both faults hold.
fn start(ns: &Ns, state: &TempDir, exp: &Path) -> Child {
    let mut child = ns
        .agent(state, &["run", "--json", exp.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    // The two faults of the step hold in either order.
    let mut holding = std::collections::BTreeSet::new();
    while holding.len() < 2 {
        let ev = wait_for_event(&mut lines, |v| {
            fault_state(v, "dns.spoof", "holding") || fault_state(v, "dns.error", "holding")
        });
        holding.insert(ev["kind"].as_str().unwrap().to_string());
    }
    // Keep reading so the agent never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    child
}

fn sigterm(child: &mut Child) {
    // SAFETY: a child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let st = wait_with_deadline(child, Duration::from_secs(30));
    // 130: the run was aborted, and everything reverted (not clean would be 3).
    assert_eq!(st.code(), Some(130), "agent exit after SIGTERM: {st:?}");
}

#[test]
fn spoof_and_error_hold_during_the_run_and_a_persons_line_survives() {
    let Some(ns) = Ns::new("spoof_and_error_hold_during_the_run") else {
        return;
    };
    let (state, dir) = (TempDir::new("chaos-dns-state"), TempDir::new("chaos-dns"));
    // Before: everything resolves through the files or the upstream.
    assert_eq!(ns.resolve("db.test").as_deref(), Some("10.0.0.5"));
    assert_eq!(ns.resolve("blocked.test").as_deref(), Some(ANSWER));
    let exp = experiment(
        &dir,
        "dns",
        ("db.test", "10.1.2.4"),
        &["blocked.test", "*.bad.test"],
    );
    let mut child = start(&ns, &state, &exp);

    assert_eq!(
        ns.resolve("db.test").as_deref(),
        Some("10.1.2.4"),
        "spoofed"
    );
    assert_eq!(ns.resolve("blocked.test"), None, "NXDOMAIN");
    assert_eq!(ns.resolve("x.bad.test"), None, "NXDOMAIN below *.bad.test");
    assert_eq!(ns.resolve("a.b.bad.test"), None);
    // Other names: our responder answers REFUSED, glibc asks the next nameserver.
    assert_eq!(ns.resolve("bad.test").as_deref(), Some(ANSWER));
    assert_eq!(ns.resolve("other.test").as_deref(), Some(ANSWER));
    let resolv = ns.get("/etc/resolv.conf");
    assert!(
        resolv.contains("#chaos-agent "),
        "rotate disabled:\n{resolv}"
    );
    assert!(
        resolv.contains("options timeout:1 attempts:1 # chaos-agent "),
        "{resolv}"
    );
    // A person adds a line during the fault.
    std::fs::OpenOptions::new()
        .append(true)
        .open(ns.root("/etc/hosts"))
        .unwrap()
        .write_all(b"10.9.9.9 person.test\n")
        .unwrap();

    sigterm(&mut child);
    assert_eq!(
        ns.get("/etc/hosts"),
        format!("{HOSTS0}10.9.9.9 person.test\n")
    );
    assert_eq!(ns.get("/etc/resolv.conf"), RESOLV0);
    assert_eq!(ns.resolve("db.test").as_deref(), Some("10.0.0.5"));
    assert_eq!(ns.resolve("blocked.test").as_deref(), Some(ANSWER));
    assert_eq!(ns.resolve("person.test").as_deref(), Some("10.9.9.9"));
}

#[test]
fn kill_9_during_the_fault_then_recover_puts_the_symlink_back() {
    let Some(ns) = Ns::new("kill_9_during_the_fault_then_recover") else {
        return;
    };
    ns.symlink_resolv();
    let (state, dir) = (TempDir::new("chaos-dns-state"), TempDir::new("chaos-dns"));
    let exp = experiment(&dir, "dns", ("api.test", "10.1.2.3"), &["blocked.test"]);
    let mut child = start(&ns, &state, &exp);
    assert_eq!(
        ns.is_symlink("/etc/resolv.conf"),
        None,
        "a regular file during the fault"
    );
    assert_eq!(ns.resolve("blocked.test"), None);
    assert_eq!(ns.resolve("api.test").as_deref(), Some("10.1.2.3"));

    child.kill().unwrap(); // SIGKILL: nsenter exec'd the agent
    child.wait().unwrap();
    // The responder died with the agent: the resolver falls back to the upstream at once.
    assert_eq!(ns.resolve("blocked.test").as_deref(), Some(ANSWER));
    assert!(ns.get("/etc/resolv.conf").contains("# chaos-agent "));

    let out = ns.agent(&state, &["recover"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        ns.is_symlink("/etc/resolv.conf").as_deref(),
        Some(Path::new(STUB))
    );
    assert_eq!(ns.get(STUB), RESOLV0, "the stub is never written");
    assert_eq!(ns.get("/etc/hosts"), HOSTS0);
    assert_eq!(ns.resolve("api.test").as_deref(), Some(ANSWER));
    let out = ns.agent(&state, &["recover"]).output().unwrap();
    assert!(text(&out).contains("Nothing to recover"), "{}", text(&out));
}

#[test]
fn two_overlapping_faults_revert_in_either_order_byte_for_byte() {
    for (first_a, symlink) in [(true, false), (false, false), (true, true), (false, true)] {
        let Some(ns) = Ns::new("two_overlapping_faults_revert_in_either_order") else {
            return;
        };
        let case = format!("A first: {first_a}, symlink: {symlink}");
        if symlink {
            ns.symlink_resolv();
        }
        let dir = TempDir::new("chaos-dns");
        let (sa, sb) = (TempDir::new("chaos-dns-a"), TempDir::new("chaos-dns-b"));
        let ea = experiment(&dir, "a", ("api.test", "10.1.2.3"), &["blocked.test"]);
        let eb = experiment(
            &dir,
            "b",
            ("db.test", "10.1.2.4"),
            &["*.bad.test", "blocked.test"],
        );
        let mut a = start(&ns, &sa, &ea);
        let mut b = start(&ns, &sb, &eb);
        assert_eq!(
            ns.resolve("api.test").as_deref(),
            Some("10.1.2.3"),
            "{case}"
        );
        assert_eq!(ns.resolve("db.test").as_deref(), Some("10.1.2.4"), "{case}");
        assert_eq!(ns.resolve("x.bad.test"), None, "{case}");
        assert_eq!(ns.resolve("blocked.test"), None, "{case}");
        let (first, second) = if first_a {
            (&mut a, &mut b)
        } else {
            (&mut b, &mut a)
        };
        sigterm(first);
        // The other fault still holds.
        assert_eq!(ns.resolve("blocked.test"), None, "{case}");
        sigterm(second);
        assert_eq!(ns.get("/etc/hosts"), HOSTS0, "{case}");
        assert_eq!(ns.get("/etc/resolv.conf"), RESOLV0, "{case}");
        if symlink {
            assert_eq!(
                ns.is_symlink("/etc/resolv.conf").as_deref(),
                Some(Path::new(STUB)),
                "{case}"
            );
        } else {
            assert_eq!(ns.is_symlink("/etc/resolv.conf"), None, "{case}");
        }
        assert_eq!(
            ns.resolve("blocked.test").as_deref(),
            Some(ANSWER),
            "{case}"
        );
    }
}

/// A person edits the regular file that replaced the symlinked `/etc/resolv.conf` during
/// the fault: revert removes the fault's lines, keeps the person's file, and ends
/// needs-manual with the command that puts the link back; nothing is lost.
#[test]
fn a_person_editing_the_symlinked_resolv_conf_gets_the_file_kept_and_a_command() {
    let Some(ns) = Ns::new("a_person_editing_the_symlinked_resolv_conf") else {
        return;
    };
    ns.symlink_resolv();
    let (state, dir) = (TempDir::new("chaos-dns-state"), TempDir::new("chaos-dns"));
    let exp = experiment(&dir, "dns", ("api.test", "10.1.2.3"), &["blocked.test"]);
    let mut child = start(&ns, &state, &exp);
    let during = ns.get("/etc/resolv.conf");
    ns.put("/etc/resolv.conf", &format!("{during}search person.test\n"));
    // SAFETY: a child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let st = wait_with_deadline(&mut child, Duration::from_secs(120));
    assert_eq!(
        st.code(),
        Some(3),
        "not clean: a record needs a person ({st:?})"
    );
    assert_eq!(
        ns.is_symlink("/etc/resolv.conf"),
        None,
        "the person's file is kept"
    );
    assert_eq!(
        ns.get("/etc/resolv.conf"),
        format!("{RESOLV0}search person.test\n")
    );
    assert_eq!(ns.get("/etc/hosts"), HOSTS0);
    assert_eq!(ns.get(STUB), RESOLV0);
    let out = ns.agent(&state, &["status"]).output().unwrap();
    let said = text(&out);
    assert_eq!(out.status.code(), Some(3), "{said}");
    assert!(
        said.contains(&format!("ln -sfn -- {STUB} /etc/resolv.conf")),
        "{said}"
    );
    assert!(said.contains("was a symlink to"), "{said}");
}
