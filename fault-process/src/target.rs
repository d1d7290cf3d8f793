//! Target selection shared by both kinds: which processes a spec names, how they are found in
//! `/proc`, and how they are signalled without ever reaching a process that took a recorded
//! pid after ours exited.

use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

use fault_core::host::process::{self, ProcessId, Stat};
use fault_core::{Context, Error, ErrorKind, Param, Result};
use serde::{Deserialize, Serialize};

/// Which processes a fault acts on: exactly one of the spec's `pid`, `name` or `cmdline`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Selector {
    /// This one pid.
    Pid(i32),
    /// Every process whose `comm`, basename of `argv[0]` or basename of `/proc/PID/exe` is
    /// exactly this.
    Name(String),
    /// Every process whose space-joined command line contains this.
    Cmdline(String),
}

/// One process a fault acts on, identified so that PID reuse and reboots are harmless.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TargetProcess {
    /// pid + start time + boot id.
    pub id: ProcessId,
    /// Its `comm` when it was found, for people reading the receipt.
    pub comm: String,
}

/// The spec parameters that choose the target, shared by both kinds' [`Param`] lists.
pub(crate) const TARGET_PARAMS: [Param; 3] = [
    Param {
        name: "pid",
        ty: "integer",
        default: None,
        doc: "Target this pid (exactly one of pid, name, cmdline).",
    },
    Param {
        name: "name",
        ty: "string",
        default: None,
        doc: "Target every process whose comm, argv[0] basename or executable basename is exactly this (comm is cut to 15 characters).",
    },
    Param {
        name: "cmdline",
        ty: "string",
        default: None,
        doc: "Target every process whose space-joined command line contains this.",
    },
];

impl Selector {
    /// Validate the spec's three target fields into a selector. Reads nothing on the host.
    pub(crate) fn from_fields(
        pid: Option<i32>,
        name: Option<&str>,
        cmdline: Option<&str>,
    ) -> Result<Selector> {
        let given: Vec<&str> = [
            pid.map(|_| "pid"),
            name.map(|_| "name"),
            cmdline.map(|_| "cmdline"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if given.len() != 1 {
            return Err(Error::invalid(if given.is_empty() {
                "choose the target process: set exactly one of pid, name or cmdline".to_string()
            } else {
                format!(
                    "set only one of pid, name or cmdline (got {})",
                    given.join(" and ")
                )
            }));
        }
        match (pid, name, cmdline) {
            (Some(1), _, _) => Err(Error::invalid("refusing to target PID 1 (init)")),
            (Some(pid), _, _) if pid <= 0 => Err(Error::invalid(format!(
                "pid must be a positive number, got {pid}"
            ))),
            (Some(pid), _, _) => Ok(Selector::Pid(pid)),
            (_, Some(name), _) if name.trim().is_empty() => {
                Err(Error::invalid("name must not be empty"))
            }
            (_, Some(name), _) if name.contains('/') => Err(Error::invalid(format!(
                "name \"{name}\" contains '/': name matches a program name, not a path \
                 (write \"{}\"; or use cmdline to match a path)",
                basename(name)
            ))),
            (_, Some(name), _) => Ok(Selector::Name(name.to_string())),
            (_, _, Some(cmdline)) if cmdline.trim().is_empty() => {
                Err(Error::invalid("cmdline must not be empty"))
            }
            (_, _, Some(cmdline)) => Ok(Selector::Cmdline(cmdline.to_string())),
            (None, None, None) => unreachable!("exactly one target field is set"),
        }
    }

    /// Find the processes this selector names, for `plan`: an explicit pid that is protected
    /// (the agent, its ancestors) or a kernel thread is refused; name and cmdline matches skip
    /// those silently. Fails with [`ErrorKind::NotFound`] when nothing is left, and with
    /// [`ErrorKind::PermissionDenied`] when a target cannot be signalled by this process.
    pub(crate) fn resolve(&self, cx: &Context) -> Result<Vec<TargetProcess>> {
        let found = match self {
            Selector::Pid(pid) => vec![resolve_pid(*pid, cx)?],
            _ => {
                let (found, protected_matched) = self.scan(cx);
                if found.is_empty() {
                    let why = if protected_matched {
                        " (only the agent itself or one of its ancestors matched, and those \
                         are never targeted)"
                    } else {
                        ""
                    };
                    return Err(Error::new(
                        ErrorKind::NotFound,
                        format!("no process matches {self}{why}"),
                    ));
                }
                found
            }
        };
        // Signal 0 checks permission and existence without changing anything.
        for t in &found {
            t.id.signal(0)
                .map_err(|e| e.context(format!("checking that we may signal {t}")))?;
        }
        Ok(found)
    }

    /// The processes that match now, for repeated signalling: a pid target yields the
    /// recorded process only while that very process is alive; a name or cmdline target is
    /// looked up afresh (an empty result is not an error).
    pub(crate) fn current(&self, cx: &Context, planned: &[TargetProcess]) -> Vec<TargetProcess> {
        match self {
            Selector::Pid(_) => planned
                .iter()
                .filter(|t| t.id.is_alive())
                .cloned()
                .collect(),
            _ => self.scan(cx).0,
        }
    }

    /// "pid 4242", "processes named \"worker\"", "processes whose cmdline contains \"x\"".
    pub(crate) fn describe(&self) -> String {
        match self {
            Selector::Pid(pid) => format!("pid {pid}"),
            Selector::Name(name) => format!("processes named {name:?}"),
            Selector::Cmdline(part) => format!("processes whose cmdline contains {part:?}"),
        }
    }

    /// Every eligible process matching a name or cmdline, and whether a protected pid matched.
    fn scan(&self, cx: &Context) -> (Vec<TargetProcess>, bool) {
        let mut protected_matched = false;
        let mut found = Vec::new();
        for pid in process::all_pids() {
            let Some(stat) = Stat::read(pid) else {
                continue;
            };
            if pid == 1 || process::is_kernel_thread(&stat) || is_dead(&stat) {
                continue;
            }
            if !self.matches(&stat) {
                continue;
            }
            if cx.protected_pids.contains(&pid) {
                protected_matched = true;
                continue;
            }
            found.push(TargetProcess::from_stat(stat, &cx.boot_id));
        }
        (found, protected_matched)
    }

    fn matches(&self, stat: &Stat) -> bool {
        match self {
            Selector::Pid(pid) => stat.pid == *pid,
            Selector::Name(name) => {
                stat.comm == *name
                    || process::cmdline(stat.pid)
                        .first()
                        .is_some_and(|argv0| basename(argv0) == name)
                    || std::fs::read_link(format!("/proc/{}/exe", stat.pid)).is_ok_and(|exe| {
                        let exe = exe.to_string_lossy();
                        basename(exe.strip_suffix(" (deleted)").unwrap_or(&exe)) == name
                    })
            }
            Selector::Cmdline(part) => process::cmdline(stat.pid).join(" ").contains(part),
        }
    }
}

fn resolve_pid(pid: i32, cx: &Context) -> Result<TargetProcess> {
    if cx.protected_pids.contains(&pid) {
        return Err(Error::invalid(format!(
            "refusing to target pid {pid}: it is the agent itself or one of its ancestors"
        )));
    }
    let stat = Stat::read(pid)
        .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no process with pid {pid}")))?;
    if process::is_kernel_thread(&stat) {
        return Err(Error::invalid(format!(
            "refusing to target pid {pid} ({}): it is a kernel thread",
            stat.comm
        )));
    }
    if is_dead(&stat) {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!("pid {pid} ({}) has already exited (zombie)", stat.comm),
        ));
    }
    Ok(TargetProcess::from_stat(stat, &cx.boot_id))
}

/// Whether a stat shows a process that has exited (zombie or dead).
pub(crate) fn is_dead(stat: &Stat) -> bool {
    matches!(stat.state, 'Z' | 'X')
}

fn basename(path: &str) -> &str {
    Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(path)
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Pid(pid) => write!(f, "pid {pid}"),
            Selector::Name(name) => write!(f, "name {name:?}"),
            Selector::Cmdline(part) => write!(f, "cmdline {part:?}"),
        }
    }
}

impl TargetProcess {
    fn from_stat(stat: Stat, boot_id: &str) -> TargetProcess {
        TargetProcess {
            id: ProcessId {
                pid: stat.pid,
                start_ticks: stat.start_ticks,
                boot_id: boot_id.to_string(),
            },
            comm: stat.comm,
        }
    }

    /// `pid:4242:98765`: the name [`fault_core::Fault::targets`] reports.
    pub(crate) fn target_name(&self) -> String {
        format!("pid:{}:{}", self.id.pid, self.id.start_ticks)
    }
}

impl fmt::Display for TargetProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {} ({})", self.id.pid, self.comm)
    }
}

/// Send `signal` to each process that is still the one recorded, going on past failures.
/// Returns the processes the signal reached (a process that is gone is skipped), and the
/// first failure, if any.
pub(crate) fn signal_each<'a>(
    targets: impl IntoIterator<Item = &'a TargetProcess>,
    signal: i32,
) -> (Vec<&'a TargetProcess>, Result<()>) {
    let mut reached = Vec::new();
    let mut first_err = None;
    for t in targets {
        match t.id.signal(signal) {
            Ok(true) => reached.push(t),
            Ok(false) => {}
            Err(e) => {
                let e = e.context(format!("sending {} to {t}", signal_name(signal)));
                first_err.get_or_insert(e);
            }
        }
    }
    (reached, first_err.map_or(Ok(()), Err))
}

/// Poll `done` every 10ms until it holds or `timeout` passes; returns its last answer.
pub(crate) fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Signal names and numbers (x86/arm Linux numbering, as `libc` defines it).
const SIGNALS: &[(&str, i32)] = &[
    ("SIGHUP", libc::SIGHUP),
    ("SIGINT", libc::SIGINT),
    ("SIGQUIT", libc::SIGQUIT),
    ("SIGILL", libc::SIGILL),
    ("SIGTRAP", libc::SIGTRAP),
    ("SIGABRT", libc::SIGABRT),
    ("SIGBUS", libc::SIGBUS),
    ("SIGFPE", libc::SIGFPE),
    ("SIGKILL", libc::SIGKILL),
    ("SIGUSR1", libc::SIGUSR1),
    ("SIGSEGV", libc::SIGSEGV),
    ("SIGUSR2", libc::SIGUSR2),
    ("SIGPIPE", libc::SIGPIPE),
    ("SIGALRM", libc::SIGALRM),
    ("SIGTERM", libc::SIGTERM),
    ("SIGCHLD", libc::SIGCHLD),
    ("SIGCONT", libc::SIGCONT),
    ("SIGSTOP", libc::SIGSTOP),
    ("SIGTSTP", libc::SIGTSTP),
    ("SIGTTIN", libc::SIGTTIN),
    ("SIGTTOU", libc::SIGTTOU),
    ("SIGURG", libc::SIGURG),
    ("SIGXCPU", libc::SIGXCPU),
    ("SIGXFSZ", libc::SIGXFSZ),
    ("SIGVTALRM", libc::SIGVTALRM),
    ("SIGPROF", libc::SIGPROF),
    ("SIGWINCH", libc::SIGWINCH),
    ("SIGIO", libc::SIGIO),
    ("SIGPWR", libc::SIGPWR),
    ("SIGSYS", libc::SIGSYS),
];

/// Parse a signal written as `"SIGTERM"`, `"TERM"`, `"term"` or a number 1..=64.
pub(crate) fn parse_signal(text: &str) -> Result<i32> {
    let t = text.trim();
    if let Ok(n) = t.parse::<i64>() {
        return signal_number(n);
    }
    let upper = t.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    SIGNALS
        .iter()
        .find(|(name, _)| *name == full)
        .map(|&(_, n)| n)
        .ok_or_else(|| {
            let known: Vec<&str> = SIGNALS.iter().map(|(n, _)| &n[3..]).collect();
            Error::invalid(format!(
                "unknown signal \"{text}\" (use a number 1..=64 or one of: {})",
                known.join(", ")
            ))
        })
}

/// Check a signal given as a number.
pub(crate) fn signal_number(n: i64) -> Result<i32> {
    match n {
        1..=64 => Ok(n as i32),
        0 => Err(Error::invalid(
            "signal 0 sends nothing; use a signal number 1..=64 or a name like \"SIGTERM\"",
        )),
        _ => Err(Error::invalid(format!(
            "signal {n} is out of range: use a number 1..=64 or a name like \"SIGTERM\""
        ))),
    }
}

/// `"SIGTERM"` for 15, `"signal 40"` for a number without a name.
pub(crate) fn signal_name(n: i32) -> String {
    SIGNALS
        .iter()
        .find(|&&(_, v)| v == n)
        .map_or_else(|| format!("signal {n}"), |(name, _)| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_validation_table() {
        let sel = |p: Option<i32>, n: Option<&str>, c: Option<&str>| {
            Selector::from_fields(p, n, c).map_err(|e| {
                assert_eq!(e.kind(), ErrorKind::InvalidSpec);
                e.to_string()
            })
        };
        assert_eq!(sel(Some(4242), None, None), Ok(Selector::Pid(4242)));
        assert_eq!(
            sel(None, Some("worker"), None),
            Ok(Selector::Name("worker".into()))
        );
        assert_eq!(
            sel(None, None, Some("worker --queue")),
            Ok(Selector::Cmdline("worker --queue".into()))
        );
        // (pid, name, cmdline, expected error)
        type Case = (
            Option<i32>,
            Option<&'static str>,
            Option<&'static str>,
            &'static str,
        );
        let cases: &[Case] = &[
            (None, None, None, "exactly one of pid, name or cmdline"),
            (Some(5), Some("w"), None, "got pid and name"),
            (
                Some(5),
                Some("w"),
                Some("c"),
                "got pid and name and cmdline",
            ),
            (Some(1), None, None, "refusing to target PID 1 (init)"),
            (Some(0), None, None, "pid must be a positive number, got 0"),
            (Some(-7), None, None, "got -7"),
            (None, Some(""), None, "name must not be empty"),
            (None, Some("  "), None, "name must not be empty"),
            (None, Some("/usr/bin/worker"), None, "write \"worker\""),
            (None, None, Some(""), "cmdline must not be empty"),
        ];
        for (p, n, c, want) in cases {
            let err = sel(*p, *n, *c).expect_err(want);
            assert!(err.contains(want), "{p:?} {n:?} {c:?}: {err}");
        }
    }

    #[test]
    fn parses_signal_names_and_numbers() {
        for s in ["SIGTERM", "TERM", "term", "sigterm", " Term ", "15"] {
            assert_eq!(parse_signal(s).unwrap(), libc::SIGTERM, "{s}");
        }
        assert_eq!(parse_signal("KILL").unwrap(), 9);
        assert_eq!(parse_signal("64").unwrap(), 64);
        for bad in ["0", "65", "-1", "SIGFOO", "", "9x"] {
            let e = parse_signal(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidSpec, "{bad}");
        }
        let e = parse_signal("SIGFOO").unwrap_err().to_string();
        assert!(e.contains("KILL, ") && e.contains("TERM"), "{e}");
        assert_eq!(signal_name(15), "SIGTERM");
        assert_eq!(signal_name(40), "signal 40");
    }

    #[test]
    fn a_pid_that_is_ours_is_refused() {
        let cx = Context::new("f", "r");
        let me = std::process::id() as i32;
        let e = Selector::Pid(me).resolve(&cx).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidSpec);
        assert!(e.to_string().contains("the agent itself"), "{e}");
    }

    #[test]
    fn a_name_that_only_matches_ourselves_is_not_found() {
        let cx = Context::new("f", "r");
        let comm = Stat::read(std::process::id() as i32).unwrap().comm;
        // Another process (a parallel test binary) may share our comm; only check when none does.
        let e = match Selector::Name(comm).resolve(&cx) {
            Err(e) => e,
            Ok(_) => return,
        };
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.to_string().contains("only the agent itself"), "{e}");
    }

    #[test]
    fn kernel_threads_are_refused() {
        let cx = Context::new("f", "r");
        if Stat::read(2).is_some_and(|s| s.comm == "kthreadd") {
            let e = Selector::Pid(2).resolve(&cx).unwrap_err();
            assert!(e.to_string().contains("kernel thread"), "{e}");
        }
    }
}
