//! Test sandboxes: two network namespaces joined by a veth pair, created with `ip` and
//! deleted on drop, and helpers that run closures on threads that entered a namespace.
//! Nothing here touches the host's own interfaces.

#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::Command;

/// Run `argv` and panic with its stderr on failure.
pub fn run(argv: &[&str]) -> String {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{argv:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two namespaces `a` and `b`, veth `if_a` (in a, 10.77.0.1/24) <-> `if_b` (in b,
/// 10.77.0.2/24 and 10.77.0.3/24).
pub struct Pair {
    pub ns_a: String,
    pub ns_b: String,
    pub if_a: String,
    pub if_b: String,
}

pub const IP_A: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
pub const IP_B: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
pub const IP_B2: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 3);

impl Pair {
    pub fn new() -> Pair {
        let id = fault_core::host::random_hex(3);
        let p = Pair {
            ns_a: format!("chaos-t-{id}-a"),
            ns_b: format!("chaos-t-{id}-b"),
            if_a: format!("vta{id}"),
            if_b: format!("vtb{id}"),
        };
        run(&["ip", "netns", "add", &p.ns_a]);
        run(&["ip", "netns", "add", &p.ns_b]);
        run(&[
            "ip", "-n", &p.ns_a, "link", "add", &p.if_a, "type", "veth", "peer", "name", &p.if_b,
            "netns", &p.ns_b,
        ]);
        for (ns, ifn, addrs) in [
            (&p.ns_a, &p.if_a, vec!["10.77.0.1/24"]),
            (&p.ns_b, &p.if_b, vec!["10.77.0.2/24", "10.77.0.3/24"]),
        ] {
            for a in addrs {
                run(&["ip", "-n", ns, "addr", "add", a, "dev", ifn]);
            }
            run(&["ip", "-n", ns, "link", "set", ifn, "up"]);
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            run(&[
                "ip",
                "-n",
                ns,
                "route",
                "add",
                "default",
                "via",
                "10.77.0.254",
                "dev",
                ifn,
                "onlink",
            ]);
        }
        p
    }

    /// `tc qdisc show dev <if_a>` in namespace a (test-side observation only).
    pub fn qdiscs_a(&self) -> String {
        run(&[
            "ip", "netns", "exec", &self.ns_a, "tc", "qdisc", "show", "dev", &self.if_a,
        ])
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.ns_a])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.ns_b])
            .status();
    }
}

fn enter(ns: &str) {
    let f = std::fs::File::open(format!("/run/netns/{ns}")).expect("open netns");
    // SAFETY: f is an open namespace fd; setns affects only this thread.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}

/// Run `f` on a fresh thread inside namespace `ns` and return its result.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    spawn_in(ns, f).join().expect("thread in netns panicked")
}

/// Start `f` on a fresh thread inside namespace `ns`.
pub fn spawn_in<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter(&ns);
        f()
    })
}
