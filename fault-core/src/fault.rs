//! The [`Fault`] contract every fault kind implements.

use std::fmt::Debug;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::Result;

/// What a fault is told about the run it belongs to.
#[derive(Debug, Clone)]
pub struct Context {
    /// Unique id of this fault instance. Every name the fault creates on the host (files,
    /// tables, handles, cgroups) is derived from it, so recovery can find them.
    pub fault_id: String,
    /// The run this fault belongs to.
    pub run_id: String,
    /// The kernel boot id at planning time ([`crate::host::boot_id`]).
    pub boot_id: String,
    /// Pids that must never be targeted: the agent and its ancestors.
    pub protected_pids: Vec<i32>,
    /// Paths whose filesystems must keep a safe reserve (`/` and the agent's state
    /// directory): a fault that would nearly fill one of them is refused unless its spec
    /// opts in explicitly.
    pub protected_paths: Vec<std::path::PathBuf>,
}

impl Context {
    /// A context for a fault id, filling in the boot id and protected pids of this process.
    pub fn new(fault_id: impl Into<String>, run_id: impl Into<String>) -> Context {
        Context {
            fault_id: fault_id.into(),
            run_id: run_id.into(),
            boot_id: crate::host::boot_id(),
            protected_pids: crate::host::process::self_and_ancestors(),
            protected_paths: vec![std::path::PathBuf::from("/")],
        }
    }
}

/// Something on the host that a kind recognises as its own by a name derived from a fault
/// id (an nft table, a tc root in our handle range, a fill file, a stressor cgroup), found
/// by [`Fault::leftovers`] whether or not the journal still knows about it.
#[derive(Debug, Clone)]
pub struct Leftover<R> {
    /// The fault id its name carries.
    pub fault_id: String,
    /// A receipt that [`Fault::revert`] can remove it with.
    pub receipt: R,
    /// Where it was found, for people ("nft table chaos_ab12_1_1 in net:[4026531840]").
    pub found: String,
}

/// Whether a fault's change is present on the host, as observed by [`Fault::verify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Effect {
    /// Everything the receipt describes is in place.
    InEffect,
    /// Nothing the receipt describes is left on the host.
    Clean,
    /// Some of it is in place, some is not.
    Partial,
}

/// What [`Fault::verify`] saw, with a sentence a person can read.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Observation {
    /// The verdict.
    pub effect: Effect,
    /// What was observed, e.g. "pid 4242 (worker) is stopped".
    pub detail: String,
}

impl Observation {
    /// An [`Effect::InEffect`] observation.
    pub fn in_effect(detail: impl Into<String>) -> Observation {
        Observation {
            effect: Effect::InEffect,
            detail: detail.into(),
        }
    }
    /// An [`Effect::Clean`] observation.
    pub fn clean(detail: impl Into<String>) -> Observation {
        Observation {
            effect: Effect::Clean,
            detail: detail.into(),
        }
    }
    /// An [`Effect::Partial`] observation.
    pub fn partial(detail: impl Into<String>) -> Observation {
        Observation {
            effect: Effect::Partial,
            detail: detail.into(),
        }
    }
}

/// One parameter of a fault kind, for `chaos-agent faults` and the docs.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Param {
    /// Key in the experiment file.
    pub name: &'static str,
    /// Type as a person writes it ("duration", "bytes", "percent", "integer", "string", ...).
    pub ty: &'static str,
    /// Default when omitted; `None` when required (or when one of a group is required).
    pub default: Option<&'static str>,
    /// One sentence.
    pub doc: &'static str,
}

/// Static description of a fault kind.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct KindInfo {
    /// One paragraph: what it changes on the host and how revert undoes it.
    pub summary: &'static str,
    /// What privilege the fault needs.
    pub privileges: &'static str,
    /// Whether revert restores the prior state. `false` for faults whose effect cannot be
    /// taken back (a killed process stays dead): their `revert` has nothing to do and the
    /// runner does not expect `verify` to report [`Effect::Clean`] afterwards.
    pub reversible: bool,
    /// Parameters besides the common `kind`, `duration` and `start_delay`.
    pub params: &'static [Param],
    /// An experiment-file fragment (`[[steps.faults]]` table body) that uses this kind.
    /// A unit test in every fault crate checks that it validates.
    pub example: &'static str,
}

/// A fault kind: a validated spec that can be planned, injected, verified and reverted.
///
/// The runner calls, in order: [`plan`](Fault::plan) (no mutation; returns the receipt),
/// then journals the receipt durably, then [`inject`](Fault::inject), journals again,
/// [`verify`](Fault::verify)s the effect, holds for the duration (calling
/// [`maintain`](Fault::maintain) when it asks to be called), then
/// [`revert`](Fault::revert)s and verifies that the host is clean.
///
/// # Persistence
///
/// `verify`, `revert` and `manual_undo` are associated functions of the **receipt alone**:
/// they have no `self`, so they cannot depend on anything that lives only in memory. The
/// journal stores the receipt; after a crash or a reboot, a fresh process calls `revert`
/// with the deserialized receipt. A receipt therefore records everything revert needs:
/// the names derived from the fault id, the prior state it replaces, and the boot id when
/// the artifact does not survive a reboot.
///
/// # Idempotence
///
/// `inject` twice on the same receipt leaves the host as one `inject` does. `revert` after
/// `revert` returns `Ok(())`; an artifact that is already gone counts as reverted. `revert`
/// must accept a receipt whose `inject` never ran or only partly ran.
///
/// # Ownership
///
/// `revert` touches only what this fault created, identified by its fault id (files,
/// tables) or by identity recorded in the receipt (pid + start time + boot id); it never
/// deletes or restores anything it cannot prove is its own.
///
/// # Errors
///
/// Constructors return [`ErrorKind::InvalidSpec`](crate::ErrorKind::InvalidSpec) for a bad
/// spec, so a bad spec never becomes a fault. `plan` fails when targets do not exist or the
/// host cannot do it, before anything changes.
pub trait Fault: Send + Sync + Sized + 'static {
    /// The kind string, e.g. `"process.stop"`.
    const KIND: &'static str;
    /// Whether [`leftovers`](Fault::leftovers) can find this kind's artifacts on the host.
    /// When a reversible kind cannot, recovery that lost a record of it says the host is
    /// not known to be clean instead of assuming it is.
    const FINDS_LEFTOVERS: bool = false;
    /// The parameters as written in an experiment (serde, `deny_unknown_fields`).
    type Spec: Serialize + DeserializeOwned;
    /// What `plan` resolved, and what `revert` needs.
    type Receipt: Serialize + DeserializeOwned + Debug + Clone + Send + Sync;

    /// Validate a spec into a fault. No host state is read or changed.
    fn new(spec: Self::Spec) -> Result<Self>;

    /// Describe the kind for people (`chaos-agent faults`).
    fn info() -> KindInfo;

    /// Whether this host can run the kind, from cheap probes that change nothing
    /// ([`crate::host::probe::host`]): unavailable kinds are not offered to a control plane,
    /// and `chaos-agent doctor` prints every reason and fix. `plan` still checks what it
    /// needs; this is the forecast, not the gate. The default: available.
    fn availability() -> crate::Availability {
        crate::Availability::available()
    }

    /// One line saying what this fault will do, e.g. "stop pid 4242 (worker) with SIGSTOP".
    fn describe(&self) -> String;

    /// Resolve targets and derive every name this fault will create; snapshot the state it
    /// will change. Reads the host, never changes it.
    fn plan(&self, cx: &Context) -> Result<Self::Receipt>;

    /// Make the change. May record more in the receipt (e.g. pids of helpers it started);
    /// the runner journals the updated receipt afterwards.
    fn inject(&self, cx: &Context, receipt: &mut Self::Receipt) -> Result<()>;

    /// Called while the fault is held, when the previous call (or `inject`) asked for it
    /// by returning an interval. Returns the delay until the next call, or `None` to stop
    /// being called. The default does nothing.
    fn maintain(
        &self,
        _cx: &Context,
        _receipt: &mut Self::Receipt,
    ) -> Result<Option<std::time::Duration>> {
        Ok(None)
    }

    /// When `maintain` is first due after `inject`; `None` (the default) never calls it.
    fn maintain_interval(&self) -> Option<std::time::Duration> {
        None
    }

    /// Observe the host: is what the receipt describes in effect, gone, or partly there?
    fn verify(receipt: &Self::Receipt) -> Result<crate::Observation>;

    /// Undo the change from the receipt alone. Idempotent; "already gone" is success.
    fn revert(receipt: &Self::Receipt) -> Result<()>;

    /// The exact commands a person can run to undo this by hand if `revert` keeps failing.
    fn manual_undo(receipt: &Self::Receipt) -> Vec<String>;

    /// Names of the host objects this receipt acts on ("pid:4242", "path:/srv/data"). A
    /// new fault whose targets overlap a record waiting for manual undo is refused.
    fn targets(_receipt: &Self::Receipt) -> Vec<String> {
        Vec::new()
    }

    /// The blast radius for people, one line per thing touched, in human units: processes
    /// by pid and name, interfaces with their namespace, bytes and % of a filesystem.
    /// Shown by the dry run and the run header. Defaults to [`targets`](Fault::targets).
    fn touches(receipt: &Self::Receipt) -> Vec<String> {
        Self::targets(receipt)
    }

    /// Check, before a revert acts on it, that a receipt read back from the journal is
    /// consistent with the fault id it is filed under: every name it would remove is the
    /// one this kind derives from that id (fill file name, table name, qdisc handle,
    /// cgroup). A receipt edited to point elsewhere is refused with
    /// [`ErrorKind::Drifted`](crate::ErrorKind::Drifted) and nothing is touched.
    fn check_receipt(_fault_id: &str, _receipt: &Self::Receipt) -> Result<()> {
        Ok(())
    }

    /// Find this kind's artifacts on the host by the names it derives from fault ids,
    /// with a receipt that reverts each, so recovery can remove what a lost journal no
    /// longer describes.
    ///
    /// `known` holds the fault ids this agent's state directory planned and has not seen
    /// reverted (kept apart from the journal records); only artifacts of those ids are
    /// returned, so another agent's faults (another state directory, e.g. a parallel test)
    /// are never claimed. Look everywhere this kind can act (every reachable network
    /// namespace, every mounted filesystem, every cgroup hierarchy) within a bounded cost.
    /// The default finds nothing (kinds that leave nothing named, or whose effects cannot
    /// be told apart from anyone else's, such as a stopped process).
    fn leftovers(_known: &[String]) -> Result<Vec<Leftover<Self::Receipt>>> {
        Ok(Vec::new())
    }
}
