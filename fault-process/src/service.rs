//! `service.stop` and `service.restart`: act on a systemd service unit through `systemctl`.
//!
//! `systemctl` is run with an argument vector (never through a shell), with `--` before the
//! unit name, and the name is checked against systemd's own character set first, so a spec
//! can never smuggle an option or a command in.

use std::path::Path;
use std::time::Duration;

use fault_core::host::{shell, systemctl};
use fault_core::{
    shell_cmd, Context, Error, ErrorKind, Fault, KindInfo, Observation, Param, Result,
};
use serde::{Deserialize, Serialize};

use crate::target::{drifted, is_boot_id, printable};

/// The agent's own packaged unit: never a target, wherever the agent runs.
pub(crate) const AGENT_UNIT: &str = "chaos-agent.service";

/// Services that are never running before a fault (systemd starts them only to shut down,
/// suspend or rescue the machine), and whose *start* would do exactly that. A spec naming
/// one is refused, and so is a receipt: revert starts the unit of its receipt, so a journal
/// record edited to name one of these must not make recovery power the machine off.
const NEVER_UNITS: [&str; 11] = [
    "systemd-poweroff.service",
    "systemd-reboot.service",
    "systemd-halt.service",
    "systemd-kexec.service",
    "systemd-soft-reboot.service",
    "systemd-suspend.service",
    "systemd-hibernate.service",
    "systemd-hybrid-sleep.service",
    "systemd-suspend-then-hibernate.service",
    "emergency.service",
    "rescue.service",
];

/// How long one `systemctl` call may take (a stop waits for the unit's own stop timeout).
const SYSTEMCTL_TIMEOUT: Duration = Duration::from_secs(120);

/// The shortest restart interval accepted.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// Parameters of `service.stop`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ServiceStopSpec {
    /// The unit, e.g. `"nginx.service"` or `"nginx"` (`.service` is appended).
    pub unit: String,
}

/// Parameters of `service.restart`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ServiceRestartSpec {
    /// The unit, e.g. `"nginx.service"` or `"nginx"` (`.service` is appended).
    pub unit: String,
    /// Restart again every `interval` for the fault's duration; omitted: once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<fault_core::Duration>,
}

/// Stops a systemd service for the fault's duration.
///
/// **Changes on the host:** `systemctl stop UNIT`: the unit's processes are stopped the way
/// the unit says (its `ExecStop=`, `KillMode=`); its on-disk configuration is untouched.
///
/// **Privileges:** root (or a polkit rule allowing `manage-units`).
///
/// **Revert** runs `systemctl start UNIT` when the unit was active before the fault (the
/// receipt records its `ActiveState`), also after a crash or a reboot; verify sees it active
/// again. `plan` refuses a unit that is not active (there would be nothing to stop and
/// nothing to put back), a unit that is not loaded, `chaos-agent.service`, any unit the
/// agent or one of its ancestors runs in, and the units systemd starts only to power off,
/// reboot, suspend or rescue the machine (`systemd-reboot.service`, `rescue.service`, ...).
///
/// **Receipt check:** revert runs `systemctl start` as root on the unit its receipt names,
/// so before any revert the receipt must be one `plan` could have written: a valid
/// `.service` name (the same checks as the spec), the unit the spec asked for (recorded as
/// `requested`) also valid, neither the agent's unit nor one it runs in now, nor one of the
/// shutdown/rescue units above, a prior state that is active, and this boot's id format.
/// What no check can catch is an edit that names another ordinary service that was stopped
/// anyway; the journal is root-only (0700) for that reason.
///
/// **Leftovers:** none are looked for ([`Fault::leftovers`] keeps its default). A stopped
/// service carries no mark of who stopped it (systemd records no caller on the unit), so an
/// inactive unit cannot be proven ours without the journal record; starting a service that
/// an operator stopped on purpose would be worse than leaving ours stopped.
#[derive(Debug, Clone)]
pub struct ServiceStop {
    unit: String,
}

/// Restarts a systemd service, once or every `interval` for the fault's duration.
///
/// **Changes on the host:** `systemctl restart UNIT`: its processes are stopped and started
/// again (a new invocation). Nothing on disk changes.
///
/// **Privileges:** root (or a polkit rule allowing `manage-units`).
///
/// **Revert:** a restart cannot be taken back, so the kind is marked irreversible; revert
/// still makes sure the unit is active again when it was active before (it starts it if a
/// restart left it inactive or failed). `plan` refuses the same units as `service.stop`,
/// and its receipt is checked the same way before revert.
///
/// **Leftovers:** none, for the same reason as `service.stop`.
#[derive(Debug, Clone)]
pub struct ServiceRestart {
    unit: String,
    interval: Option<Duration>,
}

/// What a service fault planned: the unit and the state it was in.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServiceReceipt {
    /// The unit's id as systemd names it (aliases resolved), e.g. `nginx.service`.
    pub unit: String,
    /// Its `ActiveState` when planned (`active`, `reloading`, ...).
    pub prior_state: String,
    /// Its invocation id when planned (`InvocationID`, or the activation time when systemd
    /// has none): a restart changes it.
    pub prior_invocation: String,
    /// Boot id when planned, for people reading the receipt.
    pub boot_id: String,
    /// How many restarts `service.restart` did.
    #[serde(default)]
    pub restarts: u64,
    /// The unit as the spec named it (`.service` appended); it differs from `unit` when
    /// systemd resolved an alias. Empty in receipts written before it was recorded.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub requested: String,
    /// Its `SubState` when planned (`running`, `exited`, ...), for people.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prior_sub_state: String,
    /// Its main process when planned (`MainPID`), for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub main_pid: Option<u32>,
    /// `service.restart`'s repeat interval, when the spec has one, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<fault_core::Duration>,
}

impl ServiceReceipt {
    /// Whether the unit ran before the fault, i.e. whether revert must start it again.
    pub fn was_active(&self) -> bool {
        is_active(&self.prior_state)
    }

    /// `unit nginx.service (active/running, main pid 812)`, with the name the spec used when
    /// systemd resolved an alias.
    fn human(&self) -> String {
        let mut state = printable(&self.prior_state).into_owned();
        if !self.prior_sub_state.is_empty() {
            state = format!("{state}/{}", printable(&self.prior_sub_state));
        }
        if let Some(pid) = self.main_pid.filter(|&p| p > 0) {
            state = format!("{state}, main pid {pid}");
        }
        let alias = if !self.requested.is_empty() && self.requested != self.unit {
            format!(" (as {})", printable(&self.requested))
        } else {
            String::new()
        };
        format!("unit {}{alias} ({state})", printable(&self.unit))
    }
}

const UNIT_PARAM: Param = Param {
    name: "unit",
    ty: "string",
    default: None,
    doc: "The systemd service, e.g. \"nginx.service\" (\".service\" is appended when there is no suffix). chaos-agent.service, the unit the agent runs in, and the units systemd starts only to power off, reboot, suspend or rescue the machine are refused.",
};

const STOP_PARAMS: [Param; 1] = [UNIT_PARAM];

const RESTART_PARAMS: [Param; 2] = [
    UNIT_PARAM,
    Param {
        name: "interval",
        ty: "duration",
        default: Some("none (restart once)"),
        doc: "Restart again every interval for the duration (at least 1s).",
    },
];

impl Fault for ServiceStop {
    const KIND: &'static str = "service.stop";
    type Spec = ServiceStopSpec;
    type Receipt = ServiceReceipt;

    fn new(spec: ServiceStopSpec) -> Result<ServiceStop> {
        Ok(ServiceStop {
            unit: unit_name(&spec.unit)?,
        })
    }

    fn info() -> KindInfo {
        KindInfo {
            summary: "Stops a systemd service (systemctl stop) for the duration. Revert starts it \
                      again (systemctl start) because it was active before; the journal records \
                      its prior ActiveState, so this also happens after a crash or a reboot. A \
                      unit that is not active, chaos-agent.service and the unit the agent runs \
                      in are refused.",
            privileges: "root (systemd manage-units)",
            reversible: true,
            params: &STOP_PARAMS,
            example: "kind = \"service.stop\"\nduration = \"30s\"\nunit = \"nginx.service\"",
        }
    }

    /// Unavailable where systemd is not the init system; degraded when not root.
    fn availability() -> fault_core::Availability {
        service_availability()
    }

    fn describe(&self) -> String {
        format!("stop {} (systemctl start on revert)", self.unit)
    }

    fn plan(&self, cx: &Context) -> Result<ServiceReceipt> {
        plan_unit(&self.unit, cx, "stop", None)
    }

    fn inject(&self, _cx: &Context, receipt: &mut ServiceReceipt) -> Result<()> {
        systemctl(&["stop", "--", &receipt.unit])
    }

    fn verify(receipt: &ServiceReceipt) -> Result<Observation> {
        let now = UnitState::query(&receipt.unit)?;
        let unit = &receipt.unit;
        Ok(if !now.loaded() {
            Observation::clean(format!("{unit} no longer exists ({})", now.load_state))
        } else if is_active(&now.active_state) {
            Observation::clean(format!("{unit} is {}", now.active_state))
        } else if matches!(now.active_state.as_str(), "inactive" | "failed") {
            Observation::in_effect(format!("{unit} is {}", now.active_state))
        } else {
            Observation::partial(format!("{unit} is {}", now.active_state))
        })
    }

    fn revert(receipt: &ServiceReceipt) -> Result<()> {
        start_if_was_active(receipt)
    }

    fn manual_undo(receipt: &ServiceReceipt) -> Vec<String> {
        manual_start(receipt)
    }

    fn targets(receipt: &ServiceReceipt) -> Vec<String> {
        vec![format!("unit:{}", receipt.unit)]
    }

    fn touches(receipt: &ServiceReceipt) -> Vec<String> {
        vec![format!(
            "{}: systemctl stop now, systemctl start on revert",
            receipt.human()
        )]
    }

    fn check_receipt(fault_id: &str, receipt: &ServiceReceipt) -> Result<()> {
        check_service_receipt(Self::KIND, fault_id, receipt)
    }
}

impl Fault for ServiceRestart {
    const KIND: &'static str = "service.restart";
    type Spec = ServiceRestartSpec;
    type Receipt = ServiceReceipt;

    fn new(spec: ServiceRestartSpec) -> Result<ServiceRestart> {
        let interval = spec.interval.map(|d| d.std());
        if interval.is_some_and(|d| d < MIN_INTERVAL) {
            return Err(Error::invalid(format!(
                "interval must be at least {}",
                fault_core::Duration(MIN_INTERVAL)
            )));
        }
        Ok(ServiceRestart {
            unit: unit_name(&spec.unit)?,
            interval,
        })
    }

    fn info() -> KindInfo {
        KindInfo {
            summary: "Restarts a systemd service (systemctl restart), once or every interval for \
                      the duration. A restart cannot be taken back: revert only makes sure the \
                      unit is active again if it was active before (systemctl start). A unit \
                      that is not active, chaos-agent.service and the unit the agent runs in \
                      are refused.",
            privileges: "root (systemd manage-units)",
            reversible: false,
            params: &RESTART_PARAMS,
            example: "kind = \"service.restart\"\nduration = \"1m\"\nunit = \"nginx.service\"\n\
                      interval = \"20s\"",
        }
    }

    /// Unavailable where systemd is not the init system; degraded when not root.
    fn availability() -> fault_core::Availability {
        service_availability()
    }

    fn describe(&self) -> String {
        let every = self
            .interval
            .map(|d| format!(" every {}", fault_core::Duration(d)))
            .unwrap_or_default();
        format!(
            "restart {}{every} (cannot be undone; revert starts it if it is left inactive)",
            self.unit
        )
    }

    fn plan(&self, cx: &Context) -> Result<ServiceReceipt> {
        plan_unit(&self.unit, cx, "restart", self.interval)
    }

    fn inject(&self, _cx: &Context, receipt: &mut ServiceReceipt) -> Result<()> {
        // Inject twice = once.
        if receipt.restarts == 0 {
            systemctl(&["restart", "--", &receipt.unit])?;
            receipt.restarts = 1;
        }
        Ok(())
    }

    fn maintain_interval(&self) -> Option<Duration> {
        self.interval
    }

    fn maintain(&self, _cx: &Context, receipt: &mut ServiceReceipt) -> Result<Option<Duration>> {
        systemctl(&["restart", "--", &receipt.unit])?;
        receipt.restarts += 1;
        Ok(self.interval)
    }

    fn verify(receipt: &ServiceReceipt) -> Result<Observation> {
        let now = UnitState::query(&receipt.unit)?;
        let unit = &receipt.unit;
        let restarted = now.invocation() != receipt.prior_invocation;
        Ok(if !now.loaded() {
            Observation::partial(format!("{unit} no longer exists ({})", now.load_state))
        } else if !is_active(&now.active_state) {
            Observation::partial(format!("{unit} is {} after restart", now.active_state))
        } else if restarted {
            Observation::in_effect(format!(
                "{unit} was restarted {} time(s) and is {}",
                receipt.restarts, now.active_state
            ))
        } else {
            Observation::clean(format!("{unit} has not been restarted"))
        })
    }

    fn revert(receipt: &ServiceReceipt) -> Result<()> {
        start_if_was_active(receipt)
    }

    fn manual_undo(receipt: &ServiceReceipt) -> Vec<String> {
        manual_start(receipt)
    }

    fn targets(receipt: &ServiceReceipt) -> Vec<String> {
        vec![format!("unit:{}", receipt.unit)]
    }

    fn touches(receipt: &ServiceReceipt) -> Vec<String> {
        let every = receipt
            .interval
            .map(|d| format!(", again every {d}"))
            .unwrap_or_default();
        vec![format!(
            "{}: systemctl restart{every} (cannot be undone; systemctl start on revert if it \
             is left inactive)",
            receipt.human()
        )]
    }

    fn check_receipt(fault_id: &str, receipt: &ServiceReceipt) -> Result<()> {
        check_service_receipt(Self::KIND, fault_id, receipt)
    }
}

/// `check_receipt` of both kinds: the receipt names what `plan` could have written.
fn check_service_receipt(kind: &str, fault_id: &str, r: &ServiceReceipt) -> Result<()> {
    let bad = |problem: String| Err(drifted(kind, fault_id, problem));
    for (field, name) in [("unit", &r.unit), ("requested", &r.requested)] {
        if field == "requested" && name.is_empty() {
            continue; // written before `requested` was recorded
        }
        match unit_name(name) {
            Ok(valid) if valid == *name => {}
            Ok(_) => {
                return bad(format!(
                    "its {field} {:?} is not a full .service name",
                    printable(name)
                ))
            }
            Err(e) => return bad(format!("its {field} is refused: {e}")),
        }
    }
    if let Some(pid) = agent_runs_in(&r.unit, &fault_core::host::process::self_and_ancestors()) {
        return bad(format!(
            "its unit {} is the one the agent (or its ancestor pid {pid}) runs in",
            r.unit
        ));
    }
    if !r.was_active() {
        return bad(format!(
            "its prior state {:?} is not active, and plan only acts on active units",
            printable(&r.prior_state)
        ));
    }
    if !is_boot_id(&r.boot_id) {
        return bad(format!(
            "its boot id {:?} is not a boot id",
            printable(&r.boot_id)
        ));
    }
    let word = |s: &str| s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !word(&r.prior_invocation) || !word(&r.prior_sub_state) {
        return bad(
            "its invocation id or sub-state holds characters systemd never prints".to_string(),
        );
    }
    if r.interval.is_some_and(|d| d.std() < MIN_INTERVAL) {
        return bad("its interval is shorter than service.restart accepts".to_string());
    }
    Ok(())
}

/// Validate a unit name from a spec: systemd's unit-name characters only, a `.service`
/// suffix (appended when the name has no unit-type suffix), never the agent's own unit.
pub(crate) fn unit_name(raw: &str) -> Result<String> {
    const TYPES: [&str; 11] = [
        "service",
        "socket",
        "target",
        "device",
        "mount",
        "automount",
        "swap",
        "timer",
        "path",
        "slice",
        "scope",
    ];
    if raw.is_empty() {
        return Err(Error::invalid("unit must not be empty"));
    }
    if let Some(c) = raw
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || ":-_.\\@".contains(*c)))
    {
        return Err(Error::invalid(format!(
            "unit {raw:?}: {c:?} is not allowed in a systemd unit name (letters, digits and \
             \":-_.\\@\" only; no '/', whitespace or shell syntax)"
        )));
    }
    if raw.starts_with('-') || raw.starts_with('.') {
        return Err(Error::invalid(format!(
            "unit {raw:?} must start with a letter, digit or one of \":_\\@\""
        )));
    }
    let name = match raw.rsplit_once('.') {
        Some((_, "service")) => raw.to_string(),
        Some((_, ty)) if TYPES.contains(&ty) => {
            return Err(Error::invalid(format!(
                "unit {raw:?} is a .{ty} unit; only .service units can be stopped or restarted"
            )))
        }
        _ => format!("{raw}.service"),
    };
    if name.len() > 255 {
        return Err(Error::invalid(format!(
            "unit {raw:?} is longer than systemd's 255 characters"
        )));
    }
    if name.contains("@.") {
        return Err(Error::invalid(format!(
            "unit {name:?} is a template; name an instance, e.g. \"getty@tty1.service\""
        )));
    }
    if name == AGENT_UNIT {
        return Err(Error::invalid(format!(
            "{AGENT_UNIT} is the agent's own unit; stopping it would stop the agent in the \
             middle of its faults"
        )));
    }
    if NEVER_UNITS.contains(&name.as_str()) {
        return Err(Error::invalid(format!(
            "{name} is never running before a fault: systemd starts it only to power off, \
             reboot, suspend or rescue the machine, and starting it on revert would do that"
        )));
    }
    Ok(name)
}

/// The `.service` unit a process runs in, from its `/proc/PID/cgroup` (cgroup v2, or the
/// `name=systemd` hierarchy of v1).
pub(crate) fn service_of_cgroup(cgroup_file: &str) -> Option<String> {
    let path = cgroup_file.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        (controllers.is_empty() || controllers == "name=systemd").then_some(path)
    })?;
    path.split('/')
        .rev()
        .find(|c| c.ends_with(".service"))
        .map(str::to_string)
}

/// The pid among this process and `protected` whose cgroup is in `unit`, if any.
fn agent_runs_in(unit: &str, protected: &[i32]) -> Option<i32> {
    std::iter::once(std::process::id() as i32)
        .chain(protected.iter().copied())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .is_ok_and(|text| service_of_cgroup(&text).as_deref() == Some(unit))
        })
}

/// What both service kinds need: systemd as the init system (what `plan` checks), a
/// `systemctl` that answers, and root to stop and start units.
fn service_availability() -> fault_core::Availability {
    let host = fault_core::host::probe::host();
    let mut a = fault_core::Availability::available();
    if !host.init.systemd {
        let pid1 = if host.init.pid1.is_empty() {
            "unreadable".to_string()
        } else {
            printable(&host.init.pid1).into_owned()
        };
        a.refuse(
            format!(
                "systemd is not the init system (PID 1 is {pid1}, /run/systemd/system is \
                 missing): there are no service units to stop or restart"
            ),
            Some("none on this host: service faults need a system booted with systemd".into()),
        );
    } else if host.init.systemd_version.is_none() {
        a.refuse(
            "systemd is init, but `systemctl --version` did not answer: the service kinds \
             drive units through systemctl",
            Some("install systemctl (the systemd package) in the agent's PATH".into()),
        );
    }
    if host.euid != 0 {
        a.degrade(
            format!(
                "not root (uid {}): systemctl stop/start needs root or a polkit rule allowing \
                 this user to manage units (the agent never asks for a password)",
                host.euid
            ),
            Some("run the agent as root".into()),
        );
    }
    a
}

/// `plan` of both kinds: systemd is there, the unit is loaded and active, and it is not the
/// agent's own.
fn plan_unit(
    unit: &str,
    cx: &Context,
    verb: &str,
    interval: Option<Duration>,
) -> Result<ServiceReceipt> {
    if !Path::new("/run/systemd/system").is_dir() {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "cannot {verb} {unit}: systemd is not the init system here \
                 (/run/systemd/system is missing), so there are no service units"
            ),
        ));
    }
    let state = UnitState::query(unit)?;
    if !state.loaded() {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!(
                "cannot {verb} {unit}: systemd has no such unit (LoadState={}); see \
                 `systemctl list-units --type=service`",
                state.load_state
            ),
        ));
    }
    let id = if state.id.is_empty() {
        unit.to_string()
    } else {
        state.id.clone()
    };
    if id == AGENT_UNIT {
        return Err(Error::invalid(format!(
            "{unit} is {AGENT_UNIT}, the agent's own unit; refusing to {verb} it"
        )));
    }
    if id != unit {
        // An alias: what systemd resolved it to must pass the same checks.
        unit_name(&id).map_err(|e| e.context(format!("{unit} is an alias of {id}")))?;
    }
    if let Some(pid) = agent_runs_in(&id, &cx.protected_pids) {
        return Err(Error::invalid(format!(
            "{id} contains the agent (or its ancestor pid {pid}); refusing to {verb} the \
             unit the agent runs in"
        )));
    }
    if !is_active(&state.active_state) {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!(
                "cannot {verb} {id}: it is not running (ActiveState={}), so there is nothing to \
                 {verb} and nothing to put back",
                state.active_state
            ),
        ));
    }
    Ok(ServiceReceipt {
        unit: id,
        prior_state: state.active_state.clone(),
        prior_invocation: state.invocation().to_string(),
        boot_id: cx.boot_id.clone(),
        restarts: 0,
        requested: unit.to_string(),
        prior_sub_state: state.sub_state.clone(),
        main_pid: state.main_pid.parse().ok().filter(|&p: &u32| p > 0),
        interval: interval.map(fault_core::Duration),
    })
}

fn is_active(state: &str) -> bool {
    matches!(state, "active" | "reloading" | "activating")
}

/// Revert of both kinds: start the unit again if it ran before and does not now.
fn start_if_was_active(receipt: &ServiceReceipt) -> Result<()> {
    if !receipt.was_active() {
        return Ok(());
    }
    let now = UnitState::query(&receipt.unit)?;
    if !now.loaded() || is_active(&now.active_state) {
        // Gone (nothing we could start) or already running: nothing to put back.
        return Ok(());
    }
    systemctl(&["start", "--", &receipt.unit])
        .map_err(|e| e.context(format!("starting {} again", receipt.unit)))
}

fn manual_start(receipt: &ServiceReceipt) -> Vec<String> {
    let unit = &receipt.unit;
    let state = printable(&receipt.prior_state);
    if !receipt.was_active() {
        return vec![format!(
            "# nothing to undo: {} was {state} before the fault",
            printable(&shell::quote(unit))
        )];
    }
    vec![
        format!(
            "{}  # it was {state} before the fault",
            shell_cmd!["systemctl", "start", "--", unit]
        ),
        format!(
            "{}  # if it does not start: why; then: {}",
            shell_cmd!["systemctl", "status", "--", unit],
            printable(&shell_cmd!["journalctl", "-u", unit])
        ),
    ]
}

/// The properties of a unit that the faults read.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct UnitState {
    pub(crate) id: String,
    pub(crate) load_state: String,
    pub(crate) active_state: String,
    pub(crate) sub_state: String,
    pub(crate) main_pid: String,
    pub(crate) invocation_id: String,
    pub(crate) active_enter: String,
}

impl UnitState {
    fn query(unit: &str) -> Result<UnitState> {
        let out = systemctl_output(&[
            "show",
            "--property=Id,LoadState,ActiveState,SubState,MainPID,InvocationID,\
             ActiveEnterTimestampMonotonic",
            "--",
            unit,
        ])?;
        Ok(UnitState::parse(&out))
    }

    /// Parse `systemctl show` output (`Key=Value` lines).
    pub(crate) fn parse(text: &str) -> UnitState {
        let mut s = UnitState::default();
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let v = v.trim().to_string();
            match k {
                "Id" => s.id = v,
                "LoadState" => s.load_state = v,
                "ActiveState" => s.active_state = v,
                "SubState" => s.sub_state = v,
                "MainPID" => s.main_pid = v,
                "InvocationID" => s.invocation_id = v,
                "ActiveEnterTimestampMonotonic" => s.active_enter = v,
                _ => {}
            }
        }
        s
    }

    fn loaded(&self) -> bool {
        self.load_state == "loaded"
    }

    /// What changes on every (re)start: the invocation id, or the activation time.
    fn invocation(&self) -> &str {
        if self.invocation_id.is_empty() {
            &self.active_enter
        } else {
            &self.invocation_id
        }
    }
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
    use serde_json::json;

    #[test]
    fn unit_names() {
        let cases: [(&str, std::result::Result<&str, &str>); 22] = [
            ("nginx.service", Ok("nginx.service")),
            ("nginx", Ok("nginx.service")),
            ("getty@tty1.service", Ok("getty@tty1.service")),
            ("my_app-2:x", Ok("my_app-2:x.service")),
            ("foo.bar", Ok("foo.bar.service")),
            ("dev-disk-by\\x2duuid", Ok("dev-disk-by\\x2duuid.service")),
            ("", Err("must not be empty")),
            ("a/b.service", Err("'/' is not allowed")),
            ("../etc/passwd", Err("'/' is not allowed")),
            ("nginx service", Err("' ' is not allowed")),
            ("nginx\t", Err("'\\t' is not allowed")),
            ("x;reboot", Err("';' is not allowed")),
            ("$(reboot)", Err("'$' is not allowed")),
            ("--force", Err("must start with")),
            ("nginx.socket", Err("only .service units")),
            ("multi-user.target", Err("only .service units")),
            ("getty@.service", Err("is a template")),
            ("chaos-agent", Err("the agent's own unit")),
            ("chaos-agent.service", Err("the agent's own unit")),
            ("systemd-reboot", Err("never running before a fault")),
            ("systemd-poweroff.service", Err("power off, reboot")),
            ("rescue.service", Err("never running before a fault")),
        ];
        for (raw, want) in cases {
            match (unit_name(raw), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{raw:?}"),
                (Err(e), Err(want)) => {
                    assert_eq!(e.kind(), ErrorKind::InvalidSpec, "{raw:?}");
                    assert!(e.to_string().contains(want), "{raw:?}: {e}");
                }
                (got, want) => panic!("{raw:?}: got {got:?}, want {want:?}"),
            }
        }
        assert!(unit_name(&"a".repeat(260)).is_err());
    }

    #[test]
    fn spec_validation_through_serde() {
        let stop = |v: serde_json::Value| {
            serde_json::from_value::<ServiceStopSpec>(v)
                .map_err(|e| Error::invalid(e.to_string()))
                .and_then(ServiceStop::new)
        };
        let restart = |v: serde_json::Value| {
            serde_json::from_value::<ServiceRestartSpec>(v)
                .map_err(|e| Error::invalid(e.to_string()))
                .and_then(ServiceRestart::new)
        };
        assert_eq!(
            stop(json!({"unit": "nginx"})).unwrap().unit,
            "nginx.service"
        );
        assert!(stop(json!({})).unwrap_err().to_string().contains("unit"));
        assert!(stop(json!({"unit": "x", "interval": "1s"}))
            .unwrap_err()
            .to_string()
            .contains("unknown field `interval`"));
        let r = restart(json!({"unit": "db", "interval": "5s"})).unwrap();
        assert_eq!(
            (r.unit.as_str(), r.interval),
            ("db.service", Some(Duration::from_secs(5)))
        );
        assert!(restart(json!({"unit": "db", "interval": "100ms"}))
            .unwrap_err()
            .to_string()
            .contains("at least 1s"));
        assert!(restart(json!({"unit": 5})).is_err());
    }

    #[test]
    fn own_unit_from_cgroup() {
        assert_eq!(
            service_of_cgroup("0::/system.slice/chaos-agent.service\n").as_deref(),
            Some("chaos-agent.service")
        );
        assert_eq!(
            service_of_cgroup("0::/system.slice/run-u7.service/payload\n").as_deref(),
            Some("run-u7.service")
        );
        assert_eq!(
            service_of_cgroup("12:pids:/\n1:name=systemd:/system.slice/cron.service\n0::/\n")
                .as_deref(),
            Some("cron.service")
        );
        assert_eq!(
            service_of_cgroup("0::/user.slice/user-0.slice/session-3.scope\n"),
            None
        );
        assert_eq!(service_of_cgroup("0::/\n"), None);
        assert_eq!(service_of_cgroup(""), None);
    }

    #[test]
    fn parses_systemctl_show() {
        let s = UnitState::parse(
            "Id=ssh.service\nLoadState=loaded\nActiveState=active\nInvocationID=ab12\n\
             ActiveEnterTimestampMonotonic=123\n",
        );
        assert_eq!(s.id, "ssh.service");
        assert!(s.loaded());
        assert_eq!(s.invocation(), "ab12");
        let s = UnitState::parse("LoadState=not-found\nActiveState=inactive\nInvocationID=\n");
        assert!(!s.loaded());
        assert_eq!(s.invocation(), "");
    }

    #[test]
    fn plan_without_systemd_is_unsupported() {
        if Path::new("/run/systemd/system").is_dir() {
            eprintln!("SKIPPED plan_without_systemd_is_unsupported: systemd runs here");
            return;
        }
        let cx = Context::new("t-svc", "run");
        let f = ServiceStop::new(ServiceStopSpec { unit: "x".into() }).unwrap();
        let e = f.plan(&cx).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert!(
            e.to_string().contains("systemd is not the init system"),
            "{e}"
        );
    }

    fn receipt(unit: &str) -> ServiceReceipt {
        ServiceReceipt {
            unit: unit.into(),
            prior_state: "active".into(),
            prior_invocation: "0a1b2c3d4e5f60718293a4b5c6d7e8f9".into(),
            boot_id: crate::target::fake::BOOT.into(),
            restarts: 0,
            requested: unit.into(),
            prior_sub_state: "running".into(),
            main_pid: Some(812),
            interval: None,
        }
    }

    #[test]
    fn manual_undo_and_targets() {
        let r = receipt("db.service");
        let lines = ServiceStop::manual_undo(&r);
        assert_eq!(
            lines,
            [
                "systemctl start -- db.service  # it was active before the fault",
                "systemctl status -- db.service  # if it does not start: why; then: \
                 journalctl -u db.service",
            ]
        );
        assert_eq!(ServiceStop::targets(&r), ["unit:db.service"]);
        let inactive = ServiceReceipt {
            prior_state: "inactive".into(),
            ..r
        };
        assert!(!inactive.was_active());
        assert!(ServiceRestart::manual_undo(&inactive)[0].starts_with("# nothing to undo"));
        // Revert of a receipt whose unit was not running before touches nothing.
        assert!(ServiceStop::revert(&inactive).is_ok());
    }

    #[test]
    fn manual_undo_quotes_every_word() {
        // Only an edited receipt can hold such a name (check_receipt refuses it), but the
        // commands printed for it must still run exactly one systemctl with one unit.
        let r = receipt("db; reboot now.service");
        assert_eq!(
            ServiceStop::manual_undo(&r),
            [
                "systemctl start -- 'db; reboot now.service'  # it was active before the fault",
                "systemctl status -- 'db; reboot now.service'  # if it does not start: why; \
                 then: journalctl -u 'db; reboot now.service'",
            ]
        );
        let mut r = receipt("it's\nx.service");
        r.prior_state = "active\nreboot".into();
        let lines = ServiceRestart::manual_undo(&r);
        assert!(
            lines[0].starts_with("# nothing to undo: 'it'\\''s\\nx.service' was"),
            "{lines:?}"
        );
        assert!(lines.iter().all(|l| !l.contains('\n')), "{lines:?}");
    }

    #[test]
    fn touches_names_unit_state_and_action() {
        let mut r = receipt("ssh.service");
        assert_eq!(
            ServiceStop::touches(&r),
            [
                "unit ssh.service (active/running, main pid 812): systemctl stop now, systemctl \
              start on revert"
            ]
        );
        r.requested = "sshd.service".into();
        r.main_pid = None;
        r.interval = Some(fault_core::Duration::from_secs(20));
        assert_eq!(
            ServiceRestart::touches(&r),
            [
                "unit ssh.service (as sshd.service) (active/running): systemctl restart, again \
              every 20s (cannot be undone; systemctl start on revert if it is left inactive)"
            ]
        );
    }

    #[test]
    fn check_receipt_table() {
        let good = receipt("db.service");
        ServiceStop::check_receipt("f", &good).unwrap();
        ServiceRestart::check_receipt("f", &good).unwrap();
        let alias = ServiceReceipt {
            requested: "database.service".into(),
            ..good.clone()
        };
        ServiceStop::check_receipt("f", &alias).unwrap();
        let old = ServiceReceipt {
            requested: String::new(),
            prior_sub_state: String::new(),
            main_pid: None,
            ..good.clone()
        };
        ServiceStop::check_receipt("f", &old).expect("a receipt from before `requested`");

        type Edit = fn(&mut ServiceReceipt);
        let cases: [(&str, Edit); 12] = [
            ("';' is not allowed", |r| {
                r.unit = "db;reboot.service".into()
            }),
            ("' ' is not allowed", |r| {
                r.unit = "db reboot.service".into()
            }),
            ("must start with", |r| r.unit = "--force.service".into()),
            ("not a full .service name", |r| r.unit = "db".into()),
            ("only .service units", |r| r.unit = "reboot.target".into()),
            ("the agent's own unit", |r| r.unit = AGENT_UNIT.into()),
            ("never running before a fault", |r| {
                r.unit = "systemd-poweroff.service".into()
            }),
            ("its requested is refused", |r| {
                r.requested = "x/../y.service".into()
            }),
            ("prior state \"inactive\" is not active", |r| {
                r.prior_state = "inactive".into()
            }),
            ("boot id \"b\" is not a boot id", |r| r.boot_id = "b".into()),
            ("invocation id or sub-state", |r| {
                r.prior_invocation = "x; y".into()
            }),
            ("interval is shorter", |r| {
                r.interval = Some(fault_core::Duration::from_millis(10))
            }),
        ];
        for (want, edit) in cases {
            let mut r = good.clone();
            edit(&mut r);
            let e = ServiceStop::check_receipt("f-3", &r).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Drifted, "{want}");
            let e = e.to_string();
            assert!(e.contains(want), "{want}: {e}");
            assert!(e.starts_with("service.stop receipt of f-3: "), "{e}");
        }
    }

    #[test]
    fn check_receipt_refuses_the_unit_the_agent_runs_in() {
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .ok()
            .and_then(|t| service_of_cgroup(&t))
            .filter(|u| unit_name(u).is_ok_and(|n| n == *u));
        let Some(own) = own else {
            eprintln!("SKIPPED check_receipt_refuses_the_unit_the_agent_runs_in: not in a service");
            return;
        };
        let e = ServiceStop::check_receipt("f", &receipt(&own)).unwrap_err();
        assert!(e.to_string().contains("the one the agent"), "{e}");
    }
}
