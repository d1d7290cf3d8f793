//! A network namespace per test, holding a veth pair, deleted on drop: network faults act
//! only there, never on the machine's own interfaces.

use std::os::fd::AsRawFd;
use std::process::{Command, Output};

use super::text;

pub struct Netns {
    pub name: String,
    /// A second namespace holding `cha1`, when made by [`Netns::with_peer`].
    pub peer: Option<String>,
}

impl Netns {
    /// A namespace holding a veth pair `cha0`/`cha1`, both up, with addresses.
    pub fn new() -> Option<Netns> {
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
            peer: None,
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

    /// Two namespaces joined by a veth pair, so traffic between them really crosses `cha0`:
    /// this one holds `cha0` (10.201.0.1/24, fd00:201::1/64), the peer `cha1` (10.201.0.2/24,
    /// 10.201.0.3/24, fd00:201::2/64).
    pub fn with_peer() -> Option<Netns> {
        if Command::new("ping").arg("-V").output().is_err() {
            eprintln!("SKIPPED network e2e: `ping` is not installed");
            return None;
        }
        let mut ns = Netns::new()?;
        let peer = format!("{}-peer", ns.name);
        ns.sh(&["ip", "netns", "add", &peer]);
        ns.peer = Some(peer.clone());
        ns.ip(&["link", "set", "cha1", "netns", &peer]);
        ns.ip(&["addr", "add", "fd00:201::1/64", "dev", "cha0", "nodad"]);
        for args in [
            &["addr", "add", "10.201.0.2/24", "dev", "cha1"][..],
            &["addr", "add", "10.201.0.3/24", "dev", "cha1"],
            &["addr", "add", "fd00:201::2/64", "dev", "cha1", "nodad"],
            &["link", "set", "cha1", "up"],
            &["link", "set", "lo", "up"],
        ] {
            let mut argv = vec!["ip", "-n", &peer];
            argv.extend_from_slice(args);
            ns.sh(&argv);
        }
        Some(ns)
    }

    /// Whether one ping from this namespace to `addr` gets an answer within a second.
    pub fn ping(&self, addr: &str) -> bool {
        self.exec()
            .args(["ping", "-n", "-q", "-c", "1", "-W", "1", addr])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success()
    }

    pub fn sh(&self, argv: &[&str]) -> Output {
        let out = Command::new(argv[0]).args(&argv[1..]).output().unwrap();
        assert!(out.status.success(), "{argv:?}: {}", text(&out));
        out
    }

    pub fn ip(&self, args: &[&str]) {
        let mut argv = vec!["ip", "-n", &self.name];
        argv.extend_from_slice(args);
        self.sh(&argv);
    }

    pub fn exec(&self) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]);
        c
    }

    /// The index of an interface inside the namespace.
    pub fn ifindex(&self, name: &str) -> u32 {
        let out = self.sh(&["ip", "-n", &self.name, "-o", "link", "show", name]);
        let s = String::from_utf8_lossy(&out.stdout);
        s.split(':').next().unwrap().trim().parse().unwrap()
    }

    /// Remove the namespace's name, keeping it alive only through the returned descriptor:
    /// no process, bind mount or `/run/netns` entry refers to it any more, so nothing that
    /// looks for it can find it.
    pub fn detach(&self) -> std::fs::File {
        let f = std::fs::File::open(format!("/run/netns/{}", self.name)).unwrap();
        self.sh(&["ip", "netns", "del", &self.name]);
        assert!(!std::path::Path::new(&format!("/run/netns/{}", self.name)).exists());
        f
    }

    /// Give a detached namespace its name back (a bind mount, as `ip netns add` makes).
    pub fn reattach(&self, held: &std::fs::File) {
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
    pub fn state(&self) -> String {
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
        if let Some(peer) = &self.peer {
            let _ = Command::new("ip").args(["netns", "del", peer]).status();
        }
    }
}
