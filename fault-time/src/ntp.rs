//! The NTP services that would undo a clock fault, found and paused for its duration.
//!
//! Where systemd is init (`/run/systemd/system` is a directory) the services are the units
//! of [`UNITS`] that are active: `systemctl stop` pauses them and `systemctl start` brings
//! them back. Elsewhere they are the processes named in [`PROCESSES`] that run (not already
//! stopped): `SIGSTOP` freezes them and `SIGCONT` resumes them, each identified by pid, start
//! time and boot id so that a reused pid is never signalled. `systemctl` is run with an
//! argument vector, `--` before unit names, and only ever on a name of [`UNITS`].

use std::path::Path;
use std::time::Duration;

use fault_core::host::process::{all_pids, ProcessId, Stat};
use fault_core::host::{shell, systemctl};
use fault_core::{shell_cmd, Result};
use serde::{Deserialize, Serialize};

/// The NTP units of Debian, Ubuntu, Fedora, RHEL, SUSE and Arch (aliases included).
pub const UNITS: [&str; 7] = [
    "systemd-timesyncd.service",
    "chrony.service",
    "chronyd.service",
    "ntp.service",
    "ntpd.service",
    "ntpsec.service",
    "openntpd.service",
];

/// Process names (`/proc/PID/comm`, cut to 15 characters) of NTP daemons, for hosts where
/// systemd is not init.
pub const PROCESSES: [&str; 4] = ["systemd-timesyn", "chronyd", "ntpd", "openntpd"];

/// How long one `systemctl` call may take.
const SYSTEMCTL_TIMEOUT: Duration = Duration::from_secs(90);

/// An NTP service that was running before the fault, and that the fault paused.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NtpService {
    /// The systemd unit (`systemd-timesyncd.service`), or, when systemd is not init, the
    /// process name (`chronyd`).
    pub name: String,
    /// When not a unit: the process, frozen with `SIGSTOP` and resumed with `SIGCONT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessId>,
}

impl NtpService {
    /// `unit systemd-timesyncd.service` or `process chronyd (pid 812)`.
    pub(crate) fn human(&self) -> String {
        match &self.process {
            None => format!("unit {}", self.name),
            Some(p) => format!("process {} (pid {})", self.name, p.pid),
        }
    }

    /// Check a service read back from a journal: a known unit or a known process name.
    pub(crate) fn check(&self) -> std::result::Result<(), String> {
        match &self.process {
            None if UNITS.contains(&self.name.as_str()) => Ok(()),
            None => Err(format!(
                "its NTP unit {:?} is not one of {}",
                self.name,
                UNITS.join(", ")
            )),
            Some(p) if PROCESSES.contains(&self.name.as_str()) && p.pid > 1 => Ok(()),
            Some(p) => Err(format!(
                "its NTP process {:?} (pid {}) is not an NTP daemon plan would pause",
                self.name, p.pid
            )),
        }
    }

    /// Pause it (inject). A service already paused is left as it is.
    pub(crate) fn pause(&self) -> Result<()> {
        match &self.process {
            None => systemctl(&["stop", "--", &self.name]),
            Some(p) => p
                .signal(libc::SIGSTOP)
                .map(drop)
                .map_err(|e| e.context(format!("freezing {}", self.human()))),
        }
    }

    /// Bring it back (revert): start the unit if it is not active, resume the process if it
    /// is still the same one. After a reboot a process is gone (its init starts a new one),
    /// and a unit is started only if the boot did not already start it.
    pub(crate) fn resume(&self) -> Result<()> {
        match &self.process {
            None => {
                if !systemd_is_init() {
                    return Ok(());
                }
                let state = unit_states(&[self.name.as_str()])?;
                match state.first() {
                    Some(s) if !s.loaded() || is_active(&s.active_state) => Ok(()),
                    _ => systemctl(&["start", "--", &self.name])
                        .map_err(|e| e.context(format!("starting {} again", self.name))),
                }
            }
            Some(p) => p
                .signal(libc::SIGCONT)
                .map(drop)
                .map_err(|e| e.context(format!("resuming {}", self.human()))),
        }
    }

    /// Whether it is running again (`Some(true)`), paused (`Some(false)`), or gone for good
    /// (`None`: a process of an earlier boot, a unit that no longer exists).
    pub(crate) fn running(&self) -> Result<Option<bool>> {
        match &self.process {
            None => {
                if !systemd_is_init() {
                    return Ok(None);
                }
                let state = unit_states(&[self.name.as_str()])?;
                Ok(match state.first() {
                    Some(s) if s.loaded() => Some(is_active(&s.active_state)),
                    _ => None,
                })
            }
            Some(p) => Ok(p.stat().map(|s| !s.is_stopped())),
        }
    }

    /// The commands a person runs to bring it back.
    pub(crate) fn manual_resume(&self) -> String {
        match &self.process {
            None => format!(
                "{}  # it was active before the fault",
                shell_cmd!["systemctl", "start", "--", &self.name]
            ),
            Some(p) => format!(
                "{}  # {} (started at tick {}) was running before the fault; skip if pid {} is \
                 another process now",
                shell_cmd!["kill", "-CONT", p.pid.to_string()],
                shell::quote(&self.name),
                p.start_ticks,
                p.pid
            ),
        }
    }
}

/// Whether systemd is the init system.
pub(crate) fn systemd_is_init() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// The NTP services running now: active units of [`UNITS`] under systemd (aliases resolved
/// and counted once), else running processes named in [`PROCESSES`].
pub(crate) fn running_services(boot_id: &str) -> Result<Vec<NtpService>> {
    if systemd_is_init() {
        let mut found: Vec<NtpService> = Vec::new();
        for s in unit_states(&UNITS)? {
            if s.loaded()
                && is_active(&s.active_state)
                && UNITS.contains(&s.id.as_str())
                && !found.iter().any(|f| f.name == s.id)
            {
                found.push(NtpService {
                    name: s.id,
                    process: None,
                });
            }
        }
        return Ok(found);
    }
    Ok(all_pids()
        .into_iter()
        .filter_map(Stat::read)
        .filter(|s| PROCESSES.contains(&s.comm.as_str()) && !s.is_stopped() && s.state != 'Z')
        .map(|s| NtpService {
            name: s.comm.clone(),
            process: Some(ProcessId {
                pid: s.pid,
                start_ticks: s.start_ticks,
                boot_id: boot_id.to_string(),
            }),
        })
        .collect())
}

fn is_active(state: &str) -> bool {
    matches!(state, "active" | "reloading" | "activating")
}

/// What `systemctl show` says about a unit.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct UnitState {
    pub(crate) id: String,
    pub(crate) load_state: String,
    pub(crate) active_state: String,
}

impl UnitState {
    fn loaded(&self) -> bool {
        self.load_state == "loaded"
    }
}

/// `systemctl show` of several units at once: one block per unit, in order.
fn unit_states(units: &[&str]) -> Result<Vec<UnitState>> {
    let mut args = vec!["show", "--property=Id,LoadState,ActiveState", "--"];
    args.extend_from_slice(units);
    Ok(parse_show(&systemctl_output(&args)?))
}

/// Parse `systemctl show` output: `Key=Value` lines, blocks separated by blank lines.
pub(crate) fn parse_show(text: &str) -> Vec<UnitState> {
    let mut out = Vec::new();
    let mut cur: Option<UnitState> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            out.extend(cur.take());
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let s = cur.get_or_insert_with(UnitState::default);
        let v = v.trim().to_string();
        match k {
            "Id" => s.id = v,
            "LoadState" => s.load_state = v,
            "ActiveState" => s.active_state = v,
            _ => {}
        }
    }
    out.extend(cur);
    out
}

/// Run `systemctl ARGS` ([`systemctl::run`]), bounded by [`SYSTEMCTL_TIMEOUT`].
fn systemctl(args: &[&str]) -> Result<()> {
    systemctl::run(args, SYSTEMCTL_TIMEOUT)
}

/// Run `systemctl ARGS` and return its stdout ([`systemctl::output`]).
fn systemctl_output(args: &[&str]) -> Result<String> {
    systemctl::output(args, SYSTEMCTL_TIMEOUT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_show_blocks() {
        let s = parse_show(
            "Id=systemd-timesyncd.service\nLoadState=loaded\nActiveState=active\n\n\
             Id=chrony.service\nLoadState=not-found\nActiveState=inactive\n\n\
             Id=chronyd.service\nLoadState=not-found\nActiveState=inactive\n",
        );
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].id, "systemd-timesyncd.service");
        assert!(s[0].loaded() && is_active(&s[0].active_state));
        assert!(!s[1].loaded());
        assert_eq!(parse_show(""), []);
    }

    #[test]
    fn receipt_services_are_checked() {
        let unit = |n: &str| NtpService {
            name: n.into(),
            process: None,
        };
        assert!(unit("systemd-timesyncd.service").check().is_ok());
        assert!(unit("chrony.service").check().is_ok());
        let e = unit("systemd-poweroff.service").check().unwrap_err();
        assert!(e.contains("is not one of"), "{e}");
        let proc_ = |n: &str, pid| NtpService {
            name: n.into(),
            process: Some(ProcessId {
                pid,
                start_ticks: 1,
                boot_id: "b".into(),
            }),
        };
        assert!(proc_("chronyd", 812).check().is_ok());
        assert!(proc_("sshd", 812).check().is_err());
        assert!(proc_("ntpd", 1).check().is_err());
    }

    #[test]
    fn manual_resume_is_quoted() {
        let s = NtpService {
            name: "chrony.service".into(),
            process: None,
        };
        assert_eq!(
            s.manual_resume(),
            "systemctl start -- chrony.service  # it was active before the fault"
        );
        let p = NtpService {
            name: "ntpd".into(),
            process: Some(ProcessId {
                pid: 812,
                start_ticks: 99,
                boot_id: "b".into(),
            }),
        };
        assert!(p
            .manual_resume()
            .starts_with("kill -CONT 812  # ntpd (started at tick 99)"));
        assert_eq!(p.human(), "process ntpd (pid 812)");
    }

    #[test]
    fn finds_services_without_changing_anything() {
        // Reads systemctl or /proc only.
        let found = running_services(&fault_core::host::boot_id()).unwrap();
        for s in found {
            assert!(s.check().is_ok(), "{s:?}");
        }
    }
}
