//! What the network kinds need from the host, for their `availability()`: `CAP_NET_ADMIN`,
//! the qdisc and classifier modules of the qdisc kinds, and a working nf_tables for the
//! table kinds. Read-only: modules are looked up (`/sys/module`, the kernel config,
//! `/lib/modules`), never loaded, and nf_tables is asked for its `inet` tables (a dump).

use std::sync::OnceLock;

use fault_core::host::probe::{self, Cap, ModuleState};
use fault_core::host::shell;
use fault_core::Availability;

use crate::nl::{self, Socket};

/// `CAP_NET_ADMIN`, which every network kind needs in the agent's network namespace.
pub(crate) fn net_admin() -> Availability {
    let mut a = Availability::available();
    if !probe::host().has_cap(Cap::NetAdmin) {
        a.refuse(
            "no CAP_NET_ADMIN: qdiscs and nftables tables cannot be changed",
            Some("run the agent as root (or grant it CAP_NET_ADMIN)".into()),
        );
    }
    a
}

/// The fix for a missing kernel module, by how it is missing.
fn module_fix(module: &str, config: &str, state: ModuleState) -> String {
    let release = &probe::host().kernel;
    let packages = format!(
        "Ubuntu: {}; RHEL/Fedora: kernel-modules-extra; Debian ships it in {}",
        shell::quote(&format!("linux-modules-extra-{release}")),
        shell::quote(&format!("linux-image-{release}")),
    );
    let load = shell::join(["modprobe", module]);
    if state == ModuleState::NotBuilt {
        format!(
            "this kernel is built without {config}: boot a kernel that has it (distribution \
             kernels build it as a module; {packages}), then: {load}"
        )
    } else {
        format!("install the kernel module package ({packages}), then: {load}")
    }
}

/// Kernel module `module` (config symbol `config`), which the kind uses `for_what`: absent
/// makes it unavailable, unknown is a note (plan checks it before anything changes).
pub(crate) fn module(a: &mut Availability, module: &str, config: &str, for_what: &str) {
    let state = probe::host().module(module, config);
    if state.absent() {
        a.refuse(
            format!("{module} ({for_what}) is {}", state.human()),
            Some(module_fix(module, config, state)),
        );
    } else if state == ModuleState::Unknown {
        a.note(format!(
            "could not tell whether {module} is in this kernel (no kernel config, no \
             /lib/modules, not loaded); plan checks it before anything changes"
        ));
    }
}

/// The qdisc kinds: our htb root, u32 filters steering the targeted traffic, and `leaf`
/// (`("sch_netem", "CONFIG_NET_SCH_NETEM", "the netem qdisc")`).
pub(crate) fn qdisc(leaf: (&str, &str, &str)) -> Availability {
    let mut a = net_admin();
    module(
        &mut a,
        "sch_htb",
        "CONFIG_NET_SCH_HTB",
        "the htb root qdisc",
    );
    module(
        &mut a,
        "cls_u32",
        "CONFIG_NET_CLS_U32",
        "the u32 filters that pick the targeted traffic",
    );
    module(&mut a, leaf.0, leaf.1, leaf.2);
    a
}

/// The netem kinds.
pub(crate) fn netem() -> Availability {
    qdisc((
        "sch_netem",
        "CONFIG_NET_SCH_NETEM",
        "the netem qdisc that makes this effect",
    ))
}

/// nf_tables in the agent's network namespace, asked once per process: its `inet` tables
/// are listed. Without CAP_NET_ADMIN the kernel refuses any nfnetlink request, so this only
/// looks at the modules then.
pub(crate) fn nftables() -> Availability {
    static NFT: OnceLock<Availability> = OnceLock::new();
    let mut a = net_admin();
    a.merge(NFT.get_or_init(probe_nftables).clone());
    a
}

fn probe_nftables() -> Availability {
    let mut a = Availability::available();
    module(
        &mut a,
        "nf_tables",
        "CONFIG_NF_TABLES",
        "the nftables tables this kind adds",
    );
    if !a.runnable() || !probe::host().has_cap(Cap::NetAdmin) {
        return a;
    }
    let fix = "load nf_tables (modprobe nf_tables), or boot a kernel with CONFIG_NF_TABLES and \
               CONFIG_NF_TABLES_INET";
    match Socket::open(nl::NETLINK_NETFILTER) {
        Err(e) => {
            a.refuse(
                format!("cannot open a NETLINK_NETFILTER socket: {e}"),
                Some(fix.into()),
            );
        }
        Ok(mut sock) => {
            if let Err(e) = crate::nft::tables(&mut sock) {
                let why = e.extack.clone().unwrap_or_else(|| e.io().to_string());
                a.refuse(
                    format!("nf_tables does not list inet tables here: {why}"),
                    Some(fix.into()),
                );
            }
        }
    }
    a
}
