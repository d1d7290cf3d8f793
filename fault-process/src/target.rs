//! Target selection shared by both kinds: which processes a spec names, how they are found in
//! `/proc`, and how they are signalled without ever reaching a process that took a recorded
//! pid after ours exited.

use std::borrow::Cow;
use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

use fault_core::host::process::{self, ProcessId, Stat};
use fault_core::{Context, Error, ErrorKind, Param, Result};
use serde::{Deserialize, Serialize};

/// What both process kinds need from the host: pidfds (so a reused pid is never signalled)
/// and `CAP_KILL` to reach other users' processes.
pub(crate) fn availability() -> fault_core::Availability {
    let host = fault_core::host::probe::host();
    let mut a = fault_core::Availability::available();
    if !host.pidfd_open {
        a.degrade(
            "pidfd_open is missing (Linux 5.3): targets are signalled by pid after re-checking \
             their start time immediately before; a pid reused in that window could be hit",
            Some("boot Linux 5.3 or later".into()),
        );
    }
    if !host.has_cap(fault_core::host::probe::Cap::Kill) {
        a.degrade(
            format!(
                "no CAP_KILL: only processes of uid {} can be signalled (plan refuses others \
                 before anything changes)",
                host.euid
            ),
            Some("run the agent as root (or grant it CAP_KILL)".into()),
        );
    }
    a
}

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
    /// Its space-joined command line when it was found, cut to 100 characters, for people
    /// (dry run, run header). Empty in receipts written before it was recorded, and in
    /// `process.kill`'s list of signalled processes (kept small: it is rewritten on every
    /// repeat).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cmdline: String,
}

/// How many processes a `name` or `cmdline` target may match when the spec does not say
/// (`max_targets`). A service has a handful of processes; a match wider than that is far
/// more often a pattern that also hits unrelated programs (`cmdline = "/"` matches nearly
/// everything) than a deliberate choice, so it is refused at plan time until the spec says
/// how many it accepts.
pub const DEFAULT_MAX_TARGETS: u32 = 5;

/// The largest `max_targets` a spec may give (receipts stay bounded).
pub const MAX_TARGETS_CEILING: u32 = 1000;

/// The shortest `cmdline` substring accepted: one or two characters (`"/"`, `"-"`, `"py"`)
/// match nearly every command line on a host.
pub(crate) const MIN_CMDLINE_CHARS: usize = 3;

/// How many characters of a command line a receipt keeps.
const CMDLINE_KEEP: usize = 100;

/// How many matching processes the "matches too many" error lists.
const LISTED: usize = 5;

/// How many processes a fault may act on: the spec's `max_targets`, or the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limit {
    /// At most this many processes.
    pub(crate) max: u32,
    /// Whether the spec set it (`max_targets`), for the error message.
    pub(crate) explicit: bool,
}

impl Limit {
    /// Validate the spec's `max_targets` for this selector. A `pid` names one process, so
    /// `max_targets` with it is refused as a mistake rather than ignored.
    pub(crate) fn from_spec(selector: &Selector, max_targets: Option<u32>) -> Result<Limit> {
        match (selector, max_targets) {
            (Selector::Pid(_), Some(_)) => Err(Error::invalid(
                "max_targets applies to name and cmdline targets; a pid names exactly one \
                 process (remove max_targets)",
            )),
            (Selector::Pid(_), None) => Ok(Limit {
                max: 1,
                explicit: false,
            }),
            (_, Some(0)) => Err(Error::invalid(
                "max_targets must be at least 1 (it is how many matching processes you accept)",
            )),
            (_, Some(n)) if n > MAX_TARGETS_CEILING => Err(Error::invalid(format!(
                "max_targets = {n} is more than {MAX_TARGETS_CEILING}, the most a fault acts on"
            ))),
            (_, Some(n)) => Ok(Limit {
                max: n,
                explicit: true,
            }),
            (_, None) => Ok(Limit {
                max: DEFAULT_MAX_TARGETS,
                explicit: false,
            }),
        }
    }

    /// Refuse `found` when it holds more processes than this limit accepts, naming how many
    /// matched and the first few.
    pub(crate) fn check(&self, selector: &Selector, found: &[TargetProcess]) -> Result<()> {
        let n = found.len();
        if n <= self.max as usize {
            return Ok(());
        }
        let listed: Vec<String> = found.iter().take(LISTED).map(ToString::to_string).collect();
        let more = match n - listed.len() {
            0 => String::new(),
            rest => format!(", and {rest} more"),
        };
        let limit = if self.explicit {
            format!("more than max_targets = {}", self.max)
        } else {
            format!(
                "more than the {} a process fault accepts unless max_targets says otherwise",
                self.max
            )
        };
        let fix = if n <= MAX_TARGETS_CEILING as usize {
            format!("Narrow the match, or set max_targets = {n} if you mean every one of them")
        } else {
            format!("Narrow the match (max_targets accepts at most {MAX_TARGETS_CEILING})")
        };
        Err(Error::invalid(format!(
            "{selector} matches {n} processes, {limit}: {}{more}; nothing was signalled. {fix}",
            listed.join(", ")
        )))
    }
}

/// The `max_targets` parameter, shared by both kinds' [`Param`] lists.
pub(crate) const MAX_TARGETS_PARAM: Param = Param {
    name: "max_targets",
    ty: "integer",
    default: Some("5"),
    doc: "How many processes a name or cmdline target may match (1..=1000). A wider match is refused at plan time with the count and the first few matches, so a loose pattern cannot hit unrelated programs; set it to accept more on purpose. Not allowed with pid. With interval, it also bounds every repeat.",
};

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
        doc: "Target every process whose space-joined command line contains this (at least 3 characters; a shorter substring matches nearly everything).",
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
            (_, _, Some(cmdline)) if cmdline.trim().chars().count() < MIN_CMDLINE_CHARS => {
                Err(Error::invalid(format!(
                    "cmdline {cmdline:?} is too short: a substring of fewer than \
                     {MIN_CMDLINE_CHARS} characters matches nearly every command line on a \
                     host; use name for a program name, or a longer, distinctive part of the \
                     command line"
                )))
            }
            (_, _, Some(cmdline)) => Ok(Selector::Cmdline(cmdline.to_string())),
            (None, None, None) => unreachable!("exactly one target field is set"),
        }
    }

    /// Find the processes this selector names, for `plan`: an explicit pid that is protected
    /// (the agent, its ancestors) or a kernel thread is refused; name and cmdline matches skip
    /// those silently. Fails with [`ErrorKind::NotFound`] when nothing is left, with
    /// [`ErrorKind::InvalidSpec`] when more match than `limit` accepts, and with
    /// [`ErrorKind::PermissionDenied`] when a target cannot be signalled by this process.
    pub(crate) fn resolve(&self, cx: &Context, limit: Limit) -> Result<Vec<TargetProcess>> {
        if !is_boot_id(&cx.boot_id) {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "cannot read this boot's id (got {:?} from /proc/sys/kernel/random/boot_id), \
                     so a recorded process could not be told apart from one of a later boot",
                    cx.boot_id
                ),
            ));
        }
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
        limit.check(self, &found)?;
        // Signal 0 checks permission and existence without changing anything.
        for t in &found {
            t.id.signal(0)
                .map_err(|e| e.context(format!("checking that we may signal {t}")))?;
        }
        Ok(found)
    }

    /// The processes that match now, for repeated signalling: a pid target yields the
    /// recorded process only while that very process is alive; a name or cmdline target is
    /// looked up afresh (an empty result is not an error; more than `limit` accepts is).
    pub(crate) fn current(
        &self,
        cx: &Context,
        planned: &[TargetProcess],
        limit: Limit,
    ) -> Result<Vec<TargetProcess>> {
        let found: Vec<TargetProcess> = match self {
            Selector::Pid(_) => planned
                .iter()
                .filter(|t| t.id.is_alive())
                .cloned()
                .collect(),
            _ => self.scan(cx).0,
        };
        limit.check(self, &found)?;
        Ok(found)
    }

    /// "pid 4242", "processes named \"worker\"", "processes whose cmdline contains \"x\"".
    pub(crate) fn describe(&self) -> String {
        match self {
            Selector::Pid(pid) => format!("pid {pid}"),
            Selector::Name(name) => format!("processes named {name:?}"),
            Selector::Cmdline(part) => format!("processes whose cmdline contains {part:?}"),
        }
    }

    /// Check a selector read back from a receipt as [`Selector::from_fields`] would.
    pub(crate) fn check(&self) -> Result<()> {
        let (pid, name, cmdline) = match self {
            Selector::Pid(p) => (Some(*p), None, None),
            Selector::Name(n) => (None, Some(n.as_str()), None),
            Selector::Cmdline(c) => (None, None, Some(c.as_str())),
        };
        Selector::from_fields(pid, name, cmdline).map(drop)
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
        let cmdline = clip(&process::cmdline(stat.pid).join(" "), CMDLINE_KEEP);
        TargetProcess {
            id: ProcessId {
                pid: stat.pid,
                start_ticks: stat.start_ticks,
                boot_id: boot_id.to_string(),
            },
            comm: stat.comm,
            cmdline,
        }
    }

    /// `pid 4242 (worker) `/usr/bin/worker --queue a``: the process with its command line as
    /// recorded, control characters escaped.
    pub(crate) fn human(&self) -> String {
        if self.cmdline.is_empty() {
            self.to_string()
        } else {
            format!("{self} `{}`", printable(&self.cmdline))
        }
    }

    /// `pid:4242:98765`: the name [`fault_core::Fault::targets`] reports.
    pub(crate) fn target_name(&self) -> String {
        format!("pid:{}:{}", self.id.pid, self.id.start_ticks)
    }
}

impl fmt::Display for TargetProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {} ({})", self.id.pid, printable(&self.comm))
    }
}

/// `text` with control characters (newline, escape, ...) and bidirectional-override
/// characters escaped, so a process name or command line a target chose cannot break a line
/// printed for people, hide text, or drive their terminal.
pub(crate) fn printable(text: &str) -> Cow<'_, str> {
    let bad = |c: char| {
        c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(bad) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| {
                if bad(c) {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

/// `text` cut to at most `max` characters, the last being `…` when it was cut.
pub(crate) fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Whether `id` looks like the kernel's boot id (a lower-case UUID).
pub(crate) fn is_boot_id(id: &str) -> bool {
    id.len() == 36
        && id.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit() && !c.is_ascii_uppercase(),
        })
}

/// A receipt that `plan` could not have written: refused before revert acts on it.
pub(crate) fn drifted(kind: &str, fault_id: &str, problem: impl fmt::Display) -> Error {
    Error::new(
        ErrorKind::Drifted,
        format!(
            "{kind} receipt of {fault_id}: {problem}; plan never writes that, so the journal \
             record was edited or damaged: refusing to act on it"
        ),
    )
}

/// Check the processes of a receipt read back from the journal: each one a real process
/// identity (never PID 1 or kthreadd, a boot id, the same boot for all, none twice), at
/// most `max` of them, and none that is now, by that very identity, a kernel thread.
pub(crate) fn check_targets(
    kind: &str,
    fault_id: &str,
    what: &str,
    targets: &[TargetProcess],
    max: usize,
) -> Result<()> {
    if targets.len() > max {
        return Err(drifted(
            kind,
            fault_id,
            format!(
                "it lists {} {what}, more than its limit of {max}",
                targets.len()
            ),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for t in targets {
        let id = &t.id;
        if id.pid <= 2 {
            return Err(drifted(
                kind,
                fault_id,
                format!("{what} include pid {} (init, kthreadd or invalid)", id.pid),
            ));
        }
        if !is_boot_id(&id.boot_id) {
            return Err(drifted(
                kind,
                fault_id,
                format!("{t} has no valid boot id ({:?})", printable(&id.boot_id)),
            ));
        }
        if id.boot_id != targets[0].id.boot_id {
            return Err(drifted(
                kind,
                fault_id,
                format!("{what} come from different boots"),
            ));
        }
        if !seen.insert((id.pid, id.start_ticks)) {
            return Err(drifted(kind, fault_id, format!("{t} is listed twice")));
        }
        if id.stat().is_some_and(|s| process::is_kernel_thread(&s)) {
            return Err(drifted(kind, fault_id, format!("{t} is a kernel thread")));
        }
    }
    Ok(())
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

/// A boot id of the right shape, and process records built from it, for unit tests.
#[cfg(test)]
pub(crate) mod fake {
    use super::*;

    pub(crate) const BOOT: &str = "0f2d6c0e-8a51-4b8e-9f3a-5e2b7c1d9a40";

    pub(crate) fn process(pid: i32, comm: &str, cmdline: &str) -> TargetProcess {
        TargetProcess {
            id: ProcessId {
                pid,
                start_ticks: 1000 + pid as u64,
                boot_id: BOOT.into(),
            },
            comm: comm.into(),
            cmdline: cmdline.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: Limit = Limit {
        max: 1,
        explicit: false,
    };
    const DEFAULT: Limit = Limit {
        max: DEFAULT_MAX_TARGETS,
        explicit: false,
    };

    #[test]
    fn max_targets_validation() {
        let name = Selector::Name("w".into());
        let pid = Selector::Pid(4242);
        assert_eq!(Limit::from_spec(&name, None).unwrap(), DEFAULT);
        assert_eq!(Limit::from_spec(&pid, None).unwrap(), ONE);
        assert_eq!(
            Limit::from_spec(&name, Some(50)).unwrap(),
            Limit {
                max: 50,
                explicit: true
            }
        );
        assert_eq!(Limit::from_spec(&name, Some(1000)).unwrap().max, 1000);
        for (sel, n, want) in [
            (&pid, 3, "a pid names exactly one process"),
            (&name, 0, "at least 1"),
            (&name, 1001, "more than 1000"),
        ] {
            let e = Limit::from_spec(sel, Some(n)).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidSpec);
            assert!(e.to_string().contains(want), "{n}: {e}");
        }
    }

    #[test]
    fn too_many_matches_are_refused_with_count_and_first_few() {
        let sel = Selector::Cmdline("/".into());
        let found: Vec<TargetProcess> = (0..21)
            .map(|i| fake::process(100 + i, &format!("p{i}"), ""))
            .collect();
        assert!(
            DEFAULT.check(&sel, &found[..5]).is_ok(),
            "5 is within the default"
        );
        let e = DEFAULT.check(&sel, &found[..6]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidSpec);
        assert!(e.to_string().contains("6 processes"), "{e}");
        assert!(e.to_string().contains("and 1 more"), "{e}");

        let e = DEFAULT.check(&sel, &found).unwrap_err().to_string();
        assert_eq!(
            e,
            "cmdline \"/\" matches 21 processes, more than the 5 a process fault accepts unless \
             max_targets says otherwise: pid 100 (p0), pid 101 (p1), pid 102 (p2), pid 103 (p3), \
             pid 104 (p4), and 16 more; nothing was signalled. Narrow the match, or set \
             max_targets = 21 if you mean every one of them"
        );
        let explicit = Limit {
            max: 20,
            explicit: true,
        };
        let e = explicit.check(&sel, &found).unwrap_err().to_string();
        assert!(
            e.contains("21 processes, more than max_targets = 20: "),
            "{e}"
        );
        assert!(explicit.check(&sel, &found[..20]).is_ok());

        let huge: Vec<TargetProcess> = (0..1001).map(|i| fake::process(100 + i, "x", "")).collect();
        let e = explicit.check(&sel, &huge).unwrap_err().to_string();
        assert!(e.contains("max_targets accepts at most 1000"), "{e}");
    }

    #[test]
    fn printable_escapes_what_could_break_a_line_or_a_terminal() {
        assert_eq!(printable("worker --queue a"), "worker --queue a");
        assert!(matches!(printable("plain"), Cow::Borrowed(_)));
        assert_eq!(printable("a\nrm -rf /"), "a\\nrm -rf /");
        assert_eq!(printable("\u{1b}[2Jx"), "\\u{1b}[2Jx");
        assert_eq!(printable("evil\u{202e}txt.sh"), "evil\\u{202e}txt.sh");
        assert_eq!(printable("tab\there"), "tab\\there");
        // A comm with a newline cannot start a new line in a receipt shown to people.
        let t = fake::process(7, "x\ny", "a\nb");
        assert_eq!(t.human(), "pid 7 (x\\ny) `a\\nb`");
    }

    #[test]
    fn clip_cuts_long_command_lines() {
        assert_eq!(clip("short", 10), "short");
        assert_eq!(clip("0123456789", 10), "0123456789");
        assert_eq!(clip("0123456789a", 10), "012345678…");
        assert_eq!(clip("ééééé", 3), "éé…");
        assert_eq!(fake::process(9, "w", "").human(), "pid 9 (w)");
    }

    #[test]
    fn boot_ids() {
        assert!(is_boot_id(fake::BOOT));
        assert!(is_boot_id(&fault_core::host::boot_id()));
        for bad in [
            "",
            "unknown",
            "b",
            &fake::BOOT.to_uppercase(),
            &fake::BOOT.replace('-', "x"),
        ] {
            assert!(!is_boot_id(bad), "{bad}");
        }
        let mut cx = Context::new("f", "r");
        cx.boot_id = "unknown".into();
        let e = Selector::Name("w".into())
            .resolve(&cx, DEFAULT)
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
    }

    #[test]
    fn check_targets_table() {
        let ok = vec![fake::process(100, "a", ""), fake::process(101, "b", "")];
        check_targets("k", "f", "targets", &ok, 5).unwrap();
        check_targets("k", "f", "targets", &[], 5).unwrap();
        let mut same_pid_other_start = ok.clone();
        same_pid_other_start[1].id.pid = 100;
        check_targets("k", "f", "targets", &same_pid_other_start, 5)
            .expect("a reused pid (another start time) is another process");

        type Edit = fn(&mut Vec<TargetProcess>);
        let cases: [(&str, Edit); 7] = [
            ("pid 1 (init", |t| t[0].id.pid = 1),
            ("pid 2 (init, kthreadd", |t| t[0].id.pid = 2),
            ("pid -5", |t| t[1].id.pid = -5),
            ("no valid boot id", |t| t[0].id.boot_id = "x".into()),
            ("different boots", |t| {
                t[1].id.boot_id = fault_core::host::boot_id();
            }),
            ("listed twice", |t| t[1] = t[0].clone()),
            ("more than its limit of 2", |t| {
                t.push(fake::process(102, "c", ""));
            }),
        ];
        for (want, edit) in cases {
            let mut t = ok.clone();
            edit(&mut t);
            let e = check_targets("process.stop", "run1-0-0", "targets", &t, 2).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Drifted, "{want}");
            let e = e.to_string();
            assert!(e.contains(want), "{want}: {e}");
            assert!(e.starts_with("process.stop receipt of run1-0-0: "), "{e}");
        }
    }

    #[test]
    fn check_targets_refuses_a_live_kernel_thread() {
        let Some(stat) = Stat::read(2).filter(|s| s.comm == "kthreadd") else {
            return;
        };
        // A kernel thread (child of kthreadd), identified exactly.
        let Some(kthread) = process::all_pids()
            .into_iter()
            .filter_map(Stat::read)
            .find(|s| s.ppid == stat.pid)
        else {
            return;
        };
        let t = TargetProcess {
            id: ProcessId::of(kthread.pid).unwrap(),
            comm: kthread.comm,
            cmdline: String::new(),
        };
        let e = check_targets("k", "f", "targets", &[t], 5).unwrap_err();
        assert!(e.to_string().contains("is a kernel thread"), "{e}");
    }

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
        assert_eq!(
            sel(None, None, Some("abc")),
            Ok(Selector::Cmdline("abc".into()))
        );
        assert_eq!(sel(None, Some("w"), None), Ok(Selector::Name("w".into())));
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
            (None, None, Some("/"), "\"/\" is too short"),
            (None, None, Some("py"), "fewer than 3 characters"),
            (None, None, Some("  -  "), "is too short"),
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
        let e = Selector::Pid(me).resolve(&cx, ONE).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidSpec);
        assert!(e.to_string().contains("the agent itself"), "{e}");
    }

    #[test]
    fn a_name_that_only_matches_ourselves_is_not_found() {
        let cx = Context::new("f", "r");
        let comm = Stat::read(std::process::id() as i32).unwrap().comm;
        // Another process (a parallel test binary) may share our comm; only check when none does.
        let e = match Selector::Name(comm).resolve(&cx, DEFAULT) {
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
            let e = Selector::Pid(2).resolve(&cx, ONE).unwrap_err();
            assert!(e.to_string().contains("kernel thread"), "{e}");
        }
    }
}
