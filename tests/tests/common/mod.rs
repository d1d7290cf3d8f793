//! A sandbox per test: a private state dir, a tmpfs, and a victim process, all owned by the
//! test and removed on drop. Nothing outside them is touched.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use fault_core::testing::{TempDir, Tmpfs, Victim};

pub mod control;
pub mod netns;

/// The chaos-agent binary of this target directory, built (once per test process) so that
/// `cargo test -p chaos-tests` never runs a stale binary: this package cannot depend on a
/// binary, so cargo would not rebuild it on its own.
pub fn agent_bin() -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    built_bin(&BUILT, "chaos-agent", "chaos-agent")
}

/// The chaos-control binary (the reference control plane), built like [`agent_bin`].
pub fn control_bin() -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    built_bin(&BUILT, "chaos-control", "chaos-control")
}

fn built_bin(once: &std::sync::Once, package: &str, bin: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/<profile>/<bin>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf();
    once.call_once(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let target_dir = profile_dir.parent().expect("target dir");
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--quiet",
            "-p",
            package,
            "--bin",
            bin,
            "--target-dir",
        ])
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
        scrub_cargo_env(&mut cmd);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd
            .status()
            .unwrap_or_else(|e| panic!("run cargo build -p {package}: {e}"));
        assert!(status.success(), "cargo build -p {package} failed");
    });
    let path = profile_dir.join(bin);
    assert!(
        path.exists(),
        "{} is missing after cargo build",
        path.display()
    );
    path
}

/// With `CHAOS_E2E_KERNEL=X.Y` in the environment (e.g. `4.4`), every agent the e2e tests
/// start runs under the old-kernel filter ([`chaos_tests::oldkernel`]): system calls newer
/// than Linux X.Y answer `ENOSYS`. `CHAOS_E2E_KERNEL=4.4 cargo test -p chaos-tests` runs the
/// whole suite as on Ubuntu 16.04's kernel.
pub fn on_configured_kernel(cmd: &mut Command) {
    let Some(v) = std::env::var_os("CHAOS_E2E_KERNEL") else {
        return;
    };
    let v = v.to_string_lossy();
    let k = chaos_tests::oldkernel::Kernel::parse(&v)
        .unwrap_or_else(|| panic!("CHAOS_E2E_KERNEL={v:?}: want a version such as 4.4"));
    chaos_tests::oldkernel::restrict(cmd, k)
        .unwrap_or_else(|e| panic!("CHAOS_E2E_KERNEL={v}: {e}"));
}

pub struct Sandbox {
    pub state: TempDir,
    pub fs: Tmpfs,
    pub victim: Victim,
    pub dir: TempDir,
}

impl Sandbox {
    /// `None` (after printing why) when not root.
    pub fn new(test: &str) -> Option<Sandbox> {
        if !fault_core::host::is_root() {
            eprintln!("SKIPPED {test}: needs root (mounts a tmpfs, stops its own child process)");
            return None;
        }
        Some(Sandbox {
            state: TempDir::new("chaos-e2e-state"),
            fs: Tmpfs::mount(64 << 20).expect("mount tmpfs"),
            victim: Victim::sleeping(&format!("chaos-victim-{}", fault_core::host::random_hex(3))),
            dir: TempDir::new("chaos-e2e"),
        })
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(agent_bin());
        on_configured_kernel(&mut c);
        c.arg("--state-dir")
            .arg(self.state.path())
            .env_remove("CHAOS_AGENT_CRASH_AT");
        c
    }

    pub fn agent(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run chaos-agent")
    }

    pub fn spawn(&self, args: &[&str], crash_at: Option<&str>) -> Child {
        let mut c = self.cmd();
        c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        if let Some(p) = crash_at {
            c.env("CHAOS_AGENT_CRASH_AT", p);
        }
        c.spawn().expect("spawn chaos-agent")
    }

    /// process.stop of the victim + disk.fill of the tmpfs in one step, then a second
    /// step filling to a percentage.
    pub fn two_step_experiment(&self, hold: &str) -> PathBuf {
        self.write(
            "exp.toml",
            &format!(
                r#"
name = "e2e"
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
[[steps]]
name = "fill more"
  [[steps.faults]]
  kind = "disk.fill"
  duration = "{hold}"
  path = "{fs}"
  percent = 50
"#,
                pid = self.victim.pid(),
                fs = self.fs.path().display()
            ),
        )
    }

    pub fn fill_files(&self) -> Vec<String> {
        std::fs::read_dir(self.fs.path())
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with(".chaos-agent-fill-"))
            .collect()
    }

    pub fn used_bytes(&self) -> u64 {
        let c = std::ffi::CString::new(self.fs.path().as_os_str().as_encoded_bytes()).unwrap();
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
        (st.f_blocks - st.f_bfree) as u64 * st.f_frsize as u64
    }

    /// The host is as before: victim running, no fill file, nothing used on the tmpfs,
    /// and `status` says every record is reverted.
    pub fn assert_clean(&self, context: &str) {
        // SIGCONT takes effect at once, but give the scheduler a moment to show it.
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.victim.state() == Some('T') && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let state = self.victim.state();
        assert!(
            matches!(state, Some('S') | Some('R')),
            "{context}: victim state {state:?}"
        );
        assert_eq!(
            self.fill_files(),
            Vec::<String>::new(),
            "{context}: fill files left"
        );
        assert_eq!(self.used_bytes(), 0, "{context}: tmpfs not empty");
        let status = self.agent(&["status", "--json"]);
        let records: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
        for r in records.as_array().unwrap() {
            assert_eq!(
                r["state"], "reverted",
                "{context}: journal record not reverted: {r}"
            );
        }
        assert!(
            status.status.success(),
            "{context}: status exit {:?}",
            status.status
        );
    }

    pub fn records(&self) -> Vec<serde_json::Value> {
        let status = self.agent(&["status", "--json"]);
        serde_json::from_slice::<serde_json::Value>(&status.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Wait for a child with a deadline; kill it if it overruns.
pub fn wait_with_deadline(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let end = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("chaos-agent did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Read JSON events from a `run --json` child's stdout until `pred` matches one.
pub fn wait_for_event(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    for line in lines {
        let line = line.expect("read event");
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad event {line}: {e}"));
        if pred(&v) {
            return v;
        }
    }
    panic!("chaos-agent ended before the expected event");
}

pub fn fault_state(v: &serde_json::Value, kind: &str, state: &str) -> bool {
    v["event"] == "fault" && v["kind"] == kind && v["state"] == state
}

/// Remove from a nested `cargo build` what cargo set for this test process: it describes
/// this package, not the build, and some dependencies' build scripts watch these (ring:
/// `CARGO_MANIFEST_DIR`); seeing them changed would rebuild them here and again in the next
/// `cargo test`.
pub fn scrub_cargo_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("CARGO_PKG_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
            ]
            .contains(&k.as_str())
        {
            cmd.env_remove(&k);
        }
    }
}
