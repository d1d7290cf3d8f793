//! `chaos-agent doctor`: what this host offers the fault kinds, each kind's availability
//! with its reasons and fixes, and whether the state directory is usable. Reads only:
//! nothing on the host changes, the state lock is not taken, no journal is created.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use chaos_engine::journal::{self, Entry, Journal, RecordState, StateLock};
use fault_core::host::probe::{self, Cap};
use fault_core::{Level, Registry};
use serde::Serialize;

use crate::exit;

macro_rules! say {
    ($($t:tt)*) => {
        writeln!(std::io::stdout().lock(), $($t)*)?
    };
}

#[derive(Serialize)]
struct Report<'a> {
    agent_version: &'static str,
    host: HostSection<'a>,
    kinds: Vec<KindRow>,
    counts: Counts,
    state_dir: StateSection,
    exit_status: u8,
}

#[derive(Serialize)]
struct HostSection<'a> {
    #[serde(flatten)]
    probe: &'a probe::Host,
    capabilities: Vec<CapRow>,
    arch: &'static str,
    libc: String,
}

#[derive(Serialize)]
struct CapRow {
    name: &'static str,
    effective: bool,
}

#[derive(Serialize)]
struct KindRow {
    kind: &'static str,
    #[serde(flatten)]
    availability: fault_core::Availability,
}

#[derive(Serialize, Default)]
struct Counts {
    available: usize,
    degraded: usize,
    unavailable: usize,
}

#[derive(Serialize, Default)]
struct StateSection {
    path: PathBuf,
    exists: bool,
    owner_uid: Option<u32>,
    mode: Option<String>,
    /// Why the agent would refuse it (owner, mode, not a directory); `None` when usable.
    problem: Option<String>,
    /// The pid holding its lock (a run, or the daemon); `None` when free.
    lock_held_by: Option<u32>,
    /// Journal records that are not `reverted` (or unreadable).
    not_reverted: Vec<NotReverted>,
    /// Why the journal could not be read.
    journal_error: Option<String>,
}

#[derive(Serialize)]
struct NotReverted {
    fault_id: String,
    kind: String,
    state: String,
}

/// The libc this binary runs on.
fn libc_name() -> String {
    #[cfg(target_env = "musl")]
    {
        "musl (statically linked)".to_string()
    }
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: gnu_get_libc_version returns a static NUL-terminated string.
        let v = unsafe { std::ffi::CStr::from_ptr(libc::gnu_get_libc_version()) };
        format!("glibc {} (dynamically linked)", v.to_string_lossy())
    }
    #[cfg(not(any(target_env = "musl", target_env = "gnu")))]
    {
        "unknown".to_string()
    }
}

fn state_section(dir: &Path) -> StateSection {
    let mut s = StateSection {
        path: dir.to_path_buf(),
        ..StateSection::default()
    };
    match std::fs::metadata(dir) {
        Ok(m) => {
            s.exists = true;
            s.owner_uid = Some(m.uid());
            s.mode = Some(format!("{:04o}", m.mode() & 0o7777));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => s.problem = Some(format!("cannot read {}: {e}", dir.display())),
    }
    if s.problem.is_none() {
        if let Err(e) = journal::check_state_dir(dir) {
            s.problem = Some(e.to_string());
        }
    }
    s.lock_held_by = StateLock::holder(dir);
    // Open the journal only when it is there and the directory passes the checks, so
    // asking creates nothing.
    if s.problem.is_none() && dir.join("journal").is_dir() {
        match Journal::open(dir).and_then(|j| j.load()) {
            Ok(entries) => {
                for e in entries {
                    match e {
                        Entry::Ok(r) if r.state == RecordState::Reverted => {}
                        Entry::Ok(r) => s.not_reverted.push(NotReverted {
                            fault_id: r.fault_id,
                            kind: r.kind,
                            state: r.state.as_str().to_string(),
                        }),
                        Entry::Corrupt { fault_id, .. } => s.not_reverted.push(NotReverted {
                            fault_id,
                            kind: String::new(),
                            state: "corrupt".into(),
                        }),
                    }
                }
            }
            Err(e) => s.journal_error = Some(e.to_string()),
        }
    }
    s
}

/// The exit status, as `chaos-agent doctor --help` documents it.
fn status_of(s: &StateSection) -> u8 {
    if s.problem.is_some() {
        exit::INVALID
    } else if s.journal_error.is_some() {
        exit::FAILED
    } else if s.not_reverted.is_empty() {
        exit::OK
    } else if s.lock_held_by.is_some() {
        exit::BUSY
    } else {
        exit::NOT_CLEAN
    }
}

pub(crate) fn run(registry: &Registry, state_dir: &Path, json: bool) -> anyhow::Result<u8> {
    let host = probe::host();
    let mut counts = Counts::default();
    let kinds: Vec<KindRow> = registry
        .kinds()
        .map(|e| {
            let availability = (e.availability)();
            match availability.level {
                Level::Available => counts.available += 1,
                Level::Degraded => counts.degraded += 1,
                Level::Unavailable => counts.unavailable += 1,
            }
            KindRow {
                kind: e.kind,
                availability,
            }
        })
        .collect();
    let state = state_section(state_dir);
    let report = Report {
        agent_version: env!("CARGO_PKG_VERSION"),
        host: HostSection {
            probe: host,
            capabilities: Cap::ALL
                .iter()
                .map(|c| CapRow {
                    name: c.name(),
                    effective: host.has_cap(*c),
                })
                .collect(),
            arch: std::env::consts::ARCH,
            libc: libc_name(),
        },
        kinds,
        counts,
        exit_status: status_of(&state),
        state_dir: state,
    };
    if json {
        say!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        human(&report)?;
    }
    Ok(report.exit_status)
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn human(r: &Report<'_>) -> anyhow::Result<()> {
    let h = r.host.probe;
    let row = |label: &str, value: String| format!("  {label:<14}{value}");
    say!("Host");
    say!("{}", row("kernel", h.kernel.clone()));
    say!(
        "{}",
        row(
            "distro",
            if h.distro.is_empty() {
                "unknown (no /etc/os-release)".into()
            } else {
                h.distro.clone()
            }
        )
    );
    let init = match (&h.init.systemd, &h.init.systemd_version) {
        (true, Some(v)) => format!("systemd {v}"),
        (true, None) => "systemd (systemctl --version did not answer)".into(),
        (false, _) => format!(
            "not systemd (PID 1 is {}; /run/systemd/system is missing)",
            if h.init.pid1.is_empty() {
                "unreadable".into()
            } else {
                format!("{:?}", h.init.pid1)
            }
        ),
    };
    say!("{}", row("init", init));
    let mut cg = h.cgroups.layout.human().to_string();
    if let Some(m) = &h.cgroups.v2_mount {
        cg.push_str(&format!("; cgroup2 at {}", m.display()));
    }
    if !h.cgroups.v1_controllers.is_empty() {
        cg.push_str(&format!("; v1: {}", h.cgroups.v1_controllers.join(" ")));
    }
    say!("{}", row("cgroups", cg));
    say!(
        "{}",
        row(
            "",
            format!(
                "cgroup.kill: {}; may create cgroups in: {}; memory controller: {}",
                h.cgroup_kill.map_or("no cgroup2", yes),
                if h.cgroups_writable.is_empty() {
                    "none".to_string()
                } else {
                    h.cgroups_writable.join(", ")
                },
                yes(h.memory_controller)
            )
        )
    );
    say!(
        "{}",
        row(
            "pidfd",
            format!(
                "pidfd_open: {}, pidfd_send_signal: {}",
                yes(h.pidfd_open),
                yes(h.pidfd_send_signal)
            )
        )
    );
    let caps: Vec<String> = r
        .host
        .capabilities
        .iter()
        .map(|c| format!("{} {}", c.name, yes(c.effective)))
        .collect();
    say!(
        "{}",
        row(
            "capabilities",
            format!("{} (uid {})", caps.join(", "), h.euid)
        )
    );
    say!(
        "{}",
        row(
            "kernel config",
            h.kernel_config
                .clone()
                .unwrap_or_else(|| "not found (/proc/config.gz, /boot/config-*)".into())
        )
    );
    say!(
        "{}",
        row(
            "binary",
            format!(
                "chaos-agent {}, {}, {}",
                r.agent_version, r.host.arch, r.host.libc
            )
        )
    );

    let c = &r.counts;
    say!(
        "\nFault kinds ({} available, {} degraded, {} unavailable)",
        c.available,
        c.degraded,
        c.unavailable
    );
    let w = r.kinds.iter().map(|k| k.kind.len()).max().unwrap_or(0);
    for k in &r.kinds {
        say!("  {:<w$}  {}", k.kind, k.availability.level);
        for reason in &k.availability.reasons {
            say!("  {:<w$}    - {reason}", "");
        }
        for fix in &k.availability.fixes {
            say!("  {:<w$}    fix: {fix}", "");
        }
    }

    let s = &r.state_dir;
    say!("\nState directory {}", s.path.display());
    if s.exists {
        say!(
            "{}",
            row(
                "owner, mode",
                format!(
                    "uid {}, {}",
                    s.owner_uid.unwrap_or_default(),
                    s.mode.as_deref().unwrap_or("?")
                )
            )
        );
    } else if s.problem.is_none() {
        say!(
            "{}",
            row(
                "exists",
                "no (the first run creates it, mode 0700)".to_string()
            )
        );
    }
    say!(
        "{}",
        row(
            "checks",
            match &s.problem {
                None => "ok: owned by this user, not writable by group or others".to_string(),
                Some(p) => format!("REFUSED: {p}"),
            }
        )
    );
    say!(
        "{}",
        row(
            "lock",
            match s.lock_held_by {
                None => "free".to_string(),
                Some(pid) => format!("held by pid {pid} (a run, or the daemon)"),
            }
        )
    );
    let journal = if let Some(e) = &s.journal_error {
        format!("unreadable: {e}")
    } else if s.not_reverted.is_empty() {
        "every record reverted (or none yet)".to_string()
    } else {
        format!(
            "{} record(s) not reverted: {} (see `chaos-agent status`; `chaos-agent recover` reverts them)",
            s.not_reverted.len(),
            s.not_reverted
                .iter()
                .map(|n| format!("{} {} {}", n.fault_id, n.kind, n.state))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    say!("{}", row("journal", journal));
    Ok(())
}
